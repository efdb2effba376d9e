"""Prompt styles (sdtui.styles) against A1111's modules/styles.py (1.10): merge_prompts,
apply_styles_to_prompt, extract_style_text_from_prompt, extract_original_prompts,
StyleDatabase.load_from_csv / save_styles / extract_styles_from_prompt."""

from __future__ import annotations

import csv
import os
import stat
from pathlib import Path

import pytest

from sdtui.errors import UserError
from sdtui.styles import (
    HEADER,
    MAX_STYLES_BYTES,
    PromptStyle,
    StyleError,
    UnknownStyleError,
    apply_styles,
    apply_styles_to_prompt,
    default_styles_path,
    delete_style,
    extract_original_prompts,
    extract_style_text_from_prompt,
    extract_styles_from_prompt,
    merge_prompts,
    parse_styles_csv,
    read_styles,
    save_style,
)

# -- merge_prompts / apply_styles_to_prompt -----------------------------------------------


@pytest.mark.parametrize(
    ("style", "prompt", "expected"),
    [
        ("masterpiece", "a cat", "a cat, masterpiece"),  # appended after ", "
        ("  masterpiece ", "  a cat  ", "a cat, masterpiece"),  # both sides stripped
        ("masterpiece", "", "masterpiece"),  # empty prompt dropped: no leading ", "
        ("", "a cat ", "a cat"),  # empty style: the prompt, stripped
        ("", "", ""),
        ("art of {prompt}, detailed", "a cat", "art of a cat, detailed"),  # placeholder
        ("art of {prompt}", "  a cat ", "art of   a cat "),  # placeholder: prompt not stripped
        ("{prompt} and {prompt}", "x", "x and x"),  # every placeholder (str.replace)
        ("art of {prompt}", "", "art of "),
    ],
)
def test_merge_prompts(style: str, prompt: str, expected: str) -> None:
    assert merge_prompts(style, prompt) == expected


def test_styles_apply_in_order_each_to_the_result() -> None:
    # apply_styles_to_prompt: for style in styles: prompt = merge_prompts(style, prompt)
    assert apply_styles_to_prompt("cat", ["{prompt}, a", "b"]) == "cat, a, b"
    assert apply_styles_to_prompt("cat", ["b", "{prompt}, a"]) == "cat, b, a"
    assert (
        apply_styles_to_prompt("cat", ["photo of {prompt}", "(({prompt}))"]) == "((photo of cat))"
    )
    assert apply_styles_to_prompt("  cat ", []) == "  cat "


STYLES = {
    "Photo": PromptStyle("Photo", "photo of {prompt}, 35mm", "cartoon, {prompt}"),
    "Sharp": PromptStyle("Sharp", "sharp focus", "blurry"),
    "NegOnly": PromptStyle("NegOnly", "", "lowres"),
}


def test_apply_styles_to_both_prompts() -> None:
    prompt, negative = apply_styles(STYLES, ["Photo", "Sharp"], "a cat", "ugly")
    assert prompt == "photo of a cat, 35mm, sharp focus"
    assert negative == "cartoon, ugly, blurry"
    prompt, negative = apply_styles(STYLES, ["NegOnly"], "a cat", "")
    assert (prompt, negative) == ("a cat", "lowres")


def test_unknown_style_is_named_unless_ignored() -> None:
    with pytest.raises(UnknownStyleError, match="unknown style 'Nope'") as e:
        apply_styles(STYLES, ["Sharp", "Nope"], "a", "")
    assert e.value.names == ("Nope",)
    assert "Photo" in str(e.value)
    # A1111: an unknown name is StyleDatabase.no_style, an empty style (strips the prompt)
    assert apply_styles(STYLES, ["Nope"], " a ", " b ", ignore_unknown=True) == ("a", "b")


# -- extracting: extract_style_text_from_prompt's docstring cases and the infotext use --------


def test_extract_style_text_a1111_docstring_cases() -> None:
    assert extract_style_text_from_prompt("masterpiece", "1girl, art by greg, masterpiece") == (
        True,
        "1girl, art by greg",
    )
    assert extract_style_text_from_prompt(
        "masterpiece, {prompt}", "masterpiece, 1girl, art by greg"
    ) == (True, "1girl, art by greg")
    assert extract_style_text_from_prompt(
        "masterpiece, {prompt}", "exquisite, 1girl, art by greg"
    ) == (False, "exquisite, 1girl, art by greg")


def test_extract_style_text_edges() -> None:
    # an empty style text matches any prompt (endswith("")), leaving it stripped
    assert extract_style_text_from_prompt("", " a cat ") == (True, "a cat")
    # two placeholders: no match (A1111 1.10 raises ValueError from split)
    assert extract_style_text_from_prompt("{prompt} {prompt}", "a a") == (False, "a a")
    assert extract_style_text_from_prompt("sharp", "blunt") == (False, "blunt")


def test_extract_original_prompts_needs_both_to_match() -> None:
    style = STYLES["Sharp"]
    assert extract_original_prompts(style, "cat, sharp focus", "ugly, blurry") == (
        True,
        "cat",
        "ugly",
    )
    assert extract_original_prompts(style, "cat, sharp focus", "ugly") == (
        False,
        "cat, sharp focus",
        "ugly",
    )
    empty = PromptStyle("Empty")
    assert extract_original_prompts(empty, "x", "y") == (False, "x", "y")


def test_extract_styles_undoes_apply_styles() -> None:
    names = ["Photo", "Sharp", "NegOnly"]
    prompt, negative = apply_styles(STYLES, names, "a cat", "ugly")
    found, p, n = extract_styles_from_prompt(STYLES, prompt, negative)
    assert (found, p, n) == (names, "a cat", "ugly")
    # applying the found styles to what is left gives the infotext's prompts back
    assert apply_styles(STYLES, found, p, n) == (prompt, negative)
    assert extract_styles_from_prompt(STYLES, "a dog", "") == ([], "a dog", "")
    # the styles may also come as a list
    assert extract_styles_from_prompt(list(STYLES.values()), "x, sharp focus", "blurry")[0] == [
        "Sharp"
    ]


# -- reading A1111's file --------------------------------------------------------------------


def _write_like_a1111(path: Path, styles: list[PromptStyle]) -> None:
    """What A1111's save_styles writes: utf-8-sig, csv.DictWriter (\\r\\n) over
    name,prompt,negative_prompt."""
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["name", "prompt", "negative_prompt"])
        writer.writeheader()
        for s in styles:
            writer.writerow(
                {"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
            )


A1111_STYLES = [
    PromptStyle("Photo", "photo of {prompt}, 35mm", "cartoon, {prompt}"),
    PromptStyle("Quoted", 'a "quoted", comma\nand a new line', ""),
    PromptStyle("Ünïcode ✓", "日本語, émoji 🎨", "lowres"),
]


def test_reads_a_file_written_like_a1111(tmp_path: Path) -> None:
    path = tmp_path / "styles.csv"
    _write_like_a1111(path, A1111_STYLES)
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbfname,prompt,negative_prompt\r\n")
    styles = read_styles(path)
    assert list(styles) == [s.name for s in A1111_STYLES]
    assert list(styles.values()) == A1111_STYLES


def test_reader_follows_load_from_csv(tmp_path: Path) -> None:
    path = tmp_path / "styles.csv"
    path.write_text(
        "name, prompt, negative_prompt\n"  # skipinitialspace: spaces after commas go
        "# a comment row,ignored,\n"  # name starting with "#": skipped
        "\n"  # empty row: skipped
        ",nameless,\n"  # A1111 keeps a style named ""; sdtui skips it
        "Short,only a prompt\n"  # missing negative_prompt cell: ""
        "Dup, first, \n"
        'Dup, "second, wins", neg\n',  # a later row of a name wins
        encoding="utf-8",
    )
    styles = read_styles(path)
    assert list(styles) == ["Short", "Dup"]
    assert styles["Short"] == PromptStyle("Short", "only a prompt", "")
    assert styles["Dup"] == PromptStyle("Dup", "second, wins", "neg")


def test_old_name_text_files(tmp_path: Path) -> None:
    # load_from_csv: row["prompt"] if "prompt" in row else row["text"]
    path = tmp_path / "styles.csv"
    path.write_text("name,text\nOld,old style {prompt}\n", encoding="utf-8")
    assert read_styles(path) == {"Old": PromptStyle("Old", "old style {prompt}", "")}
    # saving into it keeps the old column and gains negative_prompt
    save_style(path, PromptStyle("New", "new", "bad"))
    rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    assert rows[0] == ["name", "text", "negative_prompt"]
    assert rows[1] == ["Old", "old style {prompt}", ""]
    assert read_styles(path)["New"] == PromptStyle("New", "new", "bad")


def test_missing_file_holds_no_styles(tmp_path: Path) -> None:
    assert read_styles(tmp_path / "none.csv") == {}
    assert default_styles_path(tmp_path) == tmp_path / "styles.csv"


def test_parse_styles_csv_from_text() -> None:
    text = "\ufeffname,prompt,negative_prompt\r\nA,a,b\r\n"
    assert parse_styles_csv(text) == {"A": PromptStyle("A", "a", "b")}
    with pytest.raises(StyleError):
        parse_styles_csv("foo,bar\n1,2\n", "mine.csv")


# -- saving ------------------------------------------------------------------------------------


def test_save_round_trip_keeps_a1111s_format(tmp_path: Path) -> None:
    path = tmp_path / "styles.csv"
    _write_like_a1111(path, A1111_STYLES)
    before = path.read_bytes()
    save_style(path, PromptStyle("Mine", "my {prompt}, style", 'no "this"'))
    after = path.read_bytes()
    # every old byte stays: the new row is appended in A1111's own format
    assert after.startswith(before)
    assert after[len(before) :] == b'Mine,"my {prompt}, style","no ""this"""\r\n'
    styles = read_styles(path)
    assert list(styles) == ["Photo", "Quoted", "Ünïcode ✓", "Mine"]
    assert styles["Quoted"] == A1111_STYLES[1]
    # what A1111's own reader (csv.DictReader, utf-8-sig, skipinitialspace) makes of it
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, skipinitialspace=True))
    assert rows[-1] == {
        "name": "Mine",
        "prompt": "my {prompt}, style",
        "negative_prompt": 'no "this"',
    }


def test_save_replaces_in_place_and_keeps_other_columns(tmp_path: Path) -> None:
    path = tmp_path / "styles.csv"
    path.write_text(
        "name,prompt,negative_prompt,notes\n# keep me,,\nA,a,,first\nB,b,,second\nA,a2,,dup\n",
        encoding="utf-8",
    )
    styles = save_style(path, PromptStyle("A", "new a", "neg a"))
    assert list(styles) == ["A", "B"]
    rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    assert rows == [
        ["name", "prompt", "negative_prompt", "notes"],
        ["# keep me", "", ""],
        ["A", "new a", "neg a", "first"],  # where it stood; its other column kept
        ["B", "b", "", "second"],
    ]
    with pytest.raises(StyleError, match="already"):
        save_style(path, PromptStyle("B", "x"), overwrite=False)


def test_save_makes_a_new_file_with_a1111s_header(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "styles.csv"
    save_style(path, PromptStyle("A", "a"))
    assert path.read_bytes() == b"\xef\xbb\xbfname,prompt,negative_prompt\r\nA,a,\r\n"
    assert HEADER == ("name", "prompt", "negative_prompt")
    assert not [p for p in path.parent.iterdir() if p.name != "styles.csv"]  # no temp left


def test_save_is_atomic_and_keeps_mode_and_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "real.csv"
    _write_like_a1111(real, A1111_STYLES[:1])
    os.chmod(real, 0o640)
    link = tmp_path / "styles.csv"
    link.symlink_to(real)
    save_style(link, PromptStyle("B", "b"))
    assert link.is_symlink()
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert list(read_styles(real)) == ["Photo", "B"]


def test_save_failure_leaves_the_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "styles.csv"
    _write_like_a1111(path, A1111_STYLES)
    before = path.read_bytes()

    def boom(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StyleError, match="cannot write .*No space left"):
        save_style(path, PromptStyle("X", "x"))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["styles.csv"]


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("two\nlines", "one line"),
        ("cr\rhere", "one line"),
        ("", "needs a name"),
        ("   ", "needs a name"),
        ("#hash", "cannot start with '#'"),
        (" padded", "space"),
    ],
)
def test_save_refuses_bad_names(tmp_path: Path, name: str, match: str) -> None:
    path = tmp_path / "styles.csv"
    with pytest.raises(StyleError, match=match):
        save_style(path, PromptStyle(name, "x"))
    assert not path.exists()


def test_delete_style(tmp_path: Path) -> None:
    path = tmp_path / "styles.csv"
    _write_like_a1111(path, A1111_STYLES)
    assert list(delete_style(path, "Quoted")) == ["Photo", "Ünïcode ✓"]
    assert list(read_styles(path)) == ["Photo", "Ünïcode ✓"]
    with pytest.raises(UnknownStyleError, match="no style named 'Quoted'"):
        delete_style(path, "Quoted")


# -- hostile files: one clear error naming the file, never a crash or a hang --------------------


def _hostile(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "styles.csv"
    if name == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    elif name == "latin1":
        path.write_bytes("name,prompt\nCafé,x\n".encode("latin-1"))
    elif name == "huge":
        with open(path, "wb") as f:
            f.write(b"name,prompt,negative_prompt\n")
            f.truncate(MAX_STYLES_BYTES + 10)
    elif name == "no-name-column":
        path.write_text("title,prompt\nA,a\n", encoding="utf-8")
    elif name == "no-prompt-column":
        path.write_text("name,negative_prompt\nA,a\n", encoding="utf-8")
    elif name == "unclosed-quote-field":
        # one field past csv's default 128 KiB field limit, then an unterminated quote
        path.write_text('name,prompt\nA,"' + "x" * 200_000 + "\n", encoding="utf-8")
    elif name == "folder":
        path.mkdir()
    elif name == "fifo":
        os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("binary", "NUL bytes"),
        ("latin1", "not UTF-8"),
        ("huge", "MiB"),
        ("no-name-column", "no 'name' column"),
        ("no-prompt-column", "neither a 'prompt' nor a 'text' column"),
        ("folder", "is a folder"),
        ("fifo", "named pipe"),
    ],
)
def test_hostile_styles_file_is_one_clear_error(tmp_path: Path, kind: str, match: str) -> None:
    path = _hostile(tmp_path, kind)
    with pytest.raises(UserError, match=match) as e:
        read_styles(path)
    message = str(e.value)
    assert "styles.csv" in message
    assert ":" in message  # "what is wrong: the fix"
    # saving never overwrites a file it could not read
    with pytest.raises(UserError):
        save_style(path, PromptStyle("A", "a"))
    if kind not in ("folder", "fifo"):
        assert path.is_file()


def test_long_fields_are_fine_and_a_bad_quote_is_not_a_crash(tmp_path: Path) -> None:
    path = _hostile(tmp_path, "unclosed-quote-field")
    # csv reads an unclosed quote to the end of the file: one long prompt, no crash
    styles = read_styles(path)
    assert len(styles["A"].prompt) >= 200_000
    assert csv.field_size_limit() == 131072  # the process-wide limit is put back


def test_error_message_says_what_to_do(tmp_path: Path) -> None:
    path = _hostile(tmp_path, "binary")
    with pytest.raises(StyleError) as e:
        read_styles(path)
    assert "first line must be name,prompt,negative_prompt" in str(e.value)
    assert "move it away" in str(e.value)
