"""`sdtui` (or `sdtui attach`): attach to the engine daemon (starting it when none runs),
probe the terminal for images, then run the app.

Order matters. The daemon is reached and the terminal probed *before* ``App.run()``: the
probe must read the terminal's replies before Textual owns stdin, and a daemon started from
here must not inherit the app's replaced stdio (Textual issue #3593). The daemon and its
engine workers write to the engine log: the terminal belongs to the UI.

Quitting, or losing the terminal, detaches: jobs go on in the daemon, and a later `sdtui`
attaches to them again.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from sdtui.config import Settings
from sdtui.ipc.client import DaemonClient
from sdtui.tui.form_state import FormState, is_demo_model, load_form_state, with_demo_defaults

EXIT_HANGUP = 129


def attach_engine(args: argparse.Namespace, settings: Settings, form: FormState) -> DaemonClient:
    """The daemon client the app talks to. A daemon started here loads the form's model
    at once; a running one is left as it is (a job loads its model when it runs)."""
    if getattr(args, "no_daemon", False):
        import tempfile

        from sdtui.ipc.paths import DaemonPaths

        folder = Path(tempfile.mkdtemp(prefix="sdtui-private-"))
        client = DaemonClient(
            settings, paths=DaemonPaths(folder, folder / "queue.sqlite3"), private=True
        )
    else:
        client = DaemonClient(settings, who="tui")
    return client.attach(
        start=True, preload=form.params.model, demo=bool(getattr(args, "demo", False))
    )


def initial_form(args: argparse.Namespace, settings: Settings) -> FormState:
    state = load_form_state() or FormState()
    if getattr(args, "model", None):
        state = state.with_params(model=args.model)
    elif getattr(args, "demo", False):
        state = state.with_params(model="demo")
    elif state.params.model is None and settings.default_model:
        state = state.with_params(model=settings.default_model)
    if is_demo_model(state.params.model):
        state = with_demo_defaults(state)  # seconds an image on a CPU, not minutes
    return state


def model_names(settings: Settings) -> list[str]:
    """Every checkpoint name (walks the folder and reads headers: not before the first
    frame; the app uses ``catalog.discover_catalog`` from a worker)."""
    from sdtui.model_index import discover_models

    names: list[str] = []
    if settings.default_model:
        names.append(settings.default_model)
    with contextlib.suppress(Exception):  # a bad file never empties the list
        names += [e.name for e in discover_models(settings.models) if not getattr(e, "error", None)]
    names.append("demo")
    return list(dict.fromkeys(names))


def upscaler_names(settings: Settings) -> list[str]:
    from sdtui.upscalers import list_upscalers

    try:
        return [u.name for u in list_upscalers(settings.models)]
    except Exception:  # noqa: BLE001 - the built-ins still work
        return ["Lanczos", "Nearest"]


def run_tui(args: argparse.Namespace, settings: Settings) -> int:
    from sdtui.tui import graphics

    requested = getattr(args, "graphics", None) or settings.graphics
    choice = graphics.probe(requested)
    form = initial_form(args, settings)
    if form.memory_mode and form.memory_mode != settings.memory_mode:
        settings = settings.replace(memory_mode=form.memory_mode)  # picked in the TUI last time
    client = attach_engine(args, settings, form)

    from sdtui.tui.app import SdtuiApp

    app = SdtuiApp(
        client,
        settings,
        form_state=form,
        # only what needs no disk: the app lists the folders after its first frame
        model_names=[n for n in (form.params.model, settings.default_model) if n],
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
        # The terminal is gone: leave now (a normal exit could block on the dead terminal);
        # the daemon sees this client go, and its jobs go on.
        os._exit(EXIT_HANGUP)
    note = leaving_note(client)
    client.detach()
    if client.private:
        from sdtui.cli import release

        release(client)
    if note:
        print(note, file=sys.stderr)
    return code or 0


def leaving_note(client: Any) -> str:
    """What keeps running after the app quits, in one line."""
    if not client.connected or client.private:
        return ""
    jobs = len(client.pending)
    pid = client.pid
    if jobs:
        return (
            f"sdtui: {jobs} job{'s go' if jobs != 1 else ' goes'} on in the engine daemon (pid {pid}); "
            "`sdtui` re-attaches, `sdtui queue` lists them"
        )
    idle = client.settings.daemon_idle_minutes
    stops = f"; it stops after {idle:g} min without a client" if idle else ""
    return f"sdtui: the engine daemon (pid {pid}) keeps the model loaded{stops} (`sdtui daemon stop` ends it now)"
