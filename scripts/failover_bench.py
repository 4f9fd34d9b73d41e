"""Failover time and write latency of a local 3-node cluster at default settings.

Starts ``python -m concord serve`` three times on free loopback ports in a temporary
directory (default Raft timing, fsync on), then:

1. failover: ``--trials`` times, find the leader, ``kill -9`` it, and time how long until a
   write through a survivor first succeeds (one attempt every ``RETRY_PAUSE_S``, alternating
   survivors, the same request id throughout); restart the killed node and wait until the
   cluster is whole again. Prints the median and maximum.
2. latency: one client writes ``--puts`` values of ``--value-bytes`` bytes sequentially,
   waiting for each acknowledgement; prints p50, p99 and max.

Every wait is bounded; every process is stopped on the way out (also on Ctrl-C).

    .venv/bin/python scripts/failover_bench.py [--trials 10] [--puts 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from concord.client import AsyncConcordClient
from concord.cluster import LocalCluster, free_cluster_ports

CLUSTER_SIZE = 3
RETRY_PAUSE_S = 0.015
ATTEMPT_TIMEOUT_MS = 1000
TRIAL_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.05
STATUS_TIMEOUT_S = 0.5
PROGRESS_EVERY_PUTS = 500


@dataclass(frozen=True, slots=True)
class FailoverTrial:
    killed: str
    old_term: int
    new_leader: str
    failover_ms: float
    failed_attempts: int




def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    assert sorted_values and 0 < fraction <= 1
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


class Bench:
    """The cluster under measurement and the log files its nodes write."""

    def __init__(self, data_dir: Path) -> None:
        client_base, peer_base = free_cluster_ports(CLUSTER_SIZE)
        self.cluster = LocalCluster(data_dir, size=CLUSTER_SIZE, base_client_port=client_base,
                                    base_peer_port=peer_base, cluster_id="failover-bench",
                                    log_to_files=True)

    def start_node(self, node_id: str) -> None:
        self.cluster.start_node(node_id)

    def start(self) -> None:
        self.cluster.start()

    def stop(self) -> None:
        self.cluster.stop()

    async def statuses(self, session: aiohttp.ClientSession) -> dict[str, dict[str, Any] | None]:
        async def one(node_id: str) -> dict[str, Any] | None:
            url = f"{self.cluster.nodes[node_id].client_url}/v1/status"
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(
                        total=STATUS_TIMEOUT_S)) as response:
                    if response.status != 200:
                        return None
                    status: dict[str, Any] = (await response.json())["status"]
                    return status
            except (aiohttp.ClientError, TimeoutError):
                return None

        node_ids = list(self.cluster.nodes)
        answers = await asyncio.gather(*(one(node_id) for node_id in node_ids))
        return dict(zip(node_ids, answers, strict=True))

    async def settled_leader(self, session: aiohttp.ClientSession) -> tuple[str, int]:
        """(leader, term) once every node answers, agrees on the leader and has applied
        everything it knows is committed."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            seen = await self.statuses(session)
            answers = [s for s in seen.values() if s is not None]
            if len(answers) == len(seen):
                leaders = {s["leader"] for s in answers}
                terms = {s["term"] for s in answers}
                commit = max(s["commit_index"] for s in answers)
                if (len(leaders) == 1 and None not in leaders and len(terms) == 1
                        and all(s["applied_index"] >= commit for s in answers)):
                    return leaders.pop(), terms.pop()
            await asyncio.sleep(POLL_INTERVAL_S)
        raise TimeoutError(f"the cluster did not settle on a leader in {READY_TIMEOUT_S:g} s")


async def first_write_after_kill(session: aiohttp.ClientSession, survivors: list[str],
                                 key: str, started: float) -> tuple[str, int]:
    """Write ``key`` through the survivors in turn until it succeeds: (new leader, failures)."""
    request_id = uuid.uuid4().hex
    failures = 0
    deadline = started + TRIAL_TIMEOUT_S
    while time.monotonic() < deadline:
        url = f"{survivors[failures % len(survivors)]}/v1/kv/{key}"
        try:
            async with session.put(
                    url, data=b"failover", params={"timeout_ms": str(ATTEMPT_TIMEOUT_MS)},
                    headers={"X-Request-Id": request_id},
                    timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT_MS / 1000 + 0.5),
            ) as response:
                if response.status == 200:
                    return (await response.json())["header"]["member_id"], failures
        except (aiohttp.ClientError, TimeoutError):
            pass
        failures += 1
        await asyncio.sleep(RETRY_PAUSE_S)
    raise TimeoutError(f"no write succeeded within {TRIAL_TIMEOUT_S:g} s of the kill")


async def measure_failover(bench: Bench, trials: int) -> list[FailoverTrial]:
    results: list[FailoverTrial] = []
    cluster = bench.cluster
    async with aiohttp.ClientSession() as session:
        for trial in range(1, trials + 1):
            leader, term = await bench.settled_leader(session)
            survivors = [n.client_url for n in cluster.nodes.values() if n.node_id != leader]
            started = time.monotonic()
            cluster.kill(leader)
            new_leader, failures = await first_write_after_kill(
                session, survivors, f"bench/failover-{trial}", started)
            elapsed_ms = (time.monotonic() - started) * 1000
            results.append(FailoverTrial(leader, term, new_leader, elapsed_ms, failures))
            print(f"  trial {trial:2d}/{trials}: killed leader {leader} (term {term}); a write "
                  f"succeeded after {elapsed_ms:7.1f} ms ({failures} failed attempts, "
                  f"new leader {new_leader})", flush=True)
            bench.start_node(leader)
            await cluster.wait_ready(timeout_s=READY_TIMEOUT_S)
    return results


async def measure_put_latency(bench: Bench, puts: int, value_bytes: int) -> list[float]:
    async with aiohttp.ClientSession() as session:
        leader, _ = await bench.settled_leader(session)
    endpoints = [bench.cluster.nodes[leader].client_url] + [
        n.client_url for n in bench.cluster.nodes.values() if n.node_id != leader]
    value = os.urandom(value_bytes)
    latencies_ms: list[float] = []
    async with AsyncConcordClient(endpoints, timeout_s=5.0) as client:
        await client.put("bench/warm-up", value)
        for i in range(puts):
            started = time.perf_counter()
            await client.put(f"bench/latency-{i:06d}", value)
            latencies_ms.append((time.perf_counter() - started) * 1000)
            if (i + 1) % PROGRESS_EVERY_PUTS == 0:
                print(f"  {i + 1}/{puts} puts", flush=True)
    return latencies_ms


async def run(bench: Bench, trials: int, puts: int, value_bytes: int) -> None:
    await bench.cluster.wait_ready(timeout_s=READY_TIMEOUT_S)
    print(f"failover: {trials} trials of kill -9 of the leader", flush=True)
    results = await measure_failover(bench, trials)
    failover_ms = [r.failover_ms for r in results]
    print(f"failover time: median {statistics.median(failover_ms):.1f} ms, "
          f"max {max(failover_ms):.1f} ms, min {min(failover_ms):.1f} ms", flush=True)

    print(f"latency: {puts} sequential puts of {value_bytes}-byte values (fsync on)", flush=True)
    started = time.perf_counter()
    latencies_ms = sorted(await measure_put_latency(bench, puts, value_bytes))
    elapsed_s = time.perf_counter() - started
    print(f"put latency: p50 {percentile(latencies_ms, 0.50):.2f} ms, "
          f"p99 {percentile(latencies_ms, 0.99):.2f} ms, max {latencies_ms[-1]:.2f} ms "
          f"({puts / elapsed_s:.0f} puts/s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Failover time and write latency of a local 3-node cluster.")
    parser.add_argument("--trials", type=int, default=10, help="leader kills (default 10)")
    parser.add_argument("--puts", type=int, default=2000, help="latency puts (default 2000)")
    parser.add_argument("--value-bytes", type=int, default=256, help="value size (default 256)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the data directory and node logs")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.puts < 1 or args.value_bytes < 0:
        parser.error("--trials and --puts must be at least 1, --value-bytes at least 0")
    data_dir = Path(tempfile.mkdtemp(prefix="concord-failover-bench-"))
    bench = Bench(data_dir)
    print(f"starting {CLUSTER_SIZE} nodes in {data_dir} (default settings, fsync on)",
          flush=True)
    status = 1
    try:
        bench.start()
        asyncio.run(run(bench, args.trials, args.puts, args.value_bytes))
        status = 0
    except (TimeoutError, RuntimeError) as exc:
        print(f"error: {exc} (node logs: {data_dir}/n*.log)", file=sys.stderr)
        args.keep = True
    except KeyboardInterrupt:
        status = 130
    finally:
        bench.stop()
        if args.keep:
            print(f"data and logs kept in {data_dir}")
        else:
            shutil.rmtree(data_dir)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
