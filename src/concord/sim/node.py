"""A simulated node: a Raft core, its virtual disk and its KV state machine, run by the book.

``SimNode`` is the simulator's driver. It performs every ``Ready`` in the contract's order
(persist, sync when asked, send, apply, serve reads, advance) and answers client requests
the way the daemon does: writes are proposed and answered when applied; linearizable reads
go through ReadIndex. Switches on ``SimBugs`` break the driver on purpose, to prove that the
checkers notice.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from concord.core.trace import TraceEvent
from concord.kv.commands import Command, WriteResult
from concord.kv.fsm import KVStateMachine
from concord.raft.config import RaftConfig
from concord.raft.core import RaftNode
from concord.raft.errors import MembershipChangeRejected, NotLeader, ProposalDropped
from concord.raft.messages import (
    Entry,
    EntryKind,
    Membership,
    MembershipChange,
    Message,
    NodeId,
    Snapshot,
)
from concord.raft.ready import Ready, Role
from concord.sim.disk import VirtualDisk
from concord.wire.codec import (
    decode_command,
    decode_kv_snapshot,
    encode_command,
    encode_kv_snapshot,
)

# reply(ok, output, leader_hint): ok None means "outcome unknown"
Reply = Callable[[bool | None, object, NodeId | None], None]


@dataclass(frozen=True, slots=True)
class SimBugs:
    """Deliberate driver bugs, each of which a correct checker must catch."""

    ack_before_sync: bool = False  # ack entries that a background flusher syncs later

# with ack_before_sync, the flusher makes writes durable only every this many ticks
LAZY_FLUSH_TICKS = 10


@dataclass(slots=True)
class NodeHooks:
    """Where a node reports to the invariant checker and the world."""

    send: Callable[[Message], None]
    on_persisted: Callable[[NodeId, RaftNode, tuple[Entry, ...]], None]
    on_applied: Callable[[NodeId, Entry], None]
    on_trace: Callable[[TraceEvent], None]


@dataclass(slots=True)
class _PendingRead:
    key: str
    reply: Reply


@dataclass(slots=True)
class SimNode:
    node_id: NodeId
    config: RaftConfig
    founders: Membership
    rng: random.Random
    hooks: NodeHooks
    raft_class: type[RaftNode] = RaftNode
    bugs: SimBugs = SimBugs()
    snapshot_every_entries: int = 50
    disk: VirtualDisk = field(default_factory=VirtualDisk)
    raft: RaftNode | None = None
    fsm: KVStateMachine = field(default_factory=KVStateMachine)
    _pending_writes: dict[int, tuple[int, Reply]] = field(default_factory=dict)
    _pending_reads: dict[int, _PendingRead] = field(default_factory=dict)
    _reads_waiting_apply: list[tuple[int, int]] = field(default_factory=list)
    _next_read_id: int = 0
    _last_snapshot_index: int = 0
    _sync_deferred: bool = False
    _ticks: int = 0

    # --- life cycle --------------------------------------------------------------------

    @property
    def is_up(self) -> bool:
        return self.raft is not None

    def start(self) -> None:
        assert self.raft is None
        rng = random.Random(self.rng.random())
        if self.disk.is_blank():
            self.raft = self.raft_class.bootstrap(self.config, rng, self.founders)
            self.fsm = KVStateMachine()
        else:
            persisted = self.disk.load()
            self.raft = self.raft_class(self.config, rng, persisted)
            self._restore(persisted.snapshot)
        self._process_ready()

    def crash(self) -> None:
        """Power off: unsynced writes and every in-memory request are lost."""
        self.raft = None
        self.disk.crash()
        self._sync_deferred = False
        self._pending_writes.clear()
        self._pending_reads.clear()
        self._reads_waiting_apply.clear()

    # --- inputs ------------------------------------------------------------------------

    def tick(self) -> None:
        self._ticks += 1
        if self._sync_deferred and self._ticks % LAZY_FLUSH_TICKS == 0:
            self.disk.sync()  # the buggy background flusher
            self._sync_deferred = False
        if self.raft is not None:
            self.raft.tick()
            self._process_ready()

    def deliver(self, msg: Message) -> None:
        if self.raft is not None:
            self.raft.step(msg)
            self._process_ready()

    def client_write(self, command: Command, reply: Reply) -> None:
        raft = self.raft
        if raft is None:
            return
        try:
            index, term = raft.propose(encode_command(command))
        except NotLeader as exc:
            reply(False, "not leader", exc.leader)
            return
        except ProposalDropped as exc:
            reply(False, str(exc), raft.leader)
            return
        self._pending_writes[index] = (term, reply)
        self._process_ready()

    def client_read(self, key: str, reply: Reply) -> None:
        raft = self.raft
        if raft is None:
            return
        self._next_read_id += 1
        try:
            raft.read_index(self._next_read_id)
        except NotLeader as exc:
            reply(False, "not leader", exc.leader)
            return
        self._pending_reads[self._next_read_id] = _PendingRead(key, reply)
        self._process_ready()

    def change_membership(self, change: MembershipChange) -> bool:
        """Propose a membership change here; False when this node cannot (not leader...)."""
        raft = self.raft
        if raft is None:
            return False
        try:
            raft.propose_membership_change(change)
        except (NotLeader, ProposalDropped, MembershipChangeRejected):
            return False
        self._process_ready()
        return True

    def transfer_leadership(self, target: NodeId) -> bool:
        raft = self.raft
        if raft is None:
            return False
        try:
            raft.transfer_leadership(target)
        except (NotLeader, MembershipChangeRejected):
            return False
        self._process_ready()
        return True

    # --- the driver --------------------------------------------------------------------

    def _process_ready(self) -> None:
        raft = self.raft
        assert raft is not None
        while raft.has_ready():
            ready = raft.ready()
            for msg in ready.early_messages:
                self.hooks.send(msg)
            self._persist(ready)
            for msg in ready.messages:
                self.hooks.send(msg)
            if ready.must_sync:
                if self.bugs.ack_before_sync:
                    self._sync_deferred = True  # the bug: acked, but only in the page cache
                else:
                    self.disk.sync()
            self.hooks.on_persisted(self.node_id, raft, ready.entries)
            self._apply(ready)
            for event in ready.events:
                self.hooks.on_trace(event)
            raft.advance(ready)
            self._maybe_snapshot(raft)

    def _persist(self, ready: Ready) -> None:
        if ready.snapshot is not None:
            self.disk.write_snapshot(ready.snapshot)
        if ready.entries:
            self.disk.write_entries(ready.entries)
        if ready.hard_state is not None:
            self.disk.write_hard_state(ready.hard_state)

    def _apply(self, ready: Ready) -> None:
        if ready.snapshot is not None:
            self._restore(ready.snapshot)
            for index in [i for i in self._pending_writes if i <= ready.snapshot.meta.index]:
                _, reply = self._pending_writes.pop(index)
                reply(None, "covered by a snapshot", None)
        for entry in ready.committed_entries:
            self.hooks.on_applied(self.node_id, entry)
            result: WriteResult | None = None
            if entry.kind is EntryKind.COMMAND:
                result = self.fsm.apply(entry.index, decode_command(entry.data))
            else:
                self.fsm.apply_noop(entry.index)
            pending = self._pending_writes.pop(entry.index, None)
            if pending is not None:
                term, reply = pending
                if term == entry.term:
                    reply(True, result, None)
                else:
                    reply(False, "lost to a leader change", None)
        for read_id in ready.dropped_reads:
            pending_read = self._pending_reads.pop(read_id, None)
            if pending_read is not None:
                pending_read.reply(False, "leadership lost", None)
        for state in ready.read_states:
            self._reads_waiting_apply.append((state.index, state.request_id))
        self._serve_reads()

    def _restore(self, snapshot: Snapshot | None) -> None:
        """The state machine as of ``snapshot`` (a bootstrap snapshot carries no data)."""
        if snapshot is not None and snapshot.data:
            self.fsm = KVStateMachine.from_snapshot(decode_kv_snapshot(snapshot.data))
        else:
            self.fsm = KVStateMachine()
        self._last_snapshot_index = snapshot.meta.index if snapshot else 0

    def _serve_reads(self) -> None:
        still_waiting: list[tuple[int, int]] = []
        for index, read_id in self._reads_waiting_apply:
            if self.fsm.applied_index >= index:
                pending = self._pending_reads.pop(read_id, None)
                if pending is not None:
                    kv = self.fsm.get(pending.key)
                    pending.reply(True, kv.value if kv else None, None)
            else:
                still_waiting.append((index, read_id))
        self._reads_waiting_apply = still_waiting

    def _maybe_snapshot(self, raft: RaftNode) -> None:
        applied = self.fsm.applied_index
        if applied - self._last_snapshot_index < self.snapshot_every_entries:
            return
        snapshot = raft.compact(applied, encode_kv_snapshot(self.fsm.snapshot_state()))
        self.disk.write_local_snapshot(snapshot)
        self.disk.sync()
        self._last_snapshot_index = applied

    # --- inspection --------------------------------------------------------------------

    @property
    def role(self) -> Role | None:
        return self.raft.role if self.raft else None
