"""The dashboard driven by Pilot against a real engine and real backends on loopback."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import httpx
import pytest

from lbtui.core.stats import window_view
from lbtui.core.views import BackendView, ServiceView, Snapshot
from lbtui.serve import ServeOptions
from lbtui.tui.app import Dashboard
from lbtui.tui.format import backend_cells, latency_histogram, split_bar, status_level, status_line
from lbtui.tui.screens import AddBackendScreen, ChoiceScreen, ConfirmScreen, DetailScreen, HelpScreen
from lbtui.tui.table import Table
from tests.conftest import make_config, wait_for
from tests.tui.keys import press

SIZE = (160, 40)


@contextlib.asynccontextmanager
async def running(config, read_only: bool = False):
    """The dashboard on a real engine, started; quit (confirmed) at the end unless the test did."""
    app = Dashboard(ServeOptions(config=config), read_only=read_only)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        yield app, pilot
        if not app.runtime.engine.closing:
            await quit_app(app, pilot)


async def quit_app(app, pilot) -> None:
    await pilot.press("q")
    assert isinstance(app.screen, ConfirmScreen)
    await pilot.press("y")
    await wait_for(lambda: app.runtime.engine.closing, what="the engine to drain")


async def test_table_shows_backends_in_config_order_and_live_counts(backends):
    bs = [await backends(f"b{i}") for i in range(3)]
    async with running(make_config(bs)) as (app, pilot):
        table = app.query_one("#backends", Table)
        assert table.keys == ["b0", "b1", "b2"]
        assert table.cursor_row == 0
        async with httpx.AsyncClient(base_url=app.runtime.engine.url()) as http:
            for _ in range(6):
                assert (await http.get("/")).status_code == 200
        app.refresh_view()
        assert str(table.get_cell("b0", "requests")) == "2"
        assert "req/s" in str(app.query_one("#status").render())
        await quit_app(app, pilot)
    assert app.return_value == 0


async def test_d_drains_and_e_enables_the_selected_backend(backends):
    bs = [await backends(f"b{i}") for i in range(2)]
    async with running(make_config(bs)) as (app, pilot):
        await press(pilot, "down", "d")
        controller = app.controller
        assert controller.snapshot().backend("b1").admin_state == "drain"
        assert controller.snapshot().backend("b0").admin_state == "ready"
        table = app.query_one("#backends", Table)
        assert str(table.get_cell("b1", "state")).startswith("drain")
        event = controller.events()[0]
        assert (event.actor, event.action, event.target, event.after) == ("key", "state", "b1", "drain")
        assert "b1" in str(app.query_one("#events").render())  # the events pane
        await press(pilot, "e")
        assert controller.snapshot().backend("b1").admin_state == "ready"
        pane = str(app.query_one("#events").render()).splitlines()
        assert "ready" in pane[0].split("->")[1]  # newest first: the enable, then the drain
        assert "drain" in pane[1].split("->")[1]
        await wait_for(lambda: str(table.get_cell("b1", "state")) == "ready", what="the table to show ready")


async def test_m_asks_first_and_n_leaves_it(backends):
    b = await backends("b0")
    async with running(make_config([b])) as (app, pilot):
        await press(pilot, "m")
        assert isinstance(app.screen, ConfirmScreen)
        assert "b0" in app.screen.question
        assert app.screen.focused.id == "cancel"  # Cancel has the focus
        await press(pilot, "n")
        assert app.controller.snapshot().backend("b0").admin_state == "ready"
        await press(pilot, "m", "y")
        assert app.controller.snapshot().backend("b0").admin_state == "maint"


async def test_weight_keys_and_undo(backends):
    b = await backends("b0")
    async with running(make_config([b])) as (app, pilot):
        await press(pilot, "plus", "plus")
        assert app.controller.snapshot().backend("b0").weight == 3
        await press(pilot, "minus")
        assert app.controller.snapshot().backend("b0").weight == 2
        await press(pilot, "u")
        assert app.controller.snapshot().backend("b0").weight == 3


async def test_split_shift_and_flip(backends):
    blue, green = await backends("blue-1"), await backends("green-1")
    config = make_config(
        [
            {"name": "blue-1", "address": blue.address, "group": "blue"},
            {"name": "green-1", "address": green.address, "group": "green"},
        ],
        split={"blue": 90, "green": 10},
    )
    async with running(config) as (app, pilot):
        await press(pilot, "right_square_bracket")
        assert dict(app.controller.snapshot().service("app").split) == {"blue": 85, "green": 15}
        assert "blue 85%" in str(app.query_one("#services").render())
        await press(pilot, "left_square_bracket", "left_square_bracket")
        assert dict(app.controller.snapshot().service("app").split) == {"blue": 95, "green": 5}
        await press(pilot, "f")
        assert isinstance(app.screen, ConfirmScreen)
        await press(pilot, "y")
        assert dict(app.controller.snapshot().service("app").split) == {"blue": 5, "green": 95}


async def test_p_pauses_the_view(backends):
    b = await backends("b0")
    async with running(make_config([b])) as (app, pilot):
        table = app.query_one("#backends", Table)
        await press(pilot, "p")
        async with httpx.AsyncClient(base_url=app.runtime.engine.url()) as http:
            await http.get("/")
        app.refresh_view()
        assert str(table.get_cell("b0", "requests")) == "0"  # frozen
        await press(pilot, "p")
        assert str(table.get_cell("b0", "requests")) == "1"


async def test_help_lists_every_key(backends):
    b = await backends("b0")
    async with running(make_config([b])) as (app, pilot):
        await press(pilot, "question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = "\n".join(f"{k} {t}" for k, t in app.screen.keys)
        for binding in Dashboard.BINDINGS:
            assert binding.tooltip, binding.key  # every key has help text
            assert binding.tooltip in text
        await press(pilot, "escape")
        assert not isinstance(app.screen, HelpScreen)


@pytest.mark.parametrize("key", ["d", "e", "m", "plus", "minus", "f", "u", "x", "l", "a"])
async def test_read_only_turns_every_steering_key_off(backends, key):
    b = await backends("b0")
    async with running(make_config([b]), read_only=True) as (app, pilot):
        before = app.controller.snapshot().backend("b0")
        await press(pilot, key)
        assert not isinstance(app.screen, ConfirmScreen)
        after = app.controller.snapshot().backend("b0")
        assert (after.admin_state, after.weight) == (before.admin_state, before.weight)
        assert app.controller.events() == []


def test_cells_say_state_in_words_not_only_colour():
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
    assert str(backend_cells(replace(view, in_flight=0, drained=True))["state"]) == "drained"


@pytest.mark.parametrize(
    ("healths", "level"),
    [
        (("UP", "UP 1/3", "no check"), "ok"),  # HAProxy's words for a server that takes traffic
        (("UP", "DOWN 1/2"), "warning"),
        (("DOWN", "MAINT"), "error"),
        (("up", "going_down"), "ok"),
        (("down",), "error"),
    ],
)
def test_status_level_reads_lbtui_and_haproxy_health_words(healths, level):
    rows = tuple(
        BackendView(
            name=f"b{i}",
            service="s",
            group="default",
            address="127.0.0.1:1",
            weight=1,
            admin_state="ready",
            health=health,
            health_count=0,
            in_flight=0,
            requests=0,
            status_classes=(0, 0, 0, 0, 0, 0),
            bytes_in=0,
            bytes_out=0,
            connect_failures=0,
            ewma_ms=0.0,
            drain_seconds=None,
            removing=False,
            window=window_view(1.0, 0, 0, [0] * 736),
        )
        for i, health in enumerate(healths)
    )
    empty = window_view(1.0, 0, 0, [0] * 736)
    service = ServiceView("s", "roundrobin", None, ("default",), None, rows, 0, empty)
    snapshot = Snapshot(
        0.0, 1.0, (), (service,), 0, extra={"engine": "HAProxy 2.6.12 (pid 7) at /run/h.sock"}
    )
    assert status_level(snapshot) == level
    assert status_line(snapshot).startswith("HAProxy 2.6.12 (pid 7) at /run/h.sock │")


def test_status_line_without_traffic():
    line = status_line(Snapshot(time=0.0, uptime=61.0, listeners=(), services=(), connections=0))
    assert "up 00:01:01" in line
    assert "5xx -" in line


async def test_x_removes_after_confirmation(backends):
    bs = [await backends(f"b{i}") for i in range(2)]
    async with running(make_config(bs)) as (app, pilot):
        await press(pilot, "down", "x")
        assert isinstance(app.screen, ConfirmScreen)
        assert "b1" in app.screen.question
        await press(pilot, "y")
        await wait_for(
            lambda: all(b.name != "b1" for s in app.controller.snapshot().services for b in s.backends),
            what="b1 to go",
        )  # drained (idle)
        app.refresh_view()
        assert app.query_one("#backends", Table).keys == ["b0"]


async def test_l_chooses_the_algorithm_from_a_list(backends):
    b = await backends("b0")
    async with running(make_config([b])) as (app, pilot):
        await press(pilot, "l")
        assert isinstance(app.screen, ChoiceScreen)
        await press(
            pilot, "down", "down", "enter"
        )  # round_robin -> weighted_round_robin -> least_connections
        assert app.controller.snapshot().service("app").algorithm == "least_connections"
        await press(pilot, "l", "escape")
        assert app.controller.snapshot().service("app").algorithm == "least_connections"


async def test_a_adds_a_backend_and_shows_errors_in_the_form(backends):
    b0, b1 = await backends("b0"), await backends("b1")
    async with running(make_config([b0])) as (app, pilot):
        await press(pilot, "a")
        form = app.screen
        assert isinstance(form, AddBackendScreen)
        assert form.query_one("#service").value == "app"  # the selected backend's service
        await press(pilot, *"new-1", "tab", *"not-an-address", "enter")
        assert form.query_one("#name").value == "new-1"
        assert form.query_one("#address").value == "not-an-address"
        assert isinstance(app.screen, AddBackendScreen)  # still open, with the reason
        assert "address" in str(form.query_one("#error").render())
        form.query_one("#address").value = b1.address
        await press(pilot, "enter")
        assert not isinstance(app.screen, AddBackendScreen)
        assert app.controller.snapshot().backend("new-1").address == b1.address
        app.refresh_view()
        assert app.query_one("#backends", Table).keys == ["b0", "new-1"]


def test_split_bar_in_words_and_blocks():
    assert split_bar((("blue", 90), ("green", 10)), width=10) == "blue 90% █████████░ green 10%"
    assert split_bar(None) == "no split"
    assert split_bar((("a", 1), ("b", 1), ("c", 2))) == "a 25%  b 25%  c 50%"


async def test_enter_opens_the_detail_of_the_selected_backend(backends):
    bs = [await backends(f"b{i}") for i in range(2)]
    async with running(make_config(bs)) as (app, pilot):
        async with httpx.AsyncClient(base_url=app.runtime.engine.url()) as http:
            for _ in range(4):
                await http.get("/")
        await press(pilot, "down", "enter")
        assert isinstance(app.screen, DetailScreen)
        assert app.screen.backend == "b1"
        text = str(app.screen.query_one("#detail").render())
        assert "b1" in text
        assert "2xx 2" in text
        assert " ms " in text  # the latency distribution
        await press(pilot, "escape")
        assert not isinstance(app.screen, DetailScreen)


async def test_slash_filters_the_table_and_escape_clears(backends):
    bs = [await backends(n) for n in ("blue-1", "blue-2", "green-1")]
    async with running(make_config(bs)) as (app, pilot):
        table = app.query_one("#backends", Table)
        await press(pilot, "slash", *"green", "enter")
        assert table.keys == ["green-1"]
        await press(pilot, "slash", "escape")
        assert table.keys == ["blue-1", "blue-2", "green-1"]  # config order again


def test_latency_histogram_of_nothing_and_something():
    from lbtui.core.stats import BUCKETS, bucket_index

    assert latency_histogram((0,) * BUCKETS) == ["no requests in the window"]
    counts = [0] * BUCKETS
    counts[bucket_index(1000)] = 5
    counts[bucket_index(2000)] = 10
    lines = latency_histogram(tuple(counts))
    assert any(line.rstrip().endswith(" 10") for line in lines)
    assert all(" ms " in line for line in lines)


async def test_status_bar_turns_warning_then_error_colour(backends):
    bs = [await backends(f"b{i}") for i in range(2)]
    async with running(make_config(bs)) as (app, pilot):
        status = app.query_one("#status")
        assert not status.has_class("warning")
        assert not status.has_class("error")
        await press(pilot, "d")
        assert status.has_class("warning")  # one backend out of service: degraded
        await press(pilot, "down", "m", "y")
        app.refresh_view()
        assert status.has_class("error")  # none left to serve


def test_sparkline_scales_to_the_largest_value():
    from lbtui.tui.format import sparkline

    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([1, 2, 4, 8]) == "▂▃▅█"
    assert sparkline([]) == ""


async def test_the_command_palette_offers_every_action(backends):
    from lbtui.tui.commands import DashboardCommands

    bs = [await backends(f"b{i}") for i in range(2)]
    async with running(make_config(bs)) as (app, pilot):
        provider = DashboardCommands(app.screen)
        titles = [title for title, _, _ in provider._commands()]
        for binding in Dashboard.BINDINGS:
            if binding.action != "quit":
                assert any(title.startswith(binding.description) for title in titles), binding.action
        hits = [hit async for hit in provider.search("drain")]
        assert hits
        await hits[0].command()  # run it, as choosing it in the palette does
        await pilot.pause()
        assert app.controller.snapshot().backend("b0").admin_state == "drain"
        app.read_only = True
        assert all("Drain" not in title for title, _, _ in provider._commands())
        app.read_only = False


def test_status_line_names_each_listener_by_its_scheme():
    from lbtui.core.views import ListenerView

    listeners = (
        ListenerView("web", "http", "127.0.0.1:8080"),
        ListenerView("secure", "http", "127.0.0.1:8443", tls=True),
        ListenerView("db", "tcp", "127.0.0.1:5433"),
    )
    line = status_line(Snapshot(time=0.0, uptime=1.0, listeners=listeners, services=(), connections=0))
    assert "web http://127.0.0.1:8080  secure https://127.0.0.1:8443  db tcp://127.0.0.1:5433" in line


@pytest.mark.parametrize("module", ["lbtui.tui.app", "lbtui.serve", "lbtui.threaded"])
def test_the_dashboard_and_the_runtime_never_import_the_admin_api(module: str) -> None:
    """The command line wires the admin API in (ServeOptions.admin_server, a RemoteController for attach)."""
    import subprocess
    import sys

    code = (
        f"import importlib, sys; importlib.import_module({module!r}); "
        "print(sorted(m for m in sys.modules if m.startswith('lbtui.admin')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
