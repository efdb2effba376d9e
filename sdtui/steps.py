"""How many steps, and at what size, each pass of a job runs: A1111's arithmetic on
GenerationParams (pure Python, no torch), for the engine's sampling plans and for anyone who
counts a job's work (progress totals, the CLI, the UI).

- txt2img runs all ``p.steps``.
- img2img runs ``t_enc + 1`` steps of a ``p.steps``-long schedule (``img2img_schedule``).
- the hires fix's second pass runs exactly the Hires steps asked, from a schedule stretched by
  the hires denoising strength (``hires_schedule``), at ``hires_size``.
"""

from __future__ import annotations

from sdtui.params import GenerationParams


def hires_size(p: GenerationParams, multiple: int = 8) -> tuple[int, int]:
    """(width, height) of the hires result: ``int(width * hr_scale)`` x
    ``int(height * hr_scale)`` as A1111, rounded down to ``multiple`` (the VAE's factor)."""
    w = max(multiple, int(p.width * p.hr_scale) // multiple * multiple)
    h = max(multiple, int(p.height * p.hr_scale) // multiple * multiple)
    return w, h


def hires_schedule(p: GenerationParams) -> tuple[int, int]:
    """(schedule length, steps run) of the second pass, as A1111's
    ``sd_samplers_common.setup_img2img_steps(p, steps)`` with ``steps`` given (the hires pass
    always gives it): ``int(requested / min(denoise, 0.999))`` and ``requested``; (0, 0) for
    no second pass (hires off, img2img, or denoising strength 0)."""
    if not p.enable_hr or p.init_image or p.hr_denoising_strength <= 0:
        return 0, 0
    requested = p.hr_second_pass_steps or p.steps
    if requested < 1:
        return 0, 0
    schedule = int(requested / min(p.hr_denoising_strength, 0.999))
    return max(schedule, requested), requested


def img2img_schedule(p: GenerationParams) -> tuple[int, int]:
    """(schedule length, steps run) of img2img, as A1111's default
    ``sd_samplers_common.setup_img2img_steps(p)`` (``img2img_fix_steps`` off, no ``steps``
    given)::

        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)

    and ``sd_samplers_kdiffusion.sample_img2img`` samples ``sigmas[steps - t_enc - 1:]``:
    ``t_enc + 1`` steps (20 steps at 0.75: 16, from index 4), where diffusers alone would
    run ``int(steps * strength)`` = 15."""
    t_enc = int(min(max(p.denoising_strength, 0.0), 0.999) * p.steps)
    return p.steps, min(p.steps, t_enc + 1)


def first_pass_schedule(p: GenerationParams) -> tuple[int, int]:
    """(schedule length, steps run) of the first pass: all ``p.steps`` for txt2img,
    ``img2img_schedule`` for img2img."""
    return img2img_schedule(p) if p.init_image is not None else (p.steps, p.steps)


def hires_steps(p: GenerationParams) -> int:
    """How many steps the second pass runs (0: none): exactly the Hires steps asked
    (0 = the first pass's steps), as A1111."""
    return hires_schedule(p)[1]
