"""Tests of ``POST /v1/kv/batch`` against an in-memory node: results and revisions per op,
JSON and msgpack, minimal answers, conditions failing one op only, every refusal naming the op
(nothing reaching the service), the limits, de-duplication, forwarding, and the
``max_batch_ops`` setting."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import msgpack
import pytest
from aiohttp.test_utils import TestClient
from fake_node import TEST_LIMITS, FakeNode, serving
from test_api_http import kv_doc

from concord.config import ConfigError, LimitSettings, load_config

MSGPACK = "application/msgpack"


async def post(api: TestClient[Any, Any], ops: list[Any], status: int = 200,
               **options: Any) -> dict[str, Any]:
    response = await api.post("/v1/kv/batch", json={"ops": ops}, **options)
    document: dict[str, Any] = await response.json()
    assert response.status == status, document
    return document


async def test_puts_gets_and_deletes_apply_in_order_with_a_revision_each(
        api: TestClient[Any, Any], node: FakeNode) -> None:
    await api.put("/v1/kv/old", data=b"o")
    answer = await post(api, [
        {"op": "put", "key": "a", "value": "1"},
        {"op": "get", "key": "a"},
        {"op": "put", "key": "a", "value": "2"},
        {"op": "delete", "key": "old"},
        {"op": "get", "key": "old"},
        {"op": "delete", "key": "never"},
    ])
    assert answer["header"]["revision"] == 4
    assert answer["results"] == [
        {"ok": True, "revision": 2, "prev": None, "kv": kv_doc("a", "1", 2, 2, 1)},
        {"ok": True, "kv": kv_doc("a", "1", 2, 2, 1)},
        {"ok": True, "revision": 3, "prev": kv_doc("a", "1", 2, 2, 1),
         "kv": kv_doc("a", "2", 2, 3, 2)},
        {"ok": True, "revision": 4, "prev": kv_doc("old", "o", 1, 1, 1)},
        {"ok": False, "error": "key_not_found"},
        {"ok": False, "error": "key_not_found"},
    ]
    assert node.calls_to("write") == 2, "the whole batch is one write"


async def test_a_failed_condition_fails_its_own_op_and_the_others_apply(
        api: TestClient[Any, Any], node: FakeNode) -> None:
    await api.put("/v1/kv/lock", data=b"me")
    answer = await post(api, [
        {"op": "put", "key": "lock", "value": "you", "create_only": True},
        {"op": "put", "key": "x", "value": "1", "prev_revision": 0},
        {"op": "put", "key": "lock", "value": "me2", "prev_value": "me"},
        {"op": "delete", "key": "lock", "prev_revision": 1},
        {"op": "delete", "key": "x", "prev_value": base64.b64encode(b"1").decode(),
         "prev_value_encoding": "base64"},
    ])
    lock = kv_doc("lock", "me2", 1, 3, 2)
    assert answer["results"] == [
        {"ok": False, "error": "compare_failed", "current": kv_doc("lock", "me", 1, 1, 1)},
        {"ok": True, "revision": 2, "prev": None, "kv": kv_doc("x", "1", 2, 2, 1)},
        {"ok": True, "revision": 3, "prev": kv_doc("lock", "me", 1, 1, 1), "kv": lock},
        {"ok": False, "error": "compare_failed", "current": lock},
        {"ok": True, "revision": 4, "prev": kv_doc("x", "1", 2, 2, 1)},
    ]
    assert node.fsm.get("x") is None


async def test_msgpack_in_and_out_with_binary_values_and_minimal_answers(
        api: TestClient[Any, Any]) -> None:
    body = msgpack.packb({"ops": [
        {"op": "put", "key": "bin", "value": base64.b64encode(b"\xff\x00").decode(),
         "value_encoding": "base64"},
        {"op": "put", "key": "bin", "value": "x", "create_only": True},
        {"op": "get", "key": "bin"},
        {"op": "delete", "key": "bin"},
    ]})
    response = await api.post("/v1/kv/batch", data=body, headers={
        "Content-Type": MSGPACK, "Accept": MSGPACK, "Prefer": "return=minimal"})
    assert response.status == 200
    assert response.content_type == MSGPACK
    assert response.headers["Preference-Applied"] == "return=minimal"
    answer = msgpack.unpackb(await response.read())
    stored = kv_doc("bin", base64.b64encode(b"\xff\x00").decode(), 1, 1, 1, "base64")
    assert answer["results"] == [
        {"ok": True, "revision": 1},
        {"ok": False, "error": "compare_failed", "current": stored},
        {"ok": True, "kv": stored},
        {"ok": True, "revision": 2},
    ]


async def test_msgpack_binary_values_are_taken_as_they_are(api: TestClient[Any, Any]) -> None:
    raw = b"\xff\x00\x80"
    body = msgpack.packb({"ops": [
        {"op": "put", "key": "raw", "value": raw},
        {"op": "put", "key": "raw", "value": b"other", "prev_value": raw},
        {"op": "get", "key": "raw"},
    ]}, use_bin_type=True)
    response = await api.post("/v1/kv/batch", data=body, headers={
        "Content-Type": MSGPACK, "Accept": MSGPACK})
    assert response.status == 200
    results = msgpack.unpackb(await response.read())["results"]
    assert [r["ok"] for r in results] == [True, True, True]
    assert results[2]["kv"]["value"] == "other"  # valid UTF-8 is answered as text
    # a binary value needs no encoding, and takes none
    refused = await api.post("/v1/kv/batch", data=msgpack.packb({"ops": [
        {"op": "put", "key": "raw", "value": raw, "value_encoding": "base64"}]}),
        headers={"Content-Type": MSGPACK})
    assert refused.status == 400
    assert "ops[0].value_encoding" in (await refused.json())["error"]["message"]


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        ([], "field 'ops' is empty"),
        ("put", "field 'ops' must be a list"),
        ([{"op": "put", "key": "a", "value": "1"}, ["put", "b"]], "ops[1]: must be an object"),
        ([{"op": "cas", "key": "a"}], "ops[0].op: must be \"put\", \"delete\" or \"get\""),
        ([{"key": "a"}], "ops[0].op: must be"),
        ([{"op": "get", "key": "a", "value": "1"}], "ops[0]: unknown fields 'value' for a get"),
        ([{"op": "delete", "key": "a", "create_only": True}],
         "ops[0]: unknown fields 'create_only' for a delete"),
        ([{"op": "get", "key": ""}], "ops[0].key: must be a non-empty string"),
        ([{"op": "get", "key": 7}], "ops[0].key: must be a non-empty string"),
        ([{"op": "get", "key": "ok"}, {"op": "put", "key": "\ud800", "value": ""}],
         "ops[1].key is not valid UTF-8"),
        ([{"op": "put", "key": "_concord/members/n9", "value": "x"}],
         "ops[0].key: keys under '_concord/' belong to Concord itself"),
        ([{"op": "put", "key": "a"}], "ops[0].value: required"),
        ([{"op": "put", "key": "a", "value": 5}], "ops[0].value: must be a string"),
        ([{"op": "put", "key": "a", "value": "!!", "value_encoding": "base64"}],
         "ops[0].value: invalid base64"),
        ([{"op": "put", "key": "a", "value": "x", "value_encoding": "latin-1"}],
         "ops[0].value: unknown value_encoding 'latin-1'"),
        ([{"op": "put", "key": "a", "value": "x", "prev_revision": 1, "create_only": True}],
         "ops[0]: give at most one condition"),
        ([{"op": "put", "key": "a", "value": "x", "prev_revision": True}],
         "ops[0].prev_revision: must be an integer"),
        ([{"op": "delete", "key": "a", "prev_revision": -1}],
         "ops[0].prev_revision: must be an integer"),
        ([{"op": "put", "key": "a", "value": "x", "create_only": "yes"}],
         "ops[0].create_only: must be true or false"),
        ([{"op": "delete", "key": "a", "prev_value_encoding": "base64"}],
         "ops[0].prev_value_encoding: given without prev_value"),
    ],
)
async def test_bad_ops_are_400_naming_the_op_and_nothing_applies(
        api: TestClient[Any, Any], node: FakeNode, ops: Any, message: str) -> None:
    if isinstance(ops, list) and ops:  # a good op first: it must not apply either
        ops = [{"op": "put", "key": "first", "value": "applied?"}, *ops]
        message = re.sub(r"ops\[(\d+)\]", lambda m: f"ops[{int(m[1]) + 1}]", message)
    response = await api.post("/v1/kv/batch", json={"ops": ops})
    error = (await response.json())["error"]
    assert (response.status, error["code"], error["definite"]) == (400, "bad_request", True)
    assert message in error["message"], error["message"]
    assert node.calls_to("write") == 0 and node.fsm.get("first") is None


async def test_malformed_bodies_and_unknown_fields_are_400(
        api: TestClient[Any, Any], node: FakeNode) -> None:
    for body, content_type in [(b"{", "application/json"), (b"\xc1", MSGPACK), (b"", None),
                               (json.dumps({"ops": [], "atomic": True}).encode(),
                                "application/json")]:
        headers = {"Content-Type": content_type} if content_type else {}
        response = await api.post("/v1/kv/batch", data=body, headers=headers)
        assert response.status == 400, await response.text()
    response = await api.post("/v1/kv/batch?consistency=serializable", json={"ops": []})
    assert response.status == 400
    assert node.calls_to("write") == 0


async def test_limits_are_413_naming_the_op(api: TestClient[Any, Any], node: FakeNode) -> None:
    too_many = [{"op": "get", "key": f"k{i}"} for i in range(TEST_LIMITS.max_batch_ops + 1)]
    cases = [
        (too_many, "has 9 operations; the limit is 8 (limits.max_batch_ops)"),
        ([{"op": "get", "key": "a"}, {"op": "get", "key": "k" * 65}],
         "ops[1].key is 65 bytes; the limit is 64"),
        ([{"op": "put", "key": "a", "value": "v" * 1025}],
         "ops[0].value is 1025 bytes; the limit is 1024"),
    ]
    for ops, message in cases:
        response = await api.post("/v1/kv/batch", json={"ops": ops})
        error = (await response.json())["error"]
        assert (response.status, error["code"]) == (413, "too_large")
        assert message in error["message"]
    many_bytes = [{"op": "put", "key": f"k{i}", "value": "v" * 400} for i in range(6)]
    response = await api.post("/v1/kv/batch", json={"ops": many_bytes})
    assert response.status == 413, "the request body bound applies"
    assert node.calls_to("write") == 0
    exactly = [{"op": "put", "key": f"k{i}", "value": "v"} for i in range(8)]
    assert len((await post(api, exactly))["results"]) == 8


async def test_an_overloaded_leader_refuses_a_batch_before_parsing_it(
        api: TestClient[Any, Any], node: FakeNode) -> None:
    node.overloaded = True
    # the second op is bad, but parsing is the work an overloaded leader saves
    ops = [{"op": "put", "key": "a", "value": "1"}, {"op": "put", "key": "", "value": "2"}]
    response = await api.post("/v1/kv/batch", json={"ops": ops})
    error = (await response.json())["error"]
    assert (response.status, error["code"], error["retryable"]) == (429, "overloaded", True)
    assert node.calls_to("write") == 0 and node.fsm.revision == 0
    # a malformed list is still a 400 first: the room check needs its length
    response = await api.post("/v1/kv/batch", json={"ops": "not a list"})
    assert response.status == 400


async def test_a_retried_batch_applies_once(api: TestClient[Any, Any], node: FakeNode) -> None:
    ops = [{"op": "put", "key": "counter", "value": "1"}, {"op": "get", "key": "counter"}]
    headers = {"X-Request-Id": "batch-7"}
    first = await post(api, ops, headers=headers)
    await api.put("/v1/kv/counter", data=b"2")
    again = await post(api, ops, headers=headers)
    assert again["results"] == first["results"]
    assert node.fsm.revision == 2
    # the same id on a batch of other operations cannot be answered with the first outcome
    other = await api.post("/v1/kv/batch", json={"ops": [{"op": "get", "key": "x"}] * 3},
                           headers=headers)
    error = (await other.json())["error"]
    assert (other.status, error["code"]) == (400, "bad_request")
    assert "already used by a batch of other operations" in error["message"]
    assert node.fsm.revision == 2


async def test_a_key_named_batch_is_still_an_ordinary_key(api: TestClient[Any, Any]) -> None:
    assert (await api.put("/v1/kv/batch", data=b"b")).status == 200
    assert (await (await api.get("/v1/kv/batch")).json())["kv"]["value"] == "b"
    assert (await api.delete("/v1/kv/batch")).status == 200
    assert (await api.get("/v1/kv/batch")).status == 404


async def test_a_follower_forwards_the_batch_to_the_leader(node: FakeNode) -> None:
    leader = FakeNode("n2", term=4)
    async with serving(leader) as leader_api, serving(node) as follower_api:
        node.follow("n2", str(leader_api.make_url("")))
        response = await follower_api.post(
            "/v1/kv/batch?timeout_ms=700",
            data=msgpack.packb({"ops": [{"op": "put", "key": "f", "value": "v"},
                                        {"op": "get", "key": "f"}]}),
            headers={"Content-Type": MSGPACK, "Accept": MSGPACK, "X-Request-Id": "fw-1",
                     "Prefer": "return=minimal"})
        assert response.status == 200
        assert response.headers["X-Concord-Member-Id"] == "n2"
        answer = msgpack.unpackb(await response.read())
        assert answer["results"] == [{"ok": True, "revision": 1},
                                     {"ok": True, "kv": kv_doc("f", "v", 1, 1, 1)}]
        assert [command.request_id for command in leader.commands] == ["fw-1"]
        assert leader.calls[-1].timeout_s == 0.7
        assert node.fsm.get("f") is None
        # a bad op is refused by the follower itself
        refused = await follower_api.post("/v1/kv/batch", json={"ops": [{"op": "get"}]})
        assert refused.status == 400 and leader.calls_to("write") == 1


def test_max_batch_ops_is_a_validated_limit(tmp_path: Any) -> None:
    required = {"node.id": "n1", "node.data_dir": str(tmp_path),
                "node.client_listen": "127.0.0.1:7001", "node.peer_listen": "127.0.0.1:8001",
                "members": "n1=http://127.0.0.1:8001;http://127.0.0.1:7001"}
    assert load_config(None, {}, required).limits.max_batch_ops == 1000
    assert LimitSettings().max_batch_ops == 1000
    assert load_config(None, {"CONCORD_LIMITS_MAX_BATCH_OPS": "64"},
                       required).limits.max_batch_ops == 64
    for bad in ("0", "-3", "many"):
        with pytest.raises(ConfigError, match=r"(?i)max_batch_ops"):
            load_config(None, {"CONCORD_LIMITS_MAX_BATCH_OPS": bad}, required)
    # the largest batch must fit under the bound on operations in flight
    with pytest.raises(ConfigError, match=r"limits\.max_pending_operations: must be at least"):
        load_config(None, {"CONCORD_LIMITS_MAX_PENDING_OPERATIONS": "999"}, required)
    assert load_config(None, {"CONCORD_LIMITS_MAX_PENDING_OPERATIONS": "1000"},
                       required).limits.max_pending_operations == 1000
