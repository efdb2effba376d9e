"""Flux.1 and SD3.5 weights under their original names (BFL's, Stability AI's) in diffusers'
names, and the transformer settings a state dict implies. Shared by the loader
(sdtui.engine.dit) and the LoRAs (sdtui.engine.dit_lora), which name the same layers."""

from __future__ import annotations

import math
from typing import Any

import torch

_FLUX_TOP = {
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "txt_in": "context_embedder",
    "img_in": "x_embedder",
    "final_layer.linear": "proj_out",
}
_FLUX_DOUBLE = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
}
_FLUX_SINGLE = {
    "modulation.lin": "norm.linear",
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
    "linear2": "proj_out",
}
_FLUX_QKV = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v")}
_FLUX_QKV |= {"txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}


def _swap_scale_shift(weight: torch.Tensor) -> torch.Tensor:
    """BFL's final modulation is (shift, scale); diffusers' AdaLayerNormContinuous (scale, shift)."""
    shift, scale = weight.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def flux_to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A BFL-layout Flux transformer state dict in diffusers' names. Unlike diffusers'
    converter (which assumes Flux's width, 3072) the widths come from the weights."""
    inner = int(sd["img_in.weight"].shape[0])
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        head, _, suffix = key.rpartition(".")  # suffix: weight / bias / scale
        if key.startswith("final_layer.adaLN_modulation.1."):
            out[f"norm_out.linear.{suffix}"] = _swap_scale_shift(value)
        elif head in _FLUX_TOP:
            out[f"{_FLUX_TOP[head]}.{suffix}"] = value
        elif key.startswith(("double_blocks.", "single_blocks.")):
            kind, index, rest = key.split(".", 2)
            _flux_block(out, kind, int(index), rest, value, inner)
        else:
            raise KeyError(key)
    return out


def _flux_block(
    out: dict[str, torch.Tensor], kind: str, i: int, rest: str, value: torch.Tensor, inner: int
) -> None:
    head, _, suffix = rest.rpartition(".")
    if kind == "double_blocks":
        prefix = f"transformer_blocks.{i}."
        if rest in _FLUX_DOUBLE:  # the norms' ".scale" keys map whole
            out[prefix + _FLUX_DOUBLE[rest]] = value
        elif head in _FLUX_QKV:
            for name, part in zip(_FLUX_QKV[head], value.chunk(3, dim=0), strict=True):
                out[f"{prefix}{name}.{suffix}"] = part
        elif head in _FLUX_DOUBLE:
            out[f"{prefix}{_FLUX_DOUBLE[head]}.{suffix}"] = value
        else:
            raise KeyError(f"double_blocks.{i}.{rest}")
        return
    prefix = f"single_transformer_blocks.{i}."
    if rest in _FLUX_SINGLE:
        out[prefix + _FLUX_SINGLE[rest]] = value
    elif head == "linear1":  # q, k, v and the MLP's input in one matrix
        mlp = int(value.shape[0]) - 3 * inner
        parts = torch.split(value, [inner, inner, inner, mlp], dim=0)
        names = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
        for name, part in zip(names, parts, strict=True):
            out[f"{prefix}{name}.{suffix}"] = part
    elif head in _FLUX_SINGLE:
        out[f"{prefix}{_FLUX_SINGLE[head]}.{suffix}"] = value
    else:
        raise KeyError(f"single_blocks.{i}.{rest}")


def sd3_to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    return dict(convert_sd3_transformer_checkpoint_to_diffusers(dict(sd)))


def _transformer_settings(family: str, sd: dict[str, torch.Tensor], base: dict[str, Any]) -> dict:
    """The bundled transformer config with the shape settings its weights say."""
    cfg = {k: v for k, v in base.items() if not k.startswith("_")}

    def count(head: str) -> int:
        return len({k.split(".")[1] for k in sd if k.startswith(head)})

    if family == "Flux":
        width = int(sd["x_embedder.weight"].shape[0])
        cfg |= {
            "num_layers": count("transformer_blocks."),
            "num_single_layers": count("single_transformer_blocks."),
            "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in sd,
            "in_channels": int(sd["x_embedder.weight"].shape[1]),
            "joint_attention_dim": int(sd["context_embedder.weight"].shape[1]),
            "pooled_projection_dim": int(
                sd["time_text_embed.text_embedder.linear_1.weight"].shape[1]
            ),
            "num_attention_heads": width // int(cfg["attention_head_dim"]),
        }
        return cfg
    caption = int(sd["context_embedder.weight"].shape[0])
    proj = sd["pos_embed.proj.weight"]
    patch = int(proj.shape[2])
    layers = count("transformer_blocks.")
    cfg |= {
        "num_layers": layers,
        "dual_attention_layers": [
            i for i in range(layers) if f"transformer_blocks.{i}.attn2.to_q.weight" in sd
        ],
        "qk_norm": "rms_norm" if "transformer_blocks.0.attn.norm_q.weight" in sd else None,
        "caption_projection_dim": caption,
        "num_attention_heads": caption // int(cfg["attention_head_dim"]),
        "pos_embed_max_size": math.isqrt(int(sd["pos_embed.pos_embed"].shape[1])),
        "joint_attention_dim": int(sd["context_embedder.weight"].shape[1]),
        "pooled_projection_dim": int(sd["time_text_embed.text_embedder.linear_1.weight"].shape[1]),
        "in_channels": int(proj.shape[1]),
        "patch_size": patch,
        "out_channels": int(sd["proj_out.weight"].shape[0]) // (patch * patch),
    }
    return cfg
