"""The GPU pane: nvidia-smi at a glance, sampled once a second off the UI thread."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from threading import Event

from textual import work
from textual.app import RenderResult
from textual.content import Content
from textual.geometry import Size
from textual.message import Message
from textual.widget import Widget
from textual.worker import get_current_worker

from sdtui.gpu import (
    APPLE_GPU_MESSAGE,
    NO_DRIVER_MESSAGE,
    GpuReading,
    GpuSampler,
    GpuSnapshot,
    HostReading,
    SnapshotSource,
    bar,
    format_bytes,
    sparkline_rows,
)
from sdtui.safe_text import one_line, visible

__all__ = ["GpuPane", "pane_lines"]

HISTORY_SAMPLES = 60  # one minute at the default one-second interval
WIDE_WIDTH = 70  # from here on a GPU's header and stats share a line, meters sit side by side
GRAPH_ROWS_WIDE = 4

_GIB = 1024**3
_TRACK = "on $panel"


def _level_style(fraction: float | None) -> str:
    """Green / amber / red by load, the way nvitop colours its meters."""
    if fraction is None or fraction < 0.5:
        return "$success"
    return "$warning" if fraction < 0.8 else "$error"


def _meter(label: str, fraction: float | None, text: str, width: int) -> Content:
    """htop-style meter: `label` then a block bar filling `width`, `text` right-aligned inside."""
    cells = max(0, width - len(label))
    text = f" {text}"[:cells]  # a space keeps the figure off the bar's end
    fill = bar(fraction, cells)
    text_start = cells - len(text)
    colour = _level_style(fraction)
    parts: list[str | tuple[str, str]] = [(label, "bold")]
    parts.append((fill[:text_start], f"{colour} {_TRACK}"))
    for cell, char in zip(fill[text_start:], text, strict=True):
        # Text over a full cell is drawn in the bar's colour as background, so it stays legible.
        parts.append((char, f"bold {_TRACK}" if cell == " " else f"bold $background on {colour}"))
    return Content.assemble(*parts).simplify()


def _pair(used: int | None, total: int | None) -> str:
    """'21.3/80.0 GiB' when both are GiB-sized, else each with its own unit."""
    if used is not None and total is not None and total >= _GIB:
        return f"{used / _GIB:.1f}/{total / _GIB:.1f} GiB"
    return f"{format_bytes(used)}/{format_bytes(total)}"


def _na(value: object, unit: str = "") -> str:
    """The value, or N/A; a process or GPU name is another program's text: shown, not sent."""
    return "N/A" if value is None else one_line(f"{value}{unit}")


def _stats(gpu: GpuReading) -> Content:
    temperature = gpu.temperature_c
    hot = temperature is not None and temperature >= 85
    draw = "N/A" if gpu.power_w is None else f"{gpu.power_w:.0f} W"
    cap = "N/A" if gpu.power_limit_w is None else f"{gpu.power_limit_w:.0f} W"
    return Content.assemble(
        (_na(temperature, "°C"), "$error bold" if hot else "bold"),
        ("  Fan ", "$text-muted"),
        (_na(gpu.fan_percent, "%"), "bold"),
        ("  ", ""),
        (_na(gpu.performance_state), "bold"),
        ("  ", ""),
        (draw, "bold"),
        (f" / {cap}", "$text-muted"),
    )


def _gpu_lines(
    gpu: GpuReading, history: Sequence[int | None], width: int, our_pids: Sequence[int]
) -> list[Content]:
    title = Content.assemble((f"GPU {gpu.index}", "bold $accent"), "  ", (_na(gpu.name), "bold"))
    utilization = None if gpu.utilization_percent is None else gpu.utilization_percent / 100
    util_text = _na(gpu.utilization_percent, "%")
    mem_text = _pair(gpu.memory_used, gpu.memory_total)
    lines: list[Content] = []
    if width >= WIDE_WIDTH:
        if gpu.memory_fraction is not None:
            mem_text += f" {gpu.memory_fraction:.0%}"
        lines.append(title + Content("   ") + _stats(gpu))
        half = (width - 2) // 2
        lines.append(
            _meter("Mem  ", gpu.memory_fraction, mem_text, half)
            + Content("  ")
            + _meter("Util ", utilization, util_text, width - 2 - half)
        )
    else:
        lines.append(title)
        lines.append(_stats(gpu))
        lines.append(_meter("Mem  ", gpu.memory_fraction, mem_text, width))
        lines.append(_meter("Util ", utilization, util_text, width))
    # The utilisation over the last minute: one row when narrow, a small chart when wide.
    height = GRAPH_ROWS_WIDE if width >= WIDE_WIDTH else 1
    labels = ["1min"] if height == 1 else ["100%", "1min", *[""] * (height - 3), "  0%"]
    for label, row in zip(
        labels, sparkline_rows(list(history), width - 5, height=height), strict=True
    ):
        lines.append(Content.assemble((f"{label:<5}", "$text-muted"), (row, "$accent")))
    lines.extend(_process_lines(gpu, our_pids))
    return lines


def _process_lines(gpu: GpuReading, our_pids: Sequence[int]) -> list[Content]:
    if gpu.processes is None:
        return [Content.styled("processes: N/A", "$text-muted")]
    if not gpu.processes:
        return [Content.styled("no processes", "$text-muted")]
    pid_width = max(len(str(p.pid)) for p in gpu.processes) + 1
    name_width = min(16, max(7, *(len(_na(p.name)) for p in gpu.processes)))
    lines = [
        Content.styled(
            f"{'PID'.rjust(pid_width)}  {'Process'.ljust(name_width)}  {'GPU Mem':>8}",
            "$text-muted",
        )
    ]
    for process in gpu.processes:
        ours = process.pid in our_pids
        pid = (f"*{process.pid}" if ours else str(process.pid)).rjust(pid_width)
        name = _na(process.name)[:name_width].ljust(name_width)
        row = f"{pid}  {name}  {format_bytes(process.used_memory):>8}"
        lines.append(Content.styled(row, "bold $accent" if ours else ""))
    return lines


def _host_lines(host: HostReading, width: int, our_pids: Sequence[int]) -> list[Content]:
    cpu_text = f"{host.cpu_percent:.0f}%"
    ram_text = _pair(host.ram_used, host.ram_total)
    cpu_fraction = host.cpu_percent / 100
    if width >= WIDE_WIDTH:
        half = (width - 2) // 2
        lines = [
            _meter("CPU  ", cpu_fraction, cpu_text, half)
            + Content("  ")
            + _meter("RAM  ", host.ram_fraction, ram_text, width - 2 - half)
        ]
    else:
        lines = [
            _meter("CPU  ", cpu_fraction, cpu_text, width),
            _meter("RAM  ", host.ram_fraction, ram_text, width),
        ]
    for process in host.processes:
        mark = "*" if process.pid in our_pids else " "
        rss = format_bytes(process.rss) if process.rss is not None else "gone"
        lines.append(
            Content.styled(f"{mark}{process.pid}  {_na(process.name)}  RSS {rss}", "$text-muted")
        )
    return lines


def pane_lines(
    snapshot: GpuSnapshot | None,
    history: dict[int, Sequence[int | None]],
    width: int,
    our_pids: Sequence[int] = (),
) -> list[Content]:
    """The pane's lines for a content `width`: what `GpuPane` renders (pure, for tests)."""
    width = max(width, 1)
    if snapshot is None:
        lines = [Content.styled("reading GPU…", "$text-muted")]
    elif snapshot.driver_error is not None:
        if snapshot.driver_error == NO_DRIVER_MESSAGE:
            lines = [Content.styled("no NVIDIA driver — running on CPU", "bold $warning")]
        elif snapshot.driver_error == APPLE_GPU_MESSAGE:
            lines = [Content.styled("Apple GPU (Metal)", "bold")]
            lines += [Content.styled("unified memory: the RAM below", "$text-muted")]
        else:
            lines = [Content.styled("NVIDIA driver unusable — running on CPU", "bold $warning")]
            lines += [
                line.stylize("$text-muted")
                for line in Content(visible(snapshot.driver_error)).wrap(width)
            ]
        lines.append(Content(""))
        lines.extend(_host_lines(snapshot.host, width, our_pids))
    else:
        lines = []
        if not snapshot.gpus:
            lines.append(Content.styled("NVIDIA driver found, but no GPU", "bold $warning"))
        for gpu in snapshot.gpus:
            lines.extend(_gpu_lines(gpu, history.get(gpu.index, ()), width, our_pids))
            lines.append(Content(""))
        lines.extend(_host_lines(snapshot.host, width, our_pids))
        if snapshot.driver_version:
            lines.append(
                Content.styled(f"driver {one_line(str(snapshot.driver_version))}", "$text-muted")
            )
    return [line.truncate(width, ellipsis=True) for line in lines]


class GpuPane(Widget):
    """GPU temperature, fan, P-state, power, memory, utilisation (with a one-minute
    sparkline) and processes, like nvidia-smi; CPU and RAM when there is no driver.

    `sampler` is anything with `.sample() -> GpuSnapshot` (default: a real `GpuSampler`).
    It is called every `interval` seconds in a worker thread, so a slow NVML call never
    blocks the event loop; `interval=None` samples nothing by itself (feed `show_snapshot`).
    """

    DEFAULT_CSS = """
    GpuPane {
        height: auto;
    }
    """

    class Sampled(Message, bubble=False):
        """A reading taken in the sampling thread, delivered to the pane on the UI thread."""

        def __init__(self, snapshot: GpuSnapshot) -> None:
            super().__init__()
            self.snapshot = snapshot

    def __init__(
        self,
        sampler: SnapshotSource | None = None,
        *,
        our_pids: Iterable[int] = (),
        interval: float | None = 1.0,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._sampler = sampler
        self._our_pids = tuple(our_pids)
        self.interval = interval
        self.snapshot: GpuSnapshot | None = None
        self._history: dict[int, deque[int | None]] = {}
        self._shown: tuple[object, ...] | None = None
        self._stop = Event()
        self.refresh_count = 0  # repaints caused by new readings (tests check it stays put)

    @property
    def our_pids(self) -> tuple[int, ...]:
        """PIDs of sdtui's own processes: marked "*" in the process list."""
        return self._our_pids

    @our_pids.setter
    def our_pids(self, pids: Iterable[int]) -> None:
        self._our_pids = tuple(pids)
        if isinstance(self._sampler, GpuSampler):
            self._sampler.host_pids = self._our_pids
        self._shown = None
        self.refresh(layout=True)

    def on_mount(self) -> None:
        if self.interval is not None:
            self._sample_forever()

    def on_unmount(self) -> None:
        self._stop.set()

    @work(thread=True, exclusive=True, group="gpu-pane-sampling")
    def _sample_forever(self) -> None:
        if self._sampler is None:
            self._sampler = GpuSampler(host_pids=self._our_pids)
        worker = get_current_worker()
        while not worker.is_cancelled and not self._stop.is_set():
            # post_message is thread-safe and never blocks, even while the app shuts down.
            if not self.post_message(self.Sampled(self._sampler.sample())):
                return
            self._stop.wait(self.interval)

    def on_gpu_pane_sampled(self, message: Sampled) -> None:
        self.show_snapshot(message.snapshot)

    def show_snapshot(self, snapshot: GpuSnapshot) -> None:
        """Take a reading (UI thread); repaint only if what the pane shows has changed."""
        for gpu in snapshot.gpus:
            history = self._history.setdefault(gpu.index, deque(maxlen=HISTORY_SAMPLES))
            history.append(gpu.utilization_percent)
        self.snapshot = snapshot
        shown = (snapshot, self._our_pids, tuple(tuple(h) for h in self._history.values()))
        if shown == self._shown:
            return
        self._shown = shown
        self.refresh_count += 1
        self.refresh(layout=True)

    def _lines(self, width: int) -> list[Content]:
        return pane_lines(self.snapshot, dict(self._history), width, self._our_pids)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self._lines(width))

    def render(self) -> RenderResult:
        return Content("\n").join(self._lines(self.content_size.width))
