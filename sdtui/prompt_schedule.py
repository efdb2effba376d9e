"""A1111 prompt editing: ``[from:to:when]`` and alternation ``[a|b]``, scheduled per step.

This follows AUTOMATIC1111's ``modules/prompt_parser.py``
(``get_learned_conditioning_prompt_schedules`` and ``reconstruct_cond_batch``) without its lark
dependency: the grammar is small enough for the recursive-descent parser below, which gives the
same schedules (checked against the lark grammar on the doctest table and on random prompts).

The grammar, as A1111 writes it::

    start: (prompt | /[][():]/+)*
    prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
    emphasized: "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
    scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
    alternate: "[" prompt ("|" [prompt])+ "]"
    plain: /([^\\\\\\[\\]():|]|\\\\.)+/

Outside brackets a stray ``[ ] ( ) :`` is text; a prompt the grammar cannot read at all (a
``|`` outside an alternation, a lone trailing backslash) is kept whole as one literal prompt.

Steps: ``when`` with a decimal point is a fraction of the steps, without one a step number;
a schedule is a list of ``[end_at_step, text]``. The sampler's model calls are counted from 0,
and call ``k`` uses the first entry with ``k <= end_at_step`` (``text_at``), as A1111's
``reconstruct_cond_batch`` does with its denoiser's step counter.

No torch here: the engine encodes each distinct text once (sdtui.engine.conditioning).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = [
    "get_learned_conditioning_prompt_schedules",
    "has_prompt_editing",
    "prompt_schedule",
    "text_at",
]

_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
# lark's common.SIGNED_NUMBER, with the optional whitespace around it and the closing bracket
_NUMBER_CLOSE = re.compile(r"\s*([+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*\]")


@dataclass
class _Scheduled:
    before: list[_Node] | None
    after: list[_Node]
    number: str
    when: int = 0  # set by _collect_steps


@dataclass
class _Alternate:
    options: list[list[_Node]]


_Node = str | _Scheduled | _Alternate


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.n = len(text)

    def char(self, i: int) -> str:
        return self.s[i] if i < self.n else ""

    def prompt(self, i: int) -> tuple[list[_Node], int]:
        """The longest ``prompt`` from ``i``: stops at a character it cannot take."""
        items: list[_Node] = []
        while i < self.n:
            c = self.s[i]
            if c == "[":
                got = self.bracket(i)
            elif c == "(":
                got = self.paren(i)
            else:
                m = _PLAIN.match(self.s, i)
                got = ([m.group(0)], m.end()) if m else None
            if got is None:
                break
            items.extend(got[0])
            i = got[1]
        return items, i

    def bracket(self, i: int) -> tuple[list[_Node], int] | None:
        first, j = self.prompt(i + 1)
        c = self.char(j)
        if c == "]":  # emphasized: kept as text, brackets and all
            return ["[", *first, "]"], j + 1
        if c == "|":
            options = [first]
            while self.char(j) == "|":
                option, j = self.prompt(j + 1)
                options.append(option)
            if self.char(j) != "]":
                return None
            return [_Alternate(options)], j + 1
        if c != ":":
            return None
        m = _NUMBER_CLOSE.match(self.s, j + 1)
        if m:  # [to:when]
            return [_Scheduled(None, first, m.group(1))], m.end()
        second, k = self.prompt(j + 1)
        if self.char(k) != ":":
            return None
        m = _NUMBER_CLOSE.match(self.s, k + 1)
        if not m:
            return None
        return [_Scheduled(first, second, m.group(1))], m.end()

    def paren(self, i: int) -> tuple[list[_Node], int] | None:
        first, j = self.prompt(i + 1)
        c = self.char(j)
        if c == ")":
            return ["(", *first, ")"], j + 1
        if c != ":":
            return None
        second, k = self.prompt(j + 1)
        if self.char(k) != ")":
            return None
        return ["(", *first, ":", *second, ")"], k + 1

    def start(self) -> list[_Node] | None:
        """The whole prompt, or None where the grammar cannot read it."""
        nodes: list[_Node] = []
        i = 0
        while i < self.n:
            items, i = self.prompt(i)
            nodes.extend(items)
            if i >= self.n:
                break
            c = self.s[i]
            if c not in "[]():":
                return None  # a "|" outside an alternation, a backslash at the end
            nodes.append(c)  # a stray bracket or colon: text
            i += 1
        return nodes


def _walk(nodes: list[_Node]):  # every scheduled / alternate node, nested ones too
    for node in nodes:
        if isinstance(node, _Scheduled):
            yield node
            if node.before is not None:
                yield from _walk(node.before)
            yield from _walk(node.after)
        elif isinstance(node, _Alternate):
            yield node
            for option in node.options:
                yield from _walk(option)


def _text(nodes: list[_Node], step: int) -> str:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            if step <= node.when:
                out.append(_text(node.before, step) if node.before is not None else "")
            else:
                out.append(_text(node.after, step))
        else:
            out.append(_text(node.options[(step - 1) % len(node.options)], step))
    return "".join(out)


def prompt_schedule(
    prompt: str, base_steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False
) -> list[list]:
    """``[[end_at_step, text], ...]`` for one prompt, as A1111's
    ``get_learned_conditioning_prompt_schedules([prompt], ...)[0]``. With ``hires_steps`` (the
    hires pass), a step number counts on from the first pass's ``base_steps`` and a fraction
    from 1.0 (``[a:b:1.5]`` switches halfway through the hires pass)."""
    if hires_steps is None or use_old_scheduling:
        int_offset, flt_offset, steps = 0, 0.0, base_steps
    else:
        int_offset, flt_offset, steps = base_steps, 1.0, hires_steps
    tree = _Parser(prompt).start()
    if tree is None:
        return [[steps, prompt]]
    ends = {steps}
    for node in _walk(tree):
        if isinstance(node, _Alternate):
            ends.update(range(1, steps + 1))
            continue
        s = node.number
        v = float(s)
        if use_old_scheduling:
            v = v * steps if v < 1 else v
        elif "." in s:
            v = (v - flt_offset) * steps
        else:
            v = v - int_offset
        # A1111 would raise on an infinite number (int(inf)); here it is "never" / "always"
        when = min(steps, int(v)) if math.isfinite(v) else (steps if v > 0 else -1)
        node.when = when
        if when >= 1:
            ends.add(when)
    return [[t, _text(tree, t)] for t in sorted(ends)]


def get_learned_conditioning_prompt_schedules(
    prompts: list[str],
    base_steps: int,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
) -> list[list[list]]:
    """A1111's function of this name: one schedule per prompt."""
    cache = {
        p: prompt_schedule(p, base_steps, hires_steps, use_old_scheduling) for p in set(prompts)
    }
    return [cache[p] for p in prompts]


def text_at(schedule: list[list], step: int) -> str:
    """The text for the sampler's model call ``step`` (from 0): the first entry with
    ``step <= end_at_step``, else the first entry (A1111's ``reconstruct_cond_batch``)."""
    for end, text in schedule:
        if step <= end:
            return text
    return schedule[0][1]


def has_prompt_editing(prompt: str, schedule: list[list]) -> bool:
    """Whether ``schedule`` (of ``prompt``) is anything but the prompt itself, whole."""
    return len(schedule) != 1 or schedule[0][1] != prompt


# A1111 prompt_parser.py: composable diffusion, "a cat AND a dog:0.5"
_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """The subprompts of a composable prompt and their weights, as A1111's
    ``get_multicond_prompt_list`` reads one prompt: split on the word ``AND`` (upper case), a
    trailing ``:number`` is the weight (default 1). A prompt without ``AND`` is one part of
    weight 1 (its text without a trailing weight, so ``a cat:1.5`` alone weighs 1.5 too)."""
    parts: list[tuple[str, float]] = []
    for sub in _AND.split(prompt):
        m = _WEIGHT.search(sub)
        if m is None:
            parts.append((sub, 1.0))
            continue
        text, weight = m.groups()
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts
