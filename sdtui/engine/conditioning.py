"""Prompt embeddings computed the way AUTOMATIC1111 computes them, for diffusers pipelines.

What A1111 does (modules/sd_hijack_clip.py, sd_emphasis.py "Original", sd_models_xl.py) and so
what this does:

- the prompt is parsed for ``(word:1.2)`` weights and BREAK, LoRA tags are removed;
- it is split into chunks of 75 tokens (BOS + 75 + EOS = 77), moving the words after a nearby
  comma to the next chunk instead of cutting them; each chunk is encoded on its own and the
  results are concatenated, so nothing is ever truncated;
- each chunk's hidden states are multiplied by the token weights, then rescaled so that their
  mean is the mean before weighting;
- prompt and negative prompt are padded to the same number of chunks with encodings of the
  empty prompt (A1111's "pad prompt/negative prompt" option; diffusers needs equal lengths);
- SD1: clip skip N takes ``hidden_states[-N]`` through the final layer norm (1 = last layer);
  SD2's diffusers text encoder already stops at the penultimate layer, and clip skip counts
  further from there;
- SDXL: both encoders give their penultimate hidden state (no final norm), concatenated on the
  feature axis (768 + 1280); the pooled embedding is the second encoder's projection for the
  first chunk. A1111 ignores clip skip for SDXL, and so does this. An empty negative prompt
  gives all-zero negative embeddings and pooled embedding, as A1111 does.

Embeddings come in through a wrapped tokenizer (sdtui.engine.embeddings).

Prompt editing ``[a:b:when]`` and alternation ``[a|b]`` (``encode_prompt_editing``): the
schedule comes from sdtui.prompt_schedule (A1111's ``get_learned_conditioning_prompt_schedules``),
each distinct text of it is encoded once, all padded to one chunk count with empty-prompt
chunks, and ``PromptEditing.step_end`` (called from the pipeline's ``callback_on_step_end``)
swaps the embeddings for the next model call as A1111's ``reconstruct_cond_batch`` does. A
prompt without that syntax never comes here. Not handled: composable AND.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sdtui.prompt_schedule import has_prompt_editing, prompt_schedule, text_at
from sdtui.prompt_syntax import parse_prompt_attention, strip_extra_networks
from sdtui.tokens import CHUNK_LENGTH, PromptChunk, chunk_prompt

MAX_CLIP_SKIP = 4


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
            ids = self.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
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
SECOND_ORDER_SAMPLERS = frozenset({"Heun", "DPM2", "DPM2 a"})


def schedule_steps(steps: int, sampler: str | None) -> int:
    """The schedule length A1111 uses for ``steps`` steps of ``sampler``."""
    return steps * 2 if sampler in SECOND_ORDER_SAMPLERS else steps


@dataclass
class PromptEditing:
    """Per-step embeddings of a prompt with ``[a:b:when]`` / ``[a|b]``: a schedule of texts for
    prompt and negative prompt, each distinct text encoded once."""

    positive: list[list]  # [[end_at_step, text], ...]
    negative: list[list]
    embeds: dict[tuple[bool, str], torch.Tensor]  # (negative?, text) -> (1, chunks * 77, C)
    pooled: dict[tuple[bool, str], torch.Tensor]  # SDXL: (negative?, text) -> (1, P)
    encoded: int = 0  # text-encoder runs made (one per distinct text and encoder)

    def texts_at(self, step: int) -> tuple[str, str]:
        return text_at(self.positive, step), text_at(self.negative, step)

    def cond_at(self, step: int) -> dict[str, torch.Tensor]:
        """``pipe(...)`` keyword arguments for model call ``step`` (from 0), as encode_prompts."""
        pos, neg = self.texts_at(step)
        out = {"prompt_embeds": self.embeds[(False, pos)], "negative_prompt_embeds": self.embeds[(True, neg)]}
        if self.pooled:
            out["pooled_prompt_embeds"] = self.pooled[(False, pos)]
            out["negative_pooled_prompt_embeds"] = self.pooled[(True, neg)]
        return out

    def tensor_inputs(self, pipe: Any) -> list[str]:
        """What ``callback_on_step_end_tensor_inputs`` must ask for."""
        allowed = getattr(pipe, "_callback_tensor_inputs", ())
        names = ["latents", "prompt_embeds"]
        if self.pooled and "add_text_embeds" in allowed:
            names.append("add_text_embeds")
        return [n for n in names if n in allowed]

    def step_end(self, pipe: Any, step: int, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """From ``callback_on_step_end`` after model call ``step``: the tensors to replace for
        call ``step + 1`` (empty when the texts do not change or the pipeline did not hand
        ``prompt_embeds`` over, as in the hires pass). Inside the denoising loop diffusers holds
        ``prompt_embeds`` as ``cat([negative] * n + [positive] * n)`` under CFG (SDXL's pooled
        ``add_text_embeds`` alike), ``[positive] * n`` without."""
        current = kwargs.get("prompt_embeds")
        if current is None or self.texts_at(step + 1) == self.texts_at(step):
            return {}
        cfg = bool(getattr(pipe, "do_classifier_free_guidance", True))
        n = current.shape[0] // (2 if cfg else 1)
        cond = self.cond_at(step + 1)

        def batch(pos: torch.Tensor, neg: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            rows = [neg] * n + [pos] * n if cfg else [pos] * n
            return torch.cat(rows).to(device=like.device, dtype=like.dtype)

        out = {"prompt_embeds": batch(cond["prompt_embeds"], cond["negative_prompt_embeds"], current)}
        add = kwargs.get("add_text_embeds")
        if add is not None and self.pooled:
            out["add_text_embeds"] = batch(
                cond["pooled_prompt_embeds"], cond["negative_pooled_prompt_embeds"], add
            )
        return out


@torch.no_grad()
def encode_prompt_editing(
    pipe: Any,
    prompt: str,
    negative_prompt: str,
    steps: int,
    *,
    hires_steps: int | None = None,
    clip_skip: int = 1,
    device: torch.device | str | None = None,
) -> PromptEditing | None:
    """The per-step embeddings of a prompt / negative prompt with A1111 prompt editing, for a
    schedule of ``steps`` (``hires_steps``: the hires pass's schedule, A1111's); None when
    neither has any (the caller then takes encode_prompts, unchanged).

    Every distinct text is encoded once, on its own; all of them are padded with empty-prompt
    chunks to the largest chunk count among them (encode_prompts pads prompt and negative
    alike), so any two can be swapped mid-run."""
    if not 1 <= clip_skip <= MAX_CLIP_SKIP:
        raise ValueError(f"clip skip {clip_skip} is out of range: use 1 to {MAX_CLIP_SKIP}")
    pos_text = strip_extra_networks(prompt)
    neg_text = strip_extra_networks(negative_prompt)
    positive = prompt_schedule(pos_text, steps, hires_steps)
    negative = prompt_schedule(neg_text, steps, hires_steps)
    if not has_prompt_editing(pos_text, positive) and not has_prompt_editing(neg_text, negative):
        return None
    dev = torch.device(device) if device is not None else _device_of(pipe)
    encoders = _encoders(pipe, clip_skip)
    is_xl = getattr(pipe, "text_encoder_2", None) is not None

    keys = list(dict.fromkeys([(False, t) for _, t in positive] + [(True, t) for _, t in negative]))
    # SDXL's all-zero negative, as A1111 (sd_models_xl): when every negative text is empty
    zero_negative = is_xl and all(t == "" for _, t in negative)
    # a text encodes the same as prompt or as negative: each distinct one once
    texts = list(dict.fromkeys(t for neg, t in keys if not (neg and zero_negative)))
    chunks = [{t: enc.chunks(t) for t in texts} for enc in encoders]
    n_chunks = max(len(c) for per in chunks for c in per.values())

    parts: dict[str, list[torch.Tensor]] = {t: [] for t in texts}
    pooled_of: dict[str, torch.Tensor] = {}
    encoded = 0
    for enc, per in zip(encoders, chunks, strict=True):
        for t in texts:
            own = per[t]
            pad = n_chunks - len(own)
            z, pooled = enc.encode(own + ([enc.empty_chunk()] if pad else []), dev)
            encoded += 1
            z = torch.cat([z[: len(own)], *([z[-1:]] * pad)])
            parts[t].append(z.reshape(1, -1, z.shape[-1]))
            if pooled is not None:
                pooled_of[t] = pooled[:1]

    embeds: dict[tuple[bool, str], torch.Tensor] = {}
    pooled_out: dict[tuple[bool, str], torch.Tensor] = {}
    like = (False, positive[0][1])
    for is_neg, t in keys:
        if zero_negative and is_neg:
            embeds[(is_neg, t)] = torch.zeros_like(embeds[like])
            pooled_out[(is_neg, t)] = torch.zeros_like(pooled_out[like])
            continue
        embeds[(is_neg, t)] = torch.cat(parts[t], dim=-1).to(dev)
        if is_xl:
            pooled_out[(is_neg, t)] = pooled_of[t].to(dev)
    return PromptEditing(positive, negative, embeds, pooled_out, encoded)


def job_prompt_editing(pipes: Any, p: Any) -> tuple[PromptEditing, dict[str, torch.Tensor]] | None:
    """For a job (a ModelSession ``pipes`` and its GenerationParams ``p``): the first pass's
    per-step embeddings, and the embeddings the hires pass gets; None for prompts without
    prompt editing (the job then encodes as ever).

    The schedule has A1111's length: the job's steps (twice that for Heun / DPM2), counted
    over the model calls that really run, from 0; img2img runs the tail of it from call 0 on,
    as A1111 does (its schedule is built on the full steps too). The hires pass takes A1111's
    hires schedule (``hires_steps``), but fixed at its first step: the hires pass hands no
    ``prompt_embeds`` to the step callback, so an alternation or a switch inside the hires
    steps is not followed there."""
    base = schedule_steps(p.steps, p.sampler)
    if not any(
        has_prompt_editing(t, prompt_schedule(t, base))
        for t in (strip_extra_networks(p.prompt), strip_extra_networks(p.negative_prompt))
    ):
        return None  # before touching the pipeline: a plain prompt costs nothing here
    # while a job's embeddings apply, job_scope puts a wrapped text pipeline there
    pipe = getattr(pipes, "extra", {}).get("text_pipe") or pipes.txt2img
    kw = {"clip_skip": p.clip_skip, "device": pipes.device}
    editing = encode_prompt_editing(pipe, p.prompt, p.negative_prompt, base, **kw)
    if editing is None:
        return None
    hires_cond = editing.cond_at(0)
    if p.enable_hr and not p.init_image:
        hires = schedule_steps(p.hr_second_pass_steps or p.steps, p.sampler)
        second = encode_prompt_editing(pipe, p.prompt, p.negative_prompt, base, hires_steps=hires, **kw)
        if second is not None:
            hires_cond = second.cond_at(0)
    return editing, hires_cond
