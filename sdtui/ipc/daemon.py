"""The engine daemon: one per user and machine. It owns the job queue (a SQLite file), starts
one engine worker process per device, hands each job to a free worker and passes the
workers' events to every attached client (TUIs and CLI calls).

It imports neither torch nor textual: a small supervisor that outlives terminals, SSH links
and its own workers (F12 replaces them; a crashed one is replaced by itself). Clients reach it
over a Unix socket in a 0700 folder, authenticated by ``multiprocessing.connection`` with a
key in a 0600 file; never over TCP.

Threads: one accepts connections; each client has a reader and a writer; each worker has a
reader. They only put items into one inbox; the main thread alone changes state, so what
the daemon does reads top to bottom in ``_handle``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

from sdtui import __version__
from sdtui.config import (
    MEMORY_MODES,
    Settings,
    apple_silicon,
    settings_from_dict,
    settings_to_dict,
)
from sdtui.errors import UserError
from sdtui.ipc import protocol as msg
from sdtui.ipc.paths import DaemonPaths, wake_readers
from sdtui.jobstore import (
    FOLDER_KEYS,
    JobRecord,
    JobStore,
    StoreError,
    open_store,
)
from sdtui.params import GenerationParams, ParamError, UpscaleParams, XYZParams

MAX_OUTBOX = 5000  # events waiting for one client; past this it is not reading: dropped
MAX_RUNS = 3  # a job that took its worker down this many times fails instead of running again
CRASH_WINDOW_S = 60.0
CRASHES_IN_WINDOW = 3  # a worker that crashes this often in the window is not restarted
STOP_WAIT_S = 10.0  # a worker asked to stop gets this long before it is killed
RECENT_JOBS = 10
NOTE_S = 600.0  # how long after the start a note is said to clients that attach
PRIVATE_GRACE_S = 60.0  # a --no-daemon engine waits this long for its one client
HANDSHAKE_TIMEOUT_S = 10.0


def log(text: str) -> None:
    """The daemon's own log lines (stdout is engine.log)."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} daemon[{os.getpid()}]: {text}", flush=True)


# -- devices ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    name: str  # what the user sees: cpu, cuda:0, cuda:1
    engine_device: str  # what the worker's engine is told: cpu or cuda
    visible: str | None = None  # its CUDA_VISIBLE_DEVICES (the card's index or UUID)


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES entries. Read without
    torch: the variable when set, else NVML's count (none without a driver)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        entries = [e.strip() for e in env.split(",") if e.strip()]
        # CUDA stops at the first invalid entry; "-1" is the usual way to hide every card
        out: list[str] = []
        for e in entries:
            if e.startswith("-"):
                break
            out.append(e)
        return out
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no driver, no library: no GPUs
        return []


def resolve_devices(settings: Settings) -> list[Device]:
    """One Device per worker: ``devices`` from the settings when given, else ``device``
    (auto and cuda: every visible GPU; auto on Apple silicon: its GPU; auto falls back to the
    CPU)."""
    gpus = visible_gpus()
    wanted = list(settings.devices)
    if not wanted:
        if settings.device == "auto" and not gpus and apple_silicon():
            wanted = ["mps"]
        elif settings.device in ("auto", "cuda"):
            wanted = [f"cuda:{i}" for i in range(len(gpus))] or (
                ["cpu"] if settings.device == "auto" else ["cuda:0"]
            )
        else:
            wanted = [settings.device]
    devices: list[Device] = []
    for name in wanted:
        if name in ("cpu", "mps"):
            devices.append(Device(name, name))
            continue
        index = int(name.partition(":")[2] or 0)
        if gpus and index >= len(gpus):
            raise UserError(
                f"device {name} does not exist: this machine shows {len(gpus)} GPU"
                f"{'s' if len(gpus) != 1 else ''} (cuda:0 to cuda:{len(gpus) - 1})"
            )
        devices.append(Device(f"cuda:{index}", "cuda", gpus[index] if gpus else str(index)))
    return devices


# -- clients ----------------------------------------------------------------------------------


class ClientSession:
    """One attached client. Events wait in a bounded outbox that a writer thread drains: a
    slow client slows nobody. Previews and progress are replaced by newer ones of the same
    job while they wait (newest wins)."""

    _COALESCE = (msg.Preview, msg.Progress)

    def __init__(
        self, conn: Connection, info: dict[str, Any], number: int, inbox: queue.Queue[Any]
    ) -> None:
        self.conn = conn
        self.info = info
        self.number = number
        self.name = describe_client(info)
        self.inbox = inbox
        self.outbox: collections.deque[Any] = collections.deque()
        self.cond = threading.Condition()
        self.closed = False
        self.dropped = 0
        self.flushed = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self._reader = threading.Thread(
            target=self._read, name=f"client-{self.number}-read", daemon=True
        )
        self._reader.start()
        threading.Thread(
            target=self._write, name=f"client-{self.number}-write", daemon=True
        ).start()

    def send(self, event: Any) -> None:
        with self.cond:
            if self.closed:
                return
            if isinstance(event, self._COALESCE):
                kind, job = type(event), event.job_id
                for i, old in enumerate(self.outbox):
                    if type(old) is kind and old.job_id == job:
                        del self.outbox[i]
                        self.dropped += 1
                        break
            if len(self.outbox) >= MAX_OUTBOX:
                self.closed = True  # not reading at all: let it go rather than grow
                self.cond.notify_all()
                self.inbox.put(("gone", self, "stopped reading"))
                return
            self.outbox.append(event)
            self.cond.notify_all()

    def close(self) -> None:
        """No more events; the writer sends what waits, then closes the connection."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def _write(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.outbox and not self.closed:
                        self.cond.wait()
                    if self.closed and not self.outbox:
                        return
                    event = self.outbox.popleft()
                try:
                    self.conn.send(event)
                except (OSError, ValueError):
                    self.inbox.put(("gone", self, "connection lost"))
                    return
        finally:
            # wake the reader thread (blocked in recv) with EOF before the descriptor goes:
            # closed under it, its number could be a new client's next, and the stale reader
            # would take that client's commands
            wake_readers(self.conn)
            reader = self._reader
            if reader is not None and reader is not threading.current_thread():
                reader.join(timeout=2)
            with contextlib.suppress(OSError):
                self.conn.close()
            self.flushed.set()

    def _read(self) -> None:
        while True:
            try:
                command = self.conn.recv()
            except (EOFError, OSError, ValueError):
                self.inbox.put(("gone", self, "detached"))
                return
            except Exception as e:  # noqa: BLE001 - an object this daemon cannot unpickle
                self.inbox.put(("gone", self, f"sent something unreadable ({type(e).__name__})"))
                return
            self.inbox.put(("command", self, command))


def describe_client(info: dict[str, Any]) -> str:
    """'tui (pid 4242, pts/3)' for the job log and `sdtui queue`."""
    parts = [f"pid {info.get('pid', '?')}"]
    if info.get("tty"):
        parts.append(str(info["tty"]).removeprefix("/dev/"))
    if info.get("from"):
        parts.append(f"from {info['from']}")
    return f"{info.get('who', 'client')} ({', '.join(parts)})"


# -- workers ----------------------------------------------------------------------------------


@dataclass
class WorkerHandle:
    index: int
    device: Device
    process: Any = None
    conn: Any = None
    state: msg.EngineState = "stopped"
    model: str | None = None
    model_path: str | None = None
    job_id: int | None = None
    stopping: bool = False
    crashes: collections.deque[float] = field(default_factory=collections.deque)
    generation: int = 0  # which process of this slot: events of a replaced one are ignored

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive() and not self.stopping

    def send(self, command: Any) -> None:
        if self.conn is None:
            return
        try:
            self.conn.send(command)
        except (OSError, ValueError):
            pass  # it died: its reader thread reports the exit

    def info(self) -> msg.WorkerInfo:
        return msg.WorkerInfo(
            self.index, self.device.name, self.state, self.model, self.pid, self.job_id
        )


@dataclass
class DaemonOptions:
    idle_minutes: float
    preload: bool = True
    preload_model: str | None = None
    demo: bool = False
    fault_injection: str | None = None
    private: bool = False  # --no-daemon: ends when its last client leaves and its queue is empty


# -- the daemon -------------------------------------------------------------------------------


class Daemon:
    def __init__(self, settings: Settings, paths: DaemonPaths, options: DaemonOptions) -> None:
        self.settings = settings
        self.paths = paths
        self.options = options
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.sessions: list[ClientSession] = []
        self.workers: list[WorkerHandle] = []
        self.jobs: dict[int, JobRecord] = {}  # queued and running, in queue order
        self.progress: dict[int, tuple[int, int, int]] = {}  # job -> (step, steps, images)
        # said to clients that attach soon after the start (a queue set aside, a job resumed)
        self.notes: list[tuple[str, float]] = []
        self.model_choice = options.preload_model
        self.memory_mode = settings.memory_mode
        self.started_at = time.time()
        self.idle_since = time.monotonic()
        self.stop: tuple[str, bool] | None = None  # (why, cancel jobs)
        self.stop_deadline = 0.0
        self.attached_once = False
        self.listener: Listener | None = None
        self.store: JobStore | None = None
        self._ctx = mp.get_context("spawn")
        self._lock_file: Any = None
        self._numbers = iter(range(1, 1 << 62))

    # -- start ------------------------------------------------------------------------------

    def serve(self, ready: Callable[[str], None] = lambda _: None) -> int:
        """Run until stopped. ``ready`` hears "ok", "running PID" (another daemon holds the
        lock: nothing to do) or "error: ..." once the socket accepts clients or cannot."""
        try:
            self.paths.ensure_folder()
            other = self._take_lock()
            if other is not None:
                ready(f"running {other}")
                return 0
            self.devices = resolve_devices(self.settings)
            self._open_queue()
            self._end_old_workers()
            self._listen()
        except (UserError, OSError) as e:
            text = e.message if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            log(f"cannot start: {text}")
            ready(f"error: {text}")
            return 1
        self._signals()
        threading.Thread(target=self._accept, name="accept", daemon=True).start()
        self.workers = [WorkerHandle(i, d) for i, d in enumerate(self.devices)]
        for w in self.workers:
            self._start_worker(w)
        self._write_info()
        log(
            f"sdtui {__version__} serving {self.paths.address} with "
            f"{len(self.workers)} worker(s) on {', '.join(d.name for d in self.devices)}; "
            f"{len(self.jobs)} job(s) in the queue"
        )
        ready("ok")
        try:
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _take_lock(self) -> int | None:
        """The single-instance lock; returns the holder's pid when another daemon has it."""
        self._lock_file = open(self.paths.lock, "a+")  # noqa: SIM115 - held for the daemon's life
        try:
            _lock(self._lock_file)
        except OSError:
            self._lock_file.close()
            self._lock_file = None
            info = self.paths.read_info() or {}
            return int(info.get("pid") or 0)
        return None

    def _open_queue(self) -> None:
        try:
            self.store, note = open_store(self.paths.queue)
        except StoreError as e:
            raise UserError(e.message) from None
        if note:
            log(note)
            self.notes.append((note, time.monotonic() + NOTE_S))
        resumed = self.store.recover()
        for job in self.store.active_jobs():
            self.jobs[job.id] = job
        if resumed:
            log(f"resuming job(s) {', '.join(f'#{j}' for j in resumed)} where they stopped")
            text = (
                f"the engine daemon stopped during job {', '.join(f'#{j}' for j in resumed)}: "
                "it resumes at its next image (images already saved are kept)"
            )
            self.notes.append((text, time.monotonic() + NOTE_S))

    def _end_old_workers(self) -> None:
        """Workers of a daemon that died stop at their next step on their own; wait for
        them (they may be saving an image) so that nothing runs twice, then kill any left."""
        import psutil

        assert self.store is not None
        old = [
            (pid, created) for pid, created, daemon in self.store.workers() if daemon != os.getpid()
        ]
        alive = []
        for pid, created in old:
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if abs(p.create_time() - created) < 0.5:
                    alive.append(p)
        if alive:
            log(f"waiting for {len(alive)} worker(s) of the previous daemon to stop")
            _, left = psutil.wait_procs(alive, timeout=STOP_WAIT_S)
            for p in left:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(left, timeout=5)
        self.store.forget_workers([pid for pid, _ in old])

    def _listen(self) -> None:
        key = self.paths.write_key()
        self.paths.remove_socket()  # a dead daemon's: the lock says none is alive
        old_umask = os.umask(0o177)  # the socket is created 0600
        try:
            self.listener = Listener(
                self.paths.address, family=self.paths.family, backlog=16, authkey=key
            )
        finally:
            os.umask(old_umask)

    def _signals(self) -> None:
        def stop(signum: int, _: Any) -> None:
            self.inbox.put(("signal", signum))

        for name in ("SIGTERM", "SIGINT"):
            sig = getattr(signal, name, None)
            if sig is not None:
                signal.signal(sig, stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _write_info(self) -> None:
        self.paths.write_info(
            {
                "pid": os.getpid(),
                "version": __version__,
                "protocol": msg.PROTOCOL_VERSION,
                "started_at": self.started_at,
                "address": self.paths.address,
                "queue": str(self.paths.queue),
                "devices": [d.name for d in self.devices],
                "workers": [w.pid for w in self.workers],
            }
        )
        assert self.store is not None
        import psutil

        pids: list[tuple[int, float]] = []
        for w in self.workers:
            pid = w.pid
            if pid is None:
                continue
            with contextlib.suppress(psutil.Error):
                pids.append((pid, psutil.Process(pid).create_time()))
        with contextlib.suppress(StoreError):
            self.store.set_workers(os.getpid(), pids)

    # -- threads that feed the inbox ----------------------------------------------------

    def _accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                conn = self.listener.accept()
            except (OSError, EOFError):
                if self.stop is not None or self.listener is None:
                    return
                continue
            except Exception as e:  # noqa: BLE001 - a wrong key (AuthenticationError) and the like
                log(f"refused a connection: {type(e).__name__}: {e}")
                continue
            threading.Thread(target=self._greet, args=(conn,), daemon=True).start()

    def _greet(self, conn: Connection) -> None:
        """The handshake, in plain tuples any version can read: a client of another
        protocol version gets one sentence and is let go."""
        try:
            if not _same_user(conn):
                conn.close()
                return
            if not conn.poll(HANDSHAKE_TIMEOUT_S):
                conn.close()
                return
            hello = conn.recv()
            ok = isinstance(hello, tuple) and len(hello) == 3 and hello[0] == msg.HELLO
            version = hello[1] if ok else None
            if version != msg.PROTOCOL_VERSION:
                conn.send(
                    (
                        msg.REFUSED,
                        msg.PROTOCOL_VERSION,
                        f"the running engine daemon (pid {os.getpid()}, sdtui {__version__}) speaks "
                        f"protocol {msg.PROTOCOL_VERSION}, this sdtui speaks {version}: stop it "
                        "with `sdtui daemon stop` (its queue is kept) and run sdtui again",
                    )
                )
                conn.close()
                return
            conn.send(
                (msg.WELCOME, msg.PROTOCOL_VERSION, {"pid": os.getpid(), "version": __version__})
            )
        except Exception:  # noqa: BLE001 - a client that went away mid-handshake
            with contextlib.suppress(OSError):
                conn.close()
            return
        info = hello[2] if isinstance(hello[2], dict) else {}
        session = ClientSession(conn, info, next(self._numbers), self.inbox)
        self.inbox.put(("attach", session))

    def _watch_worker(self, w: WorkerHandle, conn: Connection, generation: int) -> None:
        while True:
            try:
                event = conn.recv()
            except (EOFError, OSError, ValueError):
                self.inbox.put(("worker_exit", w, generation))
                return
            self.inbox.put(("worker", w, generation, event))

    # -- the main loop ------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            try:
                item = self.inbox.get(timeout=1.0)
            except queue.Empty:
                item = None
            if item is not None:
                try:
                    self._handle(item)
                except Exception as e:  # noqa: BLE001 - a bug here must not take the queue down
                    import traceback

                    log("error handling " + repr(item[0]) + ":\n" + traceback.format_exc())
                    self.broadcast(
                        msg.Log(
                            "error",
                            f"the engine daemon hit an error ({type(e).__name__}: {e}); see the engine log",
                        )
                    )
            if self.stop is not None and self._stopped():
                return
            self._dispatch()
            if self._idle_expired():
                self._begin_stop("idle", cancel=False)

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "attach":
            self._attach(item[1])
        elif kind == "gone":
            self._detach(item[1], item[2])
        elif kind == "command":
            self._command(item[1], item[2])
        elif kind == "worker":
            _, w, generation, event = item
            if generation == w.generation:
                self._worker_event(w, event)
        elif kind == "worker_exit":
            _, w, generation = item
            if generation == w.generation:
                self._worker_exit(w)
        elif kind == "signal":
            self._begin_stop(f"signal {item[1]}", cancel=False)

    # -- clients --------------------------------------------------------------------------

    def _attach(self, session: ClientSession) -> None:
        if self.stop is not None:
            session.start()
            session.send(msg.DaemonStopping(self.stop[0]))
            session.close()
            return
        self.sessions.append(session)
        self.attached_once = True
        session.start()
        session.send(self.state(None))
        now = time.monotonic()
        for note, until in self.notes:
            if now < until:
                session.send(msg.Log("warning", note))
        log(f"{session.name} attached ({len(self.sessions)} client(s))")

    def _detach(self, session: ClientSession, why: str) -> None:
        if session in self.sessions:
            self.sessions.remove(session)
            log(f"{session.name} {why} ({len(self.sessions)} client(s) left)")
        session.close()
        if not self.sessions:
            self.idle_since = time.monotonic()

    def broadcast(self, event: Any) -> None:
        for s in list(self.sessions):
            s.send(event)

    def _command(self, session: ClientSession, cmd: Any) -> None:
        if isinstance(cmd, msg.Submit):
            self._submit(session, cmd)
        elif isinstance(cmd, msg.Cancel):
            self._cancel(cmd.job_id)
        elif isinstance(cmd, msg.Skip):
            for w in self.workers:
                if w.job_id is not None and cmd.job_id in (None, w.job_id):
                    w.send(msg.Skip(w.job_id))
        elif isinstance(cmd, msg.LoadModel):
            self.model_choice = cmd.model
            for w in self.workers:
                if w.alive:
                    w.send(cmd)
        elif isinstance(cmd, msg.SetMemoryMode):
            if cmd.mode in MEMORY_MODES:
                self.memory_mode = cmd.mode
                for w in self.workers:
                    if w.alive:
                        w.send(cmd)
        elif isinstance(cmd, msg.RestartWorkers):
            self._restart_workers(session.name)
        elif isinstance(cmd, msg.StopDaemon):
            self._begin_stop(f"asked by {session.name}", cancel=cmd.cancel_jobs)
        elif isinstance(cmd, msg.QueryState):
            session.send(self.state(cmd.token))

    def _submit(self, session: ClientSession, cmd: msg.Submit) -> None:
        assert self.store is not None
        if self.stop is not None:
            session.send(msg.Refused(cmd.token, f"the engine daemon is stopping ({self.stop[0]})"))
            return
        try:
            params: GenerationParams | UpscaleParams | XYZParams
            if isinstance(cmd.params, XYZParams):
                from sdtui.xyz import prepare_xyz  # PIL, no torch: only for a plot

                params = prepare_xyz(cmd.params)  # checked, seeds fixed: a restart remakes it
            else:
                params = cmd.params.validated()
            if isinstance(params, GenerationParams):
                params = params.with_seeds()  # a restart must make the same images
            folders = {k: str(v) for k, v in cmd.folders.items() if k in FOLDER_KEYS and v}
            job = self.store.add_job(cmd.kind, params, folders, session.name)
        except ParamError as e:
            session.send(msg.Refused(cmd.token, e.message))
            return
        except StoreError as e:
            log(e.message)
            session.send(msg.Refused(cmd.token, e.message))
            return
        except UserError as e:  # an X/Y/Z axis that cannot be plotted
            session.send(msg.Refused(cmd.token, e.message))
            return
        self.jobs[job.id] = job
        info = self._job_info(job)
        session.send(msg.Submitted(cmd.token, info))
        self.broadcast(msg.JobQueued(info))
        log(f"job #{job.id} queued by {session.name}: {job.summary}")

    def _cancel(self, job_id: int | None) -> None:
        for w in self.workers:
            if w.job_id is not None and job_id in (None, w.job_id):
                w.send(msg.Cancel(w.job_id))
        if job_id is None:
            return
        job = self.jobs.get(job_id)
        if job is not None and job.state == "queued":
            self._finish(job_id, "cancelled")
            self.broadcast(msg.JobDone(job_id, (), 0.0, cancelled=True))

    def state(self, token: int | None) -> msg.DaemonState:
        recent: tuple[msg.JobInfo, ...] = ()
        if self.store is not None:
            with contextlib.suppress(StoreError):
                recent = tuple(self._job_info(j) for j in self.store.recent_jobs(RECENT_JOBS))
        return msg.DaemonState(
            token=token,
            pid=os.getpid(),
            version=__version__,
            started_at=self.started_at,
            address=self.paths.address,
            queue_path=str(self.paths.queue),
            idle_minutes=self.options.idle_minutes,
            workers=tuple(w.info() for w in self.workers),
            jobs=tuple(self._job_info(j) for j in self.jobs.values()),
            recent=recent,
            clients=tuple(s.name for s in self.sessions),
        )

    def _job_info(self, job: JobRecord) -> msg.JobInfo:
        step, steps, images = self.progress.get(job.id, (0, 0, 0))
        worker = next((w.index for w in self.workers if w.job_id == job.id), None)
        if not images and self.store is not None and job.state != "queued":
            with contextlib.suppress(StoreError):
                images = len([i for i in self.store.images(job.id) if i >= 0])
        return msg.JobInfo(
            job.id,
            job.kind,
            job.state,
            job.summary,
            job.images_total,
            job.submitted_by,
            job.submitted_at,
            job.attempts,
            images,
            step,
            steps,
            worker,
            job.message,
        )

    # -- jobs -----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Give queued jobs to free workers, oldest job first; a worker that has the job's
        model loaded is preferred, then one that is ready."""
        if self.stop is not None:
            return
        for job in list(self.jobs.values()):
            if job.state != "queued":
                continue
            free = [w for w in self.workers if w.alive and w.job_id is None]
            if not free:
                return
            free.sort(key=lambda w: (not _has_model(w, job), w.state != "ready", w.index))
            self._run(free[0], job)

    def _run(self, w: WorkerHandle, job: JobRecord) -> None:
        assert self.store is not None
        # A job accepted before the disk filled still runs: its row stays "queued" on disk
        # (a restart would run it again, skipping the images it recorded), nothing is lost.
        done: dict[int, str] = {}
        try:
            done = self.store.images(job.id)
            self.store.mark_running(job.id)
        except StoreError as e:
            log(e.message)
            self.broadcast(msg.Log("warning", f"{e.message} (job #{job.id} runs anyway)", job.id))
        job = dataclasses.replace(job, state="running", attempts=job.attempts + 1)
        self.jobs[job.id] = job
        self.progress[job.id] = (0, 0, len([i for i in done if i >= 0]))
        w.job_id = job.id
        settings = self._job_settings(job, w)
        if isinstance(job.params, GenerationParams):  # the store reads params by job.kind
            w.send(msg.SubmitGenerate(job.id, job.params, settings, done))
        elif isinstance(job.params, XYZParams):
            w.send(msg.SubmitXYZ(job.id, job.params, settings, done))
        else:
            w.send(msg.SubmitUpscale(job.id, job.params, settings, done))
        if done:
            self.broadcast(
                msg.Log(
                    "info", f"job #{job.id} resumes: {len(done)} image(s) were saved before", job.id
                )
            )

    def _job_settings(self, job: JobRecord, w: WorkerHandle) -> Settings:
        folders: dict[str, Any] = {k: Path(v) for k, v in job.folders.items() if k in FOLDER_KEYS}
        return dataclasses.replace(self.settings, device=w.device.engine_device, **folders)

    def _finish(self, job_id: int, state: msg.JobState, message: str | None = None) -> None:
        assert self.store is not None
        self.jobs.pop(job_id, None)
        self.progress.pop(job_id, None)
        try:
            self.store.finish(job_id, state, message)
        except StoreError as e:
            log(e.message)
            self.broadcast(msg.Log("error", e.message, job_id))
        if not self.jobs:
            self.idle_since = time.monotonic()

    def _worker_event(self, w: WorkerHandle, e: Any) -> None:
        if isinstance(e, msg.EngineStatus):
            w.state = e.state
            w.model = e.model or w.model
            if e.device:  # the worker sees its one card as "cuda": name it as the user does
                e = dataclasses.replace(e, device=w.device.name)
        elif isinstance(e, msg.ModelLoaded):
            w.model, w.model_path = e.name, e.path
        elif isinstance(e, msg.JobStarted):
            _, _, images = self.progress.get(e.job_id, (0, 0, 0))
            self.progress[e.job_id] = (0, e.steps_total, images)
        elif isinstance(e, msg.Progress):
            _, _, images = self.progress.get(e.job_id, (0, 0, 0))
            self.progress[e.job_id] = (e.step, e.steps, images)
        elif isinstance(e, msg.ImageSaved) and not e.is_grid:
            step, steps, images = self.progress.get(e.job_id, (0, 0, 0))
            self.progress[e.job_id] = (step, steps, images + 1)
        elif isinstance(e, msg.JobDone | msg.JobFailed):
            if w.job_id == e.job_id:
                w.job_id = None
            if isinstance(e, msg.JobFailed):
                self._finish(e.job_id, "failed", e.message)
            else:
                self._finish(e.job_id, "cancelled" if e.cancelled else "done")
        self.broadcast(e)

    def _worker_exit(self, w: WorkerHandle) -> None:
        code = w.process.exitcode if w.process is not None else None
        if w.process is not None:
            w.process.join(1)
            if code is None:
                code = w.process.exitcode
        w.conn = None
        if w.stopping:
            return
        # a crash: a driver fault, the OOM killer, kill -9
        w.state = "crashed"
        detail = f"the engine worker on {w.device.name} (pid {w.pid}) exited unexpectedly (exit code {code})"
        log(detail)
        job_id, w.job_id = w.job_id, None
        if job_id is not None and job_id in self.jobs:
            job = self.jobs[job_id]
            if job.attempts >= MAX_RUNS:
                text = (
                    f"{detail} while running this job, {job.attempts} times: it is not tried "
                    "again. See engine.log; a smaller size or batch may run"
                )
                self._finish(job_id, "failed", text)
                self.broadcast(msg.JobFailed(job_id, text))
            else:
                with contextlib.suppress(StoreError):
                    assert self.store is not None
                    self.store.requeue(job_id)
                self.jobs[job_id] = dataclasses.replace(job, state="queued")
                self.broadcast(
                    msg.Log(
                        "warning",
                        f"job #{job_id} was interrupted by the crash: it resumes at its next image",
                        job_id,
                    )
                )
        now = time.monotonic()
        w.crashes.append(now)
        while w.crashes and now - w.crashes[0] > CRASH_WINDOW_S:
            w.crashes.popleft()
        again = len(w.crashes) < CRASHES_IN_WINDOW
        if again:
            self.broadcast(msg.Log("warning", f"{detail}: starting a new one"))
        else:
            self.broadcast(
                msg.EngineStatus(
                    "crashed",
                    f"{detail}, {len(w.crashes)} times in a minute, so it is not restarted: "
                    "see the engine log",
                    w.device.name,
                    pid=w.pid,
                    worker=w.index,
                )
            )
        if again and self.stop is None:
            self._start_worker(w)
            self._write_info()

    def _start_worker(self, w: WorkerHandle) -> None:
        from sdtui.ipc.worker_entry import run_worker

        w.generation += 1
        w.stopping = False
        w.state, w.model, w.model_path, w.job_id = "starting", None, None, None
        parent, child = self._ctx.Pipe(duplex=True)
        options = msg.EngineOptions(
            demo=self.options.demo,
            preload=self.options.preload,
            preload_model=self.model_choice,
            fault_injection=self.options.fault_injection,
            worker=w.index,
            visible_devices=w.device.visible,
            store_path=str(self.paths.queue),
        )
        settings = dataclasses.replace(
            self.settings, device=w.device.engine_device, memory_mode=self.memory_mode
        )
        w.process = self._ctx.Process(
            target=run_worker, args=(child, settings, options), name=f"sdtui-worker-{w.index}"
        )
        w.process.start()
        child.close()  # the worker holds the only other end: its death is EOF here, ours there
        w.conn = parent
        threading.Thread(
            target=self._watch_worker,
            args=(w, parent, w.generation),
            name=f"worker-{w.index}",
            daemon=True,
        ).start()
        log(f"worker {w.index} on {w.device.name}: pid {w.pid}")

    def _stop_worker(self, w: WorkerHandle, *, timeout: float = STOP_WAIT_S) -> None:
        """Stop one worker; a job it was running goes back to the queue (resumes later).
        What the old process still says (the job ending as cancelled) is not heard."""
        w.stopping = True
        w.generation += 1
        if w.job_id is not None:
            job_id, w.job_id = w.job_id, None
            self._requeue(job_id)
        w.send(msg.Shutdown())
        if w.process is not None:
            w.process.join(timeout)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(5)
        w.state = "stopped"

    def _requeue(self, job_id: int) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            return
        with contextlib.suppress(StoreError):
            assert self.store is not None
            self.store.requeue(job_id, count_attempt=False)
        self.jobs[job_id] = dataclasses.replace(
            job, state="queued", attempts=max(0, job.attempts - 1)
        )

    def _restart_workers(self, who: str) -> None:
        log(f"restarting the workers, asked by {who}")
        for w in self.workers:
            self._stop_worker(w, timeout=3.0)
            w.crashes.clear()
            self._start_worker(w)
        self._write_info()
        pids = ", ".join(str(w.pid) for w in self.workers)
        self.broadcast(msg.Log("warning", f"engine restarted (pid {pids}); the queue is kept"))

    # -- stopping -------------------------------------------------------------------------

    def _idle_expired(self) -> bool:
        if self.stop is not None or self.sessions or self.jobs:
            return False
        idle = time.monotonic() - self.idle_since
        if self.options.private:  # ends with its client, or if that never came
            return self.attached_once or idle >= PRIVATE_GRACE_S
        minutes = self.options.idle_minutes
        return minutes > 0 and idle >= minutes * 60

    def _begin_stop(self, why: str, *, cancel: bool) -> None:
        if self.stop is not None:
            return
        self.stop = (why, cancel)
        log(f"stopping: {why}{'; cancelling every job' if cancel else ''}")
        if cancel:
            for job_id, job in list(self.jobs.items()):
                if job.state == "queued":
                    self._finish(job_id, "cancelled")
                    self.broadcast(msg.JobDone(job_id, (), 0.0, cancelled=True))
            self._cancel(None)  # running jobs end at their next step, images kept
            self.stop_deadline = time.monotonic() + STOP_WAIT_S
        else:
            self.stop_deadline = time.monotonic()

    def _stopped(self) -> bool:
        """While stopping with --now, running jobs get a moment to end as cancelled."""
        busy = any(w.job_id is not None and w.alive for w in self.workers)
        return not busy or time.monotonic() >= self.stop_deadline

    def _shutdown(self) -> None:
        why = self.stop[0] if self.stop else "stopped"
        self.broadcast(msg.DaemonStopping(why))
        listener, self.listener = self.listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()
        for w in self.workers:
            self._stop_worker(w)
        if self.store is not None:
            with contextlib.suppress(StoreError):
                self.store.forget_workers([w.pid for w in self.workers if w.pid])
        for s in list(self.sessions):
            s.close()  # after what is waiting in its outbox, DaemonStopping included
        deadline = time.monotonic() + 1.0
        for s in list(self.sessions):
            s.flushed.wait(max(0.0, deadline - time.monotonic()))
        self.paths.remove_socket()
        with contextlib.suppress(OSError):
            self.paths.info.unlink()
        if self.store is not None:
            self.store.close()
        log(f"stopped ({why})")


def _has_model(w: WorkerHandle, job: JobRecord) -> bool:
    want = getattr(job.params, "model", None)
    if not want or w.model is None:
        return False
    if want.lower() in ("demo", "sdtui-demo"):
        return w.model == "sdtui-demo"
    return want in (w.model, w.model_path)


def _same_user(conn: Connection) -> bool:
    """Linux tells who is on the other end of a Unix socket; refuse anyone but us (the
    authkey already did, this is a second lock on the same door)."""
    import socket
    import struct

    so_peercred = getattr(socket, "SO_PEERCRED", None)
    if so_peercred is None or not hasattr(os, "getuid"):
        return True
    try:
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, so_peercred, struct.calcsize("3i"))
        finally:
            sock.close()
    except OSError:
        return True
    uid: int = struct.unpack("3i", creds)[1]
    return uid == os.getuid()


def _lock(f: Any) -> None:
    """An exclusive lock that the kernel drops when the process dies, however it dies."""
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        return
    import fcntl

    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


# -- `python -m sdtui.ipc.daemon` ----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sdtui-daemon", description="The sdtui engine daemon.")
    ap.add_argument("--settings", required=True, help="the settings, as JSON")
    ap.add_argument("--folder", required=True, help="the daemon's runtime folder")
    ap.add_argument("--queue", required=True, help="the job queue file")
    ap.add_argument("--preload", default=None, help="the model to load at start")
    ap.add_argument("--no-preload", action="store_true")
    ap.add_argument("--demo", action="store_true")
    ap.add_argument("--faults", default=None)
    ap.add_argument("--private", action="store_true")
    ap.add_argument("--detach", action="store_true", help="fork into the background")
    ap.add_argument(
        "--ready-fd", type=int, default=None, help="write 'ok', 'running PID' or 'error: ...' here"
    )
    args = ap.parse_args(argv)

    if args.detach and hasattr(os, "fork"):
        # the starter waits for this first process; the daemon is its child, which init
        # adopts: nobody is left to reap, and nothing ties the daemon to a terminal
        if os.fork() > 0:
            os._exit(0)
        os.setsid()
    ready_fd = args.ready_fd

    def ready(text: str) -> None:
        nonlocal ready_fd
        if ready_fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(ready_fd, (text + "\n").encode())
            os.close(ready_fd)
        ready_fd = None

    try:
        settings = settings_from_dict(json.loads(args.settings), "the daemon's --settings")
    except (UserError, ValueError) as e:
        ready(f"error: {getattr(e, 'message', e)}")
        return 2
    paths = DaemonPaths(Path(args.folder), Path(args.queue))
    options = DaemonOptions(
        idle_minutes=settings.daemon_idle_minutes,
        preload=not args.no_preload,
        preload_model=args.preload,
        demo=args.demo,
        fault_injection=args.faults,
        private=args.private,
    )
    return Daemon(settings, paths, options).serve(ready)


def daemon_command(
    settings: Settings,
    paths: DaemonPaths,
    *,
    preload: str | None,
    demo: bool = False,
    no_preload: bool = False,
    private: bool = False,
    faults: str | None = None,
) -> list[str]:
    """The command line that starts a daemon with these settings."""
    cmd = [
        sys.executable,
        "-m",
        "sdtui.ipc.daemon",
        "--settings",
        json.dumps(settings_to_dict(settings)),
        "--folder",
        str(paths.folder),
        "--queue",
        str(paths.queue),
    ]
    if preload:
        cmd += ["--preload", preload]
    if no_preload:
        cmd.append("--no-preload")
    if demo:
        cmd.append("--demo")
    if private:
        cmd.append("--private")
    if faults:
        cmd += ["--faults", faults]
    return cmd


if __name__ == "__main__":
    sys.exit(main())
