"""Where A1111 keeps the face restoration weights, and which are there (pure Python, no torch).

GFPGAN (``GFPGANv1.4.pth``, ``GFPGANv1.3.pth``) lives in ``models/GFPGAN`` and CodeFormer
(``codeformer-v0.1.0.pth``) in ``models/Codeformer``. facexlib's face detector and parsing
net (``detection_Resnet50_Final.pth``, ``parsing_parsenet.pth``) are where A1111 pointed
facexlib's downloader: ``models/GFPGAN`` before A1111 1.8, ``models/Codeformer`` since; both
are searched. sdtui downloads none of them. ``sdtui.engine.faces`` loads and runs them; this
module only finds them, so the UI and the CLI can say what is missing without torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sdtui.errors import UserError
from sdtui.regular_files import shown

GFPGAN = "GFPGAN"
CODEFORMER = "CodeFormer"
GFPGAN_FOLDER = "GFPGAN"
CODEFORMER_FOLDERS = ("Codeformer", "CodeFormer")  # A1111's spelling first
# the release files by preference; any other file whose name says the model is taken too
GFPGAN_FILES = ("GFPGANv1.4.pth", "GFPGANv1.3.pth")
CODEFORMER_FILES = ("codeformer-v0.1.0.pth", "codeformer.pth")
DETECTOR_FILE = "detection_Resnet50_Final.pth"
PARSER_FILE = "parsing_parsenet.pth"
_SUFFIXES = (".pth", ".safetensors")


def _files_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in _SUFFIXES and p.is_file()),
        key=lambda p: p.name.lower(),
    )


def restorer_folders(name: str, models_dir: Path) -> list[Path]:
    if name == GFPGAN:
        return [models_dir / GFPGAN_FOLDER]
    return [models_dir / f for f in CODEFORMER_FOLDERS]


def _helper_folders(models_dir: Path) -> list[Path]:
    return [models_dir / GFPGAN_FOLDER, *(models_dir / f for f in CODEFORMER_FOLDERS)]


def find_restorer_file(name: str, models_dir: Path) -> Path | None:
    """The GFPGAN or CodeFormer weights A1111 would use from ``models_dir``, or None."""
    wanted = GFPGAN_FILES if name == GFPGAN else CODEFORMER_FILES
    files = [p for folder in restorer_folders(name, models_dir) for p in _files_in(folder)]
    by_name = {p.name.lower(): p for p in reversed(files)}
    for release in wanted:
        if release.lower() in by_name:
            return by_name[release.lower()]
    word = name.lower()
    return next((p for p in files if word in p.name.lower()), None)


def find_helper_file(filename: str, models_dir: Path) -> Path | None:
    """facexlib's ``detection_Resnet50_Final.pth`` or ``parsing_parsenet.pth``, or None."""
    for folder in _helper_folders(models_dir):
        for p in _files_in(folder):
            if p.name.lower() == filename.lower():
                return p
    return None


def check_face_weights(names: Iterable[str], models_dir: Path, *, detector: bool = True) -> None:
    """A UserError naming every missing file and where it goes, or nothing. Before any work:
    a job checks this before it upscales or samples."""
    models_dir = Path(models_dir).expanduser()
    missing: list[str] = []
    for name in dict.fromkeys(names):
        if name not in (GFPGAN, CODEFORMER):
            raise UserError(f"Unknown face restoration {name!r}: use {GFPGAN} or {CODEFORMER}.")
        if find_restorer_file(name, models_dir) is None:
            files = GFPGAN_FILES if name == GFPGAN else CODEFORMER_FILES
            missing.append(
                f"{files[0]} (or {files[1]}) in {shown(restorer_folders(name, models_dir)[0])}"
            )
    if detector and find_helper_file(DETECTOR_FILE, models_dir) is None:
        missing.append(
            f"{DETECTOR_FILE} (with {PARSER_FILE} beside it) in "
            f"{shown(models_dir / GFPGAN_FOLDER)} or {shown(models_dir / CODEFORMER_FOLDERS[0])}"
        )
    if missing:
        raise UserError(
            "Face restoration needs " + "; ".join(missing) + ". sdtui downloads nothing: copy "
            "them from the same folders of an A1111 install (A1111 downloads them the first "
            "time it restores faces), or from the GFPGAN, CodeFormer and facexlib releases on "
            "GitHub."
        )


def face_files_status(models_dir: Path) -> str:
    """One plain sentence: which face restorers are ready, or what is missing and where."""
    models_dir = Path(models_dir).expanduser()
    ready = [
        f"{name} ({path.name})"
        for name in (CODEFORMER, GFPGAN)
        if (path := find_restorer_file(name, models_dir)) is not None
    ]
    try:
        check_face_weights([n for n in (CODEFORMER, GFPGAN) if not ready], models_dir)
    except UserError as e:
        if not ready:
            return e.message
        return f"Face restoration found {', '.join(ready)}, but: {e.message}"
    parser = find_helper_file(PARSER_FILE, models_dir)
    blend = "" if parser is not None else f" (without {PARSER_FILE}: a feathered square blend)"
    return f"Face restoration ready: {', '.join(ready)}{blend}."
