"""Flux.1 and SD3.5 checkpoints: detected by their keys, loaded offline (HF_HUB_OFFLINE=1, set by
conftest) from the original single-file layouts, split layouts and diffusers folders, and run as
sdtui txt2img jobs.

The models are tiny, seeded and built here; their weights are written in the ORIGINAL key names
(BFL's Flux, SAI's MMDiT, the LDM VAE) by inverting the converters, each inversion checked by a
round trip. Their sizes differ from the real models, so each test writes a tiny bundled-style
config folder (the tiny configs + the bundled tokenizer files) and puts it in place of the
bundled one (``sdtui.engine.configs.config_dir`` patched); everything else is the engine's own
path (``load_pipeline``, the session, the worker). The real bundled folders are checked on the
meta device, with the real models' key names and shapes.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdtui.engine.configs import config_dir
from sdtui.engine.dit import (
    check_params,
    flux_to_diffusers,
    run_dit_generation,
    sd3_to_diffusers,
)
from sdtui.engine.job import JobContext, JobControl
from sdtui.engine.models import load_pipeline
from sdtui.engine.session import ModelSession
from sdtui.errors import UserError
from sdtui.infotext import parse_infotext, read_infotext
from sdtui.ipc import protocol as msg
from sdtui.model_family import detect_family
from sdtui.model_index import discover_models
from sdtui.outputs import OutputLayout
from sdtui.params import GenerationParams

W = H = 64  # pixels (sdtui's least); the tiny VAE halves once, Flux packs 2x2: 16x16 tokens

# -- tiny models ------------------------------------------------------------------------------


def _seeded(build: Any, seed: int) -> Any:
    torch.manual_seed(seed)
    model = build()
    with torch.no_grad():  # random biases and norms too, so a dropped tensor changes the image
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def tiny_clip(seed: int, projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=49408,  # the real vocabulary: the bundled tokenizer works
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=32,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return _seeded(lambda: cls(cfg), seed)


def tiny_t5(seed: int, d_model: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        vocab_size=32128,  # the real T5 vocabulary
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=1,
        num_heads=2,
        feed_forward_proj="gated-gelu",
        dense_act_fn="gelu_new",
        is_gated_act=True,
        relative_attention_num_buckets=8,
    )
    return _seeded(lambda: T5EncoderModel(cfg), seed)


def tiny_vae(seed: int, scale: float, shift: float) -> Any:
    from diffusers import AutoencoderKL

    return _seeded(
        lambda: AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=8,
            latent_channels=16,
            use_quant_conv=False,
            use_post_quant_conv=False,
            scaling_factor=scale,
            shift_factor=shift,
        ),
        seed,
    )


def tiny_flux(seed: int, dev: bool) -> Any:
    from diffusers import FluxTransformer2DModel

    return _seeded(
        lambda: FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,  # 16 latent channels x 2x2 packing
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=dev,
            axes_dims_rope=(4, 6, 6),
        ),
        seed,
    )


def tiny_sd3(seed: int) -> Any:
    from diffusers import SD3Transformer2DModel

    return _seeded(
        lambda: SD3Transformer2DModel(
            sample_size=16,
            patch_size=2,
            in_channels=16,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=64,  # CLIP-L 32 + CLIP-G 32, padded to T5's width
            caption_projection_dim=16,
            pooled_projection_dim=64,
            out_channels=16,
            pos_embed_max_size=32,
            dual_attention_layers=(0,),  # MMDiT-X, as SD3.5 medium
            qk_norm="rms_norm",
        ),
        seed,
    )


# -- diffusers names -> the original names (the converters inverted) -------------------------

_FLUX_TOP = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
}
_FLUX_DOUBLE = {
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
    "attn.norm_q": "img_attn.norm.query_norm",
    "attn.norm_k": "img_attn.norm.key_norm",
    "attn.norm_added_q": "txt_attn.norm.query_norm",
    "attn.norm_added_k": "txt_attn.norm.key_norm",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
}
_FLUX_SINGLE = {
    "norm.linear": "modulation.lin",
    "attn.norm_q": "norm.query_norm",
    "attn.norm_k": "norm.key_norm",
    "proj_out": "linear2",
}


def _swap(w: torch.Tensor) -> torch.Tensor:
    a, b = w.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _suffix(old: str, suffix: str) -> str:
    return old + (".scale" if old.endswith("_norm") else f".{suffix}")


def flux_to_bfl(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        head, _, suffix = key.rpartition(".")
        if head == "norm_out.linear":
            out[f"final_layer.adaLN_modulation.1.{suffix}"] = _swap(value)
        elif head in _FLUX_TOP:
            out[f"{_FLUX_TOP[head]}.{suffix}"] = value
        elif m := re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", head):
            i, rest = m.groups()
            if rest in ("attn.to_q", "attn.add_q_proj"):
                img = rest == "attn.to_q"
                names = (
                    ("to_q", "to_k", "to_v") if img else ("add_q_proj", "add_k_proj", "add_v_proj")
                )
                parts = [sd[f"transformer_blocks.{i}.attn.{n}.{suffix}"] for n in names]
                out[f"double_blocks.{i}.{'img' if img else 'txt'}_attn.qkv.{suffix}"] = torch.cat(
                    parts
                )
            elif rest in _FLUX_DOUBLE:
                out[f"double_blocks.{i}.{_suffix(_FLUX_DOUBLE[rest], suffix)}"] = value
        elif m := re.fullmatch(r"single_transformer_blocks\.(\d+)\.(.+)", head):
            i, rest = m.groups()
            if rest == "attn.to_q":
                names = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
                parts = [sd[f"single_transformer_blocks.{i}.{n}.{suffix}"] for n in names]
                out[f"single_blocks.{i}.linear1.{suffix}"] = torch.cat(parts)
            elif rest in _FLUX_SINGLE:
                out[f"single_blocks.{i}.{_suffix(_FLUX_SINGLE[rest], suffix)}"] = value
    return out


def sd3_to_sai(sd: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {
        "pos_embed": sd["pos_embed.pos_embed"],
        "context_embedder.weight": sd["context_embedder.weight"],
        "context_embedder.bias": sd["context_embedder.bias"],
    }
    for s in ("weight", "bias"):
        out[f"x_embedder.proj.{s}"] = sd[f"pos_embed.proj.{s}"]
        for n in (1, 2):
            out[f"t_embedder.mlp.{2 * n - 2}.{s}"] = sd[
                f"time_text_embed.timestep_embedder.linear_{n}.{s}"
            ]
            out[f"y_embedder.mlp.{2 * n - 2}.{s}"] = sd[
                f"time_text_embed.text_embedder.linear_{n}.{s}"
            ]
        out[f"final_layer.linear.{s}"] = sd[f"proj_out.{s}"]
        out[f"final_layer.adaLN_modulation.1.{s}"] = _swap(sd[f"norm_out.linear.{s}"])
    for i in range(layers):
        d, x, c = (
            f"transformer_blocks.{i}.",
            f"joint_blocks.{i}.x_block.",
            f"joint_blocks.{i}.context_block.",
        )
        last = i == layers - 1
        for s in ("weight", "bias"):
            out[f"{x}attn.qkv.{s}"] = torch.cat([sd[f"{d}attn.to_{n}.{s}"] for n in "qkv"])
            out[f"{c}attn.qkv.{s}"] = torch.cat([sd[f"{d}attn.add_{n}_proj.{s}"] for n in "qkv"])
            out[f"{x}attn.proj.{s}"] = sd[f"{d}attn.to_out.0.{s}"]
            out[f"{x}adaLN_modulation.1.{s}"] = sd[f"{d}norm1.linear.{s}"]
            ctx_mod = sd[f"{d}norm1_context.linear.{s}"]
            out[f"{c}adaLN_modulation.1.{s}"] = _swap(ctx_mod) if last else ctx_mod
            out[f"{x}mlp.fc1.{s}"] = sd[f"{d}ff.net.0.proj.{s}"]
            out[f"{x}mlp.fc2.{s}"] = sd[f"{d}ff.net.2.{s}"]
            if not last:
                out[f"{c}attn.proj.{s}"] = sd[f"{d}attn.to_add_out.{s}"]
                out[f"{c}mlp.fc1.{s}"] = sd[f"{d}ff_context.net.0.proj.{s}"]
                out[f"{c}mlp.fc2.{s}"] = sd[f"{d}ff_context.net.2.{s}"]
            if f"{d}attn2.to_q.{s}" in sd:
                out[f"{x}attn2.qkv.{s}"] = torch.cat([sd[f"{d}attn2.to_{n}.{s}"] for n in "qkv"])
                out[f"{x}attn2.proj.{s}"] = sd[f"{d}attn2.to_out.0.{s}"]
        for a, b in (("norm_q", f"{x}attn.ln_q"), ("norm_k", f"{x}attn.ln_k")):
            out[f"{b}.weight"] = sd[f"{d}attn.{a}.weight"]
        out[f"{c}attn.ln_q.weight"] = sd[f"{d}attn.norm_added_q.weight"]
        out[f"{c}attn.ln_k.weight"] = sd[f"{d}attn.norm_added_k.weight"]
        if f"{d}attn2.norm_q.weight" in sd:
            out[f"{x}attn2.ln_q.weight"] = sd[f"{d}attn2.norm_q.weight"]
            out[f"{x}attn2.ln_k.weight"] = sd[f"{d}attn2.norm_k.weight"]
    return out


def vae_to_ldm(sd: dict[str, torch.Tensor], blocks: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        k = key
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)", r"encoder.down.\1.block.\2", k)
        k = re.sub(
            r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample", k
        )
        k = re.sub(
            r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)",
            lambda m: f"decoder.up.{blocks - 1 - int(m[1])}.block.{m[2]}",
            k,
        )
        k = re.sub(
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0",
            lambda m: f"decoder.up.{blocks - 1 - int(m[1])}.upsample",
            k,
        )
        k = k.replace("mid_block.resnets.0", "mid.block_1").replace(
            "mid_block.resnets.1", "mid.block_2"
        )
        k = k.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        if ".mid_block.attentions.0." in k:
            k = k.replace("mid_block.attentions.0.", "mid.attn_1.")
            for a, b in (
                ("group_norm", "norm"),
                ("to_q", "q"),
                ("to_k", "k"),
                ("to_v", "v"),
                ("to_out.0", "proj_out"),
            ):
                k = k.replace(f"attn_1.{a}.", f"attn_1.{b}.")
            if value.ndim == 2:  # LDM's attention is 1x1 convolutions
                value = value[:, :, None, None]
        out[k] = value
    return out


def text_sd(model: Any, prefix: str) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    sd.pop("encoder.embed_tokens.weight", None)  # a T5 file holds shared.weight only
    return {prefix + k: v.contiguous() for k, v in sd.items()}


# -- fixtures ----------------------------------------------------------------------------------


def tiny_config_dir(root: Path, bundled: str, parts: dict[str, Any]) -> Path:
    """A bundled-style config folder of the tiny models: their configs, the bundled tokenizers."""
    real = config_dir(bundled)
    target = root / f"{bundled}-tiny"
    shutil.copytree(real, target)
    for sub, model in parts.items():
        if hasattr(model, "save_config"):  # diffusers
            model.save_config(target / sub)
        else:
            model.config.to_json_file(target / sub / "config.json")
    return target


@pytest.fixture(scope="module")
def flux_parts() -> dict[str, Any]:
    return {
        "transformer": tiny_flux(1, dev=True),
        "vae": tiny_vae(2, 0.3611, 0.1159),
        "text_encoder": tiny_clip(3, projection=False),
        "text_encoder_2": tiny_t5(4, d_model=32),
    }


@pytest.fixture(scope="module")
def flux_files(
    tmp_path_factory: pytest.TempPathFactory, flux_parts: dict[str, Any]
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flux")
    models = root / "models"
    ckpt = models / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    t = flux_parts["transformer"].state_dict()
    bfl = flux_to_bfl(t)
    vae = vae_to_ldm(flux_parts["vae"].state_dict(), 2)
    clip = text_sd(flux_parts["text_encoder"], "text_encoders.clip_l.transformer.")
    t5 = text_sd(flux_parts["text_encoder_2"], "text_encoders.t5xxl.transformer.")
    allinone = {"model.diffusion_model." + k: v.contiguous() for k, v in bfl.items()}
    allinone |= {"vae." + k: v.contiguous() for k, v in vae.items()} | clip | t5
    save_file(allinone, ckpt / "flux1-dev-tiny.safetensors")
    cfg = tiny_config_dir(root, "flux1-dev", flux_parts)
    return {
        "root": root,
        "models": models,
        "file": ckpt / "flux1-dev-tiny.safetensors",
        "configs": cfg,
    }


def load(path: Path, configs: Path, dtype: torch.dtype = torch.float32) -> Any:
    """The engine's load_pipeline, with the tiny models' config folder for the bundled one."""
    from sdtui.engine import configs as configs_module

    with mock.patch.object(configs_module, "config_dir", lambda name: configs):
        return load_pipeline(path, device="cpu", dtype=dtype)


def job(
    session: Any, params: GenerationParams, out: Path, name: str, control: Any = None
) -> tuple[Any, list[Any]]:
    events: list[Any] = []
    ctx = JobContext(
        job_id=1,
        emit=events.append,
        control=control or JobControl(),
        layout=OutputLayout(out),
        model_name=name,
        model_hash="0123456789",
        family=session.family,
    )
    return run_dit_generation(session, params, ctx), events


def pixel_diff(a: str | Path, b: str | Path) -> int:
    import numpy as np

    with Image.open(a) as ia, Image.open(b) as ib:
        x = np.asarray(ia.convert("RGB"), dtype=np.int16)
        y = np.asarray(ib.convert("RGB"), dtype=np.int16)
    return int(np.abs(x - y).max())


FLUX_PARAMS = GenerationParams(
    prompt="a red fox",
    steps=2,
    sampler="Euler",
    schedule_type="Simple",
    cfg_scale=1,
    seed=42,
    width=W,
    height=H,
    batch_size=2,
)


# -- tests -------------------------------------------------------------------------------------


def test_detection_by_keys_with_and_without_prefix() -> None:
    flux = {"double_blocks.0.img_attn.qkv.weight": (9, 3), "img_in.weight": (3, 64)}
    for prefix in ("", "model.diffusion_model."):
        shapes = {prefix + k: v for k, v in flux.items()}
        assert detect_family(shapes).label == "Flux.1 schnell"
        shapes[prefix + "guidance_in.in_layer.weight"] = (3, 256)
        dev = detect_family(shapes)
        assert (dev.label, dev.config) == ("Flux.1 dev", "flux1-dev")
        sd3 = {
            prefix + f"joint_blocks.{i}.context_block.attn.qkv.weight": (9, 3) for i in range(24)
        }
        assert detect_family(sd3).label == "SD3.5 medium"
        sd3 |= {
            prefix + f"joint_blocks.{i}.context_block.attn.qkv.weight": (9, 3) for i in range(38)
        }
        large = detect_family(sd3)
        assert (large.label, large.config) == ("SD3.5 large", "sd35-large")
    # a transformer saved in diffusers' names as one file
    diffusers_flux = {
        "single_transformer_blocks.0.proj_mlp.weight": (1,),
        "x_embedder.weight": (3, 64),
    }
    assert detect_family(diffusers_flux).label == "Flux.1 schnell"
    # which VAE file a transformer-only model takes from models/VAE
    from sdtui.engine.dit import _vae_hint

    hints = [
        _vae_hint(n) for n in ("ae.safetensors", "sd3.5_vae.safetensors", "sdxl_vae.safetensors")
    ]
    assert hints == ["Flux", "SD3", None]


def test_bundled_configs_hold_the_official_settings() -> None:
    from transformers import T5TokenizerFast

    for name in ("flux1-dev", "flux1-schnell", "sd35-medium", "sd35-large"):
        vae = json.loads((config_dir(name) / "vae" / "config.json").read_text())
        factors = (vae["scaling_factor"], vae["shift_factor"])
        assert vae["latent_channels"] == 16
        assert factors == ((0.3611, 0.1159) if name.startswith("flux") else (1.5305, 0.0609))

    def scheduler(name: str) -> dict[str, Any]:
        folder = config_dir(name) / "scheduler"
        return json.loads((folder / "scheduler_config.json").read_text())

    dev, schnell, sd35 = scheduler("flux1-dev"), scheduler("flux1-schnell"), scheduler("sd35-large")
    assert (dev["use_dynamic_shifting"], dev["base_shift"], dev["max_shift"]) == (True, 0.5, 1.15)
    assert (schnell["use_dynamic_shifting"], schnell["shift"]) == (False, 1.0)
    assert sd35["shift"] == 3.0
    t5 = T5TokenizerFast.from_pretrained(config_dir("flux1-schnell") / "tokenizer_2")
    assert t5("a photo of a cat").input_ids == [3, 9, 1202, 13, 3, 9, 1712, 1]
    assert t5.model_max_length == 512


def test_flux_key_conversion_round_trips(flux_parts: dict[str, Any]) -> None:
    sd = flux_parts["transformer"].state_dict()
    back = flux_to_diffusers(flux_to_bfl(sd))
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_flux_single_file_lists_loads_offline_and_runs(
    flux_files: dict[str, Path], tmp_path: Path
) -> None:
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    entries = discover_models(flux_files["models"])
    assert [(e.name, e.family) for e in entries] == [("flux1-dev-tiny", "Flux.1 dev")]
    loaded = load(flux_files["file"], flux_files["configs"])
    assert loaded.family.label == "Flux.1 dev"
    session = ModelSession.create(loaded, "cpu")
    done, events = job(session, FLUX_PARAMS, tmp_path / "out", "flux1-dev-tiny")
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "JobStarted" and kinds.count("Progress") == 2
    # a preview after step 1 of 2: the batch's two latents (32x32: the tiny VAE halves) side by side
    previews = [e for e in events if isinstance(e, msg.Preview)]
    assert [(e.step, e.width, e.height) for e in previews] == [(1, 64, 32)]
    saved = [e for e in events if isinstance(e, msg.ImageSaved) and not e.is_grid]
    assert [e.seed for e in saved] == [42, 43] and len(done.paths) == 2
    info = read_infotext(saved[0].path)
    assert info is not None
    line = info.splitlines()[-1]
    assert line.startswith(
        "Steps: 2, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 42, Size: 64x64"
    )
    parsed = parse_infotext(info)
    back = GenerationParams.from_infotext_fields(
        parsed.prompt, parsed.negative_prompt, parsed.pairs
    )
    assert (back.sampler, back.distilled_cfg_scale, back.seed) == ("Euler", 3.5, 42)
    assert "Distilled CFG Scale" not in back.extra
    # image 1 of the batch (seed 43) alone gives the same image: the generator is per image
    # (to a level of rounding: a batch of 2 runs other matmul kernels than a batch of 1)
    alone, ev = job(session, FLUX_PARAMS.replace(seed=43, batch_size=1), tmp_path / "alone", "x")
    assert pixel_diff(saved[1].path, alone.paths[0]) <= 2
    assert pixel_diff(saved[0].path, alone.paths[0]) > 2  # and seed 42 is another image

    # the same weights as a diffusers folder give the same image for the same seed
    folder = tmp_path / "flux-folder"
    session.txt2img.save_pretrained(folder)
    from_folder = load_pipeline(folder, device="cpu")
    assert from_folder.family.label == "Flux.1 dev"
    done2, _ = job(ModelSession.create(from_folder, "cpu"), FLUX_PARAMS, tmp_path / "out2", "f")
    for a, b in zip(done.paths, done2.paths, strict=True):
        with Image.open(a) as ia, Image.open(b) as ib:
            assert ia.convert("RGB").tobytes() == ib.convert("RGB").tobytes()


def test_split_layout_names_the_missing_file_and_its_folder(
    flux_files: dict[str, Path], flux_parts: dict[str, Any], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    (models / "unet").mkdir(parents=True)
    (models / "VAE").mkdir()
    (models / "text_encoder").mkdir()
    bfl = flux_to_bfl(flux_parts["transformer"].state_dict())
    save_file(
        {k: v.contiguous() for k, v in bfl.items()}, models / "unet" / "flux1-dev.safetensors"
    )
    save_file(
        {k: v.contiguous() for k, v in vae_to_ldm(flux_parts["vae"].state_dict(), 2).items()},
        models / "VAE" / "ae.safetensors",
    )
    save_file(
        text_sd(flux_parts["text_encoder"], ""), models / "text_encoder" / "clip_l.safetensors"
    )
    # said before a byte of weights is read (the bundled real-size configs are never reached)
    with pytest.raises(UserError) as e:
        load_pipeline(models / "unet" / "flux1-dev.safetensors")
    text = str(e.value)
    assert "T5-XXL" in text and "t5xxl_fp16.safetensors" in text
    assert str(models / "text_encoder") in text and "clip_l" not in text and "VAE" not in text
    # with the T5 file there, it loads and draws what the all-in-one file draws
    save_file(
        text_sd(flux_parts["text_encoder_2"], ""),
        models / "text_encoder" / "t5xxl_fp16.safetensors",
    )
    loaded = load(models / "unet" / "flux1-dev.safetensors", flux_files["configs"])
    one = FLUX_PARAMS.replace(batch_size=1)
    done, _ = job(ModelSession.create(loaded, "cpu"), one, tmp_path / "split", "split")
    whole = load(flux_files["file"], flux_files["configs"])
    done2, _ = job(ModelSession.create(whole, "cpu"), one, tmp_path / "whole", "whole")
    assert pixel_diff(done.paths[0], done2.paths[0]) == 0
    # a transformer saved in diffusers' names as one file (some fine-tunes ship so)
    diffusers_file = models / "unet" / "flux1-dev-diffusers.safetensors"
    save_file(
        {k: v.contiguous() for k, v in flux_parts["transformer"].state_dict().items()},
        diffusers_file,
    )
    as_diffusers = load(diffusers_file, flux_files["configs"])
    assert as_diffusers.family.label == "Flux.1 dev"
    done3, _ = job(ModelSession.create(as_diffusers, "cpu"), one, tmp_path / "dl", "dl")
    assert pixel_diff(done.paths[0], done3.paths[0]) == 0


def test_flux_schnell_fp8_file_keeps_fp8_weights(tmp_path: Path) -> None:
    parts = {
        "transformer": tiny_flux(5, dev=False),
        "vae": tiny_vae(2, 0.3611, 0.1159),
        "text_encoder": tiny_clip(3, projection=False),
        "text_encoder_2": tiny_t5(4, d_model=32),
    }
    cfg = tiny_config_dir(tmp_path, "flux1-schnell", parts)
    sd = {
        "model.diffusion_model." + k: v.to(torch.float8_e4m3fn).contiguous()
        for k, v in flux_to_bfl(parts["transformer"].state_dict()).items()
    }
    sd |= {"vae." + k: v.contiguous() for k, v in vae_to_ldm(parts["vae"].state_dict(), 2).items()}
    sd |= text_sd(parts["text_encoder"], "text_encoders.clip_l.transformer.")
    # the T5 as t5xxl_fp8_e4m3fn.safetensors holds it: fp8 too
    t5_fp8 = {
        k: v.to(torch.float8_e4m3fn)
        for k, v in text_sd(parts["text_encoder_2"], "text_encoders.t5xxl.transformer.").items()
    }
    sd |= t5_fp8
    path = tmp_path / "flux1-schnell-fp8.safetensors"
    save_file(sd, path)
    loaded = load(path, cfg, dtype=torch.bfloat16)
    assert loaded.family.label == "Flux.1 schnell"
    weight = loaded.pipe.transformer.x_embedder.weight
    assert weight.dtype == torch.float8_e4m3fn
    # what diffusers' layerwise casting leaves out computes in bf16 (here: the final norm)
    assert loaded.pipe.transformer.norm_out.linear.weight.dtype == torch.bfloat16
    # the T5 keeps its fp8 weights (half the memory of bf16) but for its norms, its token
    # embedding and the .wo projections (T5 casts its input to wo's stored dtype), and
    # encodes exactly as the same weights widened to bf16 up front do
    t5 = loaded.pipe.text_encoder_2
    assert t5.dtype == torch.bfloat16  # what the pipeline casts the prompt embeddings to
    linears = {n: m for n, m in t5.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {n for n, m in linears.items() if m.weight.dtype == torch.float8_e4m3fn} == {
        n for n in linears if not n.endswith(".wo")
    }
    block = t5.encoder.block[0]
    assert block.layer[1].DenseReluDense.wo.weight.dtype == torch.bfloat16
    assert block.layer[0].layer_norm.weight.dtype == torch.bfloat16
    wide = parts["text_encoder_2"].__class__(parts["text_encoder_2"].config)
    wide.load_state_dict(
        {
            k: v.to(torch.float8_e4m3fn).to(torch.bfloat16)
            for k, v in parts["text_encoder_2"].state_dict().items()
        }
    )
    ids = torch.tensor([[3, 9, 1202, 13, 3, 9, 1712, 1]])
    with torch.inference_mode():
        got = t5(ids)[0]
        want = wide.to(torch.bfloat16).eval()(ids)[0]
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    params = FLUX_PARAMS.replace(batch_size=1, steps=1)
    done, events = job(ModelSession.create(loaded, "cpu"), params, tmp_path / "out", "fp8")
    info = next(e.infotext for e in events if isinstance(e, msg.ImageSaved))
    assert "Distilled CFG Scale" not in info and "Schedule type: Simple" in info  # schnell


def test_sd35_medium_single_file_runs(tmp_path: Path) -> None:
    parts = {
        "transformer": tiny_sd3(6),
        "vae": tiny_vae(7, 1.5305, 0.0609),
        "text_encoder": tiny_clip(8, projection=True),
        "text_encoder_2": tiny_clip(9, projection=True),
        "text_encoder_3": tiny_t5(10, d_model=64),
    }
    t = parts["transformer"].state_dict()
    sai = sd3_to_sai(t, 2)
    back = sd3_to_diffusers(sai)  # diffusers' own converter undoes the inversion exactly
    assert back.keys() == t.keys() and all(torch.equal(back[k], t[k]) for k in t)
    cfg = tiny_config_dir(tmp_path, "sd35-medium", parts)
    sd = {"model.diffusion_model." + k: v.contiguous() for k, v in sai.items()}
    sd |= {
        "first_stage_model." + k: v.contiguous()
        for k, v in vae_to_ldm(parts["vae"].state_dict(), 2).items()
    }
    clip_l = text_sd(parts["text_encoder"], "text_encoders.clip_l.transformer.")
    clip_l.pop("text_encoders.clip_l.transformer.text_projection.weight")  # as ComfyUI's files
    sd |= clip_l | text_sd(parts["text_encoder_2"], "text_encoders.clip_g.transformer.")
    sd |= text_sd(parts["text_encoder_3"], "text_encoders.t5xxl.transformer.")
    path = tmp_path / "models" / "Stable-diffusion" / "sd3.5_medium_tiny.safetensors"
    path.parent.mkdir(parents=True)
    save_file(sd, path)
    assert [e.family for e in discover_models(tmp_path / "models")] == ["SD3.5 medium"]
    loaded = load(path, cfg)
    session = ModelSession.create(loaded, "cpu")
    proj = session.txt2img.text_encoder.text_projection.weight
    assert torch.equal(proj, torch.eye(32))  # missing CLIP-L projection: identity, as ComfyUI
    params = GenerationParams(
        prompt="a lighthouse",
        negative_prompt="blurry",
        steps=2,
        sampler="Euler",
        cfg_scale=4.5,
        seed=7,
        width=W,
        height=H,
    )
    done, events = job(session, params, tmp_path / "out", "sd3.5_medium_tiny")
    assert [(e.step, e.width) for e in events if isinstance(e, msg.Preview)] == [(1, 32)]
    info = read_infotext(done.paths[0])
    assert info is not None and "Negative prompt: blurry" in info
    assert info.splitlines()[-1].startswith(
        "Steps: 2, Sampler: Euler, Schedule type: Simple, CFG scale: 4.5, Seed: 7, Size: 64x64"
    )
    assert "Distilled" not in info


def test_what_these_models_cannot_run_is_said() -> None:
    from sdtui.engine.dit import plain_prompt
    from sdtui.model_family import ModelFamily

    # the CLIP encoders read the text without A1111's syntax (the weights go to T5)
    assert (
        plain_prompt("a (red:1.3) fox, [blurry] BREAK ((detailed))") == "a red fox, blurry detailed"
    )

    flux = ModelFamily("Flux", "flux1-dev", variant="dev")
    with pytest.raises(UserError, match=r"DDIM works in SD's timestep space.* Choose one of Euler"):
        check_params(FLUX_PARAMS.replace(sampler="DDIM"), flux)
    with pytest.raises(UserError, match="a refiner, CFG Rescale not supported yet"):
        check_params(FLUX_PARAMS.replace(refiner_checkpoint="r", cfg_rescale=0.7), flux)
    with pytest.raises(UserError, match="multiples of 16, not 520x512"):
        check_params(FLUX_PARAMS.replace(width=520, height=512), flux)


def test_the_engine_runs_a_flux_job_and_refuses_a_sampler_it_cannot_run(
    flux_files: dict[str, Path], tmp_path: Path
) -> None:
    """The worker's own path: a job naming the model loads it (load_pipeline, the session),
    runs it through sdtui.engine.dit, and a sampler Flux cannot run fails with the fix."""
    from sdtui.config import Settings
    from sdtui.engine import configs as configs_module
    from sdtui.engine.worker import Engine, EngineOptions

    events: list[Any] = []
    settings = Settings(models_dir=flux_files["models"], outputs_dir=tmp_path / "outputs")
    eng = Engine(settings, EngineOptions(demo=False, preload=False), events.append)
    eng.device = "cpu"
    params = FLUX_PARAMS.replace(model="flux1-dev-tiny", batch_size=1, steps=1)
    with mock.patch.object(configs_module, "config_dir", lambda name: flux_files["configs"]):
        eng._run(msg.SubmitGenerate(1, params))
        eng._run(msg.SubmitGenerate(2, params.replace(sampler="PLMS")))
    loaded = next(e for e in events if isinstance(e, msg.ModelLoaded))
    assert loaded.family == "Flux.1 dev"
    done = next(e for e in events if isinstance(e, msg.JobDone))
    assert done.job_id == 1 and len(done.paths) == 1 and Path(done.paths[0]).is_file()
    failed = next(e for e in events if isinstance(e, msg.JobFailed))
    assert failed.job_id == 2 and "Choose one of Euler a, Euler, LMS" in failed.message


def test_skip_drops_the_batch_and_cancel_stops_the_job(
    flux_files: dict[str, Path], tmp_path: Path
) -> None:
    session = ModelSession.create(load(flux_files["file"], flux_files["configs"]), "cpu")
    params = FLUX_PARAMS.replace(batch_size=1, batch_count=2, steps=1)
    control = JobControl()
    control.skip.set()  # read at the first step: batch 1 (seed 42) is dropped, batch 2 runs
    done, events = job(session, params, tmp_path / "skip", "s", control)
    assert [e.seed for e in events if isinstance(e, msg.ImageSaved)] == [43]
    assert not done.cancelled and len(done.paths) == 1
    control = JobControl()
    control.cancel.set()
    done, events = job(session, params, tmp_path / "cancel", "c", control)
    assert done.cancelled and done.paths == ()
    assert not any(isinstance(e, msg.ImageSaved) for e in events)


@pytest.mark.parametrize("name", ["flux1-dev", "flux1-schnell", "sd35-medium", "sd35-large"])
def test_real_sized_original_keys_are_detected_converted_and_configured(name: str) -> None:
    """The real models' original key names and shapes (meta tensors, no memory): detected as
    the right release, converted (for Flux like diffusers' own converter, which assumes Flux's
    width), and the transformer settings read from them equal the bundled config's."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import (
        convert_flux_transformer_checkpoint_to_diffusers,
    )

    from sdtui.engine.dit import _transformer_settings

    flux = name.startswith("flux")
    cls = FluxTransformer2DModel if flux else SD3Transformer2DModel
    folder = config_dir(name)
    config = dict(cls.load_config(folder / "transformer"))
    with torch.device("meta"):
        real = cls.from_config(config).state_dict()
    # billions of weights, the position table included (Stability's 2.5 B and 8.1 B)
    size = {"flux1-dev": 11.9, "flux1-schnell": 11.9, "sd35-medium": 2.5, "sd35-large": 8.1}
    assert round(sum(v.numel() for v in real.values()) / 1e9, 1) == size[name]
    original = flux_to_bfl(real) if flux else sd3_to_sai(real, config["num_layers"])
    shapes = {"model.diffusion_model." + k: tuple(v.shape) for k, v in original.items()}
    assert detect_family(shapes).config == name
    converted = flux_to_diffusers(original) if flux else sd3_to_diffusers(original)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in real.items()}
    if flux:
        theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(original))
        assert {k: v.shape for k, v in theirs.items()} == {k: v.shape for k, v in converted.items()}
    settings = _transformer_settings("Flux" if flux else "SD3", converted, config)
    assert settings == {k: v for k, v in config.items() if not k.startswith("_")} | {
        k: settings[k] for k in ("dual_attention_layers",) if k in settings
    }
    if not flux:
        expected = list(range(13)) if name == "sd35-medium" else []
        assert settings["dual_attention_layers"] == expected


def test_transformer_only_files_in_unet_folders_are_listed_and_resolve(tmp_path: Path) -> None:
    """ComfyUI/Forge keep transformer-only files in models/unet and models/diffusion_models:
    listed with their family (headers only), named relative to their folder ("unet/" in front
    where a checkpoint has the name); the text encoders and VAEs kept there are not models."""
    from sdtui.model_index import resolve_model

    models = tmp_path / "models"

    def header_only(path: Path, keys: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: torch.zeros(1, 1) for k in keys}, path)

    flux = ["double_blocks.0.img_attn.qkv.weight", "img_in.weight"]
    header_only(models / "unet" / "flux1-schnell.safetensors", flux)
    header_only(models / "Stable-diffusion" / "flux1-schnell.safetensors", flux)
    header_only(
        models / "diffusion_models" / "sd3" / "sd3.5_medium.safetensors",
        ["joint_blocks.0.context_block.attn.qkv.weight", "joint_blocks.0.x_block.attn2.qkv.weight"],
    )
    header_only(
        models / "unet" / "t5xxl_fp16.safetensors",
        ["encoder.block.0.layer.0.SelfAttention.q.weight"],
    )
    header_only(models / "unet" / "ae.safetensors", ["decoder.conv_in.weight"])
    listed = [(e.name, e.family) for e in discover_models(models)]
    assert listed == [
        ("flux1-schnell", "Flux.1 schnell"),
        ("sd3/sd3.5_medium", "SD3.5 medium"),
        ("unet/flux1-schnell", "Flux.1 schnell"),
    ]
    entries = discover_models(models)
    assert (
        resolve_model("unet/flux1-schnell", entries).path
        == models / "unet" / "flux1-schnell.safetensors"
    )
    found = resolve_model("sd3.5_medium", entries)
    assert found.path == models / "diffusion_models" / "sd3" / "sd3.5_medium.safetensors"
    assert found.stem == "sd3.5_medium"  # the infotext's "Model"
