"""Flux.1 / SD3.5 LoRAs: ``<lora:name:w>`` in the prompt merges the file into the weights for
that job only (kohya, BFL/ComfyUI and diffusers/ai-toolkit layouts), writes ``Lora hashes``,
and the next job without the tag draws the base image bit for bit.

The layouts' conversion is checked two ways: against the model's own weights converted from
BFL names (the LoRA added there, then :func:`flux_to_diffusers`), and, at the real Flux
sizes (meta weights, real low-rank tensors), against diffusers' own kohya converter."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from test_dit_models import (  # noqa: F401 - fixtures
    FLUX_PARAMS,
    flux_files,
    flux_parts,
    flux_to_bfl,
    job,
    load,
    pixel_diff,
    tiny_sd3,
)

from sdtui.config import Settings
from sdtui.engine.dit import flux_to_diffusers
from sdtui.engine.dit_lora import dit_lora_index, dit_loras, plan_dit_loras
from sdtui.engine.job import JobContext, JobControl
from sdtui.engine.lora import LoraRequest
from sdtui.engine.session import ModelSession
from sdtui.errors import UserError
from sdtui.extra_networks_index import lora_hash
from sdtui.infotext import read_infotext
from sdtui.ipc import protocol as msg
from sdtui.outputs import OutputLayout

RANK = 4
# BFL module names -> (rows, columns) of the tiny Flux's weights (width 32, MLP 128, 1+1 blocks)
TINY_BFL = {
    "double_blocks.0.img_attn.qkv": (96, 32),
    "double_blocks.0.txt_mlp.0": (128, 32),
    "double_blocks.0.img_mod.lin": (192, 32),
    "single_blocks.0.linear1": (224, 32),
    "single_blocks.0.linear2": (32, 160),
    "final_layer.adaLN_modulation.1": (64, 32),
    "img_in": (32, 64),
}


def low_rank(rows: int, cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, RANK, generator=g) * 0.3, torch.randn(RANK, cols, generator=g) * 0.3


def kohya_lora(shapes: dict[str, tuple[int, int]], alpha: float = 2.0) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for i, (stem, (rows, cols)) in enumerate(shapes.items()):
        up, down = low_rank(rows, cols, i)
        key = "lora_unet_" + stem.replace(".", "_")
        out |= {f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down}
        out[f"{key}.alpha"] = torch.tensor(alpha)
    return out


def bfl_lora(shapes: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """ComfyUI / BFL names with peft's lora_A / lora_B (no alpha: scale 1)."""
    out: dict[str, torch.Tensor] = {}
    for i, (stem, (rows, cols)) in enumerate(shapes.items()):
        up, down = low_rank(rows, cols, i)
        out[f"diffusion_model.{stem}.lora_B.weight"] = up
        out[f"diffusion_model.{stem}.lora_A.weight"] = down
    return out


def expected_weights(transformer: Any, lora: dict[str, torch.Tensor], scale: float) -> dict:
    """The transformer's weights with the LoRA added in BFL names, then converted."""
    bfl = flux_to_bfl(transformer.state_dict())
    for stem in TINY_BFL:
        for up_key, down_key in (
            (f"lora_unet_{stem.replace('.', '_')}.lora_up.weight", None),
            (f"diffusion_model.{stem}.lora_B.weight", None),
        ):
            if up_key in lora:
                down_key = up_key.replace("lora_up", "lora_down").replace("lora_B", "lora_A")
                bfl[f"{stem}.weight"] = bfl[f"{stem}.weight"] + scale * (
                    lora[up_key] @ lora[down_key]
                )
    return flux_to_diffusers(bfl)


@pytest.fixture(scope="module")
def flux_session(flux_files: dict[str, Path]) -> Any:  # noqa: F811 - the imported fixture
    session = ModelSession.create(load(flux_files["file"], flux_files["configs"]), "cpu")
    session.settings = Settings(models_dir=flux_files["models"])
    lora_dir = flux_files["models"] / "Lora"
    lora_dir.mkdir(exist_ok=True)
    save_file(kohya_lora(TINY_BFL), lora_dir / "fox_kohya.safetensors")
    save_file(bfl_lora(TINY_BFL), lora_dir / "fox_bfl.safetensors")
    transformer = session.txt2img.transformer
    named = {
        "transformer.transformer_blocks.0.attn.to_q": transformer.transformer_blocks[0].attn.to_q,
        "transformer.single_transformer_blocks.0.proj_out": (
            transformer.single_transformer_blocks[0].proj_out
        ),
    }
    diffusers = {}
    for i, (name, module) in enumerate(named.items()):
        up, down = low_rank(module.weight.shape[0], module.weight.shape[1], 10 + i)
        diffusers |= {f"{name}.lora_B.weight": up, f"{name}.lora_A.weight": down}
    te = session.txt2img.text_encoder
    q = getattr(te, "text_model", te).encoder.layers[0].self_attn.q_proj  # transformers 4 / 5
    up, down = low_rank(q.weight.shape[0], q.weight.shape[1], 20)
    te_key = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    diffusers |= {f"{te_key}.lora_up.weight": up, f"{te_key}.lora_down.weight": down}
    save_file(diffusers, lora_dir / "fox_aitoolkit.safetensors")
    sd1 = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file(
        {
            f"{sd1}.lora_up.weight": torch.zeros(320, 4),
            f"{sd1}.lora_down.weight": torch.zeros(4, 320),
        },
        lora_dir / "sd1_style.safetensors",
    )
    return session


def context(session: Any, tmp_path: Path) -> JobContext:
    return JobContext(1, lambda e: None, JobControl(), OutputLayout(tmp_path), "x", "0", "Flux")


@pytest.mark.parametrize(("name", "scale"), [("fox_kohya", 0.8 * 2.0 / RANK), ("fox_bfl", 0.8)])
def test_kohya_and_bfl_layouts_merge_as_the_lora_added_in_bfl_names(
    flux_session: Any, tmp_path: Path, name: str, scale: float
) -> None:
    from safetensors.torch import load_file

    transformer = flux_session.txt2img.transformer
    before = {k: v.clone() for k, v in transformer.state_dict().items()}
    lora = load_file(flux_session.settings.models / "Lora" / f"{name}.safetensors")
    want = expected_weights(transformer, lora, scale)
    p = FLUX_PARAMS.replace(prompt=f"a red fox <lora:{name}:0.8>")
    with dit_loras(flux_session, p, context(flux_session, tmp_path), flux_session.loaded.family):
        during = transformer.state_dict()
        changed = [k for k in during if not torch.equal(during[k], before[k])]
        # every layer the LoRA names, split qkv/linear1 and the swapped final modulation too
        assert len(changed) == 12
        for k in during:
            assert torch.allclose(during[k], want[k], atol=1e-5), k
    after = transformer.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)  # put back bit for bit


def test_a_flux_lora_job_writes_lora_hashes_and_the_next_job_is_the_base_image(
    flux_session: Any, tmp_path: Path
) -> None:
    one = FLUX_PARAMS.replace(batch_size=1)
    base, _ = job(flux_session, one, tmp_path / "base", "flux")
    tagged = one.replace(prompt="a red fox <lora:fox_aitoolkit:0.8> <lora:fox_kohya:1>")
    done, events = job(flux_session, tagged, tmp_path / "lora", "flux")
    assert pixel_diff(base.paths[0], done.paths[0]) > 2
    # every layer of both files found its place, the CLIP-L one (kohya's lora_te1_) too
    assert not [e for e in events if isinstance(e, msg.Log) and "skipped" in e.text]
    info = read_infotext(done.paths[0])
    assert info is not None
    path = flux_session.settings.models / "Lora"
    hashes = (
        f'Lora hashes: "fox_aitoolkit: {lora_hash(path / "fox_aitoolkit.safetensors")}, '
        f'fox_kohya: {lora_hash(path / "fox_kohya.safetensors")}"'
    )
    assert info.splitlines()[0] == "a red fox <lora:fox_aitoolkit:0.8> <lora:fox_kohya:1>"
    assert hashes in info
    again, _ = job(flux_session, one, tmp_path / "again", "flux")
    assert pixel_diff(base.paths[0], again.paths[0]) == 0


def test_an_sd1_lora_on_flux_is_one_clear_message(flux_session: Any, tmp_path: Path) -> None:
    p = FLUX_PARAMS.replace(prompt="a fox <lora:sd1_style:1>", batch_size=1)
    with pytest.raises(UserError) as e:
        job(flux_session, p, tmp_path, "flux")
    assert str(e.value) == (
        "LoRA 'sd1_style' is an SD 1.x/2.x/SDXL LoRA: it has no layer Flux.1 dev has — use a "
        "LoRA made for Flux.1 dev"
    )
    # a LoRA that is not there: sdtui's own message, naming what is
    with pytest.raises(UserError, match="missing_one"):
        job(flux_session, p.replace(prompt="a fox <lora:missing_one:1>"), tmp_path, "flux")


def test_flux_kohya_names_agree_with_diffusers_converter_at_real_size(tmp_path: Path) -> None:
    """At Flux's real widths (meta weights; the LoRA's own tensors are small), each layer's
    delta from sdtui's mapping equals the one diffusers' kohya converter gives."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    from sdtui.engine.configs import config_dir

    config = FluxTransformer2DModel.load_config(config_dir("flux1-dev") / "transformer")
    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(config)
    real = {
        "double_blocks.3.img_attn.qkv": (9216, 3072),
        "double_blocks.3.txt_mlp.2": (3072, 12288),
        "single_blocks.7.linear1": (21504, 3072),
        "single_blocks.7.linear2": (3072, 15360),
    }
    lora = kohya_lora(real, alpha=8.0)
    file = tmp_path / "real.safetensors"
    save_file(lora, file)
    index = dit_lora_index(SimpleNamespace(transformer=transformer), "Flux")
    plan = plan_dit_loras([LoraRequest("real", file, 1.0, 1.0)], index, "Flux.1 dev", print)
    names = {id(m): n for n, m in transformer.named_modules()}
    ours = {
        names[key]: sum(p.scale * (p.up.float() @ p.down.float()) for p in patches)
        for key, (_, patches) in plan.items()
    }
    theirs_sd = _convert_kohya_flux_lora_to_diffusers(dict(lora))
    theirs = {
        k[len("transformer.") : -len(".lora_A.weight")]: theirs_sd[k.replace("lora_A", "lora_B")]
        @ theirs_sd[k]
        for k in theirs_sd
        if k.endswith(".lora_A.weight")
    }
    assert ours.keys() == theirs.keys() and len(ours) == 9
    for name, delta in ours.items():
        assert torch.allclose(delta, theirs[name], atol=1e-4), name


def test_sd35_takes_diffusers_layout_loras_and_refuses_a_flux_one(tmp_path: Path) -> None:
    transformer = tiny_sd3(6)
    index = dit_lora_index(SimpleNamespace(transformer=transformer), "SD3")
    q = transformer.transformer_blocks[0].attn.to_q
    up, down = low_rank(q.weight.shape[0], q.weight.shape[1], 3)
    file = tmp_path / "sd3.safetensors"
    save_file(
        {
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": up,
            "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": down,
        },
        file,
    )
    plan = plan_dit_loras([LoraRequest("s", file, 1.0, 0.5)], index, "SD3.5 medium", print)
    assert list(plan) == [id(q)] and plan[id(q)][1][0].scale == 0.5
    flux = tmp_path / "flux.safetensors"
    save_file(kohya_lora({"double_blocks.0.img_attn.qkv": (96, 32)}), flux)
    with pytest.raises(UserError, match="a LoRA for another model type: it has no layer SD3.5"):
        plan_dit_loras([LoraRequest("f", flux, 1.0, 1.0)], index, "SD3.5 medium", print)
