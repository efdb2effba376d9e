"""A1111's k-diffusion samplers on Flux.1 / SD3.5, as Forge runs them (sdtui.engine.flow_samplers).

The plumbing is checked against diffusers itself: k-diffusion's Euler through the scheduler
stand-in gives diffusers' FlowMatchEulerDiscreteScheduler's latents (txt2img and img2img, Flux
and SD3.5). The other samplers run real jobs on the tiny random-weight models: their model
call counts, per-image noise (an image is the same alone or in a batch), infotext, and a
stopped job's sampler thread ending.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import test_dit_img2img
import torch
from test_dit_models import H, W, job, pixel_diff

from sdtui.engine import ksampling
from sdtui.engine.dit import check_params, make_flow_sampler, pipeline_view
from sdtui.engine.flow_samplers import FLOW_SAMPLERS, call_sigmas
from sdtui.engine.job import JobControl
from sdtui.errors import UserError
from sdtui.infotext import parse_infotext, read_infotext
from sdtui.ipc import protocol as msg
from sdtui.model_family import ModelFamily
from sdtui.params import GenerationParams

flux_session = test_dit_img2img.flux_session
sd35_session = test_dit_img2img.sd35_session
init_png = test_dit_img2img.init_png

NAMES = test_dit_img2img.DIT_NAMES


def _params(**kw: Any) -> GenerationParams:
    return test_dit_img2img.dit_params(
        **{"negative_prompt": "blurry", "steps": 4, "sampler": "DPM++ 2M", **kw}
    )


def _call(pipe: Any, flux: bool, seed: int, **kw: Any) -> dict[str, Any]:
    call = dict(
        prompt="a red fox",
        num_inference_steps=4,
        width=W,
        height=H,
        generator=[torch.Generator().manual_seed(seed)],
        output_type="latent",
        max_sequence_length=256,
        guidance_scale=3.5 if flux else 4.5,
    )
    if not flux:
        call["negative_prompt"] = "blurry"
    return call | kw


def test_the_sigmas_each_sampler_asks_for() -> None:
    """The dry run's model calls: one a step, the second-order samplers two a step but one
    on the last (an Euler step to sigma 0), as sdtui.engine.ksampling.model_calls counts."""
    sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    assert call_sigmas("Euler", sigmas) == [1.0, 0.75, 0.5, 0.25]
    assert call_sigmas("Heun", sigmas) == [1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25]
    dpm2 = call_sigmas("DPM2", sigmas)
    assert len(dpm2) == 7 and dpm2[1] == pytest.approx((1.0 * 0.75) ** 0.5)  # log midpoint
    for name in FLOW_SAMPLERS:
        assert len(call_sigmas(name, sigmas)) == ksampling.model_calls(name, 4), name


@pytest.mark.parametrize("which", ["flux", "sd35"])
@pytest.mark.parametrize("img2img", [False, True], ids=["txt2img", "img2img"])
def test_k_diffusion_euler_through_the_stand_in_is_diffusers_euler(
    which: str, img2img: bool, request: pytest.FixtureRequest, init_png: Path
) -> None:
    """k-diffusion's Euler over the flow sigmas, with denoised = x - sigma * v, is diffusers'
    flow-matching Euler step: the same latents through the stand-in as through diffusers'
    scheduler, so the pipeline, the schedule, img2img's noising and Flux's packing are wired
    right for every other sampler too."""
    from sdtui.engine.dit import img2img_strength
    from sdtui.engine.generate import load_init_image

    session = request.getfixturevalue(f"{which}_session")
    pipe, flux = session.txt2img, which == "flux"
    extra: dict[str, Any] = {}
    start = 0
    if img2img:
        p = _params(init_image=str(init_png), denoising_strength=0.5, steps=4)
        run, strength = img2img_strength(p)
        start = p.steps - run
        extra = dict(image=[load_init_image(str(init_png), W, H, "just resize")], strength=strength)
    with torch.inference_mode():
        reference = pipeline_view(pipe, img2img)(**_call(pipe, flux, 7, **extra)).images
        stand_in = make_flow_sampler(pipe, "Euler", _params(), flux, start)
        stand_in.generators, stand_in.seeds = [torch.Generator().manual_seed(99)], [99]
        view = pipeline_view(pipe, img2img, stand_in)
        got = view(**_call(pipe, flux, 7, **extra)).images
        stand_in.close()
    assert len(stand_in.timesteps) == (3 if img2img else 4)  # img2img: Forge's t_enc + 1
    assert got.shape == reference.shape
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("which", ["flux", "sd35"])
@pytest.mark.parametrize("sampler", [s for s in FLOW_SAMPLERS if s != "Euler"])
def test_every_sampler_runs_a_job_and_says_so(
    which: str, sampler: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    session = request.getfixturevalue(f"{which}_session")
    params = _params(sampler=sampler, steps=3)
    done, events = job(session, params, tmp_path / "k", NAMES[which])
    calls = ksampling.model_calls(sampler, 3)
    started = next(e for e in events if isinstance(e, msg.JobStarted))
    assert started.steps_total == calls
    assert [e.step for e in events if isinstance(e, msg.Progress)] == list(range(1, calls + 1))
    info = read_infotext(done.paths[0])
    assert info is not None
    assert parse_infotext(info).pairs["Sampler"] == sampler
    assert "Schedule type: Simple" in info
    euler, _ = job(session, params.replace(sampler="Euler"), tmp_path / "e", NAMES[which])
    assert pixel_diff(done.paths[0], euler.paths[0]) > 0  # another sampler, another picture
    assert not [t for t in threading.enumerate() if t.name == "sdtui-flow-sampler"]


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE"])
def test_an_image_is_the_same_alone_or_in_a_batch(
    sampler: str, flux_session: Any, tmp_path: Path
) -> None:
    """Step noise is each image's own (its generator after the initial draw, or its own
    Brownian tree), as A1111 draws it: seed 43 alone is image 2 of the batch 42, 43."""
    params = _params(sampler=sampler, steps=3, batch_size=2)
    batch, _ = job(flux_session, params, tmp_path / "batch", NAMES["flux"])
    alone, _ = job(flux_session, params.replace(seed=43, batch_size=1), tmp_path / "one", "x")
    assert pixel_diff(batch.paths[1], alone.paths[0]) == 0
    again, _ = job(flux_session, params, tmp_path / "again", NAMES["flux"])
    assert pixel_diff(batch.paths[0], again.paths[0]) == 0  # same seed, same picture
    assert pixel_diff(batch.paths[0], batch.paths[1]) > 0


def test_img2img_with_another_sampler(sd35_session: Any, init_png: Path, tmp_path: Path) -> None:
    """Forge's step count holds: 4 steps at denoise 0.5 run the schedule's last 3, Heun
    calling the model 2 * 3 - 1 times."""
    params = _params(sampler="Heun", init_image=str(init_png), denoising_strength=0.5)
    done, events = job(sd35_session, params, tmp_path / "i2i", NAMES["sd35"])
    assert next(e for e in events if isinstance(e, msg.JobStarted)).steps_total == 5
    info = read_infotext(done.paths[0])
    assert info is not None and "Sampler: Heun" in info and "Denoising strength: 0.5" in info


def test_a_stopped_job_leaves_no_sampler_thread(flux_session: Any, tmp_path: Path) -> None:
    control = JobControl()
    control.cancel.set()  # read after the first model call: the sampler thread is mid-run
    done, _ = job(
        flux_session, _params(sampler="DPM++ SDE"), tmp_path / "c", NAMES["flux"], control
    )
    assert done.cancelled and done.paths == ()
    assert not [t for t in threading.enumerate() if t.name == "sdtui-flow-sampler"]
    # and the next job on the same model runs
    after, _ = job(flux_session, _params(sampler="DPM++ SDE"), tmp_path / "n", NAMES["flux"])
    assert len(after.paths) == 1


def test_samplers_a_flow_model_has_not_are_refused_with_the_list() -> None:
    flux = ModelFamily("Flux", "flux1-dev", variant="dev")
    for name in ("DDIM", "PLMS", "UniPC"):
        with pytest.raises(UserError, match=f"{name} works in SD's timestep space") as e:
            check_params(_params(sampler=name), flux)
        assert "Euler a, Euler, LMS, Heun" in str(e.value) and "DPM++ 2M SDE" in str(e.value)
