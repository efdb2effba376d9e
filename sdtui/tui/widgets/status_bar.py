"""One line: engine state and model, progress bar with step and batch, it/s, ETA, queue,
and the daemon this app is attached to (pid, uptime)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from textual.app import RenderResult
from textual.content import Content
from textual.widget import Widget

from sdtui.safe_text import one_line

STATE_LABELS = {
    "starting": ("starting", "$warning"),
    "loading": ("loading model", "$warning"),
    "ready": ("ready", "$success"),
    "busy": ("busy", "$accent"),
    "crashed": ("CRASHED", "$error"),
    "stopped": ("stopped", "$text-muted"),
}


def format_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}:{seconds % 60:02d}"


@dataclass(frozen=True)
class StatusLine:
    state: str = "starting"
    model: str | None = None
    detail: str = ""
    step: int = 0
    steps: int = 0
    batch_index: int = 0
    batch_count: int = 0
    batch_word: str = "batch"  # an X/Y/Z plot counts cells
    its: float | None = None
    eta_s: float | None = None
    queued: int = 0
    memory_mode: str = ""
    daemon_pid: int | None = None  # the engine daemon attached to (None: detached)
    daemon_since: float | None = None  # its start, as a time.time()


class StatusBar(Widget):
    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; padding: 0 1; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.line = StatusLine()

    def on_mount(self) -> None:
        self.set_interval(30, self.refresh)  # the daemon's uptime

    def update_line(self, **changes: Any) -> None:
        """Repaint only when something shown changed."""
        line = replace(self.line, **changes)
        if line != self.line:
            self.line = line
            self.refresh()

    def render(self) -> RenderResult:
        s = self.line
        label, colour = STATE_LABELS.get(s.state, (one_line(str(s.state)), "$text"))
        parts: list[str | tuple[str, str]] = [(f" {label} ", f"bold $background on {colour}")]
        if s.state == "loading" and s.detail:
            parts.append((f" {one_line(s.detail)}", "$text-muted"))
        elif s.model:
            parts.append((f" {one_line(s.model)}", "bold"))
        if s.state == "busy" and s.steps:
            width = max(6, min(30, self.size.width // 5))
            done = int(width * s.step / max(1, s.steps))
            parts.append(("  ", ""))
            parts.append(("█" * done, "$accent"))
            parts.append(("░" * (width - done), "$text-muted"))
            parts.append((f" {s.step}/{s.steps}", "bold"))
            if s.batch_count > 1:
                parts.append((f" {s.batch_word} {s.batch_index + 1}/{s.batch_count}", ""))
            if s.its is not None:
                parts.append((f"  {s.its:.2f} it/s", ""))
            if s.eta_s is not None:
                parts.append((f"  ETA {format_eta(s.eta_s)}", ""))
        if s.queued:
            parts.append((f"  queued {s.queued}", "$warning"))
        if s.memory_mode:
            parts.append((f"  mem {one_line(s.memory_mode)}", "$text-muted"))
        if s.daemon_pid:
            from sdtui.units import format_uptime

            up = f" up {format_uptime(time.time() - s.daemon_since)}" if s.daemon_since else ""
            parts.append((f"  attached: daemon {s.daemon_pid}{up}", "$text-muted"))
        elif s.state in ("crashed", "stopped"):
            parts.append(("  detached: F12 starts the daemon", "$text-muted"))
        return Content.assemble(*parts)
