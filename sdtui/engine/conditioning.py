"""Prompt embeddings computed the way AUTOMATIC1111 computes them, for diffusers pipelines.

What A1111 does (modules/sd_hijack_clip.py, sd_emphasis.py "Original", sd_models_xl.py) and so
what this does:

- the prompt is parsed for ``(word:1.2)`` weights and BREAK, LoRA tags are removed;
- it is split into chunks of 75 tokens (BOS + 75 + EOS = 77), moving the words after a nearby
  comma to the next chunk instead of cutting them; each chunk is encoded on its own and the
  results are concatenated, so nothing is ever truncated;
- each chunk's hidden states are multiplied by the token weights, then rescaled so that their
  mean is the mean before weighting;
- ``encode_prompts`` (diffusers-style keyword arguments) pads prompt and negative prompt to the
  same number of chunks with encodings of the empty prompt; the sampler's ``JobConds`` does
  not: A1111 runs cond and uncond apart when their lengths differ;
- SD1: clip skip N takes ``hidden_states[-N]`` through the final layer norm (1 = last layer);
  SD2's diffusers text encoder already stops at the penultimate layer, and clip skip counts
  further from there;
- SDXL: both encoders give their penultimate hidden state (no final norm), concatenated on the
  feature axis (768 + 1280); the pooled embedding is the second encoder's projection for the
  first chunk. A1111 ignores clip skip for SDXL, and so does this. An empty negative prompt
  gives all-zero negative embeddings and pooled embedding, as A1111 does.

Embeddings come in through a wrapped tokenizer (sdtui.engine.embeddings).

Prompt editing ``[a:b:when]``, alternation ``[a|b]`` and composable ``AND`` (``encode_job_conds``):
the schedules come from sdtui.prompt_schedule (A1111's ``get_learned_conditioning_prompt_schedules``
and ``get_multicond_prompt_list``), each distinct text is encoded once, and the sampler's
denoiser (sdtui.engine.sampling) picks the embeddings per model call as A1111's
``reconstruct_cond_batch`` / ``reconstruct_multicond_batch`` do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sdtui.prompt_schedule import prompt_schedule, split_and, text_at
from sdtui.prompt_syntax import parse_prompt_attention, strip_extra_networks
from sdtui.tokens import CHUNK_LENGTH, PromptChunk, chunk_prompt

MAX_CLIP_SKIP = 4
CHUNK_LENGTH_TOKENS = CHUNK_LENGTH + 2  # BOS + 75 + EOS = 77 embeddings a chunk


@dataclass
class _Encoder:
    tokenizer: Any
    text_encoder: Any
    layer: int | None  # index into hidden_states; None: last_hidden_state
    final_norm: bool  # pass a hidden state through final_layer_norm
    pooled: bool  # also return text_embeds (CLIPTextModelWithProjection)

    def __post_init__(self) -> None:
        tok = self.tokenizer
        self.id_start: int = tok.bos_token_id
        self.id_end: int = tok.eos_token_id
        pad = tok.pad_token_id
        self.id_pad: int = self.id_end if pad is None else pad
        self.comma_token: int | None = tok.get_vocab().get(",</w>")

    def chunks(self, text: str) -> list[PromptChunk]:
        parsed = parse_prompt_attention(text)
        texts = [t for t, _ in parsed]
        if hasattr(self.tokenizer, "tokenize_grouped"):  # embeddings in play: kept whole
            ids = self.tokenizer.tokenize_grouped(texts)
        else:
            ids = self.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)[
                "input_ids"
            ]
        chunks, _ = chunk_prompt(
            parsed, ids, id_start=self.id_start, id_end=self.id_end, comma_token=self.comma_token
        )
        return chunks

    def empty_chunk(self) -> PromptChunk:
        return PromptChunk(
            tokens=[self.id_start] + [self.id_end] * (CHUNK_LENGTH + 1),
            multipliers=[1.0] * (CHUNK_LENGTH + 2),
        )

    def _ids(self, chunk: PromptChunk) -> list[int]:
        tokens = list(chunk.tokens)
        if self.id_pad != self.id_end:  # SD2 / OpenCLIP: pad after the first EOS with 0
            first = tokens.index(self.id_end)
            tokens[first + 1 :] = [self.id_pad] * (len(tokens) - first - 1)
        return tokens

    def encode(
        self, chunks: list[PromptChunk], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, 77, C) weighted hidden states of N chunks, and (N, P) pooled embeddings."""
        ids = torch.tensor([self._ids(c) for c in chunks], dtype=torch.long, device=device)
        out = self.text_encoder(ids, output_hidden_states=self.layer is not None)
        if self.layer is None:
            z = out.last_hidden_state
        else:
            hidden = out.hidden_states
            z = hidden[max(self.layer, -len(hidden))]
            if self.final_norm:
                # transformers 5 flattened CLIPTextModel (no .text_model); 4.x nests it
                model = getattr(self.text_encoder, "text_model", self.text_encoder)
                z = model.final_layer_norm(z)
        pooled = out.text_embeds if self.pooled else None

        mults = torch.tensor([c.multipliers for c in chunks], dtype=torch.float32, device=z.device)
        if bool((mults != 1.0).any()):
            # A1111 "Original" emphasis, per chunk: scale, then restore the chunk's mean
            zf = z.float()
            original_mean = zf.mean(dim=(1, 2), keepdim=True)
            zf = zf * mults[:, :, None]
            ratio = original_mean / zf.mean(dim=(1, 2), keepdim=True)
            # a mean near zero (seen with random weights) would blow the embeddings up to NaN
            sane = torch.isfinite(ratio) & (ratio.abs() <= 10)
            zf = zf * torch.where(sane, ratio, torch.ones_like(ratio))
            z = zf.to(z.dtype)
        return z, pooled


def _encoders(pipe: Any, clip_skip: int) -> list[_Encoder]:
    te = getattr(pipe, "text_encoder", None)
    te2 = getattr(pipe, "text_encoder_2", None)
    if te2 is not None:  # SDXL (base: both encoders; refiner: the second only)
        encs = []
        if te is not None:
            encs.append(_Encoder(pipe.tokenizer, te, layer=-2, final_norm=False, pooled=False))
        encs.append(_Encoder(pipe.tokenizer_2, te2, layer=-2, final_norm=False, pooled=True))
        return encs
    if te is None:
        raise ValueError("this pipeline has no CLIP text encoder")
    layer = None if clip_skip == 1 else -clip_skip
    return [_Encoder(pipe.tokenizer, te, layer=layer, final_norm=True, pooled=False)]


def _device_of(pipe: Any) -> torch.device:
    device = getattr(pipe, "_execution_device", None)
    if device is not None:
        return torch.device(device)
    return next(pipe.text_encoder.parameters()).device


@torch.no_grad()
def encode_prompts(
    pipe: Any,
    prompt: str,
    negative_prompt: str,
    *,
    clip_skip: int = 1,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Keyword arguments for ``pipe(...)``: ``prompt_embeds`` and ``negative_prompt_embeds``,
    of shape (1, 77 * chunks, C), and for SDXL ``pooled_prompt_embeds`` and
    ``negative_pooled_prompt_embeds``. LoRA tags in either prompt are ignored (removed);
    apply them separately (see ``prompt_syntax.extract_lora_tags``).

    Raises prompt_syntax.PromptSyntaxError for an unreadable weight such as ``(a:1..2)``."""
    if not 1 <= clip_skip <= MAX_CLIP_SKIP:
        raise ValueError(f"clip skip {clip_skip} is out of range: use 1 to {MAX_CLIP_SKIP}")
    dev = torch.device(device) if device is not None else _device_of(pipe)
    encoders = _encoders(pipe, clip_skip)
    is_xl = getattr(pipe, "text_encoder_2", None) is not None
    pos_text = strip_extra_networks(prompt)
    neg_text = strip_extra_networks(negative_prompt)
    zero_negative = is_xl and neg_text == ""

    per_encoder = [(enc, enc.chunks(pos_text), enc.chunks(neg_text)) for enc in encoders]
    n_chunks = max(max(len(p), len(n)) for _, p, n in per_encoder)

    pos_parts: list[torch.Tensor] = []
    neg_parts: list[torch.Tensor] = []
    pooled_pos: torch.Tensor | None = None
    pooled_neg: torch.Tensor | None = None
    for enc, pos, neg in per_encoder:
        n_pad = 2 * n_chunks - len(pos) - len(neg)
        batch = pos + neg + ([enc.empty_chunk()] if n_pad else [])
        z, pooled = enc.encode(batch, dev)
        z_pos, z_neg = z[: len(pos)], z[len(pos) : len(pos) + len(neg)]
        if zero_negative:
            z_neg = torch.zeros_like(z_neg)
        empty = z[-1:]
        z_pos = torch.cat([z_pos, *([empty] * (n_chunks - len(pos)))])
        z_neg = torch.cat([z_neg, *([empty] * (n_chunks - len(neg)))])
        # (chunks, 77, C) -> (1, chunks * 77, C)
        pos_parts.append(z_pos.reshape(1, -1, z.shape[-1]))
        neg_parts.append(z_neg.reshape(1, -1, z.shape[-1]))
        if pooled is not None:
            pooled_pos = pooled[:1]
            pooled_neg = pooled[len(pos) : len(pos) + 1]
            if zero_negative:
                pooled_neg = torch.zeros_like(pooled_neg)

    out: dict[str, torch.Tensor] = {
        "prompt_embeds": torch.cat(pos_parts, dim=-1).to(dev),
        "negative_prompt_embeds": torch.cat(neg_parts, dim=-1).to(dev),
    }
    if is_xl:
        assert pooled_pos is not None and pooled_neg is not None
        out["pooled_prompt_embeds"] = pooled_pos.to(dev)
        out["negative_pooled_prompt_embeds"] = pooled_neg.to(dev)
    return out


# A1111 counts two model calls a step for these (SamplerData.total_steps: "second_order"), and
# so do diffusers' schedulers for them: the schedule is that long.
SECOND_ORDER_SAMPLERS = frozenset({"Heun", "DPM2", "DPM2 a", "DPM++ SDE"})


def schedule_steps(steps: int, sampler: str | None) -> int:
    """The schedule length A1111 uses for ``steps`` steps of ``sampler``."""
    return steps * 2 if sampler in SECOND_ORDER_SAMPLERS else steps


@dataclass
class JobConds:
    """A job's conditioning per model call, as A1111 builds it for its CFG denoiser:

    - the prompt is split into composable parts (``a cat AND a dog:0.5``, A1111's
      ``get_multicond_prompt_list``), each with its weight and its own prompt-editing
      schedule; the negative prompt is one schedule;
    - each schedule's texts are encoded together, padded with empty-prompt chunks to that
      schedule's largest chunk count (A1111 encodes a schedule as one batch); a distinct text
      is encoded once;
    - at model call ``step`` the parts' embeddings are padded to one token count by repeating
      their last vector (``reconstruct_multicond_batch``); the negative keeps its own length
      (A1111 runs cond and uncond apart when they differ, its default ``pad_cond_uncond`` off).
    """

    parts: list[tuple[float, list[list]]]  # (weight, [[end_at_step, text], ...])
    negative: list[list]
    embeds: dict[tuple[int, str], torch.Tensor]  # (part; -1 = negative, text) -> (1, T, C)
    pooled: dict[tuple[int, str], torch.Tensor]  # SDXL: -> (1, P)
    encoded: int = 0  # text-encoder runs made

    def at(
        self, step: int
    ) -> tuple[
        list[tuple[float, torch.Tensor, torch.Tensor | None]],
        tuple[torch.Tensor, torch.Tensor | None],
    ]:
        """([(weight, embeds, pooled) per part], (negative embeds, pooled)) for model call
        ``step`` (from 0); the parts' embeds share one token count."""
        conds = []
        for i, (weight, schedule) in enumerate(self.parts):
            text = text_at(schedule, step)
            conds.append((weight, self.embeds[(i, text)], self.pooled.get((i, text))))
        longest = max(c[1].shape[1] for c in conds)
        padded = []
        for weight, z, pooled in conds:
            if z.shape[1] < longest:
                z = torch.cat([z, z[:, -1:].expand(-1, longest - z.shape[1], -1)], dim=1)
            padded.append((weight, z, pooled))
        neg = text_at(self.negative, step)
        return padded, (self.embeds[(-1, neg)], self.pooled.get((-1, neg)))

    @property
    def changes(self) -> bool:
        """Whether the conditioning changes from call to call (prompt editing)."""
        return len(self.negative) > 1 or any(len(s) > 1 for _, s in self.parts)


@torch.no_grad()
def encode_job_conds(
    pipe: Any,
    prompt: str,
    negative_prompt: str,
    steps: int,
    *,
    hires_steps: int | None = None,
    clip_skip: int = 1,
    device: torch.device | str | None = None,
) -> JobConds:
    """The conditioning of a job's sampling pass: ``steps`` is A1111's schedule length for the
    first pass, ``hires_steps`` the hires pass's (its schedule then counts on from the first
    pass, as A1111's). LoRA tags are removed here; the caller applies them."""

    if not 1 <= clip_skip <= MAX_CLIP_SKIP:
        raise ValueError(f"clip skip {clip_skip} is out of range: use 1 to {MAX_CLIP_SKIP}")
    dev = torch.device(device) if device is not None else _device_of(pipe)
    encoders = _encoders(pipe, clip_skip)
    is_xl = getattr(pipe, "text_encoder_2", None) is not None
    parts = [
        (weight, prompt_schedule(text, steps, hires_steps))
        for text, weight in split_and(strip_extra_networks(prompt))
    ]
    negative = prompt_schedule(strip_extra_networks(negative_prompt), steps, hires_steps)
    groups = [(i, sched) for i, (_, sched) in enumerate(parts)] + [(-1, negative)]

    embeds: dict[tuple[int, str], torch.Tensor] = {}
    pooled_out: dict[tuple[int, str], torch.Tensor] = {}
    cache: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor | None]] = {}
    encoded = 0
    for key, schedule in groups:
        texts = list(dict.fromkeys(t for _, t in schedule))
        # SDXL: an all-empty negative is zeros, embeddings and pooled (A1111 sd_models_xl)
        zero = is_xl and key == -1 and all(t == "" for t in texts)
        chunks = [{t: enc.chunks(t) for t in texts} for enc in encoders]
        n_chunks = max(len(c) for per in chunks for c in per.values())
        if zero:  # nothing to encode: zeros shaped like the prompt's, one chunk per chunk
            like_key = next(k for k in embeds if k[0] != -1)
            like = embeds[like_key]
            for t in texts:
                embeds[(key, t)] = like.new_zeros(
                    (1, n_chunks * CHUNK_LENGTH_TOKENS, like.shape[-1])
                )
                pooled_out[(key, t)] = torch.zeros_like(pooled_out[like_key])
            continue
        for t in texts:
            if (t, n_chunks) not in cache:
                zs, pooled = [], None
                for enc, per in zip(encoders, chunks, strict=True):
                    own = per[t]
                    pad = n_chunks - len(own)
                    z, pool = enc.encode(own + ([enc.empty_chunk()] if pad else []), dev)
                    encoded += 1
                    z = torch.cat([z[: len(own)], *([z[-1:]] * pad)])
                    zs.append(z.reshape(1, -1, z.shape[-1]))
                    if pool is not None:
                        pooled = pool[:1]
                cache[(t, n_chunks)] = (
                    torch.cat(zs, dim=-1).to(dev),
                    None if pooled is None else pooled.to(dev),
                )
            z, pooled = cache[(t, n_chunks)]
            embeds[(key, t)] = z
            if pooled is not None:
                pooled_out[(key, t)] = pooled
    return JobConds(parts, negative, embeds, pooled_out, encoded)
