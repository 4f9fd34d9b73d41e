"""Hybrid logical clock and NTP-style clock offset estimation: known answers."""

from __future__ import annotations

import pytest

from concord.core.clock_offset import ClockOffsetEstimator, OffsetSample
from concord.core.hlc import ClockOffsetExceeded, HLCTimestamp, HybridLogicalClock

MS = 1_000_000


# --- hybrid logical clock ------------------------------------------------------------------

def test_now_follows_physical_time_and_counts_ties() -> None:
    clock = HybridLogicalClock()
    assert clock.now(100) == HLCTimestamp(100, 0)
    assert clock.now(100) == HLCTimestamp(100, 1)
    assert clock.now(90) == HLCTimestamp(100, 2)  # physical clock stepped back: hold
    assert clock.now(101) == HLCTimestamp(101, 0)


@pytest.mark.parametrize(("last", "remote", "physical", "expected"), [
    ((100, 4), (200, 7), 150, (200, 8)),  # remote is ahead: adopt it, count past it
    ((300, 4), (200, 7), 150, (300, 5)),  # ours is ahead
    ((100, 4), (100, 9), 50, (100, 10)),  # same wall: past both counters
    ((100, 4), (90, 9), 500, (500, 0)),  # physical time is ahead of both: reset the counter
])
def test_update_takes_the_largest_wall_time_and_moves_past_it(
        last: tuple[int, int], remote: tuple[int, int], physical: int,
        expected: tuple[int, int]) -> None:
    clock = HybridLogicalClock()
    clock.now(last[0])
    for _ in range(last[1]):
        clock.now(last[0])
    assert clock.last == HLCTimestamp(*last)
    assert clock.update(HLCTimestamp(*remote), physical) == HLCTimestamp(*expected)


def test_a_remote_timestamp_too_far_ahead_is_rejected_and_changes_nothing() -> None:
    clock = HybridLogicalClock(max_offset_ns=500 * MS)
    before = clock.now(1_000 * MS)
    assert clock.update(HLCTimestamp(1_500 * MS, 3), 1_000 * MS) == HLCTimestamp(1_500 * MS, 4)
    with pytest.raises(ClockOffsetExceeded, match="ahead") as raised:
        clock.update(HLCTimestamp(2_000 * MS + 1), 1_500 * MS)
    assert raised.value.max_offset_ns == 500 * MS
    assert clock.last == HLCTimestamp(1_500 * MS, 4)
    assert before < clock.last


def test_the_default_max_offset_is_500_ms() -> None:
    assert HybridLogicalClock().max_offset_ns == 500 * MS
    with pytest.raises(ValueError, match="positive"):
        HybridLogicalClock(0)


def test_timestamps_order_by_wall_time_then_counter() -> None:
    assert HLCTimestamp(1, 9) < HLCTimestamp(2, 0) < HLCTimestamp(2, 1)


# --- clock offsets -------------------------------------------------------------------------

def _round_trip(offset: int, out_delay: int, back_delay: int, t1: int = 1_000,
                processing: int = 10) -> tuple[int, int, int, int]:
    """Readings of one round trip with a peer whose clock is ``offset`` ahead of ours."""
    t2 = t1 + out_delay + offset
    t3 = t2 + processing
    t4 = t3 - offset + back_delay
    return t1, t2, t3, t4


def test_a_symmetric_round_trip_gives_the_exact_offset() -> None:
    sample = OffsetSample(*_round_trip(offset=2_000, out_delay=40, back_delay=40))
    assert (sample.offset_ns, sample.delay_ns) == (2_000, 80)


def test_an_asymmetric_round_trip_is_off_by_half_the_asymmetry() -> None:
    sample = OffsetSample(*_round_trip(offset=2_000, out_delay=50, back_delay=150))
    assert (sample.offset_ns, sample.delay_ns) == (2_000 - 50, 200)


def test_the_estimate_is_the_lowest_delay_sample_with_half_its_delay_as_uncertainty() -> None:
    estimator = ClockOffsetEstimator(window=8)
    estimator.add("b", *_round_trip(2_000, 50, 150))
    estimate = estimator.add("b", *_round_trip(2_000, 5, 15, t1=5_000))
    estimator.add("b", *_round_trip(2_000, 300, 30, t1=9_000))
    best = estimator.estimate("b")
    assert best is not None
    assert (best.offset_ns, best.delay_ns) == (estimate.offset_ns, estimate.delay_ns)
    assert (best.offset_ns, best.delay_ns, best.uncertainty_ns, best.samples) == (
        1_995, 20, 10, 3)
    assert best.offset_ns - best.uncertainty_ns <= 2_000 <= best.offset_ns + best.uncertainty_ns


def test_old_samples_leave_the_window() -> None:
    estimator = ClockOffsetEstimator(window=2)
    estimator.add("b", *_round_trip(2_000, 1, 1))
    estimator.add("b", *_round_trip(2_000, 100, 300))
    estimator.add("b", *_round_trip(2_000, 100, 100))
    estimate = estimator.estimate("b")
    assert estimate is not None
    assert (estimate.offset_ns, estimate.delay_ns) == (2_000, 200)


def test_among_equal_delays_the_newest_sample_wins() -> None:
    estimator = ClockOffsetEstimator()
    estimator.add("b", *_round_trip(1_000, 10, 10))
    estimator.add("b", *_round_trip(3_000, 10, 10, t1=2_000))
    estimate = estimator.estimate("b")
    assert estimate is not None and estimate.offset_ns == 3_000


def test_a_tiny_negative_delay_is_clamped_and_nonsense_is_rejected() -> None:
    assert OffsetSample(100, 200, 260, 150).delay_ns == 0
    estimator = ClockOffsetEstimator()
    with pytest.raises(ValueError, match="round trip"):
        estimator.add("b", 100, 200, 190, 300)
    with pytest.raises(ValueError, match="window"):
        ClockOffsetEstimator(window=0)
    assert estimator.estimate("b") is None


def test_far_peers_and_out_of_sync_count_only_surely_distant_clocks() -> None:
    estimator = ClockOffsetEstimator()
    estimator.add("near", *_round_trip(100, 10, 10))
    estimator.add("far", *_round_trip(-900, 10, 10))
    estimator.add("unsure", *_round_trip(600, 150, 150))  # 600 ± 150: maybe within 500
    assert estimator.far_peers(500) == ["far"]
    assert not estimator.out_of_sync(500, ["near", "far", "unsure"])  # 1 of 3
    assert estimator.out_of_sync(500, ["near", "far"])  # half
    assert not estimator.out_of_sync(500, [])
    estimator.forget("far")
    assert estimator.estimates().keys() == {"near", "unsure"}
