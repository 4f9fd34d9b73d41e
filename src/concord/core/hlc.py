"""A hybrid logical clock (Kulkarni et al., OPODIS 2014): timestamps that follow causality
and stay close to physical time.

A timestamp is ``(wall_ns, logical)``: ``wall_ns`` is the largest physical time this node
has seen (its own clock or a peer's timestamp), ``logical`` orders events that share it.
Physical time is an input (``physical_ns``), so the clock is deterministic under test.

The max-offset guard (CockroachDB's ``--max-offset``, default 500 ms; research notes
§6.3-6.4) rejects a remote timestamp more than ``max_offset_ns`` ahead of our physical
clock, so one peer with a runaway clock cannot drag every clock in the cluster forward.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_OFFSET_NS = 500_000_000


@dataclass(frozen=True, slots=True, order=True)
class HLCTimestamp:
    """Ordered by ``wall_ns`` first, then ``logical``."""

    wall_ns: int
    logical: int = 0

    def __post_init__(self) -> None:
        assert self.logical >= 0, "the logical counter is never negative"


class ClockOffsetExceeded(Exception):
    """A remote timestamp is further ahead of our physical clock than the guard allows."""

    def __init__(self, remote_wall_ns: int, physical_ns: int, max_offset_ns: int) -> None:
        ahead_ns = remote_wall_ns - physical_ns
        super().__init__(f"remote timestamp is {ahead_ns} ns ahead of the local clock "
                         f"(max offset {max_offset_ns} ns)")
        self.remote_wall_ns = remote_wall_ns
        self.physical_ns = physical_ns
        self.max_offset_ns = max_offset_ns


class HybridLogicalClock:
    """One node's hybrid logical clock. Every timestamp it returns is larger than the last."""

    __slots__ = ("_last", "max_offset_ns")

    def __init__(self, max_offset_ns: int = DEFAULT_MAX_OFFSET_NS) -> None:
        if max_offset_ns <= 0:
            raise ValueError(f"max_offset_ns must be positive, got {max_offset_ns}")
        self.max_offset_ns = max_offset_ns
        self._last = HLCTimestamp(0, 0)

    @property
    def last(self) -> HLCTimestamp:
        """The last timestamp handed out (``(0, 0)`` before the first)."""
        return self._last

    def now(self, physical_ns: int) -> HLCTimestamp:
        """A timestamp for a local event or a send."""
        last = self._last
        if physical_ns > last.wall_ns:
            stamp = HLCTimestamp(physical_ns, 0)
        else:
            stamp = HLCTimestamp(last.wall_ns, last.logical + 1)
        return self._advance(stamp)

    def update(self, remote: HLCTimestamp, physical_ns: int) -> HLCTimestamp:
        """A receive of a message stamped ``remote``: a timestamp after both it and us.

        Raises ``ClockOffsetExceeded`` (and leaves the clock unchanged) when ``remote`` is
        more than ``max_offset_ns`` ahead of ``physical_ns``.
        """
        if remote.wall_ns - physical_ns > self.max_offset_ns:
            raise ClockOffsetExceeded(remote.wall_ns, physical_ns, self.max_offset_ns)
        last = self._last
        wall_ns = max(last.wall_ns, remote.wall_ns, physical_ns)
        if wall_ns == last.wall_ns == remote.wall_ns:
            logical = max(last.logical, remote.logical) + 1
        elif wall_ns == last.wall_ns:
            logical = last.logical + 1
        elif wall_ns == remote.wall_ns:
            logical = remote.logical + 1
        else:
            logical = 0
        stamp = self._advance(HLCTimestamp(wall_ns, logical))
        assert stamp > remote
        return stamp

    def _advance(self, stamp: HLCTimestamp) -> HLCTimestamp:
        assert stamp > self._last, "hybrid logical clock went backwards"
        self._last = stamp
        return stamp
