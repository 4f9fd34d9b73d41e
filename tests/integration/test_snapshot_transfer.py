"""A snapshot larger than a peer-stream frame reaches a lagging follower in fragments.

The cluster runs with ``transport.max_frame_bytes`` at 64 KiB and a snapshot every 50
entries. A follower is killed, the others write about 400 KB and compact their logs past it,
and the follower, restarted, can only catch up through an InstallSnapshot several frames
long: it must end up with every write, and both ends' ``/metrics`` must count fragments.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from .conftest import FAST_RAFT, ClusterHarness, eventually, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

EVERY_ENTRIES = 50
FRAME_BYTES = 64 * 1024
VALUE = "v" * 1000
KEYS = 400  # about 400 KB of state: at least six frames


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHarness]:
    settings = {"raft": {**FAST_RAFT["raft"], "snapshot_every_entries": EVERY_ENTRIES},
                "transport": {"max_frame_bytes": FRAME_BYTES}}
    with running_cluster(tmp_path_factory.mktemp("snapshot-transfer"),
                         extra_settings=settings) as cluster:
        yield cluster


async def fragments(harness: ClusterHarness, node_id: str, direction: str) -> float:
    """The node's ``concord_peer_fragments_total`` summed over peers, for ``direction``."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
            f"{harness.url(node_id)}/metrics") as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("concord_peer_fragments_total{")
               and f'direction="{direction}"' in line)


async def test_a_lagging_follower_catches_up_through_a_fragmented_snapshot(
        harness: ClusterHarness) -> None:
    leader, _ = await harness.wait_for_leader()
    follower = next(node_id for node_id in harness.node_ids if node_id != leader)
    stopped = await harness.status(follower)
    assert stopped is not None
    harness.cluster.kill(follower)

    written: dict[str, dict[str, Any]] = {}
    async with harness.client(leader) as client:
        for batch in range(KEYS // 50):
            answers = await asyncio.gather(*(client.put(f"big/{batch}-{i:02d}", VALUE)
                                             for i in range(50)))
            written.update({answer["kv"]["key"]: answer["kv"] for answer in answers})

    async def compacted_past_the_follower() -> dict[str, Any] | None:
        status = await harness.status(leader)
        past = status is not None and status["snapshot_index"] > stopped["applied_index"] + 300
        return status if past else None

    await eventually(compacted_past_the_follower, timeout_s=20,
                     what="the leader compacting past the stopped follower")
    assert await fragments(harness, leader, "sent") == 0.0

    harness.start_node(follower)
    await harness.cluster.wait_ready([follower])
    caught_up = await harness.wait_caught_up(follower, leader)
    assert caught_up["snapshot_index"] > stopped["applied_index"] + 300, caught_up
    async with harness.client(follower) as client:
        listed = await client.list("big/", consistency="serializable")
    assert listed["kvs"] == [written[key] for key in sorted(written)]
    sent, received = (await fragments(harness, leader, "sent"),
                      await fragments(harness, follower, "received"))
    assert received >= KEYS * len(VALUE) // FRAME_BYTES, (sent, received)
    assert sent >= received
