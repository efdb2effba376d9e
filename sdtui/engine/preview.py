"""Cheap live previews: latents -> RGB with a 4x3 matrix per model family (A1111's
"Approx cheap"), at 1/8 of the image size, which is about what a terminal shows."""

from __future__ import annotations

import io

import torch
from PIL import Image

SD1_FACTORS = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
]
SDXL_FACTORS = [
    [0.3448, 0.4168, 0.4395],
    [-0.1953, -0.0290, 0.0250],
    [0.1074, 0.0886, -0.0163],
    [-0.3730, -0.2499, -0.2088],
]


def latents_to_image(
    latents: torch.Tensor, family: str = "SD1", max_side: int = 256
) -> Image.Image:
    """A (B, 4, h, w) latent batch as one RGB image, the batch side by side in a grid."""
    factors = torch.tensor(SDXL_FACTORS if family == "SDXL" else SD1_FACTORS)
    lat = latents.detach().float().cpu()
    if lat.shape[1] != 4:
        lat = lat[:, :4]
    rgb = torch.einsum("bchw,cr->bhwr", lat, factors)
    rgb = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    b, h, w, _ = rgb.shape
    cols = b if b <= 3 else int(round(b**0.5 + 0.49))
    rows = (b + cols - 1) // cols
    grid = Image.new("RGB", (cols * w, rows * h))
    for i in range(b):
        grid.paste(Image.fromarray(rgb[i]), ((i % cols) * w, (i // cols) * h))
    if max(grid.size) > max_side:
        grid.thumbnail((max_side, max_side))
    return grid


def to_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
