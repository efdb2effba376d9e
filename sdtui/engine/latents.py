"""Latents in and out of pixel space (the VAE's decode and encode), and a job's initial
latent noise, as A1111 makes them."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from sdtui.engine.job import JobContext


def make_noise(
    seed: int,
    shape: tuple[int, ...],
    subseed: int | None,
    strength: float,
    source: str = "CPU",
    device: Any = "cpu",
) -> torch.Tensor:
    """Initial noise for one image, on the CPU: the first draw of its seed's generator of
    ``source`` (A1111's RNG setting, sdtui.engine.rng) on ``device``, with A1111's variation
    seed (modules/rng.py ``ImageRNG.first``): noise from the seed, subnoise from the
    subseed, ``slerp(subseed_strength, noise, subnoise)``."""
    from sdtui.engine import rng

    noise = rng.draw(source, seed, shape, device)
    if subseed is not None and strength != 0:
        noise = slerp(strength, noise, rng.draw(source, subseed, shape, device))
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
    # on Apple's GPU the VAE decodes in fp32 from the start, as A1111's macOS setup does
    # (--no-half-vae): fp16 VAEs give NaN or black images there too often to try first
    mps = vae.device.type == "mps"
    upcast = own != torch.float32 and (force or ctx.vae_fp32 or mps)
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
    return encode_pixels(pipe, pipe.image_processor.preprocess(images), seeds)


@torch.no_grad()
def encode_pixels(pipe: Any, x: torch.Tensor, seeds: list[int] | None = None) -> torch.Tensor:
    """A (B, 3, H, W) batch in [-1, 1] -> scaled latents: a posterior sample per image from
    its seed's own generator, or the posterior mean without ``seeds``."""
    vae = pipe.vae
    device = getattr(pipe, "_execution_device", None) or vae.device
    dist = vae.encode(x.to(device, vae.dtype)).latent_dist
    latents = dist.mean.float()
    if seeds is not None:
        std = dist.std.float()
        eps = torch.stack(
            [
                torch.randn(latents.shape[1:], generator=torch.Generator("cpu").manual_seed(s))
                for s in seeds
            ]
        ).to(latents.device)
        latents = latents + std * eps
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def latent_channels(pipe: Any) -> int:
    """The VAE's latent channels (4 for SD1/SD2/SDXL): the shape of the noise and the init
    latents, whatever the UNet takes in (an inpainting UNet takes 9: the latents, a mask
    channel and the masked image's latents)."""
    return int(getattr(pipe.vae.config, "latent_channels", 4))
