"""A1111's variation seed on Flux.1 / SD3.5: the seed's first noise slerped toward the
variation seed's (sdtui.engine.latents.make_noise, ImageRNG.first), in every pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import test_dit_img2img
import torch
from PIL import Image
from test_dit_models import H, W, job, pixel_diff

from sdtui.infotext import parse_infotext, read_infotext
from sdtui.params import GenerationParams

flux_session = test_dit_img2img.flux_session
sd35_session = test_dit_img2img.sd35_session
init_png = test_dit_img2img.init_png

NAMES = test_dit_img2img.DIT_NAMES


def _params(**kw: Any) -> GenerationParams:
    return test_dit_img2img.dit_params(**{"steps": 3, "subseed": 7, **kw})


@pytest.mark.parametrize("which", ["flux", "sd35"])
def test_strength_1_is_the_variation_seeds_own_picture(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """slerp(1, noise, subnoise) is the subnoise: seed 42 at variation 7, strength 1, is
    seed 7's picture (and the noise handed to the pipeline is the one it would draw)."""
    session = request.getfixturevalue(f"{which}_session")
    varied, _ = job(session, _params(subseed_strength=1.0), tmp_path / "v", NAMES[which])
    seven, _ = job(session, _params(seed=7), tmp_path / "s", NAMES[which])
    assert pixel_diff(varied.paths[0], seven.paths[0]) == 0


def test_a_batch_varies_the_variation_seed_and_says_so(flux_session: Any, tmp_path: Path) -> None:
    """A1111's all_seeds / all_subseeds with a variation: every image seed 42, the
    variation seeds 7, 8; image 2 is the same alone; step noise (Euler a) stays per image."""
    params = _params(subseed_strength=0.5, batch_size=2, sampler="Euler a")
    batch, _ = job(flux_session, params, tmp_path / "b", NAMES["flux"])
    plain, _ = job(flux_session, _params(sampler="Euler a"), tmp_path / "p", NAMES["flux"])
    assert pixel_diff(batch.paths[0], plain.paths[0]) > 0
    pairs = [parse_infotext(read_infotext(p) or "").pairs for p in batch.paths]
    assert [(x["Seed"], x["Variation seed"], x["Variation seed strength"]) for x in pairs] == [
        ("42", "7", "0.5"),
        ("42", "8", "0.5"),
    ]
    alone, _ = job(flux_session, params.replace(subseed=8, batch_size=1), tmp_path / "a", "x")
    # (the latents agree to 1e-6: batched CPU matmuls round their last bits differently, and
    # Euler a's step noise can carry that across a grey level)
    assert pixel_diff(batch.paths[1], alone.paths[0]) <= 1


@pytest.mark.parametrize("which", ["flux", "sd35"])
def test_img2img_and_hires_take_the_variation_too(
    which: str, request: pytest.FixtureRequest, init_png: Path, tmp_path: Path
) -> None:
    session = request.getfixturevalue(f"{which}_session")
    i2i = _params(init_image=str(init_png), denoising_strength=0.6)
    plain, _ = job(session, i2i, tmp_path / "p", NAMES[which])
    varied, _ = job(session, i2i.replace(subseed_strength=0.8), tmp_path / "v", NAMES[which])
    assert pixel_diff(plain.paths[0], varied.paths[0]) > 0
    # the pass's own noise (drawn after the VAE's sample) slerped toward the variation's: a
    # strength near 0 is the plain picture (Euler through the stand-in: a grey level at most)
    near, _ = job(session, i2i.replace(subseed_strength=1e-6), tmp_path / "n", NAMES[which])
    assert pixel_diff(plain.paths[0], near.paths[0]) <= 1
    hires = _params(enable_hr=True, hr_scale=2.0, hr_second_pass_steps=2, hr_denoising_strength=0.5)
    a, _ = job(session, hires, tmp_path / "h", NAMES[which])
    b, _ = job(session, hires.replace(subseed_strength=0.8), tmp_path / "hv", NAMES[which])
    assert pixel_diff(a.paths[0], b.paths[0]) > 0
    near, _ = job(session, hires.replace(subseed_strength=1e-6), tmp_path / "hn", NAMES[which])
    assert pixel_diff(a.paths[0], near.paths[0]) <= 1
    with Image.open(b.paths[0]) as im:
        assert im.size == (2 * W, 2 * H)


@pytest.mark.parametrize("which", ["flux", "sd35"])
def test_the_nv_rng_in_every_pass(
    which: str,
    request: pytest.FixtureRequest,
    init_png: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RNG GPU / NV (sdtui.engine.rng): txt2img starts from the seed's NV draw (GPU off a
    card draws the same), img2img's and the hires pass's noise are fresh NV draws (not the
    pipeline's CPU one), step noise continues each image's NV generator, and the infotext
    says NV as A1111 writes it (GPU: no key)."""
    from sdtui.engine import rng
    from sdtui.engine.flow_samplers import FlowKSampler

    session = request.getfixturevalue(f"{which}_session")
    name = NAMES[which]
    drawn: list[tuple[tuple[int, ...], torch.Tensor]] = []
    first_draw = FlowKSampler._first_draw

    def record(self: FlowKSampler, like: torch.Tensor) -> torch.Tensor:
        out = first_draw(self, like)
        drawn.append((self.noise_shape, out.float().cpu()))
        return out

    monkeypatch.setattr(FlowKSampler, "_first_draw", record)
    txt = _params(sampler="Euler a")
    cpu, _ = job(session, txt, tmp_path / "c", name)
    nv, _ = job(session, txt.replace(rng="NV"), tmp_path / "n", name)
    gpu, _ = job(session, txt.replace(rng="GPU"), tmp_path / "g", name)
    assert pixel_diff(cpu.paths[0], nv.paths[0]) > 0
    assert pixel_diff(nv.paths[0], gpu.paths[0]) == 0
    assert parse_infotext(read_infotext(nv.paths[0]) or "").pairs["RNG"] == "NV"
    assert "RNG" not in parse_infotext(read_infotext(gpu.paths[0]) or "").pairs
    i2i = txt.replace(init_image=str(init_png), denoising_strength=0.6)
    a, _ = job(session, i2i, tmp_path / "ic", name)
    b, _ = job(session, i2i.replace(rng="NV", batch_size=2), tmp_path / "in", name)
    alone, _ = job(session, i2i.replace(rng="NV", seed=43), tmp_path / "ia", name)
    assert pixel_diff(a.paths[0], b.paths[0]) > 0
    assert pixel_diff(b.paths[1], alone.paths[0]) <= 1
    i2i_shape, noise = drawn[-1]  # the last img2img job's: seed 43
    torch.testing.assert_close(noise[0], rng.Philox(43).randn(i2i_shape))
    drawn.clear()
    hires = _params(enable_hr=True, hr_scale=2.0, hr_second_pass_steps=2, hr_denoising_strength=0.5)
    h_cpu, _ = job(session, hires, tmp_path / "hc", name)
    h_nv, _ = job(session, hires.replace(rng="NV"), tmp_path / "hn", name)
    assert pixel_diff(h_cpu.paths[0], h_nv.paths[0]) > 0
    # the hires pass: a fresh NV generator per seed at the hires size (A1111 sample_hr_pass)
    (shape, noise), *_ = drawn
    assert shape == (i2i_shape[0], 2 * i2i_shape[1], 2 * i2i_shape[2])  # hr_scale 2
    torch.testing.assert_close(noise[0], rng.Philox(42).randn(shape))
