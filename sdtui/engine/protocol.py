"""Typed messages between the UI (or CLI) and the engine process.

Small frozen dataclasses, picklable, no torch objects: they cross a multiprocessing queue.
This module imports neither torch nor textual, so both sides can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sdtui.params import GenerationParams, UpscaleParams

# -- UI -> engine --------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitGenerate:
    job_id: int
    params: GenerationParams


@dataclass(frozen=True)
class SubmitUpscale:
    job_id: int
    params: UpscaleParams


@dataclass(frozen=True)
class Cancel:
    """Stop the running job now (finished images are kept), or drop a queued one."""

    job_id: int | None = None  # None: whatever is running


@dataclass(frozen=True)
class Skip:
    """Drop the image being made and go on with the next one of the batch."""

    job_id: int | None = None


@dataclass(frozen=True)
class LoadModel:
    model: str  # a name from the model list, or a path


@dataclass(frozen=True)
class SetMemoryMode:
    """Change the memory mode (auto, normal, low, lowest) from the next job on; the loaded
    model is moved (or reloaded) at once."""

    mode: str


@dataclass(frozen=True)
class Shutdown:
    pass


Command = SubmitGenerate | SubmitUpscale | Cancel | Skip | LoadModel | SetMemoryMode | Shutdown

# -- engine -> UI --------------------------------------------------------------------------

ENGINE_STATES = ("starting", "loading", "ready", "busy", "crashed", "stopped")


@dataclass(frozen=True)
class EngineStatus:
    state: str  # one of ENGINE_STATES
    detail: str = ""
    device: str = ""
    model: str | None = None
    pid: int | None = None


@dataclass(frozen=True)
class Log:
    level: str  # "info" | "warning" | "error"
    text: str
    job_id: int | None = None


@dataclass(frozen=True)
class ModelLoaded:
    name: str
    family: str
    seconds: float
    size_bytes: int
    path: str


@dataclass(frozen=True)
class JobStarted:
    job_id: int
    images_total: int
    steps_total: int  # sampling steps over the whole job


@dataclass(frozen=True)
class Progress:
    job_id: int
    step: int  # steps done in the current image's batch
    steps: int  # steps of the current batch
    batch_index: int  # 0-based index of the batch in the job
    batch_count: int
    its: float  # iterations per second (smoothed)
    eta_s: float  # seconds left for the whole job
    vram_allocated: int | None = None
    vram_reserved: int | None = None


@dataclass(frozen=True)
class Preview:
    job_id: int
    step: int
    png: bytes  # a small RGB PNG (a grid when the batch has several images)
    width: int
    height: int


@dataclass(frozen=True)
class ImageSaved:
    job_id: int
    index: int  # 0-based index in the job
    path: str
    seed: int
    infotext: str
    is_grid: bool = False


@dataclass(frozen=True)
class JobDone:
    job_id: int
    paths: tuple[str, ...]
    seconds: float
    cancelled: bool = False
    peak_vram_allocated: int | None = None
    peak_vram_reserved: int | None = None
    rss: int | None = None
    stats: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class JobFailed:
    job_id: int
    message: str  # plain words: what is wrong and the fix
    detail: str = ""  # technical detail for the log
    paths: tuple[str, ...] = ()  # images saved before the failure (kept)


Event = (
    EngineStatus | Log | ModelLoaded | JobStarted | Progress | Preview | ImageSaved | JobDone | JobFailed
)
