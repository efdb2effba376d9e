"""One txt2img / img2img job, top to bottom: seeds, conditioning, sampling with progress and
previews, decode, save with infotext, grid.

The parts live beside it, each imported from here and none importing this module:
``sdtui.engine.job`` (context, control, JobCancelled / BatchSkipped), ``sdtui.engine.latents``
(noise, VAE decode / encode), ``sdtui.engine.plans`` (each pass's sampling plan and denoiser,
from ``sdtui.steps``), ``sdtui.engine.hires`` (the second pass, reached through the session),
``sdtui.engine.inpaint`` (the mask, the crop, the overlay, outpainting, an inpainting UNet's
image conditioning).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from sdtui.engine import inpaint, rng, sampling
from sdtui.engine import preview as preview_mod
from sdtui.engine.conditioning import JobConds, encode_job_conds, schedule_steps
from sdtui.engine.faces import check_restore_faces, restore_faces_for_job
from sdtui.engine.hires import hires_noise
from sdtui.engine.inpaint import read_init_image
from sdtui.engine.job import BatchSkipped, JobCancelled, JobContext, JobControl, job_settings
from sdtui.engine.latents import decode_latents, encode_images, latent_channels, make_noise
from sdtui.engine.memory import MemoryLadder
from sdtui.engine.plans import first_pass_plan, hires_plan, make_denoiser
from sdtui.engine.progress import StepMeter
from sdtui.infotext import format_infotext
from sdtui.ipc import protocol as msg
from sdtui.params import GenerationParams
from sdtui.samplers import normalize_sampler

# generate's own names, and the ones tests and bench/ have imported from here since before the
# split (each has its one home above)
__all__ = [
    "JobContext",
    "JobControl",
    "StepReporter",
    "decode_latents",
    "encode_images",
    "image_seeds",
    "job_conds",
    "load_init_image",
    "make_denoiser",
    "make_noise",
    "resize_image",
    "run_generation",
]


def load_init_image(
    path: str, width: int, height: int, resize_mode: str, megapixels: float | None = None
) -> Image.Image:
    """The init image, decoded and resized; more than ``megapixels`` (the settings'
    ``max_image_megapixels``) is refused before it is decoded."""
    return resize_image(read_init_image(path, megapixels), width, height, resize_mode)


def resize_image(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """A1111's img2img resize modes (sdtui.engine.inpaint.resize_image)."""
    return inpaint.resize_image(mode, image, width, height)


def image_seeds(p: GenerationParams, indices: list[int]) -> tuple[list[int], list[int]]:
    """(seeds, variation seeds) of the job's images ``indices``, as A1111's
    processing.py ``process_images_inner``::

        p.all_seeds = [int(seed) + (x if p.subseed_strength == 0 else 0) for x in range(n)]
        p.all_subseeds = [int(subseed) + x for x in range(n)]
    """
    seeds = [p.seed + (i if p.subseed_strength == 0 else 0) for i in indices]
    subseeds = [p.subseed + i for i in indices]
    return seeds, subseeds


class StepReporter(StepMeter):
    """Called after every model call: progress with smoothed it/s, previews of the denoised
    latents, cancel and skip (sdtui.engine.progress). A batch may run in two passes (hires
    fix): ``first`` and ``second`` are their model calls, and the second pass counts on from
    the first."""

    def __init__(
        self,
        ctx: JobContext,
        params: GenerationParams,
        batch_index: int,
        first: int,
        second: int = 0,
    ):
        super().__init__(ctx, params, batch_index, first + second)
        self.pass_offset = 0  # calls done in earlier passes of this batch

    def __call__(self, call: int, calls: int, denoised: torch.Tensor) -> None:
        done = self.pass_offset + call + 1
        if self.step(done):
            self.preview(done, lambda: preview_mod.latents_to_image(denoised, self.ctx.family))


def job_conds(pipes: Any, p: GenerationParams, *, hires: bool = False) -> JobConds:
    """The job's conditioning for the first pass, or for the hires pass with A1111's hires
    schedule."""
    # while a job's embeddings apply, job_scope puts a wrapped text pipeline there
    pipe = getattr(pipes, "text_pipe", None) or pipes.txt2img
    base = schedule_steps(p.steps, p.sampler)
    hires_steps = schedule_steps(p.hr_second_pass_steps or p.steps, p.sampler) if hires else None
    return encode_job_conds(
        pipe,
        p.prompt,
        p.negative_prompt,
        base,
        hires_steps=hires_steps,
        clip_skip=p.clip_skip,
        device=pipes.device,
    )


def run_generation(
    loaded: Any, pipes: Any, params: GenerationParams, ctx: JobContext
) -> msg.JobDone:
    """Run one job; emits JobStarted, Progress, Preview, ImageSaved; returns JobDone.

    Sampling is A1111's (sdtui.engine.sampling) over the loaded pipeline's UNet; ``pipes``
    gives the components. Raises JobCancelled only after the images done so far are saved.
    """
    t_start = time.perf_counter()
    p = params.validated().with_seeds()
    settings = job_settings(pipes, ctx)
    check_restore_faces(p, settings)  # missing weights are said before sampling, not after
    img2img = p.init_image is not None
    pipe = pipes.txt2img
    name, schedule = normalize_sampler(p.sampler, p.schedule_type)
    if name in ("DDIM", "PLMS", "UniPC") and schedule != "Automatic":
        ctx.log(
            f"{name} runs A1111's own timesteps: the {schedule} schedule does not apply (as in A1111)"
        )
    limit = getattr(ctx.settings, "max_image_megapixels", None)
    init: Image.Image | None = None
    job: inpaint.InpaintJob | None = None
    if p.init_image is not None:
        source = read_init_image(p.init_image, limit)
        if p.inpainting:
            mask = inpaint.load_mask(p.mask, limit) if p.mask is not None else None
            job = inpaint.prepare(p, source, mask, ctx.log)
            init = job.image
            # an outpainting grows the job to its canvas, so Size says the output's size;
            # a blank mask turns "Only masked" into plain img2img, as in A1111
            p = p.replace(width=job.width, height=job.height, inpaint_full_res=job.only_masked)
            if job.latent_mask is None:
                job = None
        else:
            init = resize_image(source, p.width, p.height, p.resize_mode)
    kind = "img2img" if img2img else "txt2img"
    plan = first_pass_plan(p)
    second = hires_plan(p)
    calls_first = sampling.model_calls(plan)
    calls_second = sampling.model_calls(second) if second is not None else 0
    ctx.emit(
        msg.JobStarted(ctx.job_id, p.images_total, (calls_first + calls_second) * p.batch_count)
    )

    # out of memory, the job climbs this ladder instead of failing (sdtui.engine.memory)
    ladder = MemoryLadder(
        pipe,
        device=str(pipes.device),
        baseline=ctx.memory_mode,
        batch_size=p.batch_size,
        width=p.width,
        height=p.height,
        log=ctx.log,
    )

    # LoRAs, embeddings and the VAE apply for this job only (job_extra holds their
    # infotext); the ladder's measures too
    with pipes.job_scope(p, ctx) as job_extra, ladder:
        conds = job_conds(pipes, p)
        hires_conds = job_conds(pipes, p, hires=True) if p.enable_hr and not img2img else None
        # an inpainting UNet's extra input: the masked image, or a mask of ones over grey
        image_cond = (
            inpaint.image_conditioning(
                pipe,
                init if job is not None else None,
                job.image_mask if job is not None else None,
                p.width,
                p.height,
            )
            if inpaint.needs_image_conditioning(pipe)
            else None
        )
        # A1111 writes the mask weight whenever the model takes image conditioning
        cond_info = (
            {"Conditional mask weight": inpaint.INPAINTING_MASK_WEIGHT}
            if image_cond is not None
            else {}
        )
        latmask = (
            inpaint.latent_mask(
                job.latent_mask, p.height // pipes.vae_scale, p.width // pipes.vae_scale
            )
            if job is not None and job.latent_mask is not None
            else None
        )

        def sample(sub: dict[str, Any]) -> torch.Tensor:
            """One (sub-)batch through both passes; the ladder may call it for a slice."""
            reporter = sub["reporter"]
            denoiser = make_denoiser(pipes, pipe, conds, plan, reporter)
            if image_cond is not None:
                denoiser.image_cond = image_cond
            if latmask is not None:
                device = denoiser.device
                denoiser.blend = sampling.LatentBlend(
                    sub["image"].to(device, torch.float32), latmask.to(device)
                )
            with torch.inference_mode():
                latents = sampling.sample(
                    denoiser,
                    plan,
                    sub["latents"],
                    sub["generator"],
                    sub.get("image"),
                    pipes.scheduler_config,
                )
                if p.enable_hr and not img2img:
                    latents = pipes.hires_fix(
                        p,
                        latents,
                        sub["generator"],
                        hires_conds,
                        reporter,
                        ctx,
                        sub.get("hires_noise"),
                    )
            return latents

        # the VAE's channels: an inpainting UNet takes more, its image conditioning
        shape = (latent_channels(pipe), p.height // pipes.vae_scale, p.width // pipes.vae_scale)
        # a restarted job: what it saved before counts, and only the rest is made
        earlier = {i: path for i, path in ctx.done.items() if 0 <= i < p.images_total}
        saved: dict[int, str] = dict(earlier)
        made: dict[int, Image.Image] = {}
        cancelled = False
        preview_s = 0.0
        for b in range(p.batch_count):
            # image i of the job has seed + i (variation seed + i with a variation strength);
            # those saved before a restart are skipped
            indices = [b * p.batch_size + i for i in range(p.batch_size)]
            indices = [i for i in indices if i not in earlier]
            if not indices:
                continue
            n = len(indices)
            seeds, subseeds = image_seeds(p, indices)
            # one generator per image (A1111's ImageRNG): its first draw is the image's noise,
            # the rest its step noise; image i of a job is reproducible alone with its seeds
            generators = [rng.create(p.rng, s, pipes.device) for s in seeds]
            noise = torch.stack(
                [
                    make_noise(
                        s,
                        shape,
                        ss if p.subseed_strength > 0 else None,
                        p.subseed_strength,
                        p.rng,
                        pipes.device,
                    )
                    for s, ss in zip(seeds, subseeds, strict=True)
                ]
            )
            for g in generators:  # past the first draw, as ImageRNG.first() leaves them
                rng.randn(g, shape)
            reporter = StepReporter(ctx, p, b, calls_first, calls_second)
            call: dict[str, Any] = dict(
                num_images_per_prompt=n, latents=noise, generator=generators, reporter=reporter
            )
            if init is not None:
                call["image"] = encode_images(pipe, [init] * n, seeds)
                if latmask is not None and p.inpainting_fill in ("latent noise", "latent nothing"):
                    call["image"] = masked_content(p, call["image"], latmask, indices, shape)
            elif second is not None:
                call["hires_noise"] = hires_noise(
                    p, seeds, subseeds, shape[0], pipes.vae_scale, pipes.device
                )
            try:
                latents = ladder.sample(call, sample)
            except BatchSkipped:
                ctx.log(f"skipped batch {b + 1} of {p.batch_count}")
                continue
            except JobCancelled:
                cancelled = True
                break
            finally:
                preview_s += reporter.preview_s
            images = ladder.decode(latents, lambda lat: decode_latents(pipe, lat, ctx))
            # A1111: restore faces after decoding, before the inpaint overlay and saving
            images = restore_faces_for_job(
                images, p, settings, ctx.log, device=getattr(pipes, "device", "cpu")
            )
            if job is not None and job.overlay is not None:
                images = [inpaint.apply_overlay(im, job.paste_to, job.overlay) for im in images]
            for k, image in enumerate(images):
                index, seed = indices[k], seeds[k]
                info = format_infotext(
                    p.prompt,
                    p.negative_prompt,
                    p.infotext_pairs(
                        seed=seed,
                        model_name=ctx.model_name,
                        model_hash=ctx.model_hash,
                        subseed=subseeds[k] if p.subseed_strength > 0 else None,
                        extra={**pipes.extra_infotext(p), **job_extra, **cond_info},
                    ),
                )
                path = ctx.layout.save_image(image, kind, seed, info)
                saved[index] = str(path)
                made[index] = image
                ctx.emit(msg.ImageSaved(ctx.job_id, index, str(path), seed, info))
            if ctx.control.cancel.is_set():
                cancelled = True
                break
        grid_images = _grid_images(saved, made)
        if len(grid_images) > 1 and not cancelled and -1 not in ctx.done:
            info = format_infotext(
                p.prompt,
                p.negative_prompt,
                # A1111 saves the grid with infotext(use_main_prompt=True): the first image's
                # infotext (p.all_seeds[0], p.all_subseeds[0], RNG, extra params and all)
                p.infotext_pairs(
                    seed=p.seed,
                    model_name=ctx.model_name,
                    model_hash=ctx.model_hash,
                    subseed=p.subseed if p.subseed_strength > 0 else None,
                    extra={**pipes.extra_infotext(p), **job_extra, **cond_info},
                ),
            )
            grid = ctx.layout.save_grid(grid_images, kind, info)
            ctx.emit(msg.ImageSaved(ctx.job_id, -1, str(grid), p.seed, info, is_grid=True))
    seconds = time.perf_counter() - t_start
    return msg.JobDone(
        ctx.job_id,
        tuple(saved[i] for i in sorted(saved)),
        round(seconds, 3),
        cancelled=cancelled,
        stats={"preview_s": round(preview_s, 4)},
    )


def masked_content(
    p: GenerationParams,
    latents: torch.Tensor,
    latmask: torch.Tensor,
    indices: list[int],
    shape: tuple[int, ...],
) -> torch.Tensor:
    """Masked content "latent noise" / "latent nothing": the masked latents replaced by noise
    or zeros (A1111 ``StableDiffusionProcessingImg2Img.init``). A1111 draws that noise once for the job
    from ``all_seeds[0:batch_size]``, so image k of every batch gets the noise of the job's
    k-th seed (without a variation: its first draw)."""
    nmask = latmask.to(latents)
    if p.inpainting_fill == "latent nothing":
        return latents * (1 - nmask)
    fill_seeds, _ = image_seeds(p, [i % p.batch_size for i in indices])
    noise = torch.stack(
        [make_noise(s, shape, None, 0.0, p.rng, latents.device) for s in fill_seeds]
    ).to(latents)
    return latents * (1 - nmask) + noise * nmask


def _grid_images(saved: dict[int, str], made: dict[int, Image.Image]) -> list[Image.Image]:
    """The job's images in index order for its grid: made now, or read back from disk when a
    restart made them before (one deleted since is left out)."""
    images: list[Image.Image] = []
    for index in sorted(saved):
        image = made.get(index)
        if image is None:
            try:
                with Image.open(saved[index]) as im:
                    image = im.convert("RGB")
            except (OSError, UnidentifiedImageError):
                continue
        images.append(image)
    return images
