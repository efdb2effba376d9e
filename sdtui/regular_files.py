"""Opening files someone else put in a models folder, refusing anything but a regular file.

A named pipe blocks ``open`` until a writer comes and a device never ends, so every model,
header and hash reader opens files through :func:`open_regular` (or checks them with
:func:`regular_stat`), which answer with one :class:`~sdtui.errors.UserError` sentence.

No torch, no textual: the listing in the UI, the CLI and the engine all use this.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from sdtui.errors import UserError
from sdtui.safe_text import one_line


def shown(path: Path | str) -> str:
    """A path or name as a message may show it: control characters visible, on one line."""
    return one_line(str(path))


_FILE_KINDS = (
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


def _not_regular(path: Path, mode: int) -> UserError:
    kind = next((k for test, k in _FILE_KINDS if test(mode)), "a special file")
    return UserError(
        f"{shown(path)} is {kind}, not a file: sdtui reads only regular files; put the model "
        "file itself there"
    )


def os_error(path: Path, e: OSError) -> UserError:
    """An OSError from reading ``path`` as one sentence naming the file."""
    if isinstance(e, FileNotFoundError):
        return UserError(f"{shown(path)} does not exist: check the path")
    if isinstance(e, PermissionError):
        return UserError(f"{shown(path)} cannot be read (permission denied): fix its permissions")
    return UserError(f"{shown(path)} cannot be read ({e.strerror or e}): check the file")


def regular_stat(path: Path | str) -> os.stat_result:
    """``path``'s stat, refusing anything but a regular file: reading a named pipe blocks
    forever and a device never ends."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise os_error(path, e) from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    return st


def open_regular(path: Path | str) -> BinaryIO:
    """``path`` opened for reading, refused unless it is a regular file. O_NONBLOCK keeps
    ``open`` on a named pipe from waiting for a writer, and fstat checks what was opened."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise os_error(path, e) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# -- telling a mislabelled file by its first bytes --------------------------------------------


def looks_like_text(head: bytes) -> bool:
    """Whether a file's first bytes are text (an HTML error page, a git-lfs pointer saved
    under a model's name), not a binary format."""
    if not head:
        return False
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    return printable / len(head) > 0.95


def opening(path: Path) -> str:
    """The first printable characters of a file, for "it starts with '<html...'"."""
    with open_regular(path) as f:
        head = f.read(64)
    text = head.decode("utf-8", errors="replace")
    text = " ".join(text.split())
    return shown((text[:16] + "...") if len(text) > 16 else text)


def not_a_file_of_kind(path: Path, kind: str) -> UserError:
    """``X is not a <kind> file (it starts with '...'): re-download it``."""
    return UserError(
        f"{shown(path.name)} is not a {kind} file (it starts with '{opening(path)}'): "
        "re-download it",
        detail=f"path: {path}",
    )
