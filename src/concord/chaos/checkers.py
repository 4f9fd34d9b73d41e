"""Checkers: what a chaos run's history must satisfy, each with a verdict and its evidence.

- ``check_linearizable``: every single-key operation (``read``, ``write``, ``cas``,
  ``delete``; the set adds and counter steps included) against ``ConcordKVModel``, key by
  key, with the WGL checker of ``concord.sim.lincheck``;
- ``check_set``: the final listing of the set holds every acknowledged add (none lost),
  nothing that was never attempted (no phantom), and no add the cluster said definitely
  failed; a fresh key's ``create_only`` put must never fail its compare;
- ``check_counter``: every read of the counter lies between the increments acknowledged
  before it began and those attempted before it ended (so the final value lies within
  [acknowledged, attempted]);
- ``check_dkv_set``: the quorum store's set-union keys converged after the final heal (every
  replica's copy the same), and each key's final read holds every acknowledged add (none
  lost), no element never attempted on that key (no phantom) and no add that definitely
  failed;
- ``check_nodes`` and ``check_recovery``: no node exited on its own, and the cluster was
  ready again after the final heal.

A checker answers VALID, INVALID or UNKNOWN (it could not decide: no final read, search
budget exhausted...). Details are JSON-ready for ``verdicts.json``.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

from concord.sim.history import Operation, OpStatus
from concord.sim.lincheck import Verdict, check, format_result
from concord.sim.models import ConcordKVModel

SHOWN_ITEMS: Final = 50
"""How many lost or unexpected elements (or bad reads) a verdict lists."""


class Validity(IntEnum):
    """A checker's answer. Values are append-only."""

    VALID = 0
    INVALID = 1
    UNKNOWN = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class CheckerResult:
    name: str
    validity: Validity
    summary: str  # one line for a person
    details: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {"checker": self.name, "validity": self.validity.label,
                "summary": self.summary, "details": self.details}


def overall(results: Iterable[CheckerResult]) -> Validity:
    """INVALID if any checker is, else UNKNOWN if any is, else VALID."""
    found = {r.validity for r in results}
    if Validity.INVALID in found:
        return Validity.INVALID
    return Validity.UNKNOWN if Validity.UNKNOWN in found else Validity.VALID


def _shown(items: Iterable[object]) -> list[object]:
    return list(items)[:SHOWN_ITEMS]


# -- linearizability ----------------------------------------------------------------------


def check_linearizable(ops: Sequence[Operation], *, timeout_s: float,
                       clock: Callable[[], float]) -> CheckerResult:
    """Linearizability of the single-key operations, within ``timeout_s`` of ``clock``."""
    model = ConcordKVModel()
    kv_ops = [op for op in ops if op.f in model.functions]
    if not kv_ops:
        return CheckerResult("linearizable", Validity.UNKNOWN, "no single-key operations")
    result = check(kv_ops, model, timeout_s=timeout_s, clock=clock, decide_every_key=False)
    by_verdict = {v.name.lower(): sum(1 for k in result.keys if k.verdict is v)
                  for v in Verdict}
    details: dict[str, object] = {"operations": len(kv_ops), "keys": len(result.keys),
                                  "keys_by_verdict": by_verdict}
    match result.verdict:
        case Verdict.LINEARIZABLE:
            validity = Validity.VALID
            summary = f"{len(kv_ops)} operations on {len(result.keys)} keys are linearizable"
        case Verdict.NOT_LINEARIZABLE:
            validity = Validity.INVALID
            keys = sorted(v.key for v in result.violations)
            summary = f"not linearizable: key(s) {', '.join(keys)}"
            details["explanation"] = format_result(result, model)
        case Verdict.UNKNOWN:
            validity = Validity.UNKNOWN
            summary = f"undecided on {by_verdict['unknown']} of {len(result.keys)} keys"
            details["explanation"] = format_result(result, model)
    return CheckerResult("linearizable", validity, summary, details)


# -- set ----------------------------------------------------------------------------------


def _bucket_of(key: str) -> str:
    return key[: key.rindex("/") + 1]


def check_set(ops: Sequence[Operation], prefix: str) -> CheckerResult:
    """The set check (see the module docstring) for adds and listings under ``prefix``.

    An add is a ``cas`` from absent on a key under ``prefix``; a listing is a ``list``
    whose key is a bucket prefix and whose output is the keys found. The last answered
    listing of each bucket is its final read.
    """
    adds = [op for op in ops if op.f == "cas" and op.key.startswith(prefix)]
    listings = sorted((op for op in ops if op.f == "list" and op.key.startswith(prefix)
                       and op.status is OpStatus.OK), key=lambda op: op.complete_time or 0)
    attempted = {op.key for op in adds}
    acknowledged = {op.key for op in adds if op.status is OpStatus.OK and op.output is True}
    refused = {op.key for op in adds if op.status is OpStatus.OK and op.output is not True}
    failed = {op.key for op in adds if op.status is OpStatus.FAIL}
    unknown = {op.key for op in adds if op.status is OpStatus.INFO}
    final: dict[str, set[str]] = {}
    for listing in listings:
        assert isinstance(listing.output, tuple)
        final[listing.key] = {str(key) for key in listing.output}
    read = set().union(*final.values()) if final else set()
    missing_buckets = sorted({_bucket_of(key) for key in attempted} - set(final))
    lost = sorted(key for key in acknowledged - read if _bucket_of(key) in final)
    unexpected = sorted(read - attempted)
    failed_present = sorted(failed & read)
    details: dict[str, object] = {
        "attempted": len(attempted), "acknowledged": len(acknowledged),
        "failed": len(failed), "unknown": len(unknown), "read": len(read),
        "recovered": len(unknown & read), "lost_count": len(lost), "lost": _shown(lost),
        "unexpected_count": len(unexpected), "unexpected": _shown(unexpected),
        "failed_but_present": _shown(failed_present),
        "refused": _shown(sorted(refused)), "unread_buckets": missing_buckets,
    }
    problems = []
    if lost:
        problems.append(f"{len(lost)} acknowledged add(s) lost")
    if unexpected:
        problems.append(f"{len(unexpected)} element(s) never added")
    if failed_present:
        problems.append(f"{len(failed_present)} add(s) reported failed yet present")
    if refused:
        problems.append(f"{len(refused)} create-only add(s) of a fresh key refused")
    if problems:
        return CheckerResult("set", Validity.INVALID, "; ".join(problems), details)
    if not attempted:
        return CheckerResult("set", Validity.UNKNOWN, "no add attempted", details)
    if missing_buckets:
        return CheckerResult("set", Validity.UNKNOWN,
                             f"no final read of {len(missing_buckets)} bucket(s)", details)
    return CheckerResult(
        "set", Validity.VALID,
        f"{len(acknowledged)} acknowledged of {len(attempted)} attempted adds all present; "
        f"{len(unknown & read)} of {len(unknown)} unknown ones present", details)


# -- counter ------------------------------------------------------------------------------


def _counter_value(output: object) -> int | None:
    """The counter a read saw (an absent key is 0), or None for a value that is not one."""
    if output is None:
        return 0
    if isinstance(output, bytes) and output.isdigit():
        return int(output)
    return None


def check_counter(ops: Sequence[Operation], key: str) -> CheckerResult:
    """The counter check (see the module docstring) for the reads and increments of ``key``.

    An increment is a ``cas`` that was acknowledged as applied (output True) or whose
    outcome is unknown; it may count from its invocation, and must count from its
    completion when acknowledged.
    """
    on_key = [op for op in ops if op.key == key]
    increments = [op for op in on_key if op.f == "cas" and (
        op.status is OpStatus.INFO or (op.status is OpStatus.OK and op.output is True))]
    acknowledged_ends = sorted(op.complete_time for op in increments
                               if op.status is OpStatus.OK and op.complete_time is not None)
    attempted_starts = sorted(op.invoke_time for op in increments)
    reads = sorted((op for op in on_key if op.f == "read" and op.status is OpStatus.OK),
                   key=lambda op: (op.complete_time or 0, op.op_id))
    bad: list[dict[str, object]] = []
    for read in reads:
        assert read.complete_time is not None
        value = _counter_value(read.output)
        lower = bisect.bisect_left(acknowledged_ends, read.invoke_time)
        upper = bisect.bisect_right(attempted_starts, read.complete_time)
        if value is None or not lower <= value <= upper:
            bad.append({"op": read.op_id, "process": read.process, "time": read.invoke_time,
                        "value": repr(read.output), "lower": lower, "upper": upper})
    details: dict[str, object] = {
        "reads": len(reads), "acknowledged": len(acknowledged_ends),
        "attempted": len(attempted_starts), "bad_reads_count": len(bad),
        "bad_reads": _shown(bad),
    }
    if reads:
        final = _counter_value(reads[-1].output)
        details["final_value"] = final
    if bad:
        first = bad[0]
        return CheckerResult(
            "counter", Validity.INVALID,
            f"{len(bad)} read(s) out of bounds, first {first['value']} not in "
            f"[{first['lower']}, {first['upper']}]", details)
    if not reads:
        return CheckerResult("counter", Validity.UNKNOWN, "no read of the counter", details)
    return CheckerResult(
        "counter", Validity.VALID,
        f"{len(reads)} reads within bounds; final {details['final_value']} in "
        f"[{len(acknowledged_ends)}, {len(attempted_starts)}]", details)


# -- nodes and recovery -------------------------------------------------------------------


def check_nodes(crashed: Sequence[str]) -> CheckerResult:
    """No node process may have exited unless the nemesis killed it."""
    details: dict[str, object] = {"crashed": list(crashed)}
    if crashed:
        return CheckerResult("nodes", Validity.INVALID,
                             f"node(s) exited on their own: {', '.join(crashed)}", details)
    return CheckerResult("nodes", Validity.VALID, "no node exited on its own", details)


def check_recovery(ready_after_s: float | None, timeout_s: float) -> CheckerResult:
    """After the final heal every node must be ready within ``timeout_s``."""
    if ready_after_s is None:
        return CheckerResult("recovery", Validity.INVALID,
                             f"not every node ready {timeout_s:g} s after the heal",
                             {"timeout_s": timeout_s})
    return CheckerResult("recovery", Validity.VALID,
                         f"every node ready {ready_after_s:.1f} s after the heal",
                         {"ready_after_s": round(ready_after_s, 3), "timeout_s": timeout_s})


# -- the quorum store's sets --------------------------------------------------------------


def _last_answer(ops: Iterable[Operation], f: str, prefix: str) -> dict[str, Operation]:
    """The last answered (ok) operation ``f`` of each key under ``prefix``."""
    last: dict[str, Operation] = {}
    for op in sorted((op for op in ops if op.f == f and op.key.startswith(prefix)
                      and op.status is OpStatus.OK), key=lambda op: op.complete_time or 0):
        last[op.key] = op
    return last


def check_dkv_set(ops: Sequence[Operation], prefix: str) -> CheckerResult:
    """The dkv-set check (see the module docstring) for the keys under ``prefix``.

    An ``add`` has its element as input; a ``read-union`` (after the heal) has the sorted
    union of a key's siblings as output, and the last answered one per key is its final
    read; a ``converge`` has as output the milliseconds from the final heal to the poll that
    found every replica's copy the same, and is ``info`` when that did not happen in time.
    Elements of ``info`` adds may or may not be present.
    """
    adds = [op for op in ops if op.f == "add" and op.key.startswith(prefix)]
    by_status: dict[OpStatus, set[tuple[str, str]]] = {status: set() for status in OpStatus}
    for op in adds:
        assert isinstance(op.input, str), "an add's input is its element"
        by_status[op.status].add((op.key, op.input))
    attempted = set().union(*by_status.values())
    acknowledged = by_status[OpStatus.OK]
    failed, indefinite = by_status[OpStatus.FAIL], by_status[OpStatus.INFO]
    keys = sorted({key for key, _ in attempted})
    final = {key: {str(e) for e in op.output} for key, op in
             _last_answer(ops, "read-union", prefix).items() if isinstance(op.output, tuple)}
    read = {(key, element) for key, elements in final.items() for element in elements}
    converged = {key: op.output for key, op in _last_answer(ops, "converge", prefix).items()
                 if isinstance(op.output, int)}
    polled = {op.key for op in ops if op.f == "converge" and op.key.startswith(prefix)}
    unconverged = sorted((set(keys) & polled) - set(converged))
    unread = sorted(set(keys) - set(final))
    unpolled = sorted(set(keys) - polled)
    lost = sorted(pair for pair in acknowledged - read if pair[0] in final)
    phantom = sorted(read - attempted)
    failed_present = sorted(failed & read)
    convergence_s = {key: converged[key] / 1000 for key in keys if key in converged}
    details: dict[str, object] = {
        "keys": len(keys), "attempted": len(attempted), "acknowledged": len(acknowledged),
        "failed": len(failed), "indefinite": len(indefinite),
        "indefinite_present": len(indefinite & read),
        "indefinite_absent": len({pair for pair in indefinite if pair[0] in final} - read),
        "lost_count": len(lost), "lost": _shown(f"{k} {e}" for k, e in lost),
        "phantom_count": len(phantom), "phantom": _shown(f"{k} {e}" for k, e in phantom),
        "failed_but_present": _shown(f"{k} {e}" for k, e in failed_present),
        "convergence_s": convergence_s,
        "max_convergence_s": max(convergence_s.values(), default=None),
        "not_converged": unconverged, "unread_keys": unread, "unpolled_keys": unpolled,
    }
    problems = []
    if lost:
        problems.append(f"{len(lost)} acknowledged add(s) lost")
    if phantom:
        problems.append(f"{len(phantom)} element(s) never added")
    if failed_present:
        problems.append(f"{len(failed_present)} add(s) reported failed yet present")
    if unconverged:
        problems.append(f"{len(unconverged)} key(s) did not converge after the heal")
    if problems:
        return CheckerResult("dkv-set", Validity.INVALID, "; ".join(problems), details)
    if not attempted:
        return CheckerResult("dkv-set", Validity.UNKNOWN, "no add attempted", details)
    if unread or unpolled:
        return CheckerResult("dkv-set", Validity.UNKNOWN,
                             f"no final read of {len(unread)} key(s), no convergence poll of "
                             f"{len(unpolled)}", details)
    return CheckerResult(
        "dkv-set", Validity.VALID,
        f"{len(acknowledged)} acknowledged of {len(attempted)} attempted adds on {len(keys)} "
        f"keys all present; {details['indefinite_present']} of {len(indefinite)} indefinite "
        f"ones present; converged at most {details['max_convergence_s']} s after the heal",
        details)
