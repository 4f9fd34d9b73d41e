"""The SWIM wire codec: every message survives a round trip, tags never move, and anything
but a valid encoding raises DecodeError naming the field."""

from __future__ import annotations

import msgpack
import pytest

from concord.detector.messages import (
    Ack,
    Gossip,
    MemberState,
    MemberUpdate,
    Nack,
    Ping,
    PingReq,
    PushPull,
    SwimMessage,
)
from concord.wire import DecodeError
from concord.wire.swim_codec import (
    SWIM_FORMAT_VERSION,
    SwimTag,
    decode_swim_batch,
    encode_swim_batch,
)

UPDATES = (
    MemberUpdate("n2", MemberState.ALIVE, 3, "n2", "http://127.0.0.1:7102"),
    MemberUpdate("n3", MemberState.SUSPECT, 1, "n1"),
    MemberUpdate("n4", MemberState.DEAD, 0, "n2"),
    MemberUpdate("n5", MemberState.LEFT, 7, "n5"),
)
WALL_NS = 1_764_000_000_000_000_000

MESSAGES: tuple[SwimMessage, ...] = (
    Ping("n1", "n2", 1, WALL_NS, UPDATES),
    Ping("n1", "n2", 2, WALL_NS),
    Ack("n2", "n1", 1, "n2", WALL_NS, WALL_NS + 5, WALL_NS + 9, UPDATES[:1]),
    Ack("n3", "n1", 4, "n2"),  # relayed: no clock readings
    PingReq("n1", "n3", 5, "n2", True, UPDATES),
    PingReq("n1", "n3", 6, "n2", False),
    Nack("n3", "n1", 5, "n2", UPDATES[1:]),
    Gossip("n1", "n4", UPDATES),
    PushPull("n1", "n2", UPDATES, join=True),
    PushPull("n2", "n1", UPDATES, reply=True),
)


def test_every_message_round_trips() -> None:
    batch = decode_swim_batch(encode_swim_batch("c1", MESSAGES))
    assert batch.cluster_id == "c1"
    assert batch.messages == MESSAGES
    assert [type(m) for m in batch.messages] == [type(m) for m in MESSAGES]


def test_tags_are_append_only() -> None:
    assert {t.name: t.value for t in SwimTag} == {
        "PING": 1, "ACK": 2, "PING_REQ": 3, "NACK": 4, "GOSSIP": 5, "PUSH_PULL": 6}
    assert {s.name: s.value for s in MemberState} == {
        "ALIVE": 0, "SUSPECT": 1, "DEAD": 2, "LEFT": 3}


def test_the_layout_is_the_documented_one() -> None:
    raw = msgpack.unpackb(encode_swim_batch("c1", [Gossip("n1", "n2", UPDATES[1:2])]))
    assert raw == [SWIM_FORMAT_VERSION, "c1", [[5, "n1", "n2", [["n3", 1, 1, "n1", ""]]]]]


def _batch(*messages: object, version: object = SWIM_FORMAT_VERSION) -> bytes:
    packed: bytes = msgpack.packb([version, "c1", list(messages)])
    return packed


PING = [1, "n1", "n2", 1, 5, []]


@pytest.mark.parametrize(("data", "where"), [
    (b"\xc1", "not valid msgpack"),
    (msgpack.packb({"a": 1}), "not valid msgpack"),
    (msgpack.packb([1, "c1"]), "expected 3 fields"),
    (_batch(PING, version=2), "unsupported format version 2"),
    (_batch(PING, version=0), "unsupported format version 0"),
    (_batch([99, "n1", "n2"]), "unknown SwimTag 99"),
    (_batch([]), "an empty message"),
    (_batch(PING[:-1]), "expected 6 fields"),
    (_batch([1, "n1", "n2", -1, 5, []]), "seq: must not be negative"),
    (_batch([1, "", "n2", 1, 5, []]), "sender: a node id must not be empty"),
    (_batch([1, "n1", "n1", 1, 5, []]), "sender and recipient are the same node"),
    (_batch([1, "n1", "n2", 1, 5, [["n3", 9, 0, "n1", ""]]]), "unknown MemberState 9"),
    (_batch([1, "n1", "n2", 1, 5, [["n3", 0, -2, "n1", ""]]]), "incarnation: must not be"),
    (_batch([1, "n1", "n2", 1, 5, [["n3", 0, 0, "n1"]]]), "expected 5 fields"),
    (_batch([3, "n1", "n3", 1, "n2", 1, []]), "want_nack: expected a bool"),
    (_batch([6, "n1", "n2", [], True, "no"]), "reply: expected a bool"),
    (_batch([1, "n1", "n2", 1.5, 5, []]), "seq: expected a non-negative int"),
])
def test_decoding_refuses_anything_else(data: bytes, where: str) -> None:
    with pytest.raises(DecodeError, match=where):
        decode_swim_batch(data)
