"""A VAE from models/VAE (or beside the checkpoint) swapped in for one job.

As A1111 does (modules/sd_vae.py), the weights are loaded into the model's own VAE module,
so no second VAE sits in GPU memory; the checkpoint's VAE weights are kept on the CPU (once
per loaded model) and copied back after the job, bit for bit.

Single files come in the original layout, with ``first_stage_model.`` (or ``vae.``) prefixes
or bare ``encoder.`` / ``decoder.`` keys (the usual ``vae-ft-mse-840000-ema-pruned``), and
are converted with diffusers' LDM -> diffusers mapping against the model's VAE config; files
already in diffusers names load as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdtui.engine.checkpoint_files import read_checkpoint
from sdtui.engine.lora import param_storage
from sdtui.errors import UserError
from sdtui.regular_files import shown

_PREFIXES = ("first_stage_model.", "vae.")
_IGNORED = ("model_ema.", "loss.")


def _strip(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = list(state_dict)
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in keys):
            return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return {k: v for k, v in state_dict.items() if not k.startswith(_IGNORED)}


def vae_state_dict(path: Path, vae: Any) -> dict[str, torch.Tensor]:
    """The file's weights in the diffusers names of ``vae``, checked to cover all of it."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    raw = _strip(read_checkpoint(path))
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in raw):
        converted = raw
    else:
        try:
            converted = convert_ldm_vae_checkpoint(raw, dict(vae.config))
        except (KeyError, ValueError, IndexError, RuntimeError) as e:
            raise UserError(
                f"{shown(path.name)} is not a VAE sdtui can read ({type(e).__name__}: "
                f"{shown(str(e))})"
            ) from None
    own = vae.state_dict()
    missing = [k for k in own if k not in converted]
    if missing or not converted:
        raise UserError(
            f"{shown(path.name)} is not a VAE for this model: {len(missing)} of its {len(own)} tensors "
            "are missing (is it a full checkpoint, or a VAE for another model type?)",
            detail=f"first missing: {missing[:3]}",
        )
    out: dict[str, torch.Tensor] = {}
    for k, ref in own.items():
        t = converted[k]
        if t.shape != ref.shape:
            if t.numel() != ref.numel():
                raise UserError(
                    f"{shown(path.name)} does not fit this model's VAE: {k} is {tuple(t.shape)}, "
                    f"the model's {tuple(ref.shape)}"
                )
            t = t.reshape(ref.shape)  # 1x1 conv attention weights vs linear
        out[k] = t
    return out


def _storages(vae: Any) -> dict[str, torch.Tensor]:
    """State-dict name -> the tensor that really holds it (see lora.param_storage)."""
    out: dict[str, torch.Tensor] = {}
    for key in vae.state_dict(keep_vars=True):
        module_name, _, leaf = key.rpartition(".")
        out[key] = param_storage(vae.get_submodule(module_name), leaf)
    return out


@torch.no_grad()
def _write(vae: Any, weights: dict[str, torch.Tensor]) -> None:
    for key, target in _storages(vae).items():
        target.copy_(weights[key])


@dataclass
class SwappedVae:
    vae: Any
    base: dict[str, torch.Tensor]

    def restore(self) -> None:
        _write(self.vae, self.base)


@dataclass
class VaeCache:
    """What swapping VAEs keeps between jobs of one loaded model (``ModelSession.vae_cache``)."""

    # (the model's VAE module, its own weights on the CPU): saved once per loaded model
    base: tuple[Any, dict[str, torch.Tensor]] | None = None
    # (the last VAE file's identity: path, size, mtime; its weights in the model's names)
    file: tuple[tuple[str, int, int], dict[str, torch.Tensor]] | None = None


def base_weights(vae: Any, cache: VaeCache) -> dict[str, torch.Tensor]:
    """The checkpoint's own VAE weights on the CPU, saved once per loaded model."""
    saved = cache.base
    if saved is None or saved[0] is not vae:
        weights = {k: t.to("cpu", copy=True) for k, t in _storages(vae).items()}
        saved = (vae, weights)
        cache.base = saved
    return saved[1]


def swap_vae(vae: Any, path: Path, cache: VaeCache) -> SwappedVae:
    """Write the VAE file's weights into ``vae``; the result writes the model's own back."""
    base = base_weights(vae, cache)
    key = _identity(path)
    loaded = cache.file
    if loaded is None or loaded[0] != key:
        loaded = (key, vae_state_dict(path, vae))
        cache.file = loaded
    swapped = SwappedVae(vae, base)
    try:
        _write(vae, loaded[1])
    except BaseException:
        swapped.restore()
        raise
    return swapped


def _identity(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns
