"""The inpaint mask editor (alt+m): Pilot drives the real app (an idle fake engine), draws with
the keys, and the tests read the mask PNG it saves and the form field it sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import test_tui_app
from image_app import make_sample_image
from palette import run_command
from PIL import Image
from test_tui_app import TINY, fake_app, log_text, run_async

from sdtui.config import Settings
from sdtui.tui.form_state import FormState
from sdtui.tui.screens.mask_editor import (
    FAST_STEP,
    MaskCanvas,
    MaskEditorScreen,
    MaskGrid,
    binary_mask,
    brush_cells,
    fit_cells,
)
from sdtui.tui.widgets.settings_form import SettingsForm

# the autouse fixture that puts every folder in tmp, shared with test_tui_app
tui_env = test_tui_app.tui_env
IMAGE_SIZE = (96, 64)  # not square, not the grid's size: cells are 1.68 pixels


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    return make_sample_image(tmp_path / "in" / "00007-1234.png", 0, size=IMAGE_SIZE)


def img2img_app(settings: Settings, init: Path | None, **params: Any) -> Any:
    p = TINY.replace(init_image=str(init) if init else None, **params)
    return fake_app(settings, form_state=FormState(mode="img2img", params=p))


async def open_editor(pilot: Any) -> MaskEditorScreen:
    await pilot.pause()
    await pilot.press("alt+m")
    await pilot.pause()
    screen = pilot.app.screen
    assert isinstance(screen, MaskEditorScreen), log_text(pilot.app)
    assert screen.canvas.grid is not None
    return screen


def cell_pixel(cell: tuple[int, int], grid: MaskGrid, size: tuple[int, int]) -> tuple[int, int]:
    """The image pixel at the middle of a mask cell."""
    x, y = cell
    return int((x + 0.5) * size[0] / grid.width), int((y + 0.5) * size[1] / grid.height)


# -- the mask itself ---------------------------------------------------------------------------


def test_the_grid_paints_rectangles_inverts_and_scales_up_nearest() -> None:
    grid = MaskGrid(4, 3)
    assert grid.set_rect(3, 2, 1, 1, True)  # corners in any order, inclusive
    assert not grid.set_rect(1, 1, 2, 2, True)  # nothing new
    assert [grid[x, y] for y in range(3) for x in range(4)] == [
        *(False,) * 4,
        False, True, True, True,
        False, True, True, True,
    ]  # fmt: skip
    assert grid.set_rect(-5, -5, 0, 0, True) and grid[0, 0]  # clipped to the grid
    grid.invert()
    assert grid.count == 12 - 7
    image = grid.to_image((8, 6))
    assert image.mode == "L" and image.size == (8, 6)
    assert image.getpixel((0, 0)) == 0 and image.getpixel((1, 0)) == 0  # cell (0,0): off now
    assert image.getpixel((2, 0)) == 255 and image.getpixel((7, 5)) == 0
    assert MaskGrid.from_image(image, 4, 3).cells == grid.cells
    assert brush_cells(5, 5, 1) == (5, 5, 5, 5)
    assert brush_cells(5, 5, 3) == (4, 4, 6, 6)
    assert brush_cells(5, 5, 4) == (4, 4, 7, 7)
    # two cells a character vertically, the aspect kept, never finer than the pixels
    assert fit_cells((96, 64), (80, 19)) == (57, 38)
    assert fit_cells((32, 16), (80, 19)) == (32, 16)


def test_a_transparent_mask_is_read_by_its_alpha_as_a1111_does() -> None:
    drawn = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    drawn.paste((255, 255, 255, 255), (0, 0, 5, 10))
    assert binary_mask(drawn).getpixel((1, 1)) == 255
    assert binary_mask(drawn).getpixel((8, 1)) == 0
    opaque = Image.new("RGBA", (10, 10), (255, 255, 255, 255))
    assert binary_mask(opaque).getpixel((8, 1)) == 255  # opaque: its grey levels


# -- the editor in the app ---------------------------------------------------------------------


@run_async
async def test_draw_a_brush_and_a_rectangle_invert_clear_undo_and_save(
    tui_env: Settings, picture: Path
) -> None:
    app = img2img_app(tui_env, picture)
    async with app.run_test(size=(80, 24)) as pilot:
        editor = await open_editor(pilot)
        canvas = editor.canvas
        grid = canvas.grid
        assert grid is not None and (grid.width, grid.height) == (57, 38)
        assert canvas.cursor == (28, 19)
        # a brush of 1 cell, two cells left of the middle
        await pilot.press("left_square_bracket", "minus", "h", "left", "space")
        assert canvas.brush == 1 and canvas.cursor == (26, 19)
        assert grid.count == 1 and grid[26, 19]
        # a brush of 3 cells, shift+right moves FAST_STEP cells
        await pilot.press("right_square_bracket", "plus", "shift+right", "space")
        assert canvas.brush == 3 and canvas.cursor == (26 + FAST_STEP, 19) == (34, 19)
        assert grid.count == 10 and grid[33, 18] and grid[35, 20] and not grid[36, 20]
        assert "brush 3" in str(editor.query_one("#mask-status").render())
        # a rectangle: r marks a corner, r again fills up to the cursor
        await pilot.press("shift+up", "shift+up", "shift+left")
        assert canvas.cursor == (26, 3)
        await pilot.press("r", "l", "l", "j", "r")
        assert canvas.corner is None and all(grid[x, y] for x in (26, 27, 28) for y in (3, 4))
        assert grid.count == 16
        # escape cancels a rectangle (the editor stays); x clears one
        await pilot.press("r", "l", "escape", "space")
        assert canvas.corner is None and isinstance(app.screen, MaskEditorScreen)
        assert grid.count == 16 + 9 - 2  # the brush at (29, 4) over two of the rectangle's
        await pilot.press("r", "h", "x")
        assert not grid[28, 4] and not grid[29, 4] and grid[28, 3] and grid[30, 5]
        painted = bytes(grid.cells)
        await pilot.press("i")
        assert grid.count == 57 * 38 - painted.count(255)
        await pilot.press("i", "c")
        assert grid.count == 0
        await pilot.press("u")  # the clear undone
        assert bytes(grid.cells) == painted
        await pilot.press("f", "u")
        assert bytes(grid.cells) == painted
        assert "unsaved" in str(editor.query_one("#mask-status").render())

        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is app.main
        form = app.main.query_one(SettingsForm)
        saved = form.state.params.mask
        assert saved is not None and form.state.params.init_image == str(picture)
    path = Path(saved)
    assert path.parent.parent == tui_env.outputs / "img2img-masks" and path.name == "00000-mask.png"
    with Image.open(path) as mask:
        assert mask.mode == "L" and mask.size == IMAGE_SIZE
        pixels = mask.load()
        assert pixels is not None
        cells = MaskGrid(57, 38, painted)
        # the middle pixel of each cell is that cell's value
        for cell in ((26, 19), (33, 18), (35, 20), (36, 20), (28, 3), (28, 4), (0, 0), (56, 37)):
            x, y = cell_pixel(cell, cells, IMAGE_SIZE)
            assert pixels[x, y] == (255 if cells[cell] else 0), cell
        assert cells[26, 19] and cells[28, 3] and not cells[36, 20] and not cells[28, 4]
        counts = mask.histogram()
        assert counts[0] + counts[255] == mask.width * mask.height  # black and white only


@run_async
async def test_the_grids_pick_becomes_the_init_image_when_the_mask_is_saved(
    tui_env: Settings, picture: Path
) -> None:
    app = fake_app(tui_env)  # txt2img, no init image
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("alt+m")  # nothing to draw on yet
        await pilot.pause()
        assert app.screen is app.main
        app.main.show_images([str(picture)])
        editor = await open_editor(pilot)
        assert editor.image_path == str(picture)
        await pilot.press("enter")  # an empty mask is not saved
        assert app.screen is editor and "empty" in editor.message
        await pilot.press("space", "escape")  # unsaved strokes: the first escape asks
        assert app.screen is editor and "not saved" in editor.message
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.main
        assert app.main.form.state.params.mask is None  # left without it
        assert app.main.form.state.mode == "txt2img"
        editor = await open_editor(pilot)
        await pilot.press("space", "enter")
        await pilot.pause()
        state = app.main.form.state
        assert (state.mode, state.params.init_image) == ("img2img", str(picture))
        assert state.params.mask and Path(state.params.mask).is_file()
        assert "inpaint mask" in log_text(app)


@run_async
async def test_load_a_mask_file_of_another_size_and_a_file_that_is_no_image(
    tui_env: Settings, picture: Path, tmp_path: Path
) -> None:
    left_half = tmp_path / "left.png"  # 40x40 for a 96x64 image: stretched, as in A1111
    mask = Image.new("L", (40, 40), 0)
    mask.paste(255, (0, 0, 20, 40))
    mask.save(left_half)
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    app = img2img_app(tui_env, picture)
    async with app.run_test(size=(80, 24)) as pilot:
        editor = await open_editor(pilot)
        grid = editor.canvas.grid
        assert grid is not None
        await pilot.press("space")
        before = bytes(grid.cells)
        await pilot.press("o")
        await pilot.pause()
        app.screen.query_one("#path-input").value = str(notes)  # type: ignore[attr-defined]
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is editor  # the editor stays, the strokes too
        assert "is not an image" in editor.message and "notes.png" in editor.message
        assert editor.query_one("#mask-message").has_class("-error")
        assert bytes(grid.cells) == before
        assert editor.load_mask(str(left_half))
        await pilot.pause()
        assert "stretched" in editor.message
        assert grid.count == grid.width // 2 * grid.height
        assert grid[0, 0] and grid[grid.width // 2 - 1, grid.height - 1]
        assert not grid[grid.width // 2 + 1, 0]
        await pilot.press("enter")  # not edited: the file itself goes into the form
        await pilot.pause()
        assert app.main.form.state.params.mask == str(left_half)
        # next time the editor starts from the form's mask
        editor = await open_editor(pilot)
        assert editor.canvas.grid is not None and editor.canvas.grid.count == grid.count


@run_async
async def test_a_pen_draws_while_moving_and_a_resize_keeps_the_mask(
    tui_env: Settings, picture: Path
) -> None:
    app = img2img_app(tui_env, picture)
    async with app.run_test(size=(80, 24)) as pilot:
        editor = await open_editor(pilot)
        canvas, grid = editor.canvas, editor.canvas.grid
        assert grid is not None
        await pilot.press("minus", "minus", "p", "l", "l", "l", "p", "l", "l")
        assert canvas.pen is None and canvas.cursor == (33, 19)
        assert [x for x in range(57) if grid[x, 19]] == [28, 29, 30, 31]  # pen off: no more
        await pilot.press("e", "h", "h", "e")  # the erase pen
        assert [x for x in range(57) if grid[x, 19]] == [28, 29, 30]
        await pilot.press("u")  # one move, one undo
        assert [x for x in range(57) if grid[x, 19]] == [28, 29, 30, 31]
        await pilot.resize_terminal(160, 48)
        await pilot.pause()
        bigger = canvas.grid
        # one cell a pixel now (never finer): the same cells, scaled up with the picture
        assert bigger is not None and (bigger.width, bigger.height) == IMAGE_SIZE
        assert bigger[28 * 96 // 57, 19 * 64 // 38] and not bigger[10, 10]
        assert bigger.count == 7 * 2  # 4 x 1 cells of 1.68 x 1.68 pixels
        assert canvas.cursor == (31 * 96 // 57, 19 * 64 // 38)


@run_async
async def test_an_init_image_that_is_not_an_image_is_said_and_nothing_opens(
    tui_env: Settings, tmp_path: Path
) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnope")
    app = img2img_app(tui_env, bad)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("alt+m")
        await pilot.pause()
        assert app.screen is app.main
        assert "no mask editor" in log_text(app) and "broken.png" in log_text(app)


@run_async
async def test_the_palette_opens_the_mask_editor(tui_env: Settings, picture: Path) -> None:
    app = img2img_app(tui_env, picture)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await run_command(pilot, "inpaint mask")
        assert isinstance(app.screen, MaskEditorScreen)


def test_snapshot_mask_editor_80x24(snap_compare: Any, tui_env: Settings, picture: Path) -> None:
    async def draw(pilot: Any) -> None:
        editor = await open_editor(pilot)
        await pilot.press("space", "shift+left", "shift+left", "space", "shift+up")
        await pilot.press("r", "shift+right", "l", "l", "r", "shift+down", "shift+down")
        await pilot.press("right_square_bracket")
        assert editor.canvas.brush == 4
        await pilot.pause()

    app = img2img_app(tui_env, picture)
    assert snap_compare(app, terminal_size=(80, 24), run_before=draw)


def test_the_canvas_draws_half_blocks_the_mask_tinted_and_the_brush_outlined(
    picture: Path,
) -> None:
    from sdtui.tui.screens.mask_editor import MASK_ALPHA, MASK_TINT, _blend, open_picture

    image, size = open_picture(picture, "init image")
    canvas = MaskCanvas(image, size)
    canvas.fit(57, 19)
    assert canvas.grid is not None
    canvas.brush = 1
    canvas.cursor = (0, 0)
    canvas.grid.set_rect(5, 0, 5, 0, True)
    segments = canvas.row_colors(0)
    upper, lower = segments[5]
    assert upper == _blend(canvas._colors[5], MASK_TINT, MASK_ALPHA)
    assert lower == canvas._colors[57 + 5]  # the cell below: not masked
    assert segments[0][0] in ((0, 0, 0), (255, 255, 255))  # the brush's outline
