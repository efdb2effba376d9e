"""The TUI's job bookkeeping (sdtui.tui.jobs.JobBook) without a terminal: engine events in,
what the job log says and what the grid shows out."""

from __future__ import annotations

import subprocess
import sys

from sdtui.ipc import protocol as msg
from sdtui.tui.jobs import JobBook, JobInfo


def queued_job(
    job_id: int,
    summary: str,
    *,
    by: str = "sdtui generate (pid 9)",
    state: str = "queued",
    kind: str = "generate",
) -> msg.JobInfo:
    return msg.JobInfo(job_id, kind, state, summary, 4, by, 0.0)  # type: ignore[arg-type]


def saved(job_id: int, index: int, path: str, seed: int = 100) -> msg.ImageSaved:
    return msg.ImageSaved(job_id, index, path, seed, "infotext")


def test_a_job_of_this_app_is_logged_once_and_another_clients_with_its_submitter() -> None:
    book = JobBook()
    book.submitted(1, JobInfo("txt2img", 'txt2img 512x512 20 steps "a cat"', 4, 20))
    assert book.queued(queued_job(1, "ignored")) is None  # said when submitted
    line = book.queued(queued_job(2, 'txt2img 64x64 2 steps "a dog"'))
    assert line == 'job #2 queued by sdtui generate (pid 9): txt2img 64x64 2 steps "a dog"'
    assert book.summary(1) == 'txt2img 512x512 20 steps "a cat"'
    assert book.summary(2) == 'txt2img 64x64 2 steps "a dog" · sdtui generate (pid 9)'
    assert book.summary(99) == "job 99"
    assert book.queued(queued_job(2, "again")) is None  # a second notice says nothing


def test_started_takes_the_engines_totals_and_names_who_queued_it() -> None:
    book = JobBook()
    book.queued(queued_job(3, "txt2img 64x64 2 steps", by="tui (pid 4)"))
    line = book.started(msg.JobStarted(3, images_total=6, steps_total=12))
    assert line == "job #3 started: txt2img 64x64 2 steps (queued by tui (pid 4))"
    assert (book.jobs[3].images, book.jobs[3].steps) == (6, 12)
    # a job this app never heard of still gets a line
    assert book.started(msg.JobStarted(8, 1, 2)) == "job #8 started: job 8"


def test_saved_images_fill_the_grid_of_their_job_and_a_new_job_starts_it_over() -> None:
    book = JobBook()
    assert book.image_saved(saved(1, 0, "/o/a.png", seed=11)) is True  # the grid starts over
    assert book.image_saved(saved(1, 1, "/o/b.png", seed=12)) is False  # added to it
    grid = msg.ImageSaved(1, -1, "/o/grid.png", 11, "", is_grid=True)
    assert book.image_saved(grid) is False
    assert book.images[1] == ["/o/a.png", "/o/b.png"]  # the batch grid is not one of them
    assert book.shown_job == 1 and book.last_seed == 11  # the grid's seed is the batch's first
    assert book.image_saved(saved(2, 0, "/o/c.png", seed=50)) is True
    assert book.shown_job == 2 and book.last_seed == 50


def test_the_done_line_says_images_time_and_speed_but_no_speed_for_extras() -> None:
    book = JobBook()
    book.submitted(1, JobInfo("txt2img", "t"))
    book.progressed(msg.Progress(1, 2, 2, 0, 1, its=3.456, eta_s=0))
    done = msg.JobDone(1, ("/o/a.png", "/o/b.png"), 2.04)
    assert book.done(done) == ("ok", "job #1 done: 2 images in 2.0 s, 3.46 it/s")
    book.submitted(2, JobInfo("extras", "upscale"))
    up = msg.JobDone(2, ("/o/up.png",), 1.0)
    assert book.done(up) == ("ok", "job #2 done: 1 image in 1.0 s")
    # an extras job's result goes to the grid, selected; a generation's came one by one
    assert book.result_to_show(up) == ["/o/up.png"] and book.shown_job == 2
    assert book.result_to_show(done) == []


def test_cancelled_jobs_removed_before_they_ran_or_interrupted_with_what_they_kept() -> None:
    book = JobBook()
    book.submitted(4, JobInfo("txt2img", "t"))
    assert book.done(msg.JobDone(4, (), 0.0, cancelled=True)) == (
        "info",
        "job #4 removed from the queue",
    )
    book.started(msg.JobStarted(5, 3, 6))
    book.image_saved(saved(5, 0, "/o/x.png"))
    assert book.done(msg.JobDone(5, ("/o/x.png",), 1.0, cancelled=True)) == (
        "warning",
        "job #5 interrupted: 1 image kept",
    )
    # a job that was running when this app attached was interrupted, not "removed"
    book.attached([queued_job(6, "t", state="running")])
    assert (
        book.done(msg.JobDone(6, (), 0.0, cancelled=True))[1] == "job #6 interrupted: 0 images kept"
    )


def test_a_failure_is_remembered_for_the_detail_screen_with_what_it_saved_first() -> None:
    book = JobBook()
    assert book.last_failure is None
    failure = msg.JobFailed(7, "out of memory: lower the size", "Traceback", ("/o/a.png",))
    assert (
        book.failed(failure)
        == "job #7 failed: out of memory: lower the size (1 image saved before it)"
    )
    assert book.last_failure is failure
    assert book.failed(msg.JobFailed(8, "boom")) == "job #8 failed: boom"


def test_attached_queue_keeps_what_is_known_and_reads_an_upscale_as_extras() -> None:
    book = JobBook()
    book.submitted(1, JobInfo("img2img", "mine"))
    book.attached([queued_job(1, "theirs"), queued_job(2, "upscale 2x", kind="upscale")])
    assert book.jobs[1].summary == "mine"
    assert book.jobs[2].kind == "extras"


def test_the_bookkeeping_imports_no_textual() -> None:
    code = "import sys, sdtui.tui.jobs; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
