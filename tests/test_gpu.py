"""NVML sampling (sdtui.gpu), the `sdtui gpu` table and the GPU pane, without a GPU.

Recorded readings of an H100 stand in for NVML; the real no-driver path is exercised on
this machine; a fake pynvml checks that every unsupported field becomes N/A, not a crash.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pynvml
import pytest
from textual.geometry import Region
from textual.pilot import Pilot

from sdtui import gpu
from sdtui.gpu import (
    NO_DRIVER_MESSAGE,
    GpuReading,
    GpuSampler,
    GpuSnapshot,
    bar,
    format_gpu_table,
    main_gpu_command,
    sparkline,
    sparkline_rows,
)
from sdtui.tui.widgets.gpu_pane import GpuPane, pane_lines


def _load_app_module() -> ModuleType:
    # By path, so this works whether or not tests/ is a package.
    path = Path(__file__).parent / "apps" / "gpu_pane_app.py"
    spec = importlib.util.spec_from_file_location("sdtui_test_gpu_pane_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


recorded = _load_app_module()
RECORDED: GpuSnapshot = recorded.RECORDED
RECORDED_NEXT: GpuSnapshot = recorded.RECORDED_NEXT
NO_DRIVER: GpuSnapshot = recorded.NO_DRIVER
OUR_PID: int = recorded.OUR_PID
RecordedSampler = recorded.RecordedSampler
GpuPaneApp = recorded.GpuPaneApp


def _nvml_loadable() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


# --------------------------------------------------------------------------- the text table


def test_table_shows_recorded_h100_like_nvidia_smi() -> None:
    table = format_gpu_table(RECORDED, our_pids=[OUR_PID])
    lines = table.splitlines()
    assert lines[0].startswith("Driver Version: 550.54.15")
    header = next(line for line in lines if line.startswith("GPU  Name"))
    row = next(line for line in lines if "NVIDIA H100 80GB HBM3" in line)
    # Columns line up: each value sits under its heading.
    assert row[header.index("Fan") :].startswith("N/A")  # NotSupported fan on a data-centre board
    assert row[header.index("Perf") :].startswith("P0")
    assert row[header.index("Power") :].startswith("312 W / 700 W")
    assert row[header.index("Memory") :].startswith("21.3 GiB / 80.0 GiB")
    assert "47°C" in row
    assert row.rstrip().endswith("97%")
    memory_bar = next(line for line in lines if line.strip().startswith("Mem  ["))
    util_bar = next(line for line in lines if line.strip().startswith("Util ["))
    assert memory_bar.rstrip().endswith("27%") and "█" in memory_bar
    assert util_bar.count("█") > memory_bar.count("█")  # 97 % fills more than 27 %
    # Processes: ours marked "*", the other not; memory with units.
    ours = next(line for line in lines if "*4242" in line)
    theirs = next(line for line in lines if "5555" in line)
    assert "python" in ours and "18.2 GiB" in ours
    assert "comfyui" in theirs and "3.1 GiB" in theirs and "*" not in theirs
    assert "* this sdtui session" in table
    assert "12.3 GiB / 62.8 GiB" in table  # host RAM


def test_table_without_our_pids_marks_nothing() -> None:
    table = format_gpu_table(RECORDED)
    assert "*" not in table
    assert "this sdtui session" not in table


def test_table_shows_na_for_every_unsupported_field() -> None:
    blank = GpuReading(0, None, None, None, None, None, None, None, None, None, None)
    table = format_gpu_table(replace(RECORDED, gpus=(blank,), driver_version=None))
    row = next(line for line in table.splitlines() if line.startswith("  0"))
    assert row.split() == [
        "0",
        "N/A",
        "N/A",
        "N/A",
        "N/A",
        "N/A",
        "/",
        "N/A",
        "N/A",
        "/",
        "N/A",
        "N/A",
    ]
    assert "Driver Version: N/A" in table
    process_row = next(line for line in table.splitlines() if line.startswith("    0"))
    assert process_row.split() == ["0", "N/A", "N/A", "N/A"]  # the process query itself failed


def test_table_without_driver_shows_cpu_and_ram_plainly() -> None:
    table = format_gpu_table(NO_DRIVER, our_pids=[OUR_PID])
    assert table.startswith(f"GPU: {NO_DRIVER_MESSAGE}\n")
    cpu = next(line for line in table.splitlines() if line.startswith("CPU"))
    ram = next(line for line in table.splitlines() if line.startswith("RAM"))
    assert "64%" in cpu and "16 cores" in cpu
    assert "12.3 GiB / 62.8 GiB" in ram and "20%" in ram
    assert "*4242" in table and "2.1 GiB" in table
    assert "Driver Version" not in table


def test_bars_and_sparklines() -> None:
    assert bar(0.5, 4) == "██  "
    assert bar(1 / 32, 4) == "▏   "  # one eighth of one cell
    assert bar(2.0, 3) == "███"  # clamped
    assert bar(None, 3) == "   "
    assert sparkline([0, 50, 100], 5) == "  ▁▄█"  # right-aligned, newest last
    assert sparkline([None, 100], 2) == " █"
    assert sparkline([0, 100, 0, 0], 2) == "█▁"  # more values than cells: each cell's peak
    assert sparkline_rows([100, 50, 0], 3, height=2) == ["█  ", "██▁"]


# --------------------------------------------------------------------------- sampling


def test_real_sampler_on_this_machine_never_raises() -> None:
    with GpuSampler(host_pids=[os.getpid()]) as sampler:
        first = sampler.sample()
        second = sampler.sample()
    for snapshot in (first, second):
        assert snapshot.host.ram_total > snapshot.host.ram_used > 0
        assert 0.0 <= snapshot.host.cpu_percent <= 100.0
        (me,) = snapshot.host.processes
        assert me.pid == os.getpid() and me.rss is not None and me.rss > 0
        if _nvml_loadable():
            assert snapshot.driver_error is None and snapshot.gpus
        else:
            assert snapshot.driver_error == NO_DRIVER_MESSAGE
            assert snapshot.gpus == () and snapshot.driver_version is None


def test_gpu_command_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_gpu_command(our_pids=[os.getpid()]) == 0
    out = capsys.readouterr().out
    assert f"*{os.getpid()}" in out
    assert "RAM" in out
    if not _nvml_loadable():
        assert out.startswith(f"GPU: {NO_DRIVER_MESSAGE}")


class _FakeNvml:
    """Stands in for libnvidia-ml: one H100 whose fan and graphics processes are unsupported."""

    def __init__(self) -> None:
        self.init_calls = 0

    def not_supported(self, *_: Any) -> Any:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def init() -> None:
            self.init_calls += 1

        calls = {
            "nvmlInit": init,
            "nvmlShutdown": lambda: None,
            "nvmlSystemGetDriverVersion": lambda: "550.54.15",
            "nvmlDeviceGetCount": lambda: 1,
            "nvmlDeviceGetHandleByIndex": lambda i: f"handle{i}",
            "nvmlDeviceGetName": lambda h: "NVIDIA H100 80GB HBM3",
            "nvmlDeviceGetTemperature": lambda h, sensor: 47,
            "nvmlDeviceGetFanSpeed": self.not_supported,
            "nvmlDeviceGetPerformanceState": lambda h: 2,
            "nvmlDeviceGetPowerUsage": lambda h: 312_400,  # milliwatts
            "nvmlDeviceGetEnforcedPowerLimit": lambda h: 700_000,
            "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(used=21 * 2**30, total=80 * 2**30),
            "nvmlDeviceGetUtilizationRates": lambda h: SimpleNamespace(gpu=97, memory=40),
            "nvmlDeviceGetComputeRunningProcesses": lambda h: [
                SimpleNamespace(pid=os.getpid(), usedGpuMemory=18 * 2**30),
                SimpleNamespace(pid=2**22 + 7, usedGpuMemory=None),  # WDDM: unknown
            ],
            "nvmlDeviceGetGraphicsRunningProcesses": self.not_supported,
            "nvmlSystemGetProcessName": self.not_supported,
        }
        for name, call in calls.items():
            monkeypatch.setattr(pynvml, name, call)


def test_sampler_turns_unsupported_fields_into_none(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeNvml()
    fake.install(monkeypatch)
    sampler = GpuSampler()
    snapshot = sampler.sample()
    sampler.sample()
    assert fake.init_calls == 1  # NVML is initialised once
    assert snapshot.driver_error is None and snapshot.driver_version == "550.54.15"
    (h100,) = snapshot.gpus
    assert h100.name == "NVIDIA H100 80GB HBM3" and h100.temperature_c == 47
    assert h100.fan_percent is None
    assert h100.performance_state == "P2"
    assert h100.power_w == pytest.approx(312.4) and h100.power_limit_w == 700.0
    assert (h100.memory_used, h100.memory_total) == (21 * 2**30, 80 * 2**30)
    assert h100.utilization_percent == 97
    assert h100.processes is not None
    me, stranger = h100.processes  # largest first
    assert me.pid == os.getpid() and me.name and me.used_memory == 18 * 2**30
    assert stranger.name is None and stranger.used_memory is None  # not ours to see: N/A
    table = format_gpu_table(snapshot, our_pids=[os.getpid()])
    assert f"*{os.getpid()}" in table and "P2" in table


def test_sampler_survives_a_device_that_answers_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeNvml()
    fake.install(monkeypatch)
    for name in dir(pynvml):
        if name.startswith("nvmlDeviceGet") and name not in {"nvmlDeviceGetCount"}:
            monkeypatch.setattr(pynvml, name, fake.not_supported)
    (lost,) = GpuSampler().sample().gpus
    assert lost == GpuReading(0, None, None, None, None, None, None, None, None, None, None)


def test_sampler_reports_a_driver_that_is_not_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    def init() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", init)
    snapshot = GpuSampler().sample()
    assert snapshot.driver_error is not None
    assert (
        "Driver Not Loaded" in snapshot.driver_error
        and "running on the CPU" in snapshot.driver_error
    )


def test_ui_modules_never_import_torch() -> None:
    code = (
        "import sys; import sdtui.gpu, sdtui.tui.widgets.gpu_pane; sys.exit('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, "sdtui.gpu or the GPU pane imported torch"
    assert "torch" not in gpu.__dict__


# --------------------------------------------------------------------------- the pane


@pytest.mark.parametrize("width", [12, 36, 40, 69, 70, 76, 120])
def test_pane_lines_fit_their_width(width: int) -> None:
    history = {0: [0, 40, 97] * 20}
    for snapshot in (RECORDED, NO_DRIVER, None):
        lines = pane_lines(snapshot, history, width, our_pids=[OUR_PID])
        assert lines and all(line.cell_length <= width for line in lines)


def test_pane_shows_no_driver_message_and_host_bars() -> None:
    text = "\n".join(line.plain for line in pane_lines(NO_DRIVER, {}, 36, [OUR_PID]))
    assert "no NVIDIA driver — running on CPU" in text
    assert "CPU  " in text and "64%" in text
    assert "RAM  " in text and "12.3/62.8 GiB" in text


def _pane_text(pane: GpuPane) -> str:
    """What the pane paints on screen, as plain text."""
    return "\n".join(strip.text for strip in pane.render_lines(Region(0, 0, *pane.size)))


async def _wait_for(pilot: Pilot[None], pane: GpuPane, text: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await pilot.pause(0.02)
        shown = _pane_text(pane)
        if text in shown:
            return shown
    raise AssertionError(f"{text!r} never appeared; the pane shows:\n{_pane_text(pane)}")


def test_pane_updates_when_the_next_reading_arrives() -> None:
    asyncio.run(_pane_updates_when_the_next_reading_arrives())


async def _pane_updates_when_the_next_reading_arrives() -> None:
    sampler = RecordedSampler([RECORDED, RECORDED_NEXT])
    app = GpuPaneApp(sampler, interval=0.02)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(GpuPane)
        before = await _wait_for(pilot, pane, "47°C")
        assert "312 W / 700 W" in before and "21.3/80.0 GiB" in before and "97%" in before
        assert "Fan N/A" in before and "*4242" in before
        sampler.advance()
        after = await _wait_for(pilot, pane, "49°C")
        assert "655 W / 700 W" in after and "40.0/80.0 GiB" in after and "100%" in after
        assert "47°C" not in after
    assert sampler.calls >= 2
    assert threading.main_thread().name not in sampler.threads  # sampled off the UI thread


def test_pane_repaints_only_when_what_it_shows_changes() -> None:
    asyncio.run(_pane_repaints_only_when_what_it_shows_changes())


async def _pane_repaints_only_when_what_it_shows_changes() -> None:
    app = GpuPaneApp(interval=None)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(GpuPane)
        pane.show_snapshot(NO_DRIVER)
        pane.show_snapshot(NO_DRIVER)
        assert pane.refresh_count == 1
        # With a GPU the sparkline grows for a minute, then identical readings change nothing.
        for _ in range(60):
            pane.show_snapshot(RECORDED)
        count = pane.refresh_count
        pane.show_snapshot(RECORDED)
        assert pane.refresh_count == count
        pane.show_snapshot(RECORDED_NEXT)
        assert pane.refresh_count == count + 1
        await pilot.pause()
        assert "49°C" in _pane_text(pane)


def test_pane_marks_our_pids_when_they_change() -> None:
    asyncio.run(_pane_marks_our_pids_when_they_change())


async def _pane_marks_our_pids_when_they_change() -> None:
    app = GpuPaneApp(preload=[RECORDED], our_pids=(), interval=None)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(GpuPane)
        await pilot.pause()
        assert "*4242" not in _pane_text(pane)
        pane.our_pids = [OUR_PID]
        await pilot.pause()
        assert "*4242" in _pane_text(pane)


def test_pane_with_the_real_sampler_shows_this_machine() -> None:
    asyncio.run(_pane_with_the_real_sampler_shows_this_machine())


async def _pane_with_the_real_sampler_shows_this_machine() -> None:
    app = GpuPaneApp(our_pids=[os.getpid()], interval=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(GpuPane)
        expected = "GPU 0" if _nvml_loadable() else "no NVIDIA driver — running on CPU"
        await _wait_for(pilot, pane, expected)
        # the host's RAM bar may come with the next reading, not the first one
        shown = await _wait_for(pilot, pane, "RAM")
        assert expected in shown


# --------------------------------------------------------------------------- snapshots


def test_snapshot_narrow_side_panel(snap_compare: Any) -> None:
    app = GpuPaneApp(preload=recorded.recorded_minute())
    assert snap_compare(app, terminal_size=(80, 24))


def test_snapshot_wide(snap_compare: Any) -> None:
    app = GpuPaneApp(preload=recorded.recorded_minute())
    assert snap_compare(app, terminal_size=(160, 48))


def test_snapshot_no_driver(snap_compare: Any) -> None:
    app = GpuPaneApp(preload=[NO_DRIVER])
    assert snap_compare(app, terminal_size=(80, 24))


# --------------------------------------------------------------------------- Apple silicon


def test_apple_silicon_is_recognised_without_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gpu.apple_silicon("darwin", "arm64")
    assert not gpu.apple_silicon("darwin", "x86_64")  # an Intel Mac has no MPS-capable GPU here
    assert not gpu.apple_silicon("linux", "arm64")
    monkeypatch.setattr(gpu, "apple_silicon", lambda: True)
    with gpu.GpuSampler() as sampler:
        snap = sampler.sample()
    assert snap.gpus == () and snap.driver_error == gpu.APPLE_GPU_MESSAGE
    text = "\n".join(line.plain for line in pane_lines(snap, {}, 38))
    # what macOS can tell: the Metal GPU, its memory being the host's RAM bar
    assert "Apple GPU (Metal)" in text and "unified memory" in text and "RAM" in text
    assert "NVIDIA" not in text
