"""The TUI against hostile files and text: no escape sequence reaches the terminal, and a bad
file never kills the app. Every case drives the real app with Pilot (a real engine daemon on
the demo model where a job runs, an idle fake engine elsewhere), checks what the user sees
(the job log line naming the file, the form left as it was) and that no control character is
in what the screen draws (``assert_no_leak``: the compositor's segments and the bytes a
terminal would be sent).

Hostile cases covered (file or text -> what the user sees):

- PNG infotext ``Denoising strength: abc``, ``Steps: -5``, ``Size: 0x0`` (ctrl+o) -> the valid
  keys (seed, CFG, sampler) load; one warning line names the file and each bad key and value;
  those fields keep the form's value.
- PNG declaring 20000x20000 pixels in 126 bytes, a decompression bomb (ctrl+o, F6, F7) -> one
  error line naming the file ("decompression bomb"); the form is unchanged; the preview and the
  full view show a placeholder sentence.
- PNG with a zTXt ``parameters`` chunk over Pillow's MAX_TEXT_CHUNK (ctrl+o) -> one error line
  naming the file ("text chunk too large"); the form is unchanged.
- a file that is not an image, a folder, a missing path (ctrl+o) -> one error line each.
- a named pipe given to ctrl+o, selected for F2/F3/F6/F7/ctrl+r, or as init image -> one line
  "... is a named pipe, not a file"; the pipe is never opened (nothing blocks).
- the infotext reader raising anything (RuntimeError, DecompressionBombError) -> one error
  line, in the job log for ctrl+o/F7, in the parameters pane for F6; the app stays up.
- PNG infotext holding OSC 52 (clipboard write), ``ESC [2J`` (clear screen), OSC 2 (pane
  title), a C1 CSI and ``[bold]``/``[@click=app.quit]`` markup, in a file whose name holds them
  too, opened by the grid, F6, F8 and F7 -> shown as ``^[]52;...^G``, ``[bold]`` as typed; the
  prompt editor holds ``^[`` text; nothing is sent.
- a prompt pasted with escape sequences and markup, generated on the real engine -> the prompt
  editor, the job log, the queue, the saved file's infotext and History show ``^[``; nothing
  is sent.
- engine / daemon text with escapes and markup (model name, log line, another client's job
  summary and name, a failure message and its traceback) -> status bar, job log, queue, the
  toast and the error detail screen (ctrl+t) show them; nothing is sent.
- a checkpoint with a malformed safetensors header -> left out of the model list, one job log
  line "models/Stable-diffusion/bad.safetensors: not listed, ..." (once, also after a
  refresh); the good checkpoints, LoRAs and upscalers are listed.
- a model lister raising a non-OSError, or hanging on a named pipe -> the other lists are
  found; the base model list stays; one line says which list could not be read.
- LoRA / model names with markup and escapes -> the pickers and the palette show them as
  named.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, PngImagePlugin
from PIL.PngImagePlugin import PngInfo
from textual import events
from textual.widgets import Input

from sdtui.config import Settings
from sdtui.ipc import protocol as msg
from sdtui.params import GenerationParams
from sdtui.tui import graphics
from sdtui.tui.app import SdtuiApp
from sdtui.tui.catalog import Catalog, discover_catalog
from sdtui.tui.form_state import FormState
from sdtui.tui.widgets.image_view import PreviewImage
from sdtui.tui.widgets.job_log import JobLog
from sdtui.tui.widgets.prompt_editor import PromptArea
from sdtui.tui.widgets.queue_view import QueueView
from sdtui.tui.widgets.settings_form import SettingsForm

TINY = GenerationParams(model="demo", steps=2, width=64, height=64, sampler="Euler", seed=1234)

OSC52 = "\x1b]52;c;aGVsbG8=\x07"
CLEAR = "\x1b[2J"
TITLE = "\x1b]2;pwned\x07"
HOSTILE = f"castle {OSC52} wall {CLEAR} sky {TITLE} [bold]loud[/bold] [@click=app.quit]q[/] \x9b31m"
RAW_SEQUENCES = ("\x1b]52", "\x1b[2J", "\x1b]2;", "\x07", "\x9b")


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def tui_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Every folder in tmp; half-cell images (no terminal to probe in a test)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SDTUI_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SDTUI_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SDTUI_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("SDTUI_OUTPUTS_DIR", str(tmp_path / "outputs"))
    graphics.set_mode("halfcell", "tests")
    return Settings(
        outputs_dir=tmp_path / "outputs",
        models_dir=tmp_path / "models",
        embeddings_dir=tmp_path / "embeddings",
    )


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


class FakeHost:
    """An idle engine with DaemonClient's shape."""

    def __init__(self) -> None:
        self.pending: dict[int, Any] = {}
        self.running_job: int | None = None
        self.state = "ready"
        self.pid: int | None = None
        self.events: list[Any] = []
        self._next = 0

    @property
    def queued(self) -> list[int]:
        return [j for j in self.pending if j != self.running_job]

    def submit(self, params: Any) -> int:
        self._next += 1
        self.pending[self._next] = params
        return self._next

    def submit_upscale(self, params: Any) -> int:
        return self.submit(params)

    def submit_xyz(self, params: Any) -> int:
        return self.submit(params)

    def cancel(self, job_id: int | None = None) -> None:
        pass

    def skip(self) -> None:
        pass

    def load_model(self, model: str) -> None:
        pass

    def set_memory_mode(self, mode: str) -> None:
        pass

    def restart(self) -> list[int]:
        return []

    def poll(self, timeout: float = 0.0) -> list[Any]:
        events, self.events = self.events, []
        return events


def fake_app(settings: Settings, **kwargs: Any) -> SdtuiApp:
    kwargs.setdefault("form_state", FormState(params=TINY.replace(prompt="my own prompt")))
    kwargs.setdefault("discover", lambda base: base)  # no folder walk unless a test asks
    return SdtuiApp(
        kwargs.pop("host", FakeHost()),
        settings,
        gpu_interval=None,
        clock=lambda: "12:00:00",
        remember_form=False,
        **kwargs,
    )


async def wait_for(pilot: Any, condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; job log:\n{log_text(pilot.app)}")
        await pilot.pause(0.05)


def log_entries(app: SdtuiApp) -> list[tuple[str, str]]:
    return list(app.main.query_one(JobLog).entries)


def log_text(app: SdtuiApp) -> str:
    return app.main.query_one(JobLog).plain


def form_values(app: SdtuiApp) -> dict[str, str]:
    return app.main.query_one(SettingsForm).raw_values()


def prompt_text(app: SdtuiApp) -> str:
    return app.main.query_one("#prompt", PromptArea).text


def _is_control(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or 0x7F <= code <= 0x9F


def drawn(app: SdtuiApp) -> list[str]:
    """The rows the top screen draws: the text of its segments (not the styling codes)."""
    rows = []
    for strip in app.screen._compositor.render_strips():
        rows.append("".join(seg.text for seg in strip if not seg.control))
    return rows


def assert_no_leak(app: SdtuiApp, where: str) -> str:
    """No control character in any drawn segment, and none of the raw sequences in what the
    terminal would be sent. Returns the drawn text (rows joined by newlines)."""
    screen = app.screen
    bad = []
    for y, strip in enumerate(screen._compositor.render_strips()):
        for seg in strip:
            if not seg.control and any(_is_control(ch) for ch in seg.text):
                bad.append(f"row {y}: {seg.text!r}")
    out = screen._compositor.render_full_update().render_segments(app.console)
    bad += [f"{seq!r} in the terminal output" for seq in RAW_SEQUENCES if seq in out]
    assert not bad, f"{where}: control characters reach the terminal:\n" + "\n".join(bad[:10])
    return "\n".join(drawn(app))


def png_with(path: Path, parameters: str | None, *, zip_text: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = PngInfo()
    if parameters is not None:
        meta.add_text("parameters", parameters, zip=zip_text)
    Image.new("RGB", (16, 16), (200, 30, 30)).save(path, pnginfo=meta)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def bomb_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A 126-byte PNG that declares ``width`` x ``height`` pixels (Pillow: DecompressionBombError
    above ~179 MP), with a parameters chunk."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    text = b"parameters\0Steps: 20, Sampler: Euler, Seed: 1"
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"tEXt", text)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )
    path.write_bytes(data)
    return path


@contextlib.contextmanager
def pipe_guard(path: Path) -> Iterator[threading.Event]:
    """A named pipe at ``path``; the event is set if anyone opens it for reading (which
    would hang the UI), and the reader is then freed so the test fails instead of hanging."""
    os.mkfifo(path)
    opened = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:  # succeeds only while a reader has the pipe open (or waits in open)
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                stop.wait(0.02)
                continue
            opened.set()
            with contextlib.suppress(OSError):
                os.write(fd, b"not a png")
            os.close(fd)
            stop.wait(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield opened
    finally:
        stop.set()
        thread.join(2)


async def load_png(pilot: Any, path: Path | str) -> None:
    """ctrl+o, the path, enter."""
    await pilot.press("ctrl+o")
    await pilot.pause()
    pilot.app.screen.query_one("#path-input", Input).value = str(path)
    await pilot.press("enter")
    await pilot.pause()


def select(app: SdtuiApp, path: Path | str) -> None:
    app.main.show_images([str(path)])


# -- ctrl+o / F7: bad values, bad files ------------------------------------------------------


@run_async
async def test_bad_values_in_an_infotext_are_named_and_the_valid_keys_apply(
    tui_env: Settings, tmp_path: Path
) -> None:
    png = png_with(
        tmp_path / "odd values.png",
        "a castle\nNegative prompt: blurry\nSteps: -5, Sampler: Euler a, CFG scale: 6.5, "
        "Seed: 4242, Size: 0x0, Denoising strength: abc, Clip skip: nan",
    )
    app = fake_app(tui_env)
    async with app.run_test(size=(120, 40)) as pilot:
        before = form_values(app)
        await load_png(pilot, png)
        after = form_values(app)
        # the valid keys apply
        assert prompt_text(app) == "a castle"
        assert (after["seed"], after["cfg_scale"], after["sampler"]) == ("4242", "6.5", "Euler a")
        # the bad ones keep the form's value
        for name in ("steps", "width", "height", "denoising_strength", "clip_skip"):
            assert after[name] == before[name], name
        level, line = log_entries(app)[-1]
        assert level == "warning"
        assert str(png) in line
        for said in ("Steps: '-5'", "Size: '0x0'", "Denoising strength: 'abc'", "Clip skip: 'nan'"):
            assert said in line, line
        assert app.is_running
        assert_no_leak(app, "after a file with bad values")


@run_async
async def test_unreadable_files_give_one_line_and_leave_the_form(
    tui_env: Settings, tmp_path: Path
) -> None:
    big_text = "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 10)
    cases = {
        "decompression bomb": bomb_png(tmp_path / "bomb.png"),
        "oversized zTXt": png_with(tmp_path / "ztxt.png", big_text, zip_text=True),
        "not an image": tmp_path / "notes.png",
        "a folder": tmp_path / "folder.png",
        "missing": tmp_path / "missing.png",
        "no parameters": png_with(tmp_path / "plain.png", None),
    }
    cases["not an image"].write_text("hello")
    cases["a folder"].mkdir()
    app = fake_app(tui_env)
    async with app.run_test(size=(120, 40)) as pilot:
        before = (form_values(app), prompt_text(app))
        for case, path in cases.items():
            n = len(log_entries(app))
            await load_png(pilot, path)
            new = log_entries(app)[n:]
            assert [level for level, _ in new] == ["error"], (case, new)
            assert path.name in new[0][1], (case, new)
            assert (form_values(app), prompt_text(app)) == before, case
            assert app.is_running and app.screen is app.main
        text = log_text(app)
        assert "decompression bomb" in text
        assert "text chunk too large" in text
        assert_no_leak(app, "after the bad files")


@run_async
async def test_a_named_pipe_is_never_opened(tui_env: Settings, tmp_path: Path) -> None:
    with pipe_guard(tmp_path / "pipe.png") as opened:
        pipe = tmp_path / "pipe.png"
        app = fake_app(tui_env)
        async with app.run_test(size=(120, 40)) as pilot:
            before = (form_values(app), prompt_text(app))
            await load_png(pilot, pipe)  # ctrl+o
            assert "pipe.png is a named pipe" in log_entries(app)[-1][1]
            assert (form_values(app), prompt_text(app)) == before
            # selected (as if picked in History): the preview, F7, F6, F3, ctrl+r
            select(app, pipe)
            await pilot.pause()
            preview = app.main.query_one("#preview", PreviewImage)
            assert preview.source is None
            for key in ("f7", "f3", "ctrl+r", "f6"):
                await pilot.press(key)
                await pilot.pause()
                if app.screen is not app.main:
                    await pilot.press("escape")
                    await pilot.pause()
            assert "is a named pipe" in log_entries(app)[-1][1]
            # as init image: the form says so and Generate does not submit
            app.main.set_form_field("mode", "img2img")
            app.main.set_form_field("init_image", str(pipe))
            await pilot.pause()
            assert "named pipe" in app.main.query_one(SettingsForm).errors.get("init_image", "")
            await pilot.press("ctrl+g")
            await pilot.pause()
            assert not app.host.pending  # type: ignore[attr-defined]
            assert app.is_running
            assert_no_leak(app, "after the pipe")
        assert not opened.is_set(), "the app opened a named pipe (it would hang there)"


@run_async
async def test_any_exception_of_the_reader_is_one_line(
    tui_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The infotext reader is hardened on its own; the TUI does not rely on it."""
    import sdtui.infotext

    png = png_with(tmp_path / "fine.png", "a cat\nSteps: 20, Sampler: Euler, Seed: 5")
    errors: list[BaseException] = [
        RuntimeError(f"reader bug {TITLE}"),
        Image.DecompressionBombError("too many pixels"),
        ValueError("Decompressed Data Too Large"),
    ]

    def broken(path: Any) -> str:
        raise errors[0]

    monkeypatch.setattr(sdtui.infotext, "read_infotext", broken)
    app = fake_app(tui_env)
    async with app.run_test(size=(120, 40)) as pilot:
        before = (form_values(app), prompt_text(app))
        for error in list(errors):
            errors[0] = error
            n = len(log_entries(app))
            await load_png(pilot, png)
            new = log_entries(app)[n:]
            assert [level for level, _ in new] == ["error"] and "fine.png" in new[0][1], new
            assert (form_values(app), prompt_text(app)) == before
        # F7 and F6 on the selected file
        select(app, png)
        await pilot.press("f7")
        await pilot.pause()
        assert log_entries(app)[-1][0] == "error"
        await pilot.press("f6")
        await pilot.pause()
        assert type(app.screen).__name__ == "FullViewScreen"
        text = assert_no_leak(app, "full view of a file the reader fails on")
        assert "fine.png" in text
        await pilot.press("escape")
        await pilot.pause()
        assert app.is_running
        assert_no_leak(app, "main screen")


@run_async
async def test_a_bomb_selected_shows_a_placeholder_everywhere(
    tui_env: Settings, tmp_path: Path
) -> None:
    folder = tui_env.outputs / "txt2img-images" / "2026-01-01"
    folder.mkdir(parents=True)
    bomb = bomb_png(folder / "bomb.png")
    big = bomb_png(folder / "big.png", 10000, 10000)  # Pillow only warns: still not decoded
    app = fake_app(tui_env)
    async with app.run_test(size=(120, 40)) as pilot:
        for path in (bomb, big):
            select(app, path)
            await pilot.pause()
            preview = app.main.query_one("#preview", PreviewImage)
            assert preview.source is None
            assert path.name in str(preview.query_one("#preview-text").render())
            await pilot.press("f6")
            await pilot.pause()
            assert_no_leak(app, "full view of a bomb")
            await pilot.press("escape")
            await pilot.pause()
            await pilot.press("f3")  # img2img 2x reads the size from the header only
            await pilot.pause()
        assert "bomb.png" in log_entries(app)[-2][1] or "bomb.png" in log_text(app)
        await pilot.press("f8")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "HistoryScreen", 60)
        await pilot.pause(0.3)
        assert_no_leak(app, "history with bombs")
        await pilot.press("escape")
        await pilot.pause()
        assert app.is_running


# -- escape sequences and markup from a file ----------------------------------------------------


def hostile_png(tui_env: Settings) -> Path:
    folder = tui_env.outputs / "txt2img-images" / "2026-01-01"
    name = f"evil{TITLE}[bold]x[@click=app.quit].png"
    return png_with(
        folder / name,
        f"{HOSTILE}\nNegative prompt: bad {OSC52}\nSteps: 12, Sampler: Euler a, CFG scale: 6, "
        f"Seed: 4242, Size: 64x64, Model: evil{TITLE}, Note: {CLEAR}x",
    )


@run_async
async def test_escape_sequences_in_a_png_never_reach_the_terminal(tui_env: Settings) -> None:
    png = hostile_png(tui_env)
    app = fake_app(tui_env)
    async with app.run_test(size=(140, 44)) as pilot:
        select(app, png)
        await wait_for(pilot, lambda: "evil^[]2;pwned^G[bol" in "\n".join(drawn(app)), 60)
        text = assert_no_leak(app, "grid tile and preview")
        assert "evil^[]2;pwned^G[bol" in text  # the tile label, as named (cut to fit)

        await pilot.press("f6")  # full view: the parameters pane
        await pilot.pause()
        text = assert_no_leak(app, "full view")
        assert "^[]52;c;aGVsbG8=^G" in text and "[bold]loud[/bold]" in text
        await pilot.press("escape")
        await pilot.pause()

        await pilot.press("f8")  # history: list, preview and parameters
        await wait_for(pilot, lambda: type(app.screen).__name__ == "HistoryScreen")
        await wait_for(pilot, lambda: "^[]2;pwned^G" in "\n".join(drawn(app)), 60)
        text = assert_no_leak(app, "history")
        assert "^[]2;pwned^G" in text
        await pilot.press("escape")
        await pilot.pause()

        await pilot.press("f7")  # reuse: the prompt editor, the log line, the model note
        await pilot.pause()
        prompt = prompt_text(app)
        assert "\x1b" not in prompt and "\x07" not in prompt and "\x9b" not in prompt
        assert "^[]52;c;aGVsbG8=^G" in prompt and "[@click=app.quit]q[/]" in prompt
        assert "\x1b" not in app.main.form_state.params.prompt
        assert form_values(app)["seed"] == "4242"
        assert not any(_is_control(ch) for _, line in log_entries(app) for ch in line)
        assert_no_leak(app, "main screen after reuse")
        assert app.is_running


@run_async
async def test_a_pasted_prompt_with_escapes_on_the_real_engine(
    tui_env: Settings, attach: Any
) -> None:
    """Pasted with escapes and markup, generated on the demo model: the prompt is kept as
    text (``^[``), in the editor, the log, the queue, the saved infotext and History."""
    from sdtui.infotext import parse_infotext, read_infotext

    engine = attach(tui_env, who=f"tui {TITLE}")
    form = FormState(params=TINY)
    app = SdtuiApp(engine, tui_env, form_state=form, gpu_interval=None, remember_form=False)
    async with app.run_test(size=(120, 40)) as pilot:
        area = app.main.query_one("#prompt", PromptArea)
        area.focus()
        area.post_message(events.Paste(HOSTILE + "\r\nsecond line"))
        await pilot.pause()
        assert "\x1b" not in area.text and "^[]52" in area.text
        assert area.text.endswith("\nsecond line")
        assert_no_leak(app, "prompt editor after paste")
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: " done: " in log_text(app), 90)
        [saved] = sorted((tui_env.outputs / "txt2img-images").rglob("*.png"))
        info = parse_infotext(read_infotext(saved) or "")
        assert "^[]52;c;aGVsbG8=^G" in info.prompt and "\x1b" not in info.prompt
        assert_no_leak(app, "main screen after the job")
        await pilot.press("f8")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "HistoryScreen")
        await wait_for(pilot, lambda: "[bold]loud[/bold]" in "\n".join(drawn(app)), 60)
        assert "[bold]loud[/bold]" in assert_no_leak(app, "history of the job")
        await pilot.press("escape")
        await pilot.pause()


@run_async
async def test_engine_and_daemon_text_is_shown_not_sent(tui_env: Settings) -> None:
    host = FakeHost()
    app = fake_app(tui_env, host=host)
    async with app.run_test(size=(140, 44)) as pilot:
        job = msg.JobInfo(
            job_id=7,
            kind="generate",
            state="queued",
            summary=f"txt2img {HOSTILE}",
            images_total=1,
            submitted_by=f"cli {TITLE}",
            submitted_at=time.time(),
        )
        host.pending[7] = job
        host.events += [
            msg.EngineStatus("loading", detail=f"loading {CLEAR}model", model=f"m{TITLE}"),
            msg.EngineStatus("ready", detail=f"d{OSC52}", device="cpu", model=f"m{TITLE}"),
            msg.Log("warning", f"engine says {OSC52}\nfake row [bold]x"),
            msg.JobQueued(job),
        ]
        await wait_for(pilot, lambda: "queued by" in log_text(app))
        app.main.refresh_queue()
        await pilot.pause()
        assert app.main.query_one(QueueView).display
        text = assert_no_leak(app, "status bar, log, queue")
        assert "engine says ^[]52;c;aGVsbG8=^G^Jfake row [bold]x" in text.replace("\n", "")
        del host.pending[7]
        host.events.append(
            msg.JobFailed(7, f"failed on {TITLE}[bold]", detail=f"Traceback {CLEAR}\n{OSC52}")
        )
        await wait_for(pilot, lambda: "failed on" in log_text(app))
        await pilot.pause()
        assert_no_leak(app, "the failure toast")
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert type(app.screen).__name__ == "ErrorDetailScreen"
        text = assert_no_leak(app, "error detail")
        assert "failed on ^[]2;pwned^G[bold]" in text
        await pilot.press("escape")
        await pilot.pause()
        assert app.is_running


# -- the model list ------------------------------------------------------------------------------


def _models(settings: Settings, demo_model: Any) -> Path:
    folder = settings.models / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copy(demo_model.safetensors, folder / "good.safetensors")
    (folder / "bad.safetensors").write_bytes(struct.pack("<Q", 12) + b'{"a": [1, 2')
    (folder / "worse.safetensors").write_bytes(struct.pack("<Q", 2**60) + b"{}")
    lora = settings.models / "Lora"
    lora.mkdir(parents=True)
    (lora / f"shiny{TITLE}[bold].safetensors").write_bytes(b"x")
    return folder


@run_async
async def test_a_malformed_checkpoint_is_named_and_the_rest_listed(
    tui_env: Settings, demo_model: Any
) -> None:
    _models(tui_env, demo_model)
    app = SdtuiApp(
        FakeHost(),
        tui_env,
        form_state=FormState(params=TINY),
        gpu_interval=None,
        remember_form=False,
    )
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.main.catalog.complete)
        await pilot.pause()
        assert "good" in app.main.model_names and "demo" in app.main.model_names
        assert "bad" not in app.main.model_names and "worse" not in app.main.model_names
        assert app.main.catalog.loras == [f"shiny{TITLE}[bold]"]
        lines = [line for _, line in log_entries(app) if "bad.safetensors" in line]
        assert len(lines) == 1 and lines[0].startswith("models/Stable-diffusion/bad.safetensors: ")
        app.main.refresh_catalog()  # listed again: said once
        await pilot.pause(0.5)
        assert len([1 for _, line in log_entries(app) if "bad.safetensors" in line]) == 1
        # the pickers and the palette show the names as named
        await pilot.press("ctrl+k")
        await pilot.pause()
        assert "shiny^[]2;pwned^G[bold]" in assert_no_leak(app, "LoRA picker")
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"shiny")
        await pilot.pause(0.5)
        assert "[bold]" in assert_no_leak(app, "palette")
        await pilot.press("escape")
        await pilot.pause()
        assert app.is_running


def test_a_failing_or_hanging_lister_leaves_the_others(
    tui_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sdtui.extra_networks_index
    import sdtui.model_index

    lora = tui_env.models / "Lora"
    lora.mkdir(parents=True)
    (lora / "kept.safetensors").write_bytes(b"x")
    base = Catalog.placeholder(["from-form"])

    def raises(*_: Any) -> list[Any]:
        raise RuntimeError("a header this lister did not expect")

    monkeypatch.setattr(sdtui.model_index, "discover_models", raises)
    catalog = discover_catalog(tui_env, base)
    assert catalog.models == ["from-form", "demo"] and catalog.loras == ["kept"]
    assert any("checkpoints could not be listed (RuntimeError" in p for p in catalog.problems)

    release = threading.Event()

    def hangs(*_: Any) -> list[Any]:  # what a blocking open() of a named pipe does
        release.wait(30)
        return []

    monkeypatch.setattr(sdtui.extra_networks_index, "list_loras", hangs)
    start = time.monotonic()
    catalog = discover_catalog(tui_env, base, timeout=0.5)
    release.set()
    assert time.monotonic() - start < 5
    assert catalog.models == ["from-form", "demo"] and catalog.loras == []
    assert any("LoRAs could not be listed in 0.5 s" in p for p in catalog.problems)


def test_named_pipes_in_the_model_folders_do_not_hang_the_listing(tui_env: Settings) -> None:
    folders = [tui_env.models / n for n in ("Stable-diffusion", "Lora", "VAE", "ESRGAN")]
    for folder in folders:
        folder.mkdir(parents=True)
        os.mkfifo(folder / "pipe.safetensors")
    tui_env.embeddings.mkdir(parents=True)
    os.mkfifo(tui_env.embeddings / "pipe.pt")
    (tui_env.models / "Lora" / "kept.safetensors").write_bytes(b"x")
    start = time.monotonic()
    try:
        catalog = discover_catalog(tui_env, timeout=3)
    finally:
        for pipe in [*(f / "pipe.safetensors" for f in folders), tui_env.embeddings / "pipe.pt"]:
            with contextlib.suppress(OSError):  # free a lister stuck in open(), if any
                os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
    assert time.monotonic() - start < 10
    assert "kept" in catalog.loras or any("LoRAs" in p for p in catalog.problems)
    assert "demo" in catalog.models
