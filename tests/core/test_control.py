"""The Controller: states with HAProxy's meanings, weights, add/remove, algorithm, split, flip, audit, undo."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from lbtui.config import parse_config
from lbtui.core.balancer import Balancer
from lbtui.core.control import Conflict, ControlError, InProcessController, Invalid, NotFound
from tests.conftest import make_config, wait_for


def controller(split: dict | None = None, algorithm: str = "round_robin") -> InProcessController:
    service = {
        "algorithm": algorithm,
        "backends": [
            {"name": "blue-1", "address": "127.0.0.1:9001", "group": "blue"},
            {"name": "blue-2", "address": "127.0.0.1:9002", "group": "blue"},
            {"name": "green-1", "address": "127.0.0.1:9003", "group": "green"},
        ],
    }
    if split:
        service["split"] = split
    config = parse_config({"services": {"shop": service}})
    return InProcessController(Balancer(config))


def picks(c: InProcessController, n: int) -> Counter:
    service = c.balancer.services["shop"]
    out: Counter = Counter()
    for _ in range(n):
        b = service.pick(None)
        out[b.name if b else None] += 1
    return out


def test_drain_and_maint_take_no_new_traffic():
    c = controller()
    c.drain("blue-1")
    assert "blue-1" not in picks(c, 30)
    c.maint("blue-2")
    assert set(picks(c, 30)) == {"green-1"}
    c.enable("blue-1")
    assert set(picks(c, 30)) == {"blue-1", "green-1"}


def test_split_weights_groups_exactly():
    c = controller(split={"blue": 90, "green": 10})
    counts = picks(c, 1000)
    assert counts["green-1"] == 100
    assert counts["blue-1"] + counts["blue-2"] == 900


def test_split_falls_back_when_a_group_cannot_serve():
    c = controller(split={"blue": 100, "green": 0})
    c.maint("blue-1")
    c.maint("blue-2")
    assert set(picks(c, 10)) == {"green-1"}  # availability before the split


def test_flip_swaps_the_two_groups():
    c = controller(split={"blue": 90, "green": 10})
    event = c.flip("shop", actor="key")
    assert event.before == {"blue": 90, "green": 10}
    assert event.after == {"blue": 10, "green": 90}
    counts = picks(c, 100)
    assert counts["green-1"] == 90


def test_set_split_validates():
    c = controller(split={"blue": 90, "green": 10})
    with pytest.raises(ControlError, match="no group 'red'"):
        c.set_split("shop", {"red": 10})
    with pytest.raises(ControlError, match="at least one group"):
        c.set_split("shop", {"blue": 0, "green": 0})
    c.set_split("shop", {"blue": 50, "green": 50})
    assert picks(c, 100)["green-1"] == 50


def test_weight_changes_share():
    c = controller(algorithm="weighted_round_robin")
    c.set_weight("blue-1", 3)
    counts = picks(c, 500)
    assert counts["blue-1"] == 300
    with pytest.raises(ControlError):
        c.set_weight("blue-1", -1)
    with pytest.raises(ControlError):
        c.set_weight("nope", 1)


def test_weight_zero_takes_no_traffic():
    c = controller()
    c.set_weight("green-1", 0)
    assert "green-1" not in picks(c, 30)


def test_algorithm_switch_and_validation():
    c = controller()
    c.set_algorithm("shop", "least_connections")
    assert c.snapshot().service("shop").algorithm == "least_connections"
    with pytest.raises(ControlError, match="not an algorithm"):
        c.set_algorithm("shop", "fastest")
    with pytest.raises(ControlError, match="hash_key"):
        c.set_algorithm("shop", "consistent_hash")


def test_add_and_remove_backend():
    c = controller()
    c.add_backend("shop", "green-2", "127.0.0.1:9004", group="green", weight=2)
    assert "green-2" in picks(c, 30)
    with pytest.raises(ControlError, match="exists already"):
        c.add_backend("shop", "green-2", "127.0.0.1:9005")
    with pytest.raises(ControlError):
        c.add_backend("shop", "bad name!", "127.0.0.1:9005")
    with pytest.raises(ControlError):
        c.add_backend("shop", "x", "not-an-address")
    c.remove_backend("green-2")  # nothing in flight: gone at once
    assert "green-2" not in c.balancer.backends


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        (lambda c: c.drain("nope"), NotFound),
        (lambda c: c.flip("nope"), NotFound),
        (lambda c: c.add_backend("nope", "x", "127.0.0.1:1"), NotFound),
        (lambda c: c.set_state("blue-1", "asleep"), Invalid),
        (lambda c: c.set_weight("blue-1", 5000), Invalid),
        (lambda c: c.set_algorithm("shop", "fastest"), Invalid),
        (lambda c: c.set_split("shop", {"red": 1}), Invalid),
        (lambda c: c.add_backend("shop", "x", "not-an-address"), Invalid),
        (lambda c: c.add_backend("shop", "blue-1", "127.0.0.1:1"), Conflict),  # a name of the config's
        (lambda c: c.flip("shop"), Conflict),  # no split yet
        (lambda c: c.start_ramp("shop"), Conflict),
        (lambda c: c.abort_ramp("shop"), Conflict),
        (lambda c: c.undo(), Conflict),
        (lambda c: c.reload(), Conflict),  # no runtime set a config file to reload
    ],
)
def test_each_refusal_says_its_kind_by_class(change, kind):
    """The admin API answers by class (404, 409, 400), never by reading the message."""
    with pytest.raises(kind):
        change(controller())


def test_a_name_taken_at_runtime_is_a_conflict_too():
    c = controller()
    c.add_backend("shop", "green-2", "127.0.0.1:9004")
    with pytest.raises(Conflict, match="exists already"):
        c.add_backend("shop", "green-2", "127.0.0.1:9005")


def test_remove_drains_first_then_drops_when_idle():
    c = controller()
    b = c.balancer.backends["green-1"]
    b.in_flight = 2
    c.remove_backend("green-1")
    assert "green-1" in c.balancer.backends  # still draining its two requests
    assert b.admin_state.value == "drain"
    assert "green-1" not in picks(c, 30)
    c.balancer.tick()
    assert "green-1" in c.balancer.backends
    b.in_flight = 0
    c.balancer.tick()
    assert "green-1" not in c.balancer.backends
    assert c.events()[0].action == "remove"
    assert c.events()[0].after == "removed"


def test_drain_then_maint_moves_to_maint_once_in_flight_is_zero():
    c = controller()
    b = c.balancer.backends["blue-1"]
    b.in_flight = 1
    c.drain_then_maint("blue-1", actor="key")
    assert b.admin_state.value == "drain"
    c.balancer.tick()
    assert b.admin_state.value == "drain"  # still finishing its request
    b.in_flight = 0
    c.balancer.tick()
    assert b.admin_state.value == "maint"
    newest = c.events()[0]
    assert (newest.actor, newest.action, newest.before, newest.after) == ("engine", "state", "drain", "maint")
    c.enable("blue-1")
    b.in_flight = 0
    c.balancer.tick()
    assert b.admin_state.value == "ready"  # an explicit change cancels the pending maint


def test_events_newest_first_with_actor_before_after():
    c = controller()
    c.drain("blue-1", actor="key")
    c.set_weight("blue-2", 5, actor="api")
    events = c.events()
    assert [(e.actor, e.action, e.target, e.before, e.after) for e in events] == [
        ("api", "weight", "blue-2", 1, 5),
        ("key", "state", "blue-1", "ready", "drain"),
    ]
    assert events[0].id > events[1].id


def test_undo_reverts_in_reverse_order():
    c = controller(split={"blue": 90, "green": 10})
    c.drain("blue-1")
    c.set_weight("blue-2", 4)
    c.flip("shop")
    c.undo()
    assert c.balancer.services["shop"].split == {"blue": 90, "green": 10}
    c.undo()
    assert c.balancer.backends["blue-2"].weight == 1
    c.undo()
    assert c.balancer.backends["blue-1"].admin_state.value == "ready"
    with pytest.raises(ControlError, match="nothing to undo"):
        c.undo()
    assert c.events()[0].actor == "undo"


def test_snapshot_is_immutable_and_sized_by_backends():
    c = controller()
    snap = c.snapshot()
    with pytest.raises(AttributeError):
        snap.services = ()  # type: ignore[misc]
    assert [b.name for b in snap.service("shop").backends] == ["blue-1", "blue-2", "green-1"]
    assert snap.backend("blue-1").admin_state == "ready"


async def test_drain_lets_in_flight_finish_and_shows_it(backends, engine_factory):
    slow = await backends("slow")
    other = await backends("other")
    engine = await engine_factory(make_config([slow, other]))
    async with httpx.AsyncClient(base_url=engine.url(), timeout=10) as http:
        # Round robin: the first request goes to "slow".
        first = asyncio.create_task(http.get("/delay/400"))
        await wait_for(lambda: slow.in_flight == 1, what="the request to reach slow")
        engine.controller.drain("slow")
        view = engine.controller.snapshot().backend("slow")
        assert view.admin_state == "drain"
        assert view.in_flight == 1
        assert view.drain_seconds is not None
        assert not view.drained  # one still in flight
        for _ in range(10):
            assert (await http.get("/")).json()["backend"] == "other"  # no new traffic
        assert (await first).status_code == 200  # in-flight finished
        assert engine.controller.snapshot().backend("slow").in_flight == 0
        assert engine.controller.snapshot().backend("slow").drained


async def test_live_changes_under_load_fail_no_request(backends, engine_factory):
    """Drain, enable, weight, algorithm, split, flip, add and remove, all while traffic flows: zero failures."""
    bs = [await backends(f"b{i}", latency=0.001) for i in range(3)]
    extra = await backends("extra")
    config = make_config(
        [
            {"name": b.name, "address": b.address, "group": "blue" if i < 2 else "green"}
            for i, b in enumerate(bs)
        ],
        split={"blue": 90, "green": 10},
    )
    engine = await engine_factory(config)
    c = engine.controller
    failures: list[int] = []
    done = 0

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal done
        for _ in range(120):
            r = await http.get("/")
            if r.status_code != 200:
                failures.append(r.status_code)
            done += 1

    async with httpx.AsyncClient(
        base_url=engine.url(), limits=httpx.Limits(max_connections=6), timeout=10
    ) as http:
        tasks = [asyncio.create_task(worker(http)) for _ in range(6)]
        steps = [
            lambda: c.drain("b0"),
            lambda: c.set_weight("b1", 3),
            lambda: c.set_algorithm("app", "least_connections"),
            lambda: c.enable("b0"),
            lambda: c.set_split("app", {"blue": 50, "green": 50}),
            lambda: c.flip("app"),
            lambda: c.add_backend("app", "extra", extra.address, group="green"),
            lambda: c.set_algorithm("app", "p2c"),
            lambda: c.remove_backend("b2"),
            lambda: c.set_algorithm("app", "ewma"),
            lambda: c.maint("b1"),
        ]
        for i, step in enumerate(steps):
            await wait_for(lambda i=i: done >= 40 * (i + 1), what=f"traffic before step {i}")
            step()
        await asyncio.gather(*tasks)
    assert done == 720
    assert failures == []
    assert extra.requests > 0


def test_a_request_time_reads_the_same_on_every_call_and_follows_a_stepped_wall_clock() -> None:
    """recent_requests turns the access log's monotonic times into wall times with one offset: two reads agree to
    the microsecond (the admin API's list and the engine's), and a stepped wall clock (NTP) is followed."""
    mono = [100.0]
    wall = [1_000_000.0]
    config = parse_config({"services": {"shop": {"backends": [{"name": "a", "address": "127.0.0.1:9001"}]}}})
    c = InProcessController(Balancer(config, clock=lambda: mono[0]), wall_clock=lambda: wall[0])
    c.balancer.access_log.append((100.0005, b"127.0.0.1", b"GET", b"/", 200, None, 0.001, 10))
    first = c.recent_requests(1)[0].time
    mono[0] += 5.0
    wall[0] += 5.0 + 0.0004  # the two clocks drift apart a little between the reads
    assert c.recent_requests(1)[0].time == first == 1_000_000.0005
    wall[0] += 3600.0  # the wall clock is stepped
    assert c.recent_requests(1)[0].time == pytest.approx(first + 3600.0004)
