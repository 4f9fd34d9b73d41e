"""The phi accrual failure detector (Hayashibara et al., SRDS 2004) with Akka's settings.

Instead of a yes/no verdict it outputs a suspicion level that grows the longer a heartbeat
is overdue::

    phi(t) = -log10(P(a heartbeat arrives later than t since the last one))

where the inter-arrival time is modelled as a normal distribution fitted to the last
``max_sample_size`` intervals. phi = 8 means "one chance in 10^8 that the next heartbeat
is still on its way"; the peer is considered unavailable from ``threshold`` on.

Akka's refinements (research notes §2.2, ``akka-remote/.../PhiAccrualFailureDetector.scala``,
defaults from ``akka-cluster/reference.conf``), all kept here:

- ``acceptable_heartbeat_pause`` (3 s) is added to the mean, so a pause that long (a GC, a
  loaded machine) costs almost nothing;
- the standard deviation is floored at ``min_std_deviation`` (100 ms), so perfectly regular
  heartbeats do not make the detector hair-trigger;
- the first heartbeat seeds the history with two samples ``mu ± mu/4``, ``mu`` being
  ``first_heartbeat_estimate`` (the expected heartbeat interval, 1 s);
- an interval that ends after the peer was already unavailable is not recorded, so a long
  outage does not teach the detector that outages are normal.

With perfectly regular 1 s heartbeats (standard deviation at its 100 ms floor) a silent peer
crosses phi = 8 about 4.56 s after its last heartbeat (1 s mean + 3 s pause + 5.61 standard
deviations); Akka's comment rounds this up to "about 5.5 s" for real, jittery heartbeats.

The normal tail is computed exactly with ``math.erfc`` (Akka uses a logistic approximation
whose tail is off by orders of magnitude past about three standard deviations); far in the
tail, where ``erfc`` underflows, the asymptotic expansion of Mills' ratio takes over, so
phi is always finite.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

_SQRT2 = math.sqrt(2.0)
_LN10 = math.log(10.0)
_LN_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
# from this many standard deviations on, the tail comes from the asymptotic expansion
ASYMPTOTIC_FROM_SIGMAS = 30.0


@dataclass(frozen=True, slots=True)
class PhiAccrualConfig:
    """Akka Cluster's defaults (``akka.cluster.failure-detector``)."""

    threshold: float = 8.0
    max_sample_size: int = 1000
    min_std_deviation_ns: int = 100_000_000
    acceptable_heartbeat_pause_ns: int = 3_000_000_000
    first_heartbeat_estimate_ns: int = 1_000_000_000

    def __post_init__(self) -> None:
        if self.threshold <= 0:
            raise ValueError("threshold must be positive")
        if self.max_sample_size < 2:
            raise ValueError("max_sample_size must be >= 2 (the first heartbeat seeds two)")
        if self.min_std_deviation_ns <= 0:
            raise ValueError("min_std_deviation_ns must be positive")
        if self.acceptable_heartbeat_pause_ns < 0:
            raise ValueError("acceptable_heartbeat_pause_ns must be >= 0")
        if self.first_heartbeat_estimate_ns <= 0:
            raise ValueError("first_heartbeat_estimate_ns must be positive")


def phi_of(elapsed_ns: float, mean_ns: float, std_deviation_ns: float) -> float:
    """-log10 of the probability that a normal(mean, std) interval exceeds ``elapsed_ns``."""
    assert std_deviation_ns > 0
    y = (elapsed_ns - mean_ns) / std_deviation_ns
    if y < ASYMPTOTIC_FROM_SIGMAS:
        tail = 0.5 * math.erfc(y / _SQRT2)
        assert tail > 0.0
        return max(0.0, -math.log10(tail))
    # Q(y) = pdf(y) / y * (1 - 1/y^2 + 3/y^4 - ...), in logs to stay finite
    inverse_square = 1.0 / (y * y)
    ln_tail = (-0.5 * y * y - _LN_SQRT_2PI - math.log(y)
               + math.log1p(-inverse_square + 3.0 * inverse_square * inverse_square))
    return -ln_tail / _LN10


class PhiAccrualDetector:
    """Watches one peer's heartbeats. Before the first heartbeat phi is 0 (not monitoring)."""

    __slots__ = ("_intervals", "_last_heartbeat_ns", "_squared_sum", "_sum", "config")

    def __init__(self, config: PhiAccrualConfig | None = None) -> None:
        self.config = config if config is not None else PhiAccrualConfig()
        self._intervals: deque[int] = deque()
        self._sum = 0
        self._squared_sum = 0
        self._last_heartbeat_ns: int | None = None

    @property
    def is_monitoring(self) -> bool:
        return self._last_heartbeat_ns is not None

    @property
    def last_heartbeat_ns(self) -> int | None:
        return self._last_heartbeat_ns

    def intervals_ns(self) -> tuple[int, ...]:
        """The recorded inter-arrival times, oldest first (seed samples included)."""
        return tuple(self._intervals)

    def heartbeat(self, now_ns: int) -> None:
        """A heartbeat arrived at ``now_ns``."""
        last = self._last_heartbeat_ns
        if last is None:
            mean = self.config.first_heartbeat_estimate_ns
            self._record(mean - mean // 4)
            self._record(mean + mean // 4)
        else:
            assert now_ns >= last, "heartbeat times must not go backwards"
            if self.is_available(now_ns):
                self._record(now_ns - last)
        self._last_heartbeat_ns = now_ns

    def phi(self, now_ns: int) -> float:
        """The suspicion level at ``now_ns``; 0 before the first heartbeat."""
        last = self._last_heartbeat_ns
        if last is None:
            return 0.0
        return phi_of(now_ns - last,
                      self.mean_ns() + self.config.acceptable_heartbeat_pause_ns,
                      max(self.std_deviation_ns(), float(self.config.min_std_deviation_ns)))

    def is_available(self, now_ns: int) -> bool:
        return self.phi(now_ns) < self.config.threshold

    def mean_ns(self) -> float:
        """The mean recorded interval (0 before the first heartbeat)."""
        count = len(self._intervals)
        return self._sum / count if count else 0.0

    def std_deviation_ns(self) -> float:
        """The population standard deviation of the recorded intervals (exact integer sums)."""
        count = len(self._intervals)
        if not count:
            return 0.0
        scaled_variance = count * self._squared_sum - self._sum * self._sum
        assert scaled_variance >= 0
        return math.sqrt(scaled_variance) / count

    def _record(self, interval_ns: int) -> None:
        if len(self._intervals) == self.config.max_sample_size:
            evicted = self._intervals.popleft()
            self._sum -= evicted
            self._squared_sum -= evicted * evicted
        self._intervals.append(interval_ns)
        self._sum += interval_ns
        self._squared_sum += interval_ns * interval_ns
