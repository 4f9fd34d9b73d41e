"""The quorum store's Python client and ``concord dkv`` commands against a real cluster.

Three ``concord serve`` processes; the client writes concurrent siblings through different
nodes, merges them with the context it read, deletes, and manages bucket properties; the
CLI does the same round trip through subprocesses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from concord.dkv_client import AsyncDkvClient, DkvError, _parse_props

from .conftest import ClusterHarness, running_cluster


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHarness]:
    with running_cluster(tmp_path_factory.mktemp("dkv-client")) as cluster:
        yield cluster


def dkv_client(harness: ClusterHarness, *node_ids: str) -> AsyncDkvClient:
    return AsyncDkvClient([harness.url(node_id) for node_id in node_ids])


async def test_siblings_merge_and_delete_through_the_client(harness: ClusterHarness) -> None:
    await harness.wait_for_leader()
    n1, n2, n3 = harness.node_ids
    async with dkv_client(harness, n1) as first, dkv_client(harness, n2) as second, \
            dkv_client(harness, n3) as third:
        await first.put("carts", "alice", b"milk")
        await second.put("carts", "alice", b"eggs")  # no context: concurrent, a sibling
        read = await third.get("carts", "alice")
        assert read.found and sorted(read.siblings) == [b"eggs", b"milk"]
        await third.put("carts", "alice", b"eggs,milk", context=read.context)
        merged = await first.get("carts", "alice", r=3)
        assert merged.siblings == (b"eggs,milk",)
        await first.delete("carts", "alice", context=merged.context)
        gone = await second.get("carts", "alice")
        assert not gone.found and gone.siblings == () and gone.context


async def test_bucket_props_and_errors_through_the_client(harness: ClusterHarness) -> None:
    await harness.wait_for_leader()
    async with dkv_client(harness, *harness.node_ids) as client:
        assert await client.bucket("fresh") == {"n": 3, "r": 2, "w": 2, "lww": False}
        assert (await client.set_bucket("strict", w=3))["w"] == 3
        with pytest.raises(DkvError) as refused:
            await client.put("strict", "k", b"v", w=4)
        assert refused.value.status == 400 and "w=4" in refused.value.message
        with pytest.raises(DkvError) as unknown:
            await client.set_bucket("strict", quorum=2)
        assert unknown.value.status == 400 and "quorum" in unknown.value.message


def test_cli_round_trip(harness: ClusterHarness) -> None:
    endpoints = ",".join(harness.url(node_id) for node_id in harness.node_ids)

    def concord(*args: str) -> dict[str, object]:
        done = subprocess.run([sys.executable, "-m", "concord", "dkv", *args,
                               "--endpoints", endpoints],
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        answer: dict[str, object] = json.loads(done.stdout)
        return answer

    written = concord("put", "cli", "k", "hello")
    read = concord("get", "cli", "k", "--explain")
    assert read["siblings"] == ["hello"] and read["context"] == written["context"]
    assert isinstance(read["explain"], dict) and len(read["explain"]["preference_list"]) == 3
    assert concord("bucket", "cli", "--set", "r=1")["props"] == {"n": 3, "r": 1, "w": 2,
                                                                "lww": False}
    failed = subprocess.run([sys.executable, "-m", "concord", "dkv", "get", "cli", "k",
                             "--r", "9", "--endpoints", endpoints],
                            capture_output=True, text=True, timeout=30, check=False)
    assert failed.returncode == 1 and "r=9" in failed.stderr


def test_property_changes_parse_or_fail_clearly() -> None:
    assert _parse_props("n=3, w=2,lww=true") == {"n": 3, "w": 2, "lww": True}
    with pytest.raises(ValueError, match="expected name=value"):
        _parse_props("n3")
    with pytest.raises(ValueError, match="integer or true/false"):
        _parse_props("w=two")
