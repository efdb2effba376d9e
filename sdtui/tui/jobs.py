"""What the app knows of the engine's jobs: each job's kind and summary, the images each one
saved, which job the image grid shows, the last seed, the last failure and the last it/s.

Plain Python (no textual): the main screen feeds it the engine's events and shows what it
answers, so the bookkeeping and the words of the job log are tested without a terminal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sdtui.ipc import protocol as msg


@dataclass
class JobInfo:
    kind: str  # txt2img | img2img | extras
    summary: str
    images: int = 1
    steps: int = 0
    submitted_by: str = ""  # another client's job: who queued it

    @classmethod
    def from_queue(cls, job: msg.JobInfo) -> JobInfo:
        kind = "extras" if job.kind == "upscale" else (job.summary.split() or ["txt2img"])[0]
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
        by = f" (queued by {info.submitted_by})" if info.submitted_by else ""
        return f"job #{e.job_id} started: {info.summary}{by}"

    def progressed(self, e: msg.Progress) -> None:
        self.last_its = e.its

    def image_saved(self, e: msg.ImageSaved) -> bool:
        """Record a saved image (a batch's grid is not one of the job's images). True when
        it is the first image of a job the grid does not show yet: the grid starts over."""
        if e.seed is not None:
            self.last_seed = e.seed
        if e.is_grid or e.index < 0:
            return False
        self.images.setdefault(e.job_id, []).append(e.path)
        if self.shown_job == e.job_id:
            return False
        self.shown_job = e.job_id
        return True

    def done(self, e: msg.JobDone) -> tuple[str, str]:
        """(level, log line) for a job that ended without an error."""
        n = len(e.paths)
        if e.cancelled and not n and e.job_id not in self.images:
            return "info", f"job #{e.job_id} removed from the queue"
        if e.cancelled:
            return "warning", f"job #{e.job_id} interrupted: {_images(n)} kept"
        info = self.jobs.get(e.job_id)
        its = self.last_its
        speed = f", {its:.2f} it/s" if its and info and info.kind != "extras" else ""
        return "ok", f"job #{e.job_id} done: {_images(n)} in {e.seconds:.1f} s{speed}"

    def result_to_show(self, e: msg.JobDone) -> list[str]:
        """The images an ended job puts in the grid at its end: an extras job's results (a
        generation's images come one by one, as they are saved)."""
        info = self.jobs.get(e.job_id)
        if info is None or info.kind != "extras" or not e.paths:
            return []
        self.shown_job = e.job_id
        return list(e.paths)

    def failed(self, e: msg.JobFailed) -> str:
        self.last_failure = e
        kept = f" ({_images(len(e.paths))} saved before it)" if e.paths else ""
        return f"job #{e.job_id} failed: {e.message}{kept}"

    # -- reading -------------------------------------------------------------------------

    def summary(self, job_id: int) -> str:
        """One line for the queue: what the job makes, and who queued it if not this app."""
        info = self.jobs.get(job_id)
        if info is None:
            return f"job {job_id}"
        return f"{info.summary} · {info.submitted_by}" if info.submitted_by else info.summary
