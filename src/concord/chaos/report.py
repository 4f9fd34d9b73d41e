"""A chaos run's report folder and its one-line summary.

``write_report`` fills a folder with:

- ``history.jsonl``: every client event (``concord.sim.history`` JSONL, times in ns since
  the run started);
- ``schedule.json``: the planned windows (seed, kinds, timing) and what the nemesis did;
- ``verdicts.json``: every checker's verdict and evidence, and the overall one;
- ``summary.txt``: one line (ops, ok, fail, info, faults, availability, verdicts, and
  ``UNSAFE: ...`` for a run made unsafe on purpose, e.g. with serializable reads);
- ``report.html``: a self-contained page (inline SVG, no scripts, nothing fetched):
  throughput and latency over time with fault windows shaded and labelled, the verdicts,
  the faults as executed and the operation counts per workload.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from concord.chaos.checkers import CheckerResult, Validity, overall
from concord.chaos.nemesis import FaultEvent, FaultKind, Schedule
from concord.sim.history import Operation, OpStatus

NS_PER_S: Final = 1_000_000_000

# -- the summary --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunSummary:
    ops: int
    ok: int
    fail: int
    info: int
    faults: int
    validity: Validity
    verdicts: tuple[tuple[str, Validity], ...]
    unsafe: tuple[str, ...] = ()  # why the run's settings break Concord's promises on purpose

    @property
    def availability_pct(self) -> float:
        """The share of operations that got an answer (ok), in percent."""
        return 100.0 * self.ok / self.ops if self.ops else 0.0

    def line(self) -> str:
        verdicts = " ".join(f"{name}={validity.label}" for name, validity in self.verdicts)
        unsafe = "".join(f" UNSAFE: {reason}" for reason in self.unsafe)
        return (f"ops={self.ops} ok={self.ok} fail={self.fail} info={self.info} "
                f"faults={self.faults} availability={self.availability_pct:.1f}% "
                f"{verdicts} => {self.validity.label.upper()}{unsafe}")


def summarize(ops: Sequence[Operation], events: Sequence[FaultEvent],
              results: Sequence[CheckerResult], unsafe: Sequence[str] = ()) -> RunSummary:
    counts = Counter(op.status for op in ops)
    return RunSummary(
        ops=len(ops), ok=counts[OpStatus.OK], fail=counts[OpStatus.FAIL],
        info=counts[OpStatus.INFO], faults=sum(1 for e in events if e.action == "start"),
        validity=overall(results), verdicts=tuple((r.name, r.validity) for r in results),
        unsafe=tuple(unsafe),
    )


# -- the report folder --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunRecord:
    """Everything a report shows about one run."""

    title: str
    settings: Mapping[str, object]  # how the run was made (JSON-ready)
    schedule: Schedule
    fault_events: Sequence[FaultEvent]
    history_jsonl: str
    operations: Sequence[Operation]
    errors: Mapping[int, str]  # op id -> why it failed or is unknown
    results: Sequence[CheckerResult]
    workload_of: Callable[[str], str]  # key -> workload name, for the counts table
    duration_s: float  # the end of the chart's time axis
    unsafe: Sequence[str] = ()  # why the run is unsafe on purpose (RunSettings.unsafe)


def write_report(folder: Path, record: RunRecord) -> RunSummary:
    """Write the report files into ``folder`` (created) and return the summary."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarize(record.operations, record.fault_events, record.results, record.unsafe)
    (folder / "history.jsonl").write_text(record.history_jsonl)
    schedule = {"planned": record.schedule.to_json(),
                "executed": [e.to_json() for e in record.fault_events]}
    (folder / "schedule.json").write_text(json.dumps(schedule, indent=2) + "\n")
    verdicts = {"validity": summary.validity.label, "unsafe": list(record.unsafe),
                "settings": dict(record.settings),
                "checkers": [r.to_json() for r in record.results]}
    (folder / "verdicts.json").write_text(json.dumps(verdicts, indent=2, default=str) + "\n")
    (folder / "summary.txt").write_text(summary.line() + "\n")
    (folder / "report.html").write_text(render_html(record, summary))
    return summary


# -- fault windows as drawn -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DrawnWindow:
    window: int  # the schedule's window number
    start_s: float
    end_s: float  # equal to start_s for an instant (a leadership transfer)
    kind: str
    target: str  # whom it hit, e.g. "n1" or "n3 | n1 n2"
    family: str

    @property
    def labels(self) -> tuple[str, ...]:
        """What the chart may write, longest first: ``kill-leader n1``, ``kill-leader``,
        ``#7``."""
        return (f"{self.kind} {self.target}".strip(), self.kind, f"#{self.window}")


def drawn_windows(events: Sequence[FaultEvent], run_end_s: float) -> list[DrawnWindow]:
    """Each started fault from its ``start`` event to the next ``heal`` (or the run's end)."""
    drawn = []
    for index, event in enumerate(events):
        if event.action != "start" or event.kind.upper().replace("-", "_") not in \
                FaultKind.__members__:
            continue
        kind = FaultKind.from_label(event.kind)
        start_s = event.time_ns / NS_PER_S
        end_s = start_s
        if kind is not FaultKind.TRANSFER_LEADER:
            heal = next((e for e in events[index + 1:] if e.action == "heal"), None)
            end_s = heal.time_ns / NS_PER_S if heal is not None else run_end_s
        match kind.family:
            case "net" | "partition":
                target = event.detail
            case "transfer":
                target = event.detail.removeprefix("leader ")
            case "clock":
                target = f"{' '.join(event.nodes)} {event.detail.removeprefix('clock ')}"
            case _:
                target = " ".join(event.nodes)
        drawn.append(DrawnWindow(event.window, start_s, end_s, kind.label, target,
                                 kind.family))
    return drawn


# -- the chart ----------------------------------------------------------------------------

WIDTH_PX: Final = 1100
LEFT_PX: Final = 72
RIGHT_PX: Final = 24
PLOT_PX: Final = WIDTH_PX - LEFT_PX - RIGHT_PX
LANE_TOP_PX: Final = 8
LANE_ROW_PX: Final = 17
LANE_ROWS: Final = 3
THROUGHPUT_TOP_PX: Final = LANE_TOP_PX + LANE_ROW_PX * LANE_ROWS + 14
THROUGHPUT_PX: Final = 170
LATENCY_TOP_PX: Final = THROUGHPUT_TOP_PX + THROUGHPUT_PX + 36
LATENCY_PX: Final = 230
AXIS_BOTTOM_PX: Final = LATENCY_TOP_PX + LATENCY_PX
HEIGHT_PX: Final = AXIS_BOTTOM_PX + 66
CHAR_PX: Final = 6.6  # the width of one character at 11 px, to keep labels apart
MAX_POINTS: Final = 8000

OUTCOME_COLORS: Final = {OpStatus.OK: "#1a9850", OpStatus.FAIL: "#d73027",
                         OpStatus.INFO: "#f28e2b"}
FAMILY_COLORS: Final = {"kill": "#fbb4ae", "pause": "#decbe4", "partition": "#b3cde3",
                        "net": "#fed9a6", "transfer": "#4daf4a", "clock": "#ccebc5"}
FAMILY_EDGES: Final = {"kill": "#c0392b", "pause": "#7d3c98", "partition": "#2e6da4",
                       "net": "#c46a00", "transfer": "#2d7d2a", "clock": "#3c8d3a"}


def _nice_step(span: float, max_ticks: int) -> float:
    """The smallest 1, 2 or 5 times a power of ten giving at most ``max_ticks`` ticks."""
    assert span > 0
    magnitude: float = 10.0 ** math.floor(math.log10(span / max_ticks))
    for factor in (1, 2, 5, 10):
        if span / (factor * magnitude) <= max_ticks:
            return factor * magnitude
    return 10 * magnitude


def _fmt(value: float) -> str:
    return f"{value:g}" if value < 1e5 else f"{value:,.0f}"


def render_chart_svg(ops: Sequence[Operation], windows: Sequence[DrawnWindow],
                     duration_s: float) -> str:
    """Throughput (ops/s by outcome) and latency (each operation, log scale) over time,
    fault windows shaded across both panels and labelled in a lane above them."""
    span_s = max(duration_s, 1.0)

    def x(at_s: float) -> float:
        return LEFT_PX + PLOT_PX * min(max(at_s, 0.0), span_s) / span_s

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH_PX} {HEIGHT_PX}" '
           f'width="{WIDTH_PX}" height="{HEIGHT_PX}" font-family="Helvetica, Arial, '
           f'sans-serif" font-size="11" style="max-width:100%;height:auto">',
           f'<rect width="{WIDTH_PX}" height="{HEIGHT_PX}" fill="white"/>']
    out += _windows_svg(windows, x)
    completed = [op for op in ops if op.complete_time is not None]
    out += _throughput_svg(completed, span_s, x)
    out += _latency_svg(completed, x)
    out += _time_axis_svg(span_s, x)
    out += _legend_svg(windows)
    out.append("</svg>")
    return "\n".join(out)


def _windows_svg(windows: Sequence[DrawnWindow], x: Callable[[float], float]) -> list[str]:
    """Shading across both panels, and a bar per window in the lane above them. Lane rows
    take turns, so a label may run on until the window that next uses its row; it is
    shortened (kind only, then the window number) to fit there."""
    out = []
    for index, window in enumerate(windows):
        x0, x1 = x(window.start_s), x(window.end_s)
        fill, edge = FAMILY_COLORS[window.family], FAMILY_EDGES[window.family]
        if x1 - x0 < 1.0:  # an instant: a dashed line through both panels
            out.append(f'<line x1="{x0:.1f}" y1="{THROUGHPUT_TOP_PX}" x2="{x0:.1f}" '
                       f'y2="{AXIS_BOTTOM_PX}" stroke="{edge}" stroke-width="1.5" '
                       f'stroke-dasharray="4 3"/>')
        else:
            for top, height in ((THROUGHPUT_TOP_PX, THROUGHPUT_PX),
                                (LATENCY_TOP_PX, LATENCY_PX)):
                out.append(f'<rect x="{x0:.1f}" y="{top}" width="{x1 - x0:.1f}" '
                           f'height="{height}" fill="{fill}" fill-opacity="0.6"/>')
        row = index % LANE_ROWS
        successor = index + LANE_ROWS
        room = (x(windows[successor].start_s) if successor < len(windows)
                else LEFT_PX + PLOT_PX + RIGHT_PX) - x0 - 6
        label = next((text for text in window.labels if CHAR_PX * len(text) <= room),
                     window.labels[-1])
        y = LANE_TOP_PX + row * LANE_ROW_PX
        out.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 2.0):.1f}" '
                   f'height="{LANE_ROW_PX - 3}" fill="{fill}" stroke="{edge}" '
                   f'stroke-width="0.8"><title>{html.escape(window.labels[0])}</title></rect>')
        out.append(f'<text x="{x0 + 3:.1f}" y="{y + LANE_ROW_PX - 6}" fill="#222">'
                   f'{html.escape(label)}</text>')
    return out


def _throughput_svg(completed: Sequence[Operation], span_s: float,
                    x: Callable[[float], float]) -> list[str]:
    bucket_s = max(0.5, _nice_step(span_s, 150))
    buckets = max(1, round(span_s / bucket_s))  # a short tail is counted in the last one
    counts = {status: [0] * buckets for status in OUTCOME_COLORS}
    for op in completed:
        assert op.complete_time is not None
        index = min(int(op.complete_time / NS_PER_S / bucket_s), buckets - 1)
        counts[op.status][index] += 1
    rates = {s: [c / bucket_s for c in values] for s, values in counts.items()}
    top = max(1.0, *(max(values) for values in rates.values()))
    step = _nice_step(top, 5)
    top = math.ceil(top / step) * step

    def y(rate: float) -> float:
        return THROUGHPUT_TOP_PX + THROUGHPUT_PX * (1 - rate / top)

    out = _panel_frame(THROUGHPUT_TOP_PX, THROUGHPUT_PX,
                       f"throughput (ops/s, {bucket_s:g} s buckets)")
    tick = 0.0
    while tick <= top + 1e-9:
        out.append(_hline(y(tick), "#e4e4e4"))
        out.append(f'<text x="{LEFT_PX - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">'
                   f'{_fmt(tick)}</text>')
        tick += step
    for status, values in rates.items():
        if not any(values):
            continue
        points = " ".join(f"{x((i + 0.5) * bucket_s):.1f},{y(v):.1f}"
                          for i, v in enumerate(values))
        out.append(f'<polyline points="{points}" fill="none" stroke="{OUTCOME_COLORS[status]}" '
                   f'stroke-width="{1.6 if status is OpStatus.OK else 2.2}" '
                   f'stroke-linejoin="round"/>')
    return out


def _latency_svg(completed: Sequence[Operation], x: Callable[[float], float]) -> list[str]:
    latencies_ms = [max((op.complete_time or 0) - op.invoke_time, 1) / 1e6 for op in completed]
    low = 10.0 ** math.floor(math.log10(min(latencies_ms, default=1.0)))
    high = 10.0 ** math.ceil(math.log10(max(latencies_ms, default=1000.0)))
    low, high = min(low, 1.0), max(high, low * 100)

    def y(latency_ms: float) -> float:
        share = (math.log10(latency_ms) - math.log10(low)) / (math.log10(high) - math.log10(low))
        return LATENCY_TOP_PX + LATENCY_PX * (1 - share)

    out = _panel_frame(LATENCY_TOP_PX, LATENCY_PX, "latency (ms, log scale), by invocation time")
    decade = low
    while decade <= high * 1.0001:
        label = f"{decade:g} ms" if decade < 1000 else f"{decade / 1000:g} s"
        out.append(_hline(y(decade), "#e4e4e4"))
        out.append(f'<text x="{LEFT_PX - 6}" y="{y(decade) + 4:.1f}" text-anchor="end">'
                   f'{label}</text>')
        decade *= 10
    ok = [i for i, op in enumerate(completed) if op.status is OpStatus.OK]
    others = [i for i, op in enumerate(completed) if op.status is not OpStatus.OK]
    stride = max(1, math.ceil(len(ok) / max(1, MAX_POINTS - len(others))))
    for indexes, radius, opacity in ((ok[::stride], 1.4, 0.35), (others, 2.2, 0.8)):
        for i in indexes:
            op = completed[i]
            out.append(f'<circle cx="{x(op.invoke_time / NS_PER_S):.1f}" '
                       f'cy="{y(latencies_ms[i]):.1f}" r="{radius}" '
                       f'fill="{OUTCOME_COLORS[op.status]}" fill-opacity="{opacity}"/>')
    if stride > 1:
        out.append(f'<text x="{LEFT_PX + PLOT_PX}" y="{LATENCY_TOP_PX - 6}" text-anchor="end" '
                   f'fill="#666">1 in {stride} ok operations shown; every fail and info</text>')
    return out


def _panel_frame(top: int, height: int, title: str) -> list[str]:
    return [f'<rect x="{LEFT_PX}" y="{top}" width="{PLOT_PX}" height="{height}" fill="none" '
            f'stroke="#999" stroke-width="0.8"/>',
            f'<text x="{LEFT_PX}" y="{top - 6}" font-weight="bold" fill="#333">'
            f'{html.escape(title)}</text>']


def _hline(y: float, color: str) -> str:
    return (f'<line x1="{LEFT_PX}" y1="{y:.1f}" x2="{LEFT_PX + PLOT_PX}" y2="{y:.1f}" '
            f'stroke="{color}" stroke-width="0.8"/>')


def _time_axis_svg(span_s: float, x: Callable[[float], float]) -> list[str]:
    step = _nice_step(span_s, 12)
    out = []
    tick = 0.0
    while tick <= span_s + 1e-9:
        out.append(f'<line x1="{x(tick):.1f}" y1="{AXIS_BOTTOM_PX}" x2="{x(tick):.1f}" '
                   f'y2="{AXIS_BOTTOM_PX + 4}" stroke="#666"/>')
        out.append(f'<text x="{x(tick):.1f}" y="{AXIS_BOTTOM_PX + 16}" text-anchor="middle">'
                   f'{_fmt(tick)}</text>')
        tick += step
    out.append(f'<text x="{LEFT_PX + PLOT_PX / 2}" y="{AXIS_BOTTOM_PX + 32}" '
               f'text-anchor="middle" fill="#333">seconds since the run started</text>')
    return out


def _legend_svg(windows: Sequence[DrawnWindow]) -> list[str]:
    y = AXIS_BOTTOM_PX + 52
    out = []
    cursor = float(LEFT_PX)
    for status, color in OUTCOME_COLORS.items():
        out.append(f'<circle cx="{cursor + 5}" cy="{y - 4}" r="4" fill="{color}"/>')
        out.append(f'<text x="{cursor + 13}" y="{y}">{status.name.lower()}</text>')
        cursor += 60
    cursor += 30
    for family in dict.fromkeys(w.family for w in windows):
        out.append(f'<rect x="{cursor}" y="{y - 10}" width="14" height="12" '
                   f'fill="{FAMILY_COLORS[family]}" stroke="{FAMILY_EDGES[family]}"/>')
        out.append(f'<text x="{cursor + 19}" y="{y}">{family}</text>')
        cursor += 30 + CHAR_PX * len(family)
    return out


# -- the page -----------------------------------------------------------------------------

VALIDITY_COLORS: Final = {Validity.VALID: "#1a9850", Validity.INVALID: "#d73027",
                          Validity.UNKNOWN: "#b8860b"}

_STYLE: Final = """
body { font-family: Helvetica, Arial, sans-serif; font-size: 14px; margin: 24px; color: #222;
       max-width: 1160px; }
h1 { font-size: 20px; margin-bottom: 4px; }
h2 { font-size: 16px; margin-top: 28px; }
.summary { font-family: monospace; font-size: 13px; padding: 10px 12px; border-left: 6px solid;
           background: #f6f6f6; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left;
         vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f6; padding: 10px; font-size: 12px; overflow-x: auto; }
.unsafe { padding: 8px 12px; border: 2px solid #d73027; background: #fdecea; }
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]],
           numeric: frozenset[int] = frozenset()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{cell}</td>' if i in numeric else f"<td>{cell}</td>"
            for i, cell in enumerate(row)) + "</tr>"
        for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _evidence(result: CheckerResult) -> str:
    """What a checker that did not find the run valid has to show: the linearizability
    checker's explanation, else its details."""
    explanation = result.details.get("explanation")
    if isinstance(explanation, str):
        return explanation
    return json.dumps(result.details, indent=2, default=str)


def render_html(record: RunRecord, summary: RunSummary) -> str:
    """The self-contained report page."""
    windows = drawn_windows(record.fault_events, record.duration_s)
    color = VALIDITY_COLORS[summary.validity]
    verdict_rows = [
        (html.escape(r.name),
         f'<b style="color:{VALIDITY_COLORS[r.validity]}">{r.validity.label}</b>',
         html.escape(r.summary))
        for r in record.results
    ]
    explanations = "".join(
        f"<h3>{html.escape(r.name)}</h3><pre>{html.escape(_evidence(r))}</pre>"
        for r in record.results if r.validity is not Validity.VALID)
    fault_rows = [
        (f"{e.time_ns / NS_PER_S:.2f}", str(e.window) if e.window >= 0 else "",
         html.escape(e.action), html.escape(e.kind), html.escape(", ".join(e.nodes)),
         html.escape(e.detail))
        for e in record.fault_events
    ]
    by_workload: Counter[tuple[str, str, OpStatus]] = Counter(
        (record.workload_of(op.key), op.f, op.status) for op in record.operations)
    workload_rows = []
    for workload, f in sorted({(w, f) for w, f, _ in by_workload}):
        cells = [by_workload[(workload, f, status)] for status in OpStatus]
        workload_rows.append((html.escape(workload), html.escape(f),
                              *(str(c) for c in cells), str(sum(cells))))
    reasons: Counter[tuple[str, str, OpStatus, str]] = Counter(
        (record.workload_of(op.key), op.f, op.status, record.errors.get(op.op_id, "?"))
        for op in record.operations if op.status is not OpStatus.OK)
    reason_rows = [(html.escape(w), html.escape(f), status.name.lower(), html.escape(why),
                    str(count))
                   for (w, f, status, why), count in sorted(reasons.items(),
                                                            key=lambda item: -item[1])]
    settings = html.escape(json.dumps(dict(record.settings), indent=2, default=str))
    unsafe = "".join(f'<p class="unsafe"><b>Unsafe run:</b> {html.escape(reason)}</p>'
                     for reason in record.unsafe)
    planned = record.schedule
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(record.title)}</title>
<style>{_STYLE}</style></head>
<body>
<h1>{html.escape(record.title)}</h1>
<p class="summary" style="border-color:{color}">{html.escape(summary.line())}</p>
{unsafe}
{_table(("checker", "verdict", "evidence"), verdict_rows)}
{explanations}
<h2>Throughput and latency under faults</h2>
{render_chart_svg(record.operations, windows, record.duration_s)}
<h2>Faults as executed</h2>
<p>Planned from seed {planned.seed}: {len(planned.windows)} window(s) of
{html.escape(", ".join(k.label for k in planned.kinds))}; quiet gaps of about
{planned.settings.quiet_mean_s:g} s, windows of about {planned.settings.fault_mean_s:g} s
(full plan in schedule.json).</p>
{_table(("t (s)", "window", "action", "kind", "nodes", "detail"), fault_rows,
        frozenset({0, 1}))}
<h2>Operations</h2>
{_table(("workload", "f", *(s.name.lower() for s in OpStatus), "total"), workload_rows,
        frozenset({2, 3, 4, 5}))}
<h2>Why operations failed (fail) or have an unknown outcome (info)</h2>
{_table(("workload", "f", "outcome", "reason", "count"), reason_rows, frozenset({4}))}
<h2>Settings</h2>
<pre>{settings}</pre>
</body></html>
"""
