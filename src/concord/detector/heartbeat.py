"""The simplest failure detector: a peer is suspected once no heartbeat arrived from it for
``timeout_ns``. It is the baseline the phi accrual detector is compared against: one fixed
number has to fit every network, so it is either slow to notice a crash or quick to accuse
a peer that was only slow.
"""

from __future__ import annotations


class HeartbeatDetector:
    """Last-heartbeat times per peer. A peer never heard from is not available."""

    __slots__ = ("_last_heartbeat_ns", "timeout_ns")

    def __init__(self, timeout_ns: int) -> None:
        if timeout_ns <= 0:
            raise ValueError(f"timeout_ns must be positive, got {timeout_ns}")
        self.timeout_ns = timeout_ns
        self._last_heartbeat_ns: dict[str, int] = {}

    def heartbeat(self, peer: str, now_ns: int) -> None:
        """A heartbeat (or any sign of life) from ``peer`` arrived at ``now_ns``."""
        previous = self._last_heartbeat_ns.get(peer)
        if previous is None or now_ns > previous:
            self._last_heartbeat_ns[peer] = now_ns

    def last_heartbeat_ns(self, peer: str) -> int | None:
        return self._last_heartbeat_ns.get(peer)

    def is_available(self, peer: str, now_ns: int) -> bool:
        """True while the last heartbeat from ``peer`` is at most ``timeout_ns`` old."""
        last = self._last_heartbeat_ns.get(peer)
        return last is not None and now_ns - last <= self.timeout_ns

    def suspects(self, now_ns: int) -> list[str]:
        """Every peer heard from once whose heartbeats stopped, sorted."""
        return sorted(peer for peer in self._last_heartbeat_ns
                      if not self.is_available(peer, now_ns))

    def forget(self, peer: str) -> None:
        """Stop watching ``peer`` (it left the cluster)."""
        self._last_heartbeat_ns.pop(peer, None)
