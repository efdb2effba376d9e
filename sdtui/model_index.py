"""The checkpoints in ``models/Stable-diffusion``: finding them, naming them as A1111 does,
telling their family from the file header, hashing them, and resolving what a user typed.

No torch: a safetensors header is read as JSON; a ``.ckpt`` (a zip holding a pickle) is read
with an unpickler that builds nothing but shapes, so no code in the file ever runs.

Names follow A1111 (modules/sd_models.py ``CheckpointInfo``): ``name`` is the path relative to
the Stable-diffusion folder without extension, ``/``-separated; the infotext's "Model" value
is the file stem; a "title" is ``relative/path.safetensors [shorthash]``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdtui.errors import UserError
from sdtui.model_family import ModelFamily, UnknownArchitectureError, detect_family

CHECKPOINTS_SUBDIR = "Stable-diffusion"
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".safetensors", ".ckpt")
# A1111 keeps VAEs beside checkpoints out of the checkpoint list
VAE_SUFFIXES: tuple[str, ...] = (".vae.safetensors", ".vae.pt", ".vae.ckpt")
DIFFUSERS_MARKER = "model_index.json"
HASH_CACHE_FILE = "model-hashes.json"
CHUNK = 1024 * 1024  # A1111 hashes in 1 MiB blocks
OLD_HASH_OFFSET, OLD_HASH_LENGTH = 0x100000, 0x10000
SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors format's own limit
CKPT_MAX_PICKLE = 64 * 1024 * 1024
_RE_TITLE_HASH = re.compile(r"\s*\[([^]]+)]\s*$")  # A1111's re_strip_checksum
_HEX = re.compile(r"^[0-9a-fA-F]+$")

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass(frozen=True)
class ModelEntry:
    name: str  # "sub/dir/model" (relative, no extension) or a diffusers folder's relative path
    path: Path
    kind: str  # "file" | "diffusers"
    size_bytes: int
    family: str = "?"  # "SD1", "SD2", "SDXL", "SD1 inpainting", ... or "?" (unknown)
    error: str | None = None  # why the header could not be read or classified
    config: str | None = None  # bundled config folder name from model_family, when known
    yaml: Path | None = None  # A1111's same-name .yaml beside a checkpoint

    @property
    def stem(self) -> str:
        """What A1111 writes as the infotext "Model" value."""
        return self.name.rsplit("/", 1)[-1]

    @property
    def filename(self) -> str:
        """A1111's checkpoint name: the relative path with its extension."""
        return self.name + (self.path.suffix if self.kind == "file" else "")

    @property
    def model_name(self) -> str:
        """A1111's ``model_name``: the relative path with ``/`` turned into ``_``."""
        return self.name.replace("/", "_")

    def title(self, shorthash: str | None = None) -> str:
        """A1111's dropdown title, ``sub/model.safetensors [0123456789]``."""
        return f"{self.filename} [{shorthash}]" if shorthash else self.filename

    @property
    def size_label(self) -> str:
        gib = self.size_bytes / 1024**3
        return f"{gib:.2f} GB" if gib >= 1 else f"{self.size_bytes / 1024**2:.0f} MB"


# -- safetensors / ckpt headers --------------------------------------------------------------


def read_safetensors_header(path: Path | str) -> dict[str, Any]:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _bad(path, f"it is only {size} bytes long")
            (n,) = struct.unpack("<Q", head)
            if n > SAFETENSORS_MAX_HEADER:
                raise _bad(path, f"its header length {n} is impossible")
            if 8 + n > size:
                raise _bad(
                    path,
                    f"the header says {8 + n} bytes but the file has {size}; it is truncated",
                )
            raw = f.read(n)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: check the path") from None
    except PermissionError:
        raise UserError(f"{path} cannot be read (permission denied): fix its permissions") from None
    try:
        header = json.loads(raw.decode("utf-8").rstrip(" \x00"))
    except (UnicodeDecodeError, ValueError):
        raise _bad(path, "its header is not JSON") from None
    if not isinstance(header, dict):
        raise _bad(path, "its header is not a JSON object")
    return header


def read_safetensors_shapes(path: Path | str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the header alone (no weights read)."""
    header = read_safetensors_header(path)
    shapes: dict[str, tuple[int, ...]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not isinstance(info.get("shape"), list):
            raise _bad(Path(path), f"tensor {name!r} has no shape in the header")
        shapes[name] = tuple(int(d) for d in info["shape"])
    return shapes


def _bad(path: Path, why: str) -> UserError:
    return UserError(
        f"{path} is not a valid safetensors file ({why}): the download may be incomplete; "
        "download it again"
    )


class _TensorShape:
    __slots__ = ("shape",)

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = tuple(int(d) for d in shape)


class _Stub:
    """Stands in for any class a checkpoint pickle names; absorbs all construction and keeps
    only the state it is given (a torch ParameterDict's ``_parameters``, say)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


def _rebuild_tensor(storage: Any, offset: Any, size: Any, *args: Any) -> _TensorShape:
    return _TensorShape(size if isinstance(size, (tuple, list)) else ())


def _rebuild_parameter(data: Any, *args: Any) -> Any:
    return data


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    return func(*args) if callable(func) else None


class _ShapeUnpickler(pickle.Unpickler):
    """Reads a torch checkpoint's pickle into {name: _TensorShape} without importing or
    running anything: every global resolves to a harmless stand-in."""

    _FUNCS: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
        ("collections", "OrderedDict"): OrderedDict,
    }

    def find_class(self, module: str, name: str) -> Any:
        found = self._FUNCS.get((module, name))
        if found is not None:
            return found
        return type(name, (_Stub,), {})

    def persistent_load(self, pid: Any) -> Any:
        return None


def stub_state(obj: Any) -> Any:
    """What a pickle gave a stand-in object (e.g. a ParameterDict's attributes), else None."""
    return getattr(obj, "state", None) if isinstance(obj, _Stub) else None


def read_pickle_structure(path: Path | str) -> Any:
    """The object a zip-format ``.ckpt``/``.pt``/``.bin`` (torch >= 1.6) pickles, with every
    tensor as a ``.shape``-only stand-in and every class a stub: nothing is imported or run.

    Raises ValueError when the file is not such a zip (old pickle-only checkpoints).
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not pkl:
                raise ValueError("no data.pkl inside")
            info = zf.getinfo(pkl[0])
            if info.file_size > CKPT_MAX_PICKLE:
                raise ValueError("its pickle is too large to inspect")
            with zf.open(info) as f:
                obj = _ShapeUnpickler(f).load()
    except zipfile.BadZipFile:
        raise ValueError("not a zip-format torch checkpoint") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, IndexError, KeyError) as e:
        raise ValueError(f"its pickle cannot be read ({e})") from None
    return obj


def read_ckpt_shapes(path: Path | str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a zip-format ``.ckpt``/``.pt`` (torch >= 1.6), nothing run.

    Raises ValueError when the file is not such a zip (old pickle-only checkpoints).
    """
    obj = read_pickle_structure(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError("it holds no state dict")
    return {str(k): v.shape for k, v in obj.items() if isinstance(v, _TensorShape)}


def _family_of(path: Path) -> tuple[str, str | None, str | None]:
    """(family label, bundled config, error) of a checkpoint file; cheap: headers only."""
    try:
        if path.suffix.lower() == ".safetensors":
            shapes = read_safetensors_shapes(path)
        else:
            try:
                shapes = read_ckpt_shapes(path)
            except ValueError:
                return "?", None, None  # an old pickle: the engine finds out when it loads
    except UserError as e:
        return "?", None, e.message
    except OSError as e:
        return "?", None, f"{path} cannot be read ({e.strerror or e})"
    try:
        fam: ModelFamily = detect_family(shapes)
    except UnknownArchitectureError as e:
        return "?", None, str(e)
    return fam.label, fam.config, None


def _diffusers_family(folder: Path) -> tuple[str, str | None, str | None]:
    try:
        index = json.loads((folder / DIFFUSERS_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return "?", None, f"{folder / DIFFUSERS_MARKER} cannot be read ({e})"
    cls = str(index.get("_class_name", "")) if isinstance(index, dict) else ""
    if "XL" in cls:
        return "SDXL", "sdxl-base", None
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
        width = int(unet.get("cross_attention_dim", 0))
        inpaint = int(unet.get("in_channels", 4)) == 9
    except (OSError, ValueError, TypeError):
        return "?", None, None
    family = {768: "SD1", 1024: "SD2", 2048: "SDXL"}.get(width, "?")
    return family + (" inpainting" if inpaint and family != "?" else ""), None, None


# -- discovery -------------------------------------------------------------------------------


def checkpoints_folder(models_dir: Path | str) -> Path:
    return Path(models_dir).expanduser() / CHECKPOINTS_SUBDIR


def is_checkpoint_file(path: Path) -> bool:
    lower = path.name.lower()
    return lower.endswith(CHECKPOINT_SUFFIXES) and not lower.endswith(VAE_SUFFIXES)


def entry_for_path(path: Path | str, root: Path | None = None) -> ModelEntry:
    """A ModelEntry for one checkpoint file or diffusers folder; named relative to ``root``
    when it lies inside it, else by its own name."""
    path = Path(path).expanduser()
    rel: str
    if root is not None:
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError:
            rel = path.name
    else:
        rel = path.name
    if path.is_dir():
        if not (path / DIFFUSERS_MARKER).is_file():
            raise UserError(
                f"{path} is a folder without {DIFFUSERS_MARKER}, so not a diffusers model: "
                "give a .safetensors/.ckpt file or a diffusers folder"
            )
        family, config, error = _diffusers_family(path)
        size = _folder_size(path)
        return ModelEntry(rel, path, "diffusers", size, family, error, config)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: check the path") from None
    family, config, error = _family_of(path)
    name = rel[: -len(path.suffix)] if path.suffix else rel
    yaml = path.with_suffix(".yaml")
    return ModelEntry(
        name, path, "file", size, family, error, config, yaml if yaml.is_file() else None
    )


def _folder_size(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(dirpath, f)).st_size
    return total


def discover_models(models_dir: Path | str) -> list[ModelEntry]:
    """Every checkpoint under ``models_dir/Stable-diffusion``, nested folders included, sorted
    by name (case-insensitive). A folder holding ``model_index.json`` is one diffusers model."""
    root = checkpoints_folder(models_dir)
    if not root.is_dir():
        return []
    entries: list[ModelEntry] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        here = Path(dirpath)
        if here != root and DIFFUSERS_MARKER in filenames:
            entries.append(entry_for_path(here, root))
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = here / name
            if name.startswith(".") or not is_checkpoint_file(p):
                continue
            with contextlib.suppress(UserError):  # vanished between listing and stat
                entries.append(entry_for_path(p, root))
    entries.sort(key=lambda e: e.name.lower())
    return entries


def find_vae_beside(path: Path | str) -> Path | None:
    """``NAME.vae.safetensors`` / ``.vae.pt`` / ``.vae.ckpt`` beside checkpoint NAME.*"""
    path = Path(path)
    base = path.parent / (path.name[: -len(path.suffix)] if path.suffix else path.name)
    for suffix in VAE_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file():
            return candidate
    return None


# -- hashes ----------------------------------------------------------------------------------


def _cache_path() -> Path:
    from sdtui.config import cache_dir

    return cache_dir() / HASH_CACHE_FILE


def _load_cache() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def _store_cache(key: str, record: dict[str, Any]) -> None:
    """Merge one record into the cache file (atomic replace; a failure only costs a rehash)."""
    files = _load_cache()
    files[key] = {**files.get(key, {}), **record}
    path = _cache_path()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"version": 1, "files": files}, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _identity(path: Path) -> tuple[str, dict[str, int]]:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: check the path") from None
    if not path.is_file():
        raise UserError(f"{path} is not a file: only single-file checkpoints have a model hash")
    return str(path.resolve()), {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _cached(path: Path, field: str) -> tuple[str, dict[str, int], str | None]:
    key, ident = _identity(path)
    rec = _load_cache().get(key)
    if isinstance(rec, dict) and all(rec.get(k) == v for k, v in ident.items()):
        value = rec.get(field)
        if isinstance(value, str):
            return key, ident, value
    return key, ident, None


def sha256_file(path: Path | str, progress: Progress | None = None) -> str:
    """Full sha256 hex of a file, cached by absolute path + size + mtime_ns.

    Hashing a 7 GB checkpoint takes minutes (A1111 issue #6738); ``progress(done, total)`` is
    called after each 1 MiB block so a UI can show it.
    """
    path = Path(path)
    key, ident, value = _cached(path, "sha256")
    if value is not None:
        return value
    h = hashlib.sha256()
    done, total = 0, ident["size"]
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    except PermissionError:
        raise UserError(f"{path} cannot be read (permission denied): fix its permissions") from None
    value = h.hexdigest()
    _store_cache(key, {**ident, "sha256": value})
    return value


def model_hash(path: Path | str, progress: Progress | None = None) -> str:
    """A1111's current short hash ("AutoV2", shown as Model hash): sha256[:10]."""
    return sha256_file(path, progress)[:10]


def old_model_hash(path: Path | str) -> str:
    """A1111's old 8-hex hash: sha256 of the 0x10000 bytes at offset 0x100000."""
    path = Path(path)
    key, ident, value = _cached(path, "old_hash")
    if value is not None:
        return value
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            f.seek(OLD_HASH_OFFSET)
            h.update(f.read(OLD_HASH_LENGTH))
    except PermissionError:
        raise UserError(f"{path} cannot be read (permission denied): fix its permissions") from None
    value = h.hexdigest()[:8]
    _store_cache(key, {**ident, "old_hash": value})
    return value


def cached_model_hash(path: Path | str) -> str | None:
    """The short hash if it is already known (never reads the file); None otherwise."""
    try:
        _, _, value = _cached(Path(path), "sha256")
    except UserError:
        return None
    return value[:10] if value else None


# -- resolving what a user typed -------------------------------------------------------------


def _root_of(entry: ModelEntry) -> Path:
    depth = entry.name.count("/") + 1
    return entry.path.parents[depth - 1] if len(entry.path.parents) >= depth else entry.path.parent


def _unique(matches: list[ModelEntry], query: str, what: str) -> ModelEntry | None:
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        names = ", ".join(e.filename for e in matches)
        raise UserError(
            f"model {query!r} matches several {what}: {names}; type more of the name, "
            "or the path relative to the Stable-diffusion folder"
        )
    return None


def _by_hash(digest: str, entries: Sequence[ModelEntry]) -> list[ModelEntry]:
    digest = digest.lower()
    files = [e for e in entries if e.kind == "file"]
    if len(digest) == 8:  # old hash: 64 KiB per file, cheap to compute for all
        out = []
        for e in files:
            with contextlib.suppress(UserError, OSError):
                if old_model_hash(e.path) == digest:
                    out.append(e)
        if out:
            return out
    out = []
    for e in files:  # new hashes only from the cache: hashing every file takes minutes
        full = None
        with contextlib.suppress(UserError):
            _, _, full = _cached(e.path, "sha256")
        if full and full.startswith(digest):
            out.append(e)
    return out


def resolve_model(
    query: str, entries: Iterable[ModelEntry], *, folder: Path | None = None
) -> ModelEntry:
    """The checkpoint a user means, tried in this order: an existing path; the exact name
    (with or without extension); A1111's ``name [hash]`` title; the file stem; a hash
    (8-hex old or a known short hash); a unique case-insensitive part of the name."""
    entries = list(entries)
    q = query.strip()
    if not q:
        raise UserError("no model given: pass a model name from `sdtui models`, or a path")

    # 1. a path to a file or diffusers folder
    p = Path(q).expanduser()
    if ("/" in q or "\\" in q or p.suffix.lower() in CHECKPOINT_SUFFIXES) and p.exists():
        real = p.resolve()
        for e in entries:
            if e.path.resolve() == real:
                return e
        return entry_for_path(p)

    # 2. A1111 title "name [hash]": the part before the bracket, the hash to break ties
    wanted_hash: str | None = None
    m = _RE_TITLE_HASH.search(q)
    if m and q[: m.start()].strip():
        wanted_hash = m.group(1).strip().lower()
        q = q[: m.start()].strip()

    def pick(matches: list[ModelEntry], what: str) -> ModelEntry | None:
        if wanted_hash and len(matches) > 1:
            by_hash = _by_hash(wanted_hash, matches)
            if by_hash:
                matches = by_hash
        return _unique(matches, query, what)

    # 3. exact name, name with extension, A1111 model_name (slashes as underscores)
    for getter in (
        lambda e: e.name,
        lambda e: e.filename,
        lambda e: e.model_name,
    ):
        found = pick([e for e in entries if getter(e) == q], "models")
        if found:
            return found
    # 4. the stem (what infotexts store as "Model"), exact then any case
    found = pick([e for e in entries if e.stem == q], "models with that file name")
    if found:
        return found
    lower = q.lower()
    found = pick(
        [e for e in entries if lower in (e.stem.lower(), e.name.lower(), e.filename.lower())],
        "models",
    )
    if found:
        return found
    # 5. a hash alone ("2c02b20a", "0123456789")
    if wanted_hash is None and _HEX.match(q) and len(q) in (8, 10, 12, 64):
        found = _unique(_by_hash(q, entries), query, "models with that hash")
        if found:
            return found
    # 6. a unique case-insensitive part of the name
    found = pick([e for e in entries if lower in e.filename.lower()], "models")
    if found:
        return found

    where = folder or (_root_of(entries[0]) if entries else None)
    where_text = f" in {where}" if where else ""
    if not entries:
        raise UserError(
            f"model {query!r} not found: there are no checkpoints{where_text}; put "
            ".safetensors/.ckpt files or diffusers folders there, or pass --models-dir"
        )
    names = ", ".join(e.name for e in entries[:30])
    more = f" (and {len(entries) - 30} more)" if len(entries) > 30 else ""
    raise UserError(
        f"model {query!r} not found{where_text}: available models are {names}{more}; "
        "or give a path to a .safetensors/.ckpt file"
    )
