"""A modal that asks for a file path (ctrl+o: load parameters from a PNG)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from sdtui.tui.widgets.safe_input import ControlPictures


class PathPromptScreen(ModalScreen[str | None]):
    """Asks for a file path (enter: use it, escape: cancel)."""

    DEFAULT_CSS = """
    PathPromptScreen { align: center middle; }
    PathPromptScreen > Vertical {
        width: 80%; max-width: 100; height: auto; border: round $accent; padding: 0 1;
        background: $surface;
    }
    """
    BINDINGS = [("escape", "cancel", "Cancel")]

    def __init__(self, title: str, value: str = "") -> None:
        super().__init__()
        self._title = title
        self._value = value

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self._title, markup=False)
            yield Input(
                self._value,
                placeholder="/path/to/image.png",
                id="path-input",
                highlighter=ControlPictures(),
            )

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)
