"""Passive health: outlier ejection (Envoy's), slow start (HAProxy's slowstart) and panic mode, on a clock."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from lbtui.config import parse_config
from lbtui.core.balancer import Balancer
from lbtui.core.control import InProcessController
from lbtui.core.health import ejection_time, may_eject, slow_share
from lbtui.core.model import Health
from lbtui.core.views import CheckView


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(n: int = 3, **service: Any) -> tuple[InProcessController, Clock]:
    clock = Clock()
    config = parse_config(
        {
            "services": {
                "shop": {
                    "backends": [{"name": f"b{i}", "address": f"127.0.0.1:{9001 + i}"} for i in range(n)],
                    **service,
                }
            }
        }
    )
    return InProcessController(Balancer(config, clock=clock)), clock


OUTLIER = {"consecutive_5xx": 3, "consecutive_gateway_errors": 2, "consecutive_connect_failures": 2}


def fail(c: InProcessController, name: str, status: int, times: int = 1) -> None:
    b = c.balancer.backends[name]
    for _ in range(times):
        b.observe(status, 0.001, c.balancer.clock(), 0)


def picks(c: InProcessController, n: int, service: str = "shop") -> Counter:
    s = c.balancer.services[service]
    return Counter(b.name if (b := s.pick(None)) else None for _ in range(n))


# -- outlier ejection ---------------------------------------------------------------------------------


def test_consecutive_5xx_eject_and_a_success_resets_the_run() -> None:
    c, _ = make(outlier=OUTLIER)
    fail(c, "b0", 500, 2)
    fail(c, "b0", 200)  # the run is broken
    fail(c, "b0", 500, 2)
    assert c.snapshot().backend("b0").health == "up"
    fail(c, "b0", 500)  # third in a row
    view = c.snapshot().backend("b0")
    assert view.health == "ejected"
    assert view.health_label == "ejected 30s"
    assert "b0" not in picks(c, 30)
    event = c.events(1)[0]
    assert (event.actor, event.action, event.target, event.before) == ("outlier", "health", "b0", "up")
    assert event.after == "ejected for 30s (3 consecutive 5xx)"


def test_gateway_errors_count_502_to_504_and_failures_without_a_response() -> None:
    c, _ = make(outlier=OUTLIER | {"consecutive_5xx": 10})
    fail(c, "b0", 502)
    fail(c, "b0", 500)  # a 5xx but not a gateway error: the gateway run starts over
    fail(c, "b0", 504)
    assert c.snapshot().backend("b0").health == "up"
    fail(c, "b0", 0)  # no response at all (reset, timeout)
    assert c.snapshot().backend("b0").health == "ejected"
    assert "2 consecutive gateway errors" in c.events(1)[0].after


def test_4xx_are_not_failures() -> None:
    c, _ = make(outlier=OUTLIER)
    for _ in range(10):
        fail(c, "b0", 404)
    assert c.snapshot().backend("b0").health == "up"


def test_consecutive_connect_failures_eject() -> None:
    c, _ = make(outlier=OUTLIER | {"consecutive_5xx": 10, "consecutive_gateway_errors": 10})
    b = c.balancer.backends["b1"]
    b.connect_failed()
    assert b.health is Health.UP
    b.connect_failed()
    assert b.health is Health.EJECTED
    assert b.connect_failures == 2
    assert "2 consecutive connect failures" in c.events(1)[0].after


def test_ejection_ends_on_its_own_and_grows_with_each_ejection() -> None:
    c, clock = make(outlier=OUTLIER | {"base_ejection": "10s", "max_ejection": "25s"})
    durations = []
    for _ in range(4):
        fail(c, "b0", 500, 3)
        b = c.balancer.backends["b0"]
        assert b.health is Health.EJECTED
        durations.append(b.ejected_until - clock.now)
        clock.now += durations[-1] - 0.5
        c.balancer.tick()
        assert b.health is Health.EJECTED  # not yet
        clock.now += 0.5
        c.balancer.tick()
        assert b.health is Health.UP
    assert durations == [10.0, 20.0, 25.0, 25.0]  # base x times, capped at max_ejection
    assert c.events(1)[0].after == "up (ejection over)"
    assert "b0" in picks(c, 30)


def test_ejection_count_decays_while_the_backend_behaves() -> None:
    c, clock = make(outlier=OUTLIER | {"base_ejection": "10s"})
    b = c.balancer.backends["b0"]
    fail(c, "b0", 500, 3)
    clock.now += 10
    c.balancer.tick()
    fail(c, "b0", 500, 3)  # second ejection: 20 s
    assert b.ejected_until - clock.now == 20.0
    clock.now += 20
    c.balancer.tick()
    assert b.ejections == 2
    for _ in range(2):  # two quiet base_ejection periods: back to the first step
        clock.now += 10
        c.balancer.tick()
    assert b.ejections == 0
    fail(c, "b0", 500, 3)
    assert b.ejected_until - clock.now == 10.0


def test_never_more_than_max_ejected_percent() -> None:
    c, _ = make(n=2, outlier=OUTLIER | {"max_ejected_percent": 50})
    fail(c, "b0", 500, 3)
    fail(c, "b1", 500, 3)
    assert c.snapshot().backend("b0").health == "ejected"
    assert c.snapshot().backend("b1").health == "up"  # would be 100%: it stays, its run starts over
    assert c.balancer.backends["b1"].fails_5xx == 0
    only, _ = make(n=1, outlier=OUTLIER | {"max_ejected_percent": 99})
    fail(only, "b0", 500, 10)
    assert only.snapshot().backend("b0").health == "up"  # one of one is 100%


def test_an_active_check_leaves_an_ejection_alone() -> None:
    c, _ = make(outlier=OUTLIER, health={"interval": "1s", "rise": 1, "fall": 1})
    fail(c, "b0", 500, 3)
    c.health_check("b0", CheckView(1.0, True, "200 in 1 ms", 1.0))
    assert c.snapshot().backend("b0").health == "ejected"


def test_without_outlier_config_nothing_is_ejected() -> None:
    c, _ = make()
    fail(c, "b0", 500, 100)
    c.balancer.backends["b0"].connect_failed()
    assert c.snapshot().backend("b0").health == "up"


def test_a_backend_added_at_runtime_gets_outlier_detection() -> None:
    c, _ = make(outlier=OUTLIER)
    c.add_backend("shop", "late", "127.0.0.1:9100")
    fail(c, "late", 503, 2)
    assert c.snapshot().backend("late").health == "ejected"


def test_outlier_helpers() -> None:
    assert ejection_time(30, 300, 1) == 30
    assert ejection_time(30, 300, 20) == 300
    assert may_eject(10, 4, 50)
    assert not may_eject(10, 5, 50)
    assert not may_eject(1, 0, 50)
    assert may_eject(1, 0, 100)


# -- slow start ---------------------------------------------------------------------------------------


def test_slow_start_share_grows_linearly() -> None:
    assert slow_share(0, 30) == pytest.approx(0.02)
    assert slow_share(15, 30) == pytest.approx(0.5)
    assert slow_share(30, 30) == 1.0
    assert slow_share(5, 0) == 1.0


def recover(c: InProcessController, name: str) -> None:
    for ok in (False, False, True, True):
        c.health_check(name, CheckView(1.0, ok, "", 1.0))


def test_a_recovered_backend_ramps_its_share_over_slow_start() -> None:
    c, clock = make(slow_start="20s", health={"interval": "1s", "rise": 2, "fall": 2})
    c.balancer.services["shop"].rng = random.Random(7)
    recover(c, "b0")
    b = c.balancer.backends["b0"]
    assert b.health is Health.UP
    assert c.snapshot().backend("b0").health_label == "up slow 2%"
    early = picks(c, 3000)["b0"]
    clock.now += 10
    c.balancer.tick()
    assert c.snapshot().backend("b0").health_label == "up slow 50%"
    middle = picks(c, 3000)["b0"]
    clock.now += 10
    c.balancer.tick()
    assert b.slow_since == 0.0
    assert c.snapshot().backend("b0").slow_share is None
    full = picks(c, 3000)["b0"]
    # Round robin over three: a third each when whole; 2% and then about 50% of that while starting (the
    # re-pick moves round robin's turn on, so the share is near, not exactly, the fraction).
    assert early < 60
    assert 350 < middle < 700
    assert full == 1000


@pytest.mark.parametrize("algorithm", ["least_connections", "weighted_round_robin", "random", "p2c", "ewma"])
def test_slow_start_thins_every_balancing_algorithm(algorithm: str) -> None:
    c, _ = make(algorithm=algorithm, slow_start="60s")
    c.balancer.services["shop"].rng = random.Random(3)
    c.maint("b0")
    c.enable("b0")  # back from maintenance: slow start, as in HAProxy
    counts = picks(c, 3000)
    assert counts["b0"] < 150, counts  # ~2% of its share
    assert counts["b1"] + counts["b2"] == 3000 - counts["b0"]


def test_a_backend_added_at_runtime_slow_starts() -> None:
    c, _ = make(slow_start="30s")
    c.add_backend("shop", "new", "127.0.0.1:9200")
    assert c.snapshot().backend("new").slow_share == pytest.approx(0.02)


def test_hashing_is_not_thinned_by_slow_start() -> None:
    c, _ = make(algorithm="ip_hash", slow_start="30s")
    c.maint("b0")
    c.enable("b0")
    s = c.balancer.services["shop"]
    owners = {key: s.pick(key) for key in (b"10.0.0.%d" % i for i in range(60))}
    again = {key: s.pick(key) for key in owners}
    assert owners == again  # keys do not move while b0 slow-starts
    assert any(b.name == "b0" for b in owners.values() if b is not None)


# -- panic mode ---------------------------------------------------------------------------------------


def test_panic_mode_balances_over_every_ready_backend_when_too_few_are_healthy() -> None:
    c, _ = make(n=4, panic_threshold=50, health={"interval": "1s", "rise": 1, "fall": 1})
    for name in ("b0", "b1"):
        c.health_check(name, CheckView(1.0, False, "refused", 1.0))
    assert set(picks(c, 40)) == {"b2", "b3"}  # 50% healthy: not under the threshold
    c.health_check("b2", CheckView(1.0, False, "refused", 1.0))
    c.maint("b3")  # the operator's word holds even in panic
    assert set(picks(c, 40)) == {"b0", "b1", "b2"}  # 0 of 3 ready are healthy: all ready ones serve
    c.balancer.tick()
    assert c.snapshot().service("shop").panic
    event = next(e for e in c.events() if e.action == "panic")  # (audited with b2's failure, its cause)
    assert (event.action, event.before, event.after) == ("panic", "off", "on")
    for name in ("b0", "b1", "b2"):
        c.health_check(name, CheckView(1.0, True, "200", 1.0))
    c.balancer.tick()
    assert not c.snapshot().service("shop").panic
    assert next(e for e in c.events() if e.action == "panic").after == "off"


def test_panic_is_audited_right_after_the_change_that_caused_it() -> None:
    """Service.changed works panic out at once (the dashboard's services line shows it at its next refresh), so
    the event is recorded at once too, after its cause: it came only at the controller's next tick, and the
    dashboard could show PANIC with no panic in its events view (test_views' flaky panic test)."""
    c, _ = make(n=2, panic_threshold=100, outlier={"consecutive_5xx": 1, "max_ejected_percent": 50})
    fail(c, "b0", 500)  # ejected: 1 of 2 healthy, under 100%
    assert c.snapshot().service("shop").panic
    panic, cause = c.events(2)  # (newest first)
    assert (cause.action, cause.target, cause.actor) == ("health", "b0", "outlier")
    assert (panic.action, panic.before, panic.after) == ("panic", "off", "on")
    c.balancer.tick()
    assert c.events(1)[0] == panic  # not audited twice


def test_without_panic_threshold_down_backends_get_nothing() -> None:
    c, _ = make(n=2, health={"interval": "1s", "rise": 1, "fall": 1})
    for name in ("b0", "b1"):
        c.health_check(name, CheckView(1.0, False, "refused", 1.0))
    assert picks(c, 10) == Counter({None: 10})
    assert not c.snapshot().service("shop").panic


# -- backup group -------------------------------------------------------------------------------------


def backup_controller(**service: Any) -> InProcessController:
    config = parse_config(
        {
            "services": {
                "shop": {
                    "backends": [
                        {"name": "p1", "address": "127.0.0.1:9001", "group": "main"},
                        {"name": "p2", "address": "127.0.0.1:9002", "group": "main"},
                        {"name": "dr1", "address": "127.0.0.1:9003", "group": "dr"},
                    ],
                    "backup_group": "dr",
                    "health": {"interval": "1s", "rise": 1, "fall": 1},
                    **service,
                }
            }
        }
    )
    return InProcessController(Balancer(config))


def test_the_backup_group_serves_only_when_no_other_group_can() -> None:
    c = backup_controller()
    assert set(picks(c, 20)) == {"p1", "p2"}
    c.health_check("p1", CheckView(1.0, False, "refused", 1.0))
    assert set(picks(c, 20)) == {"p2"}  # one primary left: still no backup traffic
    c.maint("p2")
    assert set(picks(c, 20)) == {"dr1"}
    c.enable("p2")
    assert set(picks(c, 20)) == {"p2"}
    c.drain("p2")
    assert set(picks(c, 20)) == {"dr1"}


def test_the_backup_group_takes_over_from_ejected_backends() -> None:
    c = backup_controller(outlier=OUTLIER | {"max_ejected_percent": 100})
    fail(c, "p1", 503, 2)
    fail(c, "p2", 503, 2)
    assert set(picks(c, 20)) == {"dr1"}


def test_the_backup_group_serves_a_split_when_no_split_group_can() -> None:
    config = parse_config(
        {
            "services": {
                "shop": {
                    "backends": [
                        {"name": "b1", "address": "127.0.0.1:9001", "group": "blue"},
                        {"name": "g1", "address": "127.0.0.1:9002", "group": "green"},
                        {"name": "dr1", "address": "127.0.0.1:9003", "group": "dr"},
                    ],
                    "split": {"blue": 50, "green": 50},
                    "backup_group": "dr",
                }
            }
        }
    )
    c = InProcessController(Balancer(config))
    assert set(picks(c, 20)) == {"b1", "g1"}
    c.maint("b1")
    assert set(picks(c, 20)) == {"g1"}
    c.maint("g1")
    assert set(picks(c, 20)) == {"dr1"}


def test_a_healthy_backup_group_comes_before_panic() -> None:
    c = backup_controller(panic_threshold=100)
    c.health_check("p1", CheckView(1.0, False, "refused", 1.0))
    # Under 100% healthy, but a healthy backup group means no panic (as a healthy lower priority in Envoy).
    assert set(picks(c, 20)) == {"p2"}
    c.health_check("p2", CheckView(1.0, False, "refused", 1.0))
    assert set(picks(c, 20)) == {"dr1"}  # no primary healthy, the backup is: it serves, no panic
    assert not c.balancer.services["shop"].panic
    c.health_check("dr1", CheckView(1.0, False, "refused", 1.0))
    assert set(picks(c, 20)) == {"p1", "p2"}  # nothing healthy anywhere: panic over the primaries
    assert c.balancer.services["shop"].panic
