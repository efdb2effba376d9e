"""A1111's samplers (sdtui.engine.ksampling) and its sampling around the UNet
(sdtui.engine.sampling): the algorithms against exact solutions, the noise each image draws,
composable AND, and the model calls DDIM / PLMS make.

The algorithms follow k-diffusion's sampling.py at the commit A1111 pins (ab527a9) and
A1111's sd_samplers_timesteps_impl.py. k-diffusion itself is not installed here; instead every
sampler is run on Gaussian data, where the exact denoiser and the exact answer are known: for
data N(0, s^2) the denoiser is D(x, sigma) = x * s^2 / (s^2 + sigma^2), the probability-flow
ODE maps x at sigma_max to x * s / sqrt(s^2 + sigma_max^2) at sigma 0, and an ancestral or SDE
sampler ends with standard deviation s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine_helpers import demo_session, run_job  # noqa: E402
from PIL import Image  # noqa: E402

from sdtui.engine import ksampling  # noqa: E402
from sdtui.engine.samplers import _ldm_alphas_cumprod, a1111_sigmas  # noqa: E402
from sdtui.params import GenerationParams  # noqa: E402
from sdtui.prompt_schedule import split_and  # noqa: E402

S = 0.5  # the Gaussian data's standard deviation
SD15 = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
}


def _gauss_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s2 = sigma.view(-1, 1, 1, 1) ** 2
    return x * S**2 / (S**2 + s2)


def _sigmas(sampler: str, steps: int) -> torch.Tensor:
    ac = _ldm_alphas_cumprod(SD15, torch.zeros(1000))
    return a1111_sigmas(sampler, "Karras", steps, ac).float()


@pytest.mark.parametrize(
    "sampler, steps, tol",
    [
        ("Euler", 60, 0.03),
        ("Heun", 20, 0.02),
        ("DPM2", 20, 0.02),
        ("LMS", 30, 0.02),
        ("DPM++ 2M", 20, 0.02),
    ],
)
def test_deterministic_samplers_solve_the_ode(sampler: str, steps: int, tol: float) -> None:
    sigmas = _sigmas(sampler, steps)
    x_t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    x = x_t * sigmas[0]
    out = ksampling.SIGMA_SAMPLERS[sampler](_gauss_denoiser, x, sigmas, None)
    exact = x * S / (S**2 + sigmas[0] ** 2) ** 0.5
    assert float((out - exact).abs().max() / exact.abs().max()) < tol


@pytest.mark.parametrize("sampler", ["Euler a", "DPM2 a", "DPM++ SDE", "DPM++ 2M SDE"])
def test_stochastic_samplers_end_at_the_datas_spread(sampler: str) -> None:
    sigmas = _sigmas(sampler, 100)  # Euler a is first order: 30 steps end 12% short
    shape = (4, 32, 32)
    seeds = [1, 2, 3, 4]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    x = torch.stack([torch.randn(shape, generator=g) for g in gens]) * sigmas[0]
    if sampler in ksampling.BROWNIAN:
        noise: Any = ksampling.brownian_noise(x, sigmas, seeds)
    else:
        noise = ksampling.ImageNoise(gens, shape)
    out = ksampling.SIGMA_SAMPLERS[sampler](_gauss_denoiser, x, sigmas, noise)
    assert abs(float(out.std()) - S) < 0.06 * S
    # the same spread as the ODE's answer, but another sample: the step noise went in
    ode = x * S / (S**2 + sigmas[0] ** 2) ** 0.5
    assert float((out - ode).std()) > 0.3 * S


def test_timestep_samplers_solve_the_ode() -> None:
    ac = _ldm_alphas_cumprod(SD15, torch.zeros(1000)).float()

    # the data N(0, S^2) again, as the noise predictor of the DDPM form x = sqrt(a) x0 + sqrt(1-a) e
    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = ac[t.long()].view(-1, 1, 1, 1)
        var = a * S**2 + (1 - a)
        return x * (1 - a).sqrt() / var

    x_t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    # DDIM is first order (1.2% off at 200 steps, 4.6% at 50); PLMS fourth (0.6% at 50)
    for fn, steps, tol in ((ksampling.ddim, 200, 0.02), (ksampling.plms, 50, 0.01)):
        timesteps = ksampling.a1111_timesteps(steps)
        out = fn(eps, x_t, timesteps, ac)
        # A1111 stops at timestep 1's noise level (alphas_cumprod[timesteps[0]])
        a_end, a_start = ac[timesteps[0]], ac[timesteps[-1]]
        exact = x_t * ((a_end * S**2 + 1 - a_end) / (a_start * S**2 + 1 - a_start)) ** 0.5
        assert float((out - exact).abs().max() / exact.abs().max()) < tol

    # UniPC: from continuous t=1 (the model's last timestep, 999) to t=1/N (timestep 0)
    def eps_cont(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # t may be fractional
        lo = t.floor().long().clamp(0, 998)
        w = (t - lo).view(-1, 1, 1, 1)
        la = 0.5 * ac.log()
        a = ((la[lo] + w.flatten() * (la[lo + 1] - la[lo])) * 2).exp().view(-1, 1, 1, 1)
        return x * (1 - a).sqrt() / (a * S**2 + (1 - a))

    # UniPC's own error on A1111's time-uniform grid is first order (its last step, order 1 by
    # lower_order_final, spans most of the log-SNR range): check it shrinks, and check it
    # against diffusers' UniPCMultistepScheduler, an independent port of the same algorithm
    # (bh1, order 3, data prediction), on the integer-rounded version of that grid
    import diffusers

    a_end, a_start = ac[0], ac[999]
    exact = x_t * ((a_end * S**2 + 1 - a_end) / (a_start * S**2 + 1 - a_start)) ** 0.5
    errors = []
    for steps in (10, 20, 50):
        out = ksampling.unipc(eps_cont, x_t, torch.arange(steps), ac)
        errors.append(float((out - exact).abs().max() / exact.abs().max()))
        ref = diffusers.UniPCMultistepScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            solver_type="bh1",
            solver_order=3,
            timestep_spacing="linspace",
            final_sigmas_type="sigma_min",
        )
        ref.set_timesteps(steps)
        x = x_t.clone()
        for t in ref.timesteps:
            x = ref.step(eps_cont(x, t.float().reshape(1)), t, x).prev_sample
        assert float((x - out).abs().max() / out.abs().max()) < 1e-3, steps
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.025, errors


def test_a1111_timesteps_and_model_calls() -> None:
    # sd_samplers_timesteps.py get_timesteps: range(0, 1000, 1000 // steps) + 1
    assert ksampling.a1111_timesteps(20).tolist() == list(range(1, 1000, 50))
    # 1000 // 3 = 333: four timesteps, the last clipped to 999, so 3 steps run 3 calls
    assert ksampling.a1111_timesteps(3).tolist() == [1, 334, 667, 999]
    assert ksampling.model_calls("DDIM", 20) == 19  # len(timesteps) - 1 steps
    assert ksampling.model_calls("PLMS", 20) == 20  # and one more for the first step
    assert ksampling.model_calls("Heun", 20) == 39
    assert ksampling.model_calls("DPM++ SDE", 20) == 39
    assert ksampling.model_calls("Euler a", 20) == 20


def test_brownian_noise_is_per_image_seed() -> None:
    sigmas = _sigmas("DPM++ 2M SDE", 10)
    x = torch.zeros(2, 4, 8, 8)
    both = ksampling.brownian_noise(x, sigmas, [11, 12])
    alone = ksampling.brownian_noise(x[:1], sigmas, [11])
    a = both(sigmas[0], sigmas[1])
    torch.testing.assert_close(a[:1], alone(sigmas[0], sigmas[1]))
    assert not torch.allclose(a[0], a[1])
    # a unit-variance draw: the increment over [sigma_next, sigma] over its std
    big = ksampling.brownian_noise(torch.zeros(1, 4, 64, 64), sigmas, [5])
    assert abs(float(big(sigmas[2], sigmas[3]).std()) - 1) < 0.05


def test_image_noise_continues_each_images_generator() -> None:
    shape = (4, 8, 8)
    gens = [torch.Generator().manual_seed(s) for s in (7, 8)]
    for g in gens:
        torch.randn(shape, generator=g)  # the first draw: the image's noise
    step = ksampling.ImageNoise(gens, shape)(None, None)
    for i, s in enumerate((7, 8)):
        g = torch.Generator().manual_seed(s)
        torch.randn(shape, generator=g)
        torch.testing.assert_close(step[i], torch.randn(shape, generator=g))


# --- composable AND -----------------------------------------------------------------------


def test_split_and_reads_prompts_as_a1111() -> None:
    # prompt_parser.py get_multicond_prompt_list: re_AND splits, re_weight takes ":number"
    assert split_and("a cat AND a dog:0.5") == [("a cat", 1.0), (" a dog", 0.5)]
    assert split_and("a cat") == [("a cat", 1.0)]
    assert split_and("a cat:1.5") == [("a cat", 1.5)]  # A1111 weighs a lone prompt too
    assert split_and("a cat and a dog") == [("a cat and a dog", 1.0)]  # upper case only
    assert split_and("ANDROID") == [("ANDROID", 1.0)]  # a whole word only
    assert split_and("a AND b : -2 AND c:.5") == [("a", 1.0), (" b", -2.0), (" c", 0.5)]
    assert split_and("(red:1.2) car") == [("(red:1.2) car", 1.0)]


@pytest.fixture(scope="module")
def session(demo_model: Any) -> Any:
    return demo_session(demo_model.safetensors)


def test_and_weights_each_parts_guidance(session: Any) -> None:
    from sdtui.engine.conditioning import encode_job_conds
    from sdtui.engine.generate import make_denoiser
    from sdtui.engine.sampling import Plan

    pipe = session.txt2img
    plan = Plan("Euler", "Automatic", 4, 4, 6.0, 64, 64)
    both = encode_job_conds(pipe, "a cat AND a dog:0.5", "ugly", 4, device="cpu")
    assert [w for w, _ in both.parts] == [1.0, 0.5]
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.full((2,), 500.0)
    got = make_denoiser(session, pipe, both, plan, None).guided(x, t)

    def out(text: str) -> torch.Tensor:
        conds = encode_job_conds(pipe, text, text, 4, device="cpu")
        cond = conds.at(0)[0][0][1]
        return pipe.unet(x, t, encoder_hidden_states=cond.expand(2, -1, -1)).sample

    u, cat, dog = out("ugly"), out("a cat"), out(" a dog")
    want = u + 6.0 * (1.0 * (cat - u) + 0.5 * (dog - u))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# --- noise and model calls on the demo model -----------------------------------------------------

TINY = dict(width=64, height=64, steps=5, prompt="a red barn", seed=21, preview_every=0)


def _calls(
    session: Any, params: GenerationParams, out: Path
) -> tuple[Any, list[tuple[torch.Tensor, float]]]:
    seen: list = []

    def hook(mod: Any, args: Any, kwargs: Any) -> None:
        x = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        seen.append((x.clone(), float(torch.as_tensor(t).flatten()[0])))

    handle = session.txt2img.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        done, _ = run_job(session, params, out)
    finally:
        handle.remove()
    return done, seen


@pytest.mark.parametrize(
    "sampler, timesteps",
    [
        # 5 steps: timesteps [1, 201, 401, 601, 801]; DDIM runs 4, PLMS calls 601 twice
        ("DDIM", [801, 601, 401, 201]),
        ("PLMS", [801, 601, 601, 401, 201]),
        # UniPC: len(timesteps) = 5 steps over t = linspace(1, 1/1000, 6); the model sees
        # (t - 1/1000) * 1000; the last step has no corrector call
        ("UniPC", [999.0, 799.2, 599.4, 399.6, 199.8]),
    ],
)
def test_ddim_and_plms_call_the_model_as_a1111(
    session: Any, tmp_path: Path, sampler: str, timesteps: list
) -> None:
    done, seen = _calls(session, GenerationParams(**TINY, sampler=sampler), tmp_path)
    assert len(done.paths) == 1
    assert [t for _, t in seen] == pytest.approx(timesteps, abs=1e-3)


@pytest.mark.parametrize("strength", [0.0, 0.4])
def test_img2img_starts_from_the_seeds_first_draw(
    session: Any, tmp_path: Path, strength: float
) -> None:
    """A1111 img2img: ``noise = rng.next()`` (the first draw, with the variation seed mixed
    in), ``xi = init + noise * sigma_sched[0]`` (sd_samplers_kdiffusion.sample_img2img)."""
    from sdtui.engine.generate import encode_images, make_noise

    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (120, 60, 30)).save(init)
    params = GenerationParams(
        **{**TINY, "steps": 10},
        sampler="Euler",
        init_image=str(init),
        denoising_strength=0.5,
        subseed=99,
        subseed_strength=strength,
    )
    _, seen = _calls(session, params, tmp_path / "out")
    assert len(seen) == 6  # t_enc + 1 = int(0.5 * 10) + 1
    with Image.open(init) as im:
        latents = encode_images(session.txt2img, [im.convert("RGB")], [21])
    noise = make_noise(21, (4, 8, 8), 99 if strength else None, strength)
    ac = _ldm_alphas_cumprod(session.scheduler_config, session.txt2img.scheduler.alphas_cumprod)
    sigma = a1111_sigmas("Euler", "Automatic", 10, ac).float()[10 - 6]
    want = (latents[0] + noise * sigma) / (sigma**2 + 1) ** 0.5
    torch.testing.assert_close(seen[0][0][0], want, atol=1e-4, rtol=1e-4)


def test_hires_pass_draws_fresh_noise_at_its_size(session: Any, tmp_path: Path) -> None:
    """A1111 sample_hr_pass: a new ImageRNG at the hires size from the same seeds."""
    from sdtui.engine.generate import make_noise
    from sdtui.engine.hires import hires_noise

    p = GenerationParams(**TINY, enable_hr=True, hr_scale=1.5, hr_denoising_strength=0.5)
    got = hires_noise(p, [21, 22], [5, 6], 4)
    assert got is not None and got.shape == (2, 4, 12, 12)
    torch.testing.assert_close(got[1], make_noise(22, (4, 12, 12), None, 0.0))
    varied = hires_noise(p.__class__(**{**p.__dict__, "subseed_strength": 0.3}), [21], [5], 4)
    torch.testing.assert_close(varied[0], make_noise(21, (4, 12, 12), 5, 0.3))
    assert hires_noise(GenerationParams(**TINY), [21], [5], 4) is None


@pytest.mark.parametrize("sampler", ["DPM++ 2M SDE", "DPM++ SDE", "Euler a", "DPM2 a"])
def test_stochastic_samplers_give_image_i_of_a_batch_alone(
    session: Any, tmp_path: Path, sampler: str
) -> None:
    base = {**TINY, "steps": 3, "sampler": sampler}
    batch, _ = run_job(session, GenerationParams(**base, batch_size=2), tmp_path / "b")
    alone, _ = run_job(session, GenerationParams(**{**base, "seed": 22}), tmp_path / "a")
    a = np.asarray(Image.open(batch.paths[1]), dtype=int)
    b = np.asarray(Image.open(alone.paths[0]), dtype=int)
    assert np.abs(a - b).max() <= 1


def test_img2img_variation_and_composable_infotext_exact(session: Any, tmp_path: Path) -> None:
    """modules/processing.py create_infotext (A1111 1.9+): Steps, Sampler, Schedule type (the
    timestep samplers keep p.scheduler, "Automatic"), CFG scale, Seed, Size, Model hash,
    Model, Variation seed, Variation seed strength, Denoising strength, RNG; the prompt as
    typed, AND and prompt editing included."""
    from sdtui.infotext import read_infotext

    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (120, 60, 30)).save(init)
    prompt = "a [cat:dog:0.5] AND a hat:0.5"
    params = GenerationParams(
        **{**TINY, "prompt": prompt, "steps": 4},
        negative_prompt="ugly",
        sampler="DDIM",
        init_image=str(init),
        denoising_strength=0.5,
        subseed=9,
        subseed_strength=0.3,
        batch_size=2,
    )
    done, _ = run_job(session, params, tmp_path / "out")
    infos = [read_infotext(p).rpartition(", Version: ")[0] for p in done.paths]
    assert infos[1] == (
        f"{prompt}\nNegative prompt: ugly\n"
        "Steps: 4, Sampler: DDIM, Schedule type: Automatic, CFG scale: 7, Seed: 21, "
        "Size: 64x64, Model hash: 0123456789, Model: sdtui-demo, Variation seed: 10, "
        "Variation seed strength: 0.3, Denoising strength: 0.5, RNG: CPU"
    )
    assert "Seed: 21," in infos[0] and "Variation seed: 9," in infos[0]


def test_prompt_editing_switches_inside_the_hires_pass(session: Any, tmp_path: Path) -> None:
    """A1111 (prompt_parser with hires_steps): ``[cat:dog:1.5]`` is "cat" through the first
    pass and switches halfway through the hires pass (1.5 - 1.0 of its steps)."""
    from sdtui.engine.conditioning import encode_prompts

    pipe = session.txt2img
    states: list = []
    handle = pipe.unet.register_forward_pre_hook(
        lambda mod, args, kwargs: states.append(kwargs["encoder_hidden_states"][0].clone()),
        with_kwargs=True,
    )
    try:
        params = GenerationParams(
            **{**TINY, "prompt": "[cat:dog:1.5]", "steps": 2},
            sampler="Euler",
            enable_hr=True,
            hr_scale=1.0,
            hr_second_pass_steps=4,
            hr_denoising_strength=0.5,
        )
        done, _ = run_job(session, params, tmp_path)
    finally:
        handle.remove()
    assert len(done.paths) == 1 and len(states) == 2 + 4
    want = {
        t: encode_prompts(pipe, t, "", device="cpu")["prompt_embeds"][0] for t in ("cat", "dog")
    }
    seen = [
        "cat"
        if torch.allclose(z, want["cat"], atol=1e-5)
        else "dog"
        if torch.allclose(z, want["dog"], atol=1e-5)
        else "?"
        for z in states
    ]
    # first pass: 2 calls of "cat"; hires pass: schedule [[2, cat], [4, dog]] over calls 0..3
    assert seen == ["cat", "cat", "cat", "cat", "cat", "dog"]
