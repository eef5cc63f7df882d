"""The health state machine (no sockets): every transition, the history, and the Controller applying it."""

from __future__ import annotations

import pytest

from lbtui.config import parse_config
from lbtui.core.balancer import Balancer
from lbtui.core.control import ControlError, InProcessController
from lbtui.core.health import HISTORY, TRANSITIONS, HealthState, next_state, remember
from lbtui.core.model import Health
from lbtui.core.views import CheckView

UP = HealthState(Health.UP)
DOWN = HealthState(Health.DOWN)


def going_down(k: int, fall: int = 3) -> HealthState:
    return HealthState(Health.GOING_DOWN, k, fall)


def going_up(k: int, rise: int = 2) -> HealthState:
    return HealthState(Health.GOING_UP, k, rise)


# (before, check passed, rise, fall, after)
CASES = [
    (UP, True, 2, 3, UP),
    (UP, False, 2, 3, going_down(1)),
    (UP, False, 2, 1, DOWN),  # fall = 1: no going_down in between
    (going_down(1), True, 2, 3, UP),
    (going_down(2), True, 2, 3, UP),
    (going_down(1), False, 2, 3, going_down(2)),
    (going_down(2), False, 2, 3, DOWN),
    (DOWN, False, 2, 3, DOWN),
    (DOWN, True, 2, 3, going_up(1)),
    (DOWN, True, 1, 3, UP),  # rise = 1: no going_up in between
    (going_up(1), True, 2, 3, UP),
    (going_up(1, rise=3), True, 3, 3, going_up(2, rise=3)),
    (going_up(2, rise=3), True, 3, 3, UP),
    (going_up(1), False, 2, 3, DOWN),
    (going_up(2, rise=3), False, 3, 3, DOWN),
]


@pytest.mark.parametrize(("before", "ok", "rise", "fall", "after"), CASES)
def test_transition(before: HealthState, ok: bool, rise: int, fall: int, after: HealthState) -> None:
    assert next_state(before, ok, rise, fall) == after


def test_the_cases_cover_every_entry_of_the_table() -> None:
    assert {(before.health, ok) for before, ok, *_ in CASES} == set(TRANSITIONS)


@pytest.mark.parametrize("ok", [True, False])
def test_an_active_check_leaves_ejected_alone(ok: bool) -> None:
    ejected = HealthState(Health.EJECTED)
    assert next_state(ejected, ok, 2, 3) == ejected


def test_a_backend_starts_up() -> None:
    assert HealthState() == UP


@pytest.mark.parametrize(
    ("state", "label"),
    [(UP, "up"), (DOWN, "down"), (going_down(1), "going_down 1/3"), (going_up(1), "going_up 1/2")],
)
def test_labels(state: HealthState, label: str) -> None:
    assert state.label == label


def test_a_whole_outage_and_recovery() -> None:
    state = UP
    seen = []
    for ok in [True, False, False, True, False, False, False, False, True, False, True, True, True]:
        state = next_state(state, ok, 2, 3)
        seen.append(state.label)
    assert seen == [
        "up",
        "going_down 1/3",
        "going_down 2/3",
        "up",  # one pass while going down: back up at once
        "going_down 1/3",
        "going_down 2/3",
        "down",
        "down",
        "going_up 1/2",
        "down",  # one failure while going up: back down at once
        "going_up 1/2",
        "up",
        "up",
    ]


def check(i: int, ok: bool = True) -> CheckView:
    return CheckView(time=float(i), ok=ok, detail=f"check {i}", duration_ms=1.0)


def test_history_keeps_the_newest_last() -> None:
    history: tuple[CheckView, ...] = ()
    for i in range(HISTORY + 5):
        history = remember(history, check(i))
    assert len(history) == HISTORY
    assert [c.time for c in history] == [float(i) for i in range(5, HISTORY + 5)]
    assert remember((), check(1), limit=1) == (check(1),)


# -- the Controller applies it ------------------------------------------------------------------------------


def controller(health: dict | None = None) -> InProcessController:
    service: dict = {
        "backends": [
            {"name": "a", "address": "127.0.0.1:9001"},
            {"name": "b", "address": "127.0.0.1:9002"},
        ],
    }
    if health is not None:
        service["health"] = health
    return InProcessController(
        Balancer(parse_config({"services": {"shop": service}})), wall_clock=lambda: 1.0
    )


def test_controller_applies_checks_bumps_the_version_and_audits() -> None:
    c = controller({"rise": 2, "fall": 2})
    service = c.balancer.services["shop"]
    version = service.version
    assert c.health_check("a", check(1)) is None  # up stays up: nothing to record
    assert service.version == version

    event = c.health_check("a", CheckView(2.0, False, "status 503", 1.0))
    assert event is not None
    assert (event.actor, event.action, event.target) == ("health", "health", "a")
    assert (event.before, event.after) == ("up", "going_down 1/2 (status 503)")
    assert service.version > version
    view = c.snapshot().backend("a")
    assert (view.health, view.health_count, view.health_of, view.health_label) == (
        "going_down",
        1,
        2,
        "going_down 1/2",
    )
    assert view.checked
    assert [x.detail for x in view.checks] == ["check 1", "status 503"]
    assert {b.name for b in (service.pick(None), service.pick(None))} == {"a", "b"}  # going_down still serves

    event = c.health_check("a", CheckView(3.0, False, "connect refused", 1.0))
    assert event is not None
    assert (event.before, event.after) == ("going_down 1/2", "down (connect refused)")
    assert {service.pick(None).name for _ in range(6)} == {"b"}
    view = c.snapshot().backend("a")
    assert (view.health, view.health_count, view.health_of, view.health_label) == ("down", 0, 0, "down")

    c.health_check("a", check(4))
    assert c.snapshot().backend("a").health_label == "going_up 1/2"
    assert {service.pick(None).name for _ in range(6)} == {"b"}  # going_up does not serve yet
    event = c.health_check("a", check(5))
    assert event is not None
    assert (event.before, event.after) == ("going_up 1/2", "up (check 5)")
    assert {service.pick(None).name for _ in range(6)} == {"a", "b"}
    assert [(e.before, e.after) for e in reversed(c.events()) if e.actor == "health"] == [
        ("up", "going_down 1/2 (status 503)"),
        ("going_down 1/2", "down (connect refused)"),
        ("down", "going_up 1/2 (check 4)"),
        ("going_up 1/2", "up (check 5)"),
    ]


def test_health_events_cannot_be_undone() -> None:
    c = controller({"fall": 1})
    c.health_check("a", CheckView(1.0, False, "status 500", 1.0))
    with pytest.raises(ControlError, match="nothing to undo"):
        c.undo()


def test_a_service_without_checks_refuses_results_and_says_so_in_the_snapshot() -> None:
    c = controller()
    with pytest.raises(ControlError, match="no health check"):
        c.health_check("a", check(1))
    view = c.snapshot().backend("a")
    assert not view.checked
    assert view.checks == ()
    assert view.health_label == "up"
