"""Raft's safety properties (paper Figure 3), checked incrementally after every step.

- Election Safety: at most one leader per term.
- Leader Append-Only: a leader never overwrites or deletes entries in its log.
- Log Matching: entries with the same index and term hold the same command, and the logs
  before them are identical. Checked inductively: every persisted (index, term) must always
  carry the same data and follow the same previous term.
- Leader Completeness: a committed entry is in the log of every later leader.
- State Machine Safety: no two nodes apply different entries at the same index.

A violation raises ``InvariantViolation`` naming the property and what was seen.
"""

from __future__ import annotations

from dataclasses import dataclass

from concord.raft.core import RaftNode
from concord.raft.messages import Entry, EntryKind, NodeId
from concord.raft.ready import Role


class InvariantViolation(AssertionError):
    def __init__(self, prop: str, detail: str) -> None:
        super().__init__(f"{prop}: {detail}")
        self.prop = prop
        self.detail = detail


@dataclass(frozen=True, slots=True)
class _EntryFacts:
    term: int
    kind: EntryKind
    data: bytes
    prev_term: int


@dataclass(slots=True)
class _LeaderView:
    term: int
    last_index: int
    last_term: int


class InvariantChecker:
    def __init__(self) -> None:
        self.leader_of_term: dict[int, NodeId] = {}
        self._entries: dict[tuple[int, int], _EntryFacts] = {}
        self.committed: dict[int, int] = {}  # index -> term, known committed anywhere
        self._applied: dict[int, tuple[int, bytes]] = {}
        self._leaders: dict[NodeId, _LeaderView] = {}
        self._commit_seen: dict[NodeId, int] = {}
        self.checks = 0

    # --- hooks from the nodes ------------------------------------------------------------

    def on_persisted(self, node_id: NodeId, raft: RaftNode, entries: tuple[Entry, ...]) -> None:
        """Log Matching, for every entry a node made durable."""
        for entry in entries:
            prev_term = raft.log.term_at(entry.index - 1)
            if prev_term is None:
                continue  # compacted away since: covered by the earlier check of that entry
            facts = _EntryFacts(entry.term, entry.kind, entry.data, prev_term)
            known = self._entries.setdefault((entry.index, entry.term), facts)
            if known != facts:
                raise InvariantViolation(
                    "Log Matching",
                    f"{node_id} holds entry {entry.index}@{entry.term} that differs from "
                    f"another node's copy ({known} vs {facts})")

    def on_applied(self, node_id: NodeId, entry: Entry) -> None:
        """State Machine Safety."""
        seen = self._applied.setdefault(entry.index, (entry.term, entry.data))
        if seen != (entry.term, entry.data):
            raise InvariantViolation(
                "State Machine Safety",
                f"{node_id} applied {entry.index}@{entry.term} but another node applied "
                f"{entry.index}@{seen[0]} there")
        self._record_committed(node_id, entry.index, entry.term)

    # --- after every step ---------------------------------------------------------------

    def check_node(self, node_id: NodeId, raft: RaftNode) -> None:
        self.checks += 1
        self._check_commit(node_id, raft)
        if raft.role is Role.LEADER:
            self._check_leader(node_id, raft)
        else:
            self._leaders.pop(node_id, None)

    def forget(self, node_id: NodeId) -> None:
        """The node crashed: its volatile views go with it."""
        self._leaders.pop(node_id, None)
        self._commit_seen.pop(node_id, None)

    def _check_commit(self, node_id: NodeId, raft: RaftNode) -> None:
        commit = raft.commit_index
        seen = self._commit_seen.get(node_id, raft.log.offset_index)
        for index in range(max(seen, raft.log.offset_index) + 1, commit + 1):
            term = raft.log.term_at(index)
            assert term is not None
            self._record_committed(node_id, index, term)
        self._commit_seen[node_id] = max(seen, commit)

    def _record_committed(self, node_id: NodeId, index: int, term: int) -> None:
        known = self.committed.setdefault(index, term)
        if known != term:
            raise InvariantViolation(
                "State Machine Safety",
                f"{node_id} committed {index}@{term} but {index}@{known} was committed before")

    def _check_leader(self, node_id: NodeId, raft: RaftNode) -> None:
        term = raft.term
        holder = self.leader_of_term.setdefault(term, node_id)
        if holder != node_id:
            raise InvariantViolation("Election Safety",
                                     f"{holder} and {node_id} were both leader in term {term}")
        log = raft.log
        view = self._leaders.get(node_id)
        if view is None or view.term != term:
            self._check_completeness(node_id, raft)
        elif log.last_index < view.last_index or log.term_at(view.last_index) not in (
                view.last_term, None):
            raise InvariantViolation(
                "Leader Append-Only",
                f"{node_id} (leader, term {term}) had {view.last_index}@{view.last_term}; "
                f"now its log ends at {log.last_index}")
        self._leaders[node_id] = _LeaderView(term, log.last_index, log.last_term)

    def _check_completeness(self, node_id: NodeId, raft: RaftNode) -> None:
        """Leader Completeness: the new leader holds every entry known to be committed."""
        for index, term in self.committed.items():
            if index <= raft.log.offset_index:
                continue  # inside its snapshot
            held = raft.log.term_at(index)
            if held != term:
                raise InvariantViolation(
                    "Leader Completeness",
                    f"{node_id} became leader of term {raft.term} without committed entry "
                    f"{index}@{term} (it holds {'nothing' if held is None else f'term {held}'})")
