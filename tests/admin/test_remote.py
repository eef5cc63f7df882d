"""RemoteController (`lbtui attach`) against a real engine and its admin API on a thread of their own."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest

from lbtui.admin.client import AdminClient
from lbtui.admin.remote import RemoteController
from lbtui.admin.schema import (
    event_json,
    request_from_json,
    request_json,
    snapshot_from_json,
    snapshot_json,
)
from lbtui.core.control import Conflict, ControlError, Event, Invalid, NotFound, ReloadRefused
from lbtui.core.views import Snapshot
from tests.attached import Served, canary_config, served
from tests.conftest import wait_for


@pytest.fixture
async def server(backends):
    blue, green = await backends("blue-1"), await backends("green-1")
    async with served(canary_config(blue, green)) as s:
        yield s


async def traffic(s: Served, count: int) -> None:
    async with httpx.AsyncClient(base_url=s.proxy) as http:
        for i in range(count):
            assert (await http.get(f"/r{i}")).status_code == 200


def local(s: Served) -> Snapshot:
    return s.engine.call(s.controller.snapshot)


def shown(snapshot: Snapshot) -> list[object]:
    """What the dashboard shows that does not move by itself between two snapshots."""
    out: list[object] = [(x.name, x.url) for x in snapshot.listeners]
    for service in snapshot.services:
        out.append((service.name, service.algorithm, service.split, service.groups, service.ramp))
        out.append((service.requests, service.in_flight, service.window.requests, service.window.errors))
        for b in service.backends:
            out.append(
                (b.name, b.service, b.group, b.address, b.weight, b.admin_state, b.health_label, b.in_flight)
            )
            out.append((b.requests, b.status_classes, b.bytes_out, b.window.requests, b.window.counts))
            out.append((round(b.window.p50_ms, 3), round(b.window.p99_ms, 3), b.checked, b.removing))
    for r in snapshot.routes:
        out.append((r.name, r.match, r.target, r.policies, r.status_classes, r.rejected, r.cache))
    return out


async def test_the_remote_snapshot_is_the_engines(server: Served) -> None:
    await traffic(server, 12)
    # The state is polled: the next poll has the traffic.
    await wait_for(lambda: shown(server.remote.snapshot()) == shown(local(server)), what="the polled state")
    remote = server.remote.snapshot()
    assert sum(remote.backend("blue-1").window.counts) > 0  # the latency histogram came across
    assert remote.extra == {"unmatched": dict(local(server).extra["unmatched"])}


async def test_the_states_json_round_trips(server: Served) -> None:
    await traffic(server, 5)
    server.remote.start_ramp("app")  # a ramp, so that its shape is in the JSON too
    client = AdminClient(server.url)
    state = client.state()
    assert state["services"][0]["ramp"] is not None
    assert snapshot_json(snapshot_from_json(state), now=state["time"]) == state
    requests = client.request("GET", "/api/v1/requests?limit=3")["requests"]
    client.close()
    assert len(requests) == 3
    assert [request_json(request_from_json(r)) for r in requests] == requests


def changed(event: Event, action: str, target: str, before: object, after: object) -> None:
    assert (event.actor, event.action, event.target, event.before, event.after) == (
        "key",
        action,
        target,
        before,
        after,
    )


async def test_every_change_goes_through_and_answers_its_event(server: Served) -> None:
    remote = server.remote

    def backend(name: str):
        return local(server).backend(name)

    def service():
        return local(server).service("app")

    changed(remote.drain("blue-1", actor="key"), "state", "blue-1", "ready", "drain")
    assert backend("blue-1").admin_state == "drain"
    changed(remote.enable("blue-1", actor="key"), "state", "blue-1", "drain", "ready")
    changed(remote.maint("green-1", actor="key"), "state", "green-1", "ready", "maint")
    changed(remote.set_state("green-1", "ready", actor="key"), "state", "green-1", "maint", "ready")
    changed(remote.drain_then_maint("green-1", actor="key"), "state", "green-1", "ready", "drain")
    await wait_for(lambda: backend("green-1").admin_state == "maint", what="drain, then maint")
    remote.enable("green-1", actor="key")
    changed(remote.set_weight("blue-1", 5, actor="key"), "weight", "blue-1", 1, 5)
    assert backend("blue-1").weight == 5
    event = remote.add_backend("app", "blue-2", "127.0.0.1:9", "blue", 2, actor="key")
    assert (event.action, event.target, event.after["weight"]) == ("add", "blue-2", 2)
    assert backend("blue-2").address == "127.0.0.1:9"
    assert remote.remove_backend("blue-2", actor="key").action == "remove"
    await wait_for(lambda: "blue-2" not in {b.name for b in service().backends}, what="blue-2 gone")
    changed(
        remote.set_algorithm("app", "least_connections", actor="key"),
        "algorithm",
        "app",
        "round_robin",
        "least_connections",
    )
    assert service().algorithm == "least_connections"
    split = {"blue": 80, "green": 20}
    changed(remote.set_split("app", split, actor="key"), "split", "app", {"blue": 90, "green": 10}, split)
    changed(remote.flip("app", actor="key"), "flip", "app", split, {"blue": 20, "green": 80})
    remote.set_split("app", {"blue": 90, "green": 10}, actor="key")
    event = remote.start_ramp("app", actor="key")
    assert (event.action, event.after) == ("ramp", {"blue": 80, "green": 20})
    ramp = service().ramp
    assert ramp is not None
    assert ramp.state == "running"
    remote_ramp = remote.snapshot().service("app").ramp
    assert remote_ramp is not None
    assert dataclasses.replace(remote_ramp, hold_left=0) == dataclasses.replace(ramp, hold_left=0)
    event = remote.abort_ramp("app", actor="key")
    assert (event.action, event.after, service().ramp.state) == ("ramp", {"blue": 90, "green": 10}, "aborted")
    undone = remote.undo(actor="key")
    assert (undone.actor, undone.action) == ("undo", "split")
    # Changes from an attached dashboard are the keys' in the audit log, as in-process.
    actors = {e.actor for e in server.engine.call(server.controller.events, 100)}
    assert actors <= {"key", "undo", "engine"}


async def test_refusals_are_control_errors_with_the_servers_message(server: Served) -> None:
    """Of the class the in-process controller raises (the API's status says which)."""
    remote = server.remote
    with pytest.raises(Conflict, match="nothing to undo"):
        remote.undo()
    with pytest.raises(NotFound, match="no backend named 'nope'"):
        remote.drain("nope")
    with pytest.raises(Invalid, match="weight must be an integer from 0 to 1000"):
        remote.set_weight("blue-1", 5000)
    with pytest.raises(Invalid, match="is not an algorithm"):
        remote.set_algorithm("app", "fastest")
    with pytest.raises(Conflict, match="no canary ramp is under way"):
        remote.abort_ramp("app")
    with pytest.raises(Conflict, match="'blue-1' is already used"):
        remote.add_backend("app", "blue-1", "127.0.0.1:9")
    with pytest.raises(Invalid, match="is not a state"):
        remote.set_state("blue-1", "asleep")


async def test_subscribe_hands_over_each_new_event_once_in_order(server: Served) -> None:
    remote = server.remote
    remote.drain("blue-1", actor="key")  # before subscribing: not new
    seen: list[Event] = []
    remote.subscribe(seen.append)
    # Changes made elsewhere (ctl, another dashboard) come by polling; our own come with their answer.
    server.engine.call(server.controller.set_weight, "green-1", 3, "ctl")
    remote.enable("blue-1", actor="key")
    server.engine.call(server.controller.set_weight, "green-1", 4, "ctl")
    await wait_for(lambda: len(seen) >= 3, what="three events")
    assert [(e.action, e.after) for e in seen] == [("weight", 3), ("state", "ready"), ("weight", 4)]
    assert [e.id for e in remote.events(3)] == [e.id for e in reversed(seen)]
    assert event_json(remote.events(1)[0]) == event_json(server.engine.call(server.controller.events, 1)[0])


async def test_recent_requests_are_the_access_log_tail(server: Served) -> None:
    await traffic(server, 4)
    assert server.remote.recent_requests(10) == []  # not polled before someone asks
    # Asking keeps the access log polled; the answer comes with the next poll.
    await wait_for(lambda: len(server.remote.recent_requests(10)) == 4, what="the polled access log")
    requests = server.remote.recent_requests(10)
    assert [r.target for r in requests] == ["/r3", "/r2", "/r1", "/r0"]
    engines = server.engine.call(server.controller.recent_requests, 10)
    assert [request_json(r) for r in requests] == [request_json(r) for r in engines]


async def test_a_lost_server_keeps_the_last_snapshot_and_says_why(backends) -> None:
    blue, green = await backends("blue-1"), await backends("green-1")
    async with served(canary_config(blue, green)) as s:
        before = s.remote.snapshot()
        assert "connection_lost" not in before.extra
        await s.engine.stop()
        await wait_for(lambda: "connection_lost" in s.remote.snapshot().extra, what="the lost server noticed")
        after = s.remote.snapshot()
        assert after.services == before.services
        assert "cannot reach the admin API" in after.extra["connection_lost"]
        with pytest.raises(ControlError, match="cannot reach the admin API"):
            s.remote.drain("blue-1")
        assert s.remote.events(5) == []  # no events were ever kept; and no exception
        assert s.remote.recent_requests(5) == []


def test_attach_to_nothing_says_why_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    from lbtui.cli import main

    assert main(["attach", "http://127.0.0.1:1"]) == 1
    assert "lbtui: attach: cannot reach the admin API at http://127.0.0.1:1" in capsys.readouterr().err
    assert main(["attach", "https://127.0.0.1:1"]) == 2  # not an admin URL


async def test_reload_from_an_attached_dashboard_goes_to_the_server(backends, tmp_path) -> None:
    """`r` in `lbtui attach` calls the server's reload (RemoteController.reload): what changed, or why not."""
    from lbtui.config import load_config

    one, two = await backends("one"), await backends("two")
    path = tmp_path / "lbtui.toml"
    base = '[[listeners]]\nbind = "127.0.0.1:0"\n[services.app]\n'
    backend = '[[services.app.backends]]\nname = "{0}"\naddress = "{1}"\n'
    path.write_text(base + backend.format("one", one.address))
    async with served(load_config(str(path))) as s:
        path.write_text(base + backend.format("one", one.address) + backend.format("two", two.address))
        result = s.remote.reload()
        assert result.summary().startswith(f"reloaded {path}: 1 change")
        assert any("two" in line for line in result.changes)
        assert [(e.actor, e.action, e.target) for e in result.events] == [("reload", "add", "two")]
        assert [b.name for b in s.remote.snapshot().services[0].backends] == ["one", "two"]
        path.write_text(base + "[[services.app.backends]]\nname = 3\n")
        with pytest.raises(ReloadRefused) as refused:
            s.remote.reload()
        assert refused.value.issues
        assert all(issue.file == str(path) for issue in refused.value.issues)
        assert [b.name for b in s.remote.snapshot().services[0].backends] == ["one", "two"]
        assert any(e.actor == "reload" for e in s.remote.events())


def refused(url: str, line: str) -> None:
    """A RemoteController on `url`: its first snapshot is ControlError(line), and nothing else raises."""
    remote = RemoteController(url)
    try:
        with pytest.raises(ControlError) as raised:
            remote.snapshot()
        assert str(raised.value) == line
        assert remote.events(5) == []
        assert remote.recent_requests(5) == []
        with pytest.raises(ControlError, match="is not an lbtui admin API"):
            remote.drain("blue-1")
    finally:
        remote.close()


async def test_what_is_not_the_api_is_refused_at_the_first_snapshot(backends) -> None:
    """The proxy's listener, a JSON server, garbage: one ControlError naming the URL and what answered."""
    from tests.impostors import garbage, http_answer, impostors

    blue, green = await backends("blue-1"), await backends("green-1")
    async with served(canary_config(blue, green)) as s, impostors() as start:
        shaped = await start(http_answer({"time": 1, "services": []}))
        noise = await start(garbage)
        for url, found in [
            (s.proxy, "200 application/json"),
            (shaped.url, "200 application/json"),
            (noise.url, "something that is not HTTP: '???garbage, not HTTP?'"),
        ]:
            # On a thread: the demo backends behind the listener answer on this test's loop.
            await asyncio.to_thread(refused, url, f"{url} is not an lbtui admin API (it answered {found})")
        assert shaped.requests == ["GET /api/v1/"]  # asked once who it is; nothing after that
        assert s.engine.call(s.controller.events, 10) == []  # nothing reached the engine


async def test_a_server_replaced_by_something_else_is_lost_not_a_crash(backends) -> None:
    """While attached, what answers on the admin API's address stops being it: said, the last state kept."""
    from tests.impostors import fake_lbtui, http_answer, impostors

    blue, green = await backends("blue-1"), await backends("green-1")
    async with impostors() as start, served(canary_config(blue, green)) as s:
        remote = s.remote
        before = remote.snapshot()
        seen: list[Event] = []
        remote.subscribe(seen.append)
        port = int(s.url.rsplit(":", 1)[1])
        await s.engine.stop()
        other = await start(http_answer({"hello": "world"}, headers="Server: other/2\r\n"), port=port)
        said = f"{s.url} is no longer an lbtui admin API (it answered 200 application/json from other/2)"
        await wait_for(lambda: remote.connection_lost == said, what="the poll to meet the new server")
        after = remote.snapshot()
        assert after.services == before.services
        assert after.extra["connection_lost"] == said
        with pytest.raises(ControlError, match="is no longer an lbtui admin API"):
            remote.drain("blue-1")  # identified first, so the drain itself never is sent
        assert remote.events(5) == []
        assert remote.recent_requests(5) == []
        assert all(r.startswith("GET /api/v1/") for r in other.requests), other.requests
        await other.stop()
        # Now something that passes for the API, with JSON of another shape (a proxy that rewrites it).
        await start(
            fake_lbtui({"/api/v1/state": {"services": "?"}, "/api/v1/events": {"events": [{"id": "x"}]}}),
            port=port,
        )
        shape = f"{s.url} answered GET /api/v1/state with JSON of another shape ("
        await wait_for(lambda: remote.connection_lost.startswith(shape), what="the poll to read it")
        after = remote.snapshot()
        assert after.services == before.services
        assert after.extra["connection_lost"].startswith(shape)
        assert remote.events(5) == []
        assert seen == []
