"""Files from outside, read by the TUI without letting one of them hang or kill the app.

A PNG is input from anyone: its ``parameters`` chunk can hold ``Steps: abc`` or escape
sequences, it can declare 20000x20000 pixels in 100 KB (a decompression bomb), a zTXt chunk
can inflate past Pillow's limit, and a path can be a named pipe that blocks ``open`` forever.
Every TUI path that opens a file it did not write asks :func:`file_problem` first (regular
files only) and turns *any* exception into one sentence naming the file
(:func:`describe_failure`), so a bad file is a line in the job log, never a traceback.

Pure Python (no textual): ``sdtui.infotext`` and Pillow do the reading.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

from sdtui.errors import UserError
from sdtui.params import GenerationParams
from sdtui.safe_text import one_line
from sdtui.tui.form_spec import infotext_numbers

# Pillow's own warning threshold (~89 MP): above it a preview would decode hundreds of MB on
# the UI thread. Pillow refuses twice this (DecompressionBombError) by itself.
PREVIEW_MAX_PIXELS = 89_478_485
PREVIEW_MAX_BYTES = 256 * 1024 * 1024  # a file this large is not read into memory for a preview


def show(path: str | os.PathLike[str]) -> str:
    """A path as it may be drawn: control characters shown, not sent; one line."""
    return one_line(os.fspath(path))


def file_problem(path: str | os.PathLike[str], what: str = "") -> str | None:
    """Why ``path`` must not be opened (missing, a folder, a named pipe, a device, a socket),
    or None for a regular file. Never opens it: ``stat`` only."""
    from sdtui.image_files import check_regular_file

    try:
        check_regular_file(path, what or "image")
    except UserError as e:
        return e.message
    return None


def describe_failure(path: str | os.PathLike[str], error: BaseException) -> str:
    """One line naming the file and what is wrong with it, for any exception reading it."""
    from PIL import Image, UnidentifiedImageError

    from sdtui.image_files import text_too_large

    name = show(path)
    if isinstance(error, UserError):
        return one_line(error.message)
    if isinstance(error, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return (
            f"{name} declares more pixels than can be opened safely (a decompression bomb?): "
            "not opened"
        )
    text = one_line(str(error))
    if isinstance(error, ValueError) and text_too_large(error):
        return f"{name} holds a metadata text chunk too large to read: not opened"
    if isinstance(error, UnidentifiedImageError):
        return f"{name} is not an image Pillow can read: give a PNG, JPEG or WebP file"
    if isinstance(error, MemoryError):
        return f"{name} needs more memory than is free: not opened"
    if isinstance(error, OSError):
        why = one_line(error.strerror or "") or text or type(error).__name__
        return f"{name} cannot be read ({why})"
    return f"{name} cannot be read ({type(error).__name__}: {text[:200]})"


@contextmanager
def _quiet_pillow() -> Iterator[None]:
    """Pillow's bomb warning is printed to stderr: inside a TUI that is garbage on screen."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def read_infotext(path: str | os.PathLike[str]) -> str | None:
    """The file's infotext (None when it holds none). Anything wrong with the file is one
    ``UserError`` naming it: a pipe is refused before it is opened, any exception of the
    reader (Pillow's, or a bug) is caught here."""
    from sdtui import infotext

    problem = file_problem(path)
    if problem:
        raise UserError(problem)
    try:
        with _quiet_pillow():
            text = infotext.read_infotext(os.fspath(path))
    except Exception as e:  # noqa: BLE001 - a bad file is a sentence, never a crash
        raise UserError(describe_failure(path, e)) from None
    if text is not None and not isinstance(text, str):
        text = str(text)
    return text


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Width and height from the file's header (no pixel decoded); UserError when it is not
    a readable image."""
    from PIL import Image

    problem = file_problem(path)
    if problem:
        raise UserError(problem)
    try:
        with _quiet_pillow(), Image.open(path) as im:
            return im.size
    except Exception as e:  # noqa: BLE001 - see read_infotext
        raise UserError(describe_failure(path, e)) from None


# -- an infotext into the form ------------------------------------------------------------------

# infotext key -> the GenerationParams field it sets, and how its value parses
_NUMBERS = infotext_numbers()
_HIRES_KEYS = ("Hires upscale", "Hires steps")
_SIZE = re.compile(r"^\s*(\d{1,6})\s*[xX×]\s*(\d{1,6})\s*$")
_INT = re.compile(r"^\s*[+-]?\d{1,20}\s*$")


def _fields_of(key: str, pairs: dict[str, str]) -> tuple[str, ...]:
    if key == "Size":
        return ("width", "height")
    if key == "Denoising strength" and "Hires upscale" in pairs:
        return ("hr_denoising_strength",)
    if key in ("Sampler", "Schedule type"):
        return ("sampler", "schedule_type")
    if key in _NUMBERS:
        return (_NUMBERS[key][0],)
    return ()


def _clip(value: str) -> str:
    value = one_line(value)
    return repr(value if len(value) <= 40 else value[:39] + "…")


def _check_value(key: str, value: str) -> str | None:
    """Why ``key: value`` cannot go into the form (not a number, out of range), or None."""
    if key == "Size":
        match = _SIZE.match(value)
        if not match:
            return f"Size: {_clip(value)} is not WIDTHxHEIGHT"
        trial = GenerationParams().replace(width=int(match[1]), height=int(match[2]))
        errors = trial.field_errors()
        why = errors.get("width") or errors.get("height")
        return f"Size: {_clip(value)} ({one_line(why)})" if why else None
    name, kind = _NUMBERS[key]
    if kind is int and not _INT.match(value):
        return f"{key}: {_clip(value)} is not a whole number"
    try:
        number: Any = kind(value)
    except (ValueError, OverflowError):
        return f"{key}: {_clip(value)} is not a number"
    if isinstance(number, float) and not math.isfinite(number):
        return f"{key}: {_clip(value)} is not a number"
    trial = GenerationParams().replace(**{name: number})
    if key in _HIRES_KEYS:
        trial = trial.replace(enable_hr=True)
    why = trial.field_errors().get(name)
    return f"{key}: {_clip(value)} ({one_line(why)})" if why else None


def params_from_file(
    path: str | os.PathLike[str], current: GenerationParams
) -> tuple[GenerationParams, list[str]]:
    """The generation parameters stored in the image at ``path``, onto defaults as A1111 does,
    and one line per value that could not be used (``Steps: '-5' (steps -5 is out of range:
    use 1 to 500)``). A value that does not parse or is out of range keeps the form's current
    value; the valid keys apply. ``UserError`` (one sentence naming the file) when the file
    cannot be read or holds no parameters."""
    from sdtui.infotext import parse_infotext

    text = read_infotext(path)
    if text is None:
        raise UserError(
            f"{show(path)} holds no generation parameters (no PNG 'parameters' chunk or EXIF "
            "comment): it was not made by sdtui/A1111, or the metadata was stripped"
        )
    try:
        parsed = parse_infotext(text)
        pairs = dict(parsed.pairs)
        problems: list[str] = []
        kept: set[str] = set()  # fields that keep the form's value
        for key in [k for k in pairs if k in _NUMBERS or k == "Size"]:
            why = _check_value(key, pairs[key])
            if why:
                problems.append(why)
                kept.update(_fields_of(key, pairs))
                del pairs[key]
        params = GenerationParams.from_infotext_fields(parsed.prompt, parsed.negative_prompt, pairs)
        # what still does not check (an unknown sampler, a value the reader changed)
        from_file = {f for key in pairs for f in _fields_of(key, pairs)}
        for name, why in params.field_errors().items():
            if name in from_file and name not in kept:
                problems.append(one_line(why))
                kept.update(
                    ("sampler", "schedule_type")
                    if name in ("sampler", "schedule_type")
                    else (name,)
                )
    except Exception as e:  # noqa: BLE001 - a bug on a strange infotext is a sentence too
        raise UserError(
            f"{show(path)}: its parameters cannot be read ({type(e).__name__}: {one_line(str(e))[:200]})"
        ) from None
    known = {f.name for f in fields(GenerationParams)}
    restore = {name: getattr(current, name) for name in kept if name in known}
    return (params.replace(**restore) if restore else params), problems


def seed_from_file(path: str | os.PathLike[str]) -> int | None:
    """The seed stored in the image, or None (no file, no parameters, a bad value)."""
    try:
        params, _ = params_from_file(path, GenerationParams(seed=-1))
    except UserError:
        return None
    return params.seed if params.seed >= 0 else None


def is_regular_file(path: str | os.PathLike[str]) -> bool:
    return file_problem(path) is None
