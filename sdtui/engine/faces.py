"""Face restoration: GFPGAN and CodeFormer, as A1111 runs them.

What A1111 does (modules/face_restoration_utils.py, gfpgan_model.py, codeformer_model.py), and
what we keep:

- The restorers are loaded with spandrel: GFPGAN v1.3/v1.4 (``GFPGANv1.4.pth``) from
  ``models/GFPGAN``, CodeFormer (``codeformer-v0.1.0.pth``) from ``models/Codeformer``;
  CodeFormer's architecture lives in spandrel-extra-arches because of its licence (S-Lab
  License 1.0, non-commercial), as in A1111.
- Faces are found by facexlib's RetinaFace-ResNet50 (``detection_Resnet50_Final.pth``) on the
  image resized so its short side is 640 px, kept above 0.97 confidence and 5 px between the
  eyes; each face is aligned by a similarity transform of its five landmarks onto the 512 x 512
  FFHQ template, restored (RGB in -1..1; CodeFormer with its weight, ``adain=True``; GFPGAN
  with ``return_rgb=False``), warped back and blended in with facexlib's ParseNet mask
  (``parsing_parsenet.pth``: the face without hair, neck or clothes, blurred).
- A1111 keeps facexlib's two files where it pointed facexlib's downloader: models/GFPGAN in
  older versions, models/Codeformer since 1.8. Both folders are searched.

What we do differently, on purpose:

- Nothing is downloaded: a missing file is one message that names the files and the folder.
- The two facexlib networks are built here (``sdtui.engine.face_nets``), not imported from
  facexlib: it needs OpenCV, numba and filterpy and its loader downloads. The warps,
  erosions and blurs of OpenCV are done with torch (bilinear, OpenCV's pixel grid and its
  Gaussian kernels); the alignment is the least-squares similarity transform (OpenCV's LMEDS
  fit of five clean landmarks lands on the same transform but for rounding).
- Without ``parsing_parsenet.pth`` faces are blended with facexlib's other mask (the square
  face crop, eroded and feathered) and the log says so.
- GFPGAN's StyleGAN noise is drawn from a fixed seed (A1111: the global generator), so the
  same image gives the same result.
- With several GFPGAN files the newest release wins (v1.4 over v1.3), not the first by name.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sdtui.engine.face_nets import BGR_MEAN, FACE_CLASSES, ParseNet, RetinaFace, decode, priors
from sdtui.engine.spandrel_files import free_memory, read_state_dict, read_weights
from sdtui.errors import UserError
from sdtui.face_files import (
    CODEFORMER,
    CODEFORMER_FILES,
    DETECTOR_FILE,
    GFPGAN,
    GFPGAN_FILES,
    PARSER_FILE,
    check_face_weights,
    find_helper_file,
    find_restorer_file,
)
from sdtui.regular_files import shown

Log = Callable[[str], None]

FACE_SIZE = 512
# facexlib's five landmarks of an FFHQ face at 512 x 512: eyes, nose, mouth corners
FFHQ_TEMPLATE = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ]
)
_DETECT_SHORT_SIDE = 640  # A1111: get_face_landmarks_5(resize=640)
_CONFIDENCE = 0.97  # facexlib's FaceRestoreHelper
_NMS_IOU = 0.4
_MIN_EYE_DISTANCE = 5.0  # A1111: eye_dist_threshold=5
_CROP_BORDER = (132.0, 133.0, 135.0)  # facexlib's grey outside the image, (135, 133, 132) BGR


# -- loading ------------------------------------------------------------------------------

_lock = threading.Lock()
_restorer: tuple[tuple[str, ...], Any] | None = None
_helpers: dict[tuple[str, ...], torch.nn.Module] = {}


def unload_face_models() -> None:
    """Drop the cached restorer, detector and parser."""
    global _restorer
    with _lock:
        _restorer = None
        _helpers.clear()
    free_memory()


def _key(path: Path, device: torch.device) -> tuple[str, ...]:
    st = path.stat()
    return (str(path.resolve()), str(st.st_size), str(st.st_mtime_ns), str(device))


def load_restorer(name: str, path: Path, device: str | torch.device = "cpu") -> Any:
    """The spandrel descriptor of a GFPGAN or CodeFormer file, in eval mode on ``device``
    (cached: one restorer in memory at a time)."""
    global _restorer
    dev = torch.device(device)
    key = (name, *_key(path, dev))
    with _lock:
        if _restorer is not None and _restorer[0] == key:
            return _restorer[1]
        _restorer = None
        model = _load_restorer(name, path, dev)
        _restorer = (key, model)
        return model


def _load_restorer(name: str, path: Path, device: torch.device) -> Any:
    import spandrel

    shown_name = shown(path)
    release = "GFPGAN v1.3 or v1.4" if name == GFPGAN else "CodeFormer v0.1.0"
    not_model = (
        f"{shown_name} is not a {release} model that sdtui can read: check that the download "
        f"finished, or replace it with {(GFPGAN_FILES if name == GFPGAN else CODEFORMER_FILES)[0]}."
    )
    state_dict = read_state_dict(path, not_model, "face restorer")
    if name == CODEFORMER:
        import spandrel_extra_arches

        spandrel_extra_arches.install(ignore_duplicates=True)
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError as e:
        raise UserError(not_model, detail=f"spandrel: {e}") from None
    except MemoryError:
        raise UserError(f"Not enough memory to load {shown_name}: close other programs.") from None
    except Exception as e:  # noqa: BLE001 - weights that fit no architecture
        raise UserError(not_model, detail=f"{type(e).__name__}: {e}") from None
    if descriptor.architecture.id != name:
        raise UserError(
            f"{shown_name} is a {descriptor.architecture.name} model, not {name}: replace it "
            f"with {(GFPGAN_FILES if name == GFPGAN else CODEFORMER_FILES)[0]}."
        )
    descriptor.eval()
    if device.type != "cpu":
        try:
            descriptor.to(device)
        except torch.OutOfMemoryError:
            raise UserError(
                f"Not enough GPU memory to load {shown(path.name)}: free GPU memory (unload "
                "the checkpoint) or restore faces on the CPU."
            ) from None
    return descriptor


def _load_helper(filename: str, path: Path, device: torch.device) -> torch.nn.Module:
    """facexlib's detector or parser from its file, cached by path and device."""
    key = (filename, *_key(path, device))
    with _lock:
        if key in _helpers:
            return _helpers[key]
        for old in [k for k in _helpers if k[0] == filename]:
            del _helpers[old]
        net: torch.nn.Module = RetinaFace() if filename == DETECTOR_FILE else ParseNet()
        wrong = (
            f"{shown(path)} is not facexlib's {filename}: check that the download finished, "
            "or copy it again from an A1111 install."
        )
        try:
            raw = read_weights(
                path, "face detector" if filename == DETECTOR_FILE else "face parser"
            )
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - the readers say most things
            raise UserError(wrong, detail=f"{type(e).__name__}: {e}") from None
        if not isinstance(raw, dict):
            raise UserError(wrong, detail=f"holds a {type(raw).__name__}")
        # facexlib strips the "module." of a DataParallel save
        state = {str(k).removeprefix("module."): v for k, v in raw.items()}
        try:
            net.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError) as e:
            raise UserError(wrong, detail=str(e)[:500]) from None
        net.eval().to(device)
        _helpers[key] = net
        return net


# -- detection ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Face:
    """A face found in an image, in its pixels: the box (x0, y0, x1, y1), the confidence and
    five landmarks (left eye, right eye, nose, left and right mouth corner) as (x, y)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...]


class FaceDetector(Protocol):
    def detect(self, image: Image.Image) -> list[Face]:
        """The faces in an RGB image, most confident first."""
        ...


class RetinaFaceDetector:
    """facexlib's RetinaFace-ResNet50 as A1111's FaceRestoreHelper runs it."""

    def __init__(self, net: torch.nn.Module, device: str | torch.device = "cpu") -> None:
        self.net = net
        self.device = torch.device(device)

    @torch.no_grad()
    def detect(self, image: Image.Image) -> list[Face]:
        import torchvision

        rgb = image if image.mode == "RGB" else image.convert("RGB")
        scale = min(rgb.size) / _DETECT_SHORT_SIDE
        w, h = int(rgb.width / scale), int(rgb.height / scale)
        if (w, h) != rgb.size:
            rgb = rgb.resize((w, h), Image.Resampling.LANCZOS)
        bgr = torch.from_numpy(np.asarray(rgb, dtype=np.float32)[:, :, ::-1].copy())
        x = (bgr - torch.tensor(BGR_MEAN)).permute(2, 0, 1).unsqueeze(0).to(self.device)
        loc, conf, marks = self.net(x)
        boxes, points = decode(loc[0].float().cpu(), marks[0].float().cpu(), priors(h, w))
        boxes = boxes * torch.tensor([w, h, w, h]) * scale
        points = points * torch.tensor([w, h] * 5) * scale
        scores = conf[0, :, 1].float().cpu()
        keep = scores > _CONFIDENCE
        boxes, points, scores = boxes[keep], points[keep], scores[keep]
        order = scores.argsort(descending=True)
        boxes, points, scores = boxes[order], points[order], scores[order]
        kept = torchvision.ops.nms(boxes, scores, _NMS_IOU)
        faces = []
        for i in kept.tolist():
            p = points[i].view(5, 2).tolist()
            if math.dist(p[0], p[1]) < _MIN_EYE_DISTANCE:
                continue  # side faces and tiny faces, as A1111
            b = boxes[i].tolist()
            faces.append(
                Face((b[0], b[1], b[2], b[3]), float(scores[i]), tuple((a, c) for a, c in p))
            )
        return faces


# -- alignment and warps ------------------------------------------------------------------


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 rotation + uniform scale + shift taking ``src`` points closest to ``dst``
    (least squares, Umeyama without reflection)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    var = (s**2).sum() / len(src)
    if var <= 0:
        raise ValueError("the landmarks are all at one point")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    c = np.trace(np.diag(sig) @ sign) / var
    m = np.zeros((2, 3))
    m[:, :2] = c * rot
    m[:, 2] = md - c * rot @ ms
    return m


def _invert(m: np.ndarray) -> np.ndarray:
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def _sample(
    src: torch.Tensor, m: np.ndarray, width: int, height: int, x0: int = 0, y0: int = 0
) -> torch.Tensor:
    """OpenCV's warpAffine, bilinear, zero outside: pixel (x0 + i, y0 + j) of the result takes
    ``src`` (C x H x W float) at ``m @ (x, y, 1)``."""
    ys, xs = torch.meshgrid(
        torch.arange(y0, y0 + height, dtype=torch.float64),
        torch.arange(x0, x0 + width, dtype=torch.float64),
        indexing="ij",
    )
    mt = torch.from_numpy(m)
    sx = mt[0, 0] * xs + mt[0, 1] * ys + mt[0, 2]
    sy = mt[1, 0] * xs + mt[1, 1] * ys + mt[1, 2]
    h, w = src.shape[-2:]
    grid = torch.stack([2 * sx / max(w - 1, 1) - 1, 2 * sy / max(h - 1, 1) - 1], dim=-1)
    out = F.grid_sample(
        src.unsqueeze(0).float(),
        grid.unsqueeze(0).float(),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )
    return out[0]


def _crop_face(pixels: np.ndarray, affine: np.ndarray) -> torch.Tensor:
    """The aligned 512 x 512 face (3 x 512 x 512, 0..255 whole numbers) cut from ``pixels``
    (H x W x 3), grey outside the image. Only the part of the image under the face is read."""
    h, w = pixels.shape[:2]
    x0, y0, x1, y1 = face_region(affine, w, h, margin=2)
    inv = _invert(affine)
    inv[:, 2] -= (x0, y0)
    if x1 > x0 and y1 > y0:
        part = torch.from_numpy(pixels[y0:y1, x0:x1].astype(np.float32)).permute(2, 0, 1)
        layers = torch.cat([part, torch.ones(1, y1 - y0, x1 - x0)])
        sampled = _sample(layers, inv, FACE_SIZE, FACE_SIZE)
    else:  # the face lies wholly outside the image
        sampled = torch.zeros(4, FACE_SIZE, FACE_SIZE)
    border = torch.tensor(_CROP_BORDER).view(3, 1, 1)
    crop = sampled[:3] + (1 - sampled[3:]) * border
    return crop.round().clamp(0, 255)


def _gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """OpenCV's getGaussianKernel (its fixed small kernels when sigma is 0)."""
    fixed = {
        1: [1.0],
        3: [0.25, 0.5, 0.25],
        5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
        7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
        9: [v / 256 for v in (4, 13, 30, 51, 60, 51, 30, 13, 4)],
    }
    if sigma <= 0 and size in fixed:
        return torch.tensor(fixed[size], dtype=torch.float64)
    if sigma <= 0:
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _blur(mask: torch.Tensor, size: int, sigma: float = 0.0) -> torch.Tensor:
    """OpenCV's GaussianBlur of an H x W mask (edges reflected, OpenCV's BORDER_REFLECT_101)."""
    if size <= 1:
        return mask
    k = _gaussian_kernel(size, sigma).float()
    r = size // 2
    x = mask[None, None]
    h, w = mask.shape
    mode = "reflect" if r < h and r < w else "replicate"
    x = F.pad(x, (r, r, 0, 0), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 1, size))
    x = F.pad(x, (0, 0, r, r), mode=mode)
    x = F.conv2d(x, k.view(1, 1, size, 1))
    return x[0, 0]


def _erode(mask: torch.Tensor, size: int, edges: tuple[bool, bool, bool, bool]) -> torch.Tensor:
    """OpenCV's erode with a size x size square (3 x 3 for 0, as OpenCV takes an empty
    kernel). ``edges`` (left, top, right, bottom): sides that are the image's own edge, where
    OpenCV's border never erodes; elsewhere the pixels beyond are the mask's zeros."""
    if size <= 0:
        size = 3
    if size == 1:
        return mask
    before, after = size // 2, size - 1 - size // 2
    left, top, right, bottom = edges
    x = mask[None, None]
    x = F.pad(x, (before, after, 0, 0), value=0.0)
    if left:
        x[..., :before] = 1.0
    if right and after:
        x[..., x.shape[-1] - after :] = 1.0
    x = -F.max_pool2d(-x, (1, size), stride=1)
    x = F.pad(x, (0, 0, before, after), value=0.0)
    if top:
        x[..., :before, :] = 1.0
    if bottom and after:
        x[..., x.shape[-2] - after :, :] = 1.0
    x = -F.max_pool2d(-x, (size, 1), stride=1)
    return x[0, 0]


def face_region(
    affine: np.ndarray, width: int, height: int, margin: int = 1
) -> tuple[int, int, int, int]:
    """The pixels (x0, y0, x1, y1) of the image that the face aligned by ``affine`` can
    change: the 512 x 512 crop warped back, ``margin`` px around it, inside the image."""
    inv = _invert(affine)
    corners = np.array([[0, 0, 1], [FACE_SIZE - 1, 0, 1], [0, FACE_SIZE - 1, 1]], float)
    corners = np.vstack([corners, [FACE_SIZE - 1, FACE_SIZE - 1, 1]]) @ inv.T
    x0 = max(0, math.floor(corners[:, 0].min()) - margin)
    y0 = max(0, math.floor(corners[:, 1].min()) - margin)
    x1 = min(width, math.ceil(corners[:, 0].max()) + margin + 1)
    y1 = min(height, math.ceil(corners[:, 1].max()) + margin + 1)
    return x0, y0, max(x0, x1), max(y0, y1)


def align_face(face: Face) -> np.ndarray:
    """The 2 x 3 transform taking the image to the face's aligned 512 x 512 crop."""
    return similarity_transform(np.array(face.landmarks, dtype=np.float64), FFHQ_TEMPLATE)


def _parse_mask(parser: torch.nn.Module, face: torch.Tensor) -> torch.Tensor:
    """facexlib's blend mask from ParseNet: the face's classes, blurred twice, 0..1."""
    device = next(parser.parameters()).device
    x = (face / 255.0 - 0.5) / 0.5
    with torch.no_grad():
        out = parser(x.unsqueeze(0).to(device))[0]
    classes = out.argmax(dim=1)[0].cpu()
    mask = torch.zeros(classes.shape, dtype=torch.float32)
    for c in FACE_CLASSES:
        mask[classes == c] = 255.0
    mask = _blur(_blur(mask, 101, 11.0), 101, 11.0)
    mask[:10, :] = 0
    mask[-10:, :] = 0
    mask[:, :10] = 0
    mask[:, -10:] = 0
    return mask / 255.0


def _paste(
    image: np.ndarray,
    restored: torch.Tensor,
    affine: np.ndarray,
    parse_mask: torch.Tensor | None,
) -> None:
    """Blend one restored face (3 x 512 x 512, 0..255) back into ``image`` (H x W x 3 uint8,
    changed in place) as facexlib's paste_faces_to_input_image, only around the face."""
    height, width = image.shape[:2]
    scale = math.sqrt(abs(np.linalg.det(affine[:, :2])))
    side = FACE_SIZE / max(scale, 1e-6)
    w_edge_guess = int(side) // 20
    margin = 1 if parse_mask is not None else 4 * w_edge_guess + 8
    x0, y0, x1, y1 = face_region(affine, width, height, margin)
    rw, rh = x1 - x0, y1 - y0
    if rw <= 0 or rh <= 0:
        return
    layers = [restored]
    if parse_mask is not None:
        layers.append(parse_mask[None])
    else:
        layers.append(torch.ones(1, FACE_SIZE, FACE_SIZE))
    sampled = _sample(torch.cat(layers), affine, rw, rh, x0, y0)
    inv_restored = sampled[:3].round().clamp(0, 255)  # OpenCV warps uint8 to uint8
    if parse_mask is not None:
        soft = sampled[3]
        pasted = inv_restored
    else:
        edges = (x0 == 0, y0 == 0, x1 == width, y1 == height)
        inv_mask = _erode(sampled[3], 2, edges)  # A1111: upscale_factor 1, a 2 x 2 kernel
        pasted = inv_mask * inv_restored
        w_edge = int(float(inv_mask.double().sum()) ** 0.5) // 20
        soft = _blur(_erode(inv_mask, w_edge * 2, edges), w_edge * 2 + 1)
    region = torch.from_numpy(image[y0:y1, x0:x1].astype(np.float32)).permute(2, 0, 1)
    blended = soft * pasted + (1 - soft) * region
    image[y0:y1, x0:x1] = blended.clamp(0, 255).floor().permute(1, 2, 0).numpy().astype(np.uint8)


# -- restoring ----------------------------------------------------------------------------


def _run_restorer(
    name: str, model: Any, crop: torch.Tensor, codeformer_weight: float, device: torch.device
) -> torch.Tensor:
    """One aligned face through GFPGAN or CodeFormer: 3 x 512 x 512, 0..255 whole numbers."""
    x = ((crop / 255.0 - 0.5) / 0.5).unsqueeze(0).to(device)
    net = model.model
    forked = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=forked):
            torch.manual_seed(0)  # GFPGAN's StyleGAN noise: the same face gives the same result
            if name == GFPGAN:
                out = net(x, return_rgb=False)[0]
            else:
                out = net(x, weight=codeformer_weight, adain=True)[0]
    except torch.OutOfMemoryError:
        raise UserError(
            f"Out of GPU memory restoring a face with {name}: free GPU memory or restore "
            "faces on the CPU."
        ) from None
    out = out[0].float().cpu().clamp(-1, 1)
    return ((out + 1) / 2 * 255.0).floor()  # A1111: (x * 255).astype(uint8)


@dataclass
class FaceTools:
    """What finds and blends faces: the detector and, when its file is there, the parser."""

    detector: FaceDetector
    parser: torch.nn.Module | None


def face_tools(
    models_dir: Path, device: str | torch.device = "cpu", *, detector: FaceDetector | None = None
) -> FaceTools:
    """The detector (``detector`` when given, else RetinaFace from its file) and ParseNet
    (None without ``parsing_parsenet.pth``), loaded from the A1111 folders."""
    dev = torch.device(device)
    if detector is None:
        check_face_weights((), models_dir)
        path = find_helper_file(DETECTOR_FILE, models_dir)
        assert path is not None
        detector = RetinaFaceDetector(_load_helper(DETECTOR_FILE, path, dev), dev)
    parser_path = find_helper_file(PARSER_FILE, models_dir)
    parser = None if parser_path is None else _load_helper(PARSER_FILE, parser_path, dev)
    return FaceTools(detector, parser)


def restore_faces(
    image: Image.Image,
    name: str,
    models_dir: Path,
    *,
    codeformer_weight: float = 0.5,
    device: str | torch.device = "cpu",
    log: Log = print,
    detector: FaceDetector | None = None,
) -> Image.Image:
    """``image`` (RGB) with every face found restored by GFPGAN or CodeFormer and blended
    back; the pixels away from the faces are left as they are. No face: a copy."""
    models_dir = Path(models_dir).expanduser()
    check_face_weights([name], models_dir, detector=detector is None)
    path = find_restorer_file(name, models_dir)
    assert path is not None
    dev = torch.device(device)
    tools = face_tools(models_dir, dev, detector=detector)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    faces = tools.detector.detect(rgb)
    if not faces:
        log(f"{name}: no face found")
        return rgb.copy()
    model = load_restorer(name, path, dev)  # only when there is a face to restore
    note = (
        ""
        if tools.parser is not None
        else f" (without {PARSER_FILE}: blended with a feathered square, not A1111's face mask)"
    )
    log(f"{name}: restoring {len(faces)} face{'s' if len(faces) != 1 else ''}{note}")
    pixels = np.array(rgb, dtype=np.uint8)
    # every face is cut from the image as it was, then each is pasted in turn (as facexlib)
    crops = []
    for face in faces:
        try:
            affine = align_face(face)
        except (ValueError, np.linalg.LinAlgError):
            continue  # landmarks that give no transform: not a face to restore
        crops.append((affine, _crop_face(pixels, affine)))
    for affine, crop in crops:
        restored = _run_restorer(name, model, crop, codeformer_weight, dev)
        mask = None if tools.parser is None else _parse_mask(tools.parser, restored)
        _paste(pixels, restored, affine, mask)
    return Image.fromarray(pixels, "RGB")


def restore_faces_extras(
    image: Image.Image,
    gfpgan_visibility: float,
    codeformer_visibility: float,
    codeformer_weight: float,
    models_dir: Path,
    *,
    device: str | torch.device = "cpu",
    log: Log = print,
    detector: FaceDetector | None = None,
) -> Image.Image:
    """Extras' GFPGAN then CodeFormer (A1111's postprocessing scripts, in their order), each
    blended over the image so far with ``Image.blend(image, restored, visibility)``."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    for name, visibility in ((GFPGAN, gfpgan_visibility), (CODEFORMER, codeformer_visibility)):
        if visibility <= 0:
            continue
        restored = restore_faces(
            rgb,
            name,
            models_dir,
            codeformer_weight=codeformer_weight,
            device=device,
            log=log,
            detector=detector,
        )
        rgb = restored if visibility >= 1 else Image.blend(rgb, restored, visibility)
    return rgb


def restore_faces_for_job(
    images: Sequence[Image.Image],
    p: Any,
    settings: Any,
    log: Log,
    *,
    device: str | torch.device = "cpu",
    detector: FaceDetector | None = None,
) -> list[Image.Image]:
    """txt2img / img2img "Restore faces": each decoded image through the restorer of
    ``p.face_restoration_model`` (``p.code_former_weight`` for CodeFormer), as A1111 does
    after decoding and before saving. ``p.restore_faces`` off: the images as they are."""
    if not getattr(p, "restore_faces", False):
        return list(images)
    name = p.face_restoration_model
    out = []
    for img in images:
        restored = restore_faces(
            img,
            name,
            Path(settings.models),
            codeformer_weight=p.code_former_weight,
            device=device,
            log=log,
            detector=detector,
        )
        if img.mode != "RGB":
            restored = restored.convert(img.mode)
        restored.info = dict(img.info)
        out.append(restored)
    return out


def check_restore_faces(p: Any, settings: Any) -> None:
    """A job's early check: the files "Restore faces" needs are there (a UserError naming
    them otherwise), so a missing file is said before sampling, not after."""
    if getattr(p, "restore_faces", False):
        check_face_weights([p.face_restoration_model], Path(settings.models))
