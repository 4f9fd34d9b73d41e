#!/usr/bin/env python3
"""How Concord's Raft KV scales: cluster size, memory per key, restart time (issue 7).

``--scaling`` starts a fresh local cluster (fsync on, default settings) of each size in
``--sizes`` (3, 5, 7) and runs ``concord bench run`` against its leader: put, then
linearizable get, 64 clients for 10 s each. Prints nodes, ops/s, p50 and p99 per workload.

``--keys N`` starts a 3-node cluster and writes N distinct keys (``k`` + zero-padded index,
8 bytes for up to 10 million keys; 256-byte values) with 256 concurrent PUTs from one
aiohttp session (or, with ``--batch B``, 16 concurrent ``POST /v1/kv/batch`` of B puts
each), for at most ``--max-load-s`` seconds. It reports each node's RSS before
and after (``VmRSS`` from ``/proc/<pid>/status``) and per million keys, each data
directory's size, then kills one follower (kill -9), restarts it and times: its client port
answering ``/health``, ``/ready``, and its applied index reaching the leader's commit index.
The restarted node's ``recovered`` log line says how much came from the snapshot and how
many log entries were replayed. After the load it prints, per node, how many Raft ticks
fired more than 0.1 / 0.25 / 0.5 / 1 s late (the event loop stopped that long: past the
election timeout, leadership can move) and the term before and after. Last, a fourth, empty
node joins: the leader sends it the snapshot. It times the catch-up while one client keeps
writing (failures, p99 and max latency) and prints every node's late ticks before and after.

    .venv/bin/python scripts/scale_bench.py --scaling
    .venv/bin/python scripts/scale_bench.py --keys 200000
    .venv/bin/python scripts/scale_bench.py --keys 1000000 --max-load-s 900
    .venv/bin/python scripts/scale_bench.py --keys 1000000 --batch 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
from prometheus_client.parser import text_string_to_metric_families

from concord.client import AsyncConcordClient
from concord.cluster import LocalCluster, LocalNode, free_cluster_ports, free_ports

READY_TIMEOUT_S = 60.0
RESTART_TIMEOUT_S = 600.0
POLL_S = 0.02
BENCH_CLIENTS = 64
BENCH_DURATION_S = 10
LOADER_CONCURRENCY = 256
BATCH_LOADER_CONCURRENCY = 16
VALUE_SIZE_BYTES = 256
KEY_DIGITS = 7
RETRY_PAUSE_S = 0.05
PROGRESS_EVERY_S = 15.0
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class BenchRow:
    op: str
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    failed: int


@dataclass(frozen=True, slots=True)
class LoadResult:
    written: int
    seconds: float
    retries: int
    capped: bool


@contextlib.asynccontextmanager
async def local_cluster(size: int, name: str) -> AsyncIterator[LocalCluster]:
    """A ready cluster of ``size`` nodes, fsync on, default settings, logging to files."""
    with tempfile.TemporaryDirectory(prefix=f"concord-scale-{name}-") as scratch:
        client_base, peer_base = free_cluster_ports(size)
        cluster = LocalCluster(Path(scratch), size=size, base_client_port=client_base,
                               base_peer_port=peer_base, cluster_id=f"scale-{name}",
                               fsync=True, log_to_files=True)
        cluster.start()
        try:
            await cluster.wait_ready(timeout_s=READY_TIMEOUT_S)
            yield cluster
        finally:
            cluster.stop()


async def get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with session.get(url, headers={"Accept": "application/json"}) as response:
            if response.status != 200:
                return None
            document: dict[str, Any] = await response.json()
            return document
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def node_status(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    document = await get_json(session, url + "/v1/status")
    return document["status"] if document else None


async def find_leader(session: aiohttp.ClientSession, cluster: LocalCluster) -> str:
    """The leader's node id, once every node agrees there is one."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        for node in cluster.nodes.values():
            status = await node_status(session, node.client_url)
            if status and status["role"] == "leader":
                return str(status["id"])
        await asyncio.sleep(0.1)
    raise TimeoutError("no leader")


def run_bench(endpoints: list[str], op: str, save: Path) -> BenchRow:
    command = [sys.executable, "-m", "concord", "bench", "run", "--target", "concord",
               "--endpoints", ",".join(endpoints), "--leader-only",
               "--clients", str(BENCH_CLIENTS), "--op", op,
               "--duration", str(BENCH_DURATION_S), "--value-size", str(VALUE_SIZE_BYTES),
               "--format", "json", "--save", str(save)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    total = json.loads(save.read_text())["total"]
    return BenchRow(op, total["throughput_ops_per_s"], total["latency_ms"]["p50"],
                    total["latency_ms"]["p99"], total["failed"])


async def scaling(sizes: list[int]) -> None:
    rows: list[tuple[int, BenchRow, BenchRow]] = []
    for size in sizes:
        async with local_cluster(size, f"n{size}") as cluster:
            await asyncio.sleep(2)  # let the membership settle before measuring
            put = run_bench(cluster.endpoints, "put", cluster.data_dir / "put.json")
            get = run_bench(cluster.endpoints, "get", cluster.data_dir / "get.json")
        rows.append((size, put, get))
        print(f"{size} nodes: put {put.ops_per_s:,.0f} ops/s p50 {put.p50_ms} ms p99 "
              f"{put.p99_ms} ms ({put.failed} failed); get {get.ops_per_s:,.0f} ops/s p50 "
              f"{get.p50_ms} ms p99 {get.p99_ms} ms ({get.failed} failed)", flush=True)
    print()
    print("| nodes | put ops/s | put p50 ms | put p99 ms | get ops/s | get p50 ms | get p99 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for size, put, get in rows:
        print(f"| {size} | {put.ops_per_s:,.0f} | {put.p50_ms} | {put.p99_ms} | "
              f"{get.ops_per_s:,.0f} | {get.p50_ms} | {get.p99_ms} |")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"no VmRSS for pid {pid}")


def cluster_rss(cluster: LocalCluster) -> dict[str, int]:
    pids = {node_id: node.pid for node_id, node in cluster.nodes.items()}
    return {node_id: rss_bytes(pid) for node_id, pid in pids.items() if pid is not None}


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


async def load_keys(url: str, keys: int, batch: int, max_load_s: float) -> LoadResult:
    """Write k0000000..k{keys-1}: one PUT per key with 256 requests in flight, or (``batch``
    > 0) ``POST /v1/kv/batch`` of ``batch`` puts each (msgpack, binary values) with 16 in
    flight; each request retried until it succeeds; stops handing out keys after
    ``max_load_s``."""
    value = b"v" * VALUE_SIZE_BYTES
    step = batch or 1
    media_type = "application/msgpack" if batch else "application/octet-stream"
    headers = {"Accept": "application/msgpack" if batch else "application/json",
               "Prefer": "return=minimal", "Content-Type": media_type}
    concurrency = BATCH_LOADER_CONCURRENCY if batch else LOADER_CONCURRENCY
    next_index = 0
    written = 0
    retries = 0
    started = time.monotonic()
    deadline = started + max_load_s

    def request(session: aiohttp.ClientSession, first: int,
                last: int) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        if not batch:
            return session.put(f"{url}/v1/kv/k{first:0{KEY_DIGITS}d}", data=value,
                               headers=headers)
        body = msgpack.packb({"ops": [
            {"op": "put", "key": f"k{index:0{KEY_DIGITS}d}", "value": value}
            for index in range(first, last)]}, use_bin_type=True)
        return session.post(f"{url}/v1/kv/batch", data=body, headers=headers)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_index, written, retries
        while next_index < keys and time.monotonic() < deadline:
            first = next_index
            last = next_index = min(keys, first + step)
            while True:
                try:
                    async with request(session, first, last) as response:
                        await response.read()
                        if response.status == 200:
                            written += last - first
                            break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                retries += 1
                await asyncio.sleep(RETRY_PAUSE_S)

    async def progress() -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            elapsed = time.monotonic() - started
            print(f"  loaded {written:,} keys in {elapsed:.0f} s "
                  f"({written / elapsed:,.0f}/s)", flush=True)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        reporter = asyncio.create_task(progress())
        try:
            await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        finally:
            reporter.cancel()
    return LoadResult(written, time.monotonic() - started, retries, written < keys)


async def wait_all_applied(session: aiohttp.ClientSession, cluster: LocalCluster,
                           leader_url: str) -> dict[str, Any]:
    """The leader's status once every node has applied up to its commit index."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        leader_status = await node_status(session, leader_url)
        statuses = [await node_status(session, n.client_url) for n in cluster.nodes.values()]
        if leader_status and all(s and s["applied_index"] >= leader_status["commit_index"]
                                 for s in statuses):
            return leader_status
        await asyncio.sleep(0.2)
    raise TimeoutError("the nodes did not apply the leader's commit index")


async def wait_until(what: str, check: Any, started: float, node: LocalNode) -> float:
    """Seconds from ``started`` until ``await check()`` is true (polled every 20 ms); raises
    RuntimeError with the node's last log line if its process exits meanwhile."""
    while time.monotonic() - started < RESTART_TIMEOUT_S:
        if await check():
            return time.monotonic() - started
        if not node.is_running():
            raise RuntimeError(f"restarted node {node.node_id} exited before {what}: "
                               f"{last_line(node.log_path)}")
        await asyncio.sleep(POLL_S)
    raise TimeoutError(f"restarted node: no {what} after {RESTART_TIMEOUT_S:.0f} s")


def log_lines(log_path: Path | None, containing: str) -> list[str]:
    if log_path is None or not log_path.exists():
        return []
    return [strip_ansi(line) for line in log_path.read_text(errors="replace").splitlines()
            if containing in line]


def last_line(log_path: Path | None, containing: str = "") -> str:
    lines = log_lines(log_path, containing)
    return lines[-1] if lines else f"(no log line containing {containing!r})"


LAG_THRESHOLDS_S = (0.1, 0.25, 0.5, 1.0)
"""Event-loop lag bounds the load's summary counts ticks beyond (an election timeout is
0.5 s by default: a node whose loop stops that long can lose or start an election)."""
GC_PAUSE_REPORTED_S = 0.1
"""Cycle-collector pauses longer than this are counted (a bucket bound of the histogram)."""


async def late_ticks(session: aiohttp.ClientSession, url: str) -> str:
    """How many of a node's Raft ticks fired later than each of ``LAG_THRESHOLDS_S``, from
    its ``concord_event_loop_lag_seconds`` histogram, and how many cycle-collector pauses
    (``concord_gc_pause_seconds``) were longer than 0.1 s; '?' when /metrics does not
    answer."""
    try:
        async with session.get(url + "/metrics") as response:
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return "?"
    lag: dict[float, float] = {}
    gc_pauses: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        buckets = {"concord_event_loop_lag_seconds": lag,
                   "concord_gc_pause_seconds": gc_pauses}.get(family.name)
        if buckets is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value  # all generations
    total = lag.get(float("inf"), 0.0)
    late = ", ".join(f"{total - lag.get(bound, total):,.0f} over {bound:g} s"
                     for bound in LAG_THRESHOLDS_S)
    all_pauses = gc_pauses.get(float("inf"), 0.0)
    long_pauses = all_pauses - gc_pauses.get(GC_PAUSE_REPORTED_S, all_pauses)
    return (f"{total:,.0f} ticks: {late}; {long_pauses:,.0f} of {all_pauses:,.0f} collector "
            f"pauses over {GC_PAUSE_REPORTED_S:g} s")


def strip_ansi(line: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", line).strip()


def mib(count: int) -> str:
    return f"{count / MIB:,.1f} MiB"


async def keys_run(keys: int, max_load_s: float, batch: int) -> None:
    if not 1 <= keys < 10 ** KEY_DIGITS:
        raise ValueError(f"--keys must be 1..{10 ** KEY_DIGITS - 1}, got {keys}")
    async with local_cluster(3, "keys") as cluster, aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=5)) as session:
        leader = await find_leader(session, cluster)
        leader_url = cluster.nodes[leader].client_url
        await asyncio.sleep(2)
        base_status = await node_status(session, leader_url)
        assert base_status is not None
        rss_before = cluster_rss(cluster)
        print(f"leader {leader}; RSS before: "
              + ", ".join(f"{n} {mib(b)}" for n, b in rss_before.items()), flush=True)

        load = await load_keys(leader_url, keys, batch, max_load_s)
        print(f"loaded {load.written:,} of {keys:,} keys in {load.seconds:.1f} s "
              f"({load.written / load.seconds:,.0f} puts/s, {load.retries} retried "
              + (f"batches of {batch})" if batch else "PUTs)")
              + (f"; STOPPED by --max-load-s {max_load_s:g}" if load.capped else ""), flush=True)

        leader = await find_leader(session, cluster)  # leadership may have moved meanwhile
        leader_url = cluster.nodes[leader].client_url
        leader_status = await wait_all_applied(session, cluster, leader_url)
        stored = leader_status["keys"] - base_status["keys"]
        print(f"leader {leader} holds {leader_status['keys']:,} keys ({stored:,} new; "
              f"{'all' if stored == load.written else 'NOT all'} loaded keys distinct and "
              f"stored), commit index {leader_status['commit_index']:,}, term "
              f"{base_status['term']} before the load, {leader_status['term']} after",
              flush=True)
        for node_id, node in cluster.nodes.items():
            print(f"event-loop lag on {node_id}: {await late_ticks(session, node.client_url)}",
                  flush=True)
        rss_after = cluster_rss(cluster)
        print("| node | RSS before | RSS after | growth | per million keys | data dir |")
        print("| --- | --- | --- | --- | --- | --- |")
        for node_id, node in cluster.nodes.items():
            growth = rss_after[node_id] - rss_before[node_id]
            print(f"| {node_id}{' (leader)' if node_id == leader else ''} | "
                  f"{mib(rss_before[node_id])} | {mib(rss_after[node_id])} | {mib(growth)} | "
                  f"{mib(growth * 1_000_000 // max(stored, 1))} | "
                  f"{mib(directory_bytes(node.data_dir))} |", flush=True)

        follower = next(n for n in cluster.nodes if n != leader)
        node = cluster.nodes[follower]
        cluster.kill(follower)
        target = (await node_status(session, leader_url) or {})["commit_index"]
        started = time.monotonic()
        cluster.start_node(follower)

        async def healthy() -> bool:
            return await get_json(session, node.client_url + "/health") is not None

        async def ready() -> bool:
            return await get_json(session, node.client_url + "/ready") is not None

        async def caught_up() -> bool:
            status = await node_status(session, node.client_url)
            return status is not None and status["applied_index"] >= target

        health_s = await wait_until("/health", healthy, started, node)
        ready_s = await wait_until("/ready", ready, started, node)
        caught_up_s = await wait_until("applied index", caught_up, started, node)
        status = await node_status(session, node.client_url)
        assert status is not None
        print(f"restart of follower {follower} (kill -9, {status['keys']:,} keys, "
              f"leader commit {target:,}): /health after {health_s:.2f} s, /ready after "
              f"{ready_s:.2f} s, applied index reached commit after {caught_up_s:.2f} s; "
              f"RSS after restart {mib(rss_bytes(node.pid or 0))}", flush=True)
        print(f"its recovery: {last_line(node.log_path, 'recovered')}")
        print(f"its status now: snapshot_index {status['snapshot_index']:,}, "
              f"log_entries {status['log_entries']:,}, applied {status['applied_index']:,}")
        snapshots = log_lines(cluster.nodes[leader].log_path, "snapshot_taken")
        if snapshots:
            print(f"leader took {len(snapshots)} snapshots; the last: {snapshots[-1]}")
        await join_run(session, cluster, leader)


JOINER = "n4"
JOIN_WRITE_PAUSE_S = 0.02
"""Between the sequential PUTs that go on while the new node catches up."""


async def join_run(session: aiohttp.ClientSession, cluster: LocalCluster, leader: str) -> None:
    """Add a fourth, empty node: the leader sends it its snapshot (InstallSnapshot). Times
    the catch-up, while one client keeps writing, and reports every node's late ticks."""
    leader_url = cluster.nodes[leader].client_url
    before = {node_id: await late_ticks(session, node.client_url)
              for node_id, node in cluster.nodes.items()}
    base = await node_status(session, leader_url)
    assert base is not None
    client_port, peer_port = free_ports(2)
    joiner = cluster.add_node(JOINER, client_port, peer_port)
    cluster.start_node(JOINER)
    started = time.monotonic()
    await wait_until("/health", lambda: get_json(session, joiner.client_url + "/health"),
                     started, joiner)
    latencies: list[float] = []
    failures = 0
    stop = asyncio.Event()

    async def writer() -> None:
        nonlocal failures
        index = 0
        while not stop.is_set():
            index += 1
            asked = time.monotonic()
            try:
                async with session.put(f"{leader_url}/v1/kv/join-{index}", data=b"v",
                                       headers={"Prefer": "return=minimal"}) as response:
                    await response.read()
                    if response.status != 200:
                        failures += 1
            except (aiohttp.ClientError, TimeoutError):
                failures += 1
            latencies.append(time.monotonic() - asked)
            await asyncio.sleep(JOIN_WRITE_PAUSE_S)

    writing = asyncio.create_task(writer())
    added = time.monotonic()
    async with AsyncConcordClient([leader_url], timeout_s=RESTART_TIMEOUT_S) as client:
        members = await client.add_member(JOINER, joiner.peer_url, joiner.client_url)
    answered_s = time.monotonic() - added
    target = (await node_status(session, leader_url) or {})["commit_index"]

    async def caught_up() -> bool:
        status = await node_status(session, joiner.client_url)
        return status is not None and status["applied_index"] >= target

    caught_up_s = await wait_until("applied index", caught_up, added, joiner)
    stop.set()
    await writing
    after = await node_status(session, leader_url)
    status = await node_status(session, joiner.client_url)
    assert after is not None and status is not None
    roles = {m["id"]: m["role"] for m in members}
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    print(f"join of empty node {JOINER} ({status['keys']:,} keys, snapshot_index "
          f"{status['snapshot_index']:,}): the add answered after {answered_s:.2f} s "
          f"(roles {roles}), applied index reached commit {target:,} after "
          f"{caught_up_s:.2f} s; term {base['term']} before, {after['term']} after", flush=True)
    print(f"meanwhile one client wrote {len(latencies):,} PUTs to the leader: "
          f"{failures} failed, p99 {p99 * 1000:.1f} ms, max "
          f"{(latencies[-1] if latencies else 0.0) * 1000:.1f} ms", flush=True)
    print(f"its install: {last_line(joiner.log_path, 'snapshot')}", flush=True)
    campaigns = [line for line in log_lines(joiner.log_path, " role ")
                 if "role=pre-candidate" in line or "role=candidate" in line]
    print(f"elections it started meanwhile (pre-votes included): {len(campaigns)}", flush=True)
    for node_id, node in cluster.nodes.items():
        print(f"event-loop lag on {node_id}: before the join {before.get(node_id, 'new')}; "
              f"after {await late_ticks(session, node.client_url)}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scaling", action="store_true",
                        help="put and get throughput at each cluster size")
    parser.add_argument("--sizes", default="3,5,7", help="cluster sizes for --scaling")
    parser.add_argument("--keys", type=int, default=None, metavar="N",
                        help="memory and restart time holding N keys (default 1,000,000)")
    parser.add_argument("--max-load-s", type=float, default=900.0,
                        help="stop loading keys after this many seconds")
    parser.add_argument("--batch", type=int, default=0, metavar="B",
                        help="load with POST /v1/kv/batch of B puts each (default: one PUT "
                             "per key)")
    arguments = parser.parse_args()
    if not arguments.scaling and arguments.keys is None:
        arguments.keys = 1_000_000
    if arguments.scaling:
        asyncio.run(scaling([int(size) for size in arguments.sizes.split(",")]))
    if arguments.keys is not None:
        if not 0 <= arguments.batch <= 1000:
            parser.error("--batch must be 0..1000 (limits.max_batch_ops)")
        asyncio.run(keys_run(arguments.keys, arguments.max_load_s, arguments.batch))
