"""Unit tests of the batch records of the wire codec: round trips, the exact layout, the format
version each record is written with, and every strict-decoding rejection with its message."""

from __future__ import annotations

from collections.abc import Callable

import msgpack
import pytest

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
from concord.kv.fsm import KVSnapshotState
from concord.wire import (
    BASE_FORMAT_VERSION,
    BATCH_FORMAT_VERSION,
    FORMAT_VERSION,
    DecodeError,
    OperationTag,
    RecordKind,
    ResultTag,
    decode_batch_command,
    decode_command,
    decode_kv_snapshot,
    decode_log_command,
    encode_batch_command,
    encode_command,
    encode_kv_snapshot,
    encode_log_command,
)

KV = KeyValue("a", b"1", create_revision=2, mod_revision=5, version=3)
BATCHES = [
    BatchCommand((Put("k", b"v"),)),
    BatchCommand((Get("k"),), request_id="c1:9"),
    BatchCommand((
        Put("a", b"\x00\xff"),
        Put("b", b"", Condition(ConditionKind.VALUE_EQUALS, b"old")),
        Put("c", b"x", Condition(ConditionKind.ABSENT)),
        Delete("d"),
        Delete("e", Condition(ConditionKind.MOD_REVISION_EQUALS, revision=7)),
        Get("ключ"),
    ), request_id="r"),
]


def pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def record(body: object, version: int = BATCH_FORMAT_VERSION) -> bytes:
    return pack([version, RecordKind.BATCH_COMMAND, body])


def test_tags_and_versions_are_the_documented_values() -> None:
    assert RecordKind.BATCH_COMMAND == 10
    assert {t.name: t.value for t in OperationTag} == {"PUT": 1, "DELETE": 2, "GET": 3}
    assert {t.name: t.value for t in ResultTag} == {"WRITE": 1, "READ": 2}
    assert (BASE_FORMAT_VERSION, BATCH_FORMAT_VERSION, FORMAT_VERSION) == (1, 2, 3)


@pytest.mark.parametrize("batch", BATCHES)
def test_batches_round_trip_through_both_decoders(batch: BatchCommand) -> None:
    data = encode_batch_command(batch)
    assert decode_batch_command(data) == batch
    assert decode_log_command(data) == batch
    assert encode_log_command(batch) == data


def test_log_command_decoding_tells_single_writes_from_batches() -> None:
    single = Command(Put("k", b"v", Condition(ConditionKind.ABSENT)), "id")
    assert decode_log_command(encode_log_command(single)) == single
    assert decode_log_command(encode_command(Command(Delete("k")))) == Command(Delete("k"))
    assert encode_log_command(single) == encode_command(single)


def test_the_exact_layout_and_version_of_a_batch() -> None:
    batch = BatchCommand((Put("k", b"v"), Delete("d", Condition(ConditionKind.ABSENT)),
                          Get("g")), "id")
    assert encode_batch_command(batch) == pack(
        [2, 10, ["id", [[1, "k", b"v", None], [2, "d", [2, b"", 0]], [3, "g"]]]])
    # a single write keeps version 1, byte for byte
    assert encode_command(Command(Put("k", b"v"))) == pack([1, 7, ["", [1, "k", b"v", None]]])


def test_snapshots_are_version_1_unless_they_remember_a_batch() -> None:
    single = WriteResult(True, 5, None, KV)
    plain = KVSnapshotState(9, 5, (KV,), (("w", single),))
    assert encode_kv_snapshot(plain)[1] == BASE_FORMAT_VERSION
    outcomes = BatchResult((single, WriteResult(False, 5, KV, KV), ReadResult(KV),
                            ReadResult(None)))
    with_batch = KVSnapshotState(9, 5, (KV,), (("w", single), ("b", outcomes)))
    data = encode_kv_snapshot(with_batch)
    assert msgpack.unpackb(data, raw=False)[:2] == [BATCH_FORMAT_VERSION, 9]
    assert msgpack.unpackb(data, raw=False)[2][3][1] == ["b", None, [
        [1, True, 5, None, ["a", b"1", 2, 5, 3]],
        [1, False, 5, ["a", b"1", 2, 5, 3], ["a", b"1", 2, 5, 3]],
        [2, ["a", b"1", 2, 5, 3]],
        [2, None],
    ]]
    assert decode_kv_snapshot(data) == with_batch


@pytest.mark.parametrize(
    ("case", "decode", "data", "message"),
    [
        ("batch in a version-1 record", decode_batch_command,
         record(["", [[3, "k"]]], version=1),
         "batch_command.version: BATCH_COMMAND needs format version 2, got 1"),
        ("newer version", decode_batch_command, record(["", [[3, "k"]]], version=4),
         "format version 4 is newer than this build reads (1..3)"),
        ("empty batch", decode_batch_command, record(["", []]),
         "batch_command.ops: a batch holds at least one operation"),
        ("ops not an array", decode_batch_command, record(["", None]),
         "batch_command.ops: expected an array, got nil"),
        ("body arity", decode_batch_command, record(["", [[3, "k"]], 0]),
         "batch_command: expected 2 fields, got 3"),
        ("request id type", decode_log_command, record([b"id", [[3, "k"]]]),
         "batch_command.request_id: expected a str, got bytes"),
        ("unknown op tag", decode_batch_command, record(["", [[1, "k", b"", None], [9, "k"]]]),
         "batch_command.ops[1].tag: unknown OperationTag 9"),
        ("get arity", decode_log_command, record(["", [[3, "k", None]]]),
         "batch_command.ops[0] (Get): expected 2 fields, got 3"),
        ("key type", decode_batch_command, record(["", [[3, b"k"]]]),
         "batch_command.ops[0].key: expected a str, got bytes"),
        ("put value type", decode_batch_command, record(["", [[1, "k", "v", None]]]),
         "batch_command.ops[0].value: expected bytes, got str"),
        ("bad condition", decode_batch_command, record(["", [[2, "k", [1, b"", -1]]]]),
         "batch_command.ops[0].condition.revision: must not be negative"),
        ("get outside a batch", decode_command, pack([2, 7, ["", [3, "k"]]]),
         "command.op.tag: a GET operation is only valid inside a batch"),
        ("batch read as a single write", decode_command,
         encode_batch_command(BatchCommand((Put("k", b"v"),))),
         "expected record kind COMMAND, got BATCH_COMMAND"),
        ("single write read as a batch", decode_batch_command,
         encode_command(Command(Delete("k"))), "expected record kind BATCH_COMMAND, got COMMAND"),
        ("batch result in a version-1 snapshot", decode_kv_snapshot,
         pack([1, 9, [1, 1, [], [["r", None, [[2, None]]]]]]),
         "kv_snapshot.remembered_requests[0]: expected 2 fields (format version 1), got 3"),
        ("nil beside a batch result", decode_kv_snapshot,
         pack([2, 9, [1, 1, [], [["r", [True, 1, None, None], [[2, None]]]]]]),
         "kv_snapshot.remembered_requests[0].result: expected nil beside a batch's results"),
        ("empty batch result", decode_kv_snapshot, pack([2, 9, [1, 1, [], [["r", None, []]]]]),
         "batch_results: a batch has at least one result"),
        ("unknown result tag", decode_kv_snapshot,
         pack([2, 9, [1, 1, [], [["r", None, [[7, None]]]]]]),
         "batch_results[0].tag: unknown ResultTag 7"),
        ("write result arity", decode_kv_snapshot,
         pack([2, 9, [1, 1, [], [["r", None, [[1, True, 1, None]]]]]]),
         "batch_results[0] (WriteResult): expected 5 fields, got 4"),
        ("read result value", decode_kv_snapshot,
         pack([2, 9, [1, 1, [], [["r", None, [[2, ["k", b"", 1, 1]]]]]]]),
         "batch_results[0].current: expected 5 fields, got 4"),
    ],
)
def test_malformed_batch_records_are_rejected_naming_the_field(
        case: str, decode: Callable[[bytes], object], data: bytes, message: str) -> None:
    with pytest.raises(DecodeError) as raised:
        decode(data)
    assert message in str(raised.value), case
