"""A short chaos run of the quorum store (``/v1/dkv``) on a local cluster of real processes.

Three ``concord serve`` processes with fault injection on; the dkv-set workload (set-union
adds: read R=2, union the siblings, add a unique element, write back with the context, W=2)
for 20 s under a seeded schedule of partitions (through the peer-link fault hook, which cuts
the quorum store's peer messages too) and kills (a majority, then one node: SIGKILL, restart
on the same data). After the final heal every key must converge (every replica's copy the
same) and its R=N read must hold every acknowledged add and nothing never attempted. The
same history with one acknowledged add removed from a final read, or one element added to
it, must then fail the checker.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from concord.chaos.checkers import Validity, check_dkv_set
from concord.chaos.control import LocalProcessControl
from concord.chaos.nemesis import ScheduleSettings, parse_nemesis
from concord.chaos.runner import Exercise, RunResult, RunSettings, check_and_report, exercise
from concord.chaos.workloads import WorkloadKind
from concord.cluster import LocalCluster, free_cluster_ports
from concord.sim.history import Operation, OpStatus

from .conftest import log_tails

pytestmark = pytest.mark.cluster

# the schedule of seed 205: partition-halves, partition-bridge, partition-halves,
# kill-majority, kill-one. The kills come last: a partition opened within about 2.5 s of a
# kill's restart finds the restarted node not listening yet (the nemesis does not wait for
# it) and is an ``error`` instead of a fault.
SEED = 205
NEMESIS = "kill,partition"
DURATION_S = 20.0
CLIENTS = 4
MIN_OK_ADDS = 100  # about 1000 on an idle 2-core machine


@dataclass(frozen=True, slots=True)
class DkvChaos:
    done: Exercise
    result: RunResult
    logs: str


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DkvChaos]:
    settings = RunSettings(
        seed=SEED, workloads=(WorkloadKind.DKV_SET,), nemesis=parse_nemesis(NEMESIS, 3),
        duration_s=DURATION_S, clients=CLIENTS,
        schedule=ScheduleSettings(quiet_mean_s=1.5, fault_mean_s=2.0, warmup_s=1.0),
    )
    client_base, peer_base = free_cluster_ports(3)
    cluster = LocalCluster(tmp_path_factory.mktemp("dkv-chaos-cluster"),
                           base_client_port=client_base, base_peer_port=peer_base,
                           cluster_id="dkv-chaos-test", fault_injection=True, log_to_files=True)
    control = LocalProcessControl(cluster)

    async def drive() -> Exercise:
        try:
            return await exercise(control, settings, f"test-{SEED}")
        finally:
            await control.close()

    try:
        cluster.start()
        done = asyncio.run(drive())
    finally:
        cluster.stop(10.0)
    folder = tmp_path_factory.mktemp("reports") / "dkv-chaos-test"
    result = check_and_report(done, settings, folder, {"cluster": "local processes (test)"})
    yield DkvChaos(done, result, log_tails(cluster))


def test_a_short_dkv_chaos_run_loses_no_add_and_converges(chaos: DkvChaos) -> None:
    verdicts = "\n".join(f"{r.name}: {r.validity.label}: {r.summary}\n{r.details}"
                         for r in chaos.result.results)
    assert chaos.result.summary.validity is Validity.VALID, (
        f"{chaos.result.summary.line()}\n{verdicts}\n{chaos.logs}")
    assert [r.name for r in chaos.result.results] == ["dkv-set", "nodes", "recovery"]
    details = chaos.result.results[0].details
    keys = details["keys"]
    assert isinstance(keys, int) and keys >= 1
    convergence_s = details["convergence_s"]
    assert isinstance(convergence_s, dict) and len(convergence_s) == keys
    max_s = details["max_convergence_s"]
    assert isinstance(max_s, float) and 0 < max_s < chaos.done.end_s


def test_the_faults_were_injected_and_the_workload_made_progress(chaos: DkvChaos) -> None:
    planned = chaos.done.schedule.windows
    started = [e for e in chaos.done.fault_events if e.action == "start"]
    assert [e.kind for e in started] == [w.kind.label for w in planned]
    assert {w.kind.family for w in planned} == {"kill", "partition"}
    assert not [e for e in chaos.done.fault_events if e.action in ("error", "skip")]
    adds = [op for op in chaos.done.history.operations() if op.f == "add"]
    ok = sum(1 for op in adds if op.status is OpStatus.OK)
    assert ok >= MIN_OK_ADDS, chaos.result.summary.line()
    # a majority killed: some adds could not reach W = 2 replicas
    assert any(op.status is not OpStatus.OK for op in adds), chaos.result.summary.line()
    assert chaos.result.summary.faults == len(planned)


def _final_read(ops: tuple[Operation, ...]) -> Operation:
    return next(op for op in reversed(ops) if op.f == "read-union" and op.status is OpStatus.OK)


def test_the_checker_sees_a_lost_or_phantom_add_in_the_real_history(chaos: DkvChaos) -> None:
    ops = chaos.done.history.operations()
    prefix = chaos.done.keys.dkv_prefix
    assert check_dkv_set(ops, prefix).validity is Validity.VALID
    final = _final_read(ops)
    assert isinstance(final.output, tuple)
    acknowledged = {op.input for op in ops if op.f == "add" and op.key == final.key
                    and op.status is OpStatus.OK}
    victim = next(element for element in final.output
                  if isinstance(element, str) and element in acknowledged)
    lossy = dataclasses.replace(final, output=tuple(e for e in final.output if e != victim))
    result = check_dkv_set([lossy if op is final else op for op in ops], prefix)
    assert result.validity is Validity.INVALID
    assert result.details["lost"] == [f"{final.key} {victim}"]
    haunted = dataclasses.replace(final, output=(*final.output, "ghost"))
    result = check_dkv_set([haunted if op is final else op for op in ops], prefix)
    assert result.validity is Validity.INVALID
    assert result.details["phantom"] == [f"{final.key} ghost"]


def test_the_report_names_the_workload_and_the_checker(chaos: DkvChaos) -> None:
    folder: Path = chaos.result.report_dir
    assert "dkv-set=valid" in (folder / "summary.txt").read_text()
    page = (folder / "report.html").read_text()
    assert "dkv-set" in page and "read-union" in page and "converge" in page
