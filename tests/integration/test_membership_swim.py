"""SWIM membership on real processes: a 5-node cluster's failure detectors against kill -9,
SIGSTOP and an injected clock offset, seen through ``/v1/cluster/members``,
``/v1/cluster/events`` and ``/v1/status``.

Probing runs 5x faster than the defaults (200 ms); the suspicion timeout is 4 s (20 probe
intervals), longer than the 3 s pause, so that a paused node is suspected but must come back
by refuting, never by being declared dead.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from typing import Any, Final

import aiohttp
import pytest

from concord.cluster import LocalCluster, free_cluster_ports

from .conftest import FAST_RAFT, READY_TIMEOUT_S, STOP_TIMEOUT_S, ClusterHarness, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SIZE: Final = 5
OFFSET_NODE: Final = "n5"
INJECTED_OFFSET_MS: Final = 2000
PAUSE_S: Final = 3.0
SUSPICION_MULT: Final = 20  # 20 x 200 ms = 4 s before a suspect is declared dead
MEMBERSHIP: Final[dict[str, object]] = {
    "probe_interval_ms": 200, "probe_timeout_ms": 100, "gossip_interval_ms": 50,
    "suspicion_mult": SUSPICION_MULT, "heartbeat_timeout_ms": 1000,
}
DETECTION_TIMEOUT_S: Final = 10.0
Members = dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHarness]:
    data_dir = tmp_path_factory.mktemp("swim")
    client_base, peer_base = free_cluster_ports(SIZE)
    cluster = LocalCluster(data_dir, size=SIZE, base_client_port=client_base,
                           base_peer_port=peer_base, cluster_id=f"itest-{data_dir.name}",
                           extra_settings={**FAST_RAFT, "membership": MEMBERSHIP},
                           log_to_files=True)
    cluster.write_configs()
    config = cluster.nodes[OFFSET_NODE].config_path
    config.write_text(config.read_text().replace(
        "[membership]\n", f"[membership]\nclock_offset_ms = {INJECTED_OFFSET_MS}\n"))
    harness = ClusterHarness(cluster)
    try:
        harness.start()
        asyncio.run(cluster.wait_ready(timeout_s=READY_TIMEOUT_S))
        yield harness
    finally:
        harness.stop()


async def members(harness: ClusterHarness, observer: str) -> Members | None:
    """``observer``'s ``/v1/cluster/members``: id -> document (None: no answer)."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as session, \
                session.get(f"{harness.url(observer)}/v1/cluster/members") as response:
            document = await response.json()
    except (aiohttp.ClientError, TimeoutError):
        return None
    return {member["id"]: member for member in document["members"]}


async def wait_state(harness: ClusterHarness, observers: list[str], target: str,
                     states: set[str]) -> float:
    """Seconds until every observer sees ``target`` in one of ``states``."""
    started = time.monotonic()

    async def seen() -> bool | None:
        views = await asyncio.gather(*(members(harness, o) for o in observers))
        ok = all(v is not None and v[target]["state"] in states for v in views)
        return True if ok else None

    await eventually(seen, timeout_s=DETECTION_TIMEOUT_S,
                     what=f"{observers} seeing {target} as {sorted(states)}")
    return time.monotonic() - started


async def wait_all_alive(harness: ClusterHarness) -> None:
    for node_id in harness.node_ids:
        await wait_state(harness, harness.node_ids, node_id, {"alive"})


async def test_healthy_cluster_measures_the_injected_clock_offset(
        healthy: ClusterHarness) -> None:
    await wait_all_alive(healthy)
    others = [n for n in healthy.node_ids if n != OFFSET_NODE]

    async def measured() -> dict[str, float] | None:
        views = await asyncio.gather(*(members(healthy, o) for o in others))
        offsets = {o: v[OFFSET_NODE]["clock_offset_ms"] for o, v in zip(others, views,
                                                                         strict=True) if v}
        return offsets if len(offsets) == len(others) and None not in offsets.values() else None

    offsets = await eventually(measured, timeout_s=DETECTION_TIMEOUT_S,
                               what="every peer measuring n5's clock")
    for observer, offset_ms in offsets.items():
        assert abs(offset_ms - INJECTED_OFFSET_MS) < 50, (observer, offset_ms)

    async def n1_measured_everyone() -> Members | None:
        view = await members(healthy, "n1")
        measured = view is not None and all(
            m["clock_offset_ms"] is not None for n, m in view.items() if n != "n1")
        return view if measured else None

    view = await eventually(n1_measured_everyone, timeout_s=DETECTION_TIMEOUT_S,
                            what="n1 measuring every peer's clock")
    print("members seen by n1:", json.dumps(view, indent=1))
    assert abs(view["n2"]["clock_offset_ms"]) < 50  # the undisturbed clocks agree
    assert view["n1"]["state"] == "alive" and view["n1"]["last_heard_ms_ago"] is None
    assert view["n2"]["heartbeat_verdict"] == "available" and view["n2"]["phi"] < 8
    # n5 flags itself once it has measured a majority of its peers, which may come a little
    # after they have measured it
    expected = {n: n == OFFSET_NODE for n in healthy.node_ids}

    async def flags_settled() -> dict[str, bool] | None:
        statuses = await healthy.statuses()
        flags = {n: s["membership"]["clock_out_of_sync"] for n, s in statuses.items() if s}
        return flags if flags == expected else None

    await eventually(flags_settled, timeout_s=DETECTION_TIMEOUT_S,
                     what="only n5 flagging its clock as out of sync")


async def test_paused_node_is_suspected_then_refutes(healthy: ClusterHarness) -> None:
    await wait_all_alive(healthy)
    target, observer = "n3", "n1"
    before = await members(healthy, observer)
    assert before is not None
    events: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session, \
            session.get(f"{healthy.url(observer)}/v1/cluster/events") as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        first = await stream.content.readuntil(b"\n\n")
        assert first.startswith(b"event: members\n")
        healthy.cluster.pause(target)
        try:
            others = [n for n in healthy.node_ids if n != target]
            await wait_state(healthy, others, target, {"suspect"})
            await asyncio.sleep(max(0.0, PAUSE_S - 0.1))
        finally:
            healthy.cluster.resume(target)
        await wait_state(healthy, others, target, {"alive"})

        async def read_events() -> None:
            while not any(e["member"] == target and e["state"] == "alive" for e in events):
                chunk = await stream.content.readuntil(b"\n\n")
                name, data = chunk.decode().strip().split("\n")
                assert name == "event: member"
                events.append(json.loads(data.removeprefix("data: ")))

        await asyncio.wait_for(read_events(), DETECTION_TIMEOUT_S)
    states = [e["state"] for e in events if e["member"] == target]
    assert states == ["suspect", "alive"], events  # never dead
    after = await members(healthy, observer)
    assert after is not None
    assert after[target]["incarnation"] > before[target]["incarnation"]  # it refuted


async def test_a_node_stopped_gracefully_is_seen_as_left(healthy: ClusterHarness) -> None:
    await wait_all_alive(healthy)
    target = "n2"
    others = [n for n in healthy.node_ids if n != target]
    healthy.cluster.signal(target, signal.SIGTERM)
    left_s = await wait_state(healthy, others, target, {"left"})
    assert healthy.wait_exit(target, STOP_TIMEOUT_S) == 0
    assert left_s < SUSPICION_MULT * 0.2  # announced, not found out by a suspicion timeout


async def test_killed_node_is_suspected_then_dead_everywhere(healthy: ClusterHarness) -> None:
    await wait_all_alive(healthy)
    target = "n4"
    others = [n for n in healthy.node_ids if n != target]
    killed = time.monotonic()
    healthy.cluster.kill(target)
    suspect_s = await wait_state(healthy, others, target, {"suspect", "dead"})
    dead_s = await wait_state(healthy, others, target, {"dead"})
    dead_s += suspect_s
    print(f"kill -> suspect everywhere {suspect_s:.2f} s, -> dead everywhere {dead_s:.2f} s "
          f"(measured {time.monotonic() - killed:.2f} s)")
    assert dead_s >= SUSPICION_MULT * 0.2 * 0.9  # the suspicion timeout ran before the verdict
