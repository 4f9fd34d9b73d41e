"""Property tests for the linearizability checker.

The oracle is a reference store written here, independently of the checker's models: a
history produced by actually running random concurrent clients against it (each operation
takes effect at one instant inside its interval, or, when the client loses track, at some
instant or never) is linearizable by construction; a read of a value nobody wrote makes
it not; and a sequential history is linearizable exactly when replaying it on the
reference store reproduces every observed output. On tiny arbitrary histories the verdict
must equal that of a brute-force search over every order and every choice of which
unknown-outcome operations took effect.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from concord.sim.history import (
    HistoryRecorder,
    Operation,
    OpStatus,
    Value,
    events_from_jsonl,
    events_from_operations,
    events_to_jsonl,
    operations_from_events,
)
from concord.sim.lincheck import Verdict, check, format_result
from concord.sim.models import MODELS

Executor = Callable[[Value, str, Value], tuple[Value, Value]]
"""The reference store: (state, f, input) -> (output, next state)."""


def _run_register(state: Value, f: str, value: Value) -> tuple[Value, Value]:
    match f, value:
        case "read", _:
            return state, state
        case "write", _:
            return None, value
        case "cas", (expected, new):
            return (True, new) if state == expected else (False, state)
    raise AssertionError(f)


def _run_kv(state: Value, f: str, value: Value) -> tuple[Value, Value]:
    assert isinstance(state, str)
    match f, value:
        case "get", _:
            return state, state
        case "put", str():
            return None, value
        case "append", str():
            return None, state + value
    raise AssertionError(f)


def _run_concord(state: Value, f: str, value: Value) -> tuple[Value, Value]:
    match f, value:
        case "read", _:
            return state, state
        case "write", bytes():
            return None, value
        case "cas", (expected, new):
            return (True, new) if state == expected else (False, state)
        case "delete", _:
            return state is not None, None
    raise AssertionError(f)


@dataclass(frozen=True)
class Workload:
    """A model, its reference store and how to draw operations and reads."""

    model_name: str
    run: Executor
    initial: Value
    operations: st.SearchStrategy[tuple[str, Value]]
    read: str
    outputs: st.SearchStrategy[Value]  # plausible read outputs, for sequential histories
    never_written: Value
    keys: tuple[str, ...] = ("x", "y")


_INTS = st.integers(0, 2)
_TEXT = st.sampled_from(["a", "b", "ab"])
_BYTES = st.sampled_from([b"1", b"2"])

WORKLOADS = {
    "register": Workload(
        "register",
        _run_register,
        None,
        st.one_of(
            st.tuples(st.just("read"), st.none()),
            st.tuples(st.just("write"), _INTS),
            st.tuples(st.just("cas"), st.tuples(st.none() | _INTS, _INTS)),
        ),
        "read",
        st.none() | _INTS,
        99,
        keys=("",),
    ),
    "kv": Workload(
        "kv",
        _run_kv,
        "",
        st.one_of(
            st.tuples(st.just("get"), st.none()),
            st.tuples(st.just("put"), _TEXT),
            st.tuples(st.just("append"), _TEXT),
        ),
        "get",
        st.sampled_from(["", "a", "b", "ab", "aab", "ba"]),
        "#",
    ),
    "concord": Workload(
        "concord",
        _run_concord,
        None,
        st.one_of(
            st.tuples(st.just("read"), st.none()),
            st.tuples(st.just("write"), _BYTES),
            st.tuples(st.just("cas"), st.tuples(st.none() | _BYTES, _BYTES)),
            st.tuples(st.just("delete"), st.none()),
        ),
        "read",
        st.none() | _BYTES,
        b"never",
    ),
}


@dataclass
class _Client:
    op_id: int
    f: str
    key: str
    value: Value
    applied: bool = False
    output: Value = None


@st.composite
def executed_histories(draw: st.DrawFn, workload: Workload) -> tuple[Operation, ...]:
    """Run random concurrent clients against the reference store; record what they saw."""
    process_count = draw(st.integers(1, 4))
    op_budget = draw(st.integers(0, 30))
    recorder = HistoryRecorder()
    states: dict[str, Value] = dict.fromkeys(workload.keys, workload.initial)
    clients: dict[int, _Client] = {}
    next_process = process_count  # a client that lost track is replaced by a new process
    live = list(range(process_count))
    ticks = draw(st.integers(0, 4 * op_budget + 8))  # may end with operations still open
    for now in range(ticks):
        slot = draw(st.integers(0, len(live) - 1))
        process = live[slot]
        client = clients.get(process)
        if client is None:
            if op_budget == 0:
                continue
            op_budget -= 1
            f, value = draw(workload.operations)
            key = draw(st.sampled_from(workload.keys))
            op_id = recorder.invoke(process, f, key, value, at=now)
            clients[process] = _Client(op_id, f, key, value)
            continue
        fate = draw(st.sampled_from(["lost", "failed", *["step"] * 8]))
        if fate == "failed" and not client.applied:
            recorder.complete(client.op_id, OpStatus.FAIL, None, at=now)
            del clients[process]
        elif fate == "lost":
            # The client never learns the outcome; the operation may have taken effect.
            recorder.complete(client.op_id, OpStatus.INFO, None, at=now)
            del clients[process]
            live[slot] = next_process
            next_process += 1
        elif not client.applied:
            client.output, states[client.key] = workload.run(
                states[client.key], client.f, client.value
            )
            client.applied = True
        else:
            recorder.complete(client.op_id, OpStatus.OK, client.output, at=now)
            del clients[process]
    return recorder.operations()


def _assert_verdict(history: tuple[Operation, ...], model_name: str, expected: Verdict) -> None:
    model = MODELS[model_name]
    result = check(history, model, decide_every_key=True)
    assert result.verdict is expected, format_result(result, model)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_executed_histories_are_linearizable(data: st.DataObject) -> None:
    workload = WORKLOADS[data.draw(st.sampled_from(sorted(WORKLOADS)))]
    history = data.draw(executed_histories(workload))
    _assert_verdict(history, workload.model_name, Verdict.LINEARIZABLE)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_reading_a_value_never_written_is_not_linearizable(data: st.DataObject) -> None:
    workload = WORKLOADS[data.draw(st.sampled_from(sorted(WORKLOADS)))]
    history = data.draw(executed_histories(workload))
    end = max((op.complete_time or op.invoke_time for op in history), default=0) + 1
    invoked = data.draw(st.integers(0, end))
    completed = data.draw(st.integers(invoked, end + 1))
    phantom = Operation(
        op_id=len(history),
        process=1000,
        f=workload.read,
        key=data.draw(st.sampled_from(workload.keys)),
        input=None,
        output=workload.never_written,
        invoke_time=invoked,
        complete_time=completed,
        status=OpStatus.OK,
    )
    _assert_verdict((*history, phantom), workload.model_name, Verdict.NOT_LINEARIZABLE)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_sequential_history_is_linearizable_iff_replay_matches(data: st.DataObject) -> None:
    workload = WORKLOADS[data.draw(st.sampled_from(sorted(WORKLOADS)))]
    length = data.draw(st.integers(1, 12))
    states: dict[str, Value] = dict.fromkeys(workload.keys, workload.initial)
    replay_matches = True
    history: list[Operation] = []
    for index in range(length):
        f, value = data.draw(workload.operations)
        key = data.draw(st.sampled_from(workload.keys))
        actual, states[key] = workload.run(states[key], f, value)
        if f == workload.read:
            observed = data.draw(workload.outputs)
        elif f in ("cas", "delete"):
            observed = data.draw(st.booleans())
        else:
            observed = actual
        replay_matches = replay_matches and observed == actual
        history.append(
            Operation(index, 0, f, key, value, observed, 2 * index, 2 * index + 1, OpStatus.OK)
        )
    expected = Verdict.LINEARIZABLE if replay_matches else Verdict.NOT_LINEARIZABLE
    _assert_verdict(tuple(history), workload.model_name, expected)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_recorded_history_survives_jsonl(data: st.DataObject) -> None:
    workload = WORKLOADS[data.draw(st.sampled_from(sorted(WORKLOADS)))]
    history = data.draw(executed_histories(workload))
    text = events_to_jsonl(events_from_operations(history))
    assert operations_from_events(events_from_jsonl(text)) == history


def _observed(op: Operation) -> bool:
    """Whether the reference semantics constrain ``op``'s output."""
    if op.status is not OpStatus.OK:
        return False
    return op.f in ("read", "get", "cas") or (op.f == "delete" and op.output is not None)


def _brute_force_linearizable(history: Sequence[Operation], workload: Workload) -> bool:
    completed = [op for op in history if op.status is OpStatus.OK]
    unknown = [op for op in history if op.status is OpStatus.INFO]

    def precedes(a: Operation, b: Operation) -> bool:
        return (
            a.status is OpStatus.OK
            and a.complete_time is not None
            and (a.complete_time < b.invoke_time)
        )

    for size in range(len(unknown) + 1):
        for chosen in itertools.combinations(unknown, size):
            for order in itertools.permutations([*completed, *chosen]):
                if any(
                    precedes(later, earlier)
                    for i, earlier in enumerate(order)
                    for later in order[i + 1 :]
                ):
                    continue
                states: dict[str, Value] = dict.fromkeys(workload.keys, workload.initial)
                for op in order:
                    actual, states[op.key] = workload.run(states[op.key], op.f, op.input)
                    if _observed(op) and actual != op.output:
                        break
                else:
                    return True
    return False


@st.composite
def arbitrary_histories(draw: st.DrawFn, workload: Workload) -> tuple[Operation, ...]:
    """A few operations with random intervals, outcomes and observed outputs."""
    history = []
    for index in range(draw(st.integers(1, 6))):
        f, value = draw(workload.operations)
        start = draw(st.integers(0, 8))
        end: int | None = start + draw(st.integers(0, 4))
        status = draw(st.sampled_from([OpStatus.OK, OpStatus.OK, OpStatus.INFO, OpStatus.FAIL]))
        output: Value = None
        if status is OpStatus.OK and f == workload.read:
            output = draw(workload.outputs)
        elif status is OpStatus.OK and f == "cas":
            output = draw(st.booleans())
        elif status is OpStatus.OK and f == "delete":
            output = draw(st.none() | st.booleans())
        elif status is OpStatus.INFO and draw(st.booleans()):
            end = None
        key = draw(st.sampled_from(workload.keys))
        history.append(Operation(index, index, f, key, value, output, start, end, status))
    return tuple(history)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_tiny_histories_agree_with_brute_force(data: st.DataObject) -> None:
    workload = WORKLOADS[data.draw(st.sampled_from(sorted(WORKLOADS)))]
    history = data.draw(arbitrary_histories(workload))
    linearizable = _brute_force_linearizable(history, workload)
    expected = Verdict.LINEARIZABLE if linearizable else Verdict.NOT_LINEARIZABLE
    _assert_verdict(history, workload.model_name, expected)
