"""Hires fix on Flux.1 / SD3.5 (sdtui.engine.dit_hires), on the tiny random-weight models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_dit_img2img
from PIL import Image
from test_dit_models import H, W, job, pixel_diff

from sdtui.engine import ksampling
from sdtui.errors import UserError
from sdtui.infotext import parse_infotext, read_infotext
from sdtui.ipc import protocol as msg
from sdtui.params import GenerationParams

flux_session = test_dit_img2img.flux_session
sd35_session = test_dit_img2img.sd35_session

NAMES = test_dit_img2img.DIT_NAMES


def _params(**kw: Any) -> GenerationParams:
    hires = dict(
        enable_hr=True,
        hr_scale=2.0,
        hr_upscaler="Latent",
        hr_second_pass_steps=2,
        hr_denoising_strength=0.5,
    )
    return test_dit_img2img.dit_params(**{**hires, **kw})


@pytest.mark.parametrize(
    ("which", "sampler", "upscaler"),
    [("flux", "Euler", "Latent"), ("sd35", "DPM++ 2M", "Lanczos"), ("flux", "Heun", "Nearest")],
)
def test_hires_fix_runs_both_passes_at_both_sizes(
    which: str, sampler: str, upscaler: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    session = request.getfixturevalue(f"{which}_session")
    params = _params(sampler=sampler, hr_upscaler=upscaler, batch_size=2)
    done, events = job(session, params, tmp_path / "hr", NAMES[which])
    # the first pass's 2 steps, then Hires steps 2 of a 4-step schedule (2 / 0.5)
    calls = 2 * ksampling.model_calls(sampler, 2)
    assert next(e for e in events if isinstance(e, msg.JobStarted)).steps_total == calls
    assert [e.step for e in events if isinstance(e, msg.Progress)] == list(range(1, calls + 1))
    for path in done.paths:
        with Image.open(path) as im:
            assert im.size == (2 * W, 2 * H)
        info = parse_infotext(read_infotext(path) or "").pairs
        assert info["Size"] == f"{W}x{H}"  # A1111 writes the first pass's size
        assert (info["Hires upscale"], info["Hires steps"], info["Hires upscaler"]) == (
            "2", "2", upscaler,
        )  # fmt: skip
        assert info["Denoising strength"] == "0.5" and info["Sampler"] == sampler
    # one seed alone is the same as in the batch (its own generators in both passes)
    alone, _ = job(session, params.replace(seed=43), tmp_path / "one", NAMES[which])
    assert pixel_diff(done.paths[1], alone.paths[0]) == 0


def test_the_second_pass_is_img2img_of_the_upscaled_first_pass(
    sd35_session: Any, tmp_path: Path
) -> None:
    """Hires steps 2 at denoise 0.5 run the last 2 steps of a 4-step schedule; img2img of 4
    steps at denoise 0.3 runs int(0.3 * 4) + 1 = 2 from the same place. The same seed's
    generator encodes the image and draws the noise in both, so the picture is the same."""
    hires, _ = job(sd35_session, _params(hr_upscaler="Lanczos"), tmp_path / "hr", "m")
    first, _ = job(sd35_session, _params(enable_hr=False), tmp_path / "first", "m")
    with Image.open(first.paths[0]) as im:
        big = im.convert("RGB").resize((2 * W, 2 * H), Image.Resampling.LANCZOS)
    init = tmp_path / "big.png"
    big.save(init)
    again = _params(
        enable_hr=False, init_image=str(init), denoising_strength=0.3, steps=4, width=2 * W,
        height=2 * H,
    )  # fmt: skip
    img2img, _ = job(sd35_session, again, tmp_path / "i2i", "m")
    assert pixel_diff(hires.paths[0], img2img.paths[0]) == 0
    assert pixel_diff(hires.paths[0], init) > 0  # and the pass did change the upscaled image


def test_denoise_0_keeps_the_upscaled_first_pass(flux_session: Any, tmp_path: Path) -> None:
    params = _params(hr_denoising_strength=0.0)
    done, events = job(flux_session, params, tmp_path / "zero", NAMES["flux"])
    logs = [e.text for e in events if isinstance(e, msg.Log)]
    assert any("upscaled without a second pass" in line for line in logs)
    assert next(e for e in events if isinstance(e, msg.JobStarted)).steps_total == 2
    with Image.open(done.paths[0]) as im:
        assert im.size == (2 * W, 2 * H)
        assert np.asarray(im).std() > 0  # a picture, not a blank


def test_an_unknown_hires_upscaler_is_said_before_a_step(flux_session: Any, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="4x-Nothing"):
        job(flux_session, _params(hr_upscaler="4x-Nothing"), tmp_path / "x", NAMES["flux"])


def test_restore_faces_without_weights_fails_before_a_step(
    flux_session: Any, tmp_path: Path
) -> None:
    """ "Restore faces" runs on these families after decoding, through SD's code
    (tests/test_faces.py); its weights are checked when the job starts, so a missing file is
    said before a step is spent, and nothing is saved."""
    from sdtui.family_presets import hidden_fields

    assert "restore_faces" not in hidden_fields("Flux.1 dev")  # the form shows the row
    p = _params(enable_hr=False, restore_faces=True, face_restoration_model="CodeFormer")
    with pytest.raises(UserError) as err:
        job(flux_session, p, tmp_path / "out", NAMES["flux"])
    assert "codeformer-v0.1.0.pth" in str(err.value) and "Codeformer" in str(err.value)
    assert not list((tmp_path / "out").rglob("*.png"))
