"""Two small modals: one line of text (a style's name), and a yes/no question (replace or
delete a style)."""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from sdtui.safe_text import one_line
from sdtui.tui.widgets.safe_input import ControlPictures


class AskTextScreen(ModalScreen[str | None]):
    """Asks for one line of text: enter takes it (when ``check`` finds nothing wrong with it;
    else the problem shows under the field and the field stays), escape cancels."""

    DEFAULT_CSS = """
    AskTextScreen { align: center middle; }
    AskTextScreen > Vertical {
        width: 80%; max-width: 90; height: auto; border: round $accent; padding: 0 1;
        background: $surface;
    }
    AskTextScreen Label { width: 1fr; }
    AskTextScreen #ask-problem { color: $error; height: auto; }
    AskTextScreen #ask-hint { color: $text-muted; height: auto; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(
        self,
        title: str,
        value: str = "",
        *,
        placeholder: str = "",
        hint: str = "enter: take it · escape: cancel",
        check: Callable[[str], str | None] | None = None,
    ) -> None:
        super().__init__()
        self._title = title
        self._value = value
        self._placeholder = placeholder
        self._hint = hint
        self._check = check

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(one_line(self._title), markup=False)
            yield Input(
                self._value,
                placeholder=self._placeholder,
                id="ask-input",
                highlighter=ControlPictures(),
            )
            yield Label("", id="ask-problem", markup=False)
            yield Label(self._hint, id="ask-hint", markup=False)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        value = event.value
        problem = self._check(value) if self._check else None
        if problem:
            self.query_one("#ask-problem", Label).update(one_line(problem))
            return
        self.dismiss(value)

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#ask-problem", Label).update("")

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question: ``y`` or enter says yes, ``n`` or escape says no."""

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical {
        width: 80%; max-width: 90; height: auto; border: round $warning; padding: 0 1;
        background: $surface;
    }
    ConfirmScreen Label { width: 1fr; }
    ConfirmScreen #confirm-hint { color: $text-muted; }
    """
    BINDINGS = [
        Binding("y,enter", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, *, yes: str = "yes") -> None:
        super().__init__()
        self._question = question
        self._yes = yes

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(one_line(self._question), markup=False)
            yield Label(f"y / enter: {self._yes} · n / escape: no", id="confirm-hint", markup=False)

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
