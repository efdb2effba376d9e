"""LoRAs, textual-inversion embeddings and VAEs on disk, named the way A1111 names them.

Pure Python (no torch), so the UI and ``sdtui models`` can list them:

- ``list_loras(models_dir)``: ``models/Lora`` and ``models/LyCORIS``, nested folders included;
  a LoRA's name is its file stem, what ``<lora:NAME:0.8>`` refers to.
- ``list_embeddings(folder)``: the embeddings folder, nested folders included; an embedding's
  name is its file stem, the word a prompt uses to call it.
- ``list_vaes(models_dir)``: ``models/VAE`` plus ``NAME.vae.*`` files beside checkpoints; a
  VAE's name is its file name with the extension (``vae-ft-mse-840000-ema-pruned.safetensors``),
  as A1111's dropdown and its infotext ``VAE`` key show it.

Short hashes, as A1111 writes them in the infotext (modules/hashes.py and its users):

- ``Lora hashes``: ``name: hash`` pairs; the hash is the first 12 hex digits of the sha256 of a
  safetensors file's bytes *after* its header (kohya's "addnet" hash; the metadata's
  ``sshs_model_hash`` when the file carries one), or of the whole file for other formats.
- ``TI hashes``: the first 12 hex digits of the sha256 of the whole embedding file.
- ``VAE hash``: the first 10 hex digits of the sha256 of the whole VAE file.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sdtui.errors import UserError
from sdtui.hashes import addnet_hash, sha256_file
from sdtui.model_index import (
    CHECKPOINTS_SUBDIR,
    VAE_SUFFIXES,
    find_vae_beside,
    read_pickle_structure,
    stub_state,
)
from sdtui.safetensors_header import read_safetensors_shapes, safetensors_metadata
from sdtui.upscalers import LATENT_UPSCALE_MODES
from sdtui.upscalers import hires_upscaler_choices as hires_upscaler_choices  # the TUI's catalog

LORA_FOLDERS: tuple[str, ...] = ("Lora", "LyCORIS")
LORA_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt", ".ckpt")
EMBEDDING_SUFFIXES: tuple[str, ...] = (".pt", ".safetensors", ".bin")
VAE_FOLDER = "VAE"
VAE_FILE_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt", ".ckpt", ".bin")
AUTOMATIC = "Automatic"
NO_VAE = "None"
# hires fix upscalers that resize latents, in A1111's order: the names of the one table,
# sdtui.upscalers.LATENT_UPSCALE_MODES (kept here for the TUI's catalog)
HIRES_LATENT_UPSCALERS: tuple[str, ...] = tuple(LATENT_UPSCALE_MODES)

_RE_HASH = re.compile(r"[0-9a-f]{12,64}")


@dataclass(frozen=True)
class LoraEntry:
    name: str  # file stem: what <lora:NAME:weight> names
    path: Path

    @property
    def size_bytes(self) -> int:
        return _size(self.path)


@dataclass(frozen=True)
class EmbeddingEntry:
    name: str  # file stem: the word that calls it in a prompt
    path: Path

    @property
    def size_bytes(self) -> int:
        return _size(self.path)


@dataclass(frozen=True)
class VaeEntry:
    name: str  # file name with extension, as A1111 shows it
    path: Path

    @property
    def stem(self) -> str:
        return _strip_suffix(self.path.name, VAE_FILE_SUFFIXES)

    @property
    def size_bytes(self) -> int:
        return _size(self.path)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _strip_suffix(name: str, suffixes: Iterable[str]) -> str:
    low = name.lower()
    for s in sorted(suffixes, key=len, reverse=True):
        if low.endswith(s):
            return name[: -len(s)]
    return name


def _walk_files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Regular files under ``root`` (recursively, following links once) whose names end in a
    suffix; hidden, empty and special files (named pipes, devices) are left out. Sorted by
    relative path."""
    if not root.is_dir():
        return []
    found: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not name.lower().endswith(suffixes):
                continue
            path = Path(dirpath) / name
            with contextlib.suppress(OSError):
                st = path.stat()
                # a named pipe or a device is never listed: reading it would block or not end
                if stat.S_ISREG(st.st_mode) and st.st_size > 0:
                    found.append(path)
    return found


# -- listing ---------------------------------------------------------------------------------


def lora_folders(models_dir: Path | str) -> list[Path]:
    return [Path(models_dir).expanduser() / sub for sub in LORA_FOLDERS]


def list_loras(models_dir: Path | str) -> list[LoraEntry]:
    """Every LoRA under models/Lora and models/LyCORIS, sorted by name (case-insensitive).
    When two files share a stem the first found (Lora before LyCORIS) wins, as in A1111."""
    entries: dict[str, LoraEntry] = {}
    for folder in lora_folders(models_dir):
        for path in _walk_files(folder, LORA_SUFFIXES):
            name = _strip_suffix(path.name, LORA_SUFFIXES)
            entries.setdefault(name, LoraEntry(name, path))
    return sorted(entries.values(), key=lambda e: e.name.lower())


def list_embeddings(folder: Path | str) -> list[EmbeddingEntry]:
    """Every textual-inversion embedding file under ``folder`` (.pt, .safetensors, .bin),
    sorted by name (case-insensitive); the first of two files with one stem wins."""
    entries: dict[str, EmbeddingEntry] = {}
    for path in _walk_files(Path(folder).expanduser(), EMBEDDING_SUFFIXES):
        name = _strip_suffix(path.name, EMBEDDING_SUFFIXES)
        entries.setdefault(name, EmbeddingEntry(name, path))
    return sorted(entries.values(), key=lambda e: e.name.lower())


def list_vaes(models_dir: Path | str) -> list[VaeEntry]:
    """Every VAE under models/VAE, then ``NAME.vae.*`` files beside checkpoints in
    models/Stable-diffusion; sorted by name. "Automatic" and "None" are not in the list: they
    are choices, not files (see ``VAE_CHOICES_FIXED``)."""
    root = Path(models_dir).expanduser()
    entries: dict[str, VaeEntry] = {}
    for path in _walk_files(root / VAE_FOLDER, VAE_FILE_SUFFIXES):
        entries.setdefault(path.name, VaeEntry(path.name, path))
    for path in _walk_files(root / CHECKPOINTS_SUBDIR, VAE_SUFFIXES):
        entries.setdefault(path.name, VaeEntry(path.name, path))
    return sorted(entries.values(), key=lambda e: e.name.lower())


VAE_CHOICES_FIXED: tuple[str, ...] = (AUTOMATIC, NO_VAE)


def vae_choices(models_dir: Path | str) -> list[str]:
    """What a VAE picker offers: "Automatic", "None", then every VAE file's name."""
    return [*VAE_CHOICES_FIXED, *(e.name for e in list_vaes(models_dir))]


# -- resolving -------------------------------------------------------------------------------


def _names(names: list[str], limit: int = 30) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def resolve_lora(name: str, entries: list[LoraEntry], models_dir: Path | str) -> LoraEntry:
    """The LoRA ``<lora:name:...>`` means: exact stem, then case-insensitive stem, then a
    relative path without extension ("style/foo"). UserError listing what exists otherwise."""
    wanted = name.strip()
    for e in entries:
        if e.name == wanted:
            return e
    low = wanted.lower()
    matches = [e for e in entries if e.name.lower() == low]
    if len(matches) == 1:
        return matches[0]
    for e in entries:
        for folder in lora_folders(models_dir):
            with contextlib.suppress(ValueError):
                rel = e.path.relative_to(folder).as_posix()
                if _strip_suffix(rel, LORA_SUFFIXES).lower() == low:
                    return e
    where = " or ".join(str(f) for f in lora_folders(models_dir))
    if not entries:
        raise UserError(
            f"LoRA {wanted!r} not found: there are no LoRAs in {where}; put the .safetensors "
            "file there"
        )
    raise UserError(
        f"LoRA {wanted!r} not found in {where}: available LoRAs are "
        f"{_names([e.name for e in entries])}"
    )


def resolve_vae(name: str, models_dir: Path | str) -> VaeEntry:
    """A VAE by name (with or without extension, any case) or by path. Does not handle
    "Automatic"/"None" (see ``automatic_vae``). UserError listing what exists otherwise."""
    wanted = name.strip()
    entries = list_vaes(models_dir)
    for e in entries:
        if e.name == wanted:
            return e
    low = wanted.lower()
    for key in (lambda e: e.name.lower(), lambda e: e.stem.lower()):
        matches = [e for e in entries if key(e) == low]
        if len(matches) == 1:
            return matches[0]
    p = Path(wanted).expanduser()
    if p.is_file():
        return VaeEntry(p.name, p)
    where = Path(models_dir).expanduser() / VAE_FOLDER
    if not entries:
        raise UserError(
            f"VAE {wanted!r} not found: there are no VAE files in {where}; put the "
            ".safetensors file there, or use Automatic"
        )
    raise UserError(
        f"VAE {wanted!r} not found in {where}: available VAEs are Automatic, None, "
        f"{_names([e.name for e in entries])}"
    )


def automatic_vae(checkpoint: Path | str | None, models_dir: Path | str) -> VaeEntry | None:
    """What A1111's "Automatic" picks for a checkpoint: ``NAME.vae.safetensors`` (or .pt/.ckpt)
    beside it, else a file in models/VAE named after the checkpoint (``NAME.*``); None means
    the checkpoint's own VAE."""
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    beside = find_vae_beside(path) if path.suffix else None
    if beside is not None:
        return VaeEntry(beside.name, beside)
    stem = path.stem if path.suffix else path.name
    for e in list_vaes(models_dir):
        if e.stem == stem or e.stem.lower() == f"{stem}.vae".lower():
            return e
    return None


# -- hashes ----------------------------------------------------------------------------------


def lora_hash(path: Path | str) -> str:
    """A1111's LoRA short hash (12 hex): the metadata's ``sshs_model_hash`` if any, else the
    sha256 of a safetensors file after its header, else of the whole file. Cached."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return sha256_file(path)[:12]
    with contextlib.suppress(UserError):
        value = safetensors_metadata(path).get("sshs_model_hash")
        if isinstance(value, str):
            value = value.strip().lower()
            # the file's word goes into infotexts: only a hex digest is taken from it
            if _RE_HASH.fullmatch(value):
                return value[:12]
    return addnet_hash(path)[:12]


def embedding_hash(path: Path | str) -> str:
    """A1111's TI short hash: sha256 of the whole file, 12 hex. Cached."""
    return sha256_file(path)[:12]


def vae_hash(path: Path | str) -> str:
    """A1111's VAE hash: sha256 of the whole file, 10 hex. Cached."""
    return sha256_file(path)[:10]


def infotext_name(name: str) -> str:
    """A1111 removes ':' and ',' from a name before writing ``name: hash`` lists."""
    return name.replace(":", "").replace(",", "")


def hashes_value(pairs: Iterable[tuple[str, str]]) -> str:
    """``name: hash, name2: hash2`` (the infotext writer quotes it, as A1111 does)."""
    return ", ".join(f"{infotext_name(n)}: {h}" for n, h in pairs)


# -- embedding sizes, without torch ----------------------------------------------------------


def _vector_count(value: Any) -> int | None:
    shape = getattr(value, "shape", None)
    if isinstance(shape, (tuple, list)):
        return int(shape[0]) if len(shape) == 2 else 1 if len(shape) == 1 else None
    return None


def embedding_vectors(path: Path | str) -> int | None:
    """How many token slots an embedding takes (its vector count), read from the file's header
    or pickle structure without torch and without running pickled code; None when the file's
    layout is not one sdtui knows (it then counts as its name's tokens)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            data: Any = {
                k: SimpleNamespace(shape=v) for k, v in read_safetensors_shapes(path).items()
            }
        else:
            data = read_pickle_structure(path, "embedding")
    except Exception:  # noqa: BLE001 - unreadable, refused or odd: counted as its name's tokens
        return None
    if not isinstance(data, dict):
        return None
    if "string_to_param" in data:  # A1111
        params = data["string_to_param"]
        state = stub_state(params)
        if isinstance(state, dict):  # a torch ParameterDict: its attributes hold them
            params = state.get("_parameters", state)
        values = list(params.values()) if isinstance(params, dict) else []
        return _vector_count(values[0]) if len(values) == 1 else None
    for key in ("clip_l", "emb_params", "clip_g"):  # SDXL (both have one count), diffusers
        if key in data:
            return _vector_count(data[key])
    counts = [n for n in map(_vector_count, data.values()) if n is not None]
    return counts[0] if len(counts) == 1 else None
