"""The inpaint mask editor (alt+m): a mask drawn with the keyboard over the image img2img uses.

The image is drawn in half-block characters (``▀``: the upper pixel is the foreground colour,
the lower one the background), and each of those pixels is one cell of the mask, so what the
screen shows is the mask exactly, on any terminal (and in SVG snapshots). Masked cells are
tinted red, a rectangle being drawn blue; the brush (a square of cells around the cursor) is
outlined. Enter saves the mask as a PNG at the image's own size (white = change, black = keep,
as A1111's inpaint upload; cells scaled up, nearest) in ``outputs/img2img-masks/DATE/`` and
returns its path; escape leaves without it (twice when there are unsaved strokes).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import io
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from textual.app import ComposeResult
from textual.binding import Binding
from textual.events import Resize
from textual.screen import ModalScreen
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from sdtui.errors import UserError
from sdtui.safe_text import one_line
from sdtui.tui.files import show
from sdtui.tui.widgets.text_line import TextLine

if TYPE_CHECKING:
    from PIL import Image as PILImage

MASK_FOLDER = "img2img-masks"  # under the outputs folder, one subfolder a day (as A1111's)
FAST_STEP = 8  # cells a shift+arrow moves
MAX_BRUSH = 64
UNDO_DEPTH = 100
# the picture is decoded at most this large: the grid is never finer than the terminal
PICTURE_MAX_PX = 1024
MASK_TINT, MASK_ALPHA = (255, 32, 32), 0.55
RECT_TINT, RECT_ALPHA = (64, 144, 255), 0.6
ON, OFF = 255, 0
_INVERT = bytes(255 - i for i in range(256))
_THRESHOLD = bytes(ON if i >= 128 else OFF for i in range(256))
# two lines, each within 78 columns (an 80 column terminal)
KEYS = (
    "←↓↑→ hjkl move  shift: fast  space paint  x erase  p/e pen  [ ] brush size\n"
    "r rectangle  f fill  c clear  i invert  u undo  o open  enter save  esc leave"
)
Rgb = tuple[int, int, int]


# -- the mask (pure Python and PIL) ---------------------------------------------------------


class MaskGrid:
    """A mask of ``width`` x ``height`` cells, each ON (change) or OFF (keep)."""

    def __init__(self, width: int, height: int, cells: bytes | None = None) -> None:
        self.width, self.height = max(1, width), max(1, height)
        size = self.width * self.height
        self.cells = bytearray(cells if cells is not None else size)
        if len(self.cells) != size:
            raise ValueError(f"{len(self.cells)} cells for a {width}x{height} grid")

    def __getitem__(self, xy: tuple[int, int]) -> bool:
        x, y = xy
        return self.cells[y * self.width + x] == ON

    @property
    def count(self) -> int:
        return self.cells.count(ON)

    def set_rect(self, x0: int, y0: int, x1: int, y1: int, on: bool) -> bool:
        """Set the cells of the rectangle between two corners (inclusive, clipped to the
        grid); True when a cell changed."""
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))
        x0, y0 = max(0, x0), max(0, y0)
        x1, y1 = min(self.width - 1, x1), min(self.height - 1, y1)
        if x0 > x1 or y0 > y1:
            return False
        value = ON if on else OFF
        row = bytes([value]) * (x1 - x0 + 1)
        changed = False
        for y in range(y0, y1 + 1):
            start = y * self.width + x0
            if self.cells[start : start + len(row)] != row:
                self.cells[start : start + len(row)] = row
                changed = True
        return changed

    def fill(self, on: bool) -> None:
        self.cells[:] = bytes([ON if on else OFF]) * len(self.cells)

    def invert(self) -> None:
        self.cells[:] = self.cells.translate(_INVERT)

    def to_image(self, size: tuple[int, int] | None = None) -> PILImage.Image:
        """The mask as a black and white "L" image, scaled (nearest) to ``size``."""
        from PIL import Image

        image = Image.frombytes("L", (self.width, self.height), bytes(self.cells))
        if size is None or size == image.size:
            return image
        return image.resize(size, Image.Resampling.NEAREST)

    @classmethod
    def from_image(cls, image: PILImage.Image, width: int, height: int) -> MaskGrid:
        """The cells of a mask image of any size (stretched to the grid, as A1111 resizes a
        mask to its image): a cell is ON where the mask is mostly white."""
        from PIL import Image

        small = binary_mask(image).resize((max(1, width), max(1, height)), Image.Resampling.BOX)
        return cls(width, height, small.tobytes().translate(_THRESHOLD))

    def resized(self, width: int, height: int) -> MaskGrid:
        from PIL import Image

        if (width, height) == (self.width, self.height):
            return MaskGrid(width, height, bytes(self.cells))
        image = self.to_image().resize((max(1, width), max(1, height)), Image.Resampling.NEAREST)
        return MaskGrid(width, height, image.tobytes())


def binary_mask(image: PILImage.Image) -> PILImage.Image:
    """A mask file as A1111 reads it (processing.create_binary_mask): a transparent PNG's
    alpha channel (drawn = change), else its grey levels."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema() != (255, 255):
            return alpha
    return image.convert("L")


def brush_cells(x: int, y: int, size: int) -> tuple[int, int, int, int]:
    """The square of ``size`` cells the brush covers with the cursor at (x, y): x0, y0, x1,
    y1 inclusive (the cursor in the middle, or just left of and above it for an even size)."""
    before = (size - 1) // 2
    return x - before, y - before, x - before + size - 1, y - before + size - 1


def fit_cells(image_size: tuple[int, int], room: tuple[int, int]) -> tuple[int, int]:
    """Mask cells for an image of ``image_size`` pixels in ``room`` columns and rows: two
    cells a character vertically, the image's aspect ratio kept, never more cells than
    pixels."""
    from sdtui.tui.widgets.image_view import fit_within

    columns, rows = room
    return fit_within(image_size, (max(1, columns), max(1, rows * 2)))


def mask_folder(outputs: Path, when: dt.date | None = None) -> Path:
    return outputs / MASK_FOLDER / (when or dt.date.today()).strftime("%Y-%m-%d")


def save_mask(image: PILImage.Image, folder: Path) -> Path:
    """Write ``image`` as ``NNNNN-mask.png`` in ``folder``: a temporary file first, then
    linked to the next free number, so no half-written mask ever has a real name. UserError
    (in words) when the folder cannot be written."""
    from sdtui.outputs import next_sequence_number

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    tmp = folder / f".sdtui-mask-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(buffer.getvalue())
        number = next_sequence_number(folder)
        for _ in range(1000):
            target = folder / f"{number:05}-mask.png"
            try:
                os.link(tmp, target)
                return target
            except FileExistsError:
                number += 1
            except OSError:  # a file system without hard links
                if not target.exists():
                    os.replace(tmp, target)
                    return target
                number += 1
        raise UserError(f"no free file name in {show(folder)}: move old masks out of it")
    except OSError as e:
        why = one_line(e.strerror or str(e))
        raise UserError(f"the mask could not be saved in {show(folder)} ({why})") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def open_picture(path: str | os.PathLike[str], what: str) -> tuple[PILImage.Image, tuple[int, int]]:
    """The image at ``path`` as RGB, at most PICTURE_MAX_PX a side, and its full size.
    UserError (one sentence naming the file) when it is not a readable image."""
    from sdtui.image_files import open_image_file
    from sdtui.tui.widgets.image_view import shrink

    im = open_image_file(path, what, load=False)
    try:
        size = im.size
        im.draft("RGB", (PICTURE_MAX_PX, PICTURE_MAX_PX))  # a JPEG decodes smaller
        im.load()
        picture = shrink(im, (PICTURE_MAX_PX, PICTURE_MAX_PX))
        return (picture.copy() if picture is im else picture), size
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a truncated file is a sentence, never a crash
        from sdtui.tui.files import describe_failure

        raise UserError(describe_failure(path, e)) from None
    finally:
        im.close()


def open_mask(path: str | os.PathLike[str]) -> PILImage.Image:
    """A mask file, decoded; UserError in words when it is not an image."""
    from sdtui.image_files import open_image_file

    im = open_image_file(path, "mask")
    try:
        return im.copy()
    finally:
        im.close()


# -- drawing ---------------------------------------------------------------------------------


def _blend(color: Rgb, tint: Rgb, alpha: float) -> Rgb:
    r, g, b = color
    return (
        round(r + (tint[0] - r) * alpha),
        round(g + (tint[1] - g) * alpha),
        round(b + (tint[2] - b) * alpha),
    )


def _outline(color: Rgb) -> Rgb:
    """Black on a light cell, white on a dark one: the brush shows on any picture."""
    r, g, b = color
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b >= 128 else (255, 255, 255)


@functools.lru_cache(maxsize=16384)
def _cell_style(upper: Rgb, lower: Rgb | None) -> Style:
    return Style(
        color=Color.from_rgb(*upper),
        bgcolor=Color.from_rgb(*lower) if lower is not None else None,
    )


@dataclass(frozen=True)
class Box:
    x0: int
    y0: int
    x1: int
    y1: int

    def holds(self, x: int, y: int) -> bool:
        return self.x0 <= x <= self.x1 and self.y0 <= y <= self.y1

    def edge(self, x: int, y: int) -> bool:
        return self.holds(x, y) and (x in (self.x0, self.x1) or y in (self.y0, self.y1))


class MaskCanvas(Widget):
    """The picture and its mask, centred in the widget, and the editing state: cursor,
    brush, pen, a rectangle's first corner, undo. The grid follows the widget's size."""

    DEFAULT_CSS = """
    MaskCanvas { width: 1fr; height: 1fr; }
    """

    def __init__(
        self,
        picture: PILImage.Image,
        image_size: tuple[int, int],
        *,
        mask: PILImage.Image | None = None,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.picture = picture
        self.image_size = image_size
        self.grid: MaskGrid | None = None
        self._start_mask = mask  # applied when the grid is first laid out
        self._colors: list[Rgb] = []
        self.cursor = (0, 0)
        self.brush = 3
        self.pen: str | None = None  # "paint" / "erase": moving draws
        self.corner: tuple[int, int] | None = None
        self.undo_stack: list[bytes] = []
        self.changes = 0  # edits since the last load or save

    # -- layout

    def on_resize(self, event: Resize) -> None:
        self.fit(event.size.width, event.size.height)

    def fit(self, columns: int, rows: int) -> None:
        """Lay the grid out in ``columns`` x ``rows`` characters (the mask resampled when
        the terminal's size changes it)."""
        if columns <= 0 or rows <= 0:
            return
        from PIL import Image

        width, height = fit_cells(self.image_size, (columns, rows))
        if self.grid is not None and (width, height) == (self.grid.width, self.grid.height):
            return
        if self.grid is None:
            start, self._start_mask = self._start_mask, None
            self.grid = (
                MaskGrid.from_image(start, width, height)
                if start is not None
                else MaskGrid(width, height)
            )
            self.cursor = (width // 2, height // 2)
        else:
            old = self.grid
            self.grid = old.resized(width, height)
            x, y = self.cursor
            self.cursor = (x * width // old.width, y * height // old.height)
            self.undo_stack.clear()
            self.corner = None
        small = self.picture.resize((width, height), Image.Resampling.BOX)
        data = small.tobytes()
        self._colors = [(data[i], data[i + 1], data[i + 2]) for i in range(0, len(data), 3)]
        self.refresh()

    # -- editing

    def _remember(self) -> None:
        assert self.grid is not None
        self.undo_stack.append(bytes(self.grid.cells))
        del self.undo_stack[:-UNDO_DEPTH]

    def _changed(self, changed: bool = True) -> bool:
        if changed:
            self.changes += 1
        self.refresh()
        return changed

    def brush_box(self) -> Box:
        x0, y0, x1, y1 = brush_cells(*self.cursor, self.brush)
        return Box(x0, y0, x1, y1)

    def rect_box(self) -> Box | None:
        if self.corner is None:
            return None
        (ax, ay), (bx, by) = self.corner, self.cursor
        return Box(min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))

    def move(self, dx: int, dy: int) -> None:
        """Move the cursor (a pen draws the brush on every cell it passes)."""
        if self.grid is None:
            return
        if self.pen:
            self._remember()
        changed = False
        steps = max(abs(dx), abs(dy))
        for _ in range(steps):
            x, y = self.cursor
            nx = min(self.grid.width - 1, max(0, x + (dx > 0) - (dx < 0)))
            ny = min(self.grid.height - 1, max(0, y + (dy > 0) - (dy < 0)))
            self.cursor = (nx, ny)
            if self.pen:
                changed |= self._stamp(self.pen == "paint")
        if self.pen and not changed:
            self.undo_stack.pop()
        self._changed(changed)

    def _stamp(self, on: bool) -> bool:
        assert self.grid is not None
        box = self.brush_box()
        return self.grid.set_rect(box.x0, box.y0, box.x1, box.y1, on)

    def stamp(self, on: bool) -> bool:
        """Paint (``on``) or erase the brush at the cursor."""
        if self.grid is None:
            return False
        self._remember()
        changed = self._stamp(on)
        if not changed:
            self.undo_stack.pop()
        return self._changed(changed)

    def set_pen(self, pen: str | None) -> None:
        self.pen = pen
        if pen is not None:
            self.stamp(pen == "paint")
        self.refresh()

    def finish_rect(self, on: bool) -> bool:
        """Fill (``on``) or clear the rectangle from the marked corner to the cursor."""
        box = self.rect_box()
        self.corner = None
        if box is None or self.grid is None:
            self.refresh()
            return False
        self._remember()
        changed = self.grid.set_rect(box.x0, box.y0, box.x1, box.y1, on)
        if not changed:
            self.undo_stack.pop()
        return self._changed(changed)

    def whole(self, how: str) -> None:
        """``fill``, ``clear`` or ``invert`` the whole mask."""
        if self.grid is None:
            return
        before = bytes(self.grid.cells)
        if how == "invert":
            self.grid.invert()
        else:
            self.grid.fill(how == "fill")
        if bytes(self.grid.cells) != before:
            self.undo_stack.append(before)
            del self.undo_stack[:-UNDO_DEPTH]
            self._changed()

    def undo(self) -> bool:
        if self.grid is None or not self.undo_stack:
            return False
        self.grid.cells[:] = self.undo_stack.pop()
        return self._changed()

    def load(self, image: PILImage.Image) -> None:
        """Replace the mask with the file's (undo brings the drawn one back)."""
        if self.grid is None:
            self._start_mask = image
            return
        self._remember()
        loaded = MaskGrid.from_image(image, self.grid.width, self.grid.height)
        self.grid.cells[:] = loaded.cells
        self.changes = 0
        self.refresh()

    def mask_image(self) -> PILImage.Image:
        """The mask at the image's full size."""
        assert self.grid is not None
        return self.grid.to_image(self.image_size)

    # -- drawing

    def _cell_color(self, x: int, y: int, brush: Box, rect: Box | None) -> Rgb:
        assert self.grid is not None
        color = self._colors[y * self.grid.width + x]
        if rect is not None and rect.holds(x, y):
            color = _blend(color, RECT_TINT, RECT_ALPHA)
        elif self.grid.cells[y * self.grid.width + x] == ON:
            color = _blend(color, MASK_TINT, MASK_ALPHA)
        if brush.edge(x, y):
            color = _outline(color)
        return color

    def row_colors(self, row: int) -> list[tuple[Rgb, Rgb | None]]:
        """The colours of each character of text row ``row`` of the grid: its upper cell's
        and its lower cell's (None below the last row of an odd height)."""
        grid = self.grid
        if grid is None or not self._colors:
            return []
        rect = self.rect_box()
        # a rectangle being drawn shows its corner cell as the cursor, not the brush
        brush = Box(*self.cursor, *self.cursor) if rect is not None else self.brush_box()
        upper_y, lower_y = row * 2, row * 2 + 1
        return [
            (
                self._cell_color(x, upper_y, brush, rect),
                self._cell_color(x, lower_y, brush, rect) if lower_y < grid.height else None,
            )
            for x in range(grid.width)
        ]

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        grid = self.grid
        if grid is None or not self._colors:
            return Strip.blank(width)
        rows = (grid.height + 1) // 2
        top = max(0, (self.size.height - rows) // 2)
        left = max(0, (width - grid.width) // 2)
        if not 0 <= y - top < rows:
            return Strip.blank(width)
        segments = [Segment(" " * left)] if left else []
        segments += [Segment("▀", _cell_style(*colors)) for colors in self.row_colors(y - top)]
        right = width - left - grid.width
        if right > 0:
            segments.append(Segment(" " * right))
        return Strip(segments, width)


# -- the screen --------------------------------------------------------------------------------


class MaskEditorScreen(ModalScreen[str | None]):
    """Draws a mask over ``image``; dismissed with the saved mask's path, or None."""

    DEFAULT_CSS = """
    MaskEditorScreen { background: $background; }
    MaskEditorScreen > #mask-title {
        height: 1; background: $panel; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis;
    }
    MaskEditorScreen > #mask-status { height: 1; padding: 0 1; background: $panel; }
    MaskEditorScreen > #mask-message { height: 1; padding: 0 1; color: $text-muted; }
    MaskEditorScreen > #mask-message.-error { color: $error; }
    MaskEditorScreen > #mask-message.-ok { color: $success; }
    MaskEditorScreen > #mask-keys { height: 2; padding: 0 1; color: $text-muted; }
    """

    BINDINGS = [
        Binding("left,h", "move(-1, 0)", "Left", show=False),
        Binding("right,l", "move(1, 0)", "Right", show=False),
        Binding("up,k", "move(0, -1)", "Up", show=False),
        Binding("down,j", "move(0, 1)", "Down", show=False),
        Binding("shift+left,H", f"move(-{FAST_STEP}, 0)", "Left fast", show=False),
        Binding("shift+right,L", f"move({FAST_STEP}, 0)", "Right fast", show=False),
        Binding("shift+up,K", f"move(0, -{FAST_STEP})", "Up fast", show=False),
        Binding("shift+down,J", f"move(0, {FAST_STEP})", "Down fast", show=False),
        Binding("space", "paint", "Paint", show=False),
        Binding("x,delete", "erase", "Erase", show=False),
        Binding("p", "pen('paint')", "Paint pen", show=False),
        Binding("e", "pen('erase')", "Erase pen", show=False),
        Binding("left_square_bracket,minus", "brush(-1)", "Smaller brush", show=False),
        Binding("right_square_bracket,plus,equals_sign", "brush(1)", "Larger brush", show=False),
        Binding("r", "rectangle", "Rectangle", show=False),
        Binding("f", "whole('fill')", "Fill", show=False),
        Binding("c", "whole('clear')", "Clear", show=False),
        Binding("i", "whole('invert')", "Invert", show=False),
        Binding("u,ctrl+z", "undo", "Undo", show=False),
        Binding("o", "load", "Open a mask file", show=False),
        Binding("enter", "save", "Save", show=False),
        Binding("escape", "leave", "Leave", show=False),
    ]

    def __init__(
        self,
        image: str | os.PathLike[str],
        outputs: Path,
        *,
        mask: str | None = None,
    ) -> None:
        """Opens ``image`` (UserError, in words, when it cannot be) and the mask file
        ``mask`` to start from, when there is one."""
        super().__init__()
        self.image_path = os.fspath(image)
        self.outputs = Path(outputs)
        self.picture, self.image_size = open_picture(self.image_path, "init image")
        self.loaded: str | None = None  # the mask file shown, while it is not edited
        self._message = ""
        self._kind = ""  # "error", "ok" or "" (a plain note)
        self._warned = False  # escape said once that the strokes are not saved
        self._start: PILImage.Image | None = None
        if mask:
            try:
                self._start = open_mask(os.path.expanduser(mask))
                self.loaded = mask
                self._say(f"mask {show(mask)} loaded")
            except UserError as e:
                self._say(f"the form's mask is not loaded: {e.message}", error=True)

    def compose(self) -> ComposeResult:
        yield TextLine("", id="mask-title")
        yield MaskCanvas(self.picture, self.image_size, mask=self._start, id="mask-canvas")
        yield TextLine("", id="mask-status")
        yield TextLine("", id="mask-message")
        yield Static(KEYS, id="mask-keys", markup=False)

    def on_mount(self) -> None:
        self.call_after_refresh(self._update)

    @property
    def canvas(self) -> MaskCanvas:
        return self.query_one(MaskCanvas)

    @property
    def message(self) -> str:
        return self._message

    # -- the lines around the picture

    def _say(self, text: str, *, error: bool = False, ok: bool = False) -> None:
        self._message = text
        self._kind = "error" if error else "ok" if ok else ""
        if self.is_mounted:
            self._show_message()

    def _show_message(self) -> None:
        line = self.query_one("#mask-message", TextLine)
        line.update(self._message)
        line.set_class(self._kind == "error", "-error")
        line.set_class(self._kind == "ok", "-ok")

    def _update(self) -> None:
        canvas = self.canvas
        grid = canvas.grid
        w, h = self.image_size
        cells = f" · {grid.width}×{grid.height} cells" if grid else ""
        self.query_one("#mask-title", TextLine).update(
            f"Inpaint mask · {show(Path(self.image_path).name)} {w}×{h}{cells}"
        )
        self._show_message()
        if grid is None:
            return
        if canvas.corner is not None:
            mode = "rectangle: r fills, x clears"
        elif canvas.pen:
            mode = f"{canvas.pen} pen (p/e: off)"
        else:
            mode = "move"
        share = 100 * grid.count / (grid.width * grid.height)
        x, y = canvas.cursor
        state = f"brush {canvas.brush} · {mode} · {share:.0f}% masked · cell {x},{y}"
        if canvas.changes:
            state += " · unsaved"
        self.query_one("#mask-status", TextLine).update(state)

    def _edited(self) -> None:
        self._warned = False
        if self.canvas.changes:
            self.loaded = None
        self._update()

    # -- actions

    def action_move(self, dx: int, dy: int) -> None:
        self.canvas.move(dx, dy)
        self._edited()

    def action_paint(self) -> None:
        canvas = self.canvas
        if canvas.corner is not None:
            canvas.finish_rect(True)
        else:
            canvas.stamp(True)
        self._edited()

    def action_erase(self) -> None:
        canvas = self.canvas
        if canvas.corner is not None:
            canvas.finish_rect(False)
        else:
            canvas.stamp(False)
        self._edited()

    def action_pen(self, pen: str) -> None:
        canvas = self.canvas
        canvas.set_pen(None if canvas.pen == pen else pen)
        self._edited()

    def action_brush(self, delta: int) -> None:
        canvas = self.canvas
        canvas.brush = max(1, min(MAX_BRUSH, canvas.brush + delta))
        canvas.refresh()
        self._update()

    def action_rectangle(self) -> None:
        canvas = self.canvas
        if canvas.corner is None:
            canvas.corner = canvas.cursor
            canvas.refresh()
        else:
            canvas.finish_rect(True)
        self._edited()

    def action_whole(self, how: str) -> None:
        self.canvas.whole(how)
        self._edited()

    def action_undo(self) -> None:
        if not self.canvas.undo():
            self._say("nothing to undo")
        self._edited()

    def action_load(self) -> None:
        from sdtui.tui.screens.path_prompt import PathPromptScreen

        def chosen(path: str | None) -> None:
            if path:
                self.load_mask(path)

        self.app.push_screen(
            PathPromptScreen(
                "Open a mask (white = change; another size is stretched to the image):",
                self.loaded or "",
            ),
            chosen,
        )

    def load_mask(self, path: str) -> bool:
        """Show the mask file at ``path``; a file that is no image is said, nothing lost."""
        try:
            image = open_mask(os.path.expanduser(path))
        except UserError as e:
            self._say(e.message, error=True)
            self._update()
            return False
        self.canvas.load(image)
        self.loaded = path
        self._warned = False
        w, h = image.size
        resized = "" if (w, h) == self.image_size else f", {w}×{h} stretched to the image"
        self._say(f"mask {show(path)} loaded{resized} (u undoes it)", ok=True)
        self._update()
        return True

    def action_save(self) -> None:
        canvas = self.canvas
        if canvas.grid is None:
            return
        if canvas.corner is not None:
            self.action_rectangle()
            return
        if self.loaded and not canvas.changes:
            self.dismiss(self.loaded)  # the file as it is: no detail lost to the cells
            return
        if not canvas.grid.count:
            self._say("the mask is empty: paint some cells (space), or esc to leave", error=True)
            return
        try:
            path = save_mask(canvas.mask_image(), mask_folder(self.outputs))
        except UserError as e:
            self._say(e.message, error=True)
            return
        canvas.changes = 0
        self.dismiss(os.fspath(path))

    def action_leave(self) -> None:
        canvas = self.canvas
        if canvas.corner is not None:
            canvas.corner = None
            canvas.refresh()
            self._update()
            return
        if canvas.changes and not self._warned:
            self._warned = True
            self._say("the mask is not saved: esc again leaves without it, enter saves it")
            return
        self.dismiss(None)
