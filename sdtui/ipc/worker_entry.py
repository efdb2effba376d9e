"""The spawn target of an engine worker. The daemon names this function, so it never
imports ``sdtui.engine`` (torch) itself; the import happens in the new process."""

from __future__ import annotations

from typing import Any

from sdtui.config import Settings
from sdtui.ipc.protocol import EngineOptions


def run_worker(conn: Any, settings: Settings, options: EngineOptions) -> None:
    from sdtui.engine.worker import engine_main  # the one door from ipc into the engine

    engine_main(conn, settings, options)
