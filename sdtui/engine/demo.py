"""The tiny built-in demo model: SD 1.x-shaped, random weights, a few MB, built in seconds.

It lets a person try sdtui with no checkpoint and no internet, and it is the test fixture: the
same weights are written as a diffusers folder and as real-layout (A1111/LDM) ``.safetensors``
and ``.ckpt`` single files, so every loading path is exercised on CPU. Its architecture lives
in the bundled ``sdtui-demo`` config folder, so the folder and single-file paths agree.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from sdtui.config import cache_dir
from sdtui.engine.configs import config_dir
from sdtui.engine.convert import stable_diffusion_to_ldm

DEMO_NAME = "sdtui-demo"
DEMO_VERSION = "demo-v1"  # bump when the recipe changes: old caches are then ignored
DEMO_SEED = 20240601


@dataclass(frozen=True)
class DemoModel:
    folder: Path  # diffusers layout (model_index.json)
    safetensors: Path  # original layout, the usual download
    ckpt: Path  # original layout, pickled like old checkpoints


def _paths(root: Path) -> DemoModel:
    return DemoModel(
        folder=root / DEMO_NAME,
        safetensors=root / f"{DEMO_NAME}.safetensors",
        ckpt=root / f"{DEMO_NAME}.ckpt",
    )


def _is_complete(demo: DemoModel) -> bool:
    return (
        (demo.folder / "model_index.json").is_file()
        and demo.safetensors.is_file()
        and demo.ckpt.is_file()
    )


def _build(root: Path) -> None:
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    cfg = config_dir(DEMO_NAME)
    # Seeded on a private generator state so building does not disturb the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMO_SEED)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(cfg / "text_encoder"))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(cfg / "tokenizer"),
        unet=unet,
        scheduler=EulerAncestralDiscreteScheduler.from_pretrained(cfg / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    demo = _paths(root)
    pipe.save_pretrained(demo.folder, safe_serialization=True)
    state_dict = stable_diffusion_to_ldm(unet, vae, text_encoder)
    save_file(state_dict, demo.safetensors, metadata={"format": "pt", "sdtui": DEMO_VERSION})
    torch.save({"state_dict": state_dict}, demo.ckpt)


def ensure_demo_model() -> DemoModel:
    """The demo model's paths; built once under ``cache_dir()/demo-v1`` and reused after."""
    target = cache_dir() / DEMO_VERSION
    demo = _paths(target)
    if _is_complete(demo):
        return demo
    # Build in a sibling temp folder and rename: a crash or a racing process never leaves
    # a half-written model behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{DEMO_VERSION}-", dir=cache_dir()))
    try:
        _build(staging)
        if target.exists() and not _is_complete(demo):
            shutil.rmtree(target)  # a damaged copy (e.g. a file deleted by hand)
        try:
            os.rename(staging, target)
        except OSError:
            if not _is_complete(demo):  # only a finished racer's folder is acceptable
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return demo
