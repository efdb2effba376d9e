"""CLI habits: a rich progress display on a terminal and plain lines elsewhere, -q/-v,
`sdtui completion bash|zsh|fish`, and `generate -o FILE`. Real subprocesses on the built-in
demo model with a private engine (--no-daemon); stderr is a real pseudo-terminal where a
terminal is what is tested."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from sdtui.samplers import SAMPLER_NAMES, SCHEDULE_TYPES

ESC = "\x1b"


def sdtui(env, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sdtui", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sdtui_on_terminal(env, *args: str, timeout: float = 180) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (120 columns) and stdout on a pipe, as in
    `sdtui generate ... > paths.txt` typed at a terminal. Returns (code, stdout, stderr)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES", "SDTUI_FORCE_PROGRESS")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sdtui", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def pump() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(5)
        os.close(master)
    return proc.returncode, out.decode(), b"".join(chunks).decode("utf-8", "replace")


def one_clean_line(proc: subprocess.CompletedProcess, *words: str, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # one sentence, no traceback, no usage dump
    for w in words:
        assert w.lower() in proc.stderr.lower(), proc.stderr
    assert proc.stdout == ""
    return lines[0]


def outputs(env) -> list[Path]:
    return sorted((Path(env["SDTUI_HOME"]) / "outputs" / "txt2img-images").rglob("*.png"))


# -- progress ---------------------------------------------------------------------------------


def test_generate_on_a_terminal_shows_rich_progress_and_writes_each_image_with_n(
    env, tmp_path, demo_model
):
    target = tmp_path / "cats"
    target.mkdir()
    code, out, err = sdtui_on_terminal(
        env,
        "generate",
        "--demo",
        "x",
        "--steps",
        "4",
        "--size",
        "64x64",
        "--batch-count",
        "2",
        "--seed",
        "7",
        "--no-daemon",
        "-o",
        str(target / "cat-{n}.png"),
    )
    assert code == 0, err
    assert "Traceback" not in err
    # the engine's own numbers, drawn by rich: batch, steps, it/s, ETA
    assert "batch 2/2" in err and "4/4 steps" in err and "it/s" in err and "ETA" in err, err
    assert "\r" in err and ESC in err  # redrawn in place
    assert "sdtui: 2 images in" in err
    # stdout stays plain: the files asked for, then the grid (only in outputs/)
    lines = out.splitlines()
    assert ESC not in out and len(lines) == 3, out
    assert lines[:2] == [str(target / "cat-0.png"), str(target / "cat-1.png")]
    assert "txt2img-grids" in lines[2]
    kept = outputs(env)
    assert len(kept) == 2  # the A1111-layout copies stay
    for i, copy in enumerate(kept):
        assert (target / f"cat-{i}.png").read_bytes() == copy.read_bytes()
    assert sorted(p.name for p in target.iterdir()) == [
        "cat-0.png",
        "cat-1.png",
    ]  # no temp files left


def test_generate_in_a_pipe_is_plain_and_quiet_says_only_the_path(env, tmp_path, demo_model):
    target = tmp_path / "cat.png"
    target.write_bytes(b"an older file, replaced")
    proc = sdtui(
        env,
        "-q",
        "generate",
        "--demo",
        "x",
        "--steps",
        "2",
        "--size",
        "64x64",
        "--no-daemon",
        "--output",
        str(target),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no demo notice, no bar, no summary
    assert proc.stdout == f"{target}\n"
    (kept,) = outputs(env)
    assert (
        target.read_bytes() == kept.read_bytes() and target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    )


def test_json_stays_json_with_verbose_and_output(env, tmp_path, demo_model):
    target = tmp_path / "cat.png"
    proc = sdtui(
        env,
        "generate",
        "--demo",
        "x",
        "--steps",
        "2",
        "--size",
        "64x64",
        "--no-daemon",
        "--json",
        "--verbose",
        "-o",
        str(target),
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # every line is JSON
    names = [e["event"] for e in events]
    assert names.count("JobDone") == 1 and "Progress" in names
    assert any(e["event"] == "Log" and "loaded sdtui-demo" in e["text"] for e in events)
    (saved,) = [e for e in events if e["event"] == "ImageSaved"]
    # the one event --output adds, right after the image it copies
    written = events[names.index("ImageSaved") + 1]
    assert written == {
        "event": "OutputWritten",
        "job_id": saved["job_id"],
        "index": 0,
        "path": str(target),
        "source": saved["path"],
    }
    assert target.read_bytes() == Path(saved["path"]).read_bytes()
    # -v: debug lines on stderr, plain
    assert ESC not in proc.stderr
    assert "sdtui: debug: job #1 submitted to a private engine" in proc.stderr
    assert "sdtui: 2/2 steps" in proc.stderr and "it/s" in proc.stderr


def test_plain_lines_without_a_terminal(env, demo_model):
    """A pipe (CI, a log file): no escape sequence, no carriage return; the notice and the
    summary stay, the engine's info lines wait for -v."""
    proc = sdtui(env, "generate", "--demo", "x", "--steps", "2", "--size", "64x64", "--no-daemon")
    assert proc.returncode == 0, proc.stderr
    assert ESC not in proc.stderr and "\r" not in proc.stderr, repr(proc.stderr)
    assert "noise" in proc.stderr and "sdtui: 1 image in" in proc.stderr
    assert "loaded sdtui-demo" not in proc.stderr  # an engine info line: -v shows it
    assert len(proc.stdout.splitlines()) == 1


def test_upscale_on_a_terminal_shows_a_spinner_with_the_stage(env, tmp_path):
    """The engine sends no per-tile progress for upscale jobs: a spinner with the stage (its
    log lines) and the count saved."""
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (16, 12), "red").save(folder / name)
    code, out, err = sdtui_on_terminal(env, "upscale", str(folder), "--scale", "2", "--no-daemon")
    assert code == 0, err
    assert "Traceback" not in err
    assert "2 saved" in err and "[2/2] b.png" in err, err
    paths = out.splitlines()
    assert len(paths) == 2 and all("extras-images" in p for p in paths) and ESC not in out


def test_upscale_verbose_in_a_pipe_gives_the_engine_lines(env, tmp_path):
    from PIL import Image

    src = tmp_path / "src.png"
    Image.new("RGB", (16, 12), "red").save(src)
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(src, folder / "a.png")
    proc = sdtui(env, "upscale", str(folder), "--scale", "2", "--no-daemon", "-v")
    assert proc.returncode == 0, proc.stderr
    assert ESC not in proc.stderr and "\r" not in proc.stderr
    assert "sdtui: [1/1] a.png" in proc.stderr  # the engine's log line, with -v only
    assert "sdtui: debug: engine busy" in proc.stderr and "sdtui: debug: job #1 took" in proc.stderr
    assert len(proc.stdout.splitlines()) == 1


# -- errors: one line each, before any work ------------------------------------------------------


@pytest.mark.parametrize(
    "args, words",
    [
        (["-o", "{tmp}"], ["is a folder", "image.png"]),
        (["-o", "{tmp}/sub/"], ["is a folder"]),
        (["--batch-size", "2", "-o", "{tmp}/cat.png"], ["makes 2 images", "{n}", "cat-{n}.png"]),
        (["-n", "3", "--batch-size", "2", "-o", "{tmp}/cat.png"], ["makes 6 images", "{n}"]),
        (["-o", "{tmp}/cat.jpg"], ["png", "cat.png"]),
        (["-o", "{tmp}/missing/cat.png"], ["does not exist", "create it"]),
        (["-o", "{tmp}/{n}/cat.png"], ["file name, not in a folder"]),
        (["--detach", "-o", "{tmp}/cat.png"], ["--detach"]),
        (["-q", "-v"], ["-q/--quiet", "-v/--verbose"]),
    ],
)
def test_bad_output_and_verbosity_flags_are_one_clear_line(env, tmp_path, args, words):
    (tmp_path / "sub").mkdir()
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = sdtui(env, "generate", "--demo", "x", *args, timeout=60)
    one_clean_line(proc, *words, code=2)
    assert not outputs(env) and not list(tmp_path.glob("*.png"))


def test_write_atomic_replaces_whole_and_leaves_no_temp_file(tmp_path):
    from sdtui.cli import write_atomic

    src, dest = tmp_path / "src.png", tmp_path / "out" / "cat.png"
    dest.parent.mkdir()
    src.write_bytes(b"new" * 1000)
    dest.write_bytes(b"old")
    write_atomic(src, dest)
    assert dest.read_bytes() == b"new" * 1000
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "gone.png", dest)
    assert dest.read_bytes() == b"new" * 1000  # a failed copy leaves the old file whole
    assert [p.name for p in dest.parent.iterdir()] == ["cat.png"]


# -- -q / -v before or after the subcommand ----------------------------------------------------


@pytest.mark.parametrize(
    "argv, quiet, verbose",
    [
        (["-q", "generate", "x"], True, False),
        (["generate", "x", "-q"], True, False),
        (["--verbose", "upscale", "a.png"], False, True),
        (["upscale", "a.png", "-v"], False, True),
        (["-v", "daemon", "status"], False, True),
        (["queue", "--quiet"], True, False),
        (["--demo", "generate", "x", "--models-dir", "m"], False, False),
    ],
)
def test_quiet_and_verbose_count_before_or_after_the_subcommand(argv, quiet, verbose):
    from sdtui.cli import build_parser

    args = build_parser().parse_args(argv)
    assert (args.quiet, args.verbose) == (quiet, verbose)
    if "--demo" in argv:
        assert args.demo and str(args.models_dir) == "m"


# -- shell completion --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("completion")
    found = {}
    for shell in ("bash", "zsh", "fish"):
        proc = subprocess.run(
            [sys.executable, "-m", "sdtui", "completion", shell],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        path = folder / ("_sdtui" if shell == "zsh" else f"sdtui.{shell}")
        path.write_text(proc.stdout)
        found[shell] = path
    return found


def bash_complete(script: Path, *words: str) -> list[str]:
    """What `_sdtui` offers for the words (the last one being completed), as bash calls it."""
    code = (
        f"source {script}\n"
        'COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _sdtui\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    out = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", code, "bash", "sdtui", *words],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return [line for line in out.stdout.splitlines() if line]


def test_bash_completes_commands_options_samplers_and_schedules(scripts, tmp_path):
    s = scripts["bash"]
    assert bash_complete(s, "gen") == ["generate"]
    assert bash_complete(s, "daemon", "st") == ["start", "stop", "status"]
    assert bash_complete(s, "--demo", "generate", "x", "--samp") == ["--sampler"]
    assert "--output" in bash_complete(s, "generate", "x", "--")
    assert "--quiet" in bash_complete(s, "upscale", "a.png", "--")
    # every sampler and schedule, escaped for the shell; quoted when a quote was typed
    assert bash_complete(s, "generate", "x", "--sampler", "") == [
        n.replace(" ", "\\ ") for n in SAMPLER_NAMES
    ]
    assert bash_complete(s, "generate", "x", "--sampler", "DPM++\\ 2") == [
        "DPM++\\ 2M",
        "DPM++\\ 2M\\ SDE",
    ]
    assert bash_complete(s, "generate", "x", "--sampler", '"Eu') == ['"Euler a"', '"Euler"']
    assert bash_complete(s, "-v", "generate", "x", "--schedule", "") == [
        n.replace(" ", "\\ ") for n in SCHEDULE_TYPES
    ]
    assert bash_complete(s, "generate", "x", "--schedule", "=", "SGM") == [
        "SGM\\ Uniform"
    ]  # --schedule=SGM
    assert bash_complete(s, "generate", "x", "--schedule=K") == ["--schedule=Karras"]
    assert bash_complete(s, "completion", "") == ["bash", "zsh", "fish"]
    # a value is not a subcommand: --model daemon, then daemon's actions
    assert bash_complete(s, "--model", "daemon", "daemon", "sta") == ["start", "status"]
    (tmp_path / "photo.png").write_bytes(b"")
    assert bash_complete(s, "upscale", str(tmp_path / "ph")) == [str(tmp_path / "photo.png")]


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completes_samplers_and_schedules(scripts, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sdtui").write_text("#!/bin/sh\n")
    (fake / "sdtui").chmod(0o755)

    def complete(line: str) -> list[str]:
        code = f"source {scripts['fish']}; complete -C{line!r}"
        out = subprocess.run(
            ["fish", "--no-config", "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"},
        )
        assert out.returncode == 0 and out.stderr == "", out.stderr
        return [line.split("\t")[0] for line in out.stdout.splitlines()]

    assert complete("sdtui gen") == ["generate"]
    assert sorted(complete("sdtui generate x --sampler ")) == sorted(SAMPLER_NAMES)
    assert complete("sdtui --demo generate x --schedule SG") == ["SGM Uniform"]
    assert complete("sdtui generate x --sampler=DPM++\\ 2M\\ S") == ["--sampler=DPM++ 2M SDE"]
    assert complete("sdtui daemon sto") == ["stop"]


@pytest.mark.skipif(
    shutil.which("zsh") is None or shutil.which("tmux") is None, reason="zsh and tmux are needed"
)
def test_zsh_completes_samplers_and_schedules(scripts, tmp_path):
    """A real interactive zsh in tmux: type, press Tab, read the line back."""
    assert subprocess.run(["zsh", "-n", str(scripts["zsh"])], timeout=30).returncode == 0
    session = f"sdtui-zsh-{os.getpid()}"
    zdot = tmp_path / "zdot"
    zdot.mkdir()
    (zdot / ".zshrc").write_text(
        f"PS1='ready> '\nfpath=({scripts['zsh'].parent} $fpath)\nautoload -Uz compinit\ncompinit -u -D\n"
    )
    tmux = ["tmux", "-L", session, "-f", "/dev/null"]  # a private tmux server
    shell = f"env HOME={tmp_path} ZDOTDIR={zdot} TERM=xterm zsh -i"
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", session, "-x", "200", "-y", "20", shell],
        check=True,
        timeout=30,
    )

    def screen() -> str:
        return subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True, timeout=30
        ).stdout

    def wait_for(text: str) -> str:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            shown = screen()
            if text in shown:
                return shown
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never showed:\n{screen()}")

    try:
        wait_for("ready>")  # (tmux drops the spaces at the end of a line)
        subprocess.run(
            [
                *tmux,
                "send-keys",
                "-t",
                session,
                "--",
                "sdtui generate x --sampler DPM++\\ 2M\\ S",
                "Tab",
            ],
            check=True,
            timeout=30,
        )
        wait_for("--sampler DPM++\\ 2M\\ SDE")
        subprocess.run(
            [*tmux, "send-keys", "-t", session, "--", "--sched", "Tab"], check=True, timeout=30
        )
        wait_for("SDE --schedule")  # each completion ends the word with a space
        subprocess.run(
            [*tmux, "send-keys", "-t", session, "--", "SGM", "Tab"], check=True, timeout=30
        )
        wait_for("--schedule SGM\\ Uniform")
    finally:
        subprocess.run([*tmux, "kill-server"], timeout=30)
