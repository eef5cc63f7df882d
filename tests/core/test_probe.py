"""A backend that joins a running service is probed: the next pick of its pool is it (Service.pick), once."""

from __future__ import annotations

from typing import Any

import pytest

from lbtui.config import parse_config
from lbtui.core.algorithms import ALGORITHMS
from lbtui.core.balancer import Balancer
from lbtui.core.control import InProcessController
from lbtui.core.views import CheckView

HASHING = ("ip_hash", "consistent_hash")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    algorithm: str = "weighted_round_robin", more: tuple[dict[str, Any], ...] = (), **service: Any
) -> InProcessController:
    """Service `shop`: `big` (weight 50) and `small` (weight 1), and `more`."""
    if algorithm == "consistent_hash":
        service["hash_key"] = "path"
    config = parse_config(
        {
            "services": {
                "shop": {
                    "algorithm": algorithm,
                    "backends": [
                        {"name": "big", "address": "127.0.0.1:9001", "weight": 50},
                        {"name": "small", "address": "127.0.0.1:9002", "weight": 1},
                        *more,
                    ],
                    **service,
                }
            }
        }
    )
    return InProcessController(Balancer(config, clock=Clock()))


def pick(c: InProcessController, key: bytes | None = None) -> str:
    b = c.balancer.services["shop"].pick(key)
    assert b is not None
    return b.name


def test_backends_there_at_start_are_not_probed() -> None:
    c = make()
    assert [pick(c) for _ in range(51)].count("small") == 1  # smooth WRR as configured, no probe


@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a not in HASHING])
@pytest.mark.parametrize("how", ["maint", "drain", "weight"])
def test_the_next_pick_after_a_return_is_the_returning_backend_once(algorithm: str, how: str) -> None:
    c = make(algorithm)
    for _ in range(20):
        pick(c)
    if how == "weight":
        c.set_weight("small", 0)
        c.set_weight("small", 1)
    else:
        c.set_state("small", how)  # and back at once, with no pick in between: still a return
        c.set_state("small", "ready")
    assert pick(c) == "small"
    rest = [pick(c) for _ in range(100)]
    if algorithm not in ("round_robin", "least_connections"):  # (those ignore weights)
        assert rest.count("small") < 15  # then its share again (1 in 51), not a probe after each pick


def test_an_added_backend_is_probed_even_in_slow_start() -> None:
    c = make("random", slow_start="30s")
    for _ in range(5):
        pick(c)
    c.add_backend("shop", "fresh", "127.0.0.1:9003", weight=1)
    fresh = c.balancer.backends["fresh"]
    assert fresh.slow_share < 0.05
    assert pick(c) == "fresh"
    assert fresh.probe is False


def test_health_up_and_ejection_over_are_returns() -> None:
    c = make("ewma", health={"path": "/h", "interval": "1s", "rise": 1, "fall": 1})
    small = c.balancer.backends["small"]
    small.observe(200, 0.050, 1000.0, 0)  # slow once: a high estimate
    assert small.ewma_cost(1000.0) == pytest.approx(0.050)
    c.health_check("small", CheckView(1.0, False, "status 503", 1.0))
    assert pick(c) == "big"
    c.health_check("small", CheckView(2.0, True, "200 in 0.3 ms", 0.3))
    assert small.ewma_cost(1000.0) == 0.0  # unmeasured again: its old estimate says little now
    assert pick(c) == "small"


def test_a_probe_waits_while_its_group_gets_no_traffic() -> None:
    green = {"name": "g0", "address": "127.0.0.1:9004", "group": "green"}
    c = make("random", (green,), split={"default": 100, "green": 0})
    c.add_backend("shop", "g1", "127.0.0.1:9003", group="green", weight=1)
    assert {pick(c) for _ in range(20)} <= {"big", "small"}  # green has no share: no probe for g1
    assert c.balancer.backends["g1"].probe is True
    c.set_split("shop", {"default": 0, "green": 100})
    assert pick(c) == "g1"


def test_a_backend_that_leaves_before_its_probe_loses_it() -> None:
    c = make("random")
    c.add_backend("shop", "fresh", "127.0.0.1:9003", weight=1)
    c.set_state("fresh", "maint")
    assert c.balancer.backends["fresh"].probe is False
    assert "fresh" not in {pick(c) for _ in range(20)}


@pytest.mark.parametrize("algorithm", HASHING)
def test_hashing_sends_a_joining_backend_its_keys_and_nothing_more(algorithm: str) -> None:
    c = make(algorithm)
    keys = [f"/k{i}".encode() for i in range(200)]
    before = {key: pick(c, key) for key in keys}
    c.add_backend("shop", "fresh", "127.0.0.1:9003", weight=50)
    after = {key: pick(c, key) for key in keys}
    moved = [key for key in keys if after[key] != before[key]]
    assert moved  # the keys that map to it go to it from the next request on
    assert all(after[key] == "fresh" for key in moved)  # and no other key moves (no probe with a foreign key)
