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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, NamedTuple

from lbtui.core.model import CheckView, Health

HISTORY: Final = 20


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
