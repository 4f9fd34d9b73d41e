"""Batches on a real 3-node cluster: puts, gets and deletes sent through a follower and through
the leader apply as one log entry each, with a revision per write, on every replica; a
retried batch applies once; a batch with a bad op is refused and nothing of it applies."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from .conftest import FAST_RAFT, ClusterHarness, eventually, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHarness]:
    with running_cluster(tmp_path_factory.mktemp("batch")) as cluster:
        yield cluster


def kv(key: str, value: bytes, create: int, mod: int, version: int) -> dict[str, object]:
    return {"key": key, "value": value, "create_revision": create, "mod_revision": mod,
            "version": version}


async def test_batches_through_a_follower_and_the_leader(harness: ClusterHarness) -> None:
    leader, _ = await harness.wait_for_leader()
    follower = next(n for n in harness.node_ids if n != leader)
    async with harness.client(leader) as client:
        base = (await client.put("batch/seed", b"s"))["revision"]
        leader_status = await harness.status(leader)
        assert leader_status is not None
        index_before = leader_status["commit_index"]
    first_ops = [
        {"op": "put", "key": "batch/a", "value": b"1"},
        {"op": "put", "key": "batch/b", "value": b"\x00\xff"},
        {"op": "get", "key": "batch/a"},
        {"op": "put", "key": "batch/seed", "value": b"x", "create_only": True},
        {"op": "delete", "key": "batch/seed"},
        {"op": "get", "key": "batch/seed"},
    ]
    async with harness.client(follower) as client:
        results = await client.batch(first_ops, request_id="itest-batch-1")
    a = kv("batch/a", b"1", base + 1, base + 1, 1)
    seed = kv("batch/seed", b"s", base, base, 1)
    assert results == [
        {"ok": True, "revision": base + 1, "prev": None, "kv": a},
        {"ok": True, "revision": base + 2, "prev": None,
         "kv": kv("batch/b", b"\x00\xff", base + 2, base + 2, 1)},
        {"ok": True, "kv": a},
        {"ok": False, "error": "compare_failed", "current": seed},
        {"ok": True, "revision": base + 3, "prev": seed},
        {"ok": False, "error": "key_not_found"},
    ]
    leader_status = await harness.status(leader)
    assert leader_status is not None
    assert leader_status["commit_index"] == index_before + 1, "one log entry for the batch"

    async with harness.client(leader) as client:
        minimal = await client.batch([
            {"op": "delete", "key": "batch/a"},
            {"op": "put", "key": "batch/c", "value": b"3"},
            {"op": "get", "key": "batch/b"},
        ], minimal=True)
        assert minimal[:2] == [{"ok": True, "revision": base + 4},
                               {"ok": True, "revision": base + 5}]
        assert minimal[2]["kv"]["value"] == b"\x00\xff"
        assert await client.put_many({"batch/d": "4", "batch/e": "5"}) == {
            "batch/d": base + 6, "batch/e": base + 7}
    # the retry of the first batch, through another node, is answered from the store's memory
    async with harness.client(harness.node_ids[-1]) as client:
        again = await client.batch(first_ops, request_id="itest-batch-1")
    assert again == results
    # every replica applied the same writes at the same revisions
    for node_id in harness.node_ids:
        await harness.wait_caught_up(node_id, leader)
        async with harness.client(node_id) as client:
            listed = await client.list("batch/", consistency="serializable")
        assert [(k["key"], k["mod_revision"]) for k in listed["kvs"]] == [
            ("batch/b", base + 2), ("batch/c", base + 5), ("batch/d", base + 6),
            ("batch/e", base + 7)]


async def test_a_batch_with_a_bad_op_is_refused_and_nothing_applies(
        harness: ClusterHarness) -> None:
    leader, _ = await harness.wait_for_leader()
    follower = next(n for n in harness.node_ids if n != leader)
    before = await harness.status(leader)
    assert before is not None
    ops = [{"op": "put", "key": "refused/a", "value": "1"},
           {"op": "put", "key": "_concord/members/n9", "value": "{}"},
           {"op": "put", "key": "refused/b", "value": "2"}]
    async with aiohttp.ClientSession() as session:
        for node_id in (follower, leader):
            async with session.post(f"{harness.url(node_id)}/v1/kv/batch",
                                    json={"ops": ops}) as response:
                document = await response.json()
            assert response.status == 400, document
            assert document["error"]["code"] == "bad_request"
            assert document["error"]["message"].startswith("ops[1].key: keys under")
    after = await harness.status(leader)
    assert after is not None and after["commit_index"] == before["commit_index"]
    async with harness.client(leader) as client:
        assert await client.get("refused/a") is None
        assert await client.get("refused/b") is None


def test_a_leader_admits_writes_by_their_operations(tmp_path: Path) -> None:
    """``limits.max_pending_operations`` counts a batch as its operations: with room for one
    64-put batch, batches sent together are refused with 429 ``overloaded`` beyond it, and a
    refused batch leaves nothing behind."""
    settings = {**FAST_RAFT, "limits": {"max_batch_ops": 64, "max_pending_operations": 64}}
    with running_cluster(tmp_path / "admission", extra_settings=settings) as cluster:
        asyncio.run(_admission(cluster))


async def _admission(harness: ClusterHarness) -> None:
    leader, _ = await harness.wait_for_leader()

    async def send(session: aiohttp.ClientSession, burst: int, n: int) -> tuple[int, str]:
        ops = [{"op": "put", "key": f"adm/{burst}/{n}/{i}", "value": "v"} for i in range(64)]
        async with session.post(f"{harness.url(leader)}/v1/kv/batch",
                                json={"ops": ops}) as response:
            document = await response.json()
            return response.status, document.get("error", {}).get("code", "")

    answers: list[tuple[int, str]] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for burst in range(10):  # until a burst overlapped in flight (the first almost always)
            answers = await asyncio.gather(*(send(session, burst, n) for n in range(16)))
            if any(status == 429 for status, _ in answers):
                break
    assert {answer for answer in answers} <= {(200, ""), (429, "overloaded")}
    assert (200, "") in answers and (429, "overloaded") in answers
    async with harness.client(leader) as client:
        listed = await client.list(f"adm/{burst}/")
    stored = {kv["key"].rsplit("/", 1)[0] for kv in listed["kvs"]}
    admitted = {f"adm/{burst}/{n}" for n, (status, _) in enumerate(answers) if status == 200}
    assert stored == admitted, "every admitted batch whole, nothing of a refused one"
    assert len(listed["kvs"]) == 64 * len(admitted)


def test_a_timed_out_batch_keeps_its_room_until_it_leaves_the_log_pipeline(
        tmp_path: Path) -> None:
    """A write whose client stopped waiting (504) is still in the Raft pipeline: its
    operations keep counting toward ``limits.max_pending_operations`` until its entry
    applies, so a node cannot take on more and more work for writes nobody waits for."""
    settings = {"raft": {"tick_ms": 20, "check_quorum": False},  # the leader stays leader
                "limits": {"max_batch_ops": 64, "max_pending_operations": 64}}
    with running_cluster(tmp_path / "timed-out", extra_settings=settings) as cluster:
        asyncio.run(_timed_out_batch(cluster))


async def _timed_out_batch(harness: ClusterHarness) -> None:
    leader, _ = await harness.wait_for_leader()
    url = f"{harness.url(leader)}/v1/kv/batch?timeout_ms=300"

    async def send(session: aiohttp.ClientSession, name: str) -> tuple[int, str]:
        ops = [{"op": "put", "key": f"late/{name}/{i}", "value": "v"} for i in range(64)]
        async with session.post(url, json={"ops": ops}) as response:
            document = await response.json()
            return response.status, document.get("error", {}).get("code", "")

    followers = [node_id for node_id in harness.node_ids if node_id != leader]
    async with aiohttp.ClientSession() as session:
        for node_id in followers:
            harness.cluster.pause(node_id)  # nothing can commit
        try:
            assert (await send(session, "first"))[0] == 504
            assert await send(session, "second") == (429, "overloaded")
        finally:
            for node_id in followers:
                harness.cluster.resume(node_id)

        async def admitted() -> tuple[int, str] | None:
            # refused, nothing stored, until the first leaves the pipeline; the resumed
            # followers may elect one of them first (their timers ran on while paused), which
            # can overwrite an attempt (leader_changed: definitely not applied) or outlast it
            # (timeout: maybe applied; a retry writes the same keys and values)
            answer = await send(session, "third")
            retry = {(429, "overloaded"), (503, "no_leader"), (503, "leader_changed"),
                     (504, "timeout")}
            return None if answer in retry else answer

        assert await eventually(admitted, timeout_s=15, what="room once it left") == (200, "")
    async with harness.client() as client:
        # the first applied, or a new leader's log replaced it: all of it or nothing
        assert len((await client.list("late/first/"))["kvs"]) in (0, 64)
        assert (await client.list("late/second/"))["kvs"] == []
        assert len((await client.list("late/third/"))["kvs"]) == 64
