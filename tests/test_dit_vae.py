"""A VAE picked from models/VAE on Flux.1 / SD3.5 (sdtui.engine.dit.dit_vae): written into the
model's VAE for one job through SD's VAE swap (sdtui.engine.vae), and put back after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import test_dit_img2img
import torch
from safetensors.torch import save_file
from test_dit_models import job, pixel_diff, tiny_vae, vae_to_ldm

from sdtui.errors import UserError
from sdtui.infotext import parse_infotext, read_infotext
from sdtui.params import GenerationParams

flux_session = test_dit_img2img.flux_session


def _params(**kw: Any) -> GenerationParams:
    return test_dit_img2img.dit_params(**{"seed": 5, **kw})


def test_a_vae_file_applies_for_one_job(flux_session: Any, tmp_path: Path) -> None:
    vae_dir = Path(flux_session.settings.models) / "VAE"
    vae_dir.mkdir(parents=True, exist_ok=True)
    other = tiny_vae(21, 0.3611, 0.1159)  # another Flux-shaped (16-channel) VAE, LDM names
    ldm = {k: v.contiguous() for k, v in vae_to_ldm(other.state_dict(), 2).items()}
    save_file(ldm, vae_dir / "ae-test.safetensors")
    own = {k: v.clone() for k, v in flux_session.txt2img.vae.state_dict().items()}

    plain, _ = job(flux_session, _params(), tmp_path / "plain", "flux")
    swapped, _ = job(flux_session, _params(vae="ae-test.safetensors"), tmp_path / "vae", "f")
    assert pixel_diff(plain.paths[0], swapped.paths[0]) > 0
    pairs = parse_infotext(read_infotext(swapped.paths[0]) or "").pairs
    assert pairs["VAE"] == "ae-test.safetensors" and len(pairs["VAE hash"]) == 10
    # the model's own VAE is back, bit for bit, and draws the plain picture again
    after = flux_session.txt2img.vae.state_dict()
    assert all(torch.equal(after[k], v) for k, v in own.items())
    again, _ = job(flux_session, _params(), tmp_path / "again", "flux")
    assert pixel_diff(plain.paths[0], again.paths[0]) == 0


def test_an_sd_vae_is_refused_with_its_shapes(flux_session: Any, tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    vae_dir = Path(flux_session.settings.models) / "VAE"
    vae_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    sd_vae = AutoencoderKL(  # 4 latent channels, as an SD 1.x VAE
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
    )
    ldm = {k: v.contiguous() for k, v in vae_to_ldm(sd_vae.state_dict(), 2).items()}
    save_file(ldm, vae_dir / "sd-vae.safetensors")
    with pytest.raises(UserError, match="does not fit this model's VAE"):
        job(flux_session, _params(vae="sd-vae.safetensors"), tmp_path / "x", "f")
    assert not list((tmp_path / "x").rglob("*.png"))
