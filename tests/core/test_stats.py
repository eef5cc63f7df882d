from __future__ import annotations

import pytest

from lbtui.core.stats import (
    BUCKETS,
    SlidingWindow,
    bucket_bounds,
    bucket_index,
    merge_views,
    percentiles_us,
)


def test_buckets_are_contiguous_and_tight():
    previous_high = 0
    for index in range(BUCKETS):
        low, high = bucket_bounds(index)
        assert low == previous_high
        assert high > low
        if low >= 32:
            assert (high - low) / low <= 1 / 32  # at most ~3% wide: the midpoint is within ~1.6%
        previous_high = high


@pytest.mark.parametrize("us", [0, 1, 31, 32, 33, 63, 64, 100, 999, 1000, 1001, 2000, 123456, 10**7])
def test_value_lands_in_its_bucket(us):
    low, high = bucket_bounds(bucket_index(us))
    assert low <= us < high


def test_tells_one_millisecond_from_two():
    w = SlidingWindow(now=100.0)
    for _ in range(500):
        w.record(0.001, False, 100.5)
    for _ in range(500):
        w.record(0.002, False, 100.5)
    v = w.view(101.0)
    assert v.p50_ms == pytest.approx(1.0, rel=0.02)
    assert v.p90_ms == pytest.approx(2.0, rel=0.02)
    assert v.p99_ms == pytest.approx(2.0, rel=0.02)
    assert v.requests == 1000


def test_exact_percentiles_of_a_known_distribution():
    w = SlidingWindow(now=0.0)
    for ms in range(1, 1001):  # 1..1000 ms, one each
        w.record(ms / 1000, False, 5.0)
    v = w.view(5.5)
    assert v.p50_ms == pytest.approx(500, rel=0.02)
    assert v.p90_ms == pytest.approx(900, rel=0.02)
    assert v.p99_ms == pytest.approx(990, rel=0.02)
    assert v.p999_ms == pytest.approx(999, rel=0.02)


def test_window_slides_and_rate_is_per_second():
    w = SlidingWindow(slots=10, now=0.0)
    for second in range(20):
        for _ in range(50):
            w.record(0.001, second % 2 == 0, second + 0.5)
    v = w.view(19.99)
    assert v.requests == 500  # only the last 10 seconds
    assert v.errors == 250
    assert v.rps == pytest.approx(50, rel=0.05)
    assert v.error_ratio == pytest.approx(0.5)
    later = w.view(40.0)
    assert later.requests == 0
    assert later.p99_ms == 0.0


def test_old_slow_requests_leave_the_window():
    w = SlidingWindow(slots=10, now=0.0)
    w.record(5.0, False, 1.0)
    for _ in range(10):
        w.record(0.001, False, 15.0)
    assert w.view(15.5).p99_ms == pytest.approx(1.0, rel=0.02)


def test_merge_views_for_a_service():
    a, b = SlidingWindow(now=0.0), SlidingWindow(now=0.0)
    for _ in range(90):
        a.record(0.001, False, 1.0)
    for _ in range(10):
        b.record(0.1, True, 1.0)
    m = merge_views([a.view(1.5), b.view(1.5)])
    assert m.requests == 100
    assert m.errors == 10
    assert m.p50_ms == pytest.approx(1.0, rel=0.02)
    assert m.p99_ms == pytest.approx(100.0, rel=0.02)


def test_percentiles_of_nothing():
    assert percentiles_us([0] * BUCKETS, 0, (0.5, 0.99)) == (0.0, 0.0)


def test_record_many_is_as_many_records():
    one, many = SlidingWindow(now=0.0), SlidingWindow(now=0.0)
    for second, ms, errors, count in ((1.2, 3, 0, 40), (1.7, 40, 2, 5), (12.5, 7, 1, 3), (12.6, 250, 0, 1)):
        for i in range(count):
            one.record(ms / 1000, i < errors, second)
        many.record_many(ms / 1000, errors, count, second)
    for now in (1.9, 12.9):
        assert many.view(now) == one.view(now)
    assert many.totals() == one.totals()
