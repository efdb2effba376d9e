"""A1111 prompt editing ``[from:to:when]`` and alternation ``[a|b]``: the schedule
(sdtui.prompt_schedule, torch-free) and the per-step conditioning in the engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sdtui.params import GenerationParams
from sdtui.prompt_schedule import (
    get_learned_conditioning_prompt_schedules,
    has_prompt_editing,
    prompt_schedule,
    text_at,
)

# The doctest table of get_learned_conditioning_prompt_schedules in AUTOMATIC1111's
# modules/prompt_parser.py (stable-diffusion-webui, commit 28bd8e142d5f), verified by running
# A1111's lark grammar (lark 1.3.1) on each prompt.
A1111_DOCTESTS = [
    ("test", [[10, "test"]]),
    ("a [b:3]", [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", [[10, "a [unbalanced"]]),
    ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
    ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
    (
        "[a|(b:1.1)]",
        [
            [1, "a"],
            [2, "(b:1.1)"],
            [3, "a"],
            [4, "(b:1.1)"],
            [5, "a"],
            [6, "(b:1.1)"],
            [7, "a"],
            [8, "(b:1.1)"],
            [9, "a"],
            [10, "(b:1.1)"],
        ],
    ),
    (
        "[fe|]male",
        [
            [1, "female"],
            [2, "male"],
            [3, "female"],
            [4, "male"],
            [5, "female"],
            [6, "male"],
            [7, "female"],
            [8, "male"],
            [9, "female"],
            [10, "male"],
        ],
    ),
    (
        "[fe|||]male",
        [
            [1, "female"],
            [2, "male"],
            [3, "male"],
            [4, "male"],
            [5, "female"],
            [6, "male"],
            [7, "male"],
            [8, "male"],
            [9, "female"],
            [10, "male"],
        ],
    ),
]

# Same source, the hires variant: get_learned_conditioning_prompt_schedules([p], 10, 10)
A1111_HIRES_DOCTESTS = [
    ("a [b:.5] c", [[10, "a b c"]]),
    ("a [b:1.5] c", [[5, "a  c"], [10, "a b c"]]),
]

# Further cases, each checked against A1111's lark grammar (not in its docstring). Its
# doctest line 'g("a [{b|d{:.5] c")  # not handling this right now' expects
# [[5, 'a  c'], [10, 'a {b|d{ c']], but the grammar cannot read that prompt (a "|" outside an
# alternation): A1111 really keeps it whole, and so does this.
LARK_CHECKED = [
    ("a [{b|d{:.5] c", 10, [[10, "a [{b|d{:.5] c"]]),
    ("[a|b", 10, [[10, "[a|b"]]),
    ("[a:2] |", 10, [[10, "[a:2] |"]]),
    ("(a:[b:c:0.5])", 10, [[5, "(a:b)"], [10, "(a:c)"]]),
    ("[a:b:-1]", 10, [[10, "b"]]),
    ("[a:b:1e1]", 10, [[10, "a"]]),
    ("[a:2.]", 10, [[10, ""]]),
    ("[a::2]", 10, [[2, "a"], [10, ""]]),
    ("x [a:b: 3 ] y", 10, [[3, "x a y"], [10, "x b y"]]),
    ("[a:(b:2)]", 10, [[10, "[a:(b:2)]"]]),
    ("[a[b:2]]", 10, [[2, "[a]"], [10, "[ab]"]]),
    (
        "[[a|b]:c:3]",
        10,
        [
            [1, "a"],
            [2, "b"],
            [3, "a"],
            [4, "c"],
            [5, "c"],
            [6, "c"],
            [7, "c"],
            [8, "c"],
            [9, "c"],
            [10, "c"],
        ],
    ),
    ("a, [b:c:0.5], d: e", 10, [[5, "a, b, d: e"], [10, "a, c, d: e"]]),
    ("[a\\:b:2]", 10, [[2, ""], [10, "a\\:b"]]),
]


@pytest.mark.parametrize(("prompt", "expected"), A1111_DOCTESTS)
def test_a1111_doctest_schedules(prompt: str, expected: list) -> None:
    assert get_learned_conditioning_prompt_schedules([prompt], 10)[0] == expected


@pytest.mark.parametrize(("prompt", "expected"), A1111_HIRES_DOCTESTS)
def test_a1111_doctest_hires_schedules(prompt: str, expected: list) -> None:
    assert get_learned_conditioning_prompt_schedules([prompt], 10, 10)[0] == expected


@pytest.mark.parametrize(("prompt", "steps", "expected"), LARK_CHECKED)
def test_schedules_checked_against_the_lark_grammar(
    prompt: str, steps: int, expected: list
) -> None:
    assert prompt_schedule(prompt, steps) == expected


def test_old_scheduling_takes_numbers_below_one_as_fractions() -> None:
    assert prompt_schedule("[a:b:0.5]", 10, 10, use_old_scheduling=True) == [[5, "a"], [10, "b"]]
    assert prompt_schedule("[a:b:3]", 10, 10, use_old_scheduling=True) == [[3, "a"], [10, "b"]]


def test_model_calls_count_from_zero_as_reconstruct_cond_batch() -> None:
    # A1111's denoiser counts its calls from 0 and takes the first entry with step <= end
    sched = prompt_schedule("[cat:dog:2]", 4)
    assert [text_at(sched, k) for k in range(4)] == ["cat", "cat", "cat", "dog"]
    alt = prompt_schedule("[a|b]", 4)
    assert [text_at(alt, k) for k in range(5)] == ["a", "a", "b", "a", "b"]
    assert text_at(sched, 99) == "cat"  # past the end: the first entry, as A1111


def test_plain_prompts_have_no_editing() -> None:
    for p in ["a cat", "(a:1.2) [b] c", "a: b", "a [b", "", "BREAK x"]:
        assert not has_prompt_editing(p, prompt_schedule(p, 20)), p
    assert has_prompt_editing("[a:b:-1]", prompt_schedule("[a:b:-1]", 20))


def test_schedule_module_is_torch_free() -> None:
    import subprocess
    import sys

    code = "import sys, sdtui.prompt_schedule; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- engine: per-step conditioning on the demo model ----------------------------------------

STEPS = 4
TINY = dict(width=64, height=64, steps=STEPS, sampler="Euler", seed=7, preview_every=0)


@pytest.fixture(scope="module")
def session(demo_model: Any) -> Any:
    pytest.importorskip("torch")
    from engine_helpers import demo_session

    return demo_session(demo_model.safetensors)


def _record(session: Any, params: GenerationParams, out: Path) -> tuple[Any, list, list]:
    """Run a job; (JobDone, text-encoder input ids per call, UNet encoder_hidden_states per
    call)."""
    from engine_helpers import run_job

    pipe = session.txt2img
    ids: list = []
    states: list = []
    h1 = pipe.text_encoder.register_forward_pre_hook(
        lambda mod, args, kwargs: ids.append((args[0] if args else kwargs["input_ids"]).clone()),
        with_kwargs=True,
    )
    h2 = pipe.unet.register_forward_pre_hook(
        lambda mod, args, kwargs: states.append(kwargs["encoder_hidden_states"].clone()),
        with_kwargs=True,
    )
    try:
        done, _ = run_job(session, params, out)
    finally:
        h1.remove()
        h2.remove()
    return done, ids, states


def test_editing_encodes_each_distinct_text_once_and_switches_at_the_right_step(
    session: Any, tmp_path: Path
) -> None:
    import torch

    from sdtui.engine.conditioning import encode_prompts

    pipe = session.txt2img
    params = GenerationParams(**TINY, prompt="[cat:dog:0.5]", negative_prompt="ugly", batch_size=2)
    done, ids, states = _record(session, params, tmp_path / "edit")
    assert len(done.paths) == 2

    # (a) three text-encoder runs: "cat", "dog" and the negative, once each
    assert len(ids) == 3
    firsts = sorted(tuple(row[0, :3].tolist()) for row in ids)
    expected = sorted(tuple(pipe.tokenizer(t).input_ids[:3]) for t in ["cat", "dog", "ugly"])
    assert firsts == expected

    # (b) schedule [[2, 'cat'], [4, 'dog']]: calls 0, 1, 2 see "cat", call 3 "dog"
    assert len(states) == STEPS
    direct = {t: encode_prompts(pipe, t, "ugly", device="cpu") for t in ("cat", "dog")}
    for k, z in enumerate(states):
        want = direct["cat" if k <= 2 else "dog"]
        assert z.shape[0] == 4  # CFG, as A1111's CFGDenoiser: [cond] * 2 + [uncond] * 2
        for row in (0, 1):
            torch.testing.assert_close(z[row], want["prompt_embeds"][0], atol=1e-5, rtol=1e-5)
        for row in (2, 3):
            torch.testing.assert_close(
                z[row], want["negative_prompt_embeds"][0], atol=1e-5, rtol=1e-5
            )
    assert not torch.allclose(states[2][0], states[3][0])


def test_a_schedule_that_never_changes_gives_the_plain_prompts_image(
    session: Any, tmp_path: Path
) -> None:
    import numpy as np
    from PIL import Image

    plain = GenerationParams(**TINY, prompt="a black house cat")
    before, ids, _ = _record(session, plain, tmp_path / "before")
    assert len(ids) == 2  # the prompt and the negative, each encoded once
    a = np.asarray(Image.open(before.paths[0])).astype(int)
    # [x::N] keeps x to the end
    same = GenerationParams(**TINY, prompt="[a black house cat::99]")
    edited, _, _ = _record(session, same, tmp_path / "same")
    c = np.asarray(Image.open(edited.paths[0])).astype(int)
    assert np.abs(c - a).max() <= 1


def _tiny_sdxl(tmp_path: Path) -> Any:
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    import torch
    from test_conditioning import HIDDEN, _clip_config, _tokenizer, _vae

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
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=transformers.CLIPTextModel(_clip_config()),
        text_encoder_2=transformers.CLIPTextModelWithProjection(
            _clip_config(projection_dim=HIDDEN)
        ),
        tokenizer=_tokenizer(tmp_path / "1"),
        tokenizer_2=_tokenizer(tmp_path / "2", pad_token="!"),
        unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_sdxl_switches_embeddings_and_pooled_with_padded_chunks(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    from sdtui.engine.conditioning import encode_job_conds, encode_prompts
    from sdtui.engine.sampling import Denoiser, Plan, sample

    pipe = _tiny_sdxl(tmp_path)
    long = "dog " * 100  # two chunks; "cat" is padded to two with empty-prompt chunks
    conds = encode_job_conds(pipe, f"[cat:{long}:0.5]", "", STEPS, device="cpu")
    assert conds.encoded == 2 * 2  # two texts, two encoders; the empty negative is zeros
    seen: list = []

    def hook(mod: Any, args: Any, kwargs: Any) -> None:
        seen.append(
            (
                kwargs["encoder_hidden_states"].clone(),
                kwargs["added_cond_kwargs"]["text_embeds"].clone(),
                kwargs["added_cond_kwargs"]["time_ids"].clone(),
            )
        )

    denoiser = Denoiser(
        pipe.unet,
        conds,
        5.0,
        scheduler_config=dict(pipe.scheduler.config),
        alphas_cumprod=pipe.scheduler.alphas_cumprod,
        device=torch.device("cpu"),
        size=(64, 48),
    )
    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        plan = Plan("Euler", "Automatic", STEPS, STEPS, 5.0, 48, 64)
        noise = torch.randn(1, 4, 8, 6, generator=torch.Generator().manual_seed(0))
        sample(denoiser, plan, noise, [torch.Generator().manual_seed(0)])
    finally:
        handle.remove()
    # cond (2 chunks) and uncond (1 chunk) differ in length: A1111 runs them apart
    assert len(seen) == 2 * STEPS
    cat = encode_prompts(pipe, "cat", "", device="cpu")
    dog = encode_prompts(pipe, long, "", device="cpu")
    for k in range(STEPS):
        (z, pooled, time_ids), (zu, pooled_u, _) = seen[2 * k], seen[2 * k + 1]
        assert z.shape[1] == 2 * 77 and zu.shape[1] == 77
        assert time_ids[0].tolist() == [64, 48, 0, 0, 64, 48]  # (h, w), crop, (h, w)
        assert not zu.any() and not pooled_u.any()  # empty negative: zeros, as A1111 on SDXL
        if k <= 2:
            torch.testing.assert_close(z[0, :77], cat["prompt_embeds"][0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                pooled[0], cat["pooled_prompt_embeds"][0], atol=1e-5, rtol=1e-5
            )
        else:
            torch.testing.assert_close(z[0], dog["prompt_embeds"][0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                pooled[0], dog["pooled_prompt_embeds"][0], atol=1e-5, rtol=1e-5
            )
