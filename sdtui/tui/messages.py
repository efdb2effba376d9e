"""Every custom Textual message of the TUI, in one module (the Posting habit).

Engine events arrive from the engine daemon as plain dataclasses (sdtui.ipc.protocol);
the app turns each into one of the ``Engine*`` messages below so widgets and tests can
handle them with ordinary ``on_...`` handlers. Widget messages say what the user asked for;
the app decides what to do.
"""

from __future__ import annotations

from typing import Any

from textual.message import Message

from sdtui.ipc import protocol as msg
from sdtui.tui.form_state import FormState

# -- engine -> app ---------------------------------------------------------------------------


class EngineEvent(Message):
    """Base class: ``event`` is the engine's dataclass, untouched."""

    def __init__(self, event: Any) -> None:
        super().__init__()
        self.event = event


class EngineStatusChanged(EngineEvent):
    event: msg.EngineStatus


class EngineLogged(EngineEvent):
    event: msg.Log


class ModelLoaded(EngineEvent):
    event: msg.ModelLoaded


class JobStarted(EngineEvent):
    event: msg.JobStarted


class JobProgress(EngineEvent):
    event: msg.Progress


class PreviewReady(EngineEvent):
    event: msg.Preview


class ImageSaved(EngineEvent):
    event: msg.ImageSaved


class JobDone(EngineEvent):
    event: msg.JobDone


class JobFailed(EngineEvent):
    event: msg.JobFailed


class DaemonAttached(EngineEvent):
    """The daemon's state when this app attached: its queue, its workers."""

    event: msg.DaemonState


class JobQueued(EngineEvent):
    """A job entered the queue (this app's or another client's)."""

    event: msg.JobQueued


class DaemonStopping(EngineEvent):
    event: msg.DaemonStopping


_BY_EVENT: dict[type, type[EngineEvent]] = {
    msg.EngineStatus: EngineStatusChanged,
    msg.Log: EngineLogged,
    msg.ModelLoaded: ModelLoaded,
    msg.JobStarted: JobStarted,
    msg.Progress: JobProgress,
    msg.Preview: PreviewReady,
    msg.ImageSaved: ImageSaved,
    msg.JobDone: JobDone,
    msg.JobFailed: JobFailed,
    msg.DaemonState: DaemonAttached,
    msg.JobQueued: JobQueued,
    msg.DaemonStopping: DaemonStopping,
}


def message_for(event: Any) -> EngineEvent:
    """The Textual message that carries one engine event."""
    return _BY_EVENT.get(type(event), EngineEvent)(event)


# -- widgets -> app --------------------------------------------------------------------------


class FormChanged(Message):
    """The form was edited: its parsed state and every problem, keyed by field."""

    def __init__(self, state: FormState, errors: dict[str, str]) -> None:
        super().__init__()
        self.state = state
        self.errors = errors


class PromptChanged(Message):
    def __init__(self, prompt: str, negative_prompt: str) -> None:
        super().__init__()
        self.prompt = prompt
        self.negative_prompt = negative_prompt


class RandomSeedRequested(Message):
    """The seed's dice button was pressed."""


class ReuseSeedRequested(Message):
    """The seed's recycle button was pressed."""


class RemoveQueuedJob(Message):
    def __init__(self, job_id: int) -> None:
        super().__init__()
        self.job_id = job_id
