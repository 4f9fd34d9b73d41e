"""Raft core settings. Time is counted in ticks; the shell decides how long a tick is."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from concord.raft.messages import NodeId


class ReadMode(Enum):
    """How the leader confirms it is still the leader before serving a linearizable read.

    SAFE (ReadIndex, thesis §6.4): one heartbeat round to a majority per batch of reads.
    LEASE (thesis §6.4.1): no round trip while the leader heard from a majority within
    ``lease_ticks``. It assumes that no node's clock runs faster than the leader's by more
    than ``max_clock_drift`` (a fraction, e.g. 0.1 = 10 %): a follower that could vote for a
    new leader waits at least ``election_timeout_ticks`` of *its* ticks, and the lease is
    shortened by that drift so that it ends before any new leader can exist. Needs
    ``check_quorum``.
    """

    SAFE = "safe"
    LEASE = "lease"


@dataclass(frozen=True, slots=True)
class RaftConfig:
    node_id: NodeId
    election_timeout_ticks: int = 10
    heartbeat_interval_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    read_mode: ReadMode = ReadMode.SAFE
    max_clock_drift: float = 0.1
    max_entries_per_append: int = 256
    max_bytes_per_append: int = 1 << 20
    max_inflight_appends: int = 64
    max_uncommitted_entries: int = 10_000
    # a learner may be promoted once it is at most this many entries behind the leader
    promotion_catchup_entries: int = 64

    def __post_init__(self) -> None:
        if self.heartbeat_interval_ticks < 1:
            raise ValueError("heartbeat_interval_ticks must be >= 1")
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks:
            raise ValueError("election_timeout_ticks must exceed heartbeat_interval_ticks")
        if self.read_mode is ReadMode.LEASE and not self.check_quorum:
            raise ValueError("read_mode LEASE requires check_quorum")
        if not 0.0 <= self.max_clock_drift < 0.5:
            raise ValueError("max_clock_drift must be in [0, 0.5)")
        for name in ("max_entries_per_append", "max_bytes_per_append", "max_inflight_appends",
                     "max_uncommitted_entries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    @property
    def lease_ticks(self) -> int:
        """How long a leader may serve lease reads after hearing from a majority."""
        return int(self.election_timeout_ticks * (1.0 - self.max_clock_drift))
