"""The linearizability checker: does a client history have a legal sequential order?

A history is linearizable when every operation can be given a single instant between its
invocation and its completion such that, taken in the order of those instants, the
operations are a legal run of the sequential model (``concord.sim.models``) and every
observed output matches. Operations that failed (``OpStatus.FAIL``) never happened and are
dropped; operations with unknown outcome (``OpStatus.INFO``) may take effect at any instant
after their invocation, or never, and those that cannot change the state are dropped.

The search is Wing & Gong's, as improved by Lowe and Porcupine: calls and returns sit in
doubly linked lists in time order; the search repeatedly linearizes (lifts out) a call
that comes before the first remaining return and whose step the model accepts, and
backtracks when none is left (the first return's operation had to be placed and could
not). Visited (placed-operations bitset, model state) pairs prune every configuration
already explored. Two refinements keep it fast in Python:

- an operation that never changes the state (a read, a compare-and-set seen to fail) is
  tried first and placed as soon as the model accepts it, with no alternative explored;
- operations with unknown outcome are tried after all others, and a configuration is
  pruned when one with the same completed operations and state but a subset of the
  unknown-outcome ones placed was explored.

The search stack is explicit (no recursion), so histories of any length fit.

The history is split by key (linearizability is P-compositional) and the keys are searched
in turns of ``SEARCH_SLICE_STEPS`` steps, so that a violation on any key is found about as
fast as on the easiest one; the search stops at the first violation unless asked to decide
every key. Time is an input: ``check`` takes a ``clock`` and a budget, reads the clock after
every turn and answers UNKNOWN rather than run past the budget.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Generic, TypeVar

from concord.sim.history import Operation, OpStatus
from concord.sim.models import Model

StateT = TypeVar("StateT", bound=Hashable)

SEARCH_SLICE_STEPS = 2048
"""How many search steps one key runs before the next key's turn (and a clock reading)."""

DEFAULT_MAX_CONFIGURATIONS = 1_000_000
"""How many configurations the search may remember at once, over all keys: a memory bound
(about 330 bytes each when states are strings of a few hundred characters)."""

# The search's linked lists (see ``_KeySearch``), their sentinel nodes, and the first
# node number of an entry.
_FORCED_CALLS, _OTHER_CALLS, _INFO_CALLS, _RETURNS = 0, 1, 2, 3
_HEADS = (0, 1, 2, 3)
_TAILS = (4, 5, 6, 7)
_FORCED_CALLS_HEAD = _HEADS[_FORCED_CALLS]
_RETURNS_HEAD = _HEADS[_RETURNS]
_FIRST_ENTRY = 8


class Verdict(IntEnum):
    """The answer for a history or one key of it. Values are append-only."""

    LINEARIZABLE = 0
    NOT_LINEARIZABLE = 1
    UNKNOWN = 2  # undecided: see ``KeyResult.undecided_reason``


@dataclass(frozen=True, slots=True)
class Violation:
    """Why one key is not linearizable, as far as the search got.

    ``linearized`` is the longest legal sequence of operations the search built, in
    linearization order, and ``state_after`` the model state it leaves. At that point
    ``blocked`` had completed, so it had to be placed next, but neither it nor any operation
    still open (``also_open``) could be placed without contradicting an observed output or
    leading only to configurations already shown to be dead ends.
    """

    key: str
    linearized: tuple[Operation, ...]
    state_after: str
    blocked: Operation
    also_open: tuple[Operation, ...]


@dataclass(frozen=True, slots=True)
class KeyResult:
    """The verdict for one key. ``operation_count`` counts the operations searched."""

    key: str
    verdict: Verdict
    operation_count: int
    search_steps: int
    violation: Violation | None
    undecided_reason: str = ""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict for a history and for each of its keys (sorted by key)."""

    verdict: Verdict
    model_name: str
    keys: tuple[KeyResult, ...]

    @property
    def violations(self) -> tuple[Violation, ...]:
        return tuple(k.violation for k in self.keys if k.violation is not None)


def check(
    history: Sequence[Operation],
    model: Model[StateT],
    *,
    timeout_s: float | None = None,
    clock: Callable[[], float] | None = None,
    decide_every_key: bool = False,
    max_configurations: int = DEFAULT_MAX_CONFIGURATIONS,
) -> CheckResult:
    """Check ``history`` against ``model``, key by key, within ``timeout_s`` of ``clock``.

    The search stops, leaving the keys not yet decided UNKNOWN, when the time is up, when
    the keys being searched remember ``max_configurations`` configurations between them,
    or (unless ``decide_every_key``) at the first key found not linearizable. Without
    ``timeout_s`` there is no time limit. Raises ``ValueError`` for an operation the model
    does not know.
    """
    if timeout_s is not None and clock is None:
        raise ValueError("a timeout needs a clock")
    assert max_configurations > 0
    deadline = None if timeout_s is None or clock is None else clock() + timeout_s
    partitions = _partition(history, model)
    searches = [_KeySearch(key, partitions[key], model) for key in sorted(partitions)]
    decided: dict[str, KeyResult] = {}
    turns = deque(searches)
    remembered = 0  # configurations held by the searches under way
    reason = "stopped after a violation on another key"
    while turns:
        if deadline is not None and clock is not None and clock() >= deadline:
            reason = "time budget exhausted"
            break
        search = turns.popleft()
        held_before = search.configuration_count
        outcome = search.run(SEARCH_SLICE_STEPS, max_configurations - remembered)
        remembered += search.configuration_count - held_before
        if outcome is None:
            turns.append(search)
            continue
        if outcome.verdict is Verdict.UNKNOWN:
            reason = outcome.undecided_reason
            break
        remembered -= search.configuration_count
        decided[search.key] = outcome
        if outcome.verdict is Verdict.NOT_LINEARIZABLE and not decide_every_key:
            break
    results = tuple(decided.get(s.key) or s.undecided(reason) for s in searches)
    verdicts = {r.verdict for r in results}
    if Verdict.NOT_LINEARIZABLE in verdicts:
        verdict = Verdict.NOT_LINEARIZABLE
    elif Verdict.UNKNOWN in verdicts:
        verdict = Verdict.UNKNOWN
    else:
        verdict = Verdict.LINEARIZABLE
    return CheckResult(verdict, model.name, results)


def _partition(history: Sequence[Operation], model: Model[Any]) -> dict[str, list[Operation]]:
    """The operations to search, by key: failed ones and read-only unknown ones dropped."""
    partitions: dict[str, list[Operation]] = {}
    for op in history:
        if op.f not in model.functions:
            known = ", ".join(sorted(model.functions))
            raise ValueError(
                f"operation {op.op_id} ({op.f!r}) is not one of the {model.name} model's: {known}"
            )
        if op.status is OpStatus.FAIL:
            continue
        if op.status is OpStatus.INFO and model.is_read_only(op):
            continue
        partitions.setdefault(op.key, []).append(op)
    return partitions


class _KeySearch(Generic[StateT]):
    """The search for one key's linearization, advanced a bounded number of steps at a time.

    Four doubly linked lists share node numbers. The returns list holds the returns of
    completed operations in time order; the first one left bounds the candidates. Three
    call lists hold the calls, in invocation order, of: completed operations that never
    change the state (tried first: placing one is free), other completed operations, and
    operations with unknown outcome (tried last: a history that does not need them is
    accepted without exploring where they might go). Each node has an order key, 2*time for
    a call and 2*time+1 for a return, so a call is a candidate while its key is below the
    first return's (at equal times calls come first: touching intervals overlap). Placing
    an operation lifts its nodes out of their lists; backtracking puts them back.
    """

    def __init__(self, key: str, ops: Sequence[Operation], model: Model[StateT]) -> None:
        self.key = key
        self.ops = ops
        self.model = model
        op_count = len(ops)
        assert op_count > 0, "a key with no operations needs no search"
        self.is_info = [op.status is not OpStatus.OK for op in ops]
        self.forced = [op.status is OpStatus.OK and model.is_read_only(op) for op in ops]
        self.bits = [1 << index for index in range(op_count)]

        lists: list[list[tuple[int, int]]] = [[] for _ in _HEADS]  # (order key, op index)
        for index, op in enumerate(ops):
            if self.is_info[index]:
                lists[_INFO_CALLS].append((2 * op.invoke_time, index))
                continue
            assert op.complete_time is not None, "a completed operation has a completion time"
            calls = _FORCED_CALLS if self.forced[index] else _OTHER_CALLS
            lists[calls].append((2 * op.invoke_time, index))
            lists[_RETURNS].append((2 * op.complete_time + 1, index))
        node_count = _FIRST_ENTRY + 2 * op_count
        self.nxt = [0] * node_count
        self.prv = [0] * node_count
        self.node_op = [-1] * node_count
        self.order_key = [0] * node_count
        self.call_node = [0] * op_count
        self.return_node = [0] * op_count
        self.call_list = [0] * op_count
        beyond = 2 * max(max(op.invoke_time, op.complete_time or 0) for op in ops) + 2
        node = _FIRST_ENTRY
        for which, entries in enumerate(lists):
            entries.sort()
            head, tail = _HEADS[which], _TAILS[which]
            self.order_key[tail] = beyond
            previous = head
            for order_key, index in entries:
                self.node_op[node] = index
                self.order_key[node] = order_key
                if which == _RETURNS:
                    self.return_node[index] = node
                else:
                    self.call_node[index] = node
                    self.call_list[index] = which
                self.nxt[previous] = node
                self.prv[node] = previous
                previous = node
                node += 1
            self.nxt[previous] = tail
            self.prv[tail] = previous

        # (completed operations placed, state) -> the sets of unknown-outcome operations
        # placed with them that were explored; see ``run`` for why subsets are enough.
        self.visited: dict[tuple[int, StateT], list[int]] = {}
        self.configuration_count = 0
        self.stack_ops: list[int] = []
        self.stack_states: list[StateT] = []
        self.state = model.init()
        self.linearized = 0
        self.placed_info = 0
        self.remaining = op_count - sum(self.is_info)
        self.calls = _FORCED_CALLS
        self.entry = self.nxt[_HEADS[_FORCED_CALLS]]
        self.steps = 0
        self.best_depth = -1
        self.violation: Violation | None = None

    def undecided(self, reason: str) -> KeyResult:
        """The result when the search stops before deciding, for ``reason``."""
        return KeyResult(self.key, Verdict.UNKNOWN, len(self.ops), self.steps, None, reason)

    def _decided(self, verdict: Verdict) -> KeyResult:
        """The result, once decided; the memory of the search is released."""
        self.visited = {}
        self.stack_ops, self.stack_states = [], []
        return KeyResult(self.key, verdict, len(self.ops), self.steps, self.violation)

    def run(self, max_steps: int, max_new_configurations: int) -> KeyResult | None:
        """Search on for at most ``max_steps`` steps; the result once decided, else None.

        Remembering more than ``max_new_configurations`` further configurations ends the
        search undecided.

        Pruning, besides the visited configurations: a configuration is dead if one with the
        same completed operations and state but a subset of these unknown-outcome ones placed
        was explored (placing one is never required, so the subset has every future this
        has). And an operation that never changes the state (``Model.is_read_only``) is
        placed as soon as the model accepts it, with no alternative tried: its
        linearization point can always be moved to the present without changing any state.
        """
        ops, step, visited = self.ops, self.model.step, self.visited
        nxt, prv, node_op, order_key = self.nxt, self.prv, self.node_op, self.order_key
        call_node, return_node, call_list = self.call_node, self.return_node, self.call_list
        is_info, forced, bits = self.is_info, self.forced, self.bits
        stack_ops, stack_states = self.stack_ops, self.stack_states
        state, linearized, placed_info = self.state, self.linearized, self.placed_info
        remaining, configuration_count = self.remaining, self.configuration_count
        calls, entry = self.calls, self.entry
        max_configurations = configuration_count + max_new_configurations
        bound = order_key[nxt[_RETURNS_HEAD]]
        steps_left = max_steps
        while remaining and steps_left:
            steps_left -= 1
            if order_key[entry] < bound:
                index = node_op[entry]
                accepted, next_state = step(state, ops[index])
                if not accepted:
                    entry = nxt[entry]
                    continue
                if is_info[index]:
                    next_linearized, next_placed_info = linearized, placed_info | bits[index]
                else:
                    next_linearized, next_placed_info = linearized | bits[index], placed_info
                memo = (next_linearized, next_state)
                explored = visited.get(memo)
                if explored is None or all(old & ~next_placed_info for old in explored):
                    if configuration_count >= max_configurations:
                        self.steps += max_steps - steps_left
                        self.configuration_count = configuration_count
                        return self.undecided("memory bound on remembered configurations reached")
                    configuration_count += 1
                    if explored is None:
                        visited[memo] = [next_placed_info]
                    else:
                        explored.append(next_placed_info)
                    stack_ops.append(index)
                    stack_states.append(state)
                    state = next_state
                    linearized, placed_info = next_linearized, next_placed_info
                    nxt[prv[entry]] = nxt[entry]
                    prv[nxt[entry]] = prv[entry]
                    if not is_info[index]:
                        remaining -= 1
                        node = return_node[index]
                        nxt[prv[node]] = nxt[node]
                        prv[nxt[node]] = prv[node]
                        bound = order_key[nxt[_RETURNS_HEAD]]
                    calls = _FORCED_CALLS
                    entry = nxt[_FORCED_CALLS_HEAD]
                    continue
                if not forced[index]:
                    entry = nxt[entry]
                    continue
                # Placing this forced operation leads only where the search has failed, and
                # it is the only move worth making: this configuration is dead too.
            elif calls != _INFO_CALLS:
                calls += 1
                entry = nxt[_HEADS[calls]]
                continue
            elif len(stack_ops) > self.best_depth:
                # No candidate left: a genuine dead end, the deepest so far.
                self.best_depth = len(stack_ops)
                self.violation = self._violation(state, bound)
            # Backtrack past the last choice, and past forced placements, which had no
            # alternative.
            while True:
                if not stack_ops:
                    self.steps += max_steps - steps_left
                    self.configuration_count = configuration_count
                    assert self.violation is not None
                    return self._decided(Verdict.NOT_LINEARIZABLE)
                index = stack_ops.pop()
                state = stack_states.pop()
                if is_info[index]:
                    placed_info ^= bits[index]
                else:
                    linearized ^= bits[index]
                    remaining += 1
                    node = return_node[index]
                    nxt[prv[node]] = node
                    prv[nxt[node]] = node
                node = call_node[index]
                nxt[prv[node]] = node
                prv[nxt[node]] = node
                if not forced[index]:
                    break
            bound = order_key[nxt[_RETURNS_HEAD]]
            calls = call_list[index]
            entry = nxt[call_node[index]]
        self.steps += max_steps - steps_left
        self.configuration_count = configuration_count
        if not remaining:
            self.violation = None
            return self._decided(Verdict.LINEARIZABLE)
        self.state, self.linearized, self.placed_info = state, linearized, placed_info
        self.remaining, self.calls, self.entry = remaining, calls, entry
        return None

    def _violation(self, state: StateT, bound: int) -> Violation:
        """Describe the dead end where no call before the first return could be placed."""
        blocked = self.node_op[self.nxt[_RETURNS_HEAD]]
        also_open: list[Operation] = []
        for calls in (_FORCED_CALLS, _OTHER_CALLS, _INFO_CALLS):
            node = self.nxt[_HEADS[calls]]
            while self.order_key[node] < bound:
                if self.node_op[node] != blocked:
                    also_open.append(self.ops[self.node_op[node]])
                node = self.nxt[node]
        also_open.sort(key=lambda op: (op.invoke_time, op.op_id))
        return Violation(
            key=self.key,
            linearized=tuple(self.ops[index] for index in self.stack_ops),
            state_after=self.model.describe_state(state),
            blocked=self.ops[blocked],
            also_open=tuple(also_open),
        )


def describe_operation(op: Operation, model: Model[Any]) -> str:
    """One line for a person: process, what the operation did and its interval."""
    end = "" if op.status is OpStatus.INFO or op.complete_time is None else op.complete_time
    return f"process {op.process}: {model.describe(op)}  [t={op.invoke_time}..{end}]"


def format_result(result: CheckResult, model: Model[Any], *, context_ops: int = 10) -> str:
    """The verdict for a person, with each violation's last ``context_ops`` placed operations."""
    counted = sum(k.operation_count for k in result.keys)
    lines = [
        f"{result.verdict.name.replace('_', ' ').lower()}: {counted} operations on "
        f"{len(result.keys)} key(s), {model.name} model"
    ]
    undecided_by_reason: dict[str, list[str]] = {}
    for key_result in result.keys:
        if key_result.verdict is Verdict.UNKNOWN:
            undecided_by_reason.setdefault(key_result.undecided_reason, []).append(key_result.key)
    for reason, keys in undecided_by_reason.items():
        shown = ", ".join(repr(k) for k in keys[:10])
        more = "" if len(keys) <= 10 else f" and {len(keys) - 10} more"
        lines.append(f"undecided ({reason}): key(s) {shown}{more}")
    for violation in result.violations:
        placed = violation.linearized
        lines.append(f"key {violation.key!r}: no linearization")
        lines.append(
            f"  longest legal order found places {len(placed)} operation(s)"
            + (f"; the last {context_ops}:" if len(placed) > context_ops else ":")
        )
        lines.extend(f"    {describe_operation(op, model)}" for op in placed[-context_ops:])
        lines.append(f"  state after them: {violation.state_after}")
        lines.append("  then this operation had completed but could not be placed:")
        lines.append(f"    {describe_operation(violation.blocked, model)}")
        if violation.also_open:
            lines.append("  nor could any operation still open at that point:")
            lines.extend(f"    {describe_operation(op, model)}" for op in violation.also_open)
    return "\n".join(lines)
