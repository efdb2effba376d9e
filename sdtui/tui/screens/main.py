"""The working screen: prompt, settings, preview, image grid, queue, job log, status bar, GPU
pane; its keys, and the handlers of every engine event.

The screen polls the engine client 20 times a second without blocking (``host.poll(0)``),
turns each event into a Textual message (``sdtui.tui.messages``) and handles them below,
with the job bookkeeping in ``sdtui.tui.jobs.JobBook``. Widgets only render and post
messages; the decisions (what to submit, what to show, what to remember) are made here.
Its keys live here (not on the App) so they do not fire while a modal screen (full view,
history, a prompt) is on top. This module never imports torch.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.events import DescendantFocus, Resize
from textual.reactive import reactive
from textual.screen import Screen
from textual.widget import Widget

from sdtui.config import Settings
from sdtui.errors import UserError
from sdtui.family_presets import t5_limit, without_hidden
from sdtui.ipc import protocol as msg
from sdtui.jobstore import job_summary as summarize_job
from sdtui.params import MAX_SIZE, SIZE_MULTIPLE, GenerationParams, ParamError, XYZParams
from sdtui.styles import PromptStyle, StyleError, UnknownStyleError, check_style_name
from sdtui.tui import messages as m
from sdtui.tui.catalog import Catalog
from sdtui.tui.commands import SdtuiCommands, bindings, key_of, shown
from sdtui.tui.engine_client import EngineClient
from sdtui.tui.files import file_problem, image_size, params_from_file, seed_from_file, show
from sdtui.tui.form_state import (
    FormState,
    is_demo_model,
    save_form_state,
    with_demo_defaults,
    with_family_defaults,
)
from sdtui.tui.jobs import JobBook, JobInfo
from sdtui.tui.screens.ask import AskTextScreen, ConfirmScreen
from sdtui.tui.screens.error_detail import ErrorDetailScreen
from sdtui.tui.screens.full_view import FullViewScreen
from sdtui.tui.screens.history import HistoryScreen
from sdtui.tui.screens.networks import NetworkPickerScreen, network_text
from sdtui.tui.screens.path_prompt import PathPromptScreen
from sdtui.tui.screens.styles import StylePickerScreen, style_line
from sdtui.tui.screens.xyz import XYZScreen, plot_job_info
from sdtui.tui.style_book import StyleBook
from sdtui.tui.widgets.gpu_pane import GpuPane
from sdtui.tui.widgets.image_view import ImageGrid, PreviewImage
from sdtui.tui.widgets.job_log import JobLog
from sdtui.tui.widgets.key_footer import KeyFooter
from sdtui.tui.widgets.prompt_editor import PromptArea, PromptEditor, drawable
from sdtui.tui.widgets.queue_view import QueueEntry, QueueView
from sdtui.tui.widgets.settings_form import SettingsForm
from sdtui.tui.widgets.status_bar import StatusBar

POLL_INTERVAL_S = 0.05  # 20 Hz: smooth progress, negligible CPU
PREVIEW_INTERVAL = 0.25  # seconds between live preview redraws
WIDE_WIDTH = 140  # from here on the GPU pane has its own column
TALL_HEIGHT = 36  # from here on the job log gets more lines
IMG2IMG_2X_DENOISE = 0.75
# each pane: its widget, and the action whose key moves there (shown in the pane's title)
PANES: dict[str, tuple[str, str]] = {
    "prompt": ("PromptEditor", "focus_prompt"),
    "settings": ("#form", "focus_settings"),
    "images": ("#grid", "focus_images"),
    "queue": ("#queue", "focus_queue"),
}


def _while_shown(handler: Callable[..., None]) -> Callable[..., None]:
    """Engine events can still be in the message queue while the app shuts down and its
    widgets are gone: drop them then, rather than fail the exit."""

    @functools.wraps(handler)
    def wrapper(self: MainScreen, *args: Any) -> None:
        try:
            handler(self, *args)
        except NoMatches:
            if not self.query("#right") or not self.query(StatusBar):
                return  # the screen is being taken down
            raise

    return wrapper


class MainScreen(Screen[None]):
    """The one working screen; ``SdtuiApp`` only starts it and leaves."""

    AUTO_FOCUS = "#prompt"
    BINDINGS = [*bindings(), Binding("ctrl+p", "app.command_palette", "Commands")]
    COMMANDS = {SdtuiCommands}

    active_pane: reactive[str] = reactive("", init=False)
    xyz_plot: XYZParams | None = None  # the X/Y/Z plot's axes, kept for the session

    def __init__(
        self,
        host: EngineClient,
        settings: Settings,
        form_state: FormState,
        catalog: Catalog,
        *,
        discover: Callable[[Catalog], Catalog],
        gpu_sampler: Any = None,
        gpu_interval: float | None = 1.0,
        remember_form: bool = True,
        clock: Callable[[], str] | None = None,
        poll_interval: float = POLL_INTERVAL_S,
        restart_host: Callable[[EngineClient], list[int]] | None = None,
        graphics_note: str = "",
    ) -> None:
        super().__init__(id="main-screen")
        self.host = host
        self.settings = settings
        self.form_state = form_state
        # no model named (a first run, no --model, nothing remembered): the engine picks one
        # (the first checkpoint, else the demo) and the form's Model, which can only show
        # what it lists, shows the engine's pick once it is known (``_follow_engine_model``)
        self._engine_picks_model = form_state.params.model is None
        self.memory_mode: str = form_state.memory_mode or "auto"
        self.form_errors: dict[str, str] = {}
        self.catalog = catalog
        self.book = JobBook()
        self.engine_state: str = getattr(host, "state", "starting")
        self.gpu_visible: bool | None = None  # None: automatic (shown on wide terminals)
        self._discover = discover
        self._gpu_sampler = gpu_sampler
        self._gpu_interval = gpu_interval
        self._remember_form = remember_form
        self._clock = clock
        self._poll_interval = poll_interval
        self._restart_host = restart_host or (lambda h: h.restart())
        self._graphics_note = graphics_note
        self._preview: msg.Preview | None = None  # the newest preview not yet drawn
        self._preview_shown_at = 0.0
        self._preview_timer: Any = None
        self._restarting = False
        self._announced_ready = False
        self._demo_said = False
        self._loaded_family: str | None = None  # the engine's model's (ModelLoaded)
        self._last_form_field: Widget | None = None
        self._catalog_problems: set[str] = set()  # said in the job log already
        self.style_book = StyleBook(settings.styles_file)

    # -- the widgets -----------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        # the layout classes before the widgets mount: set after, they restyle every widget
        self.update_layout(*self.app.size)
        c = self.catalog
        with Horizontal(id="work"):
            with Vertical(id="left"):
                yield PromptEditor(
                    self.form_state.params.prompt,
                    self.form_state.params.negative_prompt,
                    key=key_of("focus_prompt"),
                )
                form = SettingsForm(
                    self.form_state,
                    c.models,
                    c.upscalers,
                    hires_upscalers=c.hires_upscalers,
                    vaes=c.vaes,
                    id="form",
                )
                form.border_title = f"Settings {key_of('focus_settings')}"
                yield form
            with Vertical(id="right"):
                yield PreviewImage(id="preview", placeholder="no image yet: type a prompt, ctrl+g")
                grid = ImageGrid(id="grid", empty_text="the images of a job show here")
                grid.border_title = f"Images {key_of('focus_images')}"
                yield grid
                queue = QueueView(id="queue")
                queue.border_title = f"Queue {key_of('focus_queue')}"
                yield queue
            with Vertical(id="side"):
                yield GpuPane(
                    self._gpu_sampler, our_pids=self.our_pids(), interval=self._gpu_interval
                )
        yield JobLog(id="log", clock=self._clock)
        yield StatusBar(id="status")
        yield KeyFooter(compact=True, show_command_palette=False)

    @property
    def form(self) -> SettingsForm:
        return self.query_one(SettingsForm)

    @property
    def prompt_editor(self) -> PromptEditor:
        return self.query_one(PromptEditor)

    @property
    def grid(self) -> ImageGrid:
        return self.query_one("#grid", ImageGrid)

    @property
    def preview(self) -> PreviewImage:
        return self.query_one("#preview", PreviewImage)

    @property
    def queue_view(self) -> QueueView:
        return self.query_one(QueueView)

    @property
    def job_log(self) -> JobLog:
        return self.query_one(JobLog)

    @property
    def status_bar(self) -> StatusBar:
        return self.query_one(StatusBar)

    @property
    def model_names(self) -> list[str]:
        return self.catalog.models

    @property
    def upscaler_names(self) -> list[str]:
        return self.catalog.upscalers

    @property
    def selected_path(self) -> str | None:
        """The image F2-F7 act on: the one the grid shows as selected."""
        try:
            return self.grid.selected_path
        except NoMatches:  # not composed yet, or being taken down
            return None

    # -- set-up ------------------------------------------------------------------------------

    def on_mount(self) -> None:
        self.set_interval(self._poll_interval, self.poll_engine)
        # listing models, upscalers, VAEs, LoRAs walks folders and reads headers: after the
        # first frame, in a thread
        self.call_after_refresh(self._find_catalog)
        self.call_after_refresh(self.refresh_styles)
        if self._graphics_note:
            self.log_line("info", self._graphics_note)
        self.status_bar.update_line(state=self.engine_state, memory_mode=self.memory_mode)
        self.update_layout(*self.size)

    def on_resize(self, event: Resize) -> None:
        self.update_layout(event.size.width, event.size.height)

    def update_layout(self, width: int, height: int = 0) -> None:
        self.set_class(height >= TALL_HEIGHT, "tall")
        wide = width >= WIDE_WIDTH
        gpu = self.gpu_visible if self.gpu_visible is not None else wide
        self.set_class(wide, "wide")
        self.set_class(gpu, "gpu-on")

    @work(thread=True, exclusive=True, group="catalog")
    def _find_catalog(self) -> None:
        try:
            catalog = self._discover(self.catalog)
        except Exception as e:  # noqa: BLE001 - the placeholder lists still work
            self.app.call_from_thread(self.log_line, "warning", f"listing the models failed: {e}")
            return
        self.app.call_from_thread(self._catalog_found, catalog)

    @_while_shown
    def _catalog_found(self, catalog: Catalog) -> None:
        self.catalog = catalog
        # a bad checkpoint (or a folder that could not be listed): one line each, once
        for problem in getattr(catalog, "problems", ()):
            if problem not in self._catalog_problems:
                self._catalog_problems.add(problem)
                self.log_line("warning", problem)
        form = self.form
        form.update_choices("model", catalog.models)
        form.update_choices("upscaler", catalog.upscalers)
        form.update_choices("hr_upscaler", catalog.hires_upscalers)
        form.update_choices("vae", catalog.vaes)
        self.prompt_editor.set_embedding_sizes(catalog.embedding_sizes)
        self._use_family(self._family_of(form.state.params.model))

    def refresh_catalog(self) -> None:
        """List the folders again (a LoRA or VAE added while the app runs)."""
        self._find_catalog()

    def our_pids(self) -> tuple[int, ...]:
        """This app, the daemon and its workers: marked as ours in the GPU pane."""
        pids = [os.getpid(), self.host.pid, *getattr(self.host, "worker_pids", ())]
        return tuple(dict.fromkeys(p for p in pids if p))

    # -- engine events -----------------------------------------------------------------------

    def poll_engine(self) -> None:
        if self._restarting:
            return
        for event in self.host.poll(0):
            self.post_message(m.message_for(event))

    @_while_shown
    def on_engine_status_changed(self, message: m.EngineStatusChanged) -> None:
        e = message.event
        previous, self.engine_state = self.engine_state, e.state
        status = self.status_bar
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
        if e.model:
            self._model_in_use(e.model)
        if e.pid:
            with contextlib.suppress(Exception):
                self.query_one(GpuPane).our_pids = self.our_pids()
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
        self.book.attached(d.jobs)
        devices = ", ".join(w.device for w in d.workers) or "no device"
        up = format_uptime(time.time() - d.started_at)
        queue = (
            f"; {len(d.jobs)} job{'s' if len(d.jobs) != 1 else ''} in its queue" if d.jobs else ""
        )
        self.log_line(
            "info", f"attached to the engine daemon (pid {d.pid}, up {up}, {devices}){queue}"
        )
        self.status_bar.update_line(daemon_pid=d.pid, daemon_since=d.started_at)
        with contextlib.suppress(NoMatches):
            self.query_one(GpuPane).our_pids = self.our_pids()
        for worker in d.workers:
            if worker.model:
                self._follow_engine_model(worker.model)
                self._model_in_use(worker.model)
        self.refresh_queue()
        self.refresh_bindings()

    @_while_shown
    def on_job_queued(self, message: m.JobQueued) -> None:
        line = self.book.queued(message.event.job)
        if line is not None:
            self.log_line("info", line)
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
        self.status_bar.update_line(model=message.event.name)
        self._loaded_family = message.event.family
        followed = self._follow_engine_model(message.event.name)
        if followed or self.form.state.params.model in (None, message.event.name):
            self._use_family(message.event.family)
        self._model_in_use(message.event.name)

    def _follow_engine_model(self, name: str) -> bool:
        """Where no model was named, the form's Model shows the one the engine loaded (a
        checkpoint it picked) instead of the "demo" its list started with, so the next job
        runs on it rather than switching to the demo. Once: a model picked in the form,
        ctrl+l or a loaded PNG is the user's, and another client's load later changes
        nothing here. True when the form now names ``name``."""
        if not self._engine_picks_model:
            return False
        self._engine_picks_model = False
        if is_demo_model(name) or not is_demo_model(self.form.raw_values().get("model") or "demo"):
            return False  # the demo (what the form shows already), or the user picked one
        self.form.set_field("model", name)
        self.log_line("info", f"Model set to {name}, the checkpoint the engine loaded")
        return True

    def _family_of(self, model: str | None) -> str | None:
        """The family label of the form's model (None: the engine's; unknown: None)."""
        if model is None:
            return self._loaded_family
        if is_demo_model(model):
            return "SD1"
        return dict(getattr(self.catalog, "families", ())).get(model)

    def _use_family(self, family: str | None) -> None:
        """The form shows the rows of the model's family and, while it is at the stock values,
        takes the family's preset (Flux.1, SD3.5: Forge's), as the demo gets its quick form."""
        form = self.form
        if family is None or family == form.family:
            return  # unknown (not listed yet): the form stays as it is
        form.set_family(family)
        self.prompt_editor.set_t5_limit(t5_limit(family))
        state, line = with_family_defaults(form.state, family)
        if line:
            form.load(state)
            self.log_line("info", line)

    def _model_in_use(self, name: str) -> None:
        """The built-in demo model, the first time: a form still at the stock defaults gets
        a size and step count the demo makes in seconds, and one line says what it is for."""
        wanted = self.form.state.params.model  # None: the engine picks (the demo, if no other)
        if (
            self._demo_said
            or not is_demo_model(name)
            or not (wanted is None or is_demo_model(wanted))
        ):
            return  # a worker left on the demo while the form names a checkpoint: no word
        self._demo_said = True
        state = with_demo_defaults(self.form.state)
        fit = ""
        if state != self.form.state:
            self.form.load(state)
            fit = f" (form set to {state.params.width}x{state.params.height}, {state.params.steps} steps)"
        self.log_line(
            "info",
            f"demo model: noise, to try sdtui{fit}. For real images put a checkpoint in "
            f"{_home_short(self.settings.checkpoints)}, then ctrl+l",
        )

    @_while_shown
    def on_job_started(self, message: m.JobStarted) -> None:
        self.log_line("info", self.book.started(message.event))
        self.refresh_queue()
        self.refresh_bindings()

    @_while_shown
    def on_job_progress(self, message: m.JobProgress) -> None:
        e = message.event
        if self.book.progressed(e):  # an X/Y/Z plot on its next cell: its queue row says so
            self.refresh_queue()
        self.status_bar.update_line(
            state="busy",
            step=e.step,
            steps=e.steps,
            batch_index=e.batch_index,
            batch_count=e.batch_count,
            batch_word="cell" if self.book.is_plot(e.job_id) else "batch",
            its=e.its,
            eta_s=e.eta_s,
        )

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
            self.preview.show_png(
                e.png, f"job #{e.job_id} · step {e.step} · preview", label="preview"
            )

    @_while_shown
    def on_image_saved(self, message: m.ImageSaved) -> None:
        e = message.event
        starts_over = self.book.image_saved(e)
        if e.is_grid or e.index < 0:
            self.log_line("info", f"grid saved: {e.path}")
            plot = self.book.grid_to_show(e)  # an X/Y/Z plot's grid is its result
            if plot:
                self.show_images(plot, select=e.path)
            return
        self.log_line("ok", f"saved {e.path}")
        if starts_over:
            self.show_images([e.path])
        else:
            self.grid.add_image(e.path)

    @_while_shown
    def on_job_done(self, message: m.JobDone) -> None:
        e = message.event
        self.log_line(*self.book.done(e))
        result = self.book.result_to_show(e)
        if result:
            self.show_images(result, select=result[-1])
        self.status_bar.update_line(step=0, steps=0)
        self.refresh_queue()
        self.refresh_bindings()

    @_while_shown
    def on_job_failed(self, message: m.JobFailed) -> None:
        e = message.event
        self.log_line("error", self.book.failed(e))
        self.notify(e.message, title=f"job #{e.job_id} failed", severity="error", timeout=8)
        self.status_bar.update_line(step=0, steps=0)
        self.refresh_queue()
        self.refresh_bindings()

    # -- widget messages ---------------------------------------------------------------------

    def on_form_changed(self, message: m.FormChanged) -> None:
        prompt = self.form_state.params.prompt
        negative = self.form_state.params.negative_prompt
        self.form_state = message.state.with_params(
            prompt=prompt, negative_prompt=negative
        ).replace(styles=self.form_state.styles)
        self.form_errors = message.errors
        self._use_family(self._family_of(message.state.params.model))
        mode = message.state.memory_mode
        if mode and mode != self.memory_mode:
            self._apply_memory_mode(mode)
        self.refresh_bindings()

    def _apply_memory_mode(self, mode: str) -> None:
        try:
            self.host.set_memory_mode(mode)
        except (ValueError, AttributeError) as e:
            self.log_line("error", f"memory mode {mode} not set: {e}")
            self.form.set_field("memory_mode", self.memory_mode)
            return
        self.memory_mode = mode
        self.log_line("info", f"memory mode {mode} asked of the engine")
        with contextlib.suppress(NoMatches):
            self.status_bar.update_line(memory_mode=mode)
        self.remember()

    def on_prompt_changed(self, message: m.PromptChanged) -> None:
        self.form_state = self.form_state.with_params(
            prompt=message.prompt, negative_prompt=message.negative_prompt
        )
        self.form.state = self.form.state.with_params(
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
        self.preview.show_path(event.path)
        self.refresh_bindings()

    @on(ImageGrid.Selected)
    @_while_shown
    def _grid_selected(self, event: ImageGrid.Selected) -> None:
        self.action_full_view()

    def on_descendant_focus(self, event: DescendantFocus) -> None:
        focused = event.widget
        chain = (focused, *focused.ancestors)
        for pane, (selector, _) in PANES.items():
            if any(widget in chain for widget in self.query(selector)):
                self.active_pane = pane
                if pane == "settings":
                    self._last_form_field = focused
                return

    def watch_active_pane(self, pane: str) -> None:
        # the active pane's title stands out (app.tcss: .-active-pane)
        for name, (selector, _) in PANES.items():
            for widget in self.query(selector):
                widget.set_class(name == pane, "-active-pane")

    # -- the job log, toasts, the queue, the form ------------------------------------------

    def log_line(self, level: str, text: str) -> None:
        self.job_log.add(level, text)

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: Any = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """A toast, as plain text unless asked (``SdtuiApp.notify`` shows control
        characters): its words often quote a file or an engine message."""
        self.app.notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    def show_images(self, paths: list[str], *, select: str | None = None) -> None:
        """The grid shows ``paths``, ``select`` (or the first) selected and in the preview."""
        self.grid.set_images(paths, select=select)
        chosen = self.grid.selected_path
        if chosen is not None:
            self.preview.show_path(chosen)
        self.refresh_bindings()

    def queued_job_ids(self) -> list[int]:
        return list(self.host.queued)

    def job_summary(self, job_id: int) -> str:
        return self.book.summary(job_id)

    def refresh_queue(self) -> None:
        running = getattr(self.host, "running", None) or {self.host.running_job}
        entries = [
            QueueEntry(job_id, self.job_summary(job_id), job_id in running)
            for job_id in self.host.pending
        ]
        self.queue_view.show_entries(entries)
        self.status_bar.update_line(queued=len(self.host.queued))

    def apply_form(self, state: FormState) -> None:
        """Show ``state`` in the prompt editor and the form."""
        self.form_state = state
        if state.params.model is not None:
            self._engine_picks_model = False
        self.prompt_editor.set_texts(state.params.prompt, state.params.negative_prompt)
        self.form.load(state)
        self.show_styles()

    def set_form_field(self, name: str, value: str) -> None:
        self.form.set_field(name, value)

    def set_size(self, width: int, height: int) -> None:
        self.form.set_field("width", str(width))
        self.form.set_field("height", str(height))

    def remember(self) -> None:
        if self._remember_form:
            save_form_state(self.form_state)

    # -- actions -----------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        busy = self.host.running_job is not None
        # False hides the key from the footer while it cannot do anything
        if action in ("interrupt", "skip"):
            return busy
        if action == "show_error":
            return self.book.last_failure is not None
        if action in (
            "send_img2img",
            "img2img_2x",
            "send_extras",
            "upscale",
            "full_view",
            "reuse_params",
        ):
            return self.selected_path is not None
        if action == "focus_images":  # shown while there is an image to pick, elsewhere
            return self.selected_path is not None and not self.grid.has_focus
        return True

    def action_generate(self) -> None:
        state = self.form.state.with_params(
            prompt=self.form_state.params.prompt,
            negative_prompt=self.form_state.params.negative_prompt,
        ).replace(styles=self.form_state.styles)
        self.form_state = state
        # a field the model's family does not have is not sent (without_hidden): nor checked
        errors = {k: v for k, v in state.errors().items() if k not in self.form.hidden}
        if errors:
            field_name, first = next(iter(errors.items()))
            self.form.reveal(field_name)
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
                gen = without_hidden(self._styled(gen, state.styles), self.form.family)
                job_id = self.host.submit(gen)
                info = JobInfo(
                    gen.mode, summarize_job("generate", gen), gen.images_total, gen.steps
                )
        except UnknownStyleError as e:
            self.log_line(
                "error",
                f"not generated: {e.message} ({self.style_book.path}); turn "
                f"{'it' if len(e.names) == 1 else 'them'} off in the styles picker "
                f"({key_of('styles')})",
            )
            return
        except (ParamError, UserError) as e:
            self.log_line("error", f"not generated: {e}")
            return
        self.book.submitted(job_id, info)
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
        self.form.set_field("seed", "-1")

    def action_reuse_seed(self) -> None:
        seed = self.book.last_seed
        path = self.selected_path
        if path:
            # a pipe is refused, any bad file gives None: the last seed then
            seed = seed_from_file(path) if Path(path).exists() else None
            seed = self.book.last_seed if seed is None else seed
        if seed is None or seed < 0:
            self.notify("No image with a seed yet.", severity="warning")
            return
        self.form.set_field("seed", str(seed))

    def action_send_img2img(self) -> None:
        path = self._need_image()
        if path:
            self.form.set_field("init_image", path)
            self.form.set_field("mode", "img2img")
            self.log_line("info", f"img2img from {path}")

    def action_img2img_2x(self) -> None:
        """A1111's upscale step: img2img from the selected image at twice its size, one
        image (batch count 1, batch size 1: a 2x batch is slow and rarely wanted)."""
        path = self._need_image()
        if not path:
            return
        try:
            w, h = image_size(path)  # the header only: a pipe or a bomb is a sentence
        except UserError as e:
            self.log_line("error", f"{e.message}: pick another image")
            return
        width, height = _fit_size(w * 2), _fit_size(h * 2)
        form = self.form
        form.set_field("init_image", path)
        form.set_field("width", str(width))
        form.set_field("height", str(height))
        form.set_field("denoising_strength", str(IMG2IMG_2X_DENOISE))
        form.set_field("batch_count", "1")
        form.set_field("batch_size", "1")
        form.set_field("mode", "img2img")
        self.log_line(
            "info",
            f"img2img at 2x ({width}x{height}, denoise {IMG2IMG_2X_DENOISE}, 1 image) from {path}",
        )

    def action_send_extras(self) -> None:
        path = self._need_image()
        if path:
            self.form.set_field("extras_image", path)
            self.form.set_field("mode", "extras")
            self.log_line("info", f"extras: {path}")

    def action_edit_mask(self) -> None:
        """The mask editor on the init image (else the grid's pick, which becomes the init
        image when the mask is saved); the saved mask goes into the form, in img2img mode."""
        from sdtui.tui.screens.mask_editor import MaskEditorScreen

        params = self.form.state.params
        init = params.init_image
        path = init if init and file_problem(os.path.expanduser(init)) is None else None
        path = path or self._need_image()
        if not path:
            return
        try:
            editor = MaskEditorScreen(
                os.path.expanduser(path), self.settings.outputs, mask=params.mask
            )
        except UserError as e:
            self.log_line("error", f"no mask editor: {e.message}")
            self.notify(e.message, severity="error")
            return

        def saved(mask: str | None) -> None:
            if mask:
                self.form.set_field("init_image", path)
                self.form.set_field("mask", mask)
                self.form.set_field("mode", "img2img")
                self.log_line("info", f"inpaint mask {show(mask)} for {show(path)}")

        self.app.push_screen(editor, saved)

    def action_upscale(self) -> None:
        path = self._need_image()
        if path:
            self.action_send_extras()
            self.call_after_refresh(self.action_generate)

    def action_full_view(self) -> None:
        path = self._need_image()
        if path:
            paths = self.grid.paths
            self.app.push_screen(FullViewScreen(path, paths if path in paths else None))

    def action_reuse_params(self) -> None:
        path = self._need_image()
        if path:
            self.load_params_from(path)

    def action_load_params(self) -> None:
        def loaded(path: str | None) -> None:
            if path:
                self.load_params_from(path)

        self.app.push_screen(
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
        # A1111 ("Styles array", its default "Apply if any"): styles whose text the prompts
        # end with are chosen and their text taken out; none found: the choice stays
        self.refresh_styles()
        found, prompt, negative = self.style_book.extract(params.prompt, params.negative_prompt)
        styles = tuple(found) if found else self.form_state.styles
        if found:
            params = params.replace(prompt=prompt, negative_prompt=negative)
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
        keep_mask = self.form_state.params.mask  # drawn for the init image: kept with it
        self.apply_form(
            self.form_state.replace(
                mode=mode,
                params=params.replace(init_image=keep_init, mask=keep_mask),
                styles=styles,
            )
        )
        if found:
            self.log_line(
                "info",
                f"styles in {show(path)}'s prompt: {style_line(found)}; chosen, and their text "
                'taken out of the prompt ("Apply styles to the prompt" puts it back)',
            )
        elif styles:
            note += f" (styles still chosen, added on generate: {style_line(styles)})"
        if problems:
            kept = "; ".join(problems)
            self.log_line(
                "warning",
                f"parameters loaded from {show(path)}{note}, but not these values (the form "
                f"keeps its own): {kept}",
            )
            self.notify(
                f"{len(problems)} value(s) in {show(path)} ignored: {kept}", severity="warning"
            )
        else:
            self.log_line("info", f"parameters loaded from {show(path)}{note}")

    def action_history(self) -> None:
        def chosen(path: str | None) -> None:
            if path:
                self.book.shown_job = None
                self.show_images([path])

        paths = getattr(self.host, "paths", None)
        queue = paths.queue if paths is not None else None
        self.app.push_screen(HistoryScreen(self.settings.outputs, queue_path=queue), chosen)

    def action_switch_model(self) -> None:
        from textual.command import SimpleCommand

        commands = [
            SimpleCommand(
                shown(name), functools.partial(self.switch_model, name), "load this checkpoint now"
            )
            for name in self.model_names
        ]
        self.app.search_commands(commands, placeholder="Switch model…")

    def switch_model(self, name: str) -> None:
        self._engine_picks_model = False
        self.form.set_field("model", name)
        self.host.load_model(name)
        self.log_line("info", f"switching to {name}")

    def set_memory_mode(self, mode: str) -> None:
        """The engine's memory mode (auto, normal, low, lowest), through the form: it is
        remembered with the form and shown in the status bar."""
        self.form.set_field("memory_mode", mode)

    def action_insert_network(self) -> None:
        def chosen(text: str | None) -> None:
            if text:
                self.insert_prompt_text(text)

        self.app.push_screen(
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
        focused = self.focused
        area = focused if isinstance(focused, PromptArea) else self.query_one("#prompt", PromptArea)
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

    # -- styles (A1111's styles.csv) ---------------------------------------------------------

    def refresh_styles(self) -> None:
        """Read the styles file if it changed; a file that cannot be read is said once."""
        problem = self.style_book.refresh()
        if problem:
            self.log_line("warning", f"styles not loaded: {problem}")
        self.show_styles()

    @_while_shown
    def show_styles(self) -> None:
        """The chosen styles in the prompt area, and the token counters counting them."""
        names = self.form_state.styles
        unknown = self.style_book.unknown(names) if not self.style_book.problem else []
        line = style_line(names, unknown)
        self.prompt_editor.show_styles(
            f"Styles {key_of('styles')}: {line}" if names else "", *self.style_book.texts(names)
        )

    def choose_styles(self, names: tuple[str, ...]) -> None:
        names = tuple(dict.fromkeys(names))
        self.form_state = self.form_state.replace(styles=names)
        self.form.state = self.form.state.replace(styles=names)
        self.show_styles()

    def toggle_style(self, name: str) -> None:
        chosen = self.form_state.styles
        self.choose_styles(
            tuple(n for n in chosen if n != name) if name in chosen else (*chosen, name)
        )

    def _styled(self, gen: GenerationParams, names: tuple[str, ...]) -> GenerationParams:
        """``gen`` with the chosen styles applied to its prompts (what A1111 sends to the
        model and writes in the infotext)."""
        if not names:
            return gen
        self.refresh_styles()
        prompt, negative = self.style_book.merged(names, gen.prompt, gen.negative_prompt)
        return gen.replace(prompt=prompt, negative_prompt=negative)

    def action_styles(self) -> None:
        self.refresh_styles()

        def chosen(names: tuple[str, ...] | None) -> None:
            if names is not None:
                self.choose_styles(names)

        self.app.push_screen(
            StylePickerScreen(
                self.style_book,
                self.form_state.styles,
                save=lambda after: self.action_save_style(after=after),
                delete=lambda name, after: self.ask_delete_style(name, after=after),
            ),
            chosen,
        )

    def action_apply_styles(self) -> None:
        """A1111's "Apply styles to the prompt": the chosen styles are written into the
        prompt boxes and unchosen (ctrl+z in a box takes its text back)."""
        names = self.form_state.styles
        if not names:
            self.notify(f"No style chosen: {key_of('styles')} picks some.", severity="warning")
            return
        p = self.form_state.params
        self.refresh_styles()
        try:
            prompt, negative = self.style_book.merged(names, p.prompt, p.negative_prompt)
        except StyleError as e:
            self.log_line("error", f"styles not applied: {e.message}")
            return
        self.prompt_editor.replace_texts(prompt, negative)
        self.form_state = self.form_state.with_params(prompt=prompt, negative_prompt=negative)
        self.choose_styles(())
        self.log_line("info", f"styles applied to the prompt: {style_line(names)}")

    def action_save_style(self, after: Callable[[], None] | None = None) -> None:
        """Save the prompt and negative prompt as a style: asks a name, and before replacing
        a style of that name."""
        p = self.form_state.params
        if not p.prompt.strip() and not p.negative_prompt.strip():
            self.notify(
                "The prompt and negative prompt are empty: type the style's text first.",
                severity="warning",
            )
            return
        book = self.style_book
        self.refresh_styles()
        if book.problem:
            self.log_line("error", f"style not saved: {book.problem}")
            return

        def valid(name: str) -> str | None:
            try:
                check_style_name(name)
            except StyleError as e:
                return e.message
            return None

        def write(name: str) -> None:
            try:
                book.save(PromptStyle(name, p.prompt, p.negative_prompt))
            except UserError as e:
                self.log_line("error", f"style not saved: {e.message}")
                return
            self.log_line("ok", f"style {name!r} saved in {book.path}")
            self.show_styles()
            if after is not None:
                after()

        def named(name: str | None) -> None:
            if not name:
                return
            if name not in book.styles:
                write(name)
                return

            def confirmed(yes: bool | None) -> None:
                if yes:
                    write(name)

            self.app.push_screen(
                ConfirmScreen(
                    f"A style named {name!r} is in {book.path}: replace its prompts with these?",
                    yes="replace it",
                ),
                confirmed,
            )

        self.app.push_screen(
            AskTextScreen(
                "Save the prompt and negative prompt as a style named:",
                placeholder="a name, e.g. Cinematic",
                check=valid,
            ),
            named,
        )

    def ask_delete_style(self, name: str, after: Callable[[], None] | None = None) -> None:
        """Delete the style ``name`` from the styles file, after asking."""

        def confirmed(yes: bool | None) -> None:
            if not yes:
                return
            try:
                self.style_book.delete(name)
            except UserError as e:
                self.log_line("error", f"style not deleted: {e.message}")
                return
            self.log_line("ok", f"style {name!r} deleted from {self.style_book.path}")
            if name in self.form_state.styles:
                self.choose_styles(tuple(n for n in self.form_state.styles if n != name))
            self.show_styles()
            if after is not None:
                after()

        self.app.push_screen(
            ConfirmScreen(
                f"Delete the style {name!r} from {self.style_book.path}?", yes="delete it"
            ),
            confirmed,
        )

    def action_xyz_plot(self) -> None:
        """A1111's X/Y/Z plot over the form's params (styles applied, as on generate)."""
        state = self.form.state.with_params(
            prompt=self.form_state.params.prompt,
            negative_prompt=self.form_state.params.negative_prompt,
        ).replace(styles=self.form_state.styles)
        if state.mode == "extras":
            self.notify("An X/Y/Z plot runs txt2img or img2img: switch the mode first.")
            return
        problem = next(iter(state.errors().values()), "")
        base = state.generation_params().replace(
            preview_every=self.settings.preview_every, preview_interval=PREVIEW_INTERVAL
        )
        try:
            base = without_hidden(self._styled(base, state.styles), self.form.family)
        except StyleError as e:
            problem = problem or f"{e.message}: turn it off in the styles picker"

        def submit(params: XYZParams) -> str | None:
            try:
                job_id = self.host.submit_xyz(params)
            except (ParamError, UserError) as e:
                return str(e)
            info = plot_job_info(params)
            self.book.submitted(job_id, info)
            self.log_line("info", f"job #{job_id} queued: {info.summary}")
            self.refresh_queue()
            self.refresh_bindings()
            return None

        def closed(plot: XYZParams | None) -> None:
            self.xyz_plot = plot or self.xyz_plot

        c = self.catalog
        choices = {"Checkpoint name": c.models, "VAE": c.vaes, "Hires upscaler": c.hires_upscalers}
        screen = XYZScreen(base, self.xyz_plot, submit, problem=problem, choices=choices)
        self.app.push_screen(screen, closed)

    def action_show_error(self) -> None:
        failure = self.book.last_failure
        if failure is None:
            self.notify("No job has failed.")
            return
        self.app.push_screen(ErrorDetailScreen(failure.job_id, failure.message, failure.detail))

    def action_toggle_gpu(self) -> None:
        self.gpu_visible = not self.has_class("gpu-on")
        self.update_layout(*self.size)

    def action_focus_prompt(self) -> None:
        self.query_one("#prompt", PromptArea).focus()

    def action_focus_settings(self) -> None:
        # back to the field last used in the form (if it is still shown), else its first
        shown = [w for w in self.focus_chain if self.form in w.ancestors]
        target = self._last_form_field if self._last_form_field in shown else None
        target = target or next(iter(shown), None)
        if target is not None:
            target.focus()

    def action_focus_images(self) -> None:
        self.grid.focus()

    def action_focus_queue(self) -> None:
        queue = self.queue_view
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
        self.status_bar.update_line(state="starting", detail="", step=0, steps=0)
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
        self.app.call_from_thread(self._restarted, ids, error, attached)

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

    # -- helpers -----------------------------------------------------------------------------

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


def _home_short(path: Path) -> str:
    """``path`` with the home folder as ``~`` (a line that fits), drawable."""
    home = Path.home()
    with contextlib.suppress(ValueError):
        return show(Path("~") / path.relative_to(home))
    return show(path)


def _fit_size(v: int) -> int:
    """A size the engine takes: a multiple of 8, at most MAX_SIZE."""
    return max(SIZE_MULTIPLE, min(MAX_SIZE, v - v % SIZE_MULTIPLE))
