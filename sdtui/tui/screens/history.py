"""Recent outputs: the images the daemon's jobs saved (from the job queue file, with the job
they came from) and every other image in the outputs folder (A1111's too), newest first.
Both are on disk, so they survive a restart."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.timer import Timer
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from sdtui.safe_text import one_line
from sdtui.tui.files import is_regular_file
from sdtui.tui.screens.full_view import infotext_view
from sdtui.tui.widgets.image_view import PreviewImage

HISTORY_LIMIT = 500
PREVIEW_DELAY_S = 0.08  # holding an arrow key does not send every image to the terminal


def kind_of(path: Path, outputs_dir: Path) -> str:
    """txt2img / img2img / extras (the folder an image sits in), else the folder name."""
    from sdtui.outputs import GRID_FOLDERS, IMAGE_FOLDERS

    folders = {v: k for k, v in IMAGE_FOLDERS.items()}
    folders.update({v: f"{k} grid" for k, v in GRID_FOLDERS.items()})
    try:
        top = path.relative_to(outputs_dir).parts[0]
    except (ValueError, IndexError):
        top = path.parent.name
    return folders.get(top, top)


def history_label(path: Path, outputs_dir: Path, job: int | None = None) -> Text:
    try:
        when = dt.datetime.fromtimestamp(path.stat().st_mtime).strftime("%m-%d %H:%M")
    except OSError:
        when = "?"
    label = Text()
    label.append(f"{when}  ", style="dim")
    label.append(f"{one_line(kind_of(path, outputs_dir)):<8}", style="bold")
    label.append(one_line(path.name))
    if job is not None:
        label.append(f"  #{job}", style="dim")
    return label


def jobs_of(queue_path: Path | None, limit: int) -> dict[Path, int]:
    """Image -> the job that saved it, from the daemon's queue file (read only; a missing or
    unreadable file gives nothing: the folder still lists every image)."""
    if queue_path is None:
        return {}
    from sdtui.jobstore import JobStore, StoreError

    try:
        store = JobStore.open(queue_path, create=False)
    except (OSError, StoreError):
        return {}
    except Exception:  # noqa: BLE001 - a damaged queue file: the folder still lists
        return {}
    try:
        return {Path(path): job for path, job, _ in store.recent_images(limit)}
    except Exception:  # noqa: BLE001 - as above (StoreError, sqlite3's own errors)
        return {}
    finally:
        store.close()


class HistoryScreen(ModalScreen[str | None]):
    """Browse recent images newest first; enter returns the path, escape returns None."""

    BINDINGS = [
        Binding("escape,q", "cancel", "Close"),
    ]

    DEFAULT_CSS = """
    HistoryScreen {
        background: $background;
    }
    HistoryScreen > #history-title {
        dock: top;
        height: 1;
        width: 1fr;
        background: $panel;
        padding: 0 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    HistoryScreen #history-list {
        width: 2fr;
        min-width: 36;
        max-width: 64;
        height: 1fr;
    }
    HistoryScreen #history-side {
        width: 3fr;
        height: 1fr;
    }
    HistoryScreen #history-preview {
        height: 2fr;
    }
    HistoryScreen #history-params {
        height: 1fr;
        border-top: hkey $panel-lighten-2;
        padding: 0 1;
    }
    HistoryScreen #history-empty {
        width: 1fr;
        height: 1fr;
        content-align: center middle;
        color: $text-muted;
    }
    """

    def __init__(
        self,
        outputs_dir: str | os.PathLike[str],
        *,
        limit: int = HISTORY_LIMIT,
        mode: str | None = None,
        queue_path: Path | None = None,
    ) -> None:
        super().__init__()
        self.outputs_dir = Path(outputs_dir).expanduser()
        self.queue_path = queue_path
        self._jobs: dict[Path, int] = {}
        self._limit = limit
        self._mode = mode
        self._paths: list[Path] = []
        self._pending: Timer | None = None
        self._shown: Path | None = None

    @property
    def paths(self) -> list[Path]:
        """The images listed, newest first."""
        return list(self._paths)

    def compose(self) -> ComposeResult:
        from sdtui.outputs import OutputLayout

        self._jobs = jobs_of(self.queue_path, self._limit)
        try:
            found = set(OutputLayout(self.outputs_dir).recent_images(self._limit))
        except Exception:  # noqa: BLE001 - an unreadable folder lists nothing, never a crash
            found = set()
        # a job's --outputs-dir elsewhere too (regular files only: a pipe would hang)
        found.update(p for p in self._jobs if is_regular_file(p))
        self._paths = sorted(found, key=_mtime, reverse=True)[: self._limit]
        count = len(self._paths)
        yield Static(
            f"History · {count} image{'s' if count != 1 else ''} in {one_line(str(self.outputs_dir))}"
            "  ·  enter use  ·  esc close",
            id="history-title",
            markup=False,
        )
        if not self._paths:
            yield Static(
                f"No images in {one_line(str(self.outputs_dir))} yet: generate one first.",
                id="history-empty",
                markup=False,
            )
            return
        with Horizontal():
            yield OptionList(
                *(
                    Option(history_label(p, self.outputs_dir, self._jobs.get(p)), id=str(i))
                    for i, p in enumerate(self._paths)
                ),
                id="history-list",
            )
            with Vertical(id="history-side"):
                yield PreviewImage(id="history-preview", mode=self._mode)
                with VerticalScroll(id="history-params", can_focus=False):
                    yield Static("", id="history-params-text")

    def on_mount(self) -> None:
        if self._paths:
            options = self.query_one("#history-list", OptionList)
            options.focus()
            options.highlighted = 0
            self._show(self._paths[0])

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        path = self._paths[event.option_index]
        if path == self._shown:
            return
        if self._pending is not None:
            self._pending.stop()
        self._pending = self.set_timer(PREVIEW_DELAY_S, lambda: self._show(path))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(str(self._paths[event.option_index]))

    def _show(self, path: Path) -> None:
        self._pending = None
        self._shown = path
        self.query_one("#history-preview", PreviewImage).show_path(path)
        self.query_one("#history-params-text", Static).update(infotext_view(path))
        self.query_one("#history-params", VerticalScroll).scroll_home(animate=False)

    def action_cancel(self) -> None:
        self.dismiss(None)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
