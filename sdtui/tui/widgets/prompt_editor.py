"""Prompt and negative prompt: multi-line, A1111 syntax coloured, with token counters; under
them, one line naming the chosen styles (shown only when there are some)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from rich.style import Style
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, TextArea
from textual.widgets.text_area import Edit, EditResult, TextAreaTheme

from sdtui.prompt_syntax import highlight_spans
from sdtui.safe_text import has_controls, visible
from sdtui.styles import apply_styles_to_prompt
from sdtui.tokens import count_t5_tokens, count_tokens
from sdtui.tui.messages import PromptChanged
from sdtui.tui.widgets.text_line import TextLine

THEME_NAME = "sdtui-prompt"
# one style per prompt_syntax span kind
SPAN_STYLES: dict[str, Style] = {
    "emphasis": Style(color="#f0c674", bold=True),
    "deemphasis": Style(color="#81a2be", italic=True),
    "weight": Style(color="#de935f"),
    "lora": Style(color="#b294bb", bold=True),
    "break": Style(color="#cc6666", bold=True, reverse=True),
    "escape": Style(color="#707880"),
}


def drawable(text: str) -> str:
    """``text`` as the prompt keeps it: line ends as newlines, every other control character
    shown (``ESC`` as ``^[``). TextArea draws its document as it is, so an escape sequence
    pasted or loaded from a PNG would reach the terminal: it never gets into the document."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return visible(text) if has_controls(text) else text


class PromptArea(TextArea):
    """A TextArea that colours A1111 prompt syntax with ``prompt_syntax.highlight_spans``.

    No tree-sitter grammar exists for prompts, so the highlight map is filled from the spans
    directly (TextArea keeps it per line, in UTF-8 byte offsets)."""

    DEFAULT_CSS = """
    PromptArea {
        height: auto; min-height: 2; max-height: 6; border: none; padding: 0 1 0 0;
        border-left: blank; background: $boost;
    }
    /* focused: a bar at the left, in a colour that reads in every theme */
    PromptArea:focus { border: none; border-left: outer $text-primary; background: $primary 15%; }
    """

    def __init__(self, text: str = "", *, id: str | None = None) -> None:
        super().__init__(text, id=id, soft_wrap=True, tab_behavior="focus", show_line_numbers=False)
        self.register_theme(TextAreaTheme(name=THEME_NAME, syntax_styles=dict(SPAN_STYLES)))
        self.theme = THEME_NAME

    # every way text gets in (typing, paste, insert, load_text, the text setter) goes
    # through one of these two
    def _set_document(self, text: str, language: str | None) -> None:
        super()._set_document(drawable(text), language)

    def edit(self, edit: Edit) -> EditResult:
        if edit.text:
            edit.text = drawable(edit.text)
        return super().edit(edit)

    def _build_highlight_map(self) -> None:
        highlights = getattr(self, "_highlights", None)
        cache = getattr(self, "_line_cache", None)
        if cache is not None:
            cache.clear()
        if not isinstance(highlights, defaultdict):  # a Textual without this internal: plain text
            return
        highlights.clear()
        lines = self.document.lines
        starts: list[int] = []
        pos = 0
        for line in lines:
            starts.append(pos)
            pos += len(line) + 1
        text = "\n".join(lines)
        row = 0
        for start, end, kind in highlight_spans(text):
            while row + 1 < len(starts) and starts[row + 1] <= start:
                row += 1
            r = row
            s = start
            while s < end and r < len(lines):
                line_end = starts[r] + len(lines[r])
                e = min(end, line_end)
                line = lines[r]
                b0 = len(line[: s - starts[r]].encode())
                b1 = len(line[: e - starts[r]].encode())
                if b1 > b0:
                    highlights[r].append((b0, b1, kind))
                r += 1
                if r < len(starts):
                    s = max(s, starts[r])


class PromptEditor(Vertical):
    """Both prompts. Posts PromptChanged on every edit; counts tokens off the UI thread."""

    DEFAULT_CSS = """
    PromptEditor { height: auto; }
    PromptEditor .prompt-head { height: 1; }
    PromptEditor .prompt-label { width: 1fr; color: $text-muted; }
    PromptEditor .token-count { width: 9; text-align: right; color: $text-muted; }
    PromptEditor .token-count.over { color: $warning; }
    PromptEditor #styles-line { height: 1; color: $text-accent; display: none; }
    PromptEditor #styles-line.-on { display: block; }
    """

    def __init__(
        self, prompt: str = "", negative_prompt: str = "", *, key: str = "", id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self._initial = (prompt, negative_prompt)
        self._key = key  # the key that moves here, shown after "Prompt"
        # (name, vectors) of the embeddings on disk: each counts as its vectors, as in A1111
        self._embedding_sizes: tuple[tuple[str, int], ...] = ()
        self._t5_limit: int | None = None  # Flux.1 / SD3.5: T5's sequence length
        # the chosen styles' texts: the counters count the prompts as they will be sent, as
        # A1111's do
        self._style_texts: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    def set_t5_limit(self, limit: int | None) -> None:
        """Count as the model reads the prompt: T5 tokens of one ``limit``-long sequence
        (Flux.1, SD3.5), or None for CLIP's 75-token chunks."""
        if limit != self._t5_limit:
            self._t5_limit = limit
            self._count(*self.texts)

    def set_embedding_sizes(self, sizes: tuple[tuple[str, int], ...]) -> None:
        if sizes != self._embedding_sizes:
            self._embedding_sizes = sizes
            self._count(*self.texts)

    def compose(self) -> ComposeResult:
        with Horizontal(classes="prompt-head"):
            yield Label(f"Prompt {self._key}".strip(), classes="prompt-label")
            yield TextLine("", id="prompt-tokens", classes="token-count")
        yield PromptArea(self._initial[0], id="prompt")
        with Horizontal(classes="prompt-head"):
            yield Label("Negative prompt", classes="prompt-label")
            yield TextLine("", id="negative-tokens", classes="token-count")
        yield PromptArea(self._initial[1], id="negative")
        yield TextLine("", id="styles-line")

    def on_mount(self) -> None:
        self._count(*self.texts)

    @property
    def texts(self) -> tuple[str, str]:
        return (
            self.query_one("#prompt", PromptArea).text,
            self.query_one("#negative", PromptArea).text,
        )

    def set_texts(self, prompt: str, negative_prompt: str) -> None:
        self.query_one("#prompt", PromptArea).load_text(prompt)
        self.query_one("#negative", PromptArea).load_text(negative_prompt)

    def replace_texts(self, prompt: str, negative_prompt: str) -> None:
        """As ``set_texts``, as an edit: ctrl+z in a box takes its old text back."""
        for area_id, text in (("#prompt", prompt), ("#negative", negative_prompt)):
            area = self.query_one(area_id, PromptArea)
            if area.text != text:
                area.replace(text, (0, 0), area.document.end)

    def show_styles(
        self, line: str, prompts: Sequence[str] = (), negatives: Sequence[str] = ()
    ) -> None:
        """``line`` under the prompts (none: the line is hidden); the counters count the
        prompts with these style texts applied."""
        label = self.query_one("#styles-line", TextLine)
        label.update(line)
        label.set_class(bool(line), "-on")
        texts = (tuple(prompts), tuple(negatives))
        if texts != self._style_texts:
            self._style_texts = texts
            self._count(*self.texts)

    @on(TextArea.Changed)
    def _changed(self, event: TextArea.Changed) -> None:
        event.stop()
        prompt, negative = self.texts
        self.post_message(PromptChanged(prompt, negative))
        self._count(prompt, negative)

    @work(thread=True, exclusive=True, group="token-count")
    def _count(self, prompt: str, negative: str) -> None:
        # the tokenizer takes ~0.1 s to build the first time: never on the UI thread
        sizes = self._embedding_sizes
        style_prompts, style_negatives = self._style_texts
        prompt = apply_styles_to_prompt(prompt, style_prompts)
        negative = apply_styles_to_prompt(negative, style_negatives)
        limit = self._t5_limit
        if limit is not None:
            counts = (count_t5_tokens(prompt, limit), count_t5_tokens(negative, limit))
        else:
            counts = (count_tokens(prompt, sizes), count_tokens(negative, sizes))
        self.app.call_from_thread(self._show_counts, *counts)

    def _show_counts(self, *counts: object) -> None:
        for label_id, count in zip(("#prompt-tokens", "#negative-tokens"), counts, strict=True):
            label = self.query_one(label_id, TextLine)
            label.update(str(count))
            label.set_class(getattr(count, "chunks", 1) > 1, "over")
