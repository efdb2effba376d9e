"""The job queue on disk: one SQLite file (stdlib ``sqlite3``, WAL) in the state folder.

A job is written here before the daemon says it was accepted, so a daemon killed with
``kill -9``, a reboot or an OOM kill loses nothing: the next daemon finds the job ``queued``
or ``running`` and runs it. Each image is recorded by the process that saved it, right after
the file got its final name, so a job that restarts resumes at the next image and makes none
twice (same index, same seed).

Torch-free: the daemon, the engine workers, the CLI (``sdtui queue``) and the TUI's history
all read it. A file that is not a database, or that a newer sdtui wrote, is kept aside and a
new one started (``open_store`` says so in one sentence).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sdtui.errors import UserError
from sdtui.params import GenerationParams, UpscaleParams, XYZParams

SCHEMA_VERSION = 1
QUEUE_FILE = "queue.sqlite3"
JobKind = Literal["generate", "upscale", "xyz"]  # xyz: an X/Y/Z plot (XYZParams)
JobState = Literal["queued", "running", "done", "failed", "cancelled"]
JobParams = GenerationParams | UpscaleParams | XYZParams
ACTIVE: tuple[JobState, ...] = ("queued", "running")
FINISHED: tuple[JobState, ...] = ("done", "failed", "cancelled")
GRID_INDEX = -1  # the index a job's grid image is recorded under
# The folders a job reads and writes travel with it: any client can use its own.
FOLDER_KEYS = ("a1111_dir", "models_dir", "outputs_dir", "embeddings_dir")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    params TEXT NOT NULL,
    folders TEXT NOT NULL,
    summary TEXT NOT NULL,
    images_total INTEGER NOT NULL,
    submitted_by TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    message TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS images (
    job_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    path TEXT NOT NULL,
    seed INTEGER,
    saved_at REAL NOT NULL,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS workers (
    pid INTEGER PRIMARY KEY,
    create_time REAL NOT NULL,
    daemon_pid INTEGER NOT NULL
);
"""


class StoreError(UserError):
    """The queue file cannot be read or written (disk full, read-only, corrupt)."""


@dataclass(frozen=True)
class JobRecord:
    id: int
    kind: JobKind
    state: JobState
    params: JobParams
    folders: dict[str, str]
    summary: str
    images_total: int
    submitted_by: str
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    message: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


# -- params as JSON (never pickle: the file outlives the code that wrote it) ------------------


def params_to_json(params: JobParams) -> str:
    return json.dumps(dataclasses.asdict(params), sort_keys=True)


def params_from_json(kind: str, text: str) -> JobParams:
    data = json.loads(text)
    if kind == "xyz":
        if not isinstance(data, dict):
            raise ValueError("the X/Y/Z plot's parameters are not an object")
        return XYZParams.from_dict(data)
    cls: Any = GenerationParams if kind == "generate" else UpscaleParams
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"fields this sdtui does not know: {', '.join(unknown)}")
    return cls(**data)


def job_summary(kind: str, params: JobParams) -> str:
    """One line for queue listings and the job log (the first word is the kind of image:
    txt2img, img2img or extras)."""
    if isinstance(params, XYZParams):
        base = params.base
        axes = " x ".join(label for label, _ in params.axes if label != "Nothing") or "Nothing"
        prompt = " ".join(base.prompt.split())
        prompt = prompt if len(prompt) <= 24 else prompt[:23] + "…"
        return f'{base.mode} X/Y/Z plot {axes}: {base.width}x{base.height} {base.steps} steps "{prompt}"'
    if isinstance(params, UpscaleParams):
        size = (
            f"to {params.target_width}x{params.target_height}"
            if params.target_width and params.target_height
            else f"x{params.scale:g}"
        )
        return f"extras {Path(params.image).name} {params.upscaler} {size}"
    count = f" x{params.images_total}" if params.images_total > 1 else ""
    prompt = " ".join(params.prompt.split())
    prompt = prompt if len(prompt) <= 24 else prompt[:23] + "…"
    return f'{params.mode} {params.width}x{params.height}{count} {params.steps} steps "{prompt}"'


def images_total(params: JobParams) -> int:
    if isinstance(params, XYZParams):
        from sdtui.xyz import cell_count  # the grid's cells: PIL, no torch

        return cell_count(params)
    return params.images_total if isinstance(params, GenerationParams) else 1


# -- the store ----------------------------------------------------------------------------------


def _describe(e: sqlite3.Error, path: Path) -> str:
    text = str(e)
    if "disk is full" in text or "database or disk is full" in text:
        return (
            f"the job queue {path} cannot be written: the disk is full. Free some space "
            "in that folder, then submit again"
        )
    if "readonly" in text or "read-only" in text:
        return f"the job queue {path} is read-only: fix the permissions of {path.parent}"
    return f"the job queue {path} cannot be used ({text}): see `sdtui daemon status`"


class JobStore:
    """One connection to the queue file. Not shared between threads: each process (or
    thread) that writes opens its own; SQLite serialises the writers."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.conn = conn

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> JobStore:
        """Open (and create) the file; ``QueueFileProblem`` if it is corrupt or newer."""
        path = Path(path)
        if not create and not path.exists():
            raise FileNotFoundError(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(
                path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise StoreError(_describe(e, path)) from None
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise QueueFileProblem(
                    path,
                    f"it was written by a newer sdtui (queue format {version}, this one reads {SCHEMA_VERSION})",
                )
            ok = conn.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise QueueFileProblem(path, f"it is damaged ({ok})")
            if create:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
                if version < SCHEMA_VERSION:
                    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            with contextlib.suppress(OSError):
                os.chmod(path, 0o600)
        except sqlite3.DatabaseError as e:
            conn.close()
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise StoreError(_describe(e, path)) from None
            raise QueueFileProblem(path, f"it is not a job queue ({e})") from None
        except BaseException:
            conn.close()
            raise
        return cls(path, conn)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction; SQLite's own errors become a StoreError that names the file."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                # SQLite rolls back by itself on some errors (a full disk): only if still open
                if self.conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self.conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
            raise StoreError(_describe(e, self.path), detail=repr(e)) from None

    # -- jobs ------------------------------------------------------------------------------

    def add_job(
        self,
        kind: JobKind,
        params: JobParams,
        folders: dict[str, str],
        submitted_by: str,
    ) -> JobRecord:
        now = time.time()
        summary = job_summary(kind, params)
        total = images_total(params)
        with self._write() as c:
            cur = c.execute(
                "INSERT INTO jobs (kind, state, params, folders, summary, images_total, "
                "submitted_by, submitted_at) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)",
                (
                    kind,
                    params_to_json(params),
                    json.dumps(folders),
                    summary,
                    total,
                    submitted_by,
                    now,
                ),
            )
            job_id = int(cur.lastrowid or 0)
        return JobRecord(job_id, kind, "queued", params, folders, summary, total, submitted_by, now)

    def mark_running(self, job_id: int) -> None:
        with self._write() as c:
            c.execute(
                "UPDATE jobs SET state='running', started_at=?, attempts=attempts+1 WHERE id=?",
                (time.time(), job_id),
            )

    def requeue(self, job_id: int, *, count_attempt: bool = True) -> None:
        """Back to the queue (the daemon or its worker stopped during the job)."""
        with self._write() as c:
            c.execute(
                "UPDATE jobs SET state='queued', attempts=attempts-? WHERE id=?",
                (0 if count_attempt else 1, job_id),
            )

    def finish(self, job_id: int, state: JobState, message: str | None = None) -> None:
        with self._write() as c:
            c.execute(
                "UPDATE jobs SET state=?, finished_at=?, message=? WHERE id=?",
                (state, time.time(), message, job_id),
            )

    def recover(self) -> list[int]:
        """At daemon start: jobs a dead daemon left running go back to the queue."""
        with self._write() as c:
            rows = c.execute("SELECT id FROM jobs WHERE state='running' ORDER BY id").fetchall()
            c.execute("UPDATE jobs SET state='queued' WHERE state='running'")
        return [int(r[0]) for r in rows]

    def job(self, job_id: int) -> JobRecord | None:
        row = self._query("SELECT * FROM jobs WHERE id=?", (job_id,))
        return self._record(row[0]) if row else None

    def active_jobs(self) -> list[JobRecord]:
        rows = self._query("SELECT * FROM jobs WHERE state IN ('queued','running') ORDER BY id")
        return [r for r in (self._record(row) for row in rows) if r is not None]

    def recent_jobs(self, limit: int = 20) -> list[JobRecord]:
        rows = self._query(
            "SELECT * FROM jobs WHERE state IN ('done','failed','cancelled') "
            "ORDER BY finished_at DESC, id DESC LIMIT ?",
            (limit,),
        )
        return [r for r in (self._record(row) for row in rows) if r is not None]

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        try:
            cur = self.conn.execute(sql, args)
            cur.row_factory = sqlite3.Row  # type: ignore[assignment]
            return cur.fetchall()
        except sqlite3.Error as e:
            raise StoreError(_describe(e, self.path), detail=repr(e)) from None

    def _record(self, row: sqlite3.Row) -> JobRecord | None:
        try:
            params = params_from_json(row["kind"], row["params"])
        except (ValueError, TypeError) as e:
            # a job this version cannot read: it is failed, not run with guessed values
            params = UpscaleParams(image="?") if row["kind"] == "upscale" else GenerationParams()
            if row["state"] in ACTIVE:
                self.finish(row["id"], "failed", f"its parameters cannot be read ({e})")
            return None
        return JobRecord(
            id=row["id"],
            kind=row["kind"],
            state=row["state"],
            params=params,
            folders=json.loads(row["folders"] or "{}"),
            summary=row["summary"],
            images_total=row["images_total"],
            submitted_by=row["submitted_by"],
            submitted_at=row["submitted_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            attempts=row["attempts"],
            message=row["message"],
        )

    # -- images ----------------------------------------------------------------------------

    def record_image(self, job_id: int, index: int, path: str, seed: int | None) -> None:
        with self._write() as c:
            c.execute(
                "INSERT OR REPLACE INTO images (job_id, idx, path, seed, saved_at) VALUES (?, ?, ?, ?, ?)",
                (job_id, index, path, seed, time.time()),
            )

    def images(self, job_id: int) -> dict[int, str]:
        """index -> path of the images a job saved (the grid under GRID_INDEX)."""
        rows = self._query("SELECT idx, path FROM images WHERE job_id=? ORDER BY idx", (job_id,))
        return {int(r["idx"]): str(r["path"]) for r in rows}

    def recent_images(self, limit: int = 500) -> list[tuple[str, int, str]]:
        """(path, job id, job summary) of saved images (not grids), newest first."""
        rows = self._query(
            "SELECT images.path, images.job_id, jobs.summary FROM images JOIN jobs "
            "ON jobs.id = images.job_id WHERE images.idx >= 0 ORDER BY images.saved_at DESC LIMIT ?",
            (limit,),
        )
        return [(str(r["path"]), int(r["job_id"]), str(r["summary"])) for r in rows]

    # -- the daemon's worker processes (so a new daemon can end a dead one's) --------------

    def set_workers(self, daemon_pid: int, workers: list[tuple[int, float]]) -> None:
        with self._write() as c:
            c.execute("DELETE FROM workers WHERE daemon_pid=?", (daemon_pid,))
            c.executemany(
                "INSERT OR REPLACE INTO workers (pid, create_time, daemon_pid) VALUES (?, ?, ?)",
                [(pid, created, daemon_pid) for pid, created in workers],
            )

    def workers(self) -> list[tuple[int, float, int]]:
        rows = self._query("SELECT pid, create_time, daemon_pid FROM workers")
        return [(int(r["pid"]), float(r["create_time"]), int(r["daemon_pid"])) for r in rows]

    def forget_workers(self, pids: list[int]) -> None:
        with self._write() as c:
            c.executemany("DELETE FROM workers WHERE pid=?", [(p,) for p in pids])


class QueueFileProblem(StoreError):
    """The file is not a queue this sdtui can use: it is set aside, a new one is started."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"the job queue {path} cannot be used: {why}")
        self.path = path
        self.why = why


def open_store(path: Path) -> tuple[JobStore, str | None]:
    """Open the queue, or set a corrupt or newer file aside and start a new one. Returns the
    store and, when a file was set aside, the sentence that says so."""
    try:
        return JobStore.open(path), None
    except QueueFileProblem as e:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        tag = "newer" if "newer" in e.why else "damaged"
        aside = path.with_name(f"{path.name}.{tag}-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(path) + suffix)
            if src.exists():
                os.replace(src, Path(str(aside) + suffix))
        note = (
            f"the job queue {path} could not be used ({e.why}): it was kept as {aside.name} "
            "and a new, empty queue was started"
        )
        return JobStore.open(path), note


def record_saved_image(
    store_path: str | None, job_id: int, index: int, path: str, seed: int | None
) -> str | None:
    """For an engine worker: record one saved image; returns a warning instead of raising
    (the image is on disk whatever happens to the queue file)."""
    if not store_path:
        return None
    try:
        store = _worker_store(store_path)
        store.record_image(job_id, index, path, seed)
    except (StoreError, OSError) as e:
        message = e.message if isinstance(e, UserError) else str(e)
        return f"{message}; if this job restarts, this image may be made again"
    return None


_WORKER_STORES: dict[str, JobStore] = {}


def _worker_store(path: str) -> JobStore:
    store = _WORKER_STORES.get(path)
    if store is None:
        store = _WORKER_STORES[path] = JobStore.open(Path(path), create=False)
    return store
