"""The hashes A1111 writes into infotexts, and the cache that keeps them (no torch).

- "Model hash" (AutoV2): sha256 of the whole file, first 10 hex; checkpoints and VAEs.
- the old 8-hex hash: sha256 of the 64 KiB at offset 1 MiB (still typed in old prompts).
- LoRA hash ("addnet"): sha256 of a safetensors file after its header.

Hashing a 7 GB checkpoint takes minutes (A1111 issue #6738), so every full hash is cached in
``<cache>/model-hashes.json``, keyed by absolute path and trusted while size and mtime_ns
match. The cache is input from disk like any other: a file that is not ours is ignored, and
only well-formed lowercase hex ever comes out of it (it ends up in listings and infotexts).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdtui.errors import UserError
from sdtui.regular_files import open_regular, shown
from sdtui.safetensors_header import read_header_length

HASH_CACHE_FILE = "model-hashes.json"
HASH_CACHE_MAX = 64 * 1024 * 1024  # a cache file larger than this is not ours: ignored
CHUNK = 1024 * 1024  # A1111 hashes in 1 MiB blocks
OLD_HASH_OFFSET, OLD_HASH_LENGTH = 0x100000, 0x10000

Progress = Callable[[int, int], None]  # (bytes done, bytes total)

_HASH_FIELDS = {"sha256": 64, "addnet_sha256": 64, "old_hash": 8}
_RE_LOWER_HEX = re.compile(r"[0-9a-f]+")


# -- the cache -------------------------------------------------------------------------------


def _cache_path() -> Path:
    from sdtui.config import cache_dir

    return cache_dir() / HASH_CACHE_FILE


def _valid_hash(field: str, value: Any) -> bool:
    """A cached hash as sdtui writes it: lowercase hex of the field's length. A tampered
    cache could otherwise put escape sequences into listings and saved infotexts."""
    length = _HASH_FIELDS.get(field)
    return (
        isinstance(value, str)
        and (length is None or len(value) == length)
        and _RE_LOWER_HEX.fullmatch(value) is not None
    )


def _clean_record(rec: Any) -> dict[str, Any] | None:
    """A cache record with its size and mtime ints and only well-formed hashes; None if it
    has no usable identity."""
    if not isinstance(rec, dict) or type(rec.get("size")) is not int:
        return None
    if type(rec.get("mtime_ns")) is not int:
        return None
    out: dict[str, Any] = {"size": rec["size"], "mtime_ns": rec["mtime_ns"]}
    out.update((k, rec[k]) for k in _HASH_FIELDS if _valid_hash(k, rec.get(k)))
    return out


def _load_cache() -> dict[str, dict[str, Any]]:
    """The hash cache's records, every value checked (a file that is not ours, not JSON, not
    an object, or huge counts as empty; a record with a malformed hash loses that hash)."""
    try:
        with open_regular(_cache_path()) as f:
            raw = f.read(HASH_CACHE_MAX + 1)
        if len(raw) > HASH_CACHE_MAX:
            return {}
        data = json.loads(raw.decode("utf-8"))
    except (UserError, OSError, ValueError, RecursionError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return {}
    clean: dict[str, dict[str, Any]] = {}
    for key, rec in files.items():
        record = _clean_record(rec)
        if record is not None:
            clean[key] = record
    return clean


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
        raise UserError(f"{shown(path)} does not exist: check the path") from None
    if not path.is_file():
        raise UserError(
            f"{shown(path)} is not a file: only single-file checkpoints have a model hash"
        )
    return str(path.resolve()), {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _cached(path: Path, field: str) -> tuple[str, dict[str, int], str | None]:
    key, ident = _identity(path)
    rec = _load_cache().get(key)
    if isinstance(rec, dict) and all(rec.get(k) == v for k, v in ident.items()):
        value = rec.get(field)
        if _valid_hash(field, value):
            return key, ident, value
    return key, ident, None


def _no_permission(path: Path) -> UserError:
    return UserError(f"{shown(path)} cannot be read (permission denied): fix its permissions")


# -- the hashes ------------------------------------------------------------------------------


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
        raise _no_permission(path) from None
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
        raise _no_permission(path) from None
    value = h.hexdigest()[:8]
    _store_cache(key, {**ident, "old_hash": value})
    return value


def cached_sha256(path: Path | str) -> str | None:
    """The full sha256 if the cache already knows it (never reads the file); None otherwise,
    also for a path that is missing or not a file."""
    try:
        _, _, value = _cached(Path(path), "sha256")
    except UserError:
        return None
    return value


def cached_model_hash(path: Path | str) -> str | None:
    """The short hash if it is already known (never reads the file); None otherwise."""
    value = cached_sha256(path)
    return value[:10] if value else None


def addnet_hash(path: Path | str) -> str:
    """sha256 of a safetensors file's bytes after the 8-byte length and the JSON header
    (kohya's sd-webui-additional-networks hash, which A1111 uses for LoRAs). Cached."""
    path = Path(path)
    key, ident, value = _cached(path, "addnet_sha256")
    if value is not None:
        return value
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            n = read_header_length(f)
            if n is None:
                raise UserError(f"{shown(path)} is not a safetensors file (too short)")
            f.seek(8 + n)
            while chunk := f.read(CHUNK):
                h.update(chunk)
    except PermissionError:
        raise _no_permission(path) from None
    value = h.hexdigest()
    _store_cache(key, {**ident, "addnet_sha256": value})
    return value
