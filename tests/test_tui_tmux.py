"""The real `sdtui` in a real terminal (tmux), driven by keys, read back with capture-pane.

One session walks: first frame -> type a prompt -> ctrl+g -> the job log shows the saved
path and the PNG exists -> the engine is killed -> the app says so -> F12 restarts it (a
process spawned from inside the running app, Textual issue #3593) -> a second job is
started and the terminal is closed (SIGHUP): the app leaves, the engine finishes the job
and saves the image, and the form was remembered.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]


class Tmux:
    def __init__(self, socket: str) -> None:
        self.socket = socket

    def run(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=20,
        )
        return out.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-J", "-t", "sdtui", check=False)

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.run("send-keys", "-t", "sdtui", *(["-l"] if literal else []), *keys)

    def wait(self, condition: Callable[[str], bool], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if condition(text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{text}")

    def alive(self) -> bool:
        return (
            subprocess.run(
                ["tmux", "-L", self.socket, "has-session", "-t", "sdtui"], capture_output=True
            ).returncode
            == 0
        )


def sdtui_command() -> str:
    script = Path(sys.executable).with_name("sdtui")
    return str(script) if script.exists() else f"{sys.executable} -m sdtui"


@pytest.fixture
def tmux(tmp_path: Path, demo_model: object) -> Iterator[tuple[Tmux, Path]]:
    env = {
        "HF_HUB_OFFLINE": "1",
        "SDTUI_HOME": str(tmp_path / "home"),
        "SDTUI_STATE_DIR": str(tmp_path / "state"),
        "SDTUI_CONFIG": str(tmp_path / "config.toml"),
        "SDTUI_OUTPUTS_DIR": str(tmp_path / "outputs"),
        "SDTUI_CACHE_DIR": os.environ["SDTUI_CACHE_DIR"],  # the demo model conftest built
        "TERM": "xterm-256color",
        "COLORTERM": "truecolor",
    }
    # a tiny job: the remembered form is what the app starts with
    (tmp_path / "state").mkdir()
    form = {
        "version": 1,
        "mode": "txt2img",
        "params": {"steps": 6, "width": 64, "height": 64, "seed": 7, "model": "demo"},
    }
    (tmp_path / "state" / "form.json").write_text(json.dumps(form))
    exports = " ".join(f"{k}={v}" for k, v in env.items())
    t = Tmux(f"sdtui-test-{uuid.uuid4().hex[:8]}")
    t.run(
        "new-session",
        "-d",
        "-x",
        "120",
        "-y",
        "40",
        "-s",
        "sdtui",
        f"cd {tmp_path} && env {exports} {sdtui_command()} --demo --graphics halfcell; sleep 30",
    )
    # without a client attached, tmux may fall back to its default size
    t.run("resize-window", "-t", "sdtui", "-x", "120", "-y", "40", check=False)
    try:
        yield t, tmp_path
    finally:
        t.run("kill-server", check=False)
        _kill_leftovers(tmp_path)


def test_real_terminal_generate_crash_restart_hangup(tmux: tuple[Tmux, Path]) -> None:
    t, root = tmux
    outputs = root / "outputs" / "txt2img-images"
    start = time.monotonic()
    screen = t.wait(lambda s: "Negative prompt" in s and "Generate" in s, 20, "the first frame")
    assert time.monotonic() - start < 10, "the first frame took too long"
    assert "64" in screen  # the remembered size is in the form

    t.keys("a tmux cat", literal=True)
    t.keys("C-g")
    seen: list[str] = []
    t.wait(lambda s: seen.append(s) or "done:" in s, 90, "the job to finish")
    [png] = sorted(outputs.rglob("*.png"))
    # the job log shows the saved path (wrapped over lines by the app: join them)
    assert any(str(png) in "".join(line.strip() for line in s.splitlines()) for s in seen), seen[-1]

    [pid] = engine_pids(root)
    os.kill(pid, 9)
    t.wait(lambda s: "CRASHED" in s and "F12" in s, 10, "the crash to show")
    t.keys("F12")
    screen = t.wait(lambda s: "engine restarted" in s, 30, "the restart")
    new_pid = int(re.search(r"engine restarted \(pid (\d+)\)", screen).group(1))  # type: ignore[union-attr]
    assert engine_pids(root) == [new_pid]
    t.wait(lambda s: "engine ready" in s.split("restarted")[-1], 60, "the new engine")

    t.keys("C-g")
    t.wait(lambda s: "started" in s.split("restarted")[-1], 60, "the second job to start")
    import psutil

    ui_pid = psutil.Process(new_pid).ppid()
    t.run("kill-server")  # the terminal goes away: SIGHUP
    deadline = time.monotonic() + 60
    while len(list(outputs.rglob("*.png"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(list(outputs.rglob("*.png"))) == 2, "the engine did not finish the job after SIGHUP"
    deadline = time.monotonic() + 10
    while _alive(ui_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(ui_pid), "the app did not leave after SIGHUP"
    saved = json.loads((root / "state" / "form.json").read_text())
    assert saved["params"]["prompt"] == "a tmux cat"
    deadline = time.monotonic() + 20
    while _alive(new_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(new_pid), "the engine did not exit after its last job"


def engine_pids(root: Path) -> list[int]:
    """The engine processes started for this test (spawned children carry its environment)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "--multiprocessing-fork" in " ".join(p.info["cmdline"] or ()) and p.environ().get(
                "SDTUI_STATE_DIR"
            ) == str(root / "state"):
                found.append(p.pid)
        except psutil.Error:
            continue
    return found


def _kill_leftovers(root: Path) -> None:
    """After a failed test: the app and engine this test started, and only those."""
    import psutil

    time.sleep(1.0)
    for pid in engine_pids(root):
        with contextlib.suppress(psutil.Error):
            engine = psutil.Process(pid)
            parent = engine.parent()
            if parent is not None and "sdtui" in " ".join(parent.cmdline()):
                parent.kill()
            engine.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())
