from __future__ import annotations

import datetime as dt
import errno
import os
import threading
from pathlib import Path

import pytest
from PIL import Image

from sdtui import outputs
from sdtui.errors import UserError
from sdtui.infotext import parse_infotext, read_infotext
from sdtui.outputs import OutputLayout, image_grid, next_sequence_number

DAY = dt.date(2024, 5, 1)
INFO = "a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 8x8"


def _img(color: tuple[int, int, int] = (255, 0, 0), size: tuple[int, int] = (8, 8)) -> Image.Image:
    return Image.new("RGB", size, color)


def _no_tmp(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_folders_follow_a1111(tmp_path: Path) -> None:
    layout = OutputLayout(tmp_path)
    assert layout.folder("txt2img", when=DAY) == tmp_path / "txt2img-images" / "2024-05-01"
    assert layout.folder("img2img", when=DAY) == tmp_path / "img2img-images" / "2024-05-01"
    assert (
        layout.folder("txt2img", grid=True, when=DAY) == tmp_path / "txt2img-grids" / "2024-05-01"
    )
    assert (
        layout.folder("img2img", grid=True, when=DAY) == tmp_path / "img2img-grids" / "2024-05-01"
    )
    # A1111 saves extras with no_prompt=True, which skips the date folder
    assert layout.folder("extras", when=DAY) == tmp_path / "extras-images"
    with pytest.raises(ValueError):
        layout.folder("inpaint")


def test_save_names_and_metadata(tmp_path: Path) -> None:
    layout = OutputLayout(tmp_path)
    first = layout.save_image(_img(), "txt2img", 42, INFO, when=DAY)
    second = layout.save_image(_img(), "txt2img", 43, INFO, when=DAY)
    assert first == tmp_path / "txt2img-images/2024-05-01/00000-42.png"
    assert second.name == "00001-43.png"
    assert read_infotext(first) == INFO
    assert parse_infotext(read_infotext(second) or "").pairs["Seed"] == "42"
    with Image.open(first) as im:
        assert im.size == (8, 8) and im.getpixel((0, 0)) == (255, 0, 0)
    _no_tmp(tmp_path)


def test_numbering_continues_after_existing_files(tmp_path: Path) -> None:
    layout = OutputLayout(tmp_path)
    folder = layout.folder("img2img", when=DAY)
    folder.mkdir(parents=True)
    for name in ("00007-1.png", "00012-5.png", "00003.txt", "grid-0099.png", "notes.png"):
        (folder / name).write_bytes(b"x")
    assert next_sequence_number(folder) == 13
    assert layout.save_image(_img(), "img2img", 9, INFO, when=DAY).name == "00013-9.png"
    assert next_sequence_number(folder, "grid") == 100
    assert next_sequence_number(tmp_path / "missing") == 0


def test_extras_name_and_chunks(tmp_path: Path) -> None:
    layout = OutputLayout(tmp_path)
    pp = "Postprocess upscale by: 4, Postprocess upscaler: Lanczos"
    path = layout.save_image(
        _img(), "extras", None, pp, when=DAY, existing_info={"parameters": INFO, "dpi": (72, 72)}
    )
    assert path == tmp_path / "extras-images" / "00000.png"
    with Image.open(path) as im:
        assert im.info["extras"] == pp
        assert im.info["postprocessing"] == pp
        assert "dpi" not in im.info  # only text values are carried over
    # the source image's parameters travel with the upscaled copy, as in A1111
    assert read_infotext(path) == INFO
    assert layout.save_image(_img(), "extras", 5, pp).name == "00001.png"


def test_no_seed_means_bare_number(tmp_path: Path) -> None:
    path = OutputLayout(tmp_path).save_image(_img(), "txt2img", None, INFO, when=DAY)
    assert path.name == "00000.png"


def test_existing_target_name_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer (e.g. A1111 itself) took the name between numbering and publishing."""
    layout = OutputLayout(tmp_path)
    folder = layout.folder("txt2img", when=DAY)
    folder.mkdir(parents=True)
    real = outputs.next_sequence_number

    def stale(path: Path, basename: str = "") -> int:
        n = real(path, basename)
        (folder / f"{n:05}-42.png").write_bytes(b"someone else's image")
        return n

    monkeypatch.setattr(outputs, "next_sequence_number", stale)
    path = layout.save_image(_img(), "txt2img", 42, INFO, when=DAY)
    assert path.name == "00001-42.png"
    assert (folder / "00000-42.png").read_bytes() == b"someone else's image"
    assert read_infotext(path) == INFO
    _no_tmp(tmp_path)


def test_concurrent_writers_get_distinct_numbers(tmp_path: Path) -> None:
    layouts = [OutputLayout(tmp_path), OutputLayout(tmp_path)]
    results: list[Path] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        for j in range(6):
            p = layouts[i % 2].save_image(_img((i, j, 0)), "txt2img", 100 + i, INFO, when=DAY)
            with lock:
                results.append(p)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    numbers = sorted(int(p.name[:5]) for p in results)
    assert numbers == list(range(24))
    assert all(read_infotext(p) == INFO for p in results)
    _no_tmp(tmp_path)


def test_failure_while_writing_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between writing and naming (simulated) leaves no half image and no temp file."""
    layout = OutputLayout(tmp_path)

    def boom(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs.os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        layout.save_image(_img(), "txt2img", 1, INFO, when=DAY)
    folder = layout.folder("txt2img", when=DAY)
    assert list(folder.iterdir()) == []


KILLED_WRITER = """
import os, sys, time
from PIL import Image
from sdtui import outputs

def hang(fd):
    print("written", flush=True)
    time.sleep(60)

outputs.os.fsync = hang
outputs.OutputLayout(sys.argv[1]).save_image(Image.new("RGB", (256, 256)), "extras", None, "x")
"""


def test_killed_writer_leaves_no_image(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "written\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    folder = tmp_path / "extras-images"
    assert [p.suffix for p in folder.iterdir()] == [".tmp"]  # hidden, never a .png
    assert OutputLayout(tmp_path).recent_images(5) == []
    path = OutputLayout(tmp_path).save_image(_img(), "extras", None, "x")
    assert path.name == "00000.png"


def test_stale_temp_files_are_cleaned(tmp_path: Path) -> None:
    layout = OutputLayout(tmp_path)
    folder = layout.folder("txt2img", when=DAY)
    folder.mkdir(parents=True)
    stale = folder / ".sdtui-123-abc.tmp"
    stale.write_bytes(b"half")
    old = 1_000_000_000
    os.utime(stale, (old, old))
    fresh = folder / ".sdtui-456-def.tmp"
    fresh.write_bytes(b"writing now")
    layout.save_image(_img(), "txt2img", 1, INFO, when=DAY)
    assert not stale.exists()
    assert fresh.exists()  # another process may be writing it


def test_outputs_under_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "outputs"
    blocker.write_text("not a folder")
    layout = OutputLayout(blocker / "sub")
    with pytest.raises(UserError) as err:
        layout.save_image(_img(), "txt2img", 1, INFO, when=DAY)
    msg = str(err.value)
    assert "cannot write images to" in msg and str(blocker) in msg
    assert "--outputs-dir" in msg and "permissions" in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(UserError, match="cannot write images to .*--outputs-dir"):
            OutputLayout(folder).save_image(_img(), "txt2img", 1, INFO, when=DAY)
    finally:
        folder.chmod(0o700)


def test_permission_denied_when_naming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(outputs.os, "link", denied)
    monkeypatch.setattr(outputs.os, "replace", denied)
    layout = OutputLayout(tmp_path)
    with pytest.raises(UserError, match=r"cannot write images to .*\(Permission denied\)"):
        layout.save_image(_img(), "txt2img", 1, INFO, when=DAY)
    folder = layout.folder("txt2img", when=DAY)
    assert list(folder.iterdir()) == []


def test_link_unsupported_falls_back_to_replace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(outputs.os, "link", no_link)
    layout = OutputLayout(tmp_path)
    a = layout.save_image(_img(), "txt2img", 1, INFO, when=DAY)
    b = layout.save_image(_img(), "txt2img", 2, INFO, when=DAY)
    assert (a.name, b.name) == ("00000-1.png", "00001-2.png")
    assert read_infotext(b) == INFO
    _no_tmp(tmp_path)


def test_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "write", full)
    layout = OutputLayout(tmp_path)
    with pytest.raises(UserError) as err:
        layout.save_image(_img(size=(64, 64)), "txt2img", 7, INFO, when=DAY)
    msg = str(err.value)
    assert msg.startswith("disk full: saving 00000-7.png in ")
    assert "needs " in msg and " free" in msg and "left" in msg and "--outputs-dir" in msg
    folder = layout.folder("txt2img", when=DAY)
    assert list(folder.iterdir()) == []  # the temp file is gone


def test_disk_full_on_replace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "link", full)
    with pytest.raises(UserError, match="disk full"):
        OutputLayout(tmp_path).save_image(_img(), "txt2img", 7, INFO, when=DAY)
    _no_tmp(tmp_path)


# -- grids -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,rows,cols",
    [
        (1, 1, 1),
        (2, 1, 2),
        (3, 2, 2),
        (4, 2, 2),
        (5, 2, 3),
        (6, 2, 3),
        (7, 3, 3),
        (9, 3, 3),
        (10, 3, 4),
    ],
)
def test_grid_layout_like_a1111(n: int, rows: int, cols: int) -> None:
    grid = image_grid([_img((i * 20, 0, 0), (4, 3)) for i in range(n)])
    assert grid.size == (cols * 4, rows * 3)
    for i in range(n):
        assert grid.getpixel((i % cols * 4, i // cols * 3)) == (i * 20, 0, 0)
    if n < rows * cols:
        # empty spots are white: A1111 modules/images.py image_grid fills with
        # opts.grid_background_color, default "#ffffff" (modules/shared_options.py)
        assert grid.getpixel(((cols - 1) * 4, (rows - 1) * 3)) == (255, 255, 255)


def test_save_grid(tmp_path: Path) -> None:
    layout = OutputLayout(tmp_path)
    path = layout.save_grid([_img(), _img(), _img()], "txt2img", INFO, when=DAY)
    assert path == tmp_path / "txt2img-grids/2024-05-01/grid-0000.png"
    assert layout.save_grid([_img()], "txt2img", INFO, when=DAY).name == "grid-0001.png"
    assert read_infotext(path) == INFO
    with Image.open(path) as im:
        assert im.size == (16, 16)
    with pytest.raises(ValueError):
        layout.save_grid([], "txt2img", INFO)


# -- history ---------------------------------------------------------------------------------


def test_recent_images_newest_first(tmp_path: Path) -> None:
    layout = OutputLayout(tmp_path)
    saved = [
        layout.save_image(_img(), "txt2img", 1, INFO, when=dt.date(2024, 1, 1)),
        layout.save_image(_img(), "img2img", 2, INFO, when=dt.date(2024, 1, 2)),
        layout.save_image(_img(), "extras", None, "x"),
        layout.save_image(_img(), "txt2img", 3, INFO, when=dt.date(2024, 1, 3)),
    ]
    grid = layout.save_grid([_img()], "txt2img", INFO, when=DAY)
    for i, p in enumerate(saved + [grid]):
        os.utime(p, (1_700_000_000 + i, 1_700_000_000 + i))
    (layout.folder("txt2img", when=dt.date(2024, 1, 3)) / "notes.txt").write_text("not an image")
    assert layout.recent_images(10) == list(reversed(saved))
    assert layout.recent_images(2) == [saved[3], saved[2]]
    assert layout.recent_images(10, grids=True)[0] == grid
    assert layout.recent_images(0) == []
    assert OutputLayout(tmp_path / "empty").recent_images(5) == []
