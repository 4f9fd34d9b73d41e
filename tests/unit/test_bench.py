"""The load generator: percentile maths, merging per-process results, request building for
each target, workload bounds, and a short real run against a one-node Concord cluster whose
store revision is the oracle for the operations counted."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import msgpack
import pytest

from concord.bench.loadgen import (
    Workload,
    format_mix,
    parse_mix,
    run_workload,
    unreachable_endpoints,
)
from concord.bench.report import (
    HIGHEST_LATENCY_US,
    BenchResult,
    Comparison,
    LatencyRecorder,
    LatencySummary,
    OpStats,
    ProcessResult,
    merge_processes,
    merge_rounds,
    render_chart_html,
    render_comparison,
    render_result,
    render_round_ratios,
)
from concord.bench.targets import (
    COMPARE_FAILED,
    KEY_NOT_FOUND,
    ConcordTarget,
    EtcdTarget,
    Op,
    make_target,
)
from concord.cli import main
from concord.cluster import LocalCluster, free_cluster_ports, free_ports
from concord.config import load_config

HDR_RELATIVE_ERROR = 0.001  # three significant digits


def nearest_rank(sorted_values: list[int], percentile: float) -> int:
    """The textbook oracle: the smallest value with at least ``percentile`` % at or below it."""
    rank = math.ceil(round(percentile * len(sorted_values) / 100, 9))  # 99.9 is inexact
    return sorted_values[rank - 1]


def recorder_of(values: list[int]) -> LatencyRecorder:
    recorder = LatencyRecorder()
    for value in values:
        recorder.record_us(value)
    return recorder


# --- percentiles -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_match_the_nearest_rank_oracle_within_hdr_precision(seed: int) -> None:
    rng = random.Random(seed)
    values = [int(rng.lognormvariate(8, 1.5)) + 1 for _ in range(20_000)]  # ~3 ms, long tail
    recorder = recorder_of(values)
    ordered = sorted(values)
    assert recorder.count == len(values)
    for percentile in (50.0, 90.0, 99.0, 99.9, 100.0):
        expected = nearest_rank(ordered, percentile)
        got = recorder.percentile_us(percentile)
        assert expected <= got <= expected * (1 + HDR_RELATIVE_ERROR) + 1, percentile
    assert recorder.max_us == ordered[-1]
    assert recorder.mean_us() == pytest.approx(sum(values) / len(values), rel=HDR_RELATIVE_ERROR)


def test_summary_is_in_milliseconds_and_keeps_the_exact_maximum() -> None:
    recorder = recorder_of(list(range(1, 1001)))  # 1 µs .. 1000 µs
    summary = LatencySummary.of(recorder)
    assert summary.count == 1000
    assert summary.p50_ms == pytest.approx(0.5, rel=HDR_RELATIVE_ERROR)
    assert summary.p90_ms == pytest.approx(0.9, rel=HDR_RELATIVE_ERROR)
    assert summary.p99_ms == pytest.approx(0.99, rel=HDR_RELATIVE_ERROR)
    assert summary.max_ms == 1.0
    assert LatencySummary.of(LatencyRecorder()) == LatencySummary(0, 0, 0, 0, 0, 0, 0)


def test_out_of_range_latencies_are_clamped_but_the_maximum_stays_exact() -> None:
    recorder = recorder_of([0, 5, HIGHEST_LATENCY_US * 2])
    assert recorder.count == 3
    assert recorder.percentile_us(1.0) == 1
    assert recorder.percentile_us(100.0) >= HIGHEST_LATENCY_US
    assert recorder.max_us == HIGHEST_LATENCY_US * 2


# --- merging -------------------------------------------------------------------------------


def process_result(values: list[int], errors: dict[str, int], elapsed_s: float,
                   clients: int, stopped_by: str = "duration") -> ProcessResult:
    stats = OpStats(recorder_of(values), dict(errors))
    return ProcessResult(clients, elapsed_s, {"put": stats}, stopped_by)


def test_merging_processes_equals_recording_everything_in_one_place() -> None:
    rng = random.Random(7)
    first = [rng.randrange(100, 50_000) for _ in range(3000)]
    second = [rng.randrange(1_000, 900_000) for _ in range(1000)]
    parts = [
        process_result(first, {"timeout": 2, "http 503 no_leader": 1}, 10.02, 32),
        process_result(second, {"timeout": 5}, 10.31, 32),
    ]
    # through JSON, as the results travel from the worker processes
    travelled = [ProcessResult.from_json(json.loads(json.dumps(p.to_json()))) for p in parts]
    merged = merge_processes(travelled)
    oracle = recorder_of(first + second)
    stats = merged.ops["put"]
    assert stats.succeeded == 4000
    assert stats.errors == {"timeout": 7, "http 503 no_leader": 1}
    assert stats.failed == 8
    assert merged.clients == 64
    assert merged.elapsed_s == 10.31  # the longest window
    assert merged.stopped_by == "duration"
    for percentile in (50.0, 90.0, 99.0, 99.9):
        assert stats.latency.percentile_us(percentile) == oracle.percentile_us(percentile)
    assert stats.latency.max_us == max(first + second)


def test_merge_reports_a_time_cap_hit_by_any_process() -> None:
    parts = [process_result([10], {}, 1.0, 1, "count"),
             process_result([10], {}, 5.0, 1, "time cap")]
    assert merge_processes(parts).stopped_by == "time cap"
    assert merge_processes(parts[:1]).stopped_by == "count"


def test_bench_result_throughput_total_and_round_trip() -> None:
    measured = ProcessResult(4, 2.0, {
        "get": OpStats(recorder_of([100] * 300), {KEY_NOT_FOUND: 3}),
        "put": OpStats(recorder_of([2000] * 100), {}),
    }, "duration")
    workload = Workload("concord", ("http://127.0.0.1:1",), parse_mix("put=1,get=3"),
                        clients=4, duration_s=2.0)
    result = BenchResult(workload.to_json(), measured, workload.endpoints)
    by_op = {r.name: r for r in result.per_op()}
    assert by_op["get"].throughput_ops_per_s == 150.0
    assert by_op["put"].throughput_ops_per_s == 50.0
    total = result.total()
    assert (total.succeeded, total.failed, total.throughput_ops_per_s) == (400, 3, 200.0)
    assert total.latency.p50_ms == pytest.approx(0.1, rel=HDR_RELATIVE_ERROR)
    again = BenchResult.from_json(json.loads(json.dumps(result.to_json())))
    assert again.to_json() == result.to_json()
    text = render_result(result)
    assert "| total" in text and "get error key_not_found: 3" in text


def test_comparison_ratio_table_and_chart() -> None:
    def result(rate: int) -> BenchResult:
        workload = Workload("etcd", ("http://127.0.0.1:1",), duration_s=1.0)
        measured = ProcessResult(1, 1.0, {"put": OpStats(recorder_of([500] * rate), {})},
                                 "duration")
        return BenchResult(workload.to_json(), measured, workload.endpoints)

    comparison = Comparison("put, 64 clients", {"etcd": result(400), "concord": result(600)})
    assert comparison.ratio("concord", "etcd") == 1.5
    table = render_comparison([comparison], ["etcd", "concord"])
    assert "concord/etcd" in table.splitlines()[0]
    assert "| 1.50" in table.splitlines()[2]
    page = render_chart_html([comparison], ["etcd", "concord"], "title", table)
    assert page.count("<rect") == 4  # two legend swatches, two bars
    assert "600 ops/s  ×1.50" in page


def timed_puts(latencies_us: list[int], elapsed_s: float,
               errors: dict[str, int] | None = None) -> BenchResult:
    workload = Workload("etcd", ("http://127.0.0.1:1",), duration_s=elapsed_s)
    measured = ProcessResult(1, elapsed_s,
                             {"put": OpStats(recorder_of(latencies_us), errors or {})},
                             "duration")
    return BenchResult(workload.to_json(), measured, workload.endpoints)


def test_rounds_pool_operations_errors_time_and_latencies() -> None:
    first = timed_puts([1000] * 300, 1.0, {"timeout": 2})
    second = timed_puts([3000] * 100, 1.0, {"timeout": 1, "http 503 -": 4})
    pooled = merge_rounds([first, second])
    total = pooled.total()
    assert total.succeeded == 400 and total.failed == 7
    assert pooled.elapsed_s == 2.0 and total.throughput_ops_per_s == 200.0  # not 300 + 100
    assert pooled.per_op()[0].errors == {"http 503 -": 4, "timeout": 3}
    assert total.latency.p50_ms == pytest.approx(1.0, rel=HDR_RELATIVE_ERROR)
    assert total.latency.max_ms == pytest.approx(3.0, rel=HDR_RELATIVE_ERROR)
    assert pooled.workload["rounds"] == 2
    assert merge_rounds([first]) is first


def test_round_by_round_ratios_follow_the_pooled_table() -> None:
    comparison = Comparison.of_rounds("sequential put, 1 client", {
        "etcd": [timed_puts([1000] * 100, 1.0), timed_puts([2000] * 50, 1.0)],
        "concord": [timed_puts([800] * 120, 1.0), timed_puts([2500] * 40, 1.0)],
    })
    assert comparison.ratio("concord", "etcd") == pytest.approx(160 / 150)
    assert comparison.round_ratios("concord", "etcd") == pytest.approx([1.2, 0.8])
    lines = render_round_ratios([comparison], ["etcd", "concord"]).splitlines()
    assert lines == ["- sequential put, 1 client: by round, concord/etcd 1.20 0.80; "
                     "p50 ms etcd 1.00 2.00; concord 0.80 2.50"]
    single = Comparison.of_rounds("put, 64 clients", {"etcd": [timed_puts([1000], 1.0)]})
    assert single.rounds == {} and render_round_ratios([single], ["etcd"]) == ""


def test_a_system_that_sat_a_workload_out_is_a_dash_and_no_bar() -> None:
    def result(rate: int) -> BenchResult:
        workload = Workload("etcd", ("http://127.0.0.1:1",), duration_s=1.0)
        measured = ProcessResult(1, 1.0, {"get": OpStats(recorder_of([500] * rate), {})},
                                 "duration")
        return BenchResult(workload.to_json(), measured, workload.endpoints)

    systems = ["etcd", "concord", "concord-batch"]
    comparison = Comparison("get, 256 clients", {"etcd": result(400), "concord": result(600)})
    table = render_comparison([comparison], systems)
    cells = [cell.strip() for cell in table.splitlines()[2].strip("|").split("|")]
    assert cells[-3:] == ["—", "—", "—"] and cells[5] == "1.50"
    page = render_chart_html([comparison], systems, "title", table)
    assert page.count("<rect") == 5  # three legend swatches, two bars


# --- targets ---------------------------------------------------------------------------------

VALUE = b"abc\x00\xff"


def test_concord_requests() -> None:
    target = ConcordTarget(VALUE, msgpack_answers=False)
    put = target.request(Op.PUT, b"k0000001")
    assert (put.method, put.path, put.body) == ("PUT", "/v1/kv/k0000001", VALUE)
    assert put.headers == {"Accept": "application/json", "Prefer": "return=minimal",
                           "Content-Type": "application/octet-stream"}
    quoted = target.request(Op.GET, b"a/b c")
    assert (quoted.method, quoted.path, quoted.body) == ("GET", "/v1/kv/a%2Fb%20c", b"")
    serializable = target.request(Op.GET_SERIALIZABLE, b"k1")
    assert serializable.path == "/v1/kv/k1?consistency=serializable"
    cas = target.request(Op.CAS, b"k1")
    assert cas.method == "PUT" and cas.body == VALUE
    assert base64.b64decode(cas.headers["X-Concord-Prev-Value-B64"]) == VALUE
    assert cas.headers["Prefer"] == "return=minimal"
    fast = ConcordTarget(VALUE, msgpack_answers=True).request(Op.GET, b"k1")
    assert fast.headers == {"Accept": "application/msgpack"}


def test_concord_judgement_json_and_msgpack() -> None:
    kv = {"key": "k1", "value": "v", "value_encoding": "utf-8", "create_revision": 1,
          "mod_revision": 1, "version": 1}
    ok = {"header": {}, "kv": kv}
    missing = {"header": {}, "error": {"code": "key_not_found", "message": "no such key"}}
    no_leader = {"header": {}, "error": {"code": "no_leader", "message": "-"}}
    for msgpack_answers in (False, True):
        target = ConcordTarget(VALUE, msgpack_answers)

        def encode(document: object, fast: bool = msgpack_answers) -> bytes:
            packed = msgpack.packb(document) if fast else json.dumps(document).encode()
            assert isinstance(packed, bytes)
            return packed

        assert target.judge(Op.GET, 200, encode(ok)) is None
        assert target.judge(Op.GET, 200, encode({"header": {}, "revision": 1})) == (
            "http 200 answer without kv")
        assert target.judge(Op.GET, 404, encode(missing)) == KEY_NOT_FOUND
        assert target.judge(Op.PUT, 503, encode(no_leader)) == "http 503 no_leader"
        # a write's answer: minimal, or the full one from a server ignoring the preference
        assert target.judge(Op.PUT, 200, encode({"header": {}, "revision": 1})) is None
        assert target.judge(Op.CAS, 200, encode({**ok, "revision": 1, "prev": kv})) is None
        assert target.judge(Op.PUT, 200, encode({"header": {}})) == (
            "http 200 answer without revision")
    assert ConcordTarget(VALUE, False).judge(Op.PUT, 502, b"<html>") == (
        "http 502 undecodable answer")


def test_etcd_requests_are_base64_json() -> None:
    target = EtcdTarget(VALUE)
    key_b64 = base64.b64encode(b"k1").decode()
    value_b64 = base64.b64encode(VALUE).decode()
    put = target.request(Op.PUT, b"k1")
    assert (put.method, put.path) == ("POST", "/v3/kv/put")
    assert json.loads(put.body) == {"key": key_b64, "value": value_b64}
    get = target.request(Op.GET, b"k1")
    assert (get.path, json.loads(get.body)) == ("/v3/kv/range", {"key": key_b64})
    stale = target.request(Op.GET_SERIALIZABLE, b"k1")
    assert json.loads(stale.body) == {"key": key_b64, "serializable": True}
    cas = json.loads(target.request(Op.CAS, b"k1").body)
    assert cas["compare"] == [{"key": key_b64, "target": "VALUE", "result": "EQUAL",
                               "value": value_b64}]
    assert cas["success"] == [{"request_put": {"key": key_b64, "value": value_b64}}]


def test_etcd_judgement() -> None:
    target = EtcdTarget(VALUE)
    found = json.dumps({"header": {"revision": "3"}, "kvs": [{"key": "azE="}], "count": "1"})
    assert target.judge(Op.GET, 200, found.encode()) is None
    assert target.judge(Op.GET, 200, b'{"header": {"revision": "3"}}') == KEY_NOT_FOUND
    assert target.judge(Op.PUT, 200, b'{"header": {"revision": "4"}}') is None
    assert target.judge(Op.CAS, 200, b'{"header": {}, "succeeded": true}') is None
    assert target.judge(Op.CAS, 200, b'{"header": {}}') == COMPARE_FAILED
    error = b'{"error": "etcdserver: request timed out", "code": 14, "message": "etcdserver: ' \
            b'request timed out"}'
    assert target.judge(Op.PUT, 503, error) == "http 503 etcdserver: request timed out"


def test_the_quorum_store_system_puts_at_w2_and_has_no_get() -> None:
    target = make_target("concord-dkv", VALUE)
    assert target.name == "concord-dkv" and target.ops == frozenset({Op.PUT})
    request = target.request(Op.PUT, b"k 1")
    assert (request.method, request.path, request.body) == ("PUT", "/v1/dkv/bench/k%201?w=2",
                                                            VALUE)
    assert target.judge(Op.PUT, 200, b'{"context": "abc", "replicas": ["n1", "n2"]}') is None
    assert target.judge(Op.PUT, 503, b'{"error": {"code": "unavailable"}}') == (
        "http 503 unavailable")
    with pytest.raises(ValueError, match="no operation 'get'"):
        target.request(Op.GET, b"k")


def test_unknown_target_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown target"):
        make_target("zookeeper", VALUE)


# --- workloads -------------------------------------------------------------------------------


def test_mix_parsing() -> None:
    assert parse_mix("put") == ((Op.PUT, 1),)
    mix = parse_mix("put=80, get=15,get-serializable=5")
    assert mix == ((Op.PUT, 80), (Op.GET, 15), (Op.GET_SERIALIZABLE, 5))
    assert format_mix(mix) == "put=80,get=15,get-serializable=5"
    for bad in ("delete", "put=0", "put=1,put=2", "put=x"):
        with pytest.raises(ValueError):
            parse_mix(bad)


def test_keys_values_and_splits() -> None:
    workload = Workload("etcd", ("http://127.0.0.1:1",), clients=10, processes=3, count=1000,
                        key_size_bytes=8, value_size_bytes=300, key_space=10_000)
    assert workload.key(42) == b"k0000042"
    assert {len(workload.key(i)) for i in (0, 9999)} == {8}
    assert len(workload.value) == 300
    assert [len(r) for r in workload.client_split()] == [4, 3, 3]
    assert [c for r in workload.client_split() for c in r] == list(range(10))
    shares = workload.count_split()
    assert sum(s for s in shares if s is not None) == 1000
    assert shares == [400, 300, 300]
    assert not workload.needs_prefill
    assert Workload("etcd", ("http://h",), mix=parse_mix("put=1,cas=1")).needs_prefill


@pytest.mark.parametrize("change", [
    {"clients": 0}, {"clients": 5000}, {"processes": 3, "clients": 2}, {"duration_s": 601.0},
    {"count": 0}, {"warmup_s": 61.0}, {"key_space": 100_000, "key_size_bytes": 5},
    {"value_size_bytes": 0}, {"endpoints": ()}, {"request_timeout_s": 0.0},
    {"endpoints": ("127.0.0.1:7001",)}, {"endpoints": ("ftp://127.0.0.1:7001",)},
    {"endpoints": ("http://127.0.0.1:7001?x=1",)}, {"endpoints": ("http://",)},
])
def test_workload_bounds(change: dict[str, object]) -> None:
    fields: dict[str, object] = {"target": "concord", "endpoints": ("http://127.0.0.1:1",)}
    fields.update(change)
    with pytest.raises(ValueError):
        Workload(**fields)  # type: ignore[arg-type]


# --- a real run --------------------------------------------------------------------------------


async def store_revision(endpoint: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{endpoint}/health") as response:
        return int(response.headers["X-Concord-Revision"])


@contextmanager
def one_node(tmp_path: Path) -> Iterator[str]:
    """A ready one-node cluster (fsync off, fast ticks) on loopback; its client endpoint."""
    client_port, peer_port = free_cluster_ports(1)
    cluster = LocalCluster(tmp_path / "cluster", size=1, base_client_port=client_port,
                           base_peer_port=peer_port, fsync=False, log_to_files=True,
                           extra_settings={"raft": {"tick_ms": 20}})
    cluster.start()
    try:
        asyncio.run(cluster.wait_ready(timeout_s=20))
        yield cluster.endpoints[0]
    finally:
        cluster.stop()


@pytest.mark.integration
def test_a_short_run_counts_every_operation_and_error(tmp_path: Path) -> None:
    (dead_port,) = free_ports(1)  # nothing listens there
    with one_node(tmp_path) as live:
        before = asyncio.run(store_revision(live))
        # client 0 (process 0) writes to the node, client 1 (process 1) to a closed port
        workload = Workload("concord-msgpack", (live, f"http://127.0.0.1:{dead_port}"),
                            clients=2, processes=2, count=60, duration_s=20.0, warmup_s=0.0,
                            request_timeout_s=5.0)
        result = run_workload(workload, progress=None)
        after = asyncio.run(store_revision(live))
    put = result.per_op()[0]
    assert put.name == "put"
    assert result.measured.stopped_by == "count"
    assert put.succeeded == 30 == after - before  # each success is one write in the store
    assert put.failed == 30
    assert list(put.errors) == ["connection ClientConnectorError"]
    assert 0 < result.elapsed_s < 20.0
    assert put.latency.count == 30 and put.latency.p50_ms > 0


@pytest.mark.integration
def test_quorum_store_puts_carry_the_last_context_so_siblings_stay_few(tmp_path: Path) -> None:
    """Four clients write two keys 200 times: each put supersedes what the process last saw
    of its key, so a key ends with about one sibling per concurrent writer, not one per put."""
    with one_node(tmp_path) as live:
        workload = Workload("concord", (live,), mix=((Op.DKV_PUT_W1, 1),), clients=4,
                            count=200, duration_s=20.0, warmup_s=0.0, key_space=2)
        result = run_workload(workload, progress=None)
        assert result.per_op()[0].succeeded == 200

        async def siblings(key: bytes) -> int:
            url = f"{live}/v1/dkv/bench/{key.decode()}?r=1"
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                assert response.status == 200
                return len((await response.json())["siblings"])

        counts = [asyncio.run(siblings(workload.key(i))) for i in range(2)]
    assert all(1 <= count <= workload.clients for count in counts), counts


# --- an endpoint that is not there, or not Concord ---------------------------------------


class _HealthOnly(BaseHTTPRequestHandler):
    """Answers ``GET /health`` (503, as a member without a leader would) and refuses
    everything else with a 500."""

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self._answer(503 if self.path == "/health" else 500)

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer(500)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def health_only_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HealthOnly)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_an_endpoint_is_unreachable_only_when_it_gives_no_http_answer() -> None:
    (dead_port,) = free_ports(1)
    dead = f"http://127.0.0.1:{dead_port}"
    with health_only_server() as answering:
        unreachable = await unreachable_endpoints((answering, dead), timeout_s=2.0)
    assert list(unreachable) == [dead]  # a 503 is an answer
    assert str(dead_port) in unreachable[dead]


def test_bench_run_refuses_an_unreachable_endpoint_before_starting(
        capsys: pytest.CaptureFixture[str]) -> None:
    (dead_port,) = free_ports(1)
    dead = f"http://127.0.0.1:{dead_port}"
    assert main(["bench", "run", "--endpoints", dead, "--duration", "30"]) == 1
    captured = capsys.readouterr()
    assert f"no answer from {dead}" in captured.err
    assert captured.out == ""  # no run, no table
    assert main(["bench", "run", "--endpoints", "127.0.0.1:7001"]) == 64
    assert "not a base URL" in capsys.readouterr().err


@pytest.mark.integration
def test_a_run_in_which_nothing_succeeded_fails_and_shows_no_latencies(
        capsys: pytest.CaptureFixture[str]) -> None:
    with health_only_server() as endpoint:
        status = main(["bench", "run", "--endpoints", endpoint, "--clients", "1",
                       "--duration", "0.3", "--warmup", "0"])
    captured = capsys.readouterr()
    assert status == 1
    assert "no operation succeeded" in captured.err
    put_row = next(line for line in captured.out.splitlines() if line.startswith("| put"))
    cells = [cell.strip() for cell in put_row.split("|")[1:-1]]
    assert cells[:7] == ["put", "0", "0", "-", "-", "-", "-"]  # ok, ops/s, no latencies
    assert int(cells[7].replace(",", "")) > 0
    assert "put error http 500" in captured.out


def test_a_no_fsync_cluster_turns_off_both_stores_fsync(tmp_path: Path) -> None:
    """``concord cluster up --no-fsync`` means nothing is fsynced: the Raft log and the
    quorum store's replicas both; a default cluster fsyncs both."""
    for fsync in (False, True):
        cluster = LocalCluster(tmp_path / str(fsync), size=1, fsync=fsync)
        cluster.write_configs()
        config = load_config(cluster.nodes["n1"].config_path)
        assert (config.storage.fsync, config.dkv.fsync) == (fsync, fsync)
