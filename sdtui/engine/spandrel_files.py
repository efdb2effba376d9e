"""Reading the weights of a spandrel model file (upscalers, face restorers) safely.

The file is read the way checkpoints are (``sdtui.engine.models``): safetensors, or a pickle
through torch's weights-only unpickler; a TorchScript file, whose loading runs its code, is
refused, and so is a pickle that names code or claims more than it holds. Only the state dict
reaches spandrel, never the file.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import torch

from sdtui.errors import UserError


def free_memory() -> None:
    """Give the memory of dropped models back (to the GPU driver too)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


PICKLED_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


def read_weights(path: Path, what: str = "upscaler") -> Any:
    """What the file holds, read with the checkpoint readers (no code runs, no TorchScript)."""
    from sdtui.engine.checkpoint_files import _read_pickled, _read_safetensors

    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix in PICKLED_SUFFIXES:
        return _read_pickled(path, what)
    raise ValueError(f"unsupported file extension {suffix!r}")


def implausible_key(state_dict: dict[str, Any]) -> str | None:
    """A key whose block number is far beyond the keys there are: spandrel sizes a network
    from such numbers before it loads a weight, so "model.1.sub.9999999..." would build
    millions of blocks from a file of a few bytes."""
    limit = 4 * len(state_dict) + 64
    for key in state_dict:
        for part in key.split("."):
            if part.isascii() and part.isdigit() and (len(part) > 9 or int(part) > limit):
                return key
    return None


def read_state_dict(path: Path, not_model: str, what: str = "upscaler") -> dict[str, torch.Tensor]:
    """The tensors of a spandrel model file (``params_ema``, ``state_dict``, ... unwrapped),
    read with the checkpoint readers, or a UserError: ``not_model`` when the file holds no
    weights, a RefusedFile for code, TorchScript or a crafted block number."""
    import spandrel

    from sdtui.model_index import RefusedFile
    from sdtui.regular_files import shown

    name = shown(path)
    try:
        raw = read_weights(path, what)
    except RefusedFile:
        raise  # TorchScript, code in the pickle, a memory bomb: said as it is
    except UserError as e:
        raise UserError(not_model, detail=e.message) from None
    except MemoryError:
        raise UserError(f"Not enough memory to load {name}: close other programs.") from None
    except Exception as e:  # noqa: BLE001 - the readers say most things; the rest is "not a model"
        raise UserError(not_model, detail=f"{type(e).__name__}: {e}") from None
    if not isinstance(raw, dict):
        raise UserError(not_model, detail=f"holds a {type(raw).__name__}, not a state dict")
    state_dict = spandrel.canonicalize_state_dict(raw)
    if not isinstance(state_dict, dict):
        raise UserError(not_model, detail="no state dict inside")
    state_dict = {
        k: v for k, v in state_dict.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
    }
    if not state_dict:
        raise UserError(not_model, detail="no weights inside")
    odd = implausible_key(state_dict)
    if odd is not None:
        raise RefusedFile(
            f"{name} is damaged or crafted: its weight {shown(odd[:80])!r} names a block far "
            "beyond the weights it holds; re-download it"
        )
    return state_dict
