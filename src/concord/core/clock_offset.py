"""NTP-style clock offset estimation between this node and its peers.

Every probe round trip yields four timestamps: ``t1`` we send (our clock), ``t2`` the peer
receives and ``t3`` it replies (its clock), ``t4`` we receive (our clock). Then (RFC 5905;
research notes §6.5)::

    offset = ((t2 - t1) + (t3 - t4)) / 2     # the peer's clock minus ours
    delay  = (t4 - t1) - (t3 - t2)           # time spent on the network, both ways

The offset is exact when both directions take equally long; otherwise it is off by half
the asymmetry, which is at most ``delay / 2``. So the estimator keeps the last few samples
per peer and publishes the one with the lowest delay, with ``uncertainty = delay / 2``:
the true offset lies in ``[offset - uncertainty, offset + uncertainty]`` whatever the
asymmetry (assuming neither clock drifts noticeably during one round trip).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

# NTP's clock filter keeps the last 8 samples (research notes §8)
DEFAULT_WINDOW = 8


@dataclass(frozen=True, slots=True)
class OffsetSample:
    """One round trip. ``t1``/``t4`` are read on our clock, ``t2``/``t3`` on the peer's."""

    t1_ns: int
    t2_ns: int
    t3_ns: int
    t4_ns: int

    @property
    def offset_ns(self) -> int:
        return ((self.t2_ns - self.t1_ns) + (self.t3_ns - self.t4_ns)) // 2

    @property
    def delay_ns(self) -> int:
        """Round-trip network time; clamped at 0 (a tiny negative value is clock jitter)."""
        return max(0, (self.t4_ns - self.t1_ns) - (self.t3_ns - self.t2_ns))


@dataclass(frozen=True, slots=True)
class OffsetEstimate:
    """A peer's clock minus ours, within ``± uncertainty_ns``."""

    offset_ns: int
    uncertainty_ns: int
    delay_ns: int
    samples: int  # how many samples the window held when this was computed


class ClockOffsetEstimator:
    """The lowest-delay sample of each peer's last ``window`` round trips."""

    __slots__ = ("_samples", "version", "window")

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._samples: dict[str, deque[OffsetSample]] = {}
        self.version = 0
        """Bumped by every ``add`` and ``forget``: estimates cannot have moved while it
        stays the same."""

    def add(self, peer: str, t1_ns: int, t2_ns: int, t3_ns: int, t4_ns: int) -> OffsetEstimate:
        """Record one round trip with ``peer``; returns the peer's new estimate."""
        if t4_ns < t1_ns or t3_ns < t2_ns:
            raise ValueError("a round trip must end after it starts on each clock")
        window = self._samples.setdefault(peer, deque(maxlen=self.window))
        window.append(OffsetSample(t1_ns, t2_ns, t3_ns, t4_ns))
        self.version += 1
        estimate = self.estimate(peer)
        assert estimate is not None
        return estimate

    def estimate(self, peer: str) -> OffsetEstimate | None:
        """The current estimate for ``peer``; None before the first sample."""
        window = self._samples.get(peer)
        if not window:
            return None
        # lowest delay wins; among equals the most recent (iterate newest first)
        best = min(reversed(window), key=lambda s: s.delay_ns)
        return OffsetEstimate(best.offset_ns, (best.delay_ns + 1) // 2, best.delay_ns,
                              len(window))

    def estimates(self) -> dict[str, OffsetEstimate]:
        """Every peer's estimate, by peer."""
        found = {peer: self.estimate(peer) for peer in sorted(self._samples)}
        return {peer: e for peer, e in found.items() if e is not None}

    def forget(self, peer: str) -> None:
        self._samples.pop(peer, None)
        self.version += 1

    def far_peers(self, max_offset_ns: int) -> list[str]:
        """Peers whose clock is surely more than ``max_offset_ns`` away from ours."""
        return [peer for peer, e in self.estimates().items()
                if abs(e.offset_ns) - e.uncertainty_ns > max_offset_ns]

    def out_of_sync(self, max_offset_ns: int, peers: Iterable[str]) -> bool:
        """True when our clock is surely too far from at least half of ``peers``.

        CockroachDB's rule (research notes §6.4): a node off from at least half of the other
        nodes must stop serving anything that relies on clocks. Pass 80 % of the configured
        maximum offset to act before the bound is actually crossed, as CockroachDB does.
        """
        known = set(peers)
        if not known:
            return False
        far = known.intersection(self.far_peers(max_offset_ns))
        return 2 * len(far) >= len(known)
