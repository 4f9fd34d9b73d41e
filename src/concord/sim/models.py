"""Sequential specifications for the linearizability checker, as pure functions.

A model says what one key of a store does when its operations run one at a time: ``init``
gives the state of a fresh key, ``step`` applies one operation and says whether the output
the client observed is possible from that state. States are hashable so that the checker
can memoize them. Every model here is per key: the checker splits a history by key and
checks each part on its own (linearizability is P-compositional).

An operation with unknown outcome (``OpStatus.INFO``) has no observed output, so ``step``
accepts it and returns the state it would leave behind had it taken effect.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from concord.sim.history import Operation, OpStatus, Value

StateT = TypeVar("StateT", bound=Hashable)


class Model(Protocol[StateT]):
    """A sequential specification of one key."""

    @property
    def name(self) -> str:
        """A short name for messages and the command line."""
        ...

    @property
    def functions(self) -> frozenset[str]:
        """The operation names (``Operation.f``) this model understands."""
        ...

    def init(self) -> StateT:
        """The state of a key nobody has written."""
        ...

    def step(self, state: StateT, op: Operation) -> tuple[bool, StateT]:
        """Apply ``op`` to ``state``: (whether its observed output is possible, next state)."""
        ...

    def is_read_only(self, op: Operation) -> bool:
        """True if ``op`` leaves the state unchanged whenever ``step`` accepts it.

        A read, or a compare-and-set observed to fail. The checker drops such an operation
        when its outcome is unknown and places it as soon as it is accepted otherwise.
        """
        ...

    def describe(self, op: Operation) -> str:
        """``op``'s function, input and outcome, e.g. ``cas 1->4 failed its compare``."""
        ...

    def describe_state(self, state: StateT) -> str:
        """``state`` for a person."""
        ...


def _observed(op: Operation) -> bool:
    return op.status is OpStatus.OK


def _described(op: Operation, action: str, result: str = "") -> str:
    """``action``, then what the client saw: ``result`` if the operation completed."""
    match op.status:
        case OpStatus.OK:
            return f"{action} {result}".rstrip()
        case OpStatus.INFO:
            return f"{action}, outcome unknown"
        case OpStatus.FAIL:
            return f"{action}, did not happen"


def _pair(value: Value, what: str) -> tuple[Value, Value]:
    match value:
        case (first, second):
            return first, second
        case _:
            raise ValueError(f"{what} input must be a pair (expected, new), got {value!r}")


def _cas_allowed(matched: bool, op: Operation) -> bool:
    """Whether a cas whose compare ``matched`` could have produced ``op``'s observed output."""
    return not _observed(op) or op.output is matched


def _cas_describe(op: Operation) -> str:
    expected, new = _pair(op.input, op.f)
    match op.output:
        case True:
            result = "succeeded"
        case False:
            result = "failed its compare"
        case other:
            result = f"returned {other!r}"
    return _described(op, f"cas {expected!r}->{new!r}", result)


@dataclass(frozen=True, slots=True)
class RegisterModel:
    """One register with ``read``, ``write`` and ``cas``; it starts with no value (None).

    ``cas`` input is ``(expected, new)``; its output True means the compare held and the value
    was replaced, False that the compare failed and nothing changed.
    """

    @property
    def name(self) -> str:
        return "register"

    @property
    def functions(self) -> frozenset[str]:
        return frozenset({"read", "write", "cas"})

    def init(self) -> Value:
        return None

    def step(self, state: Value, op: Operation) -> tuple[bool, Value]:
        match op.f:
            case "read":
                return (op.output == state or not _observed(op)), state
            case "write":
                return True, op.input
            case "cas":
                expected, new = _pair(op.input, op.f)
                matched = state == expected
                return _cas_allowed(matched, op), (new if matched else state)
            case _:
                raise ValueError(f"register model has no operation {op.f!r}")

    def is_read_only(self, op: Operation) -> bool:
        return op.f == "read" or (op.f == "cas" and _observed(op) and op.output is False)

    def describe(self, op: Operation) -> str:
        match op.f:
            case "read":
                return _described(op, "read", f"returned {op.output!r}")
            case "cas":
                return _cas_describe(op)
            case _:
                return _described(op, f"{op.f} {op.input!r}")

    def describe_state(self, state: Value) -> str:
        return "no value" if state is None else repr(state)


@dataclass(frozen=True, slots=True)
class KVModel:
    """A string per key with ``get``, ``put`` (replace) and ``append``; it starts empty ("")."""

    @property
    def name(self) -> str:
        return "kv"

    @property
    def functions(self) -> frozenset[str]:
        return frozenset({"get", "put", "append"})

    def init(self) -> str:
        return ""

    def step(self, state: str, op: Operation) -> tuple[bool, str]:
        match op.f:
            case "get":
                return (op.output == state or not _observed(op)), state
            case "put":
                return True, _text(op)
            case "append":
                return True, state + _text(op)
            case _:
                raise ValueError(f"kv model has no operation {op.f!r}")

    def is_read_only(self, op: Operation) -> bool:
        return op.f == "get"

    def describe(self, op: Operation) -> str:
        if op.f == "get":
            return _described(op, "get", f"returned {op.output!r}")
        return _described(op, f"{op.f} {op.input!r}")

    def describe_state(self, state: str) -> str:
        return repr(state)


def _text(op: Operation) -> str:
    if not isinstance(op.input, str):
        raise ValueError(f"kv {op.f} input must be a string, got {op.input!r}")
    return op.input


@dataclass(frozen=True, slots=True)
class ConcordKVModel:
    """One key of Concord's store: its value bytes, or None when absent (the initial state).

    - ``read``: output the value (None when absent);
    - ``write``: input the new value;
    - ``cas``: input ``(expected_or_None, new)``, None meaning "the key is absent"; output True
      when it took effect, False when the compare failed (no effect, but an observed result);
    - ``delete``: output True when a value was removed, False when the key was already absent,
      None when the client did not learn which.
    """

    @property
    def name(self) -> str:
        return "concord"

    @property
    def functions(self) -> frozenset[str]:
        return frozenset({"read", "write", "cas", "delete"})

    def init(self) -> bytes | None:
        return None

    def step(self, state: bytes | None, op: Operation) -> tuple[bool, bytes | None]:
        match op.f:
            case "read":
                return (op.output == state or not _observed(op)), state
            case "write":
                return True, _bytes(op.input, op)
            case "cas":
                expected, new = _pair(op.input, op.f)
                matched = state == expected
                return _cas_allowed(matched, op), (_bytes(new, op) if matched else state)
            case "delete":
                existed = state is not None
                if _observed(op) and op.output is not None and op.output is not existed:
                    return False, state
                return True, None
            case _:
                raise ValueError(f"concord model has no operation {op.f!r}")

    def is_read_only(self, op: Operation) -> bool:
        observed_no_effect = op.f in ("cas", "delete") and _observed(op) and op.output is False
        return op.f == "read" or observed_no_effect

    def describe(self, op: Operation) -> str:
        match op.f:
            case "read":
                return _described(op, "read", f"returned {op.output!r}")
            case "cas":
                return _cas_describe(op)
            case "delete":
                match op.output:
                    case True:
                        shown = "removed a value"
                    case False:
                        shown = "found no value"
                    case None:
                        shown = ""
                    case other:
                        shown = f"returned {other!r}"
                return _described(op, "delete", shown)
            case _:
                return _described(op, f"{op.f} {op.input!r}")

    def describe_state(self, state: bytes | None) -> str:
        return "absent" if state is None else repr(state)


def _bytes(value: Value, op: Operation) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError(f"concord {op.f} value must be bytes, got {value!r}")
    return value


MODELS: dict[str, Model[Any]] = {
    "register": RegisterModel(),
    "kv": KVModel(),
    "concord": ConcordKVModel(),
}
"""The models by their command-line name."""
