"""`lbtui attach`: the same dashboard, with a RemoteController, steering a real engine through its admin API."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

import lbtui
from lbtui.cli import main
from lbtui.config import parse_config
from lbtui.core.views import Snapshot
from lbtui.tui.app import Dashboard
from lbtui.tui.screens import ChoiceScreen, ConfirmScreen
from lbtui.tui.table import Table
from tests.attached import Served, canary_config, served
from tests.conftest import wait_for
from tests.impostors import NGINX_STATIC, garbage, http_answer, impostors, nginx
from tests.tui.keys import press

SIZE = (160, 40)


def engine_state(s: Served) -> Snapshot:
    """The engine's own snapshot, not the API's."""
    return s.engine.call(s.controller.snapshot)


@pytest.mark.slow
async def test_the_keys_steer_the_server(backends):
    blue, green = await backends("blue-1"), await backends("green-1")
    async with served(canary_config(blue, green)) as s:
        app = Dashboard(None, controller=s.remote)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            table = app.query_one("#backends", Table)
            assert table.keys == ["blue-1", "green-1"]
            assert s.proxy in str(app.query_one("#status").render())  # the listener, from the snapshot

            def backend(name: str):
                return engine_state(s).backend(name)

            def service():
                return engine_state(s).service("app")

            await press(pilot, "d")
            assert backend("blue-1").admin_state == "drain"
            await wait_for(
                lambda: str(table.get_cell("blue-1", "state")).startswith("drain"), what="drain shown"
            )
            await press(pilot, "e")
            assert backend("blue-1").admin_state == "ready"
            await press(pilot, "plus", "plus")
            assert backend("blue-1").weight == 3
            await press(pilot, "minus", "u")
            assert backend("blue-1").weight == 3  # undo of the minus
            await press(pilot, "m", "y")
            assert backend("blue-1").admin_state == "maint"
            await press(pilot, "e", "right_square_bracket")
            assert dict(service().split or ()) == {"blue": 85, "green": 15}
            await press(pilot, "f", "y")
            assert dict(service().split or ()) == {"blue": 15, "green": 85}
            await press(pilot, "left_square_bracket")
            await press(pilot, "l")
            assert isinstance(app.screen, ChoiceScreen)
            await press(pilot, "escape")
            # The server's refusals show as in-process: a ramp needs a step above the canary's share.
            s.remote.set_split("app", {"blue": 0, "green": 100}, actor="key")
            await press(pilot, "R", "y")
            assert "no step above it" in str(app.query_one("#message").render())
            s.remote.set_split("app", {"blue": 90, "green": 10}, actor="key")
            await press(pilot, "R", "y")
            assert service().ramp is not None
            assert service().ramp.state == "running"
            await press(pilot, "R")
            assert service().ramp.state == "aborted"
            # Every change is the keys' in the server's audit log, and shows in the events pane.
            events = s.engine.call(s.controller.events, 100)
            assert {e.actor for e in events} <= {"key", "undo", "engine"}
            assert "ramp" in str(app.query_one("#events").render())
            # A change made elsewhere (ctl) shows up by itself.
            s.engine.call(s.controller.set_weight, "green-1", 7, "ctl")
            await wait_for(lambda: "ctl" in str(app.query_one("#events").render()), what="ctl's change shown")
            await wait_for(
                lambda: str(table.get_cell("green-1", "weight")) == "7", what="the new weight shown"
            )
            # The access log view shows requests sent through the proxy.
            async with httpx.AsyncClient(base_url=s.proxy) as http:
                for path in ("/first", "/second"):
                    assert (await http.get(path)).status_code == 200
            await press(pilot, "4")
            access = app.query_one("#access", Table)
            await wait_for(lambda: access.row_count >= 2, what="the access log")
            assert [access.get_row_at(i)[3] for i in range(2)] == ["/second", "/first"]
            # Quitting leaves the server running.
            await pilot.press("q")
            assert isinstance(app.screen, ConfirmScreen)
            assert "goes on running" in app.screen.question
            await pilot.press("y")
            await wait_for(lambda: not app.is_running, what="the dashboard to quit")
        assert app.return_value == 0
        assert s.engine.running
        async with httpx.AsyncClient(base_url=s.proxy) as http:
            assert (await http.get("/after")).status_code == 200


async def test_a_lost_server_shows_in_the_status_bar_not_a_traceback(backends):
    blue, green = await backends("blue-1"), await backends("green-1")
    async with served(canary_config(blue, green)) as s:
        app = Dashboard(None, controller=s.remote)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await s.engine.stop()
            status = app.query_one("#status")
            await wait_for(lambda: "CONNECTION LOST" in str(status.render()), what="the status bar to say so")
            assert status.has_class("error")
            await press(pilot, "d")  # a key says why it did nothing
            assert "cannot reach the admin API" in str(app.query_one("#message").render())
            assert app.query_one("#backends", Table).keys == ["blue-1", "green-1"]  # the last state stays
            await pilot.press("q", "y")
            await wait_for(lambda: not app.is_running, what="the dashboard to quit")
        assert app.return_value == 0


async def test_r_reloads_the_server_it_is_attached_to(backends, tmp_path):
    from lbtui.config import load_config

    one, two = await backends("one"), await backends("two")
    path = tmp_path / "lbtui.toml"
    base = '[[listeners]]\nbind = "127.0.0.1:0"\n[services.app]\n'
    backend = '[[services.app.backends]]\nname = "{0}"\naddress = "{1}"\n'
    path.write_text(base + backend.format("one", one.address))
    async with served(load_config(str(path))) as s:
        app = Dashboard(None, controller=s.remote)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            path.write_text(base + backend.format("one", one.address) + backend.format("two", two.address))
            await press(pilot, "r")
            assert [b.name for b in engine_state(s).services[0].backends] == ["one", "two"]
            table = app.query_one("#backends", Table)
            await wait_for(lambda: table.keys == ["one", "two"], what="the new backend shown")


async def attach(url: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`lbtui attach URL` in-process, on a thread (the servers may answer on this loop): code, stdout, stderr."""
    code = await asyncio.wait_for(asyncio.to_thread(main, ["attach", url]), 30)
    out, err = capsys.readouterr()
    return code, out, err


async def test_attach_to_what_is_not_lbtui_exits_1_with_one_line(backends, capsys, tmp_path) -> None:
    """No dashboard against the proxy's listener (was `internal error: KeyError: 'time'`), nor anything else."""
    blue, green = await backends("blue-1"), await backends("green-1")
    async with served(canary_config(blue, green)) as s, impostors() as start:
        shaped = await start(http_answer({"time": 1, "services": []}))
        noise = await start(garbage)
        future = await start(
            http_answer({"api": "lbtui-admin", "version": 2}, headers="X-Lbtui-Admin: 2\r\n")
        )
        for url, line in [
            (s.proxy, f"{s.proxy} is not an lbtui admin API (it answered 200 application/json)"),
            (shaped.url, f"{shaped.url} is not an lbtui admin API (it answered 200 application/json)"),
            (
                noise.url,
                f"{noise.url} is not an lbtui admin API (it answered something that is not HTTP: "
                "'???garbage, not HTTP?')",
            ),
            (
                future.url,
                f"{future.url} is an lbtui admin API of version 2; this lbtui ({lbtui.__version__}) "
                "speaks version 1: use the lbtui release of the server",
            ),
        ]:
            assert await attach(url, capsys) == (1, "", f"lbtui: attach: {line}\n"), url
        assert shaped.requests == ["GET /api/v1/"]
        async with nginx(tmp_path, {"static": NGINX_STATIC}) as web:
            code, out, err = await attach(web.urls["static"], capsys)
            assert (code, out) == (1, "")
            assert re.fullmatch(
                re.escape(
                    f"lbtui: attach: {web.urls['static']} is not an lbtui admin API (it answered 404 "
                    "text/html from nginx/"
                )
                + r"[\d.]+\)\n",
                err,
            ), err


async def test_a_server_replaced_by_the_proxy_shows_in_the_status_bar(backends) -> None:
    """Attached, the server restarts as something else on the admin API's address (here: a proxy listener)."""
    blue, green = await backends("blue-1"), await backends("green-1")
    async with served(canary_config(blue, green)) as s, impostors() as start:
        app = Dashboard(None, controller=s.remote)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            table = app.query_one("#backends", Table)
            assert table.keys == ["blue-1", "green-1"]
            port = int(s.url.rsplit(":", 1)[1])
            await s.engine.stop()
            # A backend on a thread of its own: the dashboard asks from this loop, and waits for the answer.
            web = await start(http_answer({"hello": "from a backend"}))
            config = parse_config(
                {
                    "listeners": [{"name": "web", "bind": f"127.0.0.1:{port}"}],
                    "services": {
                        "app": {"backends": [{"name": "web-1", "address": f"127.0.0.1:{web.port}"}]}
                    },
                },
                source="<test>",
            )
            async with served(config) as proxy:
                assert proxy.proxy == s.url  # the proxy now listens where the admin API was
                status = app.query_one("#status")
                said = f"{s.url} is no longer an lbtui admin API (it answered 200 application/json)"
                await wait_for(lambda: said in str(status.render()), what="the status bar to say so")
                assert "CONNECTION LOST" in str(status.render())
                assert status.has_class("error")
                await press(pilot, "d")  # a key says why it did nothing
                assert said in str(app.query_one("#message").render())
                assert table.keys == ["blue-1", "green-1"]  # the last state stays
                assert web.requests  # what the dashboard asked reached the new proxy's backend: reads only
                assert all(r.startswith("GET /api/v1/") for r in web.requests), web.requests
                await pilot.press("q", "y")
                await wait_for(lambda: not app.is_running, what="the dashboard to quit")
        assert app.return_value == 0
