"""Property tests of the wire codec.

Every record built from random fields round-trips exactly; and any input at all (random bytes,
byte-level mutations of valid encodings, field-level mutations of their msgpack trees) either
decodes to a well-formed record, which then round-trips, or raises ``DecodeError``: no other
exception ever escapes a decoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    DecodeError,
    Envelope,
    EnvelopeBatch,
    decode_batch_command,
    decode_command,
    decode_entry,
    decode_envelope,
    decode_hard_state,
    decode_kv_snapshot,
    decode_log_command,
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
    encode_log_command,
    encode_message,
    encode_messages_batch,
    encode_snapshot,
    encode_write_result,
)

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies ------------------------------------------------------------------------------

uints = st.integers(min_value=0, max_value=2**64 - 1)
small_uints = st.integers(min_value=0, max_value=1_000)
node_ids = st.text(min_size=1, max_size=6)
blobs = st.binary(max_size=64)


@st.composite
def memberships(draw: st.DrawFn) -> Membership:
    voters = draw(st.frozensets(node_ids, max_size=5))
    learners = draw(st.frozensets(node_ids.filter(lambda n: n not in voters), max_size=3))
    return Membership(voters, learners)


@st.composite
def entry_at(draw: st.DrawFn, index: int, term: int) -> Entry:
    kind = draw(st.sampled_from(EntryKind))
    membership = draw(memberships()) if kind is EntryKind.MEMBERSHIP else None
    return Entry(index, term, kind, draw(blobs), membership)


entries = st.tuples(uints, uints).flatmap(lambda index_term: entry_at(*index_term))


@st.composite
def append_entries(draw: st.DrawFn) -> AppendEntries:
    prev_log_index = draw(small_uints)
    prev_log_term = draw(small_uints)
    term = prev_log_term + draw(st.integers(0, 3))
    log: list[Entry] = []
    entry_term = prev_log_term
    for offset in range(draw(st.integers(0, 6))):
        entry_term = draw(st.integers(entry_term, term))
        log.append(draw(entry_at(prev_log_index + 1 + offset, entry_term)))
    return AppendEntries(
        term, draw(node_ids), draw(node_ids), prev_log_index, prev_log_term, tuple(log), draw(uints)
    )


snapshots = st.builds(
    Snapshot, st.builds(SnapshotMeta, uints, uints, memberships()), st.binary(max_size=128)
)

messages: st.SearchStrategy[Message] = st.one_of(
    append_entries(),
    st.builds(
        AppendEntriesResponse, uints, node_ids, node_ids, st.booleans(), uints, uints, uints, uints
    ),
    st.builds(RequestVote, uints, node_ids, node_ids, uints, uints, st.booleans(), st.booleans()),
    st.builds(RequestVoteResponse, uints, node_ids, node_ids, st.booleans(), st.booleans()),
    st.builds(Heartbeat, uints, node_ids, node_ids, uints, uints),
    st.builds(HeartbeatResponse, uints, node_ids, node_ids, uints),
    st.builds(InstallSnapshot, uints, node_ids, node_ids, snapshots),
    st.builds(TimeoutNow, uints, node_ids, node_ids),
)

hard_states = st.builds(HardState, uints, st.none() | node_ids, uints)
conditions = st.none() | st.builds(Condition, st.sampled_from(ConditionKind), blobs, uints)
commands = st.builds(
    Command,
    st.one_of(
        st.builds(Put, st.text(max_size=10), blobs, conditions),
        st.builds(Delete, st.text(max_size=10), conditions),
    ),
    st.text(max_size=10),
)
batch_commands = st.builds(
    BatchCommand,
    st.lists(
        st.one_of(
            st.builds(Put, st.text(max_size=10), blobs, conditions),
            st.builds(Delete, st.text(max_size=10), conditions),
            st.builds(Get, st.text(max_size=10)),
        ),
        min_size=1,
        max_size=5,
    ).map(tuple),
    st.text(max_size=10),
)
key_values = st.builds(KeyValue, st.text(max_size=10), blobs, uints, uints, uints)
write_results = st.builds(
    WriteResult, st.booleans(), uints, st.none() | key_values, st.none() | key_values
)
batch_results = st.builds(
    BatchResult,
    st.lists(write_results | st.builds(ReadResult, st.none() | key_values), min_size=1,
             max_size=4).map(tuple),
)
kv_snapshots = st.builds(
    KVSnapshotState,
    uints,
    uints,
    st.lists(key_values, max_size=4).map(tuple),
    st.lists(st.tuples(st.text(max_size=6), write_results | batch_results), max_size=3).map(tuple),
)
envelopes = st.builds(
    Envelope, st.just(BASE_FORMAT_VERSION), st.text(max_size=8), uints, messages)
batches = st.builds(
    EnvelopeBatch,
    st.just(BASE_FORMAT_VERSION),
    st.text(max_size=8),
    uints,
    st.lists(messages, max_size=4).map(tuple),
)


@dataclass(frozen=True, slots=True)
class Codec:
    """One record type: how to make one, write it and read it back."""

    name: str
    values: st.SearchStrategy[Any]
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], object]


CODECS = [
    Codec("message", messages, encode_message, decode_message),
    Codec(
        "envelope",
        envelopes,
        lambda e: encode_envelope(e.cluster_id, e.lamport, e.message),
        decode_envelope,
    ),
    Codec(
        "batch",
        batches,
        lambda b: encode_messages_batch(b.cluster_id, b.lamport, b.messages),
        decode_messages_batch,
    ),
    Codec("entry", entries, encode_entry, decode_entry),
    Codec("hard_state", hard_states, encode_hard_state, decode_hard_state),
    Codec("snapshot", snapshots, encode_snapshot, decode_snapshot),
    Codec("command", commands, encode_command, decode_command),
    Codec("batch_command", batch_commands, encode_batch_command, decode_batch_command),
    Codec("log_command", commands | batch_commands, encode_log_command, decode_log_command),
    Codec("write_result", write_results, encode_write_result, decode_write_result),
    Codec("kv_snapshot", kv_snapshots, encode_kv_snapshot, decode_kv_snapshot),
]
codecs = st.sampled_from(CODECS)
encodings = codecs.flatmap(lambda c: c.values.map(c.encode))


def check_decodes_or_rejects(codec: Codec, data: bytes) -> None:
    """``codec`` either raises DecodeError or returns a record that round-trips."""
    try:
        decoded = codec.decode(data)
    except DecodeError:
        return
    if isinstance(decoded, Envelope | EnvelopeBatch):
        # any readable version decodes; the encoder writes the oldest that expresses it
        decoded = replace(decoded, version=BASE_FORMAT_VERSION)
    assert codec.decode(codec.encode(decoded)) == decoded, codec.name


def check_total(data: bytes) -> None:
    """Every decoder either raises DecodeError or returns a record that round-trips."""
    for codec in CODECS:
        check_decodes_or_rejects(codec, data)


# --- round trips -----------------------------------------------------------------------------


@SETTINGS
@given(st.data())
def test_every_record_round_trips(data: st.DataObject) -> None:
    codec = data.draw(codecs)
    value = data.draw(codec.values)
    decoded = codec.decode(codec.encode(value))
    assert decoded == value
    assert type(decoded) is type(value)


@SETTINGS
@given(messages)
def test_message_encoding_is_deterministic(msg: Message) -> None:
    data = encode_message(msg)
    assert encode_message(decode_message(data)) == data


# --- totality: DecodeError or a valid record, nothing else ------------------------------------


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    check_total(data)


@SETTINGS
@given(encodings, st.data())
def test_byte_mutations_decode_or_raise_decode_error(valid: bytes, data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(valid) - 1))
    mutation = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
    match mutation:
        case "flip":
            bit = 1 << data.draw(st.integers(0, 7))
            mutated = valid[:position] + bytes([valid[position] ^ bit]) + valid[position + 1 :]
        case "truncate":
            mutated = valid[:position]
        case "insert":
            mutated = (
                valid[:position] + data.draw(st.binary(min_size=1, max_size=4)) + valid[position:]
            )
        case "delete":
            mutated = valid[:position] + valid[position + data.draw(st.integers(1, 4)) :]
        case _:
            mutated = (
                valid[:position] + bytes([data.draw(st.integers(0, 255))]) + valid[position + 1 :]
            )
    check_total(mutated)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-3, max_value=12)
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=4)
    | st.binary(max_size=4),
    lambda children: st.lists(children, max_size=4),
    max_leaves=6,
)

HOSTILE_VALUES: list[object] = [
    None,
    True,
    False,
    -1,
    0,
    1,
    99,
    2**64 - 1,
    2.5,
    "",
    "x",
    b"",
    b"x",
    [],
]
"""Stand-ins for any one field: wrong types, negatives, unknown tags, empty ids, nesting."""


def tree_paths(tree: object, path: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """Paths (indices from the root) to every node of an unpacked msgpack tree."""
    paths = [path]
    if isinstance(tree, list):
        for i, child in enumerate(tree):
            paths.extend(tree_paths(child, (*path, i)))
    return paths


def edited(tree: list[Any], path: tuple[int, ...], edit: str, value: object) -> bytes:
    """``tree`` re-packed with one edit at ``path``: replace the node with ``value``, drop it,
    or insert ``value`` before it."""
    copy = msgpack.unpackb(msgpack.packb(tree, use_bin_type=True), raw=False)
    parent = copy
    for i in path[:-1]:
        parent = parent[i]
    match edit:
        case "replace":
            parent[path[-1]] = value
        case "drop":
            del parent[path[-1]]
        case "insert":
            parent.insert(path[-1], value)
        case _:
            raise AssertionError(f"unknown edit {edit!r}")
    return msgpack.packb(copy, use_bin_type=True)


@settings(SETTINGS, max_examples=25)
@given(st.data())
def test_every_single_field_edit_decodes_or_raises_decode_error(data: st.DataObject) -> None:
    codec = data.draw(codecs)
    tree = msgpack.unpackb(codec.encode(data.draw(codec.values)), raw=False)
    for path in tree_paths(tree)[1:]:
        for value in HOSTILE_VALUES:
            check_decodes_or_rejects(codec, edited(tree, path, "replace", value))
        check_decodes_or_rejects(codec, edited(tree, path, "drop", None))
        check_decodes_or_rejects(codec, edited(tree, path, "insert", 0))


@settings(SETTINGS, max_examples=200)
@given(encodings, st.data())
def test_random_field_edits_decode_or_raise_decode_error(valid: bytes, data: st.DataObject) -> None:
    tree = msgpack.unpackb(valid, raw=False)
    path = data.draw(st.sampled_from(tree_paths(tree)[1:]))
    edit = data.draw(st.sampled_from(["replace", "drop", "insert"]))
    check_total(edited(tree, path, edit, data.draw(msgpack_values)))
