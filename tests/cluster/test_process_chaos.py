"""A short chaos run on a local cluster of real node processes (no Docker needed).

Three ``concord serve`` processes with fault injection on; register and set workloads for
15 s under a seeded mixed nemesis (partitions through the peer-link fault hook, SIGSTOP
pauses, application-level delay, leadership transfer); heal, final reads, every checker.
The same history, altered by one lost add or one stale read, must then fail the checkers:
they are shown to see real violations on a real history.

The one-shot commands (``concord chaos partition|kill-leader|heal|status``) are run against a
cluster started elsewhere, found through its ``cluster.json``.

The run includes kill -9 of nodes: a write sent to a leader that is then killed can commit
after the client lost its answer, so such a write must be reported as *indefinite*. (The
kill nemesis found exactly that bug: aiohttp's silent re-send of a PUT over a fresh
connection made a refused re-send look as if nothing was ever sent; the client and the
forwarder now switch that re-send off.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from concord.chaos.checkers import Validity, check_linearizable, check_set
from concord.chaos.control import LocalProcessControl, ManifestControl
from concord.chaos.nemesis import ScheduleSettings, parse_nemesis
from concord.chaos.runner import (
    Exercise,
    RunResult,
    RunSettings,
    check_and_report,
    exercise,
)
from concord.chaos.workloads import WorkloadKind
from concord.chaos_cli import main as chaos_main
from concord.cluster import LocalCluster, free_cluster_ports
from concord.sim.history import Operation, OpStatus

from .conftest import log_tails

pytestmark = pytest.mark.cluster

# the schedule of seed 309: kill-one, transfer-leader, partition-halves, pause-one, delay,
# pause-leader
SEED = 309
NEMESIS = "kill,pause,partition,net,transfer"
DURATION_S = 15.0
MIN_OK_OPS = 300  # about 2000 on an idle 2-core machine


@dataclass(frozen=True, slots=True)
class ChaosOutcome:
    done: Exercise
    result: RunResult
    terms_before: list[int]
    terms_after: list[int]
    logs: str


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosOutcome]:
    settings = RunSettings(
        seed=SEED, workloads=(WorkloadKind.REGISTER, WorkloadKind.SET),
        nemesis=parse_nemesis(NEMESIS, 3), duration_s=DURATION_S, clients=6,
        schedule=ScheduleSettings(quiet_mean_s=1.5, fault_mean_s=2.0, warmup_s=1.0),
        check_timeout_s=60.0,
    )
    client_base, peer_base = free_cluster_ports(3)
    cluster = LocalCluster(tmp_path_factory.mktemp("chaos-cluster"), base_client_port=client_base,
                           base_peer_port=peer_base, cluster_id="chaos-test",
                           fault_injection=True, log_to_files=True)
    control = LocalProcessControl(cluster)

    async def drive() -> tuple[Exercise, list[int], list[int]]:
        try:
            await control.wait_ready(30.0)
            before = await control.statuses()
            done = await exercise(control, settings, f"test-{SEED}")
            after = await control.statuses()
        finally:
            await control.close()
        return done, [s["term"] for s in before.values() if s is not None], \
            [s["term"] for s in after.values() if s is not None]

    try:
        cluster.start()
        done, terms_before, terms_after = asyncio.run(drive())
    finally:
        cluster.stop(10.0)
    folder = tmp_path_factory.mktemp("reports") / "chaos-test"
    result = check_and_report(done, settings, folder, {"cluster": "local processes (test)"})
    yield ChaosOutcome(done, result, terms_before, terms_after, log_tails(cluster))


def test_a_short_mixed_chaos_run_passes_every_checker(chaos: ChaosOutcome) -> None:
    verdicts = "\n".join(f"{r.name}: {r.validity.label}: {r.summary}\n{r.details}"
                         for r in chaos.result.results)
    assert chaos.result.summary.validity is Validity.VALID, (
        f"{chaos.result.summary.line()}\n{verdicts}\n{chaos.logs}")
    assert [r.name for r in chaos.result.results] == [
        "linearizable", "set", "nodes", "recovery"]


def test_the_faults_were_injected_and_the_workload_made_progress(chaos: ChaosOutcome) -> None:
    planned = chaos.done.schedule.windows
    started = [e for e in chaos.done.fault_events if e.action == "start"]
    assert [e.kind for e in started] == [w.kind.label for w in planned]
    assert {w.kind.family for w in planned} == {"kill", "partition", "pause", "net", "transfer"}
    assert not [e for e in chaos.done.fault_events if e.action in ("error", "skip")]
    healed = [e.window for e in chaos.done.fault_events if e.action == "heal"]
    assert healed == [w.index for w in planned if w.kind.family != "transfer"] + [-1]
    # Pausing or isolating the leader and handing leadership over force new terms.
    assert max(chaos.terms_after) >= max(chaos.terms_before) + 2
    summary = chaos.result.summary
    assert summary.ok >= MIN_OK_OPS, summary.line()
    assert summary.faults == len(planned)
    assert sorted(p.name for p in chaos.result.report_dir.iterdir()) == [
        "history.jsonl", "report.html", "schedule.json", "summary.txt", "verdicts.json"]


def _set_listing(ops: tuple[Operation, ...]) -> Operation:
    return next(op for op in reversed(ops) if op.f == "list" and op.status is OpStatus.OK)


def test_the_set_checker_sees_an_acknowledged_add_removed_from_the_real_history(
        chaos: ChaosOutcome) -> None:
    ops = chaos.done.history.operations()
    prefix = chaos.done.keys.set_prefix
    assert check_set(ops, prefix).validity is Validity.VALID
    listing = _set_listing(ops)
    acknowledged = {op.key for op in ops if op.f == "cas" and op.key.startswith(prefix)
                    and op.status is OpStatus.OK and op.output is True}
    assert isinstance(listing.output, tuple)
    victim = next(key for key in listing.output if key in acknowledged)
    lossy = dataclasses.replace(listing, output=tuple(k for k in listing.output if k != victim))
    result = check_set([lossy if op is listing else op for op in ops], prefix)
    assert result.validity is Validity.INVALID
    assert result.details["lost"] == [victim]


def _stale_read(ops: tuple[Operation, ...], prefix: str) -> Operation:
    """A read, after the whole history, of a register value that an acknowledged write
    replaced: values are unique, so nothing can have written it back."""
    writes = [op for op in ops if op.key.startswith(prefix) and op.status is OpStatus.OK
              and (op.f == "write" or (op.f == "cas" and op.output is True))]
    by_key: dict[str, list[Operation]] = {}
    for op in writes:
        by_key.setdefault(op.key, []).append(op)
    for key, key_writes in by_key.items():
        first = key_writes[0]
        later = [op for op in key_writes[1:] if first.complete_time is not None
                 and op.invoke_time > first.complete_time]
        if later:
            match first.input:
                case bytes() as value:  # a write
                    pass
                case (_, bytes() as value):  # a cas that took effect
                    pass
                case other:
                    raise AssertionError(f"unexpected input {other!r}")
            end = max(op.complete_time or op.invoke_time for op in ops) + 1
            return Operation(max(op.op_id for op in ops) + 1, 10**6, "read", key, None,
                             value, end, end + 1, OpStatus.OK)
    raise AssertionError("no register key with two acknowledged writes in sequence")


def test_the_linearizability_checker_sees_a_stale_read_added_to_the_real_history(
        chaos: ChaosOutcome) -> None:
    ops = chaos.done.history.operations()
    stale = _stale_read(ops, f"{chaos.done.keys.prefix}r/")
    result = check_linearizable([*ops, stale], timeout_s=60.0, clock=time.monotonic)
    assert result.validity is Validity.INVALID, result.summary
    assert stale.key in result.summary


def _pids(data_dir: Path) -> dict[str, int]:
    manifest = json.loads((data_dir / "cluster.json").read_text())
    return {node["id"]: node["pid"] for node in manifest["nodes"]}


def _faults(data_dir: Path) -> dict[str, str | None]:
    control = ManifestControl(data_dir)

    async def read() -> dict[str, str | None]:
        try:
            return {n: await control.faults(n) for n in control.node_ids}
        finally:
            await control.close()

    return asyncio.run(read())


def test_one_shot_commands_drive_a_cluster_started_elsewhere(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    client_base, peer_base = free_cluster_ports(3)
    cluster = LocalCluster(tmp_path / "cluster", base_client_port=client_base,
                           base_peer_port=peer_base, fault_injection=True, log_to_files=True)
    cluster.start()
    data = cluster.data_dir
    original = _pids(data)
    try:
        asyncio.run(cluster.wait_ready(timeout_s=30.0))
        assert chaos_main(["chaos", "partition", "--isolate", "n2", "--data-dir", str(data)]) == 0
        assert _faults(data) == {"n1": "blocked_peers=['n2']",
                                 "n2": "blocked_peers=['n1', 'n3']", "n3": "blocked_peers=['n2']"}
        assert chaos_main(["chaos", "heal", "--data-dir", str(data)]) == 0
        assert _faults(data) == {"n1": "none", "n2": "none", "n3": "none"}

        assert chaos_main(["chaos", "kill-leader", "--data-dir", str(data)]) == 0
        killed = [n for n in original if not cluster.nodes[n].is_running()]
        assert len(killed) == 1
        assert chaos_main(["chaos", "heal", "--data-dir", str(data)]) == 0
        restarted = _pids(data)
        assert restarted[killed[0]] != original[killed[0]]
        control = ManifestControl(data)

        async def ready() -> float:
            try:
                return await control.wait_ready(30.0)
            finally:
                await control.close()

        asyncio.run(ready())
        capsys.readouterr()
        assert chaos_main(["chaos", "status", "--data-dir", str(data)]) == 0
        roles = [line.split()[1] for line in capsys.readouterr().out.splitlines()]
        assert sorted(roles) == ["follower", "follower", "leader"]
    finally:
        cluster.stop()
        for node_id, pid in _pids(data).items():
            if pid != original[node_id]:  # started by `chaos heal`, not by the cluster
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
