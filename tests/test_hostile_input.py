"""Hostile files and careless input on the command line: one sentence, no traceback, no escape
sequence reaching the terminal, nothing lost (issue 15; the loaders' cases are in
test_hostile_loaders.py, the TUI's in test_tui_hostile.py).

Cases covered here (add yours):

- ``sdtui info`` on a PNG whose parameters hold OSC 52, ``ESC [2J``, OSC 8, BEL and a fake
  prompt: printed with ``^[`` / ``^G``; ``--json`` keeps the text, escaped, valid JSON.
- ``sdtui info`` on a JPEG whose EXIF UserComment holds the same: shown, not sent.
- ``sdtui models`` with a file name holding ``ESC [2J`` and a newline: one row, ``^[`` / ``^J``.
- ``sdtui info`` on a decompression bomb (20000x20000 header): "claims more pixels".
- ``sdtui info`` on a 10 MB zTXt chunk, before and after the image data: "text chunk too large".
- ``sdtui info`` / ``--init-image`` on a named pipe: "is a named pipe", at once (no hang).
- ``--init-image`` 12000x12000 (18 KB, 1-bit): refused by the 64 MP limit, with the setting
  that raises it; raising it lets the header check pass.
- ``--init-image`` a decompression bomb: "claims more pixels", exit 1.
- ``sdtui info big.png | head -c 100`` and ``sdtui models | head -1``: no BrokenPipeError.
- A prompt with bytes that are not UTF-8: refused before the engine starts (exit 2).
- config.toml: ``preview_every = "abc"`` / ``inf``, invalid UTF-8, the path is a folder,
  ``models_dir = {a = 1}`` / ``123``, ``device = 5``: one sentence each.
- ``--width 0`` / ``--height 0`` / ``--hires 0``: refused, not silently 512 / 2.
- Seed 4294967294 with 4 images: seeds 4294967294..4294967297 as A1111 (no wrap), and each
  image's own infotext passes ``validated()`` when read back.
- An infotext with ``Denoising strength: abc``, ``Steps: -5``, ``Size: 0x0``: the good keys
  load, each bad one is named.
- A full disk after 6 saved images: the message names ``00006-7.png``, not ``00000-7.png``.
- ``upscale --to 16384x16384``: refused before the engine starts, naming the limit.
- A folder upscale where some files fail: exit 1, the failed files named, the rest saved.
- The engine daemon killed under a CLI ``generate``: CLI words (``sdtui daemon start``
  resumes it), not the TUI's F12.
- A PNG-chunk fuzz over ``read_infotext``: every mutated file gives text, None or one
  UserError sentence.
"""

from __future__ import annotations

import errno
import json
import os
import random
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from sdtui.errors import UserError
from sdtui.infotext import params_from_image, parse_infotext, read_infotext

EVIL = "a cat\x1b]52;c;aGVsbG8=\x07\x1b[2J\x1b]8;;http://x\x07link\x1b]8;;\x07\r\nuser@host:~$ "
CONTROL = ("\x1b", "\x07", "\x9b")


def sdtui(
    env: dict[str, str], *args: str | bytes, timeout: float = 180
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sdtui", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        errors="surrogateescape",
    )


def clean_failure(proc: subprocess.CompletedProcess, *words: str, code: int = 1) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w.lower() in proc.stderr.lower(), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # one sentence
    return proc.stderr


def no_controls(text: str) -> None:
    for c in CONTROL:
        assert c not in text, repr(text)


# -- crafted PNGs ---------------------------------------------------------------------------


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(
    width: int,
    height: int,
    *,
    before: list[bytes] = (),
    after: list[bytes] = (),
    idat: bytes | None = None,
) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grey
    if idat is None:
        row = b"\x00" + b"\x00" * ((width + 7) // 8)
        idat = zlib.compress(row * height, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + b"".join(before)
        + chunk(b"IDAT", idat)
        + b"".join(after)
        + chunk(b"IEND", b"")
    )


def ztxt(key: str, size: int) -> bytes:
    return chunk(b"zTXt", key.encode() + b"\x00\x00" + zlib.compress(b"a" * size, 9))


def png_with_text(path: Path, text: str) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


# -- terminal injection ---------------------------------------------------------------------


def test_info_shows_escape_sequences_instead_of_sending_them(env, tmp_path):
    path = png_with_text(tmp_path / "evil.png", EVIL + "\nSteps: 20, Seed: 1")
    proc = sdtui(env, "info", str(path))
    assert proc.returncode == 0, proc.stderr
    no_controls(proc.stdout)
    assert "^[]52;c;aGVsbG8=^G" in proc.stdout and "^[[2J" in proc.stdout and "^M" in proc.stdout
    proc = sdtui(env, "info", str(path), "--json")
    assert proc.returncode == 0
    no_controls(proc.stdout)
    assert json.loads(proc.stdout)["prompt"].startswith(
        "a cat\x1b]52;"
    )  # the data is kept, escaped


def test_info_shows_escapes_in_an_exif_user_comment(env, tmp_path):
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + (EVIL + "\nSteps: 5").encode("utf-16-be")
    path = tmp_path / "evil.jpg"
    Image.new("RGB", (8, 8)).save(path, "JPEG", exif=exif.tobytes())
    proc = sdtui(env, "info", str(path))
    assert proc.returncode == 0, proc.stderr
    no_controls(proc.stdout)
    assert "^[[2J" in proc.stdout


def test_models_shows_a_hostile_file_name_on_one_row(env, tmp_path):
    folder = tmp_path / "home" / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    header = json.dumps({"__metadata__": {}}).encode()
    (folder / "evil\x1b[2J\nfake-row.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header
    )
    proc = sdtui(env, "models")
    assert proc.returncode == 0, proc.stderr
    no_controls(proc.stdout + proc.stderr)
    rows = [line for line in proc.stdout.splitlines() if "fake-row" in line]
    assert len(rows) == 1 and "evil^[[2J^Jfake-row" in rows[0], proc.stdout


# -- images that are bombs, pipes, huge chunks ----------------------------------------------


def test_info_on_a_decompression_bomb(env, tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(20000, 20000, idat=zlib.compress(b"\x00" * 1000)))
    clean_failure(sdtui(env, "info", str(path)), "bomb.png", "claims more pixels")


@pytest.mark.parametrize("where", ["before", "after"])
def test_info_on_a_10_mb_text_chunk(env, tmp_path, where):
    path = tmp_path / "chunk.png"
    big = ztxt("parameters", 10 * 2**20)
    path.write_bytes(png_bytes(8, 8, **{where: [big]}))
    assert path.stat().st_size < 50_000
    clean_failure(sdtui(env, "info", str(path)), "chunk.png", "text chunk too large")


def test_a_named_pipe_is_refused_at_once(env, tmp_path, demo_model):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    t = time.monotonic()
    clean_failure(sdtui(env, "info", str(fifo), timeout=30), "pipe.png", "named pipe")
    clean_failure(
        sdtui(env, "generate", "x", "--demo", "--init-image", str(fifo), timeout=30), "named pipe"
    )
    assert time.monotonic() - t < 30


def test_a_huge_init_image_is_refused_by_a_limit_the_user_can_raise(env, tmp_path, demo_model):
    path = tmp_path / "huge.png"
    Image.new("1", (12000, 12000)).save(path)
    assert path.stat().st_size < 60_000  # kilobytes on disk, 432 MB as RGB
    err = clean_failure(
        sdtui(env, "generate", "x", "--demo", "--init-image", str(path)), "huge.png", "12000x12000"
    )
    assert "max_image_megapixels" in err and "64 MP" in err
    # the same check with the limit raised passes (read_infotext-free: header only, no engine)
    from sdtui.cli import _check_init_image
    from sdtui.config import Settings

    _check_init_image(str(path), Settings(max_image_megapixels=200))
    with pytest.raises(UserError, match="more than the 64 MP"):
        _check_init_image(str(path), Settings())


def test_a_bomb_init_image(env, tmp_path, demo_model):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(20000, 20000, idat=zlib.compress(b"\x00" * 1000)))
    clean_failure(sdtui(env, "generate", "x", "--demo", "--init-image", str(path)), "bomb.png")


def test_the_engine_refuses_a_huge_init_image_too(tmp_path):
    """The worker's own check (a job submitted by another client skips the CLI's)."""
    from sdtui.engine.generate import load_init_image

    path = tmp_path / "huge.png"
    Image.new("1", (9000, 9000)).save(path)
    with pytest.raises(UserError, match="81 MP"):
        load_init_image(str(path), 64, 64, "just resize", 64)
    assert load_init_image(str(path), 64, 64, "just resize", 100).size == (64, 64)


# -- broken pipes ---------------------------------------------------------------------------


def test_a_closed_pipe_is_not_a_traceback(env, tmp_path):
    path = png_with_text(tmp_path / "big.png", "word " * 180_000)  # 900 KB of parameters
    cmd = f"{sys.executable} -m sdtui info {path} | head -c 100"
    proc = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=60)
    assert len(proc.stdout) == 100 and proc.stderr == "", proc.stderr
    folder = tmp_path / "home" / "models" / "Lora"
    folder.mkdir(parents=True)
    for i in range(3000):  # more than a pipe holds, so the writer meets the closed pipe
        (folder / f"lora-with-a-long-name-{i:05}.safetensors").write_bytes(b"")
    proc = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m sdtui models | head -1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "BrokenPipe" not in proc.stderr


# -- values ---------------------------------------------------------------------------------


def test_a_prompt_that_is_not_utf8_is_refused_before_the_engine(env):
    proc = sdtui(env, "generate", os.fsdecode(b"a cat \xff\xfe"), "--demo", timeout=60)
    clean_failure(proc, "not UTF-8", code=2)


@pytest.mark.parametrize(
    "flag, value, words",
    [
        ("--width", "0", "width 0"),
        ("--height", "0", "height 0"),
        ("--hires", "0", "hires"),
    ],
)
def test_zero_is_refused_not_replaced(env, flag, value, words):
    clean_failure(sdtui(env, "generate", "x", "--demo", flag, value, timeout=60), words, code=2)


@pytest.mark.parametrize(
    "text, words",
    [
        ('preview_every = "abc"', "preview_every"),
        ("preview_every = inf", "preview_every"),
        ("preview_every = -3", "preview_every"),
        ("models_dir = {a = 1}", "models_dir in"),
        ("models_dir = 123", "folder path in quotes"),
        ("outputs_dir = true", "outputs_dir"),
        ("device = 5", "give text in quotes"),
        ("daemon_idle_minutes = nan", "daemon_idle_minutes"),
        ("max_image_megapixels = 0", "max_image_megapixels"),
        (b'default_model = "\xff"', "not UTF-8"),
        (None, "is a folder"),
    ],
)
def test_bad_settings_files(env, tmp_path, text, words):
    cfg = Path(env["SDTUI_CONFIG"])
    if text is None:
        cfg.mkdir()
    elif isinstance(text, bytes):
        cfg.write_bytes(text)
    else:
        cfg.write_text(text)
    clean_failure(sdtui(env, "models", timeout=60), words)


def test_settings_take_the_right_types(tmp_path, monkeypatch):
    from sdtui.config import load_settings

    cfg = tmp_path / "c.toml"
    cfg.write_text('preview_every = 3\nmodels_dir = "~/m"\nmax_image_megapixels = 100\n')
    s = load_settings(cfg)
    assert s.preview_every == 3 and s.models_dir == Path("~/m").expanduser()
    assert s.max_image_megapixels == 100
    monkeypatch.setenv("SDTUI_MAX_IMAGE_MEGAPIXELS", "abc")
    with pytest.raises(UserError, match="SDTUI|environment"):
        load_settings(cfg)


def test_seeds_past_2_32_as_a1111_and_they_read_back(env, tmp_path, demo_model):
    # A1111 (modules/processing.py, process_images_inner): all_seeds = [int(seed) + x ...],
    # no wrap-around; torch's generator takes 64-bit seeds.
    proc = sdtui(
        env,
        "generate",
        "x",
        "--demo",
        "--seed",
        "4294967294",
        "--batch-size",
        "4",
        "--size",
        "64x64",
        "--steps",
        "1",
    )
    assert proc.returncode == 0, proc.stderr
    paths = [Path(p) for p in proc.stdout.split()][:4]
    assert [p.name for p in paths] == [f"{i:05}-{4294967294 + i}.png" for i in range(4)]
    for i, p in enumerate(paths):
        params = params_from_image(p)
        assert params.seed == 4294967294 + i
        params.validated()  # an image's own infotext must be valid to regenerate it


def test_generated_infotexts_read_back_valid(env, tmp_path, demo_model):
    """Every kind of image sdtui writes can be regenerated from its own infotext."""
    proc = sdtui(
        env,
        "generate",
        "x",
        "--demo",
        "--size",
        "64x64",
        "--steps",
        "2",
        "--hires",
        "1.5",
        "--hires-steps",
        "1",
        "--clip-skip",
        "2",
        "--variation-seed",
        "5",
        "--variation-strength",
        "0.3",
        "--seed",
        "9",
    )
    assert proc.returncode == 0, proc.stderr
    first = Path(proc.stdout.split()[0])
    params_from_image(first).validated()
    proc = sdtui(
        env,
        "generate",
        "y",
        "--demo",
        "--init-image",
        str(first),
        "--size",
        "64x64",
        "--steps",
        "2",
        "--denoise",
        "0.5",
    )
    assert proc.returncode == 0, proc.stderr
    params_from_image(Path(proc.stdout.split()[0])).validated()


def test_bad_values_in_an_infotext_are_named_and_the_rest_loads():
    from sdtui.params import GenerationParams

    parsed = parse_infotext(
        "a cat\nSteps: -5, Sampler: Euler, CFG scale: 6, Seed: 3, Size: 0x0, Denoising strength: abc"
    )
    params, problems = GenerationParams.from_infotext_checked(
        parsed.prompt, parsed.negative_prompt, parsed.pairs
    )
    assert params.cfg_scale == 6 and params.seed == 3 and params.sampler == "Euler"
    assert params.steps == GenerationParams().steps and (params.width, params.height) == (512, 512)
    text = " | ".join(problems)
    assert "Denoising strength" in text and "steps -5" in text and "width 0" in text
    params.validated()


def test_disk_full_names_the_next_file(tmp_path, monkeypatch):
    from sdtui import outputs
    from sdtui.outputs import OutputLayout

    layout = OutputLayout(tmp_path)
    img = Image.new("RGB", (8, 8))
    for seed in range(1, 7):
        layout.save_image(img, "txt2img", seed, "x")
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "write", full)
    with pytest.raises(UserError, match=r"disk full: saving 00006-7\.png in "):
        layout.save_image(img, "txt2img", 7, "x")


def test_upscale_to_a_size_over_the_limit(env, tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(path)
    err = clean_failure(
        sdtui(env, "upscale", str(path), "--to", "16384x16384", timeout=60), "16384x16384"
    )
    assert "max_image_megapixels" in err


def test_the_engine_refuses_an_upscale_over_the_limit(tmp_path):
    from sdtui.engine.upscale import upscale_image
    from sdtui.params import UpscaleParams

    path = tmp_path / "a.png"
    Image.new("RGB", (2048, 2048)).save(path)
    with pytest.raises(UserError, match="upscaled image is 8192x8192"):
        upscale_image(UpscaleParams(str(path), "Nearest", 4.0), tmp_path, megapixels=50)


def test_a_folder_upscale_with_failures_exits_1_and_names_them(env, tmp_path, demo_model):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "c.png"):
        Image.new("RGB", (16, 16)).save(folder / name)
    (folder / "b.png").write_bytes(b"not an image at all")
    proc = sdtui(env, "upscale", str(folder), "--upscaler", "Nearest", "--scale", "2")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "1 of the images" in proc.stderr and "b.png" in proc.stderr and "2 saved" in proc.stderr
    saved = list((tmp_path / "home" / "outputs" / "extras-images").glob("*.png"))
    assert len(saved) == 2


def test_the_cli_speaks_cli_when_the_daemon_dies(env, tmp_path, demo_model):
    import psutil

    env = {
        **env,
        "SDTUI_RUNTIME_DIR": str(tmp_path / "rt"),
        "SDTUI_STATE_DIR": str(tmp_path / "st"),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sdtui",
            "generate",
            "x",
            "--demo",
            "--steps",
            "400",
            "--size",
            "128x128",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    info_file = tmp_path / "rt" / "daemon.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not info_file.exists():
        time.sleep(0.2)
    time.sleep(3)  # the job is queued and running
    pid = json.loads(info_file.read_text())["pid"]
    daemon = psutil.Process(pid)
    workers = daemon.children(recursive=True)
    daemon.kill()
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        for w in workers:
            with __import__("contextlib").suppress(psutil.Error):
                w.kill()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert "F12" not in err and "sdtui daemon start" in err, err


# -- fuzz -----------------------------------------------------------------------------------


def test_png_chunk_fuzz(tmp_path):
    """Mutated PNGs (chunk types, lengths, CRCs, text payloads, truncation, bit flips) through
    read_infotext: text, None, or one UserError line naming the file; nothing else."""
    rng = random.Random(1234)
    base_text = chunk(b"tEXt", b"parameters\x00a cat\nSteps: 20, Seed: 1")
    kinds = [
        b"tEXt",
        b"zTXt",
        b"iTXt",
        b"eXIf",
        b"IHDR",
        b"IDAT",
        b"PLTE",
        b"tIME",
        b"pHYs",
        b"acTL",
    ]
    cases = 0
    for i in range(400):
        before: list[bytes] = []
        after: list[bytes] = []
        for _ in range(rng.randrange(4)):
            kind = rng.choice(kinds)
            payload = rng.randbytes(rng.randrange(40))
            if kind in (b"tEXt", b"zTXt", b"iTXt") and rng.random() < 0.5:
                payload = b"parameters\x00" + payload
            (before if rng.random() < 0.5 else after).append(chunk(kind, payload))
        before.append(base_text)
        data = bytearray(
            png_bytes(rng.choice([1, 8, 64]), rng.choice([1, 8, 64]), before=before, after=after)
        )
        mutation = rng.randrange(4)
        if mutation == 1:
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(8, len(data))] ^= 1 << rng.randrange(8)
        elif mutation == 2:
            data = data[: rng.randrange(8, len(data))]
        elif mutation == 3:  # a lying length field somewhere
            at = rng.randrange(8, max(9, len(data) - 4))
            data[at : at + 4] = struct.pack(
                ">I", rng.choice([0, 2**31 - 1, 2**32 - 1, rng.randrange(2**20)])
            )
        path = tmp_path / f"fuzz-{i}.png"
        path.write_bytes(bytes(data))
        try:
            text = read_infotext(path)
        except UserError as e:
            assert path.name in e.message and "\n" not in e.message, e.message
        else:
            assert text is None or isinstance(text, str)
        cases += 1
    assert cases == 400
