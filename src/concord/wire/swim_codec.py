"""Strict msgpack encodings of SWIM membership messages (``concord.detector.messages``).

A batch is ``[format_version, cluster_id, [message, ...]]``; a message is an array whose
first field is its ``SwimTag`` followed by the dataclass's fields in order, with
``updates`` (and PushPull's ``states``) as arrays of ``[member, state, incarnation, origin,
address]``. Tags and ``MemberState`` values are append-only. Decoding checks every type,
arity and tag and raises ``concord.wire.DecodeError`` naming the offending field; nothing
else escapes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, TypeVar

import msgpack

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

# the field checkers are shared with the Raft codec, so both explain bad input alike
from concord.wire.codec import (
    _array,
    _bool,
    _fail,
    _fields,
    _node_id,
    _str,
    _tag,
    _uint,
)

SWIM_FORMAT_VERSION: Final = 1
"""The SWIM batch format this build writes and the newest it reads."""

MAX_SWIM_BATCH_BYTES: Final = 4 * 1024 * 1024
"""Largest encoded batch a decoder accepts (a full state exchange of a large cluster fits)."""

MAX_SWIM_ARRAY_LEN: Final = 65_536
"""Most elements in one array: messages in a batch, updates in a message."""

MAX_SWIM_STR_BYTES: Final = 4096
"""Largest string: node ids, cluster ids and member addresses."""


class SwimTag(IntEnum):
    """Wire tags of SWIM messages. Append-only: never renumber or reuse a value."""

    PING = 1
    ACK = 2
    PING_REQ = 3
    NACK = 4
    GOSSIP = 5
    PUSH_PULL = 6


@dataclass(frozen=True, slots=True)
class SwimBatch:
    """Messages from one sender's batch, with the cluster they claim to belong to."""

    cluster_id: str
    messages: tuple[SwimMessage, ...]


_E = TypeVar("_E", bound=IntEnum)
_Fields = tuple[object, ...]


# --- encoding ------------------------------------------------------------------------------


def _update_body(update: MemberUpdate) -> tuple[object, ...]:
    return (update.member, int(update.state), update.incarnation, update.origin,
            update.address)


def _updates_body(updates: Sequence[MemberUpdate]) -> list[tuple[object, ...]]:
    return [_update_body(u) for u in updates]


def _message_body(msg: SwimMessage) -> tuple[object, ...]:
    match msg:
        case Ping():
            return (SwimTag.PING, msg.sender, msg.recipient, msg.seq, msg.t1_ns,
                    _updates_body(msg.updates))
        case Ack():
            return (SwimTag.ACK, msg.sender, msg.recipient, msg.seq, msg.target, msg.t1_ns,
                    msg.t2_ns, msg.t3_ns, _updates_body(msg.updates))
        case PingReq():
            return (SwimTag.PING_REQ, msg.sender, msg.recipient, msg.seq, msg.target,
                    msg.want_nack, _updates_body(msg.updates))
        case Nack():
            return (SwimTag.NACK, msg.sender, msg.recipient, msg.seq, msg.target,
                    _updates_body(msg.updates))
        case Gossip():
            return (SwimTag.GOSSIP, msg.sender, msg.recipient, _updates_body(msg.updates))
        case PushPull():
            return (SwimTag.PUSH_PULL, msg.sender, msg.recipient, _updates_body(msg.states),
                    msg.join, msg.reply)


def encode_swim_batch(cluster_id: str, messages: Sequence[SwimMessage]) -> bytes:
    """One batch of SWIM messages for ``cluster_id``."""
    body = (SWIM_FORMAT_VERSION, cluster_id, [_message_body(m) for m in messages])
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


# --- decoding ------------------------------------------------------------------------------


def _update(value: object, where: str) -> MemberUpdate:
    f = _fields(value, 5, where)
    incarnation = _uint(f[2], f"{where}.incarnation")
    return MemberUpdate(_node_id(f[0], f"{where}.member"),
                        _tag(f[1], MemberState, f"{where}.state"), incarnation,
                        _node_id(f[3], f"{where}.origin"), _str(f[4], f"{where}.address"))


def _updates(value: object, where: str) -> tuple[MemberUpdate, ...]:
    return tuple(_update(item, f"{where}[{i}]") for i, item in enumerate(_array(value, where)))


def _decode_ping(f: _Fields, w: str) -> Ping:
    return Ping(_node_id(f[1], f"{w}.sender"), _node_id(f[2], f"{w}.recipient"),
                _uint(f[3], f"{w}.seq"), _uint(f[4], f"{w}.t1_ns"), _updates(f[5], f"{w}.updates"))


def _decode_ack(f: _Fields, w: str) -> Ack:
    return Ack(_node_id(f[1], f"{w}.sender"), _node_id(f[2], f"{w}.recipient"),
               _uint(f[3], f"{w}.seq"), _node_id(f[4], f"{w}.target"),
               _uint(f[5], f"{w}.t1_ns"), _uint(f[6], f"{w}.t2_ns"), _uint(f[7], f"{w}.t3_ns"),
               _updates(f[8], f"{w}.updates"))


def _decode_ping_req(f: _Fields, w: str) -> PingReq:
    return PingReq(_node_id(f[1], f"{w}.sender"), _node_id(f[2], f"{w}.recipient"),
                   _uint(f[3], f"{w}.seq"), _node_id(f[4], f"{w}.target"),
                   _bool(f[5], f"{w}.want_nack"), _updates(f[6], f"{w}.updates"))


def _decode_nack(f: _Fields, w: str) -> Nack:
    return Nack(_node_id(f[1], f"{w}.sender"), _node_id(f[2], f"{w}.recipient"),
                _uint(f[3], f"{w}.seq"), _node_id(f[4], f"{w}.target"),
                _updates(f[5], f"{w}.updates"))


def _decode_gossip(f: _Fields, w: str) -> Gossip:
    return Gossip(_node_id(f[1], f"{w}.sender"), _node_id(f[2], f"{w}.recipient"),
                  _updates(f[3], f"{w}.updates"))


def _decode_push_pull(f: _Fields, w: str) -> PushPull:
    return PushPull(_node_id(f[1], f"{w}.sender"), _node_id(f[2], f"{w}.recipient"),
                    _updates(f[3], f"{w}.states"), _bool(f[4], f"{w}.join"),
                    _bool(f[5], f"{w}.reply"))


_DECODERS: Final[dict[SwimTag, tuple[int, Callable[[_Fields, str], SwimMessage]]]] = {
    SwimTag.PING: (6, _decode_ping),
    SwimTag.ACK: (9, _decode_ack),
    SwimTag.PING_REQ: (7, _decode_ping_req),
    SwimTag.NACK: (6, _decode_nack),
    SwimTag.GOSSIP: (4, _decode_gossip),
    SwimTag.PUSH_PULL: (6, _decode_push_pull),
}
"""Per tag: the message array's arity (tag included) and the decoder of its fields."""


def _message(value: object, where: str) -> SwimMessage:
    items = _array(value, where)
    if not items:
        _fail(where, "an empty message")
    tag = _tag(items[0], SwimTag, f"{where}.tag")
    arity, decode = _DECODERS[tag]
    fields = _fields(items, arity, f"{where} ({tag.name})")
    message = decode(fields, where)
    if message.sender == message.recipient:
        _fail(where, "sender and recipient are the same node")
    return message


def decode_swim_batch(data: bytes | bytearray | memoryview) -> SwimBatch:
    """The batch in ``data``; ``DecodeError`` for anything but a valid encoding."""
    where = "swim_batch"
    if memoryview(data).nbytes > MAX_SWIM_BATCH_BYTES:
        _fail(where, f"exceeds {MAX_SWIM_BATCH_BYTES} bytes")
    try:
        raw = msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=True,
                              max_bin_len=0, max_str_len=MAX_SWIM_STR_BYTES,
                              max_array_len=MAX_SWIM_ARRAY_LEN, max_map_len=0, max_ext_len=0)
    except Exception as exc:  # every unpacker failure means "not valid msgpack here"
        _fail(where, f"not valid msgpack ({type(exc).__name__})")
    fields = _fields(raw, 3, where)
    version = _uint(fields[0], f"{where}.version")
    if not 1 <= version <= SWIM_FORMAT_VERSION:
        _fail(f"{where}.version", f"unsupported format version {version}")
    cluster_id = _str(fields[1], f"{where}.cluster_id")
    messages = tuple(_message(item, f"{where}.messages[{i}]")
                     for i, item in enumerate(_array(fields[2], f"{where}.messages")))
    return SwimBatch(cluster_id, messages)
