"""Prompt styles: A1111's ``styles.csv``, read, applied, recognised and saved.

The file is A1111's (``modules/styles.py``, 1.10): a CSV with the header line
``name,prompt,negative_prompt``, written as UTF-8 with a byte-order mark and ``\\r\\n`` line
ends (``csv.DictWriter``). Reading follows ``StyleDatabase.load_from_csv``: BOM optional,
``skipinitialspace``, a row whose name starts with ``#`` is a comment, and an old file whose
columns are ``name,text`` takes ``text`` as the prompt. A missing file holds no styles.

Applying a style follows ``merge_prompts`` / ``apply_styles_to_prompt``: a style text with
``{prompt}`` has the prompt put in its place; any other is appended after ``", "`` (both sides
stripped, an empty side dropped). Several styles apply in the order given, each to the result
of the one before. :func:`extract_styles_from_prompt` undoes that, as A1111 does when it reads
an infotext ("Styles array").

Saving (:func:`save_style`, :func:`delete_style`) rewrites the file atomically (a temporary
file in the same folder, then ``os.replace``), keeping every other row, comment and column as
it was.

No torch, no textual: the CLI, the TUI and the engine all read styles through this module.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sdtui.errors import UserError
from sdtui.regular_files import open_regular, os_error, regular_stat, shown

STYLES_FILE_NAME = "styles.csv"
# A1111 save_styles: csv.DictWriter(fieldnames=PromptStyle._fields minus "path")
HEADER: tuple[str, ...] = ("name", "prompt", "negative_prompt")
PLACEHOLDER = "{prompt}"
# a styles file of thousands of styles is well under a megabyte; past this it is not one
MAX_STYLES_BYTES = 16 * 1024 * 1024
_FIELD_LIMIT = MAX_STYLES_BYTES  # csv's own default (128 KiB a field) is not ours to impose


class StyleError(UserError):
    """A styles file that cannot be read or written, or a style that cannot be saved."""


class UnknownStyleError(StyleError):
    """A style name that the styles file does not hold."""

    def __init__(self, message: str, names: Sequence[str]) -> None:
        super().__init__(message)
        self.names = tuple(names)


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


# -- applying ---------------------------------------------------------------------------------


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """One style text applied to a prompt (A1111 ``merge_prompts``)."""
    if PLACEHOLDER in style_prompt:
        return style_prompt.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_styles_to_prompt(prompt: str, style_prompts: Iterable[str]) -> str:
    """Style texts applied in order, each to the result of the one before (A1111
    ``apply_styles_to_prompt``)."""
    for style_prompt in style_prompts:
        prompt = merge_prompts(style_prompt, prompt)
    return prompt


def apply_styles(
    styles: Mapping[str, PromptStyle],
    names: Sequence[str],
    prompt: str,
    negative_prompt: str,
    *,
    ignore_unknown: bool = False,
) -> tuple[str, str]:
    """(prompt, negative prompt) with the named styles applied, in the order named.

    A1111 treats a name it does not know as an empty style (which only strips the prompt);
    here an unknown name raises :class:`UnknownStyleError` naming it and the styles there
    are, unless ``ignore_unknown`` (then it is skipped as A1111 does)."""
    unknown = [n for n in names if n not in styles]
    if unknown and not ignore_unknown:
        have = ", ".join(styles) if styles else "none"
        raise UnknownStyleError(
            f"unknown style {', '.join(repr(n) for n in unknown)}: the styles file holds {have}",
            unknown,
        )
    empty = PromptStyle("")
    chosen = [styles.get(n, empty) for n in names]
    return (
        apply_styles_to_prompt(prompt, [s.prompt for s in chosen]),
        apply_styles_to_prompt(negative_prompt, [s.negative_prompt for s in chosen]),
    )


# -- recognising ------------------------------------------------------------------------------


def extract_style_text_from_prompt(style_text: str, prompt: str) -> tuple[bool, str]:
    """Whether ``prompt`` is ``style_text`` applied to something, and that something
    (A1111 ``extract_style_text_from_prompt``): with ``{prompt}``, the prompt must start with
    the text before it and end with the text after it; without, the prompt must end with the
    style text, and a ``", "`` left before it goes too. Both sides are stripped first.

    A style text with ``{prompt}`` twice matches nothing (A1111 raises there)."""
    stripped_prompt = prompt.strip()
    stripped_style = style_text.strip()
    if PLACEHOLDER in stripped_style:
        parts = stripped_style.split(PLACEHOLDER)
        if len(parts) != 2:
            return False, prompt
        left, right = parts
        if stripped_prompt.startswith(left) and stripped_prompt.endswith(right):
            # the middle: the prompt without left and right (they may overlap in A1111 too)
            return True, stripped_prompt[len(left) : len(stripped_prompt) - len(right)]
        return False, prompt
    if stripped_prompt.endswith(stripped_style):
        rest = stripped_prompt[: len(stripped_prompt) - len(stripped_style)]
        if rest.endswith(", "):
            rest = rest[:-2]
        return True, rest
    return False, prompt


def extract_original_prompts(
    style: PromptStyle, prompt: str, negative_prompt: str
) -> tuple[bool, str, str]:
    """(matched, prompt, negative) with ``style`` taken off both, or the inputs unchanged
    when either does not match (A1111 ``extract_original_prompts``). A style with neither
    text never matches."""
    if not style.prompt and not style.negative_prompt:
        return False, prompt, negative_prompt
    ok, positive = extract_style_text_from_prompt(style.prompt, prompt)
    if not ok:
        return False, prompt, negative_prompt
    ok, negative = extract_style_text_from_prompt(style.negative_prompt, negative_prompt)
    if not ok:
        return False, prompt, negative_prompt
    return True, positive, negative


def extract_styles_from_prompt(
    styles: Mapping[str, PromptStyle] | Iterable[PromptStyle], prompt: str, negative_prompt: str
) -> tuple[list[str], str, str]:
    """(style names, prompt, negative prompt): the styles that, applied in the returned order
    to the returned prompts, give ``prompt`` and ``negative_prompt`` (A1111
    ``StyleDatabase.extract_styles_from_prompt``, which it runs on an infotext's prompts to
    fill "Styles array"). The outermost style is found first, trying styles in file order;
    each style is used at most once."""
    pool = list(styles.values()) if isinstance(styles, Mapping) else list(styles)
    found: list[str] = []
    while True:
        for style in pool:
            ok, new_prompt, new_negative = extract_original_prompts(style, prompt, negative_prompt)
            if ok:
                prompt, negative_prompt = new_prompt, new_negative
                pool.remove(style)
                found.append(style.name)
                break
        else:
            break
    return list(reversed(found)), prompt, negative_prompt


# -- reading ----------------------------------------------------------------------------------


def default_styles_path(folder: str | Path) -> Path:
    """``<folder>/styles.csv``: A1111's default (``--styles-file`` unset, data dir)."""
    return Path(folder) / STYLES_FILE_NAME


def _bad_file(path: Path, why: str) -> StyleError:
    return StyleError(
        f"{shown(path)} is not a styles file sdtui can read ({why}): fix it in a text editor "
        f"(its first line must be {','.join(HEADER)}), or move it away to start a new one",
        detail=f"path: {path}",
    )


def _read_text(path: Path) -> str | None:
    """The file's text, None when there is no file; one StyleError for anything else."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise os_error(path, e) from None
    if st.st_size > MAX_STYLES_BYTES:
        raise _bad_file(
            path,
            f"it is {st.st_size // (1024 * 1024)} MiB, more than the "
            f"{MAX_STYLES_BYTES // (1024 * 1024)} MiB a styles file can be",
        )
    with open_regular(path) as f:
        try:
            data = f.read(MAX_STYLES_BYTES + 1)
        except OSError as e:
            raise os_error(path, e) from None
    if len(data) > MAX_STYLES_BYTES:
        raise _bad_file(path, f"it is more than {MAX_STYLES_BYTES // (1024 * 1024)} MiB")
    if b"\x00" in data:
        raise _bad_file(path, "it holds NUL bytes: it is binary, not CSV text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _bad_file(path, f"byte {e.start + 1} is not UTF-8; save it as UTF-8") from None


def _parse_rows(text: str, path: Path) -> list[list[str]]:
    old_limit = csv.field_size_limit()
    csv.field_size_limit(_FIELD_LIMIT)
    try:
        return list(csv.reader(io.StringIO(text, newline=""), skipinitialspace=True))
    except csv.Error as e:
        raise _bad_file(path, f"CSV error: {e}") from None
    finally:
        csv.field_size_limit(old_limit)


@dataclass(frozen=True)
class _Table:
    header: list[str]
    rows: list[list[str]]  # every row after the header, as written (comments too)

    def column(self, *names: str) -> int | None:
        for name in names:
            if name in self.header:
                return self.header.index(name)
        return None


def _read_table(path: Path) -> _Table | None:
    text = _read_text(path)
    if text is None:
        return None
    rows = _parse_rows(text, path)
    if not rows:
        return _Table(list(HEADER), [])
    header, body = rows[0], rows[1:]
    table = _Table(header, body)
    if table.column("name") is None:
        raise _bad_file(path, f"its first line has no 'name' column: {','.join(header)[:80]!r}")
    if table.column("prompt", "text") is None:
        raise _bad_file(path, "its first line has neither a 'prompt' nor a 'text' column")
    return table


def _cell(row: list[str], index: int | None) -> str:
    return row[index] if index is not None and index < len(row) else ""


def _styles_of(table: _Table) -> dict[str, PromptStyle]:
    name_i = table.column("name")
    # A1111: row["prompt"] if "prompt" in row else row["text"] (old name,text files)
    prompt_i = table.column("prompt", "text")
    negative_i = table.column("negative_prompt")
    styles: dict[str, PromptStyle] = {}
    for row in table.rows:
        name = _cell(row, name_i)
        # A1111 skips empty rows and names starting with "#"; a row with an empty name it
        # keeps as a style called "" that no one can pick: skipped here
        if not row or not name or name.startswith("#"):
            continue
        styles[name] = PromptStyle(name, _cell(row, prompt_i), _cell(row, negative_i))
    return styles


def read_styles(path: str | Path) -> dict[str, PromptStyle]:
    """The styles in ``path`` by name, in file order (a later row with the same name wins,
    as in A1111). No file: no styles. A file that is not a readable styles CSV (binary,
    huge, not UTF-8, no ``name`` column, a folder, a pipe) raises one :class:`StyleError`
    (or :class:`~sdtui.errors.UserError`) naming it and the fix."""
    table = _read_table(Path(path))
    return {} if table is None else _styles_of(table)


def parse_styles_csv(text: str, source: str = "styles.csv") -> dict[str, PromptStyle]:
    """As :func:`read_styles`, for text already read (``source`` names it in errors)."""
    path = Path(source)
    rows = _parse_rows(text.removeprefix("\ufeff"), path)
    if not rows:
        return {}
    table = _Table(rows[0], rows[1:])
    if table.column("name") is None or table.column("prompt", "text") is None:
        raise _bad_file(path, "its first line has no 'name' and 'prompt' columns")
    return _styles_of(table)


# -- writing ----------------------------------------------------------------------------------


def check_style_name(name: str) -> str:
    """``name`` as a style can be saved under, or a StyleError saying why not."""
    if not name or not name.strip():
        raise StyleError("a style needs a name: type one")
    if "\n" in name or "\r" in name:
        raise StyleError("a style name must be one line: take the line break out")
    if name.lstrip().startswith("#"):
        raise StyleError(
            f"a style name cannot start with '#' ({name[:40]!r}): A1111 reads such a row as a "
            "comment; drop the '#'"
        )
    if name != name.strip():
        # A1111 reads the file with skipinitialspace: a leading space would not come back
        raise StyleError(f"a style name cannot start or end with a space ({name!r}): trim it")
    return name


def _render(table: _Table) -> str:
    out = io.StringIO(newline="")
    writer = csv.writer(out)  # A1111's DictWriter: excel dialect, \r\n, minimal quoting
    writer.writerow(table.header)
    writer.writerows(table.rows)
    return "\ufeff" + out.getvalue()


def _write_atomically(path: Path, text: str) -> None:
    target = Path(os.path.realpath(path))  # a symlinked styles.csv stays a symlink
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        mode = None
        try:
            mode = regular_stat(target).st_mode & 0o777
        except UserError:
            if target.exists() or target.is_symlink():
                raise
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except UserError:
        raise
    except OSError as e:
        raise StyleError(
            f"cannot write {shown(target)} ({e.strerror or e}): check that its folder exists "
            "and is writable",
            detail=f"path: {target}",
        ) from None


def save_style(
    path: str | Path, style: PromptStyle, *, overwrite: bool = True
) -> dict[str, PromptStyle]:
    """Add ``style`` to the styles file at ``path`` (made, with A1111's header, when there
    is none), or replace the style of that name where it stands; every other row, comment
    and column is kept as it was. Written atomically. Returns the styles now in the file.

    ``overwrite=False`` refuses a name that is there already. A file that cannot be read is
    never overwritten: the error names it and the fix."""
    path = Path(path)
    check_style_name(style.name)
    table = _read_table(path) or _Table(list(HEADER), [])
    rows = [list(r) for r in table.rows]
    if table.column("negative_prompt") is None and style.negative_prompt:
        # an old name,text file gains the column; every row gets the cell, as A1111's
        # DictReader reads a missing one as None, which its merge_prompts cannot take
        table = _Table([*table.header, "negative_prompt"], rows)
        rows = [r + [""] * (len(table.header) - len(r)) if r else r for r in rows]
    name_i = table.column("name")
    written = {
        "name": (table.column("name"), style.name),
        "prompt": (table.column("prompt", "text"), style.prompt),
        "negative_prompt": (table.column("negative_prompt"), style.negative_prompt),
    }

    def filled(row: list[str]) -> list[str]:
        out = row + [""] * (len(table.header) - len(row))
        for index, value in written.values():
            if index is not None:
                out[index] = value
        return out

    replaced = False
    kept: list[list[str]] = []
    for row in rows:
        if _cell(row, name_i) == style.name:
            if not overwrite:
                raise StyleError(
                    f"a style named {style.name!r} is in {shown(path)} already: pick another "
                    "name, or replace it"
                )
            if not replaced:
                kept.append(filled(row))  # where it stood, other columns kept
                replaced = True
            continue  # a later row of the same name goes: on reading it would win
        kept.append(row)
    if not replaced:
        kept.append(filled([]))
    result = _Table(table.header, kept)
    _write_atomically(path, _render(result))
    return _styles_of(result)


def delete_style(path: str | Path, name: str) -> dict[str, PromptStyle]:
    """Take every row named ``name`` out of the styles file (atomically); the rest stays as
    it was. Returns the styles now in the file; an unknown name raises
    :class:`UnknownStyleError`."""
    path = Path(path)
    table = _read_table(path)
    styles = {} if table is None else _styles_of(table)
    if table is None or name not in styles:
        have = ", ".join(styles) if styles else "none"
        raise UnknownStyleError(
            f"no style named {name!r} in {shown(path)}: it holds {have}", [name]
        )
    name_i = table.column("name")
    result = _Table(table.header, [r for r in table.rows if _cell(r, name_i) != name])
    _write_atomically(path, _render(result))
    return _styles_of(result)
