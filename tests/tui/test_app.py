"""The dashboard driven by Pilot against a real engine and real backends on loopback."""

from __future__ import annotations

import httpx

from lbtui.serve import ServeOptions
from lbtui.tui.app import Dashboard, backend_cells, status_line
from tests.conftest import make_config, wait_for


async def test_table_shows_backends_in_config_order_and_live_counts(backends):
    bs = [await backends(f"b{i}") for i in range(3)]
    app = Dashboard(ServeOptions(config=make_config(bs)))
    async with app.run_test(size=(160, 30)) as pilot:
        await pilot.pause()
        table = app.query_one("#backends")
        assert [r.value for r in table.rows] == ["b0", "b1", "b2"]
        assert table.cursor_row == 0
        engine = app.runtime.engine
        async with httpx.AsyncClient(base_url=engine.url()) as http:
            for _ in range(6):
                assert (await http.get("/")).status_code == 200
        app.refresh_view()
        assert str(table.get_cell("b0", "requests")) == "2"
        assert "req/s" in str(app.query_one("#status").render())
        await app.action_quit()


async def test_d_drains_and_e_enables_the_selected_backend(backends):
    bs = [await backends(f"b{i}") for i in range(2)]
    app = Dashboard(ServeOptions(config=make_config(bs)))
    async with app.run_test(size=(160, 30)) as pilot:
        await pilot.pause()
        await pilot.press("down", "d")
        controller = app.controller
        assert controller.snapshot().backend("b1").admin_state == "drain"
        assert controller.snapshot().backend("b0").admin_state == "ready"
        table = app.query_one("#backends")
        assert str(table.get_cell("b1", "state")).startswith("drain")
        event = controller.events()[0]
        assert (event.actor, event.action, event.target, event.after) == ("key", "state", "b1", "drain")
        await pilot.press("e")
        assert controller.snapshot().backend("b1").admin_state == "ready"
        await wait_for(lambda: str(table.get_cell("b1", "state")) == "ready", what="the table to show ready")
        await app.action_quit()


async def test_q_drains_and_quits(backends):
    b = await backends("b0")
    app = Dashboard(ServeOptions(config=make_config([b])))
    async with app.run_test(size=(160, 30)) as pilot:
        await pilot.pause()
        engine = app.runtime.engine
        await pilot.press("q")
        await wait_for(lambda: engine.closing, what="the engine to drain")
    assert app.return_value == 0


def test_cells_say_state_in_words_not_only_colour():
    from lbtui.core.model import BackendView
    from lbtui.core.stats import window_view

    view = BackendView(
        name="x",
        service="s",
        group="g",
        address="127.0.0.1:1",
        weight=1,
        admin_state="drain",
        health="up",
        health_count=0,
        in_flight=2,
        requests=10,
        status_classes=(0, 0, 9, 0, 0, 1),
        bytes_in=0,
        bytes_out=0,
        connect_failures=0,
        ewma_ms=1.0,
        drain_seconds=3.2,
        removing=False,
        window=window_view(1.0, 10, 1, [0] * 736),
    )
    cells = backend_cells(view)
    assert str(cells["state"]) == "drain 3s"
    assert str(cells["health"]) == "up"
    assert cells["in_flight"] == "2"
    assert cells["errors"] == "10.0"


def test_status_line_without_traffic():
    from lbtui.core.model import Snapshot

    line = status_line(Snapshot(time=0.0, uptime=61.0, listeners=(), services=(), connections=0))
    assert "up 00:01:01" in line
    assert "5xx -" in line
