"""Hires fix (txt2img) on the demo model: sizes, A1111 infotext keys, progress, and that the
second pass really samples (it is not a plain upscale)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from engine_helpers import demo_session, run_job
from PIL import Image

from sdtui.config import Settings
from sdtui.errors import UserError
from sdtui.infotext import parse_infotext, read_infotext
from sdtui.ipc import protocol as msg
from sdtui.params import GenerationParams

BASE = dict(width=64, height=64, steps=3, seed=77, preview_every=0, prompt="a red barn")


@pytest.fixture(scope="module")
def session(demo_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("hires")
    folders = Settings(models_dir=root / "models", embeddings_dir=root / "embeddings")
    return demo_session(demo_model.safetensors, folders)


def run(session, out: Path, **kw):
    return run_job(session, GenerationParams(**{**BASE, **kw}), out)


def pixels(img: Image.Image | str | Path) -> np.ndarray:
    im = img if isinstance(img, Image.Image) else Image.open(img)
    return np.asarray(im.convert("RGB"), dtype=np.int16)


HR = dict(enable_hr=True, hr_scale=1.5, hr_denoising_strength=0.6)


@pytest.fixture(scope="module")
def first_pass(session, tmp_path_factory):
    done, _ = run(session, tmp_path_factory.mktemp("plain"))
    return Image.open(done.paths[0]).convert("RGB")


def test_latent_hires_size_infotext_and_progress(session, first_pass, tmp_path):
    done, events = run(session, tmp_path, **HR, hr_second_pass_steps=4)
    im = Image.open(done.paths[0])
    assert im.size == (96, 96)
    info = parse_infotext(read_infotext(done.paths[0]))
    pairs = info.pairs
    assert pairs["Size"] == "64x64"  # A1111 records the first pass's size
    assert pairs["Hires upscale"] == "1.5"
    assert pairs["Hires steps"] == "4"
    assert pairs["Hires upscaler"] == "Latent"
    assert pairs["Denoising strength"] == "0.6"
    # the second pass samples: far from a plain resize of the first pass's image
    resized = pixels(first_pass.resize((96, 96), Image.BILINEAR))
    assert np.abs(pixels(im) - resized).mean() > 3
    # progress: first pass 3 steps + exactly the 4 Hires steps asked, counted as one batch
    # (A1111 sd_samplers_common.setup_img2img_steps with steps given: t_enc = requested - 1,
    # and sd_samplers_kdiffusion.sample_img2img runs t_enc + 1 steps)
    progress = [e for e in events if isinstance(e, msg.Progress)]
    assert [(e.step, e.steps) for e in progress] == [(i, 7) for i in range(1, 8)]


def test_hires_reproducible_per_image_in_a_batch(session, tmp_path):
    batch, _ = run(session, tmp_path / "b", **HR, batch_size=2)
    single, _ = run(session, tmp_path / "s", **HR, seed=BASE["seed"] + 1)
    assert np.abs(pixels(batch.paths[1]) - pixels(single.paths[0])).max() <= 2
    assert np.abs(pixels(batch.paths[0]) - pixels(batch.paths[1])).mean() > 3


@pytest.mark.parametrize(
    "upscaler", ["Latent (nearest)", "Latent (bicubic antialiased)", "Lanczos"]
)
def test_other_upscalers(session, tmp_path, upscaler):
    done, _ = run(session, tmp_path, **{**HR, "hr_scale": 2.0}, hr_upscaler=upscaler)
    assert Image.open(done.paths[0]).size == (128, 128)
    assert parse_infotext(read_infotext(done.paths[0])).pairs["Hires upscaler"] == upscaler


def test_strength_zero_only_upscales(session, tmp_path):
    done, events = run(
        session, tmp_path, **{**HR, "hr_denoising_strength": 0.0}, hr_upscaler="Lanczos"
    )
    assert Image.open(done.paths[0]).size == (96, 96)
    assert max(e.step for e in events if isinstance(e, msg.Progress)) == 3


def test_unknown_upscaler_fails_before_sampling(session, tmp_path):
    from sdtui.engine.generate import run_generation
    from sdtui.engine.job import JobContext, JobControl
    from sdtui.outputs import OutputLayout

    events: list = []
    ctx = JobContext(1, events.append, JobControl(), OutputLayout(tmp_path))
    with pytest.raises(UserError, match="Unknown upscaler"):
        run_generation(
            session.loaded, session, GenerationParams(**BASE, **HR, hr_upscaler="4x-Nope"), ctx
        )
    assert not [e for e in events if isinstance(e, msg.Progress)]


def test_hires_upscaler_choices(tmp_path):
    from sdtui.extra_networks_index import hires_upscaler_choices as catalogs
    from sdtui.upscalers import hires_upscaler_choices

    choices = hires_upscaler_choices(tmp_path)
    assert choices[:2] == ["Latent", "Latent (antialiased)"]
    assert "None" in choices and "Lanczos" in choices
    assert catalogs is hires_upscaler_choices  # the TUI's catalog reads the same list


def test_latent_upscaler_names_have_one_home():
    """sdtui.upscalers holds A1111's latent modes once; the TUI's list is its names."""
    from sdtui.extra_networks_index import HIRES_LATENT_UPSCALERS
    from sdtui.upscalers import LATENT_UPSCALE_MODES, latent_mode

    assert HIRES_LATENT_UPSCALERS == tuple(LATENT_UPSCALE_MODES)
    assert HIRES_LATENT_UPSCALERS[0] == "Latent" and len(HIRES_LATENT_UPSCALERS) == 6
    assert latent_mode(" latent (Bicubic Antialiased) ") == ("bicubic", True)
    assert latent_mode("Lanczos") is None
