"""CLIP token counting and A1111's 75-token chunking, without torch or transformers.

The tokenizer is the ``tokenizers`` BPE that transformers' CLIPTokenizer builds (same
normalizer, pre-tokenizer and vocabulary), so ids match it exactly. ``chunk_prompt`` is A1111's
``FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line``: the engine uses it too, so the count the
UI shows is the chunking the engine encodes.

Textual-inversion embeddings are found as A1111 finds them (the tokenized name, longest match
first: ``name_table`` / ``scan_names``) and take one slot per vector; an embedding's vectors stay
in one chunk (a tuple of ids in ``chunk_prompt``'s input), as A1111 keeps them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdtui.clip_vocab import vocab_and_merges
from sdtui.prompt_syntax import (
    BREAK_WEIGHT,
    PromptSyntaxError,
    parse_prompt_attention,
    plain_text,
    strip_extra_networks,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# a prompt token id, or an embedding's ids: its vectors, which A1111 never splits across chunks
Token = int | tuple[int, ...]
NameTable = dict[int, list[tuple[tuple[int, ...], Any]]]

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


def name_table(entries: Iterable[tuple[Sequence[int], Any]]) -> NameTable:
    """Embedding names by their first token id, longest first: (name ids, value) pairs in."""
    table: NameTable = {}
    for ids, value in entries:
        if ids:
            table.setdefault(ids[0], []).append((tuple(ids), value))
    for matches in table.values():
        matches.sort(key=lambda m: len(m[0]), reverse=True)
    return table


def scan_names(ids: Sequence[int], table: NameTable) -> Iterator[tuple[int, int, Any]]:
    """(position, length, value) of each embedding name in a token list, left to right
    (A1111's ``find_embedding_at_position``: the longest name that starts here wins)."""
    i = 0
    while i < len(ids):
        hit = None
        for name_ids, value in table.get(ids[i], ()):
            if tuple(ids[i : i + len(name_ids)]) == name_ids:
                hit = (i, len(name_ids), value)
                break
        if hit is None:
            i += 1
            continue
        yield hit
        i += hit[1]


def substitute_names(ids: Sequence[int], table: NameTable) -> list[Any]:
    """The ids with each embedding name replaced by its table value (kept as one item)."""
    out: list[Any] = []
    i = 0
    for pos, length, value in scan_names(ids, table):
        out.extend(ids[i:pos])
        out.append(value)
        i = pos + length
    out.extend(ids[i:])
    return out


def chunk_prompt(
    parsed: Sequence[tuple[str, float]],
    token_ids: Sequence[Sequence[Token]],
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
            if isinstance(token, tuple):  # never a comma; the backtrack below still applies
                pass
            elif token == comma_token:
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
            if isinstance(token, tuple):  # an embedding: all its vectors in one chunk
                if len(chunk.tokens) + len(token) > chunk_length:
                    next_chunk()
                chunk.tokens.extend(token)
                chunk.multipliers.extend([weight] * len(token))
                continue
            chunk.tokens.append(token)
            chunk.multipliers.append(weight)

    if chunk.tokens or not chunks:
        next_chunk(is_last=True)
    return chunks, token_count


def prompt_chunks(
    prompt: str, embeddings: Sequence[tuple[str, int]] = ()
) -> tuple[list[PromptChunk], int]:
    """Chunks and token count of a whole prompt with the CLIP vocabulary: extra-network tags
    removed, weights parsed (a bad weight number counts the text literally), and each
    embedding named in ``embeddings`` ((name, vector count) pairs) as that many slots."""
    text = strip_extra_networks(prompt)
    try:
        parsed = parse_prompt_attention(text)
    except PromptSyntaxError:
        parsed = [(text, 1.0)]
    bos, eos, comma = _specials()
    ids: list[list[Any]] = [list(x) for x in tokenize([t for t, _ in parsed])]
    table = _embedding_table(tuple(embeddings))
    if table:
        ids = [substitute_names(x, table) for x in ids]
    return chunk_prompt(parsed, ids, id_start=bos, id_end=eos, comma_token=comma)


@lru_cache(maxsize=4)
def _embedding_table(embeddings: tuple[tuple[str, int], ...]) -> NameTable:
    """The names of the embeddings on disk, tokenized once (not on every keystroke), each
    standing for as many slots as it has vectors."""
    usable = [(name, n) for name, n in embeddings if n > 0]
    names = tokenize([name for name, _ in usable])
    return name_table((name_ids, (0,) * n) for name_ids, (_, n) in zip(names, usable, strict=True))


# the T5 tokenizer Flux.1 and SD3.5 read (sdtui.engine.t5_tokenizer bundles it; read here as a
# file, so the UI counts without importing the engine)
T5_TOKENIZER = Path(__file__).parent / "engine" / "assets" / "t5" / "tokenizer.json.gz"


@lru_cache(maxsize=1)
def t5_tokenizer() -> Tokenizer:
    """The T5 tokenizer (``tokenizers``, built once from the bundled file)."""
    import gzip

    from tokenizers import Tokenizer

    with gzip.open(T5_TOKENIZER, "rt", encoding="utf-8") as f:
        return Tokenizer.from_str(f.read())


def count_t5_tokens(prompt: str, limit: int) -> TokenCount:
    """What Flux.1 / SD3.5's T5 reads of the prompt: its text without A1111's syntax (the
    weights apply to these tokens, BREAK is left out) as one sequence of at most ``limit``
    tokens with the closing ``</s>``; over it, the rest is cut off (``chunks`` 2 says so)."""
    try:
        text = plain_text(strip_extra_networks(prompt))
    except PromptSyntaxError:  # a weight being typed ("(cat:1."): count the text as it is
        text = " ".join(prompt.split())
    tokens = len(t5_tokenizer().encode(text, add_special_tokens=False).ids) if text else 0
    return TokenCount(tokens=tokens, chunks=1 if tokens + 1 <= limit else 2, limit=limit)


@lru_cache(maxsize=512)
def count_tokens(prompt: str, embeddings: tuple[tuple[str, int], ...] = ()) -> TokenCount:
    """A1111's token counter: "a photo of a cat" -> 5/75; 76 tokens -> 76/150; an embedding
    of 8 vectors counts 8."""
    chunks, tokens = prompt_chunks(prompt, embeddings)
    # A1111 shows ceil(max(tokens, 1) / 75) * 75, which is always chunks * 75
    return TokenCount(tokens=tokens, chunks=len(chunks), limit=len(chunks) * CHUNK_LENGTH)
