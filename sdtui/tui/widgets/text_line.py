"""One line of changing text that repaints without reflowing the screen.

``Static.update`` / ``Label.update`` always ask for a full layout pass, since new text may
change the widget's size. For text in a box of fixed size (CSS gives its width and height)
that work is wasted, and it was most of what a keystroke cost: the prompt's two token
counters are updated on every key (py-spy, 2-core box, a job running: ~10 ms a key).
"""

from __future__ import annotations

from textual.content import Content
from textual.widget import Widget

from sdtui.safe_text import one_line


class TextLine(Widget):
    """Plain text (no markup, control characters shown not sent) in a fixed-size box;
    ``update`` only repaints."""

    DEFAULT_CSS = """
    TextLine { height: 1; width: 1fr; }
    """

    def __init__(
        self, text: str = "", *, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(id=id, classes=classes)
        self._text = text

    @property
    def text(self) -> str:
        return self._text

    def update(self, text: str) -> None:
        if text != self._text:
            self._text = text
            self.refresh()

    def render(self) -> Content:
        return Content(one_line(self._text))
