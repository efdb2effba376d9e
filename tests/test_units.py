"""sdtui.units: the one byte formatter (binary units, named as such) and the uptime."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdtui.units import GIB, KIB, MIB, TIB, format_bytes, format_uptime


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (None, "N/A"),
        (0, "0 B"),
        (800, "800 B"),
        (1023, "1023 B"),
        (KIB, "1.0 KiB"),
        (12 * KIB, "12 KiB"),
        (int(9.5 * MIB), "9.5 MiB"),
        (512 * MIB, "512 MiB"),
        (1000**3, "954 MiB"),  # a decimal "1 GB" is not a GiB
        (2 * GIB, "2.0 GiB"),
        (int(21.3 * GIB), "21.3 GiB"),  # what the GPU pane shows
        (80 * GIB, "80.0 GiB"),
        (int(1.5 * TIB), "1.5 TiB"),
        (-3 * GIB, "-3.0 GiB"),
    ],
)
def test_format_bytes_says_what_it_divides_by(count: int | None, text: str) -> None:
    assert format_bytes(count) == text


def test_no_decimal_unit_names_and_one_formatter_everywhere() -> None:
    """Every unit is a power of 1024 and named so (never KB/MB/GB for 1024-multiples); the
    GPU readers, the memory ladder and the model listing all use this one function."""
    from sdtui import gpu, model_index

    for n in (1, 999, 1024, 10**6, 10**9, 10**12, 5 * 10**12):
        unit = format_bytes(n).split()[-1]
        assert unit in ("B", "KiB", "MiB", "GiB", "TiB")
    assert gpu.format_bytes is format_bytes
    entry = model_index.ModelEntry("m", Path("m.safetensors"), "file", 2 * GIB)
    assert entry.size_label == "2.0 GiB"


def test_format_uptime() -> None:
    assert [format_uptime(s) for s in (5, 125, 3 * 3600 + 300, 50 * 3600)] == [
        "5s",
        "2m",
        "3h05m",
        "2d02h",
    ]
