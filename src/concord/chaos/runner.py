"""One chaos run: workload and nemesis together, heal, recover, final reads, check, report.

``exercise`` drives a running cluster through any ``ClusterControl``: it waits until the
cluster is ready, plays the seeded schedule while the workload runs for the duration, heals
every fault, waits for every node to be ready again, and makes the final reads (for the
dkv-set workload, after waiting for the quorum store's replicas to converge).
``check_and_report`` runs the checkers on the history and writes the report folder.
``run_local`` does both around a ``LocalCluster`` of its own (fault injection on) and stops
it afterwards, keeping the node logs in the report when the run is not valid.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from concord.chaos.checkers import (
    CheckerResult,
    Validity,
    check_counter,
    check_dkv_set,
    check_linearizable,
    check_nodes,
    check_recovery,
    check_set,
)
from concord.chaos.control import ClusterControl, LocalProcessControl
from concord.chaos.nemesis import (
    FaultEvent,
    FaultKind,
    Nemesis,
    Schedule,
    ScheduleSettings,
    build_schedule,
)
from concord.chaos.report import RunRecord, RunSummary, write_report
from concord.chaos.workloads import (
    RAFT_WORKLOADS,
    READ_CONSISTENCIES,
    ChaosHistory,
    Keys,
    Workload,
    WorkloadKind,
    WorkloadSettings,
)
from concord.cluster import LocalCluster, free_cluster_ports

NS_PER_S: Final = 1_000_000_000
STOP_TIMEOUT_S: Final = 15.0


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How to run: cluster size, duration, seed, workloads, nemeses and bounds."""

    seed: int
    workloads: tuple[WorkloadKind, ...]
    nemesis: tuple[FaultKind, ...]
    nodes: int = 3
    duration_s: float = 60.0
    clients: int = 10
    max_ops: int | None = None
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    op_timeout_s: float = 1.5
    check_timeout_s: float = 120.0
    recovery_timeout_s: float = 30.0
    raft_tick_ms: int | None = None  # None: the node default
    read_consistency: str = "linearizable"  # of the register reads; serializable is unsafe
    convergence_timeout_s: float = 60.0  # of the quorum store's replicas after the final heal

    def __post_init__(self) -> None:
        assert self.duration_s > 0 and self.clients >= len(self.workloads) >= 1
        assert self.nemesis, "at least one fault kind"
        if not self.convergence_timeout_s > 0:
            raise ValueError(f"convergence_timeout_s: expected a positive number of seconds, "
                             f"got {self.convergence_timeout_s!r}")
        if self.read_consistency not in READ_CONSISTENCIES:
            raise ValueError(f"read_consistency: expected one of "
                             f"{', '.join(READ_CONSISTENCIES)}, got {self.read_consistency!r}")

    @property
    def unsafe(self) -> tuple[str, ...]:
        """Why the run is unsafe on purpose (its checkers are expected to find violations);
        empty for a run that checks Concord's promises."""
        if self.read_consistency == "serializable" and WorkloadKind.REGISTER in self.workloads:
            return ("register reads are serializable: each node answers from its own state, "
                    "so stale reads are expected",)
        return ()

    def to_json(self) -> dict[str, object]:
        return {
            "seed": self.seed, "nodes": self.nodes, "duration_s": self.duration_s,
            "workloads": [w.label for w in self.workloads],
            "nemesis": [k.label for k in self.nemesis], "clients": self.clients,
            "max_ops": self.max_ops, "op_timeout_s": self.op_timeout_s,
            "check_timeout_s": self.check_timeout_s,
            "recovery_timeout_s": self.recovery_timeout_s, "raft_tick_ms": self.raft_tick_ms,
            "read_consistency": self.read_consistency,
            "convergence_timeout_s": self.convergence_timeout_s,
        }


@dataclass(frozen=True, slots=True)
class Exercise:
    """What happened during a run, before checking."""

    run_id: str
    keys: Keys
    schedule: Schedule
    history: ChaosHistory
    fault_events: tuple[FaultEvent, ...]
    crashed: tuple[str, ...]
    ready_after_heal_s: float | None
    end_s: float


@dataclass(frozen=True, slots=True)
class RunResult:
    report_dir: Path
    summary: RunSummary
    results: tuple[CheckerResult, ...]
    fault_events: tuple[FaultEvent, ...]


def new_run_id(seed: int) -> str:
    """``<local time>-<seed>``: names the report folder and the run's keys."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{seed}"


def report_folder(root: Path, run_id: str) -> Path:
    """``root/chaos-<run id>``, with a numeric suffix if that folder exists already."""
    folder = root / f"chaos-{run_id}"
    suffix = 2
    while folder.exists():
        folder = root / f"chaos-{run_id}-{suffix}"
        suffix += 1
    return folder


async def exercise(control: ClusterControl, settings: RunSettings, run_id: str,
                   on_event: Callable[[FaultEvent], None] | None = None) -> Exercise:
    """Run the workload under the nemesis on a running cluster (see the module docstring)."""
    await control.wait_ready(settings.recovery_timeout_s)
    schedule = build_schedule(settings.seed, control.node_ids, settings.duration_s,
                              settings.nemesis, settings.schedule)
    keys = Keys(run_id)
    history = ChaosHistory()
    nemesis = Nemesis(control, history.now_ns, on_event)
    workload = Workload(control.endpoints, WorkloadSettings(
        kinds=settings.workloads, clients=settings.clients, duration_s=settings.duration_s,
        seed=settings.seed, keys=keys, max_ops=settings.max_ops,
        op_timeout_s=settings.op_timeout_s, read_consistency=settings.read_consistency,
        dkv_convergence_timeout_s=settings.convergence_timeout_s,
    ), history)
    stop = asyncio.Event()
    faults = asyncio.create_task(nemesis.run(schedule, stop))
    try:
        await workload.run(stop)
    finally:
        stop.set()
        await faults
        await nemesis.heal()
    healed_ns = history.now_ns()
    try:
        ready_after_s: float | None = await control.wait_ready(settings.recovery_timeout_s)
    except TimeoutError:
        ready_after_s = None
    await workload.final_reads()
    await workload.dkv_final(healed_ns)
    return Exercise(run_id, keys, schedule, history, tuple(nemesis.events),
                    tuple(nemesis.crashed), ready_after_s, history.now_ns() / NS_PER_S)


def check_and_report(done: Exercise, settings: RunSettings, folder: Path,
                     description: dict[str, object]) -> RunResult:
    """Run every checker that applies, then write the report folder."""
    ops = done.history.operations()
    results = []
    if set(RAFT_WORKLOADS) & set(settings.workloads):
        results.append(check_linearizable(ops, timeout_s=settings.check_timeout_s,
                                          clock=time.monotonic))
    if WorkloadKind.SET in settings.workloads:
        results.append(check_set(ops, done.keys.set_prefix))
    if WorkloadKind.COUNTER in settings.workloads:
        results.append(check_counter(ops, done.keys.counter))
    if WorkloadKind.DKV_SET in settings.workloads:
        results.append(check_dkv_set(ops, done.keys.dkv_prefix))
    results.append(check_nodes(done.crashed))
    results.append(check_recovery(done.ready_after_heal_s, settings.recovery_timeout_s))

    def workload_of(key: str) -> str:
        kind = done.keys.workload_of(key)
        return kind.label if kind is not None else "other"

    record = RunRecord(
        title=f"Concord chaos run {done.run_id}",
        settings={**settings.to_json(), **description, "run_id": done.run_id},
        schedule=done.schedule, fault_events=done.fault_events,
        history_jsonl=done.history.to_jsonl(), operations=ops,
        errors=done.history.errors(), results=results,
        workload_of=workload_of, duration_s=done.end_s, unsafe=settings.unsafe,
    )
    summary = write_report(folder, record)
    return RunResult(folder, summary, tuple(results), done.fault_events)


def run_local(settings: RunSettings, report_root: Path, data_dir: Path | None = None,
              on_event: Callable[[FaultEvent], None] | None = None) -> RunResult:
    """Start a local cluster (in ``data_dir``, else a temporary directory), run, check,
    report, stop the cluster. Node logs are copied into the report unless the run is valid."""
    if data_dir is not None and data_dir.exists() and any(data_dir.iterdir()):
        raise ValueError(f"{data_dir} is not empty: a chaos run needs a fresh data directory")
    run_id = new_run_id(settings.seed)
    folder = report_folder(report_root, run_id)
    with tempfile.TemporaryDirectory(prefix="concord-chaos-") as scratch:
        root = data_dir if data_dir is not None else Path(scratch)
        client_base, peer_base = free_cluster_ports(settings.nodes)
        extra: dict[str, dict[str, object]] = {}
        if settings.raft_tick_ms is not None:
            extra["raft"] = {"tick_ms": settings.raft_tick_ms}
        cluster = LocalCluster(root, size=settings.nodes, base_client_port=client_base,
                               base_peer_port=peer_base, cluster_id=f"chaos-{run_id}",
                               fault_injection=True, extra_settings=extra, log_to_files=True)
        control = LocalProcessControl(cluster)

        async def drive() -> Exercise:
            try:
                return await exercise(control, settings, run_id, on_event)
            finally:
                await control.close()

        try:
            cluster.start()
            done = asyncio.run(drive())
        finally:
            cluster.stop(STOP_TIMEOUT_S)
        description: dict[str, object] = {
            "cluster": "local processes", "data_dir": str(cluster.data_dir),
            "client_ports": f"{client_base}-{client_base + settings.nodes - 1}",
        }
        result = check_and_report(done, settings, folder, description)
        if result.summary.validity is not Validity.VALID:
            logs = folder / "nodes"
            logs.mkdir(exist_ok=True)
            for node in cluster.nodes.values():
                if node.log_path is not None and node.log_path.exists():
                    shutil.copy(node.log_path, logs / node.log_path.name)
    return result
