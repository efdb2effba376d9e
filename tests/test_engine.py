"""The generation engine on the demo model: seeds, samplers, img2img, infotext, resuming a
stopped job, and the engine worker behind the daemon (cancel, skip, a queued job removed,
switching back to a model). The daemon itself: test_daemon.py."""

from __future__ import annotations

import os
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import demo_session, run_job
from PIL import Image

from sdtui.config import Settings
from sdtui.infotext import params_from_image, parse_infotext, read_infotext
from sdtui.ipc import protocol as msg
from sdtui.params import GenerationParams
from sdtui.samplers import SAMPLER_NAMES

TINY = dict(width=64, height=64, steps=3, prompt="a black house cat", preview_every=0)


@pytest.fixture(scope="module")
def session(demo_model):
    return demo_session(demo_model.safetensors)


def run(session, params: GenerationParams, out: Path, control=None):
    return run_job(session, params, out, control)


def pixels(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_image_i_of_a_batch_equals_a_single_image_with_seed_plus_i(session, tmp_path):
    batch = GenerationParams(**TINY, seed=1000, batch_size=4)
    done, _ = run(session, batch, tmp_path / "batch")
    assert len(done.paths) == 4
    assert [parse_infotext(read_infotext(p)).pairs["Seed"] for p in done.paths] == [
        "1000",
        "1001",
        "1002",
        "1003",
    ]
    single, _ = run(session, GenerationParams(**TINY, seed=1002), tmp_path / "single")
    diff = np.abs(pixels(done.paths[2]) - pixels(single.paths[0]))
    assert diff.max() <= 2, "image 3 of the batch should be reproducible alone with seed+2"
    other = np.abs(pixels(done.paths[1]) - pixels(single.paths[0]))
    assert other.mean() > 5, "different seeds must give different images"


def test_batch_count_continues_the_seeds_and_writes_a_grid(session, tmp_path):
    done, events = run(
        session, GenerationParams(**TINY, seed=7, batch_size=2, batch_count=2), tmp_path
    )
    seeds = [int(parse_infotext(read_infotext(p)).pairs["Seed"]) for p in done.paths]
    assert seeds == [7, 8, 9, 10]
    grids = [e for e in events if isinstance(e, msg.ImageSaved) and e.is_grid]
    assert len(grids) == 1 and "txt2img-grids" in grids[0].path
    assert Image.open(grids[0].path).size == (128, 128)
    names = [Path(p).name for p in done.paths]
    assert names == ["00000-7.png", "00001-8.png", "00002-9.png", "00003-10.png"]


def test_random_seed_is_drawn_once_and_recorded(session, tmp_path):
    done, _ = run(session, GenerationParams(**TINY, seed=-1, batch_size=2), tmp_path)
    s0, s1 = (int(parse_infotext(read_infotext(p)).pairs["Seed"]) for p in done.paths)
    assert s0 >= 0 and s1 == s0 + 1


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_runs_two_steps(session, tmp_path, sampler):
    params = GenerationParams(**{**TINY, "steps": 2}, sampler=sampler, seed=3)
    done, events = run(session, params, tmp_path)
    assert len(done.paths) == 1
    info = parse_infotext(read_infotext(done.paths[0]))
    assert info.pairs["Sampler"] == sampler
    progress = [e for e in events if isinstance(e, msg.Progress)]
    assert progress and progress[-1].step == progress[-1].steps


@pytest.mark.parametrize("schedule", ["Karras", "Exponential", "SGM Uniform"])
def test_schedule_types_change_the_image(session, tmp_path, schedule):
    base, _ = run(
        session,
        GenerationParams(**TINY, sampler="DPM++ 2M", schedule_type="Normal", seed=4),
        tmp_path / "a",
    )
    other, _ = run(
        session,
        GenerationParams(**TINY, sampler="DPM++ 2M", schedule_type=schedule, seed=4),
        tmp_path / "b",
    )
    assert parse_infotext(read_infotext(other.paths[0])).pairs["Schedule type"] == schedule
    # the random demo UNet predicts little noise, so schedules move its picture only a little
    assert np.abs(pixels(base.paths[0]) - pixels(other.paths[0])).mean() > 0.2


def test_old_sampler_names_carry_their_schedule(session, tmp_path):
    done, _ = run(session, GenerationParams(**TINY, sampler="DPM++ 2M Karras", seed=5), tmp_path)
    pairs = parse_infotext(read_infotext(done.paths[0])).pairs
    assert (pairs["Sampler"], pairs["Schedule type"]) == ("DPM++ 2M", "Karras")


def test_sampling_keeps_the_checkpoint_prediction_type_and_betas():
    from sdtui.engine.samplers import _ldm_alphas_cumprod
    from sdtui.engine.sampling import Denoiser

    base = {
        "_class_name": "DDIMScheduler",
        "beta_start": 0.00085,
        "beta_end": 0.02,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "steps_offset": 1,
    }
    unet = types.SimpleNamespace(
        dtype=torch.float32, config=types.SimpleNamespace(addition_embed_type=None)
    )
    d = Denoiser(
        unet,
        None,
        7.0,
        scheduler_config=base,
        alphas_cumprod=torch.zeros(1000),
        device=torch.device("cpu"),
        size=(64, 64),
    )
    assert d.v
    torch.testing.assert_close(
        d.alphas_cumprod, _ldm_alphas_cumprod(base, torch.zeros(1000)).float()
    )
    betas = 1 - d.alphas_cumprod[-1] / d.alphas_cumprod[-2]
    assert float(betas) == pytest.approx(0.02, rel=1e-3)  # the checkpoint's beta_end


def test_infotext_of_a_generated_image_parses_back_to_the_same_params(session, tmp_path):
    params = GenerationParams(
        **{**TINY, "prompt": "a cat, (sitting:1.2)\non a chair"},
        negative_prompt="blurry, low quality",
        seed=42,
        cfg_scale=6.5,
        sampler="DPM++ 2M",
        schedule_type="Karras",
        clip_skip=2,
        subseed=9,
        subseed_strength=0.25,
    )
    done, _ = run(session, params, tmp_path)
    back = params_from_image(done.paths[0])
    for field in (
        "prompt",
        "negative_prompt",
        "steps",
        "sampler",
        "schedule_type",
        "cfg_scale",
        "seed",
        "width",
        "height",
        "clip_skip",
        "subseed",
        "subseed_strength",
    ):
        assert getattr(back, field) == getattr(params, field), field
    assert back.model == "sdtui-demo"
    assert parse_infotext(read_infotext(done.paths[0])).pairs["Model hash"] == "0123456789"


def test_variation_strength_moves_the_image_towards_the_variation_seed(session, tmp_path):
    a, _ = run(session, GenerationParams(**TINY, seed=11), tmp_path / "a")
    b, _ = run(
        session, GenerationParams(**TINY, seed=11, subseed=12, subseed_strength=0.3), tmp_path / "b"
    )
    c, _ = run(
        session, GenerationParams(**TINY, seed=11, subseed=12, subseed_strength=0.9), tmp_path / "c"
    )
    d_small = np.abs(pixels(a.paths[0]) - pixels(b.paths[0])).mean()
    d_large = np.abs(pixels(a.paths[0]) - pixels(c.paths[0])).mean()
    assert 0 < d_small < d_large


def _gradient(path: Path, size=(64, 64)) -> Path:
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None].repeat(w, 1)
    Image.fromarray(np.stack([x, y, 255 - x], axis=-1)).save(path)
    return path


def test_lower_denoise_changes_the_init_image_less(session, tmp_path):
    from sdtui.engine.job import JobContext, JobControl
    from sdtui.engine.latents import decode_latents, encode_images

    init = _gradient(tmp_path / "init.png")
    # the demo's VAE has random weights: compare with the init image as it comes back
    # through that VAE, which is where denoise 0 would end
    with Image.open(init) as im:
        latents = encode_images(session.txt2img, [im.convert("RGB")], [1])
    ctx = JobContext(0, lambda e: None, JobControl(), None)
    kept = np.asarray(decode_latents(session.txt2img, latents, ctx)[0], dtype=np.int16)
    distances = []
    for strength in (0.2, 0.9):
        params = GenerationParams(
            **{**TINY, "steps": 10}, seed=1, init_image=str(init), denoising_strength=strength
        )
        done, _ = run(session, params, tmp_path / f"d{strength}")
        assert "img2img-images" in done.paths[0]
        distances.append(np.abs(pixels(done.paths[0]) - kept).mean())
        pairs = parse_infotext(read_infotext(done.paths[0])).pairs
        assert pairs["Denoising strength"] == str(strength)
    assert distances[0] < distances[1]


@pytest.mark.parametrize("mode", ["just resize", "crop and resize", "resize and fill"])
def test_img2img_resize_modes_give_the_requested_size(session, tmp_path, mode):
    init = _gradient(tmp_path / "init.png", (64, 64))
    params = GenerationParams(
        **{**TINY, "width": 128, "height": 64}, seed=1, init_image=str(init), resize_mode=mode
    )
    done, _ = run(session, params, tmp_path)
    assert Image.open(done.paths[0]).size == (128, 64)


def test_resize_modes_treat_the_aspect_ratio_like_a1111():
    from sdtui.engine.generate import resize_image

    tall = Image.new("RGB", (50, 100), "red")
    tall.paste(Image.new("RGB", (50, 10), "blue"), (0, 0))  # a blue band at the top
    cropped = resize_image(tall, 100, 100, "crop and resize")
    assert cropped.size == (100, 100) and cropped.getpixel((50, 2)) != (0, 0, 255)  # cropped away
    filled = resize_image(tall, 100, 100, "resize and fill")
    assert filled.size == (100, 100) and filled.getpixel((50, 2))[2] > 200  # kept, full height


def test_previews_arrive_every_n_steps_as_small_pngs(session, tmp_path):
    done, events = run(
        session, GenerationParams(**{**TINY, "steps": 6, "preview_every": 2}, seed=1), tmp_path
    )
    previews = [e for e in events if isinstance(e, msg.Preview)]
    assert [p.step for p in previews] == [2, 4]
    im = Image.open(__import__("io").BytesIO(previews[0].png))
    assert im.size == (8, 8)  # 1/8 of 64x64


def test_previews_are_capped_per_second_when_asked(session, tmp_path):
    """The TUI asks for no more previews than it draws: each one waits for the GPU."""
    params = GenerationParams(
        **{**TINY, "steps": 6, "preview_every": 1, "preview_interval": 3600.0}, seed=1
    )
    _, events = run(session, params, tmp_path)
    assert [e.step for e in events if isinstance(e, msg.Preview)] == [1]


def test_cancel_from_the_step_callback_keeps_finished_images(session, tmp_path):
    from sdtui.engine.job import JobControl

    control = JobControl()
    params = GenerationParams(**TINY, seed=1, batch_count=3)
    events: list = []

    def emit(e):
        events.append(e)
        if isinstance(e, msg.ImageSaved):
            control.cancel.set()

    from sdtui.engine.generate import run_generation
    from sdtui.engine.job import JobContext
    from sdtui.outputs import OutputLayout

    ctx = JobContext(1, emit, control, OutputLayout(tmp_path), "sdtui-demo", None, "SD1")
    done = run_generation(session.loaded, session, params, ctx)
    assert done.cancelled and len(done.paths) == 1 and Path(done.paths[0]).exists()
    assert not list(tmp_path.glob("txt2img-grids/*/*.png"))


# -- resuming a job that was stopped (the daemon died, a worker crashed) ----------------------


def test_a_restarted_job_makes_only_the_missing_images_with_their_seeds(session, tmp_path):
    from sdtui.engine.generate import run_generation
    from sdtui.engine.job import JobContext, JobControl
    from sdtui.outputs import OutputLayout

    params = GenerationParams(**TINY, seed=40, batch_size=2, batch_count=2)
    full, _ = run(session, params, tmp_path / "full")
    # the first run saved image 0 and image 2 before it stopped
    done = {0: full.paths[0], 2: full.paths[2]}
    events: list = []
    ctx = JobContext(
        1,
        events.append,
        JobControl(),
        OutputLayout(tmp_path / "resumed"),
        "sdtui-demo",
        None,
        "SD1",
        done=done,
    )
    resumed = run_generation(session.loaded, session, params, ctx)
    made = [e for e in events if isinstance(e, msg.ImageSaved) and not e.is_grid]
    assert [(e.index, e.seed) for e in made] == [(1, 41), (3, 43)]
    for e in made:  # the same pictures an unbroken run made
        assert np.abs(pixels(e.path) - pixels(full.paths[e.index])).max() <= 2
    assert list(resumed.paths) == [full.paths[0], made[0].path, full.paths[2], made[1].path]
    [grid] = [e for e in events if isinstance(e, msg.ImageSaved) and e.is_grid]
    assert Image.open(grid.path).size == (128, 128)  # all four, the earlier ones read back
    again: list = []
    ctx = JobContext(
        2,
        again.append,
        JobControl(),
        OutputLayout(tmp_path / "again"),
        "sdtui-demo",
        None,
        "SD1",
        done={**done, 1: made[0].path, 3: made[1].path, -1: grid.path},
    )
    run_generation(session.loaded, session, params, ctx)
    assert not [e for e in again if isinstance(e, msg.ImageSaved)], (
        "nothing is made twice, grid included"
    )


# -- the engine worker behind the daemon -------------------------------------------------------


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs")


@pytest.fixture
def host(settings, attach):
    return attach(settings)


def _until(host, predicate, timeout=120.0):
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in host.poll(timeout=0.1):
            seen.append(e)
            if predicate(e):
                return e, seen
    raise AssertionError(f"timed out; saw {[type(e).__name__ for e in seen]}")


def test_engine_process_cancel_keeps_images_and_skip_drops_a_batch(host):
    job = host.submit(GenerationParams(**{**TINY, "steps": 40}, seed=1, batch_count=4))
    _until(host, lambda e: isinstance(e, msg.ImageSaved) and e.job_id == job)
    host.cancel(job)
    done, _ = _until(host, lambda e: isinstance(e, msg.JobDone) and e.job_id == job)
    assert done.cancelled and 1 <= len(done.paths) < 4
    assert all(Path(p).exists() for p in done.paths)

    job2 = host.submit(GenerationParams(**{**TINY, "steps": 40}, seed=100, batch_count=2))
    _until(host, lambda e: isinstance(e, msg.Progress) and e.job_id == job2 and e.batch_index == 0)
    host.skip()
    done2, _ = _until(host, lambda e: isinstance(e, msg.JobDone) and e.job_id == job2)
    assert not done2.cancelled and len(done2.paths) == 1
    assert done2.paths[0].endswith("-101.png"), "the skipped first image is dropped, seed+1 kept"


def test_a_queued_job_can_be_removed(host):
    first = host.submit(GenerationParams(**{**TINY, "steps": 30}, seed=1, batch_count=2))
    second = host.submit(GenerationParams(**TINY, seed=2))
    host.cancel(second)
    removed, _ = _until(host, lambda e: isinstance(e, msg.JobDone) and e.job_id == second)
    assert removed.cancelled and removed.paths == ()
    done, _ = _until(host, lambda e: isinstance(e, msg.JobDone) and e.job_id == first)
    assert len(done.paths) == 2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False


def test_switching_back_to_a_recent_model_comes_from_ram(host, demo_model):
    _until(host, lambda e: isinstance(e, msg.ModelLoaded))  # the demo single file
    host.load_model(str(demo_model.folder))
    first, _ = _until(
        host, lambda e: isinstance(e, msg.ModelLoaded) and e.path == str(demo_model.folder)
    )
    host.load_model(str(demo_model.safetensors))
    back, seen = _until(
        host, lambda e: isinstance(e, msg.ModelLoaded) and e.path == str(demo_model.safetensors)
    )
    assert any(isinstance(e, msg.Log) and "from RAM" in e.text for e in seen)
    assert back.seconds < 1.0
    job = host.submit(GenerationParams(**TINY, seed=3))
    done, _ = _until(host, lambda e: isinstance(e, msg.JobDone) and e.job_id == job)
    assert len(done.paths) == 1
