"""A1111's hires fix for txt2img: upscale the first pass, then an img2img pass at the new size.

What A1111 does (modules/processing.py, ``StableDiffusionProcessingTxt2Img.sample_hr_pass``)
and so what this does:

- the target is ``int(width * hr_scale)`` x ``int(height * hr_scale)`` (here rounded down to
  the VAE's multiple of 8, which the latents force anyway);
- a "Latent ..." upscaler resizes the first pass's latents with ``F.interpolate``: "Latent" is
  bilinear, "Latent (antialiased)" bilinear with antialias, "Latent (bicubic)" /
  "Latent (bicubic antialiased)", "Latent (nearest)", "Latent (nearest-exact)";
- any other upscaler ("Lanczos", "Nearest", "None" = Lanczos, or a model from
  models/ESRGAN etc.) decodes the images, upscales them as Extras does, and the second pass
  encodes them again;
- the second pass is img2img with ``hr_second_pass_steps`` (0 = the first pass's steps),
  ``hr_denoising_strength``, the same sampler, prompt conditioning and per-image generators.
  It runs exactly the Hires steps asked: ``sample_hr_pass`` passes ``steps=`` to
  ``sample_img2img``, so ``sd_samplers_common.setup_img2img_steps`` takes its
  "fix steps" branch whatever ``img2img_fix_steps`` says::

      requested_steps = (steps or p.steps)
      steps = int(requested_steps / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
      t_enc = requested_steps - 1

  and ``sd_samplers_kdiffusion.sample_img2img`` samples ``sigmas[steps - t_enc - 1:]`` of a
  ``steps``-long schedule: ``requested_steps`` steps from index ``schedule - requested``.
  Here the img2img pipeline gets ``num_inference_steps`` = that schedule and a strength
  with ``int(schedule * strength) == requested`` (see ``hires_schedule``). Strength 0 keeps
  the upscaled result without a second pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sdtui.params import GenerationParams

# the names are sdtui.extra_networks_index.HIRES_LATENT_UPSCALERS, in the same order
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
NONE_UPSCALER = "None"


def latent_mode(name: str) -> tuple[str, bool] | None:
    """(interpolate mode, antialias) for a "Latent ..." upscaler name, else None."""
    low = name.strip().lower()
    for key, value in LATENT_UPSCALE_MODES.items():
        if key.lower() == low:
            return value
    return None


def hires_upscaler_choices(models_dir: Path | str) -> list[str]:
    """See ``sdtui.extra_networks_index.hires_upscaler_choices`` (no torch there)."""
    from sdtui.extra_networks_index import hires_upscaler_choices as choices

    return choices(models_dir)


def _image_upscaler(name: str) -> str:
    return "Lanczos" if name.strip().lower() == NONE_UPSCALER.lower() else name


def check_upscaler(name: str, models_dir: Path | str) -> None:
    """Raise UserError (listing the choices) for an upscaler name that does not exist."""
    if latent_mode(name) is not None:
        return
    from sdtui.upscalers import list_upscalers, resolve_upscaler

    models = Path(models_dir)
    resolve_upscaler(_image_upscaler(name), list_upscalers(models), models_dir=models)


def hires_size(p: GenerationParams, multiple: int = 8) -> tuple[int, int]:
    """(width, height) of the hires result."""
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


def hires_steps(p: GenerationParams) -> int:
    """How many steps the second pass runs (0: none): exactly the Hires steps asked
    (0 = the first pass's steps), as A1111."""
    return hires_schedule(p)[1]


def _upscale_latents(
    latents: torch.Tensor, size: tuple[int, int], mode: tuple[str, bool]
) -> torch.Tensor:
    interp, antialias = mode
    kwargs: dict[str, Any] = {"antialias": True} if antialias else {}
    if interp in ("bilinear", "bicubic"):
        kwargs["align_corners"] = False
    out = F.interpolate(latents.float(), size=size, mode=interp, **kwargs)
    return out.to(latents.dtype)


def hires_plan(p: GenerationParams, multiple: int = 8) -> Any:
    """The hires pass's sampling plan (sdtui.engine.sampling.Plan), None without one."""
    from sdtui.engine.sampling import Plan

    schedule, run = hires_schedule(p)
    if run < 1:
        return None
    width, height = hires_size(p, multiple)
    return Plan(p.sampler, p.schedule_type, schedule, run, p.cfg_scale, width, height, img2img=True)


def hires_noise(p: GenerationParams, seeds: list[int], subseeds: list[int], channels: int, factor: int = 8) -> torch.Tensor | None:
    """The hires pass's noise: A1111's ``sample_hr_pass`` makes a new ``ImageRNG`` at the
    hires size from the same seeds (and variation), and takes its first draw."""
    from sdtui.engine.generate import make_noise

    if hires_plan(p, factor) is None:
        return None
    width, height = hires_size(p, factor)
    shape = (channels, height // factor, width // factor)
    strength = p.subseed_strength
    return torch.stack([
        make_noise(s, shape, ss if strength > 0 else None, strength)
        for s, ss in zip(seeds, subseeds, strict=True)
    ])


def run_hires_fix(
    session: Any,
    p: GenerationParams,
    latents: torch.Tensor,
    generators: list[torch.Generator],
    conds: Any,
    reporter: Any,
    ctx: Any,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Upscale the first pass's ``latents`` and run the second pass; latents at the new size.
    ``noise``: the pass's first draw per image (``hires_noise``)."""
    from sdtui.engine import sampling
    from sdtui.engine.generate import decode_latents, encode_images, first_pass_plan, make_denoiser

    factor = int(session.vae_scale)
    width, height = hires_size(p, factor)
    latent_size = (height // factor, width // factor)
    plan = hires_plan(p, factor)
    pipe = session.txt2img
    mode = latent_mode(p.hr_upscaler)
    seeds = [g.initial_seed() for g in generators]

    if mode is not None:
        image = _upscale_latents(latents, latent_size, mode)
    else:
        from sdtui.engine.extra_networks import job_settings
        from sdtui.engine.upscale import upscale_pil
        from sdtui.params import UpscaleParams

        models_dir = Path(job_settings(session, ctx).models)
        up = UpscaleParams(
            image="",
            upscaler=_image_upscaler(p.hr_upscaler),
            target_width=width,
            target_height=height,
        )
        pictures = [
            upscale_pil(im, up, models_dir, device=session.device, log=ctx.log)
            for im in decode_latents(pipe, latents, ctx)
        ]
        image = encode_images(pipe, pictures, seeds)

    if plan is None:
        ctx.log("hires fix: denoising strength 0; upscaled without a second pass")
        return image
    if noise is None or noise.shape[0] != image.shape[0]:
        raise ValueError("the hires pass needs its noise, one per image")
    # the new ImageRNG's generators, past their first draw (the noise above)
    fresh = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    for g in fresh:
        torch.randn(tuple(noise.shape[1:]), generator=g)
    denoiser = make_denoiser(session, pipe, conds, plan, reporter)
    with _second_pass(reporter, sampling.model_calls(first_pass_plan(p))):
        return sampling.sample(denoiser, plan, noise, fresh, image, session.scheduler_config)


@contextmanager
def _second_pass(reporter: Any, first_pass_calls: int) -> Iterator[None]:
    """Progress of the second pass continues the first's count (StepReporter.pass_offset);
    afterwards the reporter is as before, ready for the next (sub-)batch's first pass."""
    if not hasattr(reporter, "pass_offset"):
        yield
        return
    saved = reporter.pass_offset
    reporter.pass_offset = first_pass_calls
    try:
        yield
    finally:
        reporter.pass_offset = saved
