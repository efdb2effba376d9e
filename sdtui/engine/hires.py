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
  with ``int(schedule * strength) == requested`` (see ``sdtui.steps.hires_schedule``).
  Strength 0 keeps the upscaled result without a second pass.

The step and size arithmetic is ``sdtui.steps`` (no torch), the upscaler names
``sdtui.upscalers`` (``LATENT_UPSCALE_MODES``, ``check_hires_upscaler``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sdtui.engine import rng, sampling
from sdtui.engine.inpaint import image_conditioning, needs_image_conditioning
from sdtui.engine.job import JobContext, job_settings
from sdtui.engine.latents import decode_latents, encode_images, make_noise
from sdtui.engine.plans import first_pass_plan, hires_plan, make_denoiser
from sdtui.engine.upscale import upscale_pil
from sdtui.params import GenerationParams, UpscaleParams
from sdtui.steps import hires_size
from sdtui.upscalers import hires_image_upscaler, latent_mode


def upscale_latents(
    latents: torch.Tensor, size: tuple[int, int], mode: tuple[str, bool]
) -> torch.Tensor:
    interp, antialias = mode
    kwargs: dict[str, Any] = {"antialias": True} if antialias else {}
    if interp in ("bilinear", "bicubic"):
        kwargs["align_corners"] = False
    out = F.interpolate(latents.float(), size=size, mode=interp, **kwargs)
    return out.to(latents.dtype)


def hires_noise(
    p: GenerationParams,
    seeds: list[int],
    subseeds: list[int],
    channels: int,
    factor: int = 8,
    device: Any = "cpu",
) -> torch.Tensor | None:
    """The hires pass's noise: A1111's ``sample_hr_pass`` makes a new ``ImageRNG`` at the
    hires size from the same seeds (and variation), and takes its first draw."""
    if hires_plan(p, factor) is None:
        return None
    width, height = hires_size(p, factor)
    shape = (channels, height // factor, width // factor)
    strength = p.subseed_strength
    return torch.stack(
        [
            make_noise(s, shape, ss if strength > 0 else None, strength, p.rng, device)
            for s, ss in zip(seeds, subseeds, strict=True)
        ]
    )


def run_hires_fix(
    session: Any,
    p: GenerationParams,
    latents: torch.Tensor,
    generators: list[rng.Generator],
    conds: Any,
    reporter: Any,
    ctx: JobContext,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Upscale the first pass's ``latents`` and run the second pass; latents at the new size.
    ``noise``: the pass's first draw per image (``hires_noise``)."""
    factor = int(session.vae_scale)
    width, height = hires_size(p, factor)
    latent_size = (height // factor, width // factor)
    plan = hires_plan(p, factor)
    pipe = session.txt2img
    mode = latent_mode(p.hr_upscaler)
    seeds = [g.initial_seed() for g in generators]

    if mode is not None:
        image = upscale_latents(latents, latent_size, mode)
    else:
        models_dir = Path(job_settings(session, ctx).models)
        up = UpscaleParams(
            image="",
            upscaler=hires_image_upscaler(p.hr_upscaler),
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
    fresh = [rng.fresh(g, s) for g, s in zip(generators, seeds, strict=True)]
    for g in fresh:
        rng.randn(g, tuple(noise.shape[1:]))
    denoiser = make_denoiser(session, pipe, conds, plan, reporter)
    if needs_image_conditioning(pipe):  # A1111 sample_hr_pass: img2img_image_conditioning
        denoiser.image_cond = image_conditioning(pipe, None, None, width, height)
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
