"""The UI side of the engine: starts the engine process (spawn), sends commands, hands out
events, notices a crash, restarts with the queue kept. Imports neither torch nor textual."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import queue
import time
from collections.abc import Iterator
from typing import Any

from sdtui.config import MEMORY_MODES, Settings
from sdtui.engine import protocol as msg
from sdtui.engine.worker import EngineOptions, engine_main
from sdtui.params import GenerationParams, UpscaleParams


class EngineHost:
    """Owns one engine process at a time.

    Jobs submitted and not finished are remembered in order, so ``restart()`` after a crash
    runs them again in the new process.
    """

    def __init__(self, settings: Settings, options: EngineOptions | None = None) -> None:
        self.settings = settings
        self.options = options or EngineOptions()
        self._ctx = mp.get_context("spawn")
        self._ids = itertools.count(1)
        self.pending: dict[int, Any] = {}  # job_id -> command, in submission order
        self.process: Any = None
        self.state = "stopped"
        self.running_job: int | None = None
        self._stopping = False
        self._crash_reported = False

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.cmd_q = self._ctx.Queue()
        self.evt_q = self._ctx.Queue()
        self.process = self._ctx.Process(
            target=engine_main,
            args=(self.cmd_q, self.evt_q, self.settings, self.options),
            name="sdtui-engine",
            daemon=False,  # must outlive a dead UI long enough to save a running job
        )
        self._stopping = False
        self._crash_reported = False
        self.state = "starting"
        self.process.start()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def is_alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the engine to stop (cancelling the running job), then make sure it did."""
        if self.process is None:
            return
        self._stopping = True
        if self.process.is_alive():
            try:
                self.cmd_q.put(msg.Shutdown())
            except (OSError, ValueError):
                pass
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(3)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(3)
        self.state = "stopped"
        for q in (self.cmd_q, self.evt_q):
            q.cancel_join_thread()
            q.close()

    def kill(self) -> None:
        """Kill the engine at once (tests use this to play a crash)."""
        if self.process is not None and self.process.is_alive():
            self.process.kill()
            self.process.join(5)

    def restart(self) -> list[int]:
        """A new engine process; frees everything the old one held. Resubmits unfinished jobs
        and returns their ids."""
        if self.process is not None:
            self.stop(timeout=5)
        self.running_job = None
        self.start()
        for cmd in self.pending.values():
            self.cmd_q.put(cmd)
        return list(self.pending)

    # -- commands ---------------------------------------------------------------------------

    def submit(self, params: GenerationParams) -> int:
        params.validated()  # raise ParamError here, in the caller's words
        job_id = next(self._ids)
        cmd = msg.SubmitGenerate(job_id, params)
        self.pending[job_id] = cmd
        self.cmd_q.put(cmd)
        return job_id

    def submit_upscale(self, params: UpscaleParams) -> int:
        params.validated()
        job_id = next(self._ids)
        cmd = msg.SubmitUpscale(job_id, params)
        self.pending[job_id] = cmd
        self.cmd_q.put(cmd)
        return job_id

    def cancel(self, job_id: int | None = None) -> None:
        """Interrupt the running job (None) or remove a queued one."""
        self.cmd_q.put(msg.Cancel(job_id))

    def skip(self) -> None:
        self.cmd_q.put(msg.Skip())

    def load_model(self, model: str) -> None:
        self.cmd_q.put(msg.LoadModel(model))

    def set_memory_mode(self, mode: str) -> None:
        """auto, normal, low (model offload) or lowest (sequential offload); runs in queue
        order, so jobs already queued keep the mode they were queued under."""
        if mode not in MEMORY_MODES:
            raise ValueError(f"memory mode {mode!r} is unknown: use one of {', '.join(MEMORY_MODES)}")
        self.settings = self.settings.replace(memory_mode=mode)  # a restart keeps it
        self.cmd_q.put(msg.SetMemoryMode(mode))

    @property
    def queued(self) -> list[int]:
        return [j for j in self.pending if j != self.running_job]

    # -- events -----------------------------------------------------------------------------

    def poll(self, timeout: float = 0.0) -> list[Any]:
        """Every event available now (waiting up to ``timeout`` for the first)."""
        events: list[Any] = []
        try:
            events.append(self.evt_q.get(timeout=timeout) if timeout else self.evt_q.get_nowait())
            while True:
                events.append(self.evt_q.get_nowait())
        except (queue.Empty, OSError, ValueError, EOFError):
            pass
        for e in events:
            self._track(e)
        if not events and self.process is not None and not self._stopping:
            if not self.process.is_alive() and not self._crash_reported:
                self._crash_reported = True
                self.state = "crashed"
                code = self.process.exitcode
                crash = msg.EngineStatus(
                    "crashed",
                    f"the engine process exited unexpectedly (exit code {code}); "
                    "restart it to go on — queued jobs are kept",
                )
                events.append(crash)
        return events

    def events(self, timeout: float | None = None) -> Iterator[Any]:
        """Yield events until ``timeout`` seconds pass with none (None: forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            batch = self.poll(timeout=0.1)
            yield from batch
            if batch and deadline is not None:
                deadline = time.monotonic() + timeout  # type: ignore[operator]
            if deadline is not None and time.monotonic() > deadline:
                return

    def _track(self, e: Any) -> None:
        if isinstance(e, msg.EngineStatus):
            self.state = e.state
        elif isinstance(e, msg.JobStarted):
            self.running_job = e.job_id
        elif isinstance(e, msg.JobDone | msg.JobFailed):
            self.pending.pop(e.job_id, None)
            if self.running_job == e.job_id:
                self.running_job = None

    def wait_job(self, job_id: int, timeout: float = 600.0) -> tuple[Any, list[Any]]:
        """Block until the job ends; returns (final event, every event seen)."""
        seen: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.poll(timeout=0.2):
                seen.append(e)
                if isinstance(e, msg.JobDone | msg.JobFailed) and e.job_id == job_id:
                    return e, seen
                if isinstance(e, msg.EngineStatus) and e.state == "crashed":
                    return e, seen
        raise TimeoutError(f"job {job_id} did not finish in {timeout:.0f} s")
