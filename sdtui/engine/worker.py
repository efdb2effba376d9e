"""An engine worker process: reads commands from the daemon, runs one job at a time, emits
events.

The daemon (``sdtui.ipc.daemon``) starts one worker per device with the ``spawn`` method and
talks to it over a pipe. The worker holds the only other end of that pipe, so when the
daemon dies (``kill -9``, an OOM kill) the worker's read ends at once: it stops the running
job at the next step (the images it saved are recorded in the queue file, so the next
daemon resumes after them) and exits. This module is imported by the daemon's spawn shim
too, so torch and diffusers are imported inside the functions only (``sdtui.engine.job``,
imported at the top, has no torch).

It starts on every platform: the POSIX-only names it uses (``signal.SIGHUP``, ``os.nice``)
are looked up, never assumed.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import signal
import threading
import time
import traceback
from typing import Any

from sdtui.config import MEMORY_MODES, Settings, cache_dir
from sdtui.engine.job import JobContext, JobControl
from sdtui.errors import UserError
from sdtui.hashes import model_hash
from sdtui.ipc import protocol as msg
from sdtui.ipc.protocol import EngineOptions, EngineState, LogLevel
from sdtui.jobstore import record_saved_image
from sdtui.model_family_dit import DIT_FAMILIES
from sdtui.model_index import discover_models, resolve_model
from sdtui.outputs import OutputLayout
from sdtui.units import format_bytes

__all__ = ["Engine", "EngineOptions", "engine_main"]

DEMO_NAMES = ("demo", "sdtui-demo")
# The engine yields the CPU to the UI: keys stay snappy while torch samples on the CPU. Set
# before torch starts its threads (each inherits it). On a GPU it changes nothing.
ENGINE_NICE = 10


def ignore_terminal_signals() -> None:
    """The terminal closing (SIGHUP) or ctrl+c in it must not kill a running job: the
    daemon decides when a worker stops. Not every platform has every signal."""
    for name in ("SIGHUP", "SIGINT"):
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        try:
            signal.signal(sig, signal.SIG_IGN)
        except (OSError, ValueError):  # pragma: no cover - not the main thread
            pass


class PipeEmitter:
    """Sends events to the daemon from any thread; a closed pipe means the daemon is gone."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.broken = threading.Event()

    def __call__(self, event: Any) -> None:
        if self.broken.is_set():
            return
        with self.lock:
            try:
                self.conn.send(event)
            except (OSError, ValueError, EOFError):
                self.broken.set()


def engine_main(conn: Any, settings: Settings, options: EngineOptions) -> None:
    """Entry point of an engine worker process."""
    ignore_terminal_signals()
    if hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(ENGINE_NICE)
    if options.visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = options.visible_devices  # before torch loads
    prepare_environment()
    emit = PipeEmitter(conn)
    engine = Engine(settings, options, emit)
    emit(msg.EngineStatus("starting", "importing torch", pid=os.getpid(), worker=options.worker))
    engine.serve(conn)
    conn.close()


def prepare_environment() -> None:
    """Defaults for the engine process, set before torch is imported; a user's own values win."""
    # fights fragmentation, the usual cause of "OOM on the second run" (see REFERENCE.md)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # torch.compile's caches (FX graphs, kernels, autotuning) in our cache folder, not in /tmp:
    # they survive a reboot, so a later start compiles the fast path from cache in seconds
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "torchinductor"))


def _quiet_libraries() -> None:
    """diffusers and transformers print progress bars and advice to stderr, which would land
    in the engine log for every job: the engine reports through events instead."""
    import warnings

    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="diffusers")


class Engine:
    """One worker's state: the loaded model, its memory mode, the jobs handed to it.

    Cheap to build (no torch import): ``serve`` starts reading commands first, so a daemon
    that is gone before torch is imported is noticed as soon as the import is done."""

    def __init__(self, settings: Settings, options: EngineOptions, emit: Any) -> None:
        self.settings = settings
        self.options = options
        self.emit = emit
        self.jobs: collections.deque[Any] = collections.deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.current_job: int | None = None
        self.session: Any = None
        self.device = "cpu"
        self._control: JobControl | None = None
        self.memory_mode = (
            settings.memory_mode
        )  # what the user asked for (SetMemoryMode changes it)
        self.placement = "normal"  # the mode in force for the loaded model
        # the previous model, parked in CPU RAM so switching back takes a second (at most one)
        self.parked: dict[str, Any] = {}
        self._said_cpu_mode = False
        self._faults: Any = None

    @property
    def faults(self) -> Any:
        """The fault injector (tests): built on first use, as it imports torch."""
        if self._faults is None:
            from sdtui.engine.faults import FaultInjector, spec_from_env_or

            self._faults = FaultInjector(spec_from_env_or(self.options.fault_injection))
        return self._faults

    # -- command thread ---------------------------------------------------------------------

    def _read_commands(self, conn: Any) -> None:
        while True:
            try:
                cmd = conn.recv()
            except (EOFError, OSError, ValueError):
                self._parent_gone()
                return
            if isinstance(cmd, msg.Shutdown):
                with self.cond:
                    self.stopping = True
                    self.jobs.clear()
                    if self._control is not None:
                        self._control.cancel.set()
                    self.cond.notify_all()
                return
            if isinstance(cmd, msg.Cancel):
                self._cancel(cmd.job_id)
            elif isinstance(cmd, msg.Skip):
                if self._control is not None and cmd.job_id in (None, self.current_job):
                    self._control.skip.set()
            else:
                with self.cond:
                    self.jobs.append(cmd)
                    self.cond.notify_all()

    def _cancel(self, job_id: int | None) -> None:
        with self.cond:
            if job_id is None or job_id == self.current_job:
                if self._control is not None:
                    self._control.cancel.set()
                return
            for cmd in list(self.jobs):
                if getattr(cmd, "job_id", None) == job_id:
                    self.jobs.remove(cmd)
                    self.emit(msg.JobDone(job_id, (), 0.0, cancelled=True))

    def _parent_gone(self) -> None:
        """The daemon is gone: stop the running job at its next step (its saved images are
        recorded, so the next daemon resumes after them) and exit. Finishing it here would
        race the next daemon, which runs the job again."""
        with self.cond:
            self.stopping = True
            self.jobs.clear()
            if self._control is not None:
                self._control.cancel.set()
            self.cond.notify_all()

    # -- main thread ------------------------------------------------------------------------

    def serve(self, conn: Any) -> None:
        reader = threading.Thread(target=self._read_commands, args=(conn,), daemon=True)
        reader.start()
        try:
            self._boot()
        except Exception as e:  # noqa: BLE001 - report, then serve: the user may fix the model
            self._report_failure(None, e)
        while True:
            with self.cond:
                while not self.jobs and not self.stopping:
                    self.cond.wait(timeout=1.0)
                if not self.jobs and self.stopping:
                    break
                cmd = self.jobs.popleft()
            self._run(cmd)
        self._status("stopped")

    def _boot(self) -> None:
        _quiet_libraries()
        import torch

        from sdtui.engine.session import pick_device

        self.device = pick_device(self.settings.device)
        torch.set_grad_enabled(False)
        detail = f"torch {torch.__version__}"
        if self.device == "cuda":
            detail += f", {torch.cuda.get_device_name(0)}"
        self._status("ready", detail)
        if self.options.preload and not self.stopping:
            self.ensure_model(self.options.preload_model)

    def _status(self, state: EngineState, detail: str = "") -> None:
        model = self.session.name if self.session else None
        self.emit(
            msg.EngineStatus(state, detail, self.device, model, os.getpid(), self.options.worker)
        )

    def _run(self, cmd: Any) -> None:
        job_id = getattr(cmd, "job_id", None)
        control = JobControl()
        with self.cond:
            self.current_job, self._control = job_id, control
        try:
            if isinstance(cmd, msg.LoadModel):
                self.ensure_model(cmd.model)
            elif isinstance(cmd, msg.SetMemoryMode):
                self.set_memory_mode(cmd.mode)
            elif isinstance(cmd, msg.SubmitGenerate):
                self._status("busy", f"job {job_id}")
                self._generate(cmd, control)
            elif isinstance(cmd, msg.SubmitUpscale):
                self._status("busy", f"job {job_id}")
                self._upscale(cmd)
            elif isinstance(cmd, msg.SubmitXYZ):
                self._status("busy", f"job {job_id}")
                self._xyz(cmd, control)
        except Exception as e:  # noqa: BLE001 - the engine outlives any one job
            self._report_failure(job_id, e)
        finally:
            with self.cond:
                self.current_job, self._control = None, None
            self._status("ready")

    def _report_failure(
        self, job_id: int | None, e: BaseException, paths: tuple[str, ...] = ()
    ) -> None:
        detail = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        message = e.message if isinstance(e, UserError) else _plain(e)
        if job_id is None:
            self.emit(msg.Log("error", message))
        else:
            self.emit(msg.JobFailed(job_id, message, detail, paths))

    # -- models -----------------------------------------------------------------------------

    def resolve_model(self, query: str | None, settings: Settings | None = None) -> tuple[str, Any]:
        """(display name, path) of the model to use, found in ``settings``' folders (a job's
        submitter's; the worker's own by default)."""
        settings = settings or self.settings
        if query is None:
            query = settings.default_model
        if query is None and self.options.demo:
            query = "demo"
        if query is not None and query.lower() in DEMO_NAMES:
            from sdtui.engine.demo import ensure_demo_model

            return "sdtui-demo", ensure_demo_model().safetensors
        entries = discover_models(settings.models)
        if query is None:
            if not entries:
                from sdtui.engine.demo import ensure_demo_model

                self.emit(
                    msg.Log(
                        "warning",
                        f"no checkpoint in {settings.checkpoints}: using the built-in demo "
                        "model, whose images are noise. Put a .safetensors checkpoint there "
                        "(or use --a1111-dir) for real images.",
                    )
                )
                return "sdtui-demo", ensure_demo_model().safetensors
            entry = entries[0]
        else:
            entry = resolve_model(query, entries)
        return entry.name, entry.path

    def ensure_model(self, query: str | None, settings: Settings | None = None) -> Any:
        name, path = self.resolve_model(query, settings)
        if self.session is not None and str(self.session.path) == str(path):
            return self.session
        parked = self.parked.pop(str(path), None)
        if parked is not None:
            return self._unpark(name, parked)
        return self._load(name, path)

    def _park_or_unload(self) -> None:
        """Switching away: keep the current model in CPU RAM when there is room for it twice
        over (so switching back is quick), else free it completely."""
        import psutil

        from sdtui.engine.memory import free_caches, trim_heap

        for old in self.parked.values():  # at most one parked model: RAM must not creep
            old.close()
        self.parked.clear()
        session = self.session
        if session is None:
            return
        size = int(session.loaded.size_bytes)
        room = psutil.virtual_memory().available > 2 * size + 2 * 2**30
        if not (room and self.placement == "normal"):
            self.unload_model()
            return
        self.faults.remove()
        session.close_refiner()  # a parked model keeps no refiner (its RAM and VRAM come back)
        if self.device == "cuda":
            session.txt2img.to("cpu")  # the VRAM goes back to the next model
        self.parked[str(session.path)] = session
        self.session = None
        free_caches()
        trim_heap()
        self._log(f"kept {session.name} in RAM for a quick switch back")

    def _unpark(self, name: str, session: Any) -> Any:
        from sdtui.engine import memory

        t0 = time.perf_counter()
        self._park_or_unload()
        if self.device == "cuda":
            mode, _ = memory.choose_mode(
                self.memory_mode,
                self.device,
                free_vram=memory.free_vram(self.device),
                weights=memory.weights_bytes(session.txt2img),
            )
            if (
                mode == "lowest"
            ):  # sequential offload wants a freshly built model (see set_memory_mode)
                session.close()
                return self._load(name, session.path)
        self._status("loading", f"loading {name} from RAM")
        # placed as the memory mode says now (it may have changed while the model was parked);
        # a move that runs out of VRAM falls back to model offload, never half-moved weights
        self.placement, _ = self._place(session.txt2img)
        self.session = session
        if self.faults:
            self.faults.install(session.loaded.pipe)
        seconds = time.perf_counter() - t0
        loaded = session.loaded
        self._log(f"switched back to {name} from RAM in {seconds:.2f} s")
        self.emit(
            msg.ModelLoaded(
                name,
                loaded.family.label,
                round(seconds, 2),
                int(loaded.size_bytes),
                str(loaded.path),
            )
        )
        self._status("ready")
        return session

    def _load(self, name: str, path: Any) -> Any:
        from sdtui.engine.models import default_dtype, load_pipeline
        from sdtui.engine.session import ModelSession

        self._park_or_unload()  # the old model's VRAM (and RAM, unless parked) comes back first
        self._status("loading", f"loading {name}")
        t0 = time.perf_counter()
        # built on the CPU in the GPU's dtype, then placed as the memory mode says
        loaded = load_pipeline(path, device="cpu", dtype=default_dtype(self.device))
        loaded.name = name
        self.placement, why = self._place(loaded.pipe)
        loaded.device = self.device
        self.session = ModelSession.create(loaded, self.device)
        self.session.settings = self.settings  # flags like --models-dir reach LoRA/VAE lookup
        if self.placement == "normal":
            self._fast_path(loaded)
        if self.faults:
            self.faults.install(loaded.pipe)
        seconds = time.perf_counter() - t0
        size = format_bytes(int(loaded.size_bytes))
        self.emit(
            msg.Log(
                "info",
                f"loaded {name} ({loaded.family.label}, {size}) in {seconds:.1f} s; "
                f"memory mode {self.placement} ({why})",
            )
        )
        self.emit(
            msg.ModelLoaded(
                name, loaded.family.label, round(seconds, 2), int(loaded.size_bytes), str(path)
            )
        )
        self._status("ready")
        return self.session

    def unload_model(self) -> None:
        """Free the loaded model completely, so switching models never grows RAM or VRAM."""
        from sdtui.engine.memory import free_caches, trim_heap

        if self.session is None:
            return
        self.faults.remove()
        session, self.session = self.session, None
        session.close()
        del session
        free_caches()
        trim_heap()

    # -- memory modes -----------------------------------------------------------------------

    def _fast_path(self, loaded: Any) -> None:
        from sdtui.engine.fastpath import apply_fast_path, warm_up

        if loaded.family.family in DIT_FAMILIES:
            return  # the fast path (fused QKV, compiled blocks) is the UNet's; none for a DiT yet
        state = apply_fast_path(loaded.pipe, self.device, self.settings.fast_path, self._log)
        self.session.fast_path = state
        if state.compiling:
            size = 1024 if loaded.family.family == "SDXL" else 512
            self._status("loading", "compiling the UNet (first load only)")
            warm_up(loaded.pipe, state, size, size, self._log)
        elif state.applied:
            self._log(state.summary())

    def _place(self, pipe: Any) -> tuple[str, str]:
        """Put a freshly built pipeline where the memory mode wants it: (mode in force, why)."""
        from sdtui.engine import memory

        if self.device != "cuda":
            self._say_cpu_mode()
            return "normal", "on the CPU"
        mode, why = memory.choose_mode(
            self.memory_mode,
            self.device,
            free_vram=memory.free_vram(self.device),
            weights=memory.weights_bytes(pipe),
        )
        placed = memory.place_pipeline(pipe, mode, self.device, self._log)
        return placed, why if placed == mode else "fallback"

    def _say_cpu_mode(self) -> None:
        if self.memory_mode in ("auto", "normal") or self._said_cpu_mode:
            return
        self._said_cpu_mode = True  # once per engine: every job would repeat it otherwise
        self._log(
            f"running on the CPU: memory mode {self.memory_mode} has no effect (runs as normal)"
        )

    def _log(self, text: str, level: LogLevel = "info") -> None:
        self.emit(msg.Log(level, text))

    def set_memory_mode(self, mode: str) -> None:
        """Change the memory mode now; the loaded model moves (or reloads, for lowest)."""
        from sdtui.engine import memory

        if mode not in MEMORY_MODES:
            self._log(
                f"memory mode {mode!r} is unknown: use one of {', '.join(MEMORY_MODES)}", "error"
            )
            return
        self.memory_mode = mode
        if self.device != "cuda":
            self._say_cpu_mode()
            self._log(f"memory mode set to {mode}")
            return
        if self.session is None:
            self._log(f"memory mode set to {mode}: applies when a model loads")
            return
        pipe = self.session.txt2img
        new, why = memory.choose_mode(
            mode,
            self.device,
            free_vram=memory.free_vram(self.device),
            weights=memory.weights_bytes(pipe),
        )
        if new == self.placement:
            self._log(f"memory mode set to {mode}: {new} is already in force ({why})")
            return
        if "lowest" in (new, self.placement):
            # sequential offload parks weights outside the modules: a fresh load is the clean way
            name, path = self.session.name, self.session.path
            self.unload_model()  # a reload of the same model: never park a second copy
            self._load(name, path)
            return
        memory.unplace_pipeline(pipe, self.placement, self.device)
        memory.free_caches()
        self.placement = memory.place_pipeline(pipe, new, self.device, self._log)
        self._log(f"memory mode now {self.placement}: {memory.MODE_WORDS[self.placement]} ({why})")

    # -- jobs -------------------------------------------------------------------------------

    def _recording(self, job_id: int, saved: list[str]) -> Any:
        """An emit that records each saved image in the queue file before passing it on:
        a job that restarts resumes after it."""

        def emit(event: Any) -> None:
            if isinstance(event, msg.ImageSaved):
                if not event.is_grid:
                    saved.append(event.path)  # kept and named in JobFailed if the job fails later
                warning = record_saved_image(
                    self.options.store_path, job_id, event.index, event.path, event.seed
                )
                if warning:
                    self.emit(msg.Log("warning", warning, job_id))
            self.emit(event)

        return emit

    def _job_session(self, model: str | None, settings: Settings, job_id: int) -> Any:
        """The model a job (or an X/Y/Z cell) names, loaded, with its hash known."""
        session = self.ensure_model(model, settings)
        self._status("busy", f"job {job_id}")
        if session.model_hash is None and session.path.is_file():
            session.model_hash = model_hash(session.path)
        return session

    def _run_generation(self, session: Any, params: Any, ctx: JobContext) -> Any:
        from sdtui.engine.generate import run_generation

        if session.family in DIT_FAMILIES:  # Flux.1 / SD3.5 run through their own pipelines
            from sdtui.engine.dit import run_dit_generation

            return run_dit_generation(session, params, ctx)

        try:
            return run_generation(session.loaded, session, params, ctx)
        except Exception as e:
            if not self._compile_failed(session, e):
                raise
            return run_generation(session.loaded, session, params, ctx)

    def _generate(self, cmd: msg.SubmitGenerate, control: JobControl) -> None:
        from sdtui.engine.fastpath import compile_work, recompile_note
        from sdtui.engine.memory import free_caches, job_memory

        settings = cmd.settings or self.settings
        session = self._job_session(cmd.params.model, settings, cmd.job_id)
        saved: list[str] = []
        ctx = JobContext(
            job_id=cmd.job_id,
            emit=self._recording(cmd.job_id, saved),
            control=control,
            layout=OutputLayout(settings.outputs),
            model_name=session.name,
            model_hash=session.model_hash,
            family=session.family,
            memory_mode=self.placement,
            settings=settings,
            done=dict(cmd.done),
        )
        fast = session.fast_path
        compiled_before = compile_work() if fast is not None and fast.compiling else (0, 0.0)
        try:
            with job_memory(self.device) as acct:
                done = self._run_generation(session, cmd.params, ctx)
        except Exception as e:  # noqa: BLE001 - reported here, with the images already saved
            ctx.log(f"job {cmd.job_id}: {acct.summary()}")
            self._report_failure(cmd.job_id, e, tuple(saved))
            done = None
        if done is None:
            free_caches()  # after the except block: the error's frames no longer pin tensors
            return
        if fast is not None and (note := recompile_note(fast, compiled_before)):
            ctx.log(note)
        ctx.log(f"job {cmd.job_id}: {acct.summary()}")
        self.emit(dataclasses.replace(done, **acct.fields()))

    def _xyz(self, cmd: msg.SubmitXYZ, control: JobControl) -> None:
        """An X/Y/Z plot (sdtui.engine.xyz): each cell one generation, a Checkpoint name
        axis switching the model as a job naming it would."""
        from sdtui.engine.memory import free_caches, job_memory
        from sdtui.engine.xyz import run_xyz

        settings = cmd.settings or self.settings
        saved: list[str] = []
        ctx = JobContext(
            job_id=cmd.job_id,
            emit=self._recording(cmd.job_id, saved),
            control=control,
            layout=OutputLayout(settings.outputs),
            memory_mode=self.placement,
            settings=settings,
            done=dict(cmd.done),
        )

        def run_cell(params: Any, cell: JobContext) -> Any:
            session = self._job_session(params.model, settings, cmd.job_id)
            cell.model_name, cell.model_hash = session.name, session.model_hash
            cell.family, cell.memory_mode = session.family, self.placement
            return self._run_generation(session, params, cell)

        try:
            with job_memory(self.device) as acct:
                done = run_xyz(cmd.params, ctx, run_cell)
        except Exception as e:  # noqa: BLE001 - reported here, with the cells already saved
            ctx.log(f"job {cmd.job_id}: {acct.summary()}")
            self._report_failure(cmd.job_id, e, tuple(saved))
            done = None
        if done is None:
            free_caches()
            return
        ctx.log(f"job {cmd.job_id}: {acct.summary()}")
        self.emit(dataclasses.replace(done, **acct.fields()))

    def _compile_failed(self, session: Any, e: BaseException) -> bool:
        """A torch.compile failure mid-job (e.g. at a new size): back to eager, run again."""
        from sdtui.engine.fastpath import is_compile_error, undo_compile

        state = session.fast_path
        if state is None or not state.compiling or not is_compile_error(e):
            return False
        undo_compile(state, f"torch.compile failed: {type(e).__name__}; running without it")
        self._log(state.summary())
        return True

    def _upscale(self, cmd: msg.SubmitUpscale) -> None:
        from sdtui.engine.upscale import upscale_job

        t0 = time.perf_counter()
        saved: list[str] = []
        settings = cmd.settings or self.settings
        emit = self._recording(cmd.job_id, saved)
        paths = upscale_job(
            cmd.params, settings, self.device, cmd.job_id, emit, done=dict(cmd.done)
        )
        self.emit(msg.JobDone(cmd.job_id, tuple(paths), round(time.perf_counter() - t0, 3)))


def _plain(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
