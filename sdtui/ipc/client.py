"""A client of the engine daemon: what the TUI and the CLI hold.

``DaemonClient.attach()`` connects to the user's daemon, starting one when none runs (two
clients starting at once: one daemon wins the lock, both attach to it). It has the shape the
app expects of an engine (``submit``, ``cancel``, ``poll``, ``pending``, ``state``, ...):
events arrive on a reader thread and wait in a queue until ``poll`` takes them, so the UI
thread never blocks on the socket except for the short round trip of a submit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import itertools
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any, cast

from sdtui.config import Settings, state_dir
from sdtui.errors import UserError
from sdtui.ipc import protocol as msg
from sdtui.ipc.paths import WINDOWS, DaemonPaths, check_owned, wake_readers
from sdtui.params import GenerationParams, MemoryMode, UpscaleParams, XYZParams

ENGINE_LOG = "engine.log"
LOG_ROTATE_BYTES = 20 * 2**20
START_TIMEOUT_S = 30.0
CONNECT_RETRY_S = 10.0  # after a start: the winner of a start race may not listen yet
REPLY_TIMEOUT_S = 15.0
ATTACH_TOKEN = 0  # the reply slot of the state a daemon sends to a client that attaches
# paths in the environment that a daemon started elsewhere (cwd "/") must read the same way
_PATH_VARS = (
    "SDTUI_HOME",
    "SDTUI_CACHE_DIR",
    "SDTUI_STATE_DIR",
    "SDTUI_CONFIG",
    "SDTUI_RUNTIME_DIR",
    "SDTUI_MODELS_DIR",
    "SDTUI_OUTPUTS_DIR",
    "SDTUI_A1111_DIR",
    "SDTUI_EMBEDDINGS_DIR",
    "TORCHINDUCTOR_CACHE_DIR",
)


class DaemonNotRunning(UserError):
    """No daemon answers at this address (none started, or a dead one's socket)."""


class OtherVersion(UserError):
    """A daemon of another sdtui version runs here: `sdtui daemon stop` ends it by its pid."""


def engine_log_path() -> Path:
    return state_dir() / ENGINE_LOG


def client_info(who: str) -> dict[str, Any]:
    """Who is attaching: shown in the job log and `sdtui queue` ("submitted by")."""
    info: dict[str, Any] = {"who": who, "pid": os.getpid()}
    with contextlib.suppress(Exception):
        info["user"] = getpass.getuser()
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError, AttributeError):
            if os.isatty(fd):
                info["tty"] = os.ttyname(fd)
                break
    ssh = os.environ.get("SSH_CONNECTION", "").split()
    if ssh:
        info["from"] = ssh[0]
    return info


# -- connecting -------------------------------------------------------------------------------


def connect(paths: DaemonPaths, info: dict[str, Any]) -> tuple[Connection, dict[str, Any]]:
    """Connect and shake hands; ``DaemonNotRunning`` when nobody answers."""
    address = paths.address
    if not WINDOWS:
        try:
            check_owned(address)
        except FileNotFoundError:
            raise DaemonNotRunning(
                f"no engine daemon is running (no socket at {address})"
            ) from None
    try:
        key = paths.read_key()
    except FileNotFoundError:
        key = None
    if key is None:
        raise DaemonNotRunning(f"no engine daemon is running (no key in {paths.folder})")
    try:
        conn = Client(address, family=paths.family, authkey=key)
    except (ConnectionRefusedError, FileNotFoundError):
        raise DaemonNotRunning(
            f"no engine daemon is running (a stale socket at {address})"
        ) from None
    except (OSError, EOFError) as e:
        raise DaemonNotRunning(f"the engine daemon at {address} does not answer ({e})") from None
    except Exception as e:  # noqa: BLE001 - multiprocessing.AuthenticationError
        raise UserError(
            f"the engine daemon at {address} refused this client's key ({type(e).__name__}): "
            "stop it with `sdtui daemon stop --now` or remove that folder, then start sdtui again"
        ) from None
    try:
        conn.send(msg.hello(info))
        if not conn.poll(REPLY_TIMEOUT_S):
            raise UserError(
                f"the engine daemon at {address} did not answer in {REPLY_TIMEOUT_S:.0f} s: "
                "see the engine log, or stop it with `sdtui daemon stop --now`"
            )
        reply = conn.recv()
    except (OSError, EOFError):
        conn.close()
        raise DaemonNotRunning(
            f"the engine daemon at {address} went away while attaching"
        ) from None
    kind = reply[0] if isinstance(reply, tuple) and reply else None
    if kind == msg.REFUSED:
        conn.close()
        raise OtherVersion(str(reply[2]))
    if kind != msg.WELCOME or reply[1] != msg.PROTOCOL_VERSION:
        conn.close()
        raise OtherVersion(
            f"the engine daemon at {address} speaks another protocol than this sdtui "
            f"({msg.PROTOCOL_VERSION}): stop it with `sdtui daemon stop` and start sdtui again"
        )
    return conn, dict(reply[2])


def _absolute_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in _PATH_VARS:
        if env.get(var):
            env[var] = str(Path(env[var]).expanduser().absolute())
    return env


def _absolute(settings: Settings) -> Settings:
    changes: dict[str, Any] = {}
    for f in ("a1111_dir", "models_dir", "outputs_dir", "embeddings_dir"):
        v = getattr(settings, f)
        if v is not None:
            changes[f] = Path(v).expanduser().absolute()
    return dataclasses.replace(settings, **changes)


def _rotate(log: Path) -> None:
    with contextlib.suppress(OSError):
        if log.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(log, log.with_name(log.name + ".1"))


def start_daemon(
    settings: Settings,
    paths: DaemonPaths,
    *,
    preload: str | None = None,
    demo: bool = False,
    no_preload: bool = False,
    private: bool = False,
    faults: str | None = None,
) -> str:
    """Start a daemon in the background (its own session, output to the engine log) and wait
    until it accepts clients. Returns "ok", or "running" when another one won the race."""
    from sdtui.ipc.daemon import daemon_command

    paths.ensure_folder()
    log = engine_log_path()
    log.parent.mkdir(parents=True, exist_ok=True)
    _rotate(log)
    cmd = daemon_command(
        _absolute(settings),
        paths,
        preload=preload,
        demo=demo,
        no_preload=no_preload,
        private=private,
        faults=faults,
    )
    if WINDOWS:  # pragma: no cover - no fork: a detached process, and the socket tells readiness
        flags = getattr(subprocess, "DETACHED_PROCESS", 0) | getattr(
            subprocess, "CREATE_NEW_PROCESS_GROUP", 0
        )
        with open(log, "ab") as out:
            subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                creationflags=flags,
                env=_absolute_env(),
            )
        return "ok"
    r, w = os.pipe()
    try:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [*cmd, "--detach", "--ready-fd", str(w)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                pass_fds=(w,),
                start_new_session=True,
                cwd="/",
                env=_absolute_env(),
            )
        os.close(w)
        w = -1
        answer = _read_line(r, START_TIMEOUT_S)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)  # the first process forks the daemon and leaves at once
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    if answer == "ok":
        return "ok"
    if answer.startswith("running"):
        return "running"
    if answer.startswith("error:"):
        raise UserError(f"the engine daemon did not start: {answer.removeprefix('error:').strip()}")
    raise UserError(
        f"the engine daemon did not start in {START_TIMEOUT_S:.0f} s{': ' + answer if answer else ''}; "
        f"see {log}"
    )


def _read_line(fd: int, timeout: float) -> str:
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break  # it exited without a word: the log says why
        data += chunk
    return data.decode(errors="replace").strip()


# -- the client -------------------------------------------------------------------------------


class DaemonClient:
    """An attached client, with the engine shape the app and the CLI use."""

    def __init__(
        self,
        settings: Settings,
        *,
        paths: DaemonPaths | None = None,
        who: str = "tui",
        private: bool = False,
    ) -> None:
        self.settings = settings
        self.paths = paths or DaemonPaths.default()
        self.who = who
        self.private = private
        self.conn: Connection | None = None
        self._reader: threading.Thread | None = None  # the connection's reader thread
        self.daemon: msg.DaemonState | None = None
        self.welcome: dict[str, Any] = {}
        self.pending: dict[int, msg.JobInfo] = {}  # queued and running, in queue order
        self.running: set[int] = set()
        self.workers: dict[int, msg.EngineStatus] = {}
        self.state: msg.EngineState = "starting"
        self.started_daemon = False  # this client started the daemon it is attached to
        self._events: queue.Queue[Any] = queue.Queue()
        self._replies: dict[int, _Reply] = {}
        self._reply_cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._tokens = itertools.count(1)
        self._gone_said = False
        self.folders = {
            "a1111_dir": str(_abs(settings.a1111_dir)) if settings.a1111_dir else "",
            "models_dir": str(_abs(settings.models)),
            "outputs_dir": str(_abs(settings.outputs)),
            "embeddings_dir": str(_abs(settings.embeddings)),
        }

    # -- attaching --------------------------------------------------------------------------

    def attach(
        self,
        *,
        start: bool = True,
        preload: str | None = None,
        demo: bool = False,
        no_preload: bool = False,
        faults: str | None = None,
    ) -> DaemonClient:
        """Connect to the daemon, starting one first when none runs (``start``)."""
        try:
            self._connect()
            return self
        except DaemonNotRunning:
            if not start:
                raise
        result = start_daemon(
            self.settings,
            self.paths,
            preload=preload,
            demo=demo,
            no_preload=no_preload,
            private=self.private,
            faults=faults,
        )
        self.started_daemon = result == "ok"
        deadline = time.monotonic() + CONNECT_RETRY_S
        while True:
            try:
                self._connect()
                return self
            except DaemonNotRunning:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _connect(self) -> None:
        conn, self.welcome = connect(self.paths, client_info(self.who))
        self.conn = conn
        self._gone_said = False
        self._events = queue.Queue()
        self._reader = threading.Thread(
            target=self._read, args=(conn,), name="daemon-reader", daemon=True
        )
        self._reader.start()
        # the daemon's first word is its state, the queue as it is now (the app hears it too)
        first = self._reply(ATTACH_TOKEN)
        if isinstance(first, msg.DaemonState):
            self._take_state(first)

    @property
    def connected(self) -> bool:
        return self.conn is not None

    def detach(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            # the reader thread wakes with EOF and ends before the descriptor is closed (and
            # its number reused by the next connection, e.g. F12's re-attach)
            wake_readers(conn)
            reader = self._reader
            if reader is not None and reader is not threading.current_thread():
                reader.join(timeout=2)
            with contextlib.suppress(OSError):
                conn.close()

    # -- the engine shape (what the app and CLI call) ---------------------------------------

    @property
    def pid(self) -> int | None:
        return self.daemon.pid if self.daemon is not None and self.connected else None

    @property
    def worker_pids(self) -> tuple[int, ...]:
        return tuple(w.pid for w in self.workers.values() if w.pid)

    @property
    def running_job(self) -> int | None:
        return min(self.running) if self.running else None

    @property
    def queued(self) -> list[int]:
        return [j for j in self.pending if j not in self.running]

    def submit(self, params: GenerationParams) -> int:
        params = params.validated()  # ParamError here, in the caller's words
        if params.model is None and self.settings.default_model:
            params = params.replace(model=self.settings.default_model)
        return self._submit("generate", params)

    def submit_upscale(self, params: UpscaleParams) -> int:
        params = params.validated()
        image = Path(params.image).expanduser()
        return self._submit("upscale", params.replace(image=str(image.absolute())))

    def submit_xyz(self, params: XYZParams) -> int:
        """Queue an X/Y/Z plot. Checked here first (a ParamError for the base params, an
        XYZError for an axis: one sentence in the caller's words), seeds fixed."""
        from sdtui.xyz import prepare_xyz  # PIL, no torch

        if params.base.model is None and self.settings.default_model:
            params = params.replace(base=params.base.replace(model=self.settings.default_model))
        return self._submit("xyz", prepare_xyz(params))

    def _submit(
        self, kind: msg.JobKind, params: GenerationParams | UpscaleParams | XYZParams
    ) -> int:
        token = next(self._tokens)
        self._send(msg.Submit(token, kind, params, self.folders))
        reply = self._reply(token)
        if isinstance(reply, msg.Refused):
            raise UserError(reply.message)
        if not isinstance(reply, msg.Submitted):
            raise _unexpected(reply, "a job")
        self.pending[reply.job.job_id] = reply.job
        return reply.job.job_id

    def cancel(self, job_id: int | None = None) -> None:
        """Interrupt the running job (None: every running one) or remove a queued one."""
        self._send(msg.Cancel(job_id))

    def skip(self) -> None:
        self._send(msg.Skip())

    def load_model(self, model: str) -> None:
        self._send(msg.LoadModel(model))

    def set_memory_mode(self, mode: str) -> None:
        from sdtui.config import MEMORY_MODES

        if mode not in MEMORY_MODES:
            raise ValueError(
                f"memory mode {mode!r} is unknown: use one of {', '.join(MEMORY_MODES)}"
            )
        self._send(msg.SetMemoryMode(cast(MemoryMode, mode)))

    def restart(self) -> list[int]:
        """New engine workers (the daemon's queue is kept); when the daemon itself is gone,
        a new daemon, which resumes the queue from disk. Returns the jobs still to run."""
        if self.connected:
            self._send(msg.RestartWorkers())
            return list(self.pending)
        self.pending.clear()
        self.running.clear()
        self.workers.clear()
        self.attach(start=True)
        return list(self.pending)

    def query(self) -> msg.DaemonState:
        token = next(self._tokens)
        self._send(msg.QueryState(token))
        state = self._reply(token)
        if not isinstance(state, msg.DaemonState):
            raise _unexpected(state, "its state")
        self._take_state(state)
        return state

    def stop_daemon(self, *, cancel_jobs: bool = False, timeout: float = 60.0) -> bool:
        """Ask the daemon to stop and wait until its process is gone. True if it is."""
        pid = self.pid
        self._send(msg.StopDaemon(cancel_jobs))
        deadline = time.monotonic() + timeout
        while self.connected and time.monotonic() < deadline:
            self.poll(timeout=0.2)
        self.detach()
        return wait_gone(pid, max(1.0, deadline - time.monotonic()))

    # -- events -----------------------------------------------------------------------------

    def poll(self, timeout: float = 0.0) -> list[Any]:
        """Every event available now (waiting up to ``timeout`` for the first)."""
        events: list[Any] = []
        try:
            events.append(
                self._events.get(timeout=timeout) if timeout else self._events.get_nowait()
            )
            while True:
                events.append(self._events.get_nowait())
        except queue.Empty:
            pass
        out: list[Any] = []
        for e in events:
            out.extend(self._track(e))
        return out

    def events(self, timeout: float | None = None) -> Iterator[Any]:
        """Yield events until ``timeout`` seconds pass with none (None: forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            batch = self.poll(timeout=0.1)
            yield from batch
            if batch and timeout is not None:
                deadline = time.monotonic() + timeout
            if deadline is not None and time.monotonic() > deadline:
                return

    def wait_job(self, job_id: int, timeout: float = 600.0) -> tuple[Any, list[Any]]:
        """Block until the job ends; returns (final event, every event seen)."""
        seen: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.poll(timeout=0.2):
                seen.append(e)
                if isinstance(e, msg.JobDone | msg.JobFailed) and e.job_id == job_id:
                    return e, seen
                if isinstance(e, msg.EngineStatus) and e.state == "crashed" and not self.connected:
                    return e, seen
        raise TimeoutError(f"job {job_id} did not finish in {timeout:.0f} s")

    def _track(self, e: Any) -> list[Any]:
        """Keep the queue and the engine state current; returns what the caller sees for
        ``e`` (a lost connection becomes a "crashed" status, a worker's status the overall)."""
        if isinstance(e, _Gone):
            if e.conn is not self.conn:
                return []  # an old connection's reader, after a reattach
            self.conn = None
            self.running.clear()
            if self._gone_said:
                return []
            self._gone_said = True
            self.state = "crashed"
            pid = self.daemon.pid if self.daemon else "?"
            return [
                msg.EngineStatus(
                    "crashed",
                    f"the engine daemon (pid {pid}) stopped unexpectedly; {self.restart_hint()}",
                )
            ]
        if isinstance(e, msg.DaemonStopping):
            self._gone_said = True
            self.state = "stopped"
            return [e, msg.EngineStatus("stopped", f"the engine daemon stopped ({e.reason})")]
        if isinstance(e, msg.DaemonState):
            self._take_state(e)
        elif isinstance(e, msg.JobQueued):
            self.pending[e.job.job_id] = e.job
            self.pending = dict(sorted(self.pending.items()))
        elif isinstance(e, msg.JobStarted):
            self.running.add(e.job_id)
            if e.job_id in self.pending:
                self.pending[e.job_id] = dataclasses.replace(
                    self.pending[e.job_id], state="running"
                )
        elif isinstance(e, msg.JobDone | msg.JobFailed):
            self.pending.pop(e.job_id, None)
            self.running.discard(e.job_id)
        elif isinstance(e, msg.EngineStatus):
            self.workers[e.worker] = e
            self.state = overall_state([w.state for w in self.workers.values()])
            if len(self.workers) > 1:
                e = dataclasses.replace(e, state=self.state)
        return [e]

    def _take_state(self, state: msg.DaemonState) -> None:
        self.daemon = state
        self.pending = {j.job_id: j for j in state.jobs}
        self.running = {j.job_id for j in state.jobs if j.state == "running"}
        for w in state.workers:
            known = self.workers.get(w.index)
            self.workers[w.index] = msg.EngineStatus(
                w.state,
                known.detail if known else "",
                w.device,
                w.model,
                w.pid,
                w.index,
            )
        if self.workers:
            self.state = overall_state([w.state for w in self.workers.values()])

    # -- the socket -------------------------------------------------------------------------

    def _send(self, command: Any) -> None:
        conn = self.conn
        if conn is None:
            raise UserError(
                "the engine daemon is not running: press F12 (or run sdtui again) to start it; "
                "the queue is kept on disk"
            )
        with self._send_lock:
            try:
                conn.send(command)
            except (OSError, ValueError):
                raise UserError(f"the engine daemon went away; {self.restart_hint()}") from None

    def restart_hint(self) -> str:
        """What to do after the daemon died, in the words of this kind of client."""
        if self.private:
            return (
                f"its jobs are lost with it (--no-daemon): see the engine log ({engine_log_path()})"
            )
        if self.who == "tui":
            return "press F12 (or run sdtui again) to start it: the queue is kept on disk"
        return (
            "the job is kept in the queue on disk: `sdtui daemon start` resumes it, "
            "`sdtui queue` lists it"
        )

    def _reply(self, token: int) -> _Reply:
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        conn = self.conn
        with self._reply_cond:
            while token not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or conn is None or conn.closed:
                    restart = (
                        "F12 / `sdtui daemon stop`" if self.who == "tui" else "`sdtui daemon stop`"
                    )
                    raise UserError(
                        "the engine daemon did not answer: see the engine log "
                        f"({engine_log_path()}), or restart it with {restart}"
                    )
                self._reply_cond.wait(min(left, 0.2))
            return self._replies.pop(token)

    def _read(self, conn: Connection) -> None:
        while True:
            try:
                event = conn.recv()
            except (EOFError, OSError, ValueError):
                with contextlib.suppress(OSError):
                    conn.close()  # gone: a waiting submit hears it at once
                self._events.put(_Gone(conn))
                with self._reply_cond:
                    self._reply_cond.notify_all()
                return
            except Exception as e:  # noqa: BLE001 - something this version cannot unpickle
                self._events.put(msg.Log("error", f"an engine message could not be read ({e})"))
                continue
            token = getattr(event, "token", None)
            if isinstance(event, msg.Submitted | msg.Refused | msg.DaemonState):
                with self._reply_cond:
                    self._replies[ATTACH_TOKEN if token is None else token] = event
                    self._reply_cond.notify_all()
                if token is not None:
                    continue
            self._events.put(event)


@dataclasses.dataclass(frozen=True)
class _Gone:
    conn: Any


_Reply = msg.Submitted | msg.Refused | msg.DaemonState  # what answers a token


def _unexpected(reply: _Reply, asked: str) -> UserError:
    return UserError(
        f"the engine daemon answered {type(reply).__name__} when asked for {asked}: "
        "stop it with `sdtui daemon stop` and start sdtui again"
    )


def overall_state(states: list[msg.EngineState]) -> msg.EngineState:
    """One word for several workers: busy if any is, then loading, ready, starting."""
    for word in ("busy", "loading", "ready", "starting", "crashed"):
        if word in states:
            return word
    return "stopped"


def wait_gone(pid: int | None, timeout: float) -> bool:
    """Wait until process ``pid`` has ended (a zombie counts as ended: an init that is slow
    to reap the detached daemon is not the daemon still running)."""
    if pid is None:
        return True
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _abs(path: Path) -> Path:
    return Path(path).expanduser().absolute()


def running_daemon(paths: DaemonPaths | None = None, who: str = "status") -> DaemonClient | None:
    """A client attached to the running daemon, or None when none runs (starts nothing)."""
    from sdtui.config import load_settings

    try:
        settings = load_settings()
    except UserError:
        settings = Settings()
    client = DaemonClient(settings, paths=paths, who=who)
    try:
        return client.attach(start=False)
    except DaemonNotRunning:
        return None


if sys.platform == "win32":  # pragma: no cover
    select = None  # type: ignore[assignment]  # Windows' select takes sockets only
