"""The quorum store's peer-message codec: every message kind survives a round trip, tags never
move, the layout is the documented one, and anything but a valid encoding raises DecodeError
naming the field (never an AssertionError, TypeError or KeyError)."""

from __future__ import annotations

import msgpack
import pytest

from concord.dkv.config import MAX_PARTITION_COUNT
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
from concord.dkv.versions import MAX_VALUE_BYTES, Dot, Sibling, VersionedObject, VersionVector
from concord.wire import DecodeError
from concord.wire.dkv_codec import encode_object
from concord.wire.dkv_messages_codec import (
    DIGEST_BYTES,
    DKV_FORMAT_VERSION,
    MAX_DKV_ARRAY_LEN,
    MAX_DKV_BATCH_BYTES,
    DkvTag,
    decode_dkv_batch,
    encode_dkv_batch,
)

T0_NS = 1_764_000_000_000_000_000
CTX = VersionVector((("n1", 5), ("n2", 3)))
VALUE = VersionedObject((Sibling(Dot("n1", 6), CTX, b"v" * 256, T0_NS),))
TOMBSTONE = VersionedObject((Sibling(Dot("n3", 2), CTX, None, T0_NS + 1),))
SIBLINGS = VersionedObject.of([Sibling(Dot("n1", 6), CTX, b"a", T0_NS),
                               Sibling(Dot("n2", 4), CTX, None, T0_NS + 2)])
DIGEST = SIBLINGS.digest()
HASH = b"\x5a" * 16
RID = 2**48 + 17  # request ids start at a random 48-bit value

MESSAGES: tuple[DkvMessage, ...] = (
    ReplicaPut(RID, "b", "k", VALUE),
    ReplicaPut(RID + 1, "b", "ключ", TOMBSTONE, hint_for="n4"),
    ReplicaPut(0, "b", "k", SIBLINGS),
    PutAck(RID, True),
    PutAck(RID, False, "hint store full"),
    ReplicaGet(RID, "b", "k"),
    GetReply(RID, SIBLINGS),
    GetReply(RID, None),
    ForwardPut(RID, "b", "k", b"new", CTX.entries, 2),
    ForwardPut(RID, "b", "k", None, (), 1),  # a delete with nothing read
    ForwardPut(RID, "b", "k", b"", (("n9", 2**63 - 1),), 3),
    ForwardReply(RID, True, VALUE, ("n1", "n2"), 2, 2, 3, ""),
    ForwardReply(RID, False, None, (), 2, 0, 0, "forwarded put refused: w > n"),
    ForwardReply(RID, False, None, (), 2, 0, 3, "put b/k refused: 101 siblings", refused=True),
    HintDelivery(RID, "b", "k", TOMBSTONE),
    HandoffPush(RID, "b", "k", SIBLINGS),
    AaeLevel(RID, 0, 3, 0, (0,), (HASH,)),
    AaeLevel(RID, MAX_PARTITION_COUNT - 1, 3, 2, (16, 17, 255), (HASH, b"\x00" * 16, HASH)),
    AaeLevel(RID, 1, 3, 1, (), ()),
    AaeLevelReply(RID, (3, 7)),
    AaeLevelReply(RID, ()),
    AaeKeys(RID, 5, 3, (1, 2), (("a", "k1", DIGEST), ("b", "k2", DIGEST))),
    AaeKeys(RID, 5, 3, (), ()),
    AaeKeysReply(RID, (("a", "k1"), ("b", "k2"))),
    AaeKeysReply(RID, ()),
    TombstoneCheck(RID, "b", "k", DIGEST),
    TombstoneCheckReply(RID, True),
    TombstoneCheckReply(RID, False),
    TombstoneCollect("b", "k", DIGEST),
)


def test_every_message_round_trips() -> None:
    cluster_id, messages = decode_dkv_batch(encode_dkv_batch("c1", MESSAGES))
    assert cluster_id == "c1"
    assert messages == list(MESSAGES)
    assert [type(m) for m in messages] == [type(m) for m in MESSAGES]
    assert {type(m) for m in MESSAGES} == {
        ReplicaPut, PutAck, ReplicaGet, GetReply, ForwardPut, ForwardReply, HintDelivery,
        HandoffPush, AaeLevel, AaeLevelReply, AaeKeys, AaeKeysReply, TombstoneCheck,
        TombstoneCheckReply, TombstoneCollect}


def test_an_empty_batch_round_trips() -> None:
    assert decode_dkv_batch(encode_dkv_batch("", [])) == ("", [])


def test_a_largest_value_round_trips() -> None:
    obj = VersionedObject((Sibling(Dot("n1", 9), CTX, b"\xab" * MAX_VALUE_BYTES, T0_NS),))
    messages: list[DkvMessage] = [ReplicaPut(RID, "b", "k", obj),
                                  ForwardPut(RID, "b", "k", b"x" * MAX_VALUE_BYTES, (), 2)]
    assert decode_dkv_batch(encode_dkv_batch("c1", messages)) == ("c1", messages)


def test_tags_are_append_only() -> None:
    assert {t.name: t.value for t in DkvTag} == {
        "REPLICA_PUT": 1, "PUT_ACK": 2, "REPLICA_GET": 3, "GET_REPLY": 4, "FORWARD_PUT": 5,
        "FORWARD_REPLY": 6, "HINT_DELIVERY": 7, "HANDOFF_PUSH": 8, "AAE_LEVEL": 9,
        "AAE_LEVEL_REPLY": 10, "AAE_KEYS": 11, "AAE_KEYS_REPLY": 12, "TOMBSTONE_CHECK": 13,
        "TOMBSTONE_CHECK_REPLY": 14, "TOMBSTONE_COLLECT": 15}


def test_digest_size_matches_the_objects() -> None:
    assert len(VALUE.digest()) == DIGEST_BYTES


def test_the_layout_is_the_documented_one() -> None:
    messages: list[DkvMessage] = [ReplicaPut(7, "b", "k", VALUE, "n4"), GetReply(8, None),
                                  ForwardPut(9, "b", "k", None, CTX.entries, 2),
                                  AaeKeys(10, 1, 3, (4,), (("b", "k", DIGEST),)),
                                  AaeKeysReply(11, (("b", "k"),))]
    raw = msgpack.unpackb(encode_dkv_batch("c1", messages))
    assert raw == [DKV_FORMAT_VERSION, "c1", [
        [1, 7, "b", "k", encode_object(VALUE), "n4"],  # the object's own bytes, as bin
        [4, 8, None],
        [5, 9, "b", "k", None, ["n1", 5, "n2", 3], 2],  # the flat context of dkv_codec
        [11, 10, 1, 3, [4], [["b", "k", DIGEST]]],
        [12, 11, [["b", "k"]]],
    ]]


def test_encoding_refuses_a_batch_too_large_to_decode() -> None:
    big = VersionedObject((Sibling(Dot("n1", 9), CTX, b"\xab" * MAX_VALUE_BYTES, T0_NS),))
    count = MAX_DKV_BATCH_BYTES // MAX_VALUE_BYTES + 1
    with pytest.raises(ValueError, match="more than MAX_DKV_BATCH_BYTES"):
        encode_dkv_batch("c1", [HintDelivery(i, "b", "k", big) for i in range(count)])


def _batch(*messages: object, version: object = DKV_FORMAT_VERSION,
           cluster_id: object = "c1") -> bytes:
    packed: bytes = msgpack.packb([version, cluster_id, list(messages)], use_bin_type=True)
    return packed


OBJ = encode_object(VALUE)
BAD_OBJ = msgpack.packb([1, [["n1", 0, 5, b"v", []]]], use_bin_type=True)  # dot counter 0
PUT = [1, 5, "b", "k", OBJ, None]
GOOD = _batch(PUT, [2, 5, True, ""])


REFUSED: list[tuple[bytes, str]] = [
    # the batch
    (b"", r"dkv_batch: not valid msgpack"),
    (b"\xc1", r"dkv_batch: not valid msgpack"),
    (GOOD[:-3], r"dkv_batch: not valid msgpack"),  # truncated
    (GOOD + b"\x00", r"dkv_batch: not valid msgpack"),  # trailing bytes
    (msgpack.packb({"a": 1}), r"dkv_batch: not valid msgpack"),
    (msgpack.packb([1, "c1"]), r"dkv_batch: expected 3 fields, got 2"),
    (msgpack.packb("batch"), r"dkv_batch: expected an array"),
    (_batch(PUT, version=2), r"dkv_batch.version: format version 2 is newer than this build"),
    (_batch(PUT, version=0), r"dkv_batch.version: unknown format version 0"),
    (_batch(PUT, version="1"), r"dkv_batch.version: expected an int"),
    (_batch(PUT, cluster_id=1), r"dkv_batch.cluster_id: expected a str"),
    (msgpack.packb([1, "c1", PUT]), r"messages\[0\]: expected an array, got int"),
    # a message's shape
    (_batch([]), r"messages\[0\]: an empty message"),
    (_batch([99, 1]), r"messages\[0\].tag: unknown DkvTag 99"),
    (_batch([True, 1]), r"messages\[0\].tag: expected an int DkvTag"),
    (_batch(PUT[:-1]), r"messages\[0\] \(REPLICA_PUT\): expected 6 fields, got 5"),
    (_batch([*PUT, None]), r"messages\[0\] \(REPLICA_PUT\): expected 6 fields, got 7"),
    (_batch([2, 5, True, "", "extra"]), r"\(PUT_ACK\): expected 4 fields"),
    (_batch(PUT, [15, "b", "k"]), r"messages\[1\] \(TOMBSTONE_COLLECT\): expected 4 fields"),
    # field types and bounds
    (_batch([1, -1, "b", "k", OBJ, None]), r"messages\[0\].request_id: must not be negative"),
    (_batch([1, 1.0, "b", "k", OBJ, None]), r"request_id: expected a non-negative int"),
    (_batch([1, 5, "", "k", OBJ, None]), r"messages\[0\].bucket: bucket must be a non-empty"),
    (_batch([1, 5, "a\x00b", "k", OBJ, None]), r"\.bucket: .* must not contain a NUL"),
    (_batch([1, 5, b"b", "k", OBJ, None]), r"\.bucket: bucket must be a non-empty string"),
    (_batch([1, 5, "b", "", OBJ, None]), r"messages\[0\].key: a key must not be empty"),
    (_batch([1, 5, "b", 7, OBJ, None]), r"messages\[0\].key: expected a str"),
    (_batch([1, 5, "b", "k", OBJ, ""]), r"\.hint_for: a node id must not be empty"),
    (_batch([2, 5, 1, ""]), r"messages\[0\].ok: expected a bool"),
    (_batch([2, 5, True, None]), r"messages\[0\].error: expected a str"),
    (_batch([14, 5, "yes"]), r"messages\[0\].agree: expected a bool"),
    # the embedded object
    (_batch([1, 5, "b", "k", None, None]), r"\.obj: expected an encoded object \(bin\), got nil"),
    (_batch([1, 5, "b", "k", [1, []], None]), r"\.obj: expected an encoded object \(bin\)"),
    (_batch([1, 5, "b", "k", BAD_OBJ, None]),
     r"messages\[0\].obj: versioned_object.siblings\[0\].dot.counter: counters start at 1"),
    (_batch([1, 5, "b", "k", OBJ[:-1], None]), r"\.obj: versioned_object: not valid msgpack"),
    (_batch([4, 5, msgpack.packb([1, []])]), r"\.obj: .*an object has at least one sibling"),
    (_batch([4, 5, msgpack.packb([2, []])]), r"\.obj: .*format version 2 is newer"),
    (_batch([6, 5, True, BAD_OBJ, [], 2, 2, 3, "", False]), r"messages\[0\].obj: versioned_object"),
    (_batch([7, 5, "b", "k", b"junk"]), r"messages\[0\].obj: versioned_object"),
    (_batch([8, 5, "b", "k", 3]), r"messages\[0\].obj: expected an encoded object"),
    # ForwardPut and ForwardReply
    (_batch([5, 5, "b", "k", "v", [], 2]), r"messages\[0\].value: expected bytes"),
    (_batch([5, 5, "b", "k", b"v" * (MAX_VALUE_BYTES + 1), [], 2]),
     r"messages\[0\].value: 1048577 bytes exceeds MAX_VALUE_BYTES"),
    (_batch([5, 5, "b", "k", b"v", ["n1"], 2]), r"\.context: expected \[node, counter, \.\.\.\]"),
    (_batch([5, 5, "b", "k", b"v", ["n1", 0], 2]), r"\.context\[0\]\.counter: counters start"),
    (_batch([5, 5, "b", "k", b"v", ["n2", 1, "n1", 1], 2]), r"\.context\[1\]\.node: .*sorted"),
    (_batch([5, 5, "b", "k", b"v", ["", 1], 2]), r"\.context\[0\]\.node: a node id must not"),
    (_batch([5, 5, "b", "k", b"v", [["n1", 1]], 2]), r"\.context: expected \[node, counter"),
    (_batch([5, 5, "b", "k", b"v", [], -2]), r"messages\[0\].w: must not be negative"),
    (_batch([6, 5, True, None, ["n1", ""], 2, 2, 3, "", False]),
     r"messages\[0\].replicas\[1\]: a node id must not be empty"),
    (_batch([6, 5, True, None, "n1", 2, 2, 3, "", False]),
     r"messages\[0\].replicas: expected an array"),
    (_batch([6, 5, True, None, [], 2, -1, 3, "", False]), r"messages\[0\].answered: must not be"),
    (_batch([6, 5, False, None, [], 2, 0, 3, "", 1]), r"messages\[0\].refused: expected a bool"),
    # anti-entropy and tombstones
    (_batch([9, 5, MAX_PARTITION_COUNT, 3, 0, [0], [HASH]]),
     r"messages\[0\].partition: 65536 is not below MAX_PARTITION_COUNT"),
    (_batch([9, 5, 0, 3, 0, [0, 1], [HASH]]), r"\.hashes: one hash per position: 2 positions"),
    (_batch([9, 5, 0, 3, 0, [0], [HASH[:15]]]), r"\.hashes\[0\]: expected 16 bytes, got 15"),
    (_batch([9, 5, 0, 3, 0, [-1], [HASH]]), r"\.positions\[0\]: must not be negative"),
    (_batch([9, 5, 0, -3, 0, [0], [HASH]]), r"messages\[0\].n: must not be negative"),
    (_batch([10, 5, [1, "2"]]), r"\.differing\[1\]: expected a non-negative int"),
    (_batch([11, 5, 1, 3, [], [["b", "k"]]]), r"\.keys\[0\]: expected 3 fields, got 2"),
    (_batch([11, 5, 1, 3, [], [["b", "k", DIGEST + b"!"]]]),
     r"\.keys\[0\]\.digest: expected 16 bytes, got 17"),
    (_batch([11, 5, 1, 3, [], [["", "k", DIGEST]]]), r"\.keys\[0\]\.bucket: bucket must be"),
    (_batch([11, 5, 1, 3, [-4], []]), r"\.segments\[0\]: must not be negative"),
    (_batch([12, 5, [["b", ""]]]), r"\.wanted\[0\]\.key: a key must not be empty"),
    (_batch([12, 5, [["b"]]]), r"\.wanted\[0\]: expected 2 fields, got 1"),
    (_batch([13, 5, "b", "k", "digest"]), r"messages\[0\].digest: expected bytes"),
    (_batch([15, "b", "k", b""]), r"messages\[0\].digest: expected 16 bytes, got 0"),
    # bounds of the unpacker
    (_batch([10, 5, [0] * (MAX_DKV_ARRAY_LEN + 1)]), r"dkv_batch: not valid msgpack"),
    (_batch(*([14, 5, True] for _ in range(MAX_DKV_ARRAY_LEN + 1))),
     r"dkv_batch: not valid msgpack"),
    (_batch([2, 5, True, "e" * (2**20 + 1)]), r"dkv_batch: not valid msgpack"),
    (msgpack.packb([1, "c1", [], msgpack.ExtType(1, b"x")]), r"dkv_batch: not valid msgpack"),
]


@pytest.mark.parametrize(("data", "where"), REFUSED, ids=[f"{i}:{w}" for i, (_, w) in
                                                          enumerate(REFUSED)])
def test_decoding_refuses_anything_else(data: bytes, where: str) -> None:
    with pytest.raises(DecodeError, match=where):
        decode_dkv_batch(data)


def test_decoding_refuses_oversized_input_before_unpacking() -> None:
    with pytest.raises(DecodeError, match="exceeds MAX_DKV_BATCH_BYTES"):
        decode_dkv_batch(bytes(MAX_DKV_BATCH_BYTES + 1))


def test_decoding_refuses_what_is_not_bytes() -> None:
    with pytest.raises(DecodeError, match="expected bytes to decode, got str"):
        decode_dkv_batch("[1, 'c1', []]")  # type: ignore[arg-type]


def test_decoding_reads_any_bytes_like() -> None:
    expected = decode_dkv_batch(GOOD)
    assert decode_dkv_batch(bytearray(GOOD)) == expected
    assert decode_dkv_batch(memoryview(GOOD)) == expected


def test_every_truncation_is_refused() -> None:
    body = encode_dkv_batch("c1", MESSAGES)
    for cut in range(len(body)):
        with pytest.raises(DecodeError):
            decode_dkv_batch(body[:cut])
