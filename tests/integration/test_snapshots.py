"""Snapshots in the running daemon: taken in the background every
``raft.snapshot_every_entries`` applied entries (here 50), the log compacted behind them,
and a node killed with SIGKILL restarts from its newest snapshot plus the log after it,
holding every acknowledged write."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import FAST_RAFT, ClusterHarness, eventually, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

EVERY_ENTRIES = 50


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHarness]:
    settings = {"raft": {**FAST_RAFT["raft"], "snapshot_every_entries": EVERY_ENTRIES}}
    with running_cluster(tmp_path_factory.mktemp("snapshots"), extra_settings=settings) as cluster:
        yield cluster


async def test_a_follower_restarts_from_its_snapshot_with_every_write(
        harness: ClusterHarness) -> None:
    leader, _ = await harness.wait_for_leader()
    written: dict[str, dict[str, Any]] = {}
    async with harness.client() as client:
        for batch in range(6):  # 300 writes: several snapshots on every node
            answers = await asyncio.gather(*(client.put(f"snap/{batch}-{i:02d}", f"v{i}")
                                             for i in range(50)))
            written.update({answer["kv"]["key"]: answer["kv"] for answer in answers})
    follower = next(node_id for node_id in harness.node_ids if node_id != leader)
    await harness.wait_caught_up(follower, leader)

    async def compacted() -> dict[str, Any] | None:
        status = await harness.status(follower)
        return status if status and status["snapshot_index"] >= 4 * EVERY_ENTRIES else None

    before = await eventually(compacted, timeout_s=20, what="the follower took snapshots")
    assert before["log_entries"] < 2 * EVERY_ENTRIES + 20, before
    harness.cluster.kill(follower)
    harness.start_node(follower)
    await harness.cluster.wait_ready([follower])
    await harness.wait_caught_up(follower, leader)
    after = await harness.status(follower)
    assert after is not None and after["snapshot_index"] >= before["snapshot_index"]
    assert "recovered" in harness.log_since(follower, 0)
    async with harness.client(follower) as client:
        listed = await client.list("snap/", consistency="serializable")
    assert listed["kvs"] == [written[key] for key in sorted(written)]


@pytest.fixture(scope="module")
def bytes_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHarness]:
    settings = {"raft": {**FAST_RAFT["raft"], "snapshot_every_entries": 1_000_000,
                         "snapshot_every_bytes": 64 * 1024}}
    with running_cluster(tmp_path_factory.mktemp("snapshot-bytes"),
                         extra_settings=settings) as cluster:
        yield cluster


async def test_large_batch_entries_bring_snapshots_by_bytes(
        bytes_harness: ClusterHarness) -> None:
    """A batch entry carries many writes: a few dozen entries can hold megabytes, so the
    bytes bound takes snapshots long before the entry count would."""
    leader, _ = await bytes_harness.wait_for_leader()
    async with bytes_harness.client() as client:
        for batch in range(12):  # 12 entries of about 100 KiB each
            await client.put_many({f"big/{batch}-{i:03d}": "x" * 1000 for i in range(100)})

    async def snapshotted() -> dict[str, Any] | None:
        status = await bytes_harness.status(leader)
        return status if status and status["snapshot_index"] > 0 else None

    status = await eventually(snapshotted, timeout_s=20, what="a snapshot taken by bytes")
    assert status["snapshot_index"] < 100, status  # by bytes: nowhere near 1,000,000 entries
