"""LoRAs on Flux.1 / SD3.5: merged into the weights for one job and put back bit for bit
(sdtui.engine.lora's patches), from the kohya, BFL and ai-toolkit (diffusers) layouts.

diffusers' own converters (lora_conversion_utils) assume Flux's real widths and block counts
and its ``load_lora_weights`` needs peft; the layer names here come from the loaded model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from sdtui.engine.dit_keys import _FLUX_DOUBLE, _FLUX_QKV, _FLUX_TOP, _swap_scale_shift
from sdtui.errors import UserError
from sdtui.model_family import ModelFamily
from sdtui.regular_files import shown

# diffusers' own converters (lora_conversion_utils) assume Flux's real widths and block counts
# and its load_lora_weights needs peft; these names come from the loaded model instead
_LORA_SUFFIXES = (
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".alpha", "alpha"),
)
_TE_LORA_PREFIXES = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
_SD_LORA_MARKS = ("down_blocks", "input_blocks", "up_blocks", "output_blocks", "mid_block")

# one LoRA layer's target: (component, module, swap its scale/shift halves). A layer with
# several targets (BFL's fused qkv, linear1) gives each the next rows of its up matrix.
_Target = tuple[str, torch.nn.Module, bool]


def _flux_bfl_stems(transformer: Any) -> dict[str, list[tuple[str, bool]]]:
    """BFL module name -> the diffusers modules it became, in the order of its output rows
    (and whether the halves swap), for the loaded Flux transformer's own block counts."""
    cfg = transformer.config
    stems: dict[str, list[tuple[str, bool]]] = {
        bfl: [(diffusers, False)] for bfl, diffusers in _FLUX_TOP.items()
    }
    stems["final_layer.adaLN_modulation.1"] = [("norm_out.linear", True)]
    for i in range(int(cfg.num_layers)):
        for bfl, diffusers in _FLUX_DOUBLE.items():
            if not bfl.endswith(".scale"):
                stems[f"double_blocks.{i}.{bfl}"] = [(f"transformer_blocks.{i}.{diffusers}", False)]
        for bfl, names in _FLUX_QKV.items():
            stems[f"double_blocks.{i}.{bfl}"] = [
                (f"transformer_blocks.{i}.{n}", False) for n in names
            ]
    for i in range(int(cfg.num_single_layers)):
        head = f"single_transformer_blocks.{i}."
        stems[f"single_blocks.{i}.linear1"] = [
            (head + n, False) for n in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
        ]
        stems[f"single_blocks.{i}.linear2"] = [(head + "proj_out", False)]
        stems[f"single_blocks.{i}.modulation.lin"] = [(head + "norm.linear", False)]
    return stems


def dit_lora_index(pipe: Any, family: str) -> dict[str, list[_Target]]:
    """Every name a LoRA file may give a layer of this pipeline, -> where its delta goes."""
    index: dict[str, list[_Target]] = {}
    transformer = pipe.transformer
    modules = dict(transformer.named_modules())
    for name, module in modules.items():
        if isinstance(module, torch.nn.Linear):
            for key in (name, "transformer." + name, "lora_transformer_" + name.replace(".", "_")):
                index.setdefault(key, [("transformer", module, False)])
    if family == "Flux":
        for stem, parts in _flux_bfl_stems(transformer).items():
            if any(n not in modules for n, _ in parts):  # schnell has no guidance_in
                continue
            targets: list[_Target] = [("transformer", modules[n], swap) for n, swap in parts]
            for key in (stem, "lora_unet_" + stem.replace(".", "_")):
                index[key] = targets
    for component, kohya in _TE_LORA_PREFIXES.items():
        te = getattr(pipe, component, None)
        if te is None or (family == "Flux" and component != "text_encoder"):  # Flux's is T5
            continue
        for name, module in te.named_modules():
            if not isinstance(module, torch.nn.Linear) or name == "text_projection":
                continue
            bare = name[len("text_model.") :] if name.startswith("text_model.") else name
            target: list[_Target] = [(component, module, False)]
            keys = [f"{component}.{bare}", f"{component}.text_model.{bare}"]
            keys += [kohya + "text_model_" + bare.replace(".", "_")]
            if component == "text_encoder":
                keys.append("lora_te_text_model_" + bare.replace(".", "_"))
            for key in keys:
                index.setdefault(key, target)
    return index


def _lora_stem(key: str) -> tuple[str, str] | None:
    for suffix, role in _LORA_SUFFIXES:
        if key.endswith(suffix):
            stem = key[: -len(suffix)]
            for prefix in ("model.diffusion_model.", "diffusion_model."):
                if stem.startswith(prefix):
                    stem = stem[len(prefix) :]
            return stem, role
    return None


def plan_dit_loras(
    requests: list[Any], index: dict[str, list[_Target]], label: str, log: Callable[[str], None]
) -> dict[int, tuple[torch.nn.Module, list[Any]]]:
    """The low-rank pieces to add to each layer, in sdtui.engine.lora's plan format."""
    from sdtui.engine.lora import _Patch, _peft_alpha, read_lora

    plan: dict[int, tuple[torch.nn.Module, list[Any]]] = {}
    for req in requests:
        tensors, metadata = read_lora(req.path)
        layers: dict[str, dict[str, Any]] = {}
        unknown = 0
        for key, tensor in tensors.items():
            found = _lora_stem(key)
            if found is None:
                unknown += 1
                continue
            layers.setdefault(found[0], {})[found[1]] = tensor
        default = _peft_alpha(metadata).get("*", 1.0)
        applied = skipped = 0
        for stem, parts in layers.items():
            targets = index.get(stem)
            up, down = parts.get("up"), parts.get("down")
            if targets is None or up is None or down is None:
                skipped += 1
                continue
            mult = req.unet_multiplier if targets[0][0] == "transformer" else req.te_multiplier
            if mult == 0:
                continue
            rank = int(down.shape[0]) if down.ndim == 2 else 0
            alpha = parts.get("alpha")
            scale = float(alpha.float().item()) / rank if alpha is not None and rank else default
            total = sum(int(m.weight.shape[0]) for _, m, _ in targets)  # qkv: q, k and v
            if (
                up.ndim != 2
                or rank == 0
                or int(up.shape[1]) != rank
                or int(up.shape[0]) != total
                or any(int(down.shape[1]) != int(m.weight.shape[1]) for _, m, _ in targets)
                or not math.isfinite(scale)
            ):
                raise UserError(
                    f"LoRA {req.name!r} does not fit this {label} model: layer {shown(stem)} "
                    f"has shape {tuple(up.shape[:1]) + tuple(down.shape[1:])}; it was made for "
                    "another model (another family or a differently sized variant) or is damaged"
                )
            start = 0
            for _, module, swap in targets:
                n = int(module.weight.shape[0])
                part = up[start : start + n]
                start += n
                if swap:  # BFL's final modulation is (shift, scale); diffusers' (scale, shift)
                    part = _swap_scale_shift(part)
                plan.setdefault(id(module), (module, []))[1].append(
                    _Patch(req.name, part, down, scale * mult)
                )
            applied += 1
        if applied == 0 and layers:
            if req.te_multiplier == 0 and req.unet_multiplier == 0:
                continue
            sd_like = any(mark in stem for stem in layers for mark in _SD_LORA_MARKS)
            kind = "an SD 1.x/2.x/SDXL LoRA" if sd_like else "a LoRA for another model type"
            raise UserError(
                f"LoRA {req.name!r} is {kind}: it has no layer {label} has — use a LoRA made "
                f"for {label}"
            )
        if applied == 0:
            raise UserError(
                f"LoRA {req.name!r} holds no LoRA layers sdtui can apply (LoHa, LoKr or another "
                "kind, or not a LoRA): use a plain LoRA file"
            )
        if skipped or unknown:
            log(
                f"LoRA {req.name}: {applied} layers applied, {skipped + unknown} entries "
                f"skipped (not in this model or of a kind sdtui does not apply)"
            )
    return plan


@contextmanager
def dit_loras(session: Any, p: Any, ctx: Any, family: ModelFamily) -> Iterator[dict[str, object]]:
    """The prompt's ``<lora:name:w>`` tags applied to the pipeline for this job only (the
    weights put back exactly, however the job ends); yields the ``Lora hashes`` pair."""
    from sdtui.engine.job import job_settings
    from sdtui.engine.lora import LoraRequest, apply_plan
    from sdtui.extra_networks_index import hashes_value, list_loras, lora_hash, resolve_lora
    from sdtui.prompt_syntax import extract_lora_tags

    _, tags = extract_lora_tags(p.prompt)
    if not tags:
        yield {}
        return
    models = job_settings(session, ctx).models
    entries = list_loras(models)
    requests = []
    for tag in tags:
        entry = resolve_lora(tag.name, entries, models)
        unet = tag.weight if tag.unet_weight is None else tag.unet_weight
        requests.append(LoraRequest(tag.name, entry.path, tag.weight, unet))
    pipe = session.txt2img
    cached = getattr(session, "lora_index", None)
    if cached is None or cached[0] is not pipe.transformer:
        cached = (pipe.transformer, dit_lora_index(pipe, family.family))
        session.lora_index = cached
    plan = plan_dit_loras(requests, cached[1], family.label, lambda t: ctx.log(t, "warning"))
    applied = apply_plan(plan)
    try:
        hashes = {r.name: lora_hash(r.path) for r in requests}
        yield {"Lora hashes": hashes_value(hashes.items())}
    finally:
        applied.restore()
