#!/usr/bin/env python3
"""Failure detection in a real 5-node cluster at default [membership] settings.

Each trial kills one node (kill -9) and records, from the other four nodes' views
(`GET /v1/cluster/members`), when every one of them marks it suspect and when every one marks
it dead; the node is then restarted. Prints each trial and the median and max.

    .venv/bin/python scripts/failure_detection_bench.py [--trials 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from concord.cluster import LocalCluster, free_cluster_ports

TRIAL_TIMEOUT_S = 60.0
POLL_S = 0.02


async def view(session: aiohttp.ClientSession, url: str) -> dict[str, str] | None:
    try:
        async with session.get(url + "/v1/cluster/members") as response:
            document = await response.json()
        return {m["id"]: m["state"] for m in document["members"]}
    except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
        return None


async def wait_all_alive(session: aiohttp.ClientSession, cluster: LocalCluster) -> None:
    deadline = time.monotonic() + TRIAL_TIMEOUT_S
    while time.monotonic() < deadline:
        views = await asyncio.gather(*(view(session, n.client_url) for n in cluster.nodes.values()))
        if all(v and len(v) == len(cluster.nodes) and set(v.values()) == {"alive"} for v in views):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("the cluster did not see every member alive")


async def trial(session: aiohttp.ClientSession, cluster: LocalCluster,
                target: str) -> tuple[float, float]:
    others = [n for n in cluster.nodes if n != target]
    killed = time.monotonic()
    cluster.kill(target)
    suspect: dict[str, float] = {}
    dead: dict[str, float] = {}
    while len(dead) < len(others) and time.monotonic() - killed < TRIAL_TIMEOUT_S:
        views = await asyncio.gather(*(view(session, cluster.nodes[o].client_url)
                                       for o in others))
        elapsed = time.monotonic() - killed
        for other, seen in zip(others, views, strict=True):
            state = seen.get(target) if seen else None
            if state in ("suspect", "dead"):
                suspect.setdefault(other, elapsed)
            if state == "dead":
                dead.setdefault(other, elapsed)
        await asyncio.sleep(POLL_S)
    if len(dead) < len(others):
        raise TimeoutError(f"{target} was not declared dead everywhere in {TRIAL_TIMEOUT_S} s")
    return max(suspect.values()), max(dead.values())


async def main(trials: int) -> None:
    with tempfile.TemporaryDirectory(prefix="concord-fd-") as scratch:
        client_base, peer_base = free_cluster_ports(5)
        cluster = LocalCluster(Path(scratch), size=5, base_client_port=client_base,
                               base_peer_port=peer_base, cluster_id="fd-bench",
                               log_to_files=True)
        cluster.start()
        suspects: list[float] = []
        deaths: list[float] = []
        try:
            await cluster.wait_ready()
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as session:
                for number in range(trials):
                    target = f"n{2 + number % 4}"
                    await wait_all_alive(session, cluster)
                    await asyncio.sleep(2)
                    suspected_s, dead_s = await trial(session, cluster, target)
                    suspects.append(suspected_s)
                    deaths.append(dead_s)
                    print(f"trial {number + 1}/{trials}: kill -9 {target}: suspect everywhere "
                          f"after {suspected_s:.2f} s, dead everywhere after {dead_s:.2f} s",
                          flush=True)
                    cluster.start_node(target)
                    await cluster.wait_ready()
        finally:
            cluster.stop()
        print(f"kill -> suspect everywhere: median {statistics.median(suspects):.2f} s, "
              f"max {max(suspects):.2f} s; kill -> dead everywhere: median "
              f"{statistics.median(deaths):.2f} s, max {max(deaths):.2f} s ({trials} trials)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    asyncio.run(main(parser.parse_args().trials))
