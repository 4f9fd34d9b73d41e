"""The etcd-go system of ``concord bench compare``: the Go client's JSON turned into a
``BenchResult`` (oracle: the same latencies recorded one by one), its bucketing rule, the
workload checks and command line, finding or refusing to build the binary, and how
``compare`` groups and defaults its systems."""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from concord import bench_cli
from concord.bench import etcd_go
from concord.bench.etcd_go import EtcdGoUnavailable
from concord.bench.loadgen import BenchError, Workload, parse_mix
from concord.bench.report import (
    BenchResult,
    Comparison,
    LatencyRecorder,
    LatencySummary,
    OpStats,
    ProcessResult,
    render_comparison,
    render_result,
)
from concord.bench.targets import Op
from concord.cluster import free_port_block

ENDPOINTS = ("http://127.0.0.1:23791", "http://127.0.0.1:23792")


def hdr_bucket(us: int) -> int:
    """main.go's ``bucketUs``: exact below 2048 µs, 11 significant bits above."""
    if us < 2048:
        return us
    shift = us.bit_length() - 11
    return us >> shift << shift


def go_document(latencies_us: list[int], errors: dict[str, int] | None = None,
                op: str = "put", clients: int = 64, elapsed_s: float = 2.0) -> dict[str, Any]:
    """What main.go prints for these successful latencies."""
    buckets: dict[int, int] = {}
    for us in latencies_us:
        buckets[hdr_bucket(us)] = buckets.get(hdr_bucket(us), 0) + 1
    return {"op": op, "endpoints": list(ENDPOINTS), "clients": clients, "conns": 7,
            "ok": len(latencies_us), "errors": errors or {}, "elapsed_s": elapsed_s,
            "throughput_ops_per_s": len(latencies_us) / elapsed_s if elapsed_s else 0.0,
            "latency_ms": {"p50": 0.0}, "max_us": max(latencies_us, default=0),
            "latency_us_histogram": sorted([us, n] for us, n in buckets.items())}


def workload(op: str = "put", clients: int = 64, **changes: Any) -> Workload:
    return Workload(**{"target": "etcd", "endpoints": ENDPOINTS, "mix": parse_mix(op),
                       "clients": clients, "duration_s": 2.0, **changes})


def lognormal_latencies(seed: int, count: int = 5000) -> list[int]:
    rng = random.Random(seed)
    return [int(rng.lognormvariate(8, 1.2)) + 1 for _ in range(count)]  # ~3 ms, long tail


# --- the JSON -> BenchResult conversion ----------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
def test_bucketing_keeps_every_percentile_of_the_raw_latencies(seed: int) -> None:
    latencies = lognormal_latencies(seed)
    raw, bucketed = LatencyRecorder(), LatencyRecorder()
    for us in latencies:
        raw.record_us(us)
        bucketed.record_us(hdr_bucket(us))
    assert len({hdr_bucket(us) for us in latencies}) < len(set(latencies))  # it did bucket
    for percentile in (50.0, 90.0, 99.0, 99.9, 100.0):
        assert bucketed.percentile_us(percentile) == raw.percentile_us(percentile)


def test_conversion_equals_recording_each_latency_in_python() -> None:
    latencies = lognormal_latencies(3)
    errors = {"timeout": 3, "grpc Unavailable etcdserver: leader changed": 2}
    result = etcd_go.result_from_json(go_document(latencies, errors, elapsed_s=2.5),
                                      workload(), 7)
    oracle = LatencyRecorder()
    for us in latencies:
        oracle.record_us(us)
    total = result.total()
    assert total.succeeded == len(latencies)
    assert total.failed == 5
    assert dict(total.errors) == errors
    assert total.throughput_ops_per_s == pytest.approx(len(latencies) / 2.5)
    assert total.latency == LatencySummary.of(oracle)  # percentiles, mean within HDR, max
    assert total.latency.max_ms == max(latencies) / 1000
    assert result.elapsed_s == 2.5
    assert result.measured.stopped_by == "duration"
    assert [r.name for r in result.per_op()] == ["put"]
    assert result.endpoints_used == ENDPOINTS
    assert result.workload["target"] == "etcd-go"
    assert result.workload["connections"] == 7
    assert result.workload["clients"] == 64


def test_converted_result_renders_round_trips_and_joins_a_comparison() -> None:
    go = etcd_go.result_from_json(go_document(lognormal_latencies(4), op="get"),
                                  workload("get"), 7)
    assert BenchResult.from_json(go.to_json()).to_json() == go.to_json()
    text = render_result(go)
    assert text.startswith("etcd-go: get, 64 clients in 1 process(es)")
    slower = etcd_go.result_from_json(
        go_document(lognormal_latencies(5)[:2500], op="get"), workload("get"), 7)
    comparison = Comparison("linearizable get, 64 clients",
                            {"etcd": slower, "etcd-go": go, "concord": slower})
    header, _, row = render_comparison([comparison], ["etcd", "etcd-go", "concord"]).splitlines()
    assert "etcd-go/etcd" in header and "concord/etcd" in header
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[3:6] == ["2,500", f"{go.total().latency.p50_ms:.2f}", "2.00"]
    assert cells[-1] == "1.00"


def test_a_run_with_no_success_converts_to_zero_throughput() -> None:
    result = etcd_go.result_from_json(go_document([], {"timeout": 4}, elapsed_s=0.0),
                                      workload(), 7)
    total = result.total()
    assert (total.succeeded, total.failed, total.throughput_ops_per_s) == (0, 4, 0.0)


@pytest.mark.parametrize("spoil", ["no ok", "count mismatch", "bad pair", "other op",
                                   "other clients", "zero count"])
def test_malformed_or_foreign_documents_are_refused(spoil: str) -> None:
    document = go_document([100, 200, 300])
    match spoil:
        case "no ok":
            del document["ok"]
        case "count mismatch":
            document["ok"] = 4
        case "bad pair":
            document["latency_us_histogram"] = [[100]]
        case "other op":
            document["op"] = "get"
        case "other clients":
            document["clients"] = 3
        case "zero count":
            document["latency_us_histogram"][0][1] = 0
    with pytest.raises(BenchError):
        etcd_go.result_from_json(document, workload(), 7)


# --- workload checks and the command line -------------------------------------------------


@pytest.mark.parametrize(("changes", "connections", "message"), [
    ({"target": "concord"}, 1, "drives etcd"),
    ({"mix": parse_mix("put,get")}, 1, "one of put, get"),
    ({"mix": parse_mix("cas")}, 1, "one of put, get"),
    ({"count": 100}, 1, "duration"),
    ({"processes": 2}, 1, "one process"),
    ({}, 0, "connections must be 1..64"),
    ({}, 65, "connections must be 1..64"),
])
def test_workloads_the_go_client_cannot_run_are_refused(changes: dict[str, Any],
                                                         connections: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        etcd_go.check_workload(workload(**changes), connections)


def test_command_carries_the_workload() -> None:
    argv = etcd_go.command(Path("/cache/etcd-go-bench"), workload(
        "get", clients=256, warmup_s=0.5, key_size_bytes=16, value_size_bytes=100,
        key_space=5000, request_timeout_s=2.0, seed=9), 26)
    flags = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert argv[0] == "/cache/etcd-go-bench"
    assert flags == {"--endpoints": ",".join(ENDPOINTS), "--clients": "256", "--conns": "26",
                     "--op": "get", "--key-size": "16", "--val-size": "100",
                     "--key-space": "5000", "--duration": "2", "--warmup": "0.5",
                     "--timeout": "2", "--seed": "9"}


def test_default_connections_one_per_ten_clients_at_most_a_hundred() -> None:
    assert [etcd_go.default_connections(n) for n in (1, 10, 11, 64, 256, 4096)] == [
        1, 1, 2, 7, 26, 100]


# --- finding or building the binary -------------------------------------------------------


def test_a_cached_binary_is_used_without_go(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "main.go"
    source.write_text("package main\n")
    binary = etcd_go.cached_binary(source, tmp_path / "cache")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert etcd_go.unavailable_reason(source, tmp_path / "cache", tmp_path) is None
    assert etcd_go.ensure_binary(source, tmp_path / "cache", tmp_path) == binary
    source.write_text("package main // changed\n")  # another version: another binary
    assert etcd_go.cached_binary(source, tmp_path / "cache") != binary


def test_missing_go_or_sources_names_the_debian_packages(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "main.go"
    source.write_text("package main\n")
    cache, gocode = tmp_path / "cache", tmp_path / "gocode"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    monkeypatch.setenv("PATH", str(fake_bin))
    reason = etcd_go.unavailable_reason(source, cache, gocode)
    assert reason is not None and "no `go`" in reason
    assert "golang-go golang-etcd-server-dev" in reason
    (fake_bin / "go").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "go").chmod(0o755)
    reason = etcd_go.unavailable_reason(source, cache, gocode)
    assert reason is not None and "sources" in reason
    assert "golang-go golang-etcd-server-dev" in reason
    with pytest.raises(EtcdGoUnavailable, match="golang-etcd-server-dev"):
        etcd_go.ensure_binary(source, cache, gocode)
    assert not cache.exists()
    missing = etcd_go.unavailable_reason(tmp_path / "nowhere.go", cache, gocode)
    assert missing is not None and "source checkout" in missing


def test_a_failing_build_reports_the_compiler(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "main.go"
    source.write_text("package main\n")
    gocode = tmp_path / "gocode"
    (gocode / "src" / etcd_go.CLIENT_PACKAGE).mkdir(parents=True)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "go").write_text("#!/bin/sh\necho \"main.go:1: syntax error ($GOPATH)\" >&2\n"
                                 "exit 1\n")
    (fake_bin / "go").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake_bin))
    with pytest.raises(BenchError, match=f"syntax error .*{os.pathsep}{gocode}"):
        etcd_go.ensure_binary(source, tmp_path / "cache", gocode)
    assert not etcd_go.cached_binary(source, tmp_path / "cache").exists()


# --- compare's systems -------------------------------------------------------------------


def test_etcd_systems_share_one_cluster_and_run_first() -> None:
    assert bench_cli._system_groups(["concord", "etcd-go", "etcd", "concord-msgpack"]) == [
        ["etcd-go", "etcd"], ["concord", "concord-msgpack"]]
    assert bench_cli._system_groups(["etcd-go"]) == [["etcd-go"]]
    assert bench_cli._system_groups(["concord"]) == [["concord"]]


def test_default_systems_skip_etcd_go_in_one_line_when_it_cannot_be_built(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(etcd_go, "unavailable_reason", lambda: "no `go` on PATH (...)")
    assert bench_cli._chosen_systems(None) == ["etcd", "concord", "concord-msgpack"]
    assert capsys.readouterr().err == (
        "concord bench: skipping the etcd-go column: no `go` on PATH (...)\n")
    monkeypatch.setattr(etcd_go, "unavailable_reason", lambda: None)
    assert bench_cli._chosen_systems(None) == ["etcd", "etcd-go", "concord", "concord-msgpack"]
    assert bench_cli._chosen_systems(" etcd-go ,etcd") == ["etcd-go", "etcd"]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("systems", "go_conns"), [
    ("etcd,etcd-python", None), ("etcd,etcd", None), (",", None), ("etcd-go", 0)])
def test_compare_refuses_bad_systems_before_starting_anything(
        systems: str, go_conns: int | None, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    bench_cli.add_bench_commands(parser.add_subparsers(dest="command"))
    argv = ["bench", "compare", "--systems", systems, "--out", str(tmp_path / "out")]
    if go_conns is not None:
        argv += ["--go-conns", str(go_conns)]
    args = parser.parse_args(argv)
    assert bench_cli.bench_compare(args) == bench_cli.EXIT_USAGE
    assert not (tmp_path / "out").exists()


def _compare_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_cli.add_bench_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", "compare", *argv])


def test_compare_refuses_bad_load_arguments_and_an_unwritable_out_before_starting_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    for bad in (["--key-size", "2"], ["--warmup", "-1"], ["--processes", "0"],
                ["--batch-size", "0", "--systems", "concord-batch"]):
        assert bench_cli.bench_compare(_compare_args(
            "--systems", "concord", "--out", str(out), *bad)) == bench_cli.EXIT_USAGE
        assert not out.exists()
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    assert bench_cli.bench_compare(_compare_args(
        "--systems", "concord", "--out", str(not_a_directory / "out"))) == bench_cli.EXIT_USAGE
    assert "cannot write the results to" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _compare_args("--duration", "0")


def test_compare_refuses_ports_another_listener_holds_before_starting_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = free_port_block(8)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", base + 2))  # n3's client port of a 3-node Concord
        listener.listen()
        args = _compare_args("--systems", "concord", "--concord-port", str(base),
                             "--out", str(tmp_path / "out"))
        assert bench_cli.bench_compare(args) == bench_cli.EXIT_FAILED
    busy = capsys.readouterr().err.split("ports in use: ")[1].split(";")[0].split(", ")
    assert str(base + 2) in busy and str(base) not in busy and str(base + 1) not in busy
    assert not (tmp_path / "out").exists()


def test_rounds_alternate_which_cluster_goes_first_each_started_afresh(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[Path] = []
    ran: list[tuple[str, str]] = []

    @contextmanager
    def fake_cluster(*args: Any) -> Iterator[tuple[str, ...]]:
        data_dir = next(a for a in args if isinstance(a, Path))
        started.append(data_dir)
        yield ("http://127.0.0.1:1",)

    def fake_cases(system: str, endpoints: tuple[str, ...], args: argparse.Namespace,
                   into: dict[str, Any], go_binary: Path | None, round_label: str) -> None:
        ran.append((system, round_label))

    monkeypatch.setattr(bench_cli, "_running_etcd", fake_cluster)
    monkeypatch.setattr(bench_cli, "_running_concord", fake_cluster)
    monkeypatch.setattr(bench_cli, "_run_cases", fake_cases)
    args = _compare_args("--systems", "etcd,concord,concord-msgpack", "--rounds", "3")
    for round_index in range(3):
        bench_cli._run_round(round_index, ["etcd", "concord", "concord-msgpack"], tmp_path,
                             args, {}, None)
    assert [system for system, _ in ran] == [
        "etcd", "concord", "concord-msgpack",  # round 1
        "concord", "concord-msgpack", "etcd",  # round 2: the other cluster first
        "etcd", "concord", "concord-msgpack"]
    assert {label for _, label in ran} == {" (round 1/3)", " (round 2/3)", " (round 3/3)"}
    assert started == [tmp_path / "round-1" / "etcd", tmp_path / "round-1" / "concord",
                       tmp_path / "round-2" / "concord", tmp_path / "round-2" / "etcd",
                       tmp_path / "round-3" / "etcd", tmp_path / "round-3" / "concord"]
    with pytest.raises(SystemExit):
        _compare_args("--rounds", "0")


def test_an_interrupted_multi_round_compare_saves_the_rounds_it_completed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def one_put(latency_us: int) -> BenchResult:
        workload = Workload("etcd", ("http://127.0.0.1:1",), duration_s=1.0)
        recorder = LatencyRecorder.from_counts([(latency_us, 1)], latency_us)
        return BenchResult(workload.to_json(),
                           ProcessResult(1, 1.0, {"put": OpStats(recorder, {})}, "duration"),
                           workload.endpoints)

    def fake_round(round_index: int, systems: list[str], data_dir: Path,
                   args: argparse.Namespace, into: dict[str, Any],
                   go_binary: Path | None) -> None:
        into.setdefault("put, 64 clients", {}).setdefault("etcd", []).append(
            one_put(1000 * (round_index + 1)))
        if round_index == 2:  # etcd's part of the third round ran, then Ctrl-C
            raise KeyboardInterrupt
        into["put, 64 clients"].setdefault("concord", []).append(one_put(500))

    monkeypatch.setattr(bench_cli, "_run_round", fake_round)
    base = free_port_block(8)
    out = tmp_path / "out"
    args = _compare_args("--systems", "etcd,concord", "--rounds", "5", "--out", str(out),
                         "--etcd-port", str(base), "--concord-port", str(base))
    assert bench_cli.bench_compare(args) == bench_cli.EXIT_INTERRUPTED
    assert "saving the 2 complete round(s) of 5" in capsys.readouterr().err
    document = json.loads((out / "results.json").read_text())
    assert "2 rounds" in document["title"] and "stopped after 2 of the 5" in document["title"]
    row = next(w for w in document["workloads"] if w["name"] == "put, 64 clients")
    assert [len(row["rounds"][system]) for system in ("etcd", "concord")] == [2, 2]
    assert row["results"]["etcd"]["total"]["succeeded"] == 2  # the third round's part dropped


def test_a_compare_that_fails_before_a_round_completes_leaves_no_empty_out_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def failing_round(round_index: int, systems: list[str], data_dir: Path,
                      args: argparse.Namespace, into: dict[str, Any],
                      go_binary: Path | None) -> None:
        data_dir.mkdir(parents=True)  # a cluster had started
        raise bench_cli.BenchError("etcd exited with status 1")

    monkeypatch.setattr(bench_cli, "_run_round", failing_round)
    base = free_port_block(8)
    ports = ("--etcd-port", str(base), "--concord-port", str(base))
    out = tmp_path / "results" / "new"
    args = _compare_args("--systems", "etcd,concord", "--out", str(out), *ports)
    assert bench_cli.bench_compare(args) == bench_cli.EXIT_FAILED
    assert "etcd exited with status 1" in capsys.readouterr().err
    assert not out.exists()
    kept = tmp_path / "kept"  # --keep-data: the clusters' data stays, and so does the folder
    args = _compare_args("--systems", "etcd,concord", "--out", str(kept), "--keep-data", *ports)
    assert bench_cli.bench_compare(args) == bench_cli.EXIT_FAILED
    assert (kept / "data").is_dir()
    existing = tmp_path / "existing"  # a folder the user made is never removed
    existing.mkdir()
    args = _compare_args("--systems", "etcd,concord", "--out", str(existing), *ports)
    assert bench_cli.bench_compare(args) == bench_cli.EXIT_FAILED
    assert existing.is_dir()


def test_the_quorum_store_system_runs_the_put_cases_only() -> None:
    args = _compare_args("--systems", "etcd,concord-dkv")
    cases = bench_cli._case_workloads("concord-dkv", ("http://127.0.0.1:1",), args)
    assert [case.name for case, _ in cases] == [
        case.name for case in bench_cli.COMPARE_CASES if case.op is Op.PUT]
    assert all(workload.target == "concord-dkv" for _, workload in cases)
