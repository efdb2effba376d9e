"""Running a command palette command in Pilot tests, as a person does: ctrl+p, type, enter.

The palette gathers its hits in a worker: a fixed pause before enter loses the race on a
loaded machine (enter then picks nothing, or an earlier hit). This waits for the hit first.
"""

from __future__ import annotations

import time
from typing import Any


async def run_command(pilot: Any, text: str, timeout: float = 60.0) -> None:
    """Open the palette, type ``text`` and press enter once the highlighted hit names it."""
    from textual.command import CommandList, CommandPalette

    app = pilot.app
    await pilot.press("ctrl+p")
    deadline = time.monotonic() + timeout
    while not isinstance(app.screen, CommandPalette):
        assert time.monotonic() < deadline, "the command palette never opened"
        await pilot.pause(0.05)
    await pilot.press(*text)
    wanted = text.lower()
    while True:
        hits = app.screen.query_one(CommandList)
        at = hits.highlighted
        if at is not None and wanted in str(hits.get_option_at_index(at).prompt).lower():
            break
        assert time.monotonic() < deadline, f"no palette hit for {text!r}"
        await pilot.pause(0.05)
    await pilot.press("enter")
    await pilot.pause()
