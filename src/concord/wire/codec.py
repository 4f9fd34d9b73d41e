"""The msgpack wire and storage format for Raft messages, log records and KV state.

This module owns every byte layout of these types: peer RPC envelopes (one message or a batch,
or a fragment of a batch too large for one stream frame), log entries, hard state, snapshots,
KV commands (single and batched), write results and KV snapshots. It is the only place msgpack
meets them. ``docs/wire.md`` describes the format.

Every top-level encoding is an array ``[format_version, record_kind, ...]``; inside it, every
value is a positional array (never a map) whose first element is an append-only tag where the
shape varies. Decoding is strict and bounded: any input that is not exactly a valid record of
the requested kind raises ``DecodeError`` naming the offending field, and nothing else escapes.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, NoReturn, TypeAlias, TypeVar, assert_never

import msgpack

from concord.kv.commands import (
    BatchCommand,
    BatchOp,
    BatchOpResult,
    BatchResult,
    Command,
    Condition,
    ConditionKind,
    Delete,
    Get,
    KeyValue,
    Operation,
    Put,
    ReadResult,
    WriteResult,
)
from concord.kv.fsm import KVSnapshotState, RememberedResult
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

FORMAT_VERSION: Final = 3
"""The newest format version this build reads (and writes). Bump it when a tag or field is
appended; a decoder refuses versions newer than its own. Each record is written with the
oldest version that has everything it holds, so a record without the newer shapes reads the
same as before in builds that only know the older versions."""

OLDEST_READABLE_VERSION: Final = 1
"""The oldest format version this build still reads."""

BASE_FORMAT_VERSION: Final = 1
"""The version of every record that holds nothing added since version 1."""

BATCH_FORMAT_VERSION: Final = 2
"""Version 2 added BATCH_COMMAND records (with the GET operation) and remembered batch results
in KV snapshots; records holding them are written with this version."""

FRAGMENT_FORMAT_VERSION: Final = 3
"""Version 3 added FRAGMENT records (a piece of a batch too large for one peer-stream frame);
they are written with this version."""

MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
"""Largest encoded input any decoder accepts (64 MiB), checked before unpacking."""

MAX_BIN_BYTES: Final = MAX_MESSAGE_BYTES
"""Largest single bytes value (entry data, KV value) in a message or log record."""

MAX_SNAPSHOT_BYTES: Final = 16 * 1024 * 1024 * 1024
"""Largest snapshot record (and the state machine data inside it) the decoders accept from
storage: 16 GiB. Snapshots grow with the data (about 270 bytes per 256-byte value), so the
message bound would refuse to restart a node holding more than about 240,000 keys."""

FRAGMENT_OVERHEAD_BYTES: Final = 64
"""Most bytes a fragment record adds around its chunk (header, four ints, bin length): a
fragment of a chunk of ``frame_bytes - FRAGMENT_OVERHEAD_BYTES`` fits in ``frame_bytes``."""

MAX_SNAPSHOT_ARRAY_LEN: Final = 256 * 1024 * 1024
"""Most keys (or remembered requests) in one state machine snapshot."""

MAX_STR_BYTES: Final = 1024 * 1024
"""Largest single string in UTF-8 bytes (node id, cluster id, key, request id): 1 MiB."""

MAX_ARRAY_LEN: Final = 4 * 1024 * 1024
"""Most elements in one array (entries in a message, messages in a batch, keys in a KV
snapshot). Nesting depth needs no limit of its own: msgpack's unpacker has a fixed stack and
every layout here has a fixed depth, so anything nested deeper than the layout is rejected."""


BytesLike: TypeAlias = bytes | bytearray | memoryview
"""What the decoders read: any contiguous bytes-like object."""


class DecodeError(ValueError):
    """The input is not a valid encoding of the requested record; the message says why."""


class RecordKind(IntEnum):
    """What a top-level encoding holds (its second element). Values are append-only."""

    ENVELOPE = 1
    BATCH = 2
    MESSAGE = 3
    ENTRY = 4
    HARD_STATE = 5
    SNAPSHOT = 6
    COMMAND = 7
    WRITE_RESULT = 8
    KV_SNAPSHOT = 9
    BATCH_COMMAND = 10  # since version 2
    FRAGMENT = 11  # since version 3


class MessageTag(IntEnum):
    """Which Raft peer message a message array holds (its first element). Append-only."""

    APPEND_ENTRIES = 1
    APPEND_ENTRIES_RESPONSE = 2
    REQUEST_VOTE = 3
    REQUEST_VOTE_RESPONSE = 4
    HEARTBEAT = 5
    HEARTBEAT_RESPONSE = 6
    INSTALL_SNAPSHOT = 7
    TIMEOUT_NOW = 8


class OperationTag(IntEnum):
    """Which KV operation a command carries (first element of the operation array). Append-only."""

    PUT = 1
    DELETE = 2
    GET = 3  # since version 2; only inside a BATCH_COMMAND


class ResultTag(IntEnum):
    """Which outcome an element of a remembered batch result holds (its first element).
    Append-only; since version 2."""

    WRITE = 1
    READ = 2


@dataclass(frozen=True, slots=True)
class Envelope:
    """One peer message as sent over RPC, with the sender's cluster id and Lamport clock."""

    version: int
    cluster_id: str
    lamport: int
    message: Message


@dataclass(frozen=True, slots=True)
class EnvelopeBatch:
    """Several peer messages for one peer in one request body, in send order."""

    version: int
    cluster_id: str
    lamport: int
    messages: tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class Fragment:
    """Piece ``index`` of ``count`` of an encoded batch of ``total_bytes`` bytes, sent as
    ``transfer_id`` on a peer stream; the chunks in index order are the batch's bytes."""

    transfer_id: int
    index: int
    count: int
    total_bytes: int
    chunk: bytes


# --- encoding ------------------------------------------------------------------------------


def _pack(record: object) -> bytes:
    return msgpack.packb(record, use_bin_type=True)


def _membership_body(membership: Membership) -> tuple[list[str], list[str]]:
    """Voters and learners, sorted so that equal memberships encode to equal bytes."""
    return sorted(membership.voters), sorted(membership.learners)


def _entry_body(entry: Entry) -> tuple[object, ...]:
    if entry.membership is None:
        return (entry.index, entry.term, entry.kind, entry.data)
    voters, learners = _membership_body(entry.membership)
    return (entry.index, entry.term, entry.kind, entry.data, voters, learners)


def _snapshot_body(snapshot: Snapshot) -> tuple[object, ...]:
    meta = snapshot.meta
    voters, learners = _membership_body(meta.membership)
    return (meta.index, meta.term, voters, learners, snapshot.data)


def _message_body(msg: Message) -> tuple[object, ...]:
    match msg:
        case AppendEntries():
            entries = msg.entries
            assert not entries or (
                entries[0].index == msg.prev_log_index + 1
                and entries[-1].index == msg.prev_log_index + len(entries)
            ), "AppendEntries must carry consecutive entries after prev_log_index"
            return (
                MessageTag.APPEND_ENTRIES,
                msg.term,
                msg.sender,
                msg.recipient,
                msg.prev_log_index,
                msg.prev_log_term,
                msg.leader_commit,
                [
                    (e.index, e.term, e.kind, e.data) if e.membership is None else _entry_body(e)
                    for e in entries
                ],
            )
        case AppendEntriesResponse():
            return (
                MessageTag.APPEND_ENTRIES_RESPONSE,
                msg.term,
                msg.sender,
                msg.recipient,
                msg.success,
                msg.match_index,
                msg.rejected_index,
                msg.hint_index,
                msg.hint_term,
            )
        case RequestVote():
            return (
                MessageTag.REQUEST_VOTE,
                msg.term,
                msg.sender,
                msg.recipient,
                msg.last_log_index,
                msg.last_log_term,
                msg.pre_vote,
                msg.transfer,
            )
        case RequestVoteResponse():
            return (
                MessageTag.REQUEST_VOTE_RESPONSE,
                msg.term,
                msg.sender,
                msg.recipient,
                msg.granted,
                msg.pre_vote,
            )
        case Heartbeat():
            return (
                MessageTag.HEARTBEAT,
                msg.term,
                msg.sender,
                msg.recipient,
                msg.commit,
                msg.read_context,
            )
        case HeartbeatResponse():
            return (
                MessageTag.HEARTBEAT_RESPONSE,
                msg.term,
                msg.sender,
                msg.recipient,
                msg.read_context,
            )
        case InstallSnapshot():
            return (
                MessageTag.INSTALL_SNAPSHOT,
                msg.term,
                msg.sender,
                msg.recipient,
                _snapshot_body(msg.snapshot),
            )
        case TimeoutNow():
            return (MessageTag.TIMEOUT_NOW, msg.term, msg.sender, msg.recipient)
        case _:
            assert_never(msg)


def _condition_body(condition: Condition | None) -> tuple[object, ...] | None:
    if condition is None:
        return None
    return (condition.kind, condition.value, condition.revision)


def _operation_body(op: BatchOp) -> tuple[object, ...]:
    match op:
        case Put():
            return (OperationTag.PUT, op.key, op.value, _condition_body(op.condition))
        case Delete():
            return (OperationTag.DELETE, op.key, _condition_body(op.condition))
        case Get():
            return (OperationTag.GET, op.key)
        case _:
            assert_never(op)


def _key_value_body(kv: KeyValue | None) -> tuple[object, ...] | None:
    if kv is None:
        return None
    return (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version)


def _write_result_body(result: WriteResult) -> tuple[object, ...]:
    return (
        result.succeeded,
        result.revision,
        _key_value_body(result.prev),
        _key_value_body(result.current),
    )


def _batch_outcome_body(outcome: BatchOpResult) -> tuple[object, ...]:
    match outcome:
        case WriteResult():
            return (ResultTag.WRITE, *_write_result_body(outcome))
        case ReadResult():
            return (ResultTag.READ, _key_value_body(outcome.current))
        case _:
            assert_never(outcome)


def _remembered_body(request_id: str, result: RememberedResult) -> tuple[object, ...]:
    """``[request_id, write_result]``, or ``[request_id, nil, [outcome, ...]]`` for a batch."""
    if isinstance(result, WriteResult):
        return (request_id, _write_result_body(result))
    return (request_id, None, [_batch_outcome_body(outcome) for outcome in result.results])


def encode_message(msg: Message) -> bytes:
    """Encode one peer message on its own (no cluster id or clock)."""
    return _pack((BASE_FORMAT_VERSION, RecordKind.MESSAGE, _message_body(msg)))


def encode_envelope(cluster_id: str, lamport: int, msg: Message) -> bytes:
    """Encode one peer message for RPC, stamped with the cluster id and sender's Lamport clock."""
    assert lamport >= 0, "a Lamport clock is never negative"
    return _pack(
        (BASE_FORMAT_VERSION, RecordKind.ENVELOPE, cluster_id, lamport, _message_body(msg)))


def encode_messages_batch(cluster_id: str, lamport: int, msgs: Sequence[Message]) -> bytes:
    """Encode several messages for one peer in one request body, keeping their order."""
    assert lamport >= 0, "a Lamport clock is never negative"
    bodies = [_message_body(msg) for msg in msgs]
    return _pack((BASE_FORMAT_VERSION, RecordKind.BATCH, cluster_id, lamport, bodies))


_EMPTY_BIN: Final = b"\xc4\x00"
"""msgpack's empty bin: how a record encoded with a stub image in place of a snapshot's ends."""


def _head_before_image(head: bytes, image_size: int) -> bytes:
    """``head``, a record encoded with an empty image as its last field, turned into the
    bytes that precede an image of ``image_size`` bytes: ``head + image`` is then the record
    as ``_pack`` would encode it with the image in place. Large images stay where they are:
    packing one copies it in a single C call that holds the GIL (at about 0.7 GB/s, 0.4 s
    for 277 MB, and over a second on a busy machine), stalling the event loop."""
    assert head.endswith(_EMPTY_BIN), "the image is the record's last field"
    if image_size <= 0xFF:
        prefix = bytes((0xC4, image_size))
    elif image_size <= 0xFFFF:
        prefix = b"\xc5" + image_size.to_bytes(2, "big")
    else:
        assert image_size <= 0xFFFF_FFFF, "msgpack's largest bin is 4 GiB - 1"
        prefix = b"\xc6" + image_size.to_bytes(4, "big")
    return head[:-len(_EMPTY_BIN)] + prefix


def encode_snapshot_batch(cluster_id: str, lamport: int,
                          msg: InstallSnapshot) -> tuple[bytes, bytes]:
    """``encode_messages_batch(cluster_id, lamport, [msg])`` as two parts, the layout's head
    and the snapshot image (its last field), so that a large image is streamed as it is
    instead of copied."""
    image = msg.snapshot.data
    stub = dataclasses.replace(msg, snapshot=Snapshot(msg.snapshot.meta, b""))
    head = encode_messages_batch(cluster_id, lamport, [stub])
    return _head_before_image(head, len(image)), image


def encode_fragment(transfer_id: int, index: int, count: int, total_bytes: int,
                    chunk: BytesLike) -> bytes:
    """Encode piece ``index`` of ``count`` of a ``total_bytes``-byte batch (see ``Fragment``)."""
    size = memoryview(chunk).nbytes
    assert transfer_id >= 0 and 0 <= index < count <= total_bytes <= MAX_SNAPSHOT_BYTES
    assert 0 < size <= total_bytes, "a fragment carries a non-empty part of the batch"
    return _pack((FRAGMENT_FORMAT_VERSION, RecordKind.FRAGMENT, transfer_id, index, count,
                  total_bytes, chunk))


def encode_entry(e: Entry) -> bytes:
    """Encode one log entry as a standalone record (for the write-ahead log)."""
    return _pack((BASE_FORMAT_VERSION, RecordKind.ENTRY, _entry_body(e)))


def encode_hard_state(h: HardState) -> bytes:
    """Encode the durable term, vote and commit index."""
    return _pack((BASE_FORMAT_VERSION, RecordKind.HARD_STATE, (h.term, h.vote, h.commit)))


def encode_snapshot(s: Snapshot) -> bytes:
    """Encode a snapshot with its metadata (the state-machine image stays opaque bytes)."""
    return _pack((BASE_FORMAT_VERSION, RecordKind.SNAPSHOT, _snapshot_body(s)))


def encode_snapshot_parts(s: Snapshot) -> tuple[bytes, bytes]:
    """``encode_snapshot(s)`` as two parts, the record's head and the image (its last
    field), for writing a large image as it is instead of copying it into the record."""
    head = encode_snapshot(Snapshot(s.meta, b""))
    return _head_before_image(head, len(s.data)), s.data


def encode_command(c: Command) -> bytes:
    """Encode a KV write as it is proposed to the log (the data of a COMMAND entry)."""
    body = (c.request_id, _operation_body(c.op))
    return _pack((BASE_FORMAT_VERSION, RecordKind.COMMAND, body))


def encode_batch_command(b: BatchCommand) -> bytes:
    """Encode a batch as it is proposed to the log (the data of a COMMAND entry)."""
    assert b.ops, "a batch holds at least one operation"
    body = (b.request_id, [_operation_body(op) for op in b.ops])
    return _pack((BATCH_FORMAT_VERSION, RecordKind.BATCH_COMMAND, body))


def encode_log_command(c: Command | BatchCommand) -> bytes:
    """``encode_command`` or ``encode_batch_command``, whichever ``c`` needs."""
    return encode_batch_command(c) if isinstance(c, BatchCommand) else encode_command(c)


def encode_write_result(r: WriteResult) -> bytes:
    """Encode the outcome of one applied command."""
    return _pack((BASE_FORMAT_VERSION, RecordKind.WRITE_RESULT, _write_result_body(r)))


KV_SNAPSHOT_PIECE_KEYS: Final = 1024
"""Keys (or remembered requests) in one piece of ``kv_snapshot_pieces``: about a
millisecond of packing."""


def kv_snapshot_pieces(state: KVSnapshotState) -> Iterator[bytes]:
    """``encode_kv_snapshot(state)`` in pieces of at most ``KV_SNAPSHOT_PIECE_KEYS`` keys
    (or remembered requests) each, in order; their concatenation is the encoding.

    The bytes are those of one ``msgpack.packb`` of ``[version, kind, body]``, packed one key
    and one remembered request at a time. A caller encoding on a thread beside an event loop
    gets control back between pieces: compiled by mypyc, one call over a whole state never
    hands the GIL over (interpreted code does, at the switch interval), and a single pack or
    join of a large state holds it for as long as the copy takes (about 1 s to pack 700,000
    keys, 0.57 s to join 277 MB on a busy machine).
    """
    remembered = tuple(state.remembered_requests)  # may be built as read: read it once
    has_batches = any(isinstance(result, BatchResult) for _, result in remembered)
    version = BATCH_FORMAT_VERSION if has_batches else BASE_FORMAT_VERSION
    packer = msgpack.Packer(use_bin_type=True)
    pack = packer.pack
    piece = [packer.pack_array_header(3), pack(version), pack(RecordKind.KV_SNAPSHOT),
             packer.pack_array_header(4), pack(state.applied_index), pack(state.revision),
             packer.pack_array_header(len(state.key_values))]
    for kv in state.key_values:
        piece.append(pack(_key_value_body(kv)))
        if len(piece) >= KV_SNAPSHOT_PIECE_KEYS:
            yield b"".join(piece)
            piece = []
    piece.append(packer.pack_array_header(len(remembered)))
    for request_id, result in remembered:
        piece.append(pack(_remembered_body(request_id, result)))
        if len(piece) >= KV_SNAPSHOT_PIECE_KEYS:
            yield b"".join(piece)
            piece = []
    yield b"".join(piece)


def encode_kv_snapshot(state: KVSnapshotState) -> bytes:
    """Encode the KV state machine's snapshot (the data of a Raft snapshot): the pieces of
    ``kv_snapshot_pieces`` written into one buffer, whose bytes are handed out without a
    copy (CPython's ``BytesIO.getvalue``)."""
    buffer = io.BytesIO()
    for piece in kv_snapshot_pieces(state):
        buffer.write(piece)
    return buffer.getvalue()


# --- decoding: scalar checks ---------------------------------------------------------------

_Fields = tuple[object, ...]
_TagT = TypeVar("_TagT", bound=IntEnum)


def _fail(where: str, problem: str) -> NoReturn:
    raise DecodeError(f"{where}: {problem}")


_MSGPACK_TYPE_NAMES: Final = {tuple: "array", dict: "map", type(None): "nil"}


def _describe(value: object) -> str:
    """A short, bounded rendering of an unexpected value for error messages."""
    type_name = _MSGPACK_TYPE_NAMES.get(type(value), type(value).__name__)
    if value is None:
        return type_name
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type_name} {text}"


def _uint(value: object, where: str) -> int:
    if type(value) is not int:
        _fail(where, f"expected a non-negative int, got {_describe(value)}")
    if value < 0:
        _fail(where, f"must not be negative, got {value}")
    return value


def _bool(value: object, where: str) -> bool:
    if type(value) is not bool:
        _fail(where, f"expected a bool, got {_describe(value)}")
    return value


def _bytes(value: object, where: str) -> bytes:
    if type(value) is not bytes:
        _fail(where, f"expected bytes, got {_describe(value)}")
    return value


def _str(value: object, where: str) -> str:
    if type(value) is not str:
        _fail(where, f"expected a str, got {_describe(value)}")
    return value


def _node_id(value: object, where: str) -> str:
    node = _str(value, where)
    if not node:
        _fail(where, "a node id must not be empty")
    return node


def _tag(value: object, tags: type[_TagT], where: str) -> _TagT:
    if type(value) is not int:
        _fail(where, f"expected an int {tags.__name__}, got {_describe(value)}")
    try:
        return tags(value)
    except ValueError:
        known = ", ".join(f"{t.value}={t.name}" for t in tags)
        _fail(where, f"unknown {tags.__name__} {value} (known: {known})")


def _array(value: object, where: str) -> _Fields:
    if type(value) is not tuple:
        _fail(where, f"expected an array, got {_describe(value)}")
    return value


def _fields(value: object, arity: int, where: str) -> _Fields:
    fields = _array(value, where)
    if len(fields) != arity:
        _fail(where, f"expected {arity} fields, got {len(fields)}")
    return fields


# --- decoding: records ---------------------------------------------------------------------


def _unpack(data: object, what: str, *, snapshot: bool = False) -> object:
    """msgpack -> plain values (arrays as tuples), refusing maps, extensions and oversizes.

    ``snapshot``: the input is a snapshot record read from storage, bounded by
    ``MAX_SNAPSHOT_BYTES`` and ``MAX_SNAPSHOT_ARRAY_LEN`` instead of the message bounds."""
    if type(data) is bytes:  # the common case, without a memoryview or a union's isinstance
        size_bytes = len(data)
    elif isinstance(data, bytearray | memoryview):
        size_bytes = memoryview(data).nbytes
    else:
        _fail(what, f"expected bytes to decode, got {type(data).__name__}")
    limit, limit_name = ((MAX_SNAPSHOT_BYTES, "MAX_SNAPSHOT_BYTES") if snapshot
                         else (MAX_MESSAGE_BYTES, "MAX_MESSAGE_BYTES"))
    if size_bytes > limit:
        _fail(what, f"input of {size_bytes} bytes exceeds {limit_name}={limit}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            strict_map_key=True,
            max_bin_len=MAX_SNAPSHOT_BYTES if snapshot else MAX_BIN_BYTES,
            max_str_len=MAX_STR_BYTES,
            max_array_len=MAX_SNAPSHOT_ARRAY_LEN if snapshot else MAX_ARRAY_LEN,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # the unpacker's failures all mean "not valid msgpack here"
        detail = str(exc) or "malformed"
        _fail(what, f"not valid msgpack ({type(exc).__name__}: {detail})")


def _open_record(data: BytesLike, kind: RecordKind, arity: int, *,
                 snapshot: bool = False) -> _Fields:
    """Check the ``[version, kind, ...]`` header and return all ``arity`` fields."""
    return _check_record(_unpack(data, kind.name.lower(), snapshot=snapshot), kind, arity)


def _check_record(record: object, kind: RecordKind, arity: int) -> _Fields:
    """``_open_record`` for a record already unpacked."""
    fields = _array(record, kind.name.lower())
    _check_record_head(fields[:2], len(fields), kind, arity)
    return fields


def _check_record_head(head: _Fields, field_count: int, kind: RecordKind, arity: int) -> None:
    """Check a record's ``[version, kind]`` (``head``) and that it has ``arity`` fields."""
    what = kind.name.lower()
    if field_count < 2:
        _fail(what, f"expected [format_version, record_kind, ...], got {field_count} fields")
    version = head[0]
    if type(version) is not int:
        _fail(f"{what}.version", f"expected an int, got {_describe(version)}")
    if version > FORMAT_VERSION:
        _fail(
            f"{what}.version",
            f"format version {version} is newer than this build reads "
            f"({OLDEST_READABLE_VERSION}..{FORMAT_VERSION})",
        )
    if version < OLDEST_READABLE_VERSION:
        _fail(f"{what}.version", f"unknown format version {version}")
    found = _tag(head[1], RecordKind, f"{what}.record_kind")
    if found is not kind:
        _fail(what, f"expected record kind {kind.name}, got {found.name}")
    if field_count != arity:
        _fail(what, f"expected {arity} fields, got {field_count}")


def _node_ids(value: object, where: str) -> frozenset[str]:
    items = _array(value, where)
    nodes = frozenset(_node_id(item, f"{where}[{i}]") for i, item in enumerate(items))
    if len(nodes) != len(items):
        _fail(where, "lists a node more than once")
    return nodes


def _membership(voters_raw: object, learners_raw: object, where: str) -> Membership:
    voters = _node_ids(voters_raw, f"{where}.voters")
    learners = _node_ids(learners_raw, f"{where}.learners")
    both = voters & learners
    if both:
        _fail(where, f"nodes are both voters and learners: {sorted(both)}")
    return Membership(voters, learners)


_PLAIN_ENTRY_KINDS: Final = {
    EntryKind.COMMAND.value: EntryKind.COMMAND,
    EntryKind.NOOP.value: EntryKind.NOOP,
}

# Entry's dataclass __init__ costs more than decoding the entry does (a frozen dataclass sets
# each field through object.__setattr__, then __post_init__ checks the kind). The hot path
# below fills the slots of entries it has fully validated directly, which halves the decode
# time of an AppendEntries; the assertion keeps that in step with Entry's fields.
_ENTRY_FIELDS: Final = ("index", "term", "kind", "data", "membership")
assert tuple(f.name for f in dataclasses.fields(Entry)) == _ENTRY_FIELDS, (
    "update the AppendEntries hot path"
)
_ENTRY_SLOT_SETTERS: Final[tuple[Callable[[Entry, object], None], ...]] = tuple(
    Entry.__dict__[name].__set__ for name in _ENTRY_FIELDS
)


def _decode_entry_body(value: object, where: str) -> Entry:
    fields = _array(value, where)
    if len(fields) not in (4, 6):
        _fail(where, f"expected 4 fields (6 for a membership entry), got {len(fields)}")
    index = _uint(fields[0], f"{where}.index")
    term = _uint(fields[1], f"{where}.term")
    kind = _tag(fields[2], EntryKind, f"{where}.kind")
    data = _bytes(fields[3], f"{where}.data")
    if kind is EntryKind.MEMBERSHIP:
        if len(fields) != 6:
            _fail(where, f"a MEMBERSHIP entry needs 6 fields, got {len(fields)}")
        return Entry(index, term, kind, data, _membership(fields[4], fields[5], where))
    if len(fields) != 4:
        _fail(where, f"a {kind.name} entry needs 4 fields, got {len(fields)}")
    return Entry(index, term, kind, data)


def _decode_entries(
    value: object, prev_log_index: int, prev_log_term: int, term: int
) -> tuple[Entry, ...]:
    """The hot path: entries of an AppendEntries, consecutive after ``prev_log_index`` and with
    terms non-decreasing from ``prev_log_term`` up to the message's ``term``."""
    items = _array(value, "AppendEntries.entries")
    new_entry = object.__new__
    set_index, set_term, set_kind, set_data, set_membership = _ENTRY_SLOT_SETTERS
    entries: list[Entry] = []
    expected_index = prev_log_index + 1
    min_term = prev_log_term
    for position, item in enumerate(items):
        # Fast path: a well-formed COMMAND or NOOP entry in its place. Anything else goes
        # through the general decoder, which accepts the same entries and names what is wrong.
        if type(item) is tuple and len(item) == 4:
            index, entry_term, kind_value, data = item
            if (
                type(index) is int
                and type(entry_term) is int
                and type(kind_value) is int
                and type(data) is bytes
                and index == expected_index
                and min_term <= entry_term <= term
                and kind_value in _PLAIN_ENTRY_KINDS
            ):
                entry = new_entry(Entry)
                set_index(entry, index)
                set_term(entry, entry_term)
                set_kind(entry, _PLAIN_ENTRY_KINDS[kind_value])
                set_data(entry, data)
                set_membership(entry, None)
                entries.append(entry)
                expected_index += 1
                min_term = entry_term
                continue
        where = f"AppendEntries.entries[{position}]"
        entry = _decode_entry_body(item, where)
        if entry.index != expected_index:
            _fail(
                f"{where}.index",
                f"expected {expected_index} (consecutive after prev_log_index), got {entry.index}",
            )
        if not min_term <= entry.term <= term:
            _fail(
                f"{where}.term",
                f"{entry.term} is outside [{min_term}, {term}] (terms never decrease along the "
                "log and never exceed the leader's term)",
            )
        entries.append(entry)
        expected_index += 1
        min_term = entry.term
    return tuple(entries)


def _decode_snapshot_body(value: object, where: str) -> Snapshot:
    fields = _fields(value, 5, where)
    index = _uint(fields[0], f"{where}.index")
    term = _uint(fields[1], f"{where}.term")
    membership = _membership(fields[2], fields[3], f"{where}.membership")
    data = _bytes(fields[4], f"{where}.data")
    return Snapshot(SnapshotMeta(index, term, membership), data)


def _header(fields: _Fields, name: str) -> tuple[int, str, str]:
    """The fields every message starts with after its tag: term, sender, recipient."""
    return (
        _uint(fields[1], f"{name}.term"),
        _node_id(fields[2], f"{name}.sender"),
        _node_id(fields[3], f"{name}.recipient"),
    )


def _decode_append_entries(fields: _Fields) -> AppendEntries:
    term, sender, recipient = _header(fields, "AppendEntries")
    prev_log_index = _uint(fields[4], "AppendEntries.prev_log_index")
    prev_log_term = _uint(fields[5], "AppendEntries.prev_log_term")
    leader_commit = _uint(fields[6], "AppendEntries.leader_commit")
    if prev_log_term > term:
        _fail("AppendEntries.prev_log_term", f"{prev_log_term} exceeds the leader's term {term}")
    entries = _decode_entries(fields[7], prev_log_index, prev_log_term, term)
    return AppendEntries(
        term, sender, recipient, prev_log_index, prev_log_term, entries, leader_commit
    )


def _decode_append_entries_response(fields: _Fields) -> AppendEntriesResponse:
    term, sender, recipient = _header(fields, "AppendEntriesResponse")
    return AppendEntriesResponse(
        term,
        sender,
        recipient,
        success=_bool(fields[4], "AppendEntriesResponse.success"),
        match_index=_uint(fields[5], "AppendEntriesResponse.match_index"),
        rejected_index=_uint(fields[6], "AppendEntriesResponse.rejected_index"),
        hint_index=_uint(fields[7], "AppendEntriesResponse.hint_index"),
        hint_term=_uint(fields[8], "AppendEntriesResponse.hint_term"),
    )


def _decode_request_vote(fields: _Fields) -> RequestVote:
    term, sender, recipient = _header(fields, "RequestVote")
    return RequestVote(
        term,
        sender,
        recipient,
        last_log_index=_uint(fields[4], "RequestVote.last_log_index"),
        last_log_term=_uint(fields[5], "RequestVote.last_log_term"),
        pre_vote=_bool(fields[6], "RequestVote.pre_vote"),
        transfer=_bool(fields[7], "RequestVote.transfer"),
    )


def _decode_request_vote_response(fields: _Fields) -> RequestVoteResponse:
    term, sender, recipient = _header(fields, "RequestVoteResponse")
    return RequestVoteResponse(
        term,
        sender,
        recipient,
        granted=_bool(fields[4], "RequestVoteResponse.granted"),
        pre_vote=_bool(fields[5], "RequestVoteResponse.pre_vote"),
    )


def _decode_heartbeat(fields: _Fields) -> Heartbeat:
    term, sender, recipient = _header(fields, "Heartbeat")
    return Heartbeat(
        term,
        sender,
        recipient,
        commit=_uint(fields[4], "Heartbeat.commit"),
        read_context=_uint(fields[5], "Heartbeat.read_context"),
    )


def _decode_heartbeat_response(fields: _Fields) -> HeartbeatResponse:
    term, sender, recipient = _header(fields, "HeartbeatResponse")
    return HeartbeatResponse(
        term, sender, recipient, read_context=_uint(fields[4], "HeartbeatResponse.read_context")
    )


def _decode_install_snapshot(fields: _Fields) -> InstallSnapshot:
    term, sender, recipient = _header(fields, "InstallSnapshot")
    snapshot = _decode_snapshot_body(fields[4], "InstallSnapshot.snapshot")
    return InstallSnapshot(term, sender, recipient, snapshot)


def _decode_timeout_now(fields: _Fields) -> TimeoutNow:
    term, sender, recipient = _header(fields, "TimeoutNow")
    return TimeoutNow(term, sender, recipient)


_MESSAGE_LAYOUTS: Final[dict[MessageTag, tuple[str, int, Callable[[_Fields], Message]]]] = {
    MessageTag.APPEND_ENTRIES: ("AppendEntries", 8, _decode_append_entries),
    MessageTag.APPEND_ENTRIES_RESPONSE: (
        "AppendEntriesResponse",
        9,
        _decode_append_entries_response,
    ),
    MessageTag.REQUEST_VOTE: ("RequestVote", 8, _decode_request_vote),
    MessageTag.REQUEST_VOTE_RESPONSE: ("RequestVoteResponse", 6, _decode_request_vote_response),
    MessageTag.HEARTBEAT: ("Heartbeat", 6, _decode_heartbeat),
    MessageTag.HEARTBEAT_RESPONSE: ("HeartbeatResponse", 5, _decode_heartbeat_response),
    MessageTag.INSTALL_SNAPSHOT: ("InstallSnapshot", 5, _decode_install_snapshot),
    MessageTag.TIMEOUT_NOW: ("TimeoutNow", 4, _decode_timeout_now),
}
"""Per tag: the class name, the array's arity (tag included) and the decoder of its fields."""

assert set(_MESSAGE_LAYOUTS) == set(MessageTag), "every message tag has a layout"


def _decode_message_body(value: object, where: str) -> Message:
    fields = _array(value, where)
    if not fields:
        _fail(where, "expected [tag, term, sender, recipient, ...], got an empty array")
    tag = _tag(fields[0], MessageTag, f"{where}.tag")
    name, arity, decode = _MESSAGE_LAYOUTS[tag]
    if len(fields) != arity:
        _fail(f"{where} ({name})", f"expected {arity} fields, got {len(fields)}")
    return decode(fields)


def _decode_condition(value: object, where: str) -> Condition | None:
    if value is None:
        return None
    fields = _fields(value, 3, where)
    return Condition(
        kind=_tag(fields[0], ConditionKind, f"{where}.kind"),
        value=_bytes(fields[1], f"{where}.value"),
        revision=_uint(fields[2], f"{where}.revision"),
    )


def _decode_operation(value: object, where: str) -> Operation:
    op = _decode_batch_op(value, where)
    if isinstance(op, Get):
        _fail(f"{where}.tag", "a GET operation is only valid inside a batch")
    return op


def _decode_batch_op(value: object, where: str) -> BatchOp:
    fields = _array(value, where)
    if not fields:
        _fail(where, "expected [operation_tag, ...], got an empty array")
    tag = _tag(fields[0], OperationTag, f"{where}.tag")
    match tag:
        case OperationTag.PUT:
            if len(fields) != 4:
                _fail(f"{where} (Put)", f"expected 4 fields, got {len(fields)}")
            return Put(
                key=_str(fields[1], f"{where}.key"),
                value=_bytes(fields[2], f"{where}.value"),
                condition=_decode_condition(fields[3], f"{where}.condition"),
            )
        case OperationTag.DELETE:
            if len(fields) != 3:
                _fail(f"{where} (Delete)", f"expected 3 fields, got {len(fields)}")
            return Delete(
                key=_str(fields[1], f"{where}.key"),
                condition=_decode_condition(fields[2], f"{where}.condition"),
            )
        case OperationTag.GET:
            if len(fields) != 2:
                _fail(f"{where} (Get)", f"expected 2 fields, got {len(fields)}")
            return Get(key=_str(fields[1], f"{where}.key"))
        case _:
            assert_never(tag)


def _well_formed_key_value(value: object) -> KeyValue | None:
    """``value`` as a KeyValue when it is a well-formed one, else None (without saying what
    is wrong): a snapshot holds a million, and naming each field's place in advance (five
    strings formatted per key) took more time than checking them."""
    if type(value) is not tuple or len(value) != 5:
        return None
    key, data, create_revision, mod_revision, version = value
    if (type(key) is str and type(data) is bytes and type(create_revision) is int
            and type(mod_revision) is int and type(version) is int
            and create_revision >= 0 and mod_revision >= 0 and version >= 0):
        return KeyValue(key, data, create_revision, mod_revision, version)
    return None


def _decode_key_value(value: object, where: str) -> KeyValue | None:
    if value is None:
        return None
    well_formed = _well_formed_key_value(value)
    return well_formed if well_formed is not None else _named_key_value(value, where)


def _named_key_value(value: object, where: str) -> KeyValue:
    """``value`` as a KeyValue, checked field by field: a malformed one fails naming what is
    wrong and where (the slow path beside ``_well_formed_key_value``)."""
    fields = _fields(value, 5, where)
    return KeyValue(
        key=_str(fields[0], f"{where}.key"),
        value=_bytes(fields[1], f"{where}.value"),
        create_revision=_uint(fields[2], f"{where}.create_revision"),
        mod_revision=_uint(fields[3], f"{where}.mod_revision"),
        version=_uint(fields[4], f"{where}.version"),
    )


def _decode_write_result_body(value: object, where: str) -> WriteResult:
    return _write_result_from(_fields(value, 4, where), where)


def _write_result_from(fields: _Fields, where: str) -> WriteResult:
    return WriteResult(
        succeeded=_bool(fields[0], f"{where}.succeeded"),
        revision=_uint(fields[1], f"{where}.revision"),
        prev=_decode_key_value(fields[2], f"{where}.prev"),
        current=_decode_key_value(fields[3], f"{where}.current"),
    )


def _decode_batch_outcome(value: object, where: str) -> BatchOpResult:
    fields = _array(value, where)
    if not fields:
        _fail(where, "expected [result_tag, ...], got an empty array")
    tag = _tag(fields[0], ResultTag, f"{where}.tag")
    match tag:
        case ResultTag.WRITE:
            if len(fields) != 5:
                _fail(f"{where} (WriteResult)", f"expected 5 fields, got {len(fields)}")
            return _write_result_from(fields[1:], where)
        case ResultTag.READ:
            if len(fields) != 2:
                _fail(f"{where} (ReadResult)", f"expected 2 fields, got {len(fields)}")
            return ReadResult(_decode_key_value(fields[1], f"{where}.current"))
        case _:
            assert_never(tag)


def _decode_remembered(value: object, version: int, where: str) -> tuple[str, RememberedResult]:
    fields = _array(value, where)
    if len(fields) == 2:
        request_id = _str(fields[0], f"{where}.request_id")
        return request_id, _decode_write_result_body(fields[1], f"{where}.result")
    if len(fields) != 3 or version < BATCH_FORMAT_VERSION:
        allowed = "2 fields" if version < BATCH_FORMAT_VERSION else "2 or 3 fields"
        _fail(where, f"expected {allowed} (format version {version}), got {len(fields)}")
    request_id = _str(fields[0], f"{where}.request_id")
    if fields[1] is not None:
        _fail(f"{where}.result", f"expected nil beside a batch's results, got "
                                 f"{_describe(fields[1])}")
    items = _array(fields[2], f"{where}.batch_results")
    if not items:
        _fail(f"{where}.batch_results", "a batch has at least one result")
    outcomes = tuple(_decode_batch_outcome(item, f"{where}.batch_results[{i}]")
                     for i, item in enumerate(items))
    return request_id, BatchResult(outcomes)


def decode_message(data: BytesLike) -> Message:
    """Decode what ``encode_message`` wrote."""
    fields = _open_record(data, RecordKind.MESSAGE, 3)
    return _decode_message_body(fields[2], "message")


def _envelope_header(fields: _Fields, what: str) -> tuple[int, str, int]:
    version = fields[0]
    assert type(version) is int, "checked by _open_record"
    cluster_id = _str(fields[2], f"{what}.cluster_id")
    lamport = _uint(fields[3], f"{what}.lamport")
    return version, cluster_id, lamport


def decode_envelope(data: BytesLike) -> Envelope:
    """Decode what ``encode_envelope`` wrote."""
    fields = _open_record(data, RecordKind.ENVELOPE, 5)
    version, cluster_id, lamport = _envelope_header(fields, "envelope")
    message = _decode_message_body(fields[4], "envelope.message")
    return Envelope(version, cluster_id, lamport, message)


def decode_messages_batch(data: BytesLike) -> EnvelopeBatch:
    """Decode what ``encode_messages_batch`` wrote."""
    return _batch_from(_open_record(data, RecordKind.BATCH, 5))


def decode_fragment(data: BytesLike) -> Fragment:
    """Decode what ``encode_fragment`` wrote."""
    return _fragment_from(_open_record(data, RecordKind.FRAGMENT, 7))


def decode_stream_frame(data: BytesLike) -> EnvelopeBatch | Fragment:
    """Decode one frame of a peer stream: a batch (``encode_messages_batch``) or a fragment of
    a larger one (``encode_fragment``), told apart by the record kind."""
    record = _unpack(data, "frame")
    if (type(record) is tuple and len(record) >= 2 and type(record[1]) is int
            and record[1] == RecordKind.FRAGMENT):
        return _fragment_from(_check_record(record, RecordKind.FRAGMENT, 7))
    return _batch_from(_check_record(record, RecordKind.BATCH, 5))


def decode_reassembled_batch(data: BytesLike) -> EnvelopeBatch:
    """Decode a batch put back together from fragments, with ``decode_messages_batch``'s
    checks. It may exceed ``MAX_MESSAGE_BYTES`` (up to ``MAX_SNAPSHOT_BYTES``, the bound
    snapshots have in storage) only when every message in it is an InstallSnapshot."""
    if (not isinstance(data, bytes | bytearray | memoryview)
            or memoryview(data).nbytes <= MAX_MESSAGE_BYTES):
        return decode_messages_batch(data)
    fields = _open_record(data, RecordKind.BATCH, 5, snapshot=True)
    for i, item in enumerate(_array(fields[4], "batch.messages")):
        if not (type(item) is tuple and item and type(item[0]) is int
                and item[0] == MessageTag.INSTALL_SNAPSHOT):
            _fail(f"batch.messages[{i}]", "only InstallSnapshot messages may make a batch "
                  f"larger than MAX_MESSAGE_BYTES={MAX_MESSAGE_BYTES}")
    return _batch_from(fields)


_SNAPSHOT_HEAD_LIMIT_BYTES: Final = 1024 * 1024
"""How far into a snapshot batch or record ``_image_bin`` looks for the image's start."""

_BIN_HEADERS: Final = {0xC4: 1, 0xC5: 2, 0xC6: 4}
"""msgpack's bin markers (bin 8, 16, 32) and how many length bytes follow each."""


def _image_bin(view: memoryview, *, batch: bool) -> tuple[int, int, int] | None:
    """Where the snapshot image, the last field of a snapshot ``batch`` of one InstallSnapshot
    (as ``encode_snapshot_batch`` lays it out) or of a SNAPSHOT record (``encode_snapshot``),
    lies in ``view``, read from its first ``_SNAPSHOT_HEAD_LIMIT_BYTES``: the offsets of its
    bin header and of its first byte, and its size. None when ``view`` is not laid out so."""
    if view.ndim != 1 or view.itemsize != 1:
        return None
    unpacker = msgpack.Unpacker(raw=False, use_list=False, strict_map_key=True,
                                max_buffer_size=_SNAPSHOT_HEAD_LIMIT_BYTES, max_map_len=0,
                                max_ext_len=0)
    unpacker.feed(view[:_SNAPSHOT_HEAD_LIMIT_BYTES])
    try:
        if batch:  # [version, kind, cluster_id, lamport, [[tag, term, sender, recipient, body]]]
            if unpacker.read_array_header() != 5:
                return None
            for _ in range(4):
                unpacker.skip()
            if unpacker.read_array_header() != 1 or unpacker.read_array_header() != 5:
                return None  # not one message, or not one of InstallSnapshot's arity
            if unpacker.unpack() != MessageTag.INSTALL_SNAPSHOT:
                return None
            for _ in range(3):
                unpacker.skip()
        else:  # [version, kind, body]
            if unpacker.read_array_header() != 3:
                return None
            for _ in range(2):
                unpacker.skip()
        if unpacker.read_array_header() != 5:  # body: [index, term, voters, learners, image]
            return None
        for _ in range(4):
            unpacker.skip()
        header_at = unpacker.tell()
    except Exception:  # not this layout (or not msgpack): the checked decoder explains
        return None
    length_bytes = _BIN_HEADERS.get(view[header_at]) if header_at < len(view) else None
    if length_bytes is None or header_at + 1 + length_bytes > len(view):
        return None
    image_at = header_at + 1 + length_bytes
    return header_at, image_at, int.from_bytes(view[header_at + 1:image_at], "big")


def split_snapshot_batch(data: BytesLike) -> tuple[EnvelopeBatch, memoryview] | None:
    """The reverse of ``encode_snapshot_batch``: a reassembled batch of one InstallSnapshot
    as the batch decoded with an empty image in the snapshot's place, and a view of the image
    where it lies in ``data`` (its last bytes), for the caller to copy out in pieces: msgpack
    copies a 278 MB image out in one C call, which stopped a follower's event loop for 0.5 to
    1 s. None when ``data`` is not laid out so (``decode_reassembled_batch`` then decodes it,
    or says what is wrong). The head is checked as every batch is (``decode_messages_batch``:
    ``DecodeError``).
    """
    view = memoryview(data)
    found = _image_bin(view, batch=True)
    if found is None or found[1] + found[2] != len(view):
        return None
    header_at, image_at, _ = found
    batch = decode_messages_batch(bytes(view[:header_at]) + _EMPTY_BIN)
    return batch, view[image_at:]


def snapshot_image_span(prefix: BytesLike) -> tuple[int, int] | None:
    """Where the image of a SNAPSHOT record lies in it, as (offset, size), read from the
    record's first bytes (``prefix``: at least up to the image; ``encode_snapshot_parts``'s
    head is enough). None when they are not laid out as ``encode_snapshot`` writes."""
    found = _image_bin(memoryview(prefix), batch=False)
    return None if found is None else (found[1], found[2])


def decode_snapshot_parts(head: BytesLike, image: bytes) -> Snapshot:
    """Decode a SNAPSHOT record given as ``encode_snapshot_parts`` made it: the bytes up to
    the image (``head``), and the image, which is kept as it is (decoding the record whole
    copies it out). ``DecodeError`` when they are not such a record."""
    view = memoryview(head)
    found = _image_bin(view, batch=False)
    if found is None or found[1] != len(view) or found[2] != len(image):
        _fail("snapshot", "the head does not end with the image's bin header, or its length "
                          f"is not the image's {len(image)} bytes")
    meta = decode_snapshot(bytes(view[:found[0]]) + _EMPTY_BIN).meta
    return Snapshot(meta, image)


def _batch_from(fields: _Fields) -> EnvelopeBatch:
    version, cluster_id, lamport = _envelope_header(fields, "batch")
    items = _array(fields[4], "batch.messages")
    messages = tuple(
        _decode_message_body(item, f"batch.messages[{i}]") for i, item in enumerate(items)
    )
    return EnvelopeBatch(version, cluster_id, lamport, messages)


def _fragment_from(fields: _Fields) -> Fragment:
    version = fields[0]
    assert type(version) is int, "checked by _check_record"
    if version < FRAGMENT_FORMAT_VERSION:
        _fail("fragment.version",
              f"FRAGMENT needs format version {FRAGMENT_FORMAT_VERSION}, got {version}")
    transfer_id = _uint(fields[2], "fragment.transfer_id")
    index = _uint(fields[3], "fragment.index")
    count = _uint(fields[4], "fragment.count")
    total_bytes = _uint(fields[5], "fragment.total_bytes")
    chunk = _bytes(fields[6], "fragment.chunk")
    if not 0 < total_bytes <= MAX_SNAPSHOT_BYTES:
        _fail("fragment.total_bytes",
              f"must be in [1, MAX_SNAPSHOT_BYTES={MAX_SNAPSHOT_BYTES}], got {total_bytes}")
    if not 0 < count <= total_bytes:
        _fail("fragment.count", f"must be in [1, total_bytes={total_bytes}], got {count}")
    if index >= count:
        _fail("fragment.index", f"must be below count={count}, got {index}")
    if not 0 < len(chunk) <= total_bytes:
        _fail("fragment.chunk",
              f"must hold 1 to total_bytes={total_bytes} bytes, got {len(chunk)}")
    return Fragment(transfer_id, index, count, total_bytes, chunk)


def decode_entry(b: BytesLike) -> Entry:
    """Decode what ``encode_entry`` wrote."""
    fields = _open_record(b, RecordKind.ENTRY, 3)
    return _decode_entry_body(fields[2], "entry")


def decode_hard_state(b: BytesLike) -> HardState:
    """Decode what ``encode_hard_state`` wrote."""
    fields = _fields(_open_record(b, RecordKind.HARD_STATE, 3)[2], 3, "hard_state")
    vote = fields[1]
    return HardState(
        term=_uint(fields[0], "hard_state.term"),
        vote=None if vote is None else _node_id(vote, "hard_state.vote"),
        commit=_uint(fields[2], "hard_state.commit"),
    )


def decode_snapshot(b: BytesLike) -> Snapshot:
    """Decode what ``encode_snapshot`` wrote."""
    fields = _open_record(b, RecordKind.SNAPSHOT, 3, snapshot=True)
    return _decode_snapshot_body(fields[2], "snapshot")


def decode_command(b: BytesLike) -> Command:
    """Decode what ``encode_command`` wrote.

    The common shape (an unconditional put) is recognised by a fast path that checks every
    field it accepts; anything else goes through the full field-by-field decoder, which also
    produces the precise error message.
    """
    record = _unpack(b, "command")
    fast = _plain_put_from(record)
    return fast if fast is not None else _command_from(record)


def decode_batch_command(b: BytesLike) -> BatchCommand:
    """Decode what ``encode_batch_command`` wrote."""
    return _batch_command_from(_unpack(b, "batch_command"))


def decode_log_command(b: BytesLike) -> Command | BatchCommand:
    """Decode the data of a COMMAND log entry: what ``encode_command`` or
    ``encode_batch_command`` wrote (the record kind tells which)."""
    record = _unpack(b, "command")
    fast = _plain_put_from(record)
    if fast is not None:
        return fast
    if (type(record) is tuple and len(record) >= 2 and type(record[1]) is int
            and record[1] == RecordKind.BATCH_COMMAND):
        return _batch_command_from(record)
    return _command_from(record)


def _plain_put_from(record: object) -> Command | None:
    """The command in ``record`` when it is an unconditional put, every field it accepts
    checked; None for any other shape, which the field-by-field decoders then explain.
    (Unpacked once: a batch used to be unpacked twice, first by a failed fast path.)"""
    if not isinstance(record, tuple) or len(record) != 3:
        return None
    version, kind, body = record
    if not isinstance(body, tuple) or len(body) != 2:
        return None
    request_id, op = body
    if not isinstance(op, tuple) or len(op) != 4:
        return None
    tag, key, value, condition = op
    if (type(version) is int and OLDEST_READABLE_VERSION <= version <= FORMAT_VERSION
            and type(kind) is int and kind == RecordKind.COMMAND
            and type(request_id) is str and type(tag) is int and tag == OperationTag.PUT
            and type(key) is str and key and type(value) is bytes and condition is None):
        return Command(Put(key, value), request_id)
    return None


def _command_from(record: object) -> Command:
    fields = _fields(_check_record(record, RecordKind.COMMAND, 3)[2], 2, "command")
    request_id = _str(fields[0], "command.request_id")
    return Command(_decode_operation(fields[1], "command.op"), request_id)


def _batch_command_from(record: object) -> BatchCommand:
    header = _check_record(record, RecordKind.BATCH_COMMAND, 3)
    version = header[0]
    assert type(version) is int, "checked by _check_record"
    if version < BATCH_FORMAT_VERSION:
        _fail("batch_command.version",
              f"BATCH_COMMAND needs format version {BATCH_FORMAT_VERSION}, got {version}")
    fields = _fields(header[2], 2, "batch_command")
    request_id = _str(fields[0], "batch_command.request_id")
    items = _array(fields[1], "batch_command.ops")
    if not items:
        _fail("batch_command.ops", "a batch holds at least one operation")
    ops: list[BatchOp] = []
    for position, item in enumerate(items):
        # Fast path: an unconditional put, every field checked; anything else goes through
        # the general decoder, which names what is wrong.
        if type(item) is tuple and len(item) == 4:
            tag, key, value, condition = item
            if (type(tag) is int and tag == OperationTag.PUT and type(key) is str
                    and type(value) is bytes and condition is None):
                ops.append(Put(key, value))
                continue
        ops.append(_decode_batch_op(item, f"batch_command.ops[{position}]"))
    return BatchCommand(tuple(ops), request_id)


def decode_write_result(b: BytesLike) -> WriteResult:
    """Decode what ``encode_write_result`` wrote."""
    fields = _open_record(b, RecordKind.WRITE_RESULT, 3)
    return _decode_write_result_body(fields[2], "write_result")


def decode_kv_snapshot(b: BytesLike) -> KVSnapshotState:
    """Decode what ``encode_kv_snapshot`` wrote (all of ``KVSnapshotReader`` at once).

    Only the layout is checked here; ``KVStateMachine.from_snapshot`` checks that the
    revisions, key order and remembered requests are consistent with each other.
    """
    reader = KVSnapshotReader(b)
    key_values: list[KeyValue] = []
    for piece in reader.key_value_pieces():
        key_values.extend(piece)
    remembered: list[tuple[str, RememberedResult]] = []
    for requests in reader.remembered_pieces():
        remembered.extend(requests)
    return KVSnapshotState(reader.applied_index, reader.revision, tuple(key_values),
                           tuple(remembered))


_READ_CHUNK_BYTES: Final = 1024 * 1024
"""How much of a KV snapshot ``KVSnapshotReader`` hands its unpacker at a time."""


class KVSnapshotReader:
    """Decodes what ``encode_kv_snapshot`` wrote a piece at a time, as it was written
    (``kv_snapshot_pieces``): the header on opening (``applied_index``, ``revision``), then
    ``key_value_pieces``, then ``remembered_pieces``, each of at most
    ``KV_SNAPSHOT_PIECE_KEYS`` items.

    A caller decoding on a thread beside an event loop gets control back between pieces:
    one ``unpackb`` of a million keys held the GIL for 0.4 to 1.2 s. The input is fed to a
    streaming unpacker ``_READ_CHUNK_BYTES`` at a time, so it is never copied whole. The
    checks and errors are those of the other decoders: ``DecodeError`` naming the field.
    """

    __slots__ = ("_key_count", "_keys_read", "_offset", "_unpacker", "_version", "_view",
                 "applied_index", "revision")

    def __init__(self, data: BytesLike) -> None:
        what = "kv_snapshot"
        if not isinstance(data, bytes | bytearray | memoryview):
            _fail(what, f"expected bytes to decode, got {type(data).__name__}")
        try:
            self._view = memoryview(data).cast("B")
        except TypeError as exc:  # not one contiguous run of bytes
            _fail(what, f"expected contiguous bytes ({exc})")
        size_bytes = self._view.nbytes
        if size_bytes > MAX_SNAPSHOT_BYTES:
            _fail(what, f"input of {size_bytes} bytes exceeds "
                        f"MAX_SNAPSHOT_BYTES={MAX_SNAPSHOT_BYTES}")
        buffer_limit = max(1, min(size_bytes, 2**31 - 1))  # what the unpacker can hold
        self._unpacker = msgpack.Unpacker(
            raw=False, use_list=False, strict_map_key=True, max_buffer_size=buffer_limit,
            max_bin_len=buffer_limit, max_str_len=MAX_STR_BYTES,
            max_array_len=MAX_SNAPSHOT_ARRAY_LEN, max_map_len=0, max_ext_len=0)
        self._offset = 0
        field_count = self._array_header(what)
        head: _Fields = (self._next(), self._next()) if field_count >= 2 else ()
        _check_record_head(head, field_count, RecordKind.KV_SNAPSHOT, 3)
        version = head[0]
        assert type(version) is int, "checked by _check_record_head"
        self._version = version
        body_fields = self._array_header(what)
        if body_fields != 4:
            _fail(what, f"expected 4 fields, got {body_fields}")
        self.applied_index = _uint(self._next(), "kv_snapshot.applied_index")
        self.revision = _uint(self._next(), "kv_snapshot.revision")
        self._key_count = self._array_header("kv_snapshot.key_values")
        self._keys_read = False

    def key_value_pieces(self) -> Iterator[list[KeyValue]]:
        """The key values, in order, in pieces; once."""
        piece: list[KeyValue] = []
        for i in range(self._key_count):
            item = self._next()
            kv = _well_formed_key_value(item)
            if kv is None:  # say what is wrong with it, and where
                where = f"kv_snapshot.key_values[{i}]"
                if item is None:
                    _fail(where, "expected a key value, got nil")
                kv = _named_key_value(item, where)
            piece.append(kv)
            if len(piece) >= KV_SNAPSHOT_PIECE_KEYS:
                yield piece
                piece = []
        if piece:
            yield piece
        self._keys_read = True

    def remembered_pieces(self) -> Iterator[list[tuple[str, RememberedResult]]]:
        """The remembered requests, oldest first, in pieces, after ``key_value_pieces``;
        then checks that nothing follows the record."""
        if not self._keys_read:
            raise RuntimeError("remembered_pieces reads on from the end of key_value_pieces")
        where = "kv_snapshot.remembered_requests"
        piece: list[tuple[str, RememberedResult]] = []
        for i in range(self._array_header(where)):
            piece.append(_decode_remembered(self._next(), self._version, f"{where}[{i}]"))
            if len(piece) >= KV_SNAPSHOT_PIECE_KEYS:
                yield piece
                piece = []
        if piece:
            yield piece
        if self._unpacker.tell() != self._view.nbytes:
            extra = self._view.nbytes - self._unpacker.tell()
            _fail("kv_snapshot", f"{extra} extra byte(s) after the record")

    def _next(self) -> object:
        while True:
            try:
                return self._unpacker.unpack()
            except msgpack.OutOfData:
                self._feed()
            except Exception as exc:  # the unpacker's failures: not valid msgpack here
                self._malformed(exc)

    def _array_header(self, where: str) -> int:
        while True:
            try:
                count: int = self._unpacker.read_array_header()
                return count
            except msgpack.OutOfData:
                self._feed()
            except Exception:  # another type there, or too long an array
                _fail(where, "expected an array")

    def _feed(self) -> None:
        if self._offset >= self._view.nbytes:
            _fail("kv_snapshot", "not valid msgpack (the input ends inside the record)")
        end = self._offset + _READ_CHUNK_BYTES
        self._unpacker.feed(self._view[self._offset:end])
        self._offset = end

    @staticmethod
    def _malformed(exc: Exception) -> NoReturn:
        detail = str(exc) or "malformed"
        _fail("kv_snapshot", f"not valid msgpack ({type(exc).__name__}: {detail})")
