"""Unit tests of the wire codec: round trips of every record, the exact bytes of the layout
(hand-derived from the msgpack spec), and each strict-decoding rejection with its message."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import FrozenInstanceError, replace

import msgpack
import pytest

from concord.kv.commands import (
    BatchCommand,
    Command,
    Condition,
    ConditionKind,
    Delete,
    Get,
    KeyValue,
    Put,
    WriteResult,
)
from concord.kv.fsm import KVSnapshotState, KVStateMachine
from concord.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Membership,
    Message,
    RequestVote,
    RequestVoteResponse,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
)
from concord.wire import (
    BASE_FORMAT_VERSION,
    FORMAT_VERSION,
    MAX_MESSAGE_BYTES,
    MAX_STR_BYTES,
    DecodeError,
    Envelope,
    EnvelopeBatch,
    MessageTag,
    RecordKind,
    decode_batch_command,
    decode_command,
    decode_entry,
    decode_envelope,
    decode_hard_state,
    decode_kv_snapshot,
    decode_message,
    decode_messages_batch,
    decode_snapshot,
    decode_write_result,
    encode_batch_command,
    encode_command,
    encode_entry,
    encode_envelope,
    encode_hard_state,
    encode_kv_snapshot,
    encode_message,
    encode_messages_batch,
    encode_snapshot,
    encode_write_result,
)
from concord.wire.codec import (
    FRAGMENT_FORMAT_VERSION,
    FRAGMENT_OVERHEAD_BYTES,
    KV_SNAPSHOT_PIECE_KEYS,
    MAX_SNAPSHOT_BYTES,
    Fragment,
    KVSnapshotReader,
    decode_fragment,
    decode_reassembled_batch,
    decode_snapshot_parts,
    decode_stream_frame,
    encode_fragment,
    encode_snapshot_batch,
    encode_snapshot_parts,
    snapshot_image_span,
    split_snapshot_batch,
)

V = FORMAT_VERSION
MEMBERSHIP = Membership(frozenset({"n1", "n2", "n3"}), frozenset({"n4"}))
SNAPSHOT = Snapshot(SnapshotMeta(index=40, term=3, membership=MEMBERSHIP), data=b"\x00image\xff")
KV_A = KeyValue("a", b"1", create_revision=2, mod_revision=5, version=3)
KV_B = KeyValue("b/\u00e9", b"", create_revision=6, mod_revision=6, version=1)
ENTRIES = (
    Entry(11, 4, EntryKind.COMMAND, b"put x"),
    Entry(12, 5, EntryKind.NOOP),
    Entry(13, 5, EntryKind.MEMBERSHIP, membership=MEMBERSHIP),
    Entry(14, 5, EntryKind.COMMAND, bytes(range(256))),
)

MESSAGES: list[Message] = [
    AppendEntries(
        term=5,
        sender="n1",
        recipient="n2",
        prev_log_index=10,
        prev_log_term=4,
        entries=ENTRIES,
        leader_commit=12,
    ),
    AppendEntries(5, "n1", "n2", prev_log_index=0, prev_log_term=0, entries=(), leader_commit=0),
    AppendEntriesResponse(5, "n2", "n1", success=True, match_index=14),
    AppendEntriesResponse(
        5, "n2", "n1", success=False, rejected_index=9, hint_index=7, hint_term=3
    ),
    RequestVote(6, "n3", "n1", last_log_index=14, last_log_term=5),
    RequestVote(6, "n3", "n1", last_log_index=14, last_log_term=5, pre_vote=True, transfer=True),
    RequestVoteResponse(6, "n1", "n3", granted=True, pre_vote=True),
    RequestVoteResponse(6, "n1", "n3", granted=False),
    Heartbeat(5, "n1", "n2", commit=12, read_context=99),
    HeartbeatResponse(5, "n2", "n1", read_context=99),
    InstallSnapshot(5, "n1", "n4", SNAPSHOT),
    TimeoutNow(5, "n1", "n2"),
    TimeoutNow(2**64 - 1, "ünïcödé-node", "n2"),
]

COMMANDS = [
    Command(Put("k", b"v")),
    Command(Put("k", b"v", Condition(ConditionKind.VALUE_EQUALS, b"old")), request_id="c1:7"),
    Command(Put("", b"", Condition(ConditionKind.MOD_REVISION_EQUALS, revision=9))),
    Command(Delete("k")),
    Command(Delete("k", Condition(ConditionKind.ABSENT)), request_id="r"),
]

WRITE_RESULTS = [
    WriteResult(succeeded=True, revision=5, prev=None, current=KV_A),
    WriteResult(succeeded=True, revision=6, prev=KV_A, current=None),
    WriteResult(succeeded=False, revision=6, prev=KV_B, current=KV_B),
]

KV_SNAPSHOTS = [
    KVSnapshotState(applied_index=0, revision=0, key_values=(), remembered_requests=()),
    KVSnapshotState(
        applied_index=17,
        revision=6,
        key_values=(KV_A, KV_B),
        remembered_requests=(("c1:1", WRITE_RESULTS[0]), ("c1:2", WRITE_RESULTS[2])),
    ),
]


def pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_message_round_trips_alone_in_an_envelope_and_in_a_batch(msg: Message) -> None:
    assert decode_message(encode_message(msg)) == msg
    assert decode_envelope(encode_envelope("cluster-a", 42, msg)) == Envelope(
        BASE_FORMAT_VERSION, "cluster-a", 42, msg
    )


def test_batch_round_trips_all_messages_in_order() -> None:
    batch = decode_messages_batch(encode_messages_batch("c", 7, MESSAGES))
    assert batch == EnvelopeBatch(BASE_FORMAT_VERSION, "c", 7, tuple(MESSAGES))
    empty = decode_messages_batch(encode_messages_batch("", 0, []))
    assert empty == EnvelopeBatch(BASE_FORMAT_VERSION, "", 0, ())


@pytest.mark.parametrize(
    ("encode", "decode", "value"),
    [
        *((encode_entry, decode_entry, e) for e in ENTRIES),
        (encode_entry, decode_entry, Entry(0, 0)),
        (encode_hard_state, decode_hard_state, HardState()),
        (encode_hard_state, decode_hard_state, HardState(term=9, vote="n3", commit=8)),
        (encode_snapshot, decode_snapshot, SNAPSHOT),
        (
            encode_snapshot,
            decode_snapshot,
            Snapshot(SnapshotMeta(0, 0, Membership(frozenset())), b""),
        ),
        *((encode_command, decode_command, c) for c in COMMANDS),
        *((encode_write_result, decode_write_result, r) for r in WRITE_RESULTS),
        *((encode_kv_snapshot, decode_kv_snapshot, s) for s in KV_SNAPSHOTS),
    ],
)
def test_record_round_trips(
    encode: Callable[[object], bytes], decode: Callable[[bytes], object], value: object
) -> None:
    decoded = decode(encode(value))
    assert decoded == value
    assert type(decoded) is type(value)


def test_entries_decoded_on_the_fast_path_behave_like_constructed_ones() -> None:
    msg = decode_message(encode_message(MESSAGES[0]))
    assert isinstance(msg, AppendEntries)
    for decoded, original in zip(msg.entries, ENTRIES, strict=True):
        assert decoded == original
        assert hash(decoded) == hash(original)
        if original.membership is None:  # a frozenset's repr order depends on the hash seed
            assert repr(decoded) == repr(original)
        assert replace(decoded, term=9) == replace(original, term=9)
    with pytest.raises(FrozenInstanceError):
        msg.entries[0].term = 1  # type: ignore[misc]


def test_kv_state_survives_commands_and_snapshot_through_the_wire() -> None:
    machine = KVStateMachine()
    for index, command in enumerate(COMMANDS[:2] + COMMANDS[3:], start=1):
        machine.apply(index, decode_command(encode_command(command)))
    state = machine.snapshot_state()
    assert state.remembered_requests, "the sample commands include de-duplicated ones"
    restored = KVStateMachine.from_snapshot(decode_kv_snapshot(encode_kv_snapshot(state)))
    assert restored.snapshot_state() == state


@pytest.mark.parametrize("index", range(len(KV_SNAPSHOTS)))
def test_a_snapshot_packed_piece_by_piece_is_the_canonical_packing(index: int) -> None:
    data = encode_kv_snapshot(KV_SNAPSHOTS[index])
    # what one packb of the decoded structure gives: the same bytes, nothing left over
    assert msgpack.packb(msgpack.unpackb(data, raw=False), use_bin_type=True) == data


def test_decoders_accept_bytearray_and_memoryview() -> None:
    data = encode_message(MESSAGES[0])
    assert decode_message(bytearray(data)) == MESSAGES[0]
    assert decode_message(memoryview(data)) == MESSAGES[0]


# --- exact layout (hand-derived from the msgpack spec) --------------------------------------


def test_timeout_now_has_the_documented_bytes() -> None:
    # [1, MESSAGE=3, [TIMEOUT_NOW=8, term=3, "a", "b"]]: fixarray(3), fixints, fixarray(4), fixstr.
    expected = bytes([0x93, 0x01, 0x03, 0x94, 0x08, 0x03, 0xA1, 0x61, 0xA1, 0x62])
    assert encode_message(TimeoutNow(3, "a", "b")) == expected


def test_envelope_has_the_documented_bytes() -> None:
    # [1, ENVELOPE=1, "c", lamport=5, [8, 3, "a", "b"]]
    expected = bytes([0x95, 0x01, 0x01, 0xA1, 0x63, 0x05, 0x94, 0x08, 0x03, 0xA1, 0x61, 0xA1, 0x62])
    assert encode_envelope("c", 5, TimeoutNow(3, "a", "b")) == expected


def test_hard_state_and_entry_have_the_documented_bytes() -> None:
    # [1, HARD_STATE=5, [term=2, vote=nil, commit=1]]
    assert encode_hard_state(HardState(2, None, 1)) == bytes(
        [0x93, 0x01, 0x05, 0x93, 0x02, 0xC0, 0x01]
    )
    # [1, ENTRY=4, [index=7, term=2, COMMAND=0, bin8(2) "hi"]]
    assert encode_entry(Entry(7, 2, data=b"hi")) == bytes(
        [0x93, 0x01, 0x04, 0x94, 0x07, 0x02, 0x00, 0xC4, 0x02, 0x68, 0x69]
    )


def test_membership_encodes_sorted_whatever_the_set_order() -> None:
    voters = frozenset(["n9", "n1", "n5", "n3"])
    entry = Entry(1, 1, EntryKind.MEMBERSHIP, membership=Membership(voters, frozenset(["n2"])))
    expected = pack([BASE_FORMAT_VERSION, RecordKind.ENTRY,
                     [1, 1, 2, b"", ["n1", "n3", "n5", "n9"], ["n2"]]])
    assert encode_entry(entry) == expected


def test_tags_are_the_documented_values() -> None:
    assert {t.name: t.value for t in MessageTag} == {
        "APPEND_ENTRIES": 1,
        "APPEND_ENTRIES_RESPONSE": 2,
        "REQUEST_VOTE": 3,
        "REQUEST_VOTE_RESPONSE": 4,
        "HEARTBEAT": 5,
        "HEARTBEAT_RESPONSE": 6,
        "INSTALL_SNAPSHOT": 7,
        "TIMEOUT_NOW": 8,
    }
    assert [k.value for k in RecordKind] == list(range(1, 12))
    assert (RecordKind.FRAGMENT.value, FRAGMENT_FORMAT_VERSION, FORMAT_VERSION) == (11, 3, 3)


# --- strict decoding ------------------------------------------------------------------------


def message_record(body: list[object]) -> bytes:
    return pack([V, RecordKind.MESSAGE, body])


def append_entries(entries: list[object], prev_index: int = 10, prev_term: int = 4) -> bytes:
    return message_record([1, 5, "n1", "n2", prev_index, prev_term, 0, entries])


REJECTIONS: list[tuple[str, Callable[[bytes], object], bytes, str]] = [
    ("not msgpack", decode_message, b"\xc1", "not valid msgpack"),
    ("empty input", decode_message, b"", "not valid msgpack"),
    ("truncated", decode_message, encode_message(MESSAGES[0])[:-3], "not valid msgpack"),
    ("trailing bytes", decode_message, encode_message(MESSAGES[-1]) + b"\x00", "extra data"),
    ("bad utf-8", decode_message, message_record([8, 3, "a", "b"])[:-1] + b"\xff", "UnicodeDecode"),
    ("top level int", decode_message, pack(5), "message: expected an array, got int 5"),
    ("top level empty map", decode_message, pack({}), "message: expected an array, got map {}"),
    ("non-empty map", decode_message, pack({"a": 1}), "max_map_len"),
    ("extension type", decode_message, pack(msgpack.ExtType(1, b"x")), "max_ext_len"),
    ("short header", decode_message, pack([V]), "expected [format_version, record_kind, ...]"),
    (
        "newer version",
        decode_message,
        pack([V + 1, 3, [8, 3, "a", "b"]]),
        f"message.version: format version {V + 1} is newer than this build reads",
    ),
    ("version zero", decode_message, pack([0, 3, []]), "unknown format version 0"),
    ("version bool", decode_message, pack([True, 3, []]), "expected an int, got bool True"),
    ("unknown record kind", decode_message, pack([V, 99, []]), "unknown RecordKind 99"),
    (
        "wrong record kind",
        decode_hard_state,
        encode_message(MESSAGES[-1]),
        "hard_state: expected record kind HARD_STATE, got MESSAGE",
    ),
    (
        "envelope fed a batch",
        decode_envelope,
        encode_messages_batch("c", 1, []),
        "expected record kind ENVELOPE, got BATCH",
    ),
    ("record arity", decode_message, pack([V, 3, [8, 3, "a", "b"], 0]), "expected 3 fields, got 4"),
    ("empty message", decode_message, message_record([]), "got an empty array"),
    ("unknown tag", decode_message, message_record([99, 3, "a", "b"]), "unknown MessageTag 99"),
    (
        "bool tag",
        decode_message,
        message_record([True, 3, "a", "b"]),
        "message.tag: expected an int MessageTag, got bool True",
    ),
    (
        "message arity",
        decode_message,
        message_record([8, 3, "a", "b", 0]),
        "message (TimeoutNow): expected 4 fields, got 5",
    ),
    (
        "negative term",
        decode_message,
        message_record([8, -1, "a", "b"]),
        "TimeoutNow.term: must not be negative, got -1",
    ),
    (
        "bool for int",
        decode_message,
        message_record([5, 3, "a", "b", True, 0]),
        "Heartbeat.commit: expected a non-negative int, got bool True",
    ),
    (
        "float for int",
        decode_message,
        message_record([6, 3, "a", "b", 1.0]),
        "HeartbeatResponse.read_context: expected a non-negative int, got float 1.0",
    ),
    (
        "array for int",
        decode_message,
        message_record([8, [[3]], "a", "b"]),
        "TimeoutNow.term: expected a non-negative int, got array ((3,),)",
    ),
    (
        "int for bool",
        decode_message,
        message_record([3, 3, "a", "b", 1, 1, 1, False]),
        "RequestVote.pre_vote: expected a bool, got int 1",
    ),
    (
        "nil for bool",
        decode_message,
        message_record([4, 3, "a", "b", None, False]),
        "RequestVoteResponse.granted: expected a bool, got nil",
    ),
    (
        "empty node id",
        decode_message,
        message_record([8, 3, "", "b"]),
        "TimeoutNow.sender: a node id must not be empty",
    ),
    (
        "bytes for node id",
        decode_message,
        message_record([8, 3, "a", b"b"]),
        "TimeoutNow.recipient: expected a str, got bytes",
    ),
    (
        "response arity",
        decode_message,
        message_record([2, 3, "a", "b", True, 0, 0, 0]),
        "message (AppendEntriesResponse): expected 9 fields, got 8",
    ),
    (
        "entries not an array",
        decode_message,
        message_record([1, 5, "n1", "n2", 0, 0, 0, b""]),
        "AppendEntries.entries: expected an array, got bytes",
    ),
    (
        "str for entry data",
        decode_message,
        append_entries([[11, 4, 0, "text"]]),
        "AppendEntries.entries[0].data: expected bytes, got str",
    ),
    (
        "negative entry index",
        decode_message,
        append_entries([[-1, 4, 0, b""]]),
        "AppendEntries.entries[0].index: must not be negative, got -1",
    ),
    (
        "entry gap",
        decode_message,
        append_entries([[11, 4, 0, b""], [13, 4, 0, b""]]),
        "AppendEntries.entries[1].index: expected 12 (consecutive after prev_log_index), got 13",
    ),
    (
        "entry not after prev_log_index",
        decode_message,
        append_entries([[10, 4, 0, b""]]),
        "AppendEntries.entries[0].index: expected 11",
    ),
    (
        "entry term above leader term",
        decode_message,
        append_entries([[11, 6, 0, b""]]),
        "AppendEntries.entries[0].term: 6 is outside [4, 5]",
    ),
    (
        "entry term decreasing",
        decode_message,
        append_entries([[11, 5, 0, b""], [12, 4, 0, b""]]),
        "AppendEntries.entries[1].term: 4 is outside [5, 5]",
    ),
    (
        "prev_log_term above leader term",
        decode_message,
        append_entries([], prev_term=6),
        "AppendEntries.prev_log_term: 6 exceeds the leader's term 5",
    ),
    (
        "unknown entry kind",
        decode_message,
        append_entries([[11, 4, 7, b""]]),
        "AppendEntries.entries[0].kind: unknown EntryKind 7",
    ),
    (
        "entry arity",
        decode_message,
        append_entries([[11, 4, 0]]),
        "AppendEntries.entries[0]: expected 4 fields (6 for a membership entry), got 3",
    ),
    (
        "membership entry without membership",
        decode_message,
        append_entries([[11, 4, 2, b""]]),
        "AppendEntries.entries[0]: a MEMBERSHIP entry needs 6 fields, got 4",
    ),
    (
        "command entry with membership",
        decode_entry,
        pack([V, RecordKind.ENTRY, [1, 1, 0, b"", ["a"], []]]),
        "entry: a COMMAND entry needs 4 fields, got 6",
    ),
    (
        "voter and learner at once",
        decode_message,
        append_entries([[11, 4, 2, b"", ["a", "b"], ["b"]]]),
        "AppendEntries.entries[0]: nodes are both voters and learners: ['b']",
    ),
    (
        "duplicate voter",
        decode_snapshot,
        pack([V, RecordKind.SNAPSHOT, [1, 1, ["a", "a"], [], b""]]),
        "snapshot.membership.voters: lists a node more than once",
    ),
    (
        "empty learner id",
        decode_snapshot,
        pack([V, RecordKind.SNAPSHOT, [1, 1, ["a"], [""], b""]]),
        "snapshot.membership.learners[0]: a node id must not be empty",
    ),
    (
        "snapshot inside InstallSnapshot",
        decode_message,
        message_record([7, 3, "a", "b", [1, 1, ["a"], [], b"", 0]]),
        "InstallSnapshot.snapshot: expected 5 fields, got 6",
    ),
    (
        "empty vote",
        decode_hard_state,
        pack([V, RecordKind.HARD_STATE, [1, "", 0]]),
        "hard_state.vote: a node id must not be empty",
    ),
    (
        "negative lamport",
        decode_envelope,
        pack([V, RecordKind.ENVELOPE, "c", -5, [8, 3, "a", "b"]]),
        "envelope.lamport: must not be negative, got -5",
    ),
    (
        "int cluster id",
        decode_envelope,
        pack([V, RecordKind.ENVELOPE, 7, 0, [8, 3, "a", "b"]]),
        "envelope.cluster_id: expected a str, got int 7",
    ),
    (
        "batch messages not an array",
        decode_messages_batch,
        pack([V, RecordKind.BATCH, "c", 0, None]),
        "batch.messages: expected an array, got nil",
    ),
    (
        "bad message in a batch",
        decode_messages_batch,
        pack([V, RecordKind.BATCH, "c", 0, [[8, 3, "a", "b"], [42]]]),
        "batch.messages[1].tag: unknown MessageTag 42",
    ),
    (
        "unknown operation",
        decode_command,
        pack([V, RecordKind.COMMAND, ["", [9, "k"]]]),
        "command.op.tag: unknown OperationTag 9",
    ),
    (
        "put arity",
        decode_command,
        pack([V, RecordKind.COMMAND, ["", [1, "k", b"v"]]]),
        "command.op (Put): expected 4 fields, got 3",
    ),
    (
        "delete arity",
        decode_command,
        pack([V, RecordKind.COMMAND, ["", [2, "k", None, None]]]),
        "command.op (Delete): expected 3 fields, got 4",
    ),
    (
        "bytes key",
        decode_command,
        pack([V, RecordKind.COMMAND, ["", [2, b"k", None]]]),
        "command.op.key: expected a str, got bytes",
    ),
    (
        "unknown condition",
        decode_command,
        pack([V, RecordKind.COMMAND, ["", [2, "k", [5, b"", 0]]]]),
        "command.op.condition.kind: unknown ConditionKind 5",
    ),
    (
        "negative condition revision",
        decode_command,
        pack([V, RecordKind.COMMAND, ["", [2, "k", [1, b"", -2]]]]),
        "command.op.condition.revision: must not be negative, got -2",
    ),
    (
        "nil request id",
        decode_command,
        pack([V, RecordKind.COMMAND, [None, [2, "k", None]]]),
        "command.request_id: expected a str, got nil",
    ),
    (
        "key value arity",
        decode_write_result,
        pack([V, RecordKind.WRITE_RESULT, [True, 1, ["k", b"v", 1, 1], None]]),
        "write_result.prev: expected 5 fields, got 4",
    ),
    (
        "int for succeeded",
        decode_write_result,
        pack([V, RecordKind.WRITE_RESULT, [0, 1, None, None]]),
        "write_result.succeeded: expected a bool, got int 0",
    ),
    (
        "nil key value in snapshot",
        decode_kv_snapshot,
        pack([V, RecordKind.KV_SNAPSHOT, [1, 1, [None], []]]),
        "kv_snapshot.key_values[0]: expected a key value, got nil",
    ),
    (
        "negative mod revision in snapshot",
        decode_kv_snapshot,
        pack([V, RecordKind.KV_SNAPSHOT, [1, 1, [["k", b"", 1, -1, 1]], []]]),
        "kv_snapshot.key_values[0].mod_revision: must not be negative, got -1",
    ),
    (
        "remembered pair arity",
        decode_kv_snapshot,
        pack([V, RecordKind.KV_SNAPSHOT, [1, 1, [], [["r"]]]]),
        f"kv_snapshot.remembered_requests[0]: expected 2 or 3 fields (format version {V}), got 1",
    ),
    (
        "remembered result wrong",
        decode_kv_snapshot,
        pack([V, RecordKind.KV_SNAPSHOT, [1, 1, [], [["r", [True, -1, None, None]]]]]),
        "kv_snapshot.remembered_requests[0].result.revision: must not be negative",
    ),
]


@pytest.mark.parametrize(
    ("decode", "data", "expected"),
    [pytest.param(decode, data, expected, id=name) for name, decode, data, expected in REJECTIONS],
)
def test_malformed_input_is_rejected_with_a_message_naming_the_problem(
    decode: Callable[[bytes], object], data: bytes, expected: str
) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(data)
    assert expected in str(caught.value)


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(DecodeError, ValueError)


def test_non_bytes_input_is_rejected() -> None:
    with pytest.raises(DecodeError, match="expected bytes to decode, got str"):
        decode_message("abc")  # type: ignore[arg-type]


def test_input_over_the_size_limit_is_rejected_before_unpacking() -> None:
    with pytest.raises(DecodeError, match="exceeds MAX_MESSAGE_BYTES"):
        decode_message(bytes(MAX_MESSAGE_BYTES + 1))
    with pytest.raises(DecodeError, match="exceeds MAX_MESSAGE_BYTES"):
        decode_entry(bytes(MAX_MESSAGE_BYTES + 1))


def test_string_over_the_length_limit_is_rejected() -> None:
    data = pack([V, RecordKind.COMMAND, ["", [2, "k" * (MAX_STR_BYTES + 1), None]]])
    with pytest.raises(DecodeError, match="max_str_len"):
        decode_command(data)


def test_deep_nesting_is_rejected() -> None:
    deep = b"\x91" * 100_000 + b"\x00"
    with pytest.raises(DecodeError, match="not valid msgpack"):
        decode_message(deep)
    shallow_but_deeper_than_the_layout = message_record([8, 3, "a", "b"]).replace(
        b"\x94\x08\x03", b"\x94\x08\x91\x91\x03"
    )
    with pytest.raises(DecodeError, match=r"TimeoutNow\.term: expected a non-negative int"):
        decode_message(shallow_but_deeper_than_the_layout)


def test_every_decoder_rejects_every_other_records_bytes() -> None:
    samples: dict[RecordKind, tuple[bytes, Callable[[bytes], object]]] = {
        RecordKind.ENVELOPE: (encode_envelope("c", 1, MESSAGES[0]), decode_envelope),
        RecordKind.BATCH: (encode_messages_batch("c", 1, MESSAGES), decode_messages_batch),
        RecordKind.MESSAGE: (encode_message(MESSAGES[0]), decode_message),
        RecordKind.ENTRY: (encode_entry(Entry(1, 1)), decode_entry),
        RecordKind.HARD_STATE: (encode_hard_state(HardState()), decode_hard_state),
        RecordKind.SNAPSHOT: (encode_snapshot(SNAPSHOT), decode_snapshot),
        RecordKind.COMMAND: (encode_command(COMMANDS[0]), decode_command),
        RecordKind.WRITE_RESULT: (encode_write_result(WRITE_RESULTS[0]), decode_write_result),
        RecordKind.KV_SNAPSHOT: (encode_kv_snapshot(KV_SNAPSHOTS[1]), decode_kv_snapshot),
        RecordKind.BATCH_COMMAND: (
            encode_batch_command(BatchCommand((Get("k"),))), decode_batch_command),
        RecordKind.FRAGMENT: (encode_fragment(1, 0, 2, 5, b"abc"), decode_fragment),
    }
    assert set(samples) == set(RecordKind)
    for kind, (_, decode) in samples.items():
        for other, (data, _) in samples.items():
            if other is kind:
                continue
            with pytest.raises(DecodeError, match=f"expected record kind {kind.name}"):
                decode(data)


def test_encoder_refuses_entries_that_do_not_follow_prev_log_index() -> None:
    gap = AppendEntries(5, "n1", "n2", 10, 4, (Entry(12, 5),), 0)
    with pytest.raises(AssertionError, match="consecutive entries"):
        encode_message(gap)


def test_a_snapshot_larger_than_any_message_still_decodes_from_storage() -> None:
    """Snapshots grow with the data: 300,000 keys of 256 bytes encode to about 80 MB, more
    than MAX_MESSAGE_BYTES. Refusing them made a node with that much data unable to restart
    (found by scripts/scale_bench.py); snapshot records have bounds of their own."""
    value = b"v" * 256
    state = KVSnapshotState(
        applied_index=300_000, revision=300_000,
        key_values=tuple(KeyValue(f"k{i:07d}", value, i + 1, i + 1, 1)
                         for i in range(300_000)),
        remembered_requests=())
    data = encode_kv_snapshot(state)
    assert len(data) > MAX_MESSAGE_BYTES
    record = encode_snapshot(Snapshot(SnapshotMeta(300_000, 2, MEMBERSHIP), data))
    decoded = decode_snapshot(record)
    assert decoded.meta.index == 300_000 and len(decoded.data) == len(data)
    restored = decode_kv_snapshot(decoded.data)
    assert len(restored.key_values) == 300_000
    assert restored.key_values[-1] == state.key_values[-1]
    with pytest.raises(DecodeError, match="MAX_MESSAGE_BYTES"):
        decode_message(record)


def test_a_kv_snapshot_reads_a_piece_at_a_time_as_it_was_written() -> None:
    """The reader hands out key values and remembered requests in pieces of at most
    KV_SNAPSHOT_PIECE_KEYS, in order; read whole, they are what was encoded."""
    keys = 2 * KV_SNAPSHOT_PIECE_KEYS + 5
    key_values = tuple(KeyValue(f"k{i:05d}", b"v", i + 1, i + 1, 1) for i in range(keys))
    remembered = tuple((f"r{i}", WriteResult(True, i + 1, None, key_values[i]))
                       for i in range(KV_SNAPSHOT_PIECE_KEYS + 1))
    state = KVSnapshotState(keys, keys, key_values, remembered)
    reader = KVSnapshotReader(memoryview(encode_kv_snapshot(state)))
    assert (reader.applied_index, reader.revision) == (keys, keys)
    with pytest.raises(RuntimeError, match="from the end of key_value_pieces"):
        next(reader.remembered_pieces())
    pieces = list(reader.key_value_pieces())
    assert [len(piece) for piece in pieces] == [KV_SNAPSHOT_PIECE_KEYS] * 2 + [5]
    assert tuple(kv for piece in pieces for kv in piece) == key_values
    requests = list(reader.remembered_pieces())
    assert [len(piece) for piece in requests] == [KV_SNAPSHOT_PIECE_KEYS, 1]
    assert tuple(request for piece in requests for request in piece) == remembered


@pytest.mark.parametrize(
    ("case", "data", "message"),
    [
        ("empty", b"", "the input ends inside the record"),
        ("cut short", encode_kv_snapshot(KV_SNAPSHOTS[1])[:-1],
         "the input ends inside the record"),
        ("a byte after it", encode_kv_snapshot(KV_SNAPSHOTS[1]) + b"\x00",
         "1 extra byte\\(s\\) after the record"),
        ("not an array", msgpack.packb(5), "kv_snapshot: expected an array"),
        ("body not an array", msgpack.packb([V, RecordKind.KV_SNAPSHOT, 5]),
         "kv_snapshot: expected an array"),
        ("body arity", msgpack.packb([V, RecordKind.KV_SNAPSHOT, [1, 1, []]]),
         "kv_snapshot: expected 4 fields, got 3"),
        ("key values not an array", msgpack.packb([V, RecordKind.KV_SNAPSHOT, [1, 1, 2, []]]),
         "kv_snapshot.key_values: expected an array"),
        ("a map inside", msgpack.packb([V, RecordKind.KV_SNAPSHOT, [1, 1, [{"k": 1}], []]]),
         "kv_snapshot: not valid msgpack"),
        ("reserved byte", b"\xc1", "kv_snapshot: expected an array"),
    ],
)
def test_a_kv_snapshot_read_in_pieces_names_what_is_wrong(
        case: str, data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_kv_snapshot(data)


# --- fragments of a batch too large for one stream frame ------------------------------------


def test_a_fragment_has_the_documented_bytes_and_round_trips() -> None:
    # [3, FRAGMENT=11, transfer_id=7, index=1, count=3, total_bytes=10, bin "abc"]
    data = encode_fragment(7, 1, 3, 10, memoryview(b"xabcx")[1:4])
    assert data == bytes([0x97, 0x03, 0x0B, 0x07, 0x01, 0x03, 0x0A, 0xC4, 0x03]) + b"abc"
    assert decode_fragment(data) == Fragment(7, 1, 3, 10, b"abc")


def test_fragment_overhead_covers_the_largest_header() -> None:
    chunk = bytes(70_000)  # bin 32: the longest length prefix
    data = encode_fragment(2**64 - 1, 2**32, 2**32 + 1, MAX_SNAPSHOT_BYTES, chunk)
    assert len(data) - len(chunk) <= FRAGMENT_OVERHEAD_BYTES
    assert decode_fragment(data).total_bytes == MAX_SNAPSHOT_BYTES


def test_a_stream_frame_is_a_batch_or_a_fragment() -> None:
    batch_bytes = encode_messages_batch("c", 7, MESSAGES)
    assert decode_stream_frame(batch_bytes) == decode_messages_batch(batch_bytes)
    assert decode_stream_frame(encode_fragment(2, 0, 4, 9, b"ab")) == Fragment(2, 0, 4, 9, b"ab")
    for other in (encode_message(MESSAGES[0]), encode_envelope("c", 1, MESSAGES[0])):
        with pytest.raises(DecodeError, match="expected record kind BATCH"):
            decode_stream_frame(other)
    with pytest.raises(DecodeError, match="frame: not valid msgpack"):
        decode_stream_frame(b"\xc1")


def test_split_fragments_reassemble_to_the_batch() -> None:
    body = encode_messages_batch("c", 3, MESSAGES)
    chunk_bytes = 100
    count = -(-len(body) // chunk_bytes)
    frames = [encode_fragment(5, i, count, len(body), body[i * chunk_bytes:(i + 1) * chunk_bytes])
              for i in range(count)]
    assert count > 3 and all(len(f) <= chunk_bytes + FRAGMENT_OVERHEAD_BYTES for f in frames)
    fragments = [decode_stream_frame(frame) for frame in frames]
    rebuilt = b"".join(f.chunk for f in fragments if isinstance(f, Fragment))
    assert decode_reassembled_batch(rebuilt) == EnvelopeBatch(BASE_FORMAT_VERSION, "c", 3,
                                                              tuple(MESSAGES))


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65_535, 65_536, 300_000])
def test_a_snapshot_batch_in_two_parts_is_the_batch_without_copying_the_image(
        size: int) -> None:
    image = bytes(range(256)) * (size // 256) + bytes(size % 256)
    message = InstallSnapshot(5, "n1", "n4", Snapshot(SnapshotMeta(40, 3, MEMBERSHIP), image))
    head, tail = encode_snapshot_batch("c", 9, message)
    assert tail is image
    assert head + tail == encode_messages_batch("c", 9, [message])


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65_535, 65_536, 300_000])
def test_a_reassembled_snapshot_batch_splits_into_its_head_and_a_view_of_its_image(
        size: int) -> None:
    image = bytes(range(256)) * (size // 256) + bytes(size % 256)
    message = InstallSnapshot(5, "n1", "n4", Snapshot(SnapshotMeta(40, 3, MEMBERSHIP), image))
    body = bytearray(b"".join(encode_snapshot_batch("c", 9, message)))
    split = split_snapshot_batch(body)
    assert split is not None
    batch, view = split
    assert view.obj is body and bytes(view) == image  # a view into the reassembled bytes
    stub = InstallSnapshot(5, "n1", "n4", Snapshot(SnapshotMeta(40, 3, MEMBERSHIP), b""))
    assert batch == EnvelopeBatch(BASE_FORMAT_VERSION, "c", 9, (stub,))


def test_only_a_batch_of_one_install_snapshot_with_its_image_last_splits() -> None:
    install = InstallSnapshot(5, "n1", "n4", SNAPSHOT)
    one = encode_messages_batch("c", 9, [install])
    for other in (
        encode_messages_batch("c", 9, [install, install]),  # two messages
        encode_messages_batch("c", 9, MESSAGES[:1]),  # another message
        one[:-1],  # cut short: the image's length no longer ends the record
        one + b"\x00",  # a byte after it
        b"\xc1",  # not msgpack
        b"",
    ):
        assert split_snapshot_batch(other) is None
    bad_head = pack([V, RecordKind.BATCH, "c", 9, [[7, -5, "n1", "n4", [40, 3, [], [], b"x"]]]])
    with pytest.raises(DecodeError, match="term: must not be negative"):
        split_snapshot_batch(bad_head)  # laid out as a snapshot: the head is checked


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65_535, 65_536, 300_000])
def test_a_snapshot_record_in_two_parts_is_the_record_without_copying_the_image(
        size: int) -> None:
    image = bytes(range(256)) * (size // 256) + bytes(size % 256)
    snapshot = Snapshot(SnapshotMeta(40, 3, MEMBERSHIP), image)
    head, tail = encode_snapshot_parts(snapshot)
    assert tail is image
    assert head + tail == encode_snapshot(snapshot)
    assert decode_snapshot(head + tail) == snapshot
    assert snapshot_image_span(head) == (len(head), len(image))
    assert snapshot_image_span((head + tail)[:len(head) + 1]) == (len(head), len(image))
    restored = decode_snapshot_parts(head, tail)
    assert restored == snapshot and restored.data is image  # kept, not copied
    with pytest.raises(DecodeError, match="the image's bin header"):
        decode_snapshot_parts(head, image + b"x")
    with pytest.raises(DecodeError, match="the image's bin header"):
        decode_snapshot_parts(head + b"x", image)
    assert snapshot_image_span(encode_messages_batch("c", 9, MESSAGES[:1])) is None


FRAGMENT_REJECTIONS: list[tuple[str, bytes, str]] = [
    ("version 2", pack([2, 11, 1, 0, 2, 5, b"abc"]), "FRAGMENT needs format version 3, got 2"),
    ("newer version", pack([V + 1, 11, 1, 0, 2, 5, b"abc"]), "newer than this build reads"),
    ("missing chunk", pack([V, 11, 1, 0, 2, 5]), "expected 7 fields, got 6"),
    ("negative id", pack([V, 11, -1, 0, 2, 5, b"abc"]), "fragment.transfer_id: must not be"),
    ("bool index", pack([V, 11, 1, False, 2, 5, b"abc"]), "fragment.index: expected a non-neg"),
    ("str chunk", pack([V, 11, 1, 0, 2, 5, "abc"]), "fragment.chunk: expected bytes, got str"),
    ("empty batch", pack([V, 11, 1, 0, 1, 0, b"a"]), "fragment.total_bytes: must be in [1,"),
    ("over the snapshot bound", pack([V, 11, 1, 0, 2, MAX_SNAPSHOT_BYTES + 1, b"abc"]),
     "fragment.total_bytes: must be in [1, MAX_SNAPSHOT_BYTES"),
    ("no pieces", pack([V, 11, 1, 0, 0, 5, b"abc"]), "fragment.count: must be in [1, total"),
    ("more pieces than bytes", pack([V, 11, 1, 0, 6, 5, b"a"]), "fragment.count: must be in"),
    ("index past count", pack([V, 11, 1, 2, 2, 5, b"abc"]), "fragment.index: must be below count"),
    ("empty chunk", pack([V, 11, 1, 0, 2, 5, b""]), "fragment.chunk: must hold 1 to total"),
    ("chunk over total", pack([V, 11, 1, 0, 2, 2, b"abc"]), "fragment.chunk: must hold 1 to"),
]


@pytest.mark.parametrize(("data", "expected"), [case[1:] for case in FRAGMENT_REJECTIONS],
                         ids=[case[0] for case in FRAGMENT_REJECTIONS])
def test_malformed_fragments_are_rejected_by_both_decoders(data: bytes, expected: str) -> None:
    for decode in (decode_fragment, decode_stream_frame):
        with pytest.raises(DecodeError) as caught:
            decode(data)
        assert expected in str(caught.value)


def test_only_install_snapshots_may_reassemble_past_the_message_bound() -> None:
    """A snapshot of 1,000,000 keys is about 277 MB: more than any frame or message may be,
    so it travels in fragments; the reassembled batch has the snapshot bound of storage,
    but only snapshots get it."""
    image = bytes(MAX_MESSAGE_BYTES)
    snapshot = Snapshot(SnapshotMeta(90, 4, MEMBERSHIP), image)
    install = InstallSnapshot(5, "n1", "n4", snapshot)
    body = encode_messages_batch("c", 9, [install, InstallSnapshot(5, "n1", "n4", SNAPSHOT)])
    assert len(body) > MAX_MESSAGE_BYTES
    with pytest.raises(DecodeError, match="exceeds MAX_MESSAGE_BYTES"):
        decode_messages_batch(body)
    batch = decode_reassembled_batch(bytearray(body))
    assert batch.messages == (install, InstallSnapshot(5, "n1", "n4", SNAPSHOT))
    entry = Entry(1, 1, EntryKind.COMMAND, image)
    append = AppendEntries(5, "n1", "n2", 0, 0, (entry,), 0)
    too_big = encode_messages_batch("c", 9, [install, append])
    with pytest.raises(DecodeError, match=r"batch\.messages\[1\]: only InstallSnapshot"):
        decode_reassembled_batch(too_big)
    small_bad = pack([V, RecordKind.BATCH, "c", 0, [[8, 3, "a", "b"], [42]]])
    with pytest.raises(DecodeError, match="unknown MessageTag 42"):
        decode_reassembled_batch(small_bad)  # under the bound: the batch decoder, unchanged
