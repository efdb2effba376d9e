"""Latents in and out of pixel space (the VAE's decode and encode), and a job's initial
latent noise, as A1111 makes them."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from sdtui.engine.job import JobContext


def make_noise(
    seed: int, shape: tuple[int, ...], subseed: int | None, strength: float
) -> torch.Tensor:
    """Initial noise for one image from its own CPU generator (A1111's "RNG: CPU"), with
    A1111's variation seed (modules/rng.py ``ImageRNG.first``): noise from the seed,
    subnoise from the subseed, ``slerp(subseed_strength, noise, subnoise)``."""
    noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))
    if subseed is not None and strength != 0:
        other = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(subseed))
        noise = slerp(strength, noise, other)
    return noise


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's modules/rng.py ``slerp``, line for line: norms over ``dim=1`` of one image's
    (C, H, W) noise, and its "lerp" when the noises are nearly parallel (which weights
    ``low`` by ``val``, as A1111 does)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (
        torch.sin(val * omega) / so
    ).unsqueeze(1) * high


def decode_latents(pipe: Any, latents: torch.Tensor, ctx: JobContext) -> list[Image.Image]:
    """Latents to images. An fp16 SDXL VAE whose config says ``force_upcast`` decodes in fp32,
    as diffusers' SDXL pipeline does (SD1/SD2 configs carry the flag by default, and diffusers
    ignores it there); any other reduced-precision decode that gives NaN runs again in fp32
    (A1111's fix), and the rest of the job then decodes in fp32 directly."""
    vae = pipe.vae
    scaled = latents / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        scaled = scaled + shift
    own = vae.dtype
    force = (
        own == torch.float16
        and ctx.family == "SDXL"
        and bool(getattr(vae.config, "force_upcast", False))
    )
    upcast = own != torch.float32 and (force or ctx.vae_fp32)
    image = _vae_decode(pipe, scaled, torch.float32 if upcast else own)
    if not upcast and own != torch.float32 and torch.isnan(image).any():
        ctx.log(
            f"the VAE gave NaN in {str(own).removeprefix('torch.')}: decoding again in fp32 "
            "(and for the rest of this job)",
            "warning",
        )
        ctx.vae_fp32 = True
        image = _vae_decode(pipe, scaled, torch.float32)
    if torch.isnan(image).any():
        ctx.log("the VAE gave NaN even in fp32: the image is black; try another VAE", "warning")
        image = torch.nan_to_num(image)
    return pipe.image_processor.postprocess(image.float(), output_type="pil")


def _vae_decode(pipe: Any, scaled: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One decode in ``dtype``; the VAE goes back to its own dtype even when this raises."""
    vae = pipe.vae
    own = vae.dtype
    # with model offload the VAE sits on the CPU until its hook moves it: aim at the GPU
    device = getattr(pipe, "_execution_device", None) or scaled.device
    try:
        if dtype != own:
            vae.to(dtype)
        with torch.no_grad():
            return vae.decode(scaled.to(device, dtype), return_dict=False)[0]
    finally:
        if vae.dtype != own:
            vae.to(own)


@torch.no_grad()
def encode_images(pipe: Any, images: list[Image.Image], seeds: list[int]) -> torch.Tensor:
    """Images -> scaled latents, one posterior sample per image from a generator of its own
    seed (A1111 samples the VAE posterior too, from the global RNG; this keeps an image of a
    batch the same alone, and leaves the image's noise generator untouched)."""
    vae = pipe.vae
    device = getattr(pipe, "_execution_device", None) or vae.device
    x = pipe.image_processor.preprocess(images).to(device, vae.dtype)
    dist = vae.encode(x).latent_dist
    mean, std = dist.mean.float(), dist.std.float()
    eps = torch.stack(
        [
            torch.randn(mean.shape[1:], generator=torch.Generator("cpu").manual_seed(s))
            for s in seeds
        ]
    ).to(mean.device)
    latents = mean + std * eps
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor
