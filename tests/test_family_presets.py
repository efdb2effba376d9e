"""Flux.1 and SD3.5 start from their family's settings (Forge's presets), in the CLI and the
TUI's form, and the form shows only the fields a family has; SD models keep sdtui's defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from sdtui.cli import build_parser, params_from
from sdtui.family_presets import (
    PRESETS,
    hidden_fields,
    preset_for,
    without_hidden,
)
from sdtui.infotext import parse_infotext, read_infotext
from sdtui.model_family import ModelFamily
from sdtui.params import GenerationParams
from sdtui.samplers import SAMPLER_NAMES, SCHEDULE_TYPES
from sdtui.tui import form_spec
from sdtui.tui.form_state import FormState, with_family_defaults

# -- the table -------------------------------------------------------------------------------


def test_the_presets_hold_forge_and_stability_values_with_their_source() -> None:
    labels = {
        ModelFamily("Flux", "flux1-dev", variant="dev").label,
        ModelFamily("Flux", "flux1-schnell", variant="schnell").label,
        ModelFamily("SD3", "sd35-medium", variant="medium").label,
        ModelFamily("SD3", "sd35-large", variant="large").label,
    }
    assert set(PRESETS) == labels  # keyed by the labels `sdtui models` shows
    got = {
        name: (p.sampler, p.cfg_scale, p.steps, p.width, p.height, p.distilled_cfg_scale)
        for name, p in PRESETS.items()
    }
    assert got == {
        "Flux.1 dev": ("Euler", 1.0, 20, 896, 1152, 3.5),  # Forge's "flux" UI preset
        "Flux.1 schnell": ("Euler", 1.0, 4, 896, 1152, None),
        "SD3.5 medium": ("Euler", 4.5, 40, 1024, 1024, None),  # Stability AI's model cards
        "SD3.5 large": ("Euler", 3.5, 28, 1024, 1024, None),
    }
    for p in PRESETS.values():
        assert "Forge" in p.source or "Stability" in p.source
        assert p.sampler in SAMPLER_NAMES and p.schedule_type in SCHEDULE_TYPES
        assert p.width % 16 == 0 and p.height % 16 == 0  # what the engine asks of these
        GenerationParams(**p.values()).validated()  # type: ignore[arg-type]
    assert PRESETS["Flux.1 schnell"].describe() == (
        "Flux.1 schnell: Euler, Simple, 4 steps, CFG 1, 896x1152 "
        "(Forge's preset, 4 steps as Black Forest Labs run it)"
    )
    assert "Distilled CFG 3.5" in PRESETS["Flux.1 dev"].describe()
    assert preset_for("SDXL") is None and preset_for(None) is None


def test_each_family_hides_the_fields_it_does_not_have() -> None:
    names = {spec.name for spec in form_spec.FIELDS}
    for family in ("SD1", "SD2", "SDXL", "SDXL inpainting", "?", None):
        assert hidden_fields(family) == {"distilled_cfg_scale"}  # everything but Flux's guidance
    dev, schnell, sd35 = (hidden_fields(f) for f in ("Flux.1 dev", "Flux.1 schnell", "SD3.5 large"))
    assert dev <= names and schnell <= names  # each one a row of the form
    assert "distilled_cfg_scale" not in dev and "distilled_cfg_scale" in schnell & sd35
    for gone in ("refiner_checkpoint", "clip_skip", "cfg_rescale"):
        assert gone in dev and gone in sd35
    for kept in ("sampler", "cfg_scale", "steps", "width", "seed", "batch_size", "memory_mode"):
        assert kept not in dev
    for kept in ("enable_hr", "mask", "restore_faces", "subseed_strength", "vae"):
        assert kept not in dev and kept not in sd35  # hires fix, inpainting, faces, variation
    # what an SD model's form keeps (clip skip, CFG rescale) is not sent to Flux, which
    # refuses it; hires fix, a variation seed and a VAE are sent
    sd = GenerationParams(enable_hr=True, vae="x.safetensors", subseed_strength=0.3, clip_skip=2)
    flux = without_hidden(sd.replace(cfg_rescale=0.7), "Flux.1 dev")
    assert (flux.enable_hr, flux.vae, flux.subseed_strength, flux.clip_skip) == (
        True, "x.safetensors", 0.3, 1,
    )  # fmt: skip
    assert flux.cfg_rescale == 0
    assert without_hidden(sd, "SDXL") == sd


def test_a_stock_form_takes_the_preset_and_a_changed_one_stays() -> None:
    stock = FormState()
    schnell, line = with_family_defaults(stock, "Flux.1 schnell")
    p = schnell.params
    assert (p.sampler, p.cfg_scale, p.steps, p.width, p.height) == ("Euler", 1.0, 4, 896, 1152)
    assert line.startswith("Flux.1 schnell: Euler, Simple, 4 steps, CFG 1")
    assert "negative prompt" in line
    dev, _ = with_family_defaults(schnell, "Flux.1 dev")  # one preset to another
    assert (dev.params.steps, dev.params.distilled_cfg_scale) == (20, 3.5)
    back, line = with_family_defaults(dev, "SDXL")  # untouched since: the stock values again
    assert back.params == GenerationParams() and "sdtui's defaults" in line
    mine = FormState(params=GenerationParams(steps=30))
    assert with_family_defaults(mine, "Flux.1 dev") == (mine, "")
    assert with_family_defaults(schnell, None) == (schnell, "")  # unknown: left as it is
    assert with_family_defaults(stock, "SD1") == (stock, "")
    # the demo model's quick form (256x256, 8 steps) is as good as stock: a first Flux job runs
    demo = FormState(params=GenerationParams(width=256, height=256, steps=8))
    assert with_family_defaults(demo, "SD3.5 large")[0].params.steps == 28


# -- the CLI -----------------------------------------------------------------------------------


def flux_header_file(folder: Path, name: str, dev: bool) -> Path:
    """A file whose header says Flux (the CLI reads headers only, never the weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = ["double_blocks.0.img_attn.qkv.weight"] + (
        ["guidance_in.in_layer.weight"] if dev else []
    )
    path = folder / f"{name}.safetensors"
    save_file({"model.diffusion_model." + k: np.zeros((2, 2), np.float32) for k in keys}, path)
    return path


def _params(*argv: str) -> GenerationParams:
    args = build_parser().parse_args(list(argv))
    args.level = 0
    return params_from(args)


def test_cli_flags_left_out_take_the_family_preset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SDTUI_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SDTUI_CONFIG", str(tmp_path / "config.toml"))
    ckpt = tmp_path / "home" / "models" / "Stable-diffusion"
    flux_header_file(ckpt, "flux1-dev", dev=True)
    flux_header_file(ckpt, "flux1-schnell", dev=False)

    p = _params("generate", "--model", "flux1-schnell", "x")
    assert (p.sampler, p.schedule_type, p.cfg_scale, p.steps) == ("Euler", "Simple", 1.0, 4)
    assert (p.width, p.height) == (896, 1152)
    p = _params("generate", "--model", "flux1-dev", "x", "--distilled-cfg", "2.5", "--steps", "8")
    assert (p.steps, p.distilled_cfg_scale, p.cfg_scale) == (8, 2.5, 1.0)
    # what the user typed is sent as typed, even what the family cannot run (the engine says)
    p = _params("generate", "--model", "flux1-dev", "x", "--sampler", "DPM++ 2M", "--cfg", "7")
    assert (p.sampler, p.cfg_scale, p.steps) == ("DPM++ 2M", 7.0, 20)
    p = _params("generate", "--model", "flux1-dev", "x", "--width", "512")
    assert (p.width, p.height) == (512, 1152)
    # no --model: the engine's pick, the first listed model (flux1-dev)
    assert _params("generate", "x").distilled_cfg_scale == 3.5
    assert _params("generate", "x").sampler == "Euler"
    # SD models: sdtui's stock defaults, as before
    stock = GenerationParams()
    p = _params("generate", "--demo", "x")
    assert (p.sampler, p.cfg_scale, p.steps, p.width, p.height) == (
        stock.sampler, stock.cfg_scale, stock.steps, stock.width, stock.height,
    )  # fmt: skip
    # -v says the preset once
    args = build_parser().parse_args(["generate", "--model", "flux1-schnell", "x"])
    args.level = 1
    params_from(args)
    err = capsys.readouterr().err
    assert err.count("Flux.1 schnell: Euler, Simple, 4 steps, CFG 1") == 1


def _tiny_schnell(models: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny Flux.1 schnell single file (tests/test_dit_models.py's models) and its configs in
    the cache folder the engine reads them from (config_dir's own place for them)."""
    from safetensors.torch import save_file as save_torch
    from test_dit_models import (
        flux_to_bfl,
        text_sd,
        tiny_clip,
        tiny_flux,
        tiny_t5,
        tiny_vae,
        vae_to_ldm,
    )

    from sdtui.engine.configs import config_dir

    parts: dict[str, Any] = {
        "transformer": tiny_flux(5, dev=False),
        "vae": tiny_vae(2, 0.3611, 0.1159),
        "text_encoder": tiny_clip(3, projection=False),
        "text_encoder_2": tiny_t5(4, d_model=32),
    }
    with monkeypatch.context() as m:
        m.setenv("SDTUI_CACHE_DIR", str(cache))
        target = config_dir("flux1-schnell")
    for sub, model in parts.items():
        if hasattr(model, "save_config"):
            model.save_config(target / sub)
        else:
            model.config.to_json_file(target / sub / "config.json")
    bfl = flux_to_bfl(parts["transformer"].state_dict())
    sd = {"model.diffusion_model." + k: v.contiguous() for k, v in bfl.items()}
    sd |= {"vae." + k: v.contiguous() for k, v in vae_to_ldm(parts["vae"].state_dict(), 2).items()}
    sd |= text_sd(parts["text_encoder"], "text_encoders.clip_l.transformer.")
    sd |= text_sd(parts["text_encoder_2"], "text_encoders.t5xxl.transformer.")
    models.mkdir(parents=True)
    save_torch(sd, models / "flux1-schnell-tiny.safetensors")


@pytest.mark.slow
def test_cli_runs_flux_schnell_without_a_sampler_flag(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    _tiny_schnell(tmp_path / "home" / "models" / "Stable-diffusion", cache, monkeypatch)
    env = {**env, "SDTUI_CACHE_DIR": str(cache)}
    base = [sys.executable, "-m", "sdtui", "generate", "--model", "flux1-schnell-tiny", "x"]
    small = ["--size", "64x64", "--steps", "2", "--no-daemon", "--seed", "7"]
    # the two runs side by side: each spends most of its time importing torch
    runs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv in ([*base, *small, "-v"], [*base, *small, "--sampler", "DDIM"])
    ]
    (out, err), (_, refused) = (run.communicate(timeout=300) for run in runs)
    assert runs[0].returncode == 0, err
    assert "Flux.1 schnell: Euler, Simple, 4 steps, CFG 1" in err
    [image] = [Path(line) for line in out.splitlines() if line.endswith(".png")]
    pairs = parse_infotext(read_infotext(image) or "").pairs
    assert (pairs["Sampler"], pairs["CFG scale"], pairs["Steps"], pairs["Size"]) == (
        "Euler", "1", "2", "64x64",
    )  # fmt: skip
    # a sampler the family cannot run is sent as typed, and the engine says what to choose
    assert runs[1].returncode == 1 and "Traceback" not in refused
    assert "DDIM works in SD's timestep space" in refused and "Choose one of Euler" in refused
