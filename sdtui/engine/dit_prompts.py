"""A1111 emphasis on Flux.1 / SD3.5's T5 text encoder, as Forge applies it.

Forge's ``backend/text_processing/t5_engine.py`` tokenises each span of
``parse_prompt_attention`` on its own (no special tokens), gives every token its span's
weight, encodes, then applies the "Original" emphasis of ``emphasis.py``: every token's
embedding times its weight, and the whole tensor rescaled to its mean before::

    original_mean = z.mean()
    z = z * multipliers[..., None]
    z = z * (original_mean / z.mean())

Here that runs inside diffusers' own T5 call (the pipeline's ``_get_t5_prompt_embeds``,
replaced on the pipeline objects of one job), on diffusers' sequence: the spans' tokens,
truncated to ``max_sequence_length - 1``, then ``</s>`` and padding, as diffusers' tokenizer
call lays them out. A prompt without weights takes diffusers' path untouched, so it encodes
exactly as before. ``BREAK`` means nothing to one T5 sequence and is left out (Forge starts a
new 256-token chunk there). The CLIP encoders read the plain text; for Flux that is all they
add (a pooled vector, which emphasis never touches in A1111 or Forge).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from sdtui.prompt_syntax import parse_prompt_attention

Runs = list[tuple[str, float]]


def emphasis_runs(text: str) -> Runs | None:
    """The prompt's weighted spans, or None when every weight is 1 (diffusers' path)."""
    runs = [(t, w) for t, w in parse_prompt_attention(text) if (t, w) != ("BREAK", -1)]
    return runs if any(w != 1.0 for _, w in runs) else None


def weighted_t5(tokenizer: Any, encoder: Any, runs: Runs, length: int, device: Any) -> torch.Tensor:
    """(1, length, d): the spans encoded as one sequence with Forge's "Original" emphasis."""
    ids: list[int] = []
    weights: list[float] = []
    for text, weight in runs:
        tokens = tokenizer(text, add_special_tokens=False).input_ids
        ids += tokens
        weights += [weight] * len(tokens)
    ids, weights = ids[: length - 1], weights[: length - 1]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rest = length - len(ids) - 1
    ids += [tokenizer.eos_token_id] + [pad] * rest
    weights += [1.0] * (rest + 1)
    from diffusers.utils.torch_utils import get_module_execution_device

    model_device = get_module_execution_device(encoder)  # offload hooks: where it runs
    z = encoder(torch.tensor([ids], device=model_device), output_hidden_states=False)[0]
    z = z.float()
    mults = torch.tensor(weights, dtype=torch.float32, device=z.device)[None, :, None]
    original_mean = z.mean()
    z = z * mults
    z = z * (original_mean / z.mean())
    return z.to(device=device, dtype=encoder.dtype)


class _WeightedT5Call:
    """The pipeline's ``_get_t5_prompt_embeds`` with emphasis for the texts in ``runs``."""

    def __init__(self, pipe: Any, original: Any, runs: dict[str, Runs], flux: bool) -> None:
        self.pipe, self.original, self.runs, self.flux = pipe, original, runs, flux

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        max_sequence_length: int = 512,
        device: Any = None,
        dtype: Any = None,
    ) -> torch.Tensor:
        texts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        if not any(t in self.runs for t in texts):
            return self.original(prompt, num_images_per_prompt, max_sequence_length, device, dtype)
        pipe = self.pipe
        device = device or pipe._execution_device
        tokenizer = pipe.tokenizer_2 if self.flux else pipe.tokenizer_3
        encoder = pipe.text_encoder_2 if self.flux else pipe.text_encoder_3
        rows = [
            weighted_t5(tokenizer, encoder, self.runs[t], max_sequence_length, device)
            if t in self.runs
            else self.original([t], 1, max_sequence_length, device, dtype)
            for t in texts
        ]
        embeds = torch.cat(rows)
        batch, seq, _ = embeds.shape
        return embeds.repeat(1, num_images_per_prompt, 1).view(
            batch * num_images_per_prompt, seq, -1
        )


@contextmanager
def t5_emphasis(pipes: Iterable[Any], texts: dict[str, str], flux: bool) -> Iterator[list[str]]:
    """For this job, the pipelines encode each prompt in ``texts`` (plain text -> A1111
    text) with its emphasis on T5; yields the plain texts that have some."""
    runs = {plain: r for plain, text in texts.items() if (r := emphasis_runs(text)) is not None}
    installed: list[Any] = []
    try:
        if runs:
            for pipe in {id(p): p for p in pipes}.values():
                if getattr(pipe, "text_encoder_2" if flux else "text_encoder_3", None) is None:
                    continue  # SD3.5 without its T5: diffusers' zeros stay
                original = pipe._get_t5_prompt_embeds
                pipe._get_t5_prompt_embeds = _WeightedT5Call(pipe, original, runs, flux)
                installed.append(pipe)
        yield list(runs)
    finally:
        for pipe in installed:
            pipe.__dict__.pop("_get_t5_prompt_embeds", None)
