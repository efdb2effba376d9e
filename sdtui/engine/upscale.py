"""Extras: upscale an image with a model (spandrel) or a resampler (Lanczos / Nearest).

What A1111 does, and what we keep (modules/upscaler.py, scripts/postprocessing_upscale.py):

- "Scale by" N: run the model on the image, again (up to 3 passes) while the result is still
  smaller than N x the source, then Lanczos-resize to the exact size. "Scale to" WxH: scale by
  max(W/w, H/h) the same way, then crop the centre to WxH (A1111's default "Crop to fit").
- Upscaler 2 is run the same way on the source and blended over the first result with
  ``Image.blend(first, second, visibility)``.
- GFPGAN and CodeFormer (``sdtui.engine.faces``) restore faces when their visibility is above
  0, GFPGAN first, each blended over the image with its visibility; on the source image, or
  on the upscaled one with "Upscale Before Restoring Faces" (``upscale_first``), whose order
  (upscale, GFPGAN, CodeFormer) is A1111's postprocessing order today.
- Models run in tiles (A1111: 192 px, overlap 8). Tiles are feathered across the overlap
  and summed with their weights, so the seams do not show.

What we do differently, on purpose:

- The model gets RGB, as spandrel documents (A1111 feeds BGR to every spandrel model).
- "Scale by" N gives exactly round(w * N) x round(h * N) (A1111 floors to a multiple of 8).
- A second or third model pass starts from the previous result shrunk (Lanczos) to just what
  the pass needs, so the memory of a pass never exceeds about model-scale x the target.
- Memory stays bounded: tiles go to the device one at a time, and the result is assembled on
  the CPU one row of tiles at a time as 8-bit pixels (a 4096x4096 result needs ~50 MB plus a
  strip of float32 the width of the image). Out of GPU memory halves the tile and starts over.
- Alpha (RGBA, LA, transparent palette images) is resized with Lanczos, not by the model; the
  image keeps its mode (L stays L, RGBA stays RGBA; palette and other modes come back RGB/A).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdtui.engine.spandrel_files import free_memory as _free_memory
from sdtui.engine.spandrel_files import read_state_dict
from sdtui.errors import UserError
from sdtui.infotext import append_pairs, format_pairs, infotext_from_image
from sdtui.params import ParamError, UpscaleParams
from sdtui.upscalers import (
    BUILTIN,
    NEAREST,
    UpscalerEntry,
    list_upscalers,
    resolve_upscaler,
)

Log = Callable[[str], None]
ImageModel = Any  # spandrel.ImageModelDescriptor; typed loosely so tests may wrap it

MIN_TILE = 16  # below this, halving on out-of-memory gives up
MAX_MODEL_PASSES = 3  # as A1111
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")

_LANCZOS = Image.Resampling.LANCZOS
_NEAREST = Image.Resampling.NEAREST

# -- loading --------------------------------------------------------------------------------

_cache_lock = threading.Lock()
_cached: tuple[tuple[str, int, int, str], ImageModel] | None = None


def unload_upscaler() -> None:
    """Drop the cached upscaler model and give its memory back."""
    global _cached
    with _cache_lock:
        _cached = None
    _free_memory()


def load_upscaler(path: str | Path, device: str | torch.device = "cpu") -> ImageModel:
    """Load an upscaler model file with spandrel, in eval mode, on ``device``.

    The weights are read the way checkpoints are (``sdtui.engine.models``): safetensors, or a
    pickle through torch's weights-only unpickler; a TorchScript file, whose loading runs its
    code, is refused, and so is a pickle that names code or claims more than it holds. Only
    the state dict reaches spandrel, never the file.

    The last model stays cached (keyed by path, size, mtime and device); loading another one
    first drops it, so only one upscaler is ever in memory. fp16 is used on CUDA when the
    architecture supports it. Anything that is not a single-image upscaler gives a UserError.
    """
    from sdtui.regular_files import regular_stat, shown

    global _cached
    path = Path(path).expanduser()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UserError(
            f"Upscaler model file {shown(path)} does not exist: check the path, or put the "
            "file in models/ESRGAN or models/RealESRGAN."
        ) from None
    if path.is_dir():
        raise UserError(
            f"{shown(path)} is a folder, not an upscaler model: name a .pth file in it."
        )
    regular_stat(path)  # a named pipe or a device is refused before anything opens it
    dev = torch.device(device)
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, str(dev))
    with _cache_lock:
        if _cached is not None and _cached[0] == key:
            return _cached[1]
        if _cached is not None:
            _cached = None
            _free_memory()
        model = _load(path, dev)
        _cached = (key, model)
        return model


def _load(path: Path, device: torch.device) -> ImageModel:
    import spandrel

    from sdtui.regular_files import shown

    name = shown(path)
    not_model = (
        f"{name} is not an upscaler model that sdtui can read (ESRGAN, Real-ESRGAN, SwinIR, "
        "HAT, DAT, SPAN, ... as .pth, .pt or .safetensors): check that the download finished "
        "and that the file is an upscaler, not a checkpoint or LoRA."
    )
    state_dict = read_state_dict(path, not_model)
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(state_dict)
    except torch.OutOfMemoryError:
        raise
    except spandrel.UnsupportedModelError as e:
        raise UserError(not_model, detail=f"spandrel: {e}") from None
    except MemoryError:
        raise UserError(f"Not enough memory to load {name}: close other programs.") from None
    except Exception as e:  # noqa: BLE001 - weights that fit no architecture: "not a model"
        raise UserError(not_model, detail=f"{type(e).__name__}: {e}") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UserError(
            f"{name} is a {descriptor.architecture.name} model for "
            f"{descriptor.purpose.lower()}, not an upscaler: choose another file."
        )
    if descriptor.purpose == "FaceSR":
        raise UserError(
            f"{name} is a face restoration model ({descriptor.architecture.name}), not an "
            "upscaler: put GFPGAN files in models/GFPGAN and CodeFormer files in "
            "models/Codeformer, and use them with the GFPGAN / CodeFormer visibility of Extras "
            "or Restore faces; choose an upscaler file here."
        )
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UserError(
            f"{name} works on {descriptor.input_channels}-channel images, not RGB: "
            "choose an RGB upscaler."
        )
    descriptor.eval()
    if device.type != "cpu":
        try:
            descriptor.to(device)
            if device.type == "cuda" and descriptor.supports_half:
                descriptor.half()
        except torch.OutOfMemoryError:
            raise UserError(
                f"Not enough GPU memory to load {shown(path.name)}: free GPU memory (unload "
                "the checkpoint) or upscale on the CPU."
            ) from None
    return descriptor


# -- tiled inference ------------------------------------------------------------------------


def _positions(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    return list(range(0, length - tile, stride)) + [length - tile]


def _ramp(n: int, lead: bool, trail: bool, band: int) -> torch.Tensor:
    """1-D weights over a tile's n output pixels: ramps up over ``band`` px from an inner edge."""
    w = torch.ones(n, dtype=torch.float32)
    band = min(band, n // 2)
    if band > 0:
        r = (torch.arange(band, dtype=torch.float32) + 0.5) / band
        if lead:
            w[:band] = torch.minimum(w[:band], r)
        if trail:
            w[n - band :] = torch.minimum(w[n - band :], r.flip(0))
    return w


def _to_out(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.uint8:
        return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return x.to(dtype)


@torch.no_grad()
def _run_tiles(
    model: ImageModel,
    image: torch.Tensor,
    tile: int,
    overlap: int,
    out_dtype: torch.dtype,
    before_tile: Callable[[int], None] | None,
    progress: Callable[[int, int], None] | None,
) -> torch.Tensor:
    """The model over ``image`` (1, C, h, w) in tiles; returns (h*s, w*s, C) on the CPU."""
    _, c, h, w = image.shape
    s = int(model.scale)
    th, tw = min(tile, h), min(tile, w)
    ov = max(0, min(overlap, min(th, tw) // 2))
    ys, xs = _positions(h, th, ov), _positions(w, tw, ov)
    total = len(ys) * len(xs)
    band = ov * s
    dev = torch.device(getattr(model, "device", "cpu"))
    dt = getattr(model, "dtype", torch.float32)
    out = torch.empty((h * s, w * s, c), dtype=out_dtype)
    acc = torch.zeros((0, w * s, c), dtype=torch.float32)
    wsum = torch.zeros((0, w * s, 1), dtype=torch.float32)
    top = 0  # output row where acc starts
    done = 0
    for i, y0 in enumerate(ys):
        y1 = min(y0 + th, h)
        rows = y1 * s - top
        if rows > acc.shape[0]:
            grow = rows - acc.shape[0]
            acc = torch.cat([acc, torch.zeros((grow, w * s, c))], 0)
            wsum = torch.cat([wsum, torch.zeros((grow, w * s, 1))], 0)
        wy = _ramp((y1 - y0) * s, y0 > 0, y1 < h, band)
        for x0 in xs:
            x1 = min(x0 + tw, w)
            if before_tile is not None:
                before_tile(max(th, tw))
            patch = image[:, :, y0:y1, x0:x1]
            if patch.dtype == torch.uint8:
                patch = patch.to(dev).to(dt).div_(255.0)
            else:
                patch = patch.to(dev, dt)
            result = model(patch)
            del patch
            result = result[0].float().cpu().permute(1, 2, 0)  # (th*s, tw*s, C)
            wx = _ramp((x1 - x0) * s, x0 > 0, x1 < w, band)
            wt = (wy[:, None] * wx[None, :]).unsqueeze(-1)
            ry0, ry1 = y0 * s - top, y1 * s - top
            acc[ry0:ry1, x0 * s : x1 * s].add_(result * wt)
            wsum[ry0:ry1, x0 * s : x1 * s].add_(wt)
            del result
            done += 1
            if progress is not None:
                progress(done, total)
        final_end = ys[i + 1] * s if i + 1 < len(ys) else h * s
        n = final_end - top
        out[top:final_end] = _to_out(acc[:n].div_(wsum[:n]), out_dtype)
        acc, wsum = acc[n:].clone(), wsum[n:].clone()
        top = final_end
    return out


def upscale_tensor(
    model: ImageModel,
    image_tensor: torch.Tensor,
    tile: int = 192,
    overlap: int = 8,
    *,
    log: Log = print,
    out_dtype: torch.dtype = torch.float32,
    before_tile: Callable[[int], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Run ``model`` over an image tensor in overlapping, feathered tiles.

    ``image_tensor``: (1, 3, H, W) or (3, H, W) on the CPU, float in [0, 1] or uint8 in
    [0, 255]. ``tile`` 0 means the whole image at once. Returns (1, 3, H*s, W*s) on the CPU
    in ``out_dtype`` (float in [0, 1], or uint8). Each tile goes to the model's device; the
    result is assembled on the CPU. On out-of-GPU-memory the tile is halved (logged) and the
    image starts over, down to 16 px. ``before_tile(tile_px)`` is called before each tile
    (tests use it to inject an out-of-memory error); ``progress(done, total)`` after each.
    """
    image = image_tensor.unsqueeze(0) if image_tensor.dim() == 3 else image_tensor
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"expected a (1, C, H, W) image tensor, got {tuple(image_tensor.shape)}")
    image = image.cpu()
    h, w = image.shape[-2:]
    current = tile if tile and tile > 0 else max(h, w)
    while True:
        try:
            hwc = _run_tiles(model, image, current, overlap, out_dtype, before_tile, progress)
            return hwc.permute(2, 0, 1).unsqueeze(0)
        except torch.OutOfMemoryError:
            _free_memory()
            used = max(min(current, h), min(current, w))
            smaller = max(used // 2, MIN_TILE)
            if used <= MIN_TILE:
                raise UserError(
                    f"Out of GPU memory even with {used} px tiles: free GPU memory (close other "
                    "GPU programs, unload the checkpoint) or upscale on the CPU."
                ) from None
            log(f"Out of GPU memory with {used} px tiles; retrying with {smaller} px tiles.")
            current = smaller


# -- images ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    size: tuple[int, int]  # what the upscalers produce (covers the target)
    crop: tuple[int, int] | None  # then the centre crop, in "scale to" mode


def _plan(w: int, h: int, params: UpscaleParams) -> _Plan:
    tw, th = params.target_width, params.target_height
    if (tw is None) != (th is None):
        raise UserError(
            "Set both target width and height to upscale to a size, or neither to scale by "
            f"a factor (got width {tw}, height {th})."
        )
    if tw and th:
        s = max(tw / w, th / h)
        size = (max(tw, round(w * s)), max(th, round(h * s)))
        return _Plan(size, (tw, th) if size != (tw, th) else None)
    return _Plan((max(1, round(w * params.scale)), max(1, round(h * params.scale))), None)


def _split_alpha(img: Image.Image) -> tuple[Image.Image, Image.Image | None, str]:
    """(RGB image for the upscalers, alpha or None, the mode to give back)."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        return img.convert("RGB"), img.getchannel("A"), img.mode
    if img.mode == "L":
        return img.convert("RGB"), None, "L"
    return (img if img.mode == "RGB" else img.convert("RGB")), None, "RGB"


def _run_upscaler(
    img: Image.Image,
    entry: UpscalerEntry,
    size: tuple[int, int],
    params: UpscaleParams,
    device: str | torch.device,
    log: Log,
    progress: Callable[[int, int], None] | None,
) -> Image.Image:
    """One upscaler over an RGB image, giving exactly ``size``."""
    if entry.kind == BUILTIN:
        resample = _NEAREST if entry.name == NEAREST else _LANCZOS
        return img.resize(size, resample=resample)
    assert entry.path is not None
    model = load_upscaler(entry.path, device)
    s = int(model.scale)
    current = img
    for n in range(1, MAX_MODEL_PASSES + 1):
        if n > 1:
            need = (math.ceil(size[0] / s), math.ceil(size[1] / s))
            if current.width > need[0] and current.height > need[1]:
                current = current.resize(need, resample=_LANCZOS)
        before = current.size
        log(
            f"{entry.name}: pass {n}, {before[0]}x{before[1]} -> "
            f"{before[0] * s}x{before[1] * s} ({params.tile or 'no'} px tiles)"
        )
        tensor = torch.from_numpy(np.asarray(current, dtype=np.uint8).copy())
        tensor = tensor.permute(2, 0, 1).unsqueeze(0)
        out = upscale_tensor(
            model,
            tensor,
            params.tile,
            params.tile_overlap,
            log=log,
            out_dtype=torch.uint8,
            progress=progress,
        )
        del tensor
        current = Image.fromarray(out[0].permute(1, 2, 0).contiguous().numpy(), "RGB")
        del out
        if current.size == before or (current.width >= size[0] and current.height >= size[1]):
            break
    if current.size != size:
        current = current.resize(size, resample=_LANCZOS)
    return current


def upscale_pil(
    img: Image.Image,
    params: UpscaleParams,
    models_dir: Path,
    *,
    device: str | torch.device = "cpu",
    log: Log = print,
    progress: Callable[[int, int], None] | None = None,
    face_detector: Any = None,
) -> Image.Image:
    """Upscale an image in memory as ``params`` say (the source path in params is ignored)."""
    result, _ = _upscale(
        img,
        params,
        models_dir,
        device=device,
        log=log,
        progress=progress,
        face_detector=face_detector,
    )
    return result


def _resolve(
    params: UpscaleParams, models_dir: Path, *, face_detector: Any = None
) -> tuple[UpscaleParams, UpscalerEntry, UpscalerEntry | None]:
    try:
        params = params.validated()
    except ParamError as e:
        raise UserError(e.message) from None
    entries = list_upscalers(models_dir)
    first = resolve_upscaler(params.upscaler, entries, models_dir=models_dir)
    second = None
    name2 = (params.upscaler_2 or "").strip()
    if name2 and name2.lower() != "none" and params.upscaler_2_visibility > 0:
        second = resolve_upscaler(name2, entries, models_dir=models_dir)
    restorers = _face_restorers(params)
    if restorers:
        from sdtui.engine.faces import check_face_weights

        check_face_weights(restorers, Path(models_dir).expanduser(), detector=face_detector is None)
    return params, first, second


def _face_restorers(params: UpscaleParams) -> list[str]:
    """The face restorers an Extras job runs, in A1111's order (GFPGAN, then CodeFormer)."""
    return [
        name
        for name, visibility in (
            ("GFPGAN", params.gfpgan_visibility),
            ("CodeFormer", params.codeformer_visibility),
        )
        if visibility > 0
    ]


def _restore_faces(
    img: Image.Image,
    params: UpscaleParams,
    models_dir: Path,
    device: str | torch.device,
    log: Log,
    detector: Any,
) -> Image.Image:
    from sdtui.engine.faces import restore_faces_extras

    return restore_faces_extras(
        img,
        params.gfpgan_visibility,
        params.codeformer_visibility,
        params.codeformer_weight,
        Path(models_dir).expanduser(),
        device=device,
        log=log,
        detector=detector,
    )


def _upscale(
    img: Image.Image,
    params: UpscaleParams,
    models_dir: Path,
    *,
    device: str | torch.device,
    log: Log,
    progress: Callable[[int, int], None] | None = None,
    megapixels: float | None = None,
    face_detector: Any = None,
) -> tuple[Image.Image, dict[str, object]]:
    from sdtui.image_files import check_pixels

    params, first, second = _resolve(params, models_dir, face_detector=face_detector)
    plan = _plan(img.width, img.height, params)
    # before any work: the result of a 4x upscale of 4096x4096, or of --to 16384x16384
    check_pixels(*plan.size, megapixels, "the upscaled image")
    rgb, alpha, mode = _split_alpha(img)
    extra: dict[str, object] = {}
    faces = bool(_face_restorers(params))
    # A1111's "Upscale Before Restoring Faces": off, the faces are restored on the source
    if faces and not params.upscale_first:
        rgb = _restore_faces(rgb, params, models_dir, device, log, face_detector)
    result = _run_upscaler(rgb, first, plan.size, params, device, log, progress)
    if second is not None:
        other = _run_upscaler(rgb, second, plan.size, params, device, log, progress)
        result = Image.blend(result, other, params.upscaler_2_visibility)
        del other
    if alpha is not None:
        alpha = alpha.resize(plan.size, resample=_LANCZOS)
    if plan.crop is not None:
        cw, ch = plan.crop
        left, top = (plan.size[0] - cw) // 2, (plan.size[1] - ch) // 2
        box = (left, top, left + cw, top + ch)
        result = result.crop(box)
        if alpha is not None:
            alpha = alpha.crop(box)
        extra["Postprocess crop to"] = f"{cw}x{ch}"
    if faces and params.upscale_first:
        result = _restore_faces(result, params, models_dir, device, log, face_detector)
    if mode == "L":
        result = result.convert("L")
    elif mode == "LA":
        assert alpha is not None
        result = Image.merge("LA", (result.convert("L"), alpha))
    elif mode == "RGBA":
        assert alpha is not None
        result = Image.merge("RGBA", (*result.split(), alpha))
    return result, extra


def open_image(path: str | Path, megapixels: float | None = None) -> Image.Image:
    """Read an image fully into memory, or a UserError naming the file (more than
    ``megapixels``, a named pipe, a decompression bomb, not an image)."""
    from sdtui.image_files import open_image_file

    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(
            f"{p} is a folder, not an image: upscale a folder with the folder mode, or name "
            "one PNG/JPEG/WebP file."
        )
    return open_image_file(p, "image", megapixels)


def upscale_image(
    params: UpscaleParams,
    models_dir: Path,
    *,
    device: str | torch.device = "cpu",
    log: Log = print,
    progress: Callable[[int, int], None] | None = None,
    megapixels: float | None = None,
) -> Image.Image:
    """Upscale the image at ``params.image`` and return it (not saved)."""
    img = open_image(params.image, megapixels)
    result, _ = _upscale(
        img, params, models_dir, device=device, log=log, progress=progress, megapixels=megapixels
    )
    return result


# -- files and folders ----------------------------------------------------------------------


def upscale_file(
    params: UpscaleParams,
    models_dir: Path,
    layout_save: Callable[[Image.Image, str], Path],
    *,
    device: str | torch.device = "cpu",
    log: Log = print,
    progress: Callable[[int, int], None] | None = None,
    megapixels: float | None = None,
    face_detector: Any = None,
) -> Path:
    """Upscale ``params.image`` and hand it to ``layout_save(image, infotext)``.

    ``infotext`` is the source's own infotext, read as everywhere else in sdtui
    (``sdtui.infotext.infotext_from_image``: the EXIF UserComment when there is one, else the
    PNG ``parameters``), with the Extras pairs (Postprocess upscale by/to, Postprocess
    upscaler, ...) appended. For a saver that writes the chunks as A1111 does, ``image.info``
    also carries ``parameters`` (the source's, when it has one) and ``postprocessing`` (the
    Extras pairs alone). With a GFPGAN or CodeFormer visibility the faces are restored too,
    before or after the upscale (``upscale_first``); ``face_detector`` (a
    ``sdtui.engine.faces.FaceDetector``) replaces RetinaFace, for tests.
    """
    img = open_image(params.image, megapixels)
    existing = infotext_from_image(img, params.image)
    result, extra = _upscale(
        img,
        params,
        models_dir,
        device=device,
        log=log,
        progress=progress,
        megapixels=megapixels,
        face_detector=face_detector,
    )
    pairs = {**params.infotext_pairs(), **extra}
    result.info = {"postprocessing": format_pairs(pairs)}
    if existing:
        result.info["parameters"] = existing
    return layout_save(result, append_pairs(existing, pairs))


@dataclass
class FolderReport:
    """What a folder run did: saved outputs, files that failed (with why), files skipped."""

    saved: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{len(self.saved)} upscaled"
        if self.failed:
            text += f", {len(self.failed)} failed"
        if self.skipped:
            text += f", {len(self.skipped)} skipped (not images)"
        return text


def folder_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files by extension, other files) directly in ``folder``, sorted by name."""
    images: list[Path] = []
    others: list[Path] = []
    for p in sorted(Path(folder).iterdir(), key=lambda q: q.name.lower()):
        if not p.is_file() or p.name.startswith("."):
            continue
        (images if p.suffix.lower() in IMAGE_SUFFIXES else others).append(p)
    return images, others


def upscale_folder(
    params: UpscaleParams,
    models_dir: Path,
    layout_save: Callable[[Image.Image, str], Path],
    *,
    folder: str | Path | None = None,
    device: str | torch.device = "cpu",
    log: Log = print,
    files: Iterable[Path] | None = None,
    skip: Collection[int] = (),
    on_file: Callable[[int, Path], None] | None = None,
    megapixels: float | None = None,
) -> FolderReport:
    """Upscale every image in ``folder`` (default: ``params.image``), one after another.

    A file that fails (not an image, unreadable, ...) is logged and listed in the report, and
    the rest go on. Problems that would fail every file (unknown upscaler, bad settings, a
    folder that does not exist) raise a UserError before any work. ``skip`` names files (by
    0-based index) a restarted job upscaled before; ``on_file`` hears each file's index first.
    """
    where = Path(folder if folder is not None else params.image).expanduser()
    if not where.is_dir():
        raise UserError(f"{where} is not a folder: name the folder that holds the images.")
    _resolve(params, models_dir)  # fail fast on a bad upscaler name or value
    report = FolderReport()
    if files is None:
        image_files, report.skipped = folder_images(where)
    else:
        image_files = list(files)
    if not image_files:
        raise UserError(f"{where} holds no images (.png, .jpg, .webp, ...): nothing to upscale.")
    for i, path in enumerate(image_files, 1):
        if i - 1 in skip:
            continue
        log(f"[{i}/{len(image_files)}] {path.name}")
        if on_file is not None:
            on_file(i - 1, path)
        try:
            saved = upscale_file(
                params.replace(image=str(path)),
                models_dir,
                layout_save,
                device=device,
                log=log,
                megapixels=megapixels,
            )
        except UserError as e:
            report.failed.append((path, e.message))
            log(e.message)
        except Exception as e:  # one bad file must not stop the folder
            message = f"{path.name} failed: {type(e).__name__}: {e}"
            report.failed.append((path, message))
            log(message)
        else:
            report.saved.append(saved)
    log(f"{where}: {report.summary()}")
    return report


# -- engine job -----------------------------------------------------------------------------


def upscale_job(
    params: UpscaleParams,
    settings: Any,
    device: str,
    job_id: int,
    emit: Callable[[Any], None],
    done: dict[int, str] | None = None,
) -> list[str]:
    """The engine worker's entry: one file or a folder, saved to outputs/extras-images.
    ``done``: outputs a restarted job saved before, by the index of their source file."""
    from sdtui.ipc import protocol as msg
    from sdtui.outputs import OutputLayout

    layout = OutputLayout(settings.outputs)
    models_dir = Path(settings.models)
    done = {i: p for i, p in (done or {}).items() if i >= 0}
    paths: list[str] = list(done.values())
    current = [0]  # the index of the source file being upscaled

    def log(text: str) -> None:
        emit(msg.Log("info", text, job_id))

    def save(image: Image.Image, infotext: str) -> Path:
        existing = {"parameters": image.info["parameters"]} if "parameters" in image.info else {}
        path = layout.save_image(
            image,
            "extras",
            None,
            str(image.info.get("postprocessing", infotext)),
            existing_info=existing,
        )
        emit(msg.ImageSaved(job_id, current[0], str(path), -1, infotext))
        paths.append(str(path))
        return path

    def on_file(index: int, _: Path) -> None:
        current[0] = index

    megapixels = getattr(settings, "max_image_megapixels", None)
    if Path(params.image).expanduser().is_dir():
        report = upscale_folder(
            params,
            models_dir,
            save,
            device=device,
            log=log,
            skip=done,
            on_file=on_file,
            megapixels=megapixels,
        )
        if report.failed:
            # the job failed (exit 1 on the CLI) even though the other files are saved
            names = "; ".join(f"{p.name}: {why}" for p, why in report.failed[:5])
            more = f" and {len(report.failed) - 5} more" if len(report.failed) > 5 else ""
            saved = len(report.saved) + len(done)
            raise UserError(
                f"{len(report.failed)} of the images in {params.image} could not be upscaled "
                f"({saved} saved): {names}{more}"
            )
    elif 0 not in done:
        upscale_file(params, models_dir, save, device=device, log=log, megapixels=megapixels)
    return paths
