"""Images in the terminal: one preview (:class:`PreviewImage`) and a grid of thumbnails
(:class:`ImageGrid`).

Both hand textual-image a PIL image already shrunk to what the widget's cells can show: the
kitty protocol resends the whole image on every render and Sixel re-encodes it, so a
1024x1024 PNG would cost megabytes per frame over SSH. The preview also only touches the
textual-image widget when the bytes (or the room it has) change.
"""

from __future__ import annotations

import errno
import hashlib
import io
import math
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Vertical, VerticalScroll
from textual.events import Click, Resize
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Static

from sdtui.safe_text import one_line, visible
from sdtui.tui import graphics
from sdtui.tui.files import PREVIEW_MAX_BYTES, PREVIEW_MAX_PIXELS, describe_failure, file_problem
from sdtui.tui.widgets.text_line import TextLine

if TYPE_CHECKING:
    from PIL import Image as PILImage

THUMBNAIL_PX = 256  # longest side of a grid thumbnail; ~ 25 cells of a 10 px wide font
_THUMB_CACHE_SIZE = 256


# -- pictures (PIL, no Textual) ---------------------------------------------------------------


def fit_within(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """``size`` shrunk (never grown) to fit ``box``, keeping the aspect ratio."""
    w, h = size
    bw, bh = max(1, box[0]), max(1, box[1])
    if w <= bw and h <= bh:
        return w, h
    scale = min(bw / w, bh / h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def shrink(image: PILImage.Image, box: tuple[int, int]) -> PILImage.Image:
    """``image`` as RGB, downscaled to fit ``box`` (pixels); the same object when it fits."""
    from PIL import Image

    if image.mode != "RGB":
        if "A" in image.getbands():  # transparent parts on black, as the terminal shows them
            background = Image.new("RGB", image.size, (0, 0, 0))
            background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
            image = background
        else:
            image = image.convert("RGB")
    target = fit_within(image.size, box)
    if target == image.size:
        return image
    return image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)


_thumbs: OrderedDict[tuple[str, int, int, int], PILImage.Image] = OrderedDict()


class ImageTooLarge(ValueError):
    """An image with more pixels (or bytes) than a preview decodes on the UI thread."""


def _check_pixels(im: PILImage.Image, label: str) -> None:
    if im.width * im.height > PREVIEW_MAX_PIXELS:
        raise ImageTooLarge(
            f"{label} is {im.width}x{im.height}: too many pixels to show (a decompression bomb?)"
        )


def thumbnail(path: str | os.PathLike[str], max_px: int = THUMBNAIL_PX) -> PILImage.Image:
    """A small RGB copy of the image at ``path``, cached by path, size and mtime.

    Raises OSError when the file is not a regular file; Pillow's errors (OSError,
    DecompressionBombError, ValueError, ...) and ImageTooLarge when it cannot be shown.
    """
    import stat as stat_mod

    from PIL import Image

    stat = os.stat(path)
    if not stat_mod.S_ISREG(stat.st_mode):  # a named pipe would block the UI for ever
        raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
    if stat.st_size > PREVIEW_MAX_BYTES:
        raise ImageTooLarge(f"{one_line(os.fspath(path))} is too large to show")
    key = (os.fspath(path), stat.st_mtime_ns, stat.st_size, max_px)
    cached = _thumbs.get(key)
    if cached is not None:
        _thumbs.move_to_end(key)
        return cached
    with warnings.catch_warnings():  # Pillow's bomb warning: refused below, not printed
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(path)
    with im:
        _check_pixels(im, one_line(Path(path).name))
        im.draft("RGB", (max_px, max_px))  # JPEG decodes at a fraction of the size
        im.load()
        small = shrink(im, (max_px, max_px))
        if small is im:
            small = im.copy()
    _thumbs[key] = small
    while len(_thumbs) > _THUMB_CACHE_SIZE:
        _thumbs.popitem(last=False)
    return small


def describe(image: PILImage.Image, parameters: str | None) -> str:
    """Caption: ``512×768 · seed 1234 · 30 steps`` (what the infotext holds of it)."""
    parts = [f"{image.width}×{image.height}"]
    if parameters:
        from sdtui.infotext import parse_infotext

        pairs = parse_infotext(parameters).pairs
        if pairs.get("Seed"):
            parts.append(f"seed {pairs['Seed']}")
        if pairs.get("Steps"):
            parts.append(f"{pairs['Steps']} steps")
    return " · ".join(parts)


def _picture_widget(mode: str, *, classes: str) -> Widget | None:
    cls = graphics.image_widget_class(mode)
    return None if cls is None else cls(classes=classes)


def _set_picture(widget: Widget, image: PILImage.Image | None) -> None:
    widget.image = image  # type: ignore[attr-defined]


def _release(widget: Widget | None) -> None:
    """Free the terminal's copy of a kitty image when its widget goes (textual-image 0.12
    only deletes it when the next image replaces it)."""
    if widget is not None and getattr(widget, "image", None) is not None:
        try:
            _set_picture(widget, None)
        except Exception:  # the terminal may be gone already (app shutting down)
            pass


# -- PreviewImage ---------------------------------------------------------------------------------


class PreviewImage(Widget):
    """One image, as large as the widget, with a caption line under it.

    ``show_png`` (live previews from the engine), ``show_path`` (saved files) and ``clear``.
    Showing the same bytes again does nothing: the terminal is not sent the image again.
    """

    DEFAULT_CSS = """
    PreviewImage {
        layout: vertical;
        width: 1fr;
        height: 1fr;
    }
    PreviewImage > #preview-frame {
        width: 1fr;
        height: 1fr;
        align: center middle;
    }
    PreviewImage .preview-picture {
        width: auto;
        height: auto;
    }
    PreviewImage #preview-text {
        width: 1fr;
        height: auto;
        content-align: center middle;
        text-align: center;
        color: $text-muted;
    }
    PreviewImage > #preview-caption {
        width: 1fr;
        height: 1;
        text-align: center;
        text-wrap: nowrap;
        text-overflow: ellipsis;
        color: $text-muted;
    }
    PreviewImage.-no-caption > #preview-caption {
        display: none;
    }
    """

    def __init__(
        self,
        *,
        mode: str | None = None,
        placeholder: str = "preview",
        caption: bool = True,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.mode = mode or graphics.current_mode()
        self.placeholder = placeholder
        if not caption:
            self.add_class("-no-caption")
        self._picture: Widget | None = None
        self._source: PILImage.Image | None = None
        self._digest: bytes | None = None
        self._shown_key: tuple[bytes, tuple[int, int]] | None = None
        self._label: str = ""
        self._caption: str = ""
        self.image_updates = 0  # how often the terminal image was replaced (tests, debugging)

    def compose(self) -> ComposeResult:
        with Container(id="preview-frame"):
            self._picture = _picture_widget(self.mode, classes="preview-picture")
            if self._picture is not None:
                self._picture.display = False
                yield self._picture
            yield Static(self.placeholder, id="preview-text", markup=False)
        yield TextLine("", id="preview-caption")

    # -- public API

    @property
    def picture(self) -> Widget | None:
        """The textual-image widget (None in mode "none")."""
        return self._picture

    @property
    def source(self) -> PILImage.Image | None:
        """The image shown, at full size."""
        return self._source

    @property
    def caption(self) -> str:
        return self._caption

    def show_png(self, data: bytes, caption: str | None = None, *, label: str = "") -> bool:
        """Show an encoded image (PNG, or anything PIL reads). False when it was already shown
        (nothing is redrawn) or cannot be decoded (the caption says so)."""
        from PIL import Image, UnidentifiedImageError

        digest = hashlib.blake2b(data, digest_size=16).digest()
        if (
            digest == self._digest
            and label == self._label
            and (caption is None or caption == self._caption)
        ):
            return False
        name = one_line(label or "image")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as im:
                    _check_pixels(im, name)
                    im.load()
                    parameters = im.info.get("parameters")
                    source = im.copy()
        except UnidentifiedImageError:
            self._fail(name, "cannot be shown (not an image Pillow can read)")
            return False
        except ImageTooLarge as e:
            self._fail("", str(e))
            return False
        except Exception as e:  # noqa: BLE001 - a bad file is a placeholder, never a crash
            self._fail("", describe_failure(name, e))
            return False
        if isinstance(parameters, bytes):
            parameters = parameters.decode("utf-8", errors="replace")
        elif parameters is not None and not isinstance(parameters, str):
            parameters = None
        self._digest = digest
        self._label = label
        self._source = source
        text = caption if caption is not None else describe(source, parameters)
        self._set_caption(f"{text} · {label}" if label and caption is None else text)
        self._apply()
        return True

    def show_path(self, path: str | os.PathLike[str], caption: str | None = None) -> bool:
        """Show the image file at ``path``; False when unchanged or unreadable."""
        name = one_line(Path(path).name)
        problem = file_problem(path)  # a named pipe would block the UI for ever
        if problem is None:
            try:
                if os.stat(path).st_size > PREVIEW_MAX_BYTES:
                    problem = f"{name} is too large to show"
            except OSError as e:
                problem = describe_failure(name, e)
        if problem:
            self._fail("", problem)
            return False
        try:
            data = Path(path).read_bytes()
        except Exception as e:  # noqa: BLE001 - gone or unreadable: a placeholder
            self._fail("", describe_failure(name, e))
            return False
        if self.mode == "none":
            self._set_text(one_line(os.fspath(path)))
        return self.show_png(data, caption, label=name)

    def clear(self, text: str | None = None) -> None:
        """No image: the placeholder text (or ``text``) instead."""
        self._source = None
        self._digest = None
        self._label = ""
        self._shown_key = None
        if self._picture is not None:
            _set_picture(self._picture, None)
            self._picture.display = False
        self._set_text(self.placeholder if text is None else text)
        self._set_caption("")

    # -- internals

    def _fail(self, label: str, why: str) -> None:
        self.clear(one_line(f"{label} {why}".strip()))

    def _set_caption(self, text: str) -> None:
        self._caption = text
        if self.is_mounted:
            self.query_one("#preview-caption", TextLine).update(text)
        else:
            self.call_after_refresh(self._refresh_caption)

    def _refresh_caption(self) -> None:
        if self.is_mounted:
            self.query_one("#preview-caption", TextLine).update(self._caption)

    def _set_text(self, text: str) -> None:
        if not self.is_mounted:
            self.call_after_refresh(self._set_text, text)
            return
        placeholder = self.query_one("#preview-text", Static)
        placeholder.update(visible(text))
        placeholder.display = True

    def _target_pixels(self) -> tuple[int, int] | None:
        """Pixels the frame can show: its cells times the terminal's cell size."""
        if not self.is_mounted:
            return None
        frame = self.query_one("#preview-frame")
        cols, rows = frame.content_size.width, frame.content_size.height
        if cols <= 0 or rows <= 0:
            return None
        cell_w, cell_h = graphics.cell_pixels()
        return cols * cell_w, rows * cell_h

    def _apply(self) -> None:
        if self._source is None or self._digest is None:
            return
        if self._picture is None:  # mode "none": the caption and path say it all
            if self.mode == "none" and not self._label:
                self._set_text(f"{self.placeholder} ({self._source.width}×{self._source.height})")
            return
        target = self._target_pixels()
        if target is None:
            return  # not laid out yet: on_resize comes back here
        scaled_size = fit_within(self._source.size, target)
        key = (self._digest, scaled_size)
        if key == self._shown_key:
            return
        self._shown_key = key
        _set_picture(self._picture, shrink(self._source, target))
        self._picture.display = True
        self.query_one("#preview-text", Static).display = False
        self.image_updates += 1

    def on_mount(self) -> None:
        self.call_after_refresh(self._apply)

    def on_unmount(self) -> None:
        _release(self._picture)

    def on_resize(self, event: Resize) -> None:
        self.call_after_refresh(self._apply)


# -- ImageGrid ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridShape:
    columns: int
    tile_width: int
    tile_height: int


def grid_shape(
    count: int,
    width: int,
    height: int,
    *,
    min_tile: tuple[int, int] = (12, 7),
    max_tile: tuple[int, int] = (48, 24),
    cell_aspect: float = 2.0,
) -> GridShape:
    """Columns and tile size (cells) that show ``count`` square-ish thumbnails largest.

    Rows that do not fit scroll. A tile has a 1-cell border and a 1-line label, so its
    picture is (w - 2) x (h - 3) cells; a cell is ``cell_aspect`` times taller than wide.
    """
    count = max(1, count)
    width = max(min_tile[0], width)
    height = max(min_tile[1], height)
    best: tuple[tuple[float, int, int], GridShape] | None = None
    for columns in range(1, count + 1):
        rows = math.ceil(count / columns)
        tile_w = min(width // columns, max_tile[0])
        if tile_w < min_tile[0]:
            break
        tile_h = max(min(height // rows, max_tile[1]), min_tile[1])
        picture = min(tile_w - 2, (tile_h - 3) * cell_aspect)
        score = (picture, -(rows * columns - count), columns)  # ties: no empty slots, fewer rows
        if best is None or score > best[0]:
            best = (score, GridShape(columns, tile_w, tile_h))
    assert best is not None
    return best[1]


class ImageTile(Vertical):
    """One thumbnail in an :class:`ImageGrid`: picture and file name, in a border."""

    DEFAULT_CSS = """
    ImageTile {
        border: round $panel-lighten-2;
        width: 1fr;
        height: 1fr;
        padding: 0;
    }
    ImageTile.-highlight {
        border: heavy $accent;
        background: $accent 15%;
    }
    ImageTile > .tile-frame {
        width: 1fr;
        height: 1fr;
        align: center middle;
    }
    ImageTile .tile-picture {
        width: auto;
        height: auto;
    }
    ImageTile .tile-text {
        width: 1fr;
        height: auto;
        text-align: center;
        color: $text-muted;
    }
    ImageTile > .tile-label {
        width: 1fr;
        height: 1;
        text-align: center;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    ImageTile.-highlight > .tile-label {
        text-style: bold;
    }
    """

    def __init__(self, path: str, index: int, mode: str) -> None:
        super().__init__(classes="image-tile")
        self.path = path
        self.index = index
        self.mode = mode
        self._picture: Widget | None = None

    def compose(self) -> ComposeResult:
        with Container(classes="tile-frame"):
            self._picture = _picture_widget(self.mode, classes="tile-picture")
            text = ""
            if self._picture is not None:
                try:
                    _set_picture(self._picture, thumbnail(self.path))
                except ImageTooLarge:
                    text = "too large to show"
                    self._picture.display = False
                except OSError as e:
                    text = f"unreadable ({one_line(e.strerror or type(e).__name__)})"
                    self._picture.display = False
                except Exception as e:  # noqa: BLE001 - a bad file is a placeholder, never a crash
                    text = f"unreadable ({type(e).__name__})"
                    self._picture.display = False
                yield self._picture
            else:
                text = one_line(self.path)
            if text:
                yield Static(text, classes="tile-text", markup=False)
        yield Static(one_line(Path(self.path).name), classes="tile-label", markup=False)

    @property
    def picture(self) -> Widget | None:
        return self._picture

    def on_unmount(self) -> None:
        _release(self._picture)

    def on_click(self, event: Click) -> None:
        grid = next((a for a in self.ancestors if isinstance(a, ImageGrid)), None)
        if grid is not None:
            grid.focus()
            grid.cursor = self.index


class ImageGrid(Widget, can_focus=True):
    """Thumbnails of a batch (or of recent outputs); arrows/hjkl move, enter picks.

    Posts :class:`ImageGrid.Highlighted` when the cursor lands on another image and
    :class:`ImageGrid.Selected` on enter.
    """

    BINDINGS = [
        Binding("left,h", "move(-1, 0)", "Left", show=False),
        Binding("right,l", "move(1, 0)", "Right", show=False),
        Binding("up,k", "move(0, -1)", "Up", show=False),
        Binding("down,j", "move(0, 1)", "Down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("enter", "select", "Open"),
    ]

    DEFAULT_CSS = """
    ImageGrid {
        width: 1fr;
        height: 1fr;
    }
    ImageGrid > VerticalScroll {
        width: 1fr;
        height: 1fr;
        scrollbar-size-vertical: 1;
    }
    ImageGrid #grid-body {
        layout: grid;
        grid-size: 3;
        width: 1fr;
        height: auto;
    }
    ImageGrid #grid-empty {
        width: 1fr;
        height: 1fr;
        content-align: center middle;
        color: $text-muted;
    }
    ImageGrid:focus .image-tile.-highlight {
        border: heavy $accent-lighten-1;
    }
    """

    class _ImageMessage(Message):
        def __init__(self, grid: ImageGrid, path: str, index: int) -> None:
            super().__init__()
            self.grid = grid
            self.path = path
            self.index = index

        @property
        def control(self) -> ImageGrid:
            return self.grid

    class Highlighted(_ImageMessage):
        """The cursor moved to another image."""

    class Selected(_ImageMessage):
        """Enter was pressed on an image."""

    cursor: reactive[int] = reactive(0, init=False)

    def __init__(
        self,
        paths: list[str] | None = None,
        *,
        mode: str | None = None,
        empty_text: str = "no images yet",
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.mode = mode or graphics.current_mode()
        self.empty_text = empty_text
        self._paths: list[str] = [os.fspath(p) for p in paths or []]
        self._shape = GridShape(3, 26, 13)
        self._last_posted: str | None = None

    def compose(self) -> ComposeResult:
        with VerticalScroll(can_focus=False):
            yield Container(id="grid-body")
            yield Static(self.empty_text, id="grid-empty", markup=False)

    def on_mount(self) -> None:
        self._rebuild()

    # -- public API

    @property
    def paths(self) -> list[str]:
        return list(self._paths)

    @property
    def selected_path(self) -> str | None:
        """The highlighted image's path (None when the grid is empty)."""
        if not self._paths:
            return None
        return self._paths[min(self.cursor, len(self._paths) - 1)]

    @property
    def shape(self) -> GridShape:
        return self._shape

    def set_images(self, paths: list[str] | list[Path], *, select: str | None = None) -> None:
        """Show these images (in this order) with the cursor on ``select``; without it, the
        cursor stays on the same file if it is still there, else goes to the first."""
        keep = select if select is not None else self.selected_path
        self._paths = [os.fspath(p) for p in paths]
        index = self._paths.index(keep) if keep in self._paths else 0
        self.set_reactive(ImageGrid.cursor, index)
        if self.is_mounted:
            self._rebuild()

    def add_image(self, path: str | Path) -> None:
        """Append one image (a batch fills in as the engine saves it)."""
        self._paths.append(os.fspath(path))
        if not self.is_mounted:
            return
        body = self.query_one("#grid-body", Container)
        body.mount(ImageTile(self._paths[-1], len(self._paths) - 1, self.mode))
        self.query_one("#grid-empty").display = False
        self._layout_tiles()
        if len(self._paths) == 1:
            self._highlight()

    def clear(self) -> None:
        self.set_images([])

    # -- actions

    def action_move(self, dx: int, dy: int) -> None:
        if not self._paths:
            return
        columns = max(1, self._shape.columns)
        index = self.cursor + dx + dy * columns
        if dy and not 0 <= index < len(self._paths):
            return  # no row there
        self.cursor = max(0, min(len(self._paths) - 1, index))

    def action_jump(self, index: int) -> None:
        if self._paths:
            self.cursor = index % len(self._paths)

    def action_select(self) -> None:
        path = self.selected_path
        if path is not None:
            self.post_message(self.Selected(self, path, self.cursor))

    # -- internals

    def watch_cursor(self, old: int, new: int) -> None:
        self._highlight()

    def _tiles(self) -> list[ImageTile]:
        return list(self.query(ImageTile))

    def _rebuild(self) -> None:
        body = self.query_one("#grid-body", Container)
        body.remove_children()
        tiles = [ImageTile(p, i, self.mode) for i, p in enumerate(self._paths)]
        if tiles:
            body.mount_all(tiles)
        self.query_one("#grid-empty").display = not tiles
        self._last_posted = None
        self._layout_tiles()
        self.call_after_refresh(self._highlight)

    def _layout_tiles(self) -> None:
        width, height = self.size.width, self.size.height
        if width <= 0 or height <= 0:
            return
        cell_w, cell_h = graphics.cell_pixels()
        shape = grid_shape(len(self._paths), width - 1, height, cell_aspect=cell_h / cell_w)
        self._shape = shape
        body = self.query_one("#grid-body", Container)
        body.styles.grid_size_columns = shape.columns
        body.styles.grid_columns = str(shape.tile_width)
        body.styles.grid_rows = str(shape.tile_height)

    def _highlight(self) -> None:
        for tile in self._tiles():
            tile.set_class(tile.index == self.cursor, "-highlight")
            if tile.index == self.cursor:
                self.query_one(VerticalScroll).scroll_to_widget(tile, animate=False)
        path = self.selected_path
        if path is not None and path != self._last_posted:
            self._last_posted = path
            self.post_message(self.Highlighted(self, path, self.cursor))

    def on_resize(self, event: Resize) -> None:
        self._layout_tiles()
