"""A tiny app around the image widgets, with generated sample PNGs.

By hand: ``python tests/apps/image_app.py [--mode sixel|kitty|halfcell|unicode|none|auto]
[--view grid|full|history] [--count 6] [--dir DIR]``. Tests import ``make_sample_images``
and ``ImageApp``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from textual.app import App, ComposeResult
from textual.containers import Horizontal
from textual.widgets import Footer, Static

COLOURS = [
    ((40, 90, 200), (250, 210, 40)),  # blue sky, yellow sun
    ((200, 40, 40), (255, 255, 255)),  # red, white
    ((30, 150, 60), (250, 120, 0)),  # green, orange
    ((120, 40, 160), (0, 220, 220)),  # purple, cyan
    ((20, 20, 20), (240, 240, 240)),  # black, white
    ((240, 200, 200), (30, 60, 160)),  # pink, navy
    ((90, 60, 30), (160, 230, 90)),
    ((0, 120, 130), (250, 80, 150)),
]


def sample_infotext(i: int, seed: int) -> str:
    return (
        f"a lighthouse on a cliff, picture {i + 1}\n"
        "Negative prompt: blurry, lowres\n"
        f"Steps: {20 + i}, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, "
        f"Seed: {seed}, Size: 512x512, Model: sdtui-demo, Version: sdtui"
    )


def make_sample_image(path: Path, i: int, *, size: tuple[int, int] = (512, 512)) -> Path:
    """A picture a person recognises even as half-cell blocks: a sky colour, a large disc,
    a ground strip and the number ``i + 1``, with an A1111 ``parameters`` chunk."""
    from PIL import Image, ImageDraw, ImageFont
    from PIL.PngImagePlugin import PngInfo

    w, h = size
    sky, disc = COLOURS[i % len(COLOURS)]
    im = Image.new("RGB", size, sky)
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, int(h * 0.75), w, h), fill=(60, 40, 20))
    r = int(min(w, h) * 0.22)
    cx, cy = int(w * 0.3), int(h * 0.35)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=disc)
    try:
        font = ImageFont.load_default(size=int(h * 0.4))
    except (TypeError, OSError):  # Pillow without FreeType
        font = ImageFont.load_default()
    draw.text((int(w * 0.62), int(h * 0.3)), str(i + 1), fill=disc, font=font, anchor="mm")
    info = PngInfo()
    info.add_text("parameters", sample_infotext(i, 1000 + i))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, pnginfo=info)
    return path


def make_sample_images(folder: Path, count: int = 6, *, start: float | None = None) -> list[Path]:
    """``count`` images in an A1111 outputs layout under ``folder`` (txt2img, img2img and
    extras), modification times one minute apart, returned oldest first."""
    base = 1_700_000_000.0 if start is None else start
    paths: list[Path] = []
    for i in range(count):
        if i % 3 == 2:
            path = folder / "extras-images" / f"{i:05d}.png"
        elif i % 3 == 1:
            path = folder / "img2img-images" / "2024-05-01" / f"{i:05d}-{1000 + i}.png"
        else:
            path = folder / "txt2img-images" / "2024-05-01" / f"{i:05d}-{1000 + i}.png"
        make_sample_image(path, i)
        os.utime(path, (base + 60 * i, base + 60 * i))
        paths.append(path)
    return paths


class ImageApp(App[None]):
    """Grid on the left, preview of the highlighted image on the right; enter opens the
    full view, ``H`` the history."""

    CSS = """
    #grid { width: 3fr; }
    #preview { width: 2fr; border-left: vkey $panel-lighten-2; }
    #status { dock: bottom; height: 1; background: $panel; }
    """
    BINDINGS = [("H", "history", "History"), ("ctrl+q", "quit", "Quit")]

    def __init__(
        self,
        paths: list[Path],
        *,
        mode: str | None = None,
        view: str = "grid",
        outputs_dir: Path | None = None,
        with_preview: bool = True,
    ) -> None:
        super().__init__()
        self.paths = [str(p) for p in paths]
        self.mode = mode
        self.view = view
        self.outputs_dir = outputs_dir
        self.with_preview = with_preview
        self.events: list[object] = []

    def compose(self) -> ComposeResult:
        from sdtui.tui.widgets.image_view import ImageGrid, PreviewImage

        with Horizontal():
            yield ImageGrid(self.paths, mode=self.mode, id="grid")
            if self.with_preview:
                yield PreviewImage(mode=self.mode, id="preview")
        yield Static("", id="status", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        from sdtui.tui import graphics
        from sdtui.tui.screens.full_view import FullViewScreen

        status = graphics.current_choice().reason if self.mode is None else f"mode {self.mode}"
        self.query_one("#status", Static).update(status)
        self.query_one("#grid").focus()
        if self.view == "full" and self.paths:
            self.push_screen(FullViewScreen(self.paths[0], self.paths, mode=self.mode))
        elif self.view == "history":
            self.action_history()

    def on_image_grid_highlighted(self, event: object) -> None:
        from sdtui.tui.widgets.image_view import ImageGrid, PreviewImage

        assert isinstance(event, ImageGrid.Highlighted)
        self.events.append(event)
        if self.with_preview:
            self.query_one("#preview", PreviewImage).show_path(event.path)

    def on_image_grid_selected(self, event: object) -> None:
        from sdtui.tui.screens.full_view import FullViewScreen
        from sdtui.tui.widgets.image_view import ImageGrid

        assert isinstance(event, ImageGrid.Selected)
        self.events.append(event)
        self.push_screen(FullViewScreen(event.path, self.paths, mode=self.mode))

    def action_history(self) -> None:
        from sdtui.tui.screens.history import HistoryScreen

        if self.outputs_dir is not None:
            self.push_screen(HistoryScreen(self.outputs_dir, mode=self.mode), self._picked)

    def _picked(self, path: str | None) -> None:
        self.query_one("#status", Static).update(f"history picked: {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", default="auto")
    parser.add_argument("--view", default="grid", choices=["grid", "full", "history"])
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from sdtui.tui import graphics

    choice = graphics.probe(args.mode)  # before App.run(): it talks to the terminal
    folder = args.dir or Path(tempfile.mkdtemp(prefix="sdtui-images-"))
    paths = make_sample_images(folder, args.count)
    ImageApp(list(reversed(paths)), view=args.view, outputs_dir=folder).run()
    print(f"image mode: {choice.mode_used} ({choice.reason})")


if __name__ == "__main__":
    main()
