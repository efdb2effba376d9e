"""A failed job's technical detail (the engine's traceback), scrollable and selectable, for a
bug report. The job log keeps the plain message only."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, TextArea

from sdtui.safe_text import visible


class ErrorDetailScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    ErrorDetailScreen { align: center middle; }
    ErrorDetailScreen > Vertical {
        width: 95%; height: 90%; border: round $error; padding: 0 1; background: $surface;
    }
    ErrorDetailScreen #error-message { color: $error; height: auto; }
    ErrorDetailScreen #error-hint { color: $text-muted; height: 1; }
    ErrorDetailScreen TextArea { height: 1fr; border: none; padding: 0; }
    """
    BINDINGS = [("escape", "close", "Close"), ("q", "close", "Close")]

    def __init__(self, job_id: int, message: str, detail: str) -> None:
        super().__init__()
        self.job_id = job_id
        # the engine's words can quote a prompt or a file: shown, never sent (TextArea draws
        # its text as it is)
        self.message = visible(message)
        self.detail = visible(detail or "(the engine sent no detail for this failure)")

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = f"job #{self.job_id} failed"
            yield Label(self.message, id="error-message", markup=False)
            yield TextArea(
                self.detail,
                id="error-detail",
                read_only=True,
                soft_wrap=False,
                show_cursor=False,
                show_line_numbers=False,
            )
            yield Label(
                "arrows/PgUp/PgDn scroll · shift+arrows select, ctrl+c copies · escape closes",
                id="error-hint",
            )

    def on_mount(self) -> None:
        area = self.query_one(TextArea)
        area.focus()
        area.scroll_end(animate=False)  # a traceback's last lines say what went wrong

    def action_close(self) -> None:
        self.dismiss(None)
