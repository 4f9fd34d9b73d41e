"""``concord bench run|compare``: the load generator and the side-by-side run against etcd.

``run`` drives one target. ``compare`` starts a 3-member etcd (fsync on, its default) and a
3-node Concord (fsync on) on loopback, one system at a time so neither steals the other's
CPU, runs the same workloads against each through the same client, prints the table with
the Concord/etcd ratio per workload, saves ``results.json``, ``table.md`` and
``chart.html`` and stops everything it started, on Ctrl-C and SIGTERM too. The ``etcd-go``
system is the same etcd cluster driven by etcd's Go client (``concord.bench.etcd_go``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Final

import aiohttp

from concord.accel import build_description, compiled_modules
from concord.bench import etcd_go
from concord.bench.loadgen import (
    MAX_DURATION_S,
    BenchError,
    Workload,
    parse_mix,
    run_workload,
    unreachable_endpoints,
)
from concord.bench.report import (
    BenchResult,
    Comparison,
    render_chart_html,
    render_comparison,
    render_result,
    render_round_ratios,
)
from concord.bench.targets import TARGETS, Op, find_leader, make_target
from concord.cluster import LocalCluster, busy_ports

EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 64
EXIT_INTERRUPTED: Final = 130
DEFAULT_ENDPOINTS: Final = {"etcd": "http://127.0.0.1:2379"}
CONCORD_DEFAULT_ENDPOINT: Final = "http://127.0.0.1:7001"
CLUSTER_READY_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 15.0
PEER_PORT_OFFSET: Final = 100
"""Both clusters' peer ports start this far above their client ports."""
MAX_ROUNDS: Final = 20
ETCD_CLUSTER_TOKEN: Final = "concord-bench"
ETCD_SYSTEMS: Final = ("etcd", etcd_go.SYSTEM_NAME)
"""The systems that run against the etcd cluster (started once for all of them)."""
SYSTEMS: Final = (*TARGETS, etcd_go.SYSTEM_NAME)
DEFAULT_SYSTEMS: Final = ("etcd", etcd_go.SYSTEM_NAME, "concord", "concord-msgpack")


@dataclass(frozen=True, slots=True)
class CompareCase:
    name: str
    op: Op
    clients: int


COMPARE_CASES: Final = (
    CompareCase("sequential put, 1 client", Op.PUT, 1),
    CompareCase("put, 64 clients", Op.PUT, 64),
    CompareCase("put, 256 clients", Op.PUT, 256),
    CompareCase("linearizable get, 256 clients", Op.GET, 256),
)


def add_bench_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser("bench", help="load generator; side-by-side run against etcd")
    actions = bench.add_subparsers(dest="bench_command", required=True, metavar="ACTION")

    run = actions.add_parser("run", help="drive one target with N concurrent clients")
    run.add_argument("--target", choices=sorted(TARGETS), default="concord")
    run.add_argument("--endpoints", default=None,
                     help="comma-separated base URLs (default: $CONCORD_ENDPOINTS for Concord, "
                          "http://127.0.0.1:2379 for etcd)")
    run.add_argument("--leader-only", action="store_true",
                     help="send everything to the current leader's endpoint")
    _add_load_arguments(run)
    run.add_argument("--op", default="put", metavar="MIX",
                     help=f"an operation or a weighted mix like put=80,get=20 "
                          f"(operations: {', '.join(Op)})")
    run.add_argument("--count", type=int, default=None,
                     help="measure this many operations instead of a duration (--duration "
                          "then caps the time)")
    run.add_argument("--clients", type=int, default=64)
    run.add_argument("--key-space", type=int, default=10_000, help="distinct keys")
    run.add_argument("--batch-size", type=int, default=None, metavar="B",
                     help="puts of distinct keys per request, for --target concord-batch "
                          "(default 64)")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--format", choices=("table", "json"), default="table")
    run.add_argument("--save", type=Path, default=None, help="also write the JSON result here")
    run.set_defaults(func=bench_run)

    compare = actions.add_parser("compare", help="etcd and Concord side by side, one run")
    _add_load_arguments(compare)
    compare.add_argument("--systems", default=None,
                         help=f"comma-separated, from {', '.join(SYSTEMS)}; the first is the "
                              f"baseline (default {','.join(DEFAULT_SYSTEMS)}, without "
                              f"{etcd_go.SYSTEM_NAME} when Go or etcd's Go client sources "
                              f"are missing)")
    compare.add_argument("--batch-size", type=int, default=None, metavar="B",
                         help="puts per request of the concord-batch system (default 64); "
                              "it runs the put workloads only")
    compare.add_argument("--go-conns", type=int, default=None, metavar="M",
                         help=f"gRPC connections of the {etcd_go.SYSTEM_NAME} client (default "
                              f"one per {etcd_go.CLIENTS_PER_CONNECTION} clients)")
    compare.add_argument("--members", choices=("leader", "all"), default="leader",
                         help="send to the leader only, or spread clients over all members")
    compare.add_argument("--rounds", type=int, default=1, choices=range(1, MAX_ROUNDS + 1),
                         metavar="R",
                         help=f"run everything R times (1 to {MAX_ROUNDS}), alternating "
                              "which system goes first; the table pools the rounds and "
                              "each round's ratios follow it")
    compare.add_argument("--nodes", type=int, default=3, choices=range(1, 8), metavar="N")
    compare.add_argument("--etcd-binary", default="etcd")
    compare.add_argument("--etcd-port", type=int, default=23791, help="first etcd client port")
    compare.add_argument("--concord-port", type=int, default=27001,
                         help="first Concord client port (peer ports start 100 above)")
    compare.add_argument("--out", type=Path, default=None,
                         help="results directory (default: bench-results/<time>)")
    compare.add_argument("--keep-data", action="store_true",
                         help="keep the clusters' data directories under <out>/data")
    compare.set_defaults(func=bench_compare)


def _add_load_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=_positive_seconds, default=None,
                        help=f"measured seconds per workload (default 10, at most "
                             f"{MAX_DURATION_S:g})")
    parser.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds first")
    parser.add_argument("--processes", type=int, default=1,
                        help="client worker processes (clients are split among them)")
    parser.add_argument("--key-size", type=int, default=8, help="bytes")
    parser.add_argument("--value-size", type=int, default=256, help="bytes")
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 s, not {text}")
    return seconds


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _resolve_endpoints(target: str, endpoints: tuple[str, ...], leader_only: bool) -> tuple[
        str, ...]:
    if not leader_only:
        return endpoints
    return (asyncio.run(find_leader(make_target(target, b""), endpoints)),)


def bench_run(args: argparse.Namespace) -> int:
    default = DEFAULT_ENDPOINTS.get(args.target) or os.environ.get("CONCORD_ENDPOINTS",
                                                                    CONCORD_DEFAULT_ENDPOINT)
    endpoints = tuple(e.strip().rstrip("/") for e in (args.endpoints or default).split(",")
                      if e.strip())
    duration_s = args.duration or (MAX_DURATION_S if args.count else 10.0)
    try:
        workload = Workload(
            target=args.target, endpoints=endpoints, mix=parse_mix(args.op),
            clients=args.clients, processes=args.processes, duration_s=duration_s,
            count=args.count, warmup_s=args.warmup, key_size_bytes=args.key_size,
            value_size_bytes=args.value_size, key_space=args.key_space,
            request_timeout_s=args.timeout, seed=args.seed, batch_size=args.batch_size)
    except ValueError as exc:
        print(f"concord bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        unreachable = asyncio.run(unreachable_endpoints(workload.endpoints))
        if unreachable:
            raise BenchError("no answer from " + "; ".join(
                f"{endpoint} ({reason})" for endpoint, reason in unreachable.items()))
        workload = replace(workload, endpoints=_resolve_endpoints(
            workload.target, workload.endpoints, args.leader_only))
        result = run_workload(workload)
    except (BenchError, LookupError) as exc:
        print(f"concord bench: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("concord bench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    document = json.dumps(result.to_json(), indent=2)
    if args.save is not None:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(document + "\n")
    print(document if args.format == "json" else render_result(result))
    if result.total().succeeded == 0:
        print("concord bench: no operation succeeded", file=sys.stderr)
        return EXIT_FAILED
    return 0


# --- the side-by-side run ------------------------------------------------------------------


@dataclass(slots=True)
class EtcdCluster:
    """A local etcd cluster of ``size`` members on loopback, each in its own session."""

    binary: str
    data_dir: Path
    size: int = 3
    base_client_port: int = 23791
    peer_port_offset: int = PEER_PORT_OFFSET
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(f"http://127.0.0.1:{self.base_client_port + i}" for i in range(self.size))

    def _peer_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.base_client_port + self.peer_port_offset + i}"

    def start(self) -> None:
        assert not self.processes, "already started"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        initial = ",".join(f"e{i + 1}={self._peer_url(i)}" for i in range(self.size))
        for i, client_url in enumerate(self.endpoints):
            name = f"e{i + 1}"
            with (self.data_dir / f"{name}.log").open("ab") as log:
                self.processes.append(subprocess.Popen(
                    [self.binary, "--name", name, "--data-dir", str(self.data_dir / name),
                     "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                     "--listen-peer-urls", self._peer_url(i),
                     "--initial-advertise-peer-urls", self._peer_url(i),
                     "--initial-cluster", initial, "--initial-cluster-state", "new",
                     "--initial-cluster-token", ETCD_CLUSTER_TOKEN,
                     "--logger", "zap", "--log-level", "warn"],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    async def wait_ready(self, timeout_s: float = CLUSTER_READY_TIMEOUT_S) -> None:
        """Until every member's /health says healthy (it has a leader)."""
        deadline = time.monotonic() + timeout_s
        pending = set(self.endpoints)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
            while pending:
                for process in self.processes:
                    if process.poll() is not None:
                        raise BenchError(f"etcd exited with status {process.returncode}; see "
                                         f"{self.data_dir}/*.log (kept with --keep-data)")
                for endpoint in sorted(pending):
                    try:
                        async with session.get(f"{endpoint}/health") as response:
                            document = await response.json(content_type=None)
                            if response.status == 200 and document.get("health") == "true":
                                pending.discard(endpoint)
                    except (aiohttp.ClientError, TimeoutError, ValueError):
                        pass
                if pending:
                    if time.monotonic() > deadline:
                        raise BenchError(f"etcd not healthy after {timeout_s:.0f} s: "
                                         f"{', '.join(sorted(pending))}")
                    await asyncio.sleep(0.2)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def _running_etcd(binary: str, data_dir: Path, size: int, port: int) -> Iterator[
        tuple[str, ...]]:
    resolved = shutil.which(binary)
    if resolved is None:
        raise BenchError(f"{binary} not found: install Debian's etcd-server "
                         f"(scripts/bench-vs-etcd.sh does)")
    cluster = EtcdCluster(resolved, data_dir, size, port)
    print(f"starting a {size}-member etcd on 127.0.0.1:{port}-{port + size - 1}",
          file=sys.stderr, flush=True)
    try:
        cluster.start()
        asyncio.run(cluster.wait_ready())
        yield cluster.endpoints
    finally:
        cluster.stop()


@contextmanager
def _running_concord(data_dir: Path, size: int, port: int) -> Iterator[tuple[str, ...]]:
    cluster = LocalCluster(data_dir, size=size, base_client_port=port,
                           base_peer_port=port + PEER_PORT_OFFSET, cluster_id="concord-bench",
                           fsync=True, log_to_files=True)
    print(f"starting a {size}-node Concord on 127.0.0.1:{port}-{port + size - 1} "
          f"({build_description()})", file=sys.stderr, flush=True)
    try:
        cluster.start()
        try:
            asyncio.run(cluster.wait_ready(timeout_s=CLUSTER_READY_TIMEOUT_S))
        except (RuntimeError, TimeoutError) as error:
            raise BenchError(f"Concord did not start: {error}; its logs are under {data_dir} "
                             "(kept with --keep-data)") from None
        yield tuple(cluster.endpoints)
    finally:
        cluster.stop(STOP_TIMEOUT_S)


def _run_cases(system: str, endpoints: tuple[str, ...], args: argparse.Namespace,
               into: dict[str, dict[str, list[BenchResult]]], go_binary: Path | None,
               round_label: str = "") -> None:
    """Every compare case against ``system``, each result appended to its list in ``into``;
    ``etcd-go`` runs the Go client (``go_binary``) against etcd, the others the Python load
    generator."""
    in_go = system == etcd_go.SYSTEM_NAME
    if args.members == "leader":
        endpoints = _resolve_endpoints(_target_name(system), endpoints, leader_only=True)
    for case, workload in _case_workloads(system, endpoints, args):
        label = f"{system}: {case.name}{round_label}"
        if in_go:
            assert go_binary is not None
            connections = min(case.clients, args.go_conns or etcd_go.default_connections(
                case.clients))
            result = etcd_go.run(go_binary, workload, connections, label=label)
        else:
            result = run_workload(workload, label=label)
        total = result.total()
        print(f"{label}: {total.throughput_ops_per_s:,.0f} ops/s, "
              f"p50 {total.latency.p50_ms:.2f} ms, p99 {total.latency.p99_ms:.2f} ms, "
              f"{total.failed:,} errors", file=sys.stderr, flush=True)
        into.setdefault(case.name, {}).setdefault(system, []).append(result)


def _case_workloads(system: str, endpoints: tuple[str, ...],
                    args: argparse.Namespace) -> list[tuple[CompareCase, Workload]]:
    """The compare cases ``system`` runs, each with its workload (``ValueError`` when the
    arguments break a workload's bounds). concord-batch and concord-dkv only put: their get
    rows stay empty."""
    in_go = system == etcd_go.SYSTEM_NAME
    target = _target_name(system)
    supported = make_target(target, b"").ops
    cases = []
    for case in COMPARE_CASES:
        if case.op not in supported:
            continue
        workload = Workload(
            target=target, endpoints=endpoints, mix=((case.op, 1),), clients=case.clients,
            processes=1 if in_go else min(args.processes, case.clients),
            duration_s=args.duration or 10.0, warmup_s=args.warmup,
            key_size_bytes=args.key_size, value_size_bytes=args.value_size,
            request_timeout_s=args.timeout)
        if workload.batching:
            workload = replace(workload, batch_size=args.batch_size)
        cases.append((case, workload))
    return cases


def _target_name(system: str) -> str:
    """The load generator's target for ``system``: etcd-go runs against the etcd target's
    cluster and keys (its own client does the sending)."""
    return "etcd" if system == etcd_go.SYSTEM_NAME else system


def _busy_cluster_ports(systems: Sequence[str], args: argparse.Namespace) -> list[int]:
    """The client and peer ports of the clusters ``systems`` need that are already held."""
    bases = {args.etcd_port if system in ETCD_SYSTEMS else args.concord_port
             for system in systems}
    return busy_ports(sorted({base + offset + i for base in bases
                              for offset in (0, PEER_PORT_OFFSET) for i in range(args.nodes)}))


def _chosen_systems(text: str | None) -> list[str]:
    """The ``--systems`` list, or the default one less ``etcd-go`` when the Go client can
    not be built here (said in one line)."""
    if text is not None:
        return [s.strip() for s in text.split(",") if s.strip()]
    reason = etcd_go.unavailable_reason()
    if reason is None:
        return list(DEFAULT_SYSTEMS)
    print(f"concord bench: skipping the {etcd_go.SYSTEM_NAME} column: {reason}",
          file=sys.stderr)
    return [s for s in DEFAULT_SYSTEMS if s != etcd_go.SYSTEM_NAME]


def bench_compare(args: argparse.Namespace) -> int:
    systems = _chosen_systems(args.systems)
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems or len(set(systems)) != len(systems):
        print(f"concord bench: --systems takes distinct systems from {', '.join(SYSTEMS)}",
              file=sys.stderr)
        return EXIT_USAGE
    if args.go_conns is not None and args.go_conns < 1:
        print("concord bench: --go-conns must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        for system in systems:
            _case_workloads(system, ("http://127.0.0.1:1",), args)  # their bounds, up front
    except ValueError as exc:
        print(f"concord bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    busy = _busy_cluster_ports(systems, args)
    if busy:
        print(f"concord bench: ports in use: {', '.join(map(str, busy))}; choose others with "
              f"--etcd-port and --concord-port (each cluster takes {args.nodes} client ports "
              f"from there and {args.nodes} peer ports from {PEER_PORT_OFFSET} above)",
              file=sys.stderr)
        return EXIT_FAILED
    out: Path = args.out or Path("bench-results") / time.strftime("%Y%m%d-%H%M%S")
    made_out = not out.exists()  # made here to check it can be written: removed if unused
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"concord bench: cannot write the results to {out}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    data_dir = (out / "data").resolve()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    results: dict[str, dict[str, list[BenchResult]]] = {}
    completed = 0  # rounds run to the end
    failure: tuple[int, str] | None = None  # exit status, message
    try:
        go_binary = etcd_go.ensure_binary() if etcd_go.SYSTEM_NAME in systems else None
        for round_index in range(args.rounds):
            _run_round(round_index, systems, data_dir, args, results, go_binary)
            completed += 1
    except KeyboardInterrupt:
        failure = (EXIT_INTERRUPTED, "interrupted; everything it started is stopped")
    except (BenchError, LookupError, ValueError) as exc:
        failure = (EXIT_FAILED, str(exc))
    finally:
        if not args.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
    if failure is not None:
        print(f"concord bench: {failure[1]}", file=sys.stderr)
        if completed == 0:
            if made_out:
                with suppress(OSError):
                    out.rmdir()  # only if empty: --keep-data keeps the clusters' data there
            return failure[0]
        print(f"concord bench: saving the {completed} complete round(s) of {args.rounds}",
              file=sys.stderr)
    comparisons = [Comparison.of_rounds(name, {s: results[name][s][:completed] for s in systems
                                               if s in results.get(name, {})})
                   for name in (case.name for case in COMPARE_CASES)]
    _save_comparison(out, comparisons, systems, args, completed)
    return 0 if failure is None else failure[0]


def _run_round(round_index: int, systems: Sequence[str], data_dir: Path,
               args: argparse.Namespace, into: dict[str, dict[str, list[BenchResult]]],
               go_binary: Path | None) -> None:
    """One round: each cluster started fresh in turn and every case run against its systems.
    Odd rounds take the clusters in the reverse order, so neither system always runs on the
    machine as the other left it."""
    groups = _system_groups(systems)
    if round_index % 2:
        groups.reverse()
    several = args.rounds > 1
    round_dir = data_dir / f"round-{round_index + 1}" if several else data_dir
    round_label = f" (round {round_index + 1}/{args.rounds})" if several else ""
    for group in groups:
        if group[0] in ETCD_SYSTEMS:
            running = _running_etcd(args.etcd_binary, round_dir / "etcd", args.nodes,
                                    args.etcd_port)
        else:
            running = _running_concord(round_dir / "concord", args.nodes, args.concord_port)
        with running as endpoints:
            for system in group:
                _run_cases(system, endpoints, args, into, go_binary, round_label)
    if several and not args.keep_data:
        shutil.rmtree(round_dir, ignore_errors=True)


def _system_groups(systems: Sequence[str]) -> list[list[str]]:
    """The etcd systems together (they share one etcd cluster), then the Concord targets
    together (they share one Concord cluster), each in the order given."""
    etcd = [s for s in systems if s in ETCD_SYSTEMS]
    concord = [s for s in systems if s not in ETCD_SYSTEMS]
    return [group for group in (etcd, concord) if group]


def _save_comparison(out: Path, comparisons: list[Comparison], systems: list[str],
                     args: argparse.Namespace, rounds: int) -> None:
    baseline = systems[0]
    compiled = compiled_modules()
    table = render_comparison(comparisons, systems)
    title = (f"Concord vs {baseline}: {args.nodes} nodes on loopback, fsync on, "
             f"{args.key_size}-byte keys, {args.value_size}-byte values, "
             f"{args.duration or 10.0:g} s per workload, clients sent to {args.members} "
             f"member(s), {args.processes} client process(es)")
    if rounds > 1:
        title += f"; {rounds} rounds, alternating which system went first, pooled"
    if rounds < args.rounds:
        title += f" (stopped after {rounds} of the {args.rounds} rounds asked for)"
    if any(system not in ETCD_SYSTEMS for system in systems):
        title += f"; Concord {build_description(compiled)}"  # the nodes run this build
    if etcd_go.SYSTEM_NAME in systems:
        title += (f"; {etcd_go.SYSTEM_NAME}: etcd's Go client (gRPC), "
                  + (f"{args.go_conns} connection(s)" if args.go_conns else
                     f"one connection per {etcd_go.CLIENTS_PER_CONNECTION} clients"))
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "title": title, "baseline": baseline, "systems": systems,
        "started_by": " ".join(sys.argv),
        "concord_build": {"compiled_modules": list(compiled)},
        "workloads": [{"name": c.workload,
                       "results": {s: r.to_json() for s, r in c.results.items()},
                       **({"rounds": {s: [r.to_json() for r in runs]
                                      for s, runs in c.rounds.items()}} if c.rounds else {})}
                      for c in comparisons],
    }
    by_round = render_round_ratios(comparisons, systems)
    if by_round:
        table += f"\n\n{by_round}"
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "table.md").write_text(f"{title}\n\n{table}\n")
    (out / "chart.html").write_text(render_chart_html(comparisons, systems, title, table))
    print(f"\n{title}\n\n{table}\n\nsaved {out / 'results.json'}, {out / 'table.md'}, "
          f"{out / 'chart.html'}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m concord.bench_cli run|compare ...``, the same as ``concord bench``."""
    parser = argparse.ArgumentParser(prog="concord")
    add_bench_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
