"""Hires fix on Flux.1 / SD3.5, as A1111's ``sample_hr_pass`` (and so Forge) runs it.

The first pass is the txt2img job at its size. Its result is upscaled to
``int(width * hr_scale)`` x ``int(height * hr_scale)`` (rounded down to 16, what these models
take): a "Latent ..." upscaler resizes the latents (Flux's unpacked to 16 x h x w first) with
A1111's interpolation modes, any other upscaler (Lanczos, Nearest, an ESRGAN model) upscales
the decoded images as Extras does. The second pass is img2img at the new size through the
family's img2img pipeline, with the same sampler, prompt, CFG and guidance: exactly the
Hires steps asked, from a schedule ``int(steps / denoise)`` long (A1111's
``setup_img2img_steps`` with steps given; ``sdtui.steps.hires_schedule``), its noise from new
per-image generators of the same seeds (A1111 makes a new ImageRNG for the pass). Denoising
strength 0 keeps the upscaled result.

The arithmetic and the upscaler names are SD's hires fix's (``sdtui.engine.hires``,
``sdtui.steps``, ``sdtui.upscalers``); the passes are diffusers' pipelines, as every DiT job.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sdtui.engine import ksampling
from sdtui.engine.flow_samplers import FlowKSampler
from sdtui.engine.hires import upscale_latents
from sdtui.params import GenerationParams, UpscaleParams
from sdtui.steps import hires_schedule, hires_size
from sdtui.upscalers import hires_image_upscaler, latent_mode

# Flux packs 2x2 latent patches over an 8x VAE: sizes in multiples of 16 (SD3.5 too, its
# patch size being 2)
MULTIPLE = 16


class DitHires:
    """One job's hires fix: what the first pass returns, then the second pass per batch."""

    def __init__(
        self,
        pipe: Any,
        p: GenerationParams,
        flux: bool,
        make_view: Callable[[Any, bool, FlowKSampler | None], Any],
        make_sampler: Callable[[Any, GenerationParams, bool, int], FlowKSampler | None],
    ) -> None:
        self.pipe, self.p, self.flux = pipe, p, flux
        self.width, self.height = hires_size(p, MULTIPLE)
        self.schedule, self.steps = hires_schedule(p)  # (0, 0): no second pass
        self.mode = latent_mode(p.hr_upscaler)
        at_size = p.replace(width=self.width, height=self.height)
        self.sampler = (
            make_sampler(pipe, at_size, flux, self.schedule - self.steps) if self.steps else None
        )
        self.view = make_view(pipe, True, self.sampler)
        self.calls = ksampling.model_calls(p.sampler, self.steps)

    @property
    def first_output(self) -> str:
        """The first pass's ``output_type``: latents for a latent upscaler, else images."""
        return "latent" if self.mode is not None else "pil"

    def _latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The first pass's latents as (B, C, h, w), upscaled to the hires size."""
        pipe, p = self.pipe, self.p
        if self.flux:  # packed (B, tokens, 64) -> (B, 16, h, w)
            latents = pipe._unpack_latents(latents, p.height, p.width, pipe.vae_scale_factor)
        factor = int(pipe.vae_scale_factor)
        assert self.mode is not None
        return upscale_latents(latents, (self.height // factor, self.width // factor), self.mode)

    def _decode(self, latents: torch.Tensor, log: Any) -> list[Any]:
        """The upscaled latents as images (hires at denoise 0); out of memory at the hires
        size, decoded again in tiles (the ladder's rung for a decode)."""
        from sdtui.engine.memory import free_caches, is_oom

        vae = self.pipe.vae
        shift = vae.config.shift_factor or 0.0
        z = latents.to(vae.device, vae.dtype) / vae.config.scaling_factor + shift
        try:
            images = vae.decode(z, return_dict=False)[0]
        except Exception as e:
            if not is_oom(e):
                raise
            images = None
        if images is None:  # outside the except block: the error's tensors are gone
            free_caches()
            log("out of memory decoding the upscaled latents: decoding in tiles", "warning")
            vae.enable_tiling()
            try:
                images = vae.decode(z, return_dict=False)[0]
            finally:
                vae.disable_tiling()
        return list(self.pipe.image_processor.postprocess(images, output_type="pil"))

    def upscaled(self, first: Any, models_dir: Path, device: Any, log: Any) -> Any:
        """The first pass's result at the hires size: latents, or a list of images."""
        if self.mode is not None:
            return self._latents(first)
        from sdtui.engine.upscale import upscale_pil

        up = UpscaleParams(
            image="",
            upscaler=hires_image_upscaler(self.p.hr_upscaler),
            target_width=self.width,
            target_height=self.height,
        )
        return [upscale_pil(im, up, models_dir, device=device, log=log) for im in first]

    def second_pass(
        self,
        first: Any,
        call: dict[str, Any],
        seeds: list[int],
        variation: tuple[torch.Tensor, float] | None,
        run: Callable[[Any, dict[str, Any]], Any],
        on_step: Callable[..., Any],
        models_dir: Path,
        device: Any,
        log: Any,
    ) -> list[Any]:
        """Upscale ``first`` and run the second pass (``run(view, call)``: the job's memory
        ladder); the images at the hires size. ``variation``: the variation seeds' noise at
        the hires size and the strength to slerp the pass's own noise toward it (A1111's
        hires ImageRNG)."""
        image = self.upscaled(first, models_dir, device, log)
        if not self.steps:
            log("hires fix: denoising strength 0; upscaled without a second pass")
            return self._decode(image, log) if isinstance(image, torch.Tensor) else image
        # A1111's sample_hr_pass: a new ImageRNG of the same seeds for the pass's noise
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        if self.sampler is not None:
            self.sampler.generators, self.sampler.seeds = generators, list(seeds)
            self.sampler.variation = variation
        skip = ("image", "strength", "output_type", "latents")
        second = {k: v for k, v in call.items() if k not in skip}
        second |= dict(
            image=image,
            # exactly ``steps`` of a ``schedule``-long schedule (see sdtui.engine.dit's
            # img2img_strength for why half a step under)
            strength=(self.steps - 0.5) / self.schedule,
            num_inference_steps=self.schedule,
            width=self.width,
            height=self.height,
            generator=generators,
            callback_on_step_end=on_step,
            output_type="pil",
        )
        try:
            return list(run(self.view, second))
        finally:
            if self.sampler is not None:
                self.sampler.close()
