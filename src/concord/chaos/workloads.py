"""Checked workloads: concurrent clients that record every operation they attempt.

Each client is a sequential *process* in the history's sense: it invokes one operation,
waits for its outcome, records it, and goes on. Outcomes follow Jepsen's rules:

- ``ok``: the cluster answered (a compare that did not hold is an ok ``cas`` with output
  False: an observed result);
- ``fail``: an error the cluster marked *definite* (the request certainly had no effect);
- ``info``: anything else (timeout, lost connection, an indefinite error). The process is
  then considered crashed: the client continues under a new process id, on a new
  connection that starts at the next node.

A call may be re-sent by the client to another node with the same ``X-Request-Id`` (the
node applies a write at most once); the history's operation spans every attempt, from the
first invocation to the final answer. Recording a deduplicated re-send as a separate
operation would claim an effect at a time it did not happen.

The Raft workloads, all in ``ConcordKVModel`` vocabulary so that linearizability is checked
per key:

- register: read, write (unique values), cas and delete on a few keys, moving to fresh keys
  every ``ops_per_register_key`` operations per key so that each key's history stays small.
  Its reads are ``read_consistency``: ``linearizable`` (the default), or ``serializable``,
  which any node answers from its own state: unsafe, stale reads are expected (a run that
  shows the checkers catching them);
- set: unique adds, each a ``create_only`` put of its own key (recorded as ``cas`` from
  absent), grouped in buckets of ``set_bucket_size`` keys; after the run one ``list`` per
  bucket (``GET /v1/kv?prefix=``, recorded with the keys found as output);
- counter: a read, then a ``cas`` from the value read to the value plus one, on one key.

Those three use the Raft store (``/v1/kv``). One more, ``dkv-set``, uses the quorum store
(``/v1/dkv``) and is opt-in (``mixed`` leaves it out, so the Raft workloads of a seed do not
change): each add reads a key (R=2), unions its siblings (JSON lists of strings), adds one
unique element and writes the union back with the read's context (W=2), recorded as one
``add`` of that element (a failed read, or a put the node refused with a 4xx, is a ``fail``;
any other failed put is ``info``: the replicas that stored it keep it and spread it). After
the final heal, each key is polled with R=N and ``explain=1`` until every replica's copy has
the same digest (a ``converge`` operation whose output is the milliseconds since the heal;
``info`` when it did not happen within ``dkv_convergence_timeout_s``), then read with R=N
(a ``read-union`` whose output is the sorted union of the siblings).

Every Raft key lives under ``chaos/<run id>/`` so that runs on a reused data directory do
not see each other's keys; the quorum store's keys live in bucket ``chaos-<run id>`` and are
recorded in the history as ``chaos/<run id>/dkv/<key>``.

Besides ``run``, a scripted scenario can drive a ``WorkloadClient`` of its own (``client``:
pinned to the endpoints it names) through ``read`` and ``write``, recorded the same way.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

import aiohttp

from concord.client import AsyncConcordClient, ConcordClientError
from concord.dkv_client import AsyncDkvClient, DkvError
from concord.sim.history import (
    Event,
    HistoryRecorder,
    Operation,
    OpStatus,
    Value,
    events_to_jsonl,
)

CLIENT_RETRIES: Final = 3
"""Re-sends (same request id) a client call may make on a refused connection or a
definite, retryable refusal (no leader, overloaded...)."""

OP_DEADLINE_MARGIN_S: Final = 2.0
FINAL_READ_ATTEMPTS: Final = 10
FINAL_READ_TIMEOUT_S: Final = 5.0
FINAL_READ_PAUSE_S: Final = 0.5
LIST_LIMIT: Final = 10_000
"""The node's default ``limits.max_range_limit``: a bucket never holds more keys."""

READ_CONSISTENCIES: Final = ("linearizable", "serializable")
"""The register workload's read consistencies; serializable is unsafe (stale reads)."""

DKV_R: Final = 2
DKV_W: Final = 2
"""The dkv-set adds' read and write quorums (of the bucket's default N = 3)."""

DKV_CONVERGENCE_POLL_S: Final = 0.25
"""The pause between two rounds of convergence polls after the final heal."""


class WorkloadKind(IntEnum):
    """One workload. Values are append-only."""

    REGISTER = 1
    SET = 2
    COUNTER = 3
    DKV_SET = 4

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


RAFT_WORKLOADS: Final = (WorkloadKind.REGISTER, WorkloadKind.SET, WorkloadKind.COUNTER)
"""The workloads on the Raft store (``/v1/kv``): what ``mixed`` means."""


def parse_workloads(spec: str) -> tuple[WorkloadKind, ...]:
    """``register``, ``set``, ``counter``, ``dkv-set`` (comma-separated) or ``mixed`` (the
    three Raft ones)."""
    kinds: set[WorkloadKind] = set()
    for raw in spec.split(","):
        name = raw.strip().lower()
        if name == "mixed":
            kinds.update(RAFT_WORKLOADS)
        elif name:
            try:
                kinds.add(WorkloadKind[name.upper().replace("-", "_")])
            except KeyError:
                raise ValueError(f"unknown workload {name!r} (known: register, set, counter, "
                                 f"dkv-set, mixed)") from None
    if not kinds:
        raise ValueError("no workload named")
    return tuple(sorted(kinds))


def assign_clients(kinds: Sequence[WorkloadKind], clients: int) -> tuple[WorkloadKind, ...]:
    """Which workload each of ``clients`` clients runs: at least one per workload, the rest
    round-robin with register first (the one the linearizability checker learns most from)."""
    assert clients >= len(kinds) >= 1, "at least one client per workload"
    ordered = sorted(kinds)
    return tuple(ordered[i % len(ordered)] for i in range(clients))


@dataclass(frozen=True, slots=True)
class Keys:
    """The key names of one run."""

    run_id: str  # e.g. "20250101-120000-7": printable, no spaces (it is in request ids)
    set_bucket_size: int = 1000

    def __post_init__(self) -> None:
        assert 0 < self.set_bucket_size < LIST_LIMIT, "one list must hold a whole bucket"
        assert self.run_id and self.run_id.isprintable() and " " not in self.run_id

    @property
    def prefix(self) -> str:
        return f"chaos/{self.run_id}/"

    def register(self, generation: int, slot: int) -> str:
        return f"{self.prefix}r/{generation}/{slot}"

    @property
    def set_prefix(self) -> str:
        return f"{self.prefix}set/"

    def set_bucket(self, bucket: int) -> str:
        return f"{self.set_prefix}{bucket:04d}/"

    def set_element(self, element: int) -> str:
        return f"{self.set_bucket(element // self.set_bucket_size)}{element}"

    @property
    def counter(self) -> str:
        return f"{self.prefix}counter"

    @property
    def dkv_bucket(self) -> str:
        """The quorum-store bucket of the run's dkv-set keys."""
        return f"chaos-{self.run_id}"

    def dkv_key(self, generation: int, slot: int) -> str:
        """A dkv-set key within ``dkv_bucket``."""
        return f"set/{generation}/{slot}"

    @property
    def dkv_prefix(self) -> str:
        """The history's name for ``dkv_bucket``: a dkv key ``k`` is recorded as
        ``dkv_prefix + k``."""
        return f"{self.prefix}dkv/"

    def workload_of(self, key: str) -> WorkloadKind | None:
        if key.startswith(f"{self.prefix}r/"):
            return WorkloadKind.REGISTER
        if key.startswith(self.set_prefix):
            return WorkloadKind.SET
        if key == self.counter:
            return WorkloadKind.COUNTER
        if key.startswith(self.dkv_prefix):
            return WorkloadKind.DKV_SET
        return None


@dataclass(frozen=True, slots=True)
class WorkloadSettings:
    kinds: tuple[WorkloadKind, ...]
    clients: int
    duration_s: float
    seed: int
    keys: Keys
    max_ops: int | None = None
    op_timeout_s: float = 1.5
    register_keys: int = 3
    ops_per_register_key: int = 50
    read_consistency: str = "linearizable"  # of the register reads; see READ_CONSISTENCIES
    dkv_keys: int = 3
    adds_per_dkv_key: int = 300  # then the clients move to fresh keys: values stay small
    # A dkv request's client timeout: longer than a node's default request_timeout_ms (2 s),
    # so that the node's own quorum_not_reached answer comes first.
    dkv_timeout_s: float = 3.0
    dkv_convergence_timeout_s: float = 60.0  # after the final heal

    def __post_init__(self) -> None:
        assert self.duration_s > 0 and self.op_timeout_s > 0
        assert self.max_ops is None or self.max_ops > 0
        assert self.register_keys >= 1 and self.ops_per_register_key >= 1
        assert self.dkv_keys >= 1 and self.adds_per_dkv_key >= 1
        assert self.dkv_timeout_s > 0 and self.dkv_convergence_timeout_s > 0
        if self.read_consistency not in READ_CONSISTENCIES:
            raise ValueError(f"read_consistency: expected one of "
                             f"{', '.join(READ_CONSISTENCIES)}, got {self.read_consistency!r}")


class ChaosHistory:
    """The run's history: a ``HistoryRecorder`` whose times are monotonic nanoseconds since
    the run started, and the allocator of process ids."""

    def __init__(self, clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self._clock_ns = clock_ns
        self._origin_ns = clock_ns()
        self._recorder = HistoryRecorder()
        self._next_process = 0
        self._errors: dict[int, str] = {}  # op id -> reason
        self._event_errors: dict[int, str] = {}  # event index -> reason
        self._event_count = 0

    def now_ns(self) -> int:
        return self._clock_ns() - self._origin_ns

    def new_process(self) -> int:
        process = self._next_process
        self._next_process += 1
        return process

    def invoke(self, process: int, f: str, key: str, value: Value) -> int:
        self._event_count += 1
        return self._recorder.invoke(process, f, key, value, self.now_ns())

    def complete(self, op_id: int, status: OpStatus, output: Value,
                 error: str = "") -> Operation:
        """Record the outcome; ``error`` says why an operation failed or is unknown."""
        assert not error or status is not OpStatus.OK, "an ok operation has no error"
        if error:
            self._errors[op_id] = error
            self._event_errors[self._event_count] = error
        self._event_count += 1
        return self._recorder.complete(op_id, status, output, self.now_ns())

    def errors(self) -> dict[int, str]:
        """Why each failed or unknown operation ended so, by op id."""
        return dict(self._errors)

    def to_jsonl(self) -> str:
        """The events as JSONL (``events_to_jsonl``), each fail or info completion with an
        extra ``error`` field saying why (readers of the format ignore extra fields)."""
        lines = events_to_jsonl(self._recorder.events()).splitlines()
        for index, error in self._event_errors.items():
            document = json.loads(lines[index])
            document["error"] = error
            lines[index] = json.dumps(document, separators=(",", ":"))
        return "".join(line + "\n" for line in lines)

    def operations(self) -> tuple[Operation, ...]:
        return self._recorder.operations()

    def events(self) -> tuple[Event, ...]:
        return self._recorder.events()


def status_of(error: ConcordClientError) -> OpStatus:
    """FAIL when the cluster said the request certainly had no effect, else INFO."""
    return OpStatus.FAIL if error.definite else OpStatus.INFO


def dkv_status_of(error: DkvError) -> OpStatus:
    """FAIL for a quorum-store request the node refused as a client error (4xx: checked
    before anything was stored), else INFO (for a write, ``quorum_not_reached``,
    ``unavailable``...: some replicas may hold it, and they spread it)."""
    return OpStatus.FAIL if 400 <= error.status < 500 else OpStatus.INFO


def describe_error(error: BaseException) -> str:
    """A short reason for the history: the error code (and HTTP status), or the type."""
    if isinstance(error, ConcordClientError | DkvError):
        return f"{error.code} ({error.status})" if error.status else error.code
    return type(error).__name__


def union_of(siblings: Sequence[bytes]) -> tuple[frozenset[str], tuple[bytes, ...]]:
    """The union of a dkv-set key's siblings (each a JSON list of strings), and the siblings
    that are not such a list."""
    elements: set[str] = set()
    malformed = []
    for sibling in siblings:
        try:
            document = json.loads(sibling)
        except ValueError:
            document = None
        if isinstance(document, list) and all(isinstance(e, str) for e in document):
            elements.update(document)
        else:
            malformed.append(sibling)
    return frozenset(elements), tuple(malformed)


@dataclass(slots=True)
class _Shared:
    """What the clients of one run share: op and element counters."""

    ops_started: int = 0
    register_ops_started: int = 0
    next_element: int = 0
    dkv_adds_started: int = 0
    dkv_keys: dict[str, None] = field(default_factory=dict)  # every key added to, in order


@dataclass(slots=True)
class WorkloadClient:
    """One workload client: its kind, random stream, current process id, the endpoints it
    rotates through and its connection (to ``endpoints`` shifted by ``endpoint_shift``):
    ``client`` to the Raft store, and for a dkv-set client ``dkv`` to the quorum store."""

    index: int  # unique within the run: it is in the client's request ids
    kind: WorkloadKind
    rng: random.Random
    process: int
    endpoints: tuple[str, ...]
    client: AsyncConcordClient
    endpoint_shift: int
    sequence: int = 0
    last_values: dict[str, bytes | None] = field(default_factory=dict)
    dkv: AsyncDkvClient | None = None

    async def close(self) -> None:
        await self.client.close()
        if self.dkv is not None:
            await self.dkv.close()


async def _replicas_per_key(dkv: AsyncDkvClient, bucket: str) -> int:
    """The bucket's N."""
    props = await dkv.bucket(bucket)
    return int(props["n"])


def _rotated(endpoints: Sequence[str], shift: int) -> list[str]:
    """``endpoints`` starting at ``shift`` (modulo their number)."""
    start = shift % len(endpoints)
    return [*endpoints[start:], *endpoints[:start]]


class Workload:
    """The clients of one run; ``run`` until the duration, ``max_ops`` or ``stop``."""

    def __init__(self, endpoints: Sequence[str], settings: WorkloadSettings,
                 history: ChaosHistory) -> None:
        assert endpoints
        self.endpoints = list(endpoints)
        self.settings = settings
        self.history = history
        self.shared = _Shared()
        self._next_index = settings.clients  # run's clients are 0 .. clients - 1

    def _connect(self, endpoints: Sequence[str], shift: int) -> AsyncConcordClient:
        return AsyncConcordClient(_rotated(endpoints, shift),
                                  timeout_s=self.settings.op_timeout_s, retries=CLIENT_RETRIES)

    def _connect_dkv(self, kind: WorkloadKind, endpoints: Sequence[str],
                     shift: int) -> AsyncDkvClient | None:
        if kind is not WorkloadKind.DKV_SET:
            return None
        return AsyncDkvClient(_rotated(endpoints, shift), timeout_s=self.settings.dkv_timeout_s)

    def client(self, endpoints: Sequence[str]) -> WorkloadClient:
        """A register client of its own for a scripted scenario, trying ``endpoints`` in
        that order (and only those, after a crash too); ``close`` it when done."""
        assert endpoints
        index = self._next_index
        self._next_index += 1
        pinned = tuple(endpoints)
        return WorkloadClient(index, WorkloadKind.REGISTER,
                              random.Random(self.settings.seed * 1_000 + index),
                              self.history.new_process(), pinned, self._connect(pinned, 0), 0)

    def _done(self, stop: asyncio.Event) -> bool:
        s = self.settings
        return (stop.is_set() or self.history.now_ns() >= s.duration_s * 1e9
                or (s.max_ops is not None and self.shared.ops_started >= s.max_ops))

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        endpoints = tuple(self.endpoints)
        clients = [
            WorkloadClient(index, kind, random.Random(s.seed * 1_000 + index),
                           self.history.new_process(), endpoints,
                           self._connect(endpoints, index), index,
                           dkv=self._connect_dkv(kind, endpoints, index))
            for index, kind in enumerate(assign_clients(s.kinds, s.clients))
        ]
        try:
            await asyncio.gather(*(self._loop(c, stop) for c in clients))
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    async def _loop(self, client: WorkloadClient, stop: asyncio.Event) -> None:
        step = {WorkloadKind.REGISTER: self._register_op, WorkloadKind.SET: self._set_op,
                WorkloadKind.COUNTER: self._counter_op,
                WorkloadKind.DKV_SET: self._dkv_add}[client.kind]
        while not self._done(stop):
            await step(client)

    async def _perform(self, client: WorkloadClient, f: str, key: str, value: Value,
                       call: Callable[[], Awaitable[Value]]) -> tuple[OpStatus, Value]:
        """Invoke, await ``call`` within a deadline, record and return the outcome."""
        self.shared.ops_started += 1
        client.sequence += 1
        op_id = self.history.invoke(client.process, f, key, value)
        deadline_s = self.settings.op_timeout_s * 2 + OP_DEADLINE_MARGIN_S
        reason = ""
        try:
            output = await asyncio.wait_for(call(), deadline_s)
            status = OpStatus.OK
        except ConcordClientError as error:
            status, output, reason = status_of(error), None, describe_error(error)
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            status, output, reason = OpStatus.INFO, None, describe_error(error)
        self.history.complete(op_id, status, output, reason)
        if status is OpStatus.INFO:
            await self._crash(client)
        return status, output

    async def _crash(self, client: WorkloadClient) -> None:
        """After an unknown outcome: a new process id on a new connection to the next node."""
        await client.close()
        client.process = self.history.new_process()
        client.endpoint_shift += 1
        client.client = self._connect(client.endpoints, client.endpoint_shift)
        client.dkv = self._connect_dkv(client.kind, client.endpoints, client.endpoint_shift)

    def _request_id(self, client: WorkloadClient) -> str:
        return f"{self.settings.keys.run_id}-{client.index}-{client.sequence}"

    # -- register ------------------------------------------------------------------------

    async def _register_op(self, client: WorkloadClient) -> None:
        s = self.settings
        generation = self.shared.register_ops_started // (s.register_keys
                                                          * s.ops_per_register_key)
        self.shared.register_ops_started += 1
        key = s.keys.register(generation, client.rng.randrange(s.register_keys))
        roll = client.rng.random()
        if roll < 0.45:
            await self.read(client, key)
        elif roll < 0.75:
            await self.write(client, key)
        elif roll < 0.95:
            await self._cas(client, key, client.last_values.get(key), self._unique(client))
        else:
            await self._delete(client, key)

    def _unique(self, client: WorkloadClient) -> bytes:
        return f"{client.index}.{client.sequence + 1}".encode()

    async def read(self, client: WorkloadClient, key: str) -> tuple[OpStatus, Value]:
        """A register read, at the workload's ``read_consistency``."""
        return await self._read(client, key, self.settings.read_consistency)

    async def _read(self, client: WorkloadClient, key: str,
                    consistency: str = "linearizable") -> tuple[OpStatus, Value]:
        async def call() -> Value:
            kv = await client.client.get(key, consistency)
            value: bytes | None = None if kv is None else kv["value"]
            client.last_values[key] = value
            return value

        return await self._perform(client, "read", key, None, call)

    async def write(self, client: WorkloadClient, key: str) -> tuple[OpStatus, bytes]:
        """A register write of a unique value: its outcome and the value."""
        value = self._unique(client)
        request_id = self._request_id(client)

        async def call() -> Value:
            await client.client.put(key, value, request_id=request_id)
            client.last_values[key] = value
            return None

        status, _ = await self._perform(client, "write", key, value, call)
        return status, value

    async def _cas(self, client: WorkloadClient, key: str, expected: bytes | None,
                   new: bytes) -> tuple[OpStatus, Value]:
        request_id = self._request_id(client)

        async def call() -> Value:
            try:
                if expected is None:
                    await client.client.put(key, new, create_only=True,
                                            request_id=request_id)
                else:
                    await client.client.put(key, new, prev_value=expected,
                                            request_id=request_id)
            except ConcordClientError as error:
                if error.code != "compare_failed":
                    raise
                client.last_values[key] = None if error.current is None \
                    else error.current["value"]
                return False
            client.last_values[key] = new
            return True

        return await self._perform(client, "cas", key, (expected, new), call)

    async def _delete(self, client: WorkloadClient, key: str) -> None:
        request_id = self._request_id(client)

        async def call() -> Value:
            removed = await client.client.delete(key, request_id=request_id)
            client.last_values[key] = None
            return removed is not None

        await self._perform(client, "delete", key, None, call)

    # -- set -------------------------------------------------------------------------------

    async def _set_op(self, client: WorkloadClient) -> None:
        element = self.shared.next_element
        self.shared.next_element += 1
        key = self.settings.keys.set_element(element)
        await self._cas(client, key, None, str(element).encode())

    # -- counter ---------------------------------------------------------------------------

    async def _counter_op(self, client: WorkloadClient) -> None:
        key = self.settings.keys.counter
        status, current = await self._read(client, key)
        if status is not OpStatus.OK or self._done_now():
            return
        assert current is None or isinstance(current, bytes)
        try:
            value = 0 if current is None else int(current)
        except ValueError:
            return  # not a counter value: the counter checker reports the read
        await self._cas(client, key, current, str(value + 1).encode())

    def _done_now(self) -> bool:
        return self.history.now_ns() >= self.settings.duration_s * 1e9

    # -- dkv-set ---------------------------------------------------------------------------

    async def _dkv_add(self, client: WorkloadClient) -> None:
        """Read (R=2), union the siblings, add a unique element, write back (W=2) with the
        read's context: one ``add`` in the history (see the module docstring)."""
        s = self.settings
        dkv = client.dkv
        assert dkv is not None, "a dkv-set client has a quorum-store connection"
        generation = self.shared.dkv_adds_started // (s.dkv_keys * s.adds_per_dkv_key)
        self.shared.dkv_adds_started += 1
        key = s.keys.dkv_key(generation, client.rng.randrange(s.dkv_keys))
        self.shared.dkv_keys[key] = None
        self.shared.ops_started += 1
        client.sequence += 1
        element = f"{client.index}.{client.sequence}"
        op_id = self.history.invoke(client.process, "add", s.keys.dkv_prefix + key, element)
        sent = False  # whether the write may have left: until then a failure is definite

        async def add() -> None:
            nonlocal sent
            read = await dkv.get(s.keys.dkv_bucket, key, r=DKV_R)
            elements, malformed = union_of(read.siblings)
            if malformed:
                raise ValueError(f"malformed sibling {malformed[0][:80]!r}")
            value = json.dumps(sorted(elements | {element})).encode()
            sent = True
            await dkv.put(s.keys.dkv_bucket, key, value, context=read.context, w=DKV_W)

        deadline_s = s.dkv_timeout_s * 2 + OP_DEADLINE_MARGIN_S
        status, reason = OpStatus.OK, ""
        try:
            await asyncio.wait_for(add(), deadline_s)
        except (DkvError, ValueError, TimeoutError, aiohttp.ClientError, OSError) as error:
            reason = str(error) if type(error) is ValueError else describe_error(error)
            if not sent:
                status, reason = OpStatus.FAIL, f"read: {reason}"
            else:
                status = dkv_status_of(error) if isinstance(error, DkvError) else OpStatus.INFO
                reason = f"put: {reason}"
        self.history.complete(op_id, status, None, reason)
        if status is OpStatus.INFO:
            await self._crash(client)

    async def dkv_final(self, healed_ns: int) -> None:
        """After the final heal: wait until every replica of every dkv-set key holds the same
        copy (a ``converge`` per key), then read each key with R=N (a ``read-union``)."""
        if WorkloadKind.DKV_SET not in self.settings.kinds or not self.shared.dkv_keys:
            return
        dkv = AsyncDkvClient(self.endpoints, timeout_s=FINAL_READ_TIMEOUT_S)
        try:
            known_n = await self._converge(dkv, healed_ns)
            bucket, prefix = self.settings.keys.dkv_bucket, self.settings.keys.dkv_prefix
            for key in self.shared.dkv_keys:

                async def union(key: str = key) -> Value:
                    n = known_n if known_n is not None else await _replicas_per_key(dkv,
                                                                                    bucket)
                    read = await dkv.get(bucket, key, r=n)
                    elements, malformed = union_of(read.siblings)
                    # a sibling that is no list of strings is read as an element of its own,
                    # one nobody added: the checker reports it as a phantom
                    shown = {f"malformed: {m.decode(errors='backslashreplace')}"
                             for m in malformed}
                    return tuple(sorted(elements | shown))

                await self._final("read-union", prefix + key, union)
        finally:
            await dkv.close()

    async def _converge(self, dkv: AsyncDkvClient, healed_ns: int) -> int | None:
        """Poll every dkv-set key with R=N and ``explain=1`` until the copies of all N
        replicas have one digest (or none: absent everywhere), each key recorded as a
        ``converge`` whose output is the milliseconds from the heal to the poll that saw it.
        Returns N (None when no node said)."""
        s = self.settings
        bucket = s.keys.dkv_bucket
        pending = {key: self.history.invoke(self.history.new_process(), "converge",
                                            s.keys.dkv_prefix + key, None)
                   for key in self.shared.dkv_keys}
        reasons: dict[str, str] = {}
        deadline_ns = healed_ns + int(s.dkv_convergence_timeout_s * 1e9)
        n: int | None = None
        while pending and self.history.now_ns() < deadline_ns:
            for key, op_id in list(pending.items()):
                try:
                    if n is None:
                        n = await asyncio.wait_for(_replicas_per_key(dkv, bucket),
                                                   FINAL_READ_TIMEOUT_S)
                    read = await asyncio.wait_for(dkv.get(bucket, key, r=n, explain=True),
                                                  FINAL_READ_TIMEOUT_S * 2)
                except (DkvError, TimeoutError, aiohttp.ClientError, OSError) as error:
                    reasons[key] = describe_error(error)
                    continue
                assert read.explain is not None, "explain=1 answers with the copies"
                copies = read.explain["copies"]
                digests = {copy.get("digest") for copy in copies}
                if len(copies) == n and len(digests) == 1:
                    after_ms = (self.history.now_ns() - healed_ns) // 1_000_000
                    self.history.complete(op_id, OpStatus.OK, after_ms)
                    del pending[key]
                else:
                    reasons[key] = (f"{len(copies)} of N={n} replicas answered with "
                                    f"{len(digests)} different copies")
            if pending:
                await asyncio.sleep(DKV_CONVERGENCE_POLL_S)
        for key, op_id in pending.items():
            self.history.complete(
                op_id, OpStatus.INFO, None,
                f"not converged {s.dkv_convergence_timeout_s:g} s after the heal (last poll: "
                f"{reasons.get(key, 'none answered')})")
        return n

    # -- final reads -----------------------------------------------------------------------

    async def final_reads(self) -> None:
        """After the faults are healed: list every set bucket and read the counter, each
        retried (and each attempt recorded) until one is answered."""
        client = AsyncConcordClient(self.endpoints, timeout_s=FINAL_READ_TIMEOUT_S,
                                    retries=CLIENT_RETRIES)
        keys = self.settings.keys
        try:
            if WorkloadKind.SET in self.settings.kinds:
                buckets = -(-self.shared.next_element // keys.set_bucket_size)
                for bucket in range(buckets):
                    prefix = keys.set_bucket(bucket)

                    async def listing(prefix: str = prefix) -> Value:
                        # A bucket holds fewer keys than the limit; were there more (keys
                        # nobody added), the set checker reports those it got.
                        page = await client.list(prefix, limit=LIST_LIMIT)
                        return tuple(sorted(kv["key"] for kv in page["kvs"]))

                    await self._final("list", prefix, listing)
            if WorkloadKind.COUNTER in self.settings.kinds:

                async def counter() -> Value:
                    kv = await client.get(keys.counter)
                    value: bytes | None = None if kv is None else kv["value"]
                    return value

                await self._final("read", keys.counter, counter)
        finally:
            await client.close()

    async def _final(self, f: str, key: str, call: Callable[[], Awaitable[Value]]) -> None:
        for _ in range(FINAL_READ_ATTEMPTS):
            op_id = self.history.invoke(self.history.new_process(), f, key, None)
            try:
                output = await asyncio.wait_for(call(), FINAL_READ_TIMEOUT_S * 2)
            except ConcordClientError as error:
                self.history.complete(op_id, status_of(error), None, describe_error(error))
            except DkvError as error:
                self.history.complete(op_id, dkv_status_of(error), None,
                                      describe_error(error))
            except (TimeoutError, aiohttp.ClientError, OSError) as error:
                self.history.complete(op_id, OpStatus.INFO, None, describe_error(error))
            else:
                self.history.complete(op_id, OpStatus.OK, output)
                return
            await asyncio.sleep(FINAL_READ_PAUSE_S)
