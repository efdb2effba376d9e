"""The job log: one timestamped line per thing worth knowing (model loaded in N s, it/s of a
finished job, each saved path, warnings and errors in plain words)."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.text import Text
from textual.widgets import RichLog

from sdtui.safe_text import one_line

LEVEL_STYLES = {"info": "", "ok": "green", "warning": "yellow", "error": "bold red"}


class JobLog(RichLog):
    DEFAULT_CSS = """
    JobLog { height: 1fr; scrollbar-size-vertical: 1; background: $surface; }
    """

    def __init__(
        self,
        *,
        clock: Callable[[], str] | None = None,
        id: str | None = None,
        max_lines: int = 2000,
    ) -> None:
        super().__init__(id=id, wrap=True, markup=False, max_lines=max_lines, min_width=20)
        self.clock = clock or (lambda: time.strftime("%H:%M:%S"))
        self.entries: list[tuple[str, str]] = []  # (level, text), for tests and copying

    def add(self, level: str, text: str) -> None:
        # a file name, a prompt or an engine message can hold escape sequences and newlines:
        # shown (``^[``, ``^J``), never sent, and one entry is one line
        text = one_line(str(text))
        self.entries.append((level, text))
        line = Text(f"{self.clock()} ", style="dim")
        line.append(text, style=LEVEL_STYLES.get(level, ""))
        self.write(line)

    @property
    def plain(self) -> str:
        return "\n".join(text for _, text in self.entries)
