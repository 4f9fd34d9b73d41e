"""The Ready contract: everything the shell must do, in this order, before ``advance``.

0. **Send** ``early_messages`` at once, before or while persisting: they are a leader's
   appends and heartbeats, which reveal nothing not yet durable (the leader counts its own
   entries only after ``advance``; thesis §10.2.1 — the leader's disk write runs in
   parallel with its followers').
1. **Persist** ``snapshot`` (if any), then ``entries`` (if any: first drop every stored entry
   at or after ``entries[0].index``), then ``hard_state`` (if any). When ``must_sync`` is
   true these writes must be durable (fsync) before step 2; otherwise they may stay in the
   page cache (they only move the commit index).
2. **Send** ``messages`` (any order, any loss: Raft tolerates both). These may acknowledge
   what step 1 wrote, so never before it.
3. **Apply** ``snapshot`` to the state machine (if any), then ``committed_entries`` in
   order. A MEMBERSHIP or NOOP entry is applied as "nothing to do" by the state machine.
   When there is no snapshot, the committed entries may be applied while step 1's writes
   are still being made durable: they are already durable on a quorum and never depend on
   this Ready's own writes (the leader counts its own entries only after ``advance``).
4. Serve ``read_states`` once the applied index reaches each one's index; fail the reads in
   ``dropped_reads`` (leadership was lost: retry elsewhere, nothing happened).
5. Call ``advance(ready)``.

``soft_state`` is set when role or leader changed; ``events`` are for people (logs,
transcripts) and have no effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from concord.core.trace import TraceEvent
from concord.raft.messages import Entry, HardState, Message, NodeId, Snapshot


class Role(Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile facts worth reporting when they change."""

    role: Role
    leader: NodeId | None
    term: int


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the applied index reaches ``index``."""

    request_id: int
    index: int


@dataclass(frozen=True, slots=True)
class PersistedState:
    """What a node finds on its disk at start: the input to ``RaftNode.restore``."""

    hard_state: HardState
    snapshot: Snapshot | None
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class Ready:
    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None
    must_sync: bool
    early_messages: tuple[Message, ...]
    messages: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]
    dropped_reads: tuple[int, ...]
    soft_state: SoftState | None
    events: tuple[TraceEvent, ...]

    def is_empty(self) -> bool:
        return not (
            self.hard_state
            or self.entries
            or self.snapshot
            or self.messages
            or self.early_messages
            or self.committed_entries
            or self.read_states
            or self.dropped_reads
            or self.soft_state
            or self.events
        )
