"""Splits on HAProxy: a service's split is its groups' shares of the servers' weights; setting one sets weights.

Invariants:
- A group's share is the sum of the weights (HAProxy's user weight, 0-256) of its servers that are in the ready
  admin state (a drained or maintained server takes no new traffic), over the sum for every group, in whole
  percent that add up to 100 (largest remainders); no weight at all: every share 0.
- `plan` gives each server the weight that makes the shares the split's: inside a group the servers keep their
  relative weights (those they have, else the last above 0 this controller saw, else equal), scaled so the
  largest weight of the backend is 256 (HAProxy's maximum: the finest rounding). A server of a group with a
  share above 0 gets at least 1. On a static algorithm (HAProxy accepts only 0 and the initial weight, "100%"),
  a server gets its initial weight or 0, and a split those cannot make is refused.
- `ordered` sends every raise before any lowering, so the backend is never all-zero in between.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from .runtime import MAX_WEIGHT

__all__ = ["STATIC_ALGORITHMS", "Member", "SplitRefused", "ordered", "plan", "shares"]

# `show stat`'s algo for the balance algorithms whose weights HAProxy changes only to 0 or 100% at runtime. The
# hash ones (source, uri, url_param, hdr, rdp-cookie) are static too with map-based hashing (the default), and
# dynamic with `hash-type consistent`, which `show stat` does not say: HAProxy's own refusal tells those apart.
STATIC_ALGORITHMS: Final = frozenset({"static-rr", "first"})


class SplitRefused(ValueError):
    """A split that cannot be set on this backend; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class Member:
    """One server as a split sees it."""

    server: str
    group: str
    weight: int  # the user weight now
    ready: bool  # admin state ready (a drained or maintained one carries no share)
    initial: int  # the config's weight (HAProxy's "100%" on a static algorithm)
    remembered: int = 0  # its last weight above 0, as far as this controller saw


def shares(
    members: Sequence[Member], groups: Sequence[str], weights: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Each group's share of the ready servers' weights (`weights` by server, else each member's own), in whole
    percent adding up to 100, in `groups`' order."""
    total_of = {group: 0 for group in groups}
    for m in members:
        if m.ready and m.group in total_of:
            total_of[m.group] += weights[m.server] if weights is not None else m.weight
    return _percents(total_of)


def _percents(amounts: Mapping[str, int | float]) -> dict[str, int]:
    total = sum(amounts.values())
    if total <= 0:
        return dict.fromkeys(amounts, 0)
    exact = {group: 100.0 * amount / total for group, amount in amounts.items()}
    whole = {group: int(value) for group, value in exact.items()}
    left = 100 - sum(whole.values())
    for group in sorted(exact, key=lambda g: whole[g] - exact[g])[:left]:
        whole[group] += 1
    return whole


def plan(members: Sequence[Member], split: Mapping[str, int], backend: str, algorithm: str) -> dict[str, int]:
    """The weight of each server (by name) that makes the shares `split` (whole percent per group, adding up to
    100, every group named: the caller checked). Raises SplitRefused when this backend cannot have it."""
    by_group: dict[str, list[Member]] = {group: [] for group in split}
    for m in members:
        by_group.setdefault(m.group, []).append(m)
    for group, percent in split.items():
        if percent > 0 and not any(m.ready for m in by_group[group]):
            raise SplitRefused(
                f"group {group!r} of backend {backend} has no ready server to take its {percent}%"
                " (enable one first)"
            )
    if algorithm in STATIC_ALGORITHMS:
        return _static_plan(members, split, backend, algorithm)
    relative: dict[str, float] = {}
    for group, servers in by_group.items():
        own = [m.weight for m in servers]
        if sum(own) <= 0:
            own = [m.remembered for m in servers]
        if sum(own) <= 0:
            own = [1 for _ in servers]
        ready_sum = sum(w for m, w in zip(servers, own, strict=True) if m.ready)
        percent = split.get(group, 0)
        for m, w in zip(servers, own, strict=True):
            # the server's part of the whole backend, 0-1: its group's share spread by relative weight
            relative[m.server] = percent / 100.0 * w / ready_sum if percent > 0 and ready_sum > 0 else 0.0
    top = max(relative.values(), default=0.0)
    scale = MAX_WEIGHT / top if top > 0 else 0.0
    weights: dict[str, int] = {}
    for m in members:
        part = relative[m.server]
        weights[m.server] = min(MAX_WEIGHT, max(1, round(part * scale))) if part > 0 else 0
    return weights


def _static_plan(
    members: Sequence[Member], split: Mapping[str, int], backend: str, algorithm: str
) -> dict[str, int]:
    weights = {m.server: (m.initial if split.get(m.group, 0) > 0 else 0) for m in members}
    got = shares(members, list(split), weights)
    if got != dict(split):
        wanted = " ".join(f"{g}={p}" for g, p in split.items())
        raise SplitRefused(
            f"backend {backend} balances with {algorithm}, whose weights HAProxy sets only to 0 or 100%: "
            f"{wanted} cannot be made (only all of it to one group, e.g. a blue/green flip); for a finer split "
            "change `balance` in haproxy.cfg and reload HAProxy"
        )
    return weights


def ordered(now: Mapping[str, int], target: Mapping[str, int]) -> list[tuple[str, int]]:
    """The weight changes from `now` to `target`: every raise first, then every lowering (never all-zero in
    between: the raises only add to a total that was above 0, or that the target makes above 0)."""
    raises = [(server, w) for server, w in target.items() if w > now.get(server, 0)]
    lowers = [(server, w) for server, w in target.items() if w < now.get(server, 0)]
    return raises + lowers
