"""Tests of the ``concord-batch`` bench target: the batch request, the judgement, the workload's
checks, the report's wording, and a short run that counts B operations per request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgpack
import pytest
from test_bench import one_node, store_revision

from concord.bench.loadgen import Workload, parse_mix, run_workload
from concord.bench.report import BenchResult, ProcessResult, render_result
from concord.bench.targets import DEFAULT_BATCH_SIZE, ConcordBatchTarget, Op, make_target

ENDPOINTS = ("http://127.0.0.1:1",)


def test_a_batch_request_puts_the_value_to_each_key() -> None:
    target = make_target("concord-batch", b"abc")
    assert isinstance(target, ConcordBatchTarget) and target.ops == frozenset({Op.PUT})
    request = target.request_many(Op.PUT, [b"k01", b"k02"])
    assert (request.method, request.path) == ("POST", "/v1/kv/batch")
    assert request.headers["Content-Type"] == request.headers["Accept"] == "application/msgpack"
    assert request.headers["Prefer"] == "return=minimal"
    assert msgpack.unpackb(request.body) == {"ops": [
        {"op": "put", "key": "k01", "value": "abc"}, {"op": "put", "key": "k02", "value": "abc"}]}
    binary = ConcordBatchTarget(b"\xff").request(Op.PUT, b"k")
    assert msgpack.unpackb(binary.body)["ops"] == [
        {"op": "put", "key": "k", "value": "/w==", "value_encoding": "base64"}]
    with pytest.raises(ValueError, match="batches of puts only"):
        target.request_many(Op.GET, [b"k"])


def test_judgement_needs_every_op_to_succeed() -> None:
    target = ConcordBatchTarget(b"v")

    def judge(status: int, document: object) -> str | None:
        return target.judge(Op.PUT, status, msgpack.packb(document))

    ok = {"ok": True, "revision": 3}
    assert judge(200, {"header": {}, "results": [ok, ok]}) is None
    assert judge(200, {"results": [ok, {"ok": False, "error": "compare_failed"}]}) == (
        "batch op compare_failed")
    assert judge(200, {"results": []}) == "http 200 answer without results"
    assert judge(413, {"error": {"code": "too_large"}}) == "http 413 too_large"
    assert target.judge(Op.PUT, 200, b"\xc1") == "http 200 undecodable answer"


def test_the_workload_refuses_what_a_batch_cannot_carry() -> None:
    default = Workload("concord-batch", ENDPOINTS)
    assert default.batching and default.ops_per_request == DEFAULT_BATCH_SIZE == 64
    assert default.to_json()["batch_size"] == 64
    assert Workload("concord-batch", ENDPOINTS, batch_size=5).ops_per_request == 5
    plain = Workload("concord-msgpack", ENDPOINTS)
    assert plain.ops_per_request == 1 and "batch_size" not in plain.to_json()
    for fields, message in [
        ({"mix": parse_mix("put=9,get=1")}, "sends batches of puts only, not get: use --op put"),
        ({"batch_size": 0}, "batch size must be 1..10000"),
        ({"batch_size": 20, "key_space": 10}, "batch size 20 exceeds the key space"),
    ]:
        with pytest.raises(ValueError, match=message):
            Workload("concord-batch", ENDPOINTS, **fields)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batching targets only"):
        Workload("concord-msgpack", ENDPOINTS, batch_size=64)


def test_the_report_says_latency_is_per_request() -> None:
    workload = Workload("concord-batch", ENDPOINTS, batch_size=16)
    result = BenchResult(workload.to_json(), ProcessResult(64, 1.0, {}, "duration"), ENDPOINTS)
    text = render_result(result)
    assert "each request carried 16 puts" in text
    assert "latencies are per request (per batch of 16)" in text
    plain = Workload("concord", ENDPOINTS)
    assert "per batch" not in render_result(
        BenchResult(plain.to_json(), ProcessResult(64, 1.0, {}, "duration"), ENDPOINTS))


@pytest.mark.integration
def test_a_short_batch_run_counts_every_put(tmp_path: Path) -> None:
    with one_node(tmp_path) as live:
        before = asyncio.run(store_revision(live))
        workload = Workload("concord-batch", (live,), clients=2, processes=1, count=80,
                            duration_s=20.0, warmup_s=0.0, batch_size=8, key_space=100)
        result = run_workload(workload, progress=None)
        after = asyncio.run(store_revision(live))
    put = result.per_op()[0]
    assert result.measured.stopped_by == "count"
    assert put.succeeded == 80 == after - before, "10 requests of 8 puts, a revision each"
    assert put.failed == 0
    assert put.latency.count == 80 and put.latency.p50_ms > 0
