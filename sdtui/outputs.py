"""Where images go, named and laid out as A1111 does, so one outputs/ folder serves both.

Layout (A1111 defaults: "save to subdirectory" on, directory pattern ``[date]``)::

    outputs/txt2img-images/2024-05-01/00000-2089545485.png   NNNNN-SEED.png
    outputs/img2img-images/2024-05-01/00001-123.png
    outputs/txt2img-grids/2024-05-01/grid-0000.png           grid-NNNN.png
    outputs/img2img-grids/2024-05-01/grid-0000.png
    outputs/extras-images/00000.png                           NNNNN.png, no date folder

Extras have no date folder because A1111 saves them with ``no_prompt=True``, which turns its
"save to subdirectory" off (modules/images.py ``save_image``). The next number is A1111's
``get_next_sequence_number``: the highest number in the folder plus one.

Every file is written atomically: the PNG goes to a hidden temporary file in the same folder,
is flushed to disk, and is then hard-linked to its final name (which fails instead of
overwriting when another writer took that name: then the next number is tried). A process
killed half way leaves at most a hidden ``.sdtui-*.tmp`` file, never a half image under a
real name. Pure PIL; no torch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import io
import math
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sdtui.errors import UserError
from sdtui.units import format_bytes

if TYPE_CHECKING:
    from PIL import Image

KINDS: tuple[str, ...] = ("txt2img", "img2img", "extras")
GRID_KINDS: tuple[str, ...] = ("txt2img", "img2img")
IMAGE_FOLDERS: dict[str, str] = {
    "txt2img": "txt2img-images",
    "img2img": "img2img-images",
    "extras": "extras-images",
}
GRID_FOLDERS: dict[str, str] = {"txt2img": "txt2img-grids", "img2img": "img2img-grids"}
# folders whose images go into a YYYY-MM-DD subfolder (A1111: all but extras)
DATED: frozenset[str] = frozenset(
    {"txt2img-images", "img2img-images", "txt2img-grids", "img2img-grids"}
)
IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp"})
TMP_PREFIX = ".sdtui-"
TMP_SUFFIX = ".tmp"
STALE_TMP_SECONDS = 3600
_MAX_TRIES = 1000
_DATE_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
# link() not possible on this file system: fall back to an exists-check + replace()
_NO_LINK = {
    errno.EPERM,
    errno.EXDEV,
    errno.EMLINK,
    errno.ENOSYS,
    getattr(errno, "ENOTSUP", errno.EPERM),
    getattr(errno, "EOPNOTSUPP", errno.EPERM),
}


def image_grid(images: Sequence[Image.Image], rows: int | None = None) -> Image.Image:
    """A1111's ``image_grid`` with default settings (rows = round(sqrt(n))); empty cells are
    white: A1111 fills with ``opts.grid_background_color``, whose default in
    modules/shared_options.py is ``OptionInfo("#ffffff", "Background color for image grids")``."""
    from PIL import Image

    if not images:
        raise ValueError("image_grid needs at least one image")
    if rows is None:
        rows = round(math.sqrt(len(images)))
    rows = max(1, min(rows, len(images)))
    cols = math.ceil(len(images) / rows)
    w, h = images[0].size
    grid = Image.new("RGB", size=(cols * w, rows * h), color="#ffffff")
    for i, img in enumerate(images):
        grid.paste(img, box=(i % cols * w, i // cols * h))
    return grid


def next_sequence_number(folder: Path, basename: str = "") -> int:
    """A1111's ``get_next_sequence_number``: 1 + the highest number among the folder's names.

    With ``basename`` "" the number is what comes before the first ``-`` of the stem
    (``00042-123.png`` -> 42); with ``"grid"`` it is what follows ``grid-``.
    """
    prefix = f"{basename}-" if basename else ""
    result = -1
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    for name in names:
        if not name.startswith(prefix) or name.startswith("."):
            continue
        head = os.path.splitext(name[len(prefix) :])[0].split("-")[0]
        if head.isascii() and head.isdigit():
            result = max(result, int(head))
    return result + 1


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


class OutputLayout:
    """The A1111 outputs folder: where each kind of image goes and how it is named."""

    def __init__(self, outputs_dir: Path | str) -> None:
        self.outputs_dir = Path(outputs_dir).expanduser()

    # -- folders ----------------------------------------------------------------------------

    def folder(
        self, kind: str, *, grid: bool = False, when: dt.date | dt.datetime | None = None
    ) -> Path:
        """The folder an image of ``kind`` saved at ``when`` (default: today) goes into."""
        table = GRID_FOLDERS if grid else IMAGE_FOLDERS
        if kind not in table:
            what = "grid kind" if grid else "image kind"
            raise ValueError(f"unknown {what} {kind!r}: use one of {', '.join(table)}")
        base = self.outputs_dir / table[kind]
        if table[kind] not in DATED:
            return base
        day = when or dt.date.today()
        return base / day.strftime("%Y-%m-%d")

    def image_roots(self, *, grids: bool = False) -> list[Path]:
        names = list(IMAGE_FOLDERS.values()) + (list(GRID_FOLDERS.values()) if grids else [])
        return [self.outputs_dir / n for n in names]

    # -- saving -----------------------------------------------------------------------------

    def save_image(
        self,
        image: Image.Image,
        kind: str,
        seed: int | None,
        infotext: str,
        *,
        when: dt.date | dt.datetime | None = None,
        existing_info: Mapping[str, object] | None = None,
    ) -> Path:
        """Save one image as ``NNNNN-SEED.png`` (``NNNNN.png`` for extras or no seed).

        ``infotext`` goes into the PNG ``parameters`` chunk. For extras, as A1111 does, it is
        written to the ``extras`` and ``postprocessing`` chunks instead, and the source
        image's chunks (pass ``existing_info``, e.g. its ``parameters``) are carried over.
        """
        folder = self.folder(kind, when=when)
        decoration = "" if seed is None or kind == "extras" else f"-{seed}"
        chunks: dict[str, str] = {}
        for k, v in (existing_info or {}).items():
            if isinstance(v, str):
                chunks[k] = v
        if kind == "extras":
            if infotext:
                chunks["postprocessing"] = infotext
                chunks["extras"] = infotext
        elif infotext:
            chunks["parameters"] = infotext
        return self._save(image, folder, "", lambda n: f"{n:05}{decoration}.png", chunks)

    def save_grid(
        self,
        images: Sequence[Image.Image],
        kind: str,
        infotext: str,
        *,
        when: dt.date | dt.datetime | None = None,
        rows: int | None = None,
    ) -> Path:
        """Save the A1111 grid of ``images`` as ``grid-NNNN.png`` in the grids folder."""
        folder = self.folder(kind, grid=True, when=when)
        chunks = {"parameters": infotext} if infotext else {}
        grid = image_grid(images, rows)
        return self._save(grid, folder, "grid", lambda n: f"grid-{n:04}.png", chunks)

    def _save(
        self,
        image: Image.Image,
        folder: Path,
        basename: str,
        name_for: Callable[[int], str],
        chunks: Mapping[str, str],
    ) -> Path:
        from PIL import PngImagePlugin

        self._make_folder(folder)
        pnginfo = PngImagePlugin.PngInfo()
        for k, v in chunks.items():
            pnginfo.add_text(k, v)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=pnginfo)
        data = buffer.getvalue()

        tmp = folder / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}{TMP_SUFFIX}"
        target: Path | None = None  # named under the folder lock, after the bytes are written
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            with _folder_lock(folder):
                number = next_sequence_number(folder, basename)
                for _ in range(_MAX_TRIES):
                    target = folder / name_for(number)
                    if _publish(tmp, target):
                        break
                    number += 1
                else:
                    raise UserError(
                        f"no free file name in {folder} after {_MAX_TRIES} tries: "
                        "move old images out of it"
                    )
            _fsync_dir(folder)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if target is None:  # it failed before a name was taken: say the name it would get
                with contextlib.suppress(OSError):
                    target = folder / name_for(next_sequence_number(folder, basename))
            raise self._write_error(e, folder, target, len(data)) from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _remove_stale_tmp(folder)
        assert target is not None
        return target

    def _make_folder(self, folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._write_error(e, folder, None, 0) from None
        if not folder.is_dir():
            raise self._write_error(
                NotADirectoryError(errno.ENOTDIR, "not a folder"), folder, None, 0
            )

    def _write_error(self, e: OSError, folder: Path, target: Path | None, size: int) -> UserError:
        if e.errno in _DISK_FULL:
            free = _free_bytes(folder)
            left = f", {format_bytes(free)} left" if free is not None else ""
            name = target.name if target is not None else "an image"
            return UserError(
                f"disk full: saving {name} in {folder} needs {format_bytes(size)} free{left}; "
                "free some space, or pass --outputs-dir with a folder on another disk",
                detail=repr(e),
            )
        reason = e.strerror or type(e).__name__
        if isinstance(e, (FileExistsError, NotADirectoryError)) or e.errno == errno.ENOTDIR:
            reason = "a file is in the way of the folder"
        return UserError(
            f"cannot write images to {folder} ({reason}): pass --outputs-dir with a folder "
            f"you can write to, or fix the permissions of {self.outputs_dir}",
            detail=repr(e),
        )

    # -- history ----------------------------------------------------------------------------

    def recent_images(self, limit: int = 50, *, grids: bool = False) -> list[Path]:
        """Saved images, newest first (by modification time), across the image folders."""
        if limit <= 0:
            return []
        found: list[tuple[float, str, Path]] = []
        for root in self.image_roots(grids=grids):
            found.extend(_newest_in_root(root, limit))
        found.sort(key=lambda t: (t[0], t[1]), reverse=True)
        return [p for _, _, p in found[:limit]]


def _image_files(folder: Path) -> Iterator[tuple[float, str, Path]]:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
            continue
        try:
            if not entry.is_file():
                continue
            mtime = entry.stat().st_mtime
        except OSError:
            continue
        yield mtime, name, Path(entry.path)


def _newest_in_root(root: Path, limit: int) -> list[tuple[float, str, Path]]:
    """Up to roughly ``limit`` newest images of one root: its own files, then date folders
    from the newest date down until enough were seen (older date folders hold older files)."""
    out = list(_image_files(root))
    try:
        dates = sorted(
            (e.name for e in os.scandir(root) if e.is_dir() and _DATE_DIR.match(e.name)),
            reverse=True,
        )
    except OSError:
        dates = []
    from_dates = 0
    for name in dates:
        files = list(_image_files(root / name))
        out.extend(files)
        from_dates += len(files)
        if from_dates >= limit:
            break
    return out


def _publish(tmp: Path, target: Path) -> bool:
    """Give the finished temp file its final name unless that name is taken. True if done."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in _NO_LINK:
            raise
        if os.path.lexists(target):
            return False
        os.replace(tmp, target)
        return True
    os.unlink(tmp)
    return True


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Serialize numbering between sdtui writers (processes and threads) on POSIX, with a
    lock on the folder itself (no lock file is left behind)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: link() alone prevents overwrites
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield  # link() still prevents overwrites
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # file systems without flock (some network mounts)
        yield
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_tmp(folder: Path) -> None:
    """Temp files left by a killed process (older than an hour) are removed."""
    cutoff = time.time() - STALE_TMP_SECONDS
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(TMP_PREFIX) and entry.name.endswith(TMP_SUFFIX):
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
