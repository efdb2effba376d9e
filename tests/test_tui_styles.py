"""A1111's styles in the TUI (issue 12, "Styles"): real styles.csv files in tmp folders, the
app driven by Pilot. Picking styles sends the merged prompts to the engine while the prompt
boxes keep what was typed; "Apply styles to the prompt" writes them in; saving and deleting go
through the CSV; a PNG whose prompt ends with a style gets it chosen and taken out; a file that
cannot be read is one line in the log and the app works on without styles."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from palette import run_command
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from test_tui_app import (
    TINY,
    FakeHost,
    done_jobs,
    fake_app,
    log_text,
    pngs,
    run_async,
    type_prompt,
    wait_for,
)

from sdtui.config import Settings
from sdtui.infotext import parse_infotext, read_infotext
from sdtui.styles import MAX_STYLES_BYTES, PromptStyle, read_styles
from sdtui.tui import graphics
from sdtui.tui.app import SdtuiApp
from sdtui.tui.form_state import FormState, from_json, load_form_state, to_json
from sdtui.tui.screens.ask import AskTextScreen, ConfirmScreen
from sdtui.tui.screens.styles import StylePickerScreen
from sdtui.tui.style_book import StyleBook
from sdtui.tui.widgets.prompt_editor import PromptArea
from sdtui.tui.widgets.text_line import TextLine

# as A1111 writes it: a byte-order mark, \r\n, csv quoting
STYLES_CSV = (
    "\ufeffname,prompt,negative_prompt\r\n"
    '"Photo","photo of {prompt}, 35mm","cartoon, {prompt}"\r\n'
    "Sharp,sharp focus,blurry\r\n"
    "Neg only,,lowres\r\n"
)


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every folder in tmp (SDTUI_HOME holds sdtui's own styles.csv); half-cell images."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SDTUI_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SDTUI_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SDTUI_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("SDTUI_OUTPUTS_DIR", str(tmp_path / "outputs"))
    graphics.set_mode("halfcell", "tests")
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(outputs_dir=tmp_path / "outputs", models_dir=tmp_path / "models")


def write_styles(path: Path, text: str = STYLES_CSV) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def styles_line(app: SdtuiApp) -> str:
    line = app.main.query_one("#styles-line", TextLine)
    return line.text if line.display else ""


def prompts(app: SdtuiApp) -> tuple[str, str]:
    return app.main.query_one("#prompt", PromptArea).text, app.main.query_one(
        "#negative", PromptArea
    ).text


async def type_negative(pilot: Any, text: str) -> None:
    area = pilot.app.main.query_one("#negative", PromptArea)
    area.focus()
    area.load_text("")
    await pilot.press(*text)


async def palette(pilot: Any, title: str) -> None:
    """Run the command palette's command whose title starts with ``title``."""
    await run_command(pilot, title)


# -- where the file is ----------------------------------------------------------------------


def test_the_styles_file_is_a1111s_in_its_folder_else_sdtuis_own(
    home: Path, tmp_path: Path
) -> None:
    assert Settings().styles_file == home / "styles.csv"
    webui = tmp_path / "stable-diffusion-webui"
    assert Settings(a1111_dir=webui, outputs_dir=tmp_path / "o").styles_file == webui / "styles.csv"


# -- pick, generate -------------------------------------------------------------------------


@run_async
async def test_two_styles_picked_in_order_are_merged_into_the_job_not_the_prompt_box(
    tmp_path: Path,
) -> None:
    # an A1111 install: its styles.csv, beside its models/
    webui = tmp_path / "webui"
    (webui / "models").mkdir(parents=True)
    write_styles(webui / "styles.csv")
    settings = Settings(a1111_dir=webui, outputs_dir=tmp_path / "outputs")
    host = FakeHost()
    app = fake_app(settings, host=host, remember_form=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await type_prompt(pilot, "a cat")
        await type_negative(pilot, "ugly")
        assert styles_line(app) == ""
        await pilot.press("alt+s")
        await pilot.pause()
        picker = app.screen
        assert isinstance(picker, StylePickerScreen)
        assert picker.shown == ["Photo", "Sharp", "Neg only"]
        # type to narrow; space turns the highlighted one on
        await pilot.press("s", "h", "a")
        await pilot.pause()
        assert picker.shown == ["Sharp"]
        await pilot.press("space")
        await pilot.press("backspace", "backspace", "backspace")
        await pilot.pause()
        assert picker.shown == ["Photo", "Sharp", "Neg only"]
        # the highlighted style's prompts show under the list
        preview = str(picker.query_one("#style-preview").render())
        assert "photo of {prompt}, 35mm" in preview and "cartoon, {prompt}" in preview
        await pilot.press("enter")  # Photo: second, after Sharp
        await pilot.pause()
        assert picker.selected == ["Sharp", "Photo"]
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.main
        assert styles_line(app) == "Styles alt+s: Sharp › Photo"

        await pilot.press("ctrl+g")
        await pilot.pause()
        [params] = host.pending.values()
        # A1111: each style applies to the result of the one before, in the order chosen
        assert params.prompt == "photo of a cat, sharp focus, 35mm"
        assert params.negative_prompt == "cartoon, ugly, blurry"
        # the boxes keep what was typed
        assert prompts(app) == ("a cat", "ugly")
    saved = load_form_state()
    assert saved is not None and saved.styles == ("Sharp", "Photo")
    assert saved.params.prompt == "a cat"

    # the next start comes back with them chosen
    app2 = fake_app(settings, form_state=saved)
    async with app2.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert styles_line(app2) == "Styles alt+s: Sharp › Photo"


@pytest.mark.slow
@run_async
async def test_the_image_made_with_styles_has_the_merged_prompt_in_its_infotext(
    home: Path, settings: Settings, attach: Any
) -> None:
    write_styles(home / "styles.csv")
    engine = attach(settings, who="tui")
    form = FormState(
        params=TINY.replace(prompt="a red cube", negative_prompt="ugly"), styles=("Photo", "Sharp")
    )
    app = SdtuiApp(engine, settings, form_state=form, gpu_interval=None, remember_form=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: done_jobs(app) == 1, 90)
        [image] = pngs(settings.outputs / "txt2img-images")
        info = parse_infotext(read_infotext(image) or "")
        assert info.prompt == "photo of a red cube, 35mm, sharp focus"
        assert info.negative_prompt == "cartoon, ugly, blurry"
        assert prompts(app) == ("a red cube", "ugly")


@run_async
async def test_a_style_the_file_no_longer_holds_blocks_generate_and_is_turned_off_in_the_picker(
    home: Path, settings: Settings
) -> None:
    write_styles(home / "styles.csv")
    host = FakeHost()
    form = FormState(params=TINY.replace(prompt="a cat"), styles=("Gone", "Sharp"))
    app = fake_app(settings, host=host, form_state=form)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert styles_line(app) == "Styles alt+s: Gone (not in the file) › Sharp"
        await pilot.press("ctrl+g")
        await pilot.pause()
        assert not host.pending
        assert "not generated: unknown style 'Gone'" in log_text(app)
        assert str(home / "styles.csv") in log_text(app)
        await pilot.press("alt+s")
        await pilot.pause()
        picker = app.screen
        assert isinstance(picker, StylePickerScreen)
        assert picker.shown[0] == "Gone"  # listed first, so it can be turned off
        await pilot.press("space", "escape")
        await pilot.pause()
        assert app.main.form_state.styles == ("Sharp",)
        await pilot.press("ctrl+g")
        await pilot.pause()
        [params] = host.pending.values()
        assert params.prompt == "a cat, sharp focus"


# -- apply to the prompt --------------------------------------------------------------------


@run_async
async def test_apply_styles_writes_them_into_the_prompt_and_unchooses_them(
    home: Path, settings: Settings
) -> None:
    write_styles(home / "styles.csv")
    host = FakeHost()
    app = fake_app(settings, host=host)
    async with app.run_test(size=(100, 30)) as pilot:
        await type_prompt(pilot, "a cat")
        await type_negative(pilot, "ugly")
        await palette(pilot, "Style: Photo")
        app.main.toggle_style("Sharp")
        assert app.main.form_state.styles == ("Photo", "Sharp")
        await palette(pilot, "Apply styles to the prompt")
        assert prompts(app) == ("photo of a cat, 35mm, sharp focus", "cartoon, ugly, blurry")
        assert app.main.form_state.styles == () and styles_line(app) == ""
        assert "styles applied to the prompt: Photo › Sharp" in log_text(app)
        await pilot.press("ctrl+g")
        await pilot.pause()
        [params] = host.pending.values()
        assert params.prompt == "photo of a cat, 35mm, sharp focus"  # not applied twice
        # ctrl+z in the box takes the typed text back
        app.main.query_one("#prompt", PromptArea).focus()
        await pilot.press("ctrl+z")
        await pilot.pause()
        assert prompts(app)[0] == "a cat"


# -- save, replace, delete ------------------------------------------------------------------


@run_async
async def test_save_replace_and_delete_a_style_round_trip_through_the_csv(
    home: Path, settings: Settings
) -> None:
    path = write_styles(home / "styles.csv", STYLES_CSV.replace("Sharp,", "# a comment\r\nSharp,"))
    app = fake_app(settings)
    async with app.run_test(size=(100, 30)) as pilot:
        await type_prompt(pilot, "neon, glow")
        await type_negative(pilot, "dull")
        await pilot.press("alt+s")
        await pilot.pause()
        picker = app.screen
        assert isinstance(picker, StylePickerScreen)
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, AskTextScreen)
        # a name A1111 would read as a comment is refused in the box, which stays open
        await pilot.press("#", "x", "enter")
        await pilot.pause()
        assert isinstance(app.screen, AskTextScreen)
        assert "cannot start with '#'" in str(app.screen.query_one("#ask-problem").render())
        await pilot.press("backspace", "backspace", *"Neon", "enter")
        await pilot.pause()
        assert app.screen is picker and "Neon" in picker.shown
        styles = read_styles(path)
        assert styles["Neon"] == PromptStyle("Neon", "neon, glow", "dull")
        assert list(styles) == ["Photo", "Sharp", "Neg only", "Neon"]
        raw = path.read_bytes()
        assert raw.startswith("\ufeffname,prompt,negative_prompt\r\n".encode())
        assert b"# a comment" in raw  # every other row kept as it was
        await pilot.press("escape")
        await pilot.pause()

        # the same name again: asks before replacing; no keeps the file
        await type_prompt(pilot, "neon, glow, pink")
        await palette(pilot, "Save the prompt as a style")
        await pilot.press(*"Neon", "enter")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await pilot.pause()
        assert read_styles(path)["Neon"].prompt == "neon, glow"
        app.main.action_save_style()
        await pilot.pause()
        await pilot.press(*"Neon", "enter")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        assert read_styles(path)["Neon"] == PromptStyle("Neon", "neon, glow, pink", "dull")
        assert list(read_styles(path)) == ["Photo", "Sharp", "Neg only", "Neon"]

        # delete in the picker: the highlighted style, after asking
        app.main.toggle_style("Neon")
        await pilot.press("alt+s")
        await pilot.pause()
        picker = app.screen
        assert isinstance(picker, StylePickerScreen)
        await pilot.press(*"neon")
        await pilot.pause()
        assert picker.shown == ["Neon"]
        await pilot.press("delete")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await pilot.pause()
        assert app.screen is picker and picker.shown == [] and picker.selected == []
        await pilot.press("escape")
        await pilot.pause()
        assert list(read_styles(path)) == ["Photo", "Sharp", "Neg only"]
        assert b"# a comment" in path.read_bytes()
        assert app.main.form_state.styles == ()
        assert "style 'Neon' deleted from" in log_text(app)

        # and from the palette
        await palette(pilot, "Delete style: Neg only")
        await pilot.press("enter")
        await pilot.pause()
        assert list(read_styles(path)) == ["Photo", "Sharp"]


@run_async
async def test_saving_makes_sdtuis_own_styles_file(home: Path, settings: Settings) -> None:
    app = fake_app(settings)
    async with app.run_test(size=(100, 30)) as pilot:
        await type_prompt(pilot, "watercolor")
        await pilot.press("alt+s")
        await pilot.pause()
        assert "no styles in" in str(app.screen.query_one("#style-preview").render())
        await pilot.press("ctrl+s", *"Paint", "enter")
        await pilot.pause()
        await pilot.press("space", "escape")
        await pilot.pause()
        assert read_styles(home / "styles.csv") == {"Paint": PromptStyle("Paint", "watercolor", "")}
        assert app.main.form_state.styles == ("Paint",)


# -- a PNG's prompt ------------------------------------------------------------------------


@run_async
async def test_loading_a_png_chooses_the_styles_its_prompt_ends_with(
    home: Path, settings: Settings, tmp_path: Path
) -> None:
    write_styles(home / "styles.csv")
    png = tmp_path / "a1111.png"
    meta = PngInfo()
    meta.add_text(
        "parameters",
        "photo of a dog, 35mm, sharp focus\nNegative prompt: cartoon, ugly, blurry\n"
        "Steps: 12, Sampler: Euler, CFG scale: 6, Seed: 5, Size: 64x64",
    )
    Image.new("RGB", (8, 8)).save(png, pnginfo=meta)
    host = FakeHost()
    app = fake_app(settings, host=host)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+o")
        await pilot.pause()
        await pilot.press(*str(png), "enter")
        await pilot.pause()
        assert prompts(app) == ("a dog", "ugly")
        assert app.main.form_state.styles == ("Photo", "Sharp")
        assert styles_line(app) == "Styles alt+s: Photo › Sharp"
        assert "chosen, and their text taken out of the prompt" in log_text(app)
        await pilot.press("ctrl+g")
        await pilot.pause()
        [params] = host.pending.values()
        # the same prompts go to the engine as made the image
        assert params.prompt == "photo of a dog, 35mm, sharp focus"
        assert params.negative_prompt == "cartoon, ugly, blurry"

        # a prompt with no style in it: kept whole, the choice stays (A1111's "Apply if any")
        plain = tmp_path / "plain.png"
        meta = PngInfo()
        meta.add_text("parameters", "a tree\nSteps: 12, Seed: 6, Size: 64x64")
        Image.new("RGB", (8, 8)).save(plain, pnginfo=meta)
        app.main.load_params_from(str(plain))
        await pilot.pause()
        assert prompts(app) == ("a tree", "")
        assert app.main.form_state.styles == ("Photo", "Sharp")
        assert "styles still chosen, added on generate: Photo › Sharp" in log_text(app)


# -- files that cannot be read --------------------------------------------------------------


@run_async
async def test_a_broken_styles_file_is_one_line_in_the_log_and_the_app_works_without_styles(
    home: Path, settings: Settings
) -> None:
    path = home / "styles.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    host = FakeHost()
    app = fake_app(settings, host=host)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.2)
        log = log_text(app)
        assert log.count("styles not loaded") == 1 and str(path) in log
        assert "NUL bytes" in log
        await pilot.press("alt+s")
        await pilot.pause()
        assert "NUL bytes" in str(app.screen.query_one("#style-preview").render())
        await pilot.press("escape")
        await pilot.pause()
        assert log_text(app).count("styles not loaded") == 1  # said once
        await type_prompt(pilot, "a cat")
        await pilot.press("ctrl+g")
        await pilot.pause()
        [params] = host.pending.values()
        assert params.prompt == "a cat"
        # saving refuses to overwrite a file it cannot read
        app.main.action_save_style()
        await pilot.pause()
        assert app.screen is app.main
        assert "style not saved" in log_text(app)
        assert path.read_bytes().startswith(b"\x89PNG")
        # a chosen style with the file broken: not generated, the file named
        app.main.toggle_style("Photo")
        await pilot.press("ctrl+g")
        await pilot.pause()
        assert len(host.pending) == 1
        assert f"not generated: {path}" in log_text(app)

        # fixed on disk: read again at the next use
        write_styles(path)
        await pilot.press("ctrl+g")
        await pilot.pause()
        assert host.pending[2].prompt == "photo of a cat, 35mm"


def test_the_book_reports_huge_fifo_and_folder_files_once_and_reads_changes(home: Path) -> None:
    path = home / "styles.csv"
    book = StyleBook(path)
    assert book.refresh() is None and book.styles == {}  # no file: no styles, no word
    with open(path, "wb") as f:
        f.truncate(MAX_STYLES_BYTES + 1)  # sparse: nothing written
    problem = book.refresh()
    assert problem and str(path) in problem and "MiB" in problem
    assert book.refresh() is None and book.problem == problem  # said once
    path.unlink()
    os.mkfifo(path)  # would block whoever opens it
    problem = book.refresh()
    assert problem and str(path) in problem
    path.unlink()
    path.mkdir()
    assert book.refresh() and book.styles == {}
    path.rmdir()
    write_styles(path)
    assert book.refresh() is None and book.names == ["Photo", "Sharp", "Neg only"]
    write_styles(path, STYLES_CSV + "Late,late,\r\n")
    book.refresh()
    assert book.names[-1] == "Late"


def test_the_form_remembers_styles_and_drops_bad_values() -> None:
    state = FormState(styles=("Photo", "Sharp"))
    assert to_json(state)["styles"] == ["Photo", "Sharp"]
    assert from_json(to_json(state)) == state
    assert from_json({"styles": "Photo"}).styles == ()
    assert from_json({"styles": [1, "x"]}).styles == ()
    assert from_json({"styles": ["a", "a", "b"]}).styles == ("a", "b")
