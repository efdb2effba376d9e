"""The X/Y/Z plot as a job (issue 12, part 7): `sdtui xyz` and the daemon run A1111's plot on
the real engine (the built-in demo model): every cell saved as a normal image, then one
labelled grid whose infotext is the first cell's plus the plot's keys; a Checkpoint name axis
switches the model once per value (A1111's order); a restarted plot makes only the cells it
had not saved; a cancel keeps what is saved; every bad input is one line before anything
runs."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from sdtui.config import Settings
from sdtui.errors import UserError
from sdtui.infotext import format_infotext, parse_infotext, read_infotext
from sdtui.ipc import protocol as msg
from sdtui.jobstore import JobStore
from sdtui.outputs import OutputLayout
from sdtui.params import GenerationParams, ParamError, XYZParams
from sdtui.xyz import XYZError, cell_count, plot_of, prepare_xyz


def sdtui(env, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sdtui", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cell_pairs(path: str | Path) -> dict[str, str]:
    return parse_infotext(read_infotext(path)).pairs


TINY = dict(prompt="a black house cat", width=64, height=64, steps=2, preview_every=0, model="demo")


# -- the CLI on the real engine ----------------------------------------------------------------


def test_a_2x2_plot_over_steps_and_cfg_saves_4_cells_and_a_labelled_grid(env, demo_model):
    proc = sdtui(
        env,
        "xyz",
        "--demo",
        "a black house cat",
        "--size",
        "64x64",
        "--seed",
        "1234",
        "--x-type",
        "Steps",
        "--x-values",
        "2,3",
        "--y-type",
        "cfg scale",
        "--y-values",
        "5, 7.5",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    saved = [e for e in events if e["event"] == "ImageSaved"]
    cells = {e["index"]: e for e in saved if not e["is_grid"]}
    grids = [e for e in saved if e["is_grid"]]
    assert sorted(cells) == [0, 1, 2, 3] and len(grids) == 1 and grids[0]["index"] == -1
    # X fastest: (Steps 2, CFG 5), (3, 5), (2, 7.5), (3, 7.5); every cell a normal image
    for index, (steps, cfg) in enumerate([("2", "5"), ("3", "5"), ("2", "7.5"), ("3", "7.5")]):
        path = Path(cells[index]["path"])
        assert path.parent.parent.name == "txt2img-images" and path.name.endswith("-1234.png")
        pairs = cell_pairs(path)
        assert (pairs["Steps"], pairs["CFG scale"], pairs["Seed"]) == (steps, cfg, "1234")
        assert "Script" not in pairs  # a cell's infotext is a plain image's
    grid = Path(grids[0]["path"])
    assert grid.parent.parent.name == "txt2img-grids" and grid.name == "xyz_grid-0000.png"
    with Image.open(grid) as im:
        assert im.width > 128 and im.height > 128, "labels around the bare 2x2 of 64x64 cells"
    info = parse_infotext(read_infotext(grid))
    assert info.prompt == "a black house cat"
    pairs = info.pairs
    assert pairs["Script"] == "X/Y/Z plot"
    assert (pairs["X Type"], pairs["X Values"]) == ("Steps", "2,3")
    assert (pairs["Y Type"], pairs["Y Values"]) == ("CFG Scale", "5, 7.5")
    assert "Z Type" not in pairs
    # the first cell's infotext, the plot's keys where A1111 writes its extra params
    assert (pairs["Steps"], pairs["CFG scale"], pairs["Seed"], pairs["Model"]) == (
        "2",
        "5",
        "1234",
        "sdtui-demo",
    )
    keys = list(pairs)
    assert keys.index("Model") < keys.index("Script") < keys.index("Version")
    started = [e for e in events if e["event"] == "JobStarted"]
    assert len(started) == 1 and started[0]["images_total"] == 4 and started[0]["steps_total"] == 10
    progress = [e for e in events if e["event"] == "Progress"]
    assert progress and {e["batch_count"] for e in progress} == {4}
    done = [e for e in events if e["event"] == "JobDone"]
    assert len(done) == 1 and len(done[0]["paths"]) == 4 and not done[0]["cancelled"]


def test_prompt_sr_changes_the_prompt_per_column_and_stdout_is_the_grid(env, tmp_path, demo_model):
    out = tmp_path / "plot.png"
    proc = sdtui(
        env,
        "xyz",
        "--demo",
        "a black house cat",
        "-N",
        "no cat",
        "--size",
        "64x64",
        "--steps",
        "2",
        "--seed",
        "7",
        "--x-type",
        "Prompt S/R",
        "--x-values",
        "cat, dog, fox",
        "--vary-seeds",
        "x",
        "-o",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(out)]  # as generate -o: the copy's path
    outputs = tmp_path / "home" / "outputs"
    grids = list((outputs / "txt2img-grids").rglob("*.png"))
    assert [g.name for g in grids] == ["xyz_grid-0000.png"]
    assert out.read_bytes() == grids[0].read_bytes()
    lines = [str(grids[0])]
    assert "X/Y/Z plot: 3 of 3 cells" in proc.stderr
    cells = sorted((outputs / "txt2img-images").rglob("*.png"))
    assert len(cells) == 3
    got = [
        (
            parse_infotext(read_infotext(c)).prompt,
            parse_infotext(read_infotext(c)).negative_prompt,
            cell_pairs(c)["Seed"],
        )
        for c in cells
    ]
    # the term is replaced in both prompts; "Vary seeds for X": seed + ix
    assert got == [
        ("a black house cat", "no cat", "7"),
        ("a black house dog", "no dog", "8"),
        ("a black house fox", "no fox", "9"),
    ]
    grid = cell_pairs(lines[0])
    assert (grid["X Type"], grid["X Values"], grid["Seed"]) == ("Prompt S/R", "cat, dog, fox", "7")
    with Image.open(lines[0]) as im:
        assert im.width == 3 * 64  # no row labels: no left strip (as A1111)
        assert im.height > 64


@pytest.mark.parametrize(
    "args, words",
    [
        (["--x-type", "Stepz", "--x-values", "1,2"], ["X axis", "unknown", "Steps", "CFG Scale"]),
        (["--x-type", "Steps", "--x-values", "10,abc"], ["X axis", "'abc'", "whole number"]),
        (["--x-type", "Steps"], ["--x-values"]),
        (["--y-values", "1,2"], ["--y-type"]),
        ([], ["needs an axis", "--x-type"]),
        (["--x-type", "Steps", "--x-values", "0,5"], ["X value", "steps 0", "1 to 500"]),
        (["--x-type", "Prompt S/R", "--x-values", "dog,cow"], ["Prompt S/R", "'dog'"]),
        (["--x-type", "Seed", "--x-values", "1-2000"], ["2000 values", "more than the 1000"]),
        (
            [
                "--x-type",
                "Size",
                "--x-values",
                "64x64,4096x4096",
                "--y-type",
                "Steps",
                "--y-values",
                "1-20",
            ],
            ["megapixels", "4096x4096"],
        ),
        (
            ["--x-type", "Checkpoint name", "--x-values", "demo, nosuchmodel"],
            ["X axis", "nosuchmodel"],
        ),
        (["--x-type", "Sampler", "--x-values", "Euler, Nope"], ["unknown sampler", "'Nope'"]),
        (["--x-type", "Steps", "--x-values", "1,2", "--vary-seeds", "q"], ["--vary-seeds"]),
        (["--x-type", "Steps", "--x-values", "1,2", "--margin", "900"], ["margin", "0 to 500"]),
        (
            ["--x-type", "Steps", "--x-values", "1,2", "--style", "nope"],
            ["unknown style", "'nope'"],
        ),
    ],
)
def test_bad_plots_are_one_line_before_anything_runs(env, tmp_path, args, words):
    proc = sdtui(env, "xyz", "--demo", "a cat", "--size", "64x64", *args, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]
    assert not (tmp_path / "home" / "outputs").exists(), "nothing ran"


# -- the daemon: a Checkpoint name axis, cancel -----------------------------------------------


def settings_in(tmp_path: Path) -> Settings:
    return Settings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs")


def until_done(client, job_id: int, timeout: float = 180.0) -> tuple[object, list]:
    seen: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in client.poll(timeout=0.1):
            seen.append(e)
            if isinstance(e, msg.JobDone | msg.JobFailed) and e.job_id == job_id:
                return e, seen
    raise AssertionError(f"timed out; saw {[type(e).__name__ for e in seen][-30:]}")


def test_a_checkpoint_axis_loads_each_model_once_in_a1111s_order(attach, tmp_path, demo_model):
    ckpts = tmp_path / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    shutil.copy(demo_model.safetensors, ckpts / "alpha.safetensors")
    shutil.copy(demo_model.safetensors, ckpts / "beta.safetensors")
    client = attach(settings_in(tmp_path))
    base = GenerationParams(**{**TINY, "model": "alpha"}, seed=3)
    job = client.submit_xyz(
        XYZParams(base, x=("Checkpoint name", "alpha, beta"), y=("Prompt S/R", "cat,dog"))
    )
    done, seen = until_done(client, job)
    assert isinstance(done, msg.JobDone) and len(done.paths) == 4, done
    loads = [e.name for e in seen if isinstance(e, msg.ModelLoaded) and e.name != "sdtui-demo"]
    assert loads == ["alpha", "beta"], "the costly axis outermost: one load per model"
    cells = [e for e in seen if isinstance(e, msg.ImageSaved) and e.job_id == job and not e.is_grid]
    assert [e.index for e in cells] == [0, 2, 1, 3]  # X (the checkpoint) changes least often
    by_index = {e.index: cell_pairs(e.path) for e in cells}
    assert [by_index[i]["Model"] for i in range(4)] == ["alpha", "beta", "alpha", "beta"]
    prompts = [
        parse_infotext(read_infotext(e.path)).prompt for e in sorted(cells, key=lambda e: e.index)
    ]
    assert prompts == [
        "a black house cat",
        "a black house cat",
        "a black house dog",
        "a black house dog",
    ]
    grid = next(e for e in seen if isinstance(e, msg.ImageSaved) and e.is_grid)
    pairs = cell_pairs(grid.path)
    assert (pairs["Model"], pairs["X Type"], pairs["Y Type"]) == (
        "alpha",
        "Checkpoint name",
        "Prompt S/R",
    )
    info = client.query()
    assert not info.jobs and info.recent[0].kind == "xyz" and info.recent[0].images_total == 4


def test_a_plot_the_daemon_cannot_run_is_refused_in_one_sentence(attach, tmp_path):
    client = attach(settings_in(tmp_path))
    with pytest.raises(UserError, match="Prompt S/R did not find 'dog'"):
        client.submit_xyz(XYZParams(GenerationParams(**TINY), x=("Prompt S/R", "dog, cow")))
    with pytest.raises(ParamError, match="one image per cell"):
        client.submit_xyz(XYZParams(GenerationParams(**TINY, batch_size=2), x=("Steps", "1,2")))


def test_cancel_keeps_the_saved_cells_and_draws_no_grid(attach, tmp_path):
    client = attach(settings_in(tmp_path))
    base = GenerationParams(**{**TINY, "steps": 40, "width": 128, "height": 128}, seed=11)
    job = client.submit_xyz(XYZParams(base, x=("Seed", "11-16")))
    seen: list = []
    deadline = time.monotonic() + 180
    while not any(isinstance(e, msg.ImageSaved) and e.job_id == job for e in seen):
        assert time.monotonic() < deadline
        seen.extend(client.poll(timeout=0.1))
    client.cancel(job)
    done, rest = until_done(client, job)
    seen += rest
    assert isinstance(done, msg.JobDone) and done.cancelled
    saved = [e for e in seen if isinstance(e, msg.ImageSaved) and e.job_id == job]
    assert saved and not any(e.is_grid for e in saved) and len(saved) < 6
    assert all(Path(e.path).exists() for e in saved)
    assert list(done.paths) == [e.path for e in sorted(saved, key=lambda e: e.index)]


# -- the job, in-process: order, restart, failed cells (a stand-in for the model) ---------------


class FakeCells:
    """run_cell without a model: a flat image whose colour is the cell's steps, saved and
    announced as run_generation does; ``fail`` names cells (by steps) that raise."""

    def __init__(self, fail: tuple[int, ...] = ()) -> None:
        self.made: list[GenerationParams] = []
        self.fail = fail

    def __call__(self, p: GenerationParams, ctx) -> msg.JobDone:
        self.made.append(p)
        if p.steps in self.fail:
            raise UserError(f"no luck with {p.steps} steps")
        ctx.emit(msg.JobStarted(ctx.job_id, 1, p.steps))
        ctx.emit(msg.Progress(ctx.job_id, p.steps, p.steps, 0, 1, 10.0, 0.0))
        info = format_infotext(
            p.prompt, p.negative_prompt, p.infotext_pairs(seed=p.seed, model_name="fake")
        )
        path = ctx.layout.save_image(
            Image.new("RGB", (p.width, p.height), (p.steps * 20, 0, 0)), "txt2img", p.seed, info
        )
        ctx.emit(msg.ImageSaved(ctx.job_id, 0, str(path), p.seed, info))
        return msg.JobDone(ctx.job_id, (str(path),), 0.1)


def make_ctx(tmp_path: Path, done: dict[int, str] | None = None):
    from sdtui.engine.job import JobContext, JobControl

    events: list = []
    ctx = JobContext(
        job_id=5,
        emit=events.append,
        control=JobControl(),
        layout=OutputLayout(tmp_path / "out"),
        done=dict(done or {}),
    )
    return ctx, events


def test_run_xyz_relays_each_cell_as_the_plots_and_a_restart_makes_only_the_rest(tmp_path):
    from sdtui.engine.xyz import run_xyz

    params = prepare_xyz(
        XYZParams(GenerationParams(**TINY, seed=5), x=("Steps", "1-3"), y=("CFG Scale", "6,8"))
    )
    ctx, events = make_ctx(tmp_path)
    cells = FakeCells()
    done = run_xyz(params, ctx, cells)
    assert [(p.steps, p.cfg_scale) for p in cells.made] == [
        (1, 6),
        (2, 6),
        (3, 6),
        (1, 8),
        (2, 8),
        (3, 8),
    ]
    assert [type(e).__name__ for e in events if not isinstance(e, msg.Log)].count("JobStarted") == 1
    progress = [e for e in events if isinstance(e, msg.Progress)]
    assert [(e.batch_index, e.batch_count) for e in progress] == [(i, 6) for i in range(6)]
    assert progress[0].eta_s == pytest.approx((12 - 1) / 10.0)
    saved = [e for e in events if isinstance(e, msg.ImageSaved)]
    assert [e.index for e in saved] == [0, 1, 2, 3, 4, 5, -1] and saved[-1].is_grid
    assert len(done.paths) == 6 and not done.cancelled
    grid = Path(saved[-1].path)
    assert grid.name == "xyz_grid-0000.png" and grid.parent.parent.name == "txt2img-grids"

    # the daemon died after cells 0, 1 and 3 were recorded: only 2, 4 and 5 are made again,
    # and the grid has the saved ones, read back from disk
    earlier = {i: saved[i].path for i in (0, 1, 3)}
    ctx2, events2 = make_ctx(tmp_path, earlier)
    again = FakeCells()
    done2 = run_xyz(params, ctx2, again)
    assert [(p.steps, p.cfg_scale) for p in again.made] == [(3, 6), (2, 8), (3, 8)]
    grid2 = next(e for e in events2 if isinstance(e, msg.ImageSaved) and e.is_grid)
    assert Path(grid2.path).name == "xyz_grid-0001.png"
    with Image.open(grid) as a, Image.open(grid2.path) as b:
        assert a.tobytes() == b.tobytes()
    assert len(done2.paths) == 6
    assert parse_infotext(grid2.infotext).pairs == parse_infotext(saved[-1].infotext).pairs


def test_a_failed_cell_is_black_and_said_and_all_failed_fails(tmp_path):
    from sdtui.engine.xyz import run_xyz

    params = prepare_xyz(XYZParams(GenerationParams(**TINY, seed=5), x=("Steps", "1,2")))
    ctx, events = make_ctx(tmp_path)
    done = run_xyz(params, ctx, FakeCells(fail=(1,)))
    assert len(done.paths) == 1
    errors = [e.text for e in events if isinstance(e, msg.Log) and e.level == "error"]
    assert len(errors) == 1 and "X Steps: 1" in errors[0] and "no luck with 1 steps" in errors[0]
    grid = next(e for e in events if isinstance(e, msg.ImageSaved) and e.is_grid)
    # cell (0, 0, 0) failed: the grid's infotext is its params', with the plot's keys
    pairs = parse_infotext(grid.infotext).pairs
    assert pairs["Steps"] == "1" and pairs["Script"] == "X/Y/Z plot"
    ctx, _ = make_ctx(tmp_path / "b")
    with pytest.raises(UserError, match="no luck with 1 steps"):
        run_xyz(params, ctx, FakeCells(fail=(1, 2)))


def test_a_cancel_between_cells_stops_without_a_grid(tmp_path):
    from sdtui.engine.xyz import run_xyz

    params = prepare_xyz(XYZParams(GenerationParams(**TINY, seed=5), x=("Steps", "1-4")))
    ctx, events = make_ctx(tmp_path)
    cells = FakeCells()

    def cancel_after_two(p, cell_ctx):
        result = cells(p, cell_ctx)
        if len(cells.made) == 2:
            ctx.control.cancel.set()
        return result

    done = run_xyz(params, ctx, cancel_after_two)
    assert done.cancelled and len(done.paths) == 2
    assert not any(isinstance(e, msg.ImageSaved) and e.is_grid for e in events)


# -- the words: params, queue, seeds -----------------------------------------------------------


def test_prepare_fixes_seeds_once_and_a_restart_plots_the_same_cells() -> None:
    params = XYZParams(
        GenerationParams(**TINY), x=("Seed", "-1, 5, -1"), y=("Var. strength", "0, 0.5")
    )
    ready = prepare_xyz(params, rng=random.Random(3))
    assert ready.base.seed >= 0 and ready.base.subseed >= 0  # A1111 fix_seed: both
    fixed = [int(v) for v in ready.fixed_values[0].split(", ")]
    assert fixed[1] == 5 and fixed[0] >= 0 and fixed[2] >= 0
    assert prepare_xyz(ready) == ready  # the daemon checks again: nothing moves
    assert plot_of(ready).x.values == tuple(fixed)
    pairs = plot_of(ready).infotext_pairs()
    assert pairs["X Values"] == "-1, 5, -1" and pairs["Fixed X Values"] == ready.fixed_values[0]
    keep = prepare_xyz(params.replace(no_fixed_seeds=True))
    assert keep.base.seed == -1 and keep.fixed_values == ("", "", "")
    assert cell_count(ready) == 6


def test_an_xyz_job_survives_the_queue_file(tmp_path) -> None:
    store = JobStore.open(tmp_path / "q.sqlite3")
    params = prepare_xyz(
        XYZParams(
            GenerationParams(**TINY),
            x=("Steps", "1-3"),
            z=("Sampler", "Euler, DDIM"),
            vary_seeds=(False, True, True),
            margin=4,
            draw_legend=False,
        )
    )
    job = store.add_job("xyz", params, {"outputs_dir": "/o"}, "test")
    back = store.job(job.id)
    assert back is not None and back.kind == "xyz" and back.params == params
    assert back.images_total == 6
    assert back.summary.startswith("txt2img X/Y/Z plot Steps x Sampler: 64x64")
    store.close()


def test_xyz_params_refuse_what_a_plot_cannot_take() -> None:
    with pytest.raises(XYZError, match="Z axis: unknown X/Y/Z axis type"):
        prepare_xyz(XYZParams(GenerationParams(**TINY), z=("Nope", "1")))
    with pytest.raises(ParamError, match="margin"):
        prepare_xyz(XYZParams(GenerationParams(**TINY), x=("Steps", "1"), margin=-1))
    with pytest.raises(ValueError, match="does not know: wobble"):
        XYZParams.from_dict({"base": {}, "wobble": 1})
