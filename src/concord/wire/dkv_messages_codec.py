"""Strict msgpack encodings of the quorum store's peer messages (``concord.dkv.messages``).

A batch is ``[format_version, cluster_id, [message, ...]]``; a message is an array whose
first field is its ``DkvTag`` followed by the dataclass's fields in order. Field layouts:

- ``obj`` (a ``VersionedObject``) is bin holding ``concord.wire.dkv_codec.encode_object``'s
  bytes, or nil where the field may be None: the object keeps its own versioned layout,
  the one replicas store and hints hold, and its strict decoder is reused as it is.
- ``ForwardPut.context`` is the flat ``[node, counter, node, counter, ...]`` array of
  ``dkv_codec``'s causal contexts (sorted by node, counters >= 1).
- ``AaeKeys.keys`` is ``[[bucket, key, digest], ...]``, ``AaeKeysReply.wanted``
  ``[[bucket, key], ...]``; other tuples are plain arrays; None is nil.

Tags are append-only. Decoding checks every type, arity, tag and bound (string, bytes and
array lengths, digest and hash sizes, non-negative ints, bucket names, non-empty keys and
node ids) before any dataclass is built, and raises ``concord.wire.DecodeError`` naming the
offending field; nothing else escapes. What depends on the receiver's configuration (the
partition count, a bucket's N, a valid W) is the node's to check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Final, assert_never

import msgpack

from concord.dkv.config import MAX_PARTITION_COUNT, validate_bucket_name
from concord.dkv.merkle import HASH_BYTES
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
from concord.dkv.versions import MAX_VALUE_BYTES, VersionedObject

# the field checkers are shared with the Raft and SWIM codecs, so all explain bad input alike
from concord.wire.codec import (
    MAX_STR_BYTES,
    DecodeError,
    _array,
    _bool,
    _bytes,
    _describe,
    _fail,
    _fields,
    _node_id,
    _str,
    _tag,
    _uint,
)
from concord.wire.dkv_codec import _vector, decode_object, encode_object

DKV_FORMAT_VERSION: Final = 1
"""The peer-message batch format this build writes and the newest it reads."""

MAX_DKV_BATCH_BYTES: Final = 64 * 1024 * 1024
"""Largest encoded batch (64 MiB; a batch may carry several 1 MiB values): the encoder
refuses larger ones and the decoder checks it before unpacking."""

MAX_DKV_ARRAY_LEN: Final = 1 << 20
"""Most elements in one array: messages in a batch, positions, hashes, keys, replicas."""

MAX_DKV_STR_BYTES: Final = MAX_STR_BYTES
"""Largest string in UTF-8 bytes (bucket, key, node id, cluster id, error): 1 MiB."""

DIGEST_BYTES: Final = 16
"""Size of a ``VersionedObject.digest()`` (tombstone checks, anti-entropy key lists)."""


class DkvTag(IntEnum):
    """Wire tags of quorum-store peer messages. Append-only: never renumber or reuse a value."""

    REPLICA_PUT = 1
    PUT_ACK = 2
    REPLICA_GET = 3
    GET_REPLY = 4
    FORWARD_PUT = 5
    FORWARD_REPLY = 6
    HINT_DELIVERY = 7
    HANDOFF_PUSH = 8
    AAE_LEVEL = 9
    AAE_LEVEL_REPLY = 10
    AAE_KEYS = 11
    AAE_KEYS_REPLY = 12
    TOMBSTONE_CHECK = 13
    TOMBSTONE_CHECK_REPLY = 14
    TOMBSTONE_COLLECT = 15


_Fields = tuple[object, ...]


# --- encoding ------------------------------------------------------------------------------


def _object_body(obj: VersionedObject | None) -> bytes | None:
    return None if obj is None else encode_object(obj)


def _message_body(msg: DkvMessage) -> tuple[object, ...]:
    match msg:
        case ReplicaPut():
            return (DkvTag.REPLICA_PUT, msg.request_id, msg.bucket, msg.key,
                    encode_object(msg.obj), msg.hint_for)
        case PutAck():
            return (DkvTag.PUT_ACK, msg.request_id, msg.ok, msg.error)
        case ReplicaGet():
            return (DkvTag.REPLICA_GET, msg.request_id, msg.bucket, msg.key)
        case GetReply():
            return (DkvTag.GET_REPLY, msg.request_id, _object_body(msg.obj))
        case ForwardPut():
            context = [item for entry in msg.context for item in entry]
            return (DkvTag.FORWARD_PUT, msg.request_id, msg.bucket, msg.key, msg.value,
                    context, msg.w)
        case ForwardReply():
            return (DkvTag.FORWARD_REPLY, msg.request_id, msg.ok, _object_body(msg.obj),
                    msg.replicas, msg.needed, msg.answered, msg.targets, msg.error,
                    msg.refused)
        case HintDelivery():
            return (DkvTag.HINT_DELIVERY, msg.request_id, msg.bucket, msg.key,
                    encode_object(msg.obj))
        case HandoffPush():
            return (DkvTag.HANDOFF_PUSH, msg.request_id, msg.bucket, msg.key,
                    encode_object(msg.obj))
        case AaeLevel():
            return (DkvTag.AAE_LEVEL, msg.request_id, msg.partition, msg.n, msg.level,
                    msg.positions, msg.hashes)
        case AaeLevelReply():
            return (DkvTag.AAE_LEVEL_REPLY, msg.request_id, msg.differing)
        case AaeKeys():
            return (DkvTag.AAE_KEYS, msg.request_id, msg.partition, msg.n, msg.segments,
                    msg.keys)
        case AaeKeysReply():
            return (DkvTag.AAE_KEYS_REPLY, msg.request_id, msg.wanted)
        case TombstoneCheck():
            return (DkvTag.TOMBSTONE_CHECK, msg.request_id, msg.bucket, msg.key, msg.digest)
        case TombstoneCheckReply():
            return (DkvTag.TOMBSTONE_CHECK_REPLY, msg.request_id, msg.agree)
        case TombstoneCollect():
            return (DkvTag.TOMBSTONE_COLLECT, msg.bucket, msg.key, msg.digest)
        case _:
            assert_never(msg)


def encode_dkv_batch(cluster_id: str, messages: Sequence[DkvMessage]) -> bytes:
    """One batch of peer messages for ``cluster_id``; ValueError if it would exceed
    ``MAX_DKV_BATCH_BYTES`` (split the messages over several batches instead)."""
    body = (DKV_FORMAT_VERSION, cluster_id, [_message_body(m) for m in messages])
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    if len(packed) > MAX_DKV_BATCH_BYTES:
        raise ValueError(f"dkv batch: {len(messages)} messages encode to {len(packed)} bytes, "
                         f"more than MAX_DKV_BATCH_BYTES={MAX_DKV_BATCH_BYTES}")
    return packed


# --- decoding ------------------------------------------------------------------------------


def _bucket(value: object, where: str) -> str:
    try:
        return validate_bucket_name(value)
    except ValueError as exc:
        _fail(where, str(exc))


def _key(value: object, where: str) -> str:
    key = _str(value, where)
    if not key:
        _fail(where, "a key must not be empty")
    return key


def _sized(value: object, size_bytes: int, where: str) -> bytes:
    data = _bytes(value, where)
    if len(data) != size_bytes:
        _fail(where, f"expected {size_bytes} bytes, got {len(data)}")
    return data


def _object(value: object, where: str) -> VersionedObject:
    if type(value) is not bytes:
        _fail(where, f"expected an encoded object (bin), got {_describe(value)}")
    try:
        return decode_object(value)
    except DecodeError as exc:
        _fail(where, str(exc))


def _optional_object(value: object, where: str) -> VersionedObject | None:
    return None if value is None else _object(value, where)


def _uints(value: object, where: str) -> tuple[int, ...]:
    return tuple(_uint(item, f"{where}[{i}]") for i, item in enumerate(_array(value, where)))


def _decode_replica_put(f: _Fields, w: str) -> ReplicaPut:
    hint_for = None if f[5] is None else _node_id(f[5], f"{w}.hint_for")
    return ReplicaPut(_uint(f[1], f"{w}.request_id"), _bucket(f[2], f"{w}.bucket"),
                      _key(f[3], f"{w}.key"), _object(f[4], f"{w}.obj"), hint_for)


def _decode_put_ack(f: _Fields, w: str) -> PutAck:
    return PutAck(_uint(f[1], f"{w}.request_id"), _bool(f[2], f"{w}.ok"),
                  _str(f[3], f"{w}.error"))


def _decode_replica_get(f: _Fields, w: str) -> ReplicaGet:
    return ReplicaGet(_uint(f[1], f"{w}.request_id"), _bucket(f[2], f"{w}.bucket"),
                      _key(f[3], f"{w}.key"))


def _decode_get_reply(f: _Fields, w: str) -> GetReply:
    return GetReply(_uint(f[1], f"{w}.request_id"), _optional_object(f[2], f"{w}.obj"))


def _decode_forward_put(f: _Fields, w: str) -> ForwardPut:
    value = None if f[4] is None else _bytes(f[4], f"{w}.value")
    if value is not None and len(value) > MAX_VALUE_BYTES:
        _fail(f"{w}.value", f"{len(value)} bytes exceeds MAX_VALUE_BYTES={MAX_VALUE_BYTES}")
    context = _vector(f[5], f"{w}.context").entries
    return ForwardPut(_uint(f[1], f"{w}.request_id"), _bucket(f[2], f"{w}.bucket"),
                      _key(f[3], f"{w}.key"), value, context, _uint(f[6], f"{w}.w"))


def _decode_forward_reply(f: _Fields, w: str) -> ForwardReply:
    replicas = tuple(_node_id(item, f"{w}.replicas[{i}]")
                     for i, item in enumerate(_array(f[4], f"{w}.replicas")))
    return ForwardReply(_uint(f[1], f"{w}.request_id"), _bool(f[2], f"{w}.ok"),
                        _optional_object(f[3], f"{w}.obj"), replicas,
                        _uint(f[5], f"{w}.needed"), _uint(f[6], f"{w}.answered"),
                        _uint(f[7], f"{w}.targets"), _str(f[8], f"{w}.error"),
                        _bool(f[9], f"{w}.refused"))


def _decode_hint_delivery(f: _Fields, w: str) -> HintDelivery:
    return HintDelivery(_uint(f[1], f"{w}.request_id"), _bucket(f[2], f"{w}.bucket"),
                        _key(f[3], f"{w}.key"), _object(f[4], f"{w}.obj"))


def _decode_handoff_push(f: _Fields, w: str) -> HandoffPush:
    return HandoffPush(_uint(f[1], f"{w}.request_id"), _bucket(f[2], f"{w}.bucket"),
                       _key(f[3], f"{w}.key"), _object(f[4], f"{w}.obj"))


def _partition(value: object, where: str) -> int:
    partition = _uint(value, where)
    if partition >= MAX_PARTITION_COUNT:
        _fail(where, f"{partition} is not below MAX_PARTITION_COUNT={MAX_PARTITION_COUNT}")
    return partition


def _decode_aae_level(f: _Fields, w: str) -> AaeLevel:
    positions = _uints(f[5], f"{w}.positions")
    hashes = tuple(_sized(item, HASH_BYTES, f"{w}.hashes[{i}]")
                   for i, item in enumerate(_array(f[6], f"{w}.hashes")))
    if len(hashes) != len(positions):
        _fail(f"{w}.hashes", f"one hash per position: {len(positions)} positions, "
                             f"{len(hashes)} hashes")
    return AaeLevel(_uint(f[1], f"{w}.request_id"), _partition(f[2], f"{w}.partition"),
                    _uint(f[3], f"{w}.n"), _uint(f[4], f"{w}.level"), positions, hashes)


def _decode_aae_level_reply(f: _Fields, w: str) -> AaeLevelReply:
    return AaeLevelReply(_uint(f[1], f"{w}.request_id"), _uints(f[2], f"{w}.differing"))


def _stored_key(value: object, where: str) -> tuple[str, str, bytes]:
    triple = _fields(value, 3, where)
    return (_bucket(triple[0], f"{where}.bucket"), _key(triple[1], f"{where}.key"),
            _sized(triple[2], DIGEST_BYTES, f"{where}.digest"))


def _decode_aae_keys(f: _Fields, w: str) -> AaeKeys:
    keys = tuple(_stored_key(item, f"{w}.keys[{i}]")
                 for i, item in enumerate(_array(f[5], f"{w}.keys")))
    return AaeKeys(_uint(f[1], f"{w}.request_id"), _partition(f[2], f"{w}.partition"),
                   _uint(f[3], f"{w}.n"), _uints(f[4], f"{w}.segments"), keys)


def _key_ident(value: object, where: str) -> tuple[str, str]:
    pair = _fields(value, 2, where)
    return _bucket(pair[0], f"{where}.bucket"), _key(pair[1], f"{where}.key")


def _decode_aae_keys_reply(f: _Fields, w: str) -> AaeKeysReply:
    wanted = tuple(_key_ident(item, f"{w}.wanted[{i}]")
                   for i, item in enumerate(_array(f[2], f"{w}.wanted")))
    return AaeKeysReply(_uint(f[1], f"{w}.request_id"), wanted)


def _decode_tombstone_check(f: _Fields, w: str) -> TombstoneCheck:
    return TombstoneCheck(_uint(f[1], f"{w}.request_id"), _bucket(f[2], f"{w}.bucket"),
                          _key(f[3], f"{w}.key"), _sized(f[4], DIGEST_BYTES, f"{w}.digest"))


def _decode_tombstone_check_reply(f: _Fields, w: str) -> TombstoneCheckReply:
    return TombstoneCheckReply(_uint(f[1], f"{w}.request_id"), _bool(f[2], f"{w}.agree"))


def _decode_tombstone_collect(f: _Fields, w: str) -> TombstoneCollect:
    return TombstoneCollect(_bucket(f[1], f"{w}.bucket"), _key(f[2], f"{w}.key"),
                            _sized(f[3], DIGEST_BYTES, f"{w}.digest"))


_DECODERS: Final[dict[DkvTag, tuple[int, Callable[[_Fields, str], DkvMessage]]]] = {
    DkvTag.REPLICA_PUT: (6, _decode_replica_put),
    DkvTag.PUT_ACK: (4, _decode_put_ack),
    DkvTag.REPLICA_GET: (4, _decode_replica_get),
    DkvTag.GET_REPLY: (3, _decode_get_reply),
    DkvTag.FORWARD_PUT: (7, _decode_forward_put),
    DkvTag.FORWARD_REPLY: (10, _decode_forward_reply),
    DkvTag.HINT_DELIVERY: (5, _decode_hint_delivery),
    DkvTag.HANDOFF_PUSH: (5, _decode_handoff_push),
    DkvTag.AAE_LEVEL: (7, _decode_aae_level),
    DkvTag.AAE_LEVEL_REPLY: (3, _decode_aae_level_reply),
    DkvTag.AAE_KEYS: (6, _decode_aae_keys),
    DkvTag.AAE_KEYS_REPLY: (3, _decode_aae_keys_reply),
    DkvTag.TOMBSTONE_CHECK: (5, _decode_tombstone_check),
    DkvTag.TOMBSTONE_CHECK_REPLY: (3, _decode_tombstone_check_reply),
    DkvTag.TOMBSTONE_COLLECT: (4, _decode_tombstone_collect),
}
"""Per tag: the message array's arity (tag included) and the decoder of its fields."""

assert set(_DECODERS) == set(DkvTag), "every tag has a decoder"


def _message(value: object, where: str) -> DkvMessage:
    items = _array(value, where)
    if not items:
        _fail(where, "an empty message")
    tag = _tag(items[0], DkvTag, f"{where}.tag")
    arity, decode = _DECODERS[tag]
    fields = _fields(items, arity, f"{where} ({tag.name})")
    return decode(fields, where)


def decode_dkv_batch(body: bytes | bytearray | memoryview) -> tuple[str, list[DkvMessage]]:
    """The cluster id and messages of the batch in ``body``; ``DecodeError`` for anything
    but a valid encoding."""
    where = "dkv_batch"
    if not isinstance(body, bytes | bytearray | memoryview):
        _fail(where, f"expected bytes to decode, got {type(body).__name__}")
    size_bytes = memoryview(body).nbytes
    if size_bytes > MAX_DKV_BATCH_BYTES:
        _fail(where, f"input of {size_bytes} bytes exceeds MAX_DKV_BATCH_BYTES="
                     f"{MAX_DKV_BATCH_BYTES}")
    try:
        raw = msgpack.unpackb(body, raw=False, use_list=False, strict_map_key=True,
                              max_bin_len=MAX_DKV_BATCH_BYTES, max_str_len=MAX_DKV_STR_BYTES,
                              max_array_len=MAX_DKV_ARRAY_LEN, max_map_len=0, max_ext_len=0)
    except Exception as exc:  # every unpacker failure means "not valid msgpack here"
        _fail(where, f"not valid msgpack ({type(exc).__name__}: {str(exc) or 'malformed'})")
    fields = _fields(raw, 3, where)
    version = fields[0]
    if type(version) is not int:
        _fail(f"{where}.version", f"expected an int, got {_describe(version)}")
    if version > DKV_FORMAT_VERSION:
        _fail(f"{where}.version", f"format version {version} is newer than this build reads "
                                  f"({DKV_FORMAT_VERSION}); upgrade this node")
    if version < 1:
        _fail(f"{where}.version", f"unknown format version {version}")
    cluster_id = _str(fields[1], f"{where}.cluster_id")
    messages = [_message(item, f"{where}.messages[{i}]")
                for i, item in enumerate(_array(fields[2], f"{where}.messages"))]
    return cluster_id, messages
