"""Client histories: what clients asked a store to do, when, and what they observed.

This module owns the history model shared by the simulator, the chaos workloads and the
linearizability checker:

- ``Event``: one line of a history as a client sees it (an invocation or a completion);
- ``Operation``: an invocation paired with its completion, the unit the checker reasons about;
- ``HistoryRecorder``: pairs invocations with completions as they happen;
- the JSONL event format (``events_to_jsonl`` / ``events_from_jsonl``).

Times are plain ordered integers (nanoseconds, ticks, line numbers): operation ``a`` precedes
``b`` in real time exactly when ``a.complete_time < b.invoke_time``; equal times overlap.

JSONL format: one JSON object per event, in the order the events happened::

    {"process": 3, "type": "invoke", "f": "write", "key": "x", "value": 4, "time": 10}
    {"process": 3, "type": "ok", "f": "write", "key": "x", "value": 4, "time": 15}

``type`` is ``invoke``, ``ok``, ``fail`` (definitely did not take effect) or ``info``
(outcome unknown). The invocation carries the input value, the completion the output.
Values are JSON null, booleans, integers, strings, arrays (read back as tuples) and byte
strings written as ``{"bytes": "<base64>"}``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeAlias

Value: TypeAlias = "bool | int | str | bytes | tuple[Value, ...] | None"
"""An operation's input or output: immutable and hashable, so model states can hold it."""


class HistoryError(ValueError):
    """A history that cannot be read or is inconsistent (completion without invocation...)."""


class OpType(IntEnum):
    """The type of one history event. Values are append-only."""

    INVOKE = 0
    OK = 1
    FAIL = 2
    INFO = 3


class OpStatus(IntEnum):
    """How an operation ended. Values are append-only and match ``OpType``."""

    OK = 1  # completed; the output was observed
    FAIL = 2  # definitely did not take effect
    INFO = 3  # unknown: may take effect at any time after its invocation, or never


@dataclass(frozen=True, slots=True)
class Event:
    """One invocation or completion, as recorded by a client."""

    process: int
    type: OpType
    f: str
    key: str
    value: Value
    time: int


@dataclass(frozen=True, slots=True)
class Operation:
    """An invocation paired with its completion.

    ``complete_time`` is None when the operation never completed; such operations (and all
    INFO operations) are open until the end of the history, whatever their completion time.
    """

    op_id: int
    process: int
    f: str
    key: str
    input: Value
    output: Value
    invoke_time: int
    complete_time: int | None
    status: OpStatus

    def __post_init__(self) -> None:
        assert self.complete_time is not None or self.status is OpStatus.INFO, (
            "only an operation with unknown outcome may lack a completion time"
        )
        assert self.complete_time is None or self.complete_time >= self.invoke_time, (
            "an operation cannot complete before it is invoked"
        )


@dataclass(frozen=True, slots=True)
class _Pending:
    process: int
    f: str
    key: str
    input: Value
    invoke_time: int


class HistoryRecorder:
    """Records a history as it happens: ``invoke`` then ``complete`` for each operation.

    Each process has at most one operation open at a time (a process is one sequential
    client), and times never go backwards. Operations never completed count as INFO.
    """

    def __init__(self) -> None:
        self._pending: dict[int, _Pending] = {}
        self._open_by_process: dict[int, int] = {}
        self._completed: dict[int, Operation] = {}
        self._events: list[Event] = []
        self._next_op_id = 0
        self._last_time: int | None = None

    def invoke(self, process: int, f: str, key: str, value: Value, at: int) -> int:
        """Record that ``process`` invoked ``f`` on ``key`` with input ``value``; return its id."""
        if process in self._open_by_process:
            raise HistoryError(f"process {process} invoked {f!r} with an operation still open")
        self._advance_to(at)
        op_id = self._next_op_id
        self._next_op_id += 1
        self._pending[op_id] = _Pending(process, f, key, value, at)
        self._open_by_process[process] = op_id
        self._events.append(Event(process, OpType.INVOKE, f, key, value, at))
        return op_id

    def complete(self, op_id: int, status: OpStatus, output: Value, at: int) -> Operation:
        """Record how operation ``op_id`` ended; return the complete operation."""
        pending = self._pending.pop(op_id, None)
        if pending is None:
            raise HistoryError(f"operation {op_id} is not open")
        self._advance_to(at)
        del self._open_by_process[pending.process]
        kept_output = output if status is OpStatus.OK else None
        operation = Operation(
            op_id=op_id,
            process=pending.process,
            f=pending.f,
            key=pending.key,
            input=pending.input,
            output=kept_output,
            invoke_time=pending.invoke_time,
            complete_time=at,
            status=status,
        )
        self._completed[op_id] = operation
        event_type = OpType(int(status))
        self._events.append(
            Event(pending.process, event_type, pending.f, pending.key, kept_output, at)
        )
        return operation

    def operations(self) -> tuple[Operation, ...]:
        """Every operation so far in invocation order; open ones as INFO with no completion."""
        open_ops = {
            op_id: Operation(
                op_id=op_id,
                process=p.process,
                f=p.f,
                key=p.key,
                input=p.input,
                output=None,
                invoke_time=p.invoke_time,
                complete_time=None,
                status=OpStatus.INFO,
            )
            for op_id, p in self._pending.items()
        }
        merged = self._completed | open_ops
        return tuple(merged[op_id] for op_id in sorted(merged))

    def events(self) -> tuple[Event, ...]:
        """Every event so far, in the order recorded."""
        return tuple(self._events)

    def _advance_to(self, at: int) -> None:
        if self._last_time is not None and at < self._last_time:
            raise HistoryError(f"time went backwards: {at} after {self._last_time}")
        self._last_time = at


def operations_from_events(events: Iterable[Event]) -> tuple[Operation, ...]:
    """Pair each completion with its process's open invocation, in event order."""
    recorder = HistoryRecorder()
    open_by_process: dict[int, tuple[int, str]] = {}
    for index, event in enumerate(events):
        if event.type is OpType.INVOKE:
            if event.process in open_by_process:
                raise HistoryError(
                    f"event {index}: process {event.process} invoked {event.f!r} while its "
                    f"{open_by_process[event.process][1]!r} is still open"
                )
            op_id = recorder.invoke(event.process, event.f, event.key, event.value, event.time)
            open_by_process[event.process] = (op_id, event.f)
            continue
        opened = open_by_process.pop(event.process, None)
        if opened is None:
            raise HistoryError(
                f"event {index}: process {event.process} completed {event.f!r} without invoking it"
            )
        op_id, f = opened
        if f != event.f:
            raise HistoryError(
                f"event {index}: process {event.process} completed {event.f!r} but invoked {f!r}"
            )
        recorder.complete(op_id, OpStatus(int(event.type)), event.value, event.time)
    return recorder.operations()


def events_from_operations(operations: Sequence[Operation]) -> tuple[Event, ...]:
    """The events of ``operations`` in time order (ties: lower op id first, invoke first).

    Operations never completed contribute only their invocation.
    """
    keyed: list[tuple[int, int, int, Event]] = []
    for op in operations:
        invoke = Event(op.process, OpType.INVOKE, op.f, op.key, op.input, op.invoke_time)
        keyed.append((op.invoke_time, op.op_id, 0, invoke))
        if op.complete_time is not None:
            completion = Event(
                op.process, OpType(int(op.status)), op.f, op.key, op.output, op.complete_time
            )
            keyed.append((op.complete_time, op.op_id, 1, completion))
    keyed.sort(key=lambda item: item[:3])
    return tuple(item[3] for item in keyed)


_TYPE_NAMES = {OpType.INVOKE: "invoke", OpType.OK: "ok", OpType.FAIL: "fail", OpType.INFO: "info"}
_TYPES_BY_NAME = {name: op_type for op_type, name in _TYPE_NAMES.items()}


def _value_to_json(value: Value) -> object:
    match value:
        case bytes():
            return {"bytes": base64.b64encode(value).decode("ascii")}
        case tuple():
            return [_value_to_json(item) for item in value]
        case _:
            return value


def _value_from_json(raw: object, where: str) -> Value:
    match raw:
        case None | bool() | int() | str():
            return raw
        case list():
            return tuple(_value_from_json(item, where) for item in raw)
        case {"bytes": str(encoded)} if isinstance(raw, dict) and len(raw) == 1:
            try:
                return base64.b64decode(encoded, validate=True)
            except ValueError as exc:
                raise HistoryError(f"{where}: bad base64 in bytes value") from exc
        case _:
            raise HistoryError(f"{where}: unsupported value {raw!r}")


def events_to_jsonl(events: Iterable[Event]) -> str:
    """The events as JSONL text, one object per line, each line ending in a newline."""
    lines = [
        json.dumps(
            {
                "process": e.process,
                "type": _TYPE_NAMES[e.type],
                "f": e.f,
                "key": e.key,
                "value": _value_to_json(e.value),
                "time": e.time,
            },
            separators=(",", ":"),
        )
        for e in events
    ]
    return "".join(line + "\n" for line in lines)


def events_from_jsonl(text: str) -> tuple[Event, ...]:
    """Parse JSONL text (blank lines allowed) into events; raise ``HistoryError`` if malformed."""
    events: list[Event] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {line_number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HistoryError(f"{where}: not JSON ({exc.msg})") from exc
        match raw:
            case {
                "process": int(process),
                "type": str(type_name),
                "f": str(f),
                "time": int(time),
            } if type_name in _TYPES_BY_NAME and bool not in (type(process), type(time)):
                key = raw.get("key", "")
                if not isinstance(key, str):
                    raise HistoryError(f"{where}: key must be a string")
                value = _value_from_json(raw.get("value"), where)
                events.append(Event(process, _TYPES_BY_NAME[type_name], f, key, value, time))
            case _:
                raise HistoryError(
                    f"{where}: expected an object with integer process and time, string f and "
                    f"type one of invoke/ok/fail/info"
                )
    return tuple(events)
