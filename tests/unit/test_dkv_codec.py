"""The quorum store's codec: versioned objects and causal-context tokens round-trip, keep their
documented layout, and anything malformed raises DecodeError naming the field (never an
AssertionError from the dataclasses)."""

from __future__ import annotations

import base64
from typing import Any

import msgpack
import pytest

from concord.dkv.versions import (
    EMPTY_CONTEXT,
    MAX_VALUE_BYTES,
    Dot,
    Sibling,
    VersionedObject,
    VersionVector,
    new_write,
)
from concord.wire import DecodeError
from concord.wire.dkv_codec import (
    DKV_FORMAT_VERSION,
    MAX_CONTEXT_TOKEN_CHARS,
    decode_context,
    decode_object,
    encode_context,
    encode_object,
)

T0_NS = 1_764_000_000_000_000_000
CTX = VersionVector((("n1", 5), ("n2", 3), ("n3", 7)))


def _sibling(node: str, counter: int, value: bytes | None,
             context: VersionVector = EMPTY_CONTEXT, timestamp_ns: int = T0_NS) -> Sibling:
    return Sibling(Dot(node, counter), context, value, timestamp_ns)


OBJECTS = {
    "one value": VersionedObject((_sibling("n1", 1, b"v"),)),
    "empty value": VersionedObject((_sibling("n1", 1, b""),)),
    "tombstone": VersionedObject((_sibling("n2", 4, None, CTX.without(["n2"])),)),
    "largest value": VersionedObject((_sibling("n1", 1, b"x" * MAX_VALUE_BYTES),)),
    "siblings sharing a context": VersionedObject.of([
        _sibling("n1", 6, b"a", CTX), _sibling("n2", 4, b"b", CTX),
        _sibling("n3", 8, None, CTX, timestamp_ns=0)]),
    "coordinator writes": new_write(new_write(None, CTX, "n1", b"first", T0_NS), CTX, "n2",
                                    b"second", T0_NS + 1),
    "unicode node ids": VersionedObject.of([_sibling("nœud-é", 2, b"\x00\xff"),
                                            _sibling("ノード", 2**64 - 1, None)]),
}


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_objects_round_trip(name: str) -> None:
    obj = OBJECTS[name]
    encoded = encode_object(obj)
    assert decode_object(encoded) == obj
    assert decode_object(bytearray(encoded)) == obj
    assert decode_object(memoryview(encoded)) == obj


def test_object_layout_is_positional_and_compact() -> None:
    obj = VersionedObject.of([_sibling("n1", 6, b"a", CTX), _sibling("n2", 4, None)])
    assert msgpack.unpackb(encode_object(obj)) == [
        DKV_FORMAT_VERSION,
        [["n1", 6, T0_NS, b"a", ["n1", 5, "n2", 3, "n3", 7]],
         ["n2", 4, T0_NS, None, []]],
    ]
    # a 256-byte value costs its bytes plus a few dozen bytes of versioning
    assert len(encode_object(new_write(None, CTX, "n1", b"v" * 256, T0_NS))) < 256 + 48


def _object_bytes(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def _one(*sibling: Any) -> bytes:
    return _object_bytes([DKV_FORMAT_VERSION, [list(sibling)]])


GOOD = ["n1", 2, T0_NS, b"v", ["n1", 1]]

MALFORMED_OBJECTS = {
    "not msgpack": (b"\xc1", "not valid msgpack"),
    "trailing bytes": (encode_object(OBJECTS["one value"]) + b"\x00", "not valid msgpack"),
    "a map": (_object_bytes({"siblings": []}), "not valid msgpack"),
    "not an array": (_object_bytes(7), "expected [format_version, siblings]"),
    "three fields": (_object_bytes([1, [GOOD], 0]), "expected [format_version, siblings]"),
    "newer version": (_object_bytes([DKV_FORMAT_VERSION + 1, [GOOD]]), "newer than this build"),
    "version zero": (_object_bytes([0, [GOOD]]), "version: format version 0 is unknown"),
    "bool version": (_object_bytes([True, [GOOD]]), "version: expected an int"),
    "siblings not an array": (_object_bytes([1, b"x"]), "siblings: expected an array"),
    "no siblings": (_object_bytes([1, []]), "at least one sibling"),
    "sibling not an array": (_object_bytes([1, ["n1"]]), "siblings[0]: expected an array"),
    "sibling arity": (_one("n1", 1, T0_NS, b"v"), "siblings[0]: expected 5 fields, got 4"),
    "empty dot node": (_one("", 1, T0_NS, b"v", []), "dot.node: a node id must not be empty"),
    "bytes dot node": (_one(b"n1", 1, T0_NS, b"v", []), "dot.node: expected a node id"),
    "zero dot counter": (_one("n1", 0, T0_NS, b"v", []), "dot.counter: counters start at 1"),
    "negative dot counter": (_one("n1", -3, T0_NS, b"v", []), "dot.counter: counters start"),
    "float dot counter": (_one("n1", 1.0, T0_NS, b"v", []), "dot.counter: expected a positive"),
    "bool dot counter": (_one("n1", True, T0_NS, b"v", []), "dot.counter: expected a positive"),
    "negative timestamp": (_one("n1", 1, -1, b"v", []), "timestamp_ns: must not be negative"),
    "str timestamp": (_one("n1", 1, "now", b"v", []), "timestamp_ns: expected a non-negative"),
    "str value": (_one("n1", 1, T0_NS, "v", []), "value: expected bytes or nil"),
    "value too large": (_one("n1", 1, T0_NS, b"x" * (MAX_VALUE_BYTES + 1), []),
                        "not valid msgpack"),
    "context not an array": (_one("n1", 1, T0_NS, b"v", None), "context: expected an array"),
    "context odd length": (_one("n1", 2, T0_NS, b"v", ["n1", 1, "n2"]), "got 3 items"),
    "context holds a map": (_one("n1", 2, T0_NS, b"v", ["n2", {}]), "context[0]"),
    "context zero counter": (_one("n1", 2, T0_NS, b"v", ["n2", 0]),
                             "context[0].counter: counters start at 1"),
    "context negative counter": (_one("n1", 2, T0_NS, b"v", ["n2", -1]),
                                 "context[0].counter: counters start at 1"),
    "context empty node": (_one("n1", 2, T0_NS, b"v", ["", 1]), "context[0].node"),
    "context unsorted": (_one("n1", 9, T0_NS, b"v", ["n3", 1, "n2", 1]),
                         "context[1].node: entries must be sorted by node"),
    "context duplicate node": (_one("n1", 9, T0_NS, b"v", ["n2", 1, "n2", 2]),
                               "context[1].node: entries must be sorted by node, one per node"),
    "context covers own dot": (_one("n1", 2, T0_NS, b"v", ["n1", 2]),
                               "covers the sibling's own dot n1:2"),
    "siblings unsorted": (_object_bytes([1, [["n2", 1, T0_NS, b"", []],
                                             ["n1", 1, T0_NS, b"", []]]]),
                          "siblings[1].dot: siblings must be sorted by dot"),
    "duplicate dots": (_object_bytes([1, [["n1", 1, T0_NS, b"a", []],
                                          ["n1", 1, T0_NS, b"b", []]]]),
                       "siblings[1].dot: siblings must be sorted by dot, one per dot"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_OBJECTS))
def test_malformed_objects_raise_decode_error(name: str) -> None:
    data, message = MALFORMED_OBJECTS[name]
    with pytest.raises(DecodeError, match=r"^versioned_object") as raised:
        decode_object(data)
    assert message in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_every_truncation_raises_decode_error() -> None:
    encoded = encode_object(OBJECTS["siblings sharing a context"])
    for end in range(len(encoded)):
        with pytest.raises(DecodeError):
            decode_object(encoded[:end])


def test_a_non_bytes_input_raises_decode_error() -> None:
    with pytest.raises(DecodeError, match="expected bytes to decode, got str"):
        decode_object("not bytes")  # type: ignore[arg-type]


def test_an_object_too_large_to_read_back_is_refused_when_encoded() -> None:
    siblings = [_sibling(f"n{i:02}", 1, b"x" * MAX_VALUE_BYTES) for i in range(65)]
    with pytest.raises(ValueError, match="more than MAX_OBJECT_BYTES"):
        encode_object(VersionedObject.of(siblings))


# --- causal-context tokens -----------------------------------------------------------------


def test_the_empty_context_is_the_empty_token() -> None:
    assert encode_context(EMPTY_CONTEXT) == ""
    assert decode_context("") == EMPTY_CONTEXT


@pytest.mark.parametrize("vv", [
    VersionVector((("n1", 1),)),
    CTX,
    VersionVector((("n1", 2**64 - 1), ("ノード", 3))),
    OBJECTS["coordinator writes"].context(),
])
def test_context_tokens_round_trip_and_are_url_safe(vv: VersionVector) -> None:
    token = encode_context(vv)
    assert token
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert decode_context(token) == vv


def _token(body: Any) -> str:
    return base64.urlsafe_b64encode(msgpack.packb(body)).rstrip(b"=").decode()


MALFORMED_TOKENS = {
    "padding": (encode_context(CTX) + "=", "not unpadded URL-safe base64"),
    "standard alphabet": ("ab+/", "not unpadded URL-safe base64"),
    "whitespace": (" " + encode_context(CTX), "not unpadded URL-safe base64"),
    "impossible length": ("abcde", "not unpadded URL-safe base64"),
    "non-ascii": ("é", "not unpadded URL-safe base64"),
    "not msgpack": (_token([1, ["n1", 1]])[:-3], "not valid msgpack"),
    "not an array": (_token("n1"), "expected [format_version, entries]"),
    "newer version": (_token([DKV_FORMAT_VERSION + 1, ["n1", 1]]), "version: format version"),
    "entries not an array": (_token([1, {"n1": 1}]), "not valid msgpack"),
    "odd entries": (_token([1, ["n1"]]), "expected [node, counter, ...] pairs"),
    "zero counter": (_token([1, ["n1", 0]]), "entries[0].counter: counters start at 1"),
    "negative counter": (_token([1, ["n1", -1]]), "entries[0].counter: counters start at 1"),
    "str counter": (_token([1, ["n1", "1"]]), "entries[0].counter: expected a positive int"),
    "unsorted": (_token([1, ["n2", 1, "n1", 1]]), "entries[1].node: entries must be sorted"),
    "duplicate node": (_token([1, ["n1", 1, "n1", 2]]), "entries[1].node: entries must be"),
    "too long": ("A" * (MAX_CONTEXT_TOKEN_CHARS + 4), "characters exceeds"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_TOKENS))
def test_malformed_tokens_raise_a_400_ready_message(name: str) -> None:
    token, message = MALFORMED_TOKENS[name]
    with pytest.raises(DecodeError, match=r"^malformed causal context: ") as raised:
        decode_context(token)
    assert message in str(raised.value)


def test_a_non_string_token_raises_decode_error() -> None:
    with pytest.raises(DecodeError, match=r"^malformed causal context: expected a string"):
        decode_context(b"abcd")  # type: ignore[arg-type]
