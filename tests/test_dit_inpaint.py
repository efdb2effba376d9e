"""Inpainting and outpainting on Flux.1 / SD3.5: SD's A1111 preparation (sdtui.engine.inpaint)
and A1111's latent mask blend inside the k-diffusion stand-in (sdtui.engine.flow_samplers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_dit_img2img
import torch
from PIL import Image
from test_dit_models import H, W, job, pixel_diff

from sdtui.engine.dit import make_flow_sampler, pipeline_view
from sdtui.engine.generate import load_init_image
from sdtui.engine.inpaint import latent_mask
from sdtui.infotext import parse_infotext, read_infotext
from sdtui.params import GenerationParams

flux_session = test_dit_img2img.flux_session
sd35_session = test_dit_img2img.sd35_session
init_png = test_dit_img2img.init_png

NAMES = test_dit_img2img.DIT_NAMES


@pytest.fixture(scope="module")
def mask_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """White (change) over a 32x32 square at (16, 16) of the 64x64 job."""
    mask = Image.new("L", (W, H), 0)
    mask.paste(255, (16, 16, 48, 48))
    path = tmp_path_factory.mktemp("mask") / "mask.png"
    mask.save(path)
    return path


@pytest.fixture(scope="module")
def square_png(init_png: Path) -> Path:
    """The init picture at the job's 64x64 ("Only masked" keeps the source's own size)."""
    path = init_png.with_name("square.png")
    load_init_image(str(init_png), W, H, "just resize").save(path)
    return path


def _params(init: Path, mask: Path | None, **kw: Any) -> GenerationParams:
    inpaint = dict(
        steps=4,
        init_image=str(init),
        mask=None if mask is None else str(mask),
        mask_blur=0,
        denoising_strength=0.75,
    )
    return test_dit_img2img.dit_params(**{**inpaint, **kw})


def _pixels(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize(
    ("which", "sampler", "fill", "only_masked"),
    [
        ("flux", "Euler", "original", False),
        ("sd35", "DPM++ 2M", "fill", False),
        ("flux", "Euler a", "latent noise", True),
        ("sd35", "Euler", "latent nothing", True),
    ],
)
def test_only_the_masked_area_changes(
    which: str,
    sampler: str,
    fill: str,
    only_masked: bool,
    request: pytest.FixtureRequest,
    square_png: Path,
    mask_png: Path,
    tmp_path: Path,
) -> None:
    session = request.getfixturevalue(f"{which}_session")
    params = _params(
        square_png, mask_png, sampler=sampler, inpainting_fill=fill, inpaint_full_res=only_masked
    )
    done, _ = job(session, params, tmp_path / "in", NAMES[which])
    out = _pixels(done.paths[0])
    src = _pixels(square_png)
    inside = np.zeros((H, W), dtype=bool)
    inside[16:48, 16:48] = True
    # blur 0: the original is pasted back over every unmasked pixel, exactly
    assert np.abs(out - src)[~inside].max() == 0
    assert np.abs(out - src)[inside].mean() > 5  # and the masked square was redrawn
    info = parse_infotext(read_infotext(done.paths[0]) or "").pairs
    assert info["Mask blur"] == "0" and info["Sampler"] == sampler
    # A1111 writes these only when not at their defaults
    assert info.get("Inpaint area") == ("Only masked" if only_masked else None)
    assert info.get("Masked content") == (None if fill == "original" else fill)


def test_the_latents_outside_the_mask_are_the_init_latents(
    flux_session: Any, init_png: Path
) -> None:
    """A1111's blend inside the sampler: after the last step the latents outside the latent
    mask are the init image's latents, bit for bit (the decode then sees the original)."""
    pipe = flux_session.txt2img
    mask = Image.new("L", (W, H), 0)
    mask.paste(255, (0, 0, W // 2, H))  # the left half changes
    p = _params(init_png, None)
    stand_in = make_flow_sampler(pipe, "DPM++ 2M", p, True, start=1)
    stand_in.generators, stand_in.seeds = [torch.Generator().manual_seed(5)], [5]
    factor = int(pipe.vae_scale_factor)
    stand_in.mask = latent_mask(mask, H // factor, W // factor)
    view = pipeline_view(pipe, True, stand_in)
    with torch.inference_mode():
        out = view(
            prompt="a red fox",
            image=[load_init_image(str(init_png), W, H, "just resize")],
            strength=0.7,
            num_inference_steps=4,
            width=W,
            height=H,
            guidance_scale=1.0,
            max_sequence_length=256,
            generator=[torch.Generator().manual_seed(5)],
            output_type="latent",
        ).images
    stand_in.close()
    blend = stand_in._blend  # the init latents and the mask, as the pipeline lays them out
    assert blend is not None
    keep = blend.nmask == 0
    assert keep.any() and (~keep).any()
    assert torch.equal(out.float()[keep], blend.init[keep])
    assert not torch.equal(out.float()[~keep], blend.init[~keep])


def test_a_white_mask_is_img2img(sd35_session: Any, init_png: Path, tmp_path: Path) -> None:
    """Everything masked: the blend keeps nothing of the init, so the picture is img2img's
    (k-diffusion's Euler through the stand-in against diffusers' Euler: a grey level at most)."""
    white = tmp_path / "white.png"
    Image.new("L", (W, H), 255).save(white)
    inpainted, _ = job(sd35_session, _params(init_png, white), tmp_path / "in", "m")
    plain, _ = job(sd35_session, _params(init_png, None), tmp_path / "i2i", "m")
    assert pixel_diff(inpainted.paths[0], plain.paths[0]) <= 1


def test_outpainting_grows_the_canvas(flux_session: Any, init_png: Path, tmp_path: Path) -> None:
    params = _params(init_png, None, outpaint_pixels=32, outpaint_sides="left,right")
    done, _ = job(flux_session, params, tmp_path / "out", NAMES["flux"])
    out = _pixels(done.paths[0])
    assert out.shape[:2] == (H, W + 64)
    src = np.asarray(load_init_image(str(init_png), W, H, "just resize"), dtype=np.int16)
    # the middle, away from the blurred seams, is the original
    assert np.abs(out[:, 32 + 8 : 32 + W - 8] - src[:, 8:-8]).max() == 0
    info = parse_infotext(read_infotext(done.paths[0]) or "").pairs
    assert info["Size"] == f"{W + 64}x{H}"


def test_an_outpainted_canvas_flux_cannot_take_is_said(
    flux_session: Any, init_png: Path, tmp_path: Path
) -> None:
    from sdtui.errors import UserError

    params = _params(init_png, None, outpaint_pixels=8, outpaint_sides="left")
    with pytest.raises(UserError, match="multiples of 16"):
        job(flux_session, params, tmp_path / "out", NAMES["flux"])
