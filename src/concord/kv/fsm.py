"""The KV state machine applied from the Raft log: etcd's revision model plus at-most-once writes.

It owns the key space (values, create/mod revisions, versions), the global store revision, the
applied index, the bounded table of remembered client requests (single writes and batches,
de-duplicated separately), and the sorted key index that serves prefix ranges. It is
deterministic: replicas that apply the same log entries in the same order end in the same
state, and a snapshot restores that state exactly.

Keys are ordered by Unicode code point, which is also the byte order of their UTF-8 encoding.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Final, assert_never, overload

from concord.kv.commands import (
    BatchCommand,
    BatchResult,
    Command,
    Condition,
    ConditionKind,
    Delete,
    Get,
    KeyValue,
    Put,
    ReadResult,
    WriteResult,
)

DEFAULT_MAX_REMEMBERED_REQUESTS = 100_000
DEFAULT_KEY_BUCKET_SIZE = 512

RememberedResult = WriteResult | BatchResult
"""What the at-most-once table keeps per request id: a single write's or a batch's outcome."""

_FrozenKeyValue = tuple[str, bytes, int, int, int] | None
_FrozenOp = tuple[bool, int, _FrozenKeyValue, _FrozenKeyValue] | tuple[_FrozenKeyValue]
_Frozen = tuple[Any, ...]  # a single write's _FrozenOp, or a batch's tuple of them
"""A remembered result as nested plain tuples of strings, bytes and numbers: CPython's cycle
collector stops tracking such tuples after one look, where the result objects (a WriteResult
and its two KeyValues per write, 100,000 writes remembered) stayed in its young generation
and made each young collection under batch load walk hundreds of thousands of them (0.5 s)."""


@dataclass(frozen=True, slots=True)
class KVSnapshotState:
    """Everything a replica needs to continue exactly where the snapshot was taken.

    ``key_values`` is in the store's own order (the order keys were created in, which the
    same log gives every replica): copying it is one pass over a dict, where key order costs a
    lookup per key (1.3 s in the event loop at a million keys). ``remembered_requests`` is in
    eviction order (oldest first); a ``BatchResult`` there is a batch's, a ``WriteResult`` a
    single write's. From ``snapshot_state`` its result objects are built as it is read (by
    the snapshot encoder's thread), not when the state is copied.
    """

    applied_index: int
    revision: int
    key_values: tuple[KeyValue, ...]
    remembered_requests: Sequence[tuple[str, RememberedResult]]


class SortedKeyIndex:
    """A set of keys kept in order, cheap to change at a million keys.

    The keys live in consecutive sorted buckets of ``bucket_size`` to ``2 * bucket_size`` keys
    (only the last bucket may hold fewer), with each bucket's largest key in a sorted list beside
    them. Adding or removing a key bisects twice and shifts one bucket, O(log n + bucket_size),
    plus O(n / bucket_size) when a bucket splits or merges, where one sorted list would shift
    O(n) references every time. Reading from a key onwards is O(log n + keys read).
    """

    __slots__ = ("_bucket_size", "_buckets", "_key_count", "_maxes")

    def __init__(
        self, sorted_keys: Iterable[str] = (), bucket_size: int = DEFAULT_KEY_BUCKET_SIZE
    ) -> None:
        _check_int("bucket_size", bucket_size, minimum=2)
        keys = list(sorted_keys)
        for earlier, later in pairwise(keys):
            if earlier >= later:
                raise ValueError(f"keys must be strictly increasing: {later!r} after {earlier!r}")
        self._fill(keys, bucket_size)

    @classmethod
    def of_increasing(cls, keys: list[str],
                      bucket_size: int = DEFAULT_KEY_BUCKET_SIZE) -> SortedKeyIndex:
        """An index of ``keys``, which the caller guarantees strictly increasing (not
        checked: at a million keys the check took 0.25 s)."""
        index = cls((), bucket_size)  # checks bucket_size
        index._fill(keys, bucket_size)
        return index

    def _fill(self, keys: list[str], bucket_size: int) -> None:
        self._bucket_size = bucket_size
        self._buckets = [
            keys[start : start + bucket_size] for start in range(0, len(keys), bucket_size)
        ]
        self._maxes = [bucket[-1] for bucket in self._buckets]
        self._key_count = len(keys)

    def __len__(self) -> int:
        return self._key_count

    def __iter__(self) -> Iterator[str]:
        for bucket in self._buckets:
            yield from bucket

    def add(self, key: str) -> None:
        """Add ``key``, which must not be present."""
        if not self._buckets:
            self._buckets.append([key])
            self._maxes.append(key)
            self._key_count = 1
            return
        position = bisect_left(self._maxes, key)
        if position == len(self._maxes):
            position -= 1
            self._buckets[position].append(key)
            self._maxes[position] = key
        else:
            bucket = self._buckets[position]
            offset = bisect_left(bucket, key)
            assert bucket[offset] != key, f"key {key!r} added twice"
            bucket.insert(offset, key)
        self._key_count += 1
        self._split_if_full(position)

    def remove(self, key: str) -> None:
        """Remove ``key``, which must be present."""
        position = bisect_left(self._maxes, key)
        assert position < len(self._maxes), f"key {key!r} is not in the index"
        bucket = self._buckets[position]
        offset = bisect_left(bucket, key)
        assert bucket[offset] == key, f"key {key!r} is not in the index"
        del bucket[offset]
        self._key_count -= 1
        if len(bucket) >= self._bucket_size or len(self._buckets) == 1:
            if bucket:
                self._maxes[position] = bucket[-1]
            else:
                self._buckets.clear()
                self._maxes.clear()
            return
        # Too small: merge with a neighbour, then split again if that made it too big.
        first = position if position + 1 < len(self._buckets) else position - 1
        merged = self._buckets[first] + self._buckets[first + 1]
        self._buckets[first : first + 2] = [merged]
        self._maxes[first : first + 2] = [merged[-1]]
        self._split_if_full(first)

    def keys_from(self, lower: str, *, inclusive: bool) -> Iterator[str]:
        """The keys after ``lower`` (and ``lower`` itself when ``inclusive``), in order.

        The index must not change while the iterator is in use.
        """
        find = bisect_left if inclusive else bisect_right
        position = find(self._maxes, lower)
        if position == len(self._buckets):
            return
        first_bucket = self._buckets[position]
        for offset in range(find(first_bucket, lower), len(first_bucket)):
            yield first_bucket[offset]
        for later in range(position + 1, len(self._buckets)):
            yield from self._buckets[later]

    def _split_if_full(self, position: int) -> None:
        bucket = self._buckets[position]
        if len(bucket) <= 2 * self._bucket_size:
            return
        half = len(bucket) // 2
        self._buckets[position : position + 1] = [bucket[:half], bucket[half:]]
        self._maxes[position : position + 1] = [bucket[half - 1], bucket[-1]]


class KVStateMachine:
    """A deterministic key-value store that applies committed Raft entries in index order.

    The at-most-once table holds at most ``max_remembered_requests`` results, a batch counting
    as many as it has operations (the newest one is always kept); the oldest go first. Single
    writes and batches are remembered apart: a batch never answers with a single write's
    result or the other way round, even when a client reuses a request id for both.
    """

    __slots__ = (
        "_applied_index",
        "_entries",
        "_key_index",
        "_max_remembered_requests",
        "_remembered",
        "_remembered_weight",
        "_revision",
    )

    def __init__(self, max_remembered_requests: int = DEFAULT_MAX_REMEMBERED_REQUESTS) -> None:
        _check_int("max_remembered_requests", max_remembered_requests, minimum=1)
        self._max_remembered_requests = max_remembered_requests
        self._applied_index = 0
        self._revision = 0
        self._entries: dict[str, KeyValue] = {}
        self._key_index = SortedKeyIndex()
        # keyed by (is_batch, request_id)
        self._remembered: OrderedDict[tuple[bool, str], _Frozen] = OrderedDict()
        self._remembered_weight = 0

    @classmethod
    def from_snapshot(
        cls,
        state: KVSnapshotState,
        max_remembered_requests: int = DEFAULT_MAX_REMEMBERED_REQUESTS,
    ) -> KVStateMachine:
        """Rebuild a state machine from ``state`` (``KVStateMachineBuilder`` in one step).

        If ``state`` remembers more results than ``max_remembered_requests``, the oldest are
        dropped, as if they had been evicted. Raises ``ValueError`` for an inconsistent snapshot.
        """
        if not isinstance(state, KVSnapshotState):
            raise TypeError(f"state must be a KVSnapshotState, got {type(state).__name__}")
        builder = KVStateMachineBuilder(state.applied_index, state.revision,
                                        max_remembered_requests)
        builder.add_key_values(state.key_values)
        builder.remember(state.remembered_requests)
        return builder.build()

    @property
    def applied_index(self) -> int:
        """The index of the last Raft entry applied (0 before any)."""
        return self._applied_index

    @property
    def revision(self) -> int:
        """The store revision: how many mutations have been applied (0 for a new store)."""
        return self._revision

    def __len__(self) -> int:
        return len(self._entries)

    def apply(self, index: int, command: Command) -> WriteResult:
        """Apply the command of the committed entry at ``index`` and return its outcome.

        A command whose non-empty ``request_id`` was already applied (and is still remembered)
        changes nothing and returns the result of its first application.
        """
        if not _is_plain_put(command):
            _check_command(command)  # the full check, for anything but a plain put
        self._advance_applied_index(index)
        request_id = command.request_id
        if request_id:
            remembered = self._remembered.get((False, request_id))
            if remembered is not None:
                return _thaw_write(remembered)  # single writes are remembered apart
        result = self._write(command.op)
        if request_id:
            self._remember((False, request_id), result)
        return result

    def apply_batch(self, index: int, batch: BatchCommand) -> BatchResult:
        """Apply the batch of the committed entry at ``index``: its operations in order, each
        as if it were applied on its own (so each successful write takes the next revision,
        and a get reads what the operations before it left). A condition that does not hold,
        or a delete of an absent key, fails that operation only.

        A batch whose non-empty ``request_id`` was already applied (and is still remembered)
        changes nothing and returns the results of its first application.
        """
        _check_batch(batch)
        self._advance_applied_index(index)
        request_id = batch.request_id
        if request_id:
            remembered = self._remembered.get((True, request_id))
            if remembered is not None:
                return _thaw_batch(remembered)  # batches are remembered apart
        result = BatchResult(tuple(
            ReadResult(self._entries.get(op.key)) if isinstance(op, Get) else self._write(op)
            for op in batch.ops))
        if request_id:
            self._remember((True, request_id), result)
        return result

    def apply_noop(self, index: int) -> None:
        """Record that the entry at ``index`` (a NOOP or membership entry) has been applied."""
        self._advance_applied_index(index)

    def get(self, key: str) -> KeyValue | None:
        """The key's current value and revisions, or None when it does not exist."""
        _check_key(key)
        return self._entries.get(key)

    def range(
        self, prefix: str, limit: int | None, start_after: str | None = None
    ) -> tuple[list[KeyValue], bool]:
        """Keys starting with ``prefix`` (and after ``start_after`` if given), in key order.

        Returns at most ``limit`` entries (all when ``limit`` is None) and whether more matching
        keys follow them. Costs O(log n + limit).
        """
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        if limit is not None:
            _check_int("limit", limit, minimum=1)
        if start_after is not None and not isinstance(start_after, str):
            raise TypeError(f"start_after must be a str or None, got {type(start_after).__name__}")
        if start_after is not None and start_after >= prefix:
            candidates = self._key_index.keys_from(start_after, inclusive=False)
        else:
            candidates = self._key_index.keys_from(prefix, inclusive=True)
        found: list[KeyValue] = []
        # Keys sharing a prefix are contiguous in key order: stop at the first one without it.
        for key in candidates:
            if not key.startswith(prefix):
                break
            if limit is not None and len(found) == limit:
                return found, True
            found.append(self._entries[key])
        return found, False

    def snapshot_state(self) -> KVSnapshotState:
        """The state as plain immutable data, for the snapshot writer."""
        return KVSnapshotState(
            applied_index=self._applied_index,
            revision=self._revision,
            key_values=tuple(self._entries.values()),
            remembered_requests=_ThawedRequests(tuple(self._remembered.items())),
        )

    def _advance_applied_index(self, index: int) -> None:
        _check_int("index", index, minimum=1)
        assert index > self._applied_index, (
            f"entry {index} applied after entry {self._applied_index}: the caller must apply "
            "each committed entry once, in increasing index order"
        )
        self._applied_index = index

    def _write(self, op: Put | Delete) -> WriteResult:
        match op:
            case Put(key=key, value=value, condition=condition):
                return self._put(key, value, condition)
            case Delete(key=key, condition=condition):
                return self._delete(key, condition)
            case _ as unreachable:
                assert_never(unreachable)

    def _put(self, key: str, value: bytes, condition: Condition | None) -> WriteResult:
        prev = self._entries.get(key)
        if not _holds(condition, prev):
            return WriteResult(succeeded=False, revision=self._revision, prev=prev, current=prev)
        self._revision += 1
        if prev is None:
            current = KeyValue(key, value, self._revision, self._revision, 1)
            self._key_index.add(key)
        else:
            current = KeyValue(key, value, prev.create_revision, self._revision, prev.version + 1)
        self._entries[key] = current
        return WriteResult(succeeded=True, revision=self._revision, prev=prev, current=current)

    def _delete(self, key: str, condition: Condition | None) -> WriteResult:
        prev = self._entries.get(key)
        if prev is None or not _holds(condition, prev):
            return WriteResult(succeeded=False, revision=self._revision, prev=prev, current=prev)
        self._revision += 1
        del self._entries[key]
        self._key_index.remove(key)
        return WriteResult(succeeded=True, revision=self._revision, prev=prev, current=None)

    def _remember(self, key: tuple[bool, str], result: RememberedResult) -> None:
        assert key not in self._remembered, f"request {key[1]!r} remembered twice"
        is_batch, _ = key
        assert isinstance(result, BatchResult) == is_batch
        frozen = _freeze(result)
        self._remembered[key] = frozen
        self._remembered_weight += _weight(is_batch, frozen)
        while (self._remembered_weight > self._max_remembered_requests
               and len(self._remembered) > 1):
            (evicted_is_batch, _), evicted = self._remembered.popitem(last=False)
            self._remembered_weight -= _weight(evicted_is_batch, evicted)


def _weight(is_batch: bool, frozen: _Frozen) -> int:
    """How much of the at-most-once table's bound a remembered result takes."""
    return len(frozen) if is_batch else 1


def _freeze_key_value(kv: KeyValue | None) -> _FrozenKeyValue:
    return None if kv is None else (kv.key, kv.value, kv.create_revision, kv.mod_revision,
                                    kv.version)


def _thaw_key_value(frozen: _FrozenKeyValue) -> KeyValue | None:
    return None if frozen is None else KeyValue(*frozen)


def _freeze_op(result: WriteResult | ReadResult) -> _FrozenOp:
    if isinstance(result, ReadResult):
        return (_freeze_key_value(result.current),)
    return (result.succeeded, result.revision, _freeze_key_value(result.prev),
            _freeze_key_value(result.current))


def _freeze(result: RememberedResult) -> _Frozen:
    if isinstance(result, BatchResult):
        return tuple(_freeze_op(op) for op in result.results)
    return _freeze_op(result)


def _thaw_write(frozen: _Frozen) -> WriteResult:
    succeeded, revision, prev, current = frozen
    return WriteResult(succeeded, revision, _thaw_key_value(prev), _thaw_key_value(current))


def _thaw_batch(frozen: _Frozen) -> BatchResult:
    return BatchResult(tuple(ReadResult(_thaw_key_value(op[0])) if len(op) == 1
                             else _thaw_write(op) for op in frozen))


class _ThawedRequests(Sequence[tuple[str, RememberedResult]]):
    """The remembered requests of a snapshot, as result objects built when read: by the
    snapshot encoder's thread, not in the event loop (100,000 remembered writes are 300,000
    objects)."""

    __slots__ = ("_items",)

    def __init__(self, items: tuple[tuple[tuple[bool, str], _Frozen], ...]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> tuple[str, RememberedResult]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[str, RememberedResult]]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return tuple(self)[index]
        (is_batch, request_id), frozen = self._items[index]
        return request_id, _thaw_batch(frozen) if is_batch else _thaw_write(frozen)

    def __iter__(self) -> Iterator[tuple[str, RememberedResult]]:
        for (is_batch, request_id), frozen in self._items:
            yield request_id, _thaw_batch(frozen) if is_batch else _thaw_write(frozen)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))


def _holds(condition: Condition | None, current: KeyValue | None) -> bool:
    """Whether ``condition`` holds for a key whose current state is ``current``."""
    if condition is None:
        return True
    match condition.kind:
        case ConditionKind.VALUE_EQUALS:
            return current is not None and current.value == condition.value
        case ConditionKind.MOD_REVISION_EQUALS:
            if condition.revision == 0:
                return current is None
            return current is not None and current.mod_revision == condition.revision
        case ConditionKind.ABSENT:
            return current is None
        case _ as unreachable:
            assert_never(unreachable)


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


def _check_key(key: object) -> None:
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, got {type(key).__name__}")
    if not key:
        raise ValueError("key must not be empty")


def _check_bytes(name: str, value: object) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes, got {type(value).__name__}")


KEY_MERGE_STEP: Final = 16_384
"""How many keys of each of two runs ``KVStateMachineBuilder.merge_keys`` merges per call."""


class KVStateMachineBuilder:
    """Builds a ``KVStateMachine`` from a snapshot's parts, a piece at a time.

    Key values come in pieces (``add_key_values``), then ``merge_keys`` puts their keys in
    order until it returns 0, then remembered requests come (``remember``), and ``build``
    returns the machine. Every call is short, so a caller restoring a large snapshot on a
    thread beside an event loop can hand the GIL over between calls: the keys are sorted in
    runs of about ``merge_step`` (runs that follow on joined), and the runs merged two at a
    time, at most ``merge_step`` keys of each per call (one sort of a million keys in random
    order held the GIL for 0.5 s). Each part is checked as it comes: ``ValueError`` or
    ``TypeError`` for an inconsistent snapshot, as ``from_snapshot`` says.
    """

    __slots__ = ("_machine", "_merge_step", "_merged", "_merging", "_pending", "_runs",
                 "_waiting")

    def __init__(self, applied_index: int, revision: int,
                 max_remembered_requests: int = DEFAULT_MAX_REMEMBERED_REQUESTS,
                 merge_step: int = KEY_MERGE_STEP) -> None:
        _check_int("snapshot applied_index", applied_index, minimum=0)
        _check_int("snapshot revision", revision, minimum=0)
        _check_int("merge_step", merge_step, minimum=1)
        self._machine = KVStateMachine(max_remembered_requests)
        self._machine._applied_index = applied_index
        self._machine._revision = revision
        self._merge_step = merge_step
        self._pending: list[str] = []  # keys added since the last run ended
        self._runs: list[list[str]] = []
        self._waiting: deque[list[str]] | None = None  # runs to merge, once merging began
        self._merging: _RunMerge | None = None
        self._merged: list[str] | None = None

    def add_key_values(self, key_values: Iterable[KeyValue]) -> None:
        """Add key values (in the store's own order, as ``KVSnapshotState`` holds them)."""
        if self._waiting is not None:
            raise RuntimeError("every key value comes before merge_keys")
        entries = self._machine._entries
        revision = self._machine._revision
        pending = self._pending
        for kv in key_values:
            _check_key_value(kv, revision)
            if kv.key in entries:
                raise ValueError("snapshot holds a key twice")
            entries[kv.key] = kv
            pending.append(kv.key)
        if len(pending) >= self._merge_step:
            self._end_run()

    def _end_run(self) -> None:
        """Sort the keys added since the last run ended into a run of their own, or onto the
        end of the last run when they all come after it (keys created in key order, as by a
        bulk load, make one run and need no merge)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        pending.sort()
        runs = self._runs
        if runs and runs[-1][-1] < pending[0]:
            runs[-1] += pending
        else:
            runs.append(pending)

    def merge_keys(self) -> int:
        """Merge up to ``merge_step`` more keys of each of two runs; how many keys this step
        merged, 0 once every key is in order.

        The runs are merged in pairs, level by level (a bottom-up merge sort's passes), each
        step by ``list.sort`` of two bounded slices, which Timsort merges in C: twice as fast
        as ``heapq.merge`` when the runs nearly follow on, as after a bulk load. The runs are
        sorted and hold distinct keys (the entries are a dict), so what they merge into is
        strictly increasing: the key index takes it without a check."""
        if self._merged is not None:
            return 0
        waiting = self._waiting
        if waiting is None:
            self._end_run()
            waiting = self._waiting = deque(self._runs)
            self._runs = []
        merging = self._merging
        if merging is None:
            if len(waiting) <= 1:
                self._merged = waiting.pop() if waiting else []
                return 0
            merging = self._merging = _RunMerge(waiting.popleft(), waiting.popleft())
        merged = merging.step(self._merge_step)
        if merging.done:
            waiting.append(merging.merged)
            self._merging = None
        return merged

    def remember(self, remembered_requests: Iterable[tuple[str, RememberedResult]]) -> None:
        """Add remembered requests, oldest first (after every key value)."""
        machine = self._machine
        for request_id, result in remembered_requests:
            _check_request_id(request_id)
            if not request_id:
                raise ValueError("snapshot remembers a request with an empty request_id")
            if not isinstance(result, WriteResult | BatchResult):
                raise TypeError(
                    f"remembered result must be a WriteResult or BatchResult, got {result!r}")
            key = (isinstance(result, BatchResult), request_id)
            if key in machine._remembered:
                raise ValueError(f"snapshot remembers request {request_id!r} twice")
            _check_remembered_result(result, machine._revision)
            machine._remember(key, result)

    def build(self) -> KVStateMachine:
        """The state machine, its key index made of the merged keys (merging what is left)."""
        while self.merge_keys():
            pass
        assert self._merged is not None
        machine = self._machine
        machine._key_index = SortedKeyIndex.of_increasing(self._merged)
        self._merged = []
        return machine


class _RunMerge:
    """Two sorted runs of distinct keys merged into one, a bounded slice of each per step."""

    __slots__ = ("_first", "_next_first", "_next_second", "_second", "merged")

    def __init__(self, first: list[str], second: list[str]) -> None:
        self._first = first
        self._second = second
        self._next_first = 0
        self._next_second = 0
        self.merged: list[str] = []

    @property
    def done(self) -> bool:
        """Both runs are merged."""
        return self._next_first == len(self._first) and self._next_second == len(self._second)

    def step(self, most: int) -> int:
        """Merge the keys up to a bound that takes at most ``most`` keys from either run;
        how many keys it merged."""
        first, second = self._first, self._second
        start_first, start_second = self._next_first, self._next_second
        end_first = min(start_first + most, len(first))
        end_second = min(start_second + most, len(second))
        # The smaller of the two slices' last keys, where a run goes on past its slice, bounds
        # this step: every key up to it is taken from both runs, and no key after it.
        if end_first < len(first) and (end_second == len(second)
                                       or first[end_first - 1] <= second[end_second - 1]):
            bound = first[end_first - 1]
            end_second = bisect_right(second, bound, start_second, end_second)
        elif end_second < len(second):
            bound = second[end_second - 1]
            end_first = bisect_right(first, bound, start_first, end_first)
        piece = first[start_first:end_first]
        piece += second[start_second:end_second]
        piece.sort()  # two sorted runs: Timsort merges them
        self.merged += piece
        self._next_first, self._next_second = end_first, end_second
        return len(piece)


def _check_request_id(request_id: object) -> None:
    if not isinstance(request_id, str):
        raise TypeError(f"request_id must be a str, got {type(request_id).__name__}")


def _check_condition(condition: object) -> None:
    if condition is None:
        return
    if not isinstance(condition, Condition):
        raise TypeError(f"condition must be a Condition or None, got {type(condition).__name__}")
    if not isinstance(condition.kind, ConditionKind):
        raise TypeError(f"condition kind must be a ConditionKind, got {condition.kind!r}")
    _check_bytes("condition value", condition.value)
    _check_int("condition revision", condition.revision, minimum=0)


def _is_plain_put(command: object) -> bool:
    """The common command, recognised cheaply: an unconditional put of bytes to a key."""
    if type(command) is not Command:
        return False
    op = command.op
    return (type(op) is Put and op.condition is None and type(op.key) is str and bool(op.key)
            and type(op.value) is bytes and type(command.request_id) is str)


def _check_command(command: object) -> None:
    """Reject a malformed command before anything changes (a bug in the layer above)."""
    if not isinstance(command, Command):
        raise TypeError(f"command must be a Command, got {type(command).__name__}")
    _check_request_id(command.request_id)
    _check_operation(command.op, "command op must be a Put or Delete")


def _check_operation(op: object, wrong_type: str) -> None:
    match op:
        case Put(key=key, value=value, condition=condition):
            _check_key(key)
            _check_bytes("value", value)
            _check_condition(condition)
        case Delete(key=key, condition=condition):
            _check_key(key)
            _check_condition(condition)
        case other:
            raise TypeError(f"{wrong_type}, got {type(other).__name__}")


def _check_batch(batch: object) -> None:
    """Reject a malformed batch before anything changes (a bug in the layer above)."""
    if not isinstance(batch, BatchCommand):
        raise TypeError(f"batch must be a BatchCommand, got {type(batch).__name__}")
    _check_request_id(batch.request_id)
    if not isinstance(batch.ops, tuple) or not batch.ops:
        raise ValueError("a batch must be a non-empty tuple of operations")
    for op in batch.ops:
        if isinstance(op, Get):
            _check_key(op.key)
        else:
            _check_operation(op, "batch op must be a Put, Delete or Get")


def _check_remembered_result(result: RememberedResult, revision: int) -> None:
    """Check that a snapshot's remembered result fits a store at ``revision``."""
    if isinstance(result, WriteResult):
        outcomes: tuple[object, ...] = (result,)
    else:
        if not isinstance(result.results, tuple) or not result.results:
            raise ValueError("a remembered batch result must hold at least one result")
        outcomes = result.results
    for outcome in outcomes:
        if isinstance(outcome, WriteResult):
            if outcome.revision > revision:
                raise ValueError(
                    f"remembered result revision {outcome.revision} is after the snapshot "
                    f"revision {revision}"
                )
        elif not isinstance(outcome, ReadResult):
            raise TypeError(f"remembered batch outcome must be a WriteResult or ReadResult, "
                            f"got {outcome!r}")


def _check_key_value(kv: object, revision: int) -> None:
    """Check that a snapshot entry is a KeyValue whose revisions fit a store at ``revision``."""
    if not isinstance(kv, KeyValue):
        raise TypeError(f"snapshot entry must be a KeyValue, got {type(kv).__name__}")
    _check_key(kv.key)
    _check_bytes("value", kv.value)
    _check_int("create_revision", kv.create_revision, minimum=1)
    _check_int("mod_revision", kv.mod_revision, minimum=kv.create_revision)
    _check_int("version", kv.version, minimum=1)
    if kv.mod_revision > revision:
        raise ValueError(
            f"key {kv.key!r} has mod_revision {kv.mod_revision} after the snapshot revision "
            f"{revision}"
        )
    if kv.version > kv.mod_revision - kv.create_revision + 1:
        raise ValueError(
            f"key {kv.key!r} has version {kv.version}, more than its revisions "
            f"{kv.create_revision}..{kv.mod_revision} allow"
        )
