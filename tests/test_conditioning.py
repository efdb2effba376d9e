"""A1111-style prompt conditioning on tiny random SD1 and SDXL pipelines (CPU, no Hub)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from sdtui.clip_vocab import write_tokenizer_files  # noqa: E402
from sdtui.engine.conditioning import encode_prompts  # noqa: E402
from sdtui.prompt_syntax import PromptSyntaxError  # noqa: E402

HIDDEN = 32
LONG = "cat " * 300  # 300 tokens, no commas: exactly 4 chunks


def _tokenizer(folder: Path, **kwargs: Any) -> Any:
    write_tokenizer_files(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    return transformers.CLIPTokenizer.from_pretrained(folder, **kwargs)


def _clip_config(**kwargs: Any) -> Any:
    return transformers.CLIPTextConfig(
        vocab_size=49408,
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        **kwargs,
    )


def _vae() -> Any:
    return diffusers.AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
    )


@pytest.fixture(scope="module")
def sd1(tmp_path_factory: pytest.TempPathFactory) -> Any:
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN,
    )
    pipe = diffusers.StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=transformers.CLIPTextModel(_clip_config()),
        tokenizer=_tokenizer(tmp_path_factory.mktemp("tok")),
        unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory: pytest.TempPathFactory) -> Any:
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + HIDDEN,
        cross_attention_dim=2 * HIDDEN,
    )
    folder = tmp_path_factory.mktemp("tok")
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=transformers.CLIPTextModel(_clip_config()),
        text_encoder_2=transformers.CLIPTextModelWithProjection(
            _clip_config(projection_dim=HIDDEN)
        ),
        tokenizer=_tokenizer(folder / "1"),
        tokenizer_2=_tokenizer(folder / "2", pad_token="!"),
        unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _diffusers_sd1(pipe: Any, prompt: str, negative: str) -> Any:
    return pipe.encode_prompt(prompt, "cpu", 1, True, negative)


# -- SD1 ------------------------------------------------------------------------------------


def test_plain_prompt_matches_diffusers(sd1: Any) -> None:
    out = encode_prompts(sd1, "a photo of a cat", "blurry, ugly")
    ref_pos, ref_neg = _diffusers_sd1(sd1, "a photo of a cat", "blurry, ugly")
    assert set(out) == {"prompt_embeds", "negative_prompt_embeds"}
    assert out["prompt_embeds"].shape == (1, 77, HIDDEN)
    torch.testing.assert_close(out["prompt_embeds"], ref_pos)
    torch.testing.assert_close(out["negative_prompt_embeds"], ref_neg)


def test_clip_skip(sd1: Any) -> None:
    one = encode_prompts(sd1, "a photo of a cat", "")["prompt_embeds"]
    two = encode_prompts(sd1, "a photo of a cat", "", clip_skip=2)["prompt_embeds"]
    assert not torch.allclose(one, two)
    # A1111 clip skip 2: the output of the next-to-last layer, through the final layer norm
    # (diffusers' own clip_skip does the same but breaks on transformers 5's CLIPTextModel)
    ids = sd1.tokenizer("a photo of a cat", padding="max_length", return_tensors="pt").input_ids
    te = sd1.text_encoder
    hidden = te(ids, output_hidden_states=True).hidden_states[-2]
    ref = getattr(te, "text_model", te).final_layer_norm(hidden)
    torch.testing.assert_close(two, ref)
    # deeper than the tiny model has layers: clamps to the embedding output, no IndexError
    assert encode_prompts(sd1, "a", "", clip_skip=4)["prompt_embeds"].shape == (1, 77, HIDDEN)
    with pytest.raises(ValueError, match="clip skip"):
        encode_prompts(sd1, "a", "", clip_skip=5)


def test_long_prompt_is_chunked_not_truncated(sd1: Any) -> None:
    out = encode_prompts(sd1, LONG, "")
    assert out["prompt_embeds"].shape == (1, 4 * 77, HIDDEN)
    # negative padded to the same chunk count with encodings of the empty prompt
    assert out["negative_prompt_embeds"].shape == (1, 4 * 77, HIDDEN)
    empty = encode_prompts(sd1, "", "")["prompt_embeds"]
    neg = out["negative_prompt_embeds"].reshape(4, 77, HIDDEN)
    for i in range(4):
        torch.testing.assert_close(neg[i : i + 1], empty)
    # every chunk of 75 identical words encodes like a 75-word prompt
    chunk = encode_prompts(sd1, "cat " * 75, "")["prompt_embeds"]
    pos = out["prompt_embeds"].reshape(4, 77, HIDDEN)
    for i in range(4):
        torch.testing.assert_close(pos[i : i + 1], chunk)


def test_long_negative_pads_the_prompt(sd1: Any) -> None:
    out = encode_prompts(sd1, "a cat", "cat " * 100)
    assert out["prompt_embeds"].shape == (1, 2 * 77, HIDDEN)
    assert out["negative_prompt_embeds"].shape == (1, 2 * 77, HIDDEN)
    short = encode_prompts(sd1, "a cat", "")["prompt_embeds"]
    torch.testing.assert_close(out["prompt_embeds"][:, :77], short)


def test_break_starts_a_new_chunk(sd1: Any) -> None:
    out = encode_prompts(sd1, "a red cat BREAK a blue dog", "")["prompt_embeds"]
    assert out.shape == (1, 2 * 77, HIDDEN)
    first = encode_prompts(sd1, "a red cat", "")["prompt_embeds"]
    second = encode_prompts(sd1, "a blue dog", "")["prompt_embeds"]
    torch.testing.assert_close(out[:, :77], first)
    torch.testing.assert_close(out[:, 77:], second)


def test_weights_scale_tokens_and_keep_the_mean(sd1: Any) -> None:
    plain = encode_prompts(sd1, "a photo of a cat", "")["prompt_embeds"]
    weighted = encode_prompts(sd1, "a photo of a (cat:1.5)", "")["prompt_embeds"]
    assert not torch.allclose(plain, weighted)
    torch.testing.assert_close(weighted.mean(), plain.mean())
    # exactly A1111's formula: z * w, then rescaled to the original mean
    w = torch.ones(1, 77, 1)
    w[0, 5] = 1.5  # BOS a photo of a [cat]
    scaled = plain * w
    torch.testing.assert_close(weighted, scaled * (plain.mean() / scaled.mean()))
    # (cat) and [cat] are 1.1 and 1/1.1
    assert not torch.allclose(
        encode_prompts(sd1, "(cat)", "")["prompt_embeds"],
        encode_prompts(sd1, "[cat]", "")["prompt_embeds"],
    )


def test_lora_tags_do_not_reach_the_encoder(sd1: Any) -> None:
    a = encode_prompts(sd1, "a photo <lora:foo:0.8> of a cat", "<lora:bar:1> ugly")
    b = encode_prompts(sd1, "a photo of a cat", "ugly")
    torch.testing.assert_close(a["prompt_embeds"], b["prompt_embeds"])
    torch.testing.assert_close(a["negative_prompt_embeds"], b["negative_prompt_embeds"])


def test_bad_weight_raises_user_error(sd1: Any) -> None:
    with pytest.raises(PromptSyntaxError):
        encode_prompts(sd1, "(cat:1..5)", "")


def test_sd1_pipeline_accepts_long_embeddings(sd1: Any) -> None:
    kwargs = encode_prompts(sd1, LONG, "(ugly:1.2), blurry")
    image = sd1(
        **kwargs,
        num_inference_steps=1,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert image.shape == (1, 64, 64, 3)


# -- SDXL -----------------------------------------------------------------------------------


def test_sdxl_matches_diffusers_for_a_short_prompt(sdxl: Any) -> None:
    out = encode_prompts(sdxl, "a photo of a cat", "blurry")
    assert out["prompt_embeds"].shape == (1, 77, 2 * HIDDEN)
    assert out["pooled_prompt_embeds"].shape == (1, HIDDEN)
    pos, neg, pooled, neg_pooled = sdxl.encode_prompt(
        "a photo of a cat", device="cpu", negative_prompt="blurry"
    )
    torch.testing.assert_close(out["prompt_embeds"], pos)
    torch.testing.assert_close(out["negative_prompt_embeds"], neg)
    torch.testing.assert_close(out["pooled_prompt_embeds"], pooled)
    torch.testing.assert_close(out["negative_pooled_prompt_embeds"], neg_pooled)


def test_sdxl_empty_negative_is_zero_and_clip_skip_ignored(sdxl: Any) -> None:
    out = encode_prompts(sdxl, LONG, "<lora:x:1>")
    assert out["prompt_embeds"].shape == (1, 4 * 77, 2 * HIDDEN)
    assert out["negative_prompt_embeds"].shape == (1, 4 * 77, 2 * HIDDEN)
    # A1111: the empty negative is zeros; the padding chunks are the empty-prompt encoding
    assert torch.count_nonzero(out["negative_prompt_embeds"][:, :77]) == 0
    assert torch.count_nonzero(out["negative_pooled_prompt_embeds"]) == 0
    empty = encode_prompts(sdxl, "", "x")["prompt_embeds"]
    torch.testing.assert_close(out["negative_prompt_embeds"][:, 77:154], empty)
    # pooled comes from the first chunk
    first = encode_prompts(sdxl, "cat " * 75, "")
    torch.testing.assert_close(out["pooled_prompt_embeds"], first["pooled_prompt_embeds"])
    skipped = encode_prompts(sdxl, LONG, "", clip_skip=2)
    torch.testing.assert_close(skipped["prompt_embeds"], out["prompt_embeds"])


def test_sdxl_weights_per_encoder(sdxl: Any) -> None:
    plain = encode_prompts(sdxl, "a photo of a cat", "")["prompt_embeds"]
    weighted = encode_prompts(sdxl, "a photo of a (cat:1.5)", "")["prompt_embeds"]
    assert not torch.allclose(plain, weighted)
    # each encoder's half keeps its own mean
    torch.testing.assert_close(weighted[..., :HIDDEN].mean(), plain[..., :HIDDEN].mean())
    torch.testing.assert_close(weighted[..., HIDDEN:].mean(), plain[..., HIDDEN:].mean())


def test_sdxl_pipeline_accepts_embeddings(sdxl: Any) -> None:
    kwargs = encode_prompts(sdxl, LONG, "ugly")
    image = sdxl(
        **kwargs,
        num_inference_steps=1,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert image.shape == (1, 64, 64, 3)
