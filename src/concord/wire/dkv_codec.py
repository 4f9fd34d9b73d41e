"""The msgpack encodings of the quorum store's versions: stored objects and causal contexts.

This module owns two byte layouts of ``concord.dkv.versions`` types:

- A ``VersionedObject`` (replica storage, hints, peer RPC bodies) is
  ``[format_version, [sibling, ...]]`` with each sibling
  ``[dot_node, dot_counter, timestamp_ns, value, context]``: ``value`` is bin, or nil for a
  tombstone, and ``context`` is the flat array ``[node, counter, node, counter, ...]``.
- A causal-context token (what clients carry between a read and the write that follows it)
  is the URL-safe base64, unpadded, of ``[format_version, [node, counter, ...]]``. The
  empty vector is the empty token ``""``, so a client with nothing read sends nothing.

Decoding is strict: every type, arity, bound and ordering the dataclasses assert is checked
first, so anything but a valid encoding raises ``concord.wire.DecodeError`` (a ValueError)
naming the offending field, and never an AssertionError. Context-token errors start with
``"malformed causal context: "`` so the API can return them as a 400 as they are.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from typing import Final, NoReturn

import msgpack

from concord.dkv.versions import (
    EMPTY_CONTEXT,
    MAX_VALUE_BYTES,
    Dot,
    Sibling,
    VersionedObject,
    VersionVector,
)
from concord.wire.codec import MAX_MESSAGE_BYTES, MAX_STR_BYTES, DecodeError, _describe

DKV_FORMAT_VERSION: Final = 1
"""The object and context format this build writes and the only one it reads."""

MAX_OBJECT_BYTES: Final = MAX_MESSAGE_BYTES
"""Largest encoded object (64 MiB): the encoder refuses larger ones, so every object it
writes can be read back."""

MAX_SIBLINGS: Final = 65_536
"""Most siblings one object may hold, and most entries one version vector may hold."""

MAX_CONTEXT_TOKEN_CHARS: Final = 65_536
"""Longest causal-context token accepted (a vector of a few thousand nodes fits)."""

CONTEXT_ERROR_PREFIX: Final = "malformed causal context"

_TOKEN_ALPHABET: Final = re.compile(r"[A-Za-z0-9_-]*")



def _fail(where: str, problem: str) -> NoReturn:
    raise DecodeError(f"{where}: {problem}")


# --- encoding ------------------------------------------------------------------------------


def _flat_context(vv: VersionVector) -> list[object]:
    flat: list[object] = []
    for node, counter in vv.entries:
        flat.append(node)
        flat.append(counter)
    return flat


def encode_object(obj: VersionedObject) -> bytes:
    """The stored form of ``obj``; ValueError if it exceeds ``MAX_OBJECT_BYTES``."""
    body = [
        (s.dot.node, s.dot.counter, s.timestamp_ns, s.value, _flat_context(s.context))
        for s in obj.siblings
    ]
    packed: bytes = msgpack.packb((DKV_FORMAT_VERSION, body), use_bin_type=True)
    if len(packed) > MAX_OBJECT_BYTES:
        raise ValueError(f"versioned object: encodes to {len(packed)} bytes, more than "
                         f"MAX_OBJECT_BYTES={MAX_OBJECT_BYTES} ({len(obj.siblings)} siblings)")
    return packed


def encode_context(vv: VersionVector) -> str:
    """The opaque token a client carries for ``vv``; ``""`` for the empty vector."""
    if not vv.entries:
        return ""
    packed: bytes = msgpack.packb((DKV_FORMAT_VERSION, _flat_context(vv)), use_bin_type=True)
    return base64.urlsafe_b64encode(packed).rstrip(b"=").decode("ascii")


# --- decoding ------------------------------------------------------------------------------


def _unpack(data: bytes | bytearray | memoryview, where: str) -> object:
    try:
        return msgpack.unpackb(
            data, raw=False, use_list=False, strict_map_key=True, max_bin_len=MAX_VALUE_BYTES,
            max_str_len=MAX_STR_BYTES, max_map_len=0, max_ext_len=0,
            max_array_len=2 * MAX_SIBLINGS,  # a flat context holds two items per entry
        )
    except Exception as exc:  # every unpacker failure means "not valid msgpack here"
        _fail(where, f"not valid msgpack ({type(exc).__name__}: {str(exc) or 'malformed'})")


def _version(value: object, where: str) -> None:
    if type(value) is not int:
        _fail(where, f"expected an int, got {_describe(value)}")
    if value != DKV_FORMAT_VERSION:
        problem = "newer than this build reads" if value > DKV_FORMAT_VERSION else "unknown"
        _fail(where, f"format version {value} is {problem} (this build reads "
                     f"{DKV_FORMAT_VERSION})")


def _counter(value: object, where: str) -> int:
    if type(value) is not int:
        _fail(where, f"expected a positive int, got {_describe(value)}")
    if value < 1:
        _fail(where, f"counters start at 1, got {value}")
    return value


def _node(value: object, where: str) -> str:
    if type(value) is not str:
        _fail(where, f"expected a node id (str), got {_describe(value)}")
    if not value:
        _fail(where, "a node id must not be empty")
    return value


def _vector(value: object, where: str) -> VersionVector:
    """A version vector from its flat ``[node, counter, ...]`` array."""
    if type(value) is not tuple:
        _fail(where, f"expected an array, got {_describe(value)}")
    if len(value) % 2:
        _fail(where, f"expected [node, counter, ...] pairs, got {len(value)} items")
    if len(value) > 2 * MAX_SIBLINGS:
        _fail(where, f"more than {MAX_SIBLINGS} entries")
    entries: list[tuple[str, int]] = []
    previous = ""
    for i in range(0, len(value), 2):
        node = _node(value[i], f"{where}[{i // 2}].node")
        if entries and node <= previous:
            _fail(f"{where}[{i // 2}].node",
                  f"entries must be sorted by node, one per node: {node!r} after {previous!r}")
        entries.append((node, _counter(value[i + 1], f"{where}[{i // 2}].counter")))
        previous = node
    return VersionVector(tuple(entries))


def _sibling(value: object, where: str, contexts: dict[tuple[object, ...], VersionVector],
             ) -> Sibling:
    if type(value) is not tuple:
        _fail(where, f"expected an array, got {_describe(value)}")
    if len(value) != 5:
        _fail(where, f"expected 5 fields, got {len(value)}")
    node, counter, timestamp_ns, item, raw_context = value
    dot = Dot(_node(node, f"{where}.dot.node"), _counter(counter, f"{where}.dot.counter"))
    if type(timestamp_ns) is not int:
        _fail(f"{where}.timestamp_ns",
              f"expected a non-negative int, got {_describe(timestamp_ns)}")
    if timestamp_ns < 0:
        _fail(f"{where}.timestamp_ns", f"must not be negative, got {timestamp_ns}")
    if item is not None and type(item) is not bytes:
        _fail(f"{where}.value", f"expected bytes or nil, got {_describe(item)}")
    # siblings written together often share a context: decode each distinct one once
    context = None
    if type(raw_context) is tuple:
        # a context holding a map cannot be a key (TypeError): _vector refuses it below
        with contextlib.suppress(TypeError):
            context = contexts.get(raw_context)
    if context is None:
        context = _vector(raw_context, f"{where}.context")
        if type(raw_context) is tuple:
            contexts[raw_context] = context
    if context.covers(dot):
        _fail(f"{where}.context", f"covers the sibling's own dot {dot.node}:{dot.counter}")
    return Sibling(dot, context, item, timestamp_ns)


def decode_object(data: bytes | bytearray | memoryview) -> VersionedObject:
    """Decode what ``encode_object`` wrote; DecodeError for anything else."""
    where = "versioned_object"
    if not isinstance(data, bytes | bytearray | memoryview):
        _fail(where, f"expected bytes to decode, got {type(data).__name__}")
    size_bytes = memoryview(data).nbytes
    if size_bytes > MAX_OBJECT_BYTES:
        _fail(where, f"input of {size_bytes} bytes exceeds MAX_OBJECT_BYTES={MAX_OBJECT_BYTES}")
    record = _unpack(data, where)
    if type(record) is not tuple or len(record) != 2:
        _fail(where, f"expected [format_version, siblings], got {_describe(record)}")
    _version(record[0], f"{where}.version")
    raw_siblings = record[1]
    if type(raw_siblings) is not tuple:
        _fail(f"{where}.siblings", f"expected an array, got {_describe(raw_siblings)}")
    if not raw_siblings:
        _fail(f"{where}.siblings", "an object has at least one sibling")
    if len(raw_siblings) > MAX_SIBLINGS:
        _fail(f"{where}.siblings", f"more than {MAX_SIBLINGS} siblings")
    contexts: dict[tuple[object, ...], VersionVector] = {}
    siblings: list[Sibling] = []
    for i, raw in enumerate(raw_siblings):
        sibling = _sibling(raw, f"{where}.siblings[{i}]", contexts)
        if siblings and sibling.dot <= siblings[-1].dot:
            previous = siblings[-1].dot
            _fail(f"{where}.siblings[{i}].dot",
                  f"siblings must be sorted by dot, one per dot: {sibling.dot.node}:"
                  f"{sibling.dot.counter} after {previous.node}:{previous.counter}")
        siblings.append(sibling)
    return VersionedObject(tuple(siblings))


def decode_context(token: object) -> VersionVector:
    """The version vector in a client's token; DecodeError ("malformed causal context: ...")
    for anything ``encode_context`` could not have written."""
    where = CONTEXT_ERROR_PREFIX
    if type(token) is not str:
        _fail(where, f"expected a string token, got {type(token).__name__}")
    if not token:
        return EMPTY_CONTEXT
    if len(token) > MAX_CONTEXT_TOKEN_CHARS:
        _fail(where, f"token of {len(token)} characters exceeds {MAX_CONTEXT_TOKEN_CHARS}")
    if _TOKEN_ALPHABET.fullmatch(token) is None or len(token) % 4 == 1:
        _fail(where, "not unpadded URL-safe base64")
    try:
        packed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        _fail(where, f"not unpadded URL-safe base64 ({exc})")
    record = _unpack(packed, where)
    if type(record) is not tuple or len(record) != 2:
        _fail(where, f"expected [format_version, entries], got {_describe(record)}")
    _version(record[0], f"{where}: version")
    return _vector(record[1], f"{where}: entries")
