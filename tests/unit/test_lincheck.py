"""The linearizability checker, its history model, parsers, models and command line.

Known answers: the Porcupine fixtures' verdicts (expected.tsv), hand-made histories whose
verdict follows from the definition, and the exit statuses of ``concord lincheck``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from pathlib import Path

import pytest

from concord.lincheck_cli import add_lincheck_arguments, main, run_lincheck
from concord.sim.history import (
    Event,
    HistoryError,
    HistoryRecorder,
    Operation,
    OpStatus,
    OpType,
    Value,
    events_from_jsonl,
    events_from_operations,
    events_to_jsonl,
    operations_from_events,
)
from concord.sim.history_formats import PARSERS, parse_jepsen, parse_jsonl, parse_kv
from concord.sim.lincheck import SEARCH_SLICE_STEPS, Verdict, check, format_result
from concord.sim.models import MODELS, ConcordKVModel, KVModel, Model, RegisterModel

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "linearizability"

OK, INFO, FAIL = OpStatus.OK, OpStatus.INFO, OpStatus.FAIL
LIN, NOT = Verdict.LINEARIZABLE, Verdict.NOT_LINEARIZABLE


def _fixture_rows() -> list[object]:
    expected = FIXTURES / "expected.tsv"
    if not expected.is_file():
        reason = f"linearizability fixtures not found at {FIXTURES}"
        return [pytest.param("missing", True, marks=pytest.mark.skip(reason=reason))]
    rows: list[object] = []
    for line in expected.read_text().splitlines()[1:]:
        name, verdict = line.split("\t")
        rows.append(pytest.param(name, verdict.strip() == "true", id=name))
    return rows


@pytest.mark.parametrize(("name", "linearizable"), _fixture_rows())
def test_fixture_verdict_agrees_with_expected(name: str, linearizable: bool) -> None:
    format_name = "jepsen" if name.startswith("jepsen-etcd/") else "kv"
    model = RegisterModel() if format_name == "jepsen" else KVModel()
    history = PARSERS[format_name]((FIXTURES / name).read_text())

    result = check(history, model, timeout_s=60.0, clock=time.monotonic)

    assert result.verdict is (LIN if linearizable else NOT), format_result(result, model)
    if not linearizable:
        (violation,) = result.violations
        assert violation.blocked.status is OK
        assert violation.blocked not in violation.linearized


def test_fixture_parsers_keep_every_invocation() -> None:
    if not FIXTURES.is_dir():
        pytest.skip(f"linearizability fixtures not found at {FIXTURES}")
    jepsen_text = (FIXTURES / "jepsen-etcd" / "etcd_100.log").read_text()
    jepsen = parse_jepsen(jepsen_text)
    assert len(jepsen) == jepsen_text.count(":invoke")
    timed_out_reads = sum(
        1 for line in jepsen_text.splitlines() if ":fail" in line and ":read" in line
    )
    assert sum(op.status is FAIL for op in jepsen) == timed_out_reads > 0
    kv_text = (FIXTURES / "kv" / "c10-ok.txt").read_text()
    kv = parse_kv(kv_text)
    assert len(kv) == kv_text.count(":type :invoke")
    assert {op.key for op in kv} == {str(k) for k in range(10)}


# --- hand-made histories -----------------------------------------------------------------


def _op(
    process: int,
    f: str,
    value: Value,
    output: Value,
    start: int,
    end: int | None,
    status: OpStatus = OK,
    key: str = "",
) -> Operation:
    return Operation(0, process, f, key, value, output, start, end, status)


def _numbered(ops: list[Operation]) -> list[Operation]:
    return [dataclasses.replace(op, op_id=i) for i, op in enumerate(ops)]


REGISTER_CASES = [
    ("empty history", [], LIN),
    ("initial read sees no value", [_op(0, "read", None, None, 0, 1)], LIN),
    ("initial read sees a value", [_op(0, "read", None, 0, 0, 1)], NOT),
    ("write then read", [_op(0, "write", 1, None, 0, 1), _op(1, "read", None, 1, 2, 3)], LIN),
    ("write then wrong read", [_op(0, "write", 1, None, 0, 1), _op(1, "read", None, 2, 2, 3)], NOT),
    (
        "read overlapping a write may see it",
        [_op(0, "write", 1, None, 0, 5), _op(1, "read", None, 1, 1, 2)],
        LIN,
    ),
    (
        "read before the write began cannot see it",
        [_op(1, "read", None, 1, 0, 1), _op(0, "write", 1, None, 2, 3)],
        NOT,
    ),
    (
        "touching intervals overlap",
        [_op(1, "read", None, 1, 0, 2), _op(0, "write", 1, None, 2, 3)],
        LIN,
    ),
    (
        "stale read after a newer write completed",
        [
            _op(0, "write", 1, None, 0, 1),
            _op(0, "write", 2, None, 2, 3),
            _op(1, "read", None, 1, 4, 5),
        ],
        NOT,
    ),
    (
        "concurrent writes, then reads agree",
        [
            _op(0, "write", 1, None, 0, 3),
            _op(1, "write", 2, None, 1, 4),
            _op(2, "read", None, 1, 5, 6),
            _op(2, "read", None, 1, 7, 8),
        ],
        LIN,
    ),
    (
        "concurrent writes, then reads disagree",
        [
            _op(0, "write", 1, None, 0, 3),
            _op(1, "write", 2, None, 1, 4),
            _op(2, "read", None, 2, 5, 6),
            _op(2, "read", None, 1, 7, 8),
        ],
        NOT,
    ),
    (
        "cas succeeds on the expected value",
        [
            _op(0, "write", 1, None, 0, 1),
            _op(0, "cas", (1, 2), True, 2, 3),
            _op(0, "read", None, 2, 4, 5),
        ],
        LIN,
    ),
    (
        "cas claims success on another value",
        [_op(0, "write", 1, None, 0, 1), _op(0, "cas", (3, 2), True, 2, 3)],
        NOT,
    ),
    (
        "failed compare is observed and has no effect",
        [
            _op(0, "write", 1, None, 0, 1),
            _op(0, "cas", (3, 2), False, 2, 3),
            _op(0, "read", None, 1, 4, 5),
        ],
        LIN,
    ),
    (
        "compare cannot fail when the value matched",
        [_op(0, "write", 1, None, 0, 1), _op(0, "cas", (1, 2), False, 2, 3)],
        NOT,
    ),
    (
        "failed compare concurrent with the write that made it fail",
        [
            _op(0, "write", 5, None, 0, 4),
            _op(1, "cas", (None, 2), False, 1, 2),
            _op(1, "read", None, 5, 5, 6),
        ],
        LIN,
    ),
    (
        "unknown write may take effect later",
        [
            _op(0, "write", 1, None, 0, 1),
            _op(1, "write", 2, None, 2, None, INFO),
            _op(0, "read", None, 1, 3, 4),
            _op(0, "read", None, 2, 9, 10),
        ],
        LIN,
    ),
    (
        "unknown write may never take effect",
        [
            _op(0, "write", 1, None, 0, 1),
            _op(1, "write", 2, None, 2, 3, INFO),
            _op(0, "read", None, 1, 9, 10),
        ],
        LIN,
    ),
    (
        "unknown write cannot take effect before it was invoked",
        [_op(0, "read", None, 2, 0, 1), _op(1, "write", 2, None, 2, None, INFO)],
        NOT,
    ),
    (
        "unknown write takes effect at most once",
        [
            _op(1, "write", 2, None, 0, None, INFO),
            _op(0, "read", None, 2, 1, 2),
            _op(0, "write", 1, None, 3, 4),
            _op(0, "read", None, 2, 5, 6),
        ],
        NOT,
    ),
    (
        "unknown write placed first may be needed later instead",
        [
            _op(0, "write", 1, None, 0, None, INFO),
            _op(1, "write", 3, None, 0, None, INFO),
            _op(2, "read", None, 3, 0, 1),
            _op(2, "write", 2, None, 2, 3),
            _op(2, "read", None, 1, 4, 5),
        ],
        LIN,
    ),
    (
        "unknown cas may succeed",
        [
            _op(0, "write", 1, None, 0, 1),
            _op(1, "cas", (1, 3), None, 2, None, INFO),
            _op(0, "read", None, 3, 4, 5),
        ],
        LIN,
    ),
    (
        "unknown cas cannot succeed on another value",
        [
            _op(0, "write", 1, None, 0, 1),
            _op(1, "cas", (2, 3), None, 2, None, INFO),
            _op(0, "read", None, 3, 4, 5),
        ],
        NOT,
    ),
    (
        "failed operation never happened",
        [_op(0, "write", 2, None, 0, 1, FAIL), _op(0, "read", None, 2, 2, 3)],
        NOT,
    ),
    (
        "read with unknown outcome is ignored",
        [_op(0, "read", None, None, 0, None, INFO), _op(1, "read", None, None, 1, 2)],
        LIN,
    ),
]


@pytest.mark.parametrize(
    ("history", "expected"),
    [pytest.param(ops, verdict, id=name) for name, ops, verdict in REGISTER_CASES],
)
def test_register_model_histories(history: list[Operation], expected: Verdict) -> None:
    result = check(_numbered(history), RegisterModel())
    assert result.verdict is expected, format_result(result, RegisterModel())


KV_CASES = [
    (
        "appends concatenate per key",
        [
            _op(0, "append", "a", None, 0, 1, key="x"),
            _op(0, "append", "b", None, 2, 3, key="x"),
            _op(1, "append", "z", None, 2, 3, key="y"),
            _op(0, "get", None, "ab", 4, 5, key="x"),
            _op(0, "get", None, "z", 4, 5, key="y"),
        ],
        LIN,
    ),
    ("keys start empty", [_op(0, "get", None, "", 0, 1, key="k")], LIN),
    (
        "put replaces",
        [
            _op(0, "append", "a", None, 0, 1, key="x"),
            _op(0, "put", "p", None, 2, 3, key="x"),
            _op(0, "append", "q", None, 4, 5, key="x"),
            _op(0, "get", None, "pq", 6, 7, key="x"),
        ],
        LIN,
    ),
    (
        "concurrent appends in either order",
        [
            _op(0, "append", "a", None, 0, 3, key="x"),
            _op(1, "append", "b", None, 1, 2, key="x"),
            _op(2, "get", None, "ba", 4, 5, key="x"),
        ],
        LIN,
    ),
    (
        "sequential appends keep their order",
        [
            _op(0, "append", "a", None, 0, 1, key="x"),
            _op(1, "append", "b", None, 2, 3, key="x"),
            _op(2, "get", None, "ba", 4, 5, key="x"),
        ],
        NOT,
    ),
    (
        "another key's value is not seen",
        [
            _op(0, "append", "a", None, 0, 1, key="x"),
            _op(1, "get", None, "a", 2, 3, key="y"),
        ],
        NOT,
    ),
]


@pytest.mark.parametrize(
    ("history", "expected"),
    [pytest.param(ops, verdict, id=name) for name, ops, verdict in KV_CASES],
)
def test_kv_model_histories(history: list[Operation], expected: Verdict) -> None:
    result = check(_numbered(history), KVModel(), decide_every_key=True)
    assert result.verdict is expected, format_result(result, KVModel())


CONCORD_CASES = [
    (
        "a key's life: write, cas, delete, create",
        [
            _op(0, "read", None, None, 0, 1),
            _op(0, "write", b"a", None, 2, 3),
            _op(0, "cas", (b"a", b"b"), True, 4, 5),
            _op(0, "cas", (None, b"c"), False, 6, 7),
            _op(0, "read", None, b"b", 8, 9),
            _op(0, "delete", None, True, 10, 11),
            _op(0, "delete", None, False, 12, 13),
            _op(0, "read", None, None, 14, 15),
            _op(0, "cas", (None, b"d"), True, 16, 17),
            _op(0, "read", None, b"d", 18, 19),
        ],
        LIN,
    ),
    (
        "create-only cas cannot succeed on an existing key",
        [_op(0, "write", b"a", None, 0, 1), _op(0, "cas", (None, b"x"), True, 2, 3)],
        NOT,
    ),
    (
        "delete cannot report a missing key that exists",
        [_op(0, "write", b"a", None, 0, 1), _op(0, "delete", None, False, 2, 3)],
        NOT,
    ),
    (
        "delete with an unobserved result removes the key",
        [
            _op(0, "write", b"a", None, 0, 1),
            _op(0, "delete", None, None, 2, 3),
            _op(0, "read", None, None, 4, 5),
        ],
        LIN,
    ),
    (
        "values are bytes, not text",
        [_op(0, "write", b"a", None, 0, 1), _op(0, "read", None, "a", 2, 3)],
        NOT,
    ),
    (
        "unknown delete may have happened",
        [
            _op(0, "write", b"a", None, 0, 1),
            _op(1, "delete", None, None, 2, None, INFO),
            _op(0, "read", None, None, 5, 6),
        ],
        LIN,
    ),
]


@pytest.mark.parametrize(
    ("history", "expected"),
    [pytest.param(ops, verdict, id=name) for name, ops, verdict in CONCORD_CASES],
)
def test_concord_model_histories(history: list[Operation], expected: Verdict) -> None:
    result = check(_numbered(history), ConcordKVModel())
    assert result.verdict is expected, format_result(result, ConcordKVModel())


def test_violation_names_the_key_and_the_operation_that_cannot_be_placed() -> None:
    history = _numbered(
        [
            _op(0, "write", 1, None, 0, 1, key="good"),
            _op(0, "read", None, 1, 2, 3, key="good"),
            _op(1, "write", 1, None, 0, 1, key="bad"),
            _op(1, "write", 2, None, 2, 3, key="bad"),
            _op(2, "read", None, 1, 4, 5, key="bad"),
        ]
    )
    result = check(history, RegisterModel(), decide_every_key=True)

    assert result.verdict is NOT
    assert [(k.key, k.verdict) for k in result.keys] == [("bad", NOT), ("good", LIN)]
    (violation,) = result.violations
    assert violation.key == "bad"
    assert violation.blocked == history[4]
    assert violation.linearized == (history[2], history[3])
    assert violation.state_after == "2"
    text = format_result(result, RegisterModel())
    assert "key 'bad'" in text
    assert "process 2: read returned 1  [t=4..5]" in text


def test_stops_at_the_first_violation_unless_asked_for_every_key() -> None:
    history = _numbered(
        [
            _op(0, "read", None, 7, 0, 1, key="a"),
            *[_op(p, "write", p, None, 0, 9, key="b") for p in range(1, 4)],
        ]
    )
    first = check(history, RegisterModel())
    assert first.verdict is NOT
    assert {k.key: k.verdict for k in first.keys} == {"a": NOT, "b": Verdict.UNKNOWN}
    every = check(history, RegisterModel(), decide_every_key=True)
    assert {k.key: k.verdict for k in every.keys} == {"a": NOT, "b": LIN}


def _pathological(writers: int) -> list[Operation]:
    """Concurrent writes of distinct values, then a read of a value never written."""
    writes = [_op(p, "write", p, None, 0, 10, key="k") for p in range(writers)]
    return _numbered([*writes, _op(writers, "read", None, -1, 11, 12, key="k")])


class _TickingClock:
    """A clock that advances one second at every reading."""

    def __init__(self) -> None:
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        return float(self.readings)


def test_timeout_returns_unknown() -> None:
    clock = _TickingClock()
    result = check(_pathological(16), RegisterModel(), timeout_s=1.5, clock=clock)

    assert result.verdict is Verdict.UNKNOWN
    (key_result,) = result.keys
    assert key_result.undecided_reason == "time budget exhausted"
    assert 0 < key_result.search_steps <= SEARCH_SLICE_STEPS
    assert clock.readings == 3


def test_small_pathological_history_is_decided_without_budget() -> None:
    result = check(_pathological(6), RegisterModel())
    assert result.verdict is NOT


def test_memory_bound_returns_unknown() -> None:
    result = check(_pathological(12), RegisterModel(), max_configurations=100)
    assert result.verdict is Verdict.UNKNOWN
    assert "memory bound" in result.keys[0].undecided_reason


def test_timeout_without_a_clock_is_refused() -> None:
    with pytest.raises(ValueError, match="clock"):
        check([], RegisterModel(), timeout_s=1.0)


def test_unknown_operation_is_refused() -> None:
    with pytest.raises(ValueError, match="'get'"):
        check(_numbered([_op(0, "get", None, "", 0, 1)]), RegisterModel())


def test_long_sequential_history_needs_no_recursion() -> None:
    ops = []
    for i in range(5000):
        ops.append(_op(0, "write", i, None, 4 * i, 4 * i + 1))
        ops.append(_op(1, "read", None, i, 4 * i + 2, 4 * i + 3))
    result = check(_numbered(ops), RegisterModel())
    assert result.verdict is LIN
    assert result.keys[0].operation_count == 10_000


@pytest.mark.parametrize("model", list(MODELS.values()), ids=list(MODELS))
def test_models_start_from_an_empty_key(model: Model[object]) -> None:
    read = "get" if model.name == "kv" else "read"
    empty: Value = "" if model.name == "kv" else None
    ok, state = model.step(model.init(), _op(0, read, None, empty, 0, 1))
    assert ok
    assert state == model.init()
    assert model.is_read_only(_op(0, read, None, empty, 0, 1))


# --- the history model ------------------------------------------------------------------


def test_recorder_pairs_invocations_with_completions() -> None:
    recorder = HistoryRecorder()
    write = recorder.invoke(1, "write", "k", b"v", at=10)
    read = recorder.invoke(2, "read", "k", None, at=11)
    lost = recorder.invoke(3, "write", "k", b"w", at=12)
    done = recorder.complete(write, OK, None, at=15)
    recorder.complete(read, FAIL, b"ignored", at=16)

    assert done == Operation(write, 1, "write", "k", b"v", None, 10, 15, OK)
    ops = recorder.operations()
    assert [op.op_id for op in ops] == [write, read, lost]
    assert ops[1].status is FAIL and ops[1].output is None
    assert ops[2] == Operation(lost, 3, "write", "k", b"w", None, 12, None, INFO)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([("invoke", 1, 0), ("invoke", 1, 1)], "still open"),
        ([("invoke", 1, 5), ("invoke", 2, 4)], "backwards"),
        ([("invoke", 1, 0), ("complete", 0, 1), ("complete", 0, 2)], "not open"),
    ],
)
def test_recorder_refuses_inconsistent_histories(
    steps: list[tuple[str, int, int]], message: str
) -> None:
    recorder = HistoryRecorder()
    with pytest.raises(HistoryError, match=message):
        for action, who, at in steps:
            if action == "invoke":
                recorder.invoke(who, "read", "", None, at)
            else:
                recorder.complete(who, OK, None, at)


def test_jsonl_round_trip_keeps_every_value_kind() -> None:
    recorder = HistoryRecorder()
    a = recorder.invoke(0, "cas", "k", (None, b"\x00\xff"), at=1)
    b = recorder.invoke(1, "write", "k", "text", at=2)
    recorder.complete(a, OK, True, at=3)
    recorder.complete(b, INFO, None, at=3)
    c = recorder.invoke(0, "read", "k", None, at=3)
    recorder.complete(c, OK, (1, (2, "x"), -3), at=4)
    recorder.invoke(2, "read", "", None, at=5)

    text = events_to_jsonl(recorder.events())
    assert text.count("\n") == 7
    assert '{"bytes":"AP8="}' in text
    assert events_from_jsonl(text) == recorder.events()
    assert parse_jsonl(text) == recorder.operations()
    assert operations_from_events(events_from_operations(recorder.operations())) == (
        recorder.operations()
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ('{"process": 1, "type": "start", "f": "read", "time": 0}', "type one of"),
        ('{"process": 1, "type": "ok", "f": "read", "time": 0.5}', "integer process and time"),
        ('{"process": 1, "type": "ok", "f": "read", "time": 0, "key": 3}', "key must be"),
        ('{"process": 1, "type": "ok", "f": "read", "time": 0, "value": 1.5}', "unsupported"),
        ('{"process": 1, "type": "ok", "f": "r", "time": 0, "value": {"bytes": "!"}}', "base64"),
    ],
)
def test_jsonl_errors_name_the_line(line: str, message: str) -> None:
    with pytest.raises(HistoryError, match=f"line 2: .*{message}"):
        events_from_jsonl("\n" + line + "\n")


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([(1, OpType.OK, "read")], "without invoking"),
        ([(1, OpType.INVOKE, "read"), (1, OpType.INVOKE, "read")], "still open"),
        ([(1, OpType.INVOKE, "read"), (1, OpType.OK, "write")], "invoked 'read'"),
    ],
)
def test_events_that_do_not_pair_are_refused(
    events: list[tuple[int, OpType, str]], message: str
) -> None:
    with pytest.raises(HistoryError, match=message):
        operations_from_events(
            Event(process, kind, f, "", None, at) for at, (process, kind, f) in enumerate(events)
        )


# --- the fixture formats ----------------------------------------------------------------

JEPSEN_SAMPLE = """\
INFO  jepsen.core - nemesis starting
INFO  jepsen.util - 0\t:invoke\t:write\t3
INFO  jepsen.util - 1   :invoke :cas    [3 4]
INFO  jepsen.util - 2\t:invoke\t:read\tnil
INFO  jepsen.util - :nemesis\t:info\t:start\tnil
INFO  jepsen.util - 0\t:ok\t:write\t3
INFO  jepsen.util - 1\t:fail\t:cas\t[3 4]
INFO  jepsen.util - 2\t:fail\t:read\t:timed-out
INFO  jepsen.util - 3\t:invoke\t:cas\t[3 1]
INFO  jepsen.util - 4\t:invoke\t:read\tnil
INFO  jepsen.util - 3\t:info\t:cas\t:timed-out
INFO  jepsen.util - 4\t:ok\t:read\t3
INFO  jepsen.util - 5\t:invoke\t:write\t0
"""


def test_jepsen_parser_maps_outcomes() -> None:
    ops = parse_jepsen(JEPSEN_SAMPLE)
    assert [(o.process, o.f, o.input, o.output, o.status) for o in ops] == [
        (0, "write", 3, 3, OK),
        (1, "cas", (3, 4), False, OK),  # the compare failed: observed, no effect
        (2, "read", None, None, FAIL),  # timed out: ignored
        (3, "cas", (3, 1), None, INFO),
        (4, "read", None, 3, OK),
        (5, "write", 0, None, INFO),  # never returned
    ]
    intervals = [(o.invoke_time, o.complete_time) for o in ops]
    assert intervals == [(2, 6), (3, 7), (4, 8), (9, 11), (10, 12), (13, None)]
    # The failed compare overlaps the write of 3, so it may have come first.
    assert check(ops, RegisterModel()).verdict is LIN


def test_jepsen_failed_compare_is_an_observation() -> None:
    text = (
        "INFO  jepsen.util - 0\t:invoke\t:write\t3\n"
        "INFO  jepsen.util - 0\t:ok\t:write\t3\n"
        "INFO  jepsen.util - 1\t:invoke\t:cas\t[3 4]\n"
        "INFO  jepsen.util - 1\t:fail\t:cas\t[3 4]\n"
    )
    result = check(parse_jepsen(text), RegisterModel())
    assert result.verdict is NOT
    assert result.violations[0].blocked.f == "cas"


def test_kv_parser_reads_edn_maps() -> None:
    text = (
        '{:process 3, :type :invoke, :f :put, :key "7", :value "a \\"b\\""}\n'
        "\n"
        '{:type :ok, :process 3, :key "7", :f :put, :value "a \\"b\\""}\n'
        '{:process 4, :type :invoke, :f :get, :key "7", :value nil}\n'
        '{:process 4, :type :ok, :f :get, :key "7", :value "a \\"b\\""}\n'
    )
    ops = parse_kv(text)
    assert [(o.process, o.f, o.key, o.input, o.output) for o in ops] == [
        (3, "put", "7", 'a "b"', 'a "b"'),
        (4, "get", "7", None, 'a "b"'),
    ]
    assert check(ops, KVModel()).verdict is LIN


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("process 3", "expected an EDN map"),
        ('{:process 3, :type :invoke, :f :get, :key "7"', "expected an EDN map"),
        ("{:process 3, :type :invoke, :f :get, :key 7}", ":key <string>"),
        ('{:process 3, :type :begin, :f :get, :key "7"}', ":type :invoke"),
        ('{:process 3, :type :invoke, :f :get, :key "7", :value [1 2}', "unbalanced"),
        ("{:process 3 :type}", "key-value pairs"),
        ('{:process 3, :type :invoke, :f :get, :key "7", :value @x}', "cannot read"),
    ],
)
def test_kv_parser_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(HistoryError, match=f"line 1: .*{message}"):
        parse_kv(text)


def test_jepsen_parser_refuses_a_malformed_value() -> None:
    with pytest.raises(HistoryError, match="line 1"):
        parse_jepsen("INFO  jepsen.util - 1\t:invoke\t:cas\t[1 2\n")


# --- the command line -------------------------------------------------------------------


def _write_jsonl(path: Path, ops: list[Operation]) -> Path:
    path.write_text(events_to_jsonl(events_from_operations(ops)))
    return path


def test_cli_exit_statuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _write_jsonl(
        tmp_path / "good.jsonl",
        _numbered([_op(0, "write", b"a", None, 0, 1), _op(0, "read", None, b"a", 2, 3)]),
    )
    bad = _write_jsonl(
        tmp_path / "bad.jsonl",
        _numbered([_op(0, "write", b"a", None, 0, 1), _op(0, "read", None, b"b", 2, 3)]),
    )
    hard = _write_jsonl(tmp_path / "hard.jsonl", _pathological(16))

    assert main([str(good), "--format", "jsonl"]) == 0
    assert "linearizable: 2 operations on 1 key(s), concord model" in capsys.readouterr().out
    assert main([str(bad), "--format", "jsonl"]) == 1
    assert "process 0: read returned b'b'  [t=2..3]" in capsys.readouterr().out
    assert main([str(hard), "--format", "jsonl", "--model", "register", "--timeout", "0.001"]) == 2
    assert "time budget exhausted" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{file}"], "--format must be one of"),
        (["{file}", "--format", "csv"], "--format must be one of"),
        (["{file}", "--format", "jsonl", "--model", "queue"], "--model must be one of"),
        (["{file}", "--format", "jsonl", "--timeout", "soon"], "--timeout must be"),
        (["{file}", "--format", "jsonl", "--timeout", "-1"], "--timeout must be"),
        (["{missing}", "--format", "jsonl"], "cannot read"),
        (["{file}", "--format", "kv"], "h.jsonl: line 1: "),
        (["{file}", "--format", "jsonl", "--model", "kv"], "not one of the kv model's"),
        (["{file}", "--format", "jsonl", "--surprise"], "unrecognized arguments"),
    ],
)
def test_cli_usage_errors_exit_64(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    history = _write_jsonl(tmp_path / "h.jsonl", _numbered([_op(0, "read", None, None, 0, 1)]))
    paths = {"file": str(history), "missing": str(tmp_path / "absent.jsonl")}
    assert main([arg.format(**paths) for arg in argv]) == 64
    assert message in capsys.readouterr().err


def test_cli_registers_as_a_subcommand_beside_other_options(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="concord")
    parser.add_argument("--format", default="text")  # a global option of the same name
    commands = parser.add_subparsers(dest="command", required=True)
    add_lincheck_arguments(commands.add_parser("lincheck"))
    history = _write_jsonl(tmp_path / "h.jsonl", _numbered([_op(0, "read", None, None, 0, 1)]))

    args = parser.parse_args(["lincheck", str(history), "--format", "jsonl"])

    assert args.format == "text"
    assert run_lincheck(args) == 0


def test_fixture_through_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    if not FIXTURES.is_dir():
        pytest.skip(f"linearizability fixtures not found at {FIXTURES}")
    statuses = [
        main([str(FIXTURES / "jepsen-etcd" / name), "--format", "jepsen"])
        for name in ("etcd_000.log", "etcd_002.log")
    ]
    assert statuses == [1, 0]
    assert "no linearization" in capsys.readouterr().out


def test_interval_order_matches_definition_on_all_small_permutations() -> None:
    """Three sequential writes and one read: the read may only see the last write."""
    for values in itertools.permutations([1, 2, 3]):
        writes = [_op(0, "write", v, None, 2 * i, 2 * i + 1) for i, v in enumerate(values)]
        for seen in (1, 2, 3):
            history = _numbered([*writes, _op(1, "read", None, seen, 10, 11)])
            expected = LIN if seen == values[-1] else NOT
            assert check(history, RegisterModel()).verdict is expected
