"""ConcordNode: one cluster member running for real — the Raft core's driver.

One asyncio task (the driver) owns the Raft core and the state machine. Everything else —
peer messages, client writes and reads, timer ticks, membership requests — is queued and
wakes the driver, which steps the core with all of it and then performs each ``Ready`` in
the contract's order: persist (one fsync for the whole batch: group commit), send, apply,
serve reads, advance — except that committed entries are applied while the fsync runs (see
``run_driver``). Inputs that arrive during an fsync form the next batch.
"""

from __future__ import annotations

import asyncio
import heapq
import io
import json
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import structlog

from concord.config import NodeConfig
from concord.core.lamport import LamportClock
from concord.detector.messages import SwimMessage
from concord.kv.commands import (
    BatchCommand,
    BatchResult,
    Command,
    Delete,
    KeyValue,
    Put,
    WriteResult,
)
from concord.kv.fsm import KVSnapshotState, KVStateMachine, KVStateMachineBuilder
from concord.observability.metrics import NodeMetrics
from concord.raft.config import RaftConfig, ReadMode
from concord.raft.core import RaftNode
from concord.raft.errors import (
    MembershipChangeRejected,
    NotLeader,
    ProposalDropped,
    TransferInProgress,
)
from concord.raft.messages import (
    EntryKind,
    Membership,
    MembershipChange,
    MembershipChangeOp,
    Message,
    Snapshot,
)
from concord.raft.ready import Ready, Role
from concord.runtime.dkv import DkvDriver
from concord.runtime.errors import (
    BadRequest,
    ConcordError,
    LeaderChanged,
    MembershipChangeRefused,
    NoLeader,
    NotLeaderHere,
    Overloaded,
    ShuttingDown,
    TimedOut,
)
from concord.runtime.gc_policy import collector_paused
from concord.runtime.membership import MembershipDriver, WallClock
from concord.runtime.service import MEMBER_KEY_PREFIX, MemberInfo, ResponseHeader
from concord.storage.raft_storage import RaftStorage
from concord.transport.addresses import AddressBook
from concord.transport.faults import FaultInjector
from concord.transport.peer import PeerTransport
from concord.transport.swim_channel import SwimChannel
from concord.wire.codec import (
    KVSnapshotReader,
    decode_log_command,
    encode_log_command,
    kv_snapshot_pieces,
)

log = structlog.get_logger("concord.node")

T = TypeVar("T")

# bound on inbound peer messages waiting for the driver; beyond it they are dropped
MAX_INBOX_MESSAGES = 100_000
SNAPSHOT_COMPACT_TIMEOUT_S = 30.0
"""How long a finished snapshot waits for the driver to compact the log with it."""
_SAVES_INLINE_ROLES = frozenset({Role.LEADER, Role.FOLLOWER})
"""The roles whose small Readies are made durable on the event loop (candidates: rare)."""


_Applied = WriteResult | BatchResult | None
"""What a waiting write learns when its entry applies (None for a membership entry)."""


@dataclass(slots=True)
class _WaitingWrite:
    term: int
    future: asyncio.Future[_Applied]
    command: Command | BatchCommand | None = None  # what was proposed (not a membership change)
    operations: int = 0  # what it counts toward limits.max_pending_operations


def _operations(command: Command | BatchCommand) -> int:
    """What a write counts toward ``limits.max_pending_operations``: a batch its ops."""
    return len(command.ops) if isinstance(command, BatchCommand) else 1


class _Deadlines:
    """The deadlines of every waiting request, expired by the ticker: one timer for all.

    A request's future fails with ``TimedOut`` at the first tick after its deadline. The heap
    holds each future in a slot its waiter empties once answered: holding answered futures
    until their deadlines kept every result of the last ``request_timeout_ms`` alive (5 s of
    batch results, 700,000 objects for the cycle collector to walk under load).
    """

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, list[asyncio.Future[Any] | None], str]] = []
        self._seq = 0  # breaks ties, so slots are never compared

    def add(self, future: asyncio.Future[Any], deadline_s: float,
            what: str) -> list[asyncio.Future[Any] | None]:
        """Watch ``future`` until ``deadline_s``; empty the returned slot once it is answered."""
        self._seq += 1
        slot: list[asyncio.Future[Any] | None] = [future]
        heapq.heappush(self._heap, (deadline_s, self._seq, slot, what))
        return slot

    def expire(self, now_s: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now_s:
            _, _, (future,), what = heapq.heappop(heap)
            if future is not None and not future.done():
                future.set_exception(TimedOut(what))


class ConcordNode:
    """Implements ``concord.runtime.service.NodeService``."""

    def __init__(self, config: NodeConfig, metrics: NodeMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or NodeMetrics()
        self.lamport = LamportClock()
        self.fsm = KVStateMachine()
        self.wall_clock = WallClock(config.membership.clock_offset_ms,
                                    config.membership.clock_drift_ppm)
        self.faults = (FaultInjector(random.Random(), clock=self.wall_clock)
                       if config.fault_injection else None)
        founders = {m.node_id: m.peer_url for m in config.members}
        founders[config.node_id] = config.peer_url
        self.addresses = AddressBook(founders)
        self._client_urls = {m.node_id: m.client_url for m in config.members}
        self._client_urls[config.node_id] = config.client_url
        self.raft: RaftNode | None = None
        self.storage: RaftStorage | None = None
        self.transport: PeerTransport | None = None
        self.swim_channel: SwimChannel | None = None
        self.dkv: DkvDriver | None = None
        self.membership: MembershipDriver | None = None  # None: [membership] enabled = false
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{config.node_id}-io")
        self._encoder = ThreadPoolExecutor(max_workers=1,
                                           thread_name_prefix=f"{config.node_id}-snapshot")
        self._snapshotting: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._inbox: deque[Message] = deque()
        self._proposals: deque[
            tuple[bytes, Command | BatchCommand, asyncio.Future[_Applied]]] = deque()
        self._read_requests: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._driver_calls: deque[tuple[Callable[[RaftNode], Any], asyncio.Future[Any]]] = deque()
        self._waiting_writes: dict[int, _WaitingWrite] = {}
        # of the writes admitted and not yet applied (or dropped): its waiter giving up does
        # not take a write out of the pipeline, so it keeps counting until its entry leaves
        self._pending_operations = 0
        self._waiting_reads: dict[int, asyncio.Future[None]] = {}
        self._reads_until_applied: list[tuple[int, int]] = []
        self._next_read_id = 0
        self._ticks_due = 0
        self._last_snapshot_index = 0
        self._applied_bytes = 0  # of every entry applied since start, for snapshot_every_bytes
        self._last_snapshot_bytes = 0
        self._stopping = False
        self._started = asyncio.Event()
        self._deadlines = _Deadlines()

    # --- NodeService: identity ---------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self.config.node_id

    @property
    def cluster_id(self) -> str:
        return self.config.cluster_id

    def _core(self) -> RaftNode:
        if self.raft is None:
            raise ShuttingDown("the node is not running")
        return self.raft

    def header(self) -> ResponseHeader:
        term = self.raft.term if self.raft else 0
        return ResponseHeader(self.cluster_id, self.node_id, term, self.fsm.revision)

    def is_leader(self) -> bool:
        return self.raft is not None and self.raft.role is Role.LEADER

    def leader_client_url(self) -> str | None:
        leader = self.raft.leader if self.raft else None
        return self._client_urls.get(leader) if leader else None

    def is_ready(self) -> bool:
        raft = self.raft
        return (raft is not None and raft.leader is not None and not self._stopping
                and self.fsm.applied_index >= raft.commit_index)

    # --- NodeService: data -------------------------------------------------------------

    @overload
    async def write(self, command: Command, timeout_s: float) -> WriteResult: ...

    @overload
    async def write(self, command: BatchCommand, timeout_s: float) -> BatchResult: ...

    async def write(self, command: Command | BatchCommand,
                    timeout_s: float) -> WriteResult | BatchResult:
        self._require_leader()
        operations = _operations(command)
        self.check_write_room(operations)
        future: asyncio.Future[_Applied] = asyncio.get_running_loop().create_future()
        self._proposals.append((encode_log_command(command), command, future))
        self._wake.set()
        self.metrics.proposals_total.inc()
        self._pending_operations += operations
        result = await self._await(future, timeout_s,
                                   "the write was not committed in time; it may still apply")
        assert result is not None
        assert isinstance(result, BatchResult) == isinstance(command, BatchCommand), (
            "a batch's entry applies as a batch, a single write's as a single write")
        return result

    def check_write_room(self, operations: int) -> None:
        if not self.is_leader():
            return
        limits = self.config.limits
        if (len(self._proposals) + len(self._waiting_writes) >= limits.max_pending_proposals
                or self._pending_operations + operations > limits.max_pending_operations):
            self.metrics.proposals_failed_total.labels(reason="overloaded").inc()
            raise Overloaded("too many writes in flight; retry shortly")

    async def get(self, key: str, linearizable: bool, timeout_s: float) -> KeyValue | None:
        self.metrics.reads("linearizable" if linearizable else "serializable").inc()
        if linearizable:
            await self._confirm_read(timeout_s)
        return self.fsm.get(key)

    async def range(self, prefix: str, limit: int | None, linearizable: bool,
                    timeout_s: float) -> tuple[list[KeyValue], bool]:
        if linearizable:
            await self._confirm_read(timeout_s)
        return self.fsm.range(prefix, limit)

    async def _confirm_read(self, timeout_s: float) -> None:
        """ReadIndex (or lease): wait until this leader may serve a linearizable read."""
        self._require_leader()
        in_flight = len(self._read_requests) + len(self._waiting_reads)
        if in_flight >= self.config.limits.max_pending_reads:
            raise Overloaded("too many reads in flight; retry shortly")
        self._next_read_id += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._read_requests.append((self._next_read_id, future))
        self._wake.set()
        await self._await(future, timeout_s, "leadership could not be confirmed in time")

    def _require_leader(self) -> None:
        if self._stopping:
            raise ShuttingDown("the node is shutting down")
        raft = self._core()
        if raft.role is not Role.LEADER:
            raise NotLeaderHere(f"{self.node_id} is not the leader", raft.leader)

    async def _await(self, future: asyncio.Future[T], timeout_s: float, what: str) -> T:
        """Wait for the driver to answer ``future``; the ticker fails it with ``TimedOut``
        (saying ``what``) once ``timeout_s`` has passed. A cancelled wait cancels ``future``,
        which the driver then skips."""
        slot = self._deadlines.add(future, time.monotonic() + timeout_s, what)
        try:
            return await future
        finally:
            slot[0] = None

    # --- NodeService: cluster ----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        raft = self._core()
        s = raft.status()
        peers = {
            peer: {"match_index": p.match, "next_index": p.next, "state": p.state,
                   "learner": p.is_learner, "recent_active": p.recent_active,
                   "url": self.addresses.get(peer)}
            for peer, p in s.peers.items() if peer != self.node_id
        }
        transport = self.transport.peer_stats() if self.transport else {}
        channels = {"swim": self.swim_channel.link_stats() if self.swim_channel else {},
                    "dkv": self.dkv.channel.link_stats() if self.dkv else {}}
        return {
            "id": self.node_id,
            "cluster_id": self.cluster_id,
            "role": s.role.value,
            "term": s.term,
            "leader": s.leader,
            "vote": s.vote,
            "commit_index": s.commit_index,
            "applied_index": self.fsm.applied_index,
            "snapshot_index": s.snapshot_index,
            "first_index": s.first_index,
            "last_index": s.last_index,
            "log_entries": s.last_index - s.first_index + 1,
            "revision": self.fsm.revision,
            "keys": len(self.fsm),
            "lamport": self.lamport.time,
            "voters": sorted(s.membership.voters),
            "learners": sorted(s.membership.learners),
            "peers": peers,
            "transport": transport,
            "channels": channels,
            "transferring_to": s.transferring_to,
            "durability": "fsync" if self.config.storage.fsync else "unsafe-no-fsync",
            "membership": self.membership.status() if self.membership else None,
        }

    def members(self) -> list[MemberInfo]:
        raft = self._core()
        membership = raft.membership
        return [
            MemberInfo(node_id=member, peer_url=self.addresses.get(member) or "",
                       client_url=self._client_urls.get(member, ""),
                       role="voter" if member in membership.voters else "learner",
                       is_leader=raft.leader == member)
            for member in sorted(membership.members)
        ]

    async def add_member(self, node_id: str, peer_url: str, client_url: str,
                         as_learner: bool, timeout_s: float) -> None:
        self._require_leader()
        deadline = time.monotonic() + timeout_s
        record = json.dumps({"peer_url": peer_url, "client_url": client_url}).encode()
        await self.write(Command(Put(MEMBER_KEY_PREFIX + node_id, record)), timeout_s)
        if node_id not in self._core().membership.members:
            await self._change_membership(MembershipChange(MembershipChangeOp.ADD_LEARNER, node_id),
                                          deadline)
        if as_learner:
            return
        while True:
            try:
                await self._change_membership(
                    MembershipChange(MembershipChangeOp.PROMOTE, node_id), deadline)
                return
            except MembershipChangeRefused as exc:
                if time.monotonic() >= deadline:
                    raise TimedOut(f"{node_id} did not catch up in time: {exc.message}") from None
                await asyncio.sleep(self.config.raft.tick_ms / 1000)

    async def remove_member(self, node_id: str, timeout_s: float) -> None:
        self._require_leader()
        deadline = time.monotonic() + timeout_s
        await self._change_membership(MembershipChange(MembershipChangeOp.REMOVE, node_id),
                                      deadline)
        if self.is_leader():
            await self.write(Command(Delete(MEMBER_KEY_PREFIX + node_id)),
                             max(0.1, deadline - time.monotonic()))

    async def _change_membership(self, change: MembershipChange, deadline: float) -> None:
        applied: asyncio.Future[_Applied] = asyncio.get_running_loop().create_future()

        def propose(raft: RaftNode) -> None:
            index, term = raft.propose_membership_change(change)
            self._waiting_writes[index] = _WaitingWrite(term, applied)

        try:
            await self._call_driver(propose, deadline - time.monotonic())
        except MembershipChangeRejected as exc:
            raise MembershipChangeRefused(str(exc)) from None
        await self._await(applied, max(0.0, deadline - time.monotonic()),
                          "the membership change was not committed in time")

    async def transfer_leadership(self, target: str | None, timeout_s: float) -> str:
        self._require_leader()
        chosen = target or self._best_successor()
        if chosen is None:
            raise BadRequest("there is no other voter to hand leadership to")
        if chosen == self.node_id:
            return chosen

        def start(raft: RaftNode) -> None:
            raft.transfer_leadership(chosen)

        try:
            await self._call_driver(start, timeout_s)
        except MembershipChangeRejected as exc:
            raise BadRequest(str(exc)) from None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            raft = self._core()
            if raft.leader == chosen:
                return chosen
            if raft.role is Role.LEADER and raft.status().transferring_to is None:
                raise TimedOut(f"{chosen} did not take over; {self.node_id} is still leader")
            await asyncio.sleep(self.config.raft.tick_ms / 1000)
        raise TimedOut(f"leadership did not move to {chosen} in time")

    def _best_successor(self) -> str | None:
        raft = self._core()
        status = raft.status()
        candidates = [(p.match, peer) for peer, p in status.peers.items()
                      if peer != self.node_id and peer in raft.membership.voters]
        return max(candidates)[1] if candidates else None

    async def _call_driver(self, fn: Callable[[RaftNode], T], timeout_s: float) -> T:
        """Run ``fn`` on the Raft core inside the driver (never between ready and advance)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._driver_calls.append((fn, future))
        self._wake.set()
        return await self._await(future, max(0.0, timeout_s), "the driver did not answer in time")

    # --- peer messages -----------------------------------------------------------------

    def on_peer_messages(self, messages: list[Message]) -> None:
        if len(self._inbox) + len(messages) > MAX_INBOX_MESSAGES:
            self.metrics.peer_messages_dropped_total.labels(peer="*", reason="inbox_full").inc(
                len(messages))
            return
        self._inbox.extend(messages)
        self._wake.set()

    # --- start-up ----------------------------------------------------------------------

    async def start(self) -> None:
        """Recover from disk and start the peer listener. The driver runs in ``run``."""
        loop = asyncio.get_running_loop()
        config = self.config
        storage, persisted = await loop.run_in_executor(
            self._io, lambda: RaftStorage.open(
                config.data_dir, fsync=config.storage.fsync,
                segment_bytes=config.storage.segment_bytes,
                on_fsync=self.metrics.fsync_seconds.observe))
        self.storage = storage
        rng = random.Random()
        raft_config = self._raft_config()
        if persisted.snapshot is None and not persisted.entries:
            founders = Membership(frozenset(m.node_id for m in config.members)
                                  if not config.join else frozenset())
            self.raft = RaftNode.bootstrap(raft_config, rng, founders)
            log.info("bootstrapped", voters=sorted(founders.voters), join=config.join)
        else:
            self.raft = RaftNode(raft_config, rng, persisted)
            self._install(await self._restored(persisted.snapshot), persisted.snapshot)
            log.info("recovered", term=persisted.hard_state.term,
                     commit=persisted.hard_state.commit, entries=len(persisted.entries),
                     snapshot_index=self._last_snapshot_index)
        self._bind_gauges()
        if not config.storage.fsync:
            log.warning("DURABILITY OFF: unsafe-no-fsync mode; acknowledged writes can be lost "
                        "on power failure. Use for benchmarks only.")
        host, port = _split_host_port(config.peer_listen)
        self.transport = PeerTransport(
            node_id=config.node_id, cluster_id=config.cluster_id, self_peer_url=config.peer_url,
            addresses=self.addresses, on_messages=self.on_peer_messages, lamport=self.lamport,
            metrics=self.metrics, settings=config.transport, faults=self.faults)
        if config.membership.enabled:
            self._create_membership()
        if config.dkv.enabled:
            self._create_dkv()
        await self.transport.start(host, port)
        self.transport.greet_peers()  # a restarted node is heard at once, not after backoffs
        if self.swim_channel is not None:
            await self.swim_channel.open()
        if self.dkv is not None:
            await self.dkv.start()
        self._started.set()

    def _create_membership(self) -> None:
        """SWIM over the peer listener; the founding members are the seeds."""
        assert self.transport is not None
        config = self.config
        settings = config.membership
        channel = SwimChannel(node_id=config.node_id, cluster_id=config.cluster_id,
                              timeout_s=settings.probe_interval_ms / 1000,
                              on_messages=self._on_swim_messages,
                              metrics=self.metrics, faults=self.faults)
        channel.attach(self.transport)
        self.swim_channel = channel
        self.membership = MembershipDriver(
            settings, node_id=config.node_id, address=config.peer_url,
            seeds=[m.node_id for m in config.members], channel=channel,
            addresses=self.addresses, metrics=self.metrics, wall_clock=self.wall_clock)

    def _create_dkv(self) -> None:
        """The quorum store: its replica store opens now, its route joins the peer listener."""
        assert self.transport is not None
        config = self.config
        membership = self.membership
        self.dkv = DkvDriver(config.dkv, node_id=config.node_id, cluster_id=config.cluster_id,
                             data_dir=config.data_dir, service=self, addresses=self.addresses,
                             metrics=self.metrics, wall_clock_ns=self.wall_clock.now_ns,
                             alive_members=(None if membership is None
                                            else membership.available_members),
                             faults=self.faults)
        self.dkv.attach(self.transport)
        self.dkv.open()

    def _on_swim_messages(self, messages: Sequence[SwimMessage]) -> None:
        if self.membership is not None:
            self.membership.on_messages(messages)

    async def run_membership(self) -> None:
        """Run SWIM until cancelled (returns at once when membership is disabled)."""
        if self.membership is not None:
            await self.membership.run()

    async def leave_membership(self, timeout_s: float) -> None:
        """Announce a graceful leave to the other members and end the event streams."""
        if self.membership is not None:
            await self.membership.leave(timeout_s)
            self.membership.close()

    def _raft_config(self) -> RaftConfig:
        r = self.config.raft
        return RaftConfig(
            node_id=self.config.node_id,
            election_timeout_ticks=r.election_timeout_ticks,
            heartbeat_interval_ticks=r.heartbeat_interval_ticks,
            pre_vote=r.pre_vote,
            check_quorum=r.check_quorum,
            read_mode=ReadMode(r.read_mode),
            max_clock_drift=r.max_clock_drift,
            max_entries_per_append=r.max_entries_per_append,
            max_inflight_appends=r.max_inflight_appends,
            max_uncommitted_entries=self.config.limits.max_pending_proposals,
        )

    # --- the driver --------------------------------------------------------------------

    async def run_driver(self) -> None:
        """Step the core with everything queued, then perform its Ready; forever.

        While a Ready's writes are being fsynced its committed entries are applied and their
        clients answered: they never depend on those writes (a leader counts its own entries
        only once ``advance`` says they are durable; a follower's are durable on a quorum of
        others). A Ready carrying a snapshot is applied after the fsync. Messages still wait
        for the fsync, and ``advance`` for everything. A small Ready is made durable on the
        event loop itself (``_saves_inline``); a leader's AppendEntries go out on the sockets
        first, so its fsync overlaps its followers' round trips, and a follower's
        acknowledgement goes out right after its fsync, before it applies the entries the
        Ready committed. A Ready hands over at most
        ``MAX_APPLY_BYTES`` of committed entries; when more are ready the driver lets the
        event loop run before the next one (under 1,000-op batches, applying them in one turn
        kept every node's loop busy past the election timeout).
        """
        raft = self._core()
        storage = self.storage
        assert storage is not None and self.transport is not None
        loop = asyncio.get_running_loop()
        saves = self.metrics.storage_saves_total
        saves_inline, saves_on_io = saves.labels(thread="event_loop"), saves.labels(thread="io")
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._step_inputs(raft)
            while raft.has_ready():
                ready = raft.ready()
                inline = ready.must_sync and self._saves_inline(raft, ready)
                # a snapshot from the leader is built on the encoder's thread meanwhile
                restoring = (asyncio.ensure_future(self._restored(ready.snapshot))
                             if ready.snapshot is not None else None)
                if ready.early_messages:
                    self.transport.send(ready.early_messages)
                    if inline:
                        self.transport.flush()  # on the wire before this loop blocks on fsync
                applied = False
                if inline:
                    storage.save(ready)
                    saves_inline.inc()
                    if ready.messages:  # a follower's acknowledgement: out before it applies
                        self.transport.send(ready.messages)
                        self.transport.flush()
                elif ready.must_sync:
                    # the fsync runs on the I/O thread; inputs queue up meanwhile and become
                    # the next batch (group commit)
                    saves_on_io.inc()
                    saved = loop.run_in_executor(self._io, storage.save, ready)
                    if ready.snapshot is None:
                        self._apply(ready)
                        applied = True
                    await saved
                elif ready.hard_state is not None:
                    storage.save(ready)  # only the commit index moved: a buffered write
                if ready.entries:
                    self.metrics.ready_batch_entries.observe(len(ready.entries))
                if ready.messages and not inline:  # inline: sent right after the fsync
                    self.transport.send(ready.messages)
                if not applied:
                    self._apply(ready, await restoring if restoring is not None else None)
                raft.advance(ready)
                await self._maybe_snapshot(raft)
                if raft.has_ready():
                    await asyncio.sleep(0)  # let the loop answer and read between Readies
                self._step_inputs(raft)

    def _saves_inline(self, raft: RaftNode, ready: Ready) -> bool:
        """Whether ``ready`` is written and fsynced on the event loop, not the I/O thread:
        a follower's or a leader's, without a snapshot, whose entries total at most
        ``storage.inline_sync_bytes``, while none of this node's snapshots is being published
        or compacted on the I/O thread.

        Handing a small write to the I/O thread and back costs two wake-ups and two GIL
        transfers, more than the fsync itself on a two-core machine (docs/performance.md). A
        follower has nothing else to do meanwhile (its acknowledgement waits for the fsync);
        a leader's AppendEntries are already on the wire, so its fsync overlaps the round
        trip it needs anyway. A large write (a leader's group commit under load) stays on the
        thread, so the loop never stalls for long and keeps taking requests meanwhile.
        """
        limit = self.config.storage.inline_sync_bytes
        if (limit <= 0 or raft.role not in _SAVES_INLINE_ROLES or ready.snapshot is not None
                or self._snapshotting is not None):  # its I/O calls hold the storage's lock
            return False
        size = 0
        for entry in ready.entries:
            size += len(entry.data)
            if size > limit:
                return False
        return True

    async def run_ticker(self) -> None:
        """One Raft tick every ``raft.tick_ms``; how late each fires is the event loop's lag
        (``concord_event_loop_lag_seconds``): a lag near the election timeout means the node
        is too busy to keep its leader (or its followers) from timing out."""
        interval = self.config.raft.tick_ms / 1000
        lag = self.metrics.event_loop_lag_seconds
        next_at = time.monotonic()
        while True:
            next_at += interval
            asked_at = time.monotonic()
            wait_s = max(0.0, next_at - asked_at)
            await asyncio.sleep(wait_s)
            lag.observe(max(0.0, time.monotonic() - asked_at - wait_s))  # this wait's delay only
            self._ticks_due += 1
            self._wake.set()
            self._deadlines.expire(time.monotonic())

    def _step_inputs(self, raft: RaftNode) -> None:
        if self.membership is not None:
            raft.lease_reads_allowed = not self.membership.clock_out_of_sync
        inbox = self._inbox
        while inbox:
            msg = inbox.popleft()
            raft.step(msg)
        while self._ticks_due:
            self._ticks_due -= 1
            raft.tick()
        if self._proposals:
            self._propose_batch(raft)
        while self._read_requests:
            read_id, future = self._read_requests.popleft()
            if future.done():
                continue
            try:
                raft.read_index(read_id)
            except NotLeader as exc:
                future.set_exception(NotLeaderHere("leadership moved", exc.leader))
                continue
            self._waiting_reads[read_id] = future
        while self._driver_calls:
            fn, call_future = self._driver_calls.popleft()
            if call_future.done():
                continue
            try:
                call_future.set_result(fn(raft))
            except (NotLeader, ProposalDropped) as exc:
                call_future.set_exception(_client_error(exc))
            except Exception as exc:  # handed back to the caller, whatever it is
                call_future.set_exception(exc)

    def _propose_batch(self, raft: RaftNode) -> None:
        """Propose every queued write whose waiter still waits; the others, and all of them
        when the core refuses, leave the pipeline here."""
        batch = list(self._proposals)
        self._proposals.clear()
        live = []
        for proposal in batch:
            if proposal[2].done():
                self._pending_operations -= _operations(proposal[1])
            else:
                live.append(proposal)
        if not live:
            return
        try:
            placed = raft.propose_many(data for data, _, _ in live)
        except (NotLeader, ProposalDropped) as exc:
            for _, command, future in live:
                self._pending_operations -= _operations(command)
                future.set_exception(_client_error(exc))
            return
        for (_, command, future), (index, term) in zip(live, placed, strict=True):
            self._waiting_writes[index] = _WaitingWrite(term, future, command,
                                                        _operations(command))

    def _apply(self, ready: Ready, restored: KVStateMachine | None = None) -> None:
        """Apply ``ready``'s committed entries; ``restored`` is what its snapshot holds."""
        raft = self.raft
        assert raft is not None
        if ready.snapshot is not None:
            assert restored is not None, "a snapshot's state machine is built before it applies"
            self._install(restored, ready.snapshot)
            for index in [i for i in self._waiting_writes if i <= ready.snapshot.meta.index]:
                covered = self._waiting_writes.pop(index)
                self._pending_operations -= covered.operations
                if not covered.future.done():
                    covered.future.set_exception(
                        TimedOut("the write's outcome was covered by a snapshot"))
        for entry in ready.committed_entries:
            self._applied_bytes += len(entry.data)
            result: _Applied = None
            waiting = self._waiting_writes.pop(entry.index, None)
            if waiting is not None:
                self._pending_operations -= waiting.operations
            if entry.kind is EntryKind.COMMAND:
                # the entry this leader proposed at this index in this term is the command it
                # still holds (one leader per term, which never overwrites its own entries):
                # decoding it again cost the leader about 15 % of its time under batch load
                proposed = (waiting.command if waiting is not None and waiting.term == entry.term
                            else None)
                command = proposed if proposed is not None else decode_log_command(entry.data)
                if isinstance(command, BatchCommand):  # never holds _concord/ keys (the API)
                    result = self.fsm.apply_batch(entry.index, command)
                else:
                    result = self.fsm.apply(entry.index, command)
                    if command.op.key.startswith(MEMBER_KEY_PREFIX):
                        self._learn_member(command.op.key, result)
            else:
                self.fsm.apply_noop(entry.index)
            if waiting is not None and not waiting.future.done():
                if waiting.term == entry.term:
                    waiting.future.set_result(result)
                else:
                    waiting.future.set_exception(
                        LeaderChanged("a new leader replaced the write; it was not applied"))
        if ready.committed_entries:
            self.metrics.commits_total.inc(len(ready.committed_entries))
        for read_id in ready.dropped_reads:
            future = self._waiting_reads.pop(read_id, None)
            if future is not None and not future.done():
                future.set_exception(NoLeader("leadership was lost while confirming the read"))
        for state in ready.read_states:
            self._reads_until_applied.append((state.index, state.request_id))
        if self._reads_until_applied:
            self._release_reads()
        if ready.soft_state is not None:
            self._on_soft_state(raft)
        for event in ready.events:
            log.info(event.name, **{k: v for k, v in event.attrs.items() if k != "node"})

    def _release_reads(self) -> None:
        applied = self.fsm.applied_index
        waiting: list[tuple[int, int]] = []
        for index, read_id in self._reads_until_applied:
            if applied >= index:
                future = self._waiting_reads.pop(read_id, None)
                if future is not None and not future.done():
                    future.set_result(None)
            else:
                waiting.append((index, read_id))
        self._reads_until_applied = waiting

    def _on_soft_state(self, raft: RaftNode) -> None:
        self.metrics.leader_changes_total.inc()
        if raft.role is Role.CANDIDATE or raft.role is Role.PRE_CANDIDATE:
            self.metrics.elections_total.inc()
        log.info("role", role=raft.role.value, leader=raft.leader)

    def _bind_gauges(self) -> None:
        """The Raft gauges read the node when scraped (setting five gauges on every Ready
        cost each node about 11 µs per Raft round, a cProfile showed)."""
        m = self.metrics

        def commit_index() -> int:
            return self.raft.commit_index if self.raft is not None else 0

        m.term.set_function(lambda: self.raft.term if self.raft is not None else 0)
        m.is_leader.set_function(lambda: 1 if self.is_leader() else 0)
        m.commit_index.set_function(commit_index)
        m.applied_index.set_function(lambda: self.fsm.applied_index)
        m.apply_lag_entries.set_function(lambda: commit_index() - self.fsm.applied_index)

    async def _restored(self, snapshot: Snapshot | None) -> KVStateMachine:
        """The state machine ``snapshot`` holds, built on the encoder's thread
        (``restore_beside_the_loop``): the event loop keeps running meanwhile."""
        if snapshot is None or not snapshot.data:
            return KVStateMachine()
        return await asyncio.get_running_loop().run_in_executor(
            self._encoder, restore_beside_the_loop, snapshot.data,
            self.config.gc.freeze_at_start)

    def _install(self, fsm: KVStateMachine, snapshot: Snapshot | None) -> None:
        """Put ``fsm``, restored from ``snapshot``, in place of the state machine."""
        self.fsm = fsm
        self._last_snapshot_index = snapshot.meta.index if snapshot else 0
        self._last_snapshot_bytes = self._applied_bytes
        members, _ = self.fsm.range(MEMBER_KEY_PREFIX, None)
        for kv in members:
            self._learn_member(kv.key, None, kv)

    def _learn_member(self, key: str, result: WriteResult | None,
                      kv: KeyValue | None = None) -> None:
        node_id = key[len(MEMBER_KEY_PREFIX):]
        current = kv if kv is not None else (result.current if result else None)
        if current is None:
            return
        try:
            record = json.loads(current.value)
            self.addresses.set(node_id, str(record["peer_url"]))
            self._client_urls[node_id] = str(record["client_url"])
        except (ValueError, KeyError, TypeError):
            log.warning("bad member record", key=key)

    async def _maybe_snapshot(self, raft: RaftNode) -> None:
        """Every ``snapshot_every_entries`` applied entries or ``snapshot_every_bytes`` of
        applied commands (whichever comes first: a batch entry carries many writes), start
        taking a snapshot in the background: the state is copied here (immutable data),
        encoded on a thread of its own while the driver goes on, handed to the core to compact
        its log (inside the driver), written to a file on the encoder's thread, then put in
        place and the WAL compacted on the I/O thread.
        Encoding a large state inside the driver stalled Raft for seconds (elections under
        load)."""
        applied = self.fsm.applied_index
        settings = self.config.raft
        if self._snapshotting is not None or (
                applied - self._last_snapshot_index < settings.snapshot_every_entries
                and self._applied_bytes - self._last_snapshot_bytes
                < settings.snapshot_every_bytes):
            return
        state = self.fsm.snapshot_state()
        self._last_snapshot_index = applied
        self._last_snapshot_bytes = self._applied_bytes
        self._snapshotting = asyncio.get_running_loop().create_task(
            self._take_snapshot(state), name="snapshot")

    async def _take_snapshot(self, state: KVSnapshotState) -> None:
        storage = self.storage
        assert storage is not None
        index = state.applied_index
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(self._encoder, encode_snapshot_beside_the_loop,
                                              state)

            def compact(raft: RaftNode) -> Snapshot | None:
                # a snapshot installed from the leader meanwhile may already cover ``index``
                return raft.compact(index, data) if raft.log.offset_index < index else None

            snapshot = await self._call_driver(compact, SNAPSHOT_COMPACT_TIMEOUT_S)
            if snapshot is None:
                return
            # written on the encoder's thread: on the I/O thread a 279 MB write and fsync held
            # up every WAL fsync behind it for seconds, and the driver with them (elections)
            written = await loop.run_in_executor(self._encoder, storage.write_snapshot, snapshot)
            if not await loop.run_in_executor(self._io, storage.publish_snapshot, written):
                return  # a newer snapshot from the leader is in place
            await loop.run_in_executor(self._io, storage.compact, index)
            log.info("snapshot_taken", index=index, bytes=len(snapshot.data),
                     seconds=round(time.monotonic() - started, 3))
        except ConcordError as exc:  # the driver did not take it in time: try again later
            log.warning("snapshot not taken", index=index, error=exc.message)
            self._last_snapshot_index = min(self._last_snapshot_index,
                                            index - self.config.raft.snapshot_every_entries)
        finally:
            self._snapshotting = None

    # --- shutdown ----------------------------------------------------------------------

    async def prepare_shutdown(self, timeout_s: float) -> None:
        """Stop taking client work; a leader hands over leadership first when it can."""
        if self.is_leader() and len(self._core().membership.voters) > 1:
            raft = self.config.raft
            handover_s = 2 * raft.election_timeout_ticks * raft.tick_ms / 1000
            try:
                new_leader = await self.transfer_leadership(None, min(timeout_s, handover_s))
                log.info("handed_over_leadership", to=new_leader)
            except ConcordError as exc:
                log.warning("leadership handover failed", error=exc.message)
        self._stopping = True
        deadline = time.monotonic() + timeout_s
        while (self._waiting_writes or self._proposals) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        if self.dkv is not None:
            await self.dkv.close()
        if self.membership is not None:
            self.membership.close()
        if self.swim_channel is not None:
            await self.swim_channel.close()
        if self.transport is not None:
            await self.transport.close()
        storage = self.storage
        if storage is not None:
            await asyncio.get_running_loop().run_in_executor(self._io, storage.close)
        if self._snapshotting is not None:
            self._snapshotting.cancel()
            await asyncio.gather(self._snapshotting, return_exceptions=True)
        self._encoder.shutdown(wait=True)
        self._io.shutdown(wait=True)
        self.raft = None


def encode_snapshot_beside_the_loop(state: KVSnapshotState) -> bytes:
    """``encode_kv_snapshot(state)`` for the snapshot encoder's thread: the GIL is handed to
    the event loop between pieces. In one compiled call a million-key state held it for the
    whole encoding, and every node's loop stopped that long (elections under load,
    docs/performance.md)."""
    buffer = io.BytesIO()
    for piece in kv_snapshot_pieces(state):
        buffer.write(piece)
        time.sleep(0)  # lets a waiting thread (the event loop) take the GIL
    return buffer.getvalue()  # CPython hands over the buffer's own bytes object


def restore_beside_the_loop(data: bytes, freeze: bool = True) -> KVStateMachine:
    """``KVStateMachine.from_snapshot(decode_kv_snapshot(data))`` for the snapshot encoder's
    thread: read and built a piece at a time (``KVSnapshotReader``, ``KVStateMachineBuilder``),
    handing the GIL to the event loop between pieces. Done in one go on the event loop, a
    million keys stopped it for about 2 s (docs/performance.md). ``freeze``: what is alive
    at the end leaves the cycle collector's sight (``collector_paused``; ``[gc]
    freeze_at_start``)."""
    reader = KVSnapshotReader(data)
    builder = KVStateMachineBuilder(reader.applied_index, reader.revision)
    with collector_paused(freeze=freeze):
        for key_values in reader.key_value_pieces():
            builder.add_key_values(key_values)
            time.sleep(0)  # lets a waiting thread (the event loop) take the GIL
        while builder.merge_keys():
            time.sleep(0)
        for requests in reader.remembered_pieces():
            builder.remember(requests)
            time.sleep(0)
        return builder.build()


def _client_error(exc: Exception) -> ConcordError:
    if isinstance(exc, NotLeader):
        return NotLeaderHere(str(exc), exc.leader)
    if isinstance(exc, TransferInProgress):
        return NoLeader(str(exc))
    if isinstance(exc, ProposalDropped):
        return Overloaded(str(exc))
    return ConcordError(str(exc))


def _split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "0.0.0.0", int(port)
