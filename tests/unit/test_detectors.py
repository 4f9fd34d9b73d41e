"""The fixed-timeout heartbeat detector and the phi accrual detector against known answers."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from concord.detector.heartbeat import HeartbeatDetector
from concord.detector.phi import PhiAccrualConfig, PhiAccrualDetector, phi_of

MS = 1_000_000
S = 1_000_000_000

# the number of standard deviations beyond which the normal tail is 1e-8 (phi = 8)
SIGMAS_AT_PHI_8 = NormalDist().inv_cdf(1 - 1e-8)


# --- heartbeat detector --------------------------------------------------------------------

def test_a_peer_never_heard_from_is_not_available() -> None:
    detector = HeartbeatDetector(timeout_ns=2 * S)
    assert not detector.is_available("a", 0)
    assert detector.suspects(10 * S) == []  # only peers heard from once are suspected


def test_a_peer_is_available_up_to_the_timeout_and_suspected_after() -> None:
    detector = HeartbeatDetector(timeout_ns=2 * S)
    detector.heartbeat("a", 1 * S)
    detector.heartbeat("b", 2 * S)
    assert detector.is_available("a", 3 * S)  # exactly the timeout: still fine
    assert not detector.is_available("a", 3 * S + 1)
    assert detector.suspects(3 * S + 1) == ["a"]
    assert detector.suspects(4 * S + 1) == ["a", "b"]
    detector.heartbeat("a", 5 * S)
    assert detector.suspects(5 * S) == ["b"]


def test_a_late_delivered_old_heartbeat_does_not_move_time_back() -> None:
    detector = HeartbeatDetector(timeout_ns=2 * S)
    detector.heartbeat("a", 5 * S)
    detector.heartbeat("a", 4 * S)
    assert detector.last_heartbeat_ns("a") == 5 * S


def test_a_forgotten_peer_is_no_longer_suspected() -> None:
    detector = HeartbeatDetector(timeout_ns=1 * S)
    detector.heartbeat("a", 0)
    detector.forget("a")
    assert detector.suspects(10 * S) == []
    with pytest.raises(ValueError, match="positive"):
        HeartbeatDetector(0)


# --- phi accrual ---------------------------------------------------------------------------

def test_phi_is_zero_and_the_peer_available_before_the_first_heartbeat() -> None:
    detector = PhiAccrualDetector()
    assert not detector.is_monitoring
    assert detector.phi(100 * S) == 0.0
    assert detector.is_available(100 * S)


def test_the_first_heartbeat_seeds_two_samples_around_the_estimate() -> None:
    """Akka: mu ± mu/4 with mu = first_heartbeat_estimate (1 s): mean 1 s, std 250 ms."""
    detector = PhiAccrualDetector()
    detector.heartbeat(7 * S)
    assert detector.intervals_ns() == (750 * MS, 1250 * MS)
    assert detector.mean_ns() == 1 * S
    assert detector.std_deviation_ns() == 250 * MS


def test_phi_at_the_shifted_mean_is_log10_of_two() -> None:
    """At elapsed = mean + acceptable pause the tail is exactly 1/2."""
    detector = PhiAccrualDetector()
    detector.heartbeat(0)
    assert detector.phi(4 * S) == pytest.approx(math.log10(2), rel=1e-12)


def test_regular_heartbeats_cross_the_threshold_at_the_known_time() -> None:
    """1 s heartbeats for long enough that the seed samples left the window: std = 0, so the
    100 ms floor applies and phi reaches 8 at 1 s + 3 s + 5.612 * 100 ms = 4.5612 s."""
    detector = PhiAccrualDetector()
    for beat in range(1002):
        detector.heartbeat(beat * S)
    assert set(detector.intervals_ns()) == {1 * S}
    assert len(detector.intervals_ns()) == 1000
    last = 1001 * S
    crossing_ns = 4 * S + SIGMAS_AT_PHI_8 * 100 * MS
    assert crossing_ns == pytest.approx(4.5612 * S, rel=1e-4)
    assert detector.phi(last + round(crossing_ns)) == pytest.approx(8.0, abs=1e-6)
    assert detector.is_available(last + round(crossing_ns) - 10 * MS)
    assert not detector.is_available(last + round(crossing_ns) + 10 * MS)


def test_a_heartbeat_after_the_peer_was_unavailable_is_not_recorded() -> None:
    detector = PhiAccrualDetector()
    detector.heartbeat(0)
    detector.heartbeat(1 * S)
    detector.heartbeat(30 * S)  # a 29 s outage: phi was far above 8
    assert detector.intervals_ns() == (750 * MS, 1250 * MS, 1 * S)
    assert detector.last_heartbeat_ns == 30 * S


def test_the_window_keeps_only_the_newest_samples() -> None:
    detector = PhiAccrualDetector(PhiAccrualConfig(max_sample_size=3))
    for t in (0, 1, 3, 6):
        detector.heartbeat(t * S)
    assert detector.intervals_ns() == (1 * S, 2 * S, 3 * S)
    assert detector.mean_ns() == 2 * S


def test_phi_is_finite_and_growing_far_in_the_tail() -> None:
    """Past 30 sigmas the asymptotic expansion takes over; it agrees with erfc where both
    work and keeps growing where erfc underflows."""
    for y in (30.0, 33.0, 37.0):
        exact = -math.log10(0.5 * math.erfc(y / math.sqrt(2)))
        assert phi_of(y, 0.0, 1.0) == pytest.approx(exact, rel=1e-8)
    values = [phi_of(y, 0.0, 1.0) for y in (29.9, 30.0, 40.0, 100.0, 1e6)]
    assert values == sorted(values)
    assert all(math.isfinite(v) for v in values)


@pytest.mark.parametrize("field", ["threshold", "min_std_deviation_ns",
                                   "first_heartbeat_estimate_ns"])
def test_phi_config_rejects_non_positive_settings(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PhiAccrualConfig(**{field: 0})


def test_phi_config_rejects_a_window_too_small_for_the_seed() -> None:
    with pytest.raises(ValueError, match="max_sample_size"):
        PhiAccrualConfig(max_sample_size=1)


# --- side by side --------------------------------------------------------------------------

def _verdicts(heartbeats_s: list[float], at_s: float) -> tuple[bool, bool]:
    fixed = HeartbeatDetector(timeout_ns=2 * S)
    phi = PhiAccrualDetector()
    for t in heartbeats_s:
        fixed.heartbeat("peer", round(t * S))
        phi.heartbeat(round(t * S))
    now = round(at_s * S)
    return fixed.is_available("peer", now), phi.is_available(now)


def test_a_pause_within_the_acceptable_pause_fools_only_the_fixed_timeout() -> None:
    """A 2.5 s GC pause after regular 1 s heartbeats: the 2 s timeout accuses, phi does not."""
    fixed_ok, phi_ok = _verdicts([float(t) for t in range(20)], at_s=19 + 2.5)
    assert (fixed_ok, phi_ok) == (False, True)


def test_both_detectors_convict_a_crashed_peer() -> None:
    fixed_ok, phi_ok = _verdicts([float(t) for t in range(20)], at_s=19 + 6)
    assert (fixed_ok, phi_ok) == (False, False)
