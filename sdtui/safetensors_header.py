"""The header of a safetensors file, read and checked without torch or the safetensors library.

The format: 8 bytes of little-endian length N, N bytes of JSON (padded with spaces), then the
tensor data. The JSON maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin,
end]}`` (offsets relative to the data), plus an optional ``"__metadata__"`` table of text.

Every reader of a safetensors header in sdtui comes here: the model listing (family from the
tensor shapes), LoRA and embedding listings, the LoRA hashes, and the engine before it hands
a file to the safetensors library. Nothing past the header is read, a header is checked field
by field, and every way a file can be wrong is one UserError sentence that names it.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeGuard

from sdtui.errors import UserError
from sdtui.regular_files import looks_like_text, not_a_file_of_kind, open_regular, os_error, shown
from sdtui.units import format_bytes

SAFETENSORS_MAX_HEADER = 100_000_000  # the limit the safetensors library itself enforces
MAX_TENSOR_RANK = 32
METADATA = "__metadata__"

_RE_DTYPE = re.compile(r"[A-Z][A-Z0-9_]{0,15}")
_DTYPE_BITS = {
    "F64": 64,
    "F32": 32,
    "F16": 16,
    "BF16": 16,
    "I64": 64,
    "I32": 32,
    "I16": 16,
    "I8": 8,
    "U64": 64,
    "U32": 32,
    "U16": 16,
    "U8": 8,
    "BOOL": 8,
    "F8_E4M3": 8,
    "F8_E5M2": 8,
    "F8_E8M0": 8,
    "C64": 64,
}  # sub-byte types (F4, F6_*) are packed: their sizes are left to the safetensors library


def read_header_length(f: BinaryIO) -> int | None:
    """The header length N from the first 8 bytes of an open file (little-endian u64), or
    None when the file is shorter than that. Not checked against anything."""
    head = f.read(8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head)
    return int(n)


def dims_ok(value: Any) -> TypeGuard[list[int]]:
    """A list of ints that fit a signed 64-bit dimension (no bools, floats or negatives)."""
    return isinstance(value, list) and all(type(d) is int and 0 <= d < 2**63 for d in value)


def tensor_label(name: str) -> str:
    """A tensor name as a message quotes it: shortened, control characters shown."""
    return "'" + shown(name if len(name) <= 60 else name[:57] + "...") + "'"


def safetensors_header_problem(
    header: Mapping[str, Any], data_size: int | None = None
) -> str | None:
    """Why a parsed safetensors header is not one (every tensor needs a dtype name, a shape
    of non-negative ints and two ordered offsets; ``__metadata__`` maps text to text), or None.
    With ``data_size`` each tensor's offsets must also lie in the data and fit its shape."""
    for name, info in header.items():
        if name == METADATA:
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                return "its __metadata__ is not a table of text"
            continue
        label = tensor_label(name)
        if not isinstance(info, dict):
            return f"tensor {label} is not described"
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or not _RE_DTYPE.fullmatch(dtype):
            return f"tensor {label} has no valid dtype"
        if not dims_ok(shape) or len(shape) > MAX_TENSOR_RANK:
            return f"tensor {label} has no valid shape"
        if not dims_ok(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
            return f"tensor {label} has invalid data offsets"
        if data_size is None:
            continue
        if offsets[1] > data_size:
            return f"tensor {label} lies past the end of the file"
        bits = _DTYPE_BITS.get(dtype)
        numel = 1
        for d in shape:
            numel *= d
        if bits is not None and (offsets[1] - offsets[0]) * 8 != numel * bits:
            return f"tensor {label} has data offsets that do not fit its shape"
    return None


def _invalid(path: Path, why: str, detail: str | None = None) -> UserError:
    return UserError(
        f"{shown(path.name)} is not a valid safetensors file ({why}): re-download it",
        detail=detail or f"path: {path}",
    )


def read_safetensors_header(path: Path | str, *, complete: bool = False) -> dict[str, Any]:
    """The checked JSON header of a safetensors file: every tensor has a dtype, a shape of
    non-negative ints and ordered offsets. Only the 8-byte length and the header are read.

    ``complete``: also check that the file holds all the data the header promises and that
    each tensor's bytes fit its shape (what the engine needs before it loads the weights; a
    listing leaves it out so a half-downloaded file still shows its family).
    UserError (one sentence naming the file) for anything else: an empty, text or truncated
    file, an impossible length, a header that is not a JSON object of tensors.
    """
    path = Path(path)
    with open_regular(path) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise UserError(f"{shown(path.name)} is empty (0 bytes): re-download it")
            if looks_like_text(f.read(8)):  # an HTML error page or a git-lfs pointer
                raise not_a_file_of_kind(path, "safetensors")
            f.seek(0)
            n = read_header_length(f)
            if n is None:
                raise _invalid(path, f"it is only {size} bytes long")
            if n > SAFETENSORS_MAX_HEADER:
                raise _invalid(path, f"its header length {n} is impossible")
            if 8 + n > size:
                raise _invalid(
                    path, f"the header says {8 + n} bytes but the file has {size}; it is truncated"
                )
            raw = f.read(n)
        except OSError as e:
            raise os_error(path, e) from None
    try:
        header = json.loads(raw.decode("utf-8").rstrip(" \x00"))
    except (UnicodeDecodeError, ValueError) as e:  # also numbers too long to read
        raise _invalid(path, "its header is not JSON", str(e)) from None
    except RecursionError:
        raise _invalid(path, "its header is nested too deeply") from None
    if not isinstance(header, dict):
        raise _invalid(path, "its header is not a JSON object")
    problem = safetensors_header_problem(header)
    if problem is not None:
        raise _invalid(path, problem)
    if complete:
        data_size = size - 8 - n
        data_end = max(
            (v["data_offsets"][1] for k, v in header.items() if k != METADATA), default=0
        )
        if data_end > data_size:
            expected = 8 + n + data_end
            raise UserError(
                f"{shown(path.name)} is truncated: {format_bytes(size)} of "
                f"{format_bytes(expected)} — re-download it",
                detail=f"{path}: {size} bytes on disk, header says {expected}",
            )
        problem = safetensors_header_problem(header, data_size)
        if problem is not None:
            raise _invalid(path, problem)
    return header


def read_safetensors_shapes(path: Path | str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the header alone (no weights read)."""
    header = read_safetensors_header(path)
    return {name: tuple(info["shape"]) for name, info in header.items() if name != METADATA}


def safetensors_metadata(path: Path | str) -> dict[str, str]:
    """The header's ``__metadata__`` table (empty when there is none)."""
    meta = read_safetensors_header(path).get(METADATA)
    return dict(meta) if isinstance(meta, dict) else {}
