"""Prompt styles in the CLI (issue 12, part 6): `generate --style NAME` (repeatable, applied in
order) merges A1111's styles.csv into the prompt and the negative before the job is built, so
the infotext has the merged prompt as A1111's has; `sdtui styles` lists them; an unknown style
or a broken file is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sdtui.infotext import parse_infotext, read_infotext

STYLES = (
    "name,prompt,negative_prompt\r\n"
    "# a comment row,,\r\n"
    'cinematic,"{prompt}, film grain, dramatic light","blurry, lowres"\r\n'
    "sharp,sharp focus,jpeg artifacts\r\n"
    'portrait,"portrait of {prompt}",\r\n'
)


def sdtui(env, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sdtui", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_styles(folder: Path, text: str = STYLES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "styles.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # A1111 writes a BOM
    return path


def test_generate_with_styles_merges_them_in_order_into_the_infotext(env, tmp_path, demo_model):
    write_styles(tmp_path / "home")
    proc = sdtui(
        env,
        "generate",
        "--demo",
        "a cat",
        "-N",
        "ugly",
        "--style",
        "portrait",
        "--style",
        "cinematic",
        "--style",
        "sharp",
        "--size",
        "64x64",
        "--steps",
        "2",
        "--seed",
        "3",
    )
    assert proc.returncode == 0, proc.stderr
    info = parse_infotext(read_infotext(proc.stdout.splitlines()[0]))
    # portrait, then cinematic around it, then sharp appended (A1111 apply_styles_to_prompt)
    assert info.prompt == "portrait of a cat, film grain, dramatic light, sharp focus"
    assert info.negative_prompt == "ugly, blurry, lowres, jpeg artifacts"
    assert info.pairs["Seed"] == "3"


def test_an_xyz_plot_takes_styles_and_prints_only_the_grid(env, tmp_path, demo_model):
    write_styles(tmp_path / "home")
    proc = sdtui(
        env,
        "xyz",
        "--demo",
        "a cat",
        "--style",
        "sharp",
        "--size",
        "64x64",
        "--seed",
        "4",
        "--x-type",
        "Steps",
        "--x-values",
        "1,2",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and Path(lines[0]).name.startswith("xyz_grid-")
    info = parse_infotext(read_infotext(lines[0]))
    assert info.prompt == "a cat, sharp focus" and info.negative_prompt == "jpeg artifacts"
    assert info.pairs["Script"] == "X/Y/Z plot"


def test_an_unknown_style_is_one_line_naming_the_styles_there_are(env, tmp_path):
    write_styles(tmp_path / "home")
    proc = sdtui(
        env, "generate", "--demo", "a cat", "--style", "sharp", "--style", "Cinematic", timeout=60
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "unknown style 'Cinematic'" in lines[0] and "cinematic, sharp, portrait" in lines[0]
    assert "a comment row" not in lines[0]
    assert not (tmp_path / "home" / "outputs").exists(), "nothing ran"


def test_no_styles_file_says_where_it_is_looked_for(env, tmp_path):
    proc = sdtui(env, "generate", "--demo", "a cat", "--style", "cinematic", timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "unknown style 'cinematic'" in lines[0]
    assert str(tmp_path / "home" / "styles.csv") in lines[0]


def test_a_broken_styles_file_is_one_line(env, tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "styles.csv").write_bytes(b"\x00\x01binary\x00")
    for args in (["generate", "--demo", "a cat", "--style", "x"], ["styles"]):
        proc = sdtui(env, *args, timeout=60)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "styles.csv" in lines[0] and "NUL" in lines[0], proc.stderr


def test_styles_lists_name_prompt_and_negative(env, tmp_path):
    path = write_styles(tmp_path / "home")
    proc = sdtui(env, "styles", timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.splitlines()
    assert rows[0].split() == ["NAME", "PROMPT", "NEGATIVE"]
    assert rows[1].startswith("cinematic") and "{prompt}, film grain, dramatic light" in rows[1]
    assert rows[1].endswith("blurry, lowres")
    assert rows[3].startswith("portrait") and rows[3].endswith("portrait of {prompt}")
    assert f"3 styles in {path}" in proc.stdout

    listing = json.loads(sdtui(env, "styles", "--json", timeout=60).stdout)
    assert listing["path"] == str(path)
    assert listing["styles"][1] == {
        "name": "sharp",
        "prompt": "sharp focus",
        "negative_prompt": "jpeg artifacts",
    }
    assert [s["name"] for s in listing["styles"]] == ["cinematic", "sharp", "portrait"]


def test_styles_come_from_the_a1111_folder_when_one_is_given(env, tmp_path):
    a1111 = tmp_path / "webui"
    write_styles(a1111, "name,prompt,negative_prompt\nfrom-a1111,webui style,\n")
    write_styles(tmp_path / "home", "name,prompt,negative_prompt\nfrom-home,home style,\n")
    proc = sdtui(env, "styles", "--json", "--a1111-dir", str(a1111), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [s["name"] for s in json.loads(proc.stdout)["styles"]] == ["from-a1111"]
    (tmp_path / "home" / "styles.csv").unlink()
    proc = sdtui(env, "styles", timeout=60)
    assert proc.returncode == 0 and "no styles file at" in proc.stdout
