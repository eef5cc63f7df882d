"""Counters, sliding windows and latency histograms.

Invariants:
- Recording a request is O(1) and allocates nothing on the common path (one list per second per backend at most).
- Reading (rates, percentiles) costs O(slots x buckets): it grows with the number of backends, never with traffic.
- Since start: a slot's counts are folded into the window's totals when the slot is reused (once a second at
  most), so the histogram since start costs recording nothing; `totals` adds the slots still held.
- Latency is kept in microseconds in log-linear buckets (32 per power of two): any value is known to within
  1/64 of itself (about 1.6%), so 1 ms and 2 ms are never confused, and neither are 1.00 ms and 1.05 ms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from operator import add
from typing import Final

SUB_BUCKET_BITS: Final = 5
SUB_BUCKETS: Final = 1 << SUB_BUCKET_BITS  # 32
MAX_LATENCY_US: Final = (1 << 27) - 1  # ~134 s: anything slower is counted as this
BUCKETS: Final = (27 - SUB_BUCKET_BITS + 1) * SUB_BUCKETS  # 736 buckets cover 0 .. MAX_LATENCY_US


def bucket_index(us: int) -> int:
    """The bucket of a latency in whole microseconds (values below 32 us are exact)."""
    if us < 0:
        return 0
    if us < SUB_BUCKETS:
        return us if us > 0 else 0
    if us > MAX_LATENCY_US:
        us = MAX_LATENCY_US
    shift = us.bit_length() - SUB_BUCKET_BITS - 1
    return (shift + 1) * SUB_BUCKETS + (us >> shift) - SUB_BUCKETS


def bucket_bounds(index: int) -> tuple[int, int]:
    """[low, high) in microseconds of a bucket."""
    if index < SUB_BUCKETS:
        return index, index + 1
    shift = index // SUB_BUCKETS - 1
    sub = index % SUB_BUCKETS + SUB_BUCKETS
    return sub << shift, (sub + 1) << shift


def bucket_value_us(index: int) -> float:
    low, high = bucket_bounds(index)
    return (low + high - 1) / 2.0 if high - low > 1 else float(low)


def percentiles_us(counts: Sequence[int], total: int, quantiles: Sequence[float]) -> tuple[float, ...]:
    """Values (microseconds) at the given quantiles (0..1) of a bucket count array; 0.0 when empty."""
    if total <= 0:
        return tuple(0.0 for _ in quantiles)
    ranks = [max(1, math.ceil(q * total)) for q in quantiles]
    order = sorted(range(len(ranks)), key=ranks.__getitem__)
    out = [0.0] * len(ranks)
    seen = 0
    k = 0
    for index, count in enumerate(counts):
        if not count:
            continue
        seen += count
        while k < len(order) and ranks[order[k]] <= seen:
            out[order[k]] = bucket_value_us(index)
            k += 1
        if k == len(order):
            break
    return tuple(out)


@dataclass(frozen=True, slots=True)
class WindowView:
    """What a sliding window says at one moment."""

    seconds: float  # how much time the window covers (less than its length right after start)
    requests: int
    errors: int  # 5xx and gateway errors
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    counts: tuple[int, ...]  # merged latency bucket counts, for distributions and for merging services

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


QUANTILES: Final = (0.5, 0.9, 0.99, 0.999)


class SlidingWindow:
    """Per-second slots over the last `slots` seconds: request and error counts and a latency histogram.

    `record` is called with the current time in seconds (a monotonic clock) that the caller already read to
    measure the latency, so the window costs no clock call of its own.
    """

    __slots__ = (
        "_counts",
        "_current",
        "_current_counts",
        "_current_slot",
        "_errors",
        "_second_end",
        "_slot_starts",
        "_total_counts",
        "_total_errors",
        "slots",
        "started",
    )

    def __init__(self, slots: int = 10, now: float = 0.0) -> None:
        self.slots = slots
        self.started = now
        self._slot_starts = [-1] * slots  # the whole second each slot holds, -1 when empty
        self._errors = [0] * slots
        # Latency bucket counts per slot; a slot's request count is their sum (one increment per request).
        self._counts: list[list[int]] = [[0] * BUCKETS for _ in range(slots)]
        self._current = -1  # the second being recorded
        self._second_end = -1.0  # when it ends
        self._current_slot = 0
        self._current_counts = self._counts[0]
        self._total_counts = _ZEROS  # bucket counts of the slots reused so far (replaced, never changed)
        self._total_errors = 0

    def _start_second(self, second: int) -> None:
        slot = second % self.slots
        self._current = second
        self._second_end = second + 1.0
        self._current_slot = slot
        counts = self._current_counts = self._counts[slot]
        if self._slot_starts[slot] >= 0:  # the second it held leaves the window: kept in the totals
            self._total_counts = list(map(add, self._total_counts, counts))
            self._total_errors += self._errors[slot]
        self._slot_starts[slot] = second
        self._errors[slot] = 0
        counts[:] = _ZEROS

    def record(self, latency_s: float, error: bool, now: float) -> None:
        if now >= self._second_end:
            self._start_second(int(now))
        if error:
            self._errors[self._current_slot] += 1
        us = int(latency_s * 1_000_000.0)
        self._current_counts[_INDEX[us] if us < _INDEX_SIZE else bucket_index(us)] += 1

    def record_many(self, latency_s: float, errors: int, count: int, now: float) -> None:
        """`count` requests of one latency at once, `errors` of them failed: as many `record` calls, for a
        log read in bulk (HAProxy's, in whole milliseconds: a chunk of it holds few distinct latencies)."""
        if now >= self._second_end:
            self._start_second(int(now))
        self._errors[self._current_slot] += errors
        us = int(latency_s * 1_000_000.0)
        self._current_counts[_INDEX[us] if us < _INDEX_SIZE else bucket_index(us)] += count

    def view(self, now: float) -> WindowView:
        second = int(now)
        oldest = second - self.slots + 1
        requests = errors = 0
        merged = [0] * BUCKETS
        for slot in range(self.slots):
            start = self._slot_starts[slot]
            if start < oldest or start > second:
                continue
            counts = self._counts[slot]
            in_slot = sum(counts)
            if in_slot:
                requests += in_slot
                errors += self._errors[slot]
                for i, c in enumerate(counts):
                    if c:
                        merged[i] += c
        # The window covers the full seconds before this one plus the part of this one that has passed.
        covered = min(float(self.slots - 1) + (now - second), max(now - self.started, 1e-9))
        covered = max(covered, 1e-9)
        return window_view(covered, requests, errors, merged)

    def totals(self) -> tuple[tuple[int, ...], int]:
        """Latency bucket counts (BUCKETS long) and errors since start: every request ever recorded."""
        counts = self._total_counts
        errors = self._total_errors
        for slot in range(self.slots):
            if self._slot_starts[slot] >= 0:
                counts = list(map(add, counts, self._counts[slot]))
                errors += self._errors[slot]
        return tuple(counts), errors


_ZEROS: Final = [0] * BUCKETS

# bucket_index for every latency below ~65 ms, precomputed: recording is then one list lookup.
_INDEX_SIZE: Final = 1 << 16
_BUCKET_NUMBERS: Final = list(
    range(BUCKETS)
)  # shared int objects: the table holds 64 Ki references, not 64 Ki ints
_INDEX: Final = [_BUCKET_NUMBERS[bucket_index(us)] for us in range(_INDEX_SIZE)]


def window_view(seconds: float, requests: int, errors: int, counts: Sequence[int]) -> WindowView:
    p50, p90, p99, p999 = percentiles_us(counts, sum(counts), QUANTILES)
    return WindowView(
        seconds=seconds,
        requests=requests,
        errors=errors,
        rps=requests / seconds if seconds > 0 else 0.0,
        p50_ms=p50 / 1000.0,
        p90_ms=p90 / 1000.0,
        p99_ms=p99 / 1000.0,
        p999_ms=p999 / 1000.0,
        counts=tuple(counts),
    )


def merge_views(views: Sequence[WindowView]) -> WindowView:
    """One view for a service from its backends' views (same clock)."""
    if not views:
        return window_view(1.0, 0, 0, [0] * BUCKETS)
    merged = [0] * BUCKETS
    for v in views:
        for i, c in enumerate(v.counts):
            if c:
                merged[i] += c
    seconds = max(v.seconds for v in views)
    return window_view(seconds, sum(v.requests for v in views), sum(v.errors for v in views), merged)
