"""Numbers as people read them, in one place for the CLI and the TUI."""

from __future__ import annotations


def format_uptime(seconds: float) -> str:
    """45s, 12m, 3h05m, 2d04h."""
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


KIB = 1024
MIB = 1024**2
GIB = 1024**3
TIB = 1024**4
_BINARY_UNITS = ((TIB, "TiB", 1), (GIB, "GiB", 1), (MIB, "MiB", 0), (KIB, "KiB", 0))


def format_bytes(count: float | None) -> str:
    """A byte count in binary units, as the GPU pane and nvidia-smi show memory:
    1.5 TiB, 21.3 GiB, 512 MiB, 9.5 MiB, 12 KiB, 800 B; N/A for None. GiB and TiB keep one
    decimal; MiB and KiB keep one below 10 only.

    The one byte formatter of sdtui (VRAM, RAM, file sizes in messages): the unit says what
    it divides by, so 2 GiB of file is "2.0 GiB", never "2.0 GB" or "2.1 GB" by chance.
    """
    if count is None:
        return "N/A"
    size = abs(count)
    for scale, unit, digits in _BINARY_UNITS:
        if size >= scale:
            if size / scale < 9.95:
                digits = 1  # 9.5 MiB, not 9 MiB; 512 MiB stays 512 MiB
            return f"{count / scale:.{digits}f} {unit}"
    return f"{int(count)} B"
