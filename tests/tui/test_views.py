"""The dashboard's views (tab and digits) and the canary ramp key, on a real engine and real backends."""

from __future__ import annotations

import httpx
import pytest

from lbtui.config import parse_config
from lbtui.tui.screens import AddBackendScreen, ConfirmScreen
from lbtui.tui.table import Table
from tests.conftest import make_config, wait_for
from tests.tui.keys import press
from tests.tui.test_app import running


def canary_config(blue, green, **ramp):
    return make_config(
        [
            {"name": "blue-1", "address": blue.address, "group": "blue"},
            {"name": "green-1", "address": green.address, "group": "green"},
        ],
        split={"blue": 90, "green": 10},
        ramp={"steps": [20, 60, 100], "hold": "200ms", "min_requests": 5, "p99_slack": "1s", **ramp},
    )


async def drive(app, until, what, limit=3000):
    """Requests, a bounded number, until `until()` holds."""
    async with httpx.AsyncClient(base_url=app.runtime.engine.url()) as http:
        for _ in range(limit):
            await http.get("/")
            if until():
                return
    raise AssertionError(
        f"not after {limit} requests: {what}: {app.controller.snapshot().service('app').ramp}"
    )


async def test_R_ramps_a_healthy_canary_to_100_percent(backends):
    blue, green = await backends("blue-1"), await backends("green-1")
    async with running(canary_config(blue, green)) as (app, pilot):
        await press(pilot, "R")
        assert isinstance(app.screen, ConfirmScreen)
        assert "green" in app.screen.question
        await press(pilot, "y")
        service = lambda: app.controller.snapshot().service("app")  # noqa: E731
        assert dict(service().split) == {"blue": 80, "green": 20}
        app.refresh_view()
        assert "ramp 1/3" in str(app.query_one("#services").render())
        await drive(app, lambda: service().ramp.state == "done", "the ramp to finish")
        assert dict(service().split) == {"blue": 0, "green": 100}
        app.refresh_view()
        assert "ramp done: green 100%" in str(app.query_one("#services").render())
        notes = [e.note for e in app.controller.events() if e.action == "ramp"]
        assert notes[0].startswith("done")
        assert notes[-1].startswith("start")
        served, stable = green.requests, blue.requests
        await drive(app, lambda: green.requests >= served + 10, "green to take the traffic", limit=10)
        assert blue.requests == stable  # green takes it all


async def test_a_failing_canary_rolls_back_and_gets_nothing_after(backends):
    blue, green = await backends("blue-1"), await backends("green-1", error_rate=1.0)
    async with running(canary_config(blue, green)) as (app, pilot):
        await press(pilot, "R", "y")
        service = lambda: app.controller.snapshot().service("app")  # noqa: E731
        await drive(app, lambda: service().ramp.state == "rolled back", "the ramp to roll back")
        assert dict(service().split) == {"blue": 100, "green": 0}
        assert "5xx" in service().ramp.reason
        app.refresh_view()
        assert "ramp rolled back" in str(app.query_one("#services").render())
        assert "rolled back" in str(app.query_one("#events").render())
        seen = green.requests
        async with httpx.AsyncClient(base_url=app.runtime.engine.url()) as http:
            for _ in range(30):
                assert (await http.get("/")).status_code == 200
        assert green.requests == seen


async def test_R_again_aborts_and_puts_the_split_back(backends):
    blue, green = await backends("blue-1"), await backends("green-1")
    async with running(canary_config(blue, green, hold="1h")) as (app, pilot):
        await press(pilot, "R", "y")
        assert dict(app.controller.snapshot().service("app").split) == {"blue": 80, "green": 20}
        await press(pilot, "R")  # no question: aborting is the safe way out
        assert not isinstance(app.screen, ConfirmScreen)
        view = app.controller.snapshot().service("app")
        assert dict(view.split) == {"blue": 90, "green": 10}
        assert view.ramp.state == "aborted"
        await press(pilot, "R", "n")  # asked, and no: nothing starts
        assert app.controller.snapshot().service("app").ramp.state == "aborted"


async def test_R_without_a_split_says_why(backends):
    b = await backends("b0")
    async with running(make_config([b])) as (app, pilot):
        await press(pilot, "R")
        assert not isinstance(app.screen, ConfirmScreen)
        assert "needs a split" in str(app.query_one("#message").render())


async def test_tab_and_digits_switch_views_and_steering_keys_stay_on_the_backends_view(backends):
    b = await backends("b0")
    async with running(make_config([b])) as (app, pilot):
        switcher = app.query_one("#views")
        assert switcher.current == "view-backends"
        await press(pilot, "tab")
        assert switcher.current == "view-routes"
        await press(pilot, "tab", "tab")
        assert switcher.current == "view-log"
        await press(pilot, "tab")
        assert switcher.current == "view-backends"
        await press(pilot, "3")
        assert switcher.current == "view-events"
        assert "3 Events" in str(app.query_one("#tabs").render())
        await press(pilot, "d")  # not on this view
        assert app.controller.snapshot().backend("b0").admin_state == "ready"
        await press(pilot, "1", "d")
        assert app.controller.snapshot().backend("b0").admin_state == "drain"


async def test_tab_in_the_add_form_moves_between_fields(backends):
    b = await backends("b0")
    async with running(make_config([b])) as (app, pilot):
        await press(pilot, "a")
        form = app.screen
        assert isinstance(form, AddBackendScreen)
        first = form.focused
        await press(pilot, "tab")
        assert form.focused is not first
        assert app.view == "backends"
        await press(pilot, "escape")


async def test_the_access_log_view_shows_requests_newest_first(backends):
    bs = [await backends(f"b{i}") for i in range(2)]
    async with running(make_config(bs)) as (app, pilot):
        async with httpx.AsyncClient(base_url=app.runtime.engine.url()) as http:
            for path in ("/first", "/second", "/third"):
                assert (await http.get(path)).status_code == 200
        await press(pilot, "4")
        table = app.query_one("#access", Table)
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        assert [row[3] for row in rows] == ["/third", "/second", "/first"]
        assert {row[7] for row in rows} == {"b0", "b1"}
        assert all(row[4] == "200" and row[2] == "GET" for row in rows)
        await press(pilot, "slash", *"second", "enter")  # the filter applies to this view too
        assert [table.get_row_at(i)[3] for i in range(table.row_count)] == ["/second"]


async def test_the_routes_view_lists_routes_in_words(backends):
    b = await backends("b0")
    data = {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
        "services": {
            "shop": {"backends": [{"name": "b0", "address": b.address}]},
        },
        "routes": [
            {
                "name": "api",
                "match": {"path_prefix": "/api", "methods": ["GET"]},
                "service": "shop",
                "strip_prefix": "/api",
                "response_headers": {"remove": ["Server"]},
            },
            {"name": "rest", "match": {"path_prefix": "/"}, "service": "shop"},
        ],
    }
    async with running(parse_config(data, source="<test>")) as (app, pilot):
        await press(pilot, "2")
        table = app.query_one("#routes", Table)
        assert table.keys == ["api", "rest"]
        assert table.get_row("api")[1] == "prefix /api, GET"
        assert table.get_row("api")[2] == "shop"
        assert "strip /api" in str(table.get_row("api"))
        assert "response headers" in str(table.get_row("api"))


async def test_the_routes_view_without_routes_says_where_requests_go(backends):
    b = await backends("b0")
    async with running(make_config([b])) as (app, pilot):
        await press(pilot, "2")
        assert "no routes" in str(app.query_one("#routes-note").render())


async def test_a_new_filter_rebuilds_the_events_view(backends):
    bs = [await backends(f"b{i}") for i in range(2)]
    async with running(make_config(bs)) as (app, pilot):
        await press(pilot, "d", "down", "d")
        await press(pilot, "3", "slash", *"b1", "enter")
        table = app.query_one("#events-table", Table)
        assert [table.get_row_at(i)[4] for i in range(table.row_count)] == ["b1"]
        assert "b0" not in str(app.query_one("#events").render())
        await press(pilot, "slash", "escape")  # clears the filter: every event again
        assert [table.get_row_at(i)[4] for i in range(table.row_count)] == ["b1", "b0"]


async def test_the_events_view_is_newest_first(backends):
    bs = [await backends(f"b{i}") for i in range(2)]
    async with running(make_config(bs)) as (app, pilot):
        await press(pilot, "d", "down", "d", "plus")
        await press(pilot, "3")
        table = app.query_one("#events-table", Table)
        actions = [(table.get_row_at(i)[3], table.get_row_at(i)[4]) for i in range(table.row_count)]
        assert actions == [("weight", "b1"), ("state", "b1"), ("state", "b0")]


@pytest.mark.parametrize("key", ["R"])
async def test_read_only_turns_the_ramp_key_off(backends, key):
    blue, green = await backends("blue-1"), await backends("green-1")
    async with running(canary_config(blue, green), read_only=True) as (app, pilot):
        await press(pilot, key)
        assert not isinstance(app.screen, ConfirmScreen)
        assert app.controller.events() == []


async def test_waits_for_the_engine_tick_not_for_time(backends):
    """The ramp advances on the engine's own tick: no key press needed between steps."""
    blue, green = await backends("blue-1"), await backends("green-1")
    async with running(canary_config(blue, green, min_requests=1)) as (app, pilot):
        await press(pilot, "R", "y")
        async with httpx.AsyncClient(base_url=app.runtime.engine.url()) as http:
            for _ in range(20):
                await http.get("/")
        await wait_for(lambda: app.controller.snapshot().service("app").ramp.step >= 1, what="the next step")


async def test_health_shows_going_down_k_of_fall_and_the_detail_shows_the_checks(backends):
    bs = [await backends(f"b{i}") for i in range(2)]
    config = make_config(
        # A generous timeout: the demo backends answer on the test's loop, which the dashboard shares; under load
        # a short one times out and the checks never show the backend's 503.
        bs,
        health={"path": "/healthz", "interval": "250ms", "timeout": "250ms", "rise": 2, "fall": 30},
    )
    async with running(config) as (app, pilot):
        table = app.query_one("#backends", Table)
        bs[1].healthy = False

        def shown() -> str:
            app.refresh_view()
            return str(table.get_cell("b1", "health"))

        await wait_for(
            lambda: shown().startswith("going_down") and shown().endswith("/30"), what="going_down k/30"
        )
        await press(pilot, "down", "enter")
        detail = app.screen.query_one("#detail")
        assert "health checks, newest first" in str(detail.render())
        await wait_for(lambda: "FAIL  status 503" in str(detail.render()), what="a check that got the 503")
        await press(pilot, "escape")
        assert "health" in str(app.query_one("#events").render())  # the transition is an event


CHARACTERS = {
    "plus": "+",
    "minus": "-",
    "right_square_bracket": "]",
    "left_square_bracket": "[",
    "tab": "\t",
    "enter": "\r",
}


async def type_keys(app, *keys: str, until, what: str) -> None:
    """Keys as a terminal sends them, then wait for their effect. (Pilot.press waits for the process to
    go idle after each key, which it never does while the test's own backends serve a load.)"""
    from textual import events

    for key in keys:
        char = CHARACTERS.get(key, key if len(key) == 1 else None)
        name = {".": "full_stop", ":": "colon"}.get(key, key)
        event = events.Key(name, char)
        event.set_sender(app)
        app._driver.send_message(event)
    await wait_for(until, what=what)


@pytest.mark.slow
async def test_every_key_under_load_fails_no_request(backends):
    """The keys, pressed in the dashboard while traffic flows: drain, enable, weights, algorithm, split,
    flip, ramp and its abort, add and remove. Not one request may fail."""
    import asyncio

    from textual.screen import ModalScreen

    blue = [await backends(f"blue-{i}") for i in (1, 2)]
    green = await backends("green-1")
    extra = await backends("extra")
    config = make_config(
        [
            {"name": "blue-1", "address": blue[0].address, "group": "blue"},
            {"name": "blue-2", "address": blue[1].address, "group": "blue"},
            {"name": "green-1", "address": green.address, "group": "green"},
        ],
        split={"blue": 90, "green": 10},
        # Judged never (min_requests): on a loaded machine the canary's p99 may cross the rollback limit, the
        # ramp roll back on its own, and the abort key then start a new one (a dialog, not a change).
        ramp={"steps": [50, 100], "hold": "1h", "min_requests": 1_000_000},
    )
    async with running(config) as (app, _pilot):
        failures: list[int] = []
        done = 0
        stop = False
        deadline = asyncio.get_running_loop().time() + 60

        async def worker(http: httpx.AsyncClient) -> None:
            nonlocal done
            for _ in range(50_000):  # bounded in count and time; stopped once every key was pressed
                if stop or asyncio.get_running_loop().time() > deadline:
                    return
                r = await http.get("/")
                if r.status_code != 200:
                    failures.append(r.status_code)
                done += 1

        def changes() -> int:
            return len(app.controller.events(1000))

        def modal() -> bool:
            return isinstance(app.screen, ModalScreen)

        async with httpx.AsyncClient(
            base_url=app.runtime.engine.url(), limits=httpx.Limits(max_connections=4), timeout=10
        ) as http:
            tasks = [asyncio.create_task(worker(http)) for _ in range(4)]
            steps = [
                (("d",), 1),  # drain blue-1
                (("e",), 1),
                (("a",), "modal"),
                (("enter",), 1),  # the form filled in below (typing it is tested in test_app)
                (("plus", "plus"), 2),
                (("minus",), 1),
                (("l",), "modal"),
                (("down", "enter"), 1),  # another algorithm from the list
                (("right_square_bracket",), 1),
                (("left_square_bracket",), 1),
                (("f",), "modal"),
                (("y",), 1),  # flip
                (("R",), "modal"),
                (("y",), 1),  # ramp
                (("R",), 1),  # abort
                (("down", "down", "x"), "modal"),
                (("y",), 1),  # remove green-1 (drains first)
                (("u",), 1),
            ]
            for keys, effect in steps:
                before = done
                await wait_for(lambda before=before: done >= before + 20, what=f"traffic before {keys}")
                if keys == ("enter",) and isinstance(app.screen, AddBackendScreen):
                    app.screen.query_one("#name").value = "extra"
                    app.screen.query_one("#address").value = extra.address
                    app.screen.query_one("#address").focus()
                if effect == "modal":
                    await type_keys(app, *keys, until=modal, what=f"a dialog after {keys}")
                else:
                    count = changes()
                    await type_keys(
                        app,
                        *keys,
                        until=lambda count=count, n=effect: changes() >= count + n and not modal(),
                        what=f"the change of {keys}",
                    )
            before = done
            await wait_for(lambda: done >= before + 20, what="traffic after the last key")
            stop = True
            await asyncio.gather(*tasks)
        assert failures == []
        actions = {e.action for e in app.controller.events(200)}
        assert {"state", "weight", "algorithm", "split", "flip", "ramp", "add", "remove"} <= actions
        assert extra.requests > 0


async def test_j_and_k_move_the_cursor(backends):
    bs = [await backends(f"b{i}") for i in range(3)]
    async with running(make_config(bs)) as (app, pilot):
        table = app.query_one("#backends", Table)
        await press(pilot, "j", "j")
        assert table.cursor_row == 2
        await press(pilot, "k")
        assert table.cursor_row == 1


async def test_the_status_bar_says_paused_and_read_only(backends):
    b = await backends("b0")
    async with running(make_config([b]), read_only=True) as (app, pilot):
        assert "READ-ONLY" in str(app.query_one("#status").render())
        await press(pilot, "p")
        assert "PAUSED" in str(app.query_one("#status").render())
        await press(pilot, "p")
        assert "PAUSED" not in str(app.query_one("#status").render())


async def test_the_add_form_names_a_missing_field(backends):
    b = await backends("b0")
    async with running(make_config([b])) as (app, pilot):
        await press(pilot, "a", *"new", "enter")
        form = app.screen
        assert isinstance(form, AddBackendScreen)
        assert "address: required" in str(form.query_one("#error").render())
        form.query_one("#address").value = "nowhere"
        await press(pilot, "enter")
        error = str(form.query_one("#error").render())
        assert error.startswith("address:")
        assert "backend." not in error
        await press(pilot, "escape")


async def test_ctrl_p_opens_the_palette_and_runs_a_drain(backends):
    from textual.command import CommandPalette

    bs = [await backends(f"b{i}") for i in range(2)]
    async with running(make_config(bs)) as (app, pilot):
        await press(pilot, "ctrl+p")
        assert isinstance(app.screen, CommandPalette)
        await press(pilot, *"Drain")
        await wait_for(
            lambda: any("Drain" in str(o.prompt) for o in app.screen.query("CommandList").first().options),
            what="the Drain command to be offered",
        )
        await press(pilot, "enter")
        await wait_for(
            lambda: app.controller.snapshot().backend("b0").admin_state == "drain", what="the drain"
        )


async def test_an_ejected_backend_and_panic_show_in_the_table_and_services_line(backends):
    good, bad = await backends("good"), await backends("bad", error_rate=1.0)
    config = make_config(
        [good, bad],
        outlier={"consecutive_5xx": 2, "max_ejected_percent": 50},
        panic_threshold=100,  # any backend out is panic: every ready one keeps serving
        retries={"attempts": 0},
    )
    async with running(config) as (app, pilot):
        table = app.query_one("#backends", Table)
        async with httpx.AsyncClient(base_url=app.runtime.engine.url()) as http:
            for _ in range(20):
                await http.get("/")
                if app.controller.snapshot().backend("bad").health == "ejected":
                    break
        await wait_for(
            lambda: str(table.get_cell("bad", "health")).startswith("ejected "),
            what="the health cell to show the ejection and its countdown",
        )
        assert str(table.get_cell("bad", "health")).endswith("s")
        await wait_for(
            lambda: "PANIC" in str(app.query_one("#services").render()),
            what="the services line to show panic mode",
        )
        assert any(e.action == "panic" for e in app.controller.events())
        await press(pilot, "2")  # the events view lists the ejection
        events = app.query_one("#events-table", Table)
        await wait_for(
            lambda: any(str(events.get_cell(key, "actor")) == "outlier" for key in events.keys),
            what="the ejection in the events view",
        )


def test_the_cache_column_shows_the_hit_rate_once_asked():
    from lbtui.core.views import RouteView
    from lbtui.tui.format import cache_hits

    assert cache_hits(RouteView("api", "prefix /api", "shop", ("cache 30s",))) == "-"
    assert cache_hits(RouteView("api", "prefix /api", "shop", ("cache 30s",), cache=(3, 1))) == "75%"
    assert cache_hits(RouteView("api", "prefix /api", "shop", ("cache 30s",), cache=(0, 2))) == "0%"


async def test_sticky_sessions_show_in_a_column_the_services_line_and_the_detail(backends):
    bs = [await backends(f"b{i}") for i in range(2)]
    async with running(make_config(bs, sticky={"cookie": "lbtui_srv"})) as (app, pilot):
        table = app.query_one("#backends", Table)
        url = app.runtime.engine.url()
        async with httpx.AsyncClient(base_url=url) as browser:  # keeps cookies, as a browser does
            first = (await browser.get("/")).headers["X-Backend"]
            for _ in range(9):
                assert (await browser.get("/")).headers["X-Backend"] == first
        for _ in range(2):
            async with httpx.AsyncClient(base_url=url) as newcomer:  # no cookie yet: round robin
                await newcomer.get("/")
        other = next(b.name for b in bs if b.name != first)
        app.refresh_view()
        assert [key for key, _, _ in table.columns].index("sticky") == 9  # after requests
        assert sum(width + 2 for _, _, width in table.columns) <= 160
        snapshot = app.controller.snapshot()
        assert (snapshot.backend(first).sticky_requests, snapshot.backend(other).sticky_requests) == (9, 0)
        assert str(table.get_cell(first, "sticky")) == f"{round(900 / snapshot.backend(first).requests)}%"
        assert str(table.get_cell(other, "sticky")) == "0%"
        assert "sticky lbtui_srv" in str(app.query_one("#services").render())
        table.move_cursor(table.keys.index(first))
        await press(pilot, "enter")
        await wait_for(lambda: "sticky lbtui_srv: 9 of" in str(app.screen.query_one("#detail").render()))
        await press(pilot, "escape")


async def test_without_sticky_sessions_there_is_no_sticky_column(backends):
    b0 = await backends("b0")
    async with running(make_config([b0])) as (app, _pilot):
        app.refresh_view()
        assert "sticky" not in [key for key, _, _ in app.query_one("#backends", Table).columns]
