"""LoRAs merged into the weights for one job, and the weights put back exactly afterwards.

Why merge-and-restore and not diffusers' ``load_lora_weights``: that needs peft, wraps every
targeted layer in an adapter module (slower sampling until it is unloaded), and unloading or
unfusing in fp16 leaves rounding behind. Here each targeted weight is saved (on the CPU, as
A1111 does) before ``W += multiplier * alpha / rank * up @ down`` is written into it, computed
in fp32 on the weight's device; after the job the saved tensors are copied back, bit for bit.

Layouts read (from .safetensors, or .pt/.ckpt through the safe loader):

- kohya / A1111: ``lora_unet_<module>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``,
  ``lora_te_`` (SD1/SD2), ``lora_te1_`` / ``lora_te2_`` (SDXL). ``<module>`` is the diffusers
  module path with ``_`` for ``.`` (kohya's SD1/SD2 UNet), or the original LDM path
  (``input_blocks_4_1_...``, kohya's SDXL UNet); both are recognised. Linear and conv
  (LoCon) layers.
- diffusers / peft: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` (alpha from the
  ``lora_adapter_metadata`` when present, else alpha = rank), the older
  ``...processor.to_q_lora.down.weight`` and ``...lora_linear_layer.down.weight`` forms,
  ``text_encoder.`` / ``text_encoder_2.`` prefixes.

Not handled (the layers are skipped with a warning): LoHa, LoKr, (IA)^3, OFT, GLoRA, full
"diff" layers, LoCon's Tucker ``lora_mid`` and DoRA magnitudes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdtui.engine.checkpoint_files import read_checkpoint
from sdtui.engine.convert import unet_to_ldm
from sdtui.engine.fastpath import FusedPart
from sdtui.errors import UserError
from sdtui.regular_files import shown
from sdtui.safetensors_header import safetensors_metadata

Log = Callable[[str], None]

# component name in the pipeline -> kohya prefixes for it
_TE_PREFIXES = {
    "text_encoder": ("lora_te_", "lora_te1_"),
    "text_encoder_2": ("lora_te2_",),
}
_KOHYA_SUFFIXES = {
    ".lora_down.weight": "down",
    ".lora_up.weight": "up",
    ".lora_mid.weight": "mid",
    ".alpha": "alpha",
}
_DOTTED_SUFFIXES = {
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora.down.weight": "down",
    ".lora.up.weight": "up",
    ".lora_linear_layer.down.weight": "down",
    ".lora_linear_layer.up.weight": "up",
    "_lora.down.weight": "down",  # attention processors: attn1.processor.to_q_lora.down.weight
    "_lora.up.weight": "up",
    ".alpha": "alpha",
}
_UNSUPPORTED_MARKERS = ("hada_", "lokr_", ".diff", "dora_scale", "oft_", ".on_input", "a1.weight")
_TE_ATTN = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


@dataclass
class _Layer:
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    mid: torch.Tensor | None = None
    alpha: float | None = None


@dataclass
class ModuleIndex:
    """Every Linear/Conv2d of the UNet and text encoders, under each name a LoRA may use."""

    by_name: dict[str, tuple[str, torch.nn.Module]] = field(default_factory=dict)

    def add(self, key: str, component: str, module: torch.nn.Module) -> None:
        self.by_name.setdefault(key, (component, module))

    def get(self, key: str) -> tuple[str, torch.nn.Module] | None:
        return self.by_name.get(key)


def _underscored(name: str) -> str:
    return name.replace(".", "_")


def build_module_index(pipe: Any) -> ModuleIndex:
    """Names for every patchable layer: kohya (diffusers and LDM UNet spellings, ``lora_te*``)
    and dotted diffusers names (``unet.down_blocks...``, ``text_encoder.text_model...``)."""
    index = ModuleIndex()
    unet = pipe.unet
    # the fast path's fused to_qkv is reached through its to_q/to_k/to_v views, by their names
    fused = {id(m.fused) for m in unet.modules() if isinstance(m, FusedPart)}
    unet_layers = [
        (n, m)
        for n, m in unet.named_modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, FusedPart)) and id(m) not in fused
    ]
    weights = {n + ".weight": None for n, _ in unet_layers}
    try:
        ldm = dict(zip(weights, unet_to_ldm(weights, dict(unet.config)), strict=True))  # type: ignore[arg-type]
    except (ValueError, KeyError, TypeError):
        ldm = {}
    for name, module in unet_layers:
        index.add("lora_unet_" + _underscored(name), "unet", module)
        index.add("unet." + name, "unet", module)
        ldm_name = ldm.get(name + ".weight")
        if ldm_name:
            index.add("lora_unet_" + _underscored(ldm_name[: -len(".weight")]), "unet", module)
    is_xl = getattr(pipe, "text_encoder_2", None) is not None
    for component, prefixes in _TE_PREFIXES.items():
        te = getattr(pipe, component, None)
        if te is None:
            continue
        if component == "text_encoder" and not is_xl:
            prefixes = ("lora_te_",)
        for name, module in te.named_modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            # transformers 5 dropped the text_model. level that LoRA files name
            bare = name[len("text_model.") :] if name.startswith("text_model.") else name
            for prefix in prefixes:
                index.add(prefix + "text_model_" + _underscored(bare), component, module)
                index.add(prefix + _underscored(bare), component, module)
            index.add(f"{component}.text_model.{bare}", component, module)
            index.add(f"{component}.{bare}", component, module)
    return index


def read_lora(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, safetensors metadata) of a LoRA file, read safely."""
    tensors = read_checkpoint(path)
    metadata: dict[str, str] = {}
    if path.suffix.lower() == ".safetensors":
        metadata = {str(k): str(v) for k, v in safetensors_metadata(path).items()}
    return tensors, metadata


def _peft_alpha(metadata: dict[str, str]) -> dict[str, float]:
    """component -> alpha / r from diffusers' ``lora_adapter_metadata`` (peft LoraConfig)."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    out: dict[str, float] = {}
    if not isinstance(data, dict):
        return out
    for component in ("unet", "text_encoder", "text_encoder_2", ""):
        prefix = f"{component}." if component else ""
        r, alpha = data.get(prefix + "r"), data.get(prefix + "lora_alpha")
        if isinstance(r, (int, float)) and isinstance(alpha, (int, float)) and r:
            out[component or "*"] = float(alpha) / float(r)
    return out


def _dotted_module(key: str) -> str:
    """A dotted diffusers LoRA module key in the pipeline's own module names."""
    key = key.replace(".processor.", ".")
    component = "unet"
    for c in ("text_encoder_2.", "text_encoder.", "unet."):
        if key.startswith(c):
            component, key = c[:-1], key[len(c) :]
            break
    parts = key.split(".")
    last = parts[-1]
    if component == "unet":
        if last == "to_out":
            parts.append("0")
    elif last in _TE_ATTN:
        parts[-1] = _TE_ATTN[last]
    return component + "." + ".".join(parts)


def group_layers(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, _Layer], list[str]]:
    """Module key -> its LoRA pieces; and the keys that are not LoRA pieces we can read."""
    layers: dict[str, _Layer] = {}
    unknown: list[str] = []
    for key, tensor in tensors.items():
        kohya = key.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_"))
        table = _KOHYA_SUFFIXES if kohya else _DOTTED_SUFFIXES
        for suffix, role in table.items():
            if key.endswith(suffix):
                module = key[: -len(suffix)]
                if not kohya:
                    module = _dotted_module(module)
                layer = layers.setdefault(module, _Layer())
                if role == "alpha":
                    # one finite number, or the file is damaged: never a raw tensor error
                    alpha = float(tensor.float().item()) if tensor.numel() == 1 else math.nan
                    layer.alpha = alpha if math.isfinite(alpha) else math.nan
                else:
                    setattr(layer, role, tensor)
                break
        else:
            unknown.append(key)
    return layers, unknown


@dataclass
class _Patch:
    name: str  # the LoRA's name, for messages
    up: torch.Tensor
    down: torch.Tensor
    scale: float


def param_storage(module: torch.nn.Module, name: str) -> torch.Tensor:
    """The tensor that really holds ``module.<name>``, to read or write in place.

    Usually the parameter's own data, looked up afresh each time (model offload moves whole
    models between devices and swaps ``.data``). Under sequential offload (accelerate hooks)
    the parameter is on the meta device and the weight lives in the hook's ``weights_map``."""
    tensor = getattr(module, name)
    if tensor.device.type != "meta":
        return tensor.data
    weights_map = getattr(getattr(module, "_hf_hook", None), "weights_map", None)
    stored = None
    if weights_map is not None:
        try:
            stored = weights_map[name]
        except KeyError:
            stored = None
    if isinstance(stored, torch.Tensor) and stored.device.type != "meta":
        return stored
    raise UserError(
        "this model's weights are not reachable in the current memory mode (offloaded to the "
        "meta device): use memory mode low or normal for LoRAs and VAEs",
        detail=f"{type(module).__name__}.{name}",
    )


@dataclass
class AppliedLoras:
    """The saved weights; ``restore()`` puts every one back."""

    backups: list[tuple[torch.nn.Module, torch.Tensor]] = field(default_factory=list)

    @torch.no_grad()
    def restore(self) -> None:
        while self.backups:
            module, saved = self.backups.pop()
            param_storage(module, "weight").copy_(saved)


@dataclass
class LoraRequest:
    """One LoRA to apply: its name as typed, file, and text-encoder / UNet multipliers."""

    name: str
    path: Path
    te_multiplier: float
    unet_multiplier: float


def plan_patches(
    requests: list[LoraRequest], index: ModuleIndex, log: Log
) -> dict[int, tuple[torch.nn.Module, list[_Patch]]]:
    """Read every requested LoRA and gather, per target layer, the low-rank pieces to add."""
    plan: dict[int, tuple[torch.nn.Module, list[_Patch]]] = {}
    for req in requests:
        tensors, metadata = read_lora(req.path)
        layers, unknown = group_layers(tensors)
        peft_scale = _peft_alpha(metadata)
        applied = skipped = 0
        for key, layer in layers.items():
            found = index.get(key)
            if found is None or layer.down is None or layer.up is None:
                skipped += 1
                continue
            if layer.mid is not None:
                skipped += 1  # LoCon Tucker decomposition
                continue
            component, module = found
            mult = req.unet_multiplier if component == "unet" else req.te_multiplier
            if mult == 0:
                continue
            if (
                layer.up.ndim < 2
                or layer.down.ndim < 2
                or layer.down.shape[0] == 0
                or (layer.alpha is not None and math.isnan(layer.alpha))
            ):
                raise UserError(
                    f"LoRA {req.name!r} is damaged: layer {shown(key)} has no usable low-rank "
                    f"weights (shapes {tuple(layer.up.shape)} and {tuple(layer.down.shape)}, "
                    f"alpha {layer.alpha}); re-download it"
                )
            rank = layer.down.shape[0]
            if layer.alpha is not None:
                scale = layer.alpha / rank
            else:
                scale = peft_scale.get(component, peft_scale.get("*", 1.0))
            weight = module.weight
            if (
                layer.up.shape[0] != weight.shape[0]
                or layer.up.flatten(1).shape[1] != rank
                or (layer.down.flatten(1).shape[1] * weight.shape[0] != weight.numel())
            ):
                raise UserError(
                    f"LoRA {req.name!r} does not fit this model: layer {key} has shape "
                    f"{tuple(layer.up.shape[:1]) + tuple(layer.down.shape[1:])}, the model's "
                    f"{tuple(weight.shape)}. It was made for another model type (SD1, SD2 or SDXL)."
                )
            plan.setdefault(id(module), (module, []))[1].append(
                _Patch(req.name, layer.up, layer.down, scale * mult)
            )
            applied += 1
        bad = [k for k in unknown if any(m in k for m in _UNSUPPORTED_MARKERS)]
        if applied == 0 and (layers or unknown):
            if bad or any(layer.mid is not None for layer in layers.values()):
                raise UserError(
                    f"LoRA {req.name!r} is a kind sdtui cannot apply (LoHa, LoKr, DoRA or "
                    "LoCon with Tucker layers): use a plain LoRA/LoCon file"
                )
            if req.te_multiplier == 0 and req.unet_multiplier == 0:
                continue
            raise UserError(
                f"LoRA {req.name!r} has no layer this model has: it was made for another model "
                "type (SD1, SD2 or SDXL) or is not a LoRA"
            )
        if skipped or unknown:
            log(
                f"LoRA {req.name}: {applied} layers applied, {skipped + len(unknown)} entries "
                "skipped (not in this model or of a kind sdtui does not apply)"
            )
    return plan


@torch.no_grad()
def apply_plan(plan: dict[int, tuple[torch.nn.Module, list[_Patch]]]) -> AppliedLoras:
    """Add every layer's deltas into its weight (fp32 maths, one rounding), saving the
    weight first. On an error midway, what was already changed is put back."""
    applied = AppliedLoras()
    try:
        for module, patches in plan.values():
            weight = param_storage(module, "weight")
            delta = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            for patch in patches:
                up = patch.up.to(weight.device, torch.float32).flatten(1)
                down = patch.down.to(weight.device, torch.float32).flatten(1)
                delta += (up @ down).reshape(weight.shape) * patch.scale
            applied.backups.append((module, weight.to("cpu", copy=True)))
            weight.copy_((weight.float() + delta).to(weight.dtype))
    except BaseException:
        applied.restore()
        raise
    return applied


def make_kohya_name(component: str, module_name: str, *, xl: bool = False) -> str:
    """The kohya key stem for a diffusers module (handy for building test LoRAs)."""
    if component == "unet":
        return "lora_unet_" + _underscored(module_name)
    prefix = {"text_encoder": "lora_te1_" if xl else "lora_te_", "text_encoder_2": "lora_te2_"}[
        component
    ]
    bare = re.sub(r"^text_model\.", "", module_name)
    return prefix + "text_model_" + _underscored(bare)
