"""Each selection algorithm's defining property, on fake candidates and a small discrete-event simulation."""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbtui.core.algorithms import (
    ALGORITHMS,
    Algorithm,
    ConsistentHash,
    PeakEwma,
    ewma_decay,
    ewma_update,
    make_algorithm,
)

TAU = 10.0


@dataclass(eq=False)
class Fake:
    name: str
    weight: int = 1
    in_flight: int = 0
    ewma: float = 0.0
    ewma_time: float = 0.0

    def ewma_cost(self, now: float) -> float:
        return ewma_decay(self.ewma, self.ewma_time, now, TAU)

    def observe(self, latency: float, now: float) -> None:
        self.ewma = ewma_update(self.ewma, self.ewma_time, latency, now, TAU)
        self.ewma_time = now


def fakes(*weights: int) -> tuple[Fake, ...]:
    return tuple(Fake(name, weight) for name, weight in zip("abcdefghij", weights, strict=False))


def names(algorithm: Algorithm[Fake], candidates: Sequence[Fake], count: int, version: int = 0) -> str:
    picked = (algorithm.pick(candidates, version, None) for _ in range(count))
    return "".join(c.name for c in picked if c is not None)


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class SimResult:
    picks: Counter[str]
    max_in_flight: Counter[str]

    def share(self, name: str) -> float:
        return self.picks[name] / sum(self.picks.values())


def simulate(
    algorithm: Algorithm[Fake],
    backends: Sequence[Fake],
    latency_ticks: dict[str, int],
    *,
    arrivals_per_tick: int,
    ticks: int,
    rng: random.Random,
    clock: SimClock | None = None,
    tick_seconds: float = 0.001,
) -> SimResult:
    """Requests arrive each tick; a backend finishes each after its fixed latency, then reports the sample."""
    completions: list[tuple[int, int, Fake]] = []
    sequence = itertools.count()
    result = SimResult(Counter(), Counter())
    for tick in range(ticks):
        now = tick * tick_seconds
        if clock is not None:
            clock.now = now
        while completions and completions[0][0] <= tick:
            _, _, done = heapq.heappop(completions)
            done.in_flight -= 1
            done.observe(latency_ticks[done.name] * tick_seconds, now)
        for _ in range(arrivals_per_tick):
            chosen = algorithm.pick(backends, 0, None, rng)
            assert chosen is not None
            chosen.in_flight += 1
            result.picks[chosen.name] += 1
            result.max_in_flight[chosen.name] = max(result.max_in_flight[chosen.name], chosen.in_flight)
            heapq.heappush(completions, (tick + latency_ticks[chosen.name], next(sequence), chosen))
    return result


# --- every algorithm ---------------------------------------------------------------------------------------


def test_algorithms_are_the_eight_of_section_3_in_order() -> None:
    assert ALGORITHMS == (
        "round_robin",
        "weighted_round_robin",
        "least_connections",
        "random",
        "p2c",
        "ewma",
        "ip_hash",
        "consistent_hash",
    )
    for name in ALGORITHMS:
        assert make_algorithm(name).name == name


@pytest.mark.parametrize("name", ALGORITHMS)
def test_empty_candidates_give_none(name: str) -> None:
    algorithm = make_algorithm(name)
    assert algorithm.pick((), 0, None) is None
    assert algorithm.pick([], 1, b"key", random.Random(1)) is None


@pytest.mark.parametrize("name", ALGORITHMS)
def test_single_candidate_is_always_picked(name: str) -> None:
    only = Fake("only", weight=3, in_flight=7, ewma=1.0)
    algorithm = make_algorithm(name)
    assert all(algorithm.pick((only,), 0, b"k", random.Random(2)) is only for _ in range(10))


def test_make_algorithm_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown algorithm 'fastest'"):
        make_algorithm("fastest")


def test_make_algorithm_gives_fresh_instances() -> None:
    first, second = make_algorithm("round_robin"), make_algorithm("round_robin")
    candidates = fakes(1, 1, 1)
    assert names(first, candidates, 2) == "ab"
    assert names(second, candidates, 1) == "a"


@pytest.mark.parametrize("name", ALGORITHMS)
@settings(max_examples=30, deadline=None)
@given(
    sets=st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=6), min_size=1, max_size=5),
    seed=st.integers(0, 2**32),
)
def test_pick_returns_one_of_the_candidates_even_when_version_is_not_bumped(
    name: str, sets: list[list[int]], seed: int
) -> None:
    """A caller bug (same version for a different set) may give a stale choice, never a foreign backend."""
    algorithm = make_algorithm(name)
    rng = random.Random(seed)
    for index, weights in enumerate(sets):
        candidates = tuple(
            Fake(f"s{index}-{i}", w, rng.randrange(3), rng.random()) for i, w in enumerate(weights)
        )
        for key in (None, b"", b"client-1", seed.to_bytes(8, "big")):
            chosen = algorithm.pick(candidates, 0, key, rng)
            assert any(chosen is c for c in candidates)


# --- round_robin -------------------------------------------------------------------------------------------


def test_round_robin_takes_turns_and_ignores_weights() -> None:
    algorithm = make_algorithm("round_robin")
    candidates = fakes(5, 1, 1)
    assert names(algorithm, candidates, 9) == "abcabcabc"
    assert Counter(names(algorithm, candidates, 300)) == {"a": 100, "b": 100, "c": 100}


def test_round_robin_stays_fair_when_a_candidate_is_removed() -> None:
    algorithm = make_algorithm("round_robin")
    a, b, c = fakes(1, 1, 1)
    assert names(algorithm, (a, b, c), 2) == "ab"
    picked = names(algorithm, (a, c), 100, version=1)
    assert Counter(picked) == {"a": 50, "c": 50}
    assert "aa" not in picked
    assert "cc" not in picked


# --- weighted_round_robin ----------------------------------------------------------------------------------


def test_smooth_weighted_round_robin_is_the_nginx_sequence() -> None:
    algorithm = make_algorithm("weighted_round_robin")
    assert names(algorithm, fakes(5, 1, 1), 21) == "aabacaa" * 3


def test_smooth_weighted_round_robin_proportions_are_exact() -> None:
    algorithm = make_algorithm("weighted_round_robin")
    assert Counter(names(algorithm, fakes(5, 1, 1), 7000)) == {"a": 5000, "b": 1000, "c": 1000}


def test_smooth_weighted_round_robin_follows_a_weight_change() -> None:
    algorithm = make_algorithm("weighted_round_robin")
    candidates = fakes(5, 1, 1)
    names(algorithm, candidates, 10)  # part-way through a cycle
    candidates[1].weight = 5
    counts = Counter(names(algorithm, candidates, 11000, version=1))
    # Current weights carry over, so the first cycle is off by a little; the long run is exact to a few picks.
    assert abs(counts["a"] - 5000) <= 5
    assert abs(counts["b"] - 5000) <= 5
    assert abs(counts["c"] - 1000) <= 5


def test_smooth_weighted_round_robin_keeps_current_weights_when_the_set_changes() -> None:
    algorithm = make_algorithm("weighted_round_robin")
    a, b, c = fakes(1, 1, 1)
    assert names(algorithm, (a, b, c), 1) == "a"
    # a was just served; restarting from zero would serve it again, carrying over serves b.
    picked = names(algorithm, (a, b), 100, version=1)
    assert picked[0] == "b"
    assert abs(picked.count("a") - 50) <= 1


def test_smooth_weighted_round_robin_remembers_a_backend_that_rejoins() -> None:
    algorithm = make_algorithm("weighted_round_robin")
    a, b, c = fakes(1, 1, 1)
    assert names(algorithm, (a, b, c), 1) == "a"
    assert names(algorithm, (b, c), 1, version=1) == "b"
    # a was served most recently of all when it left; it must not jump the queue on return.
    picked = names(algorithm, (a, b, c), 300, version=2)
    assert "a" not in picked[:2]
    assert all(abs(picked.count(name) - 100) <= 2 for name in "abc")


# --- least_connections -------------------------------------------------------------------------------------


def test_least_connections_prefers_fewest_in_flight_relative_to_weight() -> None:
    algorithm = make_algorithm("least_connections")
    heavy = Fake("heavy", weight=2, in_flight=3)  # 1.5 per unit of weight
    light = Fake("light", weight=1, in_flight=1)  # 1.0
    assert all(algorithm.pick((heavy, light), 0, None) is light for _ in range(4))
    heavy.in_flight = 1  # 0.5
    assert all(algorithm.pick((heavy, light), 0, None) is heavy for _ in range(4))


def test_least_connections_breaks_ties_in_turn() -> None:
    algorithm = make_algorithm("least_connections")
    assert names(algorithm, fakes(1, 1, 1), 9) == "abcabcabc"
    a, b, c = fakes(1, 1, 1)
    b.in_flight = 4
    assert set(names(algorithm, (a, b, c), 30)) == {"a", "c"}


def test_least_connections_steers_away_from_a_slow_backend() -> None:
    fast, slow = Fake("fast"), Fake("slow")
    result = simulate(
        make_algorithm("least_connections"),
        (fast, slow),
        {"fast": 1, "slow": 10},
        arrivals_per_tick=3,
        ticks=2000,
        rng=random.Random(3),
    )
    assert result.share("fast") > 0.8
    assert result.max_in_flight["slow"] <= 6
    # Round robin, for contrast, piles requests up on the slow backend.
    blind = simulate(
        make_algorithm("round_robin"),
        (Fake("fast"), Fake("slow")),
        {"fast": 1, "slow": 10},
        arrivals_per_tick=3,
        ticks=2000,
        rng=random.Random(3),
    )
    assert blind.max_in_flight["slow"] >= 14


# --- random ------------------------------------------------------------------------------------------------


def test_random_is_uniform_by_weight() -> None:
    algorithm = make_algorithm("random")
    candidates = fakes(3, 1)
    rng = random.Random(4)
    counts = Counter(algorithm.pick(candidates, 0, None, rng).name for _ in range(20000))  # type: ignore[union-attr]
    assert counts["a"] / 20000 == pytest.approx(0.75, abs=0.02)


def test_random_rebuilds_when_the_version_changes() -> None:
    algorithm = make_algorithm("random")
    candidates = fakes(3, 1)
    rng = random.Random(5)
    algorithm.pick(candidates, 0, None, rng)
    candidates[0].weight, candidates[1].weight = 1, 3
    counts = Counter(algorithm.pick(candidates, 1, None, rng).name for _ in range(20000))  # type: ignore[union-attr]
    assert counts["b"] / 20000 == pytest.approx(0.75, abs=0.02)


# --- p2c and ewma ------------------------------------------------------------------------------------------


def test_p2c_picks_two_distinct_candidates() -> None:
    """With two candidates both are always compared, so the less loaded one always wins."""
    algorithm = make_algorithm("p2c")
    busy, idle = Fake("busy", in_flight=5), Fake("idle", in_flight=0)
    rng = random.Random(6)
    assert all(algorithm.pick((busy, idle), 0, None, rng) is idle for _ in range(200))


def test_p2c_compares_in_flight_relative_to_weight() -> None:
    algorithm = make_algorithm("p2c")
    big, small = Fake("big", weight=4, in_flight=6), Fake("small", weight=1, in_flight=2)
    rng = random.Random(7)
    assert all(algorithm.pick((big, small), 0, None, rng) is big for _ in range(200))


@pytest.mark.parametrize("name", ["p2c", "ewma"])
def test_steers_away_from_a_slow_backend(name: str) -> None:
    clock = SimClock()
    algorithm: Algorithm[Fake] = PeakEwma(clock=clock) if name == "ewma" else make_algorithm(name)
    backends = tuple(Fake(n) for n in ("a", "b", "c", "d", "slow"))
    latency = {"a": 2, "b": 2, "c": 2, "d": 2, "slow": 20}
    result = simulate(
        algorithm, backends, latency, arrivals_per_tick=10, ticks=3000, rng=random.Random(8), clock=clock
    )
    assert result.share("slow") < 0.15
    blind = simulate(
        make_algorithm("random"),
        tuple(Fake(n) for n in latency),
        latency,
        arrivals_per_tick=10,
        ticks=3000,
        rng=random.Random(8),
    )
    assert blind.share("slow") > 0.18


def test_ewma_prefers_the_lower_latency_cost() -> None:
    clock = SimClock()
    algorithm: PeakEwma[Fake] = PeakEwma(clock=clock)
    slow, quick = Fake("slow", ewma=0.5), Fake("quick", ewma=0.1)
    rng = random.Random(9)
    assert all(algorithm.pick((slow, quick), 0, None, rng) is quick for _ in range(50))
    quick.in_flight = 5  # 0.1 x 6 > 0.5 x 1
    assert all(algorithm.pick((slow, quick), 0, None, rng) is slow for _ in range(50))
    quick.weight = 2  # 0.6 / 2 < 0.5
    assert all(algorithm.pick((slow, quick), 0, None, rng) is quick for _ in range(50))


def test_ewma_probes_an_unmeasured_backend_one_request_at_a_time() -> None:
    # A fixed clock: with the real one, `known`'s EWMA (measured at time 0) would decay to exactly 0.0 once
    # the machine has been up long enough, and count as unmeasured too.
    algorithm: PeakEwma[Fake] = PeakEwma(clock=lambda: 0.0)
    known, new = Fake("known", ewma=0.05, in_flight=3), Fake("new")
    rng = random.Random(10)
    assert algorithm.pick((known, new), 0, None, rng) is new
    new.in_flight = 1
    assert all(algorithm.pick((known, new), 0, None, rng) is known for _ in range(50))


def test_ewma_update_takes_a_peak_at_once() -> None:
    assert ewma_update(0.1, 0.0, 0.5, 0.0) == 0.5
    assert ewma_update(0.0, 0.0, 0.02, 100.0) == 0.02


def test_ewma_update_decays_towards_a_lower_sample() -> None:
    assert ewma_update(1.0, 0.0, 0.0, 10.0, tau=10.0) == pytest.approx(math.exp(-1))
    assert ewma_update(1.0, 0.0, 0.5, 10.0, tau=10.0) == pytest.approx(
        math.exp(-1) + 0.5 * (1 - math.exp(-1))
    )
    assert ewma_update(1.0, 5.0, 0.5, 5.0) == 1.0  # no time elapsed: no weight for the new sample
    assert ewma_update(1.0, 5.0, 0.5, 4.0) == 1.0  # a clock that went backwards counts as no time
    value, when = 1.0, 0.0
    for step in range(1, 200):
        value, when = ewma_update(value, when, 0.1, step * 1.0), step * 1.0
    assert value == pytest.approx(0.1, rel=1e-3)


def test_ewma_decay_is_an_update_with_a_zero_sample() -> None:
    assert ewma_decay(2.0, 5.0, 15.0, 10.0) == pytest.approx(2.0 / math.e)
    assert ewma_decay(2.0, 5.0, 15.0, 10.0) == ewma_update(2.0, 5.0, 0.0, 15.0, 10.0)
    assert ewma_decay(2.0, 5.0, 5.0) == 2.0
    assert ewma_decay(2.0, 5.0, 1.0) == 2.0


# --- ip_hash and consistent_hash ---------------------------------------------------------------------------

KEYS = [f"user-{i}".encode() for i in range(10000)]


def assignment(algorithm: Algorithm[Fake], candidates: Sequence[Fake], version: int) -> dict[bytes, str]:
    return {key: algorithm.pick(candidates, version, key).name for key in KEYS}  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["ip_hash", "consistent_hash"])
def test_consistent_hash_moves_only_the_keys_of_a_removed_backend(name: str) -> None:
    algorithm = make_algorithm(name)
    five = fakes(1, 1, 1, 1, 1)
    before = assignment(algorithm, five, 0)
    shares = Counter(before.values())
    assert all(0.1 <= shares[c.name] / len(KEYS) <= 0.3 for c in five)

    removed = five[2]
    four = tuple(c for c in five if c is not removed)
    after = assignment(algorithm, four, 1)
    moved = [key for key in KEYS if after[key] != before[key]]
    assert all(before[key] == removed.name for key in moved)
    assert set(moved) == {key for key in KEYS if before[key] == removed.name}
    assert 0.1 <= len(moved) / len(KEYS) <= 0.3

    assert assignment(algorithm, five, 2) == before


def test_consistent_hash_maps_the_same_regardless_of_order_and_instance() -> None:
    five = fakes(1, 1, 1, 1, 1)
    first = assignment(make_algorithm("consistent_hash"), five, 0)
    assert assignment(make_algorithm("consistent_hash"), tuple(reversed(five)), 0) == first


def test_consistent_hash_weight_doubles_the_share() -> None:
    candidates = fakes(2, 1, 1, 1, 1)
    shares = Counter(assignment(make_algorithm("consistent_hash"), candidates, 0).values())
    others = sum(shares[c.name] for c in candidates[1:]) / 4
    assert 1.6 <= shares["a"] / others <= 2.4


def test_consistent_hash_caps_the_ring_and_keeps_proportions() -> None:
    algorithm: ConsistentHash[Fake] = ConsistentHash(max_points=2000)
    candidates = fakes(1000, 1000, 2000)
    shares = Counter(assignment(algorithm, candidates, 0).values())
    assert 0.4 <= shares["c"] / len(KEYS) <= 0.6


def test_ip_hash_keeps_a_client_on_its_backend() -> None:
    algorithm = make_algorithm("ip_hash")
    candidates = fakes(1, 1, 1, 1)
    client = bytes([192, 168, 1, 17])
    chosen = {algorithm.pick(candidates, 0, client).name for _ in range(100)}  # type: ignore[union-attr]
    assert len(chosen) == 1
    clients = {algorithm.pick(candidates, 0, bytes([10, 0, 0, i])).name for i in range(64)}  # type: ignore[union-attr]
    assert len(clients) == 4


@pytest.mark.parametrize("name", ["ip_hash", "consistent_hash"])
def test_hash_without_a_key_falls_back_to_weighted_random(name: str) -> None:
    algorithm = make_algorithm(name)
    candidates = fakes(3, 1)
    rng = random.Random(11)
    counts = Counter(algorithm.pick(candidates, 0, None, rng).name for _ in range(20000))  # type: ignore[union-attr]
    assert counts["a"] / 20000 == pytest.approx(0.75, abs=0.02)
