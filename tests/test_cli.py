"""The `sdtui` command as a user runs it: real subprocesses, real engine, real files.
Every bad input gets one clear message naming the problem and the fix, a non-zero exit code,
no traceback, and loses nothing already saved."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sdtui.infotext import parse_infotext, read_infotext


def sdtui(
    env, *args: str, timeout: float = 180, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sdtui", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def assert_clean_failure(proc, *words: str, code: int | None = None) -> None:
    assert proc.returncode != 0, proc.stdout
    if code is not None:
        assert proc.returncode == code
    assert "Traceback" not in proc.stderr, proc.stderr
    text = proc.stderr.lower()
    for w in words:
        assert w.lower() in text, proc.stderr


def test_generate_demo_batch_then_img2img_then_info(env, tmp_path, demo_model):
    proc = sdtui(
        env,
        "generate",
        "--demo",
        "a black house cat typing on a computer",
        "--steps",
        "3",
        "--cfg",
        "7",
        "--size",
        "64x64",
        "--batch-size",
        "4",
        "--sampler",
        "Euler a",
        "--seed",
        "2089545485",
    )
    assert proc.returncode == 0, proc.stderr
    assert "noise" in proc.stderr  # the demo model says what it is
    paths = [Path(line) for line in proc.stdout.splitlines()]
    assert [p.name for p in paths[:4]] == [f"{i:05}-{2089545485 + i}.png" for i in range(4)]
    assert paths[4].parent.parent.name == "txt2img-grids"
    third = paths[2]
    pairs = parse_infotext(read_infotext(third)).pairs
    assert (
        pairs["Seed"] == "2089545487"
        and pairs["Model"] == "sdtui-demo"
        and len(pairs["Model hash"]) == 10
    )

    proc = sdtui(
        env,
        "generate",
        "--demo",
        "a black house cat",
        "--init-image",
        str(third),
        "--denoise",
        "0.75",
        "--size",
        "128x128",
        "--steps",
        "4",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    saved = [e for e in events if e["event"] == "ImageSaved"]
    assert len(saved) == 1 and "img2img-images" in saved[0]["path"]
    assert [e["event"] for e in events].count("JobDone") == 1
    assert any(e["event"] == "Progress" and e["its"] > 0 for e in events)

    info = sdtui(env, "info", saved[0]["path"], "--json")
    assert info.returncode == 0
    fields = json.loads(info.stdout)
    assert fields["prompt"] == "a black house cat" and fields["Denoising strength"] == "0.75"
    assert fields["Size"] == "128x128"


def test_inpaint_and_outpaint_from_relative_paths(env, tmp_path, demo_model):
    """--init-image and --mask name files from the shell's folder; the daemon runs elsewhere
    (its cwd is /), so the CLI sends them as absolute paths."""
    from PIL import Image

    work = tmp_path / "work"
    work.mkdir()
    Image.new("RGB", (64, 64), (200, 120, 40)).save(work / "init.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(work / "mask.png")
    common = ("generate", "--demo", "a red door", "--size", "64x64", "--steps", "2")
    proc = sdtui(
        env,
        *common,
        "--init-image",
        "init.png",
        "--mask",
        "mask.png",
        "--mask-blur",
        "0",
        "--only-masked",
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr
    [out] = [Path(line) for line in proc.stdout.splitlines()]
    pairs = parse_infotext(read_infotext(out)).pairs
    assert (pairs["Mask blur"], pairs["Inpaint area"], pairs["Masked area padding"]) == (
        "0",
        "Only masked",
        "32",
    )
    with Image.open(out) as im:  # only the masked square changed
        assert im.size == (64, 64) and im.convert("RGB").getpixel((2, 2)) == (200, 120, 40)

    proc = sdtui(
        env, *common, "--init-image", "init.png", "--outpaint", "16", "--outpaint-sides", "left",
        cwd=work,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    [out] = [Path(line) for line in proc.stdout.splitlines()]
    with Image.open(out) as im:
        assert im.size == (80, 64)
    assert parse_infotext(read_infotext(out)).pairs["Masked content"] == "fill"

    missing = sdtui(env, *common, "--init-image", "init.png", "--mask", "nope.png", cwd=work)
    assert_clean_failure(missing, "mask", "nope.png")
    plot = ("xyz", "--demo", "x", "--init-image", "init.png", "--mask", "nope.png")
    missing = sdtui(env, *plot, "--x-type", "Steps", "--x-values", "1-2", cwd=work)
    assert_clean_failure(missing, "mask", "nope.png")  # before the daemon starts, as generate


def test_models_lists_family_size_and_hashes(env, tmp_path, demo_model):
    ckpts = tmp_path / "home" / "models" / "Stable-diffusion" / "sub"
    ckpts.mkdir(parents=True)
    shutil.copy(demo_model.safetensors, ckpts / "tiny.safetensors")
    shutil.copytree(demo_model.folder, ckpts.parent / "tiny-diffusers")
    (tmp_path / "home" / "embeddings").mkdir(parents=True)
    (tmp_path / "home" / "embeddings" / "my-style.pt").write_bytes(b"x")  # unreadable: no count
    import numpy as np
    from safetensors.numpy import save_file

    save_file(
        {"emb_params": np.zeros((6, 768), np.float32)},
        tmp_path / "home" / "embeddings" / "glow.safetensors",
    )
    (tmp_path / "home" / "models" / "Lora").mkdir(parents=True)
    (tmp_path / "home" / "models" / "Lora" / "detail.safetensors").write_bytes(b"x")
    proc = sdtui(env, "models", "--json")
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    rows = {r["name"]: r for r in listing["checkpoints"]}
    assert [(e["name"], e["vectors"]) for e in listing["embeddings"]] == [
        ("glow", 6),
        ("my-style", None),
    ]
    assert [x["name"] for x in listing["loras"]] == ["detail"]
    assert listing["upscalers"][0]["name"] == "Lanczos"
    assert rows["sub/tiny"]["family"].startswith("SD1")
    import hashlib

    digest = hashlib.sha256((ckpts / "tiny.safetensors").read_bytes()).hexdigest()
    assert rows["sub/tiny"]["hash"] == digest[:10]
    assert rows["tiny-diffusers"]["kind"] == "diffusers"
    table = sdtui(env, "models")
    assert "sub/tiny" in table.stdout and digest[:10] in table.stdout
    assert "glow (6 vectors), my-style" in table.stdout and "detail" in table.stdout


def _models(tmp_path: Path) -> Path:
    d = tmp_path / "home" / "models" / "Stable-diffusion"
    d.mkdir(parents=True, exist_ok=True)
    return d


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/sdtui-pwned-by-test",))


def _bad_checkpoint(kind: str, folder: Path, demo) -> Path:
    if kind == "truncated":
        p = folder / "broken.safetensors"
        data = demo.safetensors.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        p = folder / "page.safetensors"
        p.write_text("<html><body>404 Not Found</body></html>")
    elif kind == "evil":
        p = folder / "evil.ckpt"
        with open(p, "wb") as f:
            pickle.dump({"state_dict": _Evil()}, f)
    else:  # a valid file that is no Stable Diffusion model
        import numpy as np
        from safetensors.numpy import save_file

        p = folder / "mystery.safetensors"
        save_file({"encoder.layer.0.weight": np.zeros((4, 4), dtype=np.float32)}, str(p))
    return p


@pytest.mark.parametrize(
    "kind, words",
    [
        ("truncated", ["truncated", "re-download"]),
        ("text", ["not a safetensors file", "re-download"]),
        ("evil", ["refused", "run code"]),
        ("unknown", ["mystery.safetensors"]),
    ],
)
def test_bad_checkpoints_get_one_clear_message(env, tmp_path, demo_model, kind, words):
    marker = Path("/tmp/sdtui-pwned-by-test")
    marker.unlink(missing_ok=True)
    path = _bad_checkpoint(kind, _models(tmp_path), demo_model)
    proc = sdtui(env, "generate", "x", "--model", str(path), "--size", "64x64", "--steps", "2")
    assert_clean_failure(proc, *words, code=1)
    assert not marker.exists(), "a pickle must never run code"
    assert not list((tmp_path / "home" / "outputs").rglob("*.png"))


@pytest.mark.parametrize(
    "args, words",
    [
        (["--size", "500x512"], ["width 500", "multiple of 8", "496 or 504"]),
        (["--steps", "0"], ["steps 0", "1 to 500"]),
        (["--sampler", "Euler b"], ["unknown sampler", "Euler a"]),
        (["--size", "big"], ["WIDTHxHEIGHT"]),
    ],
)
def test_bad_values_are_refused_before_any_work(env, args, words):
    proc = sdtui(env, "generate", "--demo", "x", *args, timeout=60)
    assert_clean_failure(proc, *words, code=2)


def test_an_init_image_that_is_not_an_image(env, tmp_path):
    fake = tmp_path / "photo.png"
    fake.write_text("this is a text file")
    proc = sdtui(env, "generate", "--demo", "x", "--init-image", str(fake), timeout=60)
    assert_clean_failure(proc, "photo.png", "not an image", code=1)


def test_an_unwritable_outputs_folder(env, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = sdtui(env, "generate", "--demo", "x", "--outputs-dir", str(blocker / "out"), timeout=60)
    assert_clean_failure(proc, "outputs folder", "--outputs-dir", code=1)


def test_an_unknown_model_name_lists_what_exists(env, tmp_path, demo_model):
    shutil.copy(demo_model.safetensors, _models(tmp_path) / "real-one.safetensors")
    proc = sdtui(env, "generate", "x", "--model", "nonexistent", "--size", "64x64", "--steps", "2")
    assert_clean_failure(proc, "nonexistent", "real-one", code=1)


def test_info_on_a_file_without_parameters(env, tmp_path):
    from PIL import Image

    p = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(p)
    proc = sdtui(env, "info", str(p), timeout=60)
    assert_clean_failure(proc, "no generation parameters", code=1)


def test_upscale_lanczos_keeps_the_source_infotext(env, tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    src = tmp_path / "src.png"
    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 16x16")
    Image.new("RGB", (16, 12), "red").save(src, pnginfo=info)
    proc = sdtui(env, "upscale", str(src), "--scale", "4", "--upscaler", "Lanczos", timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = Path(proc.stdout.split()[0])
    assert "extras-images" in str(out) and Image.open(out).size == (64, 48)
    assert "Seed: 1" in read_infotext(out)


def test_an_existing_a1111_install_just_works(env, tmp_path, demo_model):
    """Its checkpoints are found by name, and our images continue its numbering and folders."""
    import datetime as dt

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    webui = tmp_path / "stable-diffusion-webui"
    (webui / "models" / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(
        demo_model.safetensors, webui / "models" / "Stable-diffusion" / "my-model.safetensors"
    )
    day = webui / "outputs" / "txt2img-images" / dt.date.today().isoformat()
    day.mkdir(parents=True)
    theirs = PngInfo()
    theirs.add_text(
        "parameters",
        "a castle\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, "
        "Seed: 123, Size: 512x512, Model hash: 2c02b20a, Model: my-model, Version: v1.10.1",
    )
    Image.new("RGB", (8, 8)).save(day / "00041-123.png", pnginfo=theirs)

    proc = sdtui(
        env,
        "generate",
        "a castle",
        "--a1111-dir",
        str(webui),
        "--model",
        "my-model",
        "--size",
        "64x64",
        "--steps",
        "2",
        "--seed",
        "5",
    )
    assert proc.returncode == 0, proc.stderr
    ours = Path(proc.stdout.split()[0])
    assert ours == day / "00042-5.png"
    assert parse_infotext(read_infotext(ours)).pairs["Model"] == "my-model"
    info = json.loads(sdtui(env, "info", str(day / "00041-123.png"), "--json").stdout)
    assert info["Sampler"] == "DPM++ 2M Karras" and info["prompt"] == "a castle"


@pytest.mark.parametrize(
    "argv, demo, model",
    [
        (["daemon", "start", "--demo"], True, None),
        (["--demo", "daemon", "start"], True, None),
        (["attach", "--model", "a.safetensors"], False, "a.safetensors"),
        (["--model", "b", "generate", "x"], False, "b"),
        (["generate", "x", "--demo", "--models-dir", "m"], True, None),
    ],
)
def test_model_and_folder_flags_count_before_or_after_the_subcommand(argv, demo, model):
    from sdtui.cli import build_parser

    args = build_parser().parse_args(argv)
    assert (bool(args.demo), args.model) == (demo, model)
    if "--models-dir" in argv:
        assert str(args.models_dir) == "m"
