"""Pick a LoRA or an embedding to insert into the prompt: type to filter, arrows to move,
enter to insert, escape to leave. The lists come from the models and embeddings folders."""

from __future__ import annotations

from collections.abc import Sequence

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option

from sdtui.safe_text import one_line
from sdtui.tui.widgets.safe_input import ControlPictures

LORA_WEIGHT = 1


def network_text(kind: str, name: str) -> str:
    """What the prompt gets: ``<lora:NAME:1>`` for a LoRA, the name for an embedding."""
    return f"<lora:{name}:{LORA_WEIGHT}>" if kind == "lora" else name


class NetworkPickerScreen(ModalScreen[str | None]):
    DEFAULT_CSS = """
    NetworkPickerScreen { align: center middle; }
    NetworkPickerScreen > Vertical {
        width: 70%; min-width: 40; max-width: 90; height: 80%; max-height: 30;
        border: round $accent; padding: 0 1; background: $surface;
    }
    NetworkPickerScreen Input { margin-bottom: 1; }
    NetworkPickerScreen OptionList { height: 1fr; border: none; padding: 0; }
    NetworkPickerScreen #networks-hint { color: $text-muted; height: auto; }
    """
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("down", "move(1)", show=False, priority=True),
        Binding("up", "move(-1)", show=False, priority=True),
        Binding("pagedown", "move(10)", show=False, priority=True),
        Binding("pageup", "move(-10)", show=False, priority=True),
    ]

    def __init__(
        self,
        loras: Sequence[str],
        embeddings: Sequence[str],
        *,
        where: str = "",
        listed: bool = True,
    ) -> None:
        super().__init__()
        self.entries = [("lora", n) for n in loras] + [("embedding", n) for n in embeddings]
        self.where = where
        self.listed = listed
        self.shown: list[tuple[str, str]] = []

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = "Insert LoRA or embedding"
            yield Input(
                placeholder="type to filter",
                id="networks-filter",
                compact=True,
                highlighter=ControlPictures(),
            )
            yield OptionList(id="networks", markup=False)
            yield Label(self._hint(), id="networks-hint", markup=False)

    def _hint(self) -> str:
        if not self.listed:
            return "still listing the folders: close and open again in a moment"
        if not self.entries:
            return one_line(f"no LoRAs or embeddings found in {self.where}")
        return "enter inserts at the prompt cursor · escape closes"

    def on_mount(self) -> None:
        self._fill("")
        self.query_one(Input).focus()

    def _fill(self, query: str) -> None:
        words = query.lower().split()
        self.shown = [e for e in self.entries if all(w in e[1].lower() for w in words)]
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options(
            [
                Option(one_line(f"{'LoRA' if kind == 'lora' else 'TI  '}  {name}"))
                for kind, name in self.shown
            ]
        )
        if self.shown:
            options.highlighted = 0

    @on(Input.Changed)
    def _filter(self, event: Input.Changed) -> None:
        self._fill(event.value)

    def action_move(self, delta: int) -> None:
        options = self.query_one(OptionList)
        if not self.shown:
            return
        current = options.highlighted or 0
        options.highlighted = max(0, min(len(self.shown) - 1, current + delta))

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        self._pick(self.query_one(OptionList).highlighted)

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self._pick(event.option_index)

    def _pick(self, index: int | None) -> None:
        if index is None or not 0 <= index < len(self.shown):
            return
        kind, name = self.shown[index]
        self.dismiss(network_text(kind, name))

    def action_cancel(self) -> None:
        self.dismiss(None)
