"""Tests of FaultInjector: validation of every setting, the random decisions it makes, and the
wall clock it skews (the ``WallClock`` membership reads)."""

from __future__ import annotations

import random

import pytest

from concord.runtime.membership import WallClock
from concord.transport.faults import MAX_CLOCK_OFFSET_MS, MAX_FAULT_DELAY_MS, FaultInjector

DRAWS = 10_000


def injector(seed: int = 1) -> FaultInjector:
    return FaultInjector(random.Random(seed))


def test_a_new_injector_injects_nothing() -> None:
    faults = injector()
    assert faults.describe() == {"drop_rate": 0.0, "delay_ms": 0, "jitter_ms": 0,
                                 "duplicate_rate": 0.0, "blocked_peers": [],
                                 "clock_offset_ms": None}
    assert not any(faults.should_drop("b") for _ in range(100))
    assert not any(faults.should_duplicate() for _ in range(100))
    assert faults.delay_s() == 0.0


def test_configure_changes_only_the_named_fields_and_clear_resets_all() -> None:
    faults = injector()
    faults.configure(drop_rate=0.25, blocked_peers=["c", "b"])
    faults.configure(delay_ms=30, jitter_ms=5, duplicate_rate=1)
    assert faults.describe() == {"drop_rate": 0.25, "delay_ms": 30, "jitter_ms": 5,
                                 "duplicate_rate": 1.0, "blocked_peers": ["b", "c"],
                                 "clock_offset_ms": None}
    assert faults.blocked_peers == frozenset({"b", "c"})
    faults.clear()
    assert faults.describe() == injector().describe()


@pytest.mark.parametrize(("fields", "named"), [
    ({"drop_rate": 1.5}, "drop_rate"),
    ({"drop_rate": -0.1}, "drop_rate"),
    ({"drop_rate": "0.5"}, "drop_rate"),
    ({"drop_rate": True}, "drop_rate"),
    ({"duplicate_rate": 2}, "duplicate_rate"),
    ({"delay_ms": -1}, "delay_ms"),
    ({"delay_ms": 1.5}, "delay_ms"),
    ({"delay_ms": MAX_FAULT_DELAY_MS + 1}, "delay_ms"),
    ({"jitter_ms": None}, "jitter_ms"),
    ({"blocked_peers": "b"}, "blocked_peers"),
    ({"blocked_peers": ["b", 3]}, "blocked_peers"),
    ({"blocked_peers": [""]}, "blocked_peers"),
    ({"loss": 0.5}, "loss"),
])
def test_a_bad_setting_is_refused_naming_the_field_and_nothing_changes(
        fields: dict[str, object], named: str) -> None:
    faults = injector()
    with pytest.raises(ValueError, match=f"^{named}: "):
        faults.configure(**({"delay_ms": 10, "drop_rate": 0.5} | fields))
    assert faults.describe() == injector().describe()  # the valid fields were not applied


def test_blocked_peers_are_always_dropped_and_others_are_not() -> None:
    faults = injector()
    faults.configure(blocked_peers=("b",))
    assert all(faults.should_drop("b") for _ in range(100))
    assert not any(faults.should_drop("c") for _ in range(100))


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_drop_and_duplicate_happen_at_the_configured_rate(rate: float) -> None:
    faults = injector(seed=42)
    faults.configure(drop_rate=rate, duplicate_rate=rate)
    drops = sum(faults.should_drop("b") for _ in range(DRAWS))
    duplicates = sum(faults.should_duplicate() for _ in range(DRAWS))
    for count in (drops, duplicates):  # within 5 standard deviations of rate * DRAWS
        assert abs(count - rate * DRAWS) < 5 * (DRAWS * rate * (1 - rate)) ** 0.5


def test_rate_one_always_fires() -> None:
    faults = injector()
    faults.configure(drop_rate=1.0, duplicate_rate=1.0)
    assert all(faults.should_drop("b") for _ in range(1000))
    assert all(faults.should_duplicate() for _ in range(1000))


def test_the_same_seed_makes_the_same_decisions() -> None:
    first, second = injector(seed=9), injector(seed=9)
    for faults in (first, second):
        faults.configure(drop_rate=0.5, jitter_ms=40, delay_ms=40)
    assert [(first.should_drop("b"), first.delay_s()) for _ in range(200)] == [
        (second.should_drop("b"), second.delay_s()) for _ in range(200)]


def test_delay_without_jitter_is_exact() -> None:
    faults = injector()
    faults.configure(delay_ms=50)
    assert {faults.delay_s() for _ in range(100)} == {0.05}


def test_jitter_spreads_around_the_delay_and_never_goes_negative() -> None:
    faults = injector()
    faults.configure(delay_ms=50, jitter_ms=20)
    delays_s = [faults.delay_s() for _ in range(DRAWS)]
    assert 0.030 <= min(delays_s) < 0.031 and 0.069 < max(delays_s) <= 0.070
    assert abs(sum(delays_s) / DRAWS - 0.050) < 0.001
    faults.configure(delay_ms=0, jitter_ms=10)
    delays_s = [faults.delay_s() for _ in range(DRAWS)]
    zeros = delays_s.count(0.0)
    assert min(delays_s) == 0.0 and max(delays_s) <= 0.010
    assert abs(zeros - DRAWS / 2) < 5 * (DRAWS / 4) ** 0.5  # the negative half is clamped


# -- the wall clock ------------------------------------------------------------------------


MS = 1_000_000


def test_clock_offset_moves_the_wall_clock_and_clear_restores_the_startup_offset() -> None:
    clock = WallClock(offset_ms=300)
    faults = FaultInjector(random.Random(1), clock=clock)
    assert faults.describe()["clock_offset_ms"] == 300
    before_ns = clock.now_ns()
    faults.configure(clock_offset_ms=-2_000)
    assert clock.offset_ms == -2_000
    assert faults.describe()["clock_offset_ms"] == -2_000
    # 2.3 s back, give or take the time these lines take
    assert -2_300 * MS <= clock.now_ns() - before_ns < -2_200 * MS
    faults.configure(drop_rate=0.5)  # other settings leave the clock alone
    assert clock.offset_ms == -2_000
    faults.clear()
    assert clock.offset_ms == 300 and faults.describe()["clock_offset_ms"] == 300


@pytest.mark.parametrize("offset_ms", [0, 1, -1, MAX_CLOCK_OFFSET_MS, -MAX_CLOCK_OFFSET_MS])
def test_clock_offsets_within_the_bound_are_accepted(offset_ms: int) -> None:
    clock = WallClock()
    FaultInjector(random.Random(1), clock=clock).configure(clock_offset_ms=offset_ms)
    assert clock.offset_ms == offset_ms


@pytest.mark.parametrize("offset_ms", [MAX_CLOCK_OFFSET_MS + 1, -MAX_CLOCK_OFFSET_MS - 1, 1.5,
                                       "100", True, None])
def test_a_bad_clock_offset_is_refused_and_nothing_changes(offset_ms: object) -> None:
    clock = WallClock(offset_ms=7)
    faults = FaultInjector(random.Random(1), clock=clock)
    with pytest.raises(ValueError, match=r"^clock_offset_ms: expected"):
        faults.configure(drop_rate=0.5, clock_offset_ms=offset_ms)
    assert clock.offset_ms == 7 and faults.drop_rate == 0.0


def test_without_a_clock_the_offset_is_refused() -> None:
    faults = injector()
    with pytest.raises(ValueError, match=r"^clock_offset_ms: this node has no wall clock"):
        faults.configure(clock_offset_ms=100)
    faults.clear()
    assert faults.describe()["clock_offset_ms"] is None
