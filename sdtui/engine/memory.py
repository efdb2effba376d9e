"""GPU memory: modes chosen at model load (A1111's --medvram / --lowvram), the out-of-memory
ladder a job climbs instead of failing, and per-job accounting (peak VRAM, RSS).

The ladder, in order; a job finishes on the first rung that fits, and everything it turned on
is turned off again after the job, so the next one starts fast:

1. free cached memory (gc + ``torch.cuda.empty_cache``) and try again
2. tiled VAE decode (only when the decode ran out)
3. attention slicing (only when sampling ran out)
4. halve the batch into sub-batches, down to one image (each keeps its own seed generator)
5. model CPU offload
6. stop with ``MemoryExhausted``: what was tried, at what size, and what would fit
"""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from sdtui.errors import UserError
from sdtui.units import GIB, format_bytes

Log = Callable[[str, str], None]  # (text, level)

MODE_WORDS = {
    "normal": "everything on the GPU",
    "low": "model offload: one part of the model on the GPU at a time",
    "lowest": "sequential offload: layers stream to the GPU, slow, least VRAM",
}
# Room for activations and the VAE decode beyond the weights, as a share of the weights
# (SD1.5 fp16 ~2 GB of weights needs ~3.5 GB free; SDXL ~7 GB needs ~12 GB).
WORK_SHARE = 0.75
MIN_WORK_BYTES = int(1.5 * GIB)


class MemoryExhausted(UserError):
    """Every rung of the ladder ran out of memory."""


def is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def free_caches() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# the old name, for callers not yet switched to sdtui.units.format_bytes
format_size = format_bytes


def trim_heap() -> None:
    """Hand freed heap pages back to the OS: glibc keeps them otherwise, and RSS would stay
    up by a model's size after each switch."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # musl or another libc: nothing to trim
        pass


def process_rss() -> int:
    import psutil

    return int(psutil.Process(os.getpid()).memory_info().rss)


def weights_bytes(pipe: Any) -> int:
    """Bytes of every parameter and buffer of the pipeline's modules, shared ones once."""
    seen: set[int] = set()
    total = 0
    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        for t in (*component.parameters(), *component.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def has_accelerate() -> bool:
    return importlib.util.find_spec("accelerate") is not None


# -- memory modes ----------------------------------------------------------------------------


def choose_mode(
    setting: str, device: str, *, free_vram: int | None, weights: int
) -> tuple[str, str]:
    """(mode, why) for a model of ``weights`` bytes; on the CPU always "normal"."""
    if torch.device(device).type != "cuda":
        return "normal", "on the CPU every mode runs as normal"
    if setting != "auto":
        return setting, "pinned"
    need = weights + max(MIN_WORK_BYTES, int(weights * WORK_SHARE))
    if free_vram is None or free_vram >= need:
        return "normal", f"auto: {format_bytes(free_vram)} free, {format_bytes(need)} needed"
    return "low", f"auto: {format_bytes(free_vram)} free, {format_bytes(need)} needed for normal"


def free_vram(device: str) -> int | None:
    if torch.device(device).type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def place_pipeline(pipe: Any, mode: str, device: str, log: Log) -> str:
    """Put a pipeline built on the CPU where ``mode`` wants it; returns the mode in force.

    Never leaves half-moved weights behind: a normal placement that runs out of memory falls
    back to model offload."""
    if torch.device(device).type != "cuda":
        return "normal"
    if mode in ("low", "lowest") and not has_accelerate():
        log(
            f"memory mode {mode} needs the accelerate package (pip install accelerate): "
            "running normally",
            "warning",
        )
        mode = "normal"
    if mode == "low":
        pipe.enable_model_cpu_offload(device=device)
        return "low"
    if mode == "lowest":
        pipe.enable_sequential_cpu_offload(device=device)
        return "lowest"
    try:
        pipe.to(device)
        return "normal"
    except torch.OutOfMemoryError:
        pass  # handled outside the except block, so its traceback frees its tensors first
    pipe.to("cpu")
    free_caches()
    if not has_accelerate():
        raise UserError(
            "not enough GPU memory to load this model: close other programs using the GPU, "
            "or install accelerate for --memory-mode low"
        )
    log(
        "not enough GPU memory to hold the whole model: using model offload (memory mode low)",
        "warning",
    )
    pipe.enable_model_cpu_offload(device=device)
    return "low"


def unplace_pipeline(pipe: Any, mode: str, device: str) -> None:
    """Undo ``place_pipeline``'s offload: every weight back on ``device``."""
    if mode in ("low", "lowest") and hasattr(pipe, "remove_all_hooks") and has_accelerate():
        pipe.remove_all_hooks()  # offload hooks hold their own references to the weights
    if torch.device(device).type == "cuda":
        pipe.to(device)


# -- accounting ------------------------------------------------------------------------------


@dataclass
class JobMemory:
    """Peak VRAM of one job (torch's peak counters, reset at the start) and the RSS after it."""

    device: str
    peak_allocated: int | None = None
    peak_reserved: int | None = None
    rss: int | None = None

    def fields(self) -> dict[str, int | None]:
        return {
            "peak_vram_allocated": self.peak_allocated,
            "peak_vram_reserved": self.peak_reserved,
            "rss": self.rss,
        }

    def summary(self) -> str:
        if self.peak_allocated is None:
            return f"RAM (RSS) {format_bytes(self.rss)}, no GPU"
        return (
            f"peak VRAM {format_bytes(self.peak_allocated)} allocated, "
            f"{format_bytes(self.peak_reserved)} reserved; RAM (RSS) {format_bytes(self.rss)}"
        )


@contextmanager
def job_memory(device: str) -> Iterator[JobMemory]:
    acct = JobMemory(device)
    cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        yield acct
    finally:
        if cuda:
            acct.peak_allocated = int(torch.cuda.max_memory_allocated())
            acct.peak_reserved = int(torch.cuda.max_memory_reserved())
        acct.rss = process_rss()


# -- the out-of-memory ladder ----------------------------------------------------------------

RUNG_WORDS = {
    "tiled_vae": "tiled VAE decode",
    "slicing": "attention slicing",
    "split": "a split batch",
    "offload": "model offload",
}
PER_IMAGE_KEYS = (
    "latents",
    "generator",
    "image",
    "hires_noise",
)  # what a sub-batch takes its slice of


def split_call(call: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    """The pipeline arguments for images ``start:stop`` of the batch."""
    sub = dict(call)
    for key in PER_IMAGE_KEYS:
        value = call.get(key)
        if isinstance(value, list | tuple | torch.Tensor):
            sub[key] = value[start:stop]
    sub["num_images_per_prompt"] = stop - start
    return sub


class MemoryLadder:
    """Runs one job's sampling and decode, climbing the ladder on out-of-memory errors.

    What a rung turns on stays on for the rest of the job; ``restore()`` turns it off."""

    def __init__(
        self,
        pipe: Any,
        *,
        device: str,
        baseline: str,
        batch_size: int,
        width: int,
        height: int,
        log: Log,
    ) -> None:
        self.pipe, self.device, self.baseline, self.log = pipe, device, baseline, log
        self.batch_size = self.sub = batch_size
        self.width, self.height = width, height
        self.applied: list[str] = []
        self.climbs: list[str] = []  # every rung taken, in order, "free" included
        self._processors: dict[str, Any] | None = None
        self._cuda = torch.device(device).type == "cuda"

    # -- running ----------------------------------------------------------------------------

    def sample(
        self, call: dict[str, Any], run: Callable[[dict[str, Any]], torch.Tensor]
    ) -> torch.Tensor:
        """``run`` over the batch in sub-batches of ``self.sub``; the latents of all images."""
        n = int(call["num_images_per_prompt"])
        parts: list[torch.Tensor] = []
        start, first_try = 0, True
        while start < n:
            stop = min(n, start + self.sub)
            sub = call if (start, stop) == (0, n) else split_call(call, start, stop)
            states = [g.get_state() for g in sub.get("generator") or ()]
            try:
                parts.append(run(sub))
                start, first_try = stop, True
                continue
            except Exception as e:
                if not is_oom(e):
                    raise
                detail = _first_line(e)
            # outside the except block: the error's frames (and their tensors) are gone
            for g, state in zip(sub.get("generator") or (), states, strict=True):
                g.set_state(state)  # a retry draws the same noise as an unbroken run
            self._recover("sampling", detail, first_try)
            first_try = False
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def decode(self, latents: torch.Tensor, run: Callable[[torch.Tensor], list[Any]]) -> list[Any]:
        images: list[Any] = []
        start, first_try = 0, True
        n = latents.shape[0]
        while start < n:
            stop = min(n, start + self.sub)
            try:
                images.extend(run(latents[start:stop]))
                start, first_try = stop, True
                continue
            except Exception as e:
                if not is_oom(e):
                    raise
                detail = _first_line(e)
            self._recover("decoding", detail, first_try)
            first_try = False
        return images

    # -- climbing ---------------------------------------------------------------------------

    def _recover(self, stage: str, detail: str, first_try: bool) -> None:
        free_caches()
        if first_try:
            self.climbs.append("free")
            self.log(f"out of memory while {stage}: freed cached memory, trying again", "warning")
            return
        for rung in ("tiled_vae", "slicing", "split", "offload"):
            if self._usable(rung, stage):
                self._apply(rung)
                return
        raise MemoryExhausted(self._failure_message(), detail=detail)

    def _usable(self, rung: str, stage: str) -> bool:
        if rung == "split":
            return self.sub > 1
        if rung in self.applied:
            return False
        if rung == "tiled_vae":
            return stage == "decoding" and hasattr(self.pipe.vae, "enable_tiling")
        if rung == "slicing":
            return stage == "sampling" and hasattr(self.pipe.unet, "set_attention_slice")
        # offload: only on a GPU, and only when the mode has not offloaded already
        return self._cuda and self.baseline == "normal" and has_accelerate()

    def _apply(self, rung: str) -> None:
        self.climbs.append(rung)
        if rung == "tiled_vae":
            self.pipe.vae.enable_tiling()
            self.log("still out of memory: decoding the VAE in tiles", "warning")
        elif rung == "slicing":
            self._processors = dict(self.pipe.unet.attn_processors)
            _compiled_code(False)  # a new processor would mean a recompile, mid-recovery
            self.pipe.unet.set_attention_slice("auto")
            self.log(
                "still out of memory: computing attention in slices (slower, less memory)",
                "warning",
            )
        elif rung == "split":
            self.sub = (self.sub + 1) // 2
            many = "one image" if self.sub == 1 else f"{self.sub} images"
            self.log(
                f"still out of memory: splitting the batch of {self.batch_size}, {many} at a time "
                "(each image keeps its seed)",
                "warning",
            )
        elif rung == "offload":
            _compiled_code(False)
            self.pipe.enable_model_cpu_offload(device=self.device)
            self.log(
                "still out of memory: moving idle model parts to the CPU (model offload)", "warning"
            )
        if rung not in self.applied:
            self.applied.append(rung)

    def _failure_message(self) -> str:
        tried = [RUNG_WORDS[r] for r in self.applied] or ["freed caches"]
        if self.baseline in ("low", "lowest"):
            tried.append(f"memory mode {self.baseline}")
        what = tried[0] if len(tried) == 1 else ", ".join(tried[:-1]) + " and " + tried[-1]
        advice = "try a smaller size"
        if self.baseline != "lowest":
            advice += " or --memory-mode lowest"
        return f"out of memory even with {what} at {self.width}x{self.height} batch {self.sub}: {advice}"

    # -- after the job ----------------------------------------------------------------------

    def __enter__(self) -> MemoryLadder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()

    def restore(self) -> None:
        """Turn off what the ladder turned on, so the next job runs at full speed."""
        if "tiled_vae" in self.applied:
            self.pipe.vae.disable_tiling()
        if "slicing" in self.applied and self._processors is not None:
            self.pipe.unet.set_attn_processor(self._processors)
        if "offload" in self.applied:
            unplace_pipeline(self.pipe, "low", self.device)
        if "slicing" in self.applied or "offload" in self.applied:
            _compiled_code(True)
        if self.applied:
            used = ", ".join(RUNG_WORDS[r] for r in self.applied)
            self.log(f"memory settings back to normal after the job (it needed {used})", "info")
        if "offload" in self.applied:
            free_caches()  # the offloaded copies on the CPU side are garbage now
        self.applied.clear()
        self._processors = None


def _compiled_code(on: bool) -> None:
    """Off: torch.compile'd blocks (the CUDA fast path) run eager until turned back on. The
    ladder's sliced attention is a new code path, so compiled blocks would recompile for it,
    tens of seconds on a GPU inside an out-of-memory recovery, and inductor's memory plan
    may not shrink as slicing means it to. A no-op where nothing is compiled."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is not None:
        set_stance("default" if on else "force_eager")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
