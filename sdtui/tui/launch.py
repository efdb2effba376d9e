"""`sdtui` with no subcommand: start the engine and the graphics probe, then the app.

Order matters. The engine process is spawned and the terminal probed for image support
*before* ``App.run()``: multiprocessing started inside a running Textual app fails (Textual
issue #3593: Textual replaces stderr), and the probe must read the terminal's replies before
Textual owns stdin. The engine's own output (warnings, progress bars of libraries) goes to
a log file: the terminal belongs to the UI.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from sdtui.config import Settings, state_dir
from sdtui.engine.host import EngineHost
from sdtui.engine.worker import EngineOptions
from sdtui.tui.form_state import FormState, load_form_state

ENGINE_LOG = "engine.log"
EXIT_HANGUP = 129
# The engine yields the CPU to the UI: keys stay snappy while torch samples on the CPU, and
# the first frame is not slowed by the engine importing torch. On a GPU it changes nothing.
ENGINE_NICE = 10


def engine_log_path() -> Path:
    return state_dir() / ENGINE_LOG


@contextlib.contextmanager
def engine_output_to(path: Path, fds: tuple[int, ...] = (1, 2)) -> Iterator[None]:
    """Point ``fds`` at ``path`` while a child process is started (it inherits them), then
    put them back."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        yield  # no log file: the engine writes to the terminal; better than not starting
        return
    saved = [os.dup(fd) for fd in fds]
    try:
        for fd in fds:
            os.dup2(target, fd)
        with contextlib.redirect_stderr(sys.__stderr__):
            yield
    finally:
        for fd, copy in zip(fds, saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(target)


def lower_priority(pid: int | None) -> None:
    """Lower the engine's priority right after the spawn, before torch starts its threads
    (on Linux each thread has its own nice value and new threads inherit it)."""
    if pid is None or not hasattr(os, "setpriority"):
        return
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, ENGINE_NICE)


def start_engine(settings: Settings, options: EngineOptions, log: Path | None = None) -> EngineHost:
    host = EngineHost(settings, options)
    with engine_output_to(log or engine_log_path()):
        host.start()
    lower_priority(host.pid)
    return host


def restart_engine(host: EngineHost, log: Path | None = None) -> list[int]:
    """Called from a worker thread of the running app: stop the old process first (that may
    take seconds), then spawn with the engine's output pointed at the log for the few
    milliseconds the spawn takes."""
    host.stop(timeout=5)
    with engine_output_to(log or engine_log_path()):
        ids = host.restart()
    lower_priority(host.pid)
    return ids


def initial_form(args: argparse.Namespace, settings: Settings) -> FormState:
    state = load_form_state() or FormState()
    if getattr(args, "model", None):
        state = state.with_params(model=args.model)
    elif getattr(args, "demo", False):
        state = state.with_params(model="demo")
    elif state.params.model is None and settings.default_model:
        state = state.with_params(model=settings.default_model)
    return state


def model_names(settings: Settings) -> list[str]:
    """Every checkpoint name (walks the folder and reads headers: not before the first
    frame; the app uses ``catalog.discover_catalog`` from a worker)."""
    from sdtui.model_index import discover_models

    names: list[str] = []
    if settings.default_model:
        names.append(settings.default_model)
    with contextlib.suppress(OSError):
        names += [e.name for e in discover_models(settings.models)]
    names.append("demo")
    return list(dict.fromkeys(names))


def upscaler_names(settings: Settings) -> list[str]:
    from sdtui.upscalers import list_upscalers

    try:
        return [u.name for u in list_upscalers(settings.models)]
    except OSError:
        return ["Lanczos", "Nearest"]


def run_tui(args: argparse.Namespace, settings: Settings) -> int:
    from sdtui.tui import graphics

    requested = getattr(args, "graphics", None) or settings.graphics
    choice = graphics.probe(requested)
    form = initial_form(args, settings)
    if form.memory_mode and form.memory_mode != settings.memory_mode:
        settings = settings.replace(memory_mode=form.memory_mode)  # picked in the TUI last time
    # The remembered model is loaded at start instead of the default, so it is loaded once.
    preload_default = form.params.model is None
    host = start_engine(settings, EngineOptions(demo=bool(args.demo), preload=preload_default))
    if not preload_default and form.params.model:
        host.load_model(form.params.model)

    from sdtui.tui.app import SdtuiApp

    app = SdtuiApp(
        host,
        settings,
        form_state=form,
        # only what needs no disk: the app lists the folders after its first frame
        model_names=[n for n in (form.params.model, settings.default_model) if n],
        restart_host=restart_engine,  # type: ignore[arg-type]
        handle_sighup=True,
        graphics_note=f"images: {choice.mode_used} ({choice.reason})",
    )
    code: int | None = 0
    try:
        code = app.run()
    except OSError:
        if not app.hung_up:
            raise
    if app.hung_up:
        # The terminal is gone. Leave now without stopping the engine: it sees its parent go,
        # finishes the running job and saves it. (A normal exit would wait for the child.)
        os._exit(EXIT_HANGUP)
    host.stop()
    return code or 0
