"""The k-diffusion samplers run A1111's sigma sequence (sdtui.engine.samplers.a1111_sigmas).

References are written out here from the sources A1111 runs, in float64 numpy:
- crowsonkb/k-diffusion k_diffusion/external.py (commit 0941acb7): DiscreteSchedule
  (sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5, get_sigmas, t_to_sigma,
  sigma_to_t with log-sigma interpolation);
- k_diffusion/sampling.py: get_sigmas_karras (rho 7), get_sigmas_exponential, append_zero;
- AUTOMATIC1111 modules/sd_schedulers.py sgm_uniform; modules/sd_samplers_kdiffusion.py
  KDiffusionSampler.get_sigmas (sigma_min/max = model_wrap.sigmas[0]/[-1],
  discard_next_to_last_sigma: steps + 1 then drop sigmas[-2]) and the samplers_k_diffusion
  table ('scheduler' option = what "Automatic" resolves to);
- SD's LDM betas: linspace(beta_start ** 0.5, beta_end ** 0.5, 1000) ** 2 in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from engine_helpers import demo_session, run_job

from sdtui.params import GenerationParams

SD15 = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
}
STEPS = 20
K_SAMPLERS = ["Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a"]
SCHEDULES = ["Normal", "Karras", "Exponential", "SGM Uniform", "Simple"]
# A1111 samplers_k_diffusion 'scheduler' options (none: model.get_sigmas = Normal)
AUTOMATIC = {
    "Euler a": "Normal",
    "Euler": "Normal",
    "LMS": "Normal",
    "Heun": "Normal",
    "DPM2": "Karras",
    "DPM2 a": "Karras",
    "DPM++ 2M": "Karras",
    "DPM++ SDE": "Karras",
    "DPM++ 2M SDE": "Exponential",
}


def _alphas_cumprod() -> np.ndarray:
    betas = (
        np.linspace(SD15["beta_start"] ** 0.5, SD15["beta_end"] ** 0.5, 1000, dtype=np.float64) ** 2
    )
    return np.cumprod(1.0 - betas)


def _model_sigmas() -> np.ndarray:
    ac = _alphas_cumprod()
    return ((1 - ac) / ac) ** 0.5


def _t_to_sigma(log_sigmas, t):
    t = np.asarray(t, dtype=np.float64)
    lo, hi, w = np.floor(t).astype(int), np.ceil(t).astype(int), t - np.floor(t)
    return np.exp((1 - w) * log_sigmas[lo] + w * log_sigmas[hi])


def _sigma_to_t(log_sigmas, sigma):
    ls = math.log(sigma)
    dists = ls - log_sigmas
    low = min(int(np.argmax(np.cumsum(dists >= 0))), len(log_sigmas) - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = min(max((lo - ls) / (lo - hi), 0.0), 1.0)
    return (1 - w) * low + w * (low + 1)


def reference(sampler: str, schedule: str, n: int) -> np.ndarray:
    sigmas = _model_sigmas()
    log_sigmas = np.log(sigmas)
    smin, smax = sigmas[0], sigmas[-1]
    discard = sampler in ("DPM2", "DPM2 a")
    if discard:
        n += 1
    if schedule == "Normal":
        out = _t_to_sigma(log_sigmas, np.linspace(len(sigmas) - 1, 0, n))
    elif schedule == "Karras":
        ramp = np.linspace(0, 1, n)
        out = (smax ** (1 / 7) + ramp * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7
    elif schedule == "Exponential":
        out = np.exp(np.linspace(math.log(smax), math.log(smin), n))
    elif schedule == "Simple":  # sd_schedulers.simple_scheduler, as written there
        ss = len(sigmas) / n
        out = np.array([sigmas[-(1 + int(x * ss))] for x in range(n)])
    else:  # sgm_uniform
        ts = np.linspace(_sigma_to_t(log_sigmas, smax), _sigma_to_t(log_sigmas, smin), n + 1)[:-1]
        out = _t_to_sigma(log_sigmas, ts)
    out = np.append(out, 0.0)
    if discard:
        out = np.concatenate([out[:-2], out[-1:]])
    return out


def test_simple_takes_every_len_over_n_th_model_sigma_from_the_top():
    """A1111's "Simple" (ComfyUI's simple): 4 steps over 1000 sigmas are the model sigmas of
    timesteps 999, 749, 499, 249, then 0; "simple" is no longer read as SGM Uniform."""
    from sdtui.engine.samplers import a1111_sigmas
    from sdtui.samplers import normalize_schedule

    sigmas = _model_sigmas()
    got = a1111_sigmas("Euler", "Simple", 4, torch.from_numpy(_alphas_cumprod())).numpy()
    np.testing.assert_allclose(got, [*sigmas[[999, 749, 499, 249]], 0.0], rtol=1e-12)
    assert normalize_schedule("simple") == "Simple"
    assert normalize_schedule("sgm_uniform") == normalize_schedule("SGMUniform") == "SGM Uniform"


def test_reference_is_the_a1111_normal_schedule_quoted_in_the_issue():
    ref = reference("Euler", "Normal", STEPS)
    assert ref[0] == pytest.approx(14.6146, rel=1e-5)
    assert ref[-2] == pytest.approx(0.0292, rel=1e-2)


CASES = [(s, sch) for s in K_SAMPLERS for sch in SCHEDULES + ["Automatic"]]


@pytest.mark.parametrize("sampler, schedule", CASES)
def test_a1111_sigmas_table(sampler, schedule):
    from sdtui.engine.samplers import a1111_sigmas

    resolved = AUTOMATIC[sampler] if schedule == "Automatic" else schedule
    ref = reference(sampler, resolved, STEPS)
    got = a1111_sigmas(sampler, schedule, STEPS, torch.from_numpy(_alphas_cumprod())).numpy()
    assert len(got) == len(ref) == STEPS + 1
    for i in (0, 1, -2):
        assert got[i] == pytest.approx(ref[i], rel=1e-5), (i, got[:3], ref[:3])
    assert got[-1] == 0
    np.testing.assert_allclose(got, ref, rtol=1e-5)


@pytest.mark.parametrize("sampler", list(AUTOMATIC))
def test_automatic_resolves_as_a1111(sampler):
    from sdtui.samplers import infotext_schedule, resolve_schedule

    assert resolve_schedule(sampler, "Automatic") == AUTOMATIC[sampler]
    assert resolve_schedule(sampler, "Karras") == "Karras"
    # A1111 writes the resolved label only where the sampler's table entry names a scheduler
    named = AUTOMATIC[sampler] != "Normal"
    assert infotext_schedule(sampler) == (AUTOMATIC[sampler] if named else "Automatic")
    assert infotext_schedule(sampler, "Exponential") == "Exponential"


@pytest.fixture(scope="module")
def session(demo_model):
    return demo_session(demo_model.safetensors)


@pytest.mark.parametrize("sampler, schedule", [("Euler a", "Karras"), ("DPM2", "Automatic")])
def test_demo_pipeline_runs_a1111_sigmas(session, tmp_path, sampler, schedule):
    seen: list[float] = []
    unet = session.txt2img.unet

    def hook(_m, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        seen.append(float(torch.as_tensor(t).flatten()[0]))

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        params = GenerationParams(
            width=64,
            height=64,
            steps=3,
            prompt="a cat",
            preview_every=0,
            seed=1,
            sampler=sampler,
            schedule_type=schedule,
        )
        done, events = run_job(session, params, tmp_path)
    finally:
        handle.remove()
    assert len(done.paths) == 1
    ref = reference(sampler, AUTOMATIC[sampler] if schedule == "Automatic" else schedule, 3)
    assert seen[0] == pytest.approx(_sigma_to_t(np.log(_model_sigmas()), ref[0]), abs=1e-2)
