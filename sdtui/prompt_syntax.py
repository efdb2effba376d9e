"""A1111 prompt syntax: attention weights, BREAK and extra-network tags.

Pure Python (no torch), shared by the UI (token counter, syntax highlighting) and the engine
(conditioning). The behaviour follows AUTOMATIC1111's ``modules/prompt_parser.py``
(``parse_prompt_attention``) and ``modules/extra_networks.py`` (``<name:args>`` tags),
quirks included, so that a prompt copied from A1111 means the same thing here:

- ``(text)`` multiplies the weight by 1.1, ``[text]`` divides it by 1.1, ``(text:1.3)`` sets
  the multiplier; brackets left open apply to the end of the prompt; a ``)`` or ``]`` with no
  opener is plain text.
- ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal characters; a lone ``\\`` is dropped.
- ``BREAK`` (upper case, a whole word) ends the current 75-token chunk; it comes back from the
  parser as ``("BREAK", -1.0)``.
- ``<lora:name:0.8>`` (also ``<lyco:...>``) is removed from the text and applies a LoRA; any
  other ``<word:args>`` tag is removed too, as A1111 does.

Prompt editing ``[from:to:when]`` and alternation ``[a|b]`` are scheduled per step before
this parser sees the text: sdtui.prompt_schedule. Not handled (the engine encodes it
literally): composable ``AND``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from sdtui.errors import UserError

# The same token grammar as A1111's re_attention (current master, which allows spaces around
# the weight number).
RE_ATTENTION = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
RE_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK_WEIGHT = -1.0
LORA_KINDS = ("lora", "lyco")

SpanKind = Literal["emphasis", "deemphasis", "weight", "lora", "break", "escape"]


class PromptSyntaxError(UserError, ValueError):
    """A weight in the prompt that is not a number, such as ``(word:1..2)``."""


@dataclass(frozen=True)
class LoraTag:
    """One ``<lora:name:weight>`` tag. ``weight`` is the text-encoder multiplier;
    ``unet_weight`` is None when the tag gives no separate UNet multiplier (same as weight)."""

    name: str
    weight: float = 1.0
    unet_weight: float | None = None


# -- attention ------------------------------------------------------------------------------


@dataclass
class _Walk:
    """The parser's state after one pass over a text, with source positions for highlighting."""

    pieces: list[list]  # [text, weight] as A1111 builds them, before merging
    piece_spans: list[tuple[int, int]]  # source span of each piece
    syntax: list[tuple[int, int, str]]  # bracket / weight / escape tokens


def _to_float(number: str, token: str) -> float:
    try:
        return float(number)
    except ValueError:
        raise PromptSyntaxError(
            f"the weight {number!r} in {token!r} is not a number: write it like (word:1.2)"
        ) from None


def _walk(text: str, *, strict: bool = True) -> _Walk:
    """Run A1111's attention parser over ``text``. With ``strict`` False an unreadable weight
    number is taken as plain text instead of raising (for the live editor)."""
    pieces: list[list] = []
    spans: list[tuple[int, int]] = []
    syntax: list[tuple[int, int, str]] = []
    # open brackets: (index of the first piece they cover, index into ``syntax``)
    round_open: list[tuple[int, int]] = []
    square_open: list[tuple[int, int]] = []

    def multiply(start: int, factor: float) -> None:
        for p in range(start, len(pieces)):
            pieces[p][1] *= factor

    def add_text(token: str, offset: int) -> None:
        # plain text, split at BREAK
        pos = 0
        for m in RE_BREAK.finditer(token):
            pieces.append([token[pos : m.start()], 1.0])
            spans.append((offset + pos, offset + m.start()))
            word = m.group(0)
            lead = len(word) - len(word.lstrip())
            pieces.append(["BREAK", BREAK_WEIGHT])
            spans.append((offset + m.start() + lead, offset + m.start() + lead + 5))
            pos = m.end()
        pieces.append([token[pos:], 1.0])
        spans.append((offset + pos, offset + len(token)))

    for m in RE_ATTENTION.finditer(text):
        token = m.group(0)
        number = m.group(1)
        start, end = m.span()
        weight: float | None = None
        if number is not None and round_open:
            if strict:
                weight = _to_float(number, token)
            else:
                try:
                    weight = float(number)
                except ValueError:
                    weight = None
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])
            spans.append((start + 1, end))
            syntax.append((start, start + 1, "escape"))
        elif token == "(":
            round_open.append((len(pieces), len(syntax)))
            syntax.append((start, end, "emphasis"))
        elif token == "[":
            square_open.append((len(pieces), len(syntax)))
            syntax.append((start, end, "deemphasis"))
        elif weight is not None:
            first, opener = round_open.pop()
            multiply(first, weight)
            kind = "emphasis" if weight >= 1 else "deemphasis"
            syntax[opener] = (*syntax[opener][:2], kind)
            syntax.append((start, end, "weight"))
        elif token == ")" and round_open:
            multiply(round_open.pop()[0], ROUND_MULTIPLIER)
            syntax.append((start, end, "emphasis"))
        elif token == "]" and square_open:
            multiply(square_open.pop()[0], SQUARE_MULTIPLIER)
            syntax.append((start, end, "deemphasis"))
        else:
            add_text(token, start)

    for first, _ in round_open:
        multiply(first, ROUND_MULTIPLIER)
    for first, _ in square_open:
        multiply(first, SQUARE_MULTIPLIER)
    return _Walk(pieces, spans, syntax)


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into (text, weight) runs exactly as A1111 does; ``BREAK`` comes back as
    ``("BREAK", -1.0)``. Raises PromptSyntaxError for a weight that is not a number."""
    res = _walk(text).pieces
    if not res:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):  # merge runs of identical weights
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return [(t, float(w)) for t, w in res]


# -- extra networks -------------------------------------------------------------------------


def plain_text(text: str) -> str:
    """The prompt without A1111's syntax, as a text encoder that takes no weights reads it:
    "(cat:1.3)" reads "cat", BREAK becomes a space, whitespace is collapsed."""
    runs = parse_prompt_attention(text)
    return " ".join(
        "".join(" " if (t, w) == ("BREAK", BREAK_WEIGHT) else t for t, w in runs).split()
    )


def strip_extra_networks(text: str) -> str:
    """``text`` with every ``<name:args>`` tag removed (never raises)."""
    return RE_EXTRA_NETWORK.sub("", text)


def _lora_from_args(args: str, tag: str) -> LoraTag:
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in args.split(":"):
        parts = item.split("=", 2)
        if len(parts) == 2:
            named[parts[0]] = parts[1]
        else:
            positional.append(item)
    name = positional[0] if positional else ""

    def number(value: str) -> float:
        try:
            return float(value)
        except ValueError:
            raise PromptSyntaxError(
                f"the LoRA weight {value!r} in {tag!r} is not a number: write it like "
                "<lora:name:0.8>"
            ) from None

    te = number(positional[1]) if len(positional) > 1 else 1.0
    te = number(named["te"]) if "te" in named else te
    unet: float | None = number(positional[2]) if len(positional) > 2 else None
    unet = number(named["unet"]) if "unet" in named else unet
    return LoraTag(name=name, weight=te, unet_weight=unet)


def extract_lora_tags(text: str) -> tuple[str, list[LoraTag]]:
    """Remove extra-network tags as A1111 does and return (text, LoRA tags in order).

    ``<lora:name>`` has weight 1.0; ``<lora:name:te:unet>`` and ``te=``/``unet=`` forms give
    separate multipliers. ``<lyco:...>`` is a LoRA too. Other tags are removed and ignored.
    Raises PromptSyntaxError for a weight that is not a number."""
    tags: list[LoraTag] = []
    for m in RE_EXTRA_NETWORK.finditer(text):
        if m.group(1) in LORA_KINDS:
            tags.append(_lora_from_args(m.group(2), m.group(0)))
    return strip_extra_networks(text), tags


# -- highlighting ---------------------------------------------------------------------------


def _runs(index_map: list[int], start: int, end: int) -> list[tuple[int, int]]:
    """Map the stripped-text range [start, end) to contiguous ranges of the original text."""
    out: list[tuple[int, int]] = []
    if start >= end:
        return out
    run_start = prev = index_map[start]
    for i in range(start + 1, end):
        cur = index_map[i]
        if cur != prev + 1:
            out.append((run_start, prev + 1))
            run_start = cur
        prev = cur
    out.append((run_start, prev + 1))
    return out


def highlight_spans(text: str) -> list[tuple[int, int, SpanKind]]:
    """Spans (start, end, kind) of ``text`` for syntax highlighting, sorted and disjoint.

    - "lora": a whole ``<lora:...>`` / ``<lyco:...>`` tag;
    - "escape": the backslash of ``\\(`` and friends;
    - "break": the word BREAK where it ends a chunk;
    - "weight": the ``:1.3)`` that closes an explicit weight;
    - "emphasis" / "deemphasis": text whose weight ends up above / below 1, and the brackets
      that raise / lower it.
    Text at weight 1 has no span. Never raises: a bad weight number shows as plain text.
    """
    lora: list[tuple[int, int, SpanKind]] = []
    index_map: list[int] = []
    pos = 0
    for m in RE_EXTRA_NETWORK.finditer(text):
        index_map.extend(range(pos, m.start()))
        if m.group(1) in LORA_KINDS:
            lora.append((m.start(), m.end(), "lora"))
        pos = m.end()
    index_map.extend(range(pos, len(text)))
    stripped = "".join(text[i] for i in index_map)

    walk = _walk(stripped, strict=False)
    raw: list[tuple[int, int, str]] = list(walk.syntax)
    for (piece, weight), (s, e) in zip(walk.pieces, walk.piece_spans, strict=True):
        if s >= e:
            continue
        if piece == "BREAK" and weight == BREAK_WEIGHT:
            raw.append((s, e, "break"))
        elif weight > 1:
            raw.append((s, e, "emphasis"))
        elif weight < 1:
            raw.append((s, e, "deemphasis"))

    spans: list[tuple[int, int, SpanKind]] = list(lora)
    for s, e, kind in raw:
        for os_, oe in _runs(index_map, s, e):
            spans.append((os_, oe, kind))  # type: ignore[arg-type]
    spans.sort()

    merged: list[tuple[int, int, SpanKind]] = []
    for s, e, kind in spans:
        if merged and merged[-1][2] == kind and merged[-1][1] == s and kind != "lora":
            merged[-1] = (merged[-1][0], e, kind)
        else:
            merged.append((s, e, kind))
    return merged
