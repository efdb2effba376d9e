"""The sampling plan of each pass of a job (sdtui.engine.sampling.Plan), from A1111's step
arithmetic (sdtui.steps), and the denoiser that runs a plan over the loaded UNet."""

from __future__ import annotations

from typing import Any

import torch

from sdtui.engine.sampling import Denoiser, Plan, model_calls
from sdtui.params import GenerationParams
from sdtui.steps import first_pass_schedule, hires_schedule, hires_size


def first_pass_plan(p: GenerationParams) -> Plan:
    """The first pass's sampling plan: txt2img runs all ``p.steps``; img2img A1111's
    ``t_enc + 1`` of them (sdtui.steps.img2img_schedule)."""
    schedule, run = first_pass_schedule(p)
    img2img = p.init_image is not None
    return Plan(
        p.sampler,
        p.schedule_type,
        schedule,
        run,
        p.cfg_scale,
        p.width,
        p.height,
        img2img,
        cfg_rescale=p.cfg_rescale,
    )


def hires_plan(p: GenerationParams, multiple: int = 8) -> Plan | None:
    """The hires pass's sampling plan, None without one (sdtui.steps.hires_schedule)."""
    schedule, run = hires_schedule(p)
    if run < 1:
        return None
    width, height = hires_size(p, multiple)
    return Plan(
        p.sampler,
        p.schedule_type,
        schedule,
        run,
        p.cfg_scale,
        width,
        height,
        img2img=True,
        cfg_rescale=p.cfg_rescale,
    )


def make_denoiser(pipes: Any, pipe: Any, conds: Any, plan: Plan, reporter: Any) -> Denoiser:
    """The CFG denoiser of ``plan`` over ``pipe``'s UNet; ``reporter`` is called after every
    model call (generate.StepReporter). With a refiner (``pipes.refiner_job``, set while a
    job with one runs) the denoiser switches to it where A1111 does (sdtui.engine.refiner)."""
    device = getattr(pipe, "_execution_device", None) or torch.device(pipes.device)
    kwargs: dict[str, Any] = {
        "scheduler_config": pipes.scheduler_config,
        "alphas_cumprod": pipe.scheduler.alphas_cumprod,
        "device": torch.device(device),
        "size": (plan.height, plan.width),
        "on_call": reporter,
        "calls": model_calls(plan),
        "cfg_rescale": plan.cfg_rescale,
    }
    refiner = getattr(pipes, "refiner_job", None)
    if refiner is not None:
        denoiser: Denoiser = refiner.denoiser(pipe, conds, plan, kwargs)
        return denoiser
    return Denoiser(pipe.unet, conds, plan.cfg_scale, **kwargs)
