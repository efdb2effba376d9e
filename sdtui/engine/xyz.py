"""An X/Y/Z plot job, as A1111's ``scripts/xyz_grid.py`` runs one: the cells one after
another, then the labelled grid.

The plot itself (axes, cells, their order, labels, drawing) is :mod:`sdtui.xyz`, which has no
torch; this module runs it. What A1111 does, and so what happens here:

* the seeds are fixed first (``fix_seed``; the daemon did it when the job was queued, so a
  restart makes the same cells), and a Seed axis's -1 values too (``fix_axis_seeds``);
* each cell is one generation of one image (A1111 takes each cell's first image), made in
  A1111's order (the costliest axis, a checkpoint, outermost); a Checkpoint name axis switches
  the model through the worker's own loading (``run_cell``);
* each cell is saved as a normal image (txt2img-images, with its own infotext): A1111's script
  sets no ``do_not_save_samples``, so ``process_images`` saves every cell ("Always save all
  generated images" is on by default), and a batch of one makes no grid of its own;
* the grid is drawn with its labels and saved as ``xyz_grid-NNNN.png`` in txt2img-grids (or
  img2img-grids) with the infotext of the first cell plus "Script: X/Y/Z plot", "X Type",
  "X Values", ... (A1111 saves the Z sub-grids only with "Include Sub Grids", off by default;
  sdtui has no such option);
* a cell that fails (or is skipped) is a black cell, as in A1111; a plot whose every cell
  failed fails with the first cell's error;
* a cancel keeps every cell saved so far and saves no grid (as sdtui's generate saves no grid
  for a cancelled job).

A job that restarts (the daemon or its worker died) finds its saved cells in ``ctx.done``
(keyed by the cell's index, X fastest) and makes only the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from PIL import Image, UnidentifiedImageError

from sdtui.engine.job import JobContext
from sdtui.errors import UserError
from sdtui.infotext import format_infotext, read_infotext
from sdtui.ipc import protocol as msg
from sdtui.jobstore import GRID_INDEX
from sdtui.outputs import GRID_FOLDERS
from sdtui.params import GenerationParams, XYZParams
from sdtui.xyz import (
    XYZPlot,
    base_params,
    cell_generation_params,
    grid_infotext,
    plot_of,
)

GRID_BASENAME = "xyz_grid"  # A1111 images.save_image(..., basename "xyz_grid", grid=True)

# one cell: its params and a context whose emit is the plot's relay -> the cell's JobDone
RunCell = Callable[[GenerationParams, JobContext], msg.JobDone]


def cell_calls(p: GenerationParams) -> int:
    """The model calls of one cell (both passes), as its Progress counts them."""
    from sdtui.engine.plans import first_pass_plan, hires_plan
    from sdtui.engine.sampling import model_calls

    second = hires_plan(p)
    return model_calls(first_pass_plan(p)) + (model_calls(second) if second is not None else 0)


def _read_back(path: str) -> tuple[Image.Image | None, str | None]:
    """A cell saved before a restart: its image and infotext (None when it is gone)."""
    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except (OSError, UnidentifiedImageError):
        return None, None
    info = None
    with contextlib.suppress(OSError, UserError):
        info = read_infotext(path)
    return image, info


def _label(plot: XYZPlot, ix: int, iy: int, iz: int) -> str:
    parts = []
    for letter, axis, i in (("X", plot.x, ix), ("Y", plot.y, iy), ("Z", plot.z, iz)):
        if not axis.type.is_nothing:
            parts.append(f"{letter} {axis.labels[i] or axis.values[i]}")
    return ", ".join(parts) or "the cell"


def run_xyz(params: XYZParams, ctx: JobContext, run_cell: RunCell) -> msg.JobDone:
    """Run a plot: emits JobStarted (one image per cell), each cell's Progress (``batch_index``
    the cell's place in the order made, ``batch_count`` the cells), Preview and ImageSaved
    (``index`` the cell's index, X fastest), then the grid's ImageSaved (index -1); returns
    JobDone (the cells' paths). ``run_cell`` makes one cell with the model it names."""
    t_start = time.perf_counter()
    plot = plot_of(params)
    base = base_params(params)
    plot.check(base)
    order = plot.cells()
    cells = [(cell, cell_generation_params(plot, base, *cell)) for cell in order]
    calls = [cell_calls(p) for _, p in cells]
    total = sum(calls)
    n = len(cells)
    kind = "img2img" if params.base.init_image else "txt2img"
    ctx.emit(msg.JobStarted(ctx.job_id, n, total))
    ctx.log(
        f"X/Y/Z plot: {n} image{'s' if n != 1 else ''} on "
        f"{len(plot.z)} {len(plot.x)}x{len(plot.y)} grid{'s' if len(plot.z) > 1 else ''} "
        f"({total} steps)"
    )

    images: list[Image.Image | None] = [None] * n
    paths: dict[int, str] = {}
    infotexts: dict[int, str] = {}
    first_error: BaseException | None = None
    cancelled = False
    calls_done = 0
    for position, ((ix, iy, iz), p) in enumerate(cells):
        index = plot.index(ix, iy, iz)
        if ctx.control.cancel.is_set():
            cancelled = True
            break
        earlier = ctx.done.get(index)
        if earlier is not None:
            image, info = _read_back(earlier)
            if image is not None:
                images[index], paths[index] = image, earlier
                if info:
                    infotexts[index] = info
                calls_done += calls[position]
                continue
        made: list[msg.ImageSaved] = []

        def relay(
            event: Any,
            position: int = position,
            index: int = index,
            made: list[msg.ImageSaved] = made,
            before: int = calls_done,
        ) -> None:
            if isinstance(event, msg.JobStarted):
                return  # the plot's own JobStarted said it all
            if isinstance(event, msg.Progress):
                left = total - before - event.step
                eta = round(left / event.its, 1) if event.its > 0 else 0.0
                event = dataclasses.replace(event, batch_index=position, batch_count=n, eta_s=eta)
            elif isinstance(event, msg.ImageSaved):
                if event.is_grid:
                    return  # a batch of one makes none; never the plot's
                event = dataclasses.replace(event, index=index)
                made.append(event)
            ctx.emit(event)

        cell_ctx = dataclasses.replace(ctx, emit=relay, done={})
        try:
            done = run_cell(p, cell_ctx)
        except Exception as e:  # noqa: BLE001 - A1111: the cell stays black, the plot goes on
            first_error = first_error or e
            message = e.message if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            ctx.log(
                f"X/Y/Z plot: {_label(plot, ix, iy, iz)} failed ({message}): its cell stays black",
                "error",
            )
            calls_done += calls[position]
            continue
        calls_done += calls[position]
        if made:
            saved = made[0]
            paths[index] = saved.path
            infotexts[index] = saved.infotext
            image, _ = _read_back(saved.path)
            images[index] = image
        elif not done.cancelled:
            ctx.log(
                f"X/Y/Z plot: {_label(plot, ix, iy, iz)} made no image: its cell stays black",
                "warning",
            )
        if done.cancelled or ctx.control.cancel.is_set():
            cancelled = True
            break

    if not cancelled and GRID_INDEX not in ctx.done:
        if not any(im is not None for im in images):
            if first_error is not None:
                raise first_error
            raise UserError("the X/Y/Z plot made no image: see why each cell failed in the log")
        grid, _ = plot.grid(images, draw_legend=params.draw_legend, margin=params.margin)
        # A1111 writes the infotext of cell (0, 0, 0), the first one made in any order
        first = next(p for cell, p in cells if cell == (0, 0, 0))
        cell_info = infotexts.get(0) or format_infotext(
            first.prompt,
            first.negative_prompt,
            first.infotext_pairs(seed=first.seed, model_name=first.model),
        )
        info = grid_infotext(cell_info, plot)
        path = save_xyz_grid(ctx, grid, kind, info)
        ctx.emit(msg.ImageSaved(ctx.job_id, GRID_INDEX, str(path), first.seed, info, is_grid=True))
    return msg.JobDone(
        ctx.job_id,
        tuple(paths[i] for i in sorted(paths)),
        round(time.perf_counter() - t_start, 3),
        cancelled=cancelled,
    )


def save_xyz_grid(ctx: JobContext, grid: Image.Image, kind: str, infotext: str) -> Any:
    """Save the plot as A1111 names it: ``xyz_grid-NNNN.png`` in the grids folder (numbered
    apart from ``grid-NNNN.png``, as A1111's ``get_next_sequence_number`` counts by
    basename), written atomically as every sdtui image is."""
    if kind not in GRID_FOLDERS:
        raise ValueError(f"unknown grid kind {kind!r}")
    layout = ctx.layout
    folder = layout.folder(kind, grid=True)
    chunks = {"parameters": infotext} if infotext else {}
    return layout._save(
        grid, folder, GRID_BASENAME, lambda n: f"{GRID_BASENAME}-{n:04}.png", chunks
    )
