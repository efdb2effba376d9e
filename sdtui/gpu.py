"""NVML sampling for the GPU pane and `sdtui gpu`: what the driver reports, and nothing raises.

Reads NVML directly through nvidia-ml-py (module ``pynvml``); never imports torch, so the UI
process can show GPU state while the engine process owns the CUDA context. Every NVML field
call is guarded: a field the GPU does not support (NotSupported, NoPermission, ...) becomes
``None``, shown as "N/A". Without a driver the snapshot carries ``driver_error`` and host
(CPU/RAM) readings only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import psutil

from sdtui.units import format_bytes

try:
    import pynvml
except ImportError:  # a dependency, but a broken install must not take the UI down
    pynvml = None  # type: ignore[assignment]

__all__ = [
    "APPLE_GPU_MESSAGE",
    "apple_silicon",
    "NO_DRIVER_MESSAGE",
    "GpuProcess",
    "GpuReading",
    "GpuSampler",
    "GpuSnapshot",
    "HostProcess",
    "HostReading",
    "SnapshotSource",
    "bar",
    "format_bytes",
    "format_gpu_table",
    "host_reading",
    "main_gpu_command",
    "sparkline",
    "sparkline_rows",
]

NO_DRIVER_MESSAGE = "no NVIDIA driver found (NVML library not loadable): running on the CPU"
# macOS has no NVML: on Apple silicon the GPU (Metal, torch's "mps") shares the RAM, so the
# host's RAM bar is its memory, and the engine reports torch's own MPS figures with each step
APPLE_GPU_MESSAGE = "Apple silicon GPU (Metal): unified memory, shared with the RAM below"


def apple_silicon(platform: str | None = None, machine: str | None = None) -> bool:
    import platform as _platform
    import sys

    return (platform or sys.platform) == "darwin" and (machine or _platform.machine()) == "arm64"


_BAR_EIGHTHS = " ▏▎▍▌▋▊▉"
_SPARK_LEVELS = "▁▂▃▄▅▆▇█"
_NVML_PSTATE_UNKNOWN = 32


# --------------------------------------------------------------------------- readings


@dataclass(frozen=True)
class GpuProcess:
    """One process holding GPU memory; ``name``/``used_memory`` None when NVML cannot say."""

    pid: int
    name: str | None
    used_memory: int | None  # bytes


@dataclass(frozen=True)
class GpuReading:
    """One GPU as NVML reported it. Any field may be None: not supported there (N/A)."""

    index: int
    name: str | None
    temperature_c: int | None
    fan_percent: int | None
    performance_state: str | None  # "P0" (fastest) .. "P15"
    power_w: float | None
    power_limit_w: float | None
    memory_used: int | None  # bytes
    memory_total: int | None  # bytes
    utilization_percent: int | None
    processes: tuple[GpuProcess, ...] | None = ()  # None: the process query failed

    @property
    def memory_fraction(self) -> float | None:
        if self.memory_used is None or not self.memory_total:
            return None
        return self.memory_used / self.memory_total


@dataclass(frozen=True)
class HostProcess:
    """Resident memory of one of the processes we were asked about (sdtui's own)."""

    pid: int
    name: str | None
    rss: int | None  # bytes; None when the process is gone or not ours to read


@dataclass(frozen=True)
class HostReading:
    cpu_percent: float
    cpu_count: int | None
    ram_used: int  # bytes: total - available, as top and nvitop count it
    ram_total: int
    processes: tuple[HostProcess, ...] = ()

    @property
    def ram_fraction(self) -> float:
        return self.ram_used / self.ram_total if self.ram_total else 0.0


@dataclass(frozen=True)
class GpuSnapshot:
    gpus: tuple[GpuReading, ...]
    host: HostReading
    driver_error: str | None = None  # set when NVML is unusable: we run on the CPU
    driver_version: str | None = None


class SnapshotSource(Protocol):
    """What the GPU pane samples from: the real `GpuSampler`, or recorded readings in tests."""

    def sample(self) -> GpuSnapshot: ...


# --------------------------------------------------------------------------- sampling

_T = TypeVar("_T")


def _nvml_field(call: Callable[..., _T], *args: Any) -> _T | None:
    """One NVML call; any NVML error (NotSupported, NoPermission, GPU lost...) means N/A."""
    try:
        return call(*args)
    except pynvml.NVMLError:
        return None


def _process_name(pid: int) -> str | None:
    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):
        pass
    # Another PID namespace (container) or another user's process: ask the driver instead.
    path = _nvml_field(pynvml.nvmlSystemGetProcessName, pid) if pynvml is not None else None
    return os.path.basename(path) if path else None


def _gpu_processes(handle: Any) -> tuple[GpuProcess, ...] | None:
    compute = _nvml_field(pynvml.nvmlDeviceGetComputeRunningProcesses, handle)
    graphics = _nvml_field(pynvml.nvmlDeviceGetGraphicsRunningProcesses, handle)
    if compute is None and graphics is None:
        return None
    memory_by_pid: dict[int, int | None] = {}
    for info in [*(compute or ()), *(graphics or ())]:
        used = info.usedGpuMemory  # None on WDDM (Windows): not available
        previous = memory_by_pid.get(info.pid)
        # A "C+G" process is listed twice; keep the larger figure, as nvidia-smi shows one row.
        if previous is None or (used is not None and used > previous):
            memory_by_pid[info.pid] = used
    return tuple(
        GpuProcess(pid=pid, name=_process_name(pid), used_memory=used)
        for pid, used in sorted(memory_by_pid.items(), key=lambda kv: -(kv[1] or 0))
    )


def _read_gpu(index: int) -> GpuReading:
    handle = _nvml_field(pynvml.nvmlDeviceGetHandleByIndex, index)
    if handle is None:  # GPU lost or not accessible: a row of N/A, not a crash
        return GpuReading(index, None, None, None, None, None, None, None, None, None, None)
    memory = _nvml_field(pynvml.nvmlDeviceGetMemoryInfo, handle)
    utilization = _nvml_field(pynvml.nvmlDeviceGetUtilizationRates, handle)
    pstate = _nvml_field(pynvml.nvmlDeviceGetPerformanceState, handle)
    power_mw = _nvml_field(pynvml.nvmlDeviceGetPowerUsage, handle)
    limit_mw = _nvml_field(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
    return GpuReading(
        index=index,
        name=_nvml_field(pynvml.nvmlDeviceGetName, handle),
        temperature_c=_nvml_field(
            pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU
        ),
        fan_percent=_nvml_field(pynvml.nvmlDeviceGetFanSpeed, handle),
        performance_state=(
            f"P{pstate}" if pstate is not None and pstate != _NVML_PSTATE_UNKNOWN else None
        ),
        power_w=power_mw / 1000 if power_mw is not None else None,
        power_limit_w=limit_mw / 1000 if limit_mw is not None else None,
        memory_used=int(memory.used) if memory is not None else None,
        memory_total=int(memory.total) if memory is not None else None,
        utilization_percent=int(utilization.gpu) if utilization is not None else None,
        processes=_gpu_processes(handle),
    )


def host_reading(pids: Iterable[int] = (), *, cpu_interval: float | None = None) -> HostReading:
    """CPU and RAM of this machine, and the resident memory of `pids` (psutil)."""
    memory = psutil.virtual_memory()
    processes = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            processes.append(HostProcess(pid, process.name(), int(process.memory_info().rss)))
        except (psutil.Error, OSError):
            processes.append(HostProcess(pid, None, None))
    return HostReading(
        cpu_percent=float(psutil.cpu_percent(interval=cpu_interval)),
        cpu_count=psutil.cpu_count(),
        ram_used=int(memory.total - memory.available),
        ram_total=int(memory.total),
        processes=tuple(processes),
    )


class GpuSampler:
    """Samples every GPU through NVML, plus the host. Initialises NVML once; never raises.

    Thread-safe: the GPU pane calls `sample()` from a worker thread.
    """

    def __init__(self, host_pids: Iterable[int] = ()) -> None:
        self.host_pids: tuple[int, ...] = tuple(host_pids)
        self._lock = threading.Lock()
        self._initialised = False
        self._nvml_ready = False
        self._driver_error: str | None = None
        self._driver_version: str | None = None
        self._cpu_primed = False

    def _ensure_nvml(self) -> None:
        if self._initialised:
            return
        self._initialised = True
        if apple_silicon():
            self._driver_error = APPLE_GPU_MESSAGE
            return
        if pynvml is None:
            self._driver_error = (
                "nvidia-ml-py is not installed (pip install nvidia-ml-py): running on the CPU"
            )
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            if error.value == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND:
                self._driver_error = NO_DRIVER_MESSAGE
            else:  # library present, driver not loaded / version mismatch / ...
                self._driver_error = f"NVIDIA driver not usable (NVML: {error}): running on the CPU"
            return
        except OSError as error:  # a broken libnvidia-ml.so
            self._driver_error = f"NVIDIA driver not usable ({error}): running on the CPU"
            return
        self._nvml_ready = True
        self._driver_version = _nvml_field(pynvml.nvmlSystemGetDriverVersion)

    def sample(self) -> GpuSnapshot:
        with self._lock:
            self._ensure_nvml()
            # psutil's first system-wide cpu_percent() is meaningless; measure briefly instead.
            host = host_reading(self.host_pids, cpu_interval=None if self._cpu_primed else 0.1)
            self._cpu_primed = True
            if not self._nvml_ready:
                return GpuSnapshot(gpus=(), host=host, driver_error=self._driver_error)
            count = _nvml_field(pynvml.nvmlDeviceGetCount)
            if count is None:
                return GpuSnapshot(
                    gpus=(),
                    host=host,
                    driver_error="NVIDIA driver did not list its GPUs: running on the CPU",
                    driver_version=self._driver_version,
                )
            return GpuSnapshot(
                gpus=tuple(_read_gpu(index) for index in range(count)),
                host=host,
                driver_version=self._driver_version,
            )

    def close(self) -> None:
        with self._lock:
            if self._nvml_ready:
                _nvml_field(pynvml.nvmlShutdown)
            self._nvml_ready = False
            self._initialised = False

    def __enter__(self) -> GpuSampler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------- formatting


def bar(fraction: float | None, width: int) -> str:
    """A `width`-cell bar of block characters with eighth-cell precision, space padded."""
    if width <= 0:
        return ""
    if fraction is None:
        return " " * width
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, part = divmod(eighths, 8)
    text = "█" * full + (_BAR_EIGHTHS[part] if part else "")
    return text.ljust(width)


def sparkline(values: Sequence[float | None], width: int, maximum: float = 100.0) -> str:
    """Values (0..maximum) as a one-row, `width`-cell sparkline, newest on the right."""
    return sparkline_rows(values, width, maximum, height=1)[0]


def sparkline_rows(
    values: Sequence[float | None], width: int, maximum: float = 100.0, height: int = 1
) -> list[str]:
    """Values (0..maximum) as a `height`-row bar chart `width` cells wide, top row first.

    With more values than cells, each cell shows the peak of its share, as Textual's
    Sparkline does; with fewer, the chart is right-aligned and grows leftwards over time.
    A None (N/A) leaves its column blank; a zero still draws the baseline.
    """
    width, height = max(width, 0), max(height, 1)
    if len(values) > width:
        points: list[float | None] = [
            max(
                (
                    v
                    for v in values[i * len(values) // width : (i + 1) * len(values) // width]
                    if v is not None
                ),
                default=None,
            )
            for i in range(width)
        ]
    else:
        points = [None] * (width - len(values)) + list(values)
    rows = []
    for row in reversed(range(height)):  # top row first
        cells = []
        for value in points:
            if value is None:
                cells.append(" ")
                continue
            level = round(max(0.0, min(1.0, value / maximum)) * height * 8)
            eighths = max(0, min(8, level - row * 8))
            if eighths == 0:
                cells.append(_SPARK_LEVELS[0] if row == 0 else " ")
            else:
                cells.append(_SPARK_LEVELS[eighths - 1])
        rows.append("".join(cells))
    return rows


def _na(value: object, unit: str = "") -> str:
    return "N/A" if value is None else f"{value}{unit}"


def _power_text(reading: GpuReading) -> str:
    draw = "N/A" if reading.power_w is None else f"{reading.power_w:.0f} W"
    cap = "N/A" if reading.power_limit_w is None else f"{reading.power_limit_w:.0f} W"
    return f"{draw} / {cap}"


def _memory_text(reading: GpuReading) -> str:
    return f"{format_bytes(reading.memory_used)} / {format_bytes(reading.memory_total)}"


def _percent_text(fraction: float | None) -> str:
    return "N/A" if fraction is None else f"{fraction * 100:.0f}%"


def _columns(rows: list[list[str]], right: set[int]) -> list[str]:
    """Rows of cells aligned in columns two spaces apart; columns in `right` right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]


def _host_lines(host: HostReading, our_pids: Sequence[int], bar_width: int) -> list[str]:
    cores = f"  {host.cpu_count} cores" if host.cpu_count else ""
    lines = [
        f"CPU  [{bar(host.cpu_percent / 100, bar_width)}] {host.cpu_percent:3.0f}%{cores}",
        f"RAM  [{bar(host.ram_fraction, bar_width)}] {host.ram_fraction * 100:3.0f}%"
        f"  {format_bytes(host.ram_used)} / {format_bytes(host.ram_total)}",
    ]
    if host.processes:
        lines.append("")
        lines.append("sdtui processes (resident memory):")
        rows = [["PID", "Name", "RSS"]] + [
            [
                _pid_cell(p.pid, our_pids),
                _na(p.name),
                format_bytes(p.rss) if p.rss is not None else "gone",
            ]
            for p in host.processes
        ]
        lines.extend("  " + line for line in _columns(rows, right={0, 2}))
    return lines


def _pid_cell(pid: int, our_pids: Sequence[int]) -> str:
    return f"*{pid}" if pid in our_pids else str(pid)


def format_gpu_table(snapshot: GpuSnapshot, our_pids: Iterable[int] = ()) -> str:
    """An nvidia-smi style one-shot table; processes in `our_pids` are marked "*"."""
    ours = tuple(our_pids)
    bar_width = 30
    if snapshot.driver_error is not None:
        lines = [f"GPU: {snapshot.driver_error}", ""]
        lines.extend(_host_lines(snapshot.host, ours, bar_width))
        return "\n".join(lines) + "\n"

    count = len(snapshot.gpus)
    lines = [
        f"Driver Version: {_na(snapshot.driver_version)}   {count} GPU{'s' if count != 1 else ''}",
        "",
    ]
    rows = [
        [
            "GPU",
            "Name",
            "Temp",
            "Fan",
            "Perf",
            "Power (draw / cap)",
            "Memory (used / total)",
            "Util",
        ]
    ]
    for gpu in snapshot.gpus:
        rows.append(
            [
                str(gpu.index),
                _na(gpu.name),
                _na(gpu.temperature_c, "°C"),
                _na(gpu.fan_percent, "%"),
                _na(gpu.performance_state),
                _power_text(gpu),
                _memory_text(gpu),
                _na(gpu.utilization_percent, "%"),
            ]
        )
    header, *gpu_lines = _columns(rows, right={0, 2, 3, 7})
    rule = "-" * max(len(line) for line in [header, *gpu_lines])
    lines += [header, rule]
    indent = " " * 5
    for gpu, line in zip(snapshot.gpus, gpu_lines, strict=True):
        utilization = None if gpu.utilization_percent is None else gpu.utilization_percent / 100
        lines += [
            line,
            f"{indent}Mem  [{bar(gpu.memory_fraction, bar_width)}] {_percent_text(gpu.memory_fraction):>4}",
            f"{indent}Util [{bar(utilization, bar_width)}] {_percent_text(utilization):>4}",
        ]
    lines += [rule, "", "Processes:"]
    process_rows = [["GPU", "PID", "Name", "GPU Memory"]]
    for gpu in snapshot.gpus:
        if gpu.processes is None:
            process_rows.append([str(gpu.index), "N/A", "N/A", "N/A"])
            continue
        for process in gpu.processes:
            process_rows.append(
                [
                    str(gpu.index),
                    _pid_cell(process.pid, ours),
                    _na(process.name),
                    format_bytes(process.used_memory),
                ]
            )
    if len(process_rows) == 1:
        lines.append("  No running processes found")
    else:
        lines += ["  " + line for line in _columns(process_rows, right={0, 1, 3})]
        if any(p.pid in ours for gpu in snapshot.gpus for p in gpu.processes or ()):
            lines.append("  * this sdtui session")
    lines += ["", "Host:"]
    lines += ["  " + line if line else line for line in _host_lines(snapshot.host, ours, bar_width)]
    return "\n".join(lines) + "\n"


def main_gpu_command(our_pids: Iterable[int] = ()) -> int:
    """`sdtui gpu`: print the table once; works (CPU and RAM only) without a driver."""
    pids = tuple(our_pids)
    with GpuSampler(host_pids=pids) as sampler:
        print(format_gpu_table(sampler.sample(), pids), end="")
    return 0
