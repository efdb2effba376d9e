"""Textual-inversion embeddings, found in the prompt the way A1111 finds them.

A1111 (modules/textual_inversion/textual_inversion.py, sd_hijack_clip.py) tokenizes each
embedding's name, then scans the tokenized prompt for that token sequence (longest first), so
``mystyle`` is called by the word ``mystyle`` (any case, also inside ``(mystyle:1.2)``) but not
by ``mystyles``. The N vectors of the embedding take N token slots, and its vectors replace the
token embeddings at those slots.

Here the same happens without touching the model: for one job, the tokenizer is wrapped so a
matched name becomes N placeholder ids, and the text encoder is wrapped so those ids are looked
up as a plain token and the embedding layer's output at their positions is replaced by the
embedding's vectors (a forward hook that lives for one call). Prompts that name no embedding
run through the unwrapped pipeline: their images cannot change.

File formats: A1111 ``.pt`` (``string_to_param``), diffusers ``.bin``/``.safetensors``
(``{token: tensor}``), ``.safetensors`` with ``emb_params``, SDXL ``clip_l`` + ``clip_g``.
An embedding whose width does not fit the model's text encoder (an SD1 embedding on SDXL) is
skipped with a warning, as A1111 skips it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdtui.engine.checkpoint_files import _read_pickled, read_checkpoint
from sdtui.errors import UserError
from sdtui.extra_networks_index import EmbeddingEntry, embedding_hash
from sdtui.prompt_syntax import parse_prompt_attention, strip_extra_networks
from sdtui.regular_files import shown
from sdtui.tokens import NameTable, name_table, scan_names, substitute_names

Log = Callable[[str], None]
PLACEHOLDER_BASE = 10_000_000  # far above any CLIP vocabulary


@dataclass
class Embedding:
    name: str
    path: Path
    single: torch.Tensor | None = None  # (vectors, width)
    clip_l: torch.Tensor | None = None  # SDXL
    clip_g: torch.Tensor | None = None

    def vectors_for(self, slot: str, width: int) -> torch.Tensor | None:
        """The vectors for one text encoder ("clip_l" for SD1/SD2 and SDXL's first,
        "clip_g" for SDXL's second), or None when the embedding has none of that width."""
        if self.clip_l is not None or self.clip_g is not None:
            vec = self.clip_l if slot == "clip_l" else self.clip_g
        else:
            vec = self.single
        if vec is None or vec.shape[-1] != width:
            return None
        return vec

    @property
    def widths(self) -> str:
        if self.single is not None:
            return str(self.single.shape[-1])
        parts = [t for t in (self.clip_l, self.clip_g) if t is not None]
        return "+".join(str(t.shape[-1]) for t in parts)


def _as_matrix(t: Any, path: Path) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise UserError(f"embedding {shown(path.name)} holds no tensor where one is expected")
    t = t.detach().to("cpu", torch.float32)
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim != 2 or t.shape[0] == 0:
        raise UserError(
            f"embedding {shown(path.name)} has vectors of shape {tuple(t.shape)}: not (N, width)"
        )
    return t


def load_embedding(entry: EmbeddingEntry) -> Embedding:
    """Read an embedding file (safely: no pickle code runs) into its vectors."""
    path = entry.path
    suffix = path.suffix.lower()
    data: Any
    if suffix == ".safetensors":
        data = read_checkpoint(path)
    else:
        data = _read_pickled(path, "embedding")
    if not isinstance(data, dict):
        raise UserError(f"{shown(path.name)} is not an embedding file (it holds no dictionary)")
    emb = Embedding(entry.name, path)
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        if not isinstance(params, dict) or len(params) != 1:
            raise UserError(
                f"embedding {shown(path.name)} holds several terms: sdtui reads one per file"
            )
        emb.single = _as_matrix(next(iter(params.values())), path)
    elif "clip_l" in data or "clip_g" in data:
        if "clip_l" in data:
            emb.clip_l = _as_matrix(data["clip_l"], path)
        if "clip_g" in data:
            emb.clip_g = _as_matrix(data["clip_g"], path)
    elif "emb_params" in data:
        emb.single = _as_matrix(data["emb_params"], path)
    else:
        tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise UserError(
                f"{shown(path.name)} is not an embedding sdtui can read: expected A1111 "
                "'string_to_param', 'emb_params', SDXL 'clip_l'/'clip_g', or one tensor"
            )
        emb.single = _as_matrix(tensors[0], path)
    return emb


# -- matching --------------------------------------------------------------------------------


def _name_ids(tokenizer: Any, names: list[str]) -> list[list[int]]:
    if not names:
        return []
    out = tokenizer(names, add_special_tokens=False, truncation=False, verbose=False)
    return [list(ids) for ids in out["input_ids"]]


def prompt_pieces(*texts: str) -> list[str]:
    """The text pieces the conditioning tokenizes (emphasis parsed, LoRA tags gone)."""
    pieces: list[str] = []
    for text in texts:
        pieces.extend(t for t, _ in parse_prompt_attention(strip_extra_networks(text)))
    return pieces


def find_used(tokenizer: Any, entries: list[EmbeddingEntry], *texts: str) -> list[EmbeddingEntry]:
    """The embeddings the texts name, in order of first use."""
    if not entries:
        return []
    table = name_table(
        list(zip(_name_ids(tokenizer, [e.name for e in entries]), entries, strict=True))
    )
    pieces = [p for p in prompt_pieces(*texts) if p]
    used: dict[str, EmbeddingEntry] = {}
    if not pieces:
        return []
    for ids in _name_ids(tokenizer, pieces):
        for _, _, entry in scan_names(ids, table):
            used.setdefault(entry.name, entry)
    return list(used.values())


# -- the wrapped tokenizer and text encoder ---------------------------------------------------


@dataclass
class _Vocabulary:
    """Placeholder id -> vector, shared by one encoder's tokenizer and text encoder."""

    vectors: dict[int, torch.Tensor] = field(default_factory=dict)
    next_id: int = PLACEHOLDER_BASE

    def add(self, matrix: torch.Tensor) -> list[int]:
        ids = list(range(self.next_id, self.next_id + matrix.shape[0]))
        for i, row in zip(ids, matrix, strict=True):
            self.vectors[i] = row
        self.next_id += matrix.shape[0]
        return ids


class _TokenizerWithEmbeddings:
    """Delegates to a CLIP tokenizer's attributes; ``tokenize_grouped`` turns each matched
    embedding name into one tuple of its placeholder ids. Deliberately not callable: a caller
    that tokenized through it the plain way would silently lose the embeddings."""

    def __init__(self, tokenizer: Any, table: NameTable):
        self._tokenizer = tokenizer
        self._table = table

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def tokenize_grouped(self, texts: list[str]) -> list[list[int | tuple[int, ...]]]:
        """Each text's ids without BOS/EOS, an embedding as one tuple: what ``chunk_prompt``
        keeps in one chunk, as A1111 does."""
        out = self._tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)
        return [substitute_names(list(ids), self._table) for ids in out["input_ids"]]


class _TextEncoderWithEmbeddings:
    """Delegates to a CLIP text encoder; placeholder ids are looked up as token 0 and the
    token-embedding output at their positions is replaced by the embedding vectors."""

    def __init__(self, text_encoder: Any, vocabulary: _Vocabulary):
        self._text_encoder = text_encoder
        self._vocabulary = vocabulary

    def __getattr__(self, name: str) -> Any:
        return getattr(self._text_encoder, name)

    def __call__(self, input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        mask = input_ids >= PLACEHOLDER_BASE
        if not bool(mask.any()):
            return self._text_encoder(input_ids, *args, **kwargs)
        rows = torch.stack([self._vocabulary.vectors[int(i)] for i in input_ids[mask].tolist()])
        layer = self._text_encoder.get_input_embeddings()

        def replace(module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            output[mask.to(output.device)] = rows.to(output.device, output.dtype)
            return output

        handle = layer.register_forward_hook(replace)
        try:
            return self._text_encoder(input_ids.masked_fill(mask, 0), *args, **kwargs)
        finally:
            handle.remove()


class TextPipe:
    """What ``encode_prompts`` reads from a pipeline: tokenizers and text encoders."""

    def __init__(self, **parts: Any) -> None:
        self.text_encoder_2 = None
        self.tokenizer_2 = None
        for k, v in parts.items():
            setattr(self, k, v)


_SLOTS = (("tokenizer", "text_encoder", "clip_l"), ("tokenizer_2", "text_encoder_2", "clip_g"))


def _width(text_encoder: Any) -> int:
    return int(text_encoder.get_input_embeddings().weight.shape[-1])


def text_pipe_with_embeddings(
    pipe: Any, embeddings: list[Embedding], log: Log
) -> tuple[TextPipe | None, list[Embedding]]:
    """A TextPipe in which these embeddings are called by name, and those that fit; (None, [])
    when none fits the model (then the plain pipeline encodes)."""
    parts: dict[str, Any] = {}
    fitting: dict[str, Embedding] = {}
    misfits: dict[str, Embedding] = {}
    for tok_attr, te_attr, slot in _SLOTS:
        tokenizer = getattr(pipe, tok_attr, None)
        text_encoder = getattr(pipe, te_attr, None)
        if tokenizer is None or text_encoder is None:
            continue
        width = _width(text_encoder)
        vocab = _Vocabulary()
        entries: list[tuple[list[int], Any]] = []
        name_ids = _name_ids(tokenizer, [e.name for e in embeddings])
        for emb, ids in zip(embeddings, name_ids, strict=True):
            vec = emb.vectors_for(slot, width)
            if vec is None:
                misfits[emb.name] = emb
                continue
            fitting[emb.name] = emb
            entries.append((ids, tuple(vocab.add(vec))))
        parts[tok_attr] = _TokenizerWithEmbeddings(tokenizer, name_table(entries))
        parts[te_attr] = _TextEncoderWithEmbeddings(text_encoder, vocab)
    for name, emb in misfits.items():
        fitting.pop(name, None)
        log(
            f"embedding {shown(name)} (width {emb.widths}) does not fit this model's text encoder: "
            "ignored, the word stays plain text"
        )
    if not fitting:
        return None, []
    # an embedding that fits only one of SDXL's encoders is dropped from both
    if misfits:
        return text_pipe_with_embeddings(pipe, list(fitting.values()), log)
    return TextPipe(**parts), list(fitting.values())


def ti_hashes(embeddings: list[Embedding]) -> list[tuple[str, str]]:
    return [(e.name, embedding_hash(e.path)) for e in embeddings]
