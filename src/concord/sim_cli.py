"""``concord sim``: run many seeded simulations (in parallel processes) and summarize.

Prints progress while it runs, then one summary line: runs, operations, faults injected,
violations. Every failing seed is printed with its violation, the end of its transcript
and the exact command that replays it. Exit status 1 when any run failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from concord.raft.config import ReadMode
from concord.sim.bugs import KNOWN_BUGS
from concord.sim.faults import PRESETS
from concord.sim.world import SimConfig, SimResult, World


@dataclass(frozen=True, slots=True)
class RunSummary:
    seed: int
    passed: bool
    operations: int
    ok_operations: int
    faults: int
    elections: int
    committed: int
    sim_seconds: float
    violation: str | None
    replay: str
    transcript_tail: tuple[str, ...]


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    parser.add_argument("--seed", type=int, default=None,
                        help="run exactly this seed (replay); overrides --seeds/--first-seed")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--nodes", type=int, default=3, choices=range(1, 10), metavar="N")
    parser.add_argument("--faults", default="all", choices=sorted(PRESETS))
    parser.add_argument("--read-mode", default="safe", choices=["safe", "lease"])
    parser.add_argument("--bug", default=None, choices=sorted(KNOWN_BUGS),
                        help="switch on a known bug to see the checkers catch it")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="parallel worker processes")
    parser.add_argument("--transcript-lines", type=int, default=60)
    parser.add_argument("--keep-going", action="store_true",
                        help="run every seed even after a failure")


def _config(args: argparse.Namespace, seed: int) -> SimConfig:
    bug = KNOWN_BUGS[args.bug] if args.bug else None
    extra: dict[str, object] = {}
    if bug is not None:
        extra = {"raft_class": bug.raft_class, "bugs": bug.driver_bugs}
    return SimConfig(seed=seed, nodes=args.nodes, faults=args.faults,
                     read_mode=ReadMode(args.read_mode), **extra)  # type: ignore[arg-type]


def run_one(config: SimConfig, transcript_lines: int = 60) -> RunSummary:
    started = time.monotonic()
    result: SimResult = World(config, clock=time.monotonic).run()
    return RunSummary(
        seed=config.seed, passed=result.passed, operations=result.operations,
        ok_operations=result.ok_operations, faults=len(result.faults),
        elections=result.leader_elections, committed=result.committed_entries,
        sim_seconds=time.monotonic() - started, violation=result.violation,
        replay=result.replay_command(),
        transcript_tail=result.transcript[-transcript_lines:] if not result.passed else ())


def _print_failure(summary: RunSummary) -> None:
    print(f"\nFAILED seed {summary.seed}: {summary.violation}", file=sys.stderr)
    if summary.transcript_tail:
        print("  last events:", file=sys.stderr)
        for line in summary.transcript_tail:
            print(f"    {line}", file=sys.stderr)
    print(f"  replay: {summary.replay}", file=sys.stderr)


def run_sim(args: argparse.Namespace) -> int:
    seeds = [args.seed] if args.seed is not None else list(
        range(args.first_seed, args.first_seed + args.seeds))
    if not seeds:
        print("error: --seeds must be at least 1", file=sys.stderr)
        return 64
    configs = [_config(args, seed) for seed in seeds]
    started = time.monotonic()
    totals = {"runs": 0, "operations": 0, "ok": 0, "faults": 0, "elections": 0, "committed": 0}
    failures: list[RunSummary] = []
    interactive = sys.stderr.isatty()
    jobs = max(1, min(args.jobs, len(configs)))

    def record(summary: RunSummary) -> None:
        totals["runs"] += 1
        totals["operations"] += summary.operations
        totals["ok"] += summary.ok_operations
        totals["faults"] += summary.faults
        totals["elections"] += summary.elections
        totals["committed"] += summary.committed
        if not summary.passed:
            failures.append(summary)
            _print_failure(summary)
        done = totals["runs"]
        if interactive or done % max(1, len(configs) // 10) == 0 or done == len(configs):
            end = "\r" if interactive and done < len(configs) else "\n"
            print(f"  {done}/{len(configs)} runs, {len(failures)} failed, "
                  f"{time.monotonic() - started:.0f}s", end=end, file=sys.stderr, flush=True)

    if jobs == 1:
        for config in configs:
            record(run_one(config, args.transcript_lines))
            if failures and not args.keep_going:
                break
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(run_one, c, args.transcript_lines) for c in configs]
            for future in futures:
                record(future.result())
                if failures and not args.keep_going:
                    for pending in futures:
                        pending.cancel()
                    break
    elapsed = time.monotonic() - started
    print(f"sim: {totals['runs']} runs ({args.nodes} nodes, faults={args.faults}"
          f"{', bug=' + args.bug if args.bug else ''}), {totals['operations']} client operations "
          f"({totals['ok']} ok), {totals['faults']} faults injected, {totals['elections']} "
          f"leader elections, {totals['committed']} entries committed, "
          f"{len(failures)} violations, {elapsed:.1f}s")
    return 1 if failures else 0
