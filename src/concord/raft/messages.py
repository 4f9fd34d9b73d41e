"""Raft's data types: log entries, durable state, snapshots, membership and peer messages.

Every message carries the sender's ``term``, ``sender`` and ``recipient``; the wire layer
(``concord.wire``) maps each class to an append-only integer tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

NodeId = str


class EntryKind(IntEnum):
    """What a log entry carries. Wire values are append-only."""

    COMMAND = 0  # opaque bytes for the state machine
    NOOP = 1  # appended by a new leader to commit entries of earlier terms (§5.4.2, §8)
    MEMBERSHIP = 2  # a new cluster configuration, in force once appended (thesis §4.1)


@dataclass(frozen=True, slots=True)
class Membership:
    """A cluster configuration: voters decide, learners only receive the log."""

    voters: frozenset[NodeId]
    learners: frozenset[NodeId] = frozenset()

    def __post_init__(self) -> None:
        assert not (self.voters & self.learners), "a node is either a voter or a learner"

    @property
    def members(self) -> frozenset[NodeId]:
        return self.voters | self.learners

    def is_voter(self, node: NodeId) -> bool:
        return node in self.voters


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. ``membership`` is set exactly when ``kind`` is MEMBERSHIP."""

    index: int
    term: int
    kind: EntryKind = EntryKind.COMMAND
    data: bytes = b""
    membership: Membership | None = None

    def __post_init__(self) -> None:
        assert (self.kind == EntryKind.MEMBERSHIP) == (self.membership is not None)


@dataclass(frozen=True, slots=True)
class HardState:
    """What must survive a crash besides the log: current term, vote, commit index."""

    term: int = 0
    vote: NodeId | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Where a snapshot sits in the log and the configuration in force at that point."""

    index: int
    term: int
    membership: Membership


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state-machine image covering every entry up to ``meta.index``."""

    meta: SnapshotMeta
    data: bytes


class MembershipChangeOp(IntEnum):
    """One-server-at-a-time membership changes (thesis §4.1). Wire values are append-only."""

    ADD_LEARNER = 0
    PROMOTE = 1  # learner -> voter, only once it has caught up
    REMOVE = 2  # voter or learner


@dataclass(frozen=True, slots=True)
class MembershipChange:
    op: MembershipChangeOp
    node: NodeId


# --- peer messages -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """Leader -> follower: entries after (prev_log_index, prev_log_term); §5.3."""

    term: int
    sender: NodeId
    recipient: NodeId
    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...]
    leader_commit: int


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    """Follower -> leader.

    On success ``match_index`` is the index of the last entry now known to match the leader.
    On rejection ``rejected_index`` is the prev_log_index that did not match and the hint
    (``hint_index``, ``hint_term``) lets the leader skip a whole conflicting term at once:
    the follower's last index if its log is shorter, else the first index the follower holds
    for the conflicting term ``hint_term``.
    """

    term: int
    sender: NodeId
    recipient: NodeId
    success: bool
    match_index: int = 0
    rejected_index: int = 0
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True)
class RequestVote:
    """Candidate -> voter (§5.2). ``pre_vote`` asks without raising anyone's term (thesis §9.6).

    ``transfer`` marks an election started by TimeoutNow, which may ignore leader leases.
    The term of a pre-vote request is the term the candidate would campaign in.
    """

    term: int
    sender: NodeId
    recipient: NodeId
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    term: int
    sender: NodeId
    recipient: NodeId
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Leader -> follower: keeps the follower's election timer quiet and advances its commit.

    ``commit`` is at most what the follower is known to hold. ``read_context`` identifies the
    ReadIndex round this heartbeat confirms leadership for (0 when none).
    """

    term: int
    sender: NodeId
    recipient: NodeId
    commit: int
    read_context: int = 0


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    term: int
    sender: NodeId
    recipient: NodeId
    read_context: int = 0


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """Leader -> follower whose next entry was compacted away (§7)."""

    term: int
    sender: NodeId
    recipient: NodeId
    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leader -> chosen successor: start an election now (thesis §3.10)."""

    term: int
    sender: NodeId
    recipient: NodeId


Message = (
    AppendEntries
    | AppendEntriesResponse
    | RequestVote
    | RequestVoteResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | TimeoutNow
)
