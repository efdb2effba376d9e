"""The X/Y/Z plot in the TUI (issue 12, part 7): alt+x opens the plot over the form's
parameters, the values are checked as they are typed (the message names the axis), the count
of images is shown, a bad plot is not queued; queued, it runs on the real engine (the demo
model): every cell is saved, then the labelled grid with the plot's infotext, which the image
pane shows as the job's result, and the queue row names the plot and its cell."""

from __future__ import annotations

from typing import Any

import pytest
import test_tui_app
from palette import run_command
from PIL import Image
from test_tui_app import FakeHost as AppFakeHost
from test_tui_app import log_text, run_async, wait_for

from sdtui.config import Settings
from sdtui.infotext import parse_infotext, read_infotext
from sdtui.ipc import protocol as msg
from sdtui.params import GenerationParams, XYZParams
from sdtui.tui.app import SdtuiApp
from sdtui.tui.form_state import FormState
from sdtui.tui.jobs import JobBook, JobInfo
from sdtui.tui.screens.xyz import XYZScreen, axis_hint, plot_problem, shape_line
from sdtui.tui.widgets.image_view import ImageGrid
from sdtui.tui.widgets.queue_view import QueueView
from sdtui.xyz import AXIS_TYPES

# the autouse fixture that puts every folder in tmp, shared with test_tui_app
tui_env = test_tui_app.tui_env
TINY = GenerationParams(
    prompt="a black house cat", model="demo", steps=2, width=64, height=64, seed=1234
)


class FakeHost(AppFakeHost):
    """An idle engine with DaemonClient's shape: a plot must come through submit_xyz."""

    def submit(self, params: Any) -> int:
        raise AssertionError("a plot is submitted with submit_xyz")

    submit_upscale = submit


def fake_app(settings: Settings, host: Any = None, form: FormState | None = None) -> SdtuiApp:
    return SdtuiApp(
        host or FakeHost(),
        settings,
        form_state=form or FormState(params=TINY),
        gpu_interval=None,
        clock=lambda: "12:00:00",
        remember_form=False,
    )


def label(screen: XYZScreen, name: str) -> str:
    return str(screen.query_one(f"#{name}").render())


async def set_axis(pilot: Any, screen: XYZScreen, letter: str, kind: str, values: str) -> None:
    """Pick the axis type and type its values, with the keys."""
    select = screen.query_one(f"#{letter}-type")
    select.focus()
    await pilot.press("enter")  # opens the list, on the type chosen now
    await pilot.pause()
    names = list(AXIS_TYPES)
    move = names.index(kind) - names.index(select.value)  # type: ignore[attr-defined]
    await pilot.press(*(["down"] * move if move > 0 else ["up"] * -move))
    await pilot.press("enter")
    await pilot.pause()
    field = screen.query_one(f"#{letter}-values")
    field.focus()
    field.value = ""  # type: ignore[attr-defined]
    await pilot.press(*values)
    await pilot.pause()


async def checked(pilot: Any, screen: XYZScreen) -> None:
    """Wait for the live check (a worker thread) to answer."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


# -- the words, without a terminal -----------------------------------------------------------


def test_the_count_and_each_problem_name_the_axis_and_the_fix() -> None:
    plot = XYZParams(base=TINY, x=("Steps", "1-2"), y=("CFG Scale", "3,5"))
    assert shape_line(plot) == "2 x 2 x 1 = 4 images"
    assert plot_problem(plot) == ""
    bad = plot.replace(y=("CFG Scale", "3, abc"))
    assert shape_line(bad) == ""
    assert plot_problem(bad).startswith("Y axis: CFG Scale value 'abc' is not a number")
    assert "X/Y/Z plot: X value 'Steps: 0'" in plot_problem(plot.replace(x=("Steps", "0-2")))
    batch = plot.replace(base=TINY.replace(batch_size=2))
    assert "leave the batch size and batch count at 1" in plot_problem(batch)
    base = plot.replace(base=TINY.replace(steps=0))
    assert plot_problem(base).startswith("the form's steps: steps 0")
    sr = plot.replace(z=("Prompt S/R", "dog, cat"))
    assert "did not find 'dog'" in plot_problem(sr)
    # hostile values are a sentence, never a crash (a range too long for Python's range)
    huge = plot_problem(plot.replace(x=("Steps", "1-99999999999999999999")))
    assert huge.startswith("the plot cannot be checked") or "more than the 1000" in huge
    assert "'\\x1b[2J'" in plot_problem(plot.replace(x=("Steps", "\x1b[2J")))
    assert "1-10 (+2)" in axis_hint(AXIS_TYPES["Steps"])
    assert "Euler" in axis_hint(AXIS_TYPES["Sampler"])
    assert "m1.safetensors" in axis_hint(AXIS_TYPES["Checkpoint name"], ["m1.safetensors"])


def test_the_job_book_names_a_plot_follows_its_cells_and_shows_its_grid() -> None:
    book = JobBook()
    summary = 'txt2img X/Y/Z plot Steps x CFG Scale: 64x64 2 steps "a cat"'
    book.submitted(1, JobInfo("xyz", summary, 4, 2))
    book.started(msg.JobStarted(1, 4, 12))
    assert book.summary(1) == f"{summary} · cell 1/4"
    assert book.progressed(msg.Progress(1, 1, 2, 0, 4, its=2.0, eta_s=1)) is False
    assert book.progressed(msg.Progress(1, 1, 3, 1, 4, its=2.0, eta_s=1)) is True
    assert book.summary(1) == f"{summary} · cell 2/4"
    for i, path in enumerate(("/o/a.png", "/o/b.png")):
        book.image_saved(msg.ImageSaved(1, i, path, 1234, ""))
    grid = msg.ImageSaved(1, -1, "/g/xyz_grid-0001.png", 1234, "", is_grid=True)
    assert book.image_saved(grid) is False
    # the plot first, selected, then its cells (A1111's gallery)
    assert book.grid_to_show(grid) == ["/g/xyz_grid-0001.png", "/o/a.png", "/o/b.png"]
    done = book.done(msg.JobDone(1, ("/o/a.png", "/o/b.png"), 3.0))
    assert done == ("ok", "job #1 done: 2 images and the X/Y/Z grid in 3.0 s, 2.00 it/s")
    assert book.summary(1) == summary  # no cell once it ended
    # a batch's grid is not a result; a plot from another client is known by its kind
    book.submitted(2, JobInfo("txt2img", "t"))
    assert book.grid_to_show(msg.ImageSaved(2, -1, "/g/grid.png", 1, "", is_grid=True)) == []
    cli = msg.JobInfo(3, "xyz", "queued", summary, 4, "sdtui xyz (pid 9)", 0.0)
    book.queued(cli)
    assert book.jobs[3].kind == "xyz"
    book.started(msg.JobStarted(3, 4, 8))
    assert book.summary(3) == f"{summary} · cell 1/4 · sdtui xyz (pid 9)"
    assert book.done(msg.JobDone(3, ("/o/c.png",), 1.0, cancelled=True))[1] == (
        "job #3 interrupted: 1 image kept (no grid: a plot draws it after its last cell)"
    )


# -- the screen, on an idle engine -----------------------------------------------------------


@run_async
async def test_alt_x_checks_as_typed_blocks_a_bad_plot_and_keeps_the_axes(
    tui_env: Settings,
) -> None:
    host = FakeHost()
    app = fake_app(tui_env, host)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("alt+x")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, XYZScreen)
        assert 'txt2img 64x64 2 steps "a black house cat"' in label(screen, "xyz-base")
        # A1111's defaults: X is Seed, with no values yet
        await checked(pilot, screen)
        assert "X axis: Seed values '' give no values" in label(screen, "xyz-problem")

        await set_axis(pilot, screen, "x", "Steps", "1-2")
        await set_axis(pilot, screen, "y", "CFG Scale", "3,5")
        await checked(pilot, screen)
        assert label(screen, "xyz-count") == "2 x 2 x 1 = 4 images"
        assert label(screen, "xyz-problem") == ""
        assert "Y CFG Scale" in label(screen, "xyz-hint")  # the syntax of the focused axis

        # a bad value: the axis and why, and enter queues nothing
        await pilot.press("backspace", *"abc")
        await checked(pilot, screen)
        assert label(screen, "xyz-problem").startswith(
            "Y axis: CFG Scale value 'abc' is not a number"
        )
        await pilot.press("enter")
        await pilot.pause()
        assert host.pending == {} and app.screen is screen

        # escape leaves; the axes come back next time
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.main
        await pilot.press("alt+x")
        await pilot.pause()
        again = app.screen
        assert isinstance(again, XYZScreen)
        assert again.plot().axes == (("Steps", "1-2"), ("CFG Scale", "3,abc"), ("Nothing", ""))

        # fixed, ctrl+g queues it (the seeds fixed, the batch of the form not asked for)
        again.query_one("#y-values").value = "3,5"  # type: ignore[attr-defined]
        await pilot.press("ctrl+g")
        await pilot.pause()
        assert app.screen is app.main
        [plot] = host.pending.values()
        assert plot.base.prompt == "a black house cat" and plot.base.seed == 1234
        assert plot.axes[:2] == (("Steps", "1-2"), ("CFG Scale", "3,5"))
        assert "job #1 queued: txt2img X/Y/Z plot Steps x CFG Scale" in log_text(app)
        rows = app.main.query_one(QueueView).entries
        assert "X/Y/Z plot" in rows[0].summary


@run_async
async def test_a_form_with_a_batch_says_so_and_queues_nothing(tui_env: Settings) -> None:
    host = FakeHost()
    app = fake_app(tui_env, host, FormState(params=TINY.replace(batch_count=2)))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("alt+x")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, XYZScreen)
        await set_axis(pilot, screen, "x", "Steps", "1-2")
        await checked(pilot, screen)
        assert "leave the batch size and batch count at 1" in label(screen, "xyz-problem")
        await pilot.press("ctrl+g")
        await pilot.pause()
        assert host.pending == {}


@run_async
async def test_the_palette_opens_the_plot(tui_env: Settings) -> None:
    app = fake_app(tui_env)
    async with app.run_test(size=(100, 30)) as pilot:
        await run_command(pilot, "X/Y/Z plot")
        await wait_for(pilot, lambda: isinstance(app.screen, XYZScreen), 60)


def test_snapshot_xyz_80x24(snap_compare: Any, tui_env: Settings) -> None:
    plot = XYZParams(x=("Steps", "10-30 (+10)"), y=("CFG Scale", "5, 7.5"))

    async def opened(pilot: Any) -> None:
        pilot.app.main.xyz_plot = plot
        await pilot.press("alt+x")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        for field in pilot.app.screen.query("Input"):
            field.cursor_blink = False

    assert snap_compare(fake_app(tui_env), terminal_size=(80, 24), run_before=opened)


# -- on the real engine ----------------------------------------------------------------------


@pytest.mark.slow
@run_async
async def test_a_plot_runs_on_the_engine_and_the_tui_shows_its_grid(
    tui_env: Settings, attach: Any
) -> None:
    engine = attach(tui_env, who="tui")
    app = SdtuiApp(
        engine,
        tui_env,
        form_state=FormState(params=TINY),
        gpu_interval=None,
        remember_form=False,
    )
    async with app.run_test(size=(100, 30)) as pilot:
        rows: list[str] = []
        queue = app.main.query_one(QueueView)
        show = queue.show_entries

        def recorded(entries: Any) -> None:
            rows.extend(e.summary for e in entries)
            show(entries)

        queue.show_entries = recorded  # type: ignore[method-assign]
        # the row's text each time the plot moved to another cell: the queue shows it while
        # the job is pending, which a loaded machine can end (the client's reader thread saw
        # JobFinished) before the app handles the last cells' progress
        cell_rows: list[str] = []
        book = app.main.book
        progressed = book.progressed

        def seen_progress(e: Any) -> bool:
            changed = progressed(e)
            if changed:
                cell_rows.append(book.summary(e.job_id))
            return changed

        book.progressed = seen_progress  # type: ignore[method-assign]
        started = book.started

        def seen_start(e: Any) -> str:
            line = started(e)
            cell_rows.append(book.summary(e.job_id))
            return line

        book.started = seen_start  # type: ignore[method-assign]
        words: list[str] = []
        bar = app.main.status_bar
        update = bar.update_line

        def seen_line(**changes: Any) -> None:
            if "batch_word" in changes:
                words.append(changes["batch_word"])
            update(**changes)

        bar.update_line = seen_line  # type: ignore[method-assign]
        app.main.xyz_plot = XYZParams(x=("Steps", "1-2"), y=("CFG Scale", "3,5"))
        await pilot.press("alt+x")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, XYZScreen)
        await checked(pilot, screen)
        assert label(screen, "xyz-count") == "2 x 2 x 1 = 4 images"
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: " done: " in log_text(app), 60)

        out = tui_env.outputs
        cells = sorted((out / "txt2img-images").rglob("*.png"))
        [grid] = sorted((out / "txt2img-grids").rglob("xyz_grid-*.png"))
        assert len(cells) == 4
        pairs = parse_infotext(read_infotext(grid) or "").pairs
        assert pairs["Script"] == "X/Y/Z plot"
        assert (pairs["X Type"], pairs["X Values"]) == ("Steps", "1-2")
        assert (pairs["Y Type"], pairs["Y Values"]) == ("CFG Scale", "3,5")
        steps = sorted(parse_infotext(read_infotext(c) or "").pairs["Steps"] for c in cells)
        assert steps == ["1", "1", "2", "2"]
        assert Image.open(grid).width > 2 * 64  # two columns and the legend

        # the grid is the job's result: first in the image pane, selected and previewed
        images = app.main.query_one(ImageGrid)
        assert images.paths[0] == str(grid) and sorted(images.paths[1:]) == [str(c) for c in cells]
        assert app.main.selected_path == str(grid)
        assert f"grid saved: {grid}" in log_text(app)
        assert "4 images and the X/Y/Z grid" in log_text(app)
        # the queue row named the plot and the cell it was making
        assert any("X/Y/Z plot Steps x CFG Scale" in r for r in rows), rows
        # (the daemon lets a newer progress replace one a slow client has not read: cells
        # can be skipped, never the last step's)
        cells_shown = [r.rsplit(" · ", 1)[-1] for r in cell_rows]
        assert cells_shown[0] == "cell 1/4" and cells_shown[-1] == "cell 4/4", cell_rows
        assert cells_shown == sorted(set(cells_shown)), cell_rows
        assert all("X/Y/Z plot Steps x CFG Scale" in r for r in cell_rows), cell_rows
        # and the status bar counts cells, not batches
        assert words and set(words) == {"cell"}, words
