"""Pick prompt styles (A1111's ``styles.csv``): type to filter, arrows to move, space or enter
to turn the highlighted style on or off (styles apply in the order they were turned on), escape
when done. The box under the list shows the highlighted style's prompt and negative prompt.
``ctrl+s`` saves the current prompts as a style, ``delete`` deletes the highlighted one (both
ask first; the main screen does the asking and the writing)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from sdtui.safe_text import one_line
from sdtui.tui.style_book import StyleBook
from sdtui.tui.widgets.safe_input import ControlPictures

PREVIEW_CHARS = 600  # of each prompt, in the box under the list


def style_line(names: Sequence[str], unknown: Sequence[str] = ()) -> str:
    """The compact line the prompt area shows: ``Photo › Sharp`` (the order they apply in);
    a name the styles file no longer holds is marked."""
    return " › ".join(f"{n} (not in the file)" if n in unknown else n for n in names)


class _FilterInput(Input):
    """The filter: space is the picker's (on/off), not a character to type."""

    def check_consume_key(self, key: str, character: str | None) -> bool:
        return key != "space" and super().check_consume_key(key, character)


class StylePickerScreen(ModalScreen[tuple[str, ...]]):
    """Returns the chosen style names, in order (escape: done)."""

    DEFAULT_CSS = """
    StylePickerScreen { align: center middle; }
    StylePickerScreen > Vertical {
        width: 90%; min-width: 40; max-width: 110; height: 90%; max-height: 34;
        border: round $accent; padding: 0 1; background: $surface;
    }
    StylePickerScreen Input { margin-bottom: 1; }
    StylePickerScreen OptionList {
        height: 1fr; border: none; padding: 0; text-wrap: nowrap; text-overflow: ellipsis;
    }
    StylePickerScreen #style-preview {
        height: auto; max-height: 7; border-top: solid $primary-muted; color: $text;
    }
    StylePickerScreen #styles-hint { color: $text-muted; height: auto; width: 1fr; }
    """
    BINDINGS = [
        Binding("escape", "done", "Done"),
        Binding("space", "toggle_style", "On/off", priority=True),
        Binding("down", "move(1)", show=False, priority=True),
        Binding("up", "move(-1)", show=False, priority=True),
        Binding("pagedown", "move(10)", show=False, priority=True),
        Binding("pageup", "move(-10)", show=False, priority=True),
        Binding("ctrl+s", "save", "Save prompt as style", priority=True),
        Binding("delete", "delete", "Delete style", priority=True),
    ]

    def __init__(
        self,
        book: StyleBook,
        selected: Sequence[str],
        *,
        save: Callable[[Callable[[], None]], None] | None = None,
        delete: Callable[[str, Callable[[], None]], None] | None = None,
    ) -> None:
        """``save(after)`` asks for a name and saves the prompts as a style; ``delete(name,
        after)`` asks and deletes one; each calls ``after`` once the file changed."""
        super().__init__()
        self.book = book
        self.selected: list[str] = list(dict.fromkeys(selected))
        self._save = save
        self._delete = delete
        self.shown: list[str] = []

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = one_line(f"Styles · {self.book.path}")
            yield _FilterInput(
                placeholder="type to filter",
                id="styles-filter",
                compact=True,
                highlighter=ControlPictures(),
            )
            yield OptionList(id="styles", markup=False)
            yield Static("", id="style-preview", markup=False)
            yield Label(
                "space/enter on/off (in order) · ^s save the prompt as a style · "
                "del delete · esc done",
                id="styles-hint",
                markup=False,
            )

    def on_mount(self) -> None:
        self._fill("")
        self.query_one(Input).focus()

    # -- the list ---------------------------------------------------------------------------

    @property
    def entries(self) -> list[str]:
        """Every style: the chosen ones the file no longer holds first (so they can be
        turned off), then the file's, in file order."""
        return [n for n in self.selected if n not in self.book.styles] + self.book.names

    def _label(self, name: str) -> Text:
        order = self.selected.index(name) + 1 if name in self.selected else 0
        text = Text(f"[{order}] " if order else "[ ] ", style="bold" if order else "dim")
        text.append(one_line(name), style="bold" if order else "")
        style = self.book.styles.get(name)
        if style is None:
            text.append("  (not in the file)", style="italic")
        else:
            parts = [
                p
                for p in (style.prompt, style.negative_prompt and "− " + style.negative_prompt)
                if p
            ]
            text.append("  " + one_line("  ".join(parts))[:200], style="dim")
        return text

    def _fill(self, query: str, keep: str | None = None) -> None:
        words = query.lower().split()
        self.shown = [n for n in self.entries if all(w in n.lower() for w in words)]
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options([Option(self._label(n)) for n in self.shown])
        if self.shown:
            options.highlighted = self.shown.index(keep) if keep in self.shown else 0
        self._show_preview()

    def reload(self) -> None:
        """The styles file changed (saved or deleted here): list it again."""
        self.selected = [n for n in self.selected if n in self.book.styles]
        self._fill(self.query_one(Input).value, keep=self.highlighted_name)

    @property
    def highlighted_name(self) -> str | None:
        index = self.query_one(OptionList).highlighted
        return self.shown[index] if index is not None and 0 <= index < len(self.shown) else None

    def _show_preview(self) -> None:
        preview = self.query_one("#style-preview", Static)
        name = self.highlighted_name
        if name is None:
            if self.book.problem:
                preview.update(f"{self.book.problem}")
            elif not self.book.styles:
                preview.update(
                    f"no styles in {one_line(str(self.book.path))} yet: ^s saves the prompt "
                    "and negative prompt as the first one"
                )
            else:
                preview.update("no style matches: backspace to widen the filter")
            return
        style = self.book.styles.get(name)
        if style is None:
            preview.update(
                f"{one_line(name)} is chosen but the styles file no longer holds it: "
                "space turns it off"
            )
            return
        text = Text()
        text.append("prompt   ", style="bold")
        text.append(one_line(style.prompt)[:PREVIEW_CHARS] or "(none)")
        text.append("\nnegative ", style="bold")
        text.append(one_line(style.negative_prompt)[:PREVIEW_CHARS] or "(none)")
        preview.update(text)

    @on(OptionList.OptionHighlighted)
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        self._show_preview()

    @on(Input.Changed)
    def _filter(self, event: Input.Changed) -> None:
        self._fill(event.value)

    # -- keys -------------------------------------------------------------------------------

    def action_move(self, delta: int) -> None:
        options = self.query_one(OptionList)
        if not self.shown:
            return
        current = options.highlighted or 0
        options.highlighted = max(0, min(len(self.shown) - 1, current + delta))

    def action_toggle_style(self) -> None:
        name = self.highlighted_name
        if name is None:
            return
        if name in self.selected:
            self.selected.remove(name)
        else:
            self.selected.append(name)
        query = self.query_one(Input).value
        self._fill(query, keep=name)

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_toggle_style()

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.action_toggle_style()

    def action_save(self) -> None:
        if self._save is not None:
            self._save(self.reload)

    def action_delete(self) -> None:
        name = self.highlighted_name
        if name is None or self._delete is None:
            return
        if name not in self.book.styles:
            self.action_toggle_style()  # a chosen name the file lost: delete just unchooses it
            return
        self._delete(name, self.reload)

    def action_done(self) -> None:
        self.dismiss(tuple(self.selected))
