"""Loading models offline: the demo model in every format, family detection, damaged and
malicious files, v-prediction, the config folders and the diffusers -> LDM conversion."""

from __future__ import annotations

import json
import os
import pickle
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from engine_helpers import tiny_clip_config, tiny_config_folder
from safetensors.torch import load_file, save_file

from sdtui.engine import configs, demo
from sdtui.engine.checkpoint_files import read_checkpoint, read_shapes
from sdtui.engine.configs import config_dir
from sdtui.engine.convert import openclip_to_ldm, unet_to_ldm, vae_to_ldm
from sdtui.engine.demo import DemoModel, ensure_demo_model
from sdtui.engine.models import (
    LoadedModel,
    free_pipeline,
    load_pipeline,
    unet_predicts_v,
    yaml_v_prediction,
)
from sdtui.errors import UserError
from sdtui.model_family import UnknownArchitectureError, detect_family
from sdtui.units import format_bytes

PROMPT = "a photo of a cat"
CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]
U = "model.diffusion_model."


def _generate(loaded: LoadedModel, seed: int = 1234) -> np.ndarray:
    return loaded.pipe(
        PROMPT,
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    ).images


@pytest.fixture(scope="module")
def loaded_demo(demo_model: DemoModel) -> dict[str, LoadedModel]:
    return {
        "folder": load_pipeline(demo_model.folder),
        "safetensors": load_pipeline(demo_model.safetensors),
        "ckpt": load_pipeline(demo_model.ckpt),
    }


# ---------------------------------------------------------------------------------------------
# The demo model
# ---------------------------------------------------------------------------------------------


def test_demo_is_built_once_and_reused(demo_model: DemoModel) -> None:
    for path in (demo_model.folder / "model_index.json", demo_model.safetensors, demo_model.ckpt):
        assert path.is_file()
    stamps = {p: p.stat().st_mtime_ns for p in (demo_model.safetensors, demo_model.ckpt)}
    again = ensure_demo_model()
    assert again == demo_model
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # not rewritten
    root = demo_model.folder.parent
    assert root.name == demo.DEMO_VERSION
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_demo_build_is_deterministic(demo_model: DemoModel, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SDTUI_CACHE_DIR", str(tmp_path))
    fresh = ensure_demo_model()
    assert fresh.safetensors.parent.parent == tmp_path
    a, b = load_file(demo_model.safetensors), load_file(fresh.safetensors)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_demo_single_files_use_the_original_layout(demo_model: DemoModel) -> None:
    shapes = read_shapes(demo_model.safetensors)
    prefixes = {"model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."}
    assert {next(p for p in prefixes if k.startswith(p)) for k in shapes} == prefixes
    assert shapes["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] == (
        49408,
        32,
    )
    assert shapes[U + "input_blocks.0.0.weight"] == (32, 4, 3, 3)
    family = detect_family(shapes)
    assert (family.family, family.config, family.inpainting) == ("SD1", "sdtui-demo", False)
    from_ckpt = read_checkpoint(demo_model.ckpt)
    from_safetensors = read_checkpoint(demo_model.safetensors)
    assert from_ckpt.keys() == from_safetensors.keys() == shapes.keys()
    assert all(torch.equal(from_ckpt[k], from_safetensors[k]) for k in from_ckpt)


def test_same_seed_gives_the_same_image_from_every_format(loaded_demo) -> None:
    images = {fmt: _generate(loaded) for fmt, loaded in loaded_demo.items()}
    reference = images["folder"]
    assert reference.shape == (1, 64, 64, 3)
    assert np.isfinite(reference).all() and reference.std() > 0.01  # a picture, not a flat fill
    np.testing.assert_allclose(images["safetensors"], reference, atol=1e-6)
    np.testing.assert_allclose(images["ckpt"], reference, atol=1e-6)
    np.testing.assert_array_equal(_generate(loaded_demo["ckpt"]), images["ckpt"])
    assert np.abs(_generate(loaded_demo["folder"], seed=99) - reference).max() > 0.01


def test_loaded_model_describes_itself(loaded_demo, demo_model: DemoModel) -> None:
    single = loaded_demo["safetensors"]
    assert single.name == "sdtui-demo"
    assert single.path == demo_model.safetensors
    assert single.size_bytes == demo_model.safetensors.stat().st_size
    assert single.load_seconds > 0
    assert single.prediction_type == "epsilon" and single.family.v_prediction is False
    assert single.family.config == "sdtui-demo"
    assert single.dtype == torch.float32
    assert type(single.pipe).__name__ == "StableDiffusionPipeline"
    assert single.pipe.safety_checker is None
    assert type(single.pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert single.pipe.vae_scale_factor == 8
    folder = loaded_demo["folder"]
    assert folder.family.family == "SD1" and folder.family.config == "sdtui-demo"
    assert folder.size_bytes > 1_000_000


def test_free_pipeline_releases_the_weights(demo_model: DemoModel) -> None:
    loaded = load_pipeline(demo_model.safetensors)
    unet = loaded.pipe.unet  # a stray reference, as a UI or a closure might keep
    free_pipeline(loaded)
    assert loaded.freed
    assert all(p.device.type == "meta" for p in unet.parameters())
    assert all(p.device.type == "meta" for p in loaded.pipe.text_encoder.parameters())
    free_pipeline(loaded)  # twice is harmless


# ---------------------------------------------------------------------------------------------
# Family detection on crafted files (only the keys that matter, with real shapes)
# ---------------------------------------------------------------------------------------------


def _crafted(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    save_file({k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()}, path)
    return path


ATTN2 = U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
CRAFTED = {
    "sd15": ({U + "input_blocks.0.0.weight": (320, 4, 3, 3), ATTN2: (320, 768)}, ("SD1", False)),
    "sd21-768-v": (
        {
            U + "input_blocks.0.0.weight": (320, 4, 3, 3),
            ATTN2: (320, 1024),
            "cond_stage_model.model.ln_final.weight": (1024,),
        },
        ("SD2", False),
    ),
    "sdxl-base": (
        {
            U + "input_blocks.0.0.weight": (320, 4, 3, 3),
            U + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048),
            "conditioner.embedders.1.model.positional_embedding": (77, 1280),
        },
        ("SDXL", False),
    ),
    "sd15-inpainting": (
        {U + "input_blocks.0.0.weight": (320, 9, 3, 3), ATTN2: (320, 768)},
        ("SD1", True),
    ),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_detect_family_from_a_safetensors_header(name: str, tmp_path, monkeypatch) -> None:
    shapes, (family_name, inpainting) = CRAFTED[name]
    path = _crafted(tmp_path / f"{name}.safetensors", shapes)

    def no_tensor_bytes(*args, **kwargs):
        raise AssertionError("read_shapes must not load tensors")

    monkeypatch.setattr("safetensors.torch.load_file", no_tensor_bytes)
    read = read_shapes(path)
    assert read == shapes
    family = detect_family(read)
    assert (family.family, family.inpainting) == (family_name, inpainting)
    assert family.config == name.removesuffix("-inpainting").replace("sd15-", "sd15")


def test_a_lora_is_refused_with_a_clear_message(tmp_path) -> None:
    path = _crafted(
        tmp_path / "my_style_lora.safetensors",
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": (320, 4),
            "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": (),
        },
    )
    with pytest.raises(UnknownArchitectureError):
        detect_family(read_shapes(path))
    with pytest.raises(UserError) as err:
        load_pipeline(path)
    assert "my_style_lora.safetensors" in str(err.value)
    assert "models/Lora" in str(err.value)


def test_inpainting_checkpoint_loads_with_a_nine_channel_unet(demo_model, tmp_path) -> None:
    state = load_file(demo_model.safetensors)
    conv_in = state[U + "input_blocks.0.0.weight"]
    state[U + "input_blocks.0.0.weight"] = torch.cat([conv_in, torch.zeros(32, 5, 3, 3)], dim=1)
    path = tmp_path / "demo-inpainting.safetensors"
    save_file(state, path)
    loaded = load_pipeline(path)
    assert loaded.family.inpainting and loaded.family.label == "SD1 inpainting"
    assert loaded.pipe.unet.config.in_channels == 9
    assert torch.equal(loaded.pipe.unet.conv_in.weight[:, :4], conv_in)


# ---------------------------------------------------------------------------------------------
# Damaged, mislabelled and malicious files
# ---------------------------------------------------------------------------------------------


def test_truncated_safetensors_names_both_sizes(demo_model, tmp_path) -> None:
    data = demo_model.safetensors.read_bytes()
    cut = tmp_path / "half.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    for action in (read_checkpoint, read_shapes, load_pipeline):
        with pytest.raises(UserError) as err:
            action(cut)
        message = str(err.value)
        assert "half.safetensors is truncated" in message
        assert f"{format_bytes(len(data) // 2)} of {format_bytes(len(data))}" in message
        assert " MiB of " in message  # sdtui.units: binary units, named as such
        assert "re-download it" in message
    cut.write_bytes(data[:200])  # cut inside the JSON header
    with pytest.raises(UserError, match="truncated.*re-download"):
        read_checkpoint(cut)


@pytest.mark.parametrize(
    ("content", "opening"),
    [
        ("<html><head><title>404 Not Found</title></head></html>\n", "<html><head><tit..."),
        ("version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "version https://..."),
    ],
)
def test_text_file_named_safetensors(content: str, opening: str, tmp_path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_text(content)
    with pytest.raises(UserError) as err:
        load_pipeline(path)
    assert str(err.value) == (
        f"model.safetensors is not a safetensors file (it starts with '{opening}'): re-download it"
    )


def test_text_file_named_ckpt(tmp_path) -> None:
    path = tmp_path / "model.ckpt"
    path.write_text("<!DOCTYPE html><html>Access denied</html>")
    with pytest.raises(UserError, match="model.ckpt is not a checkpoint file .*re-download"):
        read_checkpoint(path)


def test_truncated_ckpt(demo_model, tmp_path) -> None:
    path = tmp_path / "cut.ckpt"
    path.write_bytes(demo_model.ckpt.read_bytes()[:100_000])
    with pytest.raises(UserError, match="cut.ckpt is damaged or truncated.*re-download"):
        read_checkpoint(path)


class _RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _RunsEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",))


@pytest.mark.parametrize("layout", ["torch.save", "plain pickle"])
def test_malicious_ckpt_is_refused_and_never_runs(layout: str, tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    evil = _RunsShell(f"touch {marker}")
    if layout == "torch.save":
        torch.save({"state_dict": {"w": torch.zeros(2)}, "x": evil}, path)
    else:  # a hand-made pickle, no torch framing at all
        path.write_bytes(pickle.dumps({"x": evil, "state_dict": {}}, protocol=2))
    with pytest.raises(UserError) as err:
        read_checkpoint(path)
    assert not marker.exists()
    assert str(err.value) == (
        f"refused to load evil.ckpt: its pickle tries to run code ({os.system.__module__}.system). "
        "Use a .safetensors version of this model."
    )
    with pytest.raises(UserError, match="refused to load evil.ckpt"):
        load_pipeline(path)
    assert not marker.exists()


def test_pickle_calling_eval_is_refused(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _RunsEval(marker)}, path)
    with pytest.raises(UserError, match=r"tries to run code \(builtins\.eval\)"):
        read_checkpoint(path)
    assert not marker.exists()


def test_old_lightning_checkpoint_is_allowed(tmp_path, monkeypatch) -> None:
    """Old checkpoints pickle Lightning's callback state and numpy scalars beside the weights."""
    module_name = "pytorch_lightning.callbacks.model_checkpoint"
    module = types.ModuleType(module_name)

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__ = module_name
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", module_name):
        monkeypatch.setitem(sys.modules, name, module)
    callback = ModelCheckpoint()
    callback.best_model_score = np.float64(0.25)
    callback.monitor = "val/loss"
    weights = {"model.diffusion_model.out.2.bias": torch.arange(4.0)}
    path = tmp_path / "old.ckpt"
    torch.save(
        {
            "epoch": 6,
            "global_step": np.int64(470000),
            "callbacks": {ModelCheckpoint: callback},
            "state_dict": {"state_dict": weights},
        },
        path,
    )
    monkeypatch.delitem(sys.modules, module_name)  # the user's machine has no Lightning
    state = read_checkpoint(path)
    assert state.keys() == weights.keys()
    assert torch.equal(state["model.diffusion_model.out.2.bias"], torch.arange(4.0))


def test_missing_and_unsupported_files(tmp_path) -> None:
    with pytest.raises(UserError, match="model not found"):
        load_pipeline(tmp_path / "nope.safetensors")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(UserError, match=r"reads \.safetensors and \.ckpt"):
        load_pipeline(other)
    with pytest.raises(UserError, match="without model_index.json"):
        load_pipeline(tmp_path)
    diffusers_unet = _crafted(
        tmp_path / "unet.safetensors", {"down_blocks.0.resnets.0.conv1.weight": (32, 32, 3, 3)}
    )
    with pytest.raises(UserError, match="diffusers-layout"):
        load_pipeline(diffusers_unet)


# ---------------------------------------------------------------------------------------------
# v-prediction
# ---------------------------------------------------------------------------------------------


def test_yaml_beside_the_checkpoint_selects_v_prediction(demo_model, tmp_path) -> None:
    path = tmp_path / "v-model.safetensors"
    path.symlink_to(demo_model.safetensors)
    (tmp_path / "v-model.yaml").write_text(
        "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n"
        '    parameterization: "v"\n    linear_start: 0.00085\n'
    )
    loaded = load_pipeline(path)
    assert loaded.prediction_type == "v_prediction"
    assert loaded.pipe.scheduler.config.prediction_type == "v_prediction"
    assert loaded.family.v_prediction is True
    assert type(loaded.pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"


def test_yaml_without_parameterization_means_epsilon(tmp_path) -> None:
    path = tmp_path / "eps.ckpt"
    assert yaml_v_prediction(path) is None  # no yaml: undecided
    (tmp_path / "eps.yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert yaml_v_prediction(path) is False
    (tmp_path / "eps.yaml").write_text("model:\n  params:\n    parameterization: 'v' # SD 2.x\n")
    assert yaml_v_prediction(path) is True


class _FakeUNet(torch.nn.Module):
    """Answers like a v- or an epsilon-model does at t=999 on A1111's flat latent."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(in_channels=4, cross_attention_dim=1024)
        self.seen: tuple = ()

    def forward(self, x, t, encoder_hidden_states):
        self.seen = (x, t, encoder_hidden_states)
        return SimpleNamespace(sample=x + self.offset)


def test_unet_test_for_v_prediction_follows_a1111() -> None:
    v_like, eps_like = _FakeUNet(-1.5), _FakeUNet(0.2)
    assert unet_predicts_v(v_like) is True
    assert unet_predicts_v(eps_like) is False
    x, t, context = v_like.seen
    assert x.shape == (1, 4, 8, 8) and torch.all(x == 0.5)
    assert t.tolist() == [999]
    assert context.shape == (1, 2, 1024) and torch.all(context == 0.5)


# ---------------------------------------------------------------------------------------------
# Config folders
# ---------------------------------------------------------------------------------------------


def test_config_dir_tokenizers_encode_offline() -> None:
    from transformers import CLIPTokenizer

    sd15 = CLIPTokenizer.from_pretrained(config_dir("sd15") / "tokenizer")
    assert sd15(PROMPT).input_ids == CAT_IDS
    assert sd15.model_max_length == 77 and sd15.pad_token_id == 49407
    padded = sd15(PROMPT, padding="max_length", truncation=True).input_ids
    assert len(padded) == 77 and padded[:7] == CAT_IDS
    xl = config_dir("sdxl-base")
    tok_2 = CLIPTokenizer.from_pretrained(xl / "tokenizer_2")
    assert tok_2(PROMPT).input_ids == CAT_IDS and tok_2.pad_token == "!"
    sd2 = CLIPTokenizer.from_pretrained(config_dir("sd21-512") / "tokenizer")
    assert sd2.pad_token == "!" and sd2.pad_token_id == 0


def test_config_dir_is_complete_cached_and_reused() -> None:
    from diffusers import UNet2DConditionModel

    names = configs.bundled_names()
    unets = {"sd15", "sd21-512", "sd21-768-v", "sdxl-base", "sdxl-refiner", "sdtui-demo"}
    # Flux and SD3.5 have a transformer, not a UNet: tests/test_dit_models.py builds them
    assert set(names) == unets | {"flux1-dev", "flux1-schnell", "sd35-medium", "sd35-large"}
    for name in names:
        folder = config_dir(name)
        assert folder.name.startswith(name + "-") and folder.parent.name == "configs"
        index = json.loads((folder / "model_index.json").read_text())
        parts = ("unet", "vae", "scheduler") if name in unets else ("transformer", "vae")
        for part in parts:
            assert part in index and (folder / part).is_dir()
        # the refiner has no first text encoder (index entry [null, null]): only OpenCLIP-G
        assert (folder / "text_encoder").is_dir() or index["text_encoder"] == [None, None]
        for tok in ("tokenizer", "tokenizer_2", "tokenizer_3"):
            if tok not in index or index[tok][0] is None:
                continue
            if index[tok][1].startswith("CLIP"):
                assert (folder / tok / "vocab.json").is_file()
                assert (folder / tok / "merges.txt").is_file()
            else:  # T5, from the bundled tokenizer.json
                assert (folder / tok / "tokenizer.json").is_file(), (name, tok, index[tok])
        if name in unets:
            unet = UNet2DConditionModel.load_config(folder, subfolder="unet")
            assert unet["in_channels"] == 4
        stamp = (folder / "model_index.json").stat().st_mtime_ns
        assert config_dir(name) == folder
        assert (folder / "model_index.json").stat().st_mtime_ns == stamp
    assert not [p for p in config_dir("sd15").parent.iterdir() if p.name.startswith(".")]


def test_sd21_512_differs_from_768_v_only_where_it_should() -> None:
    def flat(name: str) -> dict[str, object]:
        root = configs.BUNDLED / name
        return {
            f"{p.relative_to(root)}:{k}": v
            for p in sorted(root.rglob("*.json"))
            for k, v in json.loads(p.read_text()).items()
        }

    a, b = flat("sd21-768-v"), flat("sd21-512")
    assert {k for k in a if a[k] != b.get(k)} == {
        "scheduler/scheduler_config.json:prediction_type",
        "unet/config.json:sample_size",
        "vae/config.json:sample_size",
    }
    assert b["scheduler/scheduler_config.json:prediction_type"] == "epsilon"
    assert b["unet/config.json:sample_size"] == 64


# ---------------------------------------------------------------------------------------------
# diffusers -> LDM conversion, read back by diffusers' own LDM -> diffusers code
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("down", "up", "layers"),
    [
        (
            ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            2,
        ),
        (("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D"), 1),
    ],
)
def test_unet_conversion_round_trips(down, up, layers) -> None:
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32,) * (len(down) - 1) + (64,),
        layers_per_block=layers,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=16,
        attention_head_dim=8,
    )
    original = unet.state_dict()
    ldm = {U + k: v for k, v in unet_to_ldm(original, unet.config).items()}
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)


def test_vae_conversion_round_trips(demo_model) -> None:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae = AutoencoderKL.from_pretrained(demo_model.folder, subfolder="vae", local_files_only=True)
    original = vae.state_dict()
    ldm = {"first_stage_model." + k: v for k, v in vae_to_ldm(original, vae.config).items()}
    assert ldm["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4  # LDM 1x1 conv
    back = convert_ldm_vae_checkpoint(ldm, dict(vae.config))
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)


def test_openclip_conversion_round_trips() -> None:
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    config = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=40,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=24,
        hidden_act="gelu",
    )
    model = CLIPTextModelWithProjection(config)
    original = model.state_dict()
    prefix = "conditioner.embedders.1.model."
    ldm = {prefix + k: v for k, v in openclip_to_ldm(original).items()}
    assert ldm[prefix + "transformer.resblocks.0.attn.in_proj_weight"].shape == (96, 32)
    assert ldm[prefix + "text_projection"].shape == (32, 24)
    back = convert_open_clip_checkpoint(model, ldm, prefix=prefix)
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)


# ---------------------------------------------------------------------------------------------
# SDXL and SD 2.x single-file assembly, on tiny stand-ins (the real configs are too big for CPU)
# ---------------------------------------------------------------------------------------------


def test_sdxl_single_file_builds_both_text_encoders(tmp_path, monkeypatch) -> None:
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from sdtui.engine import models
    from sdtui.engine.convert import stable_diffusion_to_ldm
    from sdtui.model_family import ModelFamily

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 48,
        cross_attention_dim=32 + 48,
    )
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir("sdtui-demo") / "vae"))
    te1 = CLIPTextModel(tiny_clip_config("quick_gelu"))
    # Widths differ as in SDXL (768 / 1280): diffusers tells the two encoders apart by width.
    te2 = CLIPTextModelWithProjection(tiny_clip_config("gelu", hidden=48))
    folder = tiny_config_folder(
        tmp_path,
        "sdxl-base",
        {"unet": unet, "vae": vae, "text_encoder": te1, "text_encoder_2": te2},
    )
    path = tmp_path / "tiny-xl.safetensors"
    save_file(stable_diffusion_to_ldm(unet, vae, te1, te2), path)
    with pytest.raises(UnknownArchitectureError, match="SDXL-like"):
        detect_family(read_shapes(path))  # the real classifier sees SDXL, at an unknown width
    monkeypatch.setattr(models, "detect_family", lambda shapes: ModelFamily("SDXL", "sdxl-base"))
    monkeypatch.setattr(models, "config_dir", lambda name: folder)

    loaded = load_pipeline(path)
    assert type(loaded.pipe).__name__ == "StableDiffusionXLPipeline"
    assert loaded.prediction_type == "epsilon" and loaded.family.v_prediction is False
    assert loaded.pipe.tokenizer_2.pad_token == "!"
    reference = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_pretrained(folder / "scheduler"),
    )
    reference.set_progress_bar_config(disable=True)
    expected = _generate(SimpleNamespace(pipe=reference))
    np.testing.assert_allclose(_generate(loaded), expected, atol=1e-5)


def test_sd2_single_file_asks_the_unet_when_there_is_no_yaml(tmp_path, monkeypatch) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from sdtui.engine import models
    from sdtui.engine.convert import stable_diffusion_to_ldm
    from sdtui.model_family import ModelFamily

    torch.manual_seed(0)
    demo_unet = UNet2DConditionModel.load_config(config_dir("sdtui-demo") / "unet")
    unet = UNet2DConditionModel.from_config(demo_unet, use_linear_projection=True)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir("sdtui-demo") / "vae"))
    te = CLIPTextModel(tiny_clip_config("gelu"))
    folders = {
        name: tiny_config_folder(
            tmp_path / name, name, {"unet": unet, "vae": vae, "text_encoder": te}
        )
        for name in ("sd21-768-v", "sd21-512")
    }
    for name, size in (("sd21-768-v", 96), ("sd21-512", 64)):  # as in the bundled configs
        unet_json = folders[name] / "unet" / "config.json"
        unet_json.write_text(json.dumps({**json.loads(unet_json.read_text()), "sample_size": size}))
    path = tmp_path / "tiny-sd2.safetensors"
    state = stable_diffusion_to_ldm(unet, vae, te, openclip=True)
    assert "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight" in state
    save_file(state, path)
    monkeypatch.setattr(models, "detect_family", lambda shapes: ModelFamily("SD2", "sd21-768-v"))
    monkeypatch.setattr(models, "config_dir", lambda name: folders[name])

    loaded = load_pipeline(path)
    v = unet_predicts_v(loaded.pipe.unet)
    assert loaded.prediction_type == ("v_prediction" if v else "epsilon")
    assert loaded.family.config == ("sd21-768-v" if v else "sd21-512")
    assert loaded.pipe.unet.config.sample_size == (96 if v else 64)
    assert type(loaded.pipe.scheduler).__name__ == "DDIMScheduler"
    for name, tensor in te.state_dict().items():  # the OpenCLIP weights came back intact
        assert torch.equal(loaded.pipe.text_encoder.state_dict()[name], tensor), name

    (tmp_path / "tiny-sd2.yaml").write_text("model:\n  params:\n    parameterization: v\n")
    with_yaml = load_pipeline(path)
    assert with_yaml.prediction_type == "v_prediction"
    assert with_yaml.family.config == "sd21-768-v"
    assert with_yaml.pipe.unet.config.sample_size == 96  # the 768-px default size


def test_text_encoder_that_does_not_load_is_an_error_not_noise(demo_model, tmp_path) -> None:
    state = load_file(demo_model.safetensors)
    key = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    state["cond_stage_model.transformer.text_model.embeddings.token_embeddings.weight"] = state.pop(
        key
    )
    path = tmp_path / "odd.safetensors"
    save_file(state, path)
    with pytest.raises(UserError, match=r"text encoder weights of odd.safetensors did not load"):
        load_pipeline(path)


# --- SDXL v-prediction fine-tunes (NoobAI-XL v-pred and others) ---------------------------------


def _sdxl_shapes(**extra: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The names and shapes detect_family reads, at real SDXL base widths."""
    return {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (
            640,
            2048,
        ),
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (
            49408,
            768,
        ),
        "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280),
        **extra,
    }


def test_sdxl_v_pred_and_ztsnr_markers_are_detected_and_listed() -> None:
    plain = detect_family(_sdxl_shapes())
    assert (plain.v_prediction, plain.zero_terminal_snr, plain.label) == (None, False, "SDXL")
    vpred = detect_family(_sdxl_shapes(v_pred=(0,)))
    assert (vpred.v_prediction, vpred.zero_terminal_snr, vpred.label) == (
        True,
        False,
        "SDXL v-pred",
    )
    both = detect_family(_sdxl_shapes(v_pred=(0,), ztsnr=(0,)))
    assert both.label == "SDXL v-pred ztsnr" and both.config == "sdxl-base"
    # Pony and Illustrious carry no markers: plain SDXL
    assert detect_family(_sdxl_shapes()).family == "SDXL"


def test_zero_terminal_snr_is_a1111s_schedule() -> None:
    from sdtui.engine.samplers import ZTSNR_LAST_ALPHA_BAR, _ldm_alphas_cumprod, a1111_sigmas

    config = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    base = _ldm_alphas_cumprod(config, torch.zeros(1000))
    ac = _ldm_alphas_cumprod({**config, "rescale_betas_zero_snr": True}, torch.zeros(1000))
    # A1111 rescale_zero_terminal_snr_abar: the first alpha bar kept, the last 4.897e-08,
    # sqrt(alpha bar) an affine map of the old one in between
    assert float(ac[0]) == pytest.approx(float(base[0]), rel=1e-12)
    assert float(ac[-1]) == ZTSNR_LAST_ALPHA_BAR
    s, s0 = ac[1:-1].sqrt(), base[1:-1].sqrt()
    slope = (s[1:] - s[:-1]) / (s0[1:] - s0[:-1])
    assert torch.allclose(slope, slope[0].expand_as(slope), rtol=1e-6)
    sigmas = a1111_sigmas("Euler", "Normal", 10, ac)
    assert float(sigmas[0]) == pytest.approx(
        ((1 - ZTSNR_LAST_ALPHA_BAR) / ZTSNR_LAST_ALPHA_BAR) ** 0.5, rel=1e-9
    )
    assert float(sigmas[-2]) == pytest.approx(0.0292, abs=1e-4)  # the low end is the model's own


def test_sdxl_v_pred_ztsnr_single_file_loads_with_its_schedule(tmp_path, monkeypatch) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from sdtui.engine import models
    from sdtui.engine.convert import stable_diffusion_to_ldm
    from sdtui.model_family import ModelFamily, with_markers

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 48,
        cross_attention_dim=32 + 48,
    )
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir("sdtui-demo") / "vae"))
    te1 = CLIPTextModel(tiny_clip_config("quick_gelu"))
    te2 = CLIPTextModelWithProjection(tiny_clip_config("gelu", hidden=48))
    folder = tiny_config_folder(
        tmp_path,
        "sdxl-base",
        {"unet": unet, "vae": vae, "text_encoder": te1, "text_encoder_2": te2},
    )
    path = tmp_path / "tiny-xl-vpred.safetensors"
    state = stable_diffusion_to_ldm(unet, vae, te1, te2)
    state.update(v_pred=torch.tensor([]), ztsnr=torch.tensor([]))  # NoobAI's empty markers
    save_file(state, path)
    # the tiny widths are not a real SDXL's: the classifier's width check is bypassed, the
    # markers are read by the same function detect_family uses
    monkeypatch.setattr(
        models,
        "detect_family",
        lambda shapes: with_markers(ModelFamily("SDXL", "sdxl-base"), shapes),
    )
    monkeypatch.setattr(models, "config_dir", lambda name: folder)

    loaded = load_pipeline(path)
    assert loaded.prediction_type == "v_prediction"
    assert loaded.family.label == "SDXL v-pred ztsnr"
    assert loaded.pipe.scheduler.config.rescale_betas_zero_snr is True
    # A1111's sampling over it: sigmas from ~4519 down, v-prediction scalings, a finite result
    from sdtui.engine.conditioning import encode_job_conds
    from sdtui.engine.sampling import Denoiser, Plan, sample

    pipe = loaded.pipe
    conds = encode_job_conds(pipe, PROMPT, "", 3, device="cpu")
    config = dict(pipe.scheduler.config)
    denoiser = Denoiser(
        pipe.unet,
        conds,
        5.0,
        scheduler_config=config,
        alphas_cumprod=pipe.scheduler.alphas_cumprod,
        device=torch.device("cpu"),
        size=(64, 64),
    )
    assert denoiser.v and float(denoiser.alphas_cumprod[-1]) == pytest.approx(
        4.8973451890853435e-08
    )
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, 8, 8, generator=gen)
    out = sample(
        denoiser, Plan("Euler a", "Automatic", 3, 3, 5.0, 64, 64), noise, [gen], None, config
    )
    assert torch.isfinite(out).all()
    # and the infotext says so, as A1111's apply_alpha_schedule_override does
    from sdtui.engine.session import ModelSession
    from sdtui.params import GenerationParams

    pairs = ModelSession.create(loaded, "cpu").extra_infotext(GenerationParams())
    assert pairs == {"Noise Schedule": "Zero Terminal SNR"}  # RNG: written by the params
