"""Phi accrual against a direct formula: rebuild the sample window as a plain list, take its
mean and population standard deviation with ``statistics``, and the normal tail with
``statistics.NormalDist`` (Hayashibara et al.; Akka's shifted mean and floored deviation)."""

from __future__ import annotations

import math
import statistics
from statistics import NormalDist

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from concord.detector.phi import PhiAccrualConfig, PhiAccrualDetector

MS = 1_000_000

configs = st.builds(
    PhiAccrualConfig,
    threshold=st.floats(1.0, 12.0),
    max_sample_size=st.integers(2, 12),
    min_std_deviation_ns=st.integers(1 * MS, 500 * MS),
    acceptable_heartbeat_pause_ns=st.integers(0, 3_000 * MS),
    first_heartbeat_estimate_ns=st.integers(100 * MS, 2_000 * MS),
)
gaps = st.lists(st.integers(0, 8_000 * MS), min_size=0, max_size=30)


def oracle_phi(samples: list[int], config: PhiAccrualConfig, elapsed_ns: int) -> float | None:
    """-log10 P(X > elapsed) for X ~ N(mean + pause, max(std, floor)); None when the tail is
    too small for 1 - cdf to keep its relative precision."""
    mean = statistics.fmean(samples) + config.acceptable_heartbeat_pause_ns
    std = max(statistics.pstdev(samples), config.min_std_deviation_ns)
    tail = 1.0 - NormalDist(mean, std).cdf(elapsed_ns)
    if tail < 1e-9:
        return None
    return -math.log10(tail)


def deep_tail_phi(samples: list[int], config: PhiAccrualConfig, elapsed_ns: int) -> float:
    """The same phi where ``1 - cdf`` has lost its precision: the tail from erfc, which
    keeps it far out (for deciding availability when the threshold is above 9)."""
    mean = statistics.fmean(samples) + config.acceptable_heartbeat_pause_ns
    std = max(statistics.pstdev(samples), config.min_std_deviation_ns)
    tail = 0.5 * math.erfc((elapsed_ns - mean) / (std * math.sqrt(2.0)))
    return math.inf if tail == 0.0 else -math.log10(tail)


def replay(config: PhiAccrualConfig, gaps_ns: list[int]) -> tuple[PhiAccrualDetector, list[int]]:
    """Feed heartbeats separated by ``gaps_ns``; the oracle keeps its own window, recording
    an interval only if the peer was still available (phi below threshold) when it ended."""
    detector = PhiAccrualDetector(config)
    estimate = config.first_heartbeat_estimate_ns
    window = [estimate - estimate // 4, estimate + estimate // 4]
    now = 0
    detector.heartbeat(now)
    for gap in gaps_ns:
        expected = oracle_phi(window, config, gap)
        if expected is None:  # phi above 9, and the threshold may be higher still
            expected = deep_tail_phi(window, config, gap)
        available = expected < config.threshold
        assume(abs(expected - config.threshold) > 1e-6)  # no coin flips
        if available:
            window = [*window, gap][-config.max_sample_size:]
        now += gap
        detector.heartbeat(now)
    return detector, window


@settings(max_examples=300, deadline=None)
@given(configs, gaps, st.integers(0, 20_000 * MS))
# phi about 10.8 (beyond 1 - cdf's precision) under a threshold of 12: still available
@example(PhiAccrualConfig(threshold=12.0, max_sample_size=2, min_std_deviation_ns=52692158,
                          acceptable_heartbeat_pause_ns=0, first_heartbeat_estimate_ns=100 * MS),
         [449690609], 0)
def test_phi_matches_the_direct_formula(config: PhiAccrualConfig, gaps_ns: list[int],
                                        elapsed_ns: int) -> None:
    detector, window = replay(config, gaps_ns)
    assert list(detector.intervals_ns()) == window
    assert math.isclose(detector.mean_ns(), statistics.fmean(window), rel_tol=1e-12)
    assert math.isclose(detector.std_deviation_ns(), statistics.pstdev(window),
                        rel_tol=1e-9, abs_tol=1e-3)
    last = detector.last_heartbeat_ns
    assert last is not None
    phi = detector.phi(last + elapsed_ns)
    expected = oracle_phi(window, config, elapsed_ns)
    if expected is None:
        assert phi > 8.9  # the tail is below 1e-9
    else:
        assert math.isclose(phi, expected, rel_tol=1e-6, abs_tol=1e-6)
    assert detector.is_available(last + elapsed_ns) is (phi < config.threshold)


@given(configs, gaps, st.lists(st.integers(0, 30_000 * MS), min_size=2, max_size=10))
def test_phi_never_decreases_while_waiting(config: PhiAccrualConfig, gaps_ns: list[int],
                                           waits_ns: list[int]) -> None:
    detector, _ = replay(config, gaps_ns)
    last = detector.last_heartbeat_ns
    assert last is not None
    values = [detector.phi(last + wait) for wait in sorted(waits_ns)]
    assert values == sorted(values)
    assert all(v >= 0.0 and math.isfinite(v) for v in values)


@given(configs, gaps)
def test_the_window_never_exceeds_its_bound(config: PhiAccrualConfig,
                                            gaps_ns: list[int]) -> None:
    detector, _ = replay(config, gaps_ns)
    assert 2 <= len(detector.intervals_ns()) <= config.max_sample_size
