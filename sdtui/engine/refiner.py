"""The SDXL refiner (A1111's ``Refiner`` and ``Refiner switch at``): a second checkpoint that
takes over sampling for the last steps of an SDXL job.

What A1111 does, and so what this does (modules/sd_samplers_common.py ``apply_refiner``,
sd_samplers_cfg_denoiser.py, processing.py, sd_models_xl.py):

- before each model call the CFG denoiser asks how far sampling has come: the model timestep
  nearest the call's highest sigma (DDIM / PLMS / UniPC: the timestep itself), completed =
  (999 - timestep) / 1000. From the first call where that reaches ``refiner_switch_at`` the
  refiner's UNet answers, with conditioning from its own text encoder, to the end of the pass;
  the sampler goes on with the same noise and sigmas, and the call counter (the
  prompt-editing step) counts on;
- with the hires fix the refiner runs in the hires pass only (A1111's default for "Hires fix:
  which pass to enable refiner for", second pass); the next pass starts on the base again;
- an SDXL refiner's conditioning is sgm's refiner conditioner: OpenCLIP-G's penultimate layer
  and pooled output, and time ids (original size, crop top-left, aesthetic score) with the
  score 6.0 on the prompt and 2.5 on the negative (A1111's sdxl_refiner_high/low_aesthetic
  _score; diffusers' ``_get_add_time_ids`` with ``requires_aesthetics_score``). Another SDXL
  checkpoint as the refiner is conditioned as an SDXL base;
- the infotext's ``Refiner`` is the checkpoint's short title, ``name [shorthash]``.

A1111 swaps the weights in place, one model in memory; here the refiner is loaded beside the
base and kept between jobs. On a GPU it is placed by the memory mode: offloaded as the base is
in modes low and lowest; in mode normal it stays on the GPU when VRAM holds both models, else
its UNet and the base's swap places at the switch (the idle one waits in CPU RAM).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdtui.config import Settings
from sdtui.engine import memory
from sdtui.engine.conditioning import JobConds, encode_job_conds, schedule_steps
from sdtui.engine.embeddings import (
    Embedding,
    find_used,
    load_embedding,
    text_pipe_with_embeddings,
)
from sdtui.engine.models import free_pipeline, load_pipeline
from sdtui.engine.sampling import Denoiser, Plan
from sdtui.errors import UserError
from sdtui.extra_networks_index import list_embeddings
from sdtui.hashes import model_hash
from sdtui.model_index import ModelEntry, discover_models, resolve_model
from sdtui.params import GenerationParams
from sdtui.regular_files import shown

# A1111's options sdxl_refiner_high_aesthetic_score / sdxl_refiner_low_aesthetic_score
HIGH_AESTHETIC_SCORE = 6.0
LOW_AESTHETIC_SCORE = 2.5
# where the refiner waits when VRAM is short in memory mode normal: CPU RAM, its UNet and the
# base's trading places at the switch
SWAP = "swap"

Log = Callable[[str, str], None]


# -- the switch ------------------------------------------------------------------------------


def completed_at_sigma(model_sigmas: torch.Tensor, sigma: torch.Tensor) -> float:
    """A1111 ``apply_refiner``: (999 - the model timestep nearest the highest sigma) / 1000."""
    level = sigma.detach().max().to("cpu", torch.float64)
    timestep = int(torch.argmin(torch.abs(model_sigmas.to(torch.float64) - level)))
    return (999 - timestep) / 1000


def completed_at_timestep(t: torch.Tensor) -> float:
    """The same for the timestep samplers, whose "sigma" is the timestep."""
    return (999 - int(t.detach().max().to("cpu"))) / 1000


def time_ids_count(pipe: Any) -> int:
    """How many size / crop / score ids the pipeline's UNet takes: 6 for an SDXL base
    (original size, crop, target size), 5 for the refiner (original size, crop, score)."""
    unet = pipe.unet.config
    pooled = pipe.text_encoder_2.config.projection_dim
    return int(
        (unet.projection_class_embeddings_input_dim - pooled) // unet.addition_time_embed_dim
    )


class AestheticDenoiser(Denoiser):
    """The CFG denoiser over an SDXL refiner's UNet: time ids [height, width, crop top, crop
    left, aesthetic score], 6.0 on the prompt's rows and 2.5 on the negative's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        h, w = kwargs["size"]
        self.cond_ids = torch.tensor([[h, w, 0, 0, HIGH_AESTHETIC_SCORE]], dtype=torch.float32)
        self.uncond_ids = torch.tensor([[h, w, 0, 0, LOW_AESTHETIC_SCORE]], dtype=torch.float32)
        self._rows: list[tuple[int, int]] = []

    def guided(self, x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # the UNet calls Denoiser.guided makes, as (prompt rows, negative rows): one batch of
        # both, or apart when their token counts differ, or the prompt alone at CFG 1
        conds, (uz, _) = self.conds.at(self.step)
        b, k = x_in.shape[0], len(conds)
        if self.cfg == 1.0 and k == 1 and conds[0][0] == 1.0:
            self._rows = [(b, 0)]
        elif conds[0][1].shape[1] == uz.shape[1]:
            self._rows = [(k * b, b)]
        else:
            self._rows = [(k * b, 0), (0, b)]
        return super().guided(x_in, t)

    def _unet(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        n = x.shape[0]
        cond, uncond = self._rows.pop(0) if self._rows else (n, 0)
        if cond + uncond != n:
            raise RuntimeError(f"refiner UNet call of {n} rows, expected {cond} + {uncond}")
        self.time_ids = torch.cat(
            [self.cond_ids.expand(cond, -1), self.uncond_ids.expand(uncond, -1)]
        )
        return super()._unet(x, *args, **kwargs)


class SwitchingDenoiser(Denoiser):
    """The base model's CFG denoiser until A1111's switch point, then the refiner's (built by
    ``refiner`` at the switch) for the rest of the pass."""

    def __init__(
        self,
        *args: Any,
        refiner: Callable[[], Denoiser],
        switch_at: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.make_refiner = refiner
        self.switch_at = float(switch_at)
        self.refiner: Denoiser | None = None
        self.model_sigmas = self.log_sigmas.exp().cpu()  # A1111: the model's own sigmas
        self.switched_at_call: int | None = None

    def _refiner_for(self, completed: float) -> Denoiser | None:
        if self.refiner is None and completed >= self.switch_at:
            refiner = self.make_refiner()
            refiner.step = self.step  # prompt editing counts on, as A1111's CFGDenoiser.step
            # an inpainting job's mask blend goes on (A1111 blends in CFGDenoiser, whatever
            # the model); the image conditioning only to a UNet that takes it
            refiner.blend = getattr(self, "blend", None)
            if getattr(refiner, "in_channels", None) == getattr(self, "in_channels", None):
                refiner.image_cond = getattr(self, "image_cond", None)
            self.switched_at_call = self.step
            self.refiner = refiner
        return self.refiner

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        refiner = self.refiner or self._refiner_for(completed_at_sigma(self.model_sigmas, sigma))
        if refiner is not None:
            return refiner.denoise(x, sigma)
        return super().denoise(x, sigma)

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        refiner = self.refiner or self._refiner_for(completed_at_timestep(t))
        if refiner is not None:
            return refiner.eps(x, t)
        return super().eps(x, t)


# -- finding and loading ---------------------------------------------------------------------


def find_refiner(query: str, settings: Settings) -> ModelEntry:
    """The checkpoint ``--refiner`` names, found as a job's model is (sdtui.model_index); a
    name that matches none is answered with the close ones and the refiners there are."""
    entries = discover_models(settings.models)
    try:
        return resolve_model(query, entries)
    except UserError as e:
        if not entries or "not found" not in e.message:
            raise UserError(f"refiner: {e.message}", detail=e.detail) from None
    names = [e.name for e in entries]
    lowered = {n.lower(): n for n in names}
    close = [lowered[n] for n in difflib.get_close_matches(query.lower(), lowered, 5, 0.5)]
    refiners = [e.name for e in entries if e.family.endswith("refiner")]
    said = f"refiner {query!r} not found in {shown(settings.checkpoints)}"
    if close:
        said += f": close names are {shown(', '.join(close))}"
    if refiners:
        said += f"; the SDXL refiners there are {shown(', '.join(refiners[:10]))}"
    elif not close:
        said += f"; the models there are {shown(', '.join(names[:30]))}"
    raise UserError(said + " (`sdtui models` lists them)")


@dataclass
class LoadedRefiner:
    """The refiner loaded beside a base model, kept between jobs."""

    loaded: Any  # sdtui.engine.models.LoadedModel
    title: str  # A1111's short_title, "name [shorthash]": the infotext's Refiner
    placement: str  # a memory mode ("normal", "low", "lowest") or SWAP
    base_mode: str  # the base's memory mode it was placed beside
    device: str
    active: str = "base"  # whose UNet holds the GPU: "base" or "refiner"

    @property
    def pipe(self) -> Any:
        return self.loaded.pipe

    @property
    def path(self) -> Path:
        return Path(self.loaded.path)

    @property
    def aesthetic(self) -> bool:
        """An SDXL refiner's UNet (aesthetic-score time ids), not another SDXL model's."""
        return time_ids_count(self.pipe) == 5

    def close(self) -> None:
        free_pipeline(self.loaded)

    # -- who holds the GPU ------------------------------------------------------------------

    def use_refiner(self, base_pipe: Any) -> None:
        """At the switch: the base's weights make room for the refiner's."""
        if self.active == "refiner":
            return
        self.active = "refiner"
        if torch.device(self.device).type != "cuda":
            return
        if self.placement == SWAP:
            base_pipe.unet.to("cpu")
            memory.free_caches()
            self.pipe.unet.to(self.device)
        elif self.base_mode == "low":
            _offload(base_pipe)

    def use_base(self, base_pipe: Any) -> None:
        """At the start of a pass and after the job: the base's weights back."""
        if self.active == "base":
            return
        self.active = "base"
        if torch.device(self.device).type != "cuda":
            return
        if self.placement == SWAP:
            self.pipe.unet.to("cpu")
            memory.free_caches()
            base_pipe.unet.to(self.device)
        elif self.placement == "low":
            _offload(self.pipe)


def _offload(pipe: Any) -> None:
    """Model offload's idle weights to the CPU now: a model stays on the GPU after its call
    until the next model of its own pipeline runs, which for the idle model may be never."""
    for hook in getattr(pipe, "_all_hooks", ()):
        hook.offload()
    memory.free_caches()


def _title(entry: ModelEntry) -> str:
    """A1111's CheckpointInfo.short_title: the file's stem and its short sha256."""
    if entry.kind != "file":
        return entry.stem
    return f"{entry.stem} [{model_hash(entry.path)}]"


def place_refiner(pipe: Any, base_mode: str, device: str, log: Log) -> str:
    """Put a refiner built on the CPU where the base's memory mode wants it; returns where."""
    if torch.device(device).type != "cuda":
        return "normal"
    if base_mode in ("low", "lowest"):
        return memory.place_pipeline(pipe, base_mode, device, log)
    weights = memory.weights_bytes(pipe)
    mode, why = memory.choose_mode(
        "auto", device, free_vram=memory.free_vram(device), weights=weights
    )
    if mode == "normal":
        try:
            pipe.to(device)
            return "normal"
        except torch.OutOfMemoryError:
            why = "it did not fit"  # handled outside the except block, which pins its tensors
        pipe.to("cpu")
        memory.free_caches()
    log(
        f"the refiner waits in CPU RAM and trades places with the base model's UNet at the "
        f"switch ({why})",
        "info",
    )
    return SWAP


def load_refiner(
    entry: ModelEntry, *, base: Any, device: str, base_mode: str, log: Log
) -> LoadedRefiner:
    """Load ``entry`` as the refiner of ``base`` (a LoadedModel), in its dtype, placed beside it."""
    loaded = load_pipeline(entry.path, device="cpu", dtype=base.dtype, role="refiner")
    loaded.name = entry.name
    try:
        placement = place_refiner(loaded.pipe, base_mode, device, log)
    except BaseException:
        free_pipeline(loaded)
        raise
    loaded.device = device
    refiner = LoadedRefiner(loaded, _title(entry), placement, base_mode, device)
    log(f"loaded the refiner {entry.name} ({loaded.family.label}; {placement})", "info")
    return refiner


# -- one job ---------------------------------------------------------------------------------


@dataclass
class RefinerJob:
    """A job's use of the refiner: which passes it finishes, and its conditioning."""

    refiner: LoadedRefiner
    params: GenerationParams
    # the textual-inversion embeddings the prompts name, given to the refiner's text encoder
    # too (A1111 reapplies its embedding database to the model it switches to)
    embeddings: list[Embedding] = field(default_factory=list)
    log: Log | None = None
    _conds: dict[bool, JobConds] = field(default_factory=dict)

    def is_hires(self, plan: Plan) -> bool:
        p = self.params
        return p.enable_hr and p.init_image is None and plan.img2img

    def runs_in(self, plan: Plan) -> bool:
        """A1111's default "second pass": with the hires fix, only the hires pass."""
        p = self.params
        return not (p.enable_hr and p.init_image is None) or self.is_hires(plan)

    def conds(self, hires: bool) -> JobConds:
        """The refiner's conditioning (A1111 recomputes it at the switch, setup_conds), with
        the same prompt-editing schedule as the base's."""
        if hires not in self._conds:
            pipe = self.refiner.pipe
            device = getattr(pipe, "_execution_device", None)
            text: Any = pipe
            if self.embeddings:
                warn: Log = self.log or (lambda text, level: None)
                wrapped, _ = text_pipe_with_embeddings(
                    pipe, self.embeddings, lambda said: warn(f"refiner: {said}", "warning")
                )
                text = wrapped or pipe
            p = self.params
            steps = schedule_steps(p.steps, p.sampler)
            hires_steps = (
                schedule_steps(p.hr_second_pass_steps or p.steps, p.sampler) if hires else None
            )
            self._conds[hires] = encode_job_conds(
                text,
                p.prompt,
                p.negative_prompt,
                steps,
                hires_steps=hires_steps,
                clip_skip=p.clip_skip,
                device=device,
            )
        return self._conds[hires]

    def denoiser(
        self, base_pipe: Any, conds: JobConds, plan: Plan, kwargs: dict[str, Any]
    ) -> Denoiser:
        """The pass's denoiser: the base's, switching to the refiner's where A1111 does."""
        self.refiner.use_base(base_pipe)
        if not self.runs_in(plan):
            return Denoiser(base_pipe.unet, conds, plan.cfg_scale, **kwargs)
        hires = self.is_hires(plan)

        def refiner_denoiser() -> Denoiser:
            own_conds = self.conds(hires)  # before the swap: on the text encoder as placed
            self.refiner.use_refiner(base_pipe)
            pipe = self.refiner.pipe
            own = {
                **kwargs,
                "scheduler_config": dict(pipe.scheduler.config),
                "alphas_cumprod": pipe.scheduler.alphas_cumprod,
            }
            kind = AestheticDenoiser if self.refiner.aesthetic else Denoiser
            return kind(pipe.unet, own_conds, plan.cfg_scale, **own)

        return SwitchingDenoiser(
            base_pipe.unet,
            conds,
            plan.cfg_scale,
            refiner=refiner_denoiser,
            switch_at=self.params.refiner_switch_at,
            **kwargs,
        )


class RefinerSlot:
    """The refiner kept beside a session's base model: loaded on the first job that names it,
    reused by the next ones, replaced when a job names another."""

    def __init__(self) -> None:
        self.loaded: LoadedRefiner | None = None
        self.job: RefinerJob | None = None

    @contextmanager
    def scope(
        self,
        p: GenerationParams,
        *,
        base: Any,
        base_pipe: Any,
        settings: Settings | None,
        device: str,
        base_mode: str,
        log: Log,
    ) -> Iterator[str | None]:
        """The refiner for job ``p`` while it runs; yields its infotext title (None without)."""
        if not p.refiner_checkpoint or settings is None:
            yield None
            return
        family = base.family
        if family.family != "SDXL" or family.refiner:
            raise UserError(
                f"the refiner finishes SDXL images, and {shown(base.name)} is not an SDXL "
                f"base model ({family.label}): choose an SDXL model, or leave the refiner out"
            )
        entry = find_refiner(p.refiner_checkpoint, settings)
        if entry.path.resolve() == Path(base.path).resolve():
            # A1111: a refiner that is the loaded model switches nothing
            log("the refiner is the job's own model: it runs alone", "info")
            yield None
            return
        if entry.family not in ("?", "") and not entry.family.startswith("SDXL"):
            # known from the file's header: refused before the loaded refiner is let go
            raise UserError(
                f"{shown(entry.name)} is not SDXL ({entry.family}): a refiner must be an SDXL "
                "checkpoint (the SDXL refiner, or another SDXL model)"
            )
        held = self.loaded
        if held is not None and (held.path != entry.path or held.base_mode != base_mode):
            self.close()
        if self.loaded is None:
            self.loaded = load_refiner(
                entry, base=base, device=device, base_mode=base_mode, log=log
            )
        refiner = self.loaded
        used = find_used(
            refiner.pipe.tokenizer_2,
            list_embeddings(settings.embeddings),
            p.prompt,
            p.negative_prompt,
        )
        embeddings = [load_embedding(e) for e in used]
        self.job = RefinerJob(refiner, p, embeddings, log)
        try:
            yield refiner.title
        finally:
            self.job = None
            refiner.use_base(base_pipe)

    def close(self) -> None:
        if self.loaded is not None:
            self.loaded.close()
        self.loaded = None
        self.job = None
        memory.free_caches()
