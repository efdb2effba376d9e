"""Opening image files someone else made, safely (no torch here).

An image file is input from outside: a 41 KB PNG can claim 12000x12000 (1.7 GB once decoded),
a text chunk can inflate to gigabytes, a path can be a named pipe that blocks ``open`` forever.
Every image sdtui reads (init images, images to upscale, images whose parameters are read)
comes through :func:`check_image_file` and :func:`open_image_file`, which answer with one
:class:`~sdtui.errors.UserError` sentence that names the file and the fix.

The pixel limit is ``max_image_megapixels`` in the settings (default 64 MP: 8192x8192);
Pillow's own bomb check (about 179 MP) stays on above it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sdtui.config import DEFAULT_MAX_IMAGE_MEGAPIXELS
from sdtui.errors import UserError
from sdtui.safe_text import one_line

if TYPE_CHECKING:
    from PIL import Image

RAISE_HINT = (
    "raise max_image_megapixels in config.toml (or SDTUI_MAX_IMAGE_MEGAPIXELS) if you mean it"
)


def show(path: str | os.PathLike[str]) -> str:
    """A path as it may be printed: control characters shown, not sent."""
    return one_line(str(path))


def check_regular_file(path: str | os.PathLike[str], what: str = "image") -> Path:
    """``path`` if it is a regular file we may open; a sentence otherwise. A named pipe or a
    device would block or stream forever, so they are refused before ``open``."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UserError(f"{what} {show(p)} does not exist: check the path") from None
    except PermissionError:
        raise UserError(
            f"{what} {show(p)} cannot be read (permission denied): fix its permissions"
        ) from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise UserError(
            f"{what} {show(p)} cannot be read ({one_line(getattr(e, 'strerror', None) or str(e))}): check the path"
        ) from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(
            f"{what} {show(p)} is a folder, not a file: give the path of a PNG, JPEG or WebP file"
        )
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a named pipe"
            if stat.S_ISFIFO(st.st_mode)
            else "a socket"
            if stat.S_ISSOCK(st.st_mode)
            else "a device"
        )
        raise UserError(
            f"{what} {show(p)} is {kind}, not a file: give the path of a PNG, JPEG or WebP file"
        )
    return p


def max_pixels(megapixels: float | None) -> int:
    """The pixel limit of ``megapixels`` (None: the default setting)."""
    return int((megapixels or DEFAULT_MAX_IMAGE_MEGAPIXELS) * 1_000_000)


def check_pixels(width: int, height: int, megapixels: float | None, what: str) -> None:
    """Refuse ``width`` x ``height`` above the limit, before any pixel is allocated."""
    limit = max_pixels(megapixels)
    if width * height > limit:
        raise UserError(
            f"{what} is {width}x{height} ({width * height / 1e6:.0f} MP), more than the "
            f"{limit / 1e6:g} MP sdtui allows: use a smaller image, or {RAISE_HINT}"
        )


def open_image_file(
    path: str | os.PathLike[str],
    what: str = "image",
    megapixels: float | None = None,
    load: bool = True,
    check_size: bool = True,
) -> Image.Image:
    """The image at ``path``, decoded (``load``) or just opened for its header and text
    chunks. The caller closes it. Every failure is a UserError naming the file.

    ``check_size``: refuse more than ``megapixels`` (None: the default setting) before any
    pixel is decoded. Pillow's own bomb check (an error above about 179 MP) stays on, and
    moves up only when the user's limit is above it."""
    from PIL import Image, UnidentifiedImageError

    p = check_regular_file(path, what)
    name = f"{what} {show(p)}"
    im: Image.Image | None = None
    try:
        with warnings.catch_warnings(), _pillow_allows(max_pixels(megapixels) if check_size else 0):
            # our limit is the one that counts; Pillow's warnings (above ~89 MP, a bad APNG)
            # would print lines of their own after our sentence
            warnings.simplefilter("ignore")
            im = Image.open(p)
            if check_size:
                check_pixels(im.width, im.height, megapixels, name)
            if load:
                im.load()
        return im
    except UserError:
        if im is not None:
            im.close()
        raise
    except Image.DecompressionBombError:
        _close(im)
        raise UserError(
            f"{name} claims more pixels than Pillow opens safely (a decompression bomb?): "
            "use a smaller image"
        ) from None
    except UnidentifiedImageError:
        _close(im)
        if _looks_like_image(p):
            raise UserError(
                f"{name} is not a readable image (damaged or truncated): give another file"
            ) from None
        raise UserError(
            f"{name} is not an image (Pillow does not recognize its contents): give a PNG, JPEG or WebP file"
        ) from None
    except PermissionError:
        _close(im)
        raise UserError(f"{name} cannot be read (permission denied): fix its permissions") from None
    except MemoryError:
        _close(im)
        raise UserError(
            f"{name} needs more memory than is free to decode: use a smaller image"
        ) from None
    except ValueError as e:
        _close(im)
        if text_too_large(e):
            raise UserError(
                f"{name} holds a metadata text chunk too large to read (over 1 MB): it was not "
                "written by sdtui or A1111; strip its metadata or give another file"
            ) from None
        raise UserError(f"{name} is damaged ({one_line(str(e))}): give another file") from None
    except (OSError, SyntaxError, EOFError, struct.error) as e:
        _close(im)
        raise UserError(
            f"{name} is not a readable image ({one_line(str(e)) or type(e).__name__}): it may be "
            "truncated; give another file"
        ) from None


_PILLOW_LOCK = threading.Lock()


@contextlib.contextmanager
def _pillow_allows(pixels: int) -> Iterator[None]:
    """Pillow refuses more than twice ``Image.MAX_IMAGE_PIXELS`` at open, whatever we allow:
    where the user raised max_image_megapixels past that, lift it for this one open (and put
    it back, so no other reader in the process inherits the higher limit)."""
    from PIL import Image

    current = Image.MAX_IMAGE_PIXELS
    if current is None or pixels <= 2 * current:
        yield
        return
    with _PILLOW_LOCK:
        Image.MAX_IMAGE_PIXELS = pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = current


def text_too_large(e: Exception) -> bool:
    """Pillow's ValueError for a text chunk over MAX_TEXT_CHUNK (or all of them over
    MAX_TEXT_MEMORY); its wording changed between versions."""
    text = str(e).lower()
    return "decompressed data too large" in text or "too much memory used in text chunks" in text


def _close(im: Image.Image | None) -> None:
    if im is not None:
        im.close()


_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF")


def _looks_like_image(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return head.startswith(_MAGIC)
