"""A1111 "infotext": the text stored with every image (PNG ``parameters`` chunk, or the EXIF
UserComment of a JPEG/WebP) and shown under it in the web UI.

Writes exactly what A1111's ``create_infotext`` (modules/processing.py) writes and reads it the
way ``parse_generation_parameters`` (modules/infotext_utils.py) does::

    <prompt, may span lines>
    Negative prompt: <negative, may span lines>      (line left out when empty)
    Steps: 30, Sampler: Euler a, CFG scale: 7, Seed: 2089545485, Size: 512x512, ...

No torch, no textual: the CLI, the UI and the engine all import this.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdtui.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

    from sdtui.params import GenerationParams

# modules/infotext_utils.py, verbatim
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
NEGATIVE_PREFIX = "Negative prompt:"

# What A1111 assumes for a key the line leaves out (parse_generation_parameters).
A1111_DEFAULTS: dict[str, str] = {
    "Clip skip": "1",
    "Schedule type": "Automatic",
    "RNG": "GPU",
    "Hires sampler": "Use same sampler",
    "Hires checkpoint": "Use same checkpoint",
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": "32",
    "VAE Encoder": "Full",
    "VAE Decoder": "Full",
    "FP8 weight": "Disable",
}

# EXIF: the Exif sub-IFD pointer and the UserComment tag inside it
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
# piexif.helper.UserComment prefixes (8 bytes: character code, NUL padded)
_UC_PREFIXES = {
    b"UNICODE\x00": "utf_16_be",
    b"ASCII\x00\x00\x00": "ascii",
    b"JIS\x00\x00\x00\x00\x00": "shift_jis",
}


@dataclass(frozen=True)
class ParsedInfotext:
    prompt: str
    negative_prompt: str
    pairs: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, default: str | None = None) -> str | None:
        """A pair's value; else what A1111 assumes when the key is missing; else ``default``."""
        if key in self.pairs:
            return self.pairs[key]
        return A1111_DEFAULTS.get(key, default)


# -- writing ---------------------------------------------------------------------------------


def quote(value: object) -> str:
    """A1111's ``quote``: JSON-quote a value holding ``,`` ``:`` or a newline."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return json.dumps(text, ensure_ascii=False)


def format_pairs(pairs: Mapping[str, object]) -> str:
    """The parameter line: ``key: value`` joined by ``", "``; None dropped; key==value bare."""
    return ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in pairs.items() if v is not None)


def format_infotext(prompt: str, negative_prompt: str, pairs: Mapping[str, object]) -> str:
    """The whole infotext, laid out as A1111's ``create_infotext`` does."""
    negative = f"\n{NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{format_pairs(pairs)}".strip()


def append_pairs(existing: str | None, pairs: Mapping[str, object]) -> str:
    """``existing`` infotext with ``pairs`` appended to its parameter line, as A1111's Extras
    tab does with its "Postprocess ..." pairs.

    With no existing infotext, just the pairs. If it has no parameter line (a last line with
    fewer than 3 ``key: value`` pairs, or the negative prompt), the pairs go on a line of
    their own.
    """
    line = format_pairs(pairs)
    if not existing or not existing.strip():
        return line
    text = existing.rstrip("\n")
    last = text.rsplit("\n", 1)[-1]
    if last.count(": ") >= 3 and not last.startswith(NEGATIVE_PREFIX):
        return f"{text}, {line}"
    return f"{text}\n{line}"


# -- reading ---------------------------------------------------------------------------------


def unquote(text: str) -> str:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def parse_pairs(line: str) -> dict[str, str]:
    """``key: value, ...`` -> dict of raw strings (quoted values unquoted)."""
    pairs: dict[str, str] = {}
    for key, value in RE_PARAM.findall(line):
        if not value:
            continue  # A1111 fails on an empty value and skips the pair
        if value[0] == '"' and value[-1] == '"':
            value = unquote(value)
        pairs[key] = value
    return pairs


def parse_infotext(text: str) -> ParsedInfotext:
    """Split an infotext into prompt, negative prompt and the raw key/value pairs.

    As A1111: the last line is the parameter line only when it holds at least 3 pairs;
    every line before ``Negative prompt:`` belongs to the prompt, every line from it on to
    the negative prompt. Lines are stripped. Missing keys are not filled in here (see
    ``ParsedInfotext.get`` and ``A1111_DEFAULTS``).
    """
    *lines, lastline = text.replace("\r\n", "\n").strip().split("\n")
    if len(RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""

    prompt = ""
    negative = ""
    done_with_prompt = False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE_PREFIX):
            done_with_prompt = True
            line = line[len(NEGATIVE_PREFIX) :].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    return ParsedInfotext(prompt=prompt, negative_prompt=negative, pairs=parse_pairs(lastline))


def decode_user_comment(data: bytes | str) -> str:
    """An EXIF UserComment as piexif writes it (8-byte character-code prefix + body).

    A1111 writes ``UNICODE\\0`` + UTF-16 big-endian (piexif); a few tools write little-endian
    with the same prefix, which is detected by where the zero bytes sit.
    """
    if isinstance(data, str):
        return data.strip("\x00")
    prefix, body = data[:8], data[8:]
    encoding = _UC_PREFIXES.get(prefix)
    if encoding == "utf_16_be":
        if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return body.decode("utf_16", errors="replace")
        even_zeros = body[0::2].count(0)
        odd_zeros = body[1::2].count(0)
        if odd_zeros > even_zeros:
            encoding = "utf_16_le"
        return body.decode(encoding, errors="replace").rstrip("\x00")
    if encoding is not None:
        return body.decode(encoding, errors="replace").rstrip("\x00")
    # undefined prefix or none at all: what A1111 does when piexif gives up
    return data.decode("utf8", errors="ignore").strip("\x00")


def read_infotext(path: str | Path) -> str | None:
    """The infotext stored in an image file, or None when it holds none (precedence: see
    :func:`infotext_from_image`).

    Only headers and text chunks are read, never the pixels; a bad file (not an image, a
    named pipe, a text chunk over 1 MB, a decompression bomb) is one UserError sentence.
    """
    from sdtui.image_files import open_image_file

    # no pixel limit: the pixels are not decoded here (Pillow's own bomb check stays on)
    im = open_image_file(path, "image", load=False, check_size=False)
    try:
        return infotext_from_image(im, path)
    finally:
        im.close()


def infotext_from_image(im: Image.Image, path: str | Path | None = None) -> str | None:
    """The infotext of an opened image, or None: the one reader every part of sdtui uses.

    As A1111's ``read_info_from_image`` (modules/images.py): the PNG ``parameters`` text
    chunk is taken first; then, when the image carries EXIF (JPEG, WebP, a PNG with an eXIf
    chunk), a non-empty EXIF UserComment replaces it. So the comment wins when an image has
    both. ``path`` only names the file in messages.
    """
    info = dict(im.info or {})
    geninfo = info.get("parameters")
    if geninfo is None and getattr(im, "format", None) == "PNG":
        # text chunks after the image data only show up once the file is read
        geninfo = _late_png_text(im, path if path is not None else "image")
    if "exif" in info:
        comment = _exif_user_comment(im)
        if comment:
            geninfo = comment
    if isinstance(geninfo, bytes):
        geninfo = geninfo.decode("utf8", errors="replace")
    if geninfo is not None and not isinstance(geninfo, str):
        geninfo = str(geninfo)
    return geninfo if geninfo else None


def _exif_user_comment(im: Image.Image) -> str | None:
    try:
        raw = im.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception:  # noqa: BLE001 - a broken EXIF block is no reason to fail
        return None
    return decode_user_comment(raw) if raw else None


def _late_png_text(im: Any, path: str | Path) -> str | None:
    """``im.text`` reads the rest of the file (and decodes the pixels) to find text chunks
    written after the image data: as bad as the pixels can be, so it answers in a sentence."""
    from sdtui.image_files import max_pixels, show, text_too_large

    if im.width * im.height > max_pixels(None):
        return None  # finding them would decode a huge image: A1111 writes them first anyway
    try:
        return im.text.get("parameters")
    except ValueError as e:
        if text_too_large(e):
            raise UserError(
                f"image {show(path)} holds a metadata text chunk too large to read (over 1 MB): "
                "it was not written by sdtui or A1111; strip its metadata or give another file"
            ) from None
        raise UserError(f"image {show(path)} is damaged: give another file") from None
    except MemoryError:
        raise UserError(f"image {show(path)} is too large to read: give another file") from None
    except Exception:  # noqa: BLE001 - a damaged tail after the pixels: no parameters
        return None


def params_from_image(path: str | Path) -> GenerationParams:
    """The generation parameters stored in an image (ours or A1111's)."""
    from sdtui.params import GenerationParams

    text = read_infotext(path)
    if text is None:
        raise UserError(
            f"{path} holds no generation parameters (no PNG 'parameters' chunk or EXIF "
            "comment): it was not made by sdtui/A1111, or the metadata was stripped"
        )
    parsed = parse_infotext(text)
    return GenerationParams.from_infotext_fields(
        parsed.prompt, parsed.negative_prompt, parsed.pairs
    )
