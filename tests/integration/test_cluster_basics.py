"""A healthy 3-node cluster: one leader, writes through every node (followers forward), reads
from every node, and what /health, /ready, /v1/status and /metrics report."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from concord.cluster import LocalCluster, free_port_block

from .conftest import ClusterHarness, eventually, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHarness]:
    with running_cluster(tmp_path_factory.mktemp("basics")) as cluster:
        yield cluster


async def test_exactly_one_leader_and_status_fields(harness: ClusterHarness) -> None:
    leader, term = await harness.wait_for_leader()
    async with harness.client() as client:
        await client.put("basics/status-probe", "x")
    leader_status = await harness.status(leader)
    assert leader_status is not None
    committed = leader_status["commit_index"]
    for node_id in harness.node_ids:
        status = await harness.wait_applied(node_id, committed)
        assert status["id"] == node_id
        assert status["role"] == ("leader" if node_id == leader else "follower")
        assert status["leader"] == leader
        assert status["voters"] == ["n1", "n2", "n3"]
        assert status["learners"] == []
        assert status["durability"] == "fsync"
        assert status["commit_index"] >= committed
        assert status["applied_index"] <= status["commit_index"] <= status["last_index"]
        # only the leader tracks its peers' progress (match index)
        expected_peers = set(harness.node_ids) - {node_id} if node_id == leader else set()
        assert set(status["peers"]) == expected_peers
    assert leader_status["term"] == term >= 1
    assert leader_status["commit_index"] == leader_status["last_index"]

    async def replicated() -> dict[str, int] | None:
        status = await harness.status(leader)
        assert status is not None
        matches = {peer: p["match_index"] for peer, p in status["peers"].items()}
        return matches if set(matches.values()) == {status["last_index"]} else None

    matches = await eventually(replicated, timeout_s=5, what="followers' match index")
    assert len(matches) == 2 and min(matches.values()) >= committed


async def test_writes_through_every_node_are_read_from_every_node(
        harness: ClusterHarness) -> None:
    leader, _ = await harness.wait_for_leader()
    written: dict[str, dict[str, Any]] = {}
    revisions = []
    for node_id in harness.node_ids:
        key = f"basics/via-{node_id}"
        async with harness.client(node_id) as client:
            answer = await client.put(key, f"written through {node_id}".encode())
        # a follower forwards the write; the relayed answer is the leader's own
        assert answer["header"]["member_id"] == leader
        assert answer["kv"]["key"] == key
        assert answer["kv"]["value"] == f"written through {node_id}".encode()
        written[key] = answer["kv"]
        revisions.append(answer["revision"])
    assert revisions == sorted(set(revisions))

    for reader in harness.node_ids:
        async with harness.client(reader) as client:
            for key, kv in written.items():
                assert await client.get(key) == kv, f"linearizable read of {key} via {reader}"
            listed = await client.list("basics/via-")
            assert listed["kvs"] == [written[key] for key in sorted(written)]

            async def converged(client: Any = client) -> bool | None:
                got = {key: await client.get(key, "serializable") for key in written}
                return True if got == written else None

            await eventually(converged, timeout_s=5, what=f"serializable reads on {reader}")


async def test_health_ready_and_metrics_on_every_node(harness: ClusterHarness) -> None:
    leader, term = await harness.wait_for_leader()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with harness.client() as client:
            await client.put("basics/metrics-probe", "x")  # an entry every member makes durable
            for node_id in set(harness.node_ids) - {leader}:
                await harness.wait_caught_up(node_id, leader)
            io_saves_before = {node_id: await io_saves(session, harness.url(node_id))
                               for node_id in harness.node_ids}
            await client.put("basics/large-probe", "x" * 8192)  # over inline_sync_bytes
        for node_id in set(harness.node_ids) - {leader}:
            await harness.wait_caught_up(node_id, leader)
        for node_id in harness.node_ids:
            url = harness.url(node_id)
            async with session.get(f"{url}/health") as response:
                assert response.status == 200
                document = await response.json()
                assert document["alive"] is True
                assert document["header"]["member_id"] == node_id
                assert document["header"]["cluster_id"] == harness.cluster.cluster_id
                assert response.headers["X-Concord-Member-Id"] == node_id
            async with session.get(f"{url}/ready") as response:
                assert response.status == 200
                assert (await response.json())["ready"] is True
            async with session.get(f"{url}/metrics") as response:
                assert response.status == 200
                metrics = await response.text()
            expected_is_leader = "1.0" if node_id == leader else "0.0"
            assert f"concord_is_leader {expected_is_leader}" in metrics.splitlines()
            assert f"concord_term {float(term)}" in metrics.splitlines()
            ticks = next(line for line in metrics.splitlines()
                         if line.startswith("concord_event_loop_lag_seconds_count "))
            assert float(ticks.split()[1]) > 0  # every tick measures how late it fired
            saves = {thread: saves_by_thread(metrics, thread) for thread in ("event_loop", "io")}
            assert saves["event_loop"] > 0  # a small Ready is saved on the event loop
            assert saves["io"] > io_saves_before[node_id]  # a large one on the I/O thread


async def io_saves(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(f"{url}/metrics") as response:
        return saves_by_thread(await response.text(), "io")


def saves_by_thread(metrics: str, thread: str) -> float:
    return next((sample.value for family in text_string_to_metric_families(metrics)
                 for sample in family.samples
                 if sample.name == "concord_storage_saves_total"
                 and sample.labels.get("thread") == thread), 0.0)


def test_log_to_files_does_not_leak_the_log_file(tmp_path: Path) -> None:
    client_base = free_port_block(1)
    cluster = LocalCluster(tmp_path, size=1, base_client_port=client_base,
                           base_peer_port=free_port_block(1, avoid=frozenset({client_base})),
                           log_to_files=True)
    cluster.write_configs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cluster.start_node("n1")
            gc.collect()
        finally:
            cluster.stop()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []
