"""Which upscalers exist, named the way A1111's Extras tab names them (pure Python, no torch).

``list_upscalers(models_dir)`` gives the two built-in resamplers ("Lanczos", "Nearest") and
every model file under the A1111 upscaler folders (``models/ESRGAN``, ``models/RealESRGAN``,
``models/DAT``, ``models/SwinIR``, ``models/HAT``). The engine (``sdtui.engine.upscale``)
loads the files with spandrel; this module only names and finds them, so the UI can show the
list without importing torch.

The hires fix's upscalers are named here too (``hires_upscaler_choices``): the "Latent ..."
modes, which resize the first pass's latents (``LATENT_UPSCALE_MODES``, applied by
``sdtui.engine.hires``), "None" (Lanczos), and every upscaler above.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sdtui.errors import UserError
from sdtui.safe_text import one_line

BUILTIN = "builtin"
LANCZOS = "Lanczos"
NEAREST = "Nearest"

# Folders A1111 scans for upscaler models, in the order its dropdown lists them.
UPSCALER_FOLDERS: tuple[str, ...] = ("ESRGAN", "RealESRGAN", "DAT", "SwinIR", "HAT")
MODEL_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".safetensors")

# A1111's names for the Real-ESRGAN release files (modules/realesrgan_model.py), by file stem.
REALESRGAN_NAMES: dict[str, str] = {
    "realesr-general-x4v3": "R-ESRGAN General 4xV3",
    "realesr-general-wdn-x4v3": "R-ESRGAN General WDN 4xV3",
    "realesr-animevideov3": "R-ESRGAN AnimeVideo",
    "realesrgan_x4plus": "R-ESRGAN 4x+",
    "realesrgan_x4plus_anime_6b": "R-ESRGAN 4x+ Anime6B",
    "realesrgan_x2plus": "R-ESRGAN 2x+",
}

# hires fix upscalers that resize latents, in A1111's order: name -> (``F.interpolate`` mode,
# antialias), as A1111's shared.latent_upscale_modes
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
NONE_UPSCALER = "None"  # the hires fix's "None": the images are resized with Lanczos


@dataclass(frozen=True)
class UpscalerEntry:
    """One choice in the upscaler list.

    ``kind`` is ``"builtin"`` for Lanczos/Nearest (no file), else the folder the file was
    found in ("ESRGAN", "RealESRGAN", "DAT", "SwinIR", "HAT"). ``scale_hint`` is the factor
    the name announces ("4x", "x2"), as A1111 reads it to preset "Scale by"; None if unknown.
    """

    name: str
    path: Path | None
    kind: str
    scale_hint: int | None = None

    @property
    def is_model(self) -> bool:
        return self.path is not None


def scale_hint(name: str) -> int | None:
    """The factor a name announces: "4x-UltraSharp" -> 4, "DAT x2" -> 2, else None."""
    m = re.search(r"(\d)[xX]|[xX](\d)", name)
    return int(m.group(1) or m.group(2)) if m else None


def display_name(path: Path) -> str:
    """A1111's name for a model file: the Real-ESRGAN release names, else the file stem."""
    return REALESRGAN_NAMES.get(path.stem.lower(), path.stem)


def _model_files(folder: Path) -> list[Path]:
    """Model files under ``folder``; ``is_file`` leaves out named pipes and devices, which
    the loader would block on."""
    if not folder.is_dir():
        return []
    files = [
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in MODEL_SUFFIXES and p.is_file() and not p.name.startswith(".")
    ]
    return sorted(files, key=lambda p: str(p.relative_to(folder)).lower())


def list_upscalers(models_dir: Path) -> list[UpscalerEntry]:
    """Lanczos, Nearest, then every upscaler model file under ``models_dir`` (A1111 layout).

    A missing ``models_dir`` or folder is not an error: the list then holds the built-ins only.
    When two files would show the same name, the later one is shown as "name (Folder)".
    """
    entries = [
        UpscalerEntry(LANCZOS, None, BUILTIN),
        UpscalerEntry(NEAREST, None, BUILTIN),
    ]
    taken = {LANCZOS.lower(), NEAREST.lower(), "none"}
    for folder_name in UPSCALER_FOLDERS:
        for path in _model_files(Path(models_dir) / folder_name):
            name = display_name(path)
            if name.lower() in taken:
                name = f"{name} ({folder_name})"
            if name.lower() in taken:
                name = f"{path.stem} ({path.parent.relative_to(models_dir)}/{path.name})"
            taken.add(name.lower())
            entries.append(UpscalerEntry(name, path, folder_name, scale_hint(name)))
    return entries


def resolve_upscaler(
    name: str, entries: list[UpscalerEntry], *, models_dir: Path | None = None
) -> UpscalerEntry:
    """Find an upscaler by A1111 name ("R-ESRGAN 4x+"), file stem ("RealESRGAN_x4plus"),
    file name or path. Case does not matter. A path to an existing model file is accepted
    even when it lies outside the models folder. Raises UserError listing what exists."""
    wanted = name.strip()
    if not wanted:
        raise UserError("No upscaler chosen: pick one of " + _names(entries))
    low = wanted.lower()
    for e in entries:
        if e.name.lower() == low:
            return e
    for e in entries:
        if e.path is not None and low in (e.path.stem.lower(), e.path.name.lower()):
            return e
    p = Path(wanted).expanduser()
    looks_like_path = p.suffix.lower() in MODEL_SUFFIXES or "/" in wanted or "\\" in wanted
    if looks_like_path:
        for e in entries:
            if e.path is not None and _same(e.path, p):
                return e
        if p.is_file():
            kind = p.parent.name if p.parent.name in UPSCALER_FOLDERS else "file"
            return UpscalerEntry(display_name(p), p, kind, scale_hint(display_name(p)))
        if p.is_dir():
            raise UserError(
                f"{one_line(str(p))} is a folder, not an upscaler model: name a .pth or "
                ".safetensors file."
            )
        if "/" in wanted or "\\" in wanted:
            raise UserError(
                f"Upscaler model file {one_line(str(p))} does not exist: check the path."
            )
    if low == "none":
        raise UserError('Upscaler "None" does nothing here: pick one of ' + _names(entries) + ".")
    where = (
        f"{Path(models_dir) / 'ESRGAN'} or {Path(models_dir) / 'RealESRGAN'}"
        if models_dir is not None
        else "models/ESRGAN or models/RealESRGAN"
    )
    raise UserError(
        f'Unknown upscaler "{one_line(wanted)}". Available: {_names(entries)}. '
        f"To add a model, put its .pth or .safetensors file in {where} "
        '(e.g. RealESRGAN_x4plus.pth shows as "R-ESRGAN 4x+").'
    )


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _names(entries: list[UpscalerEntry]) -> str:
    return one_line(", ".join(f'"{e.name}"' for e in entries))


# -- the hires fix's upscalers ----------------------------------------------------------------


def latent_mode(name: str) -> tuple[str, bool] | None:
    """(interpolate mode, antialias) for a "Latent ..." upscaler name (any case), else None."""
    low = name.strip().lower()
    for key, value in LATENT_UPSCALE_MODES.items():
        if key.lower() == low:
            return value
    return None


def hires_image_upscaler(name: str) -> str:
    """The Extras upscaler a hires upscaler that is not a latent mode names ("None": Lanczos)."""
    return LANCZOS if name.strip().lower() == NONE_UPSCALER.lower() else name


def check_hires_upscaler(name: str, models_dir: Path | str) -> None:
    """Raise UserError (listing the choices) for a hires upscaler name that does not exist."""
    if latent_mode(name) is not None:
        return
    models = Path(models_dir)
    resolve_upscaler(hires_image_upscaler(name), list_upscalers(models), models_dir=models)


def hires_upscaler_choices(models_dir: Path | str) -> list[str]:
    """What a hires-fix upscaler picker offers, in A1111's order: the latent modes, "None",
    "Lanczos", "Nearest", then every upscaler model found."""
    return [
        *LATENT_UPSCALE_MODES,
        NONE_UPSCALER,
        *(e.name for e in list_upscalers(Path(models_dir).expanduser())),
    ]
