"""Test-wide setup: never reach the Hugging Face Hub, share one cache (one built demo model)
between every test and every subprocess a test starts, and keep every engine daemon a test
starts inside this session's own folders (never the user's), stopped when the session ends."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sdtui.engine.demo import DemoModel
    from sdtui.ipc.client import DaemonClient
    from sdtui.ipc.paths import DaemonPaths

# Set at import time, before any test imports huggingface_hub or spawns a child process.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
_CACHE = tempfile.mkdtemp(prefix="sdtui-test-cache-")
os.environ["SDTUI_CACHE_DIR"] = _CACHE
# the daemon a CLI test starts lives here (short paths: a Unix socket path has ~100 bytes)
_RUNTIME = tempfile.mkdtemp(prefix="sdtui-rt-")
_STATE = tempfile.mkdtemp(prefix="sdtui-state-")
os.environ["SDTUI_RUNTIME_DIR"] = _RUNTIME
os.environ["SDTUI_STATE_DIR"] = _STATE


def session_processes() -> list[Any]:
    """Every daemon and engine worker started by this test session (they carry its cache)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or ())
            if ("sdtui.ipc.daemon" in cmd or "--multiprocessing-fork" in cmd) and p.environ().get(
                "SDTUI_CACHE_DIR"
            ) == _CACHE:
                found.append(p)
        except Exception:  # noqa: BLE001 - gone, or not ours to read
            continue
    return found


def _end_session() -> None:
    import psutil

    procs = session_processes()
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=10)
    for folder in (_CACHE, _RUNTIME, _STATE):
        shutil.rmtree(folder, ignore_errors=True)


atexit.register(_end_session)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of a CLI subprocess: its own home, settings file, offline."""
    e = dict(os.environ)
    e.update(
        SDTUI_HOME=str(tmp_path / "home"),
        SDTUI_CONFIG=str(tmp_path / "config.toml"),
        HF_HUB_OFFLINE="1",
    )
    return e


@pytest.fixture(scope="session")
def demo_model() -> DemoModel:
    """The tiny demo model (diffusers folder, .safetensors, .ckpt), built once per session."""
    from sdtui.engine.demo import ensure_demo_model  # lazy: UI-only tests never import torch

    return ensure_demo_model()


@pytest.fixture
def daemon_paths(tmp_path: Path) -> Iterator[DaemonPaths]:
    """A daemon of the test's own: its socket folder (short) and its queue file."""
    from sdtui.ipc.paths import DaemonPaths

    folder = Path(tempfile.mkdtemp(prefix="sdtui-d-"))
    yield DaemonPaths(folder, tmp_path / "queue.sqlite3")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def attach(
    daemon_paths: DaemonPaths, demo_model: DemoModel
) -> Iterator[Callable[..., DaemonClient]]:
    """``attach(settings, **kw)``: a client of the test's daemon (started by the first call).
    The daemon is stopped after the test, its jobs cancelled."""
    from sdtui.ipc.client import DaemonClient

    clients: list[DaemonClient] = []

    def make(settings: Any, *, who: str = "test", **kw: Any) -> DaemonClient:
        kw.setdefault("preload", "demo")
        client = DaemonClient(settings, paths=daemon_paths, who=who).attach(**kw)
        clients.append(client)
        return client

    yield make
    stop_daemon(daemon_paths, clients[0].settings if clients else None)
    for c in clients:
        c.detach()


def stop_daemon(paths: DaemonPaths, settings: Any = None) -> None:
    """Stop the daemon at ``paths`` if one answers, cancelling its jobs."""
    from sdtui.config import Settings
    from sdtui.errors import UserError
    from sdtui.ipc.client import DaemonClient

    client = DaemonClient(settings or Settings(), paths=paths, who="test teardown")
    try:
        client.attach(start=False)
    except UserError:
        return
    client.stop_daemon(cancel_jobs=True, timeout=30)
