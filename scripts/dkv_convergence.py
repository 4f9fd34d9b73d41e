#!/usr/bin/env python3
"""How long the quorum store takes to converge after a partition heals, at default settings.

A 5-node local cluster (fault injection on, everything else default) is split {n1, n2} |
{n3, n4, n5} with the transport's fault hook. For ``--write-s`` seconds clients on both
sides write (W=2, sloppy quorum) to keys both sides share and to keys of their own side.
Then the partition heals, and the script polls every node's Merkle roots
(``GET /v1/dkv?trees=1``, which repairs nothing) until, for every partition, all of its
primaries report the same root and no node holds a hint any more: that moment is
convergence (primaries can agree while writes taken by fallbacks still wait in hints).
Finally one R=3 read per key checks that nothing acknowledged was lost. Prints, every
second after the heal, how many partitions still differ, the hints held and the
anti-entropy work so far (summed over the nodes), then each trial and the median and max.

    .venv/bin/python scripts/dkv_convergence.py [--trials 3] [--write-s 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import aiohttp

from concord.cluster import LocalCluster, free_cluster_ports
from concord.dkv_client import AsyncDkvClient, DkvError

CONVERGENCE_TIMEOUT_S = 120.0
SIDES = (("n1", "n2"), ("n3", "n4", "n5"))


async def set_blocked(session: aiohttp.ClientSession, url: str, peers: list[str]) -> None:
    async with session.put(url + "/v1/debug/faults", json={"blocked_peers": peers}) as answer:
        answer.raise_for_status()


async def trees(session: aiohttp.ClientSession, url: str) -> tuple[dict[str, str], dict[str, int]]:
    """A node's Merkle root per partition it is a primary for, and its quorum-store counters."""
    async with session.get(url + "/v1/dkv", params={"trees": "1"}) as answer:
        document = await answer.json()
    found: dict[str, str] = document["trees"]
    counters: dict[str, int] = document["dkv"]
    return found, counters


async def writer(endpoint: str, keys: list[str], tag: str, stop_at: float,
                 acknowledged: dict[str, set[str]]) -> None:
    """Append unique elements to each key in turn (value = the element; siblings keep all)."""
    count = 0
    async with AsyncDkvClient([endpoint], timeout_s=2.0) as client:
        while time.monotonic() < stop_at:
            key = keys[count % len(keys)]
            element = f"{tag}-{count}"
            count += 1
            try:
                await client.put("conv", key, element.encode(), w=2)
            except DkvError:
                continue
            acknowledged[key].add(element)


async def trial(cluster: LocalCluster, write_s: float) -> tuple[float, int, int]:
    urls = {node_id: node.client_url for node_id, node in cluster.nodes.items()}
    run = str(time.monotonic_ns())
    shared = [f"{run}-shared-{i}" for i in range(40)]
    acknowledged: dict[str, set[str]] = defaultdict(set)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for side, other in (SIDES, SIDES[::-1]):
            for node_id in side:
                await set_blocked(session, urls[node_id], list(other))
        await asyncio.sleep(4)  # both sides see the other as down
        stop_at = time.monotonic() + write_s
        tasks = []
        for number, side in enumerate(SIDES):
            own = [f"{run}-side{number}-{i}" for i in range(40)]
            for node_id in side:
                tasks.append(writer(urls[node_id], shared + own, f"{node_id}", stop_at,
                                    acknowledged))
        await asyncio.gather(*tasks)
        for url in urls.values():
            await set_blocked(session, url, [])
        healed = time.monotonic()
        next_report = healed + 1.0
        while True:
            views = await asyncio.gather(*(trees(session, url) for url in urls.values()))
            roots: dict[str, set[str]] = defaultdict(set)
            for view, _ in views:
                for partition, root in view.items():
                    roots[partition].add(root)
            expected = {str(p) for p in range(64)}
            hints_held = sum(counters["hints_held"] for _, counters in views)
            if (set(roots) == expected and all(len(r) == 1 for r in roots.values())
                    and hints_held == 0):
                took = time.monotonic() - healed
                break
            if time.monotonic() >= next_report:
                next_report += 1.0
                differing = sum(len(r) > 1 for r in roots.values()) + len(expected - set(roots))
                total = {name: sum(counters[name] for _, counters in views)
                         for name in ("hints_held", "aae_exchanges", "aae_keys_repaired")}
                print(f"  +{time.monotonic() - healed:4.1f} s: {differing} of 64 partitions "
                      f"differ, {total['hints_held']} hints held, {total['aae_exchanges']} "
                      f"exchanges and {total['aae_keys_repaired']} keys repaired so far",
                      flush=True)
            if time.monotonic() - healed > CONVERGENCE_TIMEOUT_S:
                raise TimeoutError("replicas did not converge")
            await asyncio.sleep(0.1)
    lost = 0
    async with AsyncDkvClient(list(urls.values())) as client:
        for key, elements in acknowledged.items():
            read = await client.get("conv", key, r=3)
            present = {value.decode() for value in read.siblings}
            lost += len(elements - present)
    return took, sum(map(len, acknowledged.values())), lost


async def main(trials: int, write_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="concord-dkv-conv-") as scratch:
        client_base, peer_base = free_cluster_ports(5)
        cluster = LocalCluster(Path(scratch), size=5, base_client_port=client_base,
                               base_peer_port=peer_base, cluster_id="dkv-conv",
                               log_to_files=True, fault_injection=True)
        cluster.start()
        times = []
        try:
            await cluster.wait_ready()
            for number in range(trials):
                took, written, lost = await trial(cluster, write_s)
                times.append(took)
                print(f"trial {number + 1}/{trials}: {written} acknowledged writes during the "
                      f"partition, converged {took:.2f} s after the heal, {lost} lost",
                      flush=True)
                await asyncio.sleep(5)
        finally:
            cluster.stop()
    print(f"convergence after heal: median {statistics.median(times):.2f} s, "
          f"max {max(times):.2f} s ({trials} trials)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--write-s", type=float, default=10.0)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.trials, arguments.write_s))
