"""Images in the TUI: choosing the terminal image mode, the preview, the grid, the full view
and the history screen."""

from __future__ import annotations

import asyncio
import functools
import io
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.widgets import OptionList, Static

sys.path.insert(0, str(Path(__file__).parent / "apps"))

from image_app import ImageApp, make_sample_image, make_sample_images  # noqa: E402

from sdtui.tui import graphics  # noqa: E402
from sdtui.tui.graphics import (  # noqa: E402
    GraphicsChoice,
    TerminalReplies,
    choose_mode,
    parse_replies,
    parse_xtversion,
)
from sdtui.tui.screens.full_view import FullViewScreen  # noqa: E402
from sdtui.tui.screens.history import HistoryScreen  # noqa: E402
from sdtui.tui.widgets.image_view import (  # noqa: E402
    ImageGrid,
    PreviewImage,
    fit_within,
    grid_shape,
    thumbnail,
)

ST = "\x1b\\"


def sync(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async Pilot test with asyncio.run (no pytest async plugin needed)."""

    @functools.wraps(test)
    def run(*args: object, **kwargs: object) -> None:
        asyncio.run(test(*args, **kwargs))  # type: ignore[arg-type]

    return run


# -- terminal detection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (f"\x1bP>|kitty(0.26.5){ST}", ("kitty", "0.26.5")),
        (f"\x1bP>|kitty(0.35.2){ST}", ("kitty", "0.35.2")),
        (f"\x1bP>|WezTerm 20240203-110809-5046fc22{ST}", ("WezTerm", "20240203-110809-5046fc22")),
        (f"\x1bP>|XTerm(379){ST}", ("XTerm", "379")),
        (f"\x1bP>|tmux 3.3a{ST}", ("tmux", "3.3a")),
        ("\x1bP>|foot(1.13.1)\x07", ("foot", "1.13.1")),
        ("\x1bP>|iTerm2 3.5.0\x1b\\", ("iTerm2", "3.5.0")),
        ("kitty(0.26.5)", ("kitty", "0.26.5")),
        ("", None),
        ("\x1b[?62;4c", None),
    ],
)
def test_parse_xtversion(reply: str, expected: tuple[str, str] | None) -> None:
    assert parse_xtversion(reply) == expected


def test_parse_replies_reads_one_round_trip_in_any_order() -> None:
    buffer = f"\x1b_Gi=31;OK{ST}\x1bP>|kitty(0.35.2){ST}\x1b[?62;c"
    assert parse_replies(buffer) == TerminalReplies(
        answered=True, xtversion=("kitty", "0.35.2"), sixel=False, tgp=True
    )
    xterm = parse_replies(f"\x1bP>|XTerm(379){ST}\x1b[?63;1;2;4;6;9;15;22c")
    assert xterm.sixel and not xterm.tgp and xterm.xtversion == ("XTerm", "379")
    # tmux answers for itself, the outer terminal through passthrough: the outer one wins
    both = parse_replies(f"\x1bP>|tmux 3.4{ST}\x1bP>|kitty(0.36.0){ST}\x1b[?1;2c")
    assert both.xtversion == ("kitty", "0.36.0")
    assert parse_replies("") == TerminalReplies()


def _replies(xtversion: str | None, *, sixel: bool = False, tgp: bool = False) -> TerminalReplies:
    return TerminalReplies(
        answered=True,
        xtversion=parse_xtversion(f"\x1bP>|{xtversion}{ST}") if xtversion else None,
        sixel=sixel,
        tgp=tgp,
    )


@pytest.mark.parametrize(
    ("replies", "env", "passthrough", "wrapping", "mode", "reason_has"),
    [
        # kitty 0.26.5 (Debian 12) answers the graphics query but shows boxes
        (_replies("kitty(0.26.5)", tgp=True), {}, None, True, "halfcell", "older than 0.28"),
        (_replies("kitty(0.35.2)", tgp=True), {}, None, True, "kitty", "kitty"),
        (_replies("kitty(0.28.0)", tgp=True), {}, None, True, "kitty", "kitty"),
        # WezTerm answers the kitty query too, but only its Sixel works with textual-image
        (
            _replies("WezTerm 20240203-110809-5046fc22", sixel=True, tgp=True),
            {},
            None,
            True,
            "sixel",
            "wezterm",
        ),
        (_replies("XTerm(379)", sixel=True), {}, None, True, "sixel", "xterm"),
        (_replies("XTerm(379)"), {}, None, True, "halfcell", "-ti vt340"),
        (_replies("foot(1.16.2)", sixel=True), {}, None, True, "sixel", "foot"),
        # no reply at all (slow SSH link): half-cell blocks, whatever the hints say
        (TerminalReplies(), {"TERM": "xterm-kitty"}, None, True, "halfcell", "did not answer"),
        # answered, but no XTVERSION: environment hints, then what the terminal reports
        (
            TerminalReplies(answered=True, tgp=True),
            {"TERM": "xterm-kitty"},
            None,
            True,
            "kitty",
            "",
        ),
        (TerminalReplies(answered=True, sixel=True), {}, None, True, "sixel", "Sixel"),
        (TerminalReplies(answered=True), {}, None, True, "halfcell", "no graphics"),
        (
            TerminalReplies(answered=True, sixel=True),
            {"TERM_PROGRAM": "WezTerm"},
            None,
            True,
            "sixel",
            "wezterm",
        ),
        # tmux: kitty needs allow-passthrough on (and a textual-image that wraps for tmux)
        (
            _replies("tmux 3.4"),
            {"TMUX": "/tmp/tmux-0/default,1,0", "KITTY_WINDOW_ID": "1"},
            False,
            True,
            "halfcell",
            "allow-passthrough is off",
        ),
        (
            _replies("tmux 3.4"),
            {"TMUX": "/tmp/tmux-0/default,1,0", "KITTY_WINDOW_ID": "1"},
            True,
            True,
            "kitty",
            "passthrough",
        ),
        (
            _replies("tmux 3.4"),
            {"TMUX": "/tmp/tmux-0/default,1,0", "KITTY_WINDOW_ID": "1"},
            True,
            False,
            "halfcell",
            ">= 0.13",
        ),
        (
            _replies("kitty(0.26.5)", tgp=True),
            {"TMUX": "/tmp/tmux-0/default,1,0"},
            True,
            True,
            "halfcell",
            "older than 0.28",
        ),
        # tmux built with Sixel reports it itself
        (_replies("tmux 3.4", sixel=True), {"TMUX": "x"}, None, True, "sixel", "Sixel"),
    ],
)
def test_choose_mode_decision_table(
    replies: TerminalReplies,
    env: dict[str, str],
    passthrough: bool | None,
    wrapping: bool,
    mode: str,
    reason_has: str,
) -> None:
    choice = choose_mode(
        "auto", replies=replies, env=env, tmux_passthrough=passthrough, tmux_wrapping=wrapping
    )
    assert choice.mode_used == mode, choice.reason
    assert reason_has.lower() in choice.reason.lower()


def test_choose_mode_honours_a_forced_mode_and_rejects_unknown_ones() -> None:
    kitty_old = _replies("kitty(0.26.5)", tgp=True)
    for mode in graphics_modes():
        assert choose_mode(mode, replies=kitty_old).mode_used == mode
    assert choose_mode("auto", is_tty=False).mode_used == "unicode"
    with pytest.raises(ValueError, match="auto, kitty, sixel"):
        choose_mode("iterm")


def test_windows_terminal_gets_sixel_without_a_probe() -> None:
    """On Windows the terminal is not queried (no termios): Windows Terminal, known by
    WT_SESSION, draws Sixel (1.22+), where the unanswered probe used to read as "slow link?"."""
    wt = {"WT_SESSION": "5c1f0c2e-0000-4000-8000-000000000000"}
    choice = choose_mode("auto", replies=None, env=wt, platform="win32")
    assert choice.mode_used == "sixel" and "Windows Terminal" in choice.reason
    assert "slow link" not in choice.reason
    conhost = choose_mode("auto", replies=None, env={}, platform="win32")
    assert conhost.mode_used == "halfcell" and "not probed on Windows" in conhost.reason
    # elsewhere an unanswered probe still means a slow link, and WT_SESSION over SSH from
    # Windows Terminal to Linux follows the replies as before
    assert "slow link" in choose_mode("auto", replies=None, env=wt, platform="linux").reason
    sixel = _replies(None, sixel=True)
    assert choose_mode("auto", replies=sixel, env=wt, platform="linux").mode_used == "sixel"


def graphics_modes() -> list[str]:
    return [m for m in graphics.MODES if m != "auto"]


def test_probe_without_a_terminal_asks_nothing_and_picks_unicode() -> None:
    # pytest's stdout is not a terminal: nothing is written, nothing read
    choice = graphics.probe("auto")
    assert choice == GraphicsChoice("unicode", choice.reason)
    assert graphics.current_mode() == "unicode"
    assert graphics.probe("none").mode_used == "none"
    assert graphics.image_widget_class("none") is None
    from textual_image.widget import HalfcellImage, SixelImage, TGPImage, UnicodeImage

    assert graphics.image_widget_class("kitty") is TGPImage
    assert graphics.image_widget_class("sixel") is SixelImage
    assert graphics.image_widget_class("halfcell") is HalfcellImage
    assert graphics.image_widget_class("unicode") is UnicodeImage
    graphics.set_mode("halfcell")


# -- pictures -----------------------------------------------------------------------------------


def test_grid_shape_adapts_to_width() -> None:
    assert grid_shape(6, 160, 48).columns == 3  # 3 x 2
    assert grid_shape(6, 80, 24).columns in (2, 3)
    strip = grid_shape(6, 80, 9)  # a short strip in the main screen: one scrolling row
    assert strip.columns == 6 and strip.tile_height >= 7
    assert grid_shape(1, 200, 60).tile_width <= 48  # thumbnails stay small
    assert grid_shape(0, 10, 3).columns == 1


def test_thumbnail_is_small_cached_and_refreshed_when_the_file_changes(tmp_path: Path) -> None:
    path = make_sample_image(tmp_path / "a.png", 0, size=(1024, 768))
    first = thumbnail(path)
    assert max(first.size) == 256 and first.size == fit_within((1024, 768), (256, 256))
    assert thumbnail(path) is first
    make_sample_image(path, 1, size=(640, 640))
    assert thumbnail(path).size == (256, 256)


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "cat\nSteps: 20, Sampler: Euler a, Seed: 77, Size: 64x64")
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


class PreviewApp(App[None]):
    def compose(self) -> ComposeResult:
        yield PreviewImage(mode="halfcell", id="preview")


@sync
async def test_preview_renders_only_when_the_bytes_change() -> None:
    app = PreviewApp()
    async with app.run_test(size=(60, 20)) as pilot:
        preview = app.query_one(PreviewImage)
        picture = preview.picture
        assert picture is not None
        renders = 0
        original_render = picture.render

        def counting_render():  # type: ignore[no-untyped-def]
            nonlocal renders
            renders += 1
            return original_render()

        picture.render = counting_render  # type: ignore[method-assign]

        red = _png((255, 0, 0))
        assert preview.show_png(red) is True
        await pilot.pause()
        shown = picture.image  # type: ignore[attr-defined]
        assert shown is not None and renders >= 1
        assert preview.caption == "64×64 · seed 77 · 20 steps"
        before = (renders, preview.image_updates)

        assert preview.show_png(red) is False  # same bytes: nothing happens
        await pilot.pause()
        assert (renders, preview.image_updates) == before
        assert picture.image is shown  # type: ignore[attr-defined]

        assert preview.show_png(_png((0, 0, 255))) is True
        await pilot.pause()
        assert renders > before[0] and preview.image_updates == before[1] + 1
        assert picture.image is not shown  # type: ignore[attr-defined]

        assert preview.show_png(b"not a png") is False
        assert "cannot be shown" in str(app.query_one("#preview-text", Static).render())
        preview.clear()
        await pilot.pause()
        assert preview.source is None and picture.image is None  # type: ignore[attr-defined]


@sync
async def test_preview_downscales_big_images_to_the_cells_it_has(tmp_path: Path) -> None:
    path = make_sample_image(tmp_path / "big.png", 0, size=(2048, 2048))
    app = PreviewApp()
    async with app.run_test(size=(40, 12)) as pilot:
        preview = app.query_one(PreviewImage)
        preview.show_path(path)
        await pilot.pause()
        handed = preview.picture.image  # type: ignore[union-attr]
        # 40 x 11 cells of 10 x 20 px: at most 400 x 220 pixels, never the 2048² original
        assert handed.size[0] <= 400 and handed.size[1] <= 220
        assert preview.source is not None and preview.source.size == (2048, 2048)
        assert "00000" not in preview.caption and "big.png" in preview.caption


@sync
async def test_preview_in_mode_none_shows_the_path(tmp_path: Path) -> None:
    path = make_sample_image(tmp_path / "x.png", 2)

    class NoneApp(App[None]):
        def compose(self) -> ComposeResult:
            yield PreviewImage(mode="none")

    app = NoneApp()
    async with app.run_test(size=(60, 10)) as pilot:
        preview = app.query_one(PreviewImage)
        assert preview.picture is None
        preview.show_path(path)
        await pilot.pause()
        assert str(path) in str(app.query_one("#preview-text", Static).render())
        assert "seed 1002" in preview.caption


# -- grid ---------------------------------------------------------------------------------------


@sync
async def test_grid_cursor_moves_and_enter_selects(tmp_path: Path) -> None:
    paths = make_sample_images(tmp_path, 6)
    app = ImageApp(paths, mode="halfcell", with_preview=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        grid = app.query_one(ImageGrid)
        assert grid.shape.columns == 3
        assert grid.selected_path == str(paths[0])
        await pilot.press("right")
        assert grid.selected_path == str(paths[1])
        await pilot.press("j")  # down one row
        assert grid.selected_path == str(paths[4])
        await pilot.press("down")  # no row below: stays
        assert grid.selected_path == str(paths[4])
        await pilot.press("h", "k")
        assert grid.selected_path == str(paths[0])
        await pilot.press("left")  # clamps at the first image
        assert grid.selected_path == str(paths[0])
        await pilot.press("l", "l")
        await pilot.pause()
        highlighted = [e.path for e in app.events if isinstance(e, ImageGrid.Highlighted)]
        assert highlighted == [str(p) for p in (paths[0], paths[1], paths[4], paths[3])] + [
            str(paths[0]),
            str(paths[1]),
            str(paths[2]),
        ]
        tiles = list(grid.query(".image-tile"))
        assert [t.has_class("-highlight") for t in tiles] == [i == 2 for i in range(6)]
        await pilot.press("enter")
        await pilot.pause()
        selected = [e for e in app.events if isinstance(e, ImageGrid.Selected)]
        assert [e.path for e in selected] == [str(paths[2])]
        assert isinstance(app.screen, FullViewScreen)


@sync
async def test_grid_set_and_add_images(tmp_path: Path) -> None:
    paths = make_sample_images(tmp_path, 4)
    app = ImageApp([], mode="halfcell", with_preview=False)
    async with app.run_test(size=(80, 24)) as pilot:
        grid = app.query_one(ImageGrid)
        assert grid.selected_path is None
        await pilot.press("enter", "right")  # nothing to do, nothing breaks
        grid.add_image(paths[0])
        await pilot.pause()
        assert grid.selected_path == str(paths[0])
        grid.set_images(paths[1:] + [paths[0]])
        await pilot.pause()
        assert grid.selected_path == str(paths[0])  # the cursor stays on the same file
        assert len(grid.query(".image-tile")) == 4
        grid.set_images([])
        await pilot.pause()
        assert grid.selected_path is None and not grid.query(".image-tile")


# -- screens ------------------------------------------------------------------------------------


@sync
async def test_full_view_shows_infotext_and_browses(tmp_path: Path) -> None:
    paths = make_sample_images(tmp_path, 3)
    app = ImageApp(paths, mode="halfcell", view="full", with_preview=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, FullViewScreen)
        info = str(screen.query_one("#full-info-text", Static).render())
        assert "a lighthouse on a cliff, picture 1" in info
        assert "Seed: 1000" in info and "blurry, lowres" in info
        assert not screen.has_class("-narrow")
        await pilot.press("right")
        assert screen.path == str(paths[1])
        assert "Seed: 1001" in str(screen.query_one("#full-info-text", Static).render())
        await pilot.press("right", "right")
        assert screen.path == str(paths[2])
        await pilot.press("escape")
        assert not isinstance(app.screen, FullViewScreen)


@sync
async def test_full_view_has_one_caption_line(tmp_path: Path) -> None:
    """Size, seed, steps and name once, in the title with the keys (there used to be a
    second caption line under the image, saying it again)."""
    paths = make_sample_images(tmp_path, 2)
    app = ImageApp(paths, mode="halfcell", view="full", with_preview=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        rows = [
            "".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips()
        ]
        captions = [r for r in rows if "seed 1000 · 20 steps" in r]  # the info says "Seed: 1000"
        assert len(captions) == 1, rows
        assert "esc close" in captions[0] and "←/→ 1/2" in captions[0]
        assert paths[0].name in captions[0]
        assert not app.screen.query_one("#full-image #preview-caption").display


@sync
async def test_full_view_narrow_and_without_infotext(tmp_path: Path) -> None:
    from PIL import Image

    bare = tmp_path / "bare.png"
    Image.new("RGB", (32, 32), (9, 9, 9)).save(bare)
    app = ImageApp([bare], mode="halfcell", view="full", with_preview=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.screen.has_class("-narrow")
        assert "No generation parameters" in str(
            app.screen.query_one("#full-info-text", Static).render()
        )
        await pilot.press("q")
        assert not isinstance(app.screen, FullViewScreen)


@sync
async def test_history_lists_newest_first_and_returns_the_choice(tmp_path: Path) -> None:
    paths = make_sample_images(tmp_path, 5)  # oldest first, across txt2img/img2img/extras
    results: list[str | None] = []

    class HistoryApp(App[None]):
        def on_mount(self) -> None:
            self.push_screen(HistoryScreen(tmp_path, mode="halfcell"), results.append)

    app = HistoryApp()
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, HistoryScreen)
        assert screen.paths == list(reversed(paths))
        options = screen.query_one(OptionList)
        labels = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert [label.split()[-1] for label in labels] == [p.name for p in reversed(paths)]
        assert "img2img" in labels[0] and "txt2img" in labels[1] and "extras" in labels[2]
        await pilot.press("down")
        await pilot.pause(0.2)
        preview = screen.query_one(PreviewImage)
        assert "seed 1003" in preview.caption
        assert "picture 4" in str(screen.query_one("#history-params-text", Static).render())
        await pilot.press("enter")
        await pilot.pause()
        assert results == [str(paths[3])]

        app.push_screen(HistoryScreen(tmp_path, mode="halfcell"), results.append)
        await pilot.pause()
        await pilot.press("escape")
        await pilot.pause()
        assert results == [str(paths[3]), None]


@sync
async def test_history_with_no_outputs_says_so(tmp_path: Path) -> None:
    results: list[str | None] = []

    class HistoryApp(App[None]):
        def on_mount(self) -> None:
            self.push_screen(HistoryScreen(tmp_path / "outputs"), results.append)

    app = HistoryApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert "No images in" in str(app.screen.query_one("#history-empty", Static).render())
        await pilot.press("escape")
        assert results == [None]


# -- snapshots (half-cell blocks: deterministic, and what a plain terminal shows) ------------


@pytest.fixture
def relative_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Sample images under a relative ``outputs`` folder, so paths on screen never change."""
    monkeypatch.chdir(tmp_path)
    return make_sample_images(Path("outputs"), 6)


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_snapshot_grid(snap_compare, relative_samples: list[Path], size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    app = ImageApp(relative_samples, mode="halfcell")
    assert snap_compare(app, terminal_size=size, press=["right"])


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_snapshot_full_view(
    snap_compare, relative_samples: list[Path], size: tuple[int, int]
) -> None:  # type: ignore[no-untyped-def]
    app = ImageApp(relative_samples, mode="halfcell", view="full", with_preview=False)
    assert snap_compare(app, terminal_size=size)
