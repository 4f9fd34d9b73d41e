"""Commands the KV state machine applies and the results it returns.

Every write is a ``Command``: one operation plus the identity of the client request it came
from, so that a retried request (same ``request_id``) applies at most once. Reads are not
commands: they are served from the state machine after a ReadIndex (or lease) confirmation.

A ``BatchCommand`` carries several operations (puts, deletes and gets) in one log entry; they
are applied in order at that entry's place in the log, each with its own outcome, and its
``request_id`` de-duplicates the batch as a whole.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar, Final, final


class ConditionKind(IntEnum):
    """What a conditional write compares against. Wire values are append-only."""

    VALUE_EQUALS = 0  # the key exists and holds exactly ``value``
    MOD_REVISION_EQUALS = 1  # the key's mod revision is ``revision`` (0 = key absent)
    ABSENT = 2  # the key does not exist (create-only)


class Record:
    """An immutable value compared, hashed and printed by its fields, named in ``FIELDS``.

    The values here are built by the hundred thousand (a replayed log builds a ``Put`` and a
    ``WriteResult`` per write, a restored snapshot a ``KeyValue`` per key), so they are not
    frozen dataclasses: compiled by mypyc or not, a frozen dataclass is built through
    ``object.__setattr__`` per field (0.6-1.3 µs each on a slow machine), these by storing
    their ``Final`` fields (mypyc makes them read-only at run time; pure Python leaves that
    to mypy). Equality, hash and repr are the dataclass ones; they are not on hot paths.
    """

    __slots__ = ()
    FIELDS: ClassVar[tuple[str, ...]] = ()

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.FIELDS)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Record)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.FIELDS)
        return f"{type(self).__name__}({shown})"


@final
class Condition(Record):
    __slots__ = ("kind", "revision", "value")
    FIELDS: ClassVar[tuple[str, ...]] = ("kind", "value", "revision")

    def __init__(self, kind: ConditionKind, value: bytes = b"", revision: int = 0) -> None:
        self.kind: Final = kind
        self.value: Final = value
        self.revision: Final = revision


@final
class Put(Record):
    __slots__ = ("condition", "key", "value")
    FIELDS: ClassVar[tuple[str, ...]] = ("key", "value", "condition")

    def __init__(self, key: str, value: bytes, condition: Condition | None = None) -> None:
        self.key: Final = key
        self.value: Final = value
        self.condition: Final = condition


@final
class Delete(Record):
    __slots__ = ("condition", "key")
    FIELDS: ClassVar[tuple[str, ...]] = ("key", "condition")

    def __init__(self, key: str, condition: Condition | None = None) -> None:
        self.key: Final = key
        self.condition: Final = condition


@final
class Get(Record):
    """A read inside a batch: the key as it is at the batch's place in the log."""

    __slots__ = ("key",)
    FIELDS: ClassVar[tuple[str, ...]] = ("key",)

    def __init__(self, key: str) -> None:
        self.key: Final = key


Operation = Put | Delete
BatchOp = Put | Delete | Get


@final
class Command(Record):
    """A write as it travels through the log. An empty ``request_id`` disables de-duplication."""

    __slots__ = ("op", "request_id")
    FIELDS: ClassVar[tuple[str, ...]] = ("op", "request_id")

    def __init__(self, op: Operation, request_id: str = "") -> None:
        self.op: Final = op
        self.request_id: Final = request_id


@final
class BatchCommand(Record):
    """Operations applied one after another in one log entry; not a transaction: a condition
    that does not hold fails its own operation only. An empty ``request_id`` disables
    de-duplication; a non-empty one de-duplicates the whole batch."""

    __slots__ = ("ops", "request_id")
    FIELDS: ClassVar[tuple[str, ...]] = ("ops", "request_id")

    def __init__(self, ops: tuple[BatchOp, ...], request_id: str = "") -> None:
        self.ops: Final = ops
        self.request_id: Final = request_id


@final
class KeyValue(Record):
    """A key's current value and etcd-style revisions.

    ``create_revision``: the store revision when the key was (last) created;
    ``mod_revision``: the store revision of its last modification;
    ``version``: how many times it was written since it was created (1 after creation).
    """

    __slots__ = ("create_revision", "key", "mod_revision", "value", "version")
    FIELDS: ClassVar[tuple[str, ...]] = ("key", "value", "create_revision", "mod_revision",
                                         "version")

    def __init__(self, key: str, value: bytes, create_revision: int, mod_revision: int,
                 version: int) -> None:
        self.key: Final = key
        self.value: Final = value
        self.create_revision: Final = create_revision
        self.mod_revision: Final = mod_revision
        self.version: Final = version


@final
class WriteResult(Record):
    """The outcome of one applied command.

    ``succeeded`` is False when the command's condition did not hold (nothing changed) or a
    delete found no key. ``revision`` is the store revision after the command (unchanged when
    nothing changed). ``prev`` is the key before the command; ``current`` after it (None when
    deleted or absent).
    """

    __slots__ = ("current", "prev", "revision", "succeeded")
    FIELDS: ClassVar[tuple[str, ...]] = ("succeeded", "revision", "prev", "current")

    def __init__(self, succeeded: bool, revision: int, prev: KeyValue | None,
                 current: KeyValue | None) -> None:
        self.succeeded: Final = succeeded
        self.revision: Final = revision
        self.prev: Final = prev
        self.current: Final = current


@final
class ReadResult(Record):
    """The outcome of a ``Get`` in a batch: the key at that point (None when absent)."""

    __slots__ = ("current",)
    FIELDS: ClassVar[tuple[str, ...]] = ("current",)

    def __init__(self, current: KeyValue | None) -> None:
        self.current: Final = current


BatchOpResult = WriteResult | ReadResult


@final
class BatchResult(Record):
    """The outcomes of a batch's operations, in their order: a ``WriteResult`` for each put
    and delete, a ``ReadResult`` for each get."""

    __slots__ = ("results",)
    FIELDS: ClassVar[tuple[str, ...]] = ("results",)

    def __init__(self, results: tuple[BatchOpResult, ...]) -> None:
        self.results: Final = results
