"""Property tests of the KV state machine against a plain-dict oracle, with snapshot and restore
in the middle of random histories, and of its sorted key index against a sorted set."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from concord.kv.commands import (
    Command,
    Condition,
    ConditionKind,
    Delete,
    KeyValue,
    Put,
    WriteResult,
)
from concord.kv.fsm import KVStateMachine, SortedKeyIndex

MAX_REMEMBERED_REQUESTS = 3
KEY_ALPHABET = "ab/é"

keys = st.text(alphabet=KEY_ALPHABET, min_size=1, max_size=3)
prefixes = st.text(alphabet=KEY_ALPHABET, max_size=2)
values = st.sampled_from([b"", b"x", b"y"])
# A small pool so that retries, and evictions from a bound of 3, happen often.
request_ids = st.one_of(st.just(""), st.sampled_from([f"client/{n}" for n in range(6)]))
conditions = st.one_of(
    st.none(),
    st.builds(Condition, st.just(ConditionKind.VALUE_EQUALS), values),
    st.builds(
        Condition,
        st.just(ConditionKind.MOD_REVISION_EQUALS),
        revision=st.integers(min_value=0, max_value=12),
    ),
    st.just(Condition(ConditionKind.ABSENT)),
)
commands = st.builds(
    Command,
    st.one_of(st.builds(Put, keys, values, conditions), st.builds(Delete, keys, conditions)),
    request_ids,
)


@dataclass
class Oracle:
    """The model: a dict of keys, a revision counter and a list of remembered results."""

    max_remembered_requests: int
    store: dict[str, KeyValue] = field(default_factory=dict)
    revision: int = 0
    remembered: list[tuple[str, WriteResult]] = field(default_factory=list)

    def apply(self, command: Command) -> WriteResult:
        for request_id, result in self.remembered:
            if command.request_id and request_id == command.request_id:
                return result
        result = self._apply_op(command.op)
        if command.request_id:
            self.remembered.append((command.request_id, result))
            if len(self.remembered) > self.max_remembered_requests:
                self.remembered.pop(0)
        return result

    def _apply_op(self, op: Put | Delete) -> WriteResult:
        prev = self.store.get(op.key)
        condition = op.condition
        if condition is None:
            holds = True
        elif condition.kind == ConditionKind.VALUE_EQUALS:
            holds = prev is not None and prev.value == condition.value
        elif condition.kind == ConditionKind.MOD_REVISION_EQUALS:
            actual_mod_revision = 0 if prev is None else prev.mod_revision
            holds = actual_mod_revision == condition.revision
        else:
            holds = prev is None
        if isinstance(op, Delete) and prev is None:
            holds = False
        if not holds:
            return WriteResult(False, self.revision, prev, prev)
        self.revision += 1
        if isinstance(op, Delete):
            del self.store[op.key]
            return WriteResult(True, self.revision, prev, None)
        if prev is None:
            current = KeyValue(op.key, op.value, self.revision, self.revision, 1)
        else:
            current = KeyValue(
                op.key, op.value, prev.create_revision, self.revision, prev.version + 1
            )
        self.store[op.key] = current
        return WriteResult(True, self.revision, prev, current)

    def range(
        self, prefix: str, limit: int | None, start_after: str | None
    ) -> tuple[list[KeyValue], bool]:
        matching = [
            self.store[key]
            for key in sorted(self.store)
            if key.startswith(prefix) and (start_after is None or key > start_after)
        ]
        if limit is None:
            return matching, False
        return matching[:limit], len(matching) > limit


class KVMachineComparison(RuleBasedStateMachine):
    """Drives the state machine and the oracle with the same entries and compares them."""

    def __init__(self) -> None:
        super().__init__()
        self.machine = KVStateMachine(MAX_REMEMBERED_REQUESTS)
        self.oracle = Oracle(MAX_REMEMBERED_REQUESTS)
        self.applied_index = 0

    @rule(command=commands, index_gap=st.integers(min_value=1, max_value=3))
    def apply_command(self, command: Command, index_gap: int) -> None:
        self.applied_index += index_gap
        assert self.machine.apply(self.applied_index, command) == self.oracle.apply(command)

    @rule(
        key=keys,
        value=values,
        request_id=request_ids,
        is_delete=st.booleans(),
    )
    def compare_and_swap_on_current_revision(
        self, key: str, value: bytes, request_id: str, is_delete: bool
    ) -> None:
        """A conditional write on the key's current mod revision (0 when absent): it applies."""
        current = self.oracle.store.get(key)
        condition = Condition(
            ConditionKind.MOD_REVISION_EQUALS,
            revision=0 if current is None else current.mod_revision,
        )
        op = Delete(key, condition) if is_delete else Put(key, value, condition)
        self.applied_index += 1
        command = Command(op, request_id)
        assert self.machine.apply(self.applied_index, command) == self.oracle.apply(command)

    @precondition(lambda self: self.oracle.remembered)
    @rule(data=st.data())
    def retry_remembered_request(self, data: st.DataObject) -> None:
        request_id, first_result = data.draw(st.sampled_from(self.oracle.remembered))
        command = data.draw(commands.map(lambda c: Command(c.op, request_id)))
        self.applied_index += 1
        assert self.machine.apply(self.applied_index, command) == first_result

    @rule()
    def apply_noop(self) -> None:
        self.applied_index += 1
        self.machine.apply_noop(self.applied_index)

    @rule()
    def snapshot_and_restore(self) -> None:
        state = self.machine.snapshot_state()
        self.machine = KVStateMachine.from_snapshot(state, MAX_REMEMBERED_REQUESTS)
        assert self.machine.snapshot_state() == state

    @rule(
        prefix=prefixes,
        limit=st.one_of(st.none(), st.integers(min_value=1, max_value=4)),
        start_after=st.one_of(st.none(), st.text(alphabet=KEY_ALPHABET, max_size=3)),
    )
    def compare_range(self, prefix: str, limit: int | None, start_after: str | None) -> None:
        assert self.machine.range(prefix, limit, start_after) == self.oracle.range(
            prefix, limit, start_after
        )

    @invariant()
    def same_state(self) -> None:
        assert self.machine.applied_index == self.applied_index
        assert self.machine.revision == self.oracle.revision
        assert len(self.machine) == len(self.oracle.store)
        assert self.machine.range("", None) == self.oracle.range("", None, None)
        for key, expected in self.oracle.store.items():
            assert self.machine.get(key) == expected
        assert list(self.machine.snapshot_state().remembered_requests) == self.oracle.remembered


TestKVMachineComparison = KVMachineComparison.TestCase
# Bounded so the file runs in a few seconds on a shared 2-core machine; no deadline, so that a
# slow moment on that machine cannot fail a run.
TestKVMachineComparison.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


@settings(deadline=None)
@given(
    history=st.lists(commands, max_size=40),
    split_fraction=st.floats(min_value=0, max_value=1),
    max_remembered_requests=st.integers(min_value=1, max_value=4),
)
def test_restored_copy_answers_every_later_entry_like_the_original(
    history: list[Command], split_fraction: float, max_remembered_requests: int
) -> None:
    split = int(len(history) * split_fraction)
    original = KVStateMachine(max_remembered_requests)
    for index, command in enumerate(history[:split], start=1):
        original.apply(index, command)
    copy = KVStateMachine.from_snapshot(original.snapshot_state(), max_remembered_requests)
    for index, command in enumerate(history[split:], start=split + 1):
        assert copy.apply(index, command) == original.apply(index, command)
        assert copy.snapshot_state() == original.snapshot_state()


def assert_bucket_bounds(index: SortedKeyIndex, bucket_size: int) -> None:
    """The shape that keeps the index fast: full buckets, none over twice the bucket size.

    It reads the private buckets because no public behaviour shows them, only the speed does.
    """
    buckets = index._buckets
    assert all(buckets), "an empty bucket was left behind"
    assert all(len(bucket) <= 2 * bucket_size for bucket in buckets)
    assert all(len(bucket) >= bucket_size for bucket in buckets[:-1])
    assert index._maxes == [bucket[-1] for bucket in buckets]


index_keys = st.text(alphabet="abc", min_size=1, max_size=4)


@settings(deadline=None)
@given(
    initial=st.sets(index_keys, max_size=20),
    changes=st.lists(st.tuples(st.booleans(), index_keys), max_size=80),
    bucket_size=st.integers(min_value=2, max_value=4),
    lower_bounds=st.lists(st.text(alphabet="abc", max_size=4), min_size=1, max_size=5),
)
def test_sorted_key_index_matches_a_sorted_set(
    initial: set[str],
    changes: list[tuple[bool, str]],
    bucket_size: int,
    lower_bounds: list[str],
) -> None:
    index = SortedKeyIndex(sorted(initial), bucket_size=bucket_size)
    model = set(initial)
    assert_bucket_bounds(index, bucket_size)
    for is_add, key in changes:
        if is_add and key not in model:
            index.add(key)
            model.add(key)
        elif not is_add and key in model:
            index.remove(key)
            model.remove(key)
        assert_bucket_bounds(index, bucket_size)
        assert list(index) == sorted(model)
        assert len(index) == len(model)
    for lower in lower_bounds:
        assert list(index.keys_from(lower, inclusive=True)) == sorted(
            k for k in model if k >= lower
        )
        assert list(index.keys_from(lower, inclusive=False)) == sorted(
            k for k in model if k > lower
        )
