"""One image as large as the terminal allows, with its generation parameters."""

from __future__ import annotations

import os
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, VerticalScroll
from textual.events import Resize
from textual.screen import ModalScreen
from textual.widgets import Static

from sdtui.safe_text import one_line, visible
from sdtui.tui.widgets.image_view import PreviewImage

NARROW_BELOW = 110  # columns: below this the parameters go under the image


def infotext_view(path: str | os.PathLike[str]) -> Text:
    """The file's generation parameters laid out for reading: prompt, negative prompt,
    then one ``Key: value`` per line. Plain words when there are none or the file is bad.
    Everything from the file is shown, not sent: an escape sequence in it shows as ``^[``."""
    from sdtui.errors import UserError
    from sdtui.infotext import parse_infotext
    from sdtui.tui.files import read_infotext, show

    try:
        raw = read_infotext(path)  # a pipe is refused, any error of the reader is a sentence
    except UserError as e:
        return Text(visible(e.message), style="red")
    if not raw:
        return Text(f"{show(path)}\n\nNo generation parameters in this file.", style="dim")
    try:
        parsed = parse_infotext(raw)
    except Exception as e:  # noqa: BLE001 - a strange infotext is shown raw, never a crash
        text = Text(f"{show(path)}\n\n", style="dim")
        text.append(f"(its parameters cannot be parsed: {type(e).__name__})\n\n", style="red")
        text.append(visible(raw))
        return text
    text = Text()
    text.append(f"{show(path)}\n\n", style="dim")
    if parsed.prompt:
        text.append("Prompt\n", style="bold")
        text.append(visible(parsed.prompt) + "\n\n")
    if parsed.negative_prompt:
        text.append("Negative prompt\n", style="bold")
        text.append(visible(parsed.negative_prompt) + "\n\n")
    for key, value in parsed.pairs.items():
        text.append(f"{one_line(key)}: ", style="bold")
        text.append(f"{one_line(value)}\n")
    return text


class FullViewScreen(ModalScreen[None]):
    """``path`` full size; left/right walk through ``paths`` when given; escape/q close."""

    BINDINGS = [
        Binding("escape,q", "close", "Close"),
        Binding("left,h", "step(-1)", "Previous"),
        Binding("right,l", "step(1)", "Next"),
    ]

    DEFAULT_CSS = """
    FullViewScreen {
        background: $background;
    }
    FullViewScreen > #full-title {
        dock: top;
        height: 1;
        width: 1fr;
        background: $panel;
        padding: 0 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    FullViewScreen > #full-body {
        layout: horizontal;
        width: 1fr;
        height: 1fr;
    }
    FullViewScreen #full-image {
        width: 1fr;
        height: 1fr;
    }
    FullViewScreen #full-info {
        width: 44;
        height: 1fr;
        border-left: vkey $panel-lighten-2;
        padding: 0 1;
    }
    FullViewScreen.-narrow > #full-body {
        layout: vertical;
    }
    FullViewScreen.-narrow #full-info {
        width: 1fr;
        height: 8;
        border-left: none;
        border-top: hkey $panel-lighten-2;
    }
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        paths: list[str] | list[Path] | None = None,
        *,
        mode: str | None = None,
    ) -> None:
        super().__init__()
        self._paths = [os.fspath(p) for p in paths] if paths else [os.fspath(path)]
        current = os.fspath(path)
        if current not in self._paths:
            self._paths.insert(0, current)
        self._index = self._paths.index(current)
        self._mode = mode

    @property
    def path(self) -> str:
        """The file shown now."""
        return self._paths[self._index]

    def compose(self) -> ComposeResult:
        yield Static("", id="full-title", markup=False)
        with Container(id="full-body"):
            # no caption under the image: the title line says it (one caption line, not two)
            yield PreviewImage(id="full-image", mode=self._mode, placeholder="", caption=False)
            with VerticalScroll(id="full-info", can_focus=False):
                yield Static("", id="full-info-text")

    def on_mount(self) -> None:
        self._narrow(self.app.size.width)
        self._show()

    def on_resize(self, event: Resize) -> None:
        self._narrow(event.size.width)

    def _narrow(self, width: int) -> None:
        self.set_class(width < NARROW_BELOW, "-narrow")

    def _show(self) -> None:
        path = self.path
        count = len(self._paths)
        image = self.query_one("#full-image", PreviewImage)
        image.show_path(path)
        # the keys first (a narrow terminal cuts the end), then the image's caption: size,
        # seed, steps and name (just the name when it cannot be shown)
        parts = ["esc close"]
        if count > 1:
            parts.append(f"←/→ {self._index + 1}/{count}")
        parts.append(image.caption or one_line(Path(path).name))
        self.query_one("#full-title", Static).update(" · ".join(parts))
        self.query_one("#full-info-text", Static).update(infotext_view(path))
        self.query_one("#full-info", VerticalScroll).scroll_home(animate=False)

    def action_step(self, delta: int) -> None:
        index = max(0, min(len(self._paths) - 1, self._index + delta))
        if index != self._index:
            self._index = index
            self._show()

    def action_close(self) -> None:
        self.dismiss(None)
