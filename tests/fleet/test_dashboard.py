"""The dashboard on a fleet of two real HAProxy processes (Textual's Pilot): the agree column, the status line naming
the instances, `enter` showing the row per instance, a key applied to both, an instance that stops."""

from __future__ import annotations

from rich.text import Text

from lbtui.tui.app import Dashboard
from lbtui.tui.screens import DetailScreen
from lbtui.tui.table import Table
from tests.conftest import wait_for
from tests.fleet.conftest import controllers, kill, url
from tests.fleet.test_fleet import server_state

SIZE = (160, 40)


def cell(table: Table, key: str, column: str) -> str:
    value = table.get_cell(key, column)
    return value.plain if isinstance(value, Text) else str(value)


async def test_the_dashboard_shows_the_fleet_and_each_instance(haproxy, fleets):
    one, two = await haproxy(["a", "b"]), await haproxy(["a", "b"])
    fleet = fleets(controllers(one, two))
    app = Dashboard(None, controller=fleet)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        table = app.query_one("#backends", Table)
        await wait_for(lambda: table.keys == ["a", "b"], what="the merged rows")
        assert "agree" in [key for key, *_ in table.columns]
        await wait_for(lambda: cell(table, "a", "agree") == "2/2", what="2/2")
        assert "fleet 2/2 up" in str(app.query_one("#status").render())

        await pilot.press("d")  # drain a, on both
        assert [(await server_state(h, "a")).draining for h in (one, two)] == [True, True]
        await wait_for(lambda: cell(table, "a", "state").startswith("drain"), what="drain shown")

        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        text = str(app.screen.query_one("#detail").render())
        assert "on 2 instances: state and weight agree on 2" in text
        assert url(one)[-27:] in text
        assert url(two)[-27:] in text
        await pilot.press("escape")

        # Someone sets a weight on one instance only: 1/2 agree, in the warning colour.
        await one.client().set_weight("app", "b", 9)
        await wait_for(lambda: cell(table, "b", "agree") == "1/2", what="1/2")
        agree = table.get_cell("b", "agree")
        assert isinstance(agree, Text)
        assert agree.spans  # coloured
        assert cell(table, "b", "weight").endswith("~")

        kill(two)  # an instance stops: the status line names it, the dashboard goes on
        await wait_for(
            lambda: "unreachable: " + url(two) in str(app.query_one("#status").render()), what="named"
        )
        await wait_for(lambda: cell(table, "a", "agree") == "1/2", what="a: 1/2 with two gone")


def test_the_agree_cell_says_diverged_in_the_error_colour():
    from dataclasses import replace

    from rich.style import Style

    from lbtui.core.stats import window_view
    from lbtui.core.views import BackendView
    from lbtui.tui.format import agree_cell, backend_cells

    row = BackendView(
        "a",
        "app",
        "default",
        "127.0.0.1:1",
        1,
        "ready",
        "UP",
        0,
        0,
        0,
        (0,) * 6,
        0,
        0,
        0,
        0.0,
        None,
        False,
        window_view(1.0, 0, 0, []),
    )
    palette = {"errors-warn": Style(color="yellow"), "errors-bad": Style(color="red")}
    assert "agree" not in backend_cells(row, palette)  # one instance: no such column
    assert agree_cell(replace(row, instances=3, agreeing=3), palette) == "3/3"
    partly = agree_cell(replace(row, instances=3, agreeing=2), palette)
    assert isinstance(partly, Text)
    assert (partly.plain, partly.spans[0].style) == ("2/3", palette["errors-warn"])
    diverged = agree_cell(replace(row, instances=3, agreeing=3, diverged="state failed"), palette)
    assert isinstance(diverged, Text)
    assert (diverged.plain, diverged.spans[0].style) == ("DIVERGED", palette["errors-bad"])


def test_a_fleet_row_round_trips_through_the_state_json():
    from dataclasses import replace

    from lbtui.admin.schema import backend_from_json, backend_json
    from lbtui.core.stats import window_view
    from lbtui.core.views import BackendView

    row = BackendView(
        "a",
        "app",
        "default",
        "127.0.0.1:1",
        1,
        "mixed",
        "UP",
        0,
        0,
        0,
        (0,) * 6,
        0,
        0,
        0,
        0.0,
        None,
        False,
        window_view(1.0, 0, 0, []),
    )
    assert backend_json(row)["fleet"] is None
    fleet_row = replace(
        row, instances=3, agreeing=2, mixed=("state",), diverged="state failed, x: rollback failed"
    )
    data = backend_json(fleet_row)
    assert data["fleet"] == {
        "instances": 3,
        "agreeing": 2,
        "mixed": ["state"],
        "diverged": "state failed, x: rollback failed",
    }
    assert backend_json(backend_from_json(data)) == data
