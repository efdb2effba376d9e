"""What every part of a running job shares: its context (who to tell, where to save, which
folders to read), the flags the engine's command thread sets, and the exceptions that stop
a batch or the job. No torch: the worker builds these before a model is loaded."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sdtui.config import Settings, load_settings
from sdtui.ipc import protocol as msg
from sdtui.ipc.protocol import LogLevel
from sdtui.outputs import OutputLayout


class JobCancelled(Exception):
    """Raised from the step callback: stop now, keep what is saved."""


class BatchSkipped(Exception):
    """Raised from the step callback: drop the current batch, go on with the next."""


@dataclass
class JobControl:
    """Flags the engine's command thread sets while a job runs."""

    cancel: threading.Event = field(default_factory=threading.Event)
    skip: threading.Event = field(default_factory=threading.Event)


@dataclass
class JobContext:
    job_id: int
    emit: Callable[[Any], None]
    control: JobControl
    layout: OutputLayout
    model_name: str | None = None
    model_hash: str | None = None
    family: str = "SD1"
    memory_mode: str = "normal"  # the engine's placement: the ladder climbs from here
    vae_fp32: bool = False  # set after a NaN decode: the rest of the job decodes in fp32
    settings: Settings | None = (
        None  # the submitter's folders (LoRAs, VAEs, upscalers); None: the engine's
    )
    # images a restarted job saved before (index -> path): they are not made again
    done: dict[int, str] = field(default_factory=dict)

    def log(self, text: str, level: LogLevel = "info") -> None:
        self.emit(msg.Log(level, text, self.job_id))


def job_settings(session: Any, ctx: Any) -> Settings:
    """The folders a job reads: ``ctx.settings``, else ``session.settings`` (the engine sets
    it), else the settings file and environment (then kept on the session)."""
    settings: Settings | None = getattr(ctx, "settings", None) or session.settings
    if settings is None:
        settings = load_settings()
        session.settings = settings
    return settings
