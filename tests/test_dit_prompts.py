"""A1111 emphasis on Flux.1 / SD3.5's T5, as Forge's T5 engine applies it
(sdtui.engine.dit_prompts), on the tiny random-weight models and the real T5 tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import test_dit_img2img
import torch
from test_dit_models import job, pixel_diff

from sdtui.engine.dit_prompts import emphasis_runs, weighted_t5
from sdtui.ipc import protocol as msg

flux_session = test_dit_img2img.flux_session
sd35_session = test_dit_img2img.sd35_session

NAMES = test_dit_img2img.DIT_NAMES


def _t5(session: Any, flux: bool) -> tuple[Any, Any]:
    pipe = session.txt2img
    if flux:
        return pipe.tokenizer_2, pipe.text_encoder_2
    return pipe.tokenizer_3, pipe.text_encoder_3


def test_which_prompts_carry_emphasis() -> None:
    assert emphasis_runs("a red fox") is None
    assert emphasis_runs("a (red:1.0) fox BREAK more") is None  # weight 1, BREAK: nothing
    assert emphasis_runs("a (red:1.5) fox") == [("a ", 1.0), ("red", 1.5), (" fox", 1.0)]
    assert emphasis_runs("[blurry]") == [("blurry", pytest.approx(1 / 1.1))]


@pytest.mark.parametrize("which", ["flux", "sd35"])
def test_weight_1_is_diffusers_own_t5_call(which: str, request: pytest.FixtureRequest) -> None:
    """The spans' tokens, then </s> and padding to max_sequence_length: the sequence
    diffusers' tokenizer call makes, so the same embeddings when no weight differs."""
    session = request.getfixturevalue(f"{which}_session")
    flux = which == "flux"
    tokenizer, encoder = _t5(session, flux)
    with torch.inference_mode():
        ours = weighted_t5(
            tokenizer, encoder, [("a ", 1.0), ("red", 1.0), (" fox", 1.0)], 256, "cpu"
        )
        theirs = session.txt2img._get_t5_prompt_embeds(
            "a red fox", 1, max_sequence_length=256, device=torch.device("cpu")
        )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_forges_original_emphasis(flux_session: Any) -> None:
    """Forge's emphasis.py "Original": each token's embedding times its weight, then the
    tensor rescaled to its former mean."""
    tokenizer, encoder = _t5(flux_session, True)
    runs = [("a ", 1.0), ("red", 1.5), (" fox", 1.0)]
    with torch.inference_mode():
        got = weighted_t5(tokenizer, encoder, runs, 32, "cpu")
        ids = tokenizer("a red fox", padding="max_length", max_length=32).input_ids
        red = len(tokenizer("a ", add_special_tokens=False).input_ids)
        n_red = len(tokenizer("red", add_special_tokens=False).input_ids)
        z = encoder(torch.tensor([ids]))[0].float()
    mults = torch.ones(32)
    mults[red : red + n_red] = 1.5
    want = z * mults[None, :, None]
    want = want * (z.mean() / want.mean())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert not torch.allclose(got, z)


@pytest.mark.parametrize("which", ["flux", "sd35"])
def test_a_weighted_prompt_draws_another_picture(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    session = request.getfixturevalue(f"{which}_session")
    params = test_dit_img2img.dit_params(
        negative_prompt="blurry", cfg_scale=1 if which == "flux" else 4.5, seed=3
    )
    plain, _ = job(session, params, tmp_path / "plain", NAMES[which])
    same, _ = job(session, params.replace(prompt="a (red:1.0) fox"), tmp_path / "same", "x")
    assert pixel_diff(plain.paths[0], same.paths[0]) == 0
    weighted, events = job(
        session, params.replace(prompt="a (red:1.8) fox"), tmp_path / "w", NAMES[which]
    )
    assert pixel_diff(plain.paths[0], weighted.paths[0]) > 0
    logs = [e.text for e in events if isinstance(e, msg.Log)]
    assert any("emphasis weights apply to T5" in line for line in logs)
    # the session's pipeline is as it was: the next job without weights is the plain one
    assert "_get_t5_prompt_embeds" not in vars(session.txt2img)
    again, _ = job(session, params, tmp_path / "again", NAMES[which])
    assert pixel_diff(plain.paths[0], again.paths[0]) == 0


def test_the_ui_counts_the_tokens_t5_reads(flux_session: Any) -> None:
    """sdtui.tokens.count_t5_tokens (torch-free, for the prompt box) counts what the engine's
    T5 tokenizer makes of the text the pipeline gets, without the closing </s>."""
    from sdtui.engine.dit import plain_prompt
    from sdtui.tokens import count_t5_tokens

    tokenizer = flux_session.txt2img.tokenizer_2
    for prompt in ("a photo of a cat", "a (red:1.3) fox, [blurry] BREAK ((detailed)) 12 pm", ""):
        ids = tokenizer(plain_prompt(prompt)).input_ids
        count = count_t5_tokens(prompt, 256)
        assert count.tokens == len(ids) - 1 and str(count) == f"{len(ids) - 1}/256"
        assert count.chunks == 1
    long = count_t5_tokens("fox " * 300, 256)
    assert long.tokens == len(tokenizer("fox " * 300).input_ids) - 1 > 255
    assert long.chunks == 2  # past 255 + </s>: cut off, shown as over
