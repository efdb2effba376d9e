"""Same seed, same picture as A1111: variation seeds (slerp, seeds across a batch), the
hires fix's second-pass step count and start, and the exact infotext of a job.

Reference values come from AUTOMATIC1111/stable-diffusion-webui; each test names the file
and function it follows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_helpers import demo_session, run_job

from sdtui.config import Settings
from sdtui.infotext import read_infotext
from sdtui.ipc import protocol as msg
from sdtui.params import MAX_SEED, GenerationParams

BASE = dict(width=64, height=64, steps=3, seed=77, preview_every=0, prompt="a red barn")


@pytest.fixture(scope="module")
def session(demo_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    folders = Settings(models_dir=root / "models", embeddings_dir=root / "embeddings")
    return demo_session(demo_model.safetensors, folders)


# -- variation seeds ------------------------------------------------------------------------


def _a1111_slerp(val, low, high):
    # modules/rng.py ``slerp``, verbatim (from pytorch discuss thread 32475/3)
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)

    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)

    omega = torch.acos(dot)
    so = torch.sin(omega)
    res = (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (
        torch.sin(val * omega) / so
    ).unsqueeze(1) * high
    return res


@pytest.mark.parametrize("strength", [0.05, 0.3, 0.5, 0.9, 1.0])
def test_slerp_matches_a1111(strength):
    from sdtui.engine.latents import slerp

    shape = (4, 8, 8)  # one image's (C, H, W) noise, as ImageRNG.first() slerps it
    low = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    high = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    assert torch.equal(slerp(strength, low, high), _a1111_slerp(strength, low, high))


def test_slerp_near_parallel_edge_case_is_a1111s_lerp():
    from sdtui.engine.latents import slerp

    # modules/rng.py slerp: ``if dot.mean() > 0.9995: return low * val + high * (1 - val)``
    # (note: low weighted by val). low and 2*low are parallel: 0.25*a + 0.75*2a = 1.75a
    a = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(slerp(0.25, a, 2 * a), 1.75 * a)


def test_variation_noise_is_a1111s_image_rng_first():
    from sdtui.engine.latents import make_noise

    # modules/rng.py ImageRNG.first(): subnoise = randn(subseed, noise_shape) (global torch
    # seeded with the subseed), noise = randn(seed, shape, generator=create_generator(seed)),
    # noise = slerp(self.subseed_strength, noise, subnoise); "RNG: CPU" draws on the CPU
    shape = (4, 8, 8)
    torch.manual_seed(1234)
    subnoise = torch.randn(shape)
    noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(1000))
    expected = _a1111_slerp(0.3, noise, subnoise)
    assert torch.equal(make_noise(1000, shape, 1234, 0.3), expected)
    # without a variation strength the noise is the seed's alone
    assert torch.equal(make_noise(1000, shape, 1234, 0.0), noise)


def test_seeds_across_a_batch_follow_a1111():
    from sdtui.engine.generate import image_seeds

    # modules/processing.py process_images_inner:
    #   p.all_seeds = [int(seed) + (x if p.subseed_strength == 0 else 0) for x in range(n)]
    #   p.all_subseeds = [int(subseed) + x for x in range(n)]
    plain = GenerationParams(seed=100, subseed=200)
    assert image_seeds(plain, [0, 1, 2, 3]) == ([100, 101, 102, 103], [200, 201, 202, 203])
    varied = GenerationParams(seed=100, subseed=200, subseed_strength=0.3)
    assert image_seeds(varied, [0, 1, 2, 3]) == ([100, 100, 100, 100], [200, 201, 202, 203])
    assert image_seeds(varied, [2, 3]) == ([100, 100], [202, 203])  # a restarted job's rest


def test_seed_range_check_follows_the_seed_that_advances():
    four = dict(batch_size=2, batch_count=2)
    # no variation: seed + i, so the seed must leave room for 4 images
    assert "seed" in GenerationParams(seed=MAX_SEED, **four).field_errors()
    assert "subseed" not in GenerationParams(subseed=MAX_SEED, **four).field_errors()
    # with a variation strength the seed stays, the variation seed advances
    varied = dict(four, subseed_strength=0.3)
    assert "seed" not in GenerationParams(seed=MAX_SEED, subseed=1, **varied).field_errors()
    errors = GenerationParams(seed=1, subseed=MAX_SEED, **varied).field_errors()
    assert "variation seed" in errors["subseed"] and str(MAX_SEED - 3) in errors["subseed"]
    assert GenerationParams(seed=1, subseed=MAX_SEED - 3, **varied).field_errors() == {}


def test_variation_job_seeds_names_and_infotext(session, tmp_path):
    done, events = run_job(
        session,
        GenerationParams(**BASE, subseed=500, subseed_strength=0.3, batch_size=2, batch_count=2),
        tmp_path,
    )
    # the file name's seed is the image's seed (A1111 images.save_image(..., p.seeds[i], ...))
    assert [Path(p).name for p in done.paths] == [
        "00000-77.png",
        "00001-77.png",
        "00002-77.png",
        "00003-77.png",
    ]
    infos = [_no_version(read_infotext(p)) for p in done.paths]
    # A1111 create_infotext order: Steps, Sampler, Schedule type, CFG scale, Seed, Size,
    # Model hash, Model, Variation seed, Variation seed strength, ..., RNG, extra params
    for i, info in enumerate(infos):
        assert info == (
            "a red barn\n"
            "Steps: 3, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 77, "
            "Size: 64x64, Model hash: 0123456789, Model: sdtui-demo, "
            f"Variation seed: {500 + i}, Variation seed strength: 0.3, RNG: CPU"
        )
    # the images differ: each has its own variation seed
    pix = [Path(p).read_bytes() for p in done.paths]
    assert len(set(pix)) == 4
    # the grid: infotext(use_main_prompt=True) = p.all_seeds[0], p.all_subseeds[0]
    (grid,) = [e for e in events if isinstance(e, msg.ImageSaved) and e.is_grid]
    assert _no_version(read_infotext(grid.path)) == infos[0]


# -- hires fix: steps -----------------------------------------------------------------------


def _a1111_hires_steps(hr_steps: int, first_steps: int, denoise: float) -> tuple[int, int]:
    # modules/processing.py sample_hr_pass: sample_img2img(..., steps=self.hr_second_pass_steps
    # or self.steps); modules/sd_samplers_common.py setup_img2img_steps, ``steps`` given:
    #   requested_steps = (steps or p.steps)
    #   steps = int(requested_steps / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
    #   t_enc = requested_steps - 1
    # sd_samplers_kdiffusion.py sample_img2img: sigma_sched = sigmas[steps - t_enc - 1:],
    # launch_sampling(t_enc + 1, ...): (schedule length, steps run)
    requested = hr_steps or first_steps
    steps = int(requested / min(denoise, 0.999)) if denoise > 0 else 0
    t_enc = requested - 1
    return steps, t_enc + 1


@pytest.mark.parametrize(
    "hr_steps, first_steps, denoise, schedule, run",
    [
        (10, 3, 0.7, 14, 10),
        (2, 3, 0.7, 2, 2),
        (0, 20, 0.5, 40, 20),
        (4, 3, 1.0, 4, 4),
        (5, 3, 0.3, 16, 5),
    ],
)
def test_hires_schedule_is_a1111s(hr_steps, first_steps, denoise, schedule, run):
    from sdtui.steps import hires_schedule, hires_steps

    p = GenerationParams(
        steps=first_steps,
        enable_hr=True,
        hr_second_pass_steps=hr_steps,
        hr_denoising_strength=denoise,
    )
    assert _a1111_hires_steps(hr_steps, first_steps, denoise) == (schedule, run)
    assert hires_schedule(p) == (schedule, run)
    assert hires_steps(p) == run


@pytest.mark.parametrize(
    # (0, 20, 0.5) is checked by test_hires_schedule_is_a1111s; here 8 first-pass steps keep
    # the run short
    "hr_steps, first_steps, denoise",
    [(10, 3, 0.7), (2, 3, 0.7), (0, 8, 0.5)],
)
def test_hires_second_pass_unet_calls_and_start(session, tmp_path, hr_steps, first_steps, denoise):
    calls: list[float] = []

    def count(_module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        calls.append(float(torch.as_tensor(t).flatten()[0]))

    unet = session.img2img.unet
    assert unet is session.txt2img.unet
    handle = unet.register_forward_pre_hook(count, with_kwargs=True)
    try:
        params = GenerationParams(
            **{**BASE, "steps": first_steps},
            enable_hr=True,
            hr_scale=1.0,
            hr_second_pass_steps=hr_steps,
            hr_denoising_strength=denoise,
        )
        done, _ = run_job(session, params, tmp_path)
    finally:
        handle.remove()
    assert len(done.paths) == 1
    schedule, run = _a1111_hires_steps(hr_steps, first_steps, denoise)
    # one UNet call a step (cond and uncond batched), Euler a is first order
    second = calls[first_steps:]
    assert len(calls) == first_steps + run
    assert len(second) == run
    # the second pass starts at index schedule - run of a schedule-step schedule (A1111:
    # sigmas[steps - t_enc - 1:])
    assert second == pytest.approx(_a1111_timesteps(session, schedule)[schedule - run :], abs=2e-3)


# -- infotext -------------------------------------------------------------------------------


def _no_version(info: str) -> str:
    head, sep, version = info.rpartition(", Version: ")
    assert sep and version.startswith("sdtui ")
    return head


def test_txt2img_infotext_exact(session, tmp_path):
    done, events = run_job(session, GenerationParams(**BASE, batch_size=3), tmp_path)
    infos = [_no_version(read_infotext(p)) for p in done.paths]
    # modules/processing.py create_infotext: generation_params order (None values left out)
    assert infos[0] == (
        "a red barn\n"
        "Steps: 3, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 77, "
        "Size: 64x64, Model hash: 0123456789, Model: sdtui-demo, RNG: CPU"
    )
    assert [Path(p).name for p in done.paths] == ["00000-77.png", "00001-78.png", "00002-79.png"]
    assert "Seed: 79," in infos[2]
    # the grid is saved with infotext(use_main_prompt=True): the first image's, RNG included
    (grid,) = [e for e in events if isinstance(e, msg.ImageSaved) and e.is_grid]
    assert _no_version(read_infotext(grid.path)) == infos[0]


def test_hires_infotext_exact(session, tmp_path):
    params = GenerationParams(
        **BASE,
        negative_prompt="blurry",
        enable_hr=True,
        hr_scale=1.5,
        hr_denoising_strength=0.6,
        hr_second_pass_steps=4,
    )
    done, _ = run_job(session, params, tmp_path)
    # modules/processing.py create_infotext: "Denoising strength" and "RNG" are
    # generation_params; the Hires keys are extra_generation_params (set in
    # StableDiffusionProcessingTxt2Img.init), written after "RNG" and before "Version"
    assert _no_version(read_infotext(done.paths[0])) == (
        "a red barn\nNegative prompt: blurry\n"
        "Steps: 3, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 77, "
        "Size: 64x64, Model hash: 0123456789, Model: sdtui-demo, Denoising strength: 0.6, "
        "RNG: CPU, Hires upscale: 1.5, Hires steps: 4, Hires upscaler: Latent"
    )


def test_grid_empty_cells_are_white():
    from PIL import Image

    from sdtui.outputs import image_grid

    # modules/images.py image_grid fills with opts.grid_background_color; its default in
    # modules/shared_options.py: OptionInfo("#ffffff", "Background color for image grids")
    grid = image_grid([Image.new("RGB", (4, 4), (10, 20, 30))] * 3)  # 2 rows x 2 cols
    assert grid.size == (8, 8)
    assert grid.getpixel((4, 4)) == (255, 255, 255)
    assert grid.getpixel((0, 0)) == (10, 20, 30)
    assert len(grid.getcolors()) == 2


# -- img2img step count -----------------------------------------------------------------------


def _a1111_img2img_steps(steps: int, denoise: float) -> tuple[int, int]:
    """modules/sd_samplers_common.py setup_img2img_steps (img2img_fix_steps off, the default):
    ``steps = p.steps; t_enc = int(min(p.denoising_strength, 0.999) * steps)``; then
    sd_samplers_kdiffusion.py sample_img2img: ``sigma_sched = sigmas[steps - t_enc - 1:]``,
    i.e. t_enc + 1 steps from index steps - t_enc - 1."""
    t_enc = int(min(denoise, 0.999) * steps)
    return steps, t_enc + 1


@pytest.mark.parametrize("steps, denoise", [(20, 0.75), (20, 1.0), (20, 0.0), (10, 0.5), (7, 0.3)])
def test_img2img_schedule_is_a1111s(steps, denoise):
    from sdtui.steps import img2img_schedule

    assert img2img_schedule(
        GenerationParams(steps=steps, denoising_strength=denoise, init_image="x")
    ) == (_a1111_img2img_steps(steps, denoise))
    assert _a1111_img2img_steps(20, 0.75) == (20, 16)  # the measurement: A1111 runs 16


@pytest.mark.parametrize("steps, denoise", [(8, 0.75), (5, 0.3)])
def test_img2img_unet_calls_and_start(session, tmp_path, steps, denoise):
    from PIL import Image

    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), "gray").save(init)
    calls: list[float] = []

    def count(_module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        calls.append(float(torch.as_tensor(t).flatten()[0]))

    handle = session.img2img.unet.register_forward_pre_hook(count, with_kwargs=True)
    try:
        params = GenerationParams(
            **{**BASE, "steps": steps}, init_image=str(init), denoising_strength=denoise
        )
        done, _ = run_job(session, params, tmp_path)
    finally:
        handle.remove()
    assert len(done.paths) == 1
    schedule, run = _a1111_img2img_steps(steps, denoise)
    assert len(calls) == run
    assert calls == pytest.approx(_a1111_timesteps(session, schedule)[schedule - run :], abs=2e-3)


def _a1111_timesteps(session, steps: int) -> list[float]:
    """The UNet timesteps of A1111's Euler a: k-diffusion's CompVisDenoiser.sigma_to_t of
    the sigmas (float64 here; A1111's float32 differs by less than 1e-3)."""
    from sdtui.engine.samplers import _ldm_alphas_cumprod, _model_sigmas, _sigma_to_t, a1111_sigmas

    ac = _ldm_alphas_cumprod(session.scheduler_config, session.txt2img.scheduler.alphas_cumprod)
    sigmas = a1111_sigmas("Euler a", "Automatic", steps, ac)[:-1]
    return [float(t) for t in _sigma_to_t(_model_sigmas(ac).log(), sigmas)]
