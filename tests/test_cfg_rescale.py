"""Rescaled CFG (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
Flawed", eq. 15-16; diffusers' ``rescale_noise_cfg``): the guided output is scaled back to the
text prediction's standard deviation, per image, and mixed with the plain CFG output by phi.
Checked on the demo model's real UNet."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from sdtui.engine.conditioning import encode_job_conds  # noqa: E402
from sdtui.engine.models import load_pipeline  # noqa: E402
from sdtui.engine.sampling import Denoiser  # noqa: E402
from sdtui.infotext import parse_infotext  # noqa: E402
from sdtui.params import GenerationParams, ParamError  # noqa: E402

PROMPT = "a lighthouse at dusk"


@pytest.fixture(scope="module")
def pipe(demo_model: Any) -> Any:
    return load_pipeline(demo_model.safetensors).pipe


def _denoiser(pipe: Any, cfg: float, phi: float) -> Denoiser:
    conds = encode_job_conds(pipe, PROMPT, "blurry", 4, device="cpu")
    return Denoiser(
        pipe.unet,
        conds,
        cfg,
        scheduler_config=dict(pipe.scheduler.config),
        alphas_cumprod=pipe.scheduler.alphas_cumprod,
        device=torch.device("cpu"),
        size=(64, 64),
        cfg_rescale=phi,
    )


def test_rescaled_cfg_follows_the_papers_formula(pipe: Any) -> None:
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.full((2,), 500.0)
    with torch.inference_mode():
        plain = _denoiser(pipe, 7.0, 0.0).guided(x, t)
        text = _denoiser(pipe, 1.0, 0.0).guided(x, t)  # cfg 1: the text prediction alone
        full = _denoiser(pipe, 7.0, 1.0).guided(x, t)
        mixed = _denoiser(pipe, 7.0, 0.7).guided(x, t)
    dims = [1, 2, 3]
    # phi = 1: the guided output, scaled per image to the text prediction's spread
    ratio = text.std(dim=dims, keepdim=True) / plain.std(dim=dims, keepdim=True)
    torch.testing.assert_close(full, plain * ratio)
    torch.testing.assert_close(full.std(dim=dims), text.std(dim=dims))
    assert not torch.allclose(full, plain)  # CFG 7 did widen the spread
    # phi = 0.7: 0.7 of the rescaled output and 0.3 of plain CFG
    torch.testing.assert_close(mixed, 0.7 * full + 0.3 * plain)


def test_rescaled_cfg_off_is_plain_cfg(pipe: Any) -> None:
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([250.0])
    with torch.inference_mode():
        default = Denoiser(
            pipe.unet,
            encode_job_conds(pipe, PROMPT, "blurry", 4, device="cpu"),
            7.0,
            scheduler_config=dict(pipe.scheduler.config),
            alphas_cumprod=pipe.scheduler.alphas_cumprod,
            device=torch.device("cpu"),
            size=(64, 64),
        ).guided(x, t)
        off = _denoiser(pipe, 7.0, 0.0).guided(x, t)
    assert torch.equal(default, off)


def test_cfg_rescale_is_written_and_read_back_under_the_extensions_key() -> None:
    p = GenerationParams(prompt="p", cfg_rescale=0.7)
    pairs = p.infotext_pairs(seed=1)
    assert pairs["CFG Rescale"] == 0.7
    assert list(pairs).index("CFG Rescale") < list(pairs).index("Version")
    assert "CFG Rescale" not in GenerationParams(prompt="p").infotext_pairs(seed=1)
    text = "p\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, CFG Rescale: 0.7"
    parsed = parse_infotext(text)
    back = GenerationParams.from_infotext_fields(
        parsed.prompt, parsed.negative_prompt, parsed.pairs
    )
    assert back.cfg_rescale == 0.7 and "CFG Rescale" not in back.extra
    # the extension's older keys (its on_infotext_pasted maps them to "CFG Rescale")
    for old in ("CFG Rescale phi", "CFG Rescale φ"):
        old_text = text.replace("CFG Rescale", old)
        parsed = parse_infotext(old_text)
        back = GenerationParams.from_infotext_fields("p", "", parsed.pairs)
        assert back.cfg_rescale == 0.7


def test_cfg_rescale_out_of_range_names_the_range() -> None:
    with pytest.raises(ParamError) as err:
        GenerationParams(cfg_rescale=1.5).validated()
    assert err.value.field == "cfg_rescale" and "0 to 1" in err.value.message
