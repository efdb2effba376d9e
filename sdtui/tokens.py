"""CLIP token counting and A1111's 75-token chunking, without torch or transformers.

The tokenizer is the ``tokenizers`` BPE that transformers' CLIPTokenizer builds (same
normalizer, pre-tokenizer and vocabulary), so ids match it exactly. ``chunk_prompt`` is A1111's
``FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line``: the engine uses it too, so the count the
UI shows is the chunking the engine encodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from sdtui.clip_vocab import vocab_and_merges
from sdtui.prompt_syntax import (
    BREAK_WEIGHT,
    PromptSyntaxError,
    parse_prompt_attention,
    strip_extra_networks,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

CHUNK_LENGTH = 75  # prompt tokens per chunk; each chunk is encoded as 77 with BOS/EOS
COMMA_BACKTRACK = 20  # A1111's default "comma_padding_backtrack"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
CLIP_SPLIT_REGEX = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@dataclass(frozen=True)
class TokenCount:
    """What the prompt box shows as ``f"{tokens}/{limit}"``."""

    tokens: int
    chunks: int
    limit: int

    def __str__(self) -> str:
        return f"{self.tokens}/{self.limit}"


@dataclass
class PromptChunk:
    """One chunk: 77 token ids (BOS, 75 prompt or padding tokens, EOS) and their weights."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)


@lru_cache(maxsize=1)
def clip_tokenizer() -> Tokenizer:
    """The CLIP BPE tokenizer (built once, ~0.3 s)."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    vocab, merges = vocab_and_merges()
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(
        BPE(
            vocab=vocab,
            merges=pairs,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=EOS_TOKEN,
        )
    )
    tok.normalizer = normalizers.Sequence(  # type: ignore[assignment]
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(  # type: ignore[assignment]
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT_REGEX), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.add_special_tokens([BOS_TOKEN, EOS_TOKEN])
    return tok


def tokenize(texts: Sequence[str]) -> list[list[int]]:
    """CLIP ids of each text, without BOS/EOS."""
    if not texts:
        return []
    encs = clip_tokenizer().encode_batch(list(texts), add_special_tokens=False)
    return [e.ids for e in encs]


@lru_cache(maxsize=1)
def _specials() -> tuple[int, int, int]:
    vocab, _ = vocab_and_merges()
    return vocab[BOS_TOKEN], vocab[EOS_TOKEN], vocab[",</w>"]


def chunk_prompt(
    parsed: Sequence[tuple[str, float]],
    token_ids: Sequence[Sequence[int]],
    *,
    id_start: int,
    id_end: int,
    comma_token: int | None,
    chunk_length: int = CHUNK_LENGTH,
    comma_backtrack: int = COMMA_BACKTRACK,
) -> tuple[list[PromptChunk], int]:
    """A1111's ``tokenize_line``: (chunks, token count) for a parsed prompt and the ids of
    each of its parts. ``("BREAK", -1)`` closes the chunk; a chunk that fills up while a comma
    lies within ``comma_backtrack`` tokens moves the words after that comma to the next chunk.
    Every chunk is padded with ``id_end`` to ``chunk_length`` and wrapped in BOS/EOS. The count
    is ``chunk_length`` per full chunk plus the tokens of the last one (A1111's "37/75")."""
    chunks: list[PromptChunk] = []
    chunk = PromptChunk()
    token_count = 0
    last_comma = -1

    def next_chunk(is_last: bool = False) -> None:
        nonlocal chunk, token_count, last_comma
        token_count += len(chunk.tokens) if is_last else chunk_length
        to_add = chunk_length - len(chunk.tokens)
        if to_add > 0:
            chunk.tokens += [id_end] * to_add
            chunk.multipliers += [1.0] * to_add
        chunk.tokens = [id_start, *chunk.tokens, id_end]
        chunk.multipliers = [1.0, *chunk.multipliers, 1.0]
        last_comma = -1
        chunks.append(chunk)
        chunk = PromptChunk()

    for ids, (text, weight) in zip(token_ids, parsed, strict=True):
        if text == "BREAK" and weight == BREAK_WEIGHT:
            next_chunk()
            continue
        for token in ids:
            if token == comma_token:
                last_comma = len(chunk.tokens)
            elif (
                comma_backtrack != 0
                and len(chunk.tokens) == chunk_length
                and last_comma != -1
                and len(chunk.tokens) - last_comma <= comma_backtrack
            ):
                cut = last_comma + 1
                moved_tokens = chunk.tokens[cut:]
                moved_mults = chunk.multipliers[cut:]
                chunk.tokens = chunk.tokens[:cut]
                chunk.multipliers = chunk.multipliers[:cut]
                next_chunk()
                chunk.tokens = moved_tokens
                chunk.multipliers = moved_mults
            if len(chunk.tokens) == chunk_length:
                next_chunk()
            chunk.tokens.append(token)
            chunk.multipliers.append(weight)

    if chunk.tokens or not chunks:
        next_chunk(is_last=True)
    return chunks, token_count


def prompt_chunks(prompt: str) -> tuple[list[PromptChunk], int]:
    """Chunks and token count of a whole prompt with the CLIP vocabulary: extra-network tags
    removed, weights parsed (a bad weight number counts the text literally)."""
    text = strip_extra_networks(prompt)
    try:
        parsed = parse_prompt_attention(text)
    except PromptSyntaxError:
        parsed = [(text, 1.0)]
    bos, eos, comma = _specials()
    return chunk_prompt(
        parsed, tokenize([t for t, _ in parsed]), id_start=bos, id_end=eos, comma_token=comma
    )


@lru_cache(maxsize=512)
def count_tokens(prompt: str) -> TokenCount:
    """A1111's token counter: "a photo of a cat" -> 5/75; 76 tokens -> 76/150."""
    chunks, tokens = prompt_chunks(prompt)
    # A1111 shows ceil(max(tokens, 1) / 75) * 75, which is always chunks * 75
    return TokenCount(tokens=tokens, chunks=len(chunks), limit=len(chunks) * CHUNK_LENGTH)
