"""Reading model files safely: safetensors checked field by field, pickles through torch's
weights-only unpickler after an opcode scan. Below sdtui.engine.models (which builds pipelines
from what this reads) so that the LoRA, VAE, embedding and upscaler readers can use it without
importing the pipeline builder."""

from __future__ import annotations

import io
import logging
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from sdtui.errors import UserError
from sdtui.model_index import (
    CKPT_MAX_PICKLE,
    ZIP_MAGIC,
    PickleScan,
    RefusedFile,
    read_zip_pickle,
    scan_pickle,
)
from sdtui.regular_files import (
    looks_like_text,
    not_a_file_of_kind,
    open_regular,
    regular_stat,
    shown,
)
from sdtui.safetensors_header import METADATA, read_safetensors_header
from sdtui.units import format_bytes

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_RE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------
#
# Nothing in a model file may run code or make sdtui allocate more than the file holds, and
# every way a file can be wrong ends as one UserError sentence naming it (never a traceback):
# - only regular files are opened (a named pipe would block forever);
# - safetensors headers are checked field by field before a byte of weights is read;
# - pickles are read by torch's weights-only unpickler with a short allow-list, after their
#   opcodes are scanned: one that names code is refused before torch sees it, one that claims
#   more memory than its bytes could hold is refused as damaged or crafted;
# - zips are checked first: TorchScript archives (whose loading runs their code), encrypted
#   zips, methods torch cannot read and zip bombs are refused with a sentence each.


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    read_safetensors_header(path, complete=True)  # checked field by field before a byte of data
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError, MemoryError) as e:
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"{shown(path.name)} is damaged ({shown(why)}): re-download it", detail=str(e)
        ) from None


class _LightningCallbackState:
    """Stand-in for Lightning's ModelCheckpoint that some old checkpoints pickle beside the
    weights; only its plain data is kept, and nothing in it is ever called."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update((k, v) for k, v in state.items() if isinstance(k, str))


def _allowed_globals() -> list[Any]:
    """What old checkpoints legitimately pickle besides tensors (as A1111's modules/safe.py)."""
    import numpy as np

    multiarray = np._core.multiarray
    allowed: list[Any] = [
        (_LightningCallbackState, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        (multiarray.scalar, "numpy._core.multiarray.scalar"),
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        (multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
        (np.ndarray, "numpy.ndarray"),
        (np.dtype, "numpy.dtype"),
    ]
    for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType"):
        dtype_cls = getattr(np.dtypes, name)
        allowed.append((dtype_cls, f"numpy.dtypes.{name}"))
    return allowed


def _refused_global(error: Exception) -> str | None:
    match = _RE_GLOBAL.search(str(error))
    if match is None:
        return None
    name = match.group(1)
    # torch prints builtins without their module ("eval"); say where it comes from.
    return name if "." in name else f"builtins.{name}"


# Modules whose names a weights pickle may use; torch's weights-only unpickler then narrows
# these to its allow-list. Anything else a pickle imports is code it wants to run.
_SAFE_MODULES = ("torch", "collections", "numpy", "_codecs", "pytorch_lightning", "lightning")


def _weights_only_names() -> frozenset[str]:
    """What torch's weights-only unpickler builds by default (``builtins.set`` and the like)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return frozenset(_get_allowed_globals())
    except (ImportError, AttributeError):  # a torch that moved it: the module prefixes remain
        return frozenset()


def _is_weight_global(name: str) -> bool:
    if any(name == m or name.startswith(m + ".") for m in _SAFE_MODULES):
        return True
    return name in _weights_only_names() or name in {n for _, n in _allowed_globals()}


def _culprit(scan: PickleScan) -> str | None:
    """The first callable a pickle imports that torch's weights-only unpickler would not
    build from its allow-list (or ours): code the pickle wants to run."""
    return next((shown(g) for g in scan.globals if not _is_weight_global(g)), None)


def _refuse_code(path: Path, culprit: str, detail: str | None = None) -> RefusedFile:
    return RefusedFile(
        f"refused to load {shown(path.name)}: its pickle tries to run code ({culprit}). "
        "Use a .safetensors version of this model.",
        detail=detail,
    )


def _scan(path: Path, size: int, is_zip: bool, what: str) -> tuple[PickleScan, RefusedFile | None]:
    """The opcodes of the pickle torch.load would read, and for an old (non-zip) file the
    refusal its scan found, kept so a text file is called text rather than a crafted pickle.
    A zip's refusals (TorchScript, encryption, a bomb) are raised at once."""
    if is_zip:
        try:
            data = read_zip_pickle(path, what)
        except ValueError:
            return PickleScan(), None  # no or a huge data.pkl: torch.load says what is wrong
        return scan_pickle(io.BytesIO(data), len(data), path), None
    try:
        # an old torch file is five pickles (magic, version, system info, object, storage
        # keys) before the raw weights; a plain pickle is one
        with open_regular(path) as f:
            return scan_pickle(f, min(size, CKPT_MAX_PICKLE), path, pickles=5), None
    except RefusedFile as e:
        return PickleScan(), e


def _read_pickled(path: Path, what: str = "model") -> Any:
    """The object a ``.ckpt``/``.pt``/``.pth``/``.bin`` pickles, read so no code can run."""
    size = regular_stat(path).st_size
    if size == 0:
        raise UserError(f"{shown(path.name)} is empty (0 bytes): re-download it")
    with open_regular(path) as f:
        head = f.read(64)
    is_zip = head.startswith(ZIP_MAGIC)  # torch.load's own test for its zip format
    scan, refused = _scan(path, size, is_zip, what)
    culprit = _culprit(scan) if scan.complete else None
    if culprit is not None:
        raise _refuse_code(path, culprit)
    if not is_zip and not scan.complete and looks_like_text(head):
        raise not_a_file_of_kind(path, "checkpoint")
    if refused is not None:
        raise refused
    try:
        # weights_only: the unpickler can only build tensors and the allow-listed classes, so a
        # pickle that names os.system is refused before anything is called.
        with torch.serialization.safe_globals(_allowed_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on pickle protocols is not for users
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        culprit = _refused_global(e) or _culprit(scan)
        if culprit is not None:
            raise _refuse_code(path, shown(culprit), str(e)) from None
        raise RefusedFile(
            f"refused to load {shown(path.name)}: its pickle holds something other than "
            "weights. Use a .safetensors version of this model.",
            detail=str(e),
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise UserError(
            f"{shown(path.name)} is damaged or truncated ({format_bytes(size)}): re-download it",
            detail=f"{type(e).__name__}: {e}",
        ) from None
    except Exception as e:  # noqa: BLE001 - an allow-listed callable fed crafted arguments
        culprit = _culprit(scan) or next((g for g in scan.globals if g == "_codecs.encode"), None)
        if culprit is not None:
            raise _refuse_code(path, culprit, f"{type(e).__name__}: {e}") from None
        raise RefusedFile(
            f"{shown(path.name)} is damaged or crafted: its pickle does not build weights "
            f"({type(e).__name__}); re-download it or use a .safetensors version",
            detail=f"{type(e).__name__}: {e}",
        ) from None


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(8):  # Lightning and A1111 nest the weights, sometimes twice; a cycle stops
        inner = obj.get("state_dict") if isinstance(obj, dict) else None
        if not isinstance(inner, dict) or inner is obj:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise UserError(
            f"{shown(path.name)} does not hold a state dict of weights: it is not a model"
        )
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(f"{shown(path.name)} holds no weights: re-download it")
    return tensors


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise UserError(f"model not found: {shown(path)}")
    if path.is_dir():
        raise UserError(f"{shown(path)} is a folder, not a checkpoint file")
    regular_stat(path)  # a named pipe or a device is refused before anything opens it


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` or ``.ckpt``/``.pt`` file, on the CPU."""
    path = Path(path)
    _check_exists(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _unwrap_state_dict(_read_pickled(path), path)
    raise UserError(
        f"{shown(path.name)}: sdtui reads .safetensors and .ckpt checkpoints, not "
        f"'{shown(path.suffix)}' files"
    )


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape. For safetensors only the header is read, not a byte of weights."""
    path = Path(path)
    _check_exists(path)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        header = read_safetensors_header(path, complete=True)
        return {k: tuple(v["shape"]) for k, v in header.items() if k != METADATA}
    return {k: tuple(v.shape) for k, v in read_checkpoint(path).items()}


# ---------------------------------------------------------------------------------------------
# Building pipelines
# ---------------------------------------------------------------------------------------------
