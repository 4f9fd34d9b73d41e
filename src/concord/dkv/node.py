"""DkvNode: one quorum-store replica and coordinator, as a pure state machine.

Inputs: ``set_view(members, alive)`` (the membership view: who is on the ring, who is up),
``put`` and ``get`` (client operations), ``step(sender, message, now_ns)`` (a peer
message) and ``tick(now_ns)`` (time passes; call it every few tens of milliseconds).
Output: ``ready()``, a ``DkvReady`` with the messages to send (any order; loss is
tolerated), the client operations that completed, and trace events. The store is written
synchronously inside those calls and is durable when they return (``ReplicaStore``), so a
message in ``ready()`` never announces something that is not yet durable; there is no
``advance``. A shell that wraps several calls in one store transaction (the daemon does)
sends their messages and answers once it has committed, except the requests in
``messages.SENDABLE_BEFORE_COMMIT``, which promise nothing about this node's copy.
``now_ns`` must be the node's wall clock in nanoseconds, never going back, also across
restarts: it times requests and stamps writes (the node keeps stamps strictly increasing,
and a write's dot counter is its stamp, see ``versions.new_write``).

What it does (Dynamo, DeCandia et al. 2007; Riak KV for the details):

- **Placement.** A key's replicas are the first N members of its partition's walk
  (``ring.Ring``). When some of them are down, the next members of the walk that are up
  stand in for them (sloppy quorum): such a fallback stores the copy like a replica, so reads
  see it, and keeps a durable *hint* naming the primary it stands in for.
- **Writes.** A node that is not one of the key's targets forwards a client write to the
  first target. The coordinator applies it to its own copy (``new_write``, stamped with its
  clock, the dot naming an actor id of this node that is renewed after a restart or a
  removal, see ``_writer``), stores it, and sends the resulting object to the other
  targets; W acknowledgements, its own included, complete the write. Not enough acknowledgements by
  ``request_timeout_ns`` (or every target answered and too few stored it): the write fails
  with a message saying how many replicas acknowledged, out of how many needed and asked.
- **Reads.** The coordinator asks every target and answers with the merge of the first R
  copies (``versions.merge``; LWW buckets keep the newest sibling). Read repair: the merged
  copy goes to every replica whose copy differed; when R is a majority of N the read waits
  for those repairs to be acknowledged before answering (so a later quorum read cannot see
  less), otherwise it answers at once. Copies that arrive after the answer are repaired too.
- **Hints.** Replayed oldest first, ``hint_replay_batch`` at a time per owner, once the owner
  is up again: an owner's next batch leaves at the first tick after its last one was all
  acknowledged, and ``hint_replay_interval_ns`` paces the retries when it was not. Dropped
  after ``hint_max_age_ns`` or when the owner left the ring.
- **Sweep.** Every ``sweep_interval_ns`` the node looks at up to ``sweep_keys`` of its keys
  (round robin over partitions): a key it holds but is not a primary for (a fallback copy,
  or the ring changed) is pushed to every primary and dropped once all of them acknowledged
  it (hand-off); a tombstone older than ``tombstone_grace_ns`` is collected once every
  primary confirms it holds that same tombstone (or nothing).
- **Anti-entropy.** At most one Merkle exchange per ``aae_interval_ns``: one partition (and
  N), one peer among its primaries, round robin — except that a peer coming back up (a
  healed partition, a restart) is compared first on every partition shared with it; the
  two trees are compared level by level and the keys of differing segments are exchanged
  and merged both ways (``merkle``). While pairs wait in that first-compared queue the pace
  is ``aae_catch_up_interval_ns`` instead, when that is shorter, and an exchange cut short by
  ``aae_max_keys`` puts its pair back at the queue's head: a steady cluster compares rarely,
  a healed one quickly until it is repaired.
  Trees are built from the store on first use and kept up to date by every write after.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from concord.core.trace import TraceEvent
from concord.dkv.config import MAX_CONTEXT_COUNTER, BucketProps, DkvConfig, validate_bucket_name
from concord.dkv.merkle import MerkleTree
from concord.dkv.messages import (
    AaeKeys,
    AaeKeysReply,
    AaeLevel,
    AaeLevelReply,
    DkvMessage,
    ForwardPut,
    ForwardReply,
    GetReply,
    HandoffPush,
    HintDelivery,
    PutAck,
    ReplicaGet,
    ReplicaPut,
    TombstoneCheck,
    TombstoneCheckReply,
    TombstoneCollect,
)
from concord.dkv.ring import Ring, partition_of
from concord.dkv.store import ReplicaStore, StoredKey
from concord.dkv.versions import (
    MAX_VALUE_BYTES,
    VersionedObject,
    VersionVector,
    last_write_wins,
    merge,
    new_write,
)


@dataclass(frozen=True, slots=True)
class Outbound:
    """Send ``message`` to ``recipient``."""

    recipient: str
    message: DkvMessage


@dataclass(frozen=True, slots=True)
class OpResult:
    """How a client operation ended.

    ``ok``: a put reached W (``obj`` is the coordinator's copy after the write, whose
    ``context()`` covers it), or a get reached R (``obj`` is the merged copy, None when no
    replica holds the key; a copy whose siblings are all tombstones reads as deleted but
    still carries the context to write after the delete). ``replicas`` are the replicas that
    acknowledged (put) or answered (get), ``needed`` is W or R, ``answered`` how many of the
    ``targets`` replicas asked answered at all. Not ``ok``: ``error`` says why, with the
    same counts, and ``obj`` is None. ``copies``: for a successful get, each answering
    replica's copy as it was before read repair (what ``?explain=1`` shows). ``refused``: the
    coordinator refused the write before storing or sending anything (too many siblings,
    ``DkvConfig.max_siblings``); retrying the same write cannot succeed.
    """

    op_id: int
    ok: bool
    obj: VersionedObject | None
    replicas: tuple[str, ...]
    needed: int
    answered: int
    targets: int
    error: str = ""
    copies: tuple[tuple[str, VersionedObject | None], ...] = ()
    refused: bool = False


@dataclass(frozen=True, slots=True)
class DkvReady:
    """Everything the shell must do now: send ``messages``, answer ``results``, log
    ``events``."""

    messages: tuple[Outbound, ...]
    results: tuple[OpResult, ...]
    events: tuple[TraceEvent, ...]

    def is_empty(self) -> bool:
        return not (self.messages or self.results or self.events)


@dataclass(frozen=True, slots=True)
class DkvStatus:
    """Counters for metrics and /status, from this node's point of view."""

    node_id: str
    ring_members: int
    alive_members: int
    keys: int
    hints_held: int
    pending_requests: int
    puts_ok: int
    puts_failed: int
    gets_ok: int
    gets_failed: int
    forwarded: int
    read_repairs: int
    hints_stored: int
    hints_refused: int
    hints_delivered: int
    hints_expired: int
    handoffs: int
    tombstones_collected: int
    aae_exchanges: int
    aae_keys_repaired: int


@dataclass(slots=True)
class _Counters:
    puts_ok: int = 0
    puts_failed: int = 0
    gets_ok: int = 0
    gets_failed: int = 0
    forwarded: int = 0
    read_repairs: int = 0
    hints_stored: int = 0
    hints_refused: int = 0
    hints_delivered: int = 0
    hints_expired: int = 0
    handoffs: int = 0
    tombstones_collected: int = 0
    aae_exchanges: int = 0
    aae_keys_repaired: int = 0


def _check_context(context: VersionVector) -> None:
    """ValueError for a client context whose counters a dot or digest cannot hold."""
    for node, counter in context.entries:
        if counter > MAX_CONTEXT_COUNTER:
            raise ValueError(f"context counter for {node!r} is larger than "
                             f"{MAX_CONTEXT_COUNTER}")


Targets = dict[str, str | None]
"""A key's replicas for one request, in preference order: node -> the primary it stands in
for (None for a primary)."""


@dataclass(slots=True)
class _PutOp:
    op_id: int | None  # None: coordinated for another node (reply_to)
    reply_to: tuple[str, int] | None  # (node, its request id) of a forwarded write
    bucket: str
    key: str
    obj: VersionedObject
    targets: Targets
    needed: int
    deadline_ns: int
    acked: list[str] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _GetOp:
    op_id: int
    bucket: str
    key: str
    targets: Targets
    needed: int
    blocking_repair: bool
    deadline_ns: int
    replies: dict[str, VersionedObject | None] = field(default_factory=dict)
    merged: VersionedObject | None = None
    answered: bool = False  # the client has its result
    repairs_waiting: set[str] | None = None  # blocking read repair in flight


@dataclass(slots=True)
class _ForwardOp:
    op_id: int
    target: str
    needed: int
    deadline_ns: int


@dataclass(slots=True)
class _HintSend:
    hint_id: int
    target: str
    deadline_ns: int


@dataclass(slots=True)
class _Handoff:
    bucket: str
    key: str
    digest: bytes
    waiting: set[str]
    deadline_ns: int


@dataclass(slots=True)
class _TombstoneCheck:
    bucket: str
    key: str
    digest: bytes
    waiting: set[str]
    deadline_ns: int


@dataclass(slots=True)
class _Exchange:
    peer: str
    partition: int
    n: int
    level: int  # the level of the last AaeLevel sent; depth + 1 once keys were sent
    deadline_ns: int
    cut_short: bool = False  # aae_max_keys left differing keys for another exchange


_Pending = _PutOp | _GetOp | _ForwardOp | _HintSend | _Handoff | _TombstoneCheck | _Exchange


class DkvNode:
    """One quorum-store node: replica of its partitions, coordinator of client operations."""

    def __init__(self, node_id: str, store: ReplicaStore, rng: random.Random,
                 config: DkvConfig) -> None:
        if not isinstance(node_id, str) or not node_id:
            raise ValueError(f"dkv node: node_id must be a non-empty string, got {node_id!r}")
        self.node_id = node_id
        self.config = config
        self._store = store
        self._rng = rng
        self._ring = Ring((), config.partition_count, config.vnodes_per_node)
        self._alive: frozenset[str] = frozenset()
        self._primary_partitions: dict[int, tuple[int, ...]] = {}
        self._next_request_id = rng.getrandbits(48) + 1
        self._last_stamp_ns = 0
        self._actor: str | None = None
        self._pending: dict[int, _Pending] = {}
        self._client_ops: set[int] = set()
        self._busy_keys: set[tuple[str, str]] = set()  # hand-off or collection in flight
        self._trees: dict[tuple[int, int], MerkleTree] = {}
        self._exchange_id: int | None = None
        self._aae_cursor = rng.randrange(1 << 16)  # nodes start their rounds apart
        self._aae_urgent: list[tuple[int, int, str]] = []  # (partition, n, peer) first
        self._last_aae_ns = 0  # when the last exchange started
        self._hints_acknowledged = False  # a hint was delivered since the last replay
        self._sweep_partition = 0
        self._sweep_after: tuple[str, str] | None = None
        self._next_hint_ns: int | None = None
        self._next_sweep_ns: int | None = None
        self._next_aae_ns: int | None = None
        self._outbox: list[Outbound] = []
        self._results: list[OpResult] = []
        self._events: list[TraceEvent] = []
        self._counters = _Counters()

    # --- view ----------------------------------------------------------------------------

    def set_view(self, members: Iterable[str], alive: Iterable[str]) -> None:
        """The ring members (every node that has not left) and those that are up now.

        This node always counts itself as up. Members decide placement; ``alive`` decides
        who is asked and who stands in for whom.
        """
        member_set = frozenset(members)
        alive_set = frozenset(alive)
        for node in member_set | alive_set:
            if not isinstance(node, str) or not node:
                raise ValueError(f"dkv view: node ids are non-empty strings, got {node!r}")
        if member_set != frozenset(self._ring.members):
            self._ring = Ring(member_set, self.config.partition_count,
                              self.config.vnodes_per_node)
            self._primary_partitions.clear()
            self._events.append(TraceEvent("dkv.ring_changed",
                                           {"members": len(member_set)}))
        returned = alive_set - self._alive - {self.node_id}
        if self._alive and returned:
            self._queue_urgent_exchanges(returned)
        self._alive = alive_set
        exchange_id = self._exchange_id
        exchange = None if exchange_id is None else self._pending.get(exchange_id)
        if isinstance(exchange, _Exchange) and not self.is_up(exchange.peer):
            assert exchange_id is not None
            self._drop_background(exchange_id)  # do not wait for a peer that is down

    def set_buckets(self, buckets: Iterable[tuple[str, BucketProps]]) -> None:
        """Replace the table of buckets whose props differ from the defaults (the props are
        kept cluster-wide by the shell; a changed N moves keys by hand-off)."""
        self.config = replace(self.config, buckets=tuple(buckets))

    @property
    def ring(self) -> Ring:
        return self._ring

    def is_up(self, node: str) -> bool:
        return node == self.node_id or node in self._alive

    def targets(self, bucket: str, key: str, n: int | None = None) -> Targets:
        """Who a request for this key goes to now: the primaries that are up, then one
        fallback (the next member of the walk that is up) for each primary that is down."""
        n = self.config.props_for(bucket).n if n is None else n
        walk = self._ring.walk(partition_of(bucket, key, self.config.partition_count))
        targets: Targets = {node: None for node in walk[:n] if self.is_up(node)}
        fallbacks = (node for node in walk[n:] if self.is_up(node))
        for primary in walk[:n]:
            if primary not in targets:
                fallback = next(fallbacks, None)
                if fallback is None:
                    break
                targets[fallback] = primary
        return targets

    # --- client operations ---------------------------------------------------------------

    def put(self, op_id: int, bucket: str, key: str, value: bytes | None,
            context: VersionVector, now_ns: int, props: BucketProps | None = None) -> None:
        """Write ``value`` (None: delete) over the versions ``context`` covers.

        ``props`` defaults to the bucket's; a request may change R and W only. The result
        comes in a later ``ready()`` (possibly the next one). Raises ValueError for bad input
        (empty key, value over 1 MiB, op_id already in flight...).
        """
        props = self._request_props(op_id, bucket, key, props)
        if value is not None and (not isinstance(value, bytes) or len(value) > MAX_VALUE_BYTES):
            raise ValueError(f"put {bucket}/{key}: value must be bytes of at most "
                             f"{MAX_VALUE_BYTES} bytes")
        if not isinstance(context, VersionVector):
            raise ValueError(f"put {bucket}/{key}: context must be a VersionVector")
        _check_context(context)
        if self._overloaded(op_id, props.w, "put"):
            return
        targets = self.targets(bucket, key, props.n)
        if targets and self.node_id not in targets:
            target = next(iter(targets))
            request_id = self._request_id()
            self._pending[request_id] = _ForwardOp(op_id, target, props.w,
                                                   now_ns + 2 * self.config.request_timeout_ns)
            self._client_ops.add(op_id)
            self._counters.forwarded += 1
            self._send(target, ForwardPut(request_id, bucket, key, value, context.entries,
                                          props.w))
            return
        self._client_ops.add(op_id)
        self._coordinate_put(op_id, None, bucket, key, value, context, props.w, now_ns)

    def get(self, op_id: int, bucket: str, key: str, now_ns: int,
            props: BucketProps | None = None) -> None:
        """Read a key from R replicas. The result comes in a later ``ready()``."""
        props = self._request_props(op_id, bucket, key, props)
        if self._overloaded(op_id, props.r, "get"):
            return
        self._client_ops.add(op_id)
        targets = self.targets(bucket, key, props.n)
        if len(targets) < props.r:
            self._fail_unreachable(op_id, "get", bucket, key, "R", props.r, targets)
            return
        request_id = self._request_id()
        op = _GetOp(op_id, bucket, key, targets, props.r, props.r >= props.quorum,
                    now_ns + self.config.request_timeout_ns)
        self._pending[request_id] = op
        for node in targets:
            if node == self.node_id:
                op.replies[node] = self._store.get(bucket, key)
            else:
                self._send(node, ReplicaGet(request_id, bucket, key))
        self._advance_get(request_id, op, now_ns)

    def _request_props(self, op_id: int, bucket: str, key: str,
                       props: BucketProps | None) -> BucketProps:
        validate_bucket_name(bucket)
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty string, got {key!r}")
        if isinstance(op_id, bool) or not isinstance(op_id, int):
            raise ValueError(f"op_id must be an integer, got {op_id!r}")
        if op_id in self._client_ops:
            raise ValueError(f"op_id {op_id} is already in flight")
        configured = self.config.props_for(bucket)
        if props is None:
            return configured
        if (props.n, props.lww) != (configured.n, configured.lww):
            raise ValueError(f"bucket {bucket!r} has n={configured.n}, lww={configured.lww}; "
                             f"a request may override r and w only")
        return props

    def _overloaded(self, op_id: int, needed: int, what: str) -> bool:
        if len(self._pending) < self.config.max_pending_ops:
            return False
        self._count_failure(what)
        self._results.append(OpResult(
            op_id, False, None, (), needed, 0, 0,
            f"{what} refused: {len(self._pending)} requests in flight on {self.node_id} "
            f"(max_pending_ops={self.config.max_pending_ops})"))
        return True

    def _fail_unreachable(self, op_id: int | None, what: str, bucket: str, key: str,
                          quorum: str, needed: int, targets: Targets,
                          reply_to: tuple[str, int] | None = None) -> None:
        self._count_failure(what)
        error = (f"{what} {bucket}/{key} failed: {quorum}={needed} needs {needed} replicas, "
                 f"only {len(targets)} reachable"
                 + (f" ({', '.join(targets)})" if targets else ""))
        self._finish(op_id, reply_to, OpResult(op_id or 0, False, None, (), needed, 0,
                                               len(targets), error))

    def _count_failure(self, what: str) -> None:
        if what == "put":
            self._counters.puts_failed += 1
        else:
            self._counters.gets_failed += 1

    # --- writes --------------------------------------------------------------------------

    def _coordinate_put(self, op_id: int | None, reply_to: tuple[str, int] | None,
                        bucket: str, key: str, value: bytes | None, context: VersionVector,
                        w: int, now_ns: int) -> None:
        targets = self.targets(bucket, key)
        if len(targets) < w:
            self._fail_unreachable(op_id, "put", bucket, key, "W", w, targets, reply_to)
            return
        partition = partition_of(bucket, key, self.config.partition_count)
        local = self._store.get(bucket, key)
        stamp = self._stamp(now_ns, local)
        context = self._pruned(context)
        obj = new_write(local, context, self._writer(stamp), value, stamp)
        if self.config.props_for(bucket).lww:
            obj = last_write_wins(obj)
        if len(obj.siblings) > self.config.max_siblings:
            self._count_failure("put")
            self._finish(op_id, reply_to, OpResult(
                op_id or 0, False, None, (), w, 0, len(targets),
                f"put {bucket}/{key} refused: it would leave {len(obj.siblings)} siblings "
                f"(max_siblings={self.config.max_siblings}); read the key, merge its "
                f"siblings and write back with the context it returned", refused=True))
            return
        op = _PutOp(op_id, reply_to, bucket, key, obj, targets, w,
                    now_ns + self.config.request_timeout_ns)
        request_id = self._request_id()
        self._pending[request_id] = op
        # The coordinator keeps its write even when it is no target (a forwarded write
        # whose views disagree) or its hint store is full: its writer's next dot for this
        # key must come from a copy that holds this one (see _writer).
        self._write(bucket, key, partition, local, obj)
        if self.node_id in targets:
            op.answered.add(self.node_id)
            hint_for = targets[self.node_id]
            if hint_for is None or self._hold_hint(hint_for, bucket, key, partition, obj,
                                                   now_ns):
                op.acked.append(self.node_id)
        for node, hint_for in targets.items():
            if node != self.node_id:
                self._send(node, ReplicaPut(request_id, bucket, key, op.obj, hint_for))
        self._advance_put(request_id, op)

    def _pruned(self, context: VersionVector) -> VersionVector:
        """The context without the oldest actors of any node that has more than
        ``max_actors_per_node`` (a node gets a new actor after each restart): the bound on
        clock growth. Dropping an entry can only leave an old sibling of that actor looking
        concurrent (an extra sibling, removed by the next write that reads it), never hide
        a write."""
        by_node: dict[str, list[tuple[int, str]]] = {}
        for actor, _ in context.entries:
            node, _, stamp = actor.rpartition("@")
            by_node.setdefault(node or actor, []).append(
                (int(stamp) if stamp.isdigit() else 0, actor))
        dropped = [actor for actors in by_node.values()
                   for _, actor in sorted(actors)[:-self.config.max_actors_per_node]]
        return context.without(dropped) if dropped else context

    def _writer(self, stamp: int) -> str:
        """The actor id this node's next dot carries: ``<node_id>@<stamp of its first
        write>``, renewed after every restart and every removal of a key.

        A version vector entry ``(actor, c)`` in a context claims every dot of that actor up
        to ``c`` for the key, so an actor's dots for a key must all come from one unbroken
        local copy, each write's object carrying the earlier dots (or what superseded them).
        A node that dropped a copy (hand-off, tombstone collection), or restarted and cannot
        tell which copies it kept, could otherwise issue a later dot that makes a client's
        context cover an earlier write the client never saw, and lose it. A fresh actor has
        no earlier dots anywhere (Riak's fresh vnode ids serve the same end).
        """
        if self._actor is None:
            self._actor = f"{self.node_id}@{stamp}"
        return self._actor

    def _stamp(self, now_ns: int, local: VersionedObject | None) -> int:
        """A write's timestamp: past every earlier stamp of this node, and past the newest
        write on the local copy unless that one is implausibly far in the future."""
        stamp = max(now_ns, self._last_stamp_ns + 1)
        if local is not None:
            newest = local.newest_timestamp_ns()
            if newest >= stamp and newest - now_ns <= self.config.max_clock_offset_ns:
                stamp = newest + 1
        self._last_stamp_ns = stamp
        return stamp

    def _advance_put(self, request_id: int, op: _PutOp) -> None:
        if len(op.acked) >= op.needed:
            del self._pending[request_id]
            self._counters.puts_ok += 1
            self._finish(op.op_id, op.reply_to, OpResult(
                op.op_id or 0, True, op.obj, tuple(op.acked), op.needed, len(op.answered),
                len(op.targets)))
        elif len(op.answered) == len(op.targets):
            del self._pending[request_id]
            self._fail_put(op, "every replica answered")

    def _fail_put(self, op: _PutOp, why: str) -> None:
        self._counters.puts_failed += 1
        acked = f" ({', '.join(op.acked)})" if op.acked else ""
        error = (f"put {op.bucket}/{op.key} failed ({why}): {len(op.acked)} of W={op.needed} "
                 f"required replicas acknowledged{acked}; {len(op.answered)} of "
                 f"{len(op.targets)} replicas answered")
        self._events.append(TraceEvent("dkv.put_failed", {"bucket": op.bucket, "key": op.key,
                                                          "acked": len(op.acked),
                                                          "needed": op.needed}))
        self._finish(op.op_id, op.reply_to, OpResult(
            op.op_id or 0, False, None, tuple(op.acked), op.needed, len(op.answered),
            len(op.targets), error))

    def _finish(self, op_id: int | None, reply_to: tuple[str, int] | None,
                result: OpResult) -> None:
        if reply_to is not None:
            node, request_id = reply_to
            self._send(node, ForwardReply(request_id, result.ok, result.obj, result.replicas,
                                          result.needed, result.answered, result.targets,
                                          result.error, result.refused))
            return
        assert op_id is not None and op_id in self._client_ops, "one result per client op"
        self._client_ops.discard(op_id)
        self._results.append(result)

    def _absorb(self, bucket: str, key: str, obj: VersionedObject, hint_for: str | None,
                now_ns: int) -> VersionedObject | None:
        """Merge a copy into the store (and hold a hint for ``hint_for``). Returns the stored
        copy, or None when the hint store is full and nothing was stored."""
        partition = partition_of(bucket, key, self.config.partition_count)
        local = self._store.get(bucket, key)
        merged = merge(local, obj)
        assert merged is not None
        if self.config.props_for(bucket).lww:
            merged = last_write_wins(merged)
        if hint_for not in (None, self.node_id) and not self._hold_hint(
                hint_for, bucket, key, partition, merged, now_ns):
            return None
        if merged != local:
            self._write(bucket, key, partition, local, merged)
        return merged

    def _hold_hint(self, hint_for: str, bucket: str, key: str, partition: int,
                   obj: VersionedObject, now_ns: int) -> bool:
        assert hint_for != self.node_id, "a node is no fallback for itself"
        if self._store.add_hint(hint_for, bucket, key, partition, obj, now_ns) is None:
            self._counters.hints_refused += 1
            return False
        self._counters.hints_stored += 1
        return True

    def _write(self, bucket: str, key: str, partition: int, old: VersionedObject | None,
               new: VersionedObject) -> None:
        self._store.put(bucket, key, partition, new)
        tree = self._trees.get((partition, self.config.props_for(bucket).n))
        if tree is not None:
            tree.update(bucket, key, None if old is None else old.digest(), new.digest())

    def _remove(self, bucket: str, key: str, old: VersionedObject) -> None:
        partition = partition_of(bucket, key, self.config.partition_count)
        self._store.remove(bucket, key)
        self._actor = None  # see _writer
        tree = self._trees.get((partition, self.config.props_for(bucket).n))
        if tree is not None:
            tree.update(bucket, key, old.digest(), None)

    # --- reads ---------------------------------------------------------------------------

    def _advance_get(self, request_id: int, op: _GetOp, now_ns: int) -> None:
        if op.answered or op.repairs_waiting is not None or len(op.replies) < op.needed:
            return
        merged: VersionedObject | None = None
        for node in sorted(op.replies):
            merged = merge(merged, op.replies[node])
        if merged is not None and self.config.props_for(op.bucket).lww:
            merged = last_write_wins(merged)
        op.merged = merged
        stale = self._repair(request_id, op, op.replies, now_ns)
        if op.blocking_repair and stale:
            op.repairs_waiting = set(stale)
            return
        self._answer_get(request_id, op)

    def _repair(self, request_id: int, op: _GetOp,
                copies: Mapping[str, VersionedObject | None], now_ns: int) -> list[str]:
        """Send the merged copy to every replica among ``copies`` that differs from it (this
        node repairs itself at once). Returns the other nodes repaired."""
        merged = op.merged
        if merged is None:
            return []
        digest = merged.digest()
        stale = []
        for node, copy in copies.items():
            if copy is not None and copy.digest() == digest:
                continue
            self._counters.read_repairs += 1
            if node == self.node_id:
                self._absorb(op.bucket, op.key, merged, op.targets[node], now_ns)
            else:
                stale.append(node)
                self._send(node, ReplicaPut(request_id, op.bucket, op.key, merged,
                                            op.targets[node]))
        return stale

    def _answer_get(self, request_id: int, op: _GetOp) -> None:
        op.answered = True
        self._counters.gets_ok += 1
        self._finish(op.op_id, None, OpResult(op.op_id, True, op.merged, tuple(op.replies),
                                              op.needed, len(op.replies), len(op.targets),
                                              copies=tuple(op.replies.items())))
        if len(op.replies) == len(op.targets):
            del self._pending[request_id]

    def _fail_get(self, op: _GetOp, error: str) -> None:
        self._counters.gets_failed += 1
        self._events.append(TraceEvent("dkv.get_failed", {"bucket": op.bucket, "key": op.key,
                                                          "answered": len(op.replies),
                                                          "needed": op.needed}))
        self._finish(op.op_id, None, OpResult(op.op_id, False, None, tuple(op.replies),
                                              op.needed, len(op.replies), len(op.targets),
                                              error))

    def _on_get_reply(self, sender: str, request_id: int, op: _GetOp, msg: GetReply,
                      now_ns: int) -> None:
        if sender not in op.targets or sender in op.replies:
            return
        op.replies[sender] = msg.obj
        if not (op.answered or op.repairs_waiting is not None):
            self._advance_get(request_id, op, now_ns)
            return
        # a copy that came after the merge: fold it in and repair (fire and forget) the
        # replicas that now differ: the sender, or everyone if it brought something new
        before = op.merged
        op.merged = merge(op.merged, msg.obj)
        if op.merged is not None and self.config.props_for(op.bucket).lww:
            op.merged = last_write_wins(op.merged)
        news = op.merged != before
        self._repair(request_id, op, op.replies if news else {sender: msg.obj}, now_ns)
        if op.answered and len(op.replies) == len(op.targets):
            del self._pending[request_id]

    # --- peer messages -------------------------------------------------------------------

    def step(self, sender: str, message: DkvMessage, now_ns: int) -> None:
        """Handle one message from ``sender``."""
        match message:
            case ReplicaPut():
                stored = self._absorb(message.bucket, message.key, message.obj,
                                      message.hint_for, now_ns)
                self._send(sender, PutAck(message.request_id, stored is not None,
                                          "" if stored is not None else "hint store full"))
            case HintDelivery() | HandoffPush():
                self._absorb(message.bucket, message.key, message.obj, None, now_ns)
                self._send(sender, PutAck(message.request_id, True))
            case ReplicaGet():
                self._send(sender, GetReply(message.request_id,
                                            self._store.get(message.bucket, message.key)))
            case ForwardPut():
                self._on_forward_put(sender, message, now_ns)
            case TombstoneCheck():
                local = self._store.get(message.bucket, message.key)
                agree = local is None or local.digest() == message.digest
                self._send(sender, TombstoneCheckReply(message.request_id, agree))
            case TombstoneCollect():
                local = self._store.get(message.bucket, message.key)
                if local is not None and local.digest() == message.digest:
                    self._remove(message.bucket, message.key, local)
                    self._counters.tombstones_collected += 1
            case AaeLevel():
                self._on_aae_level(sender, message)
            case AaeKeys():
                self._on_aae_keys(sender, message)
            case PutAck() | GetReply() | ForwardReply() | TombstoneCheckReply() \
                    | AaeLevelReply() | AaeKeysReply():
                self._on_reply(sender, message, now_ns)

    def _on_forward_put(self, sender: str, msg: ForwardPut, now_ns: int) -> None:
        reply_to = (sender, msg.request_id)
        problem = ""
        context = VersionVector()
        try:
            validate_bucket_name(msg.bucket)
            context = VersionVector.from_mapping(dict(msg.context))
            _check_context(context)
            BucketProps(self.config.props_for(msg.bucket).n, 1, msg.w)
        except ValueError as exc:
            problem = str(exc)
        if not problem and len(self._pending) >= self.config.max_pending_ops:
            problem = (f"{len(self._pending)} requests in flight on {self.node_id} "
                       f"(max_pending_ops={self.config.max_pending_ops})")
        if problem:
            self._send(sender, ForwardReply(msg.request_id, False, None, (), msg.w, 0, 0,
                                            f"forwarded put refused: {problem}"))
            return
        self._coordinate_put(None, reply_to, msg.bucket, msg.key, msg.value, context, msg.w,
                             now_ns)

    def _on_reply(self, sender: str, message: PutAck | GetReply | ForwardReply
                  | TombstoneCheckReply | AaeLevelReply | AaeKeysReply, now_ns: int) -> None:
        request_id = message.request_id
        op = self._pending.get(request_id)
        match op, message:
            case _PutOp(), PutAck():
                if sender in op.targets and sender not in op.answered:
                    op.answered.add(sender)
                    if message.ok:
                        op.acked.append(sender)
                    self._advance_put(request_id, op)
            case _GetOp(), GetReply():
                self._on_get_reply(sender, request_id, op, message, now_ns)
            case _GetOp(), PutAck():
                waiting = op.repairs_waiting
                if waiting is not None and not op.answered and message.ok:
                    waiting.discard(sender)
                    if not waiting:
                        self._answer_get(request_id, op)
            case _ForwardOp(), ForwardReply():
                if sender == op.target:
                    del self._pending[request_id]
                    self._counters.puts_ok += message.ok
                    self._counters.puts_failed += not message.ok
                    self._finish(op.op_id, None, OpResult(
                        op.op_id, message.ok, message.obj, message.replicas, message.needed,
                        message.answered, message.targets,
                        message.error if message.ok else
                        f"{message.error} (coordinated by {sender})",
                        refused=message.refused))
            case _HintSend(), PutAck():
                if sender == op.target:
                    del self._pending[request_id]
                    if message.ok:
                        self._store.remove_hint(op.hint_id)
                        self._counters.hints_delivered += 1
                        self._hints_acknowledged = True
            case _Handoff(), PutAck():
                if message.ok and sender in op.waiting:
                    op.waiting.discard(sender)
                    if not op.waiting:
                        self._finish_handoff(request_id, op)
            case _TombstoneCheck(), TombstoneCheckReply():
                if sender not in op.waiting:
                    return
                if not message.agree:
                    self._drop_background(request_id)
                    return
                op.waiting.discard(sender)
                if not op.waiting:
                    self._collect_tombstone(request_id, op)
            case _Exchange(), AaeLevelReply():
                if sender == op.peer:
                    self._on_aae_level_reply(request_id, op, message)
            case _Exchange(), AaeKeysReply():
                if sender == op.peer:
                    self._on_aae_keys_reply(request_id, op, message)
            case _:
                pass  # late or duplicate answer, or one meant for an earlier run of this node

    # --- time ----------------------------------------------------------------------------

    def tick(self, now_ns: int) -> None:
        """Let time pass: time out requests, replay and expire hints, sweep, anti-entropy."""
        if self._next_hint_ns is None:
            self._start_timers(now_ns)
        for request_id, op in list(self._pending.items()):
            if op.deadline_ns <= now_ns and request_id in self._pending:
                self._time_out(request_id, op)
        assert self._next_hint_ns is not None
        assert self._next_sweep_ns is not None and self._next_aae_ns is not None
        if now_ns >= self._next_hint_ns:
            self._next_hint_ns = now_ns + self.config.hint_replay_interval_ns
            self._hints_acknowledged = False
            self._expire_hints(now_ns)
            self._replay_hints(now_ns)
        elif self._hints_acknowledged:  # an owner may be free for its next batch already
            self._hints_acknowledged = False
            self._replay_hints(now_ns)
        if now_ns >= self._next_sweep_ns:
            self._next_sweep_ns = now_ns + self.config.sweep_interval_ns
            self._sweep(now_ns)
        if now_ns >= self._next_aae_ns:
            if self._exchange_id is None:
                self._last_aae_ns = now_ns
                self._start_exchange(now_ns)
            self._next_aae_ns = now_ns + self._aae_pace_ns()

    def _start_timers(self, now_ns: int) -> None:
        """Background jobs start at a random point of their first interval, so a cluster
        started at once does not run them in step."""
        config = self.config
        self._next_hint_ns = now_ns + self._rng.randrange(config.hint_replay_interval_ns)
        self._next_sweep_ns = now_ns + self._rng.randrange(config.sweep_interval_ns)
        self._next_aae_ns = now_ns + self._rng.randrange(config.aae_interval_ns)

    def _time_out(self, request_id: int, op: _Pending) -> None:
        match op:
            case _PutOp():
                del self._pending[request_id]
                self._fail_put(op, "timed out")
            case _GetOp():
                del self._pending[request_id]
                if op.answered:
                    return
                if op.repairs_waiting is not None:
                    self._fail_get(op, (
                        f"get {op.bucket}/{op.key} failed (timed out): read repair of "
                        f"{len(op.repairs_waiting)} stale replicas not acknowledged "
                        f"({', '.join(sorted(op.repairs_waiting))}); {len(op.replies)} of "
                        f"{len(op.targets)} replicas answered"))
                else:
                    answered = f" ({', '.join(op.replies)})" if op.replies else ""
                    self._fail_get(op, (
                        f"get {op.bucket}/{op.key} failed (timed out): {len(op.replies)} of "
                        f"R={op.needed} required replicas answered{answered}; asked "
                        f"{len(op.targets)}"))
            case _ForwardOp():
                del self._pending[request_id]
                self._counters.puts_failed += 1
                self._finish(op.op_id, None, OpResult(
                    op.op_id, False, None, (), op.needed, 0, 1,
                    f"put forwarded to {op.target} failed (timed out): no answer from the "
                    f"coordinator; the write may or may not have been applied"))
            case _HintSend() | _Handoff() | _TombstoneCheck() | _Exchange():
                self._drop_background(request_id)

    def _drop_background(self, request_id: int) -> None:
        op = self._pending.pop(request_id)
        if isinstance(op, _Handoff | _TombstoneCheck):
            self._busy_keys.discard((op.bucket, op.key))
        if request_id == self._exchange_id:
            self._exchange_id = None

    # --- hints ---------------------------------------------------------------------------

    def _expire_hints(self, now_ns: int) -> None:
        expired = self._store.expire_hints(now_ns - self.config.hint_max_age_ns)
        if expired:
            self._counters.hints_expired += expired
            self._events.append(TraceEvent("dkv.hints_expired", {"count": expired}))

    def _replay_hints(self, now_ns: int) -> None:
        busy = {op.target for op in self._pending.values() if isinstance(op, _HintSend)}
        members = set(self._ring.members)
        for target in sorted(self._store.hint_targets() - busy):
            if target != self.node_id and target not in members and members:
                # the owner left the ring: its hints go nowhere (the fallback's own copy
                # is handed to the key's current primaries by the sweep)
                for hint in self._store.hints_for(target, self.config.hint_replay_batch):
                    self._store.remove_hint(hint.hint_id)
                    self._counters.hints_expired += 1
                continue
            if target == self.node_id or target not in self._alive:
                continue
            for hint in self._store.hints_for(target, self.config.hint_replay_batch):
                request_id = self._request_id()
                self._pending[request_id] = _HintSend(hint.hint_id, target,
                                                      now_ns + self.config.request_timeout_ns)
                self._send(target, HintDelivery(request_id, hint.bucket, hint.key, hint.obj))

    # --- sweep: hand-off and tombstone collection ----------------------------------------

    def _sweep(self, now_ns: int) -> None:
        if not self._ring.members:
            return
        held = sorted(self._store.partitions())
        if not held:
            return
        partition = next((p for p in held if p >= self._sweep_partition), held[0])
        if partition != self._sweep_partition:
            self._sweep_after = None
        after = self._sweep_after
        looked = 0
        for stored in self._store.keys_in_partition(partition):
            if after is not None and (stored.bucket, stored.key) <= after:
                continue
            self._sweep_key(partition, stored, now_ns)
            looked += 1
            if looked >= self.config.sweep_keys:
                self._sweep_partition = partition
                self._sweep_after = (stored.bucket, stored.key)
                return
        self._sweep_partition = partition + 1
        self._sweep_after = None

    def _sweep_key(self, partition: int, stored: StoredKey, now_ns: int) -> None:
        ident = (stored.bucket, stored.key)
        if ident in self._busy_keys:
            return
        primaries = self._ring.preference_list(partition, self.config.props_for(stored.bucket).n)
        if not all(self.is_up(node) for node in primaries):
            return  # hand-off and collection both need every primary
        obj = self._store.get(stored.bucket, stored.key)
        if obj is None:
            return
        deadline_ns = now_ns + self.config.request_timeout_ns
        if self.node_id not in primaries:
            request_id = self._request_id()
            self._pending[request_id] = _Handoff(stored.bucket, stored.key, obj.digest(),
                                                 set(primaries), deadline_ns)
            self._busy_keys.add(ident)
            for node in primaries:
                self._send(node, HandoffPush(request_id, stored.bucket, stored.key, obj))
        elif obj.is_tombstone and now_ns - obj.newest_timestamp_ns() >= \
                self.config.tombstone_grace_ns:
            others = {node for node in primaries if node != self.node_id}
            request_id = self._request_id()
            check = _TombstoneCheck(stored.bucket, stored.key, obj.digest(), others,
                                    deadline_ns)
            self._pending[request_id] = check
            self._busy_keys.add(ident)
            if not others:
                self._collect_tombstone(request_id, check)
            for node in sorted(others):
                self._send(node, TombstoneCheck(request_id, stored.bucket, stored.key,
                                                obj.digest()))

    def _finish_handoff(self, request_id: int, op: _Handoff) -> None:
        self._drop_background(request_id)
        local = self._store.get(op.bucket, op.key)
        if local is not None and local.digest() == op.digest:
            self._remove(op.bucket, op.key, local)
            self._counters.handoffs += 1
            self._events.append(TraceEvent("dkv.handoff", {"bucket": op.bucket,
                                                           "key": op.key}))

    def _collect_tombstone(self, request_id: int, op: _TombstoneCheck) -> None:
        self._drop_background(request_id)
        local = self._store.get(op.bucket, op.key)
        if local is None or local.digest() != op.digest:
            return  # written since the check: keep it
        primaries = self._ring.preference_list(
            partition_of(op.bucket, op.key, self.config.partition_count),
            self.config.props_for(op.bucket).n)
        for node in primaries:
            if node != self.node_id:
                self._send(node, TombstoneCollect(op.bucket, op.key, op.digest))
        self._remove(op.bucket, op.key, local)
        self._counters.tombstones_collected += 1

    # --- anti-entropy --------------------------------------------------------------------

    def tree(self, partition: int, n: int) -> MerkleTree:
        """The Merkle tree of this node's keys of ``partition`` in buckets with this N."""
        found = self._trees.get((partition, n))
        if found is None:
            keys = (stored for stored in self._store.keys_in_partition(partition)
                    if self.config.props_for(stored.bucket).n == n)
            found = MerkleTree.build(keys, self.config.partition_bits,
                                     self.config.merkle_fanout, self.config.merkle_depth)
            self._trees[(partition, n)] = found
        return found

    def _queue_urgent_exchanges(self, peers: frozenset[str]) -> None:
        """Peers that just came back (a healed partition, a restart) are compared first:
        every partition shared with them, before the round robin goes on, at the catch-up
        pace."""
        for n in self.config.replica_counts():
            for partition in self._primaries_of_self(n):
                self._aae_urgent.extend(
                    (partition, n, peer) for peer in self._ring.preference_list(partition, n)
                    if peer in peers and (partition, n, peer) not in self._aae_urgent)
        self._hurry_exchanges()

    def _aae_pace_ns(self) -> int:
        """The time between exchange starts: shorter while pairs wait to be compared first."""
        config = self.config
        if self._aae_urgent:
            return min(config.aae_interval_ns, config.aae_catch_up_interval_ns)
        return config.aae_interval_ns

    def _hurry_exchanges(self) -> None:
        """Bring the next exchange forward to the current pace, counted from the last start."""
        if self._next_aae_ns is not None:
            self._next_aae_ns = min(self._next_aae_ns, self._last_aae_ns + self._aae_pace_ns())

    def _next_exchange(self) -> tuple[int, int, str] | None:
        while self._aae_urgent:
            partition, n, peer = self._aae_urgent.pop(0)
            if self.is_up(peer) and peer in self._ring.preference_list(partition, n):
                return partition, n, peer
        pairs: list[tuple[int, int, str]] = []
        for n in self.config.replica_counts():
            for partition in self._primaries_of_self(n):
                pairs.extend((partition, n, peer)
                             for peer in self._ring.preference_list(partition, n)
                             if peer != self.node_id and self.is_up(peer))
        if not pairs:
            return None
        self._aae_cursor %= len(pairs)
        chosen = pairs[self._aae_cursor]
        self._aae_cursor += 1
        return chosen

    def fingerprints(self, n: int) -> dict[int, bytes]:
        """The Merkle root of each partition this node is a primary for (buckets with this
        N): two primaries of a partition hold the same versions of its keys exactly when
        their roots are equal. Reading them repairs nothing, so they show convergence."""
        return {partition: self.tree(partition, n).root()
                for partition in self._primaries_of_self(n)}

    def _start_exchange(self, now_ns: int) -> None:
        chosen = self._next_exchange()
        if chosen is None:
            return
        partition, n, peer = chosen
        request_id = self._request_id()
        self._exchange_id = request_id
        self._pending[request_id] = _Exchange(peer, partition, n, 0,
                                              now_ns + self.config.aae_timeout_ns)
        self._send(peer, AaeLevel(request_id, partition, n, 0, (0,),
                                  (self.tree(partition, n).root(),)))

    def _primaries_of_self(self, n: int) -> tuple[int, ...]:
        found = self._primary_partitions.get(n)
        if found is None:
            found = self._ring.primary_partitions(self.node_id, n)
            self._primary_partitions[n] = found
        return found

    def _valid_tree_request(self, partition: int, n: int) -> bool:
        return (0 <= partition < self.config.partition_count
                and n in self.config.replica_counts())

    def _on_aae_level(self, sender: str, msg: AaeLevel) -> None:
        if not self._valid_tree_request(msg.partition, msg.n):
            return
        try:
            differing = self.tree(msg.partition, msg.n).compare(msg.level, msg.positions,
                                                                 msg.hashes)
        except ValueError:
            return  # a peer with another tree shape: nothing to compare
        self._send(sender, AaeLevelReply(msg.request_id, differing))

    def _on_aae_level_reply(self, request_id: int, op: _Exchange, msg: AaeLevelReply) -> None:
        tree = self.tree(op.partition, op.n)
        if not msg.differing or op.level >= tree.depth + 1:
            self._end_exchange(request_id, op)
            return
        if op.level < tree.depth:
            try:
                positions = tree.children(op.level, msg.differing)
            except ValueError:  # positions that were not asked about
                self._end_exchange(request_id, op)
                return
            op.level += 1
            self._send(op.peer, AaeLevel(request_id, op.partition, op.n, op.level, positions,
                                         tree.hashes(op.level, positions)))
            return
        segments: list[int] = []
        keys: list[tuple[str, str, bytes]] = []
        by_segment = self._segment_keys(op.partition, op.n, set(msg.differing))
        for segment in sorted(set(msg.differing)):
            found = by_segment.get(segment, [])
            if segments and len(keys) + len(found) > self.config.aae_max_keys:
                break
            segments.append(segment)
            keys.extend(found)
        op.level = tree.depth + 1
        op.cut_short = len(segments) < len(set(msg.differing))
        self._send(op.peer, AaeKeys(request_id, op.partition, op.n, tuple(segments),
                                    tuple(sorted(keys))))

    def _segment_keys(self, partition: int, n: int,
                      segments: set[int]) -> dict[int, list[tuple[str, str, bytes]]]:
        tree = self.tree(partition, n)
        found: dict[int, list[tuple[str, str, bytes]]] = {}
        for stored in self._store.keys_in_partition(partition):
            if self.config.props_for(stored.bucket).n != n:
                continue
            segment = tree.segment_of(stored.bucket, stored.key)
            if segment in segments:
                found.setdefault(segment, []).append((stored.bucket, stored.key,
                                                      stored.digest))
        return found

    def _on_aae_keys(self, sender: str, msg: AaeKeys) -> None:
        if not self._valid_tree_request(msg.partition, msg.n):
            return
        mine = {(bucket, key): digest
                for found in self._segment_keys(msg.partition, msg.n,
                                                set(msg.segments)).values()
                for bucket, key, digest in found}
        theirs = {(bucket, key): digest for bucket, key, digest in msg.keys}
        limit = self.config.aae_max_keys
        wanted = sorted(ident for ident, digest in theirs.items()
                        if mine.get(ident) != digest)[:limit]
        offered = sorted(ident for ident, digest in mine.items()
                         if theirs.get(ident) != digest)[:limit]
        self._push_copies(sender, offered)
        self._send(sender, AaeKeysReply(msg.request_id, tuple(wanted)))

    def _on_aae_keys_reply(self, request_id: int, op: _Exchange, msg: AaeKeysReply) -> None:
        self._push_copies(op.peer, msg.wanted[:self.config.aae_max_keys])
        if len(msg.wanted) >= self.config.aae_max_keys:
            op.cut_short = True  # the peer may want more than one exchange carries
        self._end_exchange(request_id, op)

    def _push_copies(self, peer: str, idents: Iterable[tuple[str, str]]) -> None:
        for bucket, key in idents:
            obj = self._store.get(bucket, key)
            if obj is not None:
                self._counters.aae_keys_repaired += 1
                self._send(peer, ReplicaPut(self._request_id(), bucket, key, obj))

    def _end_exchange(self, request_id: int, op: _Exchange) -> None:
        self._counters.aae_exchanges += 1
        self._drop_background(request_id)
        if op.cut_short:  # compare the pair again soon, before the round robin goes on
            self._aae_urgent.insert(0, (op.partition, op.n, op.peer))
            self._hurry_exchanges()

    # --- output --------------------------------------------------------------------------

    def _request_id(self) -> int:
        request_id = self._next_request_id
        self._next_request_id += 1
        return request_id

    def _send(self, recipient: str, message: DkvMessage) -> None:
        assert recipient != self.node_id, "a node does not message itself"
        self._outbox.append(Outbound(recipient, message))

    def ready(self) -> DkvReady:
        """Everything to do now; empties the outbox."""
        ready = DkvReady(tuple(self._outbox), tuple(self._results), tuple(self._events))
        self._outbox.clear()
        self._results.clear()
        self._events.clear()
        return ready

    def status(self) -> DkvStatus:
        c = self._counters
        return DkvStatus(
            node_id=self.node_id, ring_members=len(self._ring.members),
            alive_members=sum(1 for m in self._ring.members if self.is_up(m)),
            keys=self._store.key_count(), hints_held=self._store.hint_count(),
            pending_requests=len(self._pending), puts_ok=c.puts_ok,
            puts_failed=c.puts_failed, gets_ok=c.gets_ok, gets_failed=c.gets_failed,
            forwarded=c.forwarded, read_repairs=c.read_repairs, hints_stored=c.hints_stored,
            hints_refused=c.hints_refused, hints_delivered=c.hints_delivered,
            hints_expired=c.hints_expired, handoffs=c.handoffs,
            tombstones_collected=c.tombstones_collected, aae_exchanges=c.aae_exchanges,
            aae_keys_repaired=c.aae_keys_repaired)
