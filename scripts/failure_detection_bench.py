#!/usr/bin/env python3
"""Failure detection in a real 5-node cluster at default [membership] settings.

Each trial kills one node (kill -9) and records, from the other four nodes' views
(`GET /v1/cluster/members`), when every one of them marks it suspect and when every one marks
it dead; the node is then restarted. Prints each trial and the median and max.

With ``--pause SECONDS`` each trial instead stops one node (SIGSTOP) that long and resumes
it, and reports whether the others suspected it and whether any ever declared it dead (a
pause shorter than the suspicion timeout must end in a refutation, not a death).

With ``--soak SECONDS`` it instead runs the cluster that long with no fault under load (a
``concord bench run`` write/read load on every node plus one busy-looping process per core)
and counts false positives: every observation of a live member as suspect or dead, and the
nodes' own suspicion and death counters from ``/metrics``.

    .venv/bin/python scripts/failure_detection_bench.py [--trials 10]
    .venv/bin/python scripts/failure_detection_bench.py --pause 3 --trials 10
    .venv/bin/python scripts/failure_detection_bench.py --soak 600
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
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


async def pause_trial(session: aiohttp.ClientSession, cluster: LocalCluster, target: str,
                      pause_s: float) -> tuple[bool, bool]:
    """(suspected by someone, declared dead by someone) over the pause and 5 s after."""
    others = [n for n in cluster.nodes if n != target]
    cluster.pause(target)
    started = time.monotonic()
    resumed = False
    seen: set[str] = set()
    while time.monotonic() - started < pause_s + 5.0:
        if not resumed and time.monotonic() - started >= pause_s:
            cluster.resume(target)
            resumed = True
        views = await asyncio.gather(*(view(session, cluster.nodes[o].client_url)
                                       for o in others))
        seen.update(v.get(target, "?") for v in views if v)
        await asyncio.sleep(POLL_S)
    return "suspect" in seen, "dead" in seen


@contextlib.asynccontextmanager
async def five_nodes(name: str) -> AsyncIterator[tuple[LocalCluster, aiohttp.ClientSession]]:
    """A ready 5-node cluster at default settings and a polling session; stopped after."""
    with tempfile.TemporaryDirectory(prefix=f"concord-fd-{name}-") as scratch:
        client_base, peer_base = free_cluster_ports(5)
        cluster = LocalCluster(Path(scratch), size=5, base_client_port=client_base,
                               base_peer_port=peer_base, cluster_id=f"fd-{name}",
                               log_to_files=True)
        cluster.start()
        try:
            await cluster.wait_ready()
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
                yield cluster, session
        finally:
            cluster.stop()


async def pauses(trials: int, pause_s: float) -> None:
    deaths = 0
    suspicions = 0
    async with five_nodes("pause") as (cluster, session):
        for number in range(trials):
            target = f"n{2 + number % 4}"
            await wait_all_alive(session, cluster)
            await asyncio.sleep(2)
            suspected, died = await pause_trial(session, cluster, target, pause_s)
            suspicions += suspected
            deaths += died
            print(f"trial {number + 1}/{trials}: SIGSTOP {target} for {pause_s:.1f} s: "
                  f"{'suspected' if suspected else 'not suspected'}, "
                  f"{'DECLARED DEAD' if died else 'never dead'}", flush=True)
    print(f"{pause_s:.1f} s pauses: suspected in {suspicions} of {trials} trials, "
          f"declared dead in {deaths}")


def burn_cpu(seconds: float) -> None:
    """Keep one core busy for ``seconds`` (run in a child process)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sum(range(10_000))


async def metric_total(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    return sum(float(value) for value in
               re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


async def soak(seconds: float) -> None:
    burners: list[subprocess.Popen[bytes]] = []
    load_json = Path(tempfile.mkdtemp(prefix="concord-fd-load-")) / "load.json"
    async with five_nodes("soak") as (cluster, session):
        urls = [node.client_url for node in cluster.nodes.values()]
        load = subprocess.Popen(
            [sys.executable, "-m", "concord", "bench", "run", "--endpoints", ",".join(urls),
             "--clients", "16", "--op", "put=80,get=20", "--duration", str(int(seconds)),
             "--format", "json", "--save", str(load_json)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            burners = [subprocess.Popen([sys.executable, "-c",
                                         "import sys; sys.path.insert(0, sys.argv[1]);"
                                         "from failure_detection_bench import burn_cpu;"
                                         "burn_cpu(float(sys.argv[2]))",
                                         str(Path(__file__).parent), str(seconds)])
                       for _ in range(os.cpu_count() or 1)]
            false_views = 0
            polls = 0
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                views = await asyncio.gather(*(view(session, url) for url in urls))
                polls += 1
                for observer, seen in zip(cluster.nodes, views, strict=True):
                    for member, state in (seen or {}).items():
                        if state != "alive":
                            false_views += 1
                            print(f"{time.monotonic() - started:7.1f} s: {observer} sees "
                                  f"{member} {state}", flush=True)
                if polls % 300 == 0:
                    print(f"{time.monotonic() - started:5.0f} s of {seconds:.0f} s: "
                          f"{false_views} non-alive observations so far", flush=True)
                await asyncio.sleep(0.2)
            totals = {name: sum([await metric_total(session, url, name) for url in urls])
                      for name in ("concord_membership_suspicions_total",
                                   "concord_membership_deaths_total",
                                   "concord_membership_probes_total")}
            load.wait(timeout=120)
        finally:
            for burner in burners:
                burner.kill()
            load.kill()
    operations = json.loads(load_json.read_text())["total"]["succeeded"]
    print(f"soak {seconds:.0f} s, 5 nodes, {os.cpu_count()} busy-loop processes + 16 "
          f"clients ({operations} operations): {polls} polls of every view, "
          f"{false_views} non-alive observations; probes "
          f"{totals['concord_membership_probes_total']:.0f}, suspicions "
          f"{totals['concord_membership_suspicions_total']:.0f}, deaths "
          f"{totals['concord_membership_deaths_total']:.0f}")


async def main(trials: int) -> None:
    suspects: list[float] = []
    deaths: list[float] = []
    async with five_nodes("kill") as (cluster, session):
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
    print(f"kill -> suspect everywhere: median {statistics.median(suspects):.2f} s, "
          f"max {max(suspects):.2f} s; kill -> dead everywhere: median "
          f"{statistics.median(deaths):.2f} s, max {max(deaths):.2f} s ({trials} trials)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--soak", type=float, metavar="SECONDS",
                        help="count false positives over this long under load instead")
    parser.add_argument("--pause", type=float, metavar="SECONDS",
                        help="pause (SIGSTOP) a node this long per trial instead of killing it")
    arguments = parser.parse_args()
    if arguments.pause:
        asyncio.run(pauses(arguments.trials, arguments.pause))
    elif arguments.soak:
        asyncio.run(soak(arguments.soak))
    else:
        asyncio.run(main(arguments.trials))
