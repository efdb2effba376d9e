"""The queue: the running job, then the jobs waiting behind it. Delete removes one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from textual.binding import Binding
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from sdtui.safe_text import one_line
from sdtui.tui.messages import RemoveQueuedJob


@dataclass(frozen=True)
class QueueEntry:
    job_id: int
    summary: str
    running: bool = False


class QueueView(OptionList):
    DEFAULT_CSS = """
    QueueView { height: auto; max-height: 6; border: none; padding: 0; }
    """
    BINDINGS = [Binding("delete,x", "remove", "Remove job", show=True)]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, markup=False)
        self.entries: tuple[QueueEntry, ...] = ()

    def on_mount(self) -> None:
        self.display = bool(self.entries)

    def show_entries(self, entries: Sequence[QueueEntry]) -> None:
        entries = tuple(entries)
        if entries == self.entries:
            return
        highlighted = self.highlighted
        self.entries = entries
        self.clear_options()
        for e in entries:
            mark = "▶" if e.running else "·"
            self.add_option(Option(one_line(f"{mark} #{e.job_id} {e.summary}"), id=str(e.job_id)))
        if entries:
            self.highlighted = min(highlighted or 0, len(entries) - 1)
        self.display = bool(entries)

    def action_remove(self) -> None:
        if self.highlighted is None or not self.entries:
            return
        entry = self.entries[min(self.highlighted, len(self.entries) - 1)]
        self.post_message(RemoveQueuedJob(entry.job_id))
