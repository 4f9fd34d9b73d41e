"""Readers for history files: Jepsen logs, EDN-like key-value lines and Concord's JSONL.

Each reader turns a file's text into ``Operation`` records (``concord.sim.history``). The
Jepsen and kv formats carry no clock, so an event's time is its line number.

- ``jepsen``: Jepsen's ``jepsen.util`` log lines for one register (key ""), e.g.
  ``INFO  jepsen.util - 3  :invoke  :cas  [1 4]``. ``:ok`` gives the output; ``:fail :cas``
  is a compare that failed (an observed result, no effect) and any other ``:fail`` did not
  happen (a read that timed out, for one); ``:info`` is unknown. Other lines are ignored.
- ``kv``: one EDN map per line, ``{:process 3, :type :invoke, :f :put, :key "7", :value "x"}``.
- ``jsonl``: the event format documented in ``concord.sim.history``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from concord.sim.history import (
    Event,
    HistoryError,
    Operation,
    OpType,
    Value,
    events_from_jsonl,
    operations_from_events,
)


@dataclass(frozen=True, slots=True)
class _Keyword:
    """An EDN keyword such as ``:invoke`` (``name`` without the colon)."""

    name: str


_EDN_TOKEN = re.compile(
    r"""[\s,]*(?:
        (?P<open>\[) | (?P<close>\]) |
        "(?P<string>(?:[^"\\]|\\.)*)" |
        :(?P<keyword>[^\s,\[\]{}"]+) |
        (?P<int>[-+]?\d+)(?![^\s,\[\]{}]) |
        (?P<symbol>nil|true|false)(?![^\s,\[\]{}])
    )""",
    re.VERBOSE,
)
_EDN_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _edn_string(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: _EDN_ESCAPES.get(m.group(1), m.group(1)), body)


def _edn_tokens(text: str, where: str) -> Iterator[re.Match[str]]:
    position = 0
    text = text.rstrip(" \t,")
    while position < len(text):
        match = _EDN_TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise HistoryError(f"{where}: cannot read {text[position : position + 30]!r}")
        position = match.end()
        yield match


def _edn_values(text: str, where: str) -> list[Value | _Keyword]:
    """Parse a run of EDN scalars and vectors (vectors become tuples, nil None)."""
    stack: list[list[Value | _Keyword]] = [[]]
    for token in _edn_tokens(text, where):
        kind = token.lastgroup
        match kind:
            case "open":
                stack.append([])
                continue
            case "close":
                if len(stack) == 1:
                    raise HistoryError(f"{where}: unbalanced ']'")
                items = stack.pop()
                value: Value | _Keyword = tuple(_plain(item) for item in items)
            case "string":
                value = _edn_string(token.group("string"))
            case "keyword":
                value = _Keyword(token.group("keyword"))
            case "int":
                value = int(token.group("int"))
            case "symbol":
                value = {"nil": None, "true": True, "false": False}[token.group("symbol")]
            case _:
                raise AssertionError(f"unexpected EDN token {kind}")
        stack[-1].append(value)
    if len(stack) != 1:
        raise HistoryError(f"{where}: unbalanced '['")
    return stack[0]


def _plain(item: Value | _Keyword) -> Value:
    """A value with keywords written as ``:name`` strings."""
    return f":{item.name}" if isinstance(item, _Keyword) else item


_TYPES = {"invoke": OpType.INVOKE, "ok": OpType.OK, "fail": OpType.FAIL, "info": OpType.INFO}

_JEPSEN_LINE = re.compile(
    r"jepsen\.util\s+-\s+(?P<process>\d+)\s+:(?P<type>invoke|ok|fail|info)\s+"
    r":(?P<f>[\w-]+)\s+(?P<value>.*?)\s*$"
)


def parse_jepsen(text: str) -> tuple[Operation, ...]:
    """Operations on one register (key "") from a Jepsen log."""
    events: list[Event] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        found = _JEPSEN_LINE.search(line)
        if found is None:
            continue
        where = f"line {line_number}"
        values = _edn_values(found.group("value"), where)
        if len(values) != 1:
            raise HistoryError(f"{where}: expected one value, got {found.group('value')!r}")
        value = _plain(values[0])
        op_type = _TYPES[found.group("type")]
        f = found.group("f")
        match op_type, f:
            case OpType.OK, "cas":
                op_type, value = OpType.OK, True
            case OpType.FAIL, "cas":
                op_type, value = OpType.OK, False
            case OpType.FAIL | OpType.INFO, _:
                value = None
        events.append(Event(int(found.group("process")), op_type, f, "", value, line_number))
    return operations_from_events(events)


def parse_kv(text: str) -> tuple[Operation, ...]:
    """Operations from EDN maps with :process, :type, :f, :key and :value, one per line."""
    events: list[Event] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        where = f"line {line_number}"
        if not (stripped.startswith("{") and stripped.endswith("}")):
            raise HistoryError(f"{where}: expected an EDN map {{...}}")
        items = _edn_values(stripped[1:-1], where)
        if len(items) % 2:
            raise HistoryError(f"{where}: a map needs key-value pairs")
        fields: dict[str, Value | _Keyword] = {}
        for name, value in zip(items[::2], items[1::2], strict=True):
            if not isinstance(name, _Keyword):
                raise HistoryError(f"{where}: map keys must be keywords, got {name!r}")
            fields[name.name] = value
        match fields:
            case {
                "process": int(process),
                "type": _Keyword(name=type_name),
                "f": _Keyword(name=f),
                "key": str(key),
            } if type_name in _TYPES:
                value = _plain(fields.get("value"))
                events.append(Event(process, _TYPES[type_name], f, key, value, line_number))
            case _:
                raise HistoryError(
                    f"{where}: needs :process <int>, :type :invoke|:ok|:fail|:info, "
                    f":f <keyword> and :key <string>"
                )
    return operations_from_events(events)


def parse_jsonl(text: str) -> tuple[Operation, ...]:
    """Operations from Concord's JSONL event format."""
    return operations_from_events(events_from_jsonl(text))


PARSERS: dict[str, Callable[[str], tuple[Operation, ...]]] = {
    "jepsen": parse_jepsen,
    "kv": parse_kv,
    "jsonl": parse_jsonl,
}
"""The readers by their command-line format name."""

DEFAULT_MODELS = {"jepsen": "register", "kv": "kv", "jsonl": "concord"}
"""The model each format's histories are usually checked against."""
