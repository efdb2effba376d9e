"""The step clock every kind of job shares (SD's A1111 loop in sdtui.engine.generate, Flux and
SD3.5 pipelines in sdtui.engine.dit): cancel and skip, smoothed it/s, Progress with the
device's memory, and when a live preview is due."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from sdtui.engine import preview as preview_mod
from sdtui.engine.job import BatchSkipped, JobCancelled
from sdtui.ipc import protocol as msg


def device_memory() -> tuple[int | None, int | None]:
    """(allocated, reserved) bytes of the accelerator torch uses; (None, None) on the CPU."""
    if torch.cuda.is_available():
        return torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    if torch.backends.mps.is_available():  # Apple silicon: what Metal holds for torch
        return torch.mps.current_allocated_memory(), torch.mps.driver_allocated_memory()
    return None, None


class StepMeter:
    """One batch's steps: ``steps`` of them, each counted by :meth:`step` (1-based)."""

    def __init__(self, ctx: Any, params: Any, batch_index: int, steps: int) -> None:
        self.ctx, self.params, self.batch_index = ctx, params, batch_index
        self.steps = steps
        self.last = time.perf_counter()
        self.its = 0.0
        self.preview_s = 0.0  # time spent making previews
        self.preview_at = float("-inf")

    def step(self, done: int, can_preview: bool = True) -> bool:
        """Step ``done`` of ``steps`` finished: raise JobCancelled / BatchSkipped when asked,
        else emit Progress; True when a preview is due now (then call :meth:`preview`)."""
        control = self.ctx.control
        if control.cancel.is_set():
            raise JobCancelled
        if control.skip.is_set():
            control.skip.clear()
            raise BatchSkipped
        now = time.perf_counter()
        dt, self.last = now - self.last, now
        rate = 1.0 / dt if dt > 0 else 0.0
        self.its = rate if self.its == 0 else 0.7 * self.its + 0.3 * rate
        p = self.params
        left = (self.steps - done) + (p.batch_count - self.batch_index - 1) * self.steps
        allocated, reserved = device_memory()
        self.ctx.emit(
            msg.Progress(
                job_id=self.ctx.job_id,
                step=done,
                steps=self.steps,
                batch_index=self.batch_index,
                batch_count=p.batch_count,
                its=round(self.its, 3),
                eta_s=round(left / self.its, 1) if self.its > 0 else 0.0,
                vram_allocated=allocated,
                vram_reserved=reserved,
            )
        )
        every = p.preview_every
        due = (
            can_preview
            and bool(every)
            and done % every == 0
            and now - self.preview_at >= p.preview_interval
            and done < self.steps
        )
        # no reset of self.last for a preview: it copies the latents to the CPU, which waits
        # for the GPU's queued work, so the wait belongs to the steps (start-to-start is wall
        # time)
        return due

    def preview(self, done: int, make: Callable[[], Image.Image]) -> None:
        """Emit the preview ``make`` draws for step ``done``."""
        t0 = self.preview_at = time.perf_counter()
        image = make()
        png = preview_mod.to_png(image)
        self.ctx.emit(msg.Preview(self.ctx.job_id, done, png, image.width, image.height))
        self.preview_s += time.perf_counter() - t0
