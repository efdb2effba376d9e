"""The real `sdtui` in a real terminal (tmux), driven by keys, read back with capture-pane.

One session walks: first frame -> type a prompt -> ctrl+g -> the job log shows the saved
path and the PNG exists -> the engine worker is killed and replaced by the daemon -> the
daemon itself is killed -> the app says so -> F12 starts a new daemon (a process started
from inside the running app, Textual issue #3593) -> a second job is started and the
terminal is closed (SIGHUP): the app leaves, the daemon finishes the job and saves the
image, then stops after its idle time; the form was remembered. Others: quitting leaves a
job running and a second `sdtui` attaches to it; an app killed in its first seconds leaves
no engine process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
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
        self.env = ""  # the environment the app runs with
        self.root = Path()
        self.runtime: Path | None = None  # the daemon's folder

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


def start_tmux(root: Path, form: dict, idle_minutes: str = "0.05") -> Tmux:
    """A tmux server running `sdtui --demo` in ``root``, with its own daemon folder."""
    import tempfile

    runtime = tempfile.mkdtemp(prefix="sdtui-t-")
    env = {
        "HF_HUB_OFFLINE": "1",
        "SDTUI_HOME": str(root / "home"),
        "SDTUI_STATE_DIR": str(root / "state"),
        "SDTUI_CONFIG": str(root / "config.toml"),
        "SDTUI_OUTPUTS_DIR": str(root / "outputs"),
        "SDTUI_RUNTIME_DIR": runtime,
        "SDTUI_DAEMON_IDLE_MINUTES": idle_minutes,  # a daemon left alone ends soon
        "SDTUI_CACHE_DIR": os.environ["SDTUI_CACHE_DIR"],  # the demo model conftest built
        "TERM": "xterm-256color",
        "COLORTERM": "truecolor",
    }
    (root / "state").mkdir(exist_ok=True)
    (root / "state" / "form.json").write_text(json.dumps(form))
    exports = " ".join(f"{k}={v}" for k, v in env.items())
    t = Tmux(f"sdtui-test-{uuid.uuid4().hex[:8]}")
    t.env = exports
    t.runtime = Path(runtime)
    t.root = root
    t.run(
        "new-session",
        "-d",
        "-x",
        "120",
        "-y",
        "40",
        "-s",
        "sdtui",
        f"cd {root} && env {exports} {sdtui_command()} --demo --graphics halfcell; sleep 60",
    )
    # without a client attached, tmux may fall back to its default size
    t.run("resize-window", "-t", "sdtui", "-x", "120", "-y", "40", check=False)
    return t


SMALL_FORM = {
    "version": 1,
    "mode": "txt2img",
    "params": {"steps": 6, "width": 64, "height": 64, "seed": 7, "model": "demo"},
}


@pytest.fixture
def tmux(tmp_path: Path, demo_model: object) -> Iterator[tuple[Tmux, Path]]:
    t = start_tmux(tmp_path, SMALL_FORM)
    try:
        yield t, tmp_path
    finally:
        t.run("kill-server", check=False)
        _kill_leftovers(tmp_path, t)


def test_real_terminal_generate_crash_restart_hangup(tmux: tuple[Tmux, Path]) -> None:
    t, root = tmux
    outputs = root / "outputs" / "txt2img-images"
    start = time.monotonic()
    screen = t.wait(lambda s: "Negative prompt" in s and "Generate" in s, 20, "the first frame")
    assert time.monotonic() - start < 10, "the first frame took too long"
    assert "64" in screen  # the remembered size is in the form
    t.wait(lambda s: "attached to the engine daemon" in s, 20, "the app to attach")

    t.keys("a tmux cat", literal=True)
    t.keys("C-g")
    seen: list[str] = []
    t.wait(lambda s: seen.append(s) or "done:" in s, 90, "the job to finish")
    [png] = sorted(outputs.rglob("*.png"))
    # the job log shows the saved path (wrapped over lines by the app: join them)
    assert any(str(png) in "".join(line.strip() for line in s.splitlines()) for s in seen), seen[-1]

    # a worker crash (a driver fault, the OOM killer): the daemon starts a new one by itself
    [daemon], [worker] = daemon_pids(root), worker_pids(root)
    os.kill(worker, 9)
    t.wait(
        lambda s: "exited unexpectedly" in s and "starting a new one" in s, 20, "the worker crash"
    )
    deadline = time.monotonic() + 30
    while worker_pids(root) in ([], [worker]) and time.monotonic() < deadline:
        time.sleep(0.2)
    [new_worker] = worker_pids(root)
    assert new_worker != worker and daemon_pids(root) == [daemon]

    # the daemon itself dies: the app stays up, says so, and F12 starts a new one
    os.kill(daemon, 9)
    t.wait(lambda s: "CRASHED" in s and "F12" in s, 10, "the crash to show")
    t.keys("F12")
    t.wait(lambda s: "engine daemon started (pid" in s, 30, "the restart")
    [new_daemon] = daemon_pids(root)  # (the crash notice may cover the end of the log line)
    assert new_daemon != daemon
    t.wait(lambda s: f"attached: daemon {new_daemon}" in s and " ready " in s, 60, "the new engine")

    t.keys("C-g")
    t.wait(lambda s: "started" in s.split("daemon started")[-1], 60, "the second job to start")
    import psutil

    ui_pid = next(
        p.pid
        for p in psutil.Process(_pane_pid(t)).children(recursive=True)
        if "sdtui" in " ".join(p.cmdline()) and "ipc.daemon" not in " ".join(p.cmdline())
    )
    t.run("kill-server")  # the terminal goes away: SIGHUP
    deadline = time.monotonic() + 60
    while len(list(outputs.rglob("*.png"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(list(outputs.rglob("*.png"))) == 2, "the daemon did not finish the job after SIGHUP"
    deadline = time.monotonic() + 10
    while _alive(ui_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(ui_pid), "the app did not leave after SIGHUP"
    saved = json.loads((root / "state" / "form.json").read_text())
    assert saved["params"]["prompt"] == "a tmux cat"
    # no client, no job: after its idle time (3 s here) the daemon and its worker end
    deadline = time.monotonic() + 30
    while (daemon_pids(root) or worker_pids(root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not daemon_pids(root) and not worker_pids(root), "the daemon did not stop when idle"


def test_quitting_leaves_the_job_running_and_sdtui_attaches_again(
    tmp_path: Path, demo_model: object
) -> None:
    # the job must still be running when the second app attaches: 400 steps x 20 images
    long = {"steps": 400, "batch_count": 20, "width": 128, "height": 128}
    long_form = {**SMALL_FORM, "params": {**SMALL_FORM["params"], **long}}
    t = start_tmux(tmp_path, long_form, idle_minutes="30")
    try:
        t.wait(lambda s: "attached to the engine daemon" in s, 30, "the app to attach")
        t.keys("a long cat", literal=True)
        t.keys("C-g")
        t.wait(lambda s: "started" in s, 60, "the job to start")
        [daemon] = daemon_pids(tmp_path)
        t.keys("C-q")
        screen = t.wait(lambda s: "goes on in the engine daemon" in s, 20, "the quit note")
        assert f"pid {daemon}" in screen and "`sdtui` re-attaches" in screen
        assert daemon_pids(tmp_path) == [daemon], "the daemon keeps running"

        second = Tmux(t.socket)  # a second terminal (an SSH login from a phone)
        second.run(
            "new-window",
            "-t",
            "sdtui",
            f"cd {tmp_path} && env {t.env} {sdtui_command()} --graphics halfcell; sleep 60",
        )
        # The queue pane, not the log, is the proof: the log is a few rows tall and on a fast
        # machine the job's saves that the daemon replays can scroll the attach line away.
        screen = second.wait(
            lambda s: "▶ #1 txt2img 128x128 x20" in s and "busy" in s, 30, "the second attach"
        )
        assert daemon_pids(tmp_path) == [daemon], "the second app attached, it started none"
        assert "a long cat" in " ".join(screen.split())
        second.keys("Escape")  # interrupt it from the new terminal
        second.wait(lambda s: "interrupted" in s, 60, "the interrupt")
    finally:
        t.run("kill-server", check=False)
        _kill_leftovers(tmp_path, t)


def test_an_app_killed_in_its_first_seconds_leaves_no_engine_behind(
    tmp_path: Path, demo_model: object
) -> None:
    """The orphan repro: the terminal closes while the engine is still importing torch."""
    t = start_tmux(tmp_path, SMALL_FORM)
    try:
        deadline = time.monotonic() + 10
        while not (daemon_pids(tmp_path) and worker_pids(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemon_pids(tmp_path), "the app started its daemon"
        t.run("kill-server")  # within about a second of the start
        deadline = time.monotonic() + 40
        while (daemon_pids(tmp_path) or worker_pids(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not daemon_pids(tmp_path) and not worker_pids(tmp_path), "an engine process was left"
    finally:
        t.run("kill-server", check=False)
        _kill_leftovers(tmp_path, t)


def _pane_pid(t: Tmux) -> int:
    return int(t.run("display-message", "-p", "-t", "sdtui", "#{pane_pid}").strip())


def _ours(root: Path, marker: str) -> list[int]:
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if (
                marker in " ".join(p.info["cmdline"] or ())
                and p.environ().get("SDTUI_STATE_DIR") == str(root / "state")
                and p.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(p.pid)
        except psutil.Error:
            continue
    return found


def daemon_pids(root: Path) -> list[int]:
    """The engine daemon started for this test (it carries the test's environment)."""
    return _ours(root, "sdtui.ipc.daemon")


def worker_pids(root: Path) -> list[int]:
    return _ours(root, "--multiprocessing-fork")


def _kill_leftovers(root: Path, t: Tmux | None = None) -> None:
    """After a test: the daemon and the workers it started, and only those; its folder."""
    import psutil

    time.sleep(0.5)
    for pid in daemon_pids(root) + worker_pids(root):
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    if t is not None and t.runtime is not None:
        shutil.rmtree(t.runtime, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())
