"""What a leader knows about each follower's log, and its flow control (etcd's model).

PROBE: we do not know where the follower's log ends; send one append, wait for the answer.
REPLICATE: the follower is in step; stream appends optimistically, at most
``max_inflight`` unacknowledged at once (pipelining with a bounded window).
SNAPSHOT: the follower needs a snapshot; send nothing else until it is acknowledged.
"""

from __future__ import annotations

from collections import deque
from enum import Enum


class ReplicationState(Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = (
        "acked_round",
        "inflight",
        "match",
        "match_at_heartbeat",
        "max_inflight",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ReplicationState.PROBE
        self.probe_sent = False
        self.inflight: deque[int] = deque()
        self.max_inflight = max_inflight
        self.pending_snapshot = 0
        self.recent_active = False
        self.acked_round = 0  # the latest heartbeat round this follower answered
        self.match_at_heartbeat = 0  # match when the previous heartbeat answer came

    def is_paused(self) -> bool:
        match self.state:
            case ReplicationState.PROBE:
                return self.probe_sent
            case ReplicationState.REPLICATE:
                return len(self.inflight) >= self.max_inflight
            case ReplicationState.SNAPSHOT:
                return True

    def become_probe(self) -> None:
        if self.state is ReplicationState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ReplicationState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = ReplicationState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self, snapshot_index: int) -> None:
        self.state = ReplicationState.SNAPSHOT
        self.pending_snapshot = snapshot_index
        self.probe_sent = False
        self.inflight.clear()

    def sent_entries(self, last_index: int) -> None:
        """An append carrying entries up to ``last_index`` went out."""
        match self.state:
            case ReplicationState.REPLICATE:
                if last_index >= self.next:
                    self.next = last_index + 1
                    self.inflight.append(last_index)
            case ReplicationState.PROBE:
                self.probe_sent = True
            case ReplicationState.SNAPSHOT:
                raise AssertionError("no appends while a snapshot is pending")

    def acknowledged(self, match_index: int) -> bool:
        """The follower holds everything up to ``match_index``. True if that was news."""
        while self.inflight and self.inflight[0] <= match_index:
            self.inflight.popleft()
        if match_index <= self.match:
            return False
        self.match = match_index
        self.next = max(self.next, match_index + 1)
        return True

    def rejected(self, rejected_index: int, next_guess: int) -> bool:
        """The follower refused an append at ``rejected_index``. False if the answer is stale."""
        if self.state is ReplicationState.REPLICATE:
            if rejected_index <= self.match:
                return False
            self.become_probe()
            self.next = max(self.match + 1, min(next_guess, rejected_index))
            return True
        if self.next - 1 != rejected_index:
            return False
        self.next = max(self.match + 1, min(next_guess, rejected_index))
        self.probe_sent = False
        return True
