"""A1111's random number generator sources (sdtui.engine.rng): CPU, GPU (A1111's default)
and NV, the noise each draws, the infotext's RNG key, and jobs on the demo model.

Reference values: A1111 ``modules/rng_philox.py`` (commit 255da37) states what its NV
generator draws for seed 0, shape (3, 4), and that ``torch.randn(..., device="cuda")``
draws the same; no CUDA card exists here to draw them again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine_helpers import demo_session, run_job  # noqa: E402
from PIL import Image  # noqa: E402

from sdtui.engine import ksampling, rng  # noqa: E402
from sdtui.params import GenerationParams  # noqa: E402

# modules/rng_philox.py's docstring: Generator(seed=0).randn(shape=(3, 4))
A1111_NV_SEED0 = [
    [-0.92466259, -0.42534415, -2.6438457, 0.14518388],
    [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
    [-1.07454231, -0.36314407, -1.67105067, 2.26550497],
]


def test_nv_draws_what_a1111s_nv_generator_and_cuda_draw() -> None:
    got = rng.Philox(0).randn((3, 4))
    assert got.dtype == torch.float32 and got.shape == (3, 4)
    # A1111's numpy Box-Muller runs in float64, CUDA's in float32: they part in the 7th digit
    np.testing.assert_allclose(got.numpy(), A1111_NV_SEED0, atol=5e-7)


def test_nv_is_a_counter_generator_with_a_state_the_ladder_can_rewind() -> None:
    g = rng.Philox(0)
    assert g.initial_seed() == 0
    first = g.randn((3, 4))
    # element i of a draw depends on (offset, i) only: a shorter first draw is its head
    torch.testing.assert_close(rng.Philox(0).randn((5,)), first.flatten()[:5])
    state = g.get_state()
    second = g.randn((3, 4))
    assert not torch.equal(first, second)
    g.set_state(state)
    torch.testing.assert_close(g.randn((3, 4)), second)
    assert not torch.equal(rng.Philox(1).randn((3, 4)), first)
    # seeds past 2**32 key both halves (A1111 takes the seed as a uint64)
    assert not torch.equal(rng.Philox(2**32).randn((4,)), rng.Philox(0).randn((4,)))


def test_each_source_makes_its_generator() -> None:
    cpu = rng.create("CPU", 7)
    assert isinstance(cpu, torch.Generator) and cpu.device.type == "cpu"
    torch.testing.assert_close(
        rng.randn(cpu, (4,)), torch.randn(4, generator=torch.Generator().manual_seed(7))
    )
    # GPU off an NVIDIA card: drawn as the card would (A1111's default, for its PNGs)
    assert isinstance(rng.create("GPU", 7, "cpu"), rng.Philox)
    assert isinstance(rng.create("NV", 7, "cuda"), rng.Philox)  # NV is numpy, on any device
    assert not rng.uses_philox("GPU", "cuda") and rng.uses_philox("GPU", "mps")
    torch.testing.assert_close(rng.draw("GPU", 7, (2, 3)), rng.Philox(7).randn((2, 3)))
    assert isinstance(rng.fresh(rng.Philox(1), 9), rng.Philox)
    assert rng.fresh(cpu, 9).initial_seed() == 9
    with pytest.raises(ValueError, match="CPU, GPU, NV"):
        rng.create("cpu", 1)


def test_brownian_trees_draw_as_the_card_on_any_device() -> None:
    """A1111 on an NVIDIA card draws torchsde's Brownian nodes with the card's generator
    whatever its RNG setting; off a card sdtui draws them with the NV generator."""
    from torchsde._brownian import brownian_interval

    original = brownian_interval._randn
    with rng.card_brownian("cpu"):
        drawn = brownian_interval._randn((2, 3), torch.float32, torch.device("cpu"), 11)
        torch.testing.assert_close(drawn, rng.Philox(11).randn((2, 3)))
        # what the card would not draw this way (float64 nodes) is left to torch
        wide = brownian_interval._randn((2,), torch.float64, torch.device("cpu"), 11)
        torch.testing.assert_close(
            wide, torch.randn(2, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
        )
    assert brownian_interval._randn is original
    with rng.card_brownian("cuda"):  # on a card the card draws them itself
        assert brownian_interval._randn is original

    x = torch.zeros(1, 4, 8, 8)
    sigmas = torch.tensor([14.6, 5.0, 1.0, 0.03, 0.0])
    got = ksampling.brownian_noise(x, sigmas, [5])(sigmas[1], sigmas[2])
    with pytest.MonkeyPatch.context() as mp:  # the same trees drawing torch's CPU numbers
        mp.setattr(rng, "card_brownian", lambda device: __import__("contextlib").nullcontext())
        cpu = ksampling.brownian_noise(x, sigmas, [5])(sigmas[1], sigmas[2])
    assert not torch.allclose(got, cpu)
    assert brownian_interval._randn is original


def _pairs(p: GenerationParams) -> dict[str, object]:
    return p.infotext_pairs(seed=1, model_name="m", model_hash="abc")


def test_infotext_writes_rng_as_a1111_and_reads_its_default() -> None:
    """create_infotext: ``"RNG": opts.randn_source if opts.randn_source != "GPU" else None``;
    parse_generation_parameters: a line without RNG is GPU's (A1111_DEFAULTS)."""
    assert "RNG" not in _pairs(GenerationParams(rng="GPU"))
    keys = list(_pairs(GenerationParams(rng="NV", clip_skip=2)))
    assert keys.index("Clip skip") < keys.index("RNG") < keys.index("Version")
    assert _pairs(GenerationParams())["RNG"] == "CPU"

    def read(**pairs: str) -> tuple[GenerationParams, list[str]]:
        return GenerationParams.from_infotext_checked("a cat", "", {"Steps": "20", **pairs})

    assert read()[0].rng == "GPU"
    assert read(RNG="NV")[0].rng == "NV"
    params, problems = read(RNG="Mersenne")
    assert params.rng == "CPU" and "RNG" not in params.extra
    assert problems == ["RNG: 'Mersenne' is not one of: CPU, GPU, NV"]
    with pytest.raises(ValueError, match="RNG 'gpu' is not one of: CPU, GPU, NV"):
        GenerationParams(rng="gpu").validated()


# --- jobs on the demo model ------------------------------------------------------------------

TINY = dict(width=64, height=64, steps=4, prompt="a red barn", seed=21, preview_every=0)


@pytest.fixture(scope="module")
def session(demo_model: Any) -> Any:
    return demo_session(demo_model.safetensors)


def _pixels(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im, dtype=int)


def test_gpu_without_a_card_is_nv_and_not_cpu(session: Any, tmp_path: Path) -> None:
    base = {**TINY, "sampler": "DPM++ 2M SDE"}  # first draw and Brownian step noise
    gpu, _ = run_job(session, GenerationParams(**base, rng="GPU"), tmp_path / "g")
    nv, _ = run_job(session, GenerationParams(**base, rng="NV"), tmp_path / "n")
    cpu, _ = run_job(session, GenerationParams(**base, rng="CPU"), tmp_path / "c")
    assert np.array_equal(_pixels(gpu.paths[0]), _pixels(nv.paths[0]))
    assert np.abs(_pixels(gpu.paths[0]) - _pixels(cpu.paths[0])).max() > 10


def test_nv_txt2img_starts_from_the_seeds_nv_draw(session: Any, tmp_path: Path) -> None:
    """A1111 txt2img: ``x = rng.next() * sigmas[0]``; the UNet sees it times c_in."""
    from sdtui.engine.samplers import _ldm_alphas_cumprod, a1111_sigmas

    seen: list[torch.Tensor] = []

    def hook(mod: Any, args: Any, kwargs: Any) -> None:
        seen.append((args[0] if args else kwargs["sample"]).clone())

    handle = session.txt2img.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run_job(session, GenerationParams(**TINY, sampler="Euler", rng="NV"), tmp_path)
    finally:
        handle.remove()
    ac = _ldm_alphas_cumprod(session.scheduler_config, session.txt2img.scheduler.alphas_cumprod)
    sigma = a1111_sigmas("Euler", "Automatic", 4, ac).float()[0]
    want = rng.Philox(21).randn((4, 8, 8)) * sigma / (sigma**2 + 1) ** 0.5
    torch.testing.assert_close(seen[0][0], want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ SDE"])
def test_nv_image_i_of_a_batch_is_the_image_alone(
    session: Any, tmp_path: Path, sampler: str
) -> None:
    base = {**TINY, "steps": 3, "sampler": sampler, "rng": "NV"}
    batch, _ = run_job(session, GenerationParams(**base, batch_size=2), tmp_path / "b")
    alone, _ = run_job(session, GenerationParams(**{**base, "seed": 22}), tmp_path / "a")
    assert np.abs(_pixels(batch.paths[1]) - _pixels(alone.paths[0])).max() <= 1


def test_an_a1111_png_without_rng_runs_gpu_and_says_nothing(session: Any, tmp_path: Path) -> None:
    from sdtui.infotext import params_from_image, read_infotext

    a1111 = tmp_path / "a1111.png"
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(
        "parameters",
        "a red barn\nSteps: 4, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, "
        "Seed: 21, Size: 64x64, Model: sdtui-demo",
    )
    Image.new("RGB", (64, 64)).save(a1111, pnginfo=info)
    params = params_from_image(a1111)
    assert params.rng == "GPU"
    done, _ = run_job(session, params.replace(preview_every=0), tmp_path / "out")
    assert "RNG" not in (read_infotext(done.paths[0]) or "")
    nv, _ = run_job(session, params.replace(rng="NV", preview_every=0), tmp_path / "nv")
    assert np.array_equal(_pixels(done.paths[0]), _pixels(nv.paths[0]))


def test_the_rng_flag_reaches_the_job_and_its_help() -> None:
    from sdtui.cli import build_parser, params_from

    def parse(*flags: str) -> GenerationParams:
        return params_from(build_parser().parse_args(["generate", "a cat", *flags]))

    assert parse().rng == "CPU"
    assert parse("--rng", "GPU").rng == "GPU"
    with pytest.raises(SystemExit):
        parse("--rng", "mersenne")
