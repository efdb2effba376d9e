"""The TUI's view of the styles file (A1111's ``styles.csv``): read when it changes on disk,
applied on Generate, saved and deleted through ``sdtui.styles``.

A styles file that cannot be read (binary, huge, not UTF-8, no ``name`` column, a pipe, no
permission) is one sentence naming it, said once in the job log; the app then works with no
styles. The file is read again whenever it changes (someone edits it in a text editor, or A1111
saves a style), checked by ``stat`` before each use: it is small, and this costs nothing.

Pure Python (no textual).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sdtui.errors import UserError
from sdtui.safe_text import one_line
from sdtui.styles import (
    PromptStyle,
    StyleError,
    apply_styles,
    delete_style,
    extract_styles_from_prompt,
    read_styles,
    save_style,
)

_Stamp = tuple[int, int, int, int] | str | None


def _stamp(path: Path) -> _Stamp:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"error: {e}"
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode)


class StyleBook:
    """The styles in ``path`` by name, in file order; ``problem`` when it cannot be read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.styles: dict[str, PromptStyle] = {}
        self.problem: str | None = None
        self._stamp: _Stamp | bool = False  # False: never read
        self._said: str | None = None

    @property
    def names(self) -> list[str]:
        return list(self.styles)

    def refresh(self) -> str | None:
        """Read the file again if it changed. Returns a problem to report, the first time it
        is met (None when the file reads, or the same problem was returned before)."""
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            self.styles = read_styles(self.path)
            self.problem = None
        except UserError as e:
            self.styles, self.problem = {}, one_line(e.message)
        except Exception as e:  # noqa: BLE001 - a bad file is a sentence, never a crash
            self.styles = {}
            self.problem = one_line(
                f"{self.path} cannot be read as a styles file ({type(e).__name__}: {e})"
            )[:400]
        if self.problem is None:
            self._said = None
            return None
        if self.problem == self._said:
            return None
        self._said = self.problem
        return self.problem

    def _written(self, styles: dict[str, PromptStyle]) -> None:
        self.styles, self.problem, self._said = styles, None, None
        self._stamp = _stamp(self.path)

    # -- using them -----------------------------------------------------------------------

    def unknown(self, names: Sequence[str]) -> list[str]:
        return [n for n in names if n not in self.styles]

    def merged(self, names: Sequence[str], prompt: str, negative: str) -> tuple[str, str]:
        """The prompts with ``names`` applied in order, as A1111 sends them to the model
        and writes them in the infotext. StyleError when the file cannot be read or does not
        hold one of them. (Call ``refresh`` first to use the file as it is now.)"""
        if not names:
            return prompt, negative
        if self.problem is not None:
            raise StyleError(self.problem)
        return apply_styles(self.styles, names, prompt, negative)

    def texts(self, names: Sequence[str]) -> tuple[list[str], list[str]]:
        """The prompt and negative texts of the known styles among ``names``, in order."""
        chosen = [self.styles[n] for n in names if n in self.styles]
        return [s.prompt for s in chosen], [s.negative_prompt for s in chosen]

    def extract(self, prompt: str, negative: str) -> tuple[list[str], str, str]:
        """The styles ``prompt`` and ``negative`` were made with, and the prompts without
        them (A1111's "Styles array" of an infotext)."""
        if not self.styles:
            return [], prompt, negative
        return extract_styles_from_prompt(self.styles, prompt, negative)

    # -- changing the file ----------------------------------------------------------------

    def save(self, style: PromptStyle) -> None:
        """Add or replace ``style`` (StyleError says why not: the file kept as it was)."""
        self._written(save_style(self.path, style))

    def delete(self, name: str) -> None:
        self._written(delete_style(self.path, name))
