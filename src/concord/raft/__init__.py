"""A sans-IO Raft core: step / tick / ready / advance.

See ``concord.raft.core.RaftNode`` for the state machine and ``concord.raft.ready.Ready`` for
the contract between the core and whatever runs it (the simulator or the daemon).
"""

from concord.raft.config import RaftConfig, ReadMode
from concord.raft.core import RaftNode
from concord.raft.errors import (
    MembershipChangeRejected,
    NotLeader,
    ProposalDropped,
    RaftError,
    TransferInProgress,
)
from concord.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Membership,
    MembershipChange,
    MembershipChangeOp,
    Message,
    RequestVote,
    RequestVoteResponse,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
)
from concord.raft.ready import PersistedState, ReadState, Ready, Role, SoftState

__all__ = [
    "AppendEntries",
    "AppendEntriesResponse",
    "Entry",
    "EntryKind",
    "HardState",
    "Heartbeat",
    "HeartbeatResponse",
    "InstallSnapshot",
    "Membership",
    "MembershipChange",
    "MembershipChangeOp",
    "MembershipChangeRejected",
    "Message",
    "NotLeader",
    "PersistedState",
    "ProposalDropped",
    "RaftConfig",
    "RaftError",
    "RaftNode",
    "ReadMode",
    "ReadState",
    "Ready",
    "RequestVote",
    "RequestVoteResponse",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
    "TimeoutNow",
    "TransferInProgress",
]
