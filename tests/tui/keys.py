"""Pressing the dashboard's keys in tests: a change runs off the UI loop, so its result shows a moment later."""

from __future__ import annotations

from textual.pilot import Pilot

from lbtui.tui.screens import AddBackendScreen
from tests.conftest import wait_for

DEADLINE = 20.0  # generous: a change on a loaded machine; the dashboard itself never waits on it


async def settled(pilot: Pilot[int]) -> None:
    """Wait until every change asked for has shown its result (or refusal), with a deadline."""
    app = pilot.app

    def done() -> bool:
        adding = isinstance(app.screen, AddBackendScreen) and app.screen.adding
        return getattr(app, "pending_changes", 0) == 0 and not adding

    await wait_for(done, DEADLINE, what="the changes asked for")
    await pilot.pause()


async def press(pilot: Pilot[int], *keys: str) -> None:
    """Press `keys`, then wait for the changes they asked for (see `settled`)."""
    await pilot.press(*keys)
    await settled(pilot)
