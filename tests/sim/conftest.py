"""Shared helpers: run many seeds on both cores, report failures with their replay command."""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from concord.sim.world import SimConfig
from concord.sim_cli import RunSummary, run_one

JOBS = max(1, min(4, os.cpu_count() or 1))


def run_many(configs: Iterable[SimConfig]) -> list[RunSummary]:
    with ProcessPoolExecutor(max_workers=JOBS) as pool:
        return list(pool.map(run_one, list(configs)))


def first_failure(configs: Iterable[SimConfig]) -> RunSummary | None:
    """Run seeds (JOBS at a time) until one fails; None when all pass."""
    pending_configs = list(configs)
    with ProcessPoolExecutor(max_workers=JOBS) as pool:
        running: set[Future[RunSummary]] = set()
        while pending_configs or running:
            while pending_configs and len(running) < JOBS:
                running.add(pool.submit(run_one, pending_configs.pop(0)))
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                summary = future.result()
                if not summary.passed:
                    for other in running:
                        other.cancel()
                    return summary
    return None


def describe_failures(results: list[RunSummary]) -> str:
    lines = []
    for r in results:
        if not r.passed:
            lines.append(f"seed {r.seed}: {r.violation}\n  replay: {r.replay}")
    return "\n".join(lines)
