"""Which architecture a checkpoint is, from its tensor names and shapes alone (no torch).

Works on a mapping name -> shape, so it can read a safetensors header without loading a byte
of weights, and the same function serves a loaded ``.ckpt`` state dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from sdtui.model_family_dit import FAMILY_LABELS, detect_dit

UNET = "model.diffusion_model."


@dataclass(frozen=True)
class ModelFamily:
    family: str  # "SD1", "SD2", "SDXL"
    config: str  # name of the bundled diffusers config folder (sdtui/engine/assets/configs/)
    inpainting: bool = False
    v_prediction: bool | None = None  # None: not decidable from the weights alone
    zero_terminal_snr: bool = False  # trained with a zero-terminal-SNR noise schedule
    # an SDXL refiner: OpenCLIP-G text only, aesthetic score in its time ids; it takes over
    # the last steps of an SDXL base job (--refiner), it makes no image alone
    refiner: bool = False
    # a diffusion transformer's release ("dev", "schnell", "medium", "large"; sdtui.model_family_dit)
    variant: str = ""

    @property
    def label(self) -> str:
        if self.family in FAMILY_LABELS:  # "Flux.1 dev", "SD3.5 large"
            return f"{FAMILY_LABELS[self.family]} {self.variant}".strip()
        label = self.family + (" inpainting" if self.inpainting else "")
        if self.refiner:
            label += " refiner"
        if self.family == "SDXL" and self.v_prediction:  # SD2's v models are its standard
            label += " v-pred"
        return label + (" ztsnr" if self.zero_terminal_snr else "")


# SDXL fine-tunes trained for v-prediction (NoobAI-XL v-pred and its merges, ...) say so with
# empty marker tensors: "v_pred", and "ztsnr" for a zero-terminal-SNR schedule (diffusers does
# not read them; Forge and reForge do)
V_PRED_KEY = "v_pred"
ZTSNR_KEY = "ztsnr"


def with_markers(family: ModelFamily, keys: Iterable[str]) -> ModelFamily:
    """``family`` with what an SDXL checkpoint's marker tensors say."""
    if family.family != "SDXL":
        return family
    names = set(keys)
    v = True if V_PRED_KEY in names else family.v_prediction
    return replace(family, v_prediction=v, zero_terminal_snr=ZTSNR_KEY in names)


class UnknownArchitectureError(ValueError):
    pass


# (family, UNet base channels, cross-attention width) -> bundled config
_SIGNATURES: dict[tuple[str, int, int], str] = {
    ("SD1", 320, 768): "sd15",
    ("SD2", 320, 1024): "sd21-768-v",  # 512-base (epsilon) uses the same config, other scheduler
    ("SDXL", 320, 2048): "sdxl-base",
    ("SDXL refiner", 384, 1280): "sdxl-refiner",
    ("SD1", 32, 32): "sdtui-demo",  # the tiny built-in demo model
}


def detect_family(shapes: Mapping[str, Sequence[int]]) -> ModelFamily:
    """Classify an original-layout (A1111/LDM) state dict by its keys and shapes."""
    dit = detect_dit(shapes)
    if dit is not None:  # Flux.1 / SD3.5: no UNet
        return ModelFamily(family=dit[0], config=dit[2], variant=dit[1])
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight")
    if conv_in is None:
        if any(k.startswith("down_blocks.") or k.startswith("unet.") for k in shapes):
            raise UnknownArchitectureError(
                "this file holds diffusers-layout weights, not an A1111 checkpoint: "
                "put the whole diffusers folder (with model_index.json) in models/Stable-diffusion"
            )
        raise UnknownArchitectureError(
            "no Stable Diffusion UNet in this file (it may be a LoRA, VAE, embedding or "
            "upscaler): LoRAs go in models/Lora, VAEs in models/VAE, upscalers in models/ESRGAN"
        )
    base_channels, in_channels = int(conv_in[0]), int(conv_in[1])
    context = None
    for name, shape in shapes.items():
        if name.startswith(UNET) and name.endswith("attn2.to_k.weight"):
            context = int(shape[1])
            break
    if any(k.startswith("conditioner.embedders.1.") for k in shapes):
        family = "SDXL"
    elif any(k.startswith("cond_stage_model.model.") for k in shapes) or context == 1024:
        family = "SD2"
    elif any(k.startswith("conditioner.embedders.0.model.") for k in shapes):
        # sgm's refiner conditioner: OpenCLIP-G (embedders.0) and size/crop/aesthetic ids only
        family = "SDXL refiner"
    else:
        family = "SD1"
    config = _SIGNATURES.get((family, base_channels, context or 0))
    if config is None:
        raise UnknownArchitectureError(
            f"unknown {family}-like architecture (UNet width {base_channels}, text width "
            f"{context}): sdtui runs SD 1.x, SD 2.x, SDXL base and SDXL refiner checkpoints"
        )
    refiner = family == "SDXL refiner"
    found = ModelFamily(
        family="SDXL" if refiner else family,
        config=config,
        inpainting=in_channels == 9,
        refiner=refiner,
    )
    return with_markers(found, shapes)
