"""What the app knows of the engine's jobs: each job's kind and summary, the images each one
saved, which job the image grid shows, the last seed, the last failure and the last it/s; of
an X/Y/Z plot, the cell it is making and the labelled grid it saved.

Plain Python (no textual): the main screen feeds it the engine's events and shows what it
answers, so the bookkeeping and the words of the job log are tested without a terminal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sdtui.ipc import protocol as msg


@dataclass
class JobInfo:
    kind: str  # txt2img | img2img | extras | xyz (an X/Y/Z plot, txt2img or img2img)
    summary: str
    images: int = 1
    steps: int = 0
    submitted_by: str = ""  # another client's job: who queued it

    @classmethod
    def from_queue(cls, job: msg.JobInfo) -> JobInfo:
        if job.kind in ("upscale", "xyz"):
            kind = "extras" if job.kind == "upscale" else "xyz"
        else:
            kind = (job.summary.split() or ["txt2img"])[0]
        return cls(kind, job.summary, job.images_total, job.steps, job.submitted_by)


def _images(n: int) -> str:
    return f"{n} image{'s' if n != 1 else ''}"


class JobBook:
    """The jobs this app has seen (its own and other clients'), fed one engine event at a
    time. Each method records the event and returns what the job log should say, if
    anything; the screen decides how to show it."""

    def __init__(self) -> None:
        self.jobs: dict[int, JobInfo] = {}
        self.images: dict[int, list[str]] = {}  # job id -> images saved, in order
        self.shown_job: int | None = None  # the job whose images the grid shows
        self.last_seed: int | None = None
        self.last_failure: msg.JobFailed | None = None
        self.last_its: float | None = None
        # an X/Y/Z plot running: (the cell being made, in the order made; the cells)
        self.cells: dict[int, tuple[int, int]] = {}
        self.plot_grids: dict[int, str] = {}  # an X/Y/Z plot's labelled grid, once saved

    # -- jobs entering the queue ---------------------------------------------------------

    def submitted(self, job_id: int, info: JobInfo) -> None:
        """This app queued ``job_id``."""
        self.jobs[job_id] = info

    def queued(self, job: msg.JobInfo) -> str | None:
        """A job entered the daemon's queue: the log line, or None for this app's own
        (said when it was submitted)."""
        if job.job_id in self.jobs:
            return None
        self.jobs[job.job_id] = JobInfo.from_queue(job)
        return f"job #{job.job_id} queued by {job.submitted_by}: {job.summary}"

    def attached(self, jobs: Iterable[msg.JobInfo]) -> None:
        """The daemon's queue when this app attached to it."""
        for job in jobs:
            self.jobs.setdefault(job.job_id, JobInfo.from_queue(job))
            if job.state == "running":
                self.images.setdefault(job.job_id, [])  # started before this app came

    # -- a job running -------------------------------------------------------------------

    def started(self, e: msg.JobStarted) -> str:
        info = self.jobs.setdefault(e.job_id, JobInfo("txt2img", f"job {e.job_id}"))
        info.images, info.steps = e.images_total, e.steps_total
        self.images[e.job_id] = []
        if info.kind == "xyz":
            self.cells[e.job_id] = (0, e.images_total)
        by = f" (queued by {info.submitted_by})" if info.submitted_by else ""
        return f"job #{e.job_id} started: {info.summary}{by}"

    def progressed(self, e: msg.Progress) -> bool:
        """Record the speed and, of an X/Y/Z plot, its cell (the engine's ``batch_index`` /
        ``batch_count``). True when the job's queue row changed (the plot is on a new cell)."""
        self.last_its = e.its
        info = self.jobs.get(e.job_id)
        if info is None or info.kind != "xyz":
            return False
        cell = (e.batch_index, e.batch_count)
        if self.cells.get(e.job_id) == cell:
            return False
        self.cells[e.job_id] = cell
        return True

    def image_saved(self, e: msg.ImageSaved) -> bool:
        """Record a saved image (a batch's grid is not one of the job's images). True when
        it is the first image of a job the grid does not show yet: the grid starts over."""
        if e.seed is not None:
            self.last_seed = e.seed
        if e.is_grid or e.index < 0:
            if self.is_plot(e.job_id):
                self.plot_grids[e.job_id] = e.path
            return False
        self.images.setdefault(e.job_id, []).append(e.path)
        if self.shown_job == e.job_id:
            return False
        self.shown_job = e.job_id
        return True

    def grid_to_show(self, e: msg.ImageSaved) -> list[str]:
        """The images an X/Y/Z plot's labelled grid puts in the image grid when it is saved:
        the plot first (selected), then its cells, as A1111's gallery shows them. Empty for
        a batch's grid (its images are shown already)."""
        if not (e.is_grid or e.index < 0) or not self.is_plot(e.job_id):
            return []
        self.shown_job = e.job_id
        return [e.path, *self.images.get(e.job_id, [])]

    def done(self, e: msg.JobDone) -> tuple[str, str]:
        """(level, log line) for a job that ended without an error."""
        self.cells.pop(e.job_id, None)
        n = len(e.paths)
        if e.cancelled and not n and e.job_id not in self.images:
            return "info", f"job #{e.job_id} removed from the queue"
        plot = self.is_plot(e.job_id)
        grid = self.plot_grids.get(e.job_id)
        if e.cancelled:
            kept = " (no grid: a plot draws it after its last cell)" if plot and not grid else ""
            return "warning", f"job #{e.job_id} interrupted: {_images(n)} kept{kept}"
        info = self.jobs.get(e.job_id)
        its = self.last_its
        speed = f", {its:.2f} it/s" if its and info and info.kind != "extras" else ""
        what = _images(n)
        if plot:
            what = f"{what} and the X/Y/Z grid" if grid else f"{what} of an X/Y/Z plot"
        return "ok", f"job #{e.job_id} done: {what} in {e.seconds:.1f} s{speed}"

    def result_to_show(self, e: msg.JobDone) -> list[str]:
        """The images an ended job puts in the grid at its end: an extras job's results (a
        generation's images come one by one, as they are saved)."""
        info = self.jobs.get(e.job_id)
        if info is None or info.kind != "extras" or not e.paths:
            return []
        self.shown_job = e.job_id
        return list(e.paths)

    def failed(self, e: msg.JobFailed) -> str:
        self.cells.pop(e.job_id, None)
        self.last_failure = e
        kept = f" ({_images(len(e.paths))} saved before it)" if e.paths else ""
        return f"job #{e.job_id} failed: {e.message}{kept}"

    # -- reading -------------------------------------------------------------------------

    def is_plot(self, job_id: int) -> bool:
        info = self.jobs.get(job_id)
        return info is not None and info.kind == "xyz"

    def summary(self, job_id: int) -> str:
        """One line for the queue: what the job makes, the cell a running X/Y/Z plot is
        making, and who queued it if not this app."""
        info = self.jobs.get(job_id)
        if info is None:
            return f"job {job_id}"
        parts = [info.summary]
        cell = self.cells.get(job_id)
        if cell is not None:
            parts.append(f"cell {min(cell[0] + 1, cell[1])}/{cell[1]}")
        if info.submitted_by:
            parts.append(info.submitted_by)
        return " · ".join(parts)
