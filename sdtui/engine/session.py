"""The loaded model and the pipelines that share its components (txt2img, img2img)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdtui.config import Settings
from sdtui.engine.embeddings import Embedding
from sdtui.engine.extra_networks import job_extras
from sdtui.engine.fastpath import FastPathState
from sdtui.engine.hires import run_hires_fix
from sdtui.engine.job import job_settings
from sdtui.engine.lora import ModuleIndex
from sdtui.engine.models import free_pipeline
from sdtui.engine.refiner import RefinerJob, RefinerSlot
from sdtui.engine.vae import VaeCache
from sdtui.model_family_dit import DIT_FAMILIES
from sdtui.params import GenerationParams


def pick_device(setting: str = "auto") -> str:
    if setting == "cpu":
        return "cpu"
    if setting == "cuda" or torch.cuda.is_available():
        return "cuda"
    return "cpu"


@dataclass
class ModelSession:
    """One loaded checkpoint, with the txt2img and img2img views of it."""

    loaded: Any  # sdtui.engine.models.LoadedModel
    device: str
    txt2img: Any
    img2img: Any
    scheduler_config: dict[str, Any]
    model_hash: str | None = None
    # the engine's folders (flags like --models-dir reach LoRA/VAE lookup); a job's own win
    settings: Settings | None = None
    fast_path: FastPathState | None = None  # set by the worker when it applies the fast path
    # while a job's embeddings apply: the conditioning pipeline that knows them
    text_pipe: Any = None
    # caches kept between jobs: the checkpoint's own VAE and the last VAE file; the LoRA
    # module index of a UNet (unet, index); loaded embeddings by (path, size, mtime)
    vae_cache: VaeCache = field(default_factory=VaeCache)
    lora_index: tuple[Any, ModuleIndex] | None = None
    embeddings: dict[tuple[str, int, int], Embedding] = field(default_factory=dict)
    # the SDXL refiner (--refiner) loaded beside this model, kept between jobs
    refiner: RefinerSlot = field(default_factory=RefinerSlot)

    @classmethod
    def create(cls, loaded: Any, device: str) -> ModelSession:
        from diffusers import (
            StableDiffusionImg2ImgPipeline,
            StableDiffusionXLImg2ImgPipeline,
            StableDiffusionXLPipeline,
        )

        pipe = loaded.pipe
        pipe.set_progress_bar_config(disable=True)
        if loaded.family.family in DIT_FAMILIES:  # Flux.1 / SD3.5: txt2img only (engine.dit)
            config = dict(pipe.scheduler.config)
            return cls(
                loaded=loaded, device=device, txt2img=pipe, img2img=None, scheduler_config=config
            )
        if isinstance(pipe, StableDiffusionXLPipeline):
            img2img = StableDiffusionXLImg2ImgPipeline(**pipe.components)
        else:
            comps = {k: v for k, v in pipe.components.items() if k in _SD_IMG2IMG_KEYS}
            img2img = StableDiffusionImg2ImgPipeline(**comps, requires_safety_checker=False)
        img2img.set_progress_bar_config(disable=True)
        return cls(
            loaded=loaded,
            device=device,
            txt2img=pipe,
            img2img=img2img,
            scheduler_config=dict(pipe.scheduler.config),
        )

    @property
    def name(self) -> str:
        return str(self.loaded.name)

    @property
    def family(self) -> str:
        return str(self.loaded.family.family)

    @property
    def path(self) -> Path:
        return Path(self.loaded.path)

    @property
    def vae_scale(self) -> int:
        return int(self.txt2img.vae_scale_factor)

    def extra_infotext(self, p: GenerationParams) -> dict[str, object]:
        pairs: dict[str, object] = {}
        if self.scheduler_config.get("rescale_betas_zero_snr"):
            # A1111 apply_alpha_schedule_override adds this extra_generation_params key (after
            # the Hires ones) when it samples a zero-terminal-SNR schedule
            pairs["Noise Schedule"] = "Zero Terminal SNR"
        return pairs

    @property
    def refiner_job(self) -> RefinerJob | None:
        """While a job with a refiner runs: its refiner (plans.make_denoiser switches to it)."""
        return self.refiner.job

    @contextmanager
    def job_scope(self, p: GenerationParams, ctx: Any) -> Iterator[dict[str, object]]:
        """Apply what a job asks for beyond the checkpoint (LoRAs, embeddings, VAE, the
        refiner) for this job only; yields the infotext pairs that record them."""
        refiner = self.refiner.scope(
            p,
            base=self.loaded,
            base_pipe=self.txt2img,
            settings=job_settings(self, ctx) if p.refiner_checkpoint else None,
            device=self.device,
            base_mode=str(getattr(ctx, "memory_mode", "normal")),
            log=ctx.log,
        )
        with refiner as title, job_extras(self, p, ctx) as pairs:
            if title is not None:
                # A1111 apply_refiner: extra_generation_params['Refiner'] = short_title
                pairs["Refiner"] = title
            yield pairs

    def close_refiner(self) -> None:
        """Free the refiner (the base model stays)."""
        self.refiner.close()

    def hires_fix(
        self,
        p: GenerationParams,
        latents: Any,
        generators: Any,
        conds: Any,
        reporter: Any,
        ctx: Any,
        noise: Any = None,
    ) -> Any:
        """Second pass of A1111's hires fix on the first pass's latents."""
        return run_hires_fix(self, p, latents, generators, conds, reporter, ctx, noise)

    def close(self) -> None:
        """Drop every reference to the weights and give the memory back, even where a stray
        reference to a module survives (its tensors go to the meta device)."""
        self.refiner.close()
        if self.loaded is not None:
            free_pipeline(self.loaded)
        self.settings = self.fast_path = self.text_pipe = self.lora_index = None
        self.vae_cache = VaeCache()
        self.embeddings = {}
        self.txt2img = self.img2img = self.loaded = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


_SD_IMG2IMG_KEYS = {
    "vae",
    "text_encoder",
    "tokenizer",
    "unet",
    "scheduler",
    "safety_checker",
    "feature_extractor",
    "image_encoder",
}
