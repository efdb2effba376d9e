"""A tiny app hosting GpuPane in a side panel, fed recorded NVML readings.

The side panel takes half the screen: 40 columns at 80x24, 80 at 160x48.
Run it by hand with `python tests/apps/gpu_pane_app.py` (add `--live` for the real sampler).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import replace

from textual.app import App, ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from sdtui.gpu import GpuProcess, GpuReading, GpuSnapshot, HostProcess, HostReading, SnapshotSource
from sdtui.tui.widgets.gpu_pane import GpuPane

GIB = 1024**3
OUR_PID = 4242

H100 = GpuReading(
    index=0,
    name="NVIDIA H100 80GB HBM3",
    temperature_c=47,
    fan_percent=None,  # data-centre boards report NotSupported: N/A
    performance_state="P0",
    power_w=312.4,
    power_limit_w=700.0,
    memory_used=int(21.3 * GIB),
    memory_total=80 * GIB,
    utilization_percent=97,
    processes=(
        GpuProcess(pid=OUR_PID, name="python", used_memory=int(18.2 * GIB)),
        GpuProcess(pid=5555, name="comfyui", used_memory=int(3.1 * GIB)),
    ),
)
HOST = HostReading(
    cpu_percent=23.0,
    cpu_count=16,
    ram_used=int(12.3 * GIB),
    ram_total=int(62.8 * GIB),
    processes=(HostProcess(pid=OUR_PID, name="python", rss=int(2.1 * GIB)),),
)
RECORDED = GpuSnapshot(gpus=(H100,), host=HOST, driver_version="550.54.15")
# One second later: a 1024² batch is now decoding, memory and power are up.
RECORDED_NEXT = replace(
    RECORDED,
    gpus=(
        replace(
            H100,
            temperature_c=49,
            power_w=655.0,
            memory_used=int(40.0 * GIB),
            utilization_percent=100,
        ),
    ),
)
NO_DRIVER = GpuSnapshot(
    gpus=(),
    host=replace(HOST, cpu_percent=64.0),
    driver_error="no NVIDIA driver found (NVML library not loadable): running on the CPU",
)


def recorded_minute() -> list[GpuSnapshot]:
    """60 one-second readings: idle, a job ramping up, then the steady 97 % of RECORDED."""
    minute = []
    for second in range(60):
        if second < 12:
            util = 0
        elif second < 24:
            util = (second - 11) * 8
        else:
            util = 97 - (second * 7) % 11 if second < 59 else 97
        minute.append(replace(RECORDED, gpus=(replace(H100, utilization_percent=util),)))
    return minute


class RecordedSampler:
    """Plays back recorded snapshots: the current one until `advance()` moves to the next."""

    def __init__(self, snapshots: Sequence[GpuSnapshot]) -> None:
        self._snapshots = list(snapshots)
        self._position = 0
        self._lock = threading.Lock()
        self.calls = 0
        self.threads: set[str] = set()

    def sample(self) -> GpuSnapshot:
        with self._lock:
            self.calls += 1
            self.threads.add(threading.current_thread().name)
            return self._snapshots[self._position]

    def advance(self) -> None:
        with self._lock:
            self._position = min(self._position + 1, len(self._snapshots) - 1)


class GpuPaneApp(App[None]):
    CSS = """
    Screen { layout: horizontal; }
    #main { width: 1fr; height: 100%; border: round $primary; padding: 0 1; }
    #side { width: 50%; height: 100%; border: round $accent; padding: 0 1; }
    """

    def __init__(
        self,
        sampler: SnapshotSource | None = None,
        *,
        preload: Iterable[GpuSnapshot] = (),
        our_pids: Iterable[int] = (OUR_PID,),
        interval: float | None = None,
    ) -> None:
        super().__init__()
        self._sampler = sampler
        self._preload = list(preload)
        self._our_pids = tuple(our_pids)
        self._interval = interval

    def compose(self) -> ComposeResult:
        yield Static("image preview", id="main")
        with VerticalScroll(id="side") as side:
            side.border_title = "GPU"
            yield GpuPane(self._sampler, our_pids=self._our_pids, interval=self._interval)

    def on_mount(self) -> None:
        pane = self.query_one(GpuPane)
        for snapshot in self._preload:
            pane.show_snapshot(snapshot)


if __name__ == "__main__":
    if "--live" in sys.argv:
        GpuPaneApp(interval=1.0).run()
    else:
        GpuPaneApp(preload=recorded_minute()).run()
