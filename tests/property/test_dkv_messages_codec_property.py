"""Property tests of the quorum store's peer-message codec (``concord.wire.dkv_messages_codec``).

Every batch of messages of every kind (None and tombstone variants, hints, unicode names,
extreme ints) round-trips exactly. Any input at all (random bytes, byte flips of valid
batches, one field of a valid message replaced by a value of any type) either decodes to
messages that round-trip or raises ``DecodeError``: nothing else ever escapes.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

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
from concord.dkv.versions import Dot, Sibling, VersionedObject, VersionVector
from concord.wire import DecodeError
from concord.wire.dkv_messages_codec import DIGEST_BYTES, decode_dkv_batch, encode_dkv_batch

NODES = st.sampled_from(["n1", "n2", "n3", "nœud", "ノード"])
NAMES = st.text(min_size=1, max_size=12).filter(lambda s: "\x00" not in s)
UINTS = st.integers(min_value=0, max_value=2**64 - 1)
COUNTERS = st.integers(min_value=1, max_value=2**63 - 1)
DIGESTS = st.binary(min_size=DIGEST_BYTES, max_size=DIGEST_BYTES)
VECTORS = st.dictionaries(NODES, COUNTERS, max_size=4).map(VersionVector.from_mapping)
POSITIONS = st.lists(st.integers(min_value=0, max_value=4095), max_size=8).map(tuple)


@st.composite
def objects(draw: st.DrawFn) -> VersionedObject:
    siblings = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        dot = Dot(draw(NODES), draw(COUNTERS))
        siblings.append(Sibling(dot, draw(VECTORS).without([dot.node]),
                                draw(st.none() | st.binary(max_size=64)), draw(UINTS)))
    return VersionedObject.of(siblings)


@st.composite
def aae_levels(draw: st.DrawFn) -> AaeLevel:
    positions = draw(POSITIONS)
    hashes = tuple(draw(DIGESTS) for _ in positions)
    return AaeLevel(draw(UINTS), draw(st.integers(0, MAX_PARTITION_COUNT - 1)), draw(UINTS),
                    draw(UINTS), positions, hashes)


PARTITIONS = st.integers(min_value=0, max_value=MAX_PARTITION_COUNT - 1)
OPTIONAL_OBJECTS = st.none() | objects()

MESSAGES: st.SearchStrategy[DkvMessage] = st.one_of(
    st.builds(ReplicaPut, UINTS, NAMES, NAMES, objects(), st.none() | NODES),
    st.builds(PutAck, UINTS, st.booleans(), st.text(max_size=20)),
    st.builds(ReplicaGet, UINTS, NAMES, NAMES),
    st.builds(GetReply, UINTS, OPTIONAL_OBJECTS),
    st.builds(ForwardPut, UINTS, NAMES, NAMES, st.none() | st.binary(max_size=64),
              VECTORS.map(lambda vv: vv.entries), UINTS),
    st.builds(ForwardReply, UINTS, st.booleans(), OPTIONAL_OBJECTS,
              st.lists(NODES, max_size=3).map(tuple), UINTS, UINTS, UINTS, st.text(max_size=20)),
    st.builds(HintDelivery, UINTS, NAMES, NAMES, objects()),
    st.builds(HandoffPush, UINTS, NAMES, NAMES, objects()),
    aae_levels(),
    st.builds(AaeLevelReply, UINTS, POSITIONS),
    st.builds(AaeKeys, UINTS, PARTITIONS, UINTS, POSITIONS,
              st.lists(st.tuples(NAMES, NAMES, DIGESTS), max_size=4).map(tuple)),
    st.builds(AaeKeysReply, UINTS, st.lists(st.tuples(NAMES, NAMES), max_size=4).map(tuple)),
    st.builds(TombstoneCheck, UINTS, NAMES, NAMES, DIGESTS),
    st.builds(TombstoneCheckReply, UINTS, st.booleans()),
    st.builds(TombstoneCollect, NAMES, NAMES, DIGESTS),
)
BATCHES = st.lists(MESSAGES, max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=10), BATCHES)
def test_batches_round_trip(cluster_id: str, messages: list[DkvMessage]) -> None:
    assert decode_dkv_batch(encode_dkv_batch(cluster_id, messages)) == (cluster_id, messages)


def _decodes_consistently_or_refuses(data: bytes) -> None:
    try:
        cluster_id, messages = decode_dkv_batch(data)
    except DecodeError:
        return
    assert decode_dkv_batch(encode_dkv_batch(cluster_id, messages)) == (cluster_id, messages)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    _decodes_consistently_or_refuses(data)


@settings(max_examples=300, deadline=None)
@given(BATCHES.filter(bool), st.data())
def test_flipped_bytes_decode_or_raise_decode_error(messages: list[DkvMessage],
                                                    data: st.DataObject) -> None:
    body = bytearray(encode_dkv_batch("c1", messages))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    _decodes_consistently_or_refuses(bytes(body))


ANY_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=8) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4), max_leaves=8)


@settings(max_examples=400, deadline=None)
@given(MESSAGES, st.data())
def test_a_replaced_field_decodes_or_raises_decode_error(message: DkvMessage,
                                                         data: st.DataObject) -> None:
    raw: Any = msgpack.unpackb(encode_dkv_batch("c1", [message]))
    fields = raw[2][0]
    fields[data.draw(st.integers(0, len(fields) - 1))] = data.draw(ANY_VALUE)
    _decodes_consistently_or_refuses(msgpack.packb(raw, use_bin_type=True))
