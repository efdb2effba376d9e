"""The engine worker starts where POSIX-only names do not exist (Windows has no
``signal.SIGHUP`` and no ``os.nice``): its start-up path looks them up, never assumes them.

The check runs the real start-up (``engine_main``: signals, niceness, environment, torch,
status events, shutdown) in a fresh interpreter with those names deleted, so the test process
keeps its own signal handlers and nothing imported before can hide an unguarded use."""

from __future__ import annotations

import os
import subprocess
import sys

POSIX_ONLY = (("signal", "SIGHUP"), ("os", "nice"))

CODE = """
import os, signal
for module, name in {names!r}:
    delattr({{"os": os, "signal": signal}}[module], name)

from sdtui.config import Settings
from sdtui.engine import worker
from sdtui.ipc import protocol as msg


class Conn:
    def __init__(self):
        self.sent, self.given = [], False

    def recv(self):
        if self.given:
            raise EOFError
        self.given = True
        return msg.Shutdown()

    def send(self, event):
        self.sent.append(event)

    def close(self):
        pass


conn = Conn()
worker.engine_main(conn, Settings(), msg.EngineOptions(preload=False))
assert not hasattr(signal, "SIGHUP") and not hasattr(os, "nice")
for e in conn.sent:
    print(type(e).__name__, getattr(e, "state", getattr(e, "level", "")))
"""


def test_worker_starts_without_posix_only_names() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CODE.format(names=POSIX_ONLY)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # started, got ready (torch imported), stopped on Shutdown; nothing failed on the way
    assert lines[0] == "EngineStatus starting", lines
    assert "EngineStatus ready" in lines and lines[-1] == "EngineStatus stopped", lines
    assert not [line for line in lines if line.startswith("Log error")], lines
