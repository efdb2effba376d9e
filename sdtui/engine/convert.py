"""diffusers -> original (A1111 / LDM) tensor names, for the UNet, the VAE and the text encoders.

A port of diffusers' ``scripts/convert_diffusers_to_original_stable_diffusion.py`` made generic
over block counts (that script hard-codes SD 1.x's four blocks of two layers), so the tiny demo
model can be written as a real-layout single file and read back through the same single-file
path that loads people's checkpoints. Unknown names raise: a silently dropped weight would give
a model that loads and draws noise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # SD 1.x: OpenAI CLIP ViT-L
OPENCLIP_PREFIX = "cond_stage_model.model."  # SD 2.x: OpenCLIP ViT-H
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."

StateDict = dict[str, torch.Tensor]

_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",  # SDXL's size/crop conditioning
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "time_emb_proj.": "emb_layers.1.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "conv_shortcut.": "skip_connection.",
}
_VAE_ATTENTION = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}


def _rename(name: str, prefixes: Mapping[str, str]) -> str | None:
    """Swap the longest matching prefix, or None when none matches."""
    for old in sorted(prefixes, key=len, reverse=True):
        if name.startswith(old):
            return prefixes[old] + name[len(old) :]
    return None


def _unet_block_prefixes(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> dict:
    """diffusers block prefix -> LDM prefix, plus whether the block is a resnet."""
    per_block = config["layers_per_block"]
    if not isinstance(per_block, int):
        raise ValueError("per-block layer counts are not supported by the LDM layout")
    n_blocks = len(config["block_out_channels"])
    stride = per_block + 1  # LDM numbers a down block's layers and its downsampler in one row
    out: dict[str, tuple[str, bool]] = {}
    for i in range(n_blocks):
        for j in range(per_block):
            idx = 1 + i * stride + j
            out[f"down_blocks.{i}.resnets.{j}."] = (f"input_blocks.{idx}.0.", True)
            out[f"down_blocks.{i}.attentions.{j}."] = (f"input_blocks.{idx}.1.", False)
        if i < n_blocks - 1:
            out[f"down_blocks.{i}.downsamplers.0.conv."] = (
                f"input_blocks.{(i + 1) * stride}.0.op.",
                False,
            )
        for j in range(stride):
            idx = i * stride + j
            out[f"up_blocks.{i}.resnets.{j}."] = (f"output_blocks.{idx}.0.", True)
            out[f"up_blocks.{i}.attentions.{j}."] = (f"output_blocks.{idx}.1.", False)
        if i < n_blocks - 1:
            # The upsampler follows the attention when the block has one (LDM's sequential list).
            has_attention = any(k.startswith(f"up_blocks.{i}.attentions.") for k in state_dict)
            slot = 2 if has_attention else 1
            out[f"up_blocks.{i}.upsamplers.0."] = (
                f"output_blocks.{i * stride + per_block}.{slot}.",
                False,
            )
    out["mid_block.resnets.0."] = ("middle_block.0.", True)
    out["mid_block.attentions.0."] = ("middle_block.1.", False)
    out["mid_block.resnets.1."] = ("middle_block.2.", True)
    return out


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> StateDict:
    """A diffusers UNet2DConditionModel state dict in LDM names (without the model prefix)."""
    blocks = _unet_block_prefixes(state_dict, config)
    converted: StateDict = {}
    for name, tensor in state_dict.items():
        new = _rename(name, _UNET_TOP)
        if new is None:
            for prefix in sorted(blocks, key=len, reverse=True):
                if name.startswith(prefix):
                    ldm_prefix, is_resnet = blocks[prefix]
                    rest = name[len(prefix) :]
                    if is_resnet:
                        rest = _rename(rest, _UNET_RESNET) or rest
                    new = ldm_prefix + rest
                    break
        if new is None:
            raise ValueError(f"no LDM name for UNet tensor {name!r}")
        converted[new] = tensor
    return converted


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> StateDict:
    """A diffusers AutoencoderKL state dict in LDM names (without the first_stage_model prefix)."""
    n_up = len(config["up_block_types"])
    prefixes: dict[str, str] = {
        "encoder.conv_norm_out.": "encoder.norm_out.",
        "decoder.conv_norm_out.": "decoder.norm_out.",
    }
    for part in ("encoder", "decoder"):
        for k in range(2):
            prefixes[f"{part}.mid_block.resnets.{k}."] = f"{part}.mid.block_{k + 1}."
    for i in range(len(config["down_block_types"])):
        prefixes[f"encoder.down_blocks.{i}.resnets."] = f"encoder.down.{i}.block."
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
    for i in range(n_up):
        # LDM numbers decoder blocks from the lowest resolution up; diffusers the other way.
        prefixes[f"decoder.up_blocks.{i}.resnets."] = f"decoder.up.{n_up - 1 - i}.block."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{n_up - 1 - i}.upsample."
    converted: StateDict = {}
    for name, tensor in state_dict.items():
        attention = None
        for part in ("encoder", "decoder"):
            if name.startswith(f"{part}.mid_block.attentions.0."):
                attention = part
        if attention is not None:
            rest = name[len(f"{attention}.mid_block.attentions.0.") :]
            new_rest = _rename(rest, _VAE_ATTENTION)
            if new_rest is None:
                raise ValueError(f"no LDM name for VAE tensor {name!r}")
            if tensor.ndim == 2:  # LDM uses 1x1 convs where diffusers uses linears
                tensor = tensor.reshape(*tensor.shape, 1, 1)
            converted[f"{attention}.mid.attn_1.{new_rest}"] = tensor
            continue
        new = _rename(name, prefixes) or name
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        if not new.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")):
            raise ValueError(f"no LDM name for VAE tensor {name!r}")
        converted[new] = tensor
    return converted


def clip_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """OpenAI CLIP text encoder: LDM keeps transformers' names under ``text_model.``."""
    # transformers 5 saves CLIPTextModel without the text_model. wrapper that LDM files have.
    return {
        (k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
        for k, v in state_dict.items()
    }


_OPENCLIP_NAMES = [
    ("text_model.encoder.layers.", "transformer.resblocks."),
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    (".mlp.fc1.", ".mlp.c_fc."),
    (".mlp.fc2.", ".mlp.c_proj."),
    (".self_attn.", ".attn."),
    ("text_model.final_layer_norm.", "ln_final."),
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
]

_QKV = re.compile(r"(.*\.attn\.)([qkv])_proj\.(weight|bias)$")


def openclip_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """OpenCLIP text encoder (SD 2.x, SDXL's second): q/k/v fused into ``in_proj``."""
    fused: dict[str, list[torch.Tensor | None]] = {}
    converted: StateDict = {}
    for name, tensor in clip_to_ldm(state_dict).items():
        if name == "text_projection.weight":
            converted["text_projection"] = tensor.T.contiguous()  # OpenCLIP multiplies x @ P
            continue
        for old, new in _OPENCLIP_NAMES:
            name = name.replace(old, new)
        fused_part = _QKV.match(name)
        if fused_part:
            key = fused_part[1] + "in_proj_" + fused_part[3]
            fused.setdefault(key, [None, None, None])["qkv".index(fused_part[2])] = tensor
        else:
            converted[name] = tensor
    for key, parts in fused.items():
        if any(p is None for p in parts):
            raise ValueError(f"text encoder is missing one of q/k/v for {key!r}")
        converted[key] = torch.cat([p for p in parts if p is not None])
    return converted


def stable_diffusion_to_ldm(
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    text_encoder: torch.nn.Module,
    text_encoder_2: torch.nn.Module | None = None,
    *,
    openclip: bool = False,
) -> StateDict:
    """One original-layout state dict for a whole SD 1.x / 2.x (``openclip``) / SDXL pipeline."""
    out: StateDict = {}
    unet_sd = unet.state_dict()
    for k, v in unet_to_ldm(unet_sd, unet.config).items():
        out[UNET_PREFIX + k] = v
    for k, v in vae_to_ldm(vae.state_dict(), vae.config).items():
        out[VAE_PREFIX + k] = v
    text_sd = text_encoder.state_dict()
    if text_encoder_2 is not None:
        out.update({SDXL_CLIP_PREFIX + k: v for k, v in clip_to_ldm(text_sd).items()})
        text_2 = openclip_to_ldm(text_encoder_2.state_dict())
        out.update({SDXL_OPENCLIP_PREFIX + k: v for k, v in text_2.items()})
    elif openclip:
        out.update({OPENCLIP_PREFIX + k: v for k, v in openclip_to_ldm(text_sd).items()})
    else:
        out.update({CLIP_PREFIX + k: v for k, v in clip_to_ldm(text_sd).items()})
    # Contiguous, unshared storage: safetensors refuses views of one buffer.
    return {k: v.detach().contiguous().clone() for k, v in out.items()}
