"""Typed messages between the clients (TUI, CLI), the daemon and its engine workers.

Small frozen dataclasses, picklable, no torch objects: they cross a Unix socket (client <->
daemon, ``multiprocessing.connection``) and a pipe (daemon <-> engine worker). This module
imports neither torch nor textual, so every process can use it.

A connection starts with a handshake of plain tuples, readable by any sdtui version, that
checks ``PROTOCOL_VERSION``: a client and a daemon of different versions get one sentence
instead of an unpickling error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from sdtui.config import Settings
from sdtui.jobstore import JobKind as JobKind  # re-exported: the queue's words are the protocol's
from sdtui.jobstore import JobState as JobState
from sdtui.params import GenerationParams, MemoryMode, UpscaleParams, XYZParams

# 1 was the engine child of a single TUI (multiprocessing queues); 3 added X/Y/Z plot jobs;
# 4 the inpaint, outpaint, face restoration, refiner, CFG rescale and distilled CFG fields of
# GenerationParams and the face fields of UpscaleParams (a daemon of 3 would refuse them);
# 5 GenerationParams.rng
PROTOCOL_VERSION = 5
HELLO, WELCOME, REFUSED = "sdtui-hello", "sdtui-welcome", "sdtui-refused"

# -- daemon -> engine worker -----------------------------------------------------------------


@dataclass(frozen=True)
class EngineOptions:
    """How the daemon starts one engine worker."""

    demo: bool = False  # preload the built-in demo model when no model is named
    preload: bool = True  # load a model at start, before the first job
    preload_model: str | None = None  # which (None: the default model)
    fault_injection: str | None = None  # tests only: see sdtui.engine.faults
    worker: int = 0  # the daemon's index for this worker
    # CUDA_VISIBLE_DEVICES for this worker: it sees one card, as "cuda"
    visible_devices: str | None = None
    store_path: str | None = None  # the queue file: each saved image is recorded there


@dataclass(frozen=True)
class SubmitGenerate:
    job_id: int
    params: GenerationParams
    settings: Settings | None = None  # the submitter's folders (None: the worker's own)
    done: dict[int, str] = field(default_factory=dict)  # images saved before a restart


@dataclass(frozen=True)
class SubmitUpscale:
    job_id: int
    params: UpscaleParams
    settings: Settings | None = None
    done: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SubmitXYZ:
    """An X/Y/Z plot: one image per cell (each saved as a normal image, recorded under its
    cell index, X fastest), then the labelled grid (recorded under -1)."""

    job_id: int
    params: XYZParams
    settings: Settings | None = None
    done: dict[int, str] = field(default_factory=dict)  # cells saved before a restart


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

    mode: MemoryMode


@dataclass(frozen=True)
class Shutdown:
    pass


Command = (
    SubmitGenerate
    | SubmitUpscale
    | SubmitXYZ
    | Cancel
    | Skip
    | LoadModel
    | SetMemoryMode
    | Shutdown
)

# -- client -> daemon (besides Cancel, Skip, LoadModel, SetMemoryMode) ------------------------


@dataclass(frozen=True)
class Submit:
    """A job for the queue; answered by ``Submitted`` (after it is on disk) or ``Refused``."""

    token: int
    kind: JobKind
    params: GenerationParams | UpscaleParams | XYZParams
    folders: dict[str, str]  # the submitter's resolved folders (models, outputs, ...)


@dataclass(frozen=True)
class RestartWorkers:
    """New engine worker processes (frees all they held); the queue is kept and a running
    job resumes at its next image."""


@dataclass(frozen=True)
class StopDaemon:
    cancel_jobs: bool = False  # True: cancel queued and running jobs (images kept)


@dataclass(frozen=True)
class QueryState:
    token: int


# -- engine worker -> daemon -> clients --------------------------------------------------------

EngineState = Literal["starting", "loading", "ready", "busy", "crashed", "stopped"]
ENGINE_STATES: tuple[EngineState, ...] = get_args(EngineState)
LogLevel = Literal["info", "warning", "error"]


@dataclass(frozen=True)
class EngineStatus:
    state: EngineState
    detail: str = ""
    device: str = ""
    model: str | None = None
    pid: int | None = None
    worker: int = 0  # which worker of the daemon (one per device)


@dataclass(frozen=True)
class Log:
    level: LogLevel
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
    batch_index: (
        int  # 0-based index of the batch in the job (of an X/Y/Z plot: the cell, in the order made)
    )
    batch_count: int  # (of an X/Y/Z plot: its cells)
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
    index: int  # the image's index in the job (seed + index, or the variation seed + index with a strength); -1 for a grid
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
    EngineStatus
    | Log
    | ModelLoaded
    | JobStarted
    | Progress
    | Preview
    | ImageSaved
    | JobDone
    | JobFailed
)


# -- daemon -> clients -------------------------------------------------------------------------


@dataclass(frozen=True)
class JobInfo:
    """A job as the queue knows it."""

    job_id: int
    kind: JobKind
    state: JobState
    summary: str
    images_total: int
    submitted_by: str
    submitted_at: float
    attempts: int = 0
    images_done: int = 0
    step: int = 0  # progress of the running batch
    steps: int = 0
    worker: int | None = None
    message: str | None = None


@dataclass(frozen=True)
class Submitted:
    token: int
    job: JobInfo


@dataclass(frozen=True)
class Refused:
    token: int
    message: str


@dataclass(frozen=True)
class JobQueued:
    job: JobInfo


@dataclass(frozen=True)
class WorkerInfo:
    index: int
    device: str
    state: EngineState
    model: str | None = None
    pid: int | None = None
    job_id: int | None = None


@dataclass(frozen=True)
class DaemonState:
    """What a client sees at attach, and the answer to ``QueryState``."""

    token: int | None
    pid: int
    version: str
    started_at: float
    address: str
    queue_path: str
    idle_minutes: float
    workers: tuple[WorkerInfo, ...]
    jobs: tuple[JobInfo, ...]  # queued and running, in queue order
    recent: tuple[JobInfo, ...] = ()  # the last finished ones, newest first
    clients: tuple[str, ...] = ()


@dataclass(frozen=True)
class DaemonStopping:
    reason: str


def hello(info: dict[str, Any]) -> tuple[str, int, dict[str, Any]]:
    return (HELLO, PROTOCOL_VERSION, info)
