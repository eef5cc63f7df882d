"""FleetController over real HAProxy processes (and a real `lbtui serve`): merged rows, agreement, a change applied
to every member, rolled back where a member failed, diverged where the rollback failed, and snapshot() never held
up by a member that does not answer."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator

import pytest

from lbtui.admin.remote import RemoteController
from lbtui.core.control import ControlError, Event, NotFound
from lbtui.core.views import Snapshot
from lbtui.fleet import FleetController, FleetInfo
from lbtui.haproxy.controller import HaproxyController
from lbtui.haproxy.runtime import ServerState
from tests.attached import served
from tests.conftest import DEADLINE, make_config, wait_for
from tests.fleet.conftest import HAProxy, controllers, kill, url
from tests.haproxy.test_runtime import get


async def server_state(h: HAProxy, server: str) -> ServerState:
    return next(s for s in await h.client().show_servers_state("app") if s.server == server)


def fleet_info(snapshot: Snapshot) -> FleetInfo:
    info = snapshot.extra["fleet"]
    assert isinstance(info, FleetInfo)
    return info


async def snapshot_of(fleet: FleetController) -> Snapshot:
    return await asyncio.to_thread(fleet.snapshot)


async def test_rows_are_merged_across_instances_and_agree(haproxy, fleets):
    one, two = await haproxy(["a", "b"]), await haproxy(["a", "b"])
    for _ in range(4):
        assert (await get(one.frontend_port))[0] == 200
    for _ in range(6):
        assert (await get(two.frontend_port))[0] == 200
    fleet = fleets(controllers(one, two))
    await wait_for(lambda: fleet.snapshot().service("app").requests == 10, what="10 requests summed")
    snapshot = fleet.snapshot()
    [app] = snapshot.services
    assert [b.name for b in app.backends] == ["a", "b"]
    a, b = app.backends
    assert (a.requests, b.requests) == (5, 5)  # 2 + 3 each: HAProxy's roundrobin over two servers
    assert (a.instances, a.agreeing, a.mixed, a.diverged) == (2, 2, (), "")
    assert (a.admin_state, a.weight) == ("ready", 1)
    assert a.latency_avg_ms is not None
    assert math.isnan(a.window.p99_ms)
    assert [m.name for m in fleet_info(snapshot).members] == [url(one), url(two)]
    per = fleet_info(snapshot).rows[("app", "a")]
    assert [(r.member, r.backend.requests if r.backend else None) for r in per] == [
        (url(one), 2),
        (url(two), 3),
    ]

    # Someone else changes one instance on its socket: the row says the instances no longer agree.
    await one.client().set_weight("app", "a", 7)
    await wait_for(lambda: fleet.snapshot().backend("a").agreeing == 1, what="1/2 agree")
    a = fleet.snapshot().backend("a")
    assert (a.instances, a.mixed, a.diverged) == (2, ("weight",), "")
    events = fleet.events()
    assert any(e.action == "weight" and e.after == 7 and e.note.endswith(f"on {url(one)}") for e in events), (
        events
    )


async def test_a_drain_is_applied_to_every_instance(haproxy, fleets):
    one, two = await haproxy(["a", "b"]), await haproxy(["a", "b"])
    fleet = fleets(controllers(one, two))
    event = await asyncio.to_thread(fleet.drain, "a", "ctl")
    assert (event.actor, event.action, event.target, event.before, event.after) == (
        "ctl",
        "state",
        "a",
        "ready",
        "drain",
    )
    assert url(one) in event.note
    assert url(two) in event.note
    assert [(await server_state(h, "a")).draining for h in (one, two)] == [True, True]
    await wait_for(lambda: fleet.snapshot().backend("a").admin_state == "drain", what="drain read back")
    assert fleet.snapshot().backend("a").agreeing == 2
    # A target that is missing on an instance is refused before anything changes anywhere.
    await two.client().set_state("app", "b", "maint")
    with pytest.raises(NotFound, match="not changed on any instance"):
        await asyncio.to_thread(fleet.set_weight, "nosuch", 5)
    assert (await server_state(one, "b")).uweight == 1


class StopsFirst(HaproxyController):
    """A member whose HAProxy dies right before the `n`th set_state reaches it (a member stopped mid-change)."""

    def __init__(self, url: str, h: HAProxy, n: int = 1) -> None:
        super().__init__(url, poll_seconds=0.1)
        self.h, self.n, self.calls = h, n, 0

    def set_state(self, backend: str, state: str, actor: str = "api") -> Event:
        self.calls += 1
        if self.calls == self.n:
            kill(self.h)
        return super().set_state(backend, state, actor)


async def test_a_member_stopped_mid_change_is_rolled_back_on_the_others(haproxy, fleets):
    one, two = await haproxy(["a", "b"]), await haproxy(["a", "b"])
    members = {url(one): HaproxyController(url(one), poll_seconds=0.1), url(two): StopsFirst(url(two), two)}
    fleet = fleets(members)
    await snapshot_of(fleet)
    with pytest.raises(ControlError, match="rolled back") as refused:
        await asyncio.to_thread(fleet.drain, "a", "key")
    assert url(two) in str(refused.value)
    # Applied on one, failed on two, put back on one: no instance is left drained.
    assert not (await server_state(one, "a")).draining
    [event] = [
        e for e in fleet.events() if e.action == "state" and "on every" not in e.note and "failed" in e.note
    ]
    assert (event.actor, event.target, event.before, event.after) == ("key", "a", "ready", "ready")
    assert f"{url(one)}: ready -> drain; rolled back" in event.note
    assert f"{url(two)}: failed" in event.note
    # Two is down: the row is not diverged (nothing was left half-done), but 1/2 agree and two is unreachable.
    await wait_for(lambda: not fleet_info(fleet.snapshot()).members[1].reachable, what="two unreachable")
    a = fleet.snapshot().backend("a")
    assert (a.agreeing, a.instances, a.diverged) == (1, 2, "")
    assert a.requests == 0
    assert a.admin_state == "ready"


async def test_a_rollback_that_fails_leaves_the_row_diverged_until_they_agree(haproxy, fleets):
    one, two = await haproxy(["a", "b"]), await haproxy(["a", "b"])
    members = {url(one): StopsFirst(url(one), one, n=2), url(two): StopsFirst(url(two), two, n=1)}
    fleet = fleets(members)
    await snapshot_of(fleet)
    with pytest.raises(ControlError, match="DIVERGED"):
        await asyncio.to_thread(fleet.maint, "a", "key")
    a = fleet.snapshot().backend("a")
    assert "rollback failed" in a.diverged, a
    events = fleet.events()
    assert any("rollback failed" in e.note for e in events), events
    # Both come back (a new process each, with its config's state: ready): they agree, and diverged clears.
    await one.restart()
    await two.restart()
    await wait_for(lambda: fleet.snapshot().backend("a").diverged == "", what="diverged cleared")
    a = fleet.snapshot().backend("a")
    assert (a.agreeing, a.instances, a.admin_state) == (2, 2, "ready")


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A TCP server on loopback that accepts and never answers: a member that hangs."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_a_member_that_hangs_never_holds_up_the_snapshot(haproxy, fleets):
    one = await haproxy(["a", "b"])
    async with silent_server() as port:
        members = {
            url(one): HaproxyController(url(one), poll_seconds=0.1),
            f"haproxy://127.0.0.1:{port}": HaproxyController(f"haproxy://127.0.0.1:{port}", timeout=5.0),
            f"http://127.0.0.1:{port}": RemoteController(f"http://127.0.0.1:{port}", timeout=5.0),
        }
        fleet = fleets(members, poll_deadline=1.0)
        started = time.monotonic()
        snapshot = await snapshot_of(fleet)
        first = time.monotonic() - started
        assert first < 4.0, (
            first
        )  # the first answers, or the poll deadline (1 s): not the members' 5 s timeouts
        info = fleet_info(snapshot)
        assert [m.reachable for m in info.members] == [True, False, False]
        assert snapshot.backend("a").instances == 3
        # Later snapshots are at once, while both silent members are still asked (and hang).
        for _ in range(20):
            started = time.monotonic()
            fleet.snapshot()
            assert time.monotonic() - started < 0.2
        # A change is refused at the check, naming the members that cannot be reached; nothing changed.
        started = time.monotonic()
        with pytest.raises(ControlError, match="not changed on any instance"):
            await asyncio.to_thread(fleet.drain, "a")
        assert time.monotonic() - started < 2.0  # refused at once: the polls know they cannot be reached
        assert not (await server_state(one, "a")).draining


async def test_a_mixed_fleet_of_haproxy_and_lbtui_serve(haproxy, fleets):
    h = await haproxy(["a", "b"])
    config = make_config([("a", h.servers["a"].address), ("b", h.servers["b"].address)])
    async with served(config) as s:
        remote = RemoteController(s.url)
        fleet = fleets({url(h): HaproxyController(url(h), poll_seconds=0.1), s.url: remote})
        snapshot = await snapshot_of(fleet)
        a = snapshot.backend("a")
        assert (a.instances, a.agreeing) == (2, 2)
        # One engine has percentiles and one an average: no percentile is made of a part of the traffic.
        assert a.latency_avg_ms is not None
        assert math.isnan(a.window.p50_ms)
        assert "request-weighted mean" in snapshot.extra["latency"]
        # The same words in two engines' spellings are not a difference: HAProxy's UP is lbtui's up, its
        # roundrobin lbtui's round_robin.
        assert "health" not in a.mixed
        assert snapshot.service(a.service).algorithm != "mixed"
        event = await asyncio.to_thread(fleet.set_weight, "a", 3, "ctl")
        assert (event.before, event.after) == (1, 3)
        assert (await server_state(h, "a")).uweight == 3
        assert s.engine.call(s.controller.snapshot).backend("a").weight == 3
        await wait_for(
            lambda: (fleet.snapshot().backend("a").weight, fleet.snapshot().backend("a").agreeing) == (3, 2),
            what="weight 3 on both",
        )
        # lbtui allows weights up to 1000, HAProxy up to 256: refused on HAProxy, rolled back on lbtui.
        with pytest.raises(ControlError, match="rolled back"):
            await asyncio.to_thread(fleet.set_weight, "a", 500, "ctl")
        assert s.engine.call(s.controller.snapshot).backend("a").weight == 3
        assert (await server_state(h, "a")).uweight == 3
        # A reload cannot be rolled back: each member is asked, and the answer names those that refused.
        with pytest.raises(ControlError, match=r"reload refused \(0 of 2 reloaded\)") as refused:
            await asyncio.to_thread(fleet.reload, "ctl")
        assert f"{url(h)}: reload is HAProxy's own" in str(refused.value)
        assert f"{s.url}: <test>: file not found" in str(refused.value)  # the test's config has no file


async def test_the_first_snapshot_of_a_fleet_that_never_answered_says_so(fleets, closed_port):
    port = closed_port()
    fleet = fleets({f"haproxy://127.0.0.1:{port}": HaproxyController(f"haproxy://127.0.0.1:{port}")})
    with pytest.raises(ControlError, match="no instance of the fleet answered"):
        await asyncio.wait_for(snapshot_of(fleet), DEADLINE)
