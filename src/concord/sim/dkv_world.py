"""A deterministic simulator for the quorum store: DkvNodes on a virtual network.

The world runs K ``DkvNode``s, each on its own ``MemoryReplicaStore``, in virtual time from
a seed. Messages take a random delay each (``min_delay_ns`` .. ``max_delay_ns``), may be
lost (``loss_rate``), and are lost when a partition separates sender and recipient, at send
or at delivery. A crashed node stops; messages in flight to it are lost; ``restart`` starts
a new ``DkvNode`` on the same store (the real store is durable SQLite), which forgets every
request it had in flight, as a restarted process would.

Membership is the world's truth, delivered late: ``detection_delay_ns`` after any change (a
crash, a restart, a partition, a heal, a join, a leave) every running node is told which
members it can reach now, standing in for the failure detector. Clients call ``put`` and
``get`` on a node of their choice; every completed operation is kept in ``history``, and
``stale_reads`` checks it.

Values of the set-union workload (``SetUnionClient``) are sets of strings, encoded as the
sorted elements joined by newlines; a client reads, merges every sibling, adds one element
and writes back with the context it read, so no acknowledged element may ever be missing
from a later read that saw the write.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from concord.dkv.config import BucketProps, DkvConfig
from concord.dkv.messages import DkvMessage
from concord.dkv.node import DkvNode, DkvReady, OpResult
from concord.dkv.ring import Ring
from concord.dkv.store import MemoryReplicaStore
from concord.dkv.versions import EMPTY_CONTEXT, VersionedObject, VersionVector

MS = 1_000_000
S = 1_000_000_000

OpCallback = Callable[[OpResult], None]


def encode_set(elements: Iterable[str]) -> bytes:
    return "\n".join(sorted(set(elements))).encode()


def decode_set(value: bytes | None) -> set[str]:
    if not value:
        return set()
    return set(value.decode().split("\n"))


def union_of(obj: VersionedObject | None) -> set[str]:
    """Every element of every live sibling (the client-side merge of the workload)."""
    if obj is None:
        return set()
    found: set[str] = set()
    for sibling in obj.live():
        found |= decode_set(sibling.value)
    return found


@dataclass(frozen=True, slots=True)
class OpRecord:
    """One completed client operation (``value`` is what a put wrote; None for a get).

    ``invoked_seq`` and ``completed_seq`` order invocations and completions in the order
    the world saw them, also within one virtual nanosecond."""

    op_id: int
    client: str
    kind: str
    node: str
    bucket: str
    key: str
    value: bytes | None
    invoked_ns: int
    completed_ns: int
    invoked_seq: int
    completed_seq: int
    result: OpResult


@dataclass(frozen=True, slots=True)
class StaleRead:
    """A read that missed elements of a write acknowledged before the read began."""

    read: OpRecord
    write: OpRecord
    missing: frozenset[str]


def stale_reads(history: Iterable[OpRecord]) -> list[StaleRead]:
    """Successful gets that lack an element of a put acknowledged before they were invoked.

    Only meaningful for the set-union workload (every write holds every element it read).
    """
    records = list(history)
    puts: dict[tuple[str, str], list[tuple[OpRecord, set[str]]]] = {}
    for record in records:
        if record.kind == "put" and record.result.ok:
            puts.setdefault((record.bucket, record.key), []).append(
                (record, decode_set(record.value)))
    found = []
    for read in records:
        if read.kind != "get" or not read.result.ok:
            continue
        seen = union_of(read.result.obj)
        for write, elements in puts.get((read.bucket, read.key), []):
            missing = elements - seen
            if write.completed_seq < read.invoked_seq and missing:
                found.append(StaleRead(read, write, frozenset(missing)))
    return found


class _EventKind(IntEnum):
    DELIVER = 0
    TICK = 1
    VIEW = 2
    CALL = 3


@dataclass(slots=True)
class _Node:
    store: MemoryReplicaStore
    dkv: DkvNode | None  # None while crashed
    incarnation: int = 0


@dataclass(slots=True)
class _Invocation:
    client: str
    kind: str
    node: str
    bucket: str
    key: str
    value: bytes | None
    invoked_ns: int
    invoked_seq: int
    on_done: OpCallback | None


@dataclass(slots=True)
class _Event:
    kind: _EventKind
    node: str = ""
    incarnation: int = 0
    sender: str = ""
    message: DkvMessage | None = None
    call: Callable[[], None] | None = field(default=None)


class DkvWorld:
    """K quorum-store nodes on a virtual network, driven from one seed."""

    def __init__(self, seed: int, node_ids: Sequence[str], config: DkvConfig, *,
                 min_delay_ns: int = 1 * MS, max_delay_ns: int = 10 * MS,
                 loss_rate: float = 0.0, detection_delay_ns: int = 300 * MS,
                 tick_interval_ns: int = 20 * MS, max_hints: int = 10_000) -> None:
        assert node_ids and len(set(node_ids)) == len(node_ids), "distinct node ids"
        assert 0 <= min_delay_ns <= max_delay_ns and 0.0 <= loss_rate < 1.0
        assert detection_delay_ns > max_delay_ns, "detection is slower than any message"
        self.seed = seed
        self.config = config
        self.now_ns = 0
        self.min_delay_ns = min_delay_ns
        self.max_delay_ns = max_delay_ns
        self.loss_rate = loss_rate
        self.detection_delay_ns = detection_delay_ns
        self.tick_interval_ns = tick_interval_ns
        self.max_hints = max_hints
        self.history: list[OpRecord] = []
        self.messages_sent = 0
        self.messages_lost = 0
        self._rng = random.Random(seed)
        self._queue: list[tuple[int, int, _Event]] = []
        self._pushed = 0
        self._nodes: dict[str, _Node] = {}
        self._members: list[str] = []
        self._group_of: dict[str, int] = {}
        self._invocations: dict[int, _Invocation] = {}
        self._next_op_id = 1
        self._seq = 0
        for node_id in node_ids:
            self._nodes[node_id] = _Node(MemoryReplicaStore(max_hints), None)
            self._members.append(node_id)
        for node_id in node_ids:
            self._start(node_id)
        for node_id in node_ids:
            self.node(node_id).set_view(*self._truth(node_id))

    # --- nodes and faults ----------------------------------------------------------------

    def _start(self, node_id: str) -> None:
        node = self._nodes[node_id]
        node.incarnation += 1
        node.dkv = DkvNode(node_id, node.store, random.Random(self._rng.getrandbits(64)),
                           self.config)
        node.dkv.set_view(*self._truth(node_id))
        first_tick = self.now_ns + self._rng.randrange(self.tick_interval_ns)
        self._push(first_tick, _Event(_EventKind.TICK, node_id, node.incarnation))

    def crash(self, node_id: str) -> None:
        """Stop ``node_id``: it forgets its requests in flight; its store stays."""
        node = self._nodes[node_id]
        assert node.dkv is not None, f"{node_id} is already down"
        node.dkv = None
        self._view_changed()

    def restart(self, node_id: str) -> None:
        """Start a crashed node again on its old store."""
        assert self._nodes[node_id].dkv is None, f"{node_id} is running"
        self._start(node_id)
        self._view_changed()

    def add_node(self, node_id: str) -> None:
        """A new member joins the ring with an empty store."""
        assert node_id not in self._nodes
        self._nodes[node_id] = _Node(MemoryReplicaStore(self.max_hints), None)
        self._members.append(node_id)
        self._start(node_id)
        self._view_changed()

    def leave(self, node_id: str) -> None:
        """``node_id`` leaves the ring; it keeps running to hand its keys off."""
        self._members.remove(node_id)
        self._view_changed()

    def partition(self, *groups: Collection[str]) -> None:
        """Cut every link between different groups (messages in flight across are lost)."""
        self._group_of = {node_id: i for i, group in enumerate(groups) for node_id in group}
        self._view_changed()

    def heal(self) -> None:
        self._group_of = {}
        self._view_changed()

    def _cut(self, a: str, b: str) -> bool:
        groups = self._group_of
        return (a in groups or b in groups) and groups.get(a) != groups.get(b)

    def _truth(self, observer: str) -> tuple[list[str], list[str]]:
        alive = [n for n, node in self._nodes.items()
                 if node.dkv is not None and not self._cut(observer, n)]
        return list(self._members), alive

    def _view_changed(self) -> None:
        self._push(self.now_ns + self.detection_delay_ns, _Event(_EventKind.VIEW))

    # --- inspection ----------------------------------------------------------------------

    @property
    def node_ids(self) -> list[str]:
        return list(self._nodes)

    def is_running(self, node_id: str) -> bool:
        return self._nodes[node_id].dkv is not None

    def node(self, node_id: str) -> DkvNode:
        dkv = self._nodes[node_id].dkv
        assert dkv is not None, f"{node_id} is down"
        return dkv

    def store(self, node_id: str) -> MemoryReplicaStore:
        return self._nodes[node_id].store

    def primaries(self, bucket: str, key: str) -> tuple[str, ...]:
        """The key's N primaries on the ring of the current members."""
        ring = Ring(self._members, self.config.partition_count, self.config.vnodes_per_node)
        return ring.preference_list(ring.partition_of(bucket, key),
                                    self.config.props_for(bucket).n)

    def copies(self, bucket: str, key: str) -> dict[str, VersionedObject | None]:
        """Each primary's stored copy of a key (read straight from the stores)."""
        return {n: self._nodes[n].store.get(bucket, key) for n in self.primaries(bucket, key)}

    def hints_held(self) -> int:
        return sum(node.store.hint_count() for node in self._nodes.values())

    def converged(self, keys: Iterable[tuple[str, str]]) -> bool:
        """Every primary of every key holds the same version, and no hint is left."""
        if self.hints_held():
            return False
        for bucket, key in keys:
            digests = {None if obj is None else obj.digest()
                       for obj in self.copies(bucket, key).values()}
            if len(digests) != 1:
                return False
        return True

    def run_until_converged(self, keys: Collection[tuple[str, str]], limit_ns: int,
                            step_ns: int = 50 * MS) -> int | None:
        """Run until ``converged(keys)``; how long it took, or None if not within limit."""
        start = self.now_ns
        while self.now_ns - start <= limit_ns:
            if self.converged(keys):
                return self.now_ns - start
            self.run_for(step_ns)
        return None

    # --- clients -------------------------------------------------------------------------

    def put(self, node_id: str, bucket: str, key: str, value: bytes | None,
            context: VersionVector = EMPTY_CONTEXT, *, props: BucketProps | None = None,
            client: str = "", on_done: OpCallback | None = None) -> int:
        """Ask ``node_id`` to write; the result lands in ``history`` (and ``on_done``)."""
        op_id = self._invoke(client, "put", node_id, bucket, key, value, on_done)
        dkv = self._nodes[node_id].dkv
        if dkv is None:
            self._node_down(op_id, props.w if props else self.config.props_for(bucket).w)
        else:
            dkv.put(op_id, bucket, key, value, context, self.now_ns, props)
            self._drain(node_id, dkv)
        return op_id

    def get(self, node_id: str, bucket: str, key: str, *, props: BucketProps | None = None,
            client: str = "", on_done: OpCallback | None = None) -> int:
        """Ask ``node_id`` to read; the result lands in ``history`` (and ``on_done``)."""
        op_id = self._invoke(client, "get", node_id, bucket, key, None, on_done)
        dkv = self._nodes[node_id].dkv
        if dkv is None:
            self._node_down(op_id, props.r if props else self.config.props_for(bucket).r)
        else:
            dkv.get(op_id, bucket, key, self.now_ns, props)
            self._drain(node_id, dkv)
        return op_id

    def call_at(self, at_ns: int, call: Callable[[], None]) -> None:
        """Run ``call`` at virtual time ``at_ns`` (clients schedule their next step)."""
        self._push(max(at_ns, self.now_ns), _Event(_EventKind.CALL, call=call))

    def _invoke(self, client: str, kind: str, node_id: str, bucket: str, key: str,
                value: bytes | None, on_done: OpCallback | None) -> int:
        op_id = self._next_op_id
        self._next_op_id += 1
        self._invocations[op_id] = _Invocation(client, kind, node_id, bucket, key, value,
                                               self.now_ns, self._next_seq(), on_done)
        return op_id

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _node_down(self, op_id: int, needed: int) -> None:
        self._complete(OpResult(op_id, False, None, (), needed, 0, 0,
                                "the node asked is down"))

    def _complete(self, result: OpResult) -> None:
        inv = self._invocations.pop(result.op_id)
        self.history.append(OpRecord(result.op_id, inv.client, inv.kind, inv.node, inv.bucket,
                                     inv.key, inv.value, inv.invoked_ns, self.now_ns,
                                     inv.invoked_seq, self._next_seq(), result))
        if inv.on_done is not None:
            callback = inv.on_done
            self.call_at(self.now_ns, lambda: callback(result))

    # --- running -------------------------------------------------------------------------

    def _push(self, at_ns: int, event: _Event) -> None:
        heapq.heappush(self._queue, (at_ns, self._pushed, event))
        self._pushed += 1

    def _drain(self, node_id: str, dkv: DkvNode) -> None:
        ready: DkvReady = dkv.ready()
        for out in ready.messages:
            self.messages_sent += 1
            if self._rng.random() < self.loss_rate or self._cut(node_id, out.recipient):
                self.messages_lost += 1
                continue
            recipient = self._nodes[out.recipient]
            delay_ns = self._rng.randint(self.min_delay_ns, self.max_delay_ns)
            self._push(self.now_ns + delay_ns,
                       _Event(_EventKind.DELIVER, out.recipient, recipient.incarnation,
                              node_id, out.message))
        for result in ready.results:
            self._complete(result)

    def run_until(self, until_ns: int) -> None:
        """Process every event up to and including virtual time ``until_ns``."""
        queue = self._queue
        while queue and queue[0][0] <= until_ns:
            at_ns, _, event = heapq.heappop(queue)
            self.now_ns = at_ns
            self._handle(event)
        self.now_ns = max(self.now_ns, until_ns)

    def run_for(self, duration_ns: int) -> None:
        self.run_until(self.now_ns + duration_ns)

    def _handle(self, event: _Event) -> None:
        match event.kind:
            case _EventKind.CALL:
                assert event.call is not None
                event.call()
            case _EventKind.VIEW:
                for node_id, node in self._nodes.items():
                    if node.dkv is not None:
                        node.dkv.set_view(*self._truth(node_id))
                        self._drain(node_id, node.dkv)
            case _EventKind.TICK | _EventKind.DELIVER:
                node = self._nodes[event.node]
                dkv = node.dkv
                if dkv is None or node.incarnation != event.incarnation:
                    return  # crashed (or restarted since): the event is lost
                if event.kind is _EventKind.TICK:
                    dkv.tick(self.now_ns)
                    self._push(self.now_ns + self.tick_interval_ns,
                               _Event(_EventKind.TICK, event.node, event.incarnation))
                else:
                    assert event.message is not None
                    if self._cut(event.sender, event.node):
                        self.messages_lost += 1
                        return
                    dkv.step(event.sender, event.message, self.now_ns)
                self._drain(event.node, dkv)


class SetUnionClient:
    """A client that keeps adding its own elements to sets, read-modify-write.

    Each step picks a key and a node at random, reads the key, unions every sibling, adds
    the next element (``"<name>-<i>"``) and writes the set back with the context it read.
    It pauses ``pause_ns`` between steps and stops starting steps at ``stop_ns``.
    ``acknowledged`` holds, per key, the elements of writes that reached W.
    """

    def __init__(self, world: DkvWorld, name: str, bucket: str, keys: Sequence[str],
                 nodes: Sequence[str], *, stop_ns: int, pause_ns: int = 5 * MS,
                 props: BucketProps | None = None) -> None:
        self.world = world
        self.name = name
        self.bucket = bucket
        self.keys = list(keys)
        self.nodes = list(nodes)
        self.stop_ns = stop_ns
        self.pause_ns = pause_ns
        self.props = props
        self.acknowledged: dict[str, set[str]] = {key: set() for key in self.keys}
        self.failed_writes = 0
        self.failed_reads = 0
        self.max_siblings_seen = 0
        self._count = 0
        self._rng = random.Random(f"{world.seed}/{name}")
        self.running = False

    def start(self, at_ns: int | None = None) -> None:
        self.running = True
        self.world.call_at(self.world.now_ns if at_ns is None else at_ns, self._step)

    def _step(self) -> None:
        if self.world.now_ns >= self.stop_ns:
            self.running = False
            return
        key = self._rng.choice(self.keys)
        node = self._rng.choice(self.nodes)
        self.world.get(node, self.bucket, key, props=self.props, client=self.name,
                       on_done=lambda result: self._after_read(node, key, result))

    def _after_read(self, node: str, key: str, result: OpResult) -> None:
        if not result.ok:
            self.failed_reads += 1
            self._next()
            return
        obj = result.obj
        if obj is not None:
            self.max_siblings_seen = max(self.max_siblings_seen, len(obj.siblings))
        self._count += 1
        element = f"{self.name}-{self._count}"
        value = encode_set(union_of(obj) | {element})
        context = EMPTY_CONTEXT if obj is None else obj.context()
        self.world.put(node, self.bucket, key, value, context, props=self.props,
                       client=self.name,
                       on_done=lambda res: self._after_write(key, element, res))

    def _after_write(self, key: str, element: str, result: OpResult) -> None:
        if result.ok:
            self.acknowledged[key].add(element)
        else:
            self.failed_writes += 1
        self._next()

    def _next(self) -> None:
        self.world.call_at(self.world.now_ns + self._rng.randint(0, self.pause_ns), self._step)
