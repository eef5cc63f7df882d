"""Backend selection strategies (architecture section 3), behind one small interface.

Invariants:

- ``pick`` returns one of the candidates it was given, or None exactly when it was given none.
- The algorithms are sans-IO: no sockets, no sleeps, no global state. Randomness comes from the ``rng`` the
  caller passes (or the instance's own ``random.Random``), time from an injectable clock, so every
  behaviour is reproducible in a test.
- ``pick`` runs once per request. Derived structures (cumulative weights, the hash ring, the smooth-WRR
  current weights) are cached and rebuilt only when the candidate set changes, which is detected by the
  caller's ``version`` plus the length and first element of the sequence: three comparisons per call.
- Caches hold indices into the candidate sequence, never candidates. A caller that forgets to bump
  ``version`` gets a stale choice among the candidates it passed, never a foreign backend or an IndexError.
- Candidates have ``weight >= 1`` (callers drop weight 0). A weight of 0 or less that slips through is
  treated as 0 by the weighted algorithms; if every weight is 0 they all count as 1.
- Instances are not thread-safe; the proxy calls them from its event loop thread only.
"""

from __future__ import annotations

import itertools
import math
import random
import struct
import time
from abc import ABC, abstractmethod
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from hashlib import blake2b
from typing import Any, Final, Generic, Protocol, TypeVar

from lbtui.config import ALGORITHMS

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "Candidate",
    "ConsistentHash",
    "LeastConnections",
    "PeakEwma",
    "PowerOfTwoChoices",
    "RandomWeighted",
    "RoundRobin",
    "SmoothWeightedRoundRobin",
    "ewma_decay",
    "ewma_update",
    "make_algorithm",
]

# Finagle and Linkerd decay the Peak-EWMA over 10 seconds.
DEFAULT_EWMA_TAU: Final = 10.0

# A backend with no latency sample yet and requests in flight counts as this expensive per request, so it
# gets one probe at a time until its first sample arrives (Finagle's "Penalty").
_UNMEASURED_PENALTY: Final = 1e9

# 160 points per unit of weight keeps the spread of a 5-backend ring within a few percent (ketama uses 160).
_VNODES_PER_WEIGHT: Final = 160
# Above this many points the ring is scaled down proportionally, so a weight of 1000 costs no more than this.
_MAX_RING_POINTS: Final = 160 * 256
# Rings for recently seen candidate sets, so a backend flapping in and out does not rebuild each time.
_RING_CACHE_SIZE: Final = 8
_POINTS_PER_DIGEST: Final = 8
_UNPACK_POINTS: Final = struct.Struct(">8Q").unpack


class Candidate(Protocol):
    """What an algorithm needs to know about a backend. Read-only, so plain attributes satisfy it."""

    @property
    def name(self) -> str: ...

    @property
    def weight(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    def ewma_cost(self, now: float) -> float:
        """Peak-EWMA latency estimate in seconds, decayed to ``now``; >= 0, 0 meaning no sample yet."""
        ...


C = TypeVar("C", bound=Candidate)


def ewma_update(
    prev: float, prev_time: float, sample: float, now: float, tau: float = DEFAULT_EWMA_TAU
) -> float:
    """Fold a latency ``sample`` into a Peak-EWMA whose value was ``prev`` at ``prev_time``.

    A sample above the current value is taken at once, so a backend that slows down is avoided immediately;
    a lower one is blended in with weight ``1 - exp(-elapsed / tau)``, so recovery is trusted slowly.
    """
    if sample > prev:
        return sample
    elapsed = now - prev_time
    if elapsed <= 0.0:
        return prev
    w = math.exp(-elapsed / tau)
    return prev * w + sample * (1.0 - w)


def ewma_decay(value: float, since: float, now: float, tau: float = DEFAULT_EWMA_TAU) -> float:
    """The Peak-EWMA ``value`` (last updated at ``since``) as seen at ``now``: decayed towards 0.

    Equal to ``ewma_update(value, since, 0.0, now, tau)``. Without it a backend that was slow once and then
    got no traffic would keep its high cost forever and never be tried again.
    """
    elapsed = now - since
    if elapsed <= 0.0:
        return value
    return value * math.exp(-elapsed / tau)


class Algorithm(ABC, Generic[C]):
    """A selection strategy. One stateful instance per service group; see ``make_algorithm``."""

    name: str

    @abstractmethod
    def pick(
        self, candidates: Sequence[C], version: int, key: bytes | None, rng: random.Random | None = None
    ) -> C | None:
        """Choose one of ``candidates`` (eligible backends of one group, in config order).

        ``version`` changes whenever the set of candidates or their weights change. ``key`` is the hash key
        for ``ip_hash``/``consistent_hash`` (None when absent: they fall back to a weighted random pick);
        the other algorithms ignore it. ``rng`` overrides the instance's own generator.
        """


class _CachedAlgorithm(Algorithm[C]):
    """Remembers which candidate set its derived structures were built for."""

    def __init__(self) -> None:
        self._version: int | None = None
        self._size = -1
        self._first: object = None

    def _stale(self, candidates: Sequence[C], version: int) -> bool:
        """True (and remember the new set) if non-empty ``candidates`` is not the set last built for."""
        first = candidates[0]
        if version == self._version and len(candidates) == self._size and first is self._first:
            return False
        self._version = version
        self._size = len(candidates)
        self._first = first
        return True


class RoundRobin(Algorithm[C]):
    """In turn, ignoring weights. A counter modulo the current length stays fair when the list changes."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def pick(
        self, candidates: Sequence[C], version: int, key: bytes | None, rng: random.Random | None = None
    ) -> C | None:
        n = len(candidates)
        if n == 0:
            return None
        i = self._next % n
        self._next = i + 1
        return candidates[i]


class SmoothWeightedRoundRobin(_CachedAlgorithm[C]):
    """nginx's smooth weighted round robin: weights 5:1:1 give a a b a c a a.

    Each pick adds every weight to its candidate's current weight, takes the largest (the first on a tie)
    and subtracts the total from it. Current weights are remembered by name, so a change of the set (a
    backend leaving, a weight change) continues from where everyone was instead of restarting the cycle.
    """

    name = "weighted_round_robin"

    def __init__(self) -> None:
        super().__init__()
        self._current: list[int] = []
        self._names: list[str] = []
        self._current_by_name: dict[str, int] = {}

    def _rebuild(self, candidates: Sequence[C]) -> None:
        saved = self._current_by_name
        saved.update(zip(self._names, self._current, strict=True))
        names = [c.name for c in candidates]
        if len(saved) > 4 * len(names) + 64:
            # Forget backends that are long gone; those still configured rejoin at their old position.
            self._current_by_name = saved = {name: saved[name] for name in names if name in saved}
        self._names = names
        self._current = [saved.get(name, 0) for name in names]

    def pick(
        self, candidates: Sequence[C], version: int, key: bytes | None, rng: random.Random | None = None
    ) -> C | None:
        n = len(candidates)
        if n == 0:
            return None
        if n == 1:
            return candidates[0]
        if self._stale(candidates, version):
            self._rebuild(candidates)
        current = self._current
        total = 0
        best = -1
        best_current = 0
        for i in range(n):
            w = candidates[i].weight
            if w <= 0:
                continue
            total += w
            cur = current[i] + w
            current[i] = cur
            if best < 0 or cur > best_current:
                best = i
                best_current = cur
        if best < 0:
            return candidates[0]
        current[best] = best_current - total
        return candidates[best]


class LeastConnections(Algorithm[C]):
    """Fewest in-flight requests relative to weight; the scan starts one further each call, so ties rotate."""

    name = "least_connections"

    def __init__(self) -> None:
        self._start = 0

    def pick(
        self, candidates: Sequence[C], version: int, key: bytes | None, rng: random.Random | None = None
    ) -> C | None:
        n = len(candidates)
        if n == 0:
            return None
        start = self._start % n
        self._start = start + 1
        best = candidates[start]
        best_in_flight = best.in_flight
        best_weight = best.weight
        i = start
        for _ in range(n - 1):
            i += 1
            if i == n:
                i = 0
            c = candidates[i]
            in_flight = c.in_flight
            weight = c.weight
            # in_flight / weight < best_in_flight / best_weight, without floats.
            if in_flight * best_weight < best_in_flight * weight:
                best = c
                best_in_flight = in_flight
                best_weight = weight
        return best


class _WeightedSampler(_CachedAlgorithm[C]):
    """Weighted random choice of an index: cumulative weights cached per candidate set, then bisect."""

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__()
        self._rng = rng if rng is not None else random.Random()
        self._weights: list[int] = []
        self._cumulative: list[int] = []
        self._total = 0

    def _rebuild(self, candidates: Sequence[C]) -> None:
        weights = [max(c.weight, 0) for c in candidates]
        if not any(weights):
            weights = [1] * len(weights)
        self._weights = weights
        self._cumulative = list(itertools.accumulate(weights))
        self._total = self._cumulative[-1]

    def _sample(self, rng: random.Random) -> int:
        i = bisect_right(self._cumulative, rng.random() * self._total)
        # rng.random() * total can round up to total itself when total is huge.
        return i if i < self._size else self._size - 1

    def _sample_two(self, rng: random.Random) -> tuple[int, int]:
        """Two distinct indices, each weighted; needs at least two candidates with weight."""
        cumulative = self._cumulative
        last = self._size - 1
        first = bisect_right(cumulative, rng.random() * self._total)
        if first > last:
            first = last
        w = self._weights[first]
        # Draw from the total without the first pick's span, then step over that span.
        r = rng.random() * (self._total - w)
        if r >= cumulative[first] - w:
            r += w
        second = bisect_right(cumulative, r)
        if second > last:
            second = last
        if second == first:  # only reachable through float rounding at the edges
            second = first - 1 if first else 1
        return first, second


class RandomWeighted(_WeightedSampler[C]):
    """Uniform by weight."""

    name = "random"

    def pick(
        self, candidates: Sequence[C], version: int, key: bytes | None, rng: random.Random | None = None
    ) -> C | None:
        n = len(candidates)
        if n == 0:
            return None
        if n == 1:
            return candidates[0]
        if self._stale(candidates, version):
            self._rebuild(candidates)
        return candidates[self._sample(rng if rng is not None else self._rng)]


class PowerOfTwoChoices(_WeightedSampler[C]):
    """Two distinct weighted random picks; the one with fewer in-flight requests relative to weight wins."""

    name = "p2c"

    def pick(
        self, candidates: Sequence[C], version: int, key: bytes | None, rng: random.Random | None = None
    ) -> C | None:
        n = len(candidates)
        if n == 0:
            return None
        if n == 1:
            return candidates[0]
        if self._stale(candidates, version):
            self._rebuild(candidates)
        i, j = self._sample_two(rng if rng is not None else self._rng)
        a = candidates[i]
        b = candidates[j]
        if b.in_flight * a.weight < a.in_flight * b.weight:
            return b
        return a


class PeakEwma(_WeightedSampler[C]):
    """Peak-EWMA (Finagle, Linkerd): best of two weighted random picks by ewma x (in_flight + 1) / weight.

    A backend with no latency sample yet (cost 0) is free while idle and costs ``_UNMEASURED_PENALTY`` per
    request in flight otherwise, so a new backend is probed rather than flooded.
    """

    name = "ewma"

    def __init__(
        self, rng: random.Random | None = None, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        super().__init__(rng)
        self._clock = clock

    def pick(
        self, candidates: Sequence[C], version: int, key: bytes | None, rng: random.Random | None = None
    ) -> C | None:
        n = len(candidates)
        if n == 0:
            return None
        if n == 1:
            return candidates[0]
        if self._stale(candidates, version):
            self._rebuild(candidates)
        i, j = self._sample_two(rng if rng is not None else self._rng)
        a = candidates[i]
        b = candidates[j]
        now = self._clock()
        cost_a = a.ewma_cost(now)
        cost_a = cost_a * (a.in_flight + 1) if cost_a > 0.0 else _UNMEASURED_PENALTY * a.in_flight
        cost_b = b.ewma_cost(now)
        cost_b = cost_b * (b.in_flight + 1) if cost_b > 0.0 else _UNMEASURED_PENALTY * b.in_flight
        # cost_b / weight_b < cost_a / weight_a, without dividing.
        if cost_b * a.weight < cost_a * b.weight:
            return b
        return a


def _hash64(data: bytes) -> int:
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


_Ring = tuple[list[int], list[int]]


class ConsistentHash(_WeightedSampler[C]):
    """A hash ring with virtual nodes; ``ip_hash`` and ``consistent_hash`` are this class under two names.

    Each backend owns ``160 x weight`` points derived from its name alone, so it lands on the same points
    in every rebuild: when a backend leaves, only the keys on its points move (about 1/N of them), and they
    come back when it returns. A key maps to the first point at or after its 64-bit BLAKE2b hash. Without
    a key the pick is weighted random.
    """

    def __init__(
        self,
        name: str = "consistent_hash",
        rng: random.Random | None = None,
        *,
        vnodes_per_weight: int = _VNODES_PER_WEIGHT,
        max_points: int = _MAX_RING_POINTS,
    ) -> None:
        super().__init__(rng)
        self.name = name
        self._vnodes_per_weight = vnodes_per_weight
        self._max_points = max_points
        self._points: list[int] = []
        self._owners: list[int] = []
        self._rings: dict[tuple[tuple[str, int], ...], _Ring] = {}
        self._points_by_name: dict[str, list[int]] = {}

    def _rebuild(self, candidates: Sequence[C]) -> None:
        super()._rebuild(candidates)
        ring_key = tuple(zip((c.name for c in candidates), self._weights, strict=True))
        ring = self._rings.pop(ring_key, None)
        if ring is None:
            ring = self._build_ring(ring_key)
            if len(self._rings) >= _RING_CACHE_SIZE:
                del self._rings[next(iter(self._rings))]
        self._rings[ring_key] = ring  # re-inserted last: the dict is kept in least-recently-used order
        self._points, self._owners = ring

    def _build_ring(self, members: tuple[tuple[str, int], ...]) -> _Ring:
        per_weight = self._vnodes_per_weight
        wanted = per_weight * sum(weight for _, weight in members)
        scale = 1.0 if wanted <= self._max_points else self._max_points / wanted
        if len(self._points_by_name) > 4 * len(members) + 64:
            names = {name for name, _ in members}
            self._points_by_name = {k: v for k, v in self._points_by_name.items() if k in names}
        owner_of: dict[int, int] = {}
        # Visit in name order so that the owner of a (vanishingly rare) shared point does not depend on order.
        for index in sorted(range(len(members)), key=lambda i: members[i][0]):
            name, weight = members[index]
            if weight <= 0:
                continue
            for point in self._name_points(name, max(1, int(per_weight * weight * scale))):
                owner_of.setdefault(point, index)
        points = sorted(owner_of)
        return points, [owner_of[p] for p in points]

    def _name_points(self, name: str, count: int) -> list[int]:
        """The first ``count`` ring points of ``name``; a shorter list is a prefix of a longer one."""
        points = self._points_by_name.get(name)
        if points is None or len(points) < count:
            prefix = name.encode("utf-8", "surrogatepass") + b"#"
            points = []
            for block in range((count + _POINTS_PER_DIGEST - 1) // _POINTS_PER_DIGEST):
                digest = blake2b(prefix + str(block).encode(), digest_size=64).digest()
                points.extend(_UNPACK_POINTS(digest))
            self._points_by_name[name] = points
        return points[:count]

    def pick(
        self, candidates: Sequence[C], version: int, key: bytes | None, rng: random.Random | None = None
    ) -> C | None:
        n = len(candidates)
        if n == 0:
            return None
        if n == 1:
            return candidates[0]
        if self._stale(candidates, version):
            self._rebuild(candidates)
        if key is None:
            return candidates[self._sample(rng if rng is not None else self._rng)]
        points = self._points
        i = bisect_left(points, _hash64(key))
        if i == len(points):
            i = 0
        return candidates[self._owners[i]]


_FACTORIES: Final[dict[str, Callable[[], Algorithm[Any]]]] = {
    "round_robin": RoundRobin,
    "weighted_round_robin": SmoothWeightedRoundRobin,
    "least_connections": LeastConnections,
    "random": RandomWeighted,
    "p2c": PowerOfTwoChoices,
    "ewma": PeakEwma,
    "ip_hash": lambda: ConsistentHash("ip_hash"),
    "consistent_hash": lambda: ConsistentHash("consistent_hash"),
}

if tuple(_FACTORIES) != ALGORITHMS:  # the names are the config's: one algorithm for each, in its order
    raise ImportError(f"lbtui.core.algorithms implements {tuple(_FACTORIES)}, the config names {ALGORITHMS}")


def make_algorithm(name: str) -> Algorithm[Any]:
    """A fresh, stateful instance of the algorithm called ``name`` (one of ``ALGORITHMS``)."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; expected one of {', '.join(ALGORITHMS)}") from None
    return factory()
