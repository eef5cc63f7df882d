"""Active health checks: the state machine of one backend's health, with no I/O (the checker is proxy/health.py).

Invariants:
- Health is `up`, `going_down k/fall`, `down` or `going_up k/rise` (HAProxy's meanings). `going_down` still
  takes traffic and `going_up` does not (model.SERVING_HEALTH): a backend has to earn its way in and out.
- A backend starts `up`, as in HAProxy: a restart of the balancer does not hold back traffic for `rise`
  checks, and a backend that is in fact down is found out within `fall` checks (and, for requests, at once
  by the data plane's connect-failure retries). A backend added at runtime starts `up` too.
- Only consecutive results count: a pass while going down is `up` again at once; a failure while going up is
  `down` again at once. `k` runs from 1 to limit - 1; reaching the limit settles the health (so with
  `fall = 1` one failure is `down`, with no `going_down` in between).
- The transitions are the table TRANSITIONS below; `next_state` is a pure function of (state, result, rise,
  fall). `ejected` belongs to passive outlier detection: an active check leaves it as it is.
- A backend keeps the last HISTORY check results (CheckView, newest last), whatever their outcome.
- Nothing here touches a Backend: the Controller applies a new state (InProcessController.health_check),
  bumps the service's version, and records the change in the audit log.

Passive outlier detection (Envoy's), with the service's `outlier` limits:
- The data plane counts each backend's consecutive failures (model.Backend.observe): 5xx (a request that got
  no response counts as one), gateway errors (502, 503, 504 or no response) and connect failures; any other
  response ends every run. A run that reaches its limit ejects the backend: health `ejected`, no traffic.
- An ejection lasts base_ejection x the times it was ejected lately, capped at max_ejection; the count drops
  by one for every base_ejection it then stays in. It ends on its own (health `up`, then slow start).
- Never more than max_ejected_percent of a service's backends are ejected at once (rounded down: with 50%
  one of two may go, the only one of one never does); a run that would pass it starts over.

Slow start (HAProxy's `slowstart`, Envoy's slow_start_config): a backend that comes back (a health check
brings it up, an ejection ends, it leaves maint, or it is added at runtime) takes a share of its traffic
that grows linearly from SLOW_START_FLOOR to all of it over the service's `slow_start`. Service.pick keeps a
pick of it with the chance of its share; hashing algorithms are left alone (a share would move keys). Its
first request after it came back is not thinned: Service.pick probes a backend that joins (model.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, NamedTuple

from lbtui.core.model import Health
from lbtui.core.views import CheckView

HISTORY: Final = 20
SLOW_START_FLOOR: Final = 0.02  # the share a backend starts its slow start with


@dataclass(frozen=True, slots=True)
class HealthState:
    """A backend's health: `health`, and while going up or down, `count` of `of` (rise or fall)."""

    health: Health = Health.UP
    count: int = 0
    of: int = 0

    @property
    def label(self) -> str:
        return f"{self.health.value} {self.count}/{self.of}" if self.of else self.health.value


class Step(NamedTuple):
    """What one result does: `settled` at once, or count in `counting` toward `limit` and then settle."""

    settled: Health
    counting: Health | None = None
    limit: str = ""  # "rise" or "fall" when counting


# (health now, check passed) -> Step
TRANSITIONS: Final[dict[tuple[Health, bool], Step]] = {
    (Health.UP, True): Step(Health.UP),
    (Health.UP, False): Step(Health.DOWN, Health.GOING_DOWN, "fall"),
    (Health.GOING_DOWN, True): Step(Health.UP),
    (Health.GOING_DOWN, False): Step(Health.DOWN, Health.GOING_DOWN, "fall"),
    (Health.DOWN, True): Step(Health.UP, Health.GOING_UP, "rise"),
    (Health.DOWN, False): Step(Health.DOWN),
    (Health.GOING_UP, True): Step(Health.UP, Health.GOING_UP, "rise"),
    (Health.GOING_UP, False): Step(Health.DOWN),
}


def next_state(state: HealthState, ok: bool, rise: int, fall: int) -> HealthState:
    """The health after one check result."""
    step = TRANSITIONS.get((state.health, ok))
    if step is None:
        return state
    if step.counting is None:
        return HealthState(step.settled)
    limit = max(1, rise if step.limit == "rise" else fall)
    count = state.count + 1 if state.health is step.counting else 1
    if count >= limit:
        return HealthState(step.settled)
    return HealthState(step.counting, count, limit)


def remember(history: tuple[CheckView, ...], check: CheckView, limit: int = HISTORY) -> tuple[CheckView, ...]:
    """The history with `check` appended, keeping the newest `limit`."""
    kept = history if len(history) < limit else history[len(history) - limit + 1 :]
    return (*kept, check)


def ejection_time(base: float, longest: float, times: int) -> float:
    """How long the `times`-th ejection in a row lasts: base x times, capped."""
    return min(base * max(1, times), longest)


def may_eject(backends: int, ejected: int, max_percent: int) -> bool:
    """Whether one more of `backends` may be ejected with `ejected` out already."""
    return (ejected + 1) * 100 <= max_percent * backends


def slow_share(elapsed: float, period: float) -> float:
    """The share of its traffic a backend takes `elapsed` seconds into a slow start of `period`."""
    if period <= 0 or elapsed >= period:
        return 1.0
    return max(SLOW_START_FLOOR, elapsed / period)
