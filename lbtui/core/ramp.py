"""Canary ramps: the canary group's share of a split rises step by step, and falls back on its own.

Invariants:
- A ramp moves the split of two groups: the stable group (the split's first) and the canary (its second).
  Each step sets the canary's share to `steps[i]` percent and holds it for `hold` seconds.
- A step is judged only once the canary has served `min_requests` requests since the step began; until then
  the ramp waits (it never advances on no evidence).
- Rollback: the canary's 5xx rate over the window is more than `max_5xx_excess` points above the stable
  group's, or its p99 is above `max_p99_ratio` times and `p99_slack` more than the stable group's. The stable
  group's figures come from its window while it has traffic, else from the last window in which it had.
  Rolling back sends everything to the stable group (the canary's share to 0).
- The ramp is pure: `advance` reads a ServiceView and the clock and says what to do; the Controller applies
  the split and records it, so every step is in the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass

from lbtui.config import RampConfig
from lbtui.core.stats import WindowView, merge_views
from lbtui.core.views import RampView, ServiceView

RUNNING = "running"
DONE = "done"
ROLLED_BACK = "rolled back"
ABORTED = "aborted"


@dataclass(frozen=True, slots=True)
class Decision:
    """What the Controller should do now: set `split` (None: leave it), and why."""

    split: dict[str, int] | None
    note: str


def _group_window(view: ServiceView, group: str) -> WindowView:
    return merge_views([b.window for b in view.backends if b.group == group])


def _group_requests(view: ServiceView, group: str) -> int:
    return sum(b.requests for b in view.backends if b.group == group)


class Ramp:
    def __init__(
        self,
        config: RampConfig,
        stable: str,
        canary: str,
        before: dict[str, int] | None,
        first_step: int,
        now: float,
        canary_requests: int,
    ) -> None:
        self.config = config
        self.stable = stable
        self.canary = canary
        self.before = before  # the split before the ramp began (restored by abort)
        self.step = first_step
        self.state = RUNNING
        self.reason = ""
        self.step_started = now
        self.step_requests = canary_requests  # the canary's request count when the step began
        self.waiting_for = config.min_requests
        self.baseline: tuple[float, float] | None = None  # stable (error ratio, p99 ms)

    @property
    def percent(self) -> int:
        if self.state == ROLLED_BACK:
            return 0
        return self.config.steps[self.step]

    def split(self, percent: int) -> dict[str, int]:
        return {self.stable: 100 - percent, self.canary: percent}

    def first_split(self) -> dict[str, int]:
        return self.split(self.config.steps[self.step])

    def finish(self, state: str, reason: str = "") -> None:
        self.state = state
        self.reason = reason
        self.waiting_for = 0

    def verdict(self, view: ServiceView) -> str:
        """Why the canary must roll back now, or "" if it is within the limits."""
        cfg = self.config
        stable = _group_window(view, self.stable)
        if stable.requests >= cfg.min_requests:
            self.baseline = (stable.error_ratio, stable.p99_ms)
        if self.baseline is None:
            return ""  # nothing to compare with yet
        base_errors, base_p99 = self.baseline
        canary = _group_window(view, self.canary)
        if not canary.requests:
            return ""
        excess = 100.0 * (canary.error_ratio - base_errors)
        if excess > cfg.max_5xx_excess:
            return (
                f"{self.canary} 5xx {100.0 * canary.error_ratio:.1f}% vs {self.stable} "
                f"{100.0 * base_errors:.1f}% (limit +{cfg.max_5xx_excess:g} points)"
            )
        p99 = canary.p99_ms
        if p99 > base_p99 * cfg.max_p99_ratio and p99 > base_p99 + 1000.0 * cfg.p99_slack:
            return (
                f"{self.canary} p99 {p99:.1f} ms vs {self.stable} {base_p99:.1f} ms "
                f"(limit {cfg.max_p99_ratio:g}x)"
            )
        return ""

    def advance(self, view: ServiceView, now: float) -> Decision | None:
        """Judge the step in force; None when nothing changes."""
        if self.state != RUNNING:
            return None
        cfg = self.config
        served = _group_requests(view, self.canary) - self.step_requests
        self.waiting_for = max(0, cfg.min_requests - served)
        if self.waiting_for:
            return None
        reason = self.verdict(view)
        if reason:
            self.finish(ROLLED_BACK, reason)
            return Decision(self.split(0), f"rolled back: {reason}")
        if now < self.step_started + cfg.hold:
            return None
        if self.step + 1 >= len(cfg.steps):
            self.finish(DONE)
            return Decision(None, f"done: {self.canary} at {self.percent}%")
        self.step += 1
        self.step_started = now
        self.step_requests = _group_requests(view, self.canary)
        self.waiting_for = cfg.min_requests
        return Decision(self.split(self.percent), f"step {self.step + 1}/{len(cfg.steps)}")

    def view(self, now: float) -> RampView:
        return RampView(
            stable=self.stable,
            canary=self.canary,
            steps=self.config.steps,
            step=self.step,
            percent=self.percent,
            state=self.state,
            hold_left=max(0.0, self.step_started + self.config.hold - now) if self.state == RUNNING else 0.0,
            waiting_for=self.waiting_for,
            reason=self.reason,
        )
