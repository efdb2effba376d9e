"""An Input that never sends a control character to the terminal.

Textual's Input draws its value as it is: a file name (the selected image's path) or a pasted
path holding ``ESC ]52;...`` would reach the terminal. The value keeps what was typed; what is
drawn shows each control character as its Unicode "control picture" (``ESC`` as ``␛``): one
cell for one character, so the cursor and the selection stay where they are.
"""

from __future__ import annotations

from rich.highlighter import Highlighter
from rich.text import Text
from textual.widgets import Input

from sdtui.safe_text import one_line


def _picture(ch: str) -> str:
    if one_line(ch) == ch:
        return ch
    code = ord(ch)
    if code < 0x20:
        return chr(0x2400 + code)  # ␀ .. ␟
    if code == 0x7F:
        return "\u2421"  # ␡
    return "\ufffd"  # C1 controls, lone surrogates, bidi overrides


def pictures(text: str) -> str:
    """``text`` with each control character as one visible character."""
    return text if one_line(text) == text else "".join(_picture(ch) for ch in text)


class ControlPictures(Highlighter):
    def highlight(self, text: Text) -> None:
        plain = text.plain
        shown = pictures(plain)
        if shown != plain:
            text.plain = shown


class SafeInput(Input):
    """``Input`` whose value is drawn with control characters shown, never sent."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("highlighter", ControlPictures())
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
