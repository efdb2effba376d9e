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
