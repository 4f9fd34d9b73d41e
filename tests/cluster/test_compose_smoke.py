"""Smoke test of docker-compose.yml: three containers form one cluster that serves reads and
writes through any node, keeps accepting writes after its leader's container is killed, and
loses no acknowledged write."""

from __future__ import annotations

import time

import pytest

from .conftest import NODE_IDS, ComposeCluster, HttpAnswer, http_request

pytestmark = pytest.mark.cluster

READY_TIMEOUT_S = 60.0
REQUEST_DEADLINE_S = 30.0  # for one operation, retries included (covers a leader election)
RETRY_PAUSE_S = 0.2
WRITES_PER_PHASE = 10


def _until_answered(method: str, url: str, body: bytes | None = None,
                    headers: dict[str, str] | None = None) -> HttpAnswer:
    """Send until the answer is not retryable (sending the same request, so the same
    X-Request-Id for writes) or REQUEST_DEADLINE_S passes."""
    deadline_s = time.monotonic() + REQUEST_DEADLINE_S
    while True:
        answer = http_request(method, url, body, headers)
        if not answer.retryable or time.monotonic() >= deadline_s:
            return answer
        time.sleep(RETRY_PAUSE_S)


def wait_until_ready(cluster: ComposeCluster) -> None:
    deadline_s = time.monotonic() + READY_TIMEOUT_S
    pending = set(cluster.client_urls)
    while pending and time.monotonic() < deadline_s:
        for node_id in sorted(pending):
            answer = http_request("GET", f"{cluster.client_urls[node_id]}/ready")
            if answer.status == 200 and answer.document.get("ready") is True:
                pending.discard(node_id)
        time.sleep(RETRY_PAUSE_S)
    assert not pending, f"not ready within {READY_TIMEOUT_S} s: {sorted(pending)}"


def put(url: str, key: str, value: str, request_id: str) -> int:
    """Write and return the new store revision; fails unless the write is acknowledged."""
    answer = _until_answered("PUT", f"{url}/v1/kv/{key}", value.encode(),
                             {"X-Request-Id": request_id})
    assert answer.status == 200, f"PUT {key} via {url}: {answer}"
    kv = answer.document["kv"]
    assert isinstance(kv, dict) and kv["key"] == key and kv["value"] == value, answer
    revision = answer.document["revision"]
    assert isinstance(revision, int)
    return revision


def get(url: str, key: str) -> str:
    """A linearizable read of a key that must exist."""
    answer = _until_answered("GET", f"{url}/v1/kv/{key}")
    assert answer.status == 200, f"GET {key} via {url}: {answer}"
    kv = answer.document["kv"]
    assert isinstance(kv, dict) and kv["value_encoding"] == "utf-8", answer
    value = kv["value"]
    assert isinstance(value, str)
    return value


def leader_and_term(url: str, candidates: tuple[str, ...]) -> tuple[str, int]:
    """The leader a node knows, once it is one of ``candidates``, and the node's term."""
    deadline_s = time.monotonic() + REQUEST_DEADLINE_S
    while True:
        answer = http_request("GET", f"{url}/v1/status")
        status = answer.document.get("status")
        if answer.status == 200 and isinstance(status, dict) and status["leader"] in candidates:
            return str(status["leader"]), int(status["term"])
        assert time.monotonic() < deadline_s, f"no leader among {candidates} via {url}: {answer}"
        time.sleep(RETRY_PAUSE_S)


def write_phase(url: str, phase: str, project: str, acknowledged: dict[str, str]) -> None:
    """WRITES_PER_PHASE writes through one node; each must land at a higher revision."""
    previous_revision = 0
    for index in range(WRITES_PER_PHASE):
        key, value = f"smoke/{phase}-{index}", f"{phase}-{index}-{project}"
        revision = put(url, key, value, request_id=f"{project}-{phase}-{index}")
        assert revision > previous_revision, (key, revision, previous_revision)
        previous_revision = revision
        acknowledged[key] = value


def listing(url: str, prefix: str) -> dict[str, str]:
    answer = _until_answered("GET", f"{url}/v1/kv?prefix={prefix}")
    assert answer.status == 200 and answer.document["more"] is False, answer
    kvs = answer.document["kvs"]
    assert isinstance(kvs, list)
    return {kv["key"]: kv["value"] for kv in kvs}


def test_cluster_serves_and_survives_leader_kill(compose_cluster: ComposeCluster) -> None:
    urls = compose_cluster.client_urls
    project = compose_cluster.project
    wait_until_ready(compose_cluster)

    acknowledged: dict[str, str] = {}
    write_phase(urls["n1"], "before", project, acknowledged)
    for key, value in acknowledged.items():
        assert get(urls["n3"], key) == value

    leader, term = leader_and_term(urls["n1"], NODE_IDS)
    assert leader_and_term(urls["n3"], NODE_IDS) == (leader, term)
    compose_cluster.kill(leader)
    assert http_request("GET", f"{urls[leader]}/health").status == 0, "killed node answers"

    survivors = tuple(node_id for node_id in NODE_IDS if node_id != leader)
    write_phase(urls[survivors[0]], "after", project, acknowledged)
    new_leader, new_term = leader_and_term(urls[survivors[1]], survivors)
    assert new_term > term

    for key, value in acknowledged.items():
        assert get(urls[survivors[1]], key) == value, key
    assert listing(urls[new_leader], "smoke/") == acknowledged
