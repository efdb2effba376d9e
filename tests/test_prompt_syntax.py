"""A1111 prompt syntax (pure Python) and the CLIP token counter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sdtui.prompt_syntax import (
    LoraTag,
    PromptSyntaxError,
    extract_lora_tags,
    highlight_spans,
    parse_prompt_attention,
)
from sdtui.tokens import chunk_prompt, count_tokens, tokenize

# The doctest cases of A1111's parse_prompt_attention (modules/prompt_parser.py), verbatim
# expected values (floats included: the multiplication order must be A1111's).
A1111_CASES: list[tuple[str, list[tuple[str, float]]]] = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
]

# Further cases, worked out by hand from A1111's algorithm.
MORE_CASES: list[tuple[str, list[tuple[str, float]]]] = [
    ("", [("", 1.0)]),
    ("[a]", [("a", 1 / 1.1)]),
    ("[[a]]", [("a", 1 / 1.1 / 1.1)]),
    ("((a))", [("a", 1.1 * 1.1)]),
    ("(a:1.5)", [("a", 1.5)]),
    ("(a : 1.5 )", [("a ", 1.5)]),  # spaces around the number (current A1111)
    ("(a:-1)", [("a", -1.0)]),
    ("a:1.5) b", [("a:1.5) b", 1.0)]),  # a weight with no '(' is text
    ("a) b]", [("a) b]", 1.0)]),  # closers with no opener are text
    ("[unbalanced", [("unbalanced", 1 / 1.1)]),
    ("a\\\\b", [("a\\b", 1.0)]),  # \\ is a literal backslash
    ("a\\b", [("ab", 1.0)]),  # a lone backslash is dropped
    ("\\(a\\)", [("(a)", 1.0)]),
    ("\\[a\\]", [("[a]", 1.0)]),
    ("a:b", [("a:b", 1.0)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("a\nBREAK\nb", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("BREAK", [("", 1.0), ("BREAK", -1.0), ("", 1.0)]),
    ("a break b", [("a break b", 1.0)]),  # only upper case
    ("aBREAK b", [("aBREAK b", 1.0)]),  # only a whole word
    ("(a) BREAK (b)", [("a", 1.1), ("", 1.0), ("BREAK", -1.0), ("", 1.0), ("b", 1.1)]),
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),  # A1111 quirk
    ("(a)(b:1.1)", [("ab", 1.1)]),  # equal weights merge
    ("a (b [c] d) e", [("a ", 1.0), ("b ", 1.1), ("c", 1.1 / 1.1), (" d", 1.1), (" e", 1.0)]),
]


@pytest.mark.parametrize(("text", "expected"), A1111_CASES + MORE_CASES)
def test_parse_prompt_attention(text: str, expected: list[tuple[str, float]]) -> None:
    got = parse_prompt_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    for (_, w), (_, e) in zip(got, expected, strict=True):
        assert w == pytest.approx(e, rel=1e-12)


@pytest.mark.parametrize(("text", "expected"), A1111_CASES)
def test_a1111_doctests_exact_floats(text: str, expected: list[tuple[str, float]]) -> None:
    assert parse_prompt_attention(text) == expected


def test_bad_weight_number_is_a_user_error() -> None:
    with pytest.raises(PromptSyntaxError, match="1..2"):
        parse_prompt_attention("(a:1..2)")
    with pytest.raises(ValueError):
        parse_prompt_attention("(a:.)")


# -- LoRA tags ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "clean", "tags"),
    [
        ("a cat", "a cat", []),
        ("a cat <lora:foo:0.8>", "a cat ", [LoraTag("foo", 0.8)]),
        ("<lora:foo>, cat", ", cat", [LoraTag("foo", 1.0)]),
        ("<lora:foo bar v2:-0.5>x", "x", [LoraTag("foo bar v2", -0.5)]),
        ("<lyco:bar:0.3> a <lora:baz:1.2>", " a ", [LoraTag("bar", 0.3), LoraTag("baz", 1.2)]),
        ("<lora:foo:0.5:0.7>", "", [LoraTag("foo", 0.5, 0.7)]),
        ("<lora:foo:te=0.4:unet=0.9>", "", [LoraTag("foo", 0.4, 0.9)]),
        ("<hypernet:h:1> a", " a", []),  # other extra networks are removed, not LoRAs
        ("<lora:> <notatag> <a b:1>", "<lora:> <notatag> <a b:1>", []),
        ("(a <lora:x:1> b:1.2)", "(a  b:1.2)", [LoraTag("x", 1.0)]),
    ],
)
def test_extract_lora_tags(text: str, clean: str, tags: list[LoraTag]) -> None:
    assert extract_lora_tags(text) == (clean, tags)


def test_lora_bad_weight() -> None:
    with pytest.raises(PromptSyntaxError, match="LoRA weight"):
        extract_lora_tags("<lora:foo:abc>")


# -- highlighting ---------------------------------------------------------------------------


def _kinds(text: str) -> list[tuple[str, str]]:
    return [(text[s:e], k) for s, e, k in highlight_spans(text)]


def test_highlight_plain_text_has_no_spans() -> None:
    assert highlight_spans("a photo of a cat") == []
    assert highlight_spans("") == []


def test_highlight_emphasis_and_weights() -> None:
    assert _kinds("a (cat) [dog]") == [
        ("(cat)", "emphasis"),
        ("[dog]", "deemphasis"),
    ]
    assert _kinds("(cat:1.3) (dog:0.5)") == [
        ("(cat", "emphasis"),
        (":1.3)", "weight"),
        ("(dog", "deemphasis"),
        (":0.5)", "weight"),
    ]
    assert _kinds("((a))b") == [("((a))", "emphasis")]
    assert _kinds("(open") == [("(open", "emphasis")]  # unbalanced still applies
    assert _kinds("close) x]") == []  # closers with no opener are text


def test_highlight_escape_break_lora() -> None:
    assert _kinds("\\(a\\)") == [("\\", "escape"), ("\\", "escape")]
    assert highlight_spans("\\(a\\)") == [(0, 1, "escape"), (3, 4, "escape")]
    assert _kinds("a BREAK b") == [("BREAK", "break")]
    text = "x <lora:foo:0.8> (y)"
    assert _kinds(text) == [("<lora:foo:0.8>", "lora"), ("(y)", "emphasis")]


def test_highlight_maps_around_removed_tags() -> None:
    # the tag sits inside an emphasised run: the run is split around it
    text = "(a<lora:x:1>b)"
    spans = highlight_spans(text)
    assert [(text[s:e], k) for s, e, k in spans] == [
        ("(a", "emphasis"),
        ("<lora:x:1>", "lora"),
        ("b)", "emphasis"),
    ]
    # a LoRA name with brackets does not open a group
    assert _kinds("<lora:a(b:1> c") == [("<lora:a(b:1>", "lora")]


def test_highlight_bad_weight_never_raises() -> None:
    assert _kinds("(a:1..2)") == [("(a:1..2)", "emphasis")]


def test_highlight_spans_sorted_disjoint() -> None:
    text = "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))). BREAK \\( <lora:x:1>"
    spans = highlight_spans(text)
    for (_, e1, _), (s2, _, _) in zip(spans, spans[1:], strict=False):
        assert e1 <= s2
    assert all(0 <= s < e <= len(text) for s, e, _ in spans)


# -- token counting -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "shown", "chunks"),
    [
        ("a photo of a cat", "5/75", 1),
        ("", "0/75", 1),
        ("(a photo:1.3) of [a] cat", "5/75", 1),  # weight syntax is not counted
        ("a photo of a cat <lora:foo:0.7>", "5/75", 1),  # neither are LoRA tags
        ("cat " * 75, "75/75", 1),
        ("cat " * 76, "76/150", 2),
        ("cat " * 300, "300/300", 4),
        ("a BREAK b", "76/150", 2),  # BREAK fills the chunk
        ("a BREAK", "75/75", 1),
        ("cat " * 37, "37/75", 1),
    ],
)
def test_count_tokens(prompt: str, shown: str, chunks: int) -> None:
    count = count_tokens(prompt)
    assert str(count) == shown
    assert count.chunks == chunks
    assert count.limit == chunks * 75


def test_comma_backtrack_moves_the_last_words() -> None:
    # 70 single tokens, a comma, then 10 more: the 10 words after the comma move to chunk 2
    parsed = [("x", 1.0)]
    ids = [[1] * 70 + [9] + [2] * 10]
    chunks, count = chunk_prompt(parsed, ids, id_start=100, id_end=101, comma_token=9)
    assert len(chunks) == 2
    assert all(len(c.tokens) == 77 for c in chunks)
    assert chunks[0].tokens[1:72] == [1] * 70 + [9]
    assert chunks[0].tokens[72:] == [101] * 5
    assert chunks[1].tokens[1:11] == [2] * 10
    assert count == 75 + 10
    # no comma nearby: cut at 75
    chunks, count = chunk_prompt(parsed, [[9] + [1] * 79], id_start=100, id_end=101, comma_token=9)
    assert chunks[0].tokens[1:76] == [9] + [1] * 74
    assert count == 80


def test_an_embedding_is_never_split_across_chunks() -> None:
    """A1111's tokenize_line: an embedding that does not fit in what is left of a chunk starts
    the next one whole; the chunk it leaves is padded."""
    parsed = [("x", 1.2)]
    emb = (500, 501, 502, 503, 504, 505, 506, 507)  # 8 vectors
    chunks, count = chunk_prompt(
        parsed, [[1] * 70 + [emb, 2]], id_start=100, id_end=101, comma_token=9
    )
    assert len(chunks) == 2
    assert chunks[0].tokens[1:71] == [1] * 70 and chunks[0].tokens[71:] == [101] * 6
    assert chunks[1].tokens[1:10] == [*emb, 2]
    assert chunks[1].multipliers[1:9] == [1.2] * 8
    assert count == 75 + 9
    # one that fits stays
    chunks, count = chunk_prompt(
        parsed, [[1] * 60 + [emb]], id_start=100, id_end=101, comma_token=9
    )
    assert len(chunks) == 1 and count == 68


def test_count_tokens_counts_an_embedding_as_its_vectors() -> None:
    plain = count_tokens("a photo of mystyle, studio")
    with_emb = count_tokens("a photo of MyStyle, studio", (("mystyle", 8),))
    name_tokens = len(tokenize(["mystyle"])[0])
    assert with_emb.tokens == plain.tokens - name_tokens + 8
    # a longer name that starts the same wins (A1111: longest match first)
    both = count_tokens("mystyle2", (("mystyle", 8), ("mystyle2", 3)))
    assert both.tokens == 3
    # not inside another word
    assert count_tokens("mystyles", (("mystyle", 8),)).tokens == count_tokens("mystyles").tokens
    # 70 words and a 16-vector embedding: it moves whole to a second chunk
    long = count_tokens("cat " * 70 + "mystyle", (("mystyle", 16),))
    assert (long.tokens, long.chunks) == (75 + 16, 2)


def test_chunk_weights_follow_tokens() -> None:
    parsed = [("a", 1.0), ("b", 1.5)]
    chunks, _ = chunk_prompt(parsed, [[5], [6, 7]], id_start=0, id_end=1, comma_token=None)
    assert chunks[0].tokens[:5] == [0, 5, 6, 7, 1]
    assert chunks[0].multipliers[:5] == [1.0, 1.0, 1.5, 1.5, 1.0]


def test_known_clip_ids() -> None:
    assert tokenize(["a photo of a cat"]) == [[320, 1125, 539, 320, 2368]]


def test_tokens_module_does_not_import_torch() -> None:
    code = (
        "import sys, sdtui.tokens as t; t.count_tokens('a (b:1.2) BREAK c');"
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


PROMPTS = [
    "a photo of a cat",
    "Masterpiece, best quality, 1girl, (blue eyes:1.2), looking at viewer!!",
    "  multiple   spaces\tand\nnewlines  ",
    "don't stop, it's 2024; numbers 1234567 and 3.14",
    "café naïve résumé — “quotes” emoji 🐱 日本語",
    "UPPER lower MiXeD",
    "a <|endoftext|> b",
]


def test_ids_equal_transformers_clip_tokenizer(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    from sdtui.clip_vocab import write_tokenizer_files

    write_tokenizer_files(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    hf = CLIPTokenizer.from_pretrained(tmp_path)
    expected = hf(PROMPTS, add_special_tokens=False)["input_ids"]
    assert tokenize(PROMPTS) == expected
