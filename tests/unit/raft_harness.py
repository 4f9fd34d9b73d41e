"""A tiny deterministic Raft cluster for tests: nodes, a disk per node, a hand-driven network.

The harness follows the Ready contract (persist -> send -> apply -> advance) for every node.
Each node's disk keeps exactly what its Ready asked to persist, so a restart rebuilds the node
from it. Its state machine is the map index -> entry it applied; snapshots carry an image of
that map. Messages wait in one FIFO queue until a test delivers or drops them; a partition
drops every message between nodes in different groups. Nothing here reads a clock or the
global random generator: a seed and the test's calls decide everything.

The harness also records, for the safety checks of the tests, every node seen as leader in
each term and every entry applied at each index.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from concord.raft import (
    Entry,
    EntryKind,
    HardState,
    Membership,
    Message,
    PersistedState,
    RaftConfig,
    RaftNode,
    ReadState,
    Ready,
    RequestVote,
    RequestVoteResponse,
    Snapshot,
    SnapshotMeta,
)

MessagePredicate = Callable[[Message], bool]
MAX_SETTLE_DELIVERIES = 100_000


def is_vote_traffic(msg: Message) -> bool:
    return isinstance(msg, RequestVote | RequestVoteResponse)


def command_entries(terms: Sequence[int], first_index: int = 1) -> tuple[Entry, ...]:
    """COMMAND entries with the given terms from ``first_index`` on; data names index/term."""
    indexed = enumerate(terms, start=first_index)
    return tuple(Entry(i, t, EntryKind.COMMAND, f"{i}/{t}".encode()) for i, t in indexed)


def persisted_state(voters: Iterable[str], terms: Sequence[int], *, term: int,
                    commit: int = 0, vote: str | None = None) -> PersistedState:
    """A disk image: the founding configuration, a log with ``terms``, and a hard state."""
    assert all(t <= term for t in terms), "a log cannot hold entries from a future term"
    snapshot = Snapshot(SnapshotMeta(0, 0, Membership(frozenset(voters))), b"")
    return PersistedState(HardState(term, vote, commit), snapshot, command_entries(terms))


@dataclass(slots=True)
class Disk:
    """What a node's Readies asked to persist, as a restart finds it."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    def persist(self, ready: Ready) -> None:
        if ready.snapshot is not None:
            self.snapshot = ready.snapshot
            self.entries = []  # §7: an installed snapshot replaces the whole log
        if ready.entries:
            first = ready.entries[0].index
            kept = [e for e in self.entries if e.index < first]
            base = self.snapshot.meta.index if self.snapshot else 0
            assert (kept[-1].index if kept else base) == first - 1, "persisted log has a gap"
            self.entries = kept + list(ready.entries)
        if ready.hard_state is not None:
            self.hard_state = ready.hard_state

    def store_snapshot(self, snapshot: Snapshot) -> None:
        """The application saved the snapshot ``RaftNode.compact`` returned; older entries go."""
        self.snapshot = snapshot
        self.entries = [e for e in self.entries if e.index > snapshot.meta.index]

    def load(self) -> PersistedState:
        return PersistedState(self.hard_state, self.snapshot, tuple(self.entries))


class Cluster:
    """Raft nodes wired to an in-memory network that the test drives by hand."""

    def __init__(self, ids: Iterable[str], *, seed: int = 0,
                 persisted: Mapping[str, PersistedState] | None = None,
                 **config: Any) -> None:
        founders = list(ids)
        self.seed = seed
        self.template = RaftConfig(node_id="template", **config)
        self.nodes: dict[str, RaftNode] = {}
        self.disks: dict[str, Disk] = {}
        self.machines: dict[str, dict[int, Entry]] = {}
        self.read_states: dict[str, list[ReadState]] = {}
        self.dropped_reads: dict[str, list[int]] = {}
        self.queue: list[Message] = []
        self.sent: list[Message] = []
        self.leaders_by_term: dict[int, set[str]] = {}
        self.applied_by_index: dict[int, set[Entry]] = {}
        self._images: dict[bytes, dict[int, Entry]] = {b"": {}}
        self._groups: dict[str, int] = {}
        self._muted: set[str] = set()
        membership = Membership(frozenset(founders))
        for node_id in founders:
            state = (persisted or {}).get(node_id)
            if state is None:
                node = RaftNode.bootstrap(self.config(node_id), self._rng(node_id), membership)
                self._add(node, Disk())
            else:
                disk = Disk(state.hard_state, state.snapshot, list(state.entries))
                self._add(RaftNode(self.config(node_id), self._rng(node_id), state), disk)

    # --- building ------------------------------------------------------------------------

    def config(self, node_id: str) -> RaftConfig:
        return replace(self.template, node_id=node_id)

    def _rng(self, node_id: str) -> random.Random:
        return random.Random(f"{self.seed}/{node_id}/{len(self.sent)}")

    def _add(self, node: RaftNode, disk: Disk) -> None:
        node_id = node.id
        self.nodes[node_id] = node
        self.disks[node_id] = disk
        snapshot_data = disk.snapshot.data if disk.snapshot else b""
        self.machines[node_id] = dict(self._images[snapshot_data])
        self.read_states.setdefault(node_id, [])
        self.dropped_reads.setdefault(node_id, [])
        self._groups.setdefault(node_id, 0)
        self.process(node_id)

    def add_node(self, node_id: str) -> RaftNode:
        """A new server joining an existing cluster: empty configuration, silent until added."""
        assert node_id not in self.nodes
        empty = Membership(frozenset())
        self._add(RaftNode.bootstrap(self.config(node_id), self._rng(node_id), empty), Disk())
        return self.nodes[node_id]

    def restart(self, node_id: str) -> RaftNode:
        """Crash ``node_id`` and start it again from its disk; in-flight messages to it stay."""
        disk = self.disks[node_id]
        node = RaftNode(self.config(node_id), self._rng(node_id), disk.load())
        self._add(node, disk)
        return node

    def __getitem__(self, node_id: str) -> RaftNode:
        return self.nodes[node_id]

    # --- the Ready loop ------------------------------------------------------------------

    def process(self, node_id: str) -> None:
        """Handle every Ready ``node_id`` has, in the contract's order."""
        node = self.nodes[node_id]
        self._observe(node_id)
        while node.has_ready():
            self.apply_ready(node_id, node.ready())

    def apply_ready(self, node_id: str, ready: Ready) -> None:
        """Persist, send, apply, record reads, then advance: one Ready of ``node_id``."""
        node = self.nodes[node_id]
        if ready.entries or ready.snapshot is not None:
            assert ready.must_sync, "new entries or a snapshot must be fsynced before sending"
        self.disks[node_id].persist(ready)
        if node_id not in self._muted:
            for msg in (*ready.early_messages, *ready.messages):
                assert msg.sender == node_id
                self.sent.append(msg)
                if self.can_talk(msg.sender, msg.recipient):
                    self.queue.append(msg)
        machine = self.machines[node_id]
        applied = node.applied
        if ready.snapshot is not None:
            self.machines[node_id] = machine = dict(self._images[ready.snapshot.data])
            applied = max(applied, ready.snapshot.meta.index)
        for entry in ready.committed_entries:
            assert entry.index == applied + 1, "committed entries must follow the applied index"
            applied = entry.index
            machine[entry.index] = entry
            self.applied_by_index.setdefault(entry.index, set()).add(entry)
        self.read_states[node_id].extend(ready.read_states)
        self.dropped_reads[node_id].extend(ready.dropped_reads)
        node.advance(ready)
        self._observe(node_id)

    def _observe(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.is_leader:
            self.leaders_by_term.setdefault(node.term, set()).add(node_id)

    # --- the network ---------------------------------------------------------------------

    def can_talk(self, a: str, b: str) -> bool:
        return b in self.nodes and self._groups[a] == self._groups[b]

    def isolate(self, *node_ids: str) -> None:
        """Cut each of ``node_ids`` off from every other node."""
        for node_id in node_ids:
            self._groups[node_id] = max(self._groups.values()) + 1

    def partition(self, *groups: Iterable[str]) -> None:
        """Nodes talk only within their group; nodes not named form one more group."""
        named: set[str] = set()
        for number, group in enumerate(groups, start=1):
            for node_id in group:
                self._groups[node_id] = number
                named.add(node_id)
        for node_id in self.nodes:
            if node_id not in named:
                self._groups[node_id] = 0

    def heal(self) -> None:
        for node_id in self._groups:
            self._groups[node_id] = 0

    def deliver(self, predicate: MessagePredicate | None = None) -> int:
        """Deliver, in order, the queued messages that match; returns how many arrived."""
        chosen = [m for m in self.queue if predicate is None or predicate(m)]
        self.queue = [m for m in self.queue if not (predicate is None or predicate(m))]
        delivered = 0
        for msg in chosen:
            self.queue.insert(0, msg)
            delivered += self.deliver_at(0)
        return delivered

    def settle(self, predicate: MessagePredicate | None = None) -> int:
        """Deliver matching messages, and the answers they cause, until none is left."""
        total = 0
        while any(predicate is None or predicate(m) for m in self.queue):
            total += self.deliver(predicate)
            assert total < MAX_SETTLE_DELIVERIES, "the cluster never went quiet"
        return total

    def deliver_at(self, position: int) -> bool:
        """Deliver the message at ``position`` in the queue; False if the partition ate it."""
        msg = self.queue.pop(position)
        if not self.can_talk(msg.sender, msg.recipient):
            return False
        self.nodes[msg.recipient].step(msg)
        self.process(msg.recipient)
        return True

    def duplicate_at(self, position: int) -> None:
        """The network delivers the message at ``position`` twice (the copy goes last)."""
        self.queue.append(self.queue[position])

    def drop(self, predicate: MessagePredicate) -> list[Message]:
        """Lose the queued messages that match; returns them."""
        lost = [m for m in self.queue if predicate(m)]
        self.queue = [m for m in self.queue if not predicate(m)]
        return lost

    def queued(self, kind: type[Any], sender: str | None = None,
               recipient: str | None = None) -> list[Any]:
        return [m for m in self.queue if _matches(m, kind, sender, recipient)]

    def sent_count(self, kind: type[Any], sender: str | None = None,
                   recipient: str | None = None) -> int:
        return sum(1 for m in self.sent if _matches(m, kind, sender, recipient))

    # --- time and requests ---------------------------------------------------------------

    def tick(self, *node_ids: str, times: int = 1) -> None:
        """Tick the named nodes (every node when none is named) without delivering."""
        for _ in range(times):
            for node_id in node_ids or tuple(self.nodes):
                self.nodes[node_id].tick()
                self.process(node_id)

    def run(self, ticks: int) -> None:
        """``ticks`` times: every node ticks once, then the network settles."""
        for _ in range(ticks):
            self.tick()
            self.settle()

    def elect(self, candidate: str, *, replicate: bool = True) -> None:
        """Make ``candidate`` the leader of a new term.

        Every other reachable node first sits out an election timeout with its output lost,
        so that no leader lease (thesis §4.2.3) stops it from voting; then the candidate
        campaigns. With ``replicate`` false only vote traffic is delivered afterwards.
        """
        node = self.nodes[candidate]
        for _attempt in range(4):
            self._forget_leaders(candidate)
            node.campaign()
            self.process(candidate)
            self.settle(None if replicate else is_vote_traffic)
            if node.is_leader:
                return
        raise AssertionError(f"{candidate} could not win an election")

    def _forget_leaders(self, candidate: str) -> None:
        if not self.template.check_quorum:
            return
        others = [n for n in self.nodes if n != candidate and self.can_talk(candidate, n)]
        self._muted.update(others)
        try:
            self.tick(*others, times=self.template.election_timeout_ticks)
        finally:
            self._muted.difference_update(others)

    def propose(self, node_id: str, data: bytes) -> tuple[int, int]:
        index_term = self.nodes[node_id].propose(data)
        self.process(node_id)
        return index_term

    def compact(self, node_id: str, index: int) -> None:
        """The application on ``node_id`` snapshots its state at ``index``; the node compacts
        and the snapshot it returns is stored on the node's disk.

        The harness checks the snapshot's configuration against its own view: the last
        MEMBERSHIP entry applied up to ``index``, else the previous snapshot's.
        """
        node = self.nodes[node_id]
        image = {i: e for i, e in self.machines[node_id].items() if i <= index}
        data = f"{node_id}@{index}".encode()
        self._images[data] = image
        configs = [e.membership for i, e in sorted(image.items()) if e.membership is not None]
        previous = self.disks[node_id].snapshot
        assert previous is not None
        term = node.log.term_at(index)
        assert term is not None
        snapshot = node.compact(index, data)
        expected_config = configs[-1] if configs else previous.meta.membership
        assert snapshot == Snapshot(SnapshotMeta(index, term, expected_config), data)
        self.disks[node_id].store_snapshot(snapshot)
        self.process(node_id)

    # --- inspection ----------------------------------------------------------------------

    def leader(self) -> str | None:
        """The leader of the highest term any node leads, if any."""
        leaders = [n for n in self.nodes.values() if n.is_leader]
        return max(leaders, key=lambda n: n.term).id if leaders else None

    def log_of(self, node_id: str) -> list[Entry]:
        """The entries ``node_id`` holds in memory (after its last compaction)."""
        log = self.nodes[node_id].log
        return [log.entry(i) for i in range(log.first_index, log.last_index + 1)]


def _matches(msg: Message, kind: type[Any], sender: str | None, recipient: str | None) -> bool:
    return (isinstance(msg, kind) and (sender is None or msg.sender == sender)
            and (recipient is None or msg.recipient == recipient))
