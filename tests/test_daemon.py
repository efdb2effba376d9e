"""The engine daemon with real processes and real sockets on the demo model: the queue
outlives the daemon (kill -9, then resume), clients share it, the socket stays private, two
workers run two jobs at once, and every bad case (a stale socket, another user's socket, two
daemons started at once, a corrupt or newer queue, a full disk, a client of another version, a
client that stops reading) gets one clear sentence and loses nothing."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import stop_daemon

from sdtui.config import Settings
from sdtui.errors import UserError
from sdtui.ipc import protocol as msg
from sdtui.ipc.client import DaemonClient, DaemonNotRunning
from sdtui.jobstore import JobStore, StoreError, open_store
from sdtui.params import GenerationParams

TINY = dict(prompt="a cat", width=64, height=64, steps=3, preview_every=0, model="demo")


def settings_in(tmp_path: Path, **kw) -> Settings:
    return Settings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs", **kw)


def until(client: DaemonClient, predicate, timeout: float = 120.0) -> tuple[object, list]:
    seen: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in client.poll(timeout=0.1):
            seen.append(e)
            if predicate(e):
                return e, seen
    raise AssertionError(f"timed out; saw {[type(e).__name__ for e in seen][-30:]}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False


def wait_dead(pids, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], "processes left behind"


# -- the CLI against a daemon of the test's own ------------------------------------------------


@pytest.fixture
def cli_env(tmp_path, daemon_paths, demo_model):
    env = dict(os.environ)
    env.update(
        SDTUI_RUNTIME_DIR=str(daemon_paths.folder),
        SDTUI_STATE_DIR=str(daemon_paths.queue.parent),
        SDTUI_HOME=str(tmp_path / "home"),
        SDTUI_CONFIG=str(tmp_path / "config.toml"),
    )
    yield env
    stop_daemon(daemon_paths)


def sdtui(
    env, *args: str, timeout: float = 180, stdin: str | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sdtui", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
    )


def seeds_on_disk(folder: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in folder.rglob("*.png"))


@pytest.mark.slow
def test_a_daemon_killed_mid_job_loses_nothing_and_makes_nothing_twice(
    cli_env, tmp_path, daemon_paths
):
    jobs = [
        ("--seed", "100", "--batch-size", "2", "--batch-count", "3", "--steps", "40"),
        ("--seed", "200", "--batch-size", "2"),
        (
            "--seed",
            "300",
        ),
    ]
    ids = []
    for extra in jobs:
        proc = sdtui(
            cli_env,
            "generate",
            "--demo",
            "a queued cat",
            "--size",
            "64x64",
            "--steps",
            "4",
            *extra,
            "--detach",
        )
        assert proc.returncode == 0, proc.stderr
        ids.append(int(proc.stdout.strip()))
    assert ids == sorted(ids)

    watcher = DaemonClient(Settings(), paths=daemon_paths, who="watcher").attach(start=False)
    until(watcher, lambda e: isinstance(e, msg.ImageSaved) and e.job_id == ids[0])
    daemon, workers = watcher.pid, watcher.worker_pids
    os.kill(daemon, signal.SIGKILL)
    # the orphaned worker sees its pipe close: it stops at the next step and exits
    wait_dead([daemon, *workers])
    # the queue says what happened, without a daemon
    listing = sdtui(cli_env, "queue", "--json")
    waiting = json.loads(listing.stdout)["jobs"]
    assert [j["job_id"] for j in waiting] == ids and waiting[0]["images_done"] >= 1

    started = sdtui(cli_env, "daemon", "start")
    assert started.returncode == 0 and "started" in started.stdout, started.stderr
    client = DaemonClient(Settings(), paths=daemon_paths, who="checker").attach(start=False)
    deadline = time.monotonic() + 180
    while client.query().jobs and time.monotonic() < deadline:
        time.sleep(0.2)
    state = client.query()
    assert not state.jobs
    assert {j.job_id: j.state for j in state.recent if j.job_id in ids} == dict.fromkeys(
        ids, "done"
    )
    # every image once, with the seed it was asked for
    images = tmp_path / "home" / "outputs" / "txt2img-images"
    assert seeds_on_disk(images) == [100, 101, 102, 103, 104, 105, 200, 201, 300]
    store = JobStore.open(daemon_paths.queue, create=False)
    assert sorted(store.images(ids[0])) == [-1, 0, 1, 2, 3, 4, 5]  # the grid too, once
    assert store.job(ids[0]).attempts == 2
    store.close()


@pytest.mark.slow
def test_daemon_stop_asks_first_and_now_cancels_keeping_images(cli_env, tmp_path, daemon_paths):
    proc = sdtui(
        cli_env,
        "generate",
        "--demo",
        "a long cat",
        "--size",
        "64x64",
        "--steps",
        "60",
        "--batch-count",
        "30",
        "--seed",
        "5",
        "--detach",
    )
    job = int(proc.stdout)
    watcher = DaemonClient(Settings(), paths=daemon_paths, who="watcher").attach(start=False)
    # the first image is 60 steps (a minute at worst on a CPU shared with the other test
    # worker); the 29 after it, 1740 steps, keep the job running through the checks below
    until(watcher, lambda e: isinstance(e, msg.ImageSaved) and e.job_id == job, timeout=360)
    status = json.loads(sdtui(cli_env, "daemon", "status", "--json").stdout)
    assert status["pid"] == watcher.pid and status["workers"][0]["device"] == "cpu"
    assert status["jobs"][0]["job_id"] == job and status["jobs"][0]["state"] == "running"
    queue = sdtui(cli_env, "queue")
    assert (
        f"#{job}" in queue.stdout
        and "running" in queue.stdout
        and "sdtui generate (pid" in queue.stdout
    )

    refused = sdtui(cli_env, "daemon", "stop")  # no terminal to ask on: it says what to do
    assert (
        refused.returncode == 1
        and "--now" in refused.stderr
        and "1 job is queued or running" in refused.stderr
    )
    assert alive(watcher.pid)
    stopped = sdtui(cli_env, "daemon", "stop", "--now")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    wait_dead([watcher.pid, *watcher.worker_pids])
    assert 1 <= len(seeds_on_disk(tmp_path / "home" / "outputs")) < 30
    after = json.loads(sdtui(cli_env, "queue", "--json").stdout)
    assert after["jobs"] == []  # cancelled, not left to resume
    not_running = sdtui(cli_env, "daemon", "status")
    assert not_running.returncode == 3 and "no engine daemon is running" in not_running.stdout


# -- clients ---------------------------------------------------------------------------------


def test_two_clients_see_the_same_jobs_and_a_client_leaving_changes_nothing(attach, tmp_path):
    settings = settings_in(tmp_path)
    a = attach(settings, who="tui A")
    b = attach(settings, who="tui B")
    assert a.pid == b.pid
    first = a.submit(
        GenerationParams(**{**TINY, "steps": 6, "preview_every": 1}, seed=5, batch_size=2)
    )
    done_a, seen_a = until(a, lambda e: isinstance(e, msg.JobDone) and e.job_id == first)
    done_b, seen_b = until(b, lambda e: isinstance(e, msg.JobDone) and e.job_id == first)
    assert done_a == done_b and len(done_b.paths) == 2

    def story(events):
        return [
            (type(e).__name__, getattr(e, "index", None))
            for e in events
            if isinstance(e, msg.JobStarted | msg.ImageSaved | msg.JobDone) and e.job_id == first
        ]

    assert (
        story(seen_a)
        == story(seen_b)
        == [
            ("JobStarted", None),
            ("ImageSaved", 0),
            ("ImageSaved", 1),
            ("ImageSaved", -1),
            ("JobDone", None),
        ]
    )
    queued = [e for e in seen_b if isinstance(e, msg.JobQueued)]
    assert queued[0].job.submitted_by.startswith("tui A (pid ")
    assert any(isinstance(e, msg.Preview) for e in seen_b), "previews reach every client"

    second = a.submit(GenerationParams(**{**TINY, "steps": 20}, seed=9))
    a.detach()  # the laptop closes: nothing changes for the job
    done, _ = until(b, lambda e: isinstance(e, msg.JobDone) and e.job_id == second)
    assert not done.cancelled and Path(done.paths[0]).exists()


def test_the_socket_is_private_and_no_tcp_port_is_ever_open(attach, tmp_path, daemon_paths):
    import psutil

    client = attach(settings_in(tmp_path))
    job = client.submit(GenerationParams(**TINY, seed=1))
    for pid in (client.pid, *client.worker_pids):
        assert psutil.Process(pid).net_connections(kind="inet") == [], (
            f"pid {pid} has a TCP/UDP socket"
        )
    client.wait_job(job, 60)
    for pid in (client.pid, *client.worker_pids):
        assert psutil.Process(pid).net_connections(kind="inet") == []
    assert stat.S_IMODE(os.stat(daemon_paths.folder).st_mode) == 0o700
    sock = os.stat(daemon_paths.address)
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(daemon_paths.key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(daemon_paths.queue).st_mode) == 0o600


def test_the_daemon_stops_after_its_idle_time(daemon_paths, demo_model, tmp_path):
    settings = settings_in(tmp_path, daemon_idle_minutes=0.02)  # 1.2 s
    client = DaemonClient(settings, paths=daemon_paths).attach(preload="demo")
    pids = [client.pid, *client.worker_pids]
    time.sleep(2.0)
    assert alive(pids[0]), "an attached client keeps it"
    client.detach()
    wait_dead(pids, 30)
    assert not Path(daemon_paths.address).exists()
    with pytest.raises(DaemonNotRunning):
        DaemonClient(settings, paths=daemon_paths).attach(start=False)


def test_a_client_of_another_version_gets_one_sentence(attach, tmp_path, daemon_paths):
    from multiprocessing.connection import Client

    client = attach(settings_in(tmp_path))
    conn = Client(daemon_paths.address, family="AF_UNIX", authkey=daemon_paths.read_key())
    conn.send(("sdtui-hello", 1, {"who": "old sdtui"}))
    kind, version, text = conn.recv()
    assert (kind, version) == ("sdtui-refused", msg.PROTOCOL_VERSION)
    assert (
        f"pid {client.pid}" in text
        and f"protocol {msg.PROTOCOL_VERSION}" in text
        and "sdtui daemon stop" in text
    )
    with pytest.raises(mp.AuthenticationError):  # no key, no talk
        Client(daemon_paths.address, family="AF_UNIX", authkey=b"wrong key")
    assert client.query().pid == client.pid  # the daemon is fine


def test_a_slow_client_gets_the_newest_preview_and_nothing_piles_up():
    """The real ClientSession over a real pipe that nobody reads: the daemon never waits for
    it, previews and progress of a job are replaced by newer ones, and a client that does
    not read at all is let go before its outbox grows without bound."""
    import queue

    from sdtui.ipc.daemon import MAX_OUTBOX, ClientSession

    ours, theirs = mp.Pipe()
    inbox: queue.Queue = queue.Queue()
    session = ClientSession(ours, {"who": "slow"}, 1, inbox)
    session.start()
    png = b"x" * 20000  # a pipe holds a few of these, then send() blocks
    t0 = time.monotonic()
    for step in range(500):
        session.send(msg.Progress(1, step, 500, 0, 1, 1.0, 1.0))
        session.send(msg.Preview(1, step, png, 8, 8))
        if step % 100 == 0:
            session.send(msg.Log("info", f"log {step}", 1))
    assert time.monotonic() - t0 < 2.0, "sending never waits for the client"
    assert len(session.outbox) <= 2 + 5
    received = []
    while theirs.poll(1.0):
        received.append(theirs.recv())
        if isinstance(received[-1], msg.Preview) and received[-1].step == 499:
            break
    logs = [e.text for e in received if isinstance(e, msg.Log)]
    assert logs == ["log 0", "log 100", "log 200", "log 300", "log 400"]
    assert received[-1].step == 499 and session.dropped > 900
    for i in range(MAX_OUTBOX * 3):  # a client that reads nothing at all is let go
        session.send(msg.Log("info", f"{i}"))
        if session.closed:
            break
    assert session.closed and len(session.outbox) <= MAX_OUTBOX
    assert inbox.get(timeout=1)[:3:2] == ("gone", "stopped reading")


def test_a_closed_session_leaves_no_reader_on_a_reused_descriptor():
    """The daemon lets a client go (it stopped reading, or detached): its reader thread,
    blocked in recv, wakes with EOF and ends before the descriptor is closed. Closed under
    it, the descriptor's number goes to the next connection and the stale reader takes that
    client's bytes (a CI run of the test above saw exactly that: EOFError mid-stream)."""
    import queue
    import threading

    from sdtui.ipc.daemon import ClientSession
    from sdtui.ipc.paths import wake_readers

    ours, theirs = mp.Pipe()
    session = ClientSession(ours, {"who": "gone"}, 1, queue.Queue())
    session.start()
    session.close()  # nothing waiting: the writer closes the connection
    assert session.flushed.wait(5)
    assert session._reader is not None and not session._reader.is_alive()
    # the next connection (likely on the same descriptor numbers) keeps its own bytes
    a, b = mp.Pipe()
    for i in range(20):
        b.send(("hello", i))
        assert a.poll(2) and a.recv() == ("hello", i)
    theirs.close()
    a.close()
    b.close()

    # the helper alone: a thread blocked in recv wakes with EOF
    c, d = mp.Pipe()
    woke: list[str] = []

    def read() -> None:
        try:
            c.recv()
        except EOFError:
            woke.append("eof")

    t = threading.Thread(target=read, daemon=True)
    t.start()
    time.sleep(0.1)
    wake_readers(c)
    t.join(5)
    assert woke == ["eof"] and not t.is_alive()
    c.close()
    d.close()


def test_two_workers_run_two_jobs_at_the_same_time(attach, tmp_path):
    client = attach(settings_in(tmp_path, devices=("cpu", "cpu")))
    assert [w.device for w in client.daemon.workers] == ["cpu", "cpu"]
    a = client.submit(GenerationParams(**{**TINY, "steps": 60}, seed=1))
    b = client.submit(GenerationParams(**{**TINY, "steps": 60}, seed=2))
    started: dict[int, float] = {}
    ended: dict[int, float] = {}
    workers: dict[int, int] = {}
    deadline = time.monotonic() + 180
    while len(ended) < 2 and time.monotonic() < deadline:
        for e in client.poll(timeout=0.1):
            if isinstance(e, msg.JobStarted):
                started[e.job_id] = time.monotonic()
                state = client.query()
                workers.update({j.job_id: j.worker for j in state.jobs if j.worker is not None})
            elif isinstance(e, msg.JobDone):
                ended[e.job_id] = time.monotonic()
                assert len(e.paths) == 1 and Path(e.paths[0]).exists()
    assert set(ended) == {a, b}
    assert max(started.values()) < min(ended.values()), "both ran at once"
    assert sorted(workers.values()) == [0, 1]


# -- starting: stale sockets, other users, races ------------------------------------------------


def test_a_stale_socket_of_a_dead_daemon_is_cleaned_and_a_new_one_starts(
    daemon_paths, demo_model, tmp_path
):
    daemon_paths.ensure_folder()
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(daemon_paths.address)  # a socket file nobody listens on, as kill -9 leaves it
    dead.close()
    daemon_paths.write_key()
    with pytest.raises(DaemonNotRunning, match="stale socket"):
        DaemonClient(settings_in(tmp_path), paths=daemon_paths).attach(start=False)
    client = DaemonClient(settings_in(tmp_path), paths=daemon_paths).attach(no_preload=True)
    try:
        assert client.started_daemon and alive(client.pid)
    finally:
        stop_daemon(daemon_paths)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="making another user's file needs root"
)
def test_a_socket_or_folder_of_another_user_is_refused(daemon_paths, tmp_path):
    daemon_paths.ensure_folder()
    other = socket.socket(socket.AF_UNIX)
    other.bind(daemon_paths.address)
    other.close()
    os.chown(daemon_paths.address, 4321, 4321)
    with pytest.raises(UserError, match="belongs to another user"):
        DaemonClient(settings_in(tmp_path), paths=daemon_paths).attach(start=False)
    os.unlink(daemon_paths.address)
    os.chown(daemon_paths.folder, 4321, 4321)
    with pytest.raises(UserError, match="belongs to another user"):
        DaemonClient(settings_in(tmp_path), paths=daemon_paths).attach(start=True)


def test_two_daemons_started_at_once_one_wins_and_both_attach(cli_env, daemon_paths):
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "sdtui", "daemon", "start"],
            env=cli_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    pids = {line.split("pid ")[1].split(",")[0] for out, _ in outs for line in out.splitlines()}
    assert len(pids) == 1, outs
    import psutil

    daemons = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "sdtui.ipc.daemon" in " ".join(p.info["cmdline"] or ())
        and str(daemon_paths.folder) in " ".join(p.info["cmdline"])
    ]
    assert len(daemons) == 1


# -- the queue file ------------------------------------------------------------------------------


def test_a_corrupt_or_newer_queue_file_is_kept_aside_with_a_message(tmp_path):
    path = tmp_path / "queue.sqlite3"
    path.write_bytes(b"this is not a database, it is a note" * 200)
    store, note = open_store(path)
    assert "could not be used" in note and "kept as queue.sqlite3.damaged-" in note
    [aside] = tmp_path.glob("queue.sqlite3.damaged-*")
    assert aside.read_bytes().startswith(b"this is not a database")
    job = store.add_job("generate", GenerationParams(**TINY, seed=1), {}, "test")
    assert [j.id for j in store.active_jobs()] == [job.id]
    store.close()

    newer = tmp_path / "newer.sqlite3"
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    store, note = open_store(newer)
    assert "written by a newer sdtui (queue format 99" in note
    assert list(tmp_path.glob("newer.sqlite3.newer-*"))
    store.close()


def test_the_queue_survives_and_records_each_image_once(tmp_path):
    store = JobStore.open(tmp_path / "q.sqlite3")
    job = store.add_job(
        "generate", GenerationParams(**TINY, seed=3, batch_size=2), {"outputs_dir": "/o"}, "cli"
    )
    store.mark_running(job.id)
    store.record_image(job.id, 0, "/o/a.png", 3)
    store.record_image(job.id, 0, "/o/a.png", 3)  # said twice, kept once
    store.close()
    again = JobStore.open(tmp_path / "q.sqlite3")
    assert again.recover() == [job.id]
    [back] = again.active_jobs()
    assert (
        back.state == "queued" and back.params.seed == 3 and back.folders == {"outputs_dir": "/o"}
    )
    assert again.images(job.id) == {0: "/o/a.png"}
    again.close()


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip("cannot mount a small file system here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_refuses_the_job_with_a_sentence_and_loses_nothing(
    tiny_disk, tmp_path, demo_model
):
    from sdtui.ipc.paths import DaemonPaths

    paths = DaemonPaths(
        Path(__import__("tempfile").mkdtemp(prefix="sdtui-d-")), tiny_disk / "queue.sqlite3"
    )
    client = DaemonClient(settings_in(tmp_path), paths=paths).attach(no_preload=True)
    try:
        first = client.submit(GenerationParams(**TINY, seed=1))
        filler = tiny_disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # the disk fills up
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        big = GenerationParams(**{**TINY, "prompt": "a cat " * 8000}, seed=2)
        with pytest.raises(UserError, match="disk is full. Free some space"):
            client.submit(big)
        done, _ = client.wait_job(first, 60)  # what was accepted before still runs
        assert isinstance(done, msg.JobDone)
        filler.unlink()  # space again: the same job goes in
        second = client.submit(big)
        assert second > first
    finally:
        stop_daemon(paths)
        shutil.rmtree(paths.folder, ignore_errors=True)


def test_store_errors_name_the_file_and_the_fix(tmp_path):
    path = tmp_path / "q.sqlite3"
    store = JobStore.open(path)
    store.conn.execute(
        f"PRAGMA max_page_count={store.conn.execute('PRAGMA page_count').fetchone()[0]}"
    )
    with pytest.raises(StoreError) as e:
        store.add_job("generate", GenerationParams(**{**TINY, "prompt": "x" * 100000}), {}, "cli")
    assert str(path) in e.value.message and "disk is full" in e.value.message
    store.close()


def test_a_worker_whose_daemon_dies_while_it_imports_torch_exits(
    daemon_paths, demo_model, tmp_path
):
    """The orphan defect, at the process level: the daemon is killed while its worker is still
    importing torch; the worker notices its pipe closed and ends instead of idling forever."""
    client = DaemonClient(settings_in(tmp_path), paths=daemon_paths).attach(preload="demo")
    daemon, workers = client.pid, client.worker_pids
    assert workers, "the daemon named its worker at attach"
    os.kill(daemon, signal.SIGKILL)
    wait_dead([daemon, *workers], 30)
