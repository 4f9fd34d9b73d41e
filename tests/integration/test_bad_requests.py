"""Hostile and broken input against real processes: oversized keys, values and bodies (413),
malformed requests (400), unknown routes (404/405), garbage and foreign clusters on the peer
port (400/403) — each refused with the right error, and every node still up and serving."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from concord.transport.peer import CLUSTER_HEADER, FROM_HEADER, MESSAGES_PATH

from .conftest import FAST_RAFT, ClusterHarness, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MAX_KEY_BYTES = 100
MAX_VALUE_BYTES = 1000
MAX_REQUEST_BYTES = 2000
LIMITS: dict[str, object] = {"max_key_bytes": MAX_KEY_BYTES, "max_value_bytes": MAX_VALUE_BYTES,
                             "max_request_bytes": MAX_REQUEST_BYTES}
JSON_HEADERS = {"Content-Type": "application/json"}
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=5)

Case = tuple[str, str, bytes, dict[str, str]]  # method, path and query, body, headers


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHarness]:
    with running_cluster(tmp_path_factory.mktemp("bad-requests"),
                         extra_settings={**FAST_RAFT, "limits": LIMITS}) as cluster:
        yield cluster


async def call(session: aiohttp.ClientSession, base_url: str, case: Case,
               ) -> tuple[int, dict[str, Any]]:
    """Send one request; (status, its JSON document or {} when it is not JSON)."""
    method, path, body, headers = case
    async with session.request(method, base_url + path, data=body, headers=headers) as response:
        payload = await response.read()
        if response.content_type != "application/json":
            return response.status, {}
        document: dict[str, Any] = json.loads(payload)
        return response.status, document


def error_of(document: dict[str, Any]) -> tuple[str, bool, bool]:
    error = document["error"]
    return error["code"], error["retryable"], error["definite"]


async def assert_every_node_serves(harness: ClusterHarness, tag: str) -> None:
    """Every process is still running, and a write and a read through each node succeed."""
    assert [n for n in harness.node_ids if not harness.is_running(n)] == []
    leader, _ = await harness.wait_for_leader()
    for node_id in harness.node_ids:
        async with harness.client(node_id) as client:
            written = await client.put(f"survivor/{tag}/{node_id}", b"\x00binary\xff")
            assert written["header"]["member_id"] == leader
            assert await client.get(f"survivor/{tag}/{node_id}") == written["kv"]


def member_body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


ACCEPTED_AT_THE_LIMITS: list[Case] = [
    ("PUT", "/v1/kv/" + "k" * MAX_KEY_BYTES, b"v", {}),
    ("PUT", "/v1/kv/" + "é" * (MAX_KEY_BYTES // 2), b"v", {}),  # 2 bytes per character
    ("PUT", "/v1/kv/limits/value", b"x" * MAX_VALUE_BYTES, {}),
    ("GET", "/v1/kv/limits/value", b"", {}),
]

TOO_LARGE: list[Case] = [
    ("PUT", "/v1/kv/" + "k" * (MAX_KEY_BYTES + 1), b"v", {}),
    ("PUT", "/v1/kv/" + "é" * (MAX_KEY_BYTES // 2) + "k", b"v", {}),
    ("GET", "/v1/kv/" + "k" * (MAX_KEY_BYTES + 1), b"", {}),
    ("DELETE", "/v1/kv/" + "k" * (MAX_KEY_BYTES + 1), b"", {}),
    ("GET", "/v1/kv?prefix=" + "p" * (MAX_KEY_BYTES + 1), b"", {}),
    ("PUT", "/v1/kv/limits/value", b"x" * (MAX_VALUE_BYTES + 1), {}),
    ("PUT", "/v1/kv/limits/value", b"x" * (MAX_REQUEST_BYTES + 1), {}),
    ("POST", "/v1/cluster/members", b" " * (MAX_REQUEST_BYTES + 1), JSON_HEADERS),
]

MALFORMED: list[Case] = [
    ("PUT", "/v1/kv/", b"v", {}),
    ("PUT", "/v1/kv/k?bogus=1", b"v", {}),
    ("GET", "/v1/kv/k?consistency=strong", b"", {}),
    ("GET", "/v1/kv/k?consistency=serializable&consistency=serializable", b"", {}),
    ("GET", "/v1/kv/k?timeout_ms=0", b"", {}),
    ("GET", "/v1/kv/k?timeout_ms=60001", b"", {}),
    ("GET", "/v1/kv/k?timeout_ms=soon", b"", {}),
    ("GET", "/v1/kv/k?raw=maybe", b"", {}),
    ("GET", "/v1/kv?limit=0", b"", {}),
    ("PUT", "/v1/kv/k?prev_revision=1&create_only=1", b"v", {}),
    ("PUT", "/v1/kv/k?prev_revision=-1", b"v", {}),
    ("PUT", "/v1/kv/k", b"v", {"X-Request-Id": "has a space"}),
    ("PUT", "/v1/kv/k", b"v", {"X-Concord-Prev-Value-B64": "not*base64"}),
    ("PUT", "/v1/kv/_concord/members/n9", b"v", {}),
    ("DELETE", "/v1/kv/_concord/members/n1", b"", {}),
    ("GET", "/v1/status?verbose=1", b"", {}),
    ("POST", "/v1/cluster/members", b"", JSON_HEADERS),
    ("POST", "/v1/cluster/members", b"{not json", JSON_HEADERS),
    ("POST", "/v1/cluster/members", b"[1, 2]", JSON_HEADERS),
    ("POST", "/v1/cluster/members", member_body(id="n9"), JSON_HEADERS),
    ("POST", "/v1/cluster/members",
     member_body(id="n9", peer_url="ftp://127.0.0.1:1", client_url="http://127.0.0.1:2"),
     JSON_HEADERS),
    ("POST", "/v1/cluster/members",
     member_body(id="n9", peer_url="http://127.0.0.1:1", client_url="http://127.0.0.1:2",
                 learner="yes"), JSON_HEADERS),
    ("POST", "/v1/cluster/members",
     member_body(id="n9", peer_url="http://127.0.0.1:1", client_url="http://127.0.0.1:2",
                 colour="red"), JSON_HEADERS),
    ("POST", "/v1/cluster/members", b"\xc1\xff\x00", {"Content-Type": "application/msgpack"}),
    ("POST", "/v1/cluster/leader", member_body(target=5), JSON_HEADERS),
]


async def test_inputs_at_the_limits_are_accepted_and_beyond_them_refused_with_413(
        harness: ClusterHarness) -> None:
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
        for node_id in harness.node_ids:
            url = harness.url(node_id)
            for case in ACCEPTED_AT_THE_LIMITS:
                status, document = await call(session, url, case)
                assert status == 200, (node_id, case[:2], document)
            for case in TOO_LARGE:
                status, document = await call(session, url, case)
                assert (status, error_of(document)) == (413, ("too_large", False, True)), \
                    (node_id, case[:2], document)
        listed = await call(session, harness.url(harness.node_ids[0]),
                            ("GET", "/v1/kv/limits/value", b"", {}))
    assert listed[1]["kv"]["value"] == "x" * MAX_VALUE_BYTES
    await assert_every_node_serves(harness, "too-large")


async def test_malformed_requests_are_refused_with_400(harness: ClusterHarness) -> None:
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
        for node_id in harness.node_ids:
            for case in MALFORMED:
                status, document = await call(session, harness.url(node_id), case)
                assert (status, error_of(document)) == (400, ("bad_request", False, True)), \
                    (node_id, case[:2], document)
            # reading a system key is allowed (founders have no address-book record)
            status, document = await call(session, harness.url(node_id),
                                          ("GET", "/v1/kv/_concord/members/n1", b"", {}))
            assert (status, error_of(document)) == (404, ("key_not_found", False, True))
    await assert_every_node_serves(harness, "malformed")


async def test_unknown_routes_and_methods(harness: ClusterHarness) -> None:
    url = harness.url(harness.node_ids[-1])
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
        for path in ("/", "/v2/kv/k", "/v1/kvx", "/v1/cluster", "/raft/v1/messages"):
            status, document = await call(session, url, ("GET", path, b"", {}))
            assert (status, error_of(document)) == (404, ("not_found", False, True)), path
        status, document = await call(session, url, ("POST", "/v1/status", b"", {}))
        assert (status, error_of(document)) == (405, ("method_not_allowed", False, True))
        async with session.post(f"{url}/v1/kv/k") as response:
            assert set(response.headers["Allow"].split(",")) >= {"PUT", "GET", "DELETE"}
        status, document = await call(session, url, ("GET", "/v1/debug/faults", b"", {}))
        assert (status, error_of(document)) == (403, ("forbidden", False, True))
    await assert_every_node_serves(harness, "unknown-routes")


def peer_rejections(metrics_text: str) -> dict[str, float]:
    """``concord_peer_rejected_total`` by reason, from a /metrics page."""
    counts = {}
    for line in metrics_text.splitlines():
        if line.startswith("concord_peer_rejected_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('reason="')[1].split('"')[0]] = float(value)
    return counts


async def test_garbage_on_the_peer_port_is_refused(harness: ClusterHarness) -> None:
    leader, _ = await harness.wait_for_leader()
    target = next(n for n in harness.node_ids if n != leader)
    node = harness.cluster.nodes[target]
    cluster_id = harness.cluster.cluster_id
    garbage = random.Random(20).randbytes(600)
    right = {CLUSTER_HEADER: cluster_id, FROM_HEADER: "intruder"}
    cases: list[tuple[bytes, dict[str, str], int]] = [
        (garbage, right, 400),
        (b"", right, 400),
        (b"\x93\x01\x02\x03", right, 400),  # valid msgpack, not a batch
        (garbage, {CLUSTER_HEADER: cluster_id}, 400),  # no sender
        (garbage, {CLUSTER_HEADER: cluster_id, FROM_HEADER: target}, 400),  # itself
        (garbage, {CLUSTER_HEADER: "another-cluster", FROM_HEADER: "intruder"}, 403),
        (garbage, {FROM_HEADER: "intruder"}, 403),
    ]
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
        async with session.get(f"{node.client_url}/metrics") as response:
            before = peer_rejections(await response.text())
        for body, headers, expected in cases:
            async with session.post(node.peer_url + MESSAGES_PATH, data=body,
                                    headers=headers) as response:
                assert response.status == expected, (headers, body[:8], await response.text())
        async with session.get(f"{node.peer_url}/raft/v1/unknown") as response:
            assert response.status == 404
        async with session.get(f"{node.client_url}/metrics") as response:
            after = peer_rejections(await response.text())
    added = {reason: after.get(reason, 0.0) - before.get(reason, 0.0) for reason in after}
    assert {r: n for r, n in added.items() if n} == {"decode": 3.0, "headers": 2.0,
                                                     "cluster_id": 2.0}
    await assert_every_node_serves(harness, "peer-garbage")


