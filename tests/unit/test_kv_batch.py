"""Unit tests of batches in the KV state machine: operations applied in order at one log
index, a revision per successful write, a failed condition failing its own op only, gets
reading at the batch's place in the log, the whole batch de-duplicated by its request id
(apart from single writes), the at-most-once table's bound counting a batch's ops, and
snapshots that carry remembered batches."""

from __future__ import annotations

import gc
from collections.abc import Callable

import pytest

from concord.kv.commands import (
    BatchCommand,
    BatchOp,
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
from concord.kv.fsm import KVStateMachine
from concord.wire.codec import decode_kv_snapshot, encode_kv_snapshot


def batch(*ops: BatchOp, request_id: str = "") -> BatchCommand:
    return BatchCommand(tuple(ops), request_id)


def test_ops_apply_in_order_each_with_its_own_revision_at_one_index() -> None:
    machine = KVStateMachine()
    machine.apply(1, Command(Put("a", b"0")))
    result = machine.apply_batch(2, batch(
        Put("a", b"1"), Put("b", b"x"), Put("a", b"2"), Delete("b"), Get("a"), Get("b"),
    ))
    a1 = KeyValue("a", b"1", 1, 2, 2)
    b1 = KeyValue("b", b"x", 3, 3, 1)
    a2 = KeyValue("a", b"2", 1, 4, 3)
    assert result == BatchResult((
        WriteResult(True, 2, KeyValue("a", b"0", 1, 1, 1), a1),
        WriteResult(True, 3, None, b1),
        WriteResult(True, 4, a1, a2),
        WriteResult(True, 5, b1, None),
        ReadResult(a2),
        ReadResult(None),
    ))
    assert (machine.applied_index, machine.revision) == (2, 5)
    assert machine.get("a") == a2 and machine.get("b") is None


def test_a_failed_condition_fails_its_own_op_only() -> None:
    machine = KVStateMachine()
    machine.apply(1, Command(Put("lock", b"owner-1")))
    lock = KeyValue("lock", b"owner-1", 1, 1, 1)
    result = machine.apply_batch(2, batch(
        Put("x", b"1"),
        Put("lock", b"owner-2", Condition(ConditionKind.ABSENT)),  # fails: the key exists
        Put("y", b"2"),
        Delete("missing"),  # fails: no such key
        Delete("lock", Condition(ConditionKind.VALUE_EQUALS, b"someone-else")),  # fails
        Put("lock", b"owner-3", Condition(ConditionKind.MOD_REVISION_EQUALS, revision=1)),
    ))
    outcomes = [(r.succeeded, r.revision) for r in result.results if isinstance(r, WriteResult)]
    assert outcomes == [(True, 2), (False, 2), (True, 3), (False, 3), (False, 3), (True, 4)]
    assert result.results[1] == WriteResult(False, 2, lock, lock)
    assert result.results[3] == WriteResult(False, 3, None, None)
    assert machine.get("lock") == KeyValue("lock", b"owner-3", 1, 4, 2)
    assert (machine.get("x"), machine.get("y")) == (KeyValue("x", b"1", 2, 2, 1),
                                                     KeyValue("y", b"2", 3, 3, 1))


def test_a_get_reads_what_the_log_holds_at_the_batch_position() -> None:
    machine = KVStateMachine()
    machine.apply(1, Command(Put("k", b"before")))
    first = machine.apply_batch(2, batch(Get("k"), Put("k", b"inside"), Get("k")))
    machine.apply(3, Command(Put("k", b"after")))
    assert first.results[0] == ReadResult(KeyValue("k", b"before", 1, 1, 1))
    assert first.results[2] == ReadResult(KeyValue("k", b"inside", 1, 2, 2))
    only_reads = machine.apply_batch(4, batch(Get("k")))
    assert only_reads == BatchResult((ReadResult(KeyValue("k", b"after", 1, 3, 3)),))
    assert machine.revision == 3, "a get changes no revision"


def test_a_retried_batch_applies_once_and_answers_its_first_results() -> None:
    machine = KVStateMachine()
    sent = batch(Put("a", b"1"), Get("a"), Put("b", b"2"), request_id="client/batch-1")
    first = machine.apply_batch(1, sent)
    machine.apply(2, Command(Put("a", b"changed since")))
    again = machine.apply_batch(3, sent)
    assert again == first
    assert machine.applied_index == 3 and machine.revision == 3
    assert machine.get("a") == KeyValue("a", b"changed since", 1, 3, 2)
    # without a request id there is no de-duplication
    machine.apply_batch(4, batch(Put("c", b"1")))
    machine.apply_batch(5, batch(Put("c", b"1")))
    assert machine.get("c") == KeyValue("c", b"1", 4, 5, 2)


def test_batches_and_single_writes_are_deduplicated_apart() -> None:
    machine = KVStateMachine()
    single = machine.apply(1, Command(Put("s", b"1"), "shared-id"))
    grouped = machine.apply_batch(2, batch(Put("g", b"1"), request_id="shared-id"))
    assert grouped == BatchResult((WriteResult(True, 2, None, KeyValue("g", b"1", 2, 2, 1)),))
    assert machine.apply(3, Command(Put("s", b"other"), "shared-id")) == single
    assert machine.apply_batch(4, batch(Get("x"), request_id="shared-id")) == grouped
    assert machine.revision == 2


def test_the_remembered_table_counts_a_batch_as_its_ops() -> None:
    machine = KVStateMachine(max_remembered_requests=5)
    machine.apply_batch(1, batch(Put("a", b"1"), Put("b", b"1"), request_id="big"))  # weight 2
    machine.apply(2, Command(Put("c", b"1"), "one"))
    machine.apply(3, Command(Put("d", b"1"), "two"))
    machine.apply_batch(4, batch(Put("e", b"1"), Get("e"), request_id="pair"))  # 6 > 5: evict
    state = machine.snapshot_state()
    assert [request_id for request_id, _ in state.remembered_requests] == ["one", "two", "pair"]
    # "big" was forgotten: sent again it applies again
    again = machine.apply_batch(5, batch(Put("a", b"1"), Put("b", b"1"), request_id="big"))
    assert [r.revision for r in again.results if isinstance(r, WriteResult)] == [6, 7]
    # a batch heavier than the whole bound is still remembered, alone
    heavy = batch(*(Put(f"h{i}", b"") for i in range(7)), request_id="heavy")
    first = machine.apply_batch(6, heavy)
    assert [rid for rid, _ in machine.snapshot_state().remembered_requests] == ["heavy"]
    assert machine.apply_batch(7, heavy) == first


def test_remembered_results_are_invisible_to_the_cycle_collector() -> None:
    """The at-most-once table holds plain tuples the collector stops tracking (result objects
    there made young collections under batch load walk hundreds of thousands of them)."""
    machine = KVStateMachine()
    machine.apply(1, Command(Put("a", b"1"), "single"))
    machine.apply_batch(2, batch(Put("a", b"2"), Get("a"), Delete("zz"), request_id="batch"))
    for _ in range(3):  # a tuple is let go once the tuples inside it have been
        gc.collect()
    remembered = list(machine._remembered.values())
    assert len(remembered) == 2 and not any(gc.is_tracked(frozen) for frozen in remembered)
    # and they come back as the results they were
    assert machine.apply(3, Command(Put("a", b"9"), "single")) == WriteResult(
        True, 1, None, KeyValue("a", b"1", 1, 1, 1))
    assert machine.apply_batch(4, batch(Put("a", b"9"), request_id="batch")).results == (
        WriteResult(True, 2, KeyValue("a", b"1", 1, 1, 1), KeyValue("a", b"2", 1, 2, 2)),
        ReadResult(KeyValue("a", b"2", 1, 2, 2)),
        WriteResult(False, 2, None, None))


def test_a_snapshot_keeps_remembered_batches_and_restores_exactly() -> None:
    machine = KVStateMachine()
    machine.apply(1, Command(Put("a", b"1"), "single"))
    first = machine.apply_batch(2, batch(Put("b", b"\xff"), Get("a"), Delete("zz"),
                                         request_id="batch"))
    state = machine.snapshot_state()
    restored = KVStateMachine.from_snapshot(decode_kv_snapshot(encode_kv_snapshot(state)))
    assert restored.snapshot_state() == state
    # the restored replica answers a retry exactly as the original does, changing nothing
    assert restored.apply_batch(3, batch(Put("b", b"new"), Get("a"), Delete("zz"),
                                         request_id="batch")) == first
    assert restored.get("b") == KeyValue("b", b"\xff", 2, 2, 1)


def test_a_malformed_batch_is_refused_before_anything_changes() -> None:
    machine = KVStateMachine()
    machine.apply(1, Command(Put("a", b"1")))
    # built inside the check: compiled (concord.accel), the ill-typed ones fail on construction
    bad_batches: list[Callable[[], object]] = [
        lambda: BatchCommand(()),
        lambda: BatchCommand((Put("ok", b"1"), Get(""))),
        lambda: BatchCommand((Put("ok", b"1"), Put("k", "text"))),  # type: ignore[arg-type]
        lambda: BatchCommand((Put("ok", b"1"), Command(Put("k", b"")))),  # type: ignore[arg-type]
        lambda: BatchCommand((Get("k"),), request_id=7),  # type: ignore[arg-type]
        lambda: Command(Put("k", b"")),
    ]
    for make_bad in bad_batches:
        with pytest.raises((TypeError, ValueError)):
            machine.apply_batch(2, make_bad())  # type: ignore[arg-type]
    assert (machine.applied_index, machine.revision, machine.get("ok")) == (1, 1, None)
