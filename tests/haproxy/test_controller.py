"""HaproxyController against real HAProxy processes (tests/haproxy/conftest.py): the snapshot a dashboard reads,
every change read back from HAProxy with the Runtime API client, events with before/after (ours and someone
else's on the socket), restarts, an unreachable socket, and what HAProxy cannot do.

The controller's calls wait for its own loop's thread: the tests make them through asyncio.to_thread, so that the
test's loop (which runs the demo backends HAProxy sends traffic to) never stops.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from lbtui.core.control import Conflict, ControlError, Event, Invalid, NotFound
from lbtui.core.views import Snapshot
from lbtui.demo.backends import Profile
from lbtui.haproxy.controller import LATENCY_LABEL, SOCKET_ACTOR, HaproxyController
from lbtui.haproxy.runtime import RuntimeClient, ServerState
from lbtui.tui.format import backend_cells
from tests.conftest import DEADLINE, wait_for
from tests.haproxy.conftest import HAProxy
from tests.haproxy.test_runtime import get

POLL = 0.05  # the tests' poll interval: a quicker one than the dashboard's


@asynccontextmanager
async def controlling(
    h: HAProxy, timeout: float = 2.0, poll: float = POLL
) -> AsyncIterator[HaproxyController]:
    controller = HaproxyController(str(h.unix), timeout=timeout, poll_seconds=poll)
    try:
        yield controller
    finally:
        await asyncio.to_thread(controller.close)


async def call(function: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


async def server_state(h: HAProxy, server: str) -> ServerState:
    states = await h.client().show_servers_state("app")
    return next(s for s in states if s.server == server)


async def event_where(c: HaproxyController, match: Callable[[Event], bool], what: str) -> Event:
    found: list[Event] = []

    def seen() -> bool:
        found[:] = [e for e in c.events(1000) if match(e)]
        return bool(found)

    await wait_for(seen, what=what)
    return found[0]


async def snapshot_where(c: HaproxyController, match: Callable[[Snapshot], bool], what: str) -> Snapshot:
    await wait_for(lambda: match(c.snapshot()), what=what)
    return c.snapshot()


async def test_the_snapshot_has_the_configs_servers_and_counts_the_traffic(haproxy):
    h = await haproxy(["a", "b"])
    async with controlling(h) as c:
        first = await call(c.snapshot)
        assert [s.name for s in first.services] == ["app"]  # the frontend `web` is no service
        app = first.service("app")
        assert app.algorithm == "roundrobin"
        assert [(b.name, b.address) for b in app.backends] == [
            ("a", h.servers["a"].address),
            ("b", h.servers["b"].address),
        ]
        for b in app.backends:
            assert (b.admin_state, b.health, b.weight, b.in_flight) == ("ready", "no check", 1, 0)
        for _ in range(10):
            assert (await get(h.frontend_port))[0] == 200
        later = await snapshot_where(c, lambda s: s.service("app").requests == 10, "10 requests counted")
        assert {b.name: b.requests for b in later.service("app").backends} == {"a": 5, "b": 5}
        assert sum(b.status_classes[2] for b in later.service("app").backends) == 10
        # HAProxy's rtime is an average: it is said to be one, and no percentile is made of it.
        a = later.backend("a")
        assert a.latency_avg_ms is not None
        assert a.latency_avg_ms >= 0
        assert math.isnan(a.window.p50_ms)
        assert math.isnan(a.window.p99_ms)
        assert later.extra["latency"] == LATENCY_LABEL == "avg (HAProxy, last 1024)"
        assert "connection_lost" not in later.extra


async def test_req_per_second_comes_from_the_counters_between_polls(haproxy):
    h = await haproxy(["a"])
    # Polls far apart next to wait_for's 5 ms: every poll's window is seen.
    async with controlling(h, poll=0.3) as c:
        await call(c.snapshot)
        for _ in range(40):
            assert (await get(h.frontend_port))[0] == 200
        windows: dict[float, tuple[int, float, float]] = {}  # poll time -> (requests, seconds, rps)

        def counted() -> bool:
            snapshot = c.snapshot()
            w = snapshot.backend("a").window
            windows[snapshot.time] = (w.requests, w.seconds, w.rps)
            return snapshot.backend("a").requests == 40 and sum(r for r, _, _ in windows.values()) == 40

        # Each poll's window is the requests since the poll before: the 40 are counted once across them.
        await wait_for(counted, what="the 40 requests in the polls' windows")
        busy = [(r, seconds, rps) for r, seconds, rps in windows.values() if r]
        assert busy
        for requests, seconds, rps in busy:
            assert rps == pytest.approx(requests / seconds)
        assert min(rps for _, _, rps in windows.values()) >= 0


async def test_drain_enable_maint_and_weight_change_haproxy_with_events(haproxy):
    h = await haproxy(["a", "b"])
    async with controlling(h) as c:
        await call(c.snapshot)
        event = await call(c.drain, "a", "key")
        assert (event.actor, event.action, event.target, event.before, event.after) == (
            "key",
            "state",
            "a",
            "ready",
            "drain",
        )
        assert (await server_state(h, "a")).draining
        await snapshot_where(c, lambda s: s.backend("a").admin_state == "drain", "the drain polled")
        assert c.snapshot().backend("a").drain_seconds is not None

        event = await call(c.maint, "a", "key")
        assert (event.before, event.after) == ("drain", "maint")
        assert (await server_state(h, "a")).in_maint
        await snapshot_where(c, lambda s: s.backend("a").health == "MAINT", "HAProxy's own word for it")

        event = await call(c.enable, "app/a", "key")  # BACKEND/SERVER names it too
        assert (event.before, event.after) == ("maint", "ready")
        state = await server_state(h, "a")
        assert not state.in_maint
        assert not state.draining

        event = await call(c.set_weight, "b", 7, "key")
        assert (event.action, event.before, event.after) == ("weight", 1, 7)
        assert (await server_state(h, "b")).uweight == 7
        with pytest.raises(Invalid, match="0-256"):
            await call(c.set_weight, "b", 257, "key")
        with pytest.raises(NotFound):
            await call(c.drain, "nosuch", "key")
        assert (await server_state(h, "b")).uweight == 7

        # Our own changes are not seen again as someone else's on the next polls.
        await snapshot_where(c, lambda s: s.backend("b").weight == 7, "the weight polled")
        events = c.events()
        assert [(e.action, e.before, e.after) for e in events] == [
            ("weight", 1, 7),
            ("state", "maint", "ready"),
            ("state", "drain", "maint"),
            ("state", "ready", "drain"),
        ]
        assert {e.actor for e in events} == {"key"}


async def test_a_change_made_on_the_socket_by_someone_else_is_an_event(haproxy):
    h = await haproxy(["a", "b"])
    async with controlling(h) as c:
        await call(c.snapshot)
        other = RuntimeClient(h.tcp, timeout=DEADLINE)
        await other.set_state("app", "b", "drain")
        await other.set_weight("app", "a", 3)
        state = await event_where(c, lambda e: e.action == "state", "the drain seen")
        weight = await event_where(c, lambda e: e.action == "weight", "the weight seen")
        assert (state.actor, state.target, state.before, state.after) == (SOCKET_ACTOR, "b", "ready", "drain")
        assert (weight.actor, weight.target, weight.before, weight.after) == (SOCKET_ACTOR, "a", 1, 3)
        assert c.snapshot().backend("b").admin_state == "drain"

        await other.add_server("app", "c", "127.0.0.1:9")
        added = await event_where(c, lambda e: e.action == "add", "the new server seen")
        assert (added.actor, added.target, added.before) == (SOCKET_ACTOR, "c", None)
        assert added.after["address"] == "127.0.0.1:9"
        await other.set_state("app", "c", "maint")
        await other.del_server("app", "c")
        removed = await event_where(c, lambda e: e.action == "remove", "the server's deletion seen")
        assert (removed.actor, removed.target, removed.after) == (SOCKET_ACTOR, "c", None)


async def test_unreachable_keeps_the_last_snapshot_and_a_restart_is_an_event(haproxy):
    h = await haproxy(["a"])
    async with controlling(h, timeout=1.0) as c:
        for _ in range(3):
            assert (await get(h.frontend_port))[0] == 200
        await snapshot_where(c, lambda s: s.backend("a").requests == 3, "3 requests")
        old_pid = (await h.client().show_info()).pid
        assert h.proc is not None
        h.proc.kill()
        await h.proc.wait()
        lost = await snapshot_where(c, lambda s: "connection_lost" in s.extra, "the connection lost")
        assert str(h.unix) in lost.extra["connection_lost"]
        assert lost.backend("a").requests == 3  # the last snapshot stays
        with pytest.raises(ControlError, match="unreachable"):
            await call(c.drain, "a", "key")

        await h.restart()
        restart = await event_where(c, lambda e: e.action == "restart", "the restart noticed")
        new_pid = (await h.client().show_info()).pid
        assert (restart.before, restart.after) == ({"pid": old_pid}, {"pid": new_pid})
        assert "restarted" in restart.note
        back = await snapshot_where(c, lambda s: "connection_lost" not in s.extra, "the connection back")
        assert back.backend("a").requests == 0
        assert back.backend("a").rps == 0  # counted anew, never negative
        assert [e.action for e in c.events()] == ["restart"]  # the new process's servers: no one's change


async def test_a_socket_that_never_answered_says_why(tmp_path):
    c = HaproxyController(f"haproxy://{tmp_path}/none.sock", timeout=0.5, poll_seconds=POLL)
    try:
        with pytest.raises(ControlError, match=r"none\.sock.*unreachable"):
            await call(c.snapshot)
    finally:
        await call(c.close)
    assert not c._thread.is_alive()  # close() stopped the loop and its thread
    with pytest.raises(ControlError, match="closed"):
        await call(c.set_weight, "a", 2)
    with pytest.raises(ValueError, match="not a HAProxy Runtime API address"):
        HaproxyController("haproxy://nowhere")


async def test_what_haproxy_cannot_do_is_refused_in_one_line(haproxy):
    h = await haproxy(["a"])
    async with controlling(h) as c:
        await call(c.snapshot)
        with pytest.raises(Invalid) as refused:
            await call(c.set_algorithm, "app", "leastconn", "key")
        assert "HAProxy cannot change `balance` at runtime" in str(refused.value)
        assert "\n" not in str(refused.value)
        # With one group (no groups file), a split, a flip, a ramp and an undo have nothing to work on: refused,
        # each in one line, of the kind lbtui's engine gives (Invalid 400, Conflict 409).
        for attempt, kind, words in (
            (lambda: c.set_split("app", {"default": 100}), Invalid, "has one group"),
            (lambda: c.flip("app"), Conflict, "split of exactly two groups"),
            (lambda: c.start_ramp("app"), Conflict, "split of exactly two groups"),
            (lambda: c.undo(), Conflict, "nothing to undo"),
            (lambda: c.reload(), Invalid, "systemctl reload haproxy"),
        ):
            with pytest.raises(kind) as refused:
                await call(attempt)
            assert words in str(refused.value)
            assert "\n" not in str(refused.value)
        assert await call(c.recent_requests) == []
        assert c.events() == []


async def test_add_and_remove_a_server(haproxy, backends):
    h = await haproxy(["a"])
    extra = await backends("c")
    async with controlling(h) as c:
        await call(c.snapshot)
        with pytest.raises(Invalid, match="not a server address"):
            await call(c.add_backend, "app", "c", "not an address")
        event = await call(c.add_backend, "app", "c", extra.address)
        assert (event.action, event.target, event.after["address"]) == ("add", "c", extra.address)
        state = await server_state(h, "c")
        assert not state.in_maint
        assert not state.draining
        await snapshot_where(c, lambda s: "c" in [b.name for b in s.service("app").backends], "c polled")
        served = set()
        for _ in range(4):
            status, body = await get(h.frontend_port)
            assert status == 200
            served.add(body)
        assert len(served) == 2  # both servers took traffic

        event = await call(c.remove_backend, "c")
        # Before: what an undo needs to add it back (as lbtui's engine records a removal).
        removed = {
            "service": "app",
            "server": "c",
            "address": extra.address,
            "group": "default",
            "weight": 1,
            "state": "ready",
        }
        assert (event.action, event.before, event.after) == ("remove", removed, "removing")
        await event_where(c, lambda e: e.action == "remove" and e.note == "deleted", "c deleted")
        states = await h.client().show_servers_state("app")
        assert [s.server for s in states] == ["a"]
        await snapshot_where(c, lambda s: [b.name for b in s.service("app").backends] == ["a"], "c gone")
        actions = [(e.action, e.before, e.after) for e in reversed(c.events())]
        assert actions == [
            ("add", None, {"service": "app", "address": extra.address, "group": "default", "weight": 1}),
            ("state", "ready", "drain"),
            ("remove", removed, "removing"),
            ("state", "drain", "maint"),
            ("remove", "removing", None),
        ]


async def test_drain_then_maint_goes_to_maint_once_quiet(haproxy):
    h = await haproxy(["a", "b"])
    async with controlling(h) as c:
        await call(c.snapshot)
        event = await call(c.drain_then_maint, "a", "key")
        assert (event.before, event.after, event.note) == ("ready", "drain", "then maint once drained")
        maint = await event_where(c, lambda e: e.after == "maint", "maint once drained")
        assert (maint.before, maint.note) == ("drain", "drained")
        assert (await server_state(h, "a")).in_maint


async def test_a_drain_under_load_counts_in_flight_down_with_no_failed_request(haproxy):
    h = await haproxy(["a", "b"])
    for server in h.servers.values():
        server.profile = Profile(latency=1.0)  # requests that stay in flight across many polls
    async with controlling(h) as c:
        await call(c.snapshot)
        requests = [asyncio.create_task(get(h.frontend_port)) for _ in range(8)]
        await snapshot_where(c, lambda s: s.backend("a").in_flight == 4, "4 requests in flight on a")
        await call(c.drain, "a", "key")
        seen: list[int] = []

        def drained() -> bool:
            b = c.snapshot().backend("a")
            if not seen or seen[-1] != b.in_flight:
                seen.append(b.in_flight)
            if b.in_flight:
                assert not b.drained
            return b.admin_state == "drain" and b.drained

        await wait_for(drained, what="a drained")
        assert c.snapshot().backend("a").in_flight == 0
        assert backend_cells(c.snapshot().backend("a"))["state"].plain == "drained"
        assert seen[0] == 4
        assert seen[-1] == 0
        assert seen == sorted(seen, reverse=True)  # counts down, never up: no new request went to a
        assert [(await task)[0] for task in requests] == [200] * 8
        h.servers["b"].profile = Profile()
        for _ in range(4):
            assert json.loads((await get(h.frontend_port))[1])["backend"] == "b"


async def test_5xx_share_comes_from_the_counters_between_polls(haproxy):
    h = await haproxy(["a", "b"])
    h.servers["a"].profile = Profile(error_rate=1.0)
    async with controlling(h, poll=0.3) as c:  # polls far apart next to wait_for's 5 ms: each one is seen
        await call(c.snapshot)
        for _ in range(10):
            await get(h.frontend_port)
        windows: dict[str, dict[float, tuple[int, int]]] = {"a": {}, "b": {}}

        def counted() -> bool:
            snapshot = c.snapshot()
            for name, seen in windows.items():
                w = snapshot.backend(name).window
                seen[snapshot.time] = (w.requests, w.errors)
            return all(sum(r for r, _ in seen.values()) == 5 for seen in windows.values())

        await wait_for(counted, what="the 10 requests in the polls' windows")
        assert sum(e for _, e in windows["a"].values()) == 5
        assert sum(e for _, e in windows["b"].values()) == 0
        a = c.snapshot().backend("a")
        assert a.status_classes[5] == 5
        busy = [(r, e) for r, e in windows["a"].values() if r]
        assert all(e == r for r, e in busy)  # every one of a's answers was a 5xx: its share is 100%
