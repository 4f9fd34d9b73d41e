"""Membership and leadership changes at run time on real processes: leadership transfer to a
named node, a fourth node joining as a voter with the data, and a founder removed while the
cluster keeps serving writes."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from concord.cluster import free_ports

from .conftest import ClusterHarness, eventually, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NEW_NODE = "n4"
CHANGE_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHarness]:
    with running_cluster(tmp_path_factory.mktemp("membership")) as cluster:
        yield cluster


async def members_seen_by(harness: ClusterHarness, node_id: str) -> dict[str, str]:
    """``GET /v1/cluster/members`` on ``node_id`` (its own view): id -> role."""
    async with harness.client(node_id, retries=0) as client:
        return {member["id"]: member["role"] for member in await client.members()}


async def wait_members(harness: ClusterHarness, node_ids: list[str],
                       expected: dict[str, str]) -> None:
    """Until every node of ``node_ids`` reports exactly the ``expected`` members."""
    for node_id in node_ids:

        async def agrees(node_id: str = node_id) -> bool | None:
            return True if await members_seen_by(harness, node_id) == expected else None

        await eventually(agrees, timeout_s=CHANGE_TIMEOUT_S, what=f"members seen by {node_id}")


async def test_leadership_moves_to_the_named_node(harness: ClusterHarness) -> None:
    old_leader, old_term = await harness.wait_for_leader()
    target, relay = [n for n in harness.node_ids if n != old_leader]
    # asked through a follower that is not the target: the request is forwarded
    async with harness.client(relay, timeout_s=CHANGE_TIMEOUT_S) as client:
        assert await client.transfer_leader(target) == target
    new_leader, new_term = await harness.wait_for_leader()
    assert new_leader == target
    assert new_term > old_term
    async with harness.client(old_leader) as client:
        answer = await client.put("membership/after-transfer", "ok")
    assert answer["header"]["member_id"] == target


async def test_fourth_node_joins_as_voter_then_a_founder_is_removed(
        harness: ClusterHarness) -> None:
    founders = harness.node_ids
    async with harness.client() as client:
        before = {f"membership/before-{i}": (await client.put(f"membership/before-{i}", str(i)))
                  for i in range(10)}
    client_port, peer_port = free_ports(2)
    newcomer = harness.cluster.add_node(NEW_NODE, client_port, peer_port)
    harness.start_node(NEW_NODE)

    async def answering() -> dict[str, Any] | None:
        return await harness.status(NEW_NODE)

    status = await eventually(answering, timeout_s=15, what=f"{NEW_NODE} answering")
    assert (status["voters"], status["learners"], status["leader"]) == ([], [], None)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session, \
            session.get(f"{newcomer.client_url}/ready") as response:
        assert response.status == 503  # no leader known before it is added

    async with harness.client(timeout_s=CHANGE_TIMEOUT_S) as client:
        members = await client.add_member(NEW_NODE, newcomer.peer_url, newcomer.client_url)
    assert {m["id"]: m["role"] for m in members} == {n: "voter" for n in [*founders, NEW_NODE]}
    assert {m["id"]: (m["peer_url"], m["client_url"]) for m in members}[NEW_NODE] == (
        newcomer.peer_url, newcomer.client_url)
    await harness.cluster.wait_ready([NEW_NODE])
    leader, _ = await harness.wait_for_leader()
    await harness.wait_caught_up(NEW_NODE, leader)
    async with harness.client(NEW_NODE) as client:
        for key, answer in before.items():
            assert await client.get(key, "serializable") == answer["kv"]
    await wait_members(harness, [*founders, NEW_NODE],
                       {n: "voter" for n in [*founders, NEW_NODE]})

    removed = next(n for n in founders if n != leader)
    remaining = [n for n in [*founders, NEW_NODE] if n != removed]
    async with harness.client(*remaining, timeout_s=CHANGE_TIMEOUT_S) as client:
        members = await client.remove_member(removed)
    assert {m["id"]: m["role"] for m in members} == {n: "voter" for n in remaining}
    await wait_members(harness, remaining, {n: "voter" for n in remaining})
    leader_status = await harness.status(leader)
    assert leader_status is not None
    assert leader_status["voters"] == sorted(remaining)

    harness.cluster.signal(removed, signal.SIGTERM)  # the removed node is no longer needed
    assert await asyncio.to_thread(harness.wait_exit, removed, 15) == 0
    async with harness.client(*remaining) as client:
        after = {f"membership/after-{i}": (await client.put(f"membership/after-{i}", str(i)))
                 for i in range(10)}
        for key, answer in {**before, **after}.items():
            assert await client.get(key) == answer["kv"]
    await harness.wait_for_leader(remaining)
