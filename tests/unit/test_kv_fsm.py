"""Unit tests of the KV state machine: revisions, versions, conditions, de-duplication, ranges,
snapshots, the sorted key index and the checks at its boundary. Expected values follow etcd's
revision model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from concord.accel import compiled_modules
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
    Record,
    WriteResult,
)
from concord.kv.fsm import (
    KEY_MERGE_STEP,
    KVSnapshotState,
    KVStateMachine,
    KVStateMachineBuilder,
    SortedKeyIndex,
)

VALUE_EQUALS = ConditionKind.VALUE_EQUALS
MOD_REVISION_EQUALS = ConditionKind.MOD_REVISION_EQUALS
ABSENT = ConditionKind.ABSENT


def put(
    key: str, value: bytes, condition: Condition | None = None, request_id: str = ""
) -> Command:
    return Command(Put(key, value, condition), request_id)


def delete(key: str, condition: Condition | None = None, request_id: str = "") -> Command:
    return Command(Delete(key, condition), request_id)


def apply_all(machine: KVStateMachine, commands: list[Command]) -> list[WriteResult]:
    """Apply ``commands`` at consecutive indexes after the machine's applied index."""
    start = machine.applied_index + 1
    return [machine.apply(start + offset, command) for offset, command in enumerate(commands)]


def test_new_machine_is_empty() -> None:
    machine = KVStateMachine()
    assert (machine.applied_index, machine.revision, len(machine)) == (0, 0, 0)
    assert machine.get("a") is None
    assert machine.range("", None) == ([], False)


# Each step: the command and the WriteResult it must return, on one machine in sequence.
LIFECYCLE_STEPS: list[tuple[Command, WriteResult]] = [
    (
        put("a", b"1"),
        WriteResult(True, 1, None, KeyValue("a", b"1", 1, 1, 1)),
    ),
    (
        put("a", b"2"),
        WriteResult(True, 2, KeyValue("a", b"1", 1, 1, 1), KeyValue("a", b"2", 1, 2, 2)),
    ),
    (
        put("b", b"x"),
        WriteResult(True, 3, None, KeyValue("b", b"x", 3, 3, 1)),
    ),
    (  # rewriting the same value is still a modification
        put("a", b"2"),
        WriteResult(True, 4, KeyValue("a", b"2", 1, 2, 2), KeyValue("a", b"2", 1, 4, 3)),
    ),
    (
        delete("a"),
        WriteResult(True, 5, KeyValue("a", b"2", 1, 4, 3), None),
    ),
    (  # deleting an absent key fails and leaves the revision alone
        delete("a"),
        WriteResult(False, 5, None, None),
    ),
    (  # re-creating starts over: new create revision, version 1
        put("a", b"3"),
        WriteResult(True, 6, None, KeyValue("a", b"3", 6, 6, 1)),
    ),
    (
        delete("never-existed"),
        WriteResult(False, 6, None, None),
    ),
    (
        put("b", b"y"),
        WriteResult(True, 7, KeyValue("b", b"x", 3, 3, 1), KeyValue("b", b"y", 3, 7, 2)),
    ),
]


def test_revisions_and_versions_follow_etcd_through_delete_and_recreate() -> None:
    machine = KVStateMachine()
    for index, (command, expected) in enumerate(LIFECYCLE_STEPS, start=1):
        assert machine.apply(index, command) == expected, f"step {index}: {command}"
        assert machine.revision == expected.revision
        assert machine.applied_index == index
        assert machine.get(command.op.key) == expected.current
    assert len(machine) == 2
    assert machine.range("", None) == (
        [KeyValue("a", b"3", 6, 6, 1), KeyValue("b", b"y", 3, 7, 2)],
        False,
    )


# The key "k" is created at revision 1 with b"old", "other" at revision 2, then "k" is rewritten
# at revision 3 with b"cur": "k" has mod_revision 3, create_revision 1, version 2, and the store
# is at revision 3. "gone" never existed.
CURRENT_K = KeyValue("k", b"cur", 1, 3, 2)

CONDITION_CASES: list[tuple[str, Command, bool]] = [
    ("put value equals holds", put("k", b"new", Condition(VALUE_EQUALS, b"cur")), True),
    ("put value equals stale", put("k", b"new", Condition(VALUE_EQUALS, b"old")), False),
    ("put value equals empty", put("k", b"new", Condition(VALUE_EQUALS, b"")), False),
    ("put value equals absent key", put("gone", b"new", Condition(VALUE_EQUALS, b"")), False),
    ("put mod rev holds", put("k", b"new", Condition(MOD_REVISION_EQUALS, revision=3)), True),
    ("put mod rev create rev", put("k", b"new", Condition(MOD_REVISION_EQUALS, revision=1)), False),
    (
        "put mod rev other key's",
        put("k", b"new", Condition(MOD_REVISION_EQUALS, revision=2)),
        False,
    ),
    ("put mod rev 0 on present", put("k", b"new", Condition(MOD_REVISION_EQUALS)), False),
    ("put mod rev 0 on absent", put("gone", b"new", Condition(MOD_REVISION_EQUALS)), True),
    (
        "put mod rev 3 on absent",
        put("gone", b"n", Condition(MOD_REVISION_EQUALS, revision=3)),
        False,
    ),
    ("put absent on present", put("k", b"new", Condition(ABSENT)), False),
    ("put absent on absent", put("gone", b"new", Condition(ABSENT)), True),
    ("delete value equals holds", delete("k", Condition(VALUE_EQUALS, b"cur")), True),
    ("delete value equals stale", delete("k", Condition(VALUE_EQUALS, b"old")), False),
    ("delete mod rev holds", delete("k", Condition(MOD_REVISION_EQUALS, revision=3)), True),
    ("delete mod rev stale", delete("k", Condition(MOD_REVISION_EQUALS, revision=1)), False),
    ("delete mod rev 0 on absent", delete("gone", Condition(MOD_REVISION_EQUALS)), False),
    ("delete absent on present", delete("k", Condition(ABSENT)), False),
    ("delete absent on absent", delete("gone", Condition(ABSENT)), False),
]


@pytest.mark.parametrize(
    ("command", "succeeds"),
    [(command, succeeds) for _, command, succeeds in CONDITION_CASES],
    ids=[name for name, _, _ in CONDITION_CASES],
)
def test_conditional_writes(command: Command, succeeds: bool) -> None:
    machine = KVStateMachine()
    apply_all(machine, [put("k", b"old"), put("other", b"o"), put("k", b"cur")])
    assert machine.get("k") == CURRENT_K
    before = machine.snapshot_state()
    key = command.op.key
    prev = machine.get(key)

    result = machine.apply(4, command)

    assert result.succeeded is succeeds
    assert result.prev == prev
    if not succeeds:
        assert result == WriteResult(False, 3, prev, prev)
        assert machine.snapshot_state() == replace(before, applied_index=4)
        return
    assert result.revision == machine.revision == 4
    match command.op:
        case Put(value=value):
            if prev is None:
                expected = KeyValue(key, value, 4, 4, 1)
            else:
                expected = KeyValue(key, value, prev.create_revision, 4, prev.version + 1)
            assert result.current == machine.get(key) == expected
        case Delete():
            assert result.current is None
            assert machine.get(key) is None


def test_retried_request_returns_an_equal_result_and_changes_nothing() -> None:
    machine = KVStateMachine()
    first = machine.apply(1, put("a", b"1", request_id="client-1/1"))
    apply_all(machine, [put("a", b"2")])
    state_before_retry = machine.snapshot_state()

    retried = machine.apply(3, put("a", b"1", request_id="client-1/1"))

    assert retried == first and retried is not first  # rebuilt from the frozen table
    assert retried == WriteResult(True, 1, None, KeyValue("a", b"1", 1, 1, 1))
    assert machine.snapshot_state() == replace(state_before_retry, applied_index=3)
    assert machine.get("a") == KeyValue("a", b"2", 1, 2, 2)


def test_a_failed_request_is_remembered_too() -> None:
    machine = KVStateMachine()
    failed = machine.apply(1, put("a", b"1", Condition(VALUE_EQUALS, b"x"), request_id="r"))
    assert failed == WriteResult(False, 0, None, None)
    machine.apply(2, put("a", b"x"))
    # the condition would now hold, but the request was already applied once
    assert machine.apply(3, put("a", b"1", Condition(VALUE_EQUALS, b"x"), request_id="r")) == failed
    assert machine.get("a") == KeyValue("a", b"x", 1, 1, 1)


def test_an_empty_request_id_is_never_deduplicated() -> None:
    machine = KVStateMachine()
    results = apply_all(machine, [put("a", b"1"), put("a", b"1")])
    assert [r.revision for r in results] == [1, 2]
    assert machine.snapshot_state().remembered_requests == ()


def test_request_ids_are_forgotten_oldest_first() -> None:
    machine = KVStateMachine(max_remembered_requests=2)
    r1, r2 = apply_all(machine, [put("a", b"1", request_id="r1"), put("b", b"2", request_id="r2")])
    # a retry does not refresh a request's place in the eviction order
    assert machine.apply(3, put("a", b"1", request_id="r1")) == r1
    r3 = machine.apply(4, put("c", b"3", request_id="r3"))
    assert [rid for rid, _ in machine.snapshot_state().remembered_requests] == ["r2", "r3"]

    assert machine.apply(5, put("b", b"2", request_id="r2")) == r2
    assert machine.apply(6, put("c", b"3", request_id="r3")) == r3
    reapplied = machine.apply(7, put("a", b"1", request_id="r1"))  # r1 was evicted
    assert reapplied != r1
    assert reapplied == WriteResult(
        True, 4, KeyValue("a", b"1", 1, 1, 1), KeyValue("a", b"1", 1, 4, 2)
    )
    assert [rid for rid, _ in machine.snapshot_state().remembered_requests] == ["r3", "r1"]


def test_noop_entries_only_advance_the_applied_index() -> None:
    machine = KVStateMachine()
    machine.apply(1, put("a", b"1"))
    machine.apply_noop(2)
    machine.apply_noop(5)  # the caller may skip indexes it does not hand to this machine
    assert (machine.applied_index, machine.revision, len(machine)) == (5, 1, 1)
    assert machine.apply(6, put("a", b"2")).revision == 2


@pytest.mark.parametrize(
    ("stale_index", "error"), [(0, ValueError), (2, AssertionError), (3, AssertionError)]
)
def test_applying_an_index_twice_or_out_of_order_is_a_caller_bug(
    stale_index: int, error: type[Exception]
) -> None:
    machine = KVStateMachine()
    apply_all(machine, [put("a", b"1"), put("a", b"2"), put("a", b"3")])
    state = machine.snapshot_state()
    with pytest.raises(error):
        machine.apply(stale_index, put("b", b"1"))
    with pytest.raises(error):
        machine.apply_noop(stale_index)
    assert machine.snapshot_state() == state


def test_stale_index_assertion_names_both_indexes() -> None:
    machine = KVStateMachine()
    machine.apply_noop(4)
    with pytest.raises(AssertionError, match="entry 4 applied after entry 4"):
        machine.apply(4, put("a", b"1"))


RANGE_KEYS = ["a", "a/1", "a/2", "a/3", "ab", "b", "b/x", "é"]

# (prefix, limit, start_after) -> (keys, more)
RANGE_CASES: list[tuple[str, int | None, str | None, list[str], bool]] = [
    ("", None, None, RANGE_KEYS, False),
    ("", 3, None, ["a", "a/1", "a/2"], True),
    ("", 8, None, RANGE_KEYS, False),
    ("", 2, "b", ["b/x", "é"], False),
    ("", 1, "é", [], False),
    ("", None, "", RANGE_KEYS, False),
    ("a", None, None, ["a", "a/1", "a/2", "a/3", "ab"], False),
    ("a/", None, None, ["a/1", "a/2", "a/3"], False),
    ("a/", 2, None, ["a/1", "a/2"], True),
    ("a/", 3, None, ["a/1", "a/2", "a/3"], False),
    ("a/", 2, "a/2", ["a/3"], False),
    ("a/", 1, "a/1", ["a/2"], True),
    ("a/", None, "a/15", ["a/2", "a/3"], False),  # start_after need not exist
    ("a/", None, "0", ["a/1", "a/2", "a/3"], False),  # before the prefix: no effect
    ("a/", None, "a/3", [], False),
    ("a/", None, "b", [], False),  # past the prefix
    ("b", None, None, ["b", "b/x"], False),
    ("c", None, None, [], False),
    ("a/1", None, None, ["a/1"], False),
    ("a/10", None, None, [], False),
    ("é", None, None, ["é"], False),  # code point order puts é after ASCII
]


@pytest.mark.parametrize(
    ("prefix", "limit", "start_after", "expected_keys", "more"),
    RANGE_CASES,
    ids=[f"{p!r}-{lim}-{s!r}" for p, lim, s, _, _ in RANGE_CASES],
)
def test_range(
    prefix: str, limit: int | None, start_after: str | None, expected_keys: list[str], more: bool
) -> None:
    machine = KVStateMachine()
    # inserted out of order, with a deleted key inside the "a/" prefix
    apply_all(machine, [put(k, k.encode()) for k in reversed(RANGE_KEYS)])
    apply_all(machine, [put("a/0", b"gone"), delete("a/0")])

    found, has_more = machine.range(prefix, limit, start_after)

    assert [kv.key for kv in found] == expected_keys
    assert has_more is more
    assert found == [machine.get(key) for key in expected_keys]


def test_snapshot_is_plain_data_in_key_and_eviction_order() -> None:
    machine = KVStateMachine(max_remembered_requests=2)
    r1, r2, r3 = apply_all(
        machine,
        [
            put("b", b"1", request_id="r1"),
            put("a", b"2", request_id="r2"),
            delete("b", request_id="r3"),
        ],
    )
    machine.apply_noop(4)
    assert machine.snapshot_state() == KVSnapshotState(
        applied_index=4,
        revision=3,
        key_values=(KeyValue("a", b"2", 2, 2, 1),),
        remembered_requests=(("r2", r2), ("r3", r3)),
    )
    assert r1.succeeded


def test_restored_machine_behaves_like_the_original() -> None:
    original = KVStateMachine(max_remembered_requests=3)
    apply_all(
        original,
        [
            put("x", b"1", request_id="r1"),
            put("y", b"1", request_id="r2"),
            put("x", b"2", request_id="r3"),
            delete("y", request_id="r4"),
            put("z", b"1"),
        ],
    )
    restored = KVStateMachine.from_snapshot(original.snapshot_state(), max_remembered_requests=3)
    assert restored.snapshot_state() == original.snapshot_state()
    assert (restored.applied_index, restored.revision, len(restored)) == (5, 5, 2)

    future = [
        put("x", b"1", request_id="r1"),  # forgotten: applies again
        put("x", b"9", request_id="r3"),  # remembered: returns the old result
        delete("y", request_id="r4"),
        put("y", b"5", Condition(MOD_REVISION_EQUALS)),
        put("z", b"2", Condition(MOD_REVISION_EQUALS, revision=5)),
        delete("x", Condition(VALUE_EQUALS, b"1")),
        put("w", b"1", request_id="r5"),
        put("x", b"1", request_id="r2"),  # evicted by r5
    ]
    assert apply_all(restored, future) == apply_all(original, future)
    assert restored.snapshot_state() == original.snapshot_state()
    assert restored.range("", None) == original.range("", None)


def test_restoring_with_a_smaller_bound_forgets_the_oldest_requests() -> None:
    machine = KVStateMachine()
    apply_all(machine, [put("k", b"v", request_id=f"r{i}") for i in range(4)])
    restored = KVStateMachine.from_snapshot(machine.snapshot_state(), max_remembered_requests=2)
    remembered = restored.snapshot_state().remembered_requests
    assert [rid for rid, _ in remembered] == ["r2", "r3"]
    assert restored.apply(5, put("k", b"v", request_id="r1")).revision == 5
    assert restored.apply(6, put("k", b"v", request_id="r3")).revision == 4


GOOD_SNAPSHOT = KVSnapshotState(
    applied_index=7,
    revision=5,
    key_values=(KeyValue("a", b"1", 1, 4, 2), KeyValue("b", b"2", 5, 5, 1)),
    remembered_requests=(("r", WriteResult(True, 5, None, KeyValue("b", b"2", 5, 5, 1))),),
)

BAD_SNAPSHOTS: list[tuple[str, KVSnapshotState, type[Exception]]] = [
    ("negative applied index", replace(GOOD_SNAPSHOT, applied_index=-1), ValueError),
    (
        "a key twice",
        replace(GOOD_SNAPSHOT,
                key_values=(*GOOD_SNAPSHOT.key_values, KeyValue("a", b"3", 1, 5, 3))),
        ValueError,
    ),
    (
        "duplicate key",
        replace(GOOD_SNAPSHOT, key_values=GOOD_SNAPSHOT.key_values[:1] * 2),
        ValueError,
    ),
    ("mod revision after store revision", replace(GOOD_SNAPSHOT, revision=4), ValueError),
    (
        "mod revision before create revision",
        replace(GOOD_SNAPSHOT, key_values=(KeyValue("a", b"1", 3, 2, 1),)),
        ValueError,
    ),
    (
        "version larger than revisions allow",
        replace(GOOD_SNAPSHOT, key_values=(KeyValue("a", b"1", 1, 4, 5),)),
        ValueError,
    ),
    (
        "zero version",
        replace(GOOD_SNAPSHOT, key_values=(KeyValue("a", b"1", 1, 4, 0),)),
        ValueError,
    ),
    (
        "request remembered twice",
        replace(GOOD_SNAPSHOT, remembered_requests=GOOD_SNAPSHOT.remembered_requests * 2),
        ValueError,
    ),
    (
        "empty request id",
        replace(GOOD_SNAPSHOT, remembered_requests=(("", WriteResult(False, 0, None, None)),)),
        ValueError,
    ),
    (
        "remembered result from the future",
        replace(GOOD_SNAPSHOT, remembered_requests=(("r", WriteResult(False, 6, None, None)),)),
        ValueError,
    ),
]


def test_a_snapshot_value_that_is_not_bytes_is_refused() -> None:
    # compiled (concord.accel), KeyValue itself refuses the str; in Python, the restore does
    with pytest.raises(TypeError):
        KVStateMachine.from_snapshot(replace(
            GOOD_SNAPSHOT, key_values=(KeyValue("a", "1", 1, 4, 2),)))  # type: ignore[arg-type]


def test_good_snapshot_restores() -> None:
    restored = KVStateMachine.from_snapshot(GOOD_SNAPSHOT)
    assert restored.snapshot_state() == GOOD_SNAPSHOT


def test_a_snapshot_keeps_the_store_order_and_restores_the_key_order() -> None:
    machine = KVStateMachine()
    for index, key in enumerate(["m", "c", "x", "a"], start=1):
        machine.apply(index, put(key, key.encode()))
    machine.apply(5, delete("c"))
    machine.apply(6, put("c", b"again"))
    state = machine.snapshot_state()
    assert [kv.key for kv in state.key_values] == ["m", "x", "a", "c"]  # creation order
    restored = KVStateMachine.from_snapshot(state)
    assert restored.snapshot_state() == state
    assert [kv.key for kv in restored.range("", None)[0]] == ["a", "c", "m", "x"]


def test_a_builder_fed_in_pieces_restores_what_from_snapshot_restores() -> None:
    """Keys in pieces (each sorted as a run, the runs merged a step at a time), remembered
    requests in pieces: the same machine as one ``from_snapshot``, the key index in order."""
    machine = KVStateMachine()
    count = 2 * KEY_MERGE_STEP + 100  # several merge steps at the default step
    keys = [f"k{(index * 7919) % count:06d}" for index in range(count)]  # not in key order
    for index, key in enumerate(keys, start=1):
        machine.apply(index, put(key, key.encode(), request_id=f"r{index}"))
    state = machine.snapshot_state()
    builder = KVStateMachineBuilder(state.applied_index, state.revision)
    for start in range(0, len(state.key_values), 1024):
        builder.add_key_values(state.key_values[start:start + 1024])
    merged_per_step = []
    while merged := builder.merge_keys():
        merged_per_step.append(merged)
    remembered = tuple(state.remembered_requests)
    builder.remember(remembered[:500])
    builder.remember(remembered[500:])
    restored = builder.build()
    assert restored.snapshot_state().key_values == state.key_values
    assert tuple(restored.snapshot_state().remembered_requests) == remembered
    assert [kv.key for kv in restored.range("", None)[0]] == sorted(keys)
    assert restored.range("k005", 3)[0] == machine.range("k005", 3)[0]
    # Runs of 16,384 keys and more, merged in pairs: the last merge holds every key.
    assert len(merged_per_step) >= 2  # the last merge alone holds more than 2 * KEY_MERGE_STEP
    assert max(merged_per_step) <= 2 * KEY_MERGE_STEP
    assert sum(merged_per_step) >= count


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.text(alphabet="abcdefgh", min_size=1, max_size=3), unique=True,
                     max_size=120),
       piece_size=st.integers(min_value=1, max_value=25),
       merge_step=st.integers(min_value=1, max_value=9))
def test_runs_merge_into_key_order_a_bounded_step_at_a_time(
        keys: list[str], piece_size: int, merge_step: int) -> None:
    builder = KVStateMachineBuilder(len(keys), len(keys), merge_step=merge_step)
    pieces = [keys[start:start + piece_size] for start in range(0, len(keys), piece_size)]
    for index, piece in enumerate(pieces, start=1):
        builder.add_key_values([KeyValue(key, b"", index, index, 1) for key in piece])
    merged_per_step = []
    while merged := builder.merge_keys():
        merged_per_step.append(merged)
    assert builder.merge_keys() == 0
    restored = builder.build()
    assert [kv.key for kv in restored.range("", None)[0]] == sorted(keys)
    if [key for piece in pieces for key in sorted(piece)] == sorted(keys):
        assert merged_per_step == []  # the sorted pieces follow on: one run, nothing to merge
    assert all(merged <= 2 * merge_step for merged in merged_per_step)
    if merged_per_step:  # runs were merged: the last merge takes every key, 2 * merge_step a step
        assert len(merged_per_step) >= -(-len(keys) // (2 * merge_step))


@pytest.mark.parametrize("keys", [
    "abcdefghijkl",  # in key order: the runs join into one
    "lkjihgfedcba",  # in reverse: every run overlaps none, joined none
    "abcxyzdefmnoghi",  # some runs follow on, some interleave
], ids=["in order", "reversed", "mixed"])
def test_a_builder_puts_keys_in_order_whatever_order_they_came_in(keys: str) -> None:
    builder = KVStateMachineBuilder(len(keys), len(keys))
    values = [KeyValue(key, b"", index, index, 1) for index, key in enumerate(keys, start=1)]
    for start in range(0, len(values), 3):
        builder.add_key_values(values[start:start + 3])
    restored = builder.build()
    assert [kv.key for kv in restored.range("", None)[0]] == sorted(keys)
    assert restored.snapshot_state().key_values == tuple(values)


def test_a_builder_refuses_a_key_twice_across_pieces_and_keys_after_merging() -> None:
    builder = KVStateMachineBuilder(3, 3)
    builder.add_key_values([KeyValue("a", b"1", 1, 1, 1)])
    with pytest.raises(ValueError, match="holds a key twice"):
        builder.add_key_values([KeyValue("b", b"2", 2, 2, 1), KeyValue("a", b"3", 3, 3, 1)])
    builder = KVStateMachineBuilder(1, 1)
    builder.add_key_values([KeyValue("a", b"1", 1, 1, 1)])
    assert not builder.merge_keys()
    with pytest.raises(RuntimeError, match="before merge_keys"):
        builder.add_key_values([KeyValue("b", b"2", 1, 1, 1)])
    empty = KVStateMachineBuilder(0, 0).build()
    assert empty.range("", None) == ([], False) and empty.applied_index == 0


@pytest.mark.parametrize(
    ("state", "error"),
    [(state, error) for _, state, error in BAD_SNAPSHOTS],
    ids=[name for name, _, _ in BAD_SNAPSHOTS],
)
def test_inconsistent_snapshots_are_rejected(
    state: KVSnapshotState, error: type[Exception]
) -> None:
    with pytest.raises(error):
        KVStateMachine.from_snapshot(state)


# built inside the check: compiled (concord.accel), the ill-typed ones fail on construction
BAD_COMMANDS: list[tuple[str, Callable[[], object], type[Exception]]] = [
    ("not a command", lambda: Put("a", b"1"), TypeError),
    ("unknown op", lambda: Command("put a", ""), TypeError),  # type: ignore[arg-type]
    ("empty key", lambda: put("", b"1"), ValueError),
    ("key not str", lambda: put(b"a", b"1"), TypeError),  # type: ignore[arg-type]
    ("value not bytes", lambda: put("a", "1"), TypeError),  # type: ignore[arg-type]
    ("mutable value", lambda: put("a", bytearray(b"1")), TypeError),  # type: ignore[arg-type]
    ("request id not str", lambda: Command(Put("a", b"1"), 7), TypeError),  # type: ignore[arg-type]
    ("condition kind not enum", lambda: put("a", b"1", Condition(2)), TypeError),  # type: ignore[arg-type]
    (
        "negative condition revision",
        lambda: delete("a", Condition(MOD_REVISION_EQUALS, revision=-1)),
        ValueError,
    ),
    ("condition value not bytes", lambda: delete("a", Condition(VALUE_EQUALS, "x")), TypeError),  # type: ignore[arg-type]
    ("condition not a Condition", lambda: delete("a", ABSENT), TypeError),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(
    ("command", "error"),
    [(command, error) for _, command, error in BAD_COMMANDS],
    ids=[name for name, _, _ in BAD_COMMANDS],
)
def test_malformed_commands_are_rejected_before_anything_changes(
    command: Callable[[], object], error: type[Exception]
) -> None:
    machine = KVStateMachine()
    machine.apply(1, put("a", b"0"))
    state = machine.snapshot_state()
    with pytest.raises(error):
        machine.apply(2, command())  # type: ignore[arg-type]
    assert machine.snapshot_state() == state


@pytest.mark.parametrize(
    ("call", "error"),
    [
        # compiled (concord.accel), an int parameter takes a bool as the int it is
        pytest.param(lambda m: m.apply(True, put("a", b"1")), TypeError,
                     marks=pytest.mark.pure_python),
        (lambda m: m.apply_noop(1.0), TypeError),
        (lambda m: m.get(""), ValueError),
        (lambda m: m.get(1), TypeError),
        (lambda m: m.range("a", 0), ValueError),
        (lambda m: m.range("a", -1), ValueError),
        (lambda m: m.range(b"a", None), TypeError),
        (lambda m: m.range("a", None, 3), TypeError),
        (lambda m: KVStateMachine(0), ValueError),
        (KVStateMachine.from_snapshot, TypeError),
    ],
    ids=[
        "bool index",
        "float index",
        "empty key",
        "key not str",
        "zero limit",
        "negative limit",
        "prefix not str",
        "start_after not str",
        "no remembered requests",
        "snapshot of wrong type",
    ],
)
def test_programming_errors_raise(
    call: Callable[[KVStateMachine], object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        call(KVStateMachine())


def test_sorted_key_index_splits_and_merges_buckets_and_keeps_order() -> None:
    index = SortedKeyIndex(["k03", "k06", "k09"], bucket_size=2)
    for key in ["k01", "k02", "k04", "k05", "k07", "k08", "k10"]:
        index.add(key)
    expected = [f"k{n:02}" for n in range(1, 11)]
    assert list(index) == expected
    assert list(index.keys_from("k05", inclusive=True)) == expected[4:]
    assert list(index.keys_from("k05", inclusive=False)) == expected[5:]
    assert list(index.keys_from("k055", inclusive=True)) == expected[5:]
    assert list(index.keys_from("k10", inclusive=False)) == []
    assert list(index.keys_from("", inclusive=False)) == expected
    for key in ["k02", "k03", "k04", "k05", "k06", "k10"]:
        index.remove(key)
    assert list(index) == ["k01", "k07", "k08", "k09"]
    assert len(index) == 4
    for key in ["k01", "k07", "k08", "k09"]:
        index.remove(key)
    assert (list(index), len(index)) == ([], 0)
    index.add("z")
    assert list(index.keys_from("a", inclusive=True)) == ["z"]


@pytest.mark.parametrize(
    ("keys", "bucket_size", "error"),
    [
        (["b", "a"], 2, ValueError),
        (["a", "a"], 2, ValueError),
        (["a"], 1, ValueError),
        (["a"], 2.0, TypeError),
    ],
    ids=["unsorted", "duplicate", "bucket too small", "bucket size not int"],
)
def test_sorted_key_index_rejects_bad_arguments(
    keys: list[str], bucket_size: int, error: type[Exception]
) -> None:
    with pytest.raises(error):
        SortedKeyIndex(keys, bucket_size=bucket_size)


@pytest.mark.parametrize(("present", "absent"), [(["a", "b"], "c"), (["b", "c"], "a"), ([], "a")])
def test_sorted_key_index_asserts_its_callers_contract(present: list[str], absent: str) -> None:
    index = SortedKeyIndex(present, bucket_size=2)
    with pytest.raises(AssertionError, match="not in the index"):
        index.remove(absent)
    for key in present:
        with pytest.raises(AssertionError, match="added twice"):
            index.add(key)
    assert list(index) == present


_KV = KeyValue("k", b"v", 1, 2, 2)
# each record with its fields, and for each field another value
_RECORDS: list[tuple[type[Record], dict[str, object], dict[str, object]]] = [
    (KeyValue, {"key": "k", "value": b"v", "create_revision": 1, "mod_revision": 2,
                "version": 2},
     {"key": "j", "value": b"w", "create_revision": 2, "mod_revision": 3, "version": 1}),
    (Condition, {"kind": ConditionKind.VALUE_EQUALS, "value": b"v", "revision": 0},
     {"kind": ConditionKind.ABSENT, "value": b"w", "revision": 1}),
    (Put, {"key": "k", "value": b"v", "condition": None},
     {"key": "j", "value": b"w", "condition": Condition(ConditionKind.ABSENT)}),
    (Delete, {"key": "k", "condition": None},
     {"key": "j", "condition": Condition(ConditionKind.ABSENT)}),
    (Get, {"key": "k"}, {"key": "j"}),
    (Command, {"op": Put("k", b"v"), "request_id": "r"},
     {"op": Delete("k"), "request_id": ""}),
    (BatchCommand, {"ops": (Put("k", b"v"),), "request_id": "r"},
     {"ops": (Get("k"),), "request_id": ""}),
    (WriteResult, {"succeeded": True, "revision": 2, "prev": None, "current": _KV},
     {"succeeded": False, "revision": 3, "prev": _KV, "current": None}),
    (ReadResult, {"current": _KV}, {"current": None}),
    (BatchResult, {"results": (ReadResult(_KV),)}, {"results": ()}),
]


@pytest.mark.parametrize(("cls", "fields", "others"), _RECORDS,
                         ids=[cls.__name__ for cls, _, _ in _RECORDS])
def test_a_record_compares_hashes_and_prints_by_its_fields(
        cls: type[Record], fields: dict[str, object], others: dict[str, object]) -> None:
    record = cls(*fields.values())
    same = cls(**fields)
    assert record == same and hash(record) == hash(same) and len({record, same}) == 1
    assert tuple(fields) == cls.FIELDS
    assert tuple(getattr(record, name) for name in fields) == tuple(fields.values())
    for name, other_value in others.items():
        assert record != cls(**{**fields, name: other_value}), name
    assert record != tuple(fields.values())
    shown = ", ".join(f"{name}={value!r}" for name, value in fields.items())
    assert repr(record) == f"{cls.__name__}({shown})"


def test_records_of_different_kinds_are_never_equal() -> None:
    assert Put("k", b"v") != Delete("k")
    assert Get("k").__eq__(Delete("k")) is NotImplemented  # so Python falls back to identity


@pytest.mark.parametrize(("cls", "fields", "others"), _RECORDS,
                         ids=[cls.__name__ for cls, _, _ in _RECORDS])
def test_a_compiled_record_cannot_be_changed(
        cls: type[Record], fields: dict[str, object], others: dict[str, object]) -> None:
    if "concord.kv.commands" not in compiled_modules():
        pytest.skip("pure Python: its Final fields are checked by mypy only")
    record = cls(**fields)
    for name, other_value in others.items():
        with pytest.raises(AttributeError):
            setattr(record, name, other_value)
    assert record == cls(**fields)
