"""Property tests of the quorum store's codec (``concord.wire.dkv_codec``).

Every versioned object (several siblings, tombstones, empty to 1 MiB values, shared and
distinct contexts) and every version vector round-trips exactly. Any input at all (random
bytes, byte flips of valid encodings, a field of a valid encoding replaced by a value of any
type, random token text) either decodes to something that round-trips or raises
``DecodeError``: no other exception, AssertionError included, ever escapes.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from concord.dkv.versions import (
    MAX_VALUE_BYTES,
    Dot,
    Sibling,
    VersionedObject,
    VersionVector,
)
from concord.wire import DecodeError
from concord.wire.dkv_codec import decode_context, decode_object, encode_context, encode_object

NODES = st.sampled_from(["n1", "n2", "n3", "n4", "nœud", "ノード"])
COUNTERS = st.integers(min_value=1, max_value=2**64 - 1)
SMALL_VALUES = st.one_of(st.none(), st.binary(max_size=300))
VALUES = st.one_of(
    SMALL_VALUES, st.sampled_from([4096, MAX_VALUE_BYTES]).map(lambda size: b"\xab" * size))
VECTORS = st.dictionaries(NODES, COUNTERS, max_size=6).map(VersionVector.from_mapping)


@st.composite
def siblings(draw: st.DrawFn, contexts: list[VersionVector],
             values: st.SearchStrategy[bytes | None]) -> Sibling:
    dot = Dot(draw(NODES), draw(COUNTERS))
    # reuse an earlier context now and then: siblings written from one read share it
    shared = draw(st.sampled_from(contexts)) if contexts and draw(st.booleans()) else None
    context = (shared if shared is not None else draw(VECTORS)).without([dot.node])
    contexts.append(context)
    timestamp_ns = draw(st.integers(min_value=0, max_value=2**64 - 1))
    return Sibling(dot, context, draw(values), timestamp_ns)


@st.composite
def objects(draw: st.DrawFn, values: st.SearchStrategy[bytes | None] = VALUES,
            ) -> VersionedObject:
    contexts: list[VersionVector] = []
    return VersionedObject.of(draw(st.lists(siblings(contexts, values), min_size=1,
                                            max_size=6)))


@settings(max_examples=150, deadline=None)
@given(objects())
def test_objects_round_trip(obj: VersionedObject) -> None:
    assert decode_object(encode_object(obj)) == obj


@settings(max_examples=200, deadline=None)
@given(VECTORS)
def test_context_tokens_round_trip(vv: VersionVector) -> None:
    token = encode_context(vv)
    assert (token == "") == (not vv.entries)
    assert token.isascii() and "=" not in token and "+" not in token and "/" not in token
    assert decode_context(token) == vv


@settings(max_examples=100, deadline=None)
@given(objects())
def test_an_objects_context_round_trips_as_a_token(obj: VersionedObject) -> None:
    assert decode_context(encode_context(obj.context())) == obj.context()


def _object_or_decode_error(data: bytes) -> None:
    try:
        obj = decode_object(data)
    except DecodeError:
        return
    assert decode_object(encode_object(obj)) == obj


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    _object_or_decode_error(data)


SMALL_OBJECTS = objects(SMALL_VALUES)


@settings(max_examples=300, deadline=None)
@given(SMALL_OBJECTS, st.data())
def test_byte_flips_decode_or_raise_decode_error(obj: VersionedObject, data: st.DataObject,
                                                 ) -> None:
    encoded = bytearray(encode_object(obj))
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255))
    _object_or_decode_error(bytes(encoded))


ANY_VALUE: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False), st.text(max_size=4), st.binary(max_size=4),
    st.lists(st.one_of(st.integers(-2, 3), st.text(max_size=2)), max_size=4),
)


def _paths(tree: Any, path: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """The index path of every value in a msgpack tree: the root, arrays and their items."""
    paths = [path]
    if isinstance(tree, list):
        for i, item in enumerate(tree):
            paths.extend(_paths(item, (*path, i)))
    return paths


def _at(tree: Any, path: tuple[int, ...]) -> Any:
    return tree if not path else _at(tree[path[0]], path[1:])


def _replace(tree: Any, path: tuple[int, ...], value: Any) -> Any:
    if not path:
        return value
    copy = list(tree)
    copy[path[0]] = _replace(tree[path[0]], path[1:], value)
    return copy


@settings(max_examples=300, deadline=None)
@given(SMALL_OBJECTS, st.data())
def test_any_field_replaced_decodes_or_raises_decode_error(obj: VersionedObject,
                                                           data: st.DataObject) -> None:
    tree = msgpack.unpackb(encode_object(obj))
    paths = _paths(tree)
    # values from elsewhere in the same object make the subtle cases: duplicate or unsorted
    # dots and context nodes
    borrowed = st.sampled_from(paths).map(lambda source: _at(tree, source))
    mutated = _replace(tree, data.draw(st.sampled_from(paths)),
                       data.draw(st.one_of(ANY_VALUE, borrowed)))
    _object_or_decode_error(msgpack.packb(mutated, use_bin_type=True))


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(max_size=40),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
            max_size=40),
))
def test_any_token_decodes_or_raises_a_malformed_context_error(token: str) -> None:
    try:
        vv = decode_context(token)
    except DecodeError as exc:
        assert str(exc).startswith("malformed causal context: ")
        return
    assert decode_context(encode_context(vv)) == vv
