"""Flux.1 and SD3.5 checkpoints (diffusion transformers), told apart by their tensor names.

Torch-free, like ``sdtui.model_family`` (which calls :func:`detect_dit_family` first): works on
a mapping name -> shape read from a safetensors header. Key names are those of the original
releases (Black Forest Labs' ``flux1-dev.safetensors``, Stability's ``sd3.5_large.safetensors``),
with or without ComfyUI/Forge's ``model.diffusion_model.`` prefix, and those of a diffusers
``transformer/`` saved as one file. The same names are what diffusers' ``single_file_utils``
checks (``CHECKPOINT_KEY_NAMES["flux"]``, ``["sd3"]``, ``["sd35_large"]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PREFIX = "model.diffusion_model."
DIT_FAMILIES = ("Flux", "SD3")
# what a model list shows for each family (ModelFamily.label)
FAMILY_LABELS = {"Flux": "Flux.1", "SD3": "SD3.5"}

FLUX_KEY = "double_blocks.0.img_attn.qkv.weight"
FLUX_GUIDANCE_KEY = "guidance_in.in_layer.weight"  # only dev is guidance-distilled
FLUX_DIFFUSERS_KEY = "single_transformer_blocks.0.proj_mlp.weight"
FLUX_DIFFUSERS_GUIDANCE_KEY = "time_text_embed.guidance_embedder.linear_1.weight"
SD3_KEY = "joint_blocks.0.context_block.attn.qkv.weight"
SD3_MMDIT_X_KEY = "joint_blocks.0.x_block.attn2.qkv.weight"  # SD3.5 medium's second attention
SD3_DIFFUSERS_KEY = "transformer_blocks.0.attn.add_q_proj.weight"
SD3_DIFFUSERS_POS = "pos_embed.pos_embed"

# where the other parts sit in an all-in-one (ComfyUI/Forge "checkpoint") file
VAE_PREFIXES = ("vae.", "first_stage_model.")
TEXT_PREFIXES = {
    "clip_l": "text_encoders.clip_l.transformer.",
    "clip_g": "text_encoders.clip_g.transformer.",
    "t5xxl": "text_encoders.t5xxl.transformer.",
}
# the text encoders each family needs, in its pipeline's order
TEXT_ENCODERS = {"Flux": ("clip_l", "t5xxl"), "SD3": ("clip_l", "clip_g", "t5xxl")}


@dataclass(frozen=True)
class DitParts:
    """What one file holds besides the transformer."""

    vae: bool
    text_encoders: tuple[str, ...]  # of "clip_l", "clip_g", "t5xxl"
    diffusers_layout: bool  # the transformer is in diffusers' names (a transformer/ as a file)


def _strip(shapes: Mapping[str, Sequence[int]]) -> set[str]:
    return {k[len(PREFIX) :] if k.startswith(PREFIX) else k for k in shapes}


def _blocks(keys: set[str], head: str) -> int:
    numbers = {k.split(".", 2)[1] for k in keys if k.startswith(head)}
    return len({n for n in numbers if n.isdigit()})


def detect_dit(shapes: Mapping[str, Sequence[int]]) -> tuple[str, str, str] | None:
    """(family, variant, bundled config) of a Flux.1 / SD3.x file, or None for anything else."""
    keys = _strip(shapes)
    if FLUX_KEY in keys:
        dev = FLUX_GUIDANCE_KEY in keys
        return ("Flux", "dev", "flux1-dev") if dev else ("Flux", "schnell", "flux1-schnell")
    if FLUX_DIFFUSERS_KEY in keys and "x_embedder.weight" in keys:
        dev = FLUX_DIFFUSERS_GUIDANCE_KEY in keys
        return ("Flux", "dev", "flux1-dev") if dev else ("Flux", "schnell", "flux1-schnell")
    if SD3_KEY in keys:
        large = _blocks(keys, "joint_blocks.") >= 38
        medium = SD3_MMDIT_X_KEY in keys
    elif SD3_DIFFUSERS_KEY in keys and SD3_DIFFUSERS_POS in keys:
        large = _blocks(keys, "transformer_blocks.") >= 38
        medium = "transformer_blocks.0.attn2.to_q.weight" in keys
    else:
        return None
    if large:
        return "SD3", "large", "sd35-large"
    if medium:
        return "SD3", "medium", "sd35-medium"
    # SD3 medium (2024): 24 MMDiT blocks without the second attention; the 3.5 medium config
    # fits it once its transformer settings are read from the weights (as the loader does)
    return "SD3", "medium", "sd35-medium"


def dit_parts(shapes: Mapping[str, Sequence[int]]) -> DitParts:
    keys = set(shapes)
    vae = any(k.startswith(p + "decoder.") for p in VAE_PREFIXES for k in keys)
    texts = tuple(
        name for name, prefix in TEXT_PREFIXES.items() if any(k.startswith(prefix) for k in keys)
    )
    stripped = _strip(shapes)
    diffusers = FLUX_KEY not in stripped and SD3_KEY not in stripped
    return DitParts(vae=vae, text_encoders=texts, diffusers_layout=diffusers)
