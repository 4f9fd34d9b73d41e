"""etcd driven by its own Go client: the ``etcd-go`` system of ``concord bench compare``.

``scripts/etcd-go-bench/main.go`` is a load generator on etcd's ``clientv3`` (gRPC). This
module builds it once per version of that source (GOPATH mode, against Debian's
``golang-etcd-server-dev`` sources; the binary is cached under
``~/.cache/concord/etcd-go-bench/<hash>/``), runs it for one workload and turns its JSON
into the ``BenchResult`` the Python load generator produces, so the comparison table puts
it beside the others. Keys, values, warm-up and the measured window follow the Python
bench's rules; latencies arrive as counts per HDR bucket and are re-recorded unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TextIO

from concord.bench.loadgen import BenchError, Workload
from concord.bench.report import BenchResult, LatencyRecorder, OpStats, ProcessResult
from concord.bench.targets import Op

SYSTEM_NAME: Final = "etcd-go"
_SOURCE_IN_CHECKOUT: Final = Path("scripts") / "etcd-go-bench" / "main.go"


def _find_source() -> Path:
    """main.go of the source checkout: beside this package when it is installed editable,
    else under the working directory (an installed build run from the checkout, as
    scripts/bench-vs-etcd.sh runs .venv-fast)."""
    beside = Path(__file__).resolve().parents[3] / _SOURCE_IN_CHECKOUT
    return beside if beside.exists() else Path.cwd() / _SOURCE_IN_CHECKOUT


SOURCE: Final = _find_source()
GOCODE: Final = Path("/usr/share/gocode")
"""Where Debian's golang-*-dev packages put Go sources (a GOPATH tree)."""
CLIENT_PACKAGE: Final = "go.etcd.io/etcd/clientv3"
DEBIAN_PACKAGES: Final = "golang-go golang-etcd-server-dev"
GO_PACKAGE: Final = "etcdbench"
BINARY_NAME: Final = "etcd-go-bench"
SUPPORTED_OPS: Final = (Op.PUT, Op.GET)
CLIENTS_PER_CONNECTION: Final = 10
"""The default sharing of gRPC connections, as in etcd's published put benchmarks (1,000
clients over 100 connections)."""
MAX_CONNECTIONS: Final = 100
BUILD_TIMEOUT_S: Final = 600.0
PREFILL_BUDGET_S: Final = 120.0  # main.go's prefillBudget
FINISH_GRACE_S: Final = 45.0  # more than main.go's own finishGrace: its watchdog fires first
STDERR_TAIL_CHARS: Final = 2000


class EtcdGoUnavailable(BenchError):
    """The Go client cannot be built here: Go or etcd's client sources are missing."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "concord" / BINARY_NAME


def cached_binary(source: Path = SOURCE, cache: Path | None = None) -> Path:
    """Where the binary built from ``source`` lives (it may not exist yet)."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    return (cache or cache_root()) / digest / BINARY_NAME


def unavailable_reason(source: Path = SOURCE, cache: Path | None = None,
                       gocode: Path = GOCODE) -> str | None:
    """Why the Go client can be neither found built nor built, or None when it can."""
    if not source.is_file():
        return f"its source {source} is missing (run it from a source checkout of Concord)"
    if os.access(cached_binary(source, cache), os.X_OK):
        return None
    if shutil.which("go") is None:
        return f"no `go` on PATH (apt-get install {DEBIAN_PACKAGES})"
    if not (gocode / "src" / CLIENT_PACKAGE).is_dir():
        return (f"etcd's Go client sources are not under {gocode}/src "
                f"(apt-get install {DEBIAN_PACKAGES})")
    return None


def ensure_binary(source: Path = SOURCE, cache: Path | None = None,
                  gocode: Path = GOCODE) -> Path:
    """The built load generator, built now if this version of the source never was."""
    binary = cached_binary(source, cache)
    if os.access(binary, os.X_OK):
        return binary
    reason = unavailable_reason(source, cache, gocode)
    if reason is not None:
        raise EtcdGoUnavailable(f"cannot build the etcd Go client: {reason}")
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=binary.parent, prefix="build-") as work:
        package_dir = Path(work) / "src" / GO_PACKAGE
        package_dir.mkdir(parents=True)
        shutil.copyfile(source, package_dir / "main.go")
        built = Path(work) / BINARY_NAME
        env = {**os.environ, "GOPATH": f"{work}{os.pathsep}{gocode}", "GO111MODULE": "off",
               "GOFLAGS": ""}
        try:
            finished = subprocess.run(["go", "build", "-o", str(built), GO_PACKAGE], cwd=work,
                                      env=env, capture_output=True, text=True,
                                      timeout=BUILD_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise BenchError(f"building {source} took over {BUILD_TIMEOUT_S:g} s") from None
        if finished.returncode != 0:
            raise BenchError(f"building {source} failed:\n"
                             f"{finished.stderr[-STDERR_TAIL_CHARS:]}")
        os.replace(built, binary)  # atomic: a concurrent build leaves one whole binary
    return binary


def default_connections(clients: int) -> int:
    return min(MAX_CONNECTIONS, math.ceil(clients / CLIENTS_PER_CONNECTION))


def check_workload(workload: Workload, connections: int) -> None:
    """Raise ``ValueError`` unless the Go client can run ``workload`` as the Python bench
    would: one put or get operation on etcd, by duration, in one process."""
    if workload.target != "etcd":
        raise ValueError(f"the Go client drives etcd, not {workload.target}")
    ops = [op for op, _ in workload.mix]
    if len(ops) != 1 or ops[0] not in SUPPORTED_OPS:
        raise ValueError(f"the Go client runs one of {', '.join(SUPPORTED_OPS)}, not "
                         f"{', '.join(ops)}")
    if workload.count is not None:
        raise ValueError("the Go client runs for a duration, not a count")
    if workload.processes != 1:
        raise ValueError("the Go client is one process (its clients are goroutines)")
    if not 1 <= connections <= workload.clients:
        raise ValueError(f"connections must be 1..{workload.clients} (the clients)")


def command(binary: Path, workload: Workload, connections: int) -> list[str]:
    check_workload(workload, connections)
    return [str(binary), "--endpoints", ",".join(workload.endpoints),
            "--clients", str(workload.clients), "--conns", str(connections),
            "--op", workload.mix[0][0].value, "--key-size", str(workload.key_size_bytes),
            "--val-size", str(workload.value_size_bytes),
            "--key-space", str(workload.key_space), "--duration", f"{workload.duration_s:g}",
            "--warmup", f"{workload.warmup_s:g}", "--timeout", f"{workload.request_timeout_s:g}",
            "--seed", str(workload.seed)]


def result_from_json(document: Mapping[str, Any], workload: Workload,
                     connections: int) -> BenchResult:
    """The Go client's report as the Python bench's result; raises ``BenchError`` when the
    report is malformed or does not belong to ``workload``."""
    try:
        op = str(document["op"])
        counts = [(int(value), int(count)) for value, count in document["latency_us_histogram"]]
        recorder = LatencyRecorder.from_counts(counts, int(document["max_us"]))
        ok = int(document["ok"])
        errors = {str(kind): int(count) for kind, count in document["errors"].items()}
        clients, elapsed_s = int(document["clients"]), float(document["elapsed_s"])
    except (KeyError, TypeError, ValueError, AttributeError, AssertionError) as exc:
        raise BenchError(f"malformed result from the Go client: {exc!r}") from None
    expected = workload.mix[0][0].value
    if op != expected or clients != workload.clients:
        raise BenchError(f"the Go client ran {clients} clients of {op}, not "
                         f"{workload.clients} of {expected}")
    if recorder.count != ok:
        raise BenchError(f"the Go client's histogram holds {recorder.count} latencies for "
                         f"{ok} successful operations")
    measured = ProcessResult(clients, elapsed_s, {op: OpStats(recorder, errors)}, "duration")
    description = {**workload.to_json(), "target": SYSTEM_NAME, "connections": connections}
    return BenchResult(description, measured, workload.endpoints)


def run(binary: Path, workload: Workload, connections: int, label: str = SYSTEM_NAME,
        progress: TextIO | None = sys.stderr) -> BenchResult:
    """Run ``workload`` through the Go client to the end; raises ``BenchError``."""
    argv = command(binary, workload, connections)
    if progress is not None:
        print(f"{label}: {workload.clients} Go clients over {connections} connection(s), "
              f"{workload.warmup_s:g} s warm-up + {workload.duration_s:g} s", file=progress,
              flush=True)
    limit_s = (PREFILL_BUDGET_S + workload.warmup_s + workload.duration_s
               + workload.request_timeout_s + FINISH_GRACE_S)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL) as process:
        try:
            out, err = process.communicate(timeout=limit_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise BenchError(f"the Go client did not finish within {limit_s:g} s") from None
        except BaseException:  # Ctrl-C, SIGTERM: stop it too
            process.kill()
            process.communicate()
            raise
    if process.returncode != 0:
        tail = err.decode(errors="replace")[-STDERR_TAIL_CHARS:].strip()
        raise BenchError(f"the Go client exited with status {process.returncode}: {tail}")
    try:
        document = json.loads(out)
    except ValueError:
        raise BenchError(f"the Go client printed no JSON: {out[:200]!r}") from None
    if not isinstance(document, dict):
        raise BenchError("the Go client's result is not a JSON object")
    return result_from_json(document, workload, connections)
