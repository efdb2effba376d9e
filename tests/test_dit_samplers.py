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


# -- schedule types ---------------------------------------------------------------------------

CONFIGS = Path(__file__).parent.parent / "sdtui" / "engine" / "assets" / "configs"


def _base(model: str) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_pretrained(CONFIGS / model, subfolder="scheduler")


# Reference values, computed by hand from the formulas they come from:
# - the flow sigma of t: Forge backend/modules/k_prediction.py flux_time_shift(mu, 1, t) =
#   e^mu / (e^mu + 1/t - 1) (Flux dev at 1024x1024: mu = 1.15, BFL's and diffusers' shift
#   for 4096 image tokens); SD3's static shift 3: 3t / (1 + 2t);
# - the table's smallest t: Forge's PredictionFlux has 10000 entries (t = 1e-4), SD3's
#   discrete flow table 1000 (t = 1e-3);
# - k-diffusion get_sigmas_karras(4, sigma_min, 1.0, rho=7) / get_sigmas_exponential.
FLUX_DEV_SIGMA_MIN = 0.0003157511457805717
FLUX_DEV_KARRAS_4 = [1.0, 0.16350484844410124, 0.014118448186809811, 0.0003157511457805719, 0.0]
FLUX_DEV_EXPONENTIAL_4 = [1.0, 0.06809496145601944, 0.004636923775696774, FLUX_DEV_SIGMA_MIN, 0]
SD3_KARRAS_4 = [1.0, 0.23273677891594388, 0.036831667025476224, 0.002994011976047908, 0.0]


def test_flow_schedules_as_forge_builds_them() -> None:
    import math

    from sdtui.engine.flow_samplers import flow_schedule

    mu = 1.15
    flux = _base("flux1-dev")
    karras = flow_schedule(flux, "Karras", "DPM++ 2M", 4, mu=mu, flux=True)
    torch.testing.assert_close(karras, torch.tensor(FLUX_DEV_KARRAS_4), rtol=1e-6, atol=0)
    exponential = flow_schedule(flux, "Exponential", "DPM++ 2M SDE", 4, mu=mu, flux=True)
    torch.testing.assert_close(
        exponential, torch.tensor(FLUX_DEV_EXPONENTIAL_4, dtype=torch.float32), rtol=1e-6, atol=0
    )
    sd3 = flow_schedule(_base("sd35-large"), "Karras", "DPM++ 2M", 4)
    torch.testing.assert_close(sd3, torch.tensor(SD3_KARRAS_4), rtol=1e-6, atol=0)
    # Simple: FluxPipeline's linspace(1, 1/n, n) shifted (Forge's simple_scheduler picks the
    # same t from its 10000-entry table), then 0
    simple = flow_schedule(flux, "Simple", "Euler", 4, mu=mu, flux=True)
    by_hand = [math.exp(mu) / (math.exp(mu) + 1 / t - 1) for t in (1.0, 0.75, 0.5, 0.25)]
    torch.testing.assert_close(simple, torch.tensor([*by_hand, 0.0]), rtol=1e-6, atol=0)
    # DPM2 / DPM2 a: one sigma more, the next-to-last dropped (discard_next_to_last_sigma)
    for schedule in ("Simple", "Karras"):
        five = flow_schedule(flux, schedule, "Euler", 5, mu=mu, flux=True)
        dpm2 = flow_schedule(flux, schedule, "DPM2", 4, mu=mu, flux=True)
        assert len(dpm2) == 5
        torch.testing.assert_close(dpm2, torch.cat([five[:-2], five[-1:]]), rtol=0, atol=0)


def test_automatic_resolves_as_forge() -> None:
    """Forge's KDiffusionSampler.get_sigmas: "Automatic" is the sampler's own 'scheduler'
    option (DPM++ 2M: karras, DPM++ 2M SDE: exponential); the samplers without one run the
    Simple schedule Forge's Flux preset picks."""
    from sdtui.samplers import resolve_flow_schedule

    assert resolve_flow_schedule("DPM++ 2M") == "Karras"
    assert resolve_flow_schedule("DPM++ SDE") == "Karras"
    assert resolve_flow_schedule("DPM2 a") == "Karras"
    assert resolve_flow_schedule("DPM++ 2M SDE") == "Exponential"
    for name in ("Euler", "Euler a", "LMS", "Heun"):
        assert resolve_flow_schedule(name) == "Simple"
    assert resolve_flow_schedule("DPM++ 2M", "Simple") == "Simple"
    assert resolve_flow_schedule("DPM++ 2M Karras") == "Karras"  # the old combined name


@pytest.mark.parametrize("which", ["flux", "sd35"])
def test_karras_runs_and_the_infotext_names_it(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Euler on Karras runs the k-diffusion stand-in (diffusers' scheduler has no Karras
    here): another picture than Euler on Simple, "Schedule type: Karras" written, and the
    PNG's infotext read back runs the same picture again."""
    session = request.getfixturevalue(f"{which}_session")
    params = _params(sampler="Euler", schedule_type="Karras", steps=3)
    done, events = job(session, params, tmp_path / "k", NAMES[which])
    assert next(e for e in events if isinstance(e, msg.JobStarted)).steps_total == 3
    info = read_infotext(done.paths[0])
    assert info is not None
    pairs = parse_infotext(info).pairs
    assert pairs["Schedule type"] == "Karras" and pairs["Sampler"] == "Euler"
    simple, _ = job(session, params.replace(schedule_type="Simple"), tmp_path / "s", "x")
    assert pixel_diff(done.paths[0], simple.paths[0]) > 0
    again, _ = job(session, params, tmp_path / "again", NAMES[which])
    assert pixel_diff(done.paths[0], again.paths[0]) == 0


def test_automatic_on_dpmpp_2m_writes_karras(flux_session: Any, tmp_path: Path) -> None:
    params = _params(sampler="DPM++ 2M", schedule_type="Automatic", steps=2)
    done, _ = job(flux_session, params, tmp_path / "a", NAMES["flux"])
    karras, _ = job(flux_session, params.replace(schedule_type="Karras"), tmp_path / "k", "x")
    info = read_infotext(done.paths[0])
    assert info is not None and "Schedule type: Karras" in info
    assert pixel_diff(done.paths[0], karras.paths[0]) == 0


def test_sd_only_schedules_are_refused_with_the_list() -> None:
    flux = ModelFamily("Flux", "flux1-dev", variant="dev")
    for name in ("Normal", "SGM Uniform"):
        with pytest.raises(UserError, match=f"the {name} schedule") as e:
            check_params(_params(schedule_type=name), flux)
        assert "Automatic, Simple, Karras, Exponential" in str(e.value)
