"""Tests of the client HTTP API against an in-memory node: every endpoint, JSON and msgpack,
raw and binary values, conditional writes, limits, the error model, idempotent retries and
follower-to-leader forwarding (including loop prevention)."""

from __future__ import annotations

import asyncio
import base64
import random
from typing import Any

import msgpack
import pytest
from aiohttp.test_utils import TestClient
from fake_node import TEST_LIMITS, FakeNode, free_port, serving

from concord.api.http import BACKSTOP_GRACE_S, BACKSTOP_SWEEP_S, _bounded
from concord.config import LimitSettings
from concord.observability.metrics import NodeMetrics
from concord.runtime.errors import (
    ConcordError,
    LeaderChanged,
    MembershipChangeRefused,
    NoLeader,
    Overloaded,
    ShuttingDown,
    TimedOut,
)
from concord.transport.faults import FaultInjector

MSGPACK = "application/msgpack"


def kv_doc(key: str, value: str, create: int, mod: int, version: int,
           encoding: str = "utf-8") -> dict[str, Any]:
    return {"key": key, "value": value, "value_encoding": encoding, "create_revision": create,
            "mod_revision": mod, "version": version}


async def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    document = await response.json()
    assert document["error"]["code"] == code, document
    error: dict[str, Any] = document["error"]
    return error


# -- key-value basics ---------------------------------------------------------------------------


async def test_put_then_get_round_trips_and_reports_revisions(api: TestClient[Any, Any]) -> None:
    first = await api.put("/v1/kv/config/a", data=b"one")
    assert first.status == 200
    assert await first.json() == {
        "header": {"cluster_id": "test-cluster", "member_id": "n1", "term": 3, "revision": 1},
        "revision": 1, "prev": None, "kv": kv_doc("config/a", "one", 1, 1, 1),
    }
    second = await api.put("/v1/kv/config/a", data=b"two")
    assert await second.json() == {
        "header": {"cluster_id": "test-cluster", "member_id": "n1", "term": 3, "revision": 2},
        "revision": 2, "prev": kv_doc("config/a", "one", 1, 1, 1),
        "kv": kv_doc("config/a", "two", 1, 2, 2),
    }
    got = await api.get("/v1/kv/config/a")
    assert got.status == 200
    assert (await got.json())["kv"] == kv_doc("config/a", "two", 1, 2, 2)
    assert got.headers["X-Concord-Revision"] == "2"
    assert got.headers["X-Concord-Member-Id"] == "n1"
    assert got.headers["X-Concord-Cluster-Id"] == "test-cluster"
    assert got.headers["X-Concord-Term"] == "3"


@pytest.mark.parametrize(
    "prefer", ["return=minimal", "wait=5, RETURN = minimal", "x;y=1, return=minimal"])
async def test_a_put_preferring_a_minimal_answer_gets_only_the_revision(
    api: TestClient[Any, Any], prefer: str
) -> None:
    await api.put("/v1/kv/m", data=b"one")
    response = await api.put("/v1/kv/m", data=b"two", headers={"Prefer": prefer})
    assert response.status == 200
    assert response.headers["Preference-Applied"] == "return=minimal"
    assert await response.json() == {
        "header": {"cluster_id": "test-cluster", "member_id": "n1", "term": 3, "revision": 2},
        "revision": 2,
    }
    fast = await api.put("/v1/kv/m", data=b"3", headers={"Prefer": prefer, "Accept": MSGPACK})
    assert msgpack.unpackb(await fast.read())["revision"] == 3


async def test_other_preferences_keep_the_full_put_answer(api: TestClient[Any, Any]) -> None:
    response = await api.put("/v1/kv/m", data=b"v", headers={"Prefer": "return=representation"})
    assert "Preference-Applied" not in response.headers
    assert (await response.json())["kv"] == kv_doc("m", "v", 1, 1, 1)


async def test_percent_encoded_keys_are_decoded(api: TestClient[Any, Any], node: FakeNode) -> None:
    from yarl import URL

    response = await api.put(URL("/v1/kv/%C3%A9t%C3%A9%2Fx%20y", encoded=True), data=b"v")
    assert response.status == 200
    assert (await response.json())["kv"]["key"] == "été/x y"
    assert "été/x y".encode() in await response.read()  # UTF-8 in the answer, not \u escapes
    stored = node.fsm.get("été/x y")
    assert stored is not None and stored.value == b"v"


async def test_binary_values_travel_as_flagged_base64_and_raw(api: TestClient[Any, Any]) -> None:
    value = bytes([0xFF, 0x00, 0x80, 0x0A])
    await api.put("/v1/kv/bin", data=value)
    document = await (await api.get("/v1/kv/bin")).json()
    assert document["kv"]["value_encoding"] == "base64"
    assert base64.b64decode(document["kv"]["value"]) == value
    raw = await api.get("/v1/kv/bin?raw=1")
    assert raw.status == 200
    assert raw.content_type == "application/octet-stream"
    assert await raw.read() == value
    assert (raw.headers["X-Concord-Create-Revision"], raw.headers["X-Concord-Mod-Revision"],
            raw.headers["X-Concord-Version"]) == ("1", "1", "1")
    assert raw.headers["X-Concord-Revision"] == "1"


async def test_msgpack_answers_carry_the_same_document_as_json(
    api: TestClient[Any, Any],
) -> None:
    put = await api.put("/v1/kv/k", data=b"v", headers={"Accept": MSGPACK})
    assert put.content_type == MSGPACK
    assert msgpack.unpackb(await put.read()) == {
        "header": {"cluster_id": "test-cluster", "member_id": "n1", "term": 3, "revision": 1},
        "revision": 1, "prev": None, "kv": kv_doc("k", "v", 1, 1, 1),
    }
    as_json = await (await api.get("/v1/kv/k")).json()
    as_msgpack = await api.get("/v1/kv/k", headers={"Accept": f"text/html, {MSGPACK};q=0.9"})
    assert msgpack.unpackb(await as_msgpack.read()) == as_json
    shouted = await api.get("/v1/kv/k", headers={"Accept": "Application/MsgPack"})
    assert shouted.content_type == MSGPACK  # media types are case-insensitive
    assert msgpack.unpackb(await shouted.read()) == as_json
    missing = await api.get("/v1/kv/nope", headers={"Accept": MSGPACK})
    assert missing.status == 404
    assert msgpack.unpackb(await missing.read())["error"]["code"] == "key_not_found"


async def test_get_and_delete_of_an_absent_key_are_404(api: TestClient[Any, Any]) -> None:
    error = await error_of(await api.get("/v1/kv/missing"), 404, "key_not_found")
    assert (error["retryable"], error["definite"]) == (False, True)
    await error_of(await api.delete("/v1/kv/missing"), 404, "key_not_found")
    await error_of(await api.get("/v1/kv/missing?raw=1"), 404, "key_not_found")


async def test_delete_returns_the_previous_value(api: TestClient[Any, Any],
                                                 node: FakeNode) -> None:
    await api.put("/v1/kv/gone", data=b"x")
    response = await api.delete("/v1/kv/gone")
    assert response.status == 200
    document = await response.json()
    assert document["revision"] == 2
    assert document["prev"] == kv_doc("gone", "x", 1, 1, 1)
    assert node.fsm.get("gone") is None


async def test_list_by_prefix_in_key_order_with_limit(api: TestClient[Any, Any]) -> None:
    for key in ("app/b", "app/a", "other", "app/c"):
        await api.put(f"/v1/kv/{key}", data=key.encode())
    everything = await (await api.get("/v1/kv", params={"prefix": "app/"})).json()
    assert [kv["key"] for kv in everything["kvs"]] == ["app/a", "app/b", "app/c"]
    assert everything["more"] is False
    assert everything["header"]["revision"] == 4
    first_two = await (await api.get("/v1/kv?prefix=app/&limit=2")).json()
    assert [kv["key"] for kv in first_two["kvs"]] == ["app/a", "app/b"]
    assert first_two["more"] is True
    all_keys = await (await api.get("/v1/kv")).json()
    assert [kv["key"] for kv in all_keys["kvs"]] == ["app/a", "app/b", "app/c", "other"]


# -- conditional writes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "headers", "status", "current_value"),
    [
        ("prev_revision=1", {}, 200, None),
        ("prev_revision=2", {}, 409, "old"),
        ("prev_revision=0", {}, 409, "old"),
        ("prev_value=old", {}, 200, None),
        ("prev_value=other", {}, 409, "old"),
        ("", {"X-Concord-Prev-Value-B64": base64.b64encode(b"old").decode()}, 200, None),
        ("", {"X-Concord-Prev-Value-B64": base64.b64encode(b"\xff").decode()}, 409, "old"),
        ("create_only=1", {}, 409, "old"),
        ("create_only=0", {}, 200, None),
    ],
)
async def test_conditional_put_on_an_existing_key(
    api: TestClient[Any, Any], query: str, headers: dict[str, str], status: int,
    current_value: str | None,
) -> None:
    await api.put("/v1/kv/c", data=b"old")
    response = await api.put(f"/v1/kv/c?{query}", data=b"new", headers=headers)
    assert response.status == status, await response.text()
    document = await response.json()
    if status == 409:
        assert document["error"]["code"] == "compare_failed"
        assert document["error"]["definite"] is True
        assert document["error"]["current"] == kv_doc("c", current_value or "", 1, 1, 1)
        assert document["header"]["revision"] == 1
    else:
        assert document["kv"]["value"] == "new"
        assert document["revision"] == 2


@pytest.mark.parametrize(
    ("query", "status"),
    [("prev_revision=0", 200), ("create_only=true", 200), ("prev_revision=3", 409),
     ("prev_value=x", 409)],
)
async def test_conditional_put_on_an_absent_key(
    api: TestClient[Any, Any], query: str, status: int
) -> None:
    response = await api.put(f"/v1/kv/fresh?{query}", data=b"v")
    assert response.status == status
    if status == 409:
        assert (await response.json())["error"]["current"] is None


async def test_conditional_delete(api: TestClient[Any, Any], node: FakeNode) -> None:
    await api.put("/v1/kv/d", data=b"v")
    error = await error_of(await api.delete("/v1/kv/d?prev_revision=7"), 409, "compare_failed")
    assert error["current"] == kv_doc("d", "v", 1, 1, 1)
    await error_of(await api.delete("/v1/kv/d?prev_value=w"), 409, "compare_failed")
    assert (await api.delete("/v1/kv/d?prev_value=v")).status == 200
    await error_of(await api.delete("/v1/kv/d?prev_revision=1"), 404, "key_not_found")
    assert node.fsm.revision == 2


# -- idempotency and timeouts ----------------------------------------------------------------


async def test_request_id_makes_a_retried_write_apply_once(
    api: TestClient[Any, Any], node: FakeNode
) -> None:
    headers = {"X-Request-Id": "client-7/req-42"}
    first = await (await api.put("/v1/kv/once", data=b"1", headers=headers)).json()
    again = await (await api.put("/v1/kv/once", data=b"1", headers=headers)).json()
    assert first["revision"] == again["revision"] == 1
    assert again["kv"] == first["kv"]
    assert node.fsm.revision == 1
    assert [command.request_id for command in node.commands] == ["client-7/req-42"] * 2
    await api.put("/v1/kv/once", data=b"1")
    await api.put("/v1/kv/once", data=b"1")
    assert node.fsm.revision == 3
    assert [command.request_id for command in node.commands[2:]] == ["", ""]


async def test_timeout_defaults_to_the_limit_and_can_be_overridden(
    api: TestClient[Any, Any], node: FakeNode
) -> None:
    await api.put("/v1/kv/t", data=b"v")
    await api.get("/v1/kv/t?timeout_ms=250")
    await api.get("/v1/kv?timeout_ms=60000")
    assert [call.timeout_s for call in node.calls] == [1.0, 0.25, 60.0]


async def test_a_hung_service_is_cut_short_with_504(api: TestClient[Any, Any],
                                                   node: FakeNode) -> None:
    node.hang = True
    loop = asyncio.get_running_loop()
    started_s = loop.time()
    error = await error_of(await api.put("/v1/kv/h?timeout_ms=50", data=b"v"), 504, "timeout")
    assert loop.time() - started_s < 1.0
    assert (error["retryable"], error["definite"]) == (True, False)


async def test_the_backstop_never_cancels_a_call_that_finished() -> None:
    async def quick() -> str:
        return "done"

    assert await _bounded(quick(), 0.001) == "done"
    # this task would be cancelled here if the sweep still cut the finished call short
    await asyncio.sleep(BACKSTOP_GRACE_S + 2 * BACKSTOP_SWEEP_S)


async def test_a_call_cancelled_by_its_caller_stays_cancelled() -> None:
    waiting = asyncio.create_task(_bounded(asyncio.Event().wait(), 5.0))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


# -- the error model ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "status", "code", "retryable", "definite"),
    [
        (Overloaded("queue full"), 429, "overloaded", True, True),
        (NoLeader("none"), 503, "no_leader", True, True),
        (LeaderChanged("lost"), 503, "leader_changed", True, True),
        (ShuttingDown("bye"), 503, "shutting_down", True, True),
        (TimedOut("slow"), 504, "timeout", True, False),
        (MembershipChangeRefused("busy"), 409, "membership_change_refused", True, True),
        (RuntimeError("bug"), 500, "internal", False, False),
    ],
)
async def test_service_errors_map_to_status_and_semantics(
    api: TestClient[Any, Any], node: FakeNode, failure: Exception, status: int, code: str,
    retryable: bool, definite: bool,
) -> None:
    node.crash = failure
    error = await error_of(await api.put("/v1/kv/e", data=b"v"), status, code)
    assert (error["retryable"], error["definite"]) == (retryable, definite)
    if isinstance(failure, ConcordError):
        assert error["message"] == failure.message
    node.crash = None
    assert (await api.put("/v1/kv/e", data=b"v")).status == 200  # the node stays up


async def test_overload_and_timeout_switches(api: TestClient[Any, Any], node: FakeNode) -> None:
    node.overloaded = True
    await error_of(await api.get("/v1/kv/x"), 429, "overloaded")
    node.overloaded = False
    node.time_out = True
    await error_of(await api.delete("/v1/kv/x"), 504, "timeout")


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("PUT", "/v1/kv/k?color=red", {}),
        ("GET", "/v1/kv/k?raw=1&raw=1", {}),
        ("GET", "/v1/kv?prefix=a&start=b", {}),
        ("DELETE", "/v1/kv/k?create_only=1", {}),
        ("PUT", "/v1/kv/k?prev_revision=abc", {}),
        ("PUT", "/v1/kv/k?prev_revision=-1", {}),
        ("PUT", "/v1/kv/k?prev_revision=%2B1", {}),
        ("PUT", "/v1/kv/k?prev_revision=1&prev_value=a", {}),
        ("PUT", "/v1/kv/k?prev_value=a&create_only=1", {}),
        ("PUT", "/v1/kv/k?create_only=maybe", {}),
        ("PUT", "/v1/kv/k", {"X-Concord-Prev-Value-B64": "not base64!"}),
        ("GET", "/v1/kv/k?consistency=eventual", {}),
        ("GET", "/v1/kv/k?raw=2", {}),
        ("GET", "/v1/kv/k?timeout_ms=0", {}),
        ("GET", "/v1/kv/k?timeout_ms=60001", {}),
        ("GET", "/v1/kv?limit=0", {}),
        ("GET", "/v1/kv?limit=101", {}),
        ("GET", "/v1/kv/", {}),
        ("PUT", "/v1/kv/", {}),
        ("PUT", "/v1/kv/k", {"X-Request-Id": "x" * 129}),
        ("PUT", "/v1/kv/k", {"X-Request-Id": "has space"}),
        ("PUT", "/v1/kv/k", {"X-Request-Id": ""}),
        ("PUT", "/v1/kv/_concord/members/n9", {}),
        ("DELETE", "/v1/kv/_concord/members/n1", {}),
        ("GET", "/v1/status?verbose=1", {}),
    ],
)
async def test_malformed_requests_are_400_and_never_reach_the_service(
    api: TestClient[Any, Any], node: FakeNode, method: str, path: str, headers: dict[str, str]
) -> None:
    from yarl import URL

    response = await api.request(method, URL(path, encoded=True), data=b"v", headers=headers)
    error = await error_of(response, 400, "bad_request")
    assert (error["retryable"], error["definite"]) == (False, True)
    assert node.calls == []


async def test_system_keys_can_be_read(api: TestClient[Any, Any], node: FakeNode) -> None:
    await error_of(await api.get("/v1/kv/_concord/members/n1"), 404, "key_not_found")
    assert node.calls_to("get") == 1


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'{"id": "n2", "peer_url": "http://p", "client_url": "http://c", "x": 1}',
         "application/json"),
        (b'{"id": "", "peer_url": "http://p", "client_url": "http://c"}', "application/json"),
        (b'{"id": "n2", "peer_url": "ftp://p", "client_url": "http://c"}', "application/json"),
        (b'{"id": "n2", "peer_url": "http://p", "client_url": "http://c", "learner": "yes"}',
         "application/json"),
        (b"", "application/json"),
        (b"\xc1", MSGPACK),
    ],
)
async def test_malformed_member_bodies_are_400(
    api: TestClient[Any, Any], node: FakeNode, body: bytes, content_type: str
) -> None:
    response = await api.post("/v1/cluster/members", data=body,
                              headers={"Content-Type": content_type})
    await error_of(response, 400, "bad_request")
    assert node.calls == []


async def test_limits_give_413(api: TestClient[Any, Any], node: FakeNode) -> None:
    assert TEST_LIMITS.max_key_bytes == 64
    assert (await api.put("/v1/kv/" + "k" * 64, data=b"v")).status == 200
    await error_of(await api.put("/v1/kv/" + "k" * 65, data=b"v"), 413, "too_large")
    await error_of(await api.get("/v1/kv/" + "é" * 33), 413, "too_large")
    assert (await api.put("/v1/kv/v", data=b"x" * 1024)).status == 200
    await error_of(await api.put("/v1/kv/v", data=b"x" * 1025), 413, "too_large")
    await error_of(await api.put("/v1/kv/v", data=b"x" * 4096), 413, "too_large")
    big_member = b'{"id": "' + b"n" * 3000 + b'"}'
    await error_of(await api.post("/v1/cluster/members", data=big_member), 413, "too_large")
    assert node.calls_to("write") == 2


async def test_a_maximal_percent_encoded_key_fits_the_request_line(node: FakeNode) -> None:
    from urllib.parse import quote

    from yarl import URL

    limits = LimitSettings()
    widest_key = "é" * (limits.max_key_bytes // 2)  # 2 UTF-8 bytes, 6 URL characters each
    async with serving(node, limits=limits) as api:
        path = URL("/v1/kv/" + quote(widest_key, safe=""), encoded=True)
        assert (await api.put(path, data=b"v")).status == 200
        longer = URL("/v1/kv/" + quote(widest_key + "é", safe=""), encoded=True)
        await error_of(await api.put(longer, data=b"v"), 413, "too_large")
    assert node.fsm.get(widest_key) is not None


async def test_unknown_routes_and_methods(api: TestClient[Any, Any]) -> None:
    missing = await api.get("/v2/nothing")
    await error_of(missing, 404, "not_found")
    assert missing.headers["X-Concord-Member-Id"] == "n1"
    wrong = await api.post("/v1/kv/k", data=b"v")
    error = await error_of(wrong, 405, "method_not_allowed")
    assert set(wrong.headers["Allow"].split(",")) >= {"GET", "PUT", "DELETE"}
    assert error["definite"] is True


# -- node, cluster, metrics and faults -------------------------------------------------------


async def test_health_ready_and_status(api: TestClient[Any, Any], node: FakeNode) -> None:
    health = await api.get("/health")
    assert health.status == 200
    assert (await health.json())["alive"] is True
    assert health.headers["X-Concord-Term"] == "3"
    assert (await api.get("/ready")).status == 200
    node.ready = False
    not_ready = await api.get("/ready")
    assert not_ready.status == 503
    assert (await not_ready.json())["ready"] is False
    node.crash = RuntimeError("health must not touch the service's async paths")
    assert (await api.get("/health")).status == 200
    status = await (await api.get("/v1/status")).json()
    assert status["status"] == node.status()
    assert status["header"]["member_id"] == "n1"


async def test_members_add_remove_and_leader_transfer(
    api: TestClient[Any, Any], node: FakeNode
) -> None:
    listed = await (await api.get("/v1/cluster/members")).json()
    assert listed["members"] == [{"id": "n1", "peer_url": "http://n1.peer:8001",
                                  "client_url": "http://127.0.0.1:7001", "role": "voter",
                                  "is_leader": True}]
    added = await api.post("/v1/cluster/members", json={
        "id": "n2", "peer_url": "http://10.0.0.2:8002", "client_url": "http://10.0.0.2:7002"})
    assert added.status == 200
    assert [(m["id"], m["role"]) for m in (await added.json())["members"]] == [
        ("n1", "voter"), ("n2", "voter")]
    learner = await api.post(
        "/v1/cluster/members?timeout_ms=300",
        data=msgpack.packb({"id": "n3", "peer_url": "http://p3", "client_url": "http://c3",
                            "learner": True}),
        headers={"Content-Type": MSGPACK, "Accept": MSGPACK})
    assert learner.status == 200
    assert [m["role"] for m in msgpack.unpackb(await learner.read())["members"]] == [
        "voter", "voter", "learner"]
    assert node.calls[-1].timeout_s == 0.3
    again = await api.post("/v1/cluster/members", json={
        "id": "n2", "peer_url": "http://p", "client_url": "http://c"})
    await error_of(again, 409, "membership_change_refused")
    removed = await api.delete("/v1/cluster/members/n3")
    assert [m["id"] for m in (await removed.json())["members"]] == ["n1", "n2"]
    await error_of(await api.delete("/v1/cluster/members/n9"), 404, "not_found")
    await error_of(await api.post("/v1/cluster/leader", json={"target": 5}), 400, "bad_request")
    transfer = await api.post("/v1/cluster/leader", json={"target": "n2"})
    assert (await transfer.json())["leader"] == "n2"
    assert node.leader_id == "n2"


async def test_leader_transfer_without_body_picks_a_voter(
    api: TestClient[Any, Any], node: FakeNode
) -> None:
    await api.post("/v1/cluster/members", json={
        "id": "n2", "peer_url": "http://p2", "client_url": "http://c2"})
    transfer = await api.post("/v1/cluster/leader")
    assert (await transfer.json())["leader"] == "n2"


async def test_metrics_count_requests_by_route_and_status(node: FakeNode) -> None:
    metrics = NodeMetrics()
    async with serving(node, metrics=metrics) as api:
        await api.put("/v1/kv/a", data=b"v")
        await api.get("/v1/kv/a")
        await api.get("/v1/kv/b")
        await api.get("/nowhere")
        response = await api.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.headers["X-Concord-Member-Id"] == "n1"
        text = await response.text()
    registry = metrics.registry
    assert registry.get_sample_value("concord_http_requests_total", {
        "method": "GET", "route": "/v1/kv/{key}", "status": "200"}) == 1
    assert registry.get_sample_value("concord_http_requests_total", {
        "method": "GET", "route": "/v1/kv/{key}", "status": "404"}) == 1
    assert registry.get_sample_value("concord_http_requests_total", {
        "method": "PUT", "route": "/v1/kv/{key}", "status": "200"}) == 1
    assert registry.get_sample_value("concord_http_requests_total", {
        "method": "GET", "route": "unmatched", "status": "404"}) == 1
    assert registry.get_sample_value("concord_http_request_seconds_count", {
        "route": "/v1/kv/{key}"}) == 3
    assert "concord_http_requests_total" in text


async def test_metrics_endpoint_is_404_without_metrics(api: TestClient[Any, Any]) -> None:
    await error_of(await api.get("/metrics"), 404, "not_found")


async def test_debug_faults_are_forbidden_when_disabled(api: TestClient[Any, Any]) -> None:
    for method in ("GET", "PUT", "DELETE"):
        response = await api.request(method, "/v1/debug/faults", json={"drop_rate": 0.5})
        error = await error_of(response, 403, "forbidden")
        assert error["definite"] is True


async def test_debug_faults_configure_describe_and_clear(node: FakeNode) -> None:
    faults = FaultInjector(random.Random(1))
    async with serving(node, faults=faults) as api:
        configured = await api.put("/v1/debug/faults",
                                   json={"drop_rate": 0.25, "blocked_peers": ["n3", "n2"]})
        assert configured.status == 200
        described = (await configured.json())["faults"]
        assert described["drop_rate"] == 0.25
        assert described["blocked_peers"] == ["n2", "n3"]
        assert faults.blocked_peers == frozenset({"n2", "n3"})
        await error_of(await api.put("/v1/debug/faults", json={"drop_rate": 2}), 400,
                       "bad_request")
        await error_of(await api.put("/v1/debug/faults", json={"flood": 1}), 400, "bad_request")
        assert faults.drop_rate == 0.25
        assert (await (await api.get("/v1/debug/faults")).json())["faults"] == described
        cleared = await (await api.delete("/v1/debug/faults")).json()
        assert cleared["faults"] == FaultInjector(random.Random(1)).describe()


# -- forwarding ------------------------------------------------------------------------------------


async def test_follower_forwards_leader_only_requests(node: FakeNode) -> None:
    leader = FakeNode("n2", term=4)
    async with serving(leader) as leader_api, serving(node) as follower_api:
        node.follow("n2", str(leader_api.make_url("")))
        put = await follower_api.put("/v1/kv/fwd?timeout_ms=700", data=b"\xff\xfe",
                                     headers={"X-Request-Id": "r-1", "Accept": MSGPACK})
        assert put.status == 200
        assert put.headers["X-Concord-Member-Id"] == "n2"
        assert put.headers["X-Concord-Term"] == "4"
        document = msgpack.unpackb(await put.read())
        assert document["header"]["member_id"] == "n2"
        assert document["kv"]["value_encoding"] == "base64"
        assert [command.request_id for command in leader.commands] == ["r-1"]
        assert leader.calls[-1].timeout_s == 0.7
        assert node.fsm.get("fwd") is None
        stored = leader.fsm.get("fwd")
        assert stored is not None and stored.value == b"\xff\xfe"
        # a linearizable read is forwarded; a serializable one is answered locally
        assert (await follower_api.get("/v1/kv/fwd")).status == 200
        await error_of(await follower_api.get("/v1/kv/fwd?consistency=serializable"), 404,
                       "key_not_found")
        listed = await (await follower_api.get("/v1/kv?prefix=f")).json()
        assert [kv["key"] for kv in listed["kvs"]] == ["fwd"]
        conflict = await follower_api.put("/v1/kv/fwd?create_only=1", data=b"x")
        await error_of(conflict, 409, "compare_failed")
        added = await follower_api.post("/v1/cluster/members", json={
            "id": "n3", "peer_url": "http://p3", "client_url": "http://c3"})
        assert [m["id"] for m in (await added.json())["members"]] == ["n2", "n3"]
        assert (await follower_api.delete("/v1/kv/fwd")).status == 200
        assert leader.fsm.get("fwd") is None


async def test_forwarding_loops_are_refused(node: FakeNode) -> None:
    other = FakeNode("n2")
    async with serving(other) as other_api, serving(node) as node_api:
        node.follow("n2", str(other_api.make_url("")))
        other.follow("n1", str(node_api.make_url("")))
        error = await error_of(await node_api.put("/v1/kv/loop", data=b"v"), 503, "not_leader")
        assert (error["retryable"], error["definite"]) == (True, True)
        assert "n1" in error["message"]
        assert node.calls_to("write") == 1
        assert other.calls_to("write") == 1


async def test_forwarding_without_a_known_leader_is_503(
    api: TestClient[Any, Any], node: FakeNode
) -> None:
    node.follow(None, None)
    error = await error_of(await api.put("/v1/kv/k", data=b"v"), 503, "no_leader")
    assert error["definite"] is True


async def test_forwarding_to_an_unreachable_leader_is_a_definite_503(
    api: TestClient[Any, Any], node: FakeNode
) -> None:
    node.follow("n2", f"http://127.0.0.1:{free_port()}")
    error = await error_of(await api.put("/v1/kv/k", data=b"v"), 503, "no_leader")
    assert (error["retryable"], error["definite"]) == (True, True)


async def test_a_leader_that_drops_the_connection_gives_an_indefinite_504(
    api: TestClient[Any, Any], node: FakeNode
) -> None:
    connections: list[int] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await reader.readuntil(b"\r\n\r\n")
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        node.follow("n2", f"http://127.0.0.1:{port}/")
        error = await error_of(await api.put("/v1/kv/k", data=b"v"), 504, "timeout")
        assert (error["retryable"], error["definite"]) == (True, False)
    assert len(connections) == 1  # relayed at most once: never re-sent behind the client's back
