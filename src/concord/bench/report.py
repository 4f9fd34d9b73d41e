"""Benchmark results: latency histograms, per-process results, merging, tables, JSON and chart.

Latencies go into an HDR histogram (``hdrhistogram``: 1 µs to 60 s at three significant
digits, so a percentile is within 0.1 % of the recorded value) with the exact maximum kept
beside it. A worker process sends its ``ProcessResult`` as JSON (histograms encoded); the
parent merges them into one ``BenchResult``. Only successful operations are timed; failures
are counted by kind.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

LOWEST_LATENCY_US: Final = 1
HIGHEST_LATENCY_US: Final = 60_000_000
SIGNIFICANT_DIGITS: Final = 3
PERCENTILES: Final = (50.0, 90.0, 99.0, 99.9)


class LatencyRecorder:
    """An HDR histogram of latencies in microseconds plus the exact maximum."""

    __slots__ = ("_histogram", "max_us")

    def __init__(self) -> None:
        self._histogram = HdrHistogram(LOWEST_LATENCY_US, HIGHEST_LATENCY_US, SIGNIFICANT_DIGITS)
        self.max_us = 0

    def record_us(self, latency_us: int, count: int = 1) -> None:
        """Record ``count`` operations that took ``latency_us`` (a batch's ops share its
        request's latency)."""
        clamped = min(max(latency_us, LOWEST_LATENCY_US), HIGHEST_LATENCY_US)
        recorded = self._histogram.record_value(clamped, count)
        assert recorded, f"latency {clamped} µs out of the histogram's range"
        self.max_us = max(self.max_us, latency_us)

    @property
    def count(self) -> int:
        return int(self._histogram.get_total_count())

    def percentile_us(self, percentile: float) -> int:
        """The smallest recorded value (to 0.1 %) that ``percentile`` % of values do not exceed."""
        assert 0.0 < percentile <= 100.0
        return int(self._histogram.get_value_at_percentile(percentile))

    def mean_us(self) -> float:
        return float(self._histogram.get_mean_value()) if self.count else 0.0

    def add(self, other: LatencyRecorder) -> None:
        self._histogram.add(other._histogram)
        self.max_us = max(self.max_us, other.max_us)

    def to_json(self) -> dict[str, Any]:
        return {"hdr": self._histogram.encode().decode("ascii"), "max_us": self.max_us}

    @classmethod
    def from_counts(cls, counts: Iterable[tuple[int, int]], max_us: int) -> LatencyRecorder:
        """A recorder of latencies measured elsewhere: ``count`` values of each ``latency_us``
        (bucketed already or not) and the exact maximum."""
        recorder = cls()
        for latency_us, count in counts:
            assert count > 0, f"{count} values of {latency_us} µs"
            clamped = min(max(latency_us, LOWEST_LATENCY_US), HIGHEST_LATENCY_US)
            recorded = recorder._histogram.record_value(clamped, count)
            assert recorded, f"latency {clamped} µs out of the histogram's range"
        recorder.max_us = max_us
        return recorder

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> LatencyRecorder:
        recorder = cls()
        recorder._histogram.decode_and_add(document["hdr"].encode("ascii"))
        recorder.max_us = int(document["max_us"])
        return recorder


@dataclass(frozen=True, slots=True)
class LatencySummary:
    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    @classmethod
    def of(cls, recorder: LatencyRecorder) -> LatencySummary:
        if recorder.count == 0:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        p50, p90, p99, p999 = (recorder.percentile_us(p) / 1000 for p in PERCENTILES)
        return cls(recorder.count, recorder.mean_us() / 1000, p50, p90, p99, p999,
                   recorder.max_us / 1000)

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "mean": round(self.mean_ms, 4), "p50": self.p50_ms,
                "p90": self.p90_ms, "p99": self.p99_ms, "p99.9": self.p999_ms,
                "max": self.max_ms}


@dataclass(slots=True)
class OpStats:
    """Successful operations (timed) and failures (counted by kind) of one operation type."""

    latency: LatencyRecorder = field(default_factory=LatencyRecorder)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def succeeded(self) -> int:
        return self.latency.count

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def count_error(self, kind: str, count: int = 1) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + count

    def add(self, other: OpStats) -> None:
        self.latency.add(other.latency)
        for kind, count in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + count

    def to_json(self) -> dict[str, Any]:
        return {"histogram": self.latency.to_json(), "errors": dict(sorted(self.errors.items()))}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> OpStats:
        return cls(LatencyRecorder.from_json(document["histogram"]),
                   {str(k): int(v) for k, v in document["errors"].items()})


@dataclass(slots=True)
class ProcessResult:
    """What one worker process measured: its clients, its measured window, its op stats."""

    clients: int
    elapsed_s: float  # from the end of warm-up to the last measured completion
    ops: dict[str, OpStats]
    stopped_by: str  # "duration", "count" or "time cap"

    def to_json(self) -> dict[str, Any]:
        return {"clients": self.clients, "elapsed_s": self.elapsed_s,
                "stopped_by": self.stopped_by,
                "ops": {name: stats.to_json() for name, stats in self.ops.items()}}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ProcessResult:
        return cls(int(document["clients"]), float(document["elapsed_s"]),
                   {str(n): OpStats.from_json(s) for n, s in document["ops"].items()},
                   str(document["stopped_by"]))


def merge_processes(results: Sequence[ProcessResult]) -> ProcessResult:
    """One result for all processes: stats added, the longest measured window (their windows
    start together at the start barrier), "time cap" if any process hit it."""
    assert results, "nothing to merge"
    stopped = {r.stopped_by for r in results} - {"time cap"}
    assert len(stopped) <= 1, f"processes ran different workloads: {stopped}"
    stopped_by = "time cap" if any(r.stopped_by == "time cap" for r in results) else stopped.pop()
    return ProcessResult(sum(r.clients for r in results), max(r.elapsed_s for r in results),
                         _added_ops(results), stopped_by)


def _added_ops(results: Iterable[ProcessResult]) -> dict[str, OpStats]:
    """Each operation's stats over all ``results``, added, by operation name."""
    ops: dict[str, OpStats] = {}
    for result in results:
        for name, stats in result.ops.items():
            ops.setdefault(name, OpStats()).add(stats)
    return dict(sorted(ops.items()))


@dataclass(frozen=True, slots=True)
class OpReport:
    name: str
    succeeded: int
    failed: int
    throughput_ops_per_s: float  # successful operations per second
    latency: LatencySummary
    errors: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"succeeded": self.succeeded, "failed": self.failed,
                "throughput_ops_per_s": round(self.throughput_ops_per_s, 1),
                "latency_ms": self.latency.to_json(), "errors": dict(self.errors)}


@dataclass(frozen=True, slots=True)
class BenchResult:
    """A finished run: the workload (as JSON), the merged measurements and their summaries."""

    workload: Mapping[str, Any]
    measured: ProcessResult
    endpoints_used: tuple[str, ...]

    @property
    def elapsed_s(self) -> float:
        return self.measured.elapsed_s

    def _report(self, name: str, stats: OpStats) -> OpReport:
        rate = stats.succeeded / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return OpReport(name, stats.succeeded, stats.failed, rate, LatencySummary.of(stats.latency),
                        dict(sorted(stats.errors.items())))

    def per_op(self) -> list[OpReport]:
        return [self._report(name, stats) for name, stats in self.measured.ops.items()]

    def total(self) -> OpReport:
        merged = OpStats()
        for stats in self.measured.ops.values():
            merged.add(stats)
        return self._report("total", merged)

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": dict(self.workload),
            "endpoints_used": list(self.endpoints_used),
            "elapsed_s": round(self.elapsed_s, 4),
            "stopped_by": self.measured.stopped_by,
            "total": self.total().to_json(),
            "ops": {r.name: r.to_json() for r in self.per_op()},
            "raw": self.measured.to_json(),
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> BenchResult:
        return cls(document["workload"], ProcessResult.from_json(document["raw"]),
                   tuple(document["endpoints_used"]))


# --- text --------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _markdown(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table with padded columns: readable in a terminal and pasteable in docs."""
    table = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |"
             for row in table]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def render_result(result: BenchResult) -> str:
    """The final report of one run: a line on the workload, a table per op, the errors."""
    w = result.workload
    amount = f"{w['count']:,} ops" if w.get("count") else f"{w['duration_s']:g} s"
    lines = [
        f"{w['target']}: {w['mix']}, {w['clients']} clients in {w['processes']} process(es), "
        f"{amount} after {w['warmup_s']:g} s warm-up, {w['key_size_bytes']}-byte keys, "
        f"{w['value_size_bytes']}-byte values, {w['key_space']:,} keys, "
        f"endpoints {', '.join(result.endpoints_used)}",
        f"measured {result.elapsed_s:.2f} s (stopped by {result.measured.stopped_by})",
        "",
    ]
    if w.get("batch_size"):
        lines[-1:-1] = [f"each request carried {w['batch_size']} puts: ok, ops/s and errors "
                        f"count operations; latencies are per request (per batch of "
                        f"{w['batch_size']})"]
    reports = result.per_op()
    if len(reports) > 1:
        reports.append(result.total())
    header = ("op", "ok", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors")
    rows = [(r.name, f"{r.succeeded:,}", f"{r.throughput_ops_per_s:,.0f}",
             *(_ms(ms) if r.succeeded else "-" for ms in (
                 r.latency.p50_ms, r.latency.p90_ms, r.latency.p99_ms, r.latency.max_ms)),
             f"{r.failed:,}")
            for r in reports]
    lines.append(_markdown(header, rows))
    for report in result.per_op():
        for kind, count in report.errors.items():
            lines.append(f"  {report.name} error {kind}: {count:,}")
    return "\n".join(lines)


def merge_rounds(rounds: Sequence[BenchResult]) -> BenchResult:
    """Runs of one workload made one after another, pooled: their operations and errors
    added, their measured windows summed (so throughput is all successes over all measured
    time) and their latencies in one histogram. One run is returned as it is."""
    assert rounds, "nothing to merge"
    if len(rounds) == 1:
        return rounds[0]
    stopped = {r.measured.stopped_by for r in rounds}
    first = rounds[0]
    measured = ProcessResult(first.measured.clients, sum(r.elapsed_s for r in rounds),
                             _added_ops(r.measured for r in rounds),
                             "time cap" if "time cap" in stopped else first.measured.stopped_by)
    return BenchResult({**first.workload, "rounds": len(rounds)}, measured,
                       first.endpoints_used)


@dataclass(frozen=True, slots=True)
class Comparison:
    """The results of one workload on several systems, the first being the baseline; with
    several rounds, ``results`` pools each system's rounds (``merge_rounds``) and ``rounds``
    keeps them, in order."""

    workload: str
    results: Mapping[str, BenchResult]  # system name -> result; a system may sit one out
    rounds: Mapping[str, Sequence[BenchResult]] = field(default_factory=dict)

    @classmethod
    def of_rounds(cls, workload: str,
                  rounds: Mapping[str, Sequence[BenchResult]]) -> Comparison:
        return cls(workload, {system: merge_rounds(runs) for system, runs in rounds.items()},
                   {system: list(runs) for system, runs in rounds.items() if len(runs) > 1})

    def round_ratios(self, system: str, baseline: str) -> list[float]:
        """``system``'s throughput over the baseline's in each round they both ran."""
        pairs = zip(self.rounds.get(system, ()), self.rounds.get(baseline, ()), strict=False)
        return [_ratio(ours.total().throughput_ops_per_s, base.total().throughput_ops_per_s)
                for ours, base in pairs]

    def throughput(self, system: str) -> float:
        """ops/s, NaN for a system that did not run this workload."""
        result = self.results.get(system)
        return math.nan if result is None else result.total().throughput_ops_per_s

    def ratio(self, system: str, baseline: str) -> float:
        return _ratio(self.throughput(system), self.throughput(baseline))


def _ratio(ours: float, base: float) -> float:
    """One throughput over another; NaN when the other is zero (or NaN: it sat out)."""
    return ours / base if base > 0 else math.nan


def render_comparison(comparisons: Sequence[Comparison], systems: Sequence[str]) -> str:
    """One row per workload: each system's ops/s and p50, and its ratio to the baseline (the
    first system); "—" where a system did not run the workload."""
    assert comparisons and systems
    baseline = systems[0]
    header = ["workload", f"{baseline} ops/s", f"{baseline} p50 ms"]
    for system in systems[1:]:
        header += [f"{system} ops/s", f"{system} p50 ms", f"{system}/{baseline}"]
    rows = []
    for comparison in comparisons:
        row = [comparison.workload]
        for system in systems:
            result = comparison.results.get(system)
            if result is None:
                row += ["—", "—"] + ([] if system == baseline else ["—"])
                continue
            total = result.total()
            errors = f" ({total.failed:,} err)" if total.failed else ""
            row += [f"{total.throughput_ops_per_s:,.0f}{errors}", _ms(total.latency.p50_ms)]
            if system != baseline:
                ratio = comparison.ratio(system, baseline)
                row.append("—" if math.isnan(ratio) else f"{ratio:.2f}")
        rows.append(row)
    return _markdown(header, rows)


def render_round_ratios(comparisons: Sequence[Comparison], systems: Sequence[str]) -> str:
    """With several rounds: each system's ratio to the baseline round by round, and each
    system's p50 by round, under the pooled table; "" with one round."""
    baseline = systems[0]
    lines = []
    for comparison in comparisons:
        if not comparison.rounds:
            continue
        parts = []
        for system in systems[1:]:
            ratios = comparison.round_ratios(system, baseline)
            if ratios:
                parts.append(f"{system}/{baseline} " + " ".join(f"{r:.2f}" for r in ratios))
        p50s = [f"{system} " + " ".join(_ms(r.total().latency.p50_ms)
                                         for r in comparison.rounds[system])
                for system in systems if system in comparison.rounds]
        lines.append(f"- {comparison.workload}: by round, " + "; ".join(parts)
                     + "; p50 ms " + "; ".join(p50s))
    return "\n".join(lines)


# --- chart -------------------------------------------------------------------------------

CHART_COLORS: Final = ("#7f8c8d", "#2e86de", "#10ac84", "#ee5253", "#f368e0")
BAR_HEIGHT_PX: Final = 18
CHART_WIDTH_PX: Final = 760
LABEL_WIDTH_PX: Final = 230
BAR_AREA_PX: Final = 400


def render_chart_html(comparisons: Sequence[Comparison], systems: Sequence[str], title: str,
                      table_markdown: str) -> str:
    """A self-contained HTML page: throughput bars per workload (each workload scaled to its
    own best, numbers and ratios written on the bars; no bar for a system that sat it out)
    above the table."""
    assert comparisons and systems
    baseline = systems[0]
    group_height = BAR_HEIGHT_PX * len(systems) + 22
    height = 40 + group_height * len(comparisons) + 24
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH_PX}" '
             f'height="{height}" font-family="sans-serif" font-size="12">']
    for i, system in enumerate(systems):
        x = LABEL_WIDTH_PX + i * 150
        parts.append(f'<rect x="{x}" y="8" width="12" height="12" '
                     f'fill="{CHART_COLORS[i % len(CHART_COLORS)]}"/>')
        parts.append(f'<text x="{x + 16}" y="18">{html.escape(system)}</text>')
    y = 40
    for comparison in comparisons:
        best = max((comparison.throughput(s) for s in systems if s in comparison.results),
                   default=0.0) or 1.0
        parts.append(f'<text x="0" y="{y + 12}" font-weight="bold">'
                     f'{html.escape(comparison.workload)}</text>')
        for i, system in enumerate(systems):
            if system not in comparison.results:
                continue
            rate = comparison.throughput(system)
            ratio_value = comparison.ratio(system, baseline)
            width = max(1, round(BAR_AREA_PX * rate / best))
            bar_y = y + 16 + i * BAR_HEIGHT_PX
            ratio = "" if system == baseline or math.isnan(ratio_value) else (
                f"  ×{ratio_value:.2f}")
            parts.append(f'<rect x="{LABEL_WIDTH_PX}" y="{bar_y}" width="{width}" '
                         f'height="{BAR_HEIGHT_PX - 4}" '
                         f'fill="{CHART_COLORS[i % len(CHART_COLORS)]}"/>')
            parts.append(f'<text x="{LABEL_WIDTH_PX + width + 6}" y="{bar_y + 11}">'
                         f'{rate:,.0f} ops/s{ratio}</text>')
        y += group_height
    parts.append("</svg>")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title></head>\n<body><h3>{html.escape(title)}</h3>\n{''.join(parts)}\n"
            f"<pre>{html.escape(table_markdown)}</pre>\n</body></html>\n")
