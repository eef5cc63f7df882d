"""`lbtui attach haproxy://...`: the dashboard on a real HAProxy through HaproxyController (Pilot), and the command
line's answers to a bad or unreachable socket."""

from __future__ import annotations

import asyncio

import pytest

from lbtui.cli import main
from lbtui.haproxy.controller import HaproxyController
from lbtui.tui.app import Dashboard
from lbtui.tui.format import health_style
from lbtui.tui.table import Table
from tests.conftest import wait_for
from tests.haproxy.test_runtime import get
from tests.tui.keys import press

SIZE = (160, 40)


async def test_the_dashboard_shows_and_steers_haproxy(haproxy):
    h = await haproxy(["a", "b"])
    for _ in range(6):
        assert (await get(h.frontend_port))[0] == 200
    controller = HaproxyController(str(h.unix), poll_seconds=0.05)
    try:
        await asyncio.to_thread(controller.snapshot)
        app = Dashboard(None, controller=controller)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            table = app.query_one("#backends", Table)
            assert table.keys == ["a", "b"]
            keys = [key for key, _, _ in table.columns]
            assert "avg" in keys  # HAProxy's rtime, under a label that says it is an average
            assert "p50" not in keys
            assert "p99" not in keys
            await wait_for(lambda: str(table.get_cell("a", "requests")) == "3", what="a's requests shown")
            assert str(table.get_cell("a", "health")) == "no check"
            assert "latency: avg (HAProxy, last 1024)" in str(app.query_one("#services").render())
            header = str(app.query_one("#status").render())
            assert "latency: avg per row" in header  # no percentile to show: never "p99 nan"
            assert "nan" not in header

            await press(pilot, "d")  # the cursor is on a
            states = await h.client().show_servers_state("app")
            assert next(s for s in states if s.server == "a").draining
            await wait_for(lambda: str(table.get_cell("a", "state")).startswith("drain"), what="drain shown")
            await press(pilot, "e")
            states = await h.client().show_servers_state("app")
            assert not next(s for s in states if s.server == "a").draining
            assert [(e.actor, e.before, e.after) for e in controller.events()] == [
                ("key", "drain", "ready"),
                ("key", "ready", "drain"),
            ]

            assert h.proc is not None
            h.proc.kill()
            await h.proc.wait()
            status = app.query_one("#status")
            await wait_for(lambda: "CONNECTION LOST" in str(status.render()), what="the status bar to say so")
            assert table.keys == ["a", "b"]  # the last state stays
            await pilot.press("q", "y")
            await wait_for(lambda: not app.is_running, what="the dashboard to quit")
        assert app.return_value == 0
    finally:
        await asyncio.to_thread(controller.close)


async def attach(url: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = await asyncio.wait_for(asyncio.to_thread(main, ["attach", url]), 30)
    out, err = capsys.readouterr()
    return code, out, err


async def test_attach_to_a_bad_or_silent_socket_exits_1_with_one_line(capsys, tmp_path):
    code, out, err = await attach("haproxy://nowhere", capsys)
    assert (code, out) == (1, "")
    assert err.startswith("lbtui: attach: not a HAProxy Runtime API address: 'haproxy://nowhere'")
    assert err.count("\n") == 1
    code, out, err = await attach(f"haproxy://{tmp_path}/none.sock", capsys)
    assert (code, out) == (1, "")
    assert err.startswith(f"lbtui: attach: haproxy://{tmp_path}/none.sock: unreachable")
    assert err.count("\n") == 1


def test_haproxys_health_words_take_lbtuis_colours():
    assert [health_style(w) for w in ("UP", "DOWN", "UP 1/3", "DOWN 1/2", "NOLB", "DRAIN", "MAINT")] == [
        "health-up",
        "health-down",
        "health-going",
        "health-going",
        "health-drain",
        "health-drain",
        "health-maint",
    ]
    assert health_style("no check") == ""
    assert health_style("MAINT (via app/a)") == "health-maint"
    assert health_style("going_down") == "health-going"  # lbtui's own words as before
