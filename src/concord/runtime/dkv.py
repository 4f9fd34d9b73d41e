"""The quorum store in a running node: ``DkvDriver`` runs the ``concord.dkv`` core for real.

It owns the replica's SQLite store (``<data_dir>/dkv/replica.sqlite3``), the peer channel
(a ``MessageChannel``: fire-and-forget batches on a stream per peer, ``GET /dkv/v1/stream``;
the core times out and retries what matters), a ticker, and the table of client operations
waiting for their result. Inputs to the core, in the event loop only:

- the view: the ring is the Raft membership (every node agrees on it, so every node computes
  the same preference lists), liveness is the configured failure detector's verdict;
- bucket properties, kept cluster-wide in the Raft store under ``_concord/dkv/buckets/``
  (so changing them needs a Raft majority, reading and writing data does not) and picked
  up by every node within ``BUCKET_REFRESH_S``;
- time: the node's wall clock (with any injected offset), forced never to go back.

Peer batches, client operations and the ticker's time step that arrive during one loop
iteration are stepped together in the next (``_run_turn``), inside one SQLite transaction:
replica writes from every peer and client of that burst share one fsync, and no
acknowledgement or answer leaves before it. The client path's requests to the other
replicas (``SENDABLE_BEFORE_COMMIT``) leave before the commit, so their round trip overlaps
this node's own fsync.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import structlog

from concord.config import DkvSettings
from concord.dkv.config import BucketProps, DkvConfig, validate_bucket_name
from concord.dkv.messages import SENDABLE_BEFORE_COMMIT, DkvMessage
from concord.dkv.node import DkvNode, DkvReady, OpResult, Outbound
from concord.dkv.ring import partition_of
from concord.dkv.versions import VersionVector
from concord.kv.commands import Command, Put
from concord.observability.metrics import NodeMetrics
from concord.runtime.errors import BadRequest, ShuttingDown
from concord.runtime.service import SYSTEM_KEY_PREFIX, NodeService
from concord.storage.dkv_sqlite import SqliteReplicaStore
from concord.transport.addresses import AddressBook
from concord.transport.faults import FaultInjector
from concord.transport.message_channel import ChannelFormat, MessageChannel
from concord.transport.peer import PeerTransport
from concord.wire.dkv_messages_codec import (
    MAX_DKV_BATCH_BYTES,
    decode_dkv_batch,
    encode_dkv_batch,
)

log = structlog.get_logger("concord.dkv")

DKV_MESSAGES_PATH: Final = "/dkv/v1/messages"
DKV_STREAM_PATH: Final = "/dkv/v1/stream"
BUCKET_KEY_PREFIX: Final = SYSTEM_KEY_PREFIX + "dkv/buckets/"
BUCKET_REFRESH_S: Final = 0.5
_MS = 1_000_000
_S = 1_000_000_000


DKV_FORMAT: Final[ChannelFormat[DkvMessage]] = ChannelFormat(
    path=DKV_MESSAGES_PATH, stream_path=DKV_STREAM_PATH, encode_batch=encode_dkv_batch,
    decode_batch=decode_dkv_batch, max_batch_bytes=MAX_DKV_BATCH_BYTES,
    max_backlog_per_peer=32, backlog_drop_reason="dkv_backlog")


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a key lives now, for ``?explain=1``."""

    partition: int
    preference_list: tuple[str, ...]
    targets: tuple[tuple[str, str | None], ...]  # (node, primary it stands in for or None)
    down: tuple[str, ...]


def core_config(settings: DkvSettings) -> DkvConfig:
    """The core's configuration from the ``[dkv]`` settings."""
    return DkvConfig(
        partition_count=settings.partition_count,
        vnodes_per_node=settings.vnodes_per_node,
        default_props=BucketProps(n=settings.n, r=settings.r, w=settings.w),
        request_timeout_ns=settings.request_timeout_ms * _MS,
        hint_max_age_ns=settings.hint_max_age_s * _S,
        aae_interval_ns=settings.aae_interval_ms * _MS,
        aae_catch_up_interval_ns=settings.aae_catch_up_interval_ms * _MS,
        tombstone_grace_ns=settings.tombstone_grace_s * _S,
        max_siblings=settings.max_siblings,
    )


class DkvDriver:
    """One node's quorum store: core, store, channel, ticker. Event-loop only."""

    def __init__(self, settings: DkvSettings, *, node_id: str, cluster_id: str, data_dir: Path,
                 service: NodeService, addresses: AddressBook, metrics: NodeMetrics,
                 wall_clock_ns: Callable[[], int],
                 alive_members: Callable[[], set[str]] | None,
                 faults: FaultInjector | None = None) -> None:
        self.settings = settings
        self.node_id = node_id
        self._service = service
        self._addresses = addresses
        self._wall_clock_ns = wall_clock_ns
        self._alive_members = alive_members
        self._path = data_dir / "dkv" / "replica.sqlite3"
        self._config = core_config(settings)
        self.channel = MessageChannel(DKV_FORMAT, node_id=node_id, cluster_id=cluster_id,
                                      timeout_s=max(1.0, settings.request_timeout_ms / 1000),
                                      on_messages=self._on_messages, metrics=metrics,
                                      faults=faults)
        self.store: SqliteReplicaStore | None = None
        self.core: DkvNode | None = None
        self._waiting: dict[int, asyncio.Future[OpResult]] = {}
        self._next_op_id = 1
        self._last_now_ns = 0
        self._buckets: dict[str, BucketProps] = {}
        self._starting: list[tuple[int, Callable[[DkvNode, int, int], None]]] = []
        self._arrived: list[tuple[str, Sequence[DkvMessage]]] = []  # (sender, batch)
        self._turn_due = False  # a call of ``_run_turn`` is scheduled
        self._tick_due = False  # the ticker's time step goes into the next turn
        self._closed = False

    # --- life cycle ------------------------------------------------------------------------

    def attach(self, transport: PeerTransport) -> None:
        """Serve the quorum store's peer route on ``transport`` (before it starts)."""
        self.channel.attach(transport)

    def open(self) -> None:
        """Open the replica store and build the core (before the peer listener starts)."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self.store = SqliteReplicaStore(self._path, fsync=self.settings.fsync,
                                        max_hints=self.settings.max_hints)
        self.core = DkvNode(self.node_id, self.store, random.Random(), self._config)
        self._refresh_view()
        log.info("dkv_opened", keys=self.store.key_count(), hints=self.store.hint_count(),
                 fsync=self.settings.fsync)

    async def start(self) -> None:
        await self.channel.open()

    async def run(self) -> None:
        """The ticker: view, bucket table and time into the core every ``tick_ms``."""
        tick_s = self.settings.tick_ms / 1000
        next_refresh = 0.0
        while not self._closed:
            if time.monotonic() >= next_refresh:
                await self.refresh_buckets()
                next_refresh = time.monotonic() + BUCKET_REFRESH_S
            self._refresh_view()
            self._tick_due = True
            self._schedule_turn()
            await asyncio.sleep(tick_s)

    async def close(self) -> None:
        self._closed = True
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ShuttingDown("the node is shutting down"))
        await self.channel.close()
        if self.store is not None:
            self.store.close()

    # --- client operations -----------------------------------------------------------------

    async def put(self, bucket: str, key: str, value: bytes | None, context: VersionVector,
                  *, w: int | None = None) -> OpResult:
        """Write (``value`` None: delete) over what ``context`` covers; waits for W acks."""
        props = self._props_for_request(bucket, r=None, w=w)
        return await self._submit(
            lambda core, op_id, now_ns: core.put(op_id, bucket, key, value, context, now_ns,
                                                 props))

    async def get(self, bucket: str, key: str, *, r: int | None = None) -> OpResult:
        """Read from R replicas (all siblings, merged)."""
        props = self._props_for_request(bucket, r=r, w=None)
        return await self._submit(
            lambda core, op_id, now_ns: core.get(op_id, bucket, key, now_ns, props))

    def placement(self, bucket: str, key: str) -> Placement:
        core = self._core()
        n = self.props(bucket).n
        partition = partition_of(bucket, key, self._config.partition_count)
        walk = core.ring.walk(partition)
        preference = tuple(walk[:n])
        targets = core.targets(bucket, key, n)
        return Placement(partition, preference, tuple(targets.items()),
                         tuple(node for node in preference if not core.is_up(node)))

    def fingerprints(self) -> dict[str, str]:
        """Partition -> Merkle root (hex) of the partitions this node is a primary for, for
        the default N (``GET /v1/dkv?trees=1``)."""
        found = self._core().fingerprints(self._config.default_props.n)
        return {str(partition): root.hex() for partition, root in sorted(found.items())}

    def status(self) -> dict[str, Any]:
        return asdict(self._core().status())

    # --- bucket properties -----------------------------------------------------------------

    def props(self, bucket: str) -> BucketProps:
        validate_bucket_name(bucket)
        return self._buckets.get(bucket, self._config.default_props)

    def bucket_table(self) -> dict[str, BucketProps]:
        return dict(self._buckets)

    async def set_props(self, bucket: str, changes: dict[str, object],
                        timeout_s: float) -> BucketProps:
        """Validate and store a bucket's props through Raft (leader only: NotLeaderHere)."""
        try:
            validate_bucket_name(bucket)
            props = BucketProps.from_mapping(changes, base=self.props(bucket))
        except (ValueError, TypeError) as error:
            raise BadRequest(str(error)) from None
        document = {"n": props.n, "r": props.r, "w": props.w, "lww": props.lww}
        command = Command(Put(BUCKET_KEY_PREFIX + bucket, json.dumps(document).encode()), "")
        await self._service.write(command, timeout_s)
        self._install_bucket(bucket, props)
        return props

    async def refresh_buckets(self) -> None:
        """Re-read the bucket table from this node's copy of the Raft store."""
        try:
            items, _ = await self._service.range(BUCKET_KEY_PREFIX, None, False, 1.0)
        except Exception as error:
            log.warning("dkv bucket table not refreshed", error=str(error))
            return
        table: dict[str, BucketProps] = {}
        for item in items:
            bucket = item.key[len(BUCKET_KEY_PREFIX):]
            try:
                table[bucket] = BucketProps.from_mapping(json.loads(item.value))
            except (ValueError, TypeError) as error:
                log.error("dkv bucket props unreadable", bucket=bucket, error=str(error))
        if table != self._buckets:
            self._buckets = table
            self._core().set_buckets(sorted(table.items()))

    def _install_bucket(self, bucket: str, props: BucketProps) -> None:
        if self._buckets.get(bucket) != props:
            self._buckets[bucket] = props
            self._core().set_buckets(sorted(self._buckets.items()))

    def _props_for_request(self, bucket: str, *, r: int | None, w: int | None) -> BucketProps:
        try:
            return self.props(bucket).override(r=r, w=w)
        except ValueError as error:
            raise BadRequest(str(error)) from None

    # --- plumbing --------------------------------------------------------------------------

    def _core(self) -> DkvNode:
        if self.core is None or self._closed:
            raise ShuttingDown("the quorum store is not running")
        return self.core

    def _now_ns(self) -> int:
        now = self._wall_clock_ns()
        self._last_now_ns = max(self._last_now_ns + 1, now)
        return self._last_now_ns

    def _submit(self, start: Callable[[DkvNode, int, int], None]) -> asyncio.Future[OpResult]:
        """Queue a client operation; it starts in the next ``_run_turn``."""
        self._core()
        op_id = self._next_op_id
        self._next_op_id += 1
        future: asyncio.Future[OpResult] = asyncio.get_running_loop().create_future()
        self._waiting[op_id] = future
        self._starting.append((op_id, start))
        self._schedule_turn()
        return future

    def _on_messages(self, sender: str, messages: Sequence[DkvMessage]) -> None:
        """Queue a peer's batch; it is stepped in the next ``_run_turn``."""
        if self.core is None or self._closed:
            return
        self._arrived.append((sender, messages))
        self._schedule_turn()

    def _schedule_turn(self) -> None:
        if not self._turn_due:
            self._turn_due = True
            asyncio.get_running_loop().call_soon(self._run_turn)

    def _run_turn(self) -> None:
        """Step every peer batch and start every client operation queued since the last
        turn, then the ticker's time step if one is due, all in one store transaction: group
        commit, one fsync for every replica write among them (however many peers and clients
        they came from, hint replays and read repairs included). The client path's requests
        to other replicas leave before the commit, so their round trip overlaps this node's
        fsync; every answer, acknowledgement and reply waits for it. The tick comes last, so
        an acknowledgement stepped in the same turn counts before its operation's deadline
        is judged."""
        self._turn_due = False
        arrived, self._arrived = self._arrived, []
        starting, self._starting = self._starting, []
        tick, self._tick_due = self._tick_due, False
        core = self.core
        if core is None or self._closed:
            return
        assert self.store is not None
        now_ns = self._now_ns()
        with self.store.batch():
            for sender, messages in arrived:
                for message in messages:
                    core.step(sender, message, now_ns)
            for op_id, start in starting:
                try:
                    start(core, op_id, now_ns)
                except ValueError as error:
                    future = self._waiting.pop(op_id)
                    future.set_exception(BadRequest(str(error)))
            if tick:
                core.tick(now_ns)
            ready = core.ready()
            held = self._send_requests_early(ready.messages)
        self._flush(held, ready)

    def _refresh_view(self) -> None:
        core = self.core
        if core is None:
            return
        members = {member.node_id for member in self._service.members()} | {self.node_id}
        if self._alive_members is None:
            alive = members
        else:
            alive = self._alive_members() | {self.node_id}
        core.set_view(members, alive)

    def _send_requests_early(self, messages: Sequence[Outbound]) -> list[Outbound]:
        """Send the turn's client-path requests (``SENDABLE_BEFORE_COMMIT``) now, before
        its transaction commits, so the recipients store and answer them while this node's
        own fsync runs; return the messages that must wait for the commit."""
        early: list[Outbound] = []
        held: list[Outbound] = []
        for outbound in messages:
            (early if isinstance(outbound.message, SENDABLE_BEFORE_COMMIT) else held).append(
                outbound)
        self._send(early)
        return held

    def _send(self, messages: Sequence[Outbound]) -> None:
        """One batch per peer."""
        outbox: defaultdict[str, list[DkvMessage]] = defaultdict(list)
        for outbound in messages:
            outbox[outbound.recipient].append(outbound.message)
        for recipient, batch in outbox.items():
            self.channel.send_batch(recipient, self._addresses.get(recipient), batch)

    def _flush(self, messages: Sequence[Outbound], ready: DkvReady) -> None:
        """After the turn's commit: send ``messages`` and answer finished operations."""
        self._send(messages)
        for result in ready.results:
            future = self._waiting.pop(result.op_id, None)
            if future is not None and not future.done():
                future.set_result(result)
        for event in ready.events:
            log.debug(event.name, **event.attrs)
