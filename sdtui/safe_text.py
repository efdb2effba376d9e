"""Text from files and prompts, made safe to draw on a terminal.

A PNG's ``parameters`` chunk, a file name or a typed prompt can hold escape sequences: ``ESC
[2J`` wipes the screen, OSC 52 writes the user's clipboard, OSC 8 makes links, ``\\r`` and a
newline fake rows and prompts. Everything sdtui prints or draws that came from outside goes
through :func:`visible` (or :func:`one_line` where a newline would fake a row), which shows
control characters the way ``cat -v`` does (``ESC`` as ``^[``) instead of sending them.

Shown, not sent: C0 controls (but tab, and newline where allowed), DEL, C1 controls (``\\x9b``
is a one-byte CSI on some terminals), lone surrogates (undecodable bytes kept by
``surrogateescape``) and the bidirectional overrides that can reorder what a line seems to say.
"""

from __future__ import annotations

import re

_BIDI = "\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff{_BIDI}]")
_UNSAFE_LINE = re.compile(f"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff{_BIDI}]")


def _show(match: re.Match[str]) -> str:
    ch = match.group()
    code = ord(ch)
    if code < 0x20:
        return "^" + chr(code + 0x40)  # ESC -> ^[, CR -> ^M, NUL -> ^@
    if code == 0x7F:
        return "^?"
    if code <= 0x9F:
        return f"\\x{code:02x}"
    if 0xD800 <= code <= 0xDFFF:
        return f"\\x{code & 0xFF:02x}"  # a byte that was not UTF-8 (surrogateescape)
    return f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with every control character shown instead of sent (newlines and tabs kept)."""
    return _UNSAFE.sub(_show, text)


def one_line(text: str) -> str:
    """As :func:`visible`, and a newline shows as ``^J``: for a file name in a table row."""
    return _UNSAFE_LINE.sub(_show, text)


def has_controls(text: str) -> bool:
    """Whether :func:`visible` would change ``text``."""
    return _UNSAFE.search(text) is not None


_JSON_UNSAFE = re.compile(f"[\x7f-\x9f\ud800-\udfff\u2028\u2029{_BIDI}]")


def json_dumps(obj: object, **kwargs: object) -> str:
    """JSON that keeps non-ASCII text readable (``ensure_ascii=False``) yet holds no control
    character: json escapes C0 itself; DEL, C1, lone surrogates and bidi overrides are
    escaped here as ``\\uXXXX``, which every JSON reader decodes back."""
    import json

    text = json.dumps(obj, ensure_ascii=False, **kwargs)  # type: ignore[arg-type]
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
