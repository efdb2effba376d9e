"""The sdtui app: starts the main screen (``screens/main.py``, where the work is) and leaves.

The engine is the user's daemon (``sdtui.ipc.daemon``), reached through a ``DaemonClient``
attached before ``App.run``; other TUIs and CLI calls may share it, and its jobs outlive
this app. The App holds what outlives a screen: the client, the settings, and what to do
when the terminal goes away. This module never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

from textual.app import App
from textual.screen import Screen

from sdtui.config import Settings
from sdtui.safe_text import one_line, visible
from sdtui.tui.catalog import Catalog, discover_catalog
from sdtui.tui.engine_client import EngineClient
from sdtui.tui.form_state import FormState
from sdtui.tui.screens.main import POLL_INTERVAL_S, MainScreen

HANGUP_GRACE_S = 5.0


class SdtuiApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "sdtui"

    def __init__(
        self,
        host: EngineClient,
        settings: Settings,
        *,
        form_state: FormState | None = None,
        model_names: Sequence[str] | None = None,
        upscaler_names: Sequence[str] | None = None,
        gpu_sampler: Any = None,
        gpu_interval: float | None = 1.0,
        remember_form: bool = True,
        clock: Callable[[], str] | None = None,
        poll_interval: float = POLL_INTERVAL_S,
        restart_host: Callable[[EngineClient], list[int]] | None = None,  # default host.restart()
        handle_sighup: bool = False,
        graphics_note: str = "",
        discover: Callable[[Catalog], Catalog] | None = None,
    ) -> None:
        """``host`` and ``settings`` are what the app works with; ``handle_sighup`` is for
        a real terminal. The rest is handed to the main screen: what it shows first (the
        form, the model and upscaler names that need no disk) and what tests replace (the
        GPU sampler, the clock, the catalog walk, the poll rate, the restart)."""
        super().__init__()
        self.host = host
        self.settings = settings
        self.handle_sighup = handle_sighup
        self.hung_up = False
        form = form_state or FormState()
        if form.memory_mode is None:
            form = form.replace(memory_mode=settings.memory_mode)
        self.main = MainScreen(
            host,
            settings,
            form,
            # what needs no disk now; the rest is found by a worker after the first frame
            Catalog.placeholder(model_names or (), upscaler_names or ()),
            discover=discover or functools.partial(discover_catalog, settings),
            gpu_sampler=gpu_sampler,
            gpu_interval=gpu_interval,
            remember_form=remember_form,
            clock=clock,
            poll_interval=poll_interval,
            restart_host=restart_host,
            graphics_note=graphics_note,
        )

    def get_default_screen(self) -> Screen[Any]:
        return self.main

    def on_mount(self) -> None:
        sighup = getattr(signal, "SIGHUP", None)  # POSIX only: Windows has none
        if self.handle_sighup and sighup is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().add_signal_handler(sighup, self._hangup)

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: Any = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """A toast. Its words often quote a file or an engine message: plain text (no
        markup unless asked for) with control characters shown, never sent."""
        super().notify(
            visible(str(message)) if not markup else message,
            title=one_line(str(title)),
            severity=severity,
            timeout=timeout,
            markup=markup,
        )

    # -- leaving -------------------------------------------------------------------------

    def _hangup(self) -> None:
        """The terminal went away (SIGHUP): remember the form and leave; the daemon's jobs go
        on without this app."""
        self.hung_up = True
        self.main.remember()
        # Leaving must not depend on a terminal that is gone: if the orderly exit hangs on
        # it, go anyway (the daemon does not need us).
        threading.Timer(HANGUP_GRACE_S, os._exit, (129,)).start()
        self.exit(129)

    async def action_quit(self) -> None:
        self.main.remember()
        self.exit(0)
