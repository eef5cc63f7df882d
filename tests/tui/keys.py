"""Pressing the dashboard's keys in tests: a change runs off the UI loop, so its result shows a moment later."""

from __future__ import annotations

from textual.pilot import Pilot

from tests.conftest import wait_for

DEADLINE = 20.0  # generous: a change on a loaded machine; the dashboard itself never waits on it


async def settled(pilot: Pilot[int]) -> None:
    """Wait until every change asked for has shown its result (or refusal), with a deadline."""
    app = pilot.app
    await wait_for(lambda: getattr(app, "pending_changes", 0) == 0, DEADLINE, what="the changes asked for")
    await pilot.pause()


async def press(pilot: Pilot[int], *keys: str) -> None:
    """Press `keys`, then wait for the changes they asked for (see `settled`)."""
    await pilot.press(*keys)
    await settled(pilot)
