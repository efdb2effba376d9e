"""Inpainting and outpainting, as A1111 prepares them around its sampler.

What each part follows (A1111 modules/processing.py ``StableDiffusionProcessingImg2Img.init``,
``apply_overlay``, ``inpainting_image_conditioning``, ``txt2img_image_conditioning``;
modules/masking.py; modules/images.py ``resize_image``; scripts/poor_mans_outpainting.py):

- the mask: white = change. An RGBA mask with transparency counts its alpha (over 128 =
  masked), anything else its grey (``create_binary_mask``); "Inpaint not masked" inverts it;
  the blur is OpenCV's separable Gaussian, across then down, kernel ``2*int(2.5*blur+0.5)+1``
  wide with sigma ``blur``, mirrored borders (BORDER_REFLECT_101), rounded to 8 bits after
  each pass (:func:`blur_mask`, here in numpy: OpenCV is not a dependency).
- "Whole picture": the mask is resized like the init image to the job's size; the original
  goes back over the unmasked pixels through the blurred mask doubled (``overlay``).
- "Only masked": the box around the mask plus the padding (``get_crop_region``), widened to
  the job's aspect ratio (``expand_crop_region``), is cut from the init image at its own size,
  resized to the job's size, inpainted, and pasted back (``paste_to``); the output has the init
  image's size, as in A1111.
- Masked content: "fill" blurs the unmasked colours into the hole (``masking.fill``),
  "original" keeps it, "latent noise" / "latent nothing" replace the masked latents (in
  sdtui.engine.generate, from the job's first seeds as A1111 does).
- Outpainting: A1111's "Poor man's outpainting" start (the simpler of its two scripts; Outpainting
  mk2 shapes FFT noise with scikit-image): the image on a black canvas grown by the pixels on
  the chosen sides, the growth rounded up to a multiple of 8 and shared out as that script does
  with 64; the mask white over the new area and the blur's width into the old one, the
  latent mask a quarter of the blur into it. Then the usual inpainting, one pass over the
  whole canvas (the script tiles canvases larger than the job; here the job grows instead).
- A 9-channel inpainting UNet takes the latents, a mask channel and the VAE latents of the
  masked image (``image_conditioning``); txt2img and unmasked img2img give it a mask of ones
  over a mid-grey image, as A1111.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps

from sdtui.engine.latents import encode_pixels, latent_channels
from sdtui.errors import UserError
from sdtui.image_files import open_image_file
from sdtui.params import MAX_SIZE, GenerationParams

Log = Callable[..., None]

# A1111's shared.opts.inpainting_mask_weight default ("Inpainting conditioning mask strength")
INPAINTING_MASK_WEIGHT = 1.0
# masking.fill: (blur radius, times composited), the widest blur first
FILL_LAYERS: tuple[tuple[int, int], ...] = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))

Box = tuple[int, int, int, int]


# -- the mask -------------------------------------------------------------------------------


def load_mask(path: str, megapixels: float | None = None) -> Image.Image:
    """The mask file, decoded (its EXIF rotation applied, as the init image's); a file that is
    not an image, or one over the pixel limit, is a UserError naming it."""
    with open_image_file(path, "mask", megapixels) as im:
        return ImageOps.exif_transpose(im).copy()


def binary_mask(image: Image.Image) -> Image.Image:
    """A1111 ``create_binary_mask`` (with its default rounding): an RGBA mask that has
    transparency is its alpha, 255 above 128 and 0 below; any other mask its grey."""
    if image.mode == "RGBA" and image.getchannel("A").getextrema() != (255, 255):
        return image.getchannel("A").point(lambda v: 255 if v > 128 else 0)
    return image.convert("L")


def gaussian_kernel(blur: int) -> np.ndarray:
    """OpenCV's ``getGaussianKernel(2*int(2.5*blur+0.5)+1, blur)``, the kernel A1111's mask
    blur asks for: ``exp(-x**2 / (2 * blur**2))`` over ``x`` centred on the middle tap,
    normalised to sum 1."""
    size = 2 * int(2.5 * blur + 0.5) + 1
    x = np.arange(size, dtype=np.float64) - (size - 1) * 0.5
    k = np.exp(-0.5 / (blur * blur) * x * x)
    return np.asarray(k / k.sum())


def _blur_axis(a: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """One pass of a separable blur on a uint8 array, mirrored at the edges without repeating
    the edge pixel (OpenCV's BORDER_REFLECT_101 = numpy's "reflect"), rounded back to uint8."""
    r = len(kernel) // 2
    n = a.shape[axis]
    pad = [(0, 0), (0, 0)]
    pad[axis] = (r, r)
    padded = np.pad(a.astype(np.float64), pad, mode="reflect" if n > 1 else "edge")
    out = np.zeros(a.shape, dtype=np.float64)
    for i, w in enumerate(kernel):
        out += w * (padded[:, i : i + n] if axis == 1 else padded[i : i + n, :])
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def blur_mask(mask: Image.Image, blur: int) -> Image.Image:
    """A1111's mask blur: ``cv2.GaussianBlur`` across (kernel (k, 1)), then down ((1, k)),
    each an 8-bit image in between. OpenCV rounds its 8-bit blur in fixed point; this rounds
    the exact sum, so a pixel may differ from OpenCV's by one level."""
    if blur <= 0:
        return mask
    kernel = gaussian_kernel(blur)
    a = np.asarray(mask.convert("L"))
    a = _blur_axis(a, kernel, axis=1)
    a = _blur_axis(a, kernel, axis=0)
    return Image.fromarray(a, mode="L")


# -- A1111 masking.py -----------------------------------------------------------------------


def get_crop_region(mask: Image.Image, pad: int = 0) -> Box | None:
    """The box (x1, y1, x2, y2) around every non-zero pixel, grown by ``pad`` and kept in the
    image; None for a mask with nothing masked (A1111 ``get_crop_region_v2``)."""
    a = np.asarray(mask.convert("L"))
    cols = np.flatnonzero(a.any(axis=0))
    rows = np.flatnonzero(a.any(axis=1))
    if cols.size == 0:
        return None
    w, h = mask.size
    x1, x2 = int(cols[0]), int(cols[-1]) + 1
    y1, y2 = int(rows[0]), int(rows[-1]) + 1
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, w), min(y2 + pad, h)


def _widen(lo: int, hi: int, wanted: float, limit: int) -> tuple[int, int]:
    """One axis of ``expand_crop_region``: grow [lo, hi) to ``wanted`` (the extra split with
    the odd pixel after), shift it back inside [0, limit), and cut what still sticks out."""
    extra = int(wanted - (hi - lo))
    lo -= extra // 2
    hi += extra - extra // 2
    if hi >= limit:
        lo -= hi - limit
        hi = limit
    if lo < 0:
        hi -= lo
        lo = 0
    return lo, min(hi, limit)


def expand_crop_region(
    region: Box, processing_width: int, processing_height: int, image_width: int, image_height: int
) -> Box:
    """A1111 ``masking.expand_crop_region``: the region widened (or made taller) to the
    processing size's aspect ratio, inside the image."""
    x1, y1, x2, y2 = region
    ratio = processing_width / processing_height
    if (x2 - x1) / (y2 - y1) > ratio:
        y1, y2 = _widen(y1, y2, (x2 - x1) / ratio, image_height)
    else:
        x1, x2 = _widen(x1, x2, (y2 - y1) * ratio, image_width)
    return x1, y1, x2, y2


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111 ``masking.fill`` ("Masked content: fill"): the unmasked pixels, premultiplied by
    how unmasked they are, blurred wide then narrower, each blur composited over the last, so
    the hole takes the colours around it."""
    size = image.size
    kept = Image.new("RGBa", size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    out = Image.new("RGBA", size)
    for radius, times in FILL_LAYERS:
        layer = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(times):
            out.alpha_composite(layer)
    return out.convert("RGB")


# -- A1111 images.resize_image and the overlay ------------------------------------------------


def resize_image(mode: str, im: Image.Image, width: int, height: int) -> Image.Image:
    """A1111 ``images.resize_image`` without an upscaler (Lanczos), by sdtui's mode names:
    "just resize" stretches; "crop and resize" scales to cover and centres, cutting the
    excess; "resize and fill" scales to fit, centres, and fills each side band by stretching
    the image's edge row or column."""
    if mode == "just resize":
        return im.resize((width, height), Image.Resampling.LANCZOS)
    ratio, src_ratio = width / height, im.width / im.height
    wide = ratio > src_ratio if mode == "crop and resize" else ratio < src_ratio
    if wide:
        sw, sh = width, max(1, im.height * width // im.width)
    else:
        sw, sh = max(1, im.width * height // im.height), height
    resized = im.resize((sw, sh), Image.Resampling.LANCZOS)
    out = Image.new(im.mode, (width, height))
    out.paste(resized, (width // 2 - sw // 2, height // 2 - sh // 2))
    if mode == "resize and fill":
        if ratio < src_ratio:
            band = height // 2 - sh // 2
            if band > 0:
                out.paste(resized.resize((width, band), box=(0, 0, width, 0)), (0, 0))
                bottom = (0, resized.height, width, resized.height)
                out.paste(resized.resize((width, band), box=bottom), (0, band + sh))
        elif ratio > src_ratio:
            band = width // 2 - sw // 2
            if band > 0:
                out.paste(resized.resize((band, height), box=(0, 0, 0, height)), (0, 0))
                right = (resized.width, 0, resized.width, height)
                out.paste(resized.resize((band, height), box=right), (band + sw, 0))
    return out


def overlay_image(image: Image.Image, mask_for_overlay: Image.Image) -> Image.Image:
    """The original as an RGBA layer, opaque where unmasked and fading out through the
    blurred mask (A1111 ``p.overlay_images``)."""
    layer = Image.new("RGBa", image.size)
    layer.paste(
        image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask_for_overlay.convert("L"))
    )
    return layer.convert("RGBA")


def apply_overlay(image: Image.Image, paste_to: Box | None, overlay: Image.Image) -> Image.Image:
    """A1111 ``apply_overlay``: with "Only masked", the result resized ("crop and resize") into
    its box of the full-size canvas (``uncrop``); then the original composited over it."""
    if paste_to is not None:
        x, y, w, h = paste_to
        canvas = Image.new("RGBA", overlay.size)
        canvas.paste(resize_image("crop and resize", image, w, h), (x, y))
        image = canvas
    out = image.convert("RGBA")
    out.alpha_composite(overlay)
    return out.convert("RGB")


# -- outpainting ----------------------------------------------------------------------------


def outpaint_extents(
    width: int, height: int, pixels: int, sides: tuple[str, ...]
) -> tuple[int, int, int, int]:
    """(left, right, up, down) pixels added to a ``width`` x ``height`` image: ``pixels`` on
    each chosen side, the growth along each axis rounded up so the canvas stays a multiple
    of 8, shared as poor_mans_outpainting.py shares its multiple of 64 (the first side gets
    its proportional part, the second the rest)."""
    left = pixels if "left" in sides else 0
    right = pixels if "right" in sides else 0
    up = pixels if "up" in sides else 0
    down = pixels if "down" in sides else 0
    target_w = math.ceil((width + left + right) / 8) * 8
    target_h = math.ceil((height + up + down) / 8) * 8
    if left:
        left = left * (target_w - width) // (left + right)
    if right:
        right = target_w - width - left
    if up:
        up = up * (target_h - height) // (up + down)
    if down:
        down = target_h - height - up
    return left, right, up, down


def _outpaint_mask(
    size: tuple[int, int], extents: tuple[int, int, int, int], inset: int
) -> Image.Image:
    """White over the new area and ``inset`` pixels into the old one on the grown sides."""
    w, h = size
    left, right, up, down = extents
    mask = Image.new("L", size, 255)
    x1 = left + (inset if left else 0)
    y1 = up + (inset if up else 0)
    x2 = w - right - (inset if right else 0)
    y2 = h - down - (inset if down else 0)
    if x2 > x1 and y2 > y1:
        # the script's rectangle ends one pixel further (ImageDraw's end is inclusive), which
        # leaves a black line of canvas at blur 0; this one ends where the new area starts
        ImageDraw.Draw(mask).rectangle((x1, y1, x2 - 1, y2 - 1), fill=0)
    return mask


def outpaint_canvas(
    image: Image.Image, pixels: int, sides: tuple[str, ...], blur: int
) -> tuple[Image.Image, Image.Image, Image.Image, tuple[int, int, int, int]]:
    """Poor man's outpainting's start: (canvas, mask, latent mask, extents). The image sits
    on a black canvas; the mask reaches ``blur`` pixels into the image on the grown sides (the
    script's ``mask_blur * 2`` with its blur of ``mask_blur * 2``), the latent mask a quarter
    of that (its ``mask_blur // 2``)."""
    extents = outpaint_extents(image.width, image.height, pixels, sides)
    left, right, up, down = extents
    size = (image.width + left + right, image.height + up + down)
    canvas = Image.new("RGB", size)
    canvas.paste(image, (left, up))
    return (
        canvas,
        _outpaint_mask(size, extents, blur),
        _outpaint_mask(size, extents, blur // 4),
        extents,
    )


# -- one job's preparation ------------------------------------------------------------------


@dataclass
class InpaintJob:
    """What an inpainting job samples from and pastes back."""

    width: int  # the job's size: the canvas for an outpainting, else the params' size
    height: int
    image: Image.Image  # what the VAE encodes: job size, the masked content filled
    image_mask: Image.Image | None  # job size: the 9-channel UNet's mask (rounded there)
    latent_mask: Image.Image | None  # job size: the latent blend's mask (rounded at latent size)
    overlay: Image.Image | None  # RGBA, the output's size: the original over the unmasked pixels
    paste_to: tuple[int, int, int, int] | None  # "Only masked": (x, y, w, h) in the output
    fill: str  # masked content
    only_masked: bool  # as it ran: a blank mask turns "Only masked" into plain img2img


def prepare(
    p: GenerationParams, source: Image.Image, mask: Image.Image | None, log: Log
) -> InpaintJob:
    """A1111's ``StableDiffusionProcessingImg2Img.init`` up to the VAE: ``source`` is the init
    image as read (RGB, its own size), ``mask`` the mask file as read (None: outpainting only)."""
    width, height = p.width, p.height
    latent_override: Image.Image | None = None
    if p.outpaint_pixels:
        base = resize_image(p.resize_mode, source, width, height)
        canvas, omask, olatent, extents = outpaint_canvas(
            base, p.outpaint_pixels, p.outpaint_side_list, p.mask_blur
        )
        left, _, up, _ = extents
        if max(canvas.size) > MAX_SIZE:
            raise UserError(
                f"outpainting {p.outpaint_pixels} px on {p.outpaint_sides} makes the image "
                f"{canvas.width}x{canvas.height}, more than {MAX_SIZE} on a side: outpaint fewer "
                "pixels or start from a smaller size"
            )
        if mask is not None:
            user = binary_mask(mask)
            if p.inpainting_mask_invert:
                user = ImageOps.invert(user)
            if user.size != source.size:
                log(_size_note(user.size, source.size, "resized with it to the job's size"))
            placed = Image.new("L", canvas.size, 0)
            placed.paste(resize_image(p.resize_mode, user, width, height), (left, up))
            omask = ImageChops.lighter(omask, placed)
            olatent = ImageChops.lighter(olatent, placed)
        elif p.inpainting_mask_invert:
            log("invert mask applies to a mask file: the outpainting mask is not inverted")
        if p.inpainting_fill == "original":
            log(
                "outpainting with masked content 'original' starts the new area from black; "
                "'fill' (the default of A1111's Poor man's outpainting) usually blends better"
            )
        source, mask, latent_override = canvas, omask, olatent
        width, height = canvas.size
    else:
        if mask is None:
            raise ValueError("inpainting needs a mask or an outpainting")
        mask = binary_mask(mask)
        if p.inpainting_mask_invert:
            mask = ImageOps.invert(mask)
        if mask.size != source.size:
            if p.inpaint_full_res:
                log(_size_note(mask.size, source.size, "stretched to the image's size"))
                mask = mask.resize(source.size, Image.Resampling.LANCZOS)
            else:
                log(_size_note(mask.size, source.size, "resized like it to the job's size"))
    mask = blur_mask(mask, p.mask_blur)

    crop: Box | None = None
    if p.inpaint_full_res:
        mask_for_overlay = mask
        region = get_crop_region(mask, p.inpaint_full_res_padding)
        if region is None:
            log('the mask is blank: "Only masked" has nothing to crop, so this runs as img2img')
            return InpaintJob(
                width,
                height,
                resize_image(p.resize_mode, source, width, height),
                None,
                None,
                None,
                None,
                p.inpainting_fill,
                only_masked=False,
            )
        crop = expand_crop_region(region, width, height, mask.width, mask.height)
        image_mask = resize_image("resize and fill", mask.crop(crop), width, height)
        if latent_override is not None:
            latent_override = resize_image(
                "resize and fill", latent_override.crop(crop), width, height
            )
    else:
        image_mask = resize_image(p.resize_mode, mask, width, height)
        # the original comes back through the mask doubled: over the blur's outer half
        mask_for_overlay = image_mask.point(lambda v: min(255, 2 * v))
        if image_mask.getbbox() is None:
            log("the mask is all black: nothing is inpainted")
    latent_mask = latent_override if latent_override is not None else image_mask

    image = source if crop is not None else resize_image(p.resize_mode, source, width, height)
    if mask_for_overlay.size != image.size:
        mask_for_overlay = resize_image(p.resize_mode, mask_for_overlay, image.width, image.height)
    overlay = overlay_image(image, mask_for_overlay)
    paste_to = None
    if crop is not None:
        x1, y1, x2, y2 = crop
        paste_to = (x1, y1, x2 - x1, y2 - y1)
        image = resize_image("resize and fill", image.crop(crop), width, height)
    if p.inpainting_fill != "original":
        image = fill(image, latent_mask)
    return InpaintJob(
        width,
        height,
        image,
        image_mask,
        latent_mask,
        overlay,
        paste_to,
        p.inpainting_fill,
        only_masked=crop is not None,
    )


def _size_note(mask: tuple[int, int], image: tuple[int, int], what: str) -> str:
    return f"the mask is {mask[0]}x{mask[1]} and the init image {image[0]}x{image[1]}: the mask is {what}"


# -- tensors for the sampler ----------------------------------------------------------------


def latent_mask(mask: Image.Image, height: int, width: int) -> torch.Tensor:
    """A1111's ``latmask``: the mask resized to the latents' size (Pillow's default bicubic),
    rounded to 0 / 1; (1, 1, h, w), 1 = resampled."""
    small = mask.convert("L").resize((width, height), Image.Resampling.BICUBIC)
    a = np.around(np.asarray(small, dtype=np.float32) / 255)
    return torch.from_numpy(a)[None, None]


def needs_image_conditioning(pipe: Any) -> bool:
    """An inpainting UNet: it takes the latents and 5 channels more (mask, masked image)."""
    return int(pipe.unet.config.in_channels) == latent_channels(pipe) + 5


@torch.no_grad()
def image_conditioning(
    pipe: Any, image: Image.Image | None, mask: Image.Image | None, width: int, height: int
) -> torch.Tensor:
    """The (1, 5, h, w) input an inpainting UNet takes beside the latents: the mask (rounded,
    resized to the latents' size by nearest) and the VAE latents of the image with the mask
    blanked out (``torch.lerp`` by the mask weight 1.0), as A1111's
    ``inpainting_image_conditioning``. Without a mask (txt2img, img2img without one) the mask
    is all ones over a mid-grey image (``txt2img_image_conditioning``). The latents are the
    VAE posterior's mean: A1111 samples it from the global RNG, which no seed reproduces."""
    if image is None:
        x = torch.zeros(1, 3, height, width)
    else:
        a = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        x = torch.from_numpy(a).permute(2, 0, 1)[None] * 2 - 1
    if mask is None:
        m = torch.ones(1, 1, x.shape[2], x.shape[3])
    else:
        m = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[None, None]
        m = torch.round(m)
    masked = torch.lerp(x, x * (1.0 - m), INPAINTING_MASK_WEIGHT)
    latents = encode_pixels(pipe, masked)
    m = F.interpolate(m, size=latents.shape[-2:]).to(latents)
    return torch.cat([m, latents], dim=1)


def read_init_image(path: str, megapixels: float | None = None) -> Image.Image:
    """The init image at its own size, upright (EXIF), RGB with any transparency flattened
    onto white (A1111 ``images.flatten`` with its img2img background colour, #ffffff)."""
    with open_image_file(path, "init image", megapixels) as im:
        image = ImageOps.exif_transpose(im)
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            flat.alpha_composite(rgba)
            return flat.convert("RGB")
        return image.convert("RGB")
