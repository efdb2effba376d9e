"""The TUI end to end: Pilot drives the real app against a real engine process running the
tiny demo model on the CPU, and the tests check the files written in the outputs folders
and their infotext, not only the widgets. Snapshots use an idle fake engine, a fixed clock
and recorded GPU readings, so they are stable."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from palette import run_command
from PIL import Image
from textual.widgets import Input

from sdtui.config import Settings
from sdtui.infotext import parse_infotext, read_infotext
from sdtui.ipc import protocol as msg
from sdtui.params import RESIZE_MODES, GenerationParams
from sdtui.samplers import FLOW_SAMPLER_NAMES, SAMPLER_NAMES
from sdtui.tui import form_spec, graphics
from sdtui.tui.app import SdtuiApp
from sdtui.tui.form_spec import FieldSpec
from sdtui.tui.form_state import (
    FormState,
    form_fields,
    from_json,
    load_form_state,
    parse_form,
    save_form_state,
    to_json,
)
from sdtui.tui.launch import initial_form
from sdtui.tui.widgets.image_view import ImageGrid
from sdtui.tui.widgets.job_log import JobLog
from sdtui.tui.widgets.prompt_editor import PromptArea
from sdtui.tui.widgets.queue_view import QueueView
from sdtui.tui.widgets.settings_form import SettingsForm
from sdtui.tui.widgets.status_bar import StatusBar

TINY = GenerationParams(model="demo", steps=2, width=64, height=64, sampler="Euler", seed=1234)


@pytest.fixture(autouse=True)
def tui_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Every folder in tmp; half-cell images (no terminal to probe in a test)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SDTUI_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SDTUI_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SDTUI_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("SDTUI_OUTPUTS_DIR", str(tmp_path / "outputs"))
    graphics.set_mode("halfcell", "tests")
    return Settings(outputs_dir=tmp_path / "outputs", models_dir=tmp_path / "models")


# -- helpers ---------------------------------------------------------------------------------


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test with asyncio.run (no pytest async plugin needed)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


async def wait_for(pilot: Any, condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            log = pilot.app.main.query_one(JobLog).plain
            raise AssertionError(f"timed out; job log:\n{log}")
        await pilot.pause(0.1)


def log_text(app: SdtuiApp) -> str:
    return app.main.query_one(JobLog).plain


def pngs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png")) if folder.exists() else []


def done_jobs(app: SdtuiApp) -> int:
    return log_text(app).count(" done: ")


async def type_prompt(pilot: Any, text: str) -> None:
    area = pilot.app.main.query_one("#prompt", PromptArea)
    area.focus()
    area.load_text("")
    await pilot.press(*text)


class FakeHost:
    """An idle engine with DaemonClient's shape: records what the app submits."""

    def __init__(self, state: str = "ready") -> None:
        self.pending: dict[int, Any] = {}
        self.running_job: int | None = None
        self.state = state
        self.pid: int | None = None
        self.events: list[Any] = []
        self.cancelled: list[int | None] = []
        self.loaded: list[str] = []
        self.memory_modes: list[str] = []
        self._next = 0

    @property
    def queued(self) -> list[int]:
        return [j for j in self.pending if j != self.running_job]

    def submit(self, params: Any) -> int:
        params.validated()
        self._next += 1
        self.pending[self._next] = params
        return self._next

    def submit_upscale(self, params: Any) -> int:
        return self.submit(params)

    def submit_xyz(self, params: Any) -> int:
        from sdtui.xyz import prepare_xyz

        self._next += 1
        self.pending[self._next] = prepare_xyz(params)
        return self._next

    def cancel(self, job_id: int | None = None) -> None:
        self.cancelled.append(job_id)

    def skip(self) -> None:
        pass

    def load_model(self, model: str) -> None:
        self.loaded.append(model)

    def set_memory_mode(self, mode: str) -> None:
        self.memory_modes.append(mode)

    def restart(self) -> list[int]:
        return list(self.pending)

    def poll(self, timeout: float = 0.0) -> list[Any]:
        events, self.events = self.events, []
        return events


def fake_app(settings: Settings, **kwargs: Any) -> SdtuiApp:
    kwargs.setdefault("form_state", FormState(params=TINY.replace(seed=42)))
    return SdtuiApp(
        kwargs.pop("host", FakeHost()),
        settings,
        gpu_interval=None,
        clock=lambda: "12:00:00",
        remember_form=kwargs.pop("remember_form", False),
        **kwargs,
    )


@pytest.fixture
def engine(tui_env: Settings, attach: Any) -> Any:
    """A real engine daemon on the demo model, attached before the app runs (as launch.run_tui
    does); stopped after the test."""
    return attach(tui_env, who="tui")


# -- the whole workflow on the demo model ---------------------------------------------------


@pytest.mark.slow
@run_async
async def test_workflow_txt2img_batch_img2img_2x_extras_full_view(
    engine: Any, tui_env: Settings
) -> None:
    out = tui_env.outputs
    form = FormState(params=TINY.replace(batch_size=2, batch_count=3))
    app = SdtuiApp(engine, tui_env, form_state=form, gpu_interval=None, remember_form=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await type_prompt(pilot, "a red cube")
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: done_jobs(app) == 1, 90)

        # six images on disk, each with its infotext; the grid shows them
        images = pngs(out / "txt2img-images")
        assert len(images) == 6
        info = parse_infotext(read_infotext(images[0]) or "")
        assert info.prompt == "a red cube"
        assert info.pairs["Size"] == "64x64" and info.pairs["Steps"] == "2"
        grid = app.main.query_one(ImageGrid)
        assert sorted(grid.paths) == [str(p) for p in images]
        assert "saved " in log_text(app) and "loaded sdtui-demo" in log_text(app)

        # pick the second image, img2img at twice its size with denoise 0.75
        grid.focus()
        await pilot.press("right")
        await pilot.pause()
        picked = grid.paths[1]
        assert app.main.selected_path == picked
        await pilot.press("f3")
        await pilot.pause()
        state = app.main.query_one(SettingsForm).state
        assert (state.mode, state.params.width, state.params.height) == ("img2img", 128, 128)
        assert state.params.denoising_strength == 0.75 and state.params.init_image == picked
        app.main.set_form_field("batch_count", "1")
        app.main.set_form_field("batch_size", "1")
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: done_jobs(app) == 2, 90)
        [i2i] = pngs(out / "img2img-images")
        info = parse_infotext(read_infotext(i2i) or "")
        assert info.pairs["Size"] == "128x128" and info.pairs["Denoising strength"] == "0.75"
        assert Image.open(i2i).size == (128, 128)
        assert app.main.selected_path == str(i2i)

        # send the result to extras and upscale it with Lanczos
        await pilot.press("f4")
        await pilot.pause()
        app.main.set_form_field("upscaler", "Lanczos")
        app.main.set_form_field("upscale_scale", "2")
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: done_jobs(app) == 3, 60)
        [up] = pngs(out / "extras-images")
        assert Image.open(up).size == (256, 256)
        # A1111 keeps the source's parameters and adds a "postprocessing" chunk
        assert parse_infotext(read_infotext(up) or "").pairs["Size"] == "128x128"
        assert "Postprocess upscaler: Lanczos" in Image.open(up).text["postprocessing"]

        # full view of the upscaled image, then back
        await pilot.press("f6")
        await pilot.pause()
        assert type(app.screen).__name__ == "FullViewScreen"
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.main

        # queue: a second job waits behind a long first one and can be removed; then the
        # first is interrupted (long enough that no machine finishes it first)
        app.main.set_form_field("mode", "txt2img")
        app.main.set_form_field("steps", "500")
        app.main.set_form_field("batch_count", "50")  # minutes of work: it only ends by interrupt
        app.main.set_size(64, 64)
        await pilot.press("ctrl+g")
        app.main.set_form_field("steps", "2")
        app.main.set_form_field("batch_count", "1")
        await pilot.press("ctrl+g")
        await pilot.pause()
        queue = app.main.query_one(QueueView)
        assert len(queue.entries) == 2, log_text(app)
        second = queue.entries[1].job_id
        await pilot.press("f10")
        await pilot.press("down", "delete")
        await wait_for(pilot, lambda: second not in engine.pending, 30)
        # the engine's queue changes first; the line comes with the daemon's event after it
        await wait_for(pilot, lambda: f"job #{second} removed from the queue" in log_text(app), 30)
        await wait_for(pilot, lambda: engine.running_job is not None, 60)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not engine.pending, 120)
        await wait_for(pilot, lambda: "interrupted" in log_text(app), 30)
        n = len(pngs(out / "txt2img-images"))
        assert n <= 6 + 1, f"the interrupted job stopped at once, found {n}"
        assert "job #5" not in log_text(app).split("removed from the queue")[-1]


@pytest.mark.slow
@run_async
async def test_daemon_killed_f12_starts_a_new_one_and_the_queue_resumes(
    engine: Any, tui_env: Settings
) -> None:
    import os
    import signal

    app = SdtuiApp(
        engine, tui_env, form_state=FormState(params=TINY), gpu_interval=None, remember_form=False
    )
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: "attached to the engine daemon" in log_text(app), 30)
        await type_prompt(pilot, "before the crash")
        app.main.set_form_field("steps", "12")
        app.main.set_form_field("batch_count", "3")
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: "saved " in log_text(app), 90)
        old_pid = engine.pid
        os.kill(old_pid, signal.SIGKILL)  # the OOM killer, say
        await wait_for(pilot, lambda: app.main.engine_state == "crashed", 60)
        assert app.main.query_one(StatusBar).line.state == "crashed"
        assert "press F12" in log_text(app) and "the queue is kept on disk" in log_text(app)
        await pilot.press("ctrl+g")  # no daemon to take it: said, and the form is kept
        await pilot.pause()
        assert "not generated: the engine daemon is not running" in log_text(app)
        await pilot.press("f12")
        await wait_for(pilot, lambda: "engine daemon started (pid" in log_text(app), 60)
        assert engine.pid != old_pid
        await wait_for(pilot, lambda: done_jobs(app) == 1, 120)
        # the job resumed at its next image: each seed once, none made twice
        images = pngs(tui_env.outputs / "txt2img-images")
        assert sorted(p.name.split("-", 1)[1] for p in images) == [
            "1234.png",
            "1235.png",
            "1236.png",
        ]
        assert parse_infotext(read_infotext(images[0]) or "").prompt == "before the crash"


@pytest.mark.slow
@run_async
async def test_a_cli_job_shows_in_the_tui_queue_with_who_queued_it(
    engine: Any, tui_env: Settings, daemon_paths: Any, tmp_path: Path
) -> None:
    """A second shell runs `sdtui generate --detach` against the daemon this app is attached
    to: the job shows in the app's queue and log with its submitter, and its images in the
    grid, as the app's own would."""
    import os
    import subprocess
    import sys

    app = SdtuiApp(
        engine, tui_env, form_state=FormState(params=TINY), gpu_interval=None, remember_form=False
    )
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: "attached to the engine daemon" in log_text(app), 30)
        # the app's own long job keeps the CLI's waiting in the queue
        app.main.set_form_field("steps", "300")
        app.main.set_form_field("batch_count", "20")
        await type_prompt(pilot, "the app's job")
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: "started" in log_text(app), 60)
        env = {
            **os.environ,
            "SDTUI_RUNTIME_DIR": str(daemon_paths.folder),
            "SDTUI_STATE_DIR": str(daemon_paths.queue.parent),
            "SDTUI_HOME": str(tmp_path / "cli-home"),
        }
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "sdtui",
                "generate",
                "--demo",
                "from another shell",
                "--steps",
                "2",
                "--size",
                "64x64",
                "--seed",
                "77",
                "--detach",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        cli_job = int(proc.stdout)
        queue = app.main.query_one(QueueView)
        await wait_for(pilot, lambda: cli_job in [e.job_id for e in queue.entries], 60)
        await wait_for(
            pilot, lambda: f"job #{cli_job} queued by sdtui generate (pid" in log_text(app), 20
        )
        entry = app.main.job_summary(cli_job)
        assert '"from another shell"' in entry and "sdtui generate (pid" in entry
        await pilot.press("escape")  # interrupt the app's job: the CLI's runs next
        await wait_for(pilot, lambda: f"job #{cli_job} started" in log_text(app), 60)
        assert 'from another shell" (queued by sdtui generate (pid' in log_text(app)
        await wait_for(pilot, lambda: f"job #{cli_job} done" in log_text(app), 60)
        [image] = [
            p for p in pngs(tui_env.outputs / "txt2img-images") if p.name.endswith("-77.png")
        ]
        assert app.main.selected_path == str(image)


# -- the form, remembered ---------------------------------------------------------------------


@run_async
async def test_form_comes_back_at_next_start(tui_env: Settings) -> None:
    args = argparse.Namespace(demo=False, model=None, graphics=None)
    app = fake_app(tui_env, form_state=initial_form(args, tui_env), remember_form=True)
    async with app.run_test() as pilot:
        await type_prompt(pilot, "a lighthouse, (storm:1.2)")
        app.main.set_form_field("steps", "33")
        app.main.set_form_field("sampler", "DPM++ 2M")
        app.main.set_size(768, 512)
        await pilot.pause()
        await pilot.press("ctrl+q")
    state = load_form_state()
    assert state is not None and state.params.steps == 33

    app2 = fake_app(tui_env, form_state=initial_form(args, tui_env))
    async with app2.run_test() as pilot:
        await pilot.pause()
        assert app2.main.query_one("#prompt", PromptArea).text == "a lighthouse, (storm:1.2)"
        form = app2.main.query_one(SettingsForm)
        raw = form.raw_values()
        assert (raw["steps"], raw["sampler"], raw["width"], raw["height"]) == (
            "33",
            "DPM++ 2M",
            "768",
            "512",
        )


@run_async
async def test_generate_saves_the_form_and_submits(tui_env: Settings) -> None:
    host = FakeHost()
    app = fake_app(tui_env, host=host, remember_form=True)
    async with app.run_test() as pilot:
        await type_prompt(pilot, "a cat")
        await pilot.press("ctrl+g")
        await pilot.pause()
    [params] = host.pending.values()
    assert params.prompt == "a cat" and params.width == 64
    # previews no faster than the screen redraws them: each one waits for the GPU
    from sdtui.tui.screens.main import PREVIEW_INTERVAL

    assert params.preview_interval == PREVIEW_INTERVAL > 0
    saved = load_form_state()
    assert saved is not None and saved.params.prompt == "a cat"


def test_form_state_json_round_trip_and_bad_values(tmp_path: Path) -> None:
    state = FormState(
        mode="img2img",
        params=TINY.replace(
            prompt="p", init_image="/x.png", enable_hr=True, hr_scale=1.5, vae="None", clip_skip=2
        ),
        upscale_scale=3.0,
        memory_mode="low",
    )
    assert from_json(to_json(state)) == state
    junk = {"mode": "paint", "params": {"steps": "many", "cfg_scale": 5, "width": True, "nope": 1}}
    loaded = from_json(junk)
    assert loaded.mode == "txt2img" and loaded.params.steps == 20 and loaded.params.cfg_scale == 5.0
    path = tmp_path / "form.json"
    assert save_form_state(state, path) == path
    assert load_form_state(path) == state
    path.write_text("{broken")
    assert load_form_state(path) is None


def test_parse_form_reports_each_field() -> None:
    state, errors = parse_form({"steps": "abc", "width": "65", "cfg_scale": "7.5"}, FormState())
    assert "not a whole number" in errors["steps"]
    assert "multiple of 8" in errors["width"]
    assert state.params.cfg_scale == 7.5 and state.params.steps == 20
    _, errors = parse_form({"mode": "img2img", "init_image": "/does/not/exist.png"}, FormState())
    assert "does not exist" in errors["init_image"]


# -- the form's one table of fields ------------------------------------------------------------


def test_the_form_table_names_real_fields_and_the_keys_a1111_writes() -> None:
    names = [spec.name for spec in form_spec.FIELDS]
    assert len(names) == len(set(names))
    params = {f.name for f in dataclasses.fields(GenerationParams)}
    # the styles are chosen in the prompt area (alt+s), as the prompts are typed there
    own = {f.name for f in dataclasses.fields(FormState)} - {"params", "styles"}
    assert set(names) <= params | own and own <= set(names)
    # each infotext key is one the writer writes for a job that sets every field
    job = GenerationParams(
        steps=21, cfg_scale=6.5, vae="x.safetensors", clip_skip=2, subseed=9,
        subseed_strength=0.25, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=3,
    )  # fmt: skip
    written = job.infotext_pairs(seed=5, model_name="m", model_hash="abc")
    # and an img2img inpaint job with face restoration, the refiner and rescaled CFG
    inpaint = GenerationParams(
        init_image="/i.png", mask="/m.png", mask_blur=8, inpaint_full_res=True,
        inpainting_fill="fill", restore_faces=True, refiner_checkpoint="r",
        refiner_switch_at=0.7, cfg_rescale=0.5,
    )  # fmt: skip
    written |= inpaint.infotext_pairs(seed=5, model_name="m", model_hash="abc")
    # Flux dev's guidance, which the engine writes for Flux dev (sdtui.engine.dit)
    written["Distilled CFG Scale"] = 3.5
    assert {s.infotext for s in form_spec.FIELDS if s.infotext} <= set(written)
    # a number's key reads back into its field, as the form fills it from a PNG
    for key, (name, kind) in form_spec.infotext_numbers().items():
        assert isinstance(
            getattr(GenerationParams.from_infotext_fields("", "", {key: "1"}), name), kind
        )


# two rows a test adds to the table: an img2img choice and a number in the "More" section
RESIZE = FieldSpec(
    "resize_mode", "Resize", "choice", shown="i2i", choices=RESIZE_MODES, closed=True
)
PREVIEW = FieldSpec("preview_every", "Preview", "int", section="more", word="preview step")


@pytest.fixture
def two_more_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(form_spec, "FIELDS", (*form_spec.FIELDS, RESIZE, PREVIEW))


@pytest.mark.usefixtures("two_more_rows")
def test_a_row_added_to_the_table_is_parsed_shown_and_remembered(tmp_path: Path) -> None:
    assert (RESIZE.default, PREVIEW.default) == ("just resize", 1)  # GenerationParams' own
    typed = {"resize_mode": "crop and resize", "preview_every": "4"}
    state, errors = parse_form(typed, FormState())
    assert errors == {}
    assert (state.params.resize_mode, state.params.preview_every) == ("crop and resize", 4)
    shown = form_fields(state)
    assert (shown["resize_mode"], shown["preview_every"]) == ("crop and resize", "4")
    # a choice outside its closed list keeps the value; a bad number is named in words
    kept, errors = parse_form({"resize_mode": "stretch", "preview_every": "often"}, state)
    assert (kept.params.resize_mode, kept.params.preview_every) == ("crop and resize", 4)
    assert errors == {"preview_every": "preview step 'often' is not a whole number"}

    path = tmp_path / "form.json"
    assert save_form_state(state, path) == path
    assert load_form_state(path) == state  # resize_mode and preview_every included
    # restoring checks the table's choices: a hand-edited value not in them is dropped
    edited = from_json({"params": {"resize_mode": "stretch", "preview_every": 2}})
    assert (edited.params.resize_mode, edited.params.preview_every) == ("just resize", 2)


@pytest.mark.usefixtures("two_more_rows")
@run_async
async def test_a_row_added_to_the_table_is_in_the_form(tui_env: Settings) -> None:
    from textual.widgets import Collapsible, Label, Select

    app = fake_app(tui_env)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        form = app.main.form
        resize = form.query_one("#resize_mode", Select)
        assert resize.value == "just resize"
        row = resize.parent
        assert row is not None and "i2i" in row.classes
        assert [str(label.render()) for label in row.query(Label)] == ["Resize"]
        assert not row.display  # txt2img: an img2img row is hidden
        app.main.set_form_field("mode", "img2img")
        app.main.set_form_field("resize_mode", "resize and fill")
        app.main.set_form_field("preview_every", "3")
        await pilot.pause()
        assert row.display
        assert form.raw_values()["resize_mode"] == "resize and fill"
        assert (form.state.params.resize_mode, form.state.params.preview_every) == (
            "resize and fill",
            3,
        )
        # in its folded section, which unfolds to show the field's problem
        more = form.query_one("#more", Collapsible)
        assert form.query_one("#preview_every") in more.query("#preview_every")
        app.main.set_form_field("preview_every", "x")
        await pilot.pause()
        assert "not a whole number" in form.errors["preview_every"]
        assert form.query_one("#preview_every-error", Label).has_class("shown")
        form.reveal("preview_every")
        await pilot.pause()
        assert not more.collapsed
        form.load(FormState(params=TINY.replace(resize_mode="crop and resize", preview_every=7)))
        await pilot.pause()
        assert (resize.value, form.raw_values()["preview_every"]) == ("crop and resize", "7")


# -- inpainting, outpainting, faces, the refiner, rescaled CFG (issue 12) ---------------------


def test_parse_form_reads_the_inpaint_faces_refiner_and_extras_rows(tmp_path: Path) -> None:
    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64)).save(init)
    Image.new("L", (64, 64), 255).save(mask)
    typed = {
        "mode": "img2img", "init_image": str(init), "mask": f" {mask} ", "mask_blur": "8",
        "inpainting_fill": "latent noise", "inpaint_full_res": "1",
        "inpaint_full_res_padding": "16", "inpainting_mask_invert": "1",
        "outpaint_pixels": "64", "outpaint_sides": "left,right", "restore_faces": "1",
        "face_restoration_model": "GFPGAN", "code_former_weight": "0.3",
        "refiner_checkpoint": "refiner-xl", "refiner_switch_at": "0.6", "cfg_rescale": "0.7",
        "gfpgan_visibility": "0.5", "codeformer_visibility": "1", "codeformer_weight": "0.2",
        "upscale_first": "1",
    }  # fmt: skip
    state, errors = parse_form(typed, FormState())
    assert errors == {}
    gen = state.generation_params()
    assert gen.inpainting and (gen.init_image, gen.mask) == (str(init), str(mask))
    assert (gen.mask_blur, gen.inpainting_fill, gen.inpaint_full_res) == (8, "latent noise", True)
    assert (gen.inpaint_full_res_padding, gen.inpainting_mask_invert) == (16, True)
    assert (gen.outpaint_pixels, gen.outpaint_side_list) == (64, ("left", "right"))
    assert (gen.restore_faces, gen.face_restoration_model, gen.code_former_weight) == (
        True,
        "GFPGAN",
        0.3,
    )
    assert (gen.refiner_checkpoint, gen.refiner_switch_at, gen.cfg_rescale) == (
        "refiner-xl",
        0.6,
        0.7,
    )
    assert gen.validated() is not None
    written = gen.infotext_pairs(seed=1)
    assert written["Mask blur"] == 8 and written["Masked content"] == "latent noise"
    assert written["Face restoration"] == "GFPGAN" and written["CFG Rescale"] == 0.7
    # txt2img: the mask and the outpainting stay in the form but are not sent
    t2i = state.replace(mode="txt2img")
    assert t2i.errors() == {}
    assert (t2i.generation_params().mask, t2i.generation_params().outpaint_pixels) == (None, 0)
    assert t2i.params.mask == str(mask)
    # no refiner: the empty choice
    assert parse_form({"refiner_checkpoint": ""}, state)[0].params.refiner_checkpoint is None
    # extras: the face restoration fields reach UpscaleParams
    up = state.replace(mode="extras").upscale_params()
    assert (up.gfpgan_visibility, up.codeformer_visibility, up.codeformer_weight) == (0.5, 1, 0.2)
    assert up.upscale_first
    # each problem under its field, in words
    _, errors = parse_form(
        {"mask": str(tmp_path / "gone.png"), "mask_blur": "99", "cfg_rescale": "x"}, state
    )
    assert "does not exist" in errors["mask"] and "mask blur 99" in errors["mask_blur"]
    assert errors["cfg_rescale"] == "CFG rescale 'x' is not a number, e.g. 7 or 0.5"
    _, errors = parse_form(
        {"mode": "extras", "extras_image": str(init), "codeformer_weight": "2"}, state
    )
    assert errors == {"codeformer_weight": "CodeFormer weight must be between 0 and 1"}
    assert from_json(to_json(state)) == state  # remembered between runs


@run_async
async def test_the_inpaint_rows_show_in_img2img_and_reach_the_job(
    tui_env: Settings, tmp_path: Path
) -> None:
    from textual.widgets import Collapsible, Select

    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64)).save(init)
    Image.new("L", (64, 64), 255).save(mask)
    host = FakeHost()
    app = fake_app(tui_env, host=host)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        main, form = app.main, app.main.form
        inpaint = form.query_one("#inpaint", Collapsible)
        extras_rows = [
            form.query_one(f"#{n}").parent for n in ("gfpgan_visibility", "upscale_first")
        ]
        assert not inpaint.display and not any(r.display for r in extras_rows)  # txt2img
        refiner = form.query_one("#refiner_checkpoint", Select)
        assert refiner.value == "" and form.state.params.refiner_checkpoint is None
        main.set_form_field("mode", "img2img")
        main.set_form_field("init_image", str(init))
        await pilot.pause()
        assert inpaint.display and str(inpaint.title) == "Inpaint: no mask (alt+m draws one)"
        for name, value in (
            ("mask", str(mask)), ("mask_blur", "12"), ("inpainting_fill", "fill"),
            ("inpaint_full_res", "1"), ("restore_faces", "1"), ("refiner_checkpoint", "demo"),
            ("refiner_switch_at", "0.5"), ("cfg_rescale", "0.7"),
        ):  # fmt: skip
            main.set_form_field(name, value)
        await pilot.pause()
        assert str(inpaint.title) == "Inpaint: mask.png, only masked, fill"
        assert "rescale 0.7" in str(form.query_one("#more", Collapsible).title)
        assert form.errors == {}
        await pilot.press("ctrl+g")
        await pilot.pause()
        [params] = host.pending.values()
        assert (params.mask, params.mask_blur, params.inpainting_fill) == (str(mask), 12, "fill")
        assert params.inpaint_full_res and params.restore_faces
        assert (params.refiner_checkpoint, params.refiner_switch_at) == ("demo", 0.5)
        assert params.cfg_rescale == 0.7 and params.rng == "CPU"
        main.set_form_field("rng", "NV")
        await pilot.pause()
        assert "RNG NV" in str(form.query_one("#more", Collapsible).title)
        await pilot.press("ctrl+g")
        await pilot.pause()
        assert [q.rng for q in host.pending.values()][-1] == "NV"
        main.set_form_field("refiner_checkpoint", "")  # "none"
        await pilot.pause()
        assert refiner.value == "" and form.state.params.refiner_checkpoint is None
        # an image's parameters (F7, ctrl+o) fill the rows its infotext names; the mask,
        # drawn for the init image, stays with it
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text(
            "parameters",
            "a cat\nSteps: 5, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, "
            "Denoising strength: 0.5, Mask blur: 9, Masked content: latent noise, "
            "CFG Rescale: 0.3",
        )
        made = tmp_path / "made.png"
        Image.new("RGB", (64, 64)).save(made, pnginfo=info)
        main.load_params_from(str(made))
        await pilot.pause()
        p = form.state.params
        assert (p.mask_blur, p.inpainting_fill, p.cfg_rescale) == (9, "latent noise", 0.3)
        assert (p.init_image, p.mask) == (str(init), str(mask))
        assert form.query_one("#mask_blur", Input).value == "9"
        # txt2img hides the section; extras shows its face restoration rows
        main.set_form_field("mode", "txt2img")
        await pilot.pause()
        assert not inpaint.display
        main.set_form_field("mode", "extras")
        main.set_form_field("extras_image", str(init))
        main.set_form_field("codeformer_visibility", "0.8")
        main.set_form_field("upscale_first", "1")
        await pilot.pause()
        assert all(r.display for r in extras_rows) and not inpaint.display
        await pilot.press("ctrl+g")
        await pilot.pause()
        upscale = list(host.pending.values())[-1]
        assert (upscale.codeformer_visibility, upscale.upscale_first) == (0.8, True)


# -- validation, queue, keys, palette (fake engine) -----------------------------------------


@run_async
async def test_invalid_field_shows_message_and_blocks_generate(tui_env: Settings) -> None:
    host = FakeHost()
    app = fake_app(tui_env, host=host)
    async with app.run_test(size=(80, 24)) as pilot:
        app.main.set_form_field("width", "100")
        await pilot.pause()
        label = app.main.query_one("#width-error")
        assert "multiple of 8" in str(label.render())
        await pilot.press("ctrl+g")
        await pilot.pause()
        assert host.pending == {}
        assert "not generated: width 100" in log_text(app)
        app.main.set_form_field("width", "96")
        await pilot.pause()
        assert str(label.render()) == ""
        await pilot.press("ctrl+g")
        await pilot.pause()
        assert len(host.pending) == 1


@run_async
async def test_engine_events_drive_status_preview_grid_and_log(
    tui_env: Settings, tmp_path: Path
) -> None:
    host = FakeHost(state="starting")
    app = fake_app(tui_env, host=host)
    image = tmp_path / "00000-1.png"
    Image.new("RGB", (64, 64), "red").save(image)
    async with app.run_test(size=(100, 30)) as pilot:
        host.pending[1] = object()
        host.running_job = 1
        host.events = [
            msg.EngineStatus("ready", "torch 2", device="cpu"),
            msg.ModelLoaded("sdtui-demo", "SD1", 2.5, 10_000_000, "/m"),
            msg.JobStarted(1, 2, 4),
            msg.Progress(1, 1, 2, 0, 2, its=3.5, eta_s=75),
        ]
        status = app.main.query_one(StatusBar)
        await wait_for(pilot, lambda: status.line.its == 3.5, 60)
        assert status.line.its == 3.5 and status.line.model == "sdtui-demo"
        assert "1:15" in str(status.render())
        buf = __import__("io").BytesIO()
        Image.new("RGB", (16, 16), "blue").save(buf, "PNG")
        host.events = [msg.Preview(1, 1, buf.getvalue(), 16, 16)]
        await wait_for(pilot, lambda: "preview" in app.main.preview.caption, 60)
        host.pending.clear()
        host.running_job = None
        host.events = [
            msg.ImageSaved(1, 0, str(image), 1, "x"),
            msg.JobDone(1, (str(image),), 2.0),
            msg.JobFailed(2, "out of memory: lower the size", "Traceback"),
        ]
        await wait_for(pilot, lambda: "job #2 failed" in log_text(app), 60)
        text = log_text(app)
        assert text.count("loaded sdtui-demo") <= 1, "one line per model load"
        assert f"saved {image}" in text and "job #1 done: 1 image in 2.0 s" in text
        assert "job #2 failed: out of memory: lower the size" in text
        assert app.main.selected_path == str(image)


@run_async
async def test_remove_queued_job_key(tui_env: Settings) -> None:
    host = FakeHost()
    app = fake_app(tui_env, host=host)
    async with app.run_test(size=(100, 30)) as pilot:
        await type_prompt(pilot, "one")
        await pilot.press("ctrl+g", "ctrl+g")
        host.running_job = 1
        app.main.refresh_queue()
        await pilot.pause()
        assert [e.job_id for e in app.main.query_one(QueueView).entries] == [1, 2]
        await pilot.press("f10", "down", "x")
        await pilot.pause()
        assert host.cancelled == [2]


@run_async
async def test_palette_lists_every_action(tui_env: Settings) -> None:
    from sdtui.tui.commands import ACTIONS, _commands

    app = fake_app(tui_env)
    async with app.run_test() as pilot:
        app.main.show_images([__file__])  # any existing file makes the image actions available
        app.main.book.last_failure = msg.JobFailed(
            1, "boom", "Traceback"
        )  # makes the detail available
        host: FakeHost = app.host  # type: ignore[assignment]
        host.running_job = 7
        titles = {title for title, _, _ in _commands(app.main)}
        assert {a.title for a in ACTIONS} <= titles
        assert "Switch model: demo" in titles and "Memory mode: lowest" in titles
        await pilot.press("ctrl+p")
        await pilot.pause()
        assert type(app.screen).__name__ == "CommandPalette"


@run_async
async def test_load_parameters_from_a1111_png(tui_env: Settings, tmp_path: Path) -> None:
    from PIL.PngImagePlugin import PngInfo

    png = tmp_path / "a1111.png"
    meta = PngInfo()
    meta.add_text(
        "parameters",
        "masterpiece, (castle:1.3)\nNegative prompt: blurry\nSteps: 28, Sampler: DPM++ 2M Karras, "
        "CFG scale: 6.5, Seed: 99, Size: 512x768, Model hash: abc, Model: someothermodel",
    )
    Image.new("RGB", (8, 8)).save(png, pnginfo=meta)
    app = fake_app(tui_env)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+o")
        await pilot.pause()
        await pilot.press(*str(png), "enter")
        await pilot.pause()
        assert app.main.query_one("#prompt", PromptArea).text == "masterpiece, (castle:1.3)"
        raw = app.main.query_one(SettingsForm).raw_values()
        assert (raw["steps"], raw["sampler"], raw["schedule_type"]) == ("28", "DPM++ 2M", "Karras")
        assert (raw["seed"], raw["width"], raw["height"], raw["cfg_scale"]) == (
            "99",
            "512",
            "768",
            "6.5",
        )
        assert "someothermodel is not installed" in log_text(app)
        # no RNG key: A1111's default source, GPU, on the form's RNG row and the More title
        from textual.widgets import Collapsible, Select

        form = app.main.query_one(SettingsForm)
        assert form.query_one("#rng", Select).value == "GPU"
        assert "RNG GPU" in str(form.query_one("#more", Collapsible).title)


@run_async
async def test_interrupt_and_skip_only_while_busy(tui_env: Settings) -> None:
    host = FakeHost()
    app = fake_app(tui_env, host=host)
    async with app.run_test() as pilot:
        assert app.main.check_action("interrupt", ()) is False
        host.running_job = 3
        host.pending[3] = object()
        await pilot.press("escape")
        assert host.cancelled == [None]


# -- hires fix, VAE, clip skip, variation seed, LoRAs, memory mode, error detail ----------


@pytest.mark.slow
@run_async
async def test_hires_fix_memory_mode_and_error_detail_on_the_demo_model(
    engine: Any, tui_env: Settings, tmp_path: Path
) -> None:
    out = tui_env.outputs
    form = FormState(params=TINY.replace(steps=2, prompt="a hires cube"))
    app = SdtuiApp(engine, tui_env, form_state=form, gpu_interval=None, remember_form=False)
    async with app.run_test(size=(100, 30)) as pilot:
        app.main.set_form_field("enable_hr", "1")
        app.main.set_form_field("hr_scale", "1.5")
        app.main.set_form_field("hr_second_pass_steps", "2")
        app.main.set_form_field("hr_upscaler", "Latent")
        app.main.set_form_field("clip_skip", "2")
        await pilot.pause()
        assert "x1.5 Latent" in str(app.main.query_one("#hires").title)
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: done_jobs(app) == 1, 120)
        [png] = pngs(out / "txt2img-images")
        assert Image.open(png).size == (96, 96)
        info = parse_infotext(read_infotext(png) or "")
        assert info.pairs["Hires upscale"] == "1.5" and info.pairs["Size"] == "64x64"
        assert info.pairs["Hires upscaler"] == "Latent" and info.pairs["Clip skip"] == "2"

        # the memory mode command reaches the engine, which says so in the job log
        app.main.set_memory_mode("low")
        await wait_for(pilot, lambda: "memory mode set to low" in log_text(app), 30)
        assert app.main.query_one(StatusBar).line.memory_mode == "low"

        # a job that fails: the log has the plain message, ctrl+t the traceback
        broken = tmp_path / "broken.png"
        broken.write_bytes(b"not a png at all")
        app.main.set_form_field("init_image", str(broken))
        app.main.set_form_field("mode", "img2img")
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: "failed:" in log_text(app), 60)
        assert "Traceback" not in log_text(app)
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert type(app.screen).__name__ == "ErrorDetailScreen"
        detail = app.screen.query_one("#error-detail").text
        assert (
            app.main.book.last_failure is not None and detail == app.main.book.last_failure.detail
        )
        assert "Traceback" in detail
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.main


def _networks(settings: Settings, tmp_path: Path) -> Settings:
    lora = settings.models / "Lora" / "shiny_style.safetensors"
    lora.parent.mkdir(parents=True)
    lora.write_bytes(b"x" * 16)
    emb = tmp_path / "embeddings" / "easynegative.pt"
    emb.parent.mkdir(parents=True)
    emb.write_bytes(b"x" * 16)
    return settings.replace(embeddings_dir=tmp_path / "embeddings")


async def _palette(pilot: Any, text: str) -> None:
    await run_command(pilot, text)


@run_async
async def test_palette_and_picker_insert_loras_and_embeddings(
    tui_env: Settings, tmp_path: Path
) -> None:
    app = fake_app(_networks(tui_env, tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.main.catalog.complete, 60)
        assert app.main.catalog.loras == ["shiny_style"] and app.main.catalog.embeddings == [
            "easynegative"
        ]
        await type_prompt(pilot, "a cat,")
        await _palette(pilot, "Insert LoRA: shiny")
        prompt = app.main.query_one("#prompt", PromptArea)
        assert prompt.text == "a cat, <lora:shiny_style:1>"
        assert app.main.form_state.params.prompt == "a cat, <lora:shiny_style:1>"

        # ctrl+k: the picker, filtered by typing; it inserts where the cursor was
        negative = app.main.query_one("#negative", PromptArea)
        negative.focus()
        negative.load_text("blurry")
        negative.cursor_location = (0, 6)
        await pilot.press("ctrl+k")
        await pilot.pause()
        assert type(app.screen).__name__ == "NetworkPickerScreen"
        await pilot.press(*"easy", "enter")
        await pilot.pause()
        assert negative.text == "blurry easynegative"
        assert prompt.text == "a cat, <lora:shiny_style:1>"


@run_async
async def test_token_counter_counts_an_embedding_as_its_vectors(
    tui_env: Settings, tmp_path: Path
) -> None:
    """EasyNegative-style: 8 vectors in an A1111 .pt. The counter shows what the engine will
    encode (8 slots), not the tokens of the word."""
    import torch

    from sdtui.tokens import count_tokens

    emb = tmp_path / "embeddings" / "easynegative.pt"
    emb.parent.mkdir(parents=True)
    torch.save({"string_to_param": {"*": torch.zeros(8, 768)}, "name": "easynegative"}, emb)
    app = fake_app(tui_env.replace(embeddings_dir=emb.parent))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.main.catalog.complete, 60)
        assert app.main.catalog.embedding_sizes == (("easynegative", 8),)
        negative = app.main.query_one("#negative", PromptArea)
        negative.load_text("blurry, easynegative")
        want = count_tokens("blurry, ").tokens + 8
        assert want != count_tokens("blurry, easynegative").tokens
        from sdtui.tui.widgets.text_line import TextLine

        label = app.main.query_one("#negative-tokens", TextLine)
        await wait_for(pilot, lambda: str(label.render()) == f"{want}/75", 60)


@run_async
async def test_memory_mode_command_is_sent_remembered_and_shown(tui_env: Settings) -> None:
    host = FakeHost()
    app = fake_app(tui_env, host=host, remember_form=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert host.memory_modes == []  # nothing sent at start: the engine has the setting
        assert app.main.query_one(StatusBar).line.memory_mode == "auto"
        await _palette(pilot, "Memory mode: lowest")
        assert host.memory_modes == ["lowest"]
        assert app.main.query_one(StatusBar).line.memory_mode == "lowest"
        assert app.main.query_one("#memory_mode").value == "lowest"
        assert "memory mode lowest" in log_text(app)
    saved = load_form_state()
    assert saved is not None and saved.memory_mode == "lowest"
    args = argparse.Namespace(demo=False, model=None, graphics=None)
    host2 = FakeHost()
    app2 = fake_app(tui_env, host=host2, form_state=initial_form(args, tui_env))
    async with app2.run_test() as pilot:
        await pilot.pause()
        assert host2.memory_modes == []  # launch gives it to the engine at start
        assert app2.main.query_one("#memory_mode").value == "lowest"


@run_async
async def test_hires_and_more_fields_validate_submit_and_come_back(tui_env: Settings) -> None:
    host = FakeHost()
    app = fake_app(tui_env, host=host, remember_form=True)
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.main.query_one("#hires").collapsed
        app.main.set_form_field("enable_hr", "1")
        app.main.set_form_field("hr_scale", "9")
        await pilot.pause()
        await pilot.press("ctrl+g")
        await pilot.pause()
        assert host.pending == {}
        assert "hires upscale must be between 1 and 4" in log_text(app)
        # the folded section opens on its problem, with the field focused
        assert not app.main.query_one("#hires").collapsed
        assert app.focused is app.main.query_one("#hr_scale")
        assert "between 1 and 4" in str(app.main.query_one("#hr_scale-error").render())
        app.main.set_form_field("hr_scale", "1.5")
        app.main.set_form_field("clip_skip", "5")
        await pilot.pause()
        assert "clip skip 5" in str(app.main.query_one("#clip_skip-error").render())
        app.main.set_form_field("clip_skip", "2")
        app.main.set_form_field("vae", "None")
        app.main.set_form_field("subseed", "77")
        app.main.set_form_field("subseed_strength", "0.3")
        await pilot.press("ctrl+g")
        await pilot.pause()
        [params] = host.pending.values()
        assert (params.enable_hr, params.hr_scale, params.clip_skip, params.vae) == (
            True,
            1.5,
            2,
            "None",
        )
        assert (params.subseed, params.subseed_strength) == (77, 0.3)
    saved = load_form_state()
    assert saved is not None and saved.params.enable_hr and saved.params.subseed == 77


@run_async
async def test_error_detail_screen_shows_the_traceback(tui_env: Settings) -> None:
    host = FakeHost()
    app = fake_app(tui_env, host=host)
    detail = "Traceback (most recent call last):\n" + "  frame\n" * 60 + "ValueError: boom\n"
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert app.screen is app.main  # nothing failed yet
        host.events = [msg.JobFailed(3, "the VAE failed: try VAE None", detail)]
        await pilot.pause(0.2)
        assert "job #3 failed: the VAE failed" in log_text(app)
        assert "ValueError" not in log_text(app)
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert type(app.screen).__name__ == "ErrorDetailScreen"
        assert app.screen.query_one("#error-detail").text == detail
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.main


# -- the first ten minutes: focus, panes, A1111's words, the demo model --------------------


def _contrast(a: Any, b: Any) -> float:
    """WCAG contrast ratio of two colours (1 to 21)."""

    def luminance(c: Any) -> float:
        def channel(v: int) -> float:
            x = v / 255
            return x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4

        r, g, b = c.rgb
        return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)

    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@run_async
async def test_the_focused_field_is_marked_plainly_in_every_theme(tui_env: Settings) -> None:
    from textual.widgets import Label

    app = fake_app(tui_env)
    async with app.run_test(size=(100, 30)) as pilot:
        form = app.main.form
        steps, cfg = form.query_one("#steps"), form.query_one("#cfg_scale")
        steps.focus()
        await pilot.pause()
        label = steps.parent.query(Label).first() if steps.parent else None
        assert label is not None and str(label.render()) == "Steps"
        # the ANSI themes draw in the terminal's own palette: its colours decide there
        themes = sorted(t for t in app.available_themes if not t.startswith("ansi"))
        assert len(themes) >= 10
        for name in themes:
            app.theme = name
            await pilot.pause()
            kind, mark = steps.styles.border_left
            assert kind == "outer", name  # a bar at the field's left...
            assert cfg.styles.border_left[0] == "blank", name  # ...the other fields: none
            # ...in a colour that stands out from the form and from the field (WCAG AA)
            assert _contrast(mark, form.background_colors[1]) >= 4.5, name
            assert _contrast(mark, steps.background_colors[1]) >= 4.5, name
            assert label.styles.color == mark and label.styles.text_style.bold, name
        prompt = app.main.query_one("#prompt", PromptArea)
        prompt.focus()
        await pilot.pause()
        assert prompt.styles.border_left[0] == "outer"
        assert steps.styles.border_left[0] == "blank"


def _pngs(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"0000{i}-{10 + i}.png" for i in range(n)]
    for i, p in enumerate(paths):
        Image.new("RGB", (64, 64), (40 * i, 0, 0)).save(p)
    return paths


@run_async
async def test_each_pane_has_a_key_the_active_one_shows_and_f2_takes_the_grids_pick(
    tui_env: Settings, tmp_path: Path
) -> None:
    host = FakeHost()
    app = fake_app(tui_env, host=host)
    paths = _pngs(tmp_path / "out", 3)
    async with app.run_test(size=(100, 30)) as pilot:
        main = app.main
        host.events = [
            msg.JobStarted(1, 3, 6),
            *(msg.ImageSaved(1, i, str(p), 10 + i, "") for i, p in enumerate(paths)),
            msg.JobDone(1, tuple(str(p) for p in paths), 1.0),
        ]
        await wait_for(pilot, lambda: len(main.grid.paths) == 3, 60)
        prompt = main.query_one("#prompt", PromptArea)
        assert app.focused is prompt and main.prompt_editor.has_class("-active-pane")
        assert "F1" in str(main.grid.border_title) and "F11" in str(
            main.prompt_editor.query_one(".prompt-label").render()
        )

        await pilot.press("f1")  # to the images: arrows now move the grid's cursor
        assert app.focused is main.grid
        assert main.grid.has_class("-active-pane") and not main.prompt_editor.has_class(
            "-active-pane"
        )
        await pilot.press("right")  # "the top middle one"
        await pilot.pause()
        assert main.grid.selected_path == str(paths[1])
        assert paths[1].name in main.preview.caption  # the preview shows the pick
        await pilot.press("f2")
        await pilot.pause()
        state = main.form.state
        assert state.mode == "img2img" and state.params.init_image == str(paths[1])
        assert prompt.text == ""  # the arrow did not go to the prompt

        await pilot.press("ctrl+f")  # to the settings
        assert app.focused is not None and main.form in app.focused.ancestors
        assert main.form.has_class("-active-pane") and not main.grid.has_class("-active-pane")
        await pilot.press("f11")  # back to the prompt
        assert app.focused is prompt and main.prompt_editor.has_class("-active-pane")


@run_async
async def test_f3_img2img_at_2x_makes_one_image_as_in_a1111(
    tui_env: Settings, tmp_path: Path
) -> None:
    app = fake_app(tui_env)
    paths = _pngs(tmp_path / "out", 2)
    async with app.run_test(size=(100, 30)) as pilot:
        main = app.main
        main.set_form_field("batch_count", "3")
        main.set_form_field("batch_size", "6")
        main.show_images([str(p) for p in paths], select=str(paths[1]))
        await pilot.press("f3")
        await pilot.pause()
        p = main.form.state.params
        assert (main.form.state.mode, p.init_image, p.width, p.height) == (
            "img2img",
            str(paths[1]),
            128,
            128,
        )
        assert (p.batch_count, p.batch_size, p.denoising_strength) == (1, 1, 0.75)


@run_async
async def test_batch_count_and_batch_size_are_named_as_in_a1111(tui_env: Settings) -> None:
    from textual.widgets import Label

    app = fake_app(tui_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        row = app.main.form.query_one("#batch_count").parent
        assert row is not None
        assert [str(label.render()) for label in row.query(Label)] == ["Batch count", "Batch size"]
        assert all(
            app.main.form.query_one(f"#{f}").region.width >= 3
            for f in ("batch_count", "batch_size")
        )


@run_async
async def test_the_demo_model_gets_quick_defaults_and_one_line_saying_what_it_is(
    tui_env: Settings,
) -> None:
    host = FakeHost()
    stock = FormState(params=GenerationParams(model="demo", seed=42))  # 512x512, 20 steps
    app = fake_app(tui_env, host=host, form_state=stock)
    loaded = msg.ModelLoaded("sdtui-demo", "SD1", 0.1, 9_900_000, "/m")
    async with app.run_test(size=(80, 24)) as pilot:
        host.events = [loaded]
        await wait_for(pilot, lambda: "demo model" in log_text(app), 60)
        raw = app.main.form.raw_values()
        assert (raw["width"], raw["height"], raw["steps"]) == ("256", "256", "8")
        [line] = [text for _, text in app.main.job_log.entries if "demo model" in text]
        assert "noise" in line and str(tui_env.checkpoints) in line and "ctrl+l" in line
        await type_prompt(pilot, "a cube")
        await pilot.press("ctrl+g")
        await pilot.pause()
        [params] = host.pending.values()
        assert (params.width, params.height, params.steps) == (256, 256, 8)
        host.events = [loaded]  # loaded again: nothing more is said
        await pilot.pause(0.3)
        assert log_text(app).count("demo model") == 1

    # a form the user set keeps its values; the line is still said
    host2 = FakeHost()
    app2 = fake_app(tui_env, host=host2)  # 64x64, 2 steps
    async with app2.run_test(size=(80, 24)) as pilot:
        host2.events = [loaded]
        await wait_for(pilot, lambda: "demo model" in log_text(app2), 60)
        raw = app2.main.form.raw_values()
        assert (raw["width"], raw["steps"]) == ("64", "2") and "form set" not in log_text(app2)


def test_sdtui_demo_starts_with_the_quick_form(tui_env: Settings) -> None:
    args = argparse.Namespace(demo=True, model=None, graphics=None)
    p = initial_form(args, tui_env).params
    assert (p.model, p.width, p.height, p.steps) == ("demo", 256, 256, 8)
    save_form_state(FormState(params=GenerationParams(model="demo", width=768, steps=30)))
    p = initial_form(args, tui_env).params
    assert (p.width, p.steps) == (768, 30)  # what the user chose last time stays


# -- Flux.1 / SD3.5: the family's rows and Forge's preset (issue 13) ---------------------------


def _tokens_shown(app: SdtuiApp) -> str:
    from sdtui.tui.widgets.text_line import TextLine

    return app.main.query_one("#prompt-tokens", TextLine).text


def _on_screen(form: SettingsForm, name: str) -> bool:
    """The field is drawn: neither it, its row nor its section is hidden."""
    widget: Any = form.query_one(f"#{name}")
    while widget is not None and widget is not form:
        if not widget.display:
            return False
        widget = widget.parent
    return True


@run_async
async def test_with_no_model_named_the_form_takes_the_checkpoint_the_engine_loaded(
    tui_env: Settings,
) -> None:
    """A first run with a checkpoint in the folder: the engine loads it (no model named), and
    the form's Model, which started on the "demo" its list held before the folders were read,
    shows it; the next job runs on it instead of switching the engine to the demo. Once only:
    another client's load later leaves the form alone."""
    from test_family_presets import flux_header_file

    flux_header_file(tui_env.checkpoints, "flux1-dev", dev=True)
    host = FakeHost()
    app = fake_app(tui_env, host=host, form_state=FormState())
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_for(pilot, lambda: "flux1-dev" in app.main.catalog.models, 60)
        form = app.main.form
        assert form.raw_values()["model"] == "demo"  # the list's pick until the engine says
        host.events = [msg.ModelLoaded("flux1-dev", "Flux.1 dev", 0.1, 1, "/m")]
        await wait_for(pilot, lambda: "the checkpoint the engine loaded" in log_text(app), 60)
        assert form.raw_values()["model"] == "flux1-dev"
        assert form.state.params.model == "flux1-dev"
        assert "Forge's preset" in log_text(app)  # and the family's preset, as when picked
        await type_prompt(pilot, "a fox")
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: bool(host.pending), 60)
        [params] = host.pending.values()
        assert params.model == "flux1-dev"
        # a later load (another client's job) does not move the form
        host.events = [msg.ModelLoaded("other", "SDXL", 0.1, 1, "/o")]
        await wait_for(pilot, lambda: app.main.status_bar.line.model == "other", 60)
        assert form.raw_values()["model"] == "flux1-dev"

    # no checkpoint: the engine's pick is the demo, which the form shows already
    bare = tui_env.replace(models_dir=tui_env.models_dir.parent / "empty-models")
    host2 = FakeHost()
    app2 = fake_app(bare, host=host2, form_state=FormState())
    async with app2.run_test(size=(100, 40)) as pilot:
        await wait_for(pilot, lambda: app2.main.catalog.complete, 60)
        host2.events = [msg.ModelLoaded("sdtui-demo", "SD1", 0.1, 1, "/d")]
        await wait_for(pilot, lambda: "demo model" in log_text(app2), 60)
        assert app2.main.form.raw_values()["model"] == "demo"
        assert "the checkpoint the engine loaded" not in log_text(app2)


@run_async
async def test_a_flux_model_shows_its_rows_and_takes_forges_preset(tui_env: Settings) -> None:
    from test_family_presets import flux_header_file
    from textual.widgets import Collapsible

    flux_header_file(tui_env.checkpoints, "flux1-dev", dev=True)
    flux_header_file(tui_env.checkpoints, "flux1-schnell", dev=False)
    host = FakeHost()
    stock = FormState(params=GenerationParams(model="demo", seed=42))  # Euler a, CFG 7, 512x512
    app = fake_app(tui_env, host=host, form_state=stock)
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_for(pilot, lambda: "flux1-dev" in app.main.catalog.models, 60)
        form = app.main.form
        assert _on_screen(form, "enable_hr") or form.query_one("#hires", Collapsible).collapsed
        assert not _on_screen(form, "distilled_cfg_scale")  # SD: no Distilled CFG
        app.main.set_form_field("enable_hr", "1")  # hires fix runs on Flux too
        app.main.set_form_field("clip_skip", "2")  # kept by the form, not sent to Flux
        app.main.switch_model("flux1-dev")
        await pilot.pause(0.2)
        assert host.loaded == ["flux1-dev"]
        assert _on_screen(form, "distilled_cfg_scale") and _on_screen(form, "cfg_scale")
        assert form.query_one("#hires", Collapsible).display  # hires fix runs on Flux
        # inpainting too (its section shows in img2img mode)
        assert not form.query_one("#inpaint", Collapsible).has_class("family-hidden")
        for name in ("refiner_checkpoint", "clip_skip", "cfg_rescale"):
            assert not _on_screen(form, name)
        assert _on_screen(form, "memory_mode") or form.query_one("#more", Collapsible).collapsed
        raw = form.raw_values()
        assert (raw["sampler"], raw["cfg_scale"], raw["steps"], raw["width"], raw["height"]) == (
            "Euler", "1", "20", "896", "1152",
        )  # fmt: skip
        assert raw["distilled_cfg_scale"] == "3.5"
        assert log_text(app).count("Forge's preset") == 1
        # the Sampler list: what a flow model runs (Forge's k-diffusion ones, no DDIM/PLMS/UniPC)
        assert form._choices["sampler"] == list(FLOW_SAMPLER_NAMES)
        assert "DPM++ 2M" in form._choices["sampler"] and "DDIM" not in form._choices["sampler"]
        # and the schedules Forge builds on one (none from SD's timesteps: Normal, SGM Uniform)
        assert form._choices["schedule_type"] == ["Automatic", "Simple", "Karras", "Exponential"]
        # the prompt box counts T5's tokens of Flux dev's 512-token sequence ("a fox" is
        # "▁", "a", "▁", "fox" to T5; 2 tokens to CLIP)
        await type_prompt(pilot, "a fox")
        await wait_for(pilot, lambda: _tokens_shown(app) == "4/512", 60)
        await pilot.press("ctrl+g")
        await pilot.pause()
        [params] = host.pending.values()
        assert (params.sampler, params.cfg_scale, params.enable_hr) == ("Euler", 1.0, True)
        assert params.clip_skip == GenerationParams().clip_skip

        app.main.set_form_field("model", "flux1-schnell")  # the form's own model field
        await pilot.pause(0.2)
        assert not _on_screen(form, "distilled_cfg_scale")  # schnell has no guidance
        assert form.raw_values()["steps"] == "4"
        await wait_for(pilot, lambda: _tokens_shown(app) == "4/256", 60)

        app.main.set_form_field("model", "demo")  # back to SD: every row, the stock values
        await pilot.pause(0.2)
        assert form.query_one("#hires", Collapsible).display
        assert not _on_screen(form, "distilled_cfg_scale")
        raw = form.raw_values()
        assert (raw["sampler"], raw["cfg_scale"], raw["steps"], raw["width"], raw["enable_hr"]) == (
            "Euler a", "7", "20", "512", "1",
        )  # fmt: skip
        assert "sdtui's defaults" in log_text(app)
        assert form._choices["sampler"] == list(SAMPLER_NAMES)  # DDIM, PLMS, UniPC again
        await wait_for(pilot, lambda: _tokens_shown(app) == "2/75", 60)
        assert "Karras" in form._choices["schedule_type"]

    # a model not listed (yet): the family the engine's ModelLoaded names decides
    host2 = FakeHost()
    named = FormState(params=GenerationParams(model="flux1-schnell", seed=1))
    app2 = fake_app(tui_env, host=host2, form_state=named, discover=lambda catalog: catalog)
    async with app2.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        assert app2.main.form.raw_values()["steps"] == "20"
        host2.events = [msg.ModelLoaded("flux1-schnell", "Flux.1 schnell", 0.1, 1, "/m")]
        await wait_for(pilot, lambda: "Forge's preset" in log_text(app2), 60)
        assert app2.main.form.raw_values()["steps"] == "4"
        assert not _on_screen(app2.main.form, "refiner_checkpoint")


# -- snapshots --------------------------------------------------------------------------------


def _snapshot_app(settings: Settings) -> SdtuiApp:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "sdtui_test_tui_gpu_app", Path(__file__).parent / "apps" / "gpu_pane_app.py"
    )
    assert spec and spec.loader
    recorded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recorded)
    RECORDED, RecordedSampler = recorded.RECORDED, recorded.RecordedSampler
    form = FormState(
        params=TINY.replace(
            prompt="a (red:1.2) cube BREAK <lora:shiny:0.8>", negative_prompt="blurry"
        )
    )
    app = fake_app(settings, form_state=form, gpu_sampler=RecordedSampler([RECORDED]))
    app.snapshot_gpu = RECORDED  # type: ignore[attr-defined]
    return app


async def _steady(pilot: Any) -> None:
    from sdtui.tui.widgets.gpu_pane import GpuPane

    await pilot.pause()
    pilot.app.main.query_one(GpuPane).show_snapshot(pilot.app.snapshot_gpu)
    pilot.app.main.query_one(StatusBar).update_line(state="ready", model="sdtui-demo")
    # token counts come from a worker thread: wait for them, however loaded the machine is
    from sdtui.tui.widgets.text_line import TextLine

    labels = [pilot.app.main.query_one(f"#{n}-tokens", TextLine) for n in ("prompt", "negative")]
    await wait_for(pilot, lambda: all("/75" in str(lb.render()) for lb in labels), 60)
    # a blinking cursor makes the picture depend on timing
    for area in pilot.app.main.query(PromptArea):
        area.cursor_blink = False
    for line in pilot.app.main.query(Input):
        line.cursor_blink = False
    await pilot.pause()


async def _focus_settled(pilot: Any, field: str) -> None:
    """Wait until ``field`` has the focus and every scroll it started has ended.

    ``reveal`` focuses after a refresh, and the focus scrolls smoothly after *another* one:
    on a loaded machine a fixed pause ends before that animation even starts, and it then
    moves the view after the test has placed it (a CI run caught exactly that).
    """
    app = pilot.app
    await wait_for(pilot, lambda: app.focused is not None and app.focused.id == field, 60)
    form = app.main.form
    last = None
    for _ in range(100):
        await pilot.pause()
        await pilot.wait_for_scheduled_animations()
        where = (form.scroll_x, form.scroll_y, app.screen.scroll_y)
        if where == last and not app.animator.is_being_animated(form, "scroll_y"):
            return
        last = where
        await pilot.pause(0.05)
    raise AssertionError("the settings form never stopped scrolling")


def test_snapshot_main_80x24(snap_compare: Any, tui_env: Settings) -> None:
    assert snap_compare(_snapshot_app(tui_env), terminal_size=(80, 24), run_before=_steady)


def test_snapshot_main_160x48(snap_compare: Any, tui_env: Settings) -> None:
    assert snap_compare(_snapshot_app(tui_env), terminal_size=(160, 48), run_before=_steady)


def test_snapshot_hires_section_open_80x24(snap_compare: Any, tui_env: Settings) -> None:
    async def open_hires(pilot: Any) -> None:
        await _steady(pilot)
        pilot.app.main.set_form_field("enable_hr", "1")
        pilot.app.main.set_form_field("hr_scale", "1.5")
        pilot.app.main.form.reveal("hr_scale")
        await _focus_settled(pilot, "hr_scale")
        pilot.app.main.form.scroll_end(animate=False)
        await _focus_settled(pilot, "hr_scale")

    assert snap_compare(_snapshot_app(tui_env), terminal_size=(80, 24), run_before=open_hires)


def test_snapshot_inpaint_section_open_80x24(
    snap_compare: Any, tui_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # short relative paths: the same picture on every machine
    Image.new("RGB", (64, 64)).save("init.png")
    Image.new("L", (64, 64), 255).save("mask.png")

    async def open_inpaint(pilot: Any) -> None:
        await _steady(pilot)
        main = pilot.app.main
        main.set_form_field("mode", "img2img")
        main.set_form_field("init_image", "init.png")
        main.set_form_field("mask", "mask.png")
        main.set_form_field("inpaint_full_res", "1")
        main.form.reveal("outpaint_sides")
        await _focus_settled(pilot, "outpaint_sides")
        # the section from its title (the values' summary) down
        main.form.scroll_to_widget(main.form.query_one("#inpaint"), animate=False, top=True)
        await _focus_settled(pilot, "outpaint_sides")

    assert snap_compare(_snapshot_app(tui_env), terminal_size=(80, 24), run_before=open_inpaint)
