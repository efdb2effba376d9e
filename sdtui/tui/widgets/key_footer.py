"""The footer of keys, wrapped onto more rows on a narrow terminal."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.events import Resize
from textual.widgets import Footer


class KeyFooter(Footer):
    """The footer, with its keys wrapping onto more rows on a narrow terminal instead of
    running off the edge: every key stays visible."""

    CELL_WIDTH = 13

    def compose(self) -> ComposeResult:
        yield from super().compose()
        self._wrap(self.app.size.width)

    def on_resize(self, event: Resize) -> None:
        self._wrap(event.size.width)

    def _wrap(self, width: int) -> None:
        columns = max(3, (width or 80) // self.CELL_WIDTH)
        if self.styles.grid_size_columns != columns:
            self.styles.grid_size_columns = columns
