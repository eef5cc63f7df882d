"""Canary ramps: steps with holds, judged against the stable group, rolled back on their own, audited."""

from __future__ import annotations

import pytest

from lbtui.config import parse_config
from lbtui.core.balancer import Balancer
from lbtui.core.control import ControlError, InProcessController


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(ramp: dict | None = None, split: dict | None = None) -> tuple[InProcessController, Clock]:
    clock = Clock()
    service: dict = {
        "algorithm": "round_robin",
        "split": split or {"blue": 100, "green": 0},
        "ramp": {"steps": [10, 50, 100], "hold": "30s", "min_requests": 10, **(ramp or {})},
        "backends": [
            {"name": "blue-1", "address": "127.0.0.1:9001", "group": "blue"},
            {"name": "green-1", "address": "127.0.0.1:9002", "group": "green"},
        ],
    }
    config = parse_config({"services": {"shop": service}})
    return InProcessController(Balancer(config, clock=clock)), clock


def serve(c: InProcessController, clock: Clock, name: str, n: int, status: int = 200, ms: float = 5.0):
    backend = c.balancer.backends[name]
    for _ in range(n):
        backend.observe(status, ms / 1000.0, clock.now, 100)


def split(c: InProcessController) -> dict:
    return c.snapshot().service("shop").split and dict(c.snapshot().service("shop").split)


def traffic_and_wait(c, clock, seconds, canary_status=200, canary_ms=5.0, per_second=(20, 5)):
    """`seconds` of traffic, one tick a second: the stable group at 5 ms, the canary as given."""
    for _ in range(int(seconds)):
        clock.now += 1.0
        serve(c, clock, "blue-1", per_second[0])
        serve(c, clock, "green-1", per_second[1], canary_status, canary_ms)
        c.balancer.tick()


def test_a_healthy_canary_climbs_every_step_then_is_done():
    c, clock = make()
    event = c.start_ramp("shop", actor="key")
    assert event.actor == "key"
    assert event.action == "ramp"
    assert "start" in event.note
    assert split(c) == {"blue": 90, "green": 10}
    ramp = c.snapshot().service("shop").ramp
    assert (ramp.state, ramp.percent, ramp.step, ramp.hold_left) == ("running", 10, 0, 30.0)
    traffic_and_wait(c, clock, 29)
    assert split(c) == {"blue": 90, "green": 10}  # held
    assert 0 < c.snapshot().service("shop").ramp.hold_left <= 1.0
    traffic_and_wait(c, clock, 1)
    assert split(c) == {"blue": 50, "green": 50}
    traffic_and_wait(c, clock, 30)
    assert split(c) == {"blue": 0, "green": 100}
    traffic_and_wait(c, clock, 30, per_second=(0, 20))
    ramp = c.snapshot().service("shop").ramp
    assert (ramp.state, ramp.percent) == ("done", 100)
    notes = [e.note for e in c.events() if e.action == "ramp"]
    assert notes[0].startswith("done")
    assert notes[1] == "step 3/3"
    assert notes[2] == "step 2/3"


def test_a_canary_with_errors_rolls_back_to_the_stable_group():
    c, clock = make({"max_5xx_excess": 2.0})
    c.start_ramp("shop")
    traffic_and_wait(c, clock, 5, canary_status=503)
    assert split(c) == {"blue": 100, "green": 0}
    ramp = c.snapshot().service("shop").ramp
    assert ramp.state == "rolled back"
    assert ramp.percent == 0
    assert "green 5xx 100.0% vs blue 0.0%" in ramp.reason
    newest = c.events()[0]
    assert newest.actor == "ramp"
    assert newest.note.startswith("rolled back")
    assert newest.before == {"blue": 90, "green": 10}
    assert newest.after == {"blue": 100, "green": 0}


def test_errors_within_the_allowed_excess_do_not_roll_back():
    c, clock = make({"max_5xx_excess": 50.0})
    c.start_ramp("shop")
    for _ in range(30):
        clock.now += 1.0
        serve(c, clock, "blue-1", 20)
        serve(c, clock, "green-1", 4)
        serve(c, clock, "green-1", 1, status=500)  # 20% errors, within 50 points
        c.balancer.tick()
    assert split(c) == {"blue": 50, "green": 50}


def test_a_slow_canary_rolls_back_on_p99():
    c, clock = make({"max_p99_ratio": 2.0, "p99_slack": "10ms"})
    c.start_ramp("shop")
    traffic_and_wait(c, clock, 3, canary_ms=80.0)
    ramp = c.snapshot().service("shop").ramp
    assert ramp.state == "rolled back"
    assert "p99" in ramp.reason


def test_a_little_slower_within_the_slack_is_fine():
    c, clock = make({"max_p99_ratio": 2.0, "p99_slack": "10ms"})
    c.start_ramp("shop")
    traffic_and_wait(c, clock, 30, canary_ms=12.0)  # over 2x of 5 ms, but within 10 ms of it
    assert c.snapshot().service("shop").ramp.state == "running"
    assert split(c) == {"blue": 50, "green": 50}


def test_no_step_on_no_evidence():
    c, clock = make({"min_requests": 50})
    c.start_ramp("shop")
    traffic_and_wait(c, clock, 40, per_second=(20, 1))  # 40 canary requests: not enough to judge
    ramp = c.snapshot().service("shop").ramp
    assert ramp.state == "running"
    assert ramp.percent == 10
    assert ramp.waiting_for == 10
    traffic_and_wait(c, clock, 10, per_second=(20, 1))
    assert c.snapshot().service("shop").ramp.percent == 50


def test_abort_puts_the_split_back_as_it_was():
    c, clock = make(split={"blue": 80, "green": 20})
    c.start_ramp("shop")
    assert split(c) == {"blue": 50, "green": 50}  # the first step above the canary's 20%
    event = c.abort_ramp("shop", actor="key")
    assert split(c) == {"blue": 80, "green": 20}
    assert event.note.startswith("aborted")
    assert c.snapshot().service("shop").ramp.state == "aborted"
    traffic_and_wait(c, clock, 60)
    assert split(c) == {"blue": 80, "green": 20}  # nothing moves after an abort
    with pytest.raises(ControlError, match="no canary ramp"):
        c.abort_ramp("shop")


def test_a_split_changed_by_hand_ends_the_ramp_where_it_is():
    c, clock = make()
    c.start_ramp("shop")
    c.set_split("shop", {"blue": 70, "green": 30}, actor="key")
    ramp = c.snapshot().service("shop").ramp
    assert ramp.state == "aborted"
    assert "split changed by key" in ramp.reason
    traffic_and_wait(c, clock, 60)
    assert split(c) == {"blue": 70, "green": 30}


def test_refusals_say_why():
    c, _ = make(split={"blue": 0, "green": 100})
    with pytest.raises(ControlError, match="already"):
        c.start_ramp("shop")
    c2, _ = make()
    c2.start_ramp("shop")
    with pytest.raises(ControlError, match="under way"):
        c2.start_ramp("shop")
    config = parse_config({"services": {"one": {"backends": [{"name": "a", "address": "127.0.0.1:9001"}]}}})
    with pytest.raises(ControlError, match="split of exactly two groups"):
        InProcessController(Balancer(config)).start_ramp("one")


@pytest.mark.parametrize(
    ("ramp", "message"),
    [
        ({"steps": [50, 10]}, "steps must rise"),
        ({"steps": []}, "names no step"),
        ({"steps": [0, 10]}, "between 1 and 100"),
        ({"max_p99_ratio": 0.5}, "at least 1"),
        ({"hold": "0s"}, "greater than zero"),
        ({"max_5xx_excess": -1}, "at least 0"),
        ({"holds": "1s"}, "hold"),
    ],
)
def test_bad_ramp_config_names_the_key(ramp, message):
    from lbtui.config import ConfigError

    service = {
        "split": {"blue": 90, "green": 10},
        "ramp": ramp,
        "backends": [
            {"name": "blue-1", "address": "127.0.0.1:9001", "group": "blue"},
            {"name": "green-1", "address": "127.0.0.1:9002", "group": "green"},
        ],
    }
    with pytest.raises(ConfigError) as error:
        parse_config({"services": {"shop": service}}, source="lb.toml")
    text = str(error.value)
    assert "lb.toml" in text
    assert "services.shop.ramp" in text
    assert message in text
