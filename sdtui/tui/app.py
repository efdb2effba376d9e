"""The sdtui app: prompt, settings, preview, batch grid, queue, job log, status bar, GPU pane.

The engine is the user's daemon (``sdtui.ipc.daemon``), reached through a ``DaemonClient``
attached before ``App.run``; other TUIs and CLI calls may share it, and its jobs outlive
this app. The app polls the client's events 20 times a second without blocking
(``host.poll(0)``), turns each into a Textual message (``sdtui.tui.messages``) and handles
them below. Widgets only render and post messages; the decisions (what to submit, what to
show, what to remember) are made here. This module never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.events import Resize
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Input, Label

from sdtui.config import Settings
from sdtui.errors import UserError
from sdtui.ipc import protocol as msg
from sdtui.jobstore import job_summary as summarize_job
from sdtui.params import MAX_SIZE, SIZE_MULTIPLE, ParamError
from sdtui.safe_text import one_line, visible
from sdtui.tui import messages as m
from sdtui.tui.catalog import Catalog, discover_catalog
from sdtui.tui.commands import SdtuiCommands, bindings, shown
from sdtui.tui.files import file_problem, image_size, params_from_file, seed_from_file, show
from sdtui.tui.form_state import FormState, save_form_state
from sdtui.tui.screens.error_detail import ErrorDetailScreen
from sdtui.tui.screens.full_view import FullViewScreen
from sdtui.tui.screens.history import HistoryScreen
from sdtui.tui.screens.networks import NetworkPickerScreen, network_text
from sdtui.tui.widgets.gpu_pane import GpuPane
from sdtui.tui.widgets.image_view import ImageGrid, PreviewImage
from sdtui.tui.widgets.job_log import JobLog
from sdtui.tui.widgets.prompt_editor import PromptArea, PromptEditor, drawable
from sdtui.tui.widgets.queue_view import QueueEntry, QueueView
from sdtui.tui.widgets.safe_input import ControlPictures
from sdtui.tui.widgets.settings_form import SettingsForm
from sdtui.tui.widgets.status_bar import StatusBar

POLL_INTERVAL_S = 0.05  # 20 Hz: smooth progress, negligible CPU
WIDE_WIDTH = 140  # from here on the GPU pane has its own column
HANGUP_GRACE_S = 5.0
TALL_HEIGHT = 36  # from here on the job log gets more lines
IMG2IMG_2X_DENOISE = 0.75


def _while_shown(handler: Callable[..., None]) -> Callable[..., None]:
    """Engine events can still be in the message queue while the app shuts down and its
    widgets are gone: drop them then, rather than fail the exit."""

    @functools.wraps(handler)
    def wrapper(self: SdtuiApp, *args: Any) -> None:
        try:
            handler(self, *args)
        except NoMatches:
            if not self.main.query("#right") or not self.main.query(StatusBar):
                return  # the screen is being taken down
            raise

    return wrapper


class EngineLike(Protocol):
    """What the app needs of ``DaemonClient`` (tests pass a fake with the same shape)."""

    pending: dict[int, Any]  # queued and running jobs, in queue order (JobInfo values)
    running_job: int | None
    state: str

    @property
    def pid(self) -> int | None: ...
    @property
    def queued(self) -> list[int]: ...
    def submit(self, params: Any) -> int: ...
    def submit_upscale(self, params: Any) -> int: ...
    def cancel(self, job_id: int | None = None) -> None: ...
    def skip(self) -> None: ...
    def load_model(self, model: str) -> None: ...
    def set_memory_mode(self, mode: str) -> None: ...
    def restart(self) -> list[int]: ...
    def poll(self, timeout: float = 0.0) -> list[Any]: ...


@dataclass
class JobInfo:
    kind: str  # txt2img | img2img | extras
    summary: str
    images: int = 1
    steps: int = 0
    submitted_by: str = ""  # another client's job: who queued it

    @classmethod
    def from_queue(cls, job: msg.JobInfo) -> JobInfo:
        kind = "extras" if job.kind == "upscale" else (job.summary.split() or ["txt2img"])[0]
        return cls(kind, job.summary, job.images_total, job.steps, job.submitted_by)


class PathPromptScreen(ModalScreen[str | None]):
    """Asks for a file path (enter: use it, escape: cancel)."""

    DEFAULT_CSS = """
    PathPromptScreen { align: center middle; }
    PathPromptScreen > Vertical {
        width: 80%; max-width: 100; height: auto; border: round $accent; padding: 0 1;
        background: $surface;
    }
    """
    BINDINGS = [("escape", "cancel", "Cancel")]

    def __init__(self, title: str, value: str = "") -> None:
        super().__init__()
        self._title = title
        self._value = value

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self._title, markup=False)
            yield Input(
                self._value,
                placeholder="/path/to/image.png",
                id="path-input",
                highlighter=ControlPictures(),
            )

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class KeyFooter(Footer):
    """The footer, with its keys wrapping onto more rows on a narrow terminal instead of
    running off the edge: every key stays visible."""

    CELL_WIDTH = 13

    def compose(self) -> ComposeResult:
        yield from super().compose()
        self._wrap(self.app.size.width)

    def on_resize(self, event: Resize) -> None:
        self._wrap(event.size.width)

    def _wrap(self, width: int) -> None:
        columns = max(3, (width or 80) // self.CELL_WIDTH)
        if self.styles.grid_size_columns != columns:
            self.styles.grid_size_columns = columns


class MainScreen(Screen[None]):
    """The one working screen. Its keys live here (not on the App) so they do not fire
    while a modal screen (full view, history, a prompt) is on top."""

    AUTO_FOCUS = "#prompt"
    BINDINGS = [*bindings(), Binding("ctrl+p", "app.command_palette", "Commands")]

    def __init__(self, app_: SdtuiApp) -> None:
        super().__init__(id="main-screen")
        self._sdtui = app_

    def compose(self) -> ComposeResult:
        a = self._sdtui
        # the layout classes before the widgets mount: set after, they restyle every widget
        a.update_layout(*a.size)
        c = a.catalog
        with Horizontal(id="work"):
            with Vertical(id="left"):
                yield PromptEditor(a.form_state.params.prompt, a.form_state.params.negative_prompt)
                yield SettingsForm(
                    a.form_state,
                    c.models,
                    c.upscalers,
                    hires_upscalers=c.hires_upscalers,
                    vaes=c.vaes,
                    id="form",
                )
            with Vertical(id="right"):
                yield PreviewImage(id="preview", placeholder="no image yet: type a prompt, ctrl+g")
                yield ImageGrid(id="grid", empty_text="the images of a job show here")
                yield QueueView(id="queue")
            with Vertical(id="side"):
                yield GpuPane(a.gpu_sampler, our_pids=a.our_pids(), interval=a.gpu_interval)
        yield JobLog(id="log", clock=a.clock)
        yield StatusBar(id="status")
        yield KeyFooter(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self._sdtui.main_mounted()

    def on_resize(self, event: Resize) -> None:
        self._sdtui.update_layout(event.size.width, event.size.height)


PREVIEW_INTERVAL = 0.25  # seconds between live preview redraws


class SdtuiApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "sdtui"
    COMMANDS = App.COMMANDS | {SdtuiCommands}

    def __init__(
        self,
        host: EngineLike,
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
        restart_host: Callable[[EngineLike], list[int]] | None = None,  # default host.restart()
        handle_sighup: bool = False,
        graphics_note: str = "",
        discover: Callable[[Catalog], Catalog] | None = None,
    ) -> None:
        super().__init__()
        self.host = host
        self.settings = settings
        self.form_state = form_state or FormState()
        if self.form_state.memory_mode is None:
            self.form_state = self.form_state.replace(memory_mode=settings.memory_mode)
        self.memory_mode: str = self.form_state.memory_mode or "auto"
        self.form_errors: dict[str, str] = {}
        # what needs no disk now; the rest is found by a worker after the first frame
        self.catalog = Catalog.placeholder(model_names or (), upscaler_names or ())
        self._discover = discover or functools.partial(discover_catalog, settings)
        self.last_failure: msg.JobFailed | None = None
        self.gpu_sampler = gpu_sampler
        self.gpu_interval = gpu_interval
        self.remember_form = remember_form
        self.clock = clock
        self.poll_interval = poll_interval
        self._restart_host = restart_host or (lambda h: h.restart())
        self.handle_sighup = handle_sighup
        self.graphics_note = graphics_note
        self.hung_up = False
        self._preview: Any = None  # the newest preview not yet drawn
        self._preview_shown_at = 0.0
        self._preview_timer: Any = None
        self.jobs: dict[int, JobInfo] = {}
        self.job_images: dict[int, list[str]] = {}
        self.shown_job: int | None = None
        self.selected_path: str | None = None
        self.last_seed: int | None = None
        self.engine_state = getattr(host, "state", "starting")
        self.gpu_visible: bool | None = None  # None: automatic (shown on wide terminals)
        self._restarting = False
        self._announced_ready = False
        self._catalog_problems: set[str] = set()  # said in the job log already
        self.main = MainScreen(self)

    # -- set-up --------------------------------------------------------------------------

    def get_default_screen(self) -> Screen[Any]:
        return self.main

    @property
    def model_names(self) -> list[str]:
        return self.catalog.models

    @property
    def upscaler_names(self) -> list[str]:
        return self.catalog.upscalers

    def main_mounted(self) -> None:
        self.set_interval(self.poll_interval, self.poll_engine)
        # listing models, upscalers, VAEs, LoRAs walks folders and reads headers: after the
        # first frame, in a thread
        self.call_after_refresh(self._find_catalog)
        sighup = getattr(signal, "SIGHUP", None)  # not on Windows
        if self.handle_sighup and sighup is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().add_signal_handler(sighup, self._hangup)
        if self.graphics_note:
            self.log_line("info", self.graphics_note)
        self.main.query_one(StatusBar).update_line(
            state=self.engine_state, memory_mode=self.memory_mode
        )
        self.update_layout(*self.main.size)

    @work(thread=True, exclusive=True, group="catalog")
    def _find_catalog(self) -> None:
        try:
            catalog = self._discover(self.catalog)
        except Exception as e:  # noqa: BLE001 - the placeholder lists still work
            self.call_from_thread(self.log_line, "warning", f"listing the models failed: {e}")
            return
        self.call_from_thread(self._catalog_found, catalog)

    @_while_shown
    def _catalog_found(self, catalog: Catalog) -> None:
        self.catalog = catalog
        # a bad checkpoint (or a folder that could not be listed): one line each, once
        for problem in getattr(catalog, "problems", ()):
            if problem not in self._catalog_problems:
                self._catalog_problems.add(problem)
                self.log_line("warning", problem)
        form = self.form()
        form.update_choices("model", catalog.models)
        form.update_choices("upscaler", catalog.upscalers)
        form.update_choices("hr_upscaler", catalog.hires_upscalers)
        form.update_choices("vae", catalog.vaes)
        self.main.query_one(PromptEditor).set_embedding_sizes(catalog.embedding_sizes)

    def refresh_catalog(self) -> None:
        """List the folders again (a LoRA or VAE added while the app runs)."""
        self._find_catalog()

    def our_pids(self) -> tuple[int, ...]:
        """This app, the daemon and its workers: marked as ours in the GPU pane."""
        pids = [os.getpid(), self.host.pid, *getattr(self.host, "worker_pids", ())]
        return tuple(dict.fromkeys(p for p in pids if p))

    def update_layout(self, width: int, height: int = 0) -> None:
        self.main.set_class(height >= TALL_HEIGHT, "tall")
        wide = width >= WIDE_WIDTH
        show = self.gpu_visible if self.gpu_visible is not None else wide
        self.main.set_class(wide, "wide")
        self.main.set_class(show, "gpu-on")

    # -- engine events -------------------------------------------------------------------

    def poll_engine(self) -> None:
        if self._restarting:
            return
        for event in self.host.poll(0):
            self.post_message(m.message_for(event))

    @_while_shown
    def on_engine_status_changed(self, message: m.EngineStatusChanged) -> None:
        e = message.event
        previous, self.engine_state = self.engine_state, e.state
        status = self.main.query_one(StatusBar)
        status.update_line(state=e.state, detail=e.detail, model=e.model or status.line.model)
        if e.state in ("crashed", "stopped"):
            status.update_line(daemon_pid=None)
        if e.state == "crashed":
            kept = len(self.host.pending)
            self.log_line(
                "error",
                f"{e.detail or 'the engine stopped'} — press F12 to restart"
                + (f" ({kept} job{'s' if kept != 1 else ''} kept)" if kept else ""),
            )
            self.notify(
                "The engine crashed. Press F12 to restart it; the queue is kept.",
                severity="error",
                timeout=10,
            )
        elif e.state == "ready" and not self._announced_ready:
            self._announced_ready = True
            self.log_line(
                "info",
                f"engine ready on {e.device or 'the device'} ({e.detail})".replace(" ()", ""),
            )
        elif e.state == "loading" and previous != "loading":
            self.log_line("info", e.detail or "loading model")
        if e.pid:
            with contextlib.suppress(Exception):
                self.main.query_one(GpuPane).our_pids = self.our_pids()
        self.refresh_bindings()
        self.refresh_queue()

    @_while_shown
    def on_engine_logged(self, message: m.EngineLogged) -> None:
        e = message.event
        self.log_line(e.level, e.text)

    @_while_shown
    def on_daemon_attached(self, message: m.DaemonAttached) -> None:
        from sdtui.units import format_uptime

        d = message.event
        for job in d.jobs:
            self.jobs.setdefault(job.job_id, JobInfo.from_queue(job))
            if job.state == "running":
                self.job_images.setdefault(job.job_id, [])  # started before this app came
        devices = ", ".join(w.device for w in d.workers) or "no device"
        up = format_uptime(time.time() - d.started_at)
        queue = f"; {len(d.jobs)} job{'s' if len(d.jobs) != 1 else ''} in its queue" if d.jobs else ""
        self.log_line("info", f"attached to the engine daemon (pid {d.pid}, up {up}, {devices}){queue}")
        self.main.query_one(StatusBar).update_line(daemon_pid=d.pid, daemon_since=d.started_at)
        with contextlib.suppress(NoMatches):
            self.main.query_one(GpuPane).our_pids = self.our_pids()
        self.refresh_queue()
        self.refresh_bindings()

    @_while_shown
    def on_job_queued(self, message: m.JobQueued) -> None:
        job = message.event.job
        if job.job_id in self.jobs:
            return  # this app's own: logged when it was submitted
        self.jobs[job.job_id] = JobInfo.from_queue(job)
        self.log_line("info", f"job #{job.job_id} queued by {job.submitted_by}: {job.summary}")
        self.refresh_queue()

    @_while_shown
    def on_daemon_stopping(self, message: m.DaemonStopping) -> None:
        self.log_line(
            "warning",
            f"the engine daemon is stopping ({message.event.reason}); F12 starts it again, and "
            "jobs left in the queue resume",
        )

    @_while_shown
    def on_model_loaded(self, message: m.ModelLoaded) -> None:
        # the engine logs the load itself (size, time, memory mode): no second line here
        self.main.query_one(StatusBar).update_line(model=message.event.name)

    @_while_shown
    def on_job_started(self, message: m.JobStarted) -> None:
        e = message.event
        info = self.jobs.setdefault(e.job_id, JobInfo("txt2img", f"job {e.job_id}"))
        info.images, info.steps = e.images_total, e.steps_total
        self.job_images[e.job_id] = []
        by = f" (queued by {info.submitted_by})" if info.submitted_by else ""
        self.log_line("info", f"job #{e.job_id} started: {info.summary}{by}")
        self.refresh_queue()
        self.refresh_bindings()

    @_while_shown
    def on_job_progress(self, message: m.JobProgress) -> None:
        e = message.event
        self.main.query_one(StatusBar).update_line(
            state="busy",
            step=e.step,
            steps=e.steps,
            batch_index=e.batch_index,
            batch_count=e.batch_count,
            its=e.its,
            eta_s=e.eta_s,
        )
        self._last_its = e.its

    @_while_shown
    def on_preview_ready(self, message: m.PreviewReady) -> None:
        # a terminal image redraw costs tens of ms: at most PREVIEW_INTERVAL apart, always
        # the newest, so typing stays quick while a fast job sends a preview every step
        self._preview = message.event
        wait = PREVIEW_INTERVAL - (time.monotonic() - self._preview_shown_at)
        if wait <= 0:
            self._show_preview()
        elif self._preview_timer is None:
            self._preview_timer = self.set_timer(wait, self._show_preview)

    def _show_preview(self) -> None:
        self._preview_timer = None
        e, self._preview = self._preview, None
        if e is None:
            return
        self._preview_shown_at = time.monotonic()
        with contextlib.suppress(NoMatches):
            self.main.query_one(PreviewImage).show_png(
                e.png, f"job #{e.job_id} · step {e.step} · preview", label="preview"
            )

    @_while_shown
    def on_image_saved(self, message: m.ImageSaved) -> None:
        e = message.event
        if e.seed is not None:
            self.last_seed = e.seed
        if e.is_grid or e.index < 0:
            self.log_line("info", f"grid saved: {e.path}")
            return
        self.log_line("ok", f"saved {e.path}")
        images = self.job_images.setdefault(e.job_id, [])
        images.append(e.path)
        grid = self.main.query_one(ImageGrid)
        if self.shown_job != e.job_id:
            self.shown_job = e.job_id
            grid.set_images([e.path])
            self.select_image(e.path)
        else:
            grid.add_image(e.path)

    @_while_shown
    def on_job_done(self, message: m.JobDone) -> None:
        e = message.event
        info = self.jobs.get(e.job_id)
        n = len(e.paths)
        if e.cancelled and not n and e.job_id not in self.job_images:
            self.log_line("info", f"job #{e.job_id} removed from the queue")
        elif e.cancelled:
            self.log_line(
                "warning", f"job #{e.job_id} interrupted: {n} image{'s' if n != 1 else ''} kept"
            )
        else:
            its = getattr(self, "_last_its", None)
            speed = f", {its:.2f} it/s" if its and info and info.kind != "extras" else ""
            self.log_line(
                "ok",
                f"job #{e.job_id} done: {n} image{'s' if n != 1 else ''} in {e.seconds:.1f} s{speed}",
            )
        if info and info.kind == "extras" and e.paths:
            self.main.query_one(ImageGrid).set_images(list(e.paths))
            self.shown_job = e.job_id
            self.select_image(e.paths[-1])
        self.main.query_one(StatusBar).update_line(step=0, steps=0)
        self.refresh_queue()
        self.refresh_bindings()

    @_while_shown
    def on_job_failed(self, message: m.JobFailed) -> None:
        e = message.event
        kept = (
            f" ({len(e.paths)} image{'s' if len(e.paths) != 1 else ''} saved before it)"
            if e.paths
            else ""
        )
        self.last_failure = e
        self.log_line("error", f"job #{e.job_id} failed: {e.message}{kept}")
        self.notify(e.message, title=f"job #{e.job_id} failed", severity="error", timeout=8)
        self.main.query_one(StatusBar).update_line(step=0, steps=0)
        self.refresh_queue()
        self.refresh_bindings()

    # -- widget messages -----------------------------------------------------------------

    def on_form_changed(self, message: m.FormChanged) -> None:
        prompt = self.form_state.params.prompt
        negative = self.form_state.params.negative_prompt
        self.form_state = message.state.with_params(prompt=prompt, negative_prompt=negative)
        self.form_errors = message.errors
        mode = message.state.memory_mode
        if mode and mode != self.memory_mode:
            self._apply_memory_mode(mode)
        self.refresh_bindings()

    def _apply_memory_mode(self, mode: str) -> None:
        try:
            self.host.set_memory_mode(mode)
        except (ValueError, AttributeError) as e:
            self.log_line("error", f"memory mode {mode} not set: {e}")
            self.form().set_field("memory_mode", self.memory_mode)
            return
        self.memory_mode = mode
        self.log_line("info", f"memory mode {mode} asked of the engine")
        with contextlib.suppress(NoMatches):
            self.main.query_one(StatusBar).update_line(memory_mode=mode)
        self.remember()

    def on_prompt_changed(self, message: m.PromptChanged) -> None:
        self.form_state = self.form_state.with_params(
            prompt=message.prompt, negative_prompt=message.negative_prompt
        )
        self.form().state = self.form().state.with_params(
            prompt=message.prompt, negative_prompt=message.negative_prompt
        )

    def on_random_seed_requested(self, _: m.RandomSeedRequested) -> None:
        self.action_random_seed()

    def on_reuse_seed_requested(self, _: m.ReuseSeedRequested) -> None:
        self.action_reuse_seed()

    def on_remove_queued_job(self, message: m.RemoveQueuedJob) -> None:
        self.remove_job(message.job_id)

    @on(ImageGrid.Highlighted)
    @_while_shown
    def _grid_highlighted(self, event: ImageGrid.Highlighted) -> None:
        self.select_image(event.path)

    @on(ImageGrid.Selected)
    @_while_shown
    def _grid_selected(self, event: ImageGrid.Selected) -> None:
        self.select_image(event.path)
        self.action_full_view()

    # -- helpers -------------------------------------------------------------------------

    def form(self) -> SettingsForm:
        return self.main.query_one(SettingsForm)

    def log_line(self, level: str, text: str) -> None:
        self.main.query_one(JobLog).add(level, text)

    def select_image(self, path: str) -> None:
        self.selected_path = path
        self.main.query_one(PreviewImage).show_path(path)
        self.refresh_bindings()

    def _need_image(self) -> str | None:
        path = self.selected_path
        if path is None or not Path(path).exists():
            self.notify(
                "Select an image first (generate, or open History with F8).", severity="warning"
            )
            return None
        problem = file_problem(path)  # a named pipe would hang whoever opens it
        if problem:
            self.log_line("error", problem)
            return None
        return path

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

    def queued_job_ids(self) -> list[int]:
        return list(self.host.queued)

    def job_summary(self, job_id: int) -> str:
        info = self.jobs.get(job_id)
        if info is None:
            return f"job {job_id}"
        return f"{info.summary} · {info.submitted_by}" if info.submitted_by else info.summary

    def refresh_queue(self) -> None:
        running = getattr(self.host, "running", None) or {self.host.running_job}
        entries = [
            QueueEntry(job_id, self.job_summary(job_id), job_id in running)
            for job_id in self.host.pending
        ]
        self.main.query_one(QueueView).show_entries(entries)
        self.main.query_one(StatusBar).update_line(queued=len(self.host.queued))

    def apply_form(self, state: FormState) -> None:
        """Show ``state`` in the prompt editor and the form."""
        self.form_state = state
        self.main.query_one(PromptEditor).set_texts(
            state.params.prompt, state.params.negative_prompt
        )
        self.form().load(state)

    def set_form_field(self, name: str, value: str) -> None:
        self.form().set_field(name, value)

    def set_size(self, width: int, height: int) -> None:
        self.form().set_field("width", str(width))
        self.form().set_field("height", str(height))

    def remember(self) -> None:
        if self.remember_form:
            save_form_state(self.form_state)

    # -- actions -------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        busy = self.host.running_job is not None
        # False hides the key from the footer while it cannot do anything
        if action in ("interrupt", "skip"):
            return busy
        if action == "show_error":
            return self.last_failure is not None
        if action in (
            "send_img2img",
            "img2img_2x",
            "send_extras",
            "upscale",
            "full_view",
            "reuse_params",
        ):
            return self.selected_path is not None
        return True

    def action_generate(self) -> None:
        state = self.form().state.with_params(
            prompt=self.form_state.params.prompt,
            negative_prompt=self.form_state.params.negative_prompt,
        )
        self.form_state = state
        errors = state.errors()
        if errors:
            field_name, first = next(iter(errors.items()))
            self.form().reveal(field_name)
            self.log_line("warning", f"not generated: {first}")
            self.notify(first, title="fix the form first", severity="warning")
            return
        try:
            if state.mode == "extras":
                params = state.upscale_params()
                job_id = self.host.submit_upscale(params)
                info = JobInfo("extras", summarize_job("upscale", params))
            else:
                # previews no faster than they can be drawn: each one waits for the GPU
                gen = state.generation_params().replace(
                    preview_every=self.settings.preview_every, preview_interval=PREVIEW_INTERVAL
                )
                job_id = self.host.submit(gen)
                info = JobInfo(gen.mode, summarize_job("generate", gen), gen.images_total, gen.steps)
        except (ParamError, UserError) as e:
            self.log_line("error", f"not generated: {e}")
            return
        self.jobs[job_id] = info
        self.remember()
        if self.engine_state == "crashed":
            self.log_line(
                "warning", f"job #{job_id} queued, but the engine is down: press F12 to restart"
            )
        elif self.host.running_job is not None or len(self.host.queued) > 1:
            self.log_line("info", f"job #{job_id} queued: {info.summary}")
        self.refresh_queue()
        self.refresh_bindings()

    def action_interrupt(self) -> None:
        if self.host.running_job is not None:
            self.host.cancel(None)
            self.log_line("warning", f"interrupting job #{self.host.running_job}")

    def action_skip(self) -> None:
        if self.host.running_job is not None:
            self.host.skip()
            self.log_line("info", "skipping the current image")

    def action_random_seed(self) -> None:
        self.form().set_field("seed", "-1")

    def action_reuse_seed(self) -> None:
        seed = self.last_seed
        if self.selected_path:
            # a pipe is refused, any bad file gives None: the last seed then
            seed = seed_from_file(self.selected_path) if Path(self.selected_path).exists() else None
            seed = self.last_seed if seed is None else seed
        if seed is None or seed < 0:
            self.notify("No image with a seed yet.", severity="warning")
            return
        self.form().set_field("seed", str(seed))

    def action_send_img2img(self) -> None:
        path = self._need_image()
        if path:
            self.form().set_field("init_image", path)
            self.form().set_field("mode", "img2img")
            self.log_line("info", f"img2img from {path}")

    def action_img2img_2x(self) -> None:
        path = self._need_image()
        if not path:
            return
        try:
            w, h = image_size(path)  # the header only: a pipe or a bomb is a sentence
        except UserError as e:
            self.log_line("error", f"{e.message}: pick another image")
            return
        width, height = _fit_size(w * 2), _fit_size(h * 2)
        form = self.form()
        form.set_field("init_image", path)
        form.set_field("width", str(width))
        form.set_field("height", str(height))
        form.set_field("denoising_strength", str(IMG2IMG_2X_DENOISE))
        form.set_field("mode", "img2img")
        self.log_line(
            "info", f"img2img at 2x ({width}x{height}, denoise {IMG2IMG_2X_DENOISE}) from {path}"
        )

    def action_send_extras(self) -> None:
        path = self._need_image()
        if path:
            self.form().set_field("extras_image", path)
            self.form().set_field("mode", "extras")
            self.log_line("info", f"extras: {path}")

    def action_upscale(self) -> None:
        path = self._need_image()
        if path:
            self.action_send_extras()
            self.call_after_refresh(self.action_generate)

    def action_full_view(self) -> None:
        path = self._need_image()
        if path:
            grid = self.main.query_one(ImageGrid)
            paths = grid.paths if path in grid.paths else None
            self.push_screen(FullViewScreen(path, paths))

    def action_reuse_params(self) -> None:
        path = self._need_image()
        if path:
            self.load_params_from(path)

    def action_load_params(self) -> None:
        def loaded(path: str | None) -> None:
            if path:
                self.load_params_from(path)

        self.push_screen(
            PathPromptScreen(
                "Load parameters from a PNG (sdtui's or A1111's):", self.selected_path or ""
            ),
            loaded,
        )

    def load_params_from(self, path: str) -> None:
        """The parameters stored in the image at ``path`` into the form (ctrl+o, F7).

        A file that cannot be read (not an image, a named pipe, a decompression bomb, a text
        chunk too large, anything the reader raises) is one error line naming it; the form
        stays as it was. A value that does not parse or is out of range (``Steps: -5``)
        keeps the form's value and is named in the line; the other keys apply."""
        path = os.path.expanduser(path)
        try:
            params, problems = params_from_file(path, self.form_state.params)
        except UserError as e:
            self.log_line("error", e.message)
            self.notify(e.message, severity="error")
            return
        except Exception as e:  # noqa: BLE001 - a bad file never takes the app down
            message = f"{show(path)} cannot be read ({type(e).__name__}: {e})"
            self.log_line("error", message)
            self.notify(message, severity="error")
            return
        # the prompt editor shows what the file holds, control characters as ^[
        params = params.replace(
            prompt=drawable(params.prompt), negative_prompt=drawable(params.negative_prompt)
        )
        note = ""
        if params.model and params.model not in self.model_names:
            note = f" (model {params.model} is not installed: keeping {self.form_state.params.model or 'the current one'})"
            params = params.replace(model=self.form_state.params.model)
        mode = self.form_state.mode if self.form_state.mode != "extras" else "txt2img"
        keep_init = self.form_state.params.init_image
        self.apply_form(
            self.form_state.replace(mode=mode, params=params.replace(init_image=keep_init))
        )
        if problems:
            kept = "; ".join(problems)
            self.log_line(
                "warning",
                f"parameters loaded from {show(path)}{note}, but not these values (the form "
                f"keeps its own): {kept}",
            )
            self.notify(f"{len(problems)} value(s) in {show(path)} ignored: {kept}", severity="warning")
        else:
            self.log_line("info", f"parameters loaded from {show(path)}{note}")

    def action_history(self) -> None:
        def chosen(path: str | None) -> None:
            if path:
                grid = self.main.query_one(ImageGrid)
                grid.set_images([path])
                self.shown_job = None
                self.select_image(path)

        paths = getattr(self.host, "paths", None)
        queue = paths.queue if paths is not None else None
        self.push_screen(HistoryScreen(self.settings.outputs, queue_path=queue), chosen)

    def action_switch_model(self) -> None:
        from textual.command import SimpleCommand

        commands = [
            SimpleCommand(shown(name), _bound(self.switch_model, name), "load this checkpoint now")
            for name in self.model_names
        ]
        self.search_commands(commands, placeholder="Switch model…")

    def switch_model(self, name: str) -> None:
        self.form().set_field("model", name)
        self.host.load_model(name)
        self.log_line("info", f"switching to {name}")

    def set_memory_mode(self, mode: str) -> None:
        """The engine's memory mode (auto, normal, low, lowest), through the form: it is
        remembered with the form and shown in the status bar."""
        self.form().set_field("memory_mode", mode)

    def action_insert_network(self) -> None:
        def chosen(text: str | None) -> None:
            if text:
                self.insert_prompt_text(text)

        self.push_screen(
            NetworkPickerScreen(
                self.catalog.loras,
                self.catalog.embeddings,
                where=f"{self.settings.models / 'Lora'} and {self.settings.embeddings}",
                listed=self.catalog.complete,
            ),
            chosen,
        )

    def insert_lora(self, name: str) -> None:
        self.insert_prompt_text(network_text("lora", name))

    def insert_embedding(self, name: str) -> None:
        self.insert_prompt_text(network_text("embedding", name))

    def insert_prompt_text(self, text: str) -> None:
        """Insert ``text`` at the cursor of the prompt (or the negative prompt, when that was
        the last one focused), spaced from the words around it."""
        focused = self.main.focused
        area = (
            focused
            if isinstance(focused, PromptArea)
            else self.main.query_one("#prompt", PromptArea)
        )
        row, col = area.cursor_location
        line = area.document.get_line(row)
        before = line[:col]
        after = line[col:]
        if before and not before[-1].isspace():
            text = " " + text
        if after and not after[0].isspace():
            text = text + " "
        result = area.insert(text, (row, col))
        area.cursor_location = result.end_location
        area.focus()

    def action_show_error(self) -> None:
        failure = self.last_failure
        if failure is None:
            self.notify("No job has failed.")
            return
        self.push_screen(ErrorDetailScreen(failure.job_id, failure.message, failure.detail))

    def action_toggle_gpu(self) -> None:
        shown = self.main.has_class("gpu-on")
        self.gpu_visible = not shown
        self.update_layout(*self.main.size)

    def action_focus_queue(self) -> None:
        queue = self.main.query_one(QueueView)
        if queue.entries:
            queue.focus()
        else:
            self.notify("The queue is empty.")

    def remove_job(self, job_id: int) -> None:
        if job_id not in self.host.pending:
            return
        self.host.cancel(job_id)
        what = "interrupting" if job_id == self.host.running_job else "removing"
        self.log_line("info", f"{what} job #{job_id}")

    def action_restart_engine(self) -> None:
        if self._restarting:
            return
        self._restarting = True
        self.log_line("warning", "restarting the engine (F12)…")
        self.main.query_one(StatusBar).update_line(state="starting", detail="", step=0, steps=0)
        self._restart()

    @work(thread=True, exclusive=True, group="engine-restart")
    def _restart(self) -> None:
        # attached: the daemon replaces its workers; detached: a new daemon, queue from disk
        attached = getattr(self.host, "connected", True)
        try:
            ids = self._restart_host(self.host)
            error = None
        except Exception as e:  # noqa: BLE001 - said in the log; the app stays up
            ids, error = [], e
        self.call_from_thread(self._restarted, ids, error, attached)

    @_while_shown
    def _restarted(self, ids: list[int], error: Exception | None, attached: bool = True) -> None:
        self._restarting = False
        self._announced_ready = False
        self.engine_state = "starting"
        if error is not None:
            self.log_line("error", f"the engine could not be restarted ({error}): try F12 again")
            return
        kept = f"; {len(ids)} job{'s' if len(ids) != 1 else ''} kept in the queue" if ids else ""
        if attached:
            self.log_line("info", f"restarting the engine workers{kept}")
        else:
            self.log_line("info", f"engine daemon started (pid {self.host.pid}){kept}")
        self.refresh_queue()
        self.refresh_bindings()
        self.refresh(repaint=True, layout=True)

    # -- leaving -------------------------------------------------------------------------

    def _hangup(self) -> None:
        """The terminal went away (SIGHUP): remember the form and leave; the daemon's jobs go
        on without this app."""
        self.hung_up = True
        self.remember()
        # Leaving must not depend on a terminal that is gone: if the orderly exit hangs on
        # it, go anyway (the daemon does not need us).
        threading.Timer(HANGUP_GRACE_S, os._exit, (129,)).start()
        self.exit(129)

    async def action_quit(self) -> None:
        self.remember()
        self.exit(0)


def _bound(fn: Callable[[str], None], arg: str) -> Callable[[], None]:
    return lambda: fn(arg)


def _fit_size(v: int) -> int:
    """A size the engine takes: a multiple of 8, at most MAX_SIZE."""
    return max(SIZE_MULTIPLE, min(MAX_SIZE, v - v % SIZE_MULTIPLE))
