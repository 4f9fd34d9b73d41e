"""The checkers catch a real bug on a real cluster: serializable reads served as if they were
linearizable.

Three ``concord serve`` processes with fault injection on. The scenario, recorded through the
chaos workload's own clients and history (``Workload.client``, ``read``, ``write``): write
every key through the leader, let a follower apply it and read it there, cut the follower off
with the peer-link fault hook (``isolate``, both sides), write every key again through the
leader, then read every key through the isolated follower.

- With ``read_consistency = "serializable"`` the follower answers from its own state: the
  first values, which acknowledged writes replaced before the reads began. The
  linearizability checker must call the history invalid, naming the keys.
- With ``"linearizable"`` (the default) the follower cannot serve the read itself (it
  forwards it to the leader, or the client moves on to the leader): every read returns the
  second value and the same checker calls the history valid.

Not shown here: lost writes in the unsafe no-fsync mode. It hands every write to the
operating system without fsync, so ``kill -9`` of every node loses nothing (the page cache
survives the processes); only a machine crash or power loss would, which a test on one
machine cannot cause.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import pytest

from concord.chaos.checkers import CheckerResult, Validity, check_linearizable
from concord.chaos.control import LocalProcessControl
from concord.chaos.nemesis import Nemesis, isolate
from concord.chaos.workloads import ChaosHistory, Keys, Workload, WorkloadKind, WorkloadSettings
from concord.cluster import LocalCluster, free_cluster_ports
from concord.sim.history import OpStatus, Value

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

KEYS: Final = 3
OP_TIMEOUT_S: Final = 1.0
READY_TIMEOUT_S: Final = 30.0
CATCH_UP_TIMEOUT_S: Final = 10.0
CHECK_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class Scenario:
    """What one run of the scenario recorded and observed."""

    history: ChaosHistory
    first: dict[str, bytes]  # key -> the value written before the follower was cut off
    second: dict[str, bytes]  # key -> the value written while it was
    reads: list[tuple[OpStatus, Value]]  # through the isolated follower, key by key
    follower: str
    verdict: CheckerResult


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalProcessControl]:
    client_base, peer_base = free_cluster_ports(3)
    cluster = LocalCluster(tmp_path_factory.mktemp("unsafe-cluster"),
                           base_client_port=client_base, base_peer_port=peer_base,
                           cluster_id="unsafe-test", fault_injection=True,
                           extra_settings={"raft": {"tick_ms": 20}}, log_to_files=True)
    try:
        cluster.start()
        yield LocalProcessControl(cluster)
    finally:
        cluster.stop(10.0)


async def _wait_caught_up(control: LocalProcessControl, follower: str, leader: str) -> None:
    """Until ``follower`` has applied what ``leader`` has committed now."""
    leader_status = await control.status(leader)
    assert leader_status is not None, f"leader {leader} did not answer /v1/status"
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while True:
        status = await control.status(follower)
        if status is not None and status["applied_index"] >= leader_status["commit_index"]:
            return
        assert time.monotonic() < deadline, f"{follower} did not catch up with {leader}"
        await asyncio.sleep(0.02)


async def _scenario(control: LocalProcessControl, consistency: str) -> Scenario:
    """Run the scenario (module docstring) on its own keys; the control's HTTP session is
    closed at the end (it belongs to this event loop)."""
    try:
        return await _recorded(control, consistency)
    finally:
        await control.close()


async def _recorded(control: LocalProcessControl, consistency: str) -> Scenario:
    await control.wait_ready(READY_TIMEOUT_S)
    leader = await control.wait_leader(READY_TIMEOUT_S)
    assert leader is not None, "no leader"
    follower = next(n for n in control.node_ids if n != leader)
    history = ChaosHistory()
    keys = Keys(f"unsafe-{consistency}-{time.monotonic_ns()}")
    workload = Workload(control.endpoints, WorkloadSettings(
        kinds=(WorkloadKind.REGISTER,), clients=1, duration_s=60.0, seed=1, keys=keys,
        op_timeout_s=OP_TIMEOUT_S, read_consistency=consistency), history)
    writer = workload.client([control.client_url(leader)])
    reader = workload.client([control.client_url(follower), control.client_url(leader)])
    nemesis = Nemesis(control, history.now_ns)
    names = [keys.register(0, slot) for slot in range(KEYS)]
    first: dict[str, bytes] = {}
    second: dict[str, bytes] = {}
    try:
        for key in names:
            status, first[key] = await workload.write(writer, key)
            assert status is OpStatus.OK, history.errors()
        await _wait_caught_up(control, follower, leader)
        for key in names:  # the follower is up to date: any read is right
            assert await workload.read(reader, key) == (OpStatus.OK, first[key])
        cut = await nemesis.partition(isolate(control.node_ids, follower), (follower,))
        assert cut.action == "start"
        for key in names:
            status, second[key] = await workload.write(writer, key)
            assert status is OpStatus.OK, history.errors()
        reads = [await workload.read(reader, key) for key in names]
    finally:
        await writer.close()
        await reader.close()
        await nemesis.heal()
    await control.wait_ready(READY_TIMEOUT_S)
    verdict = check_linearizable(history.operations(), timeout_s=CHECK_TIMEOUT_S,
                                 clock=time.monotonic)
    return Scenario(history, first, second, reads, follower, verdict)


def test_serializable_reads_from_a_cut_off_follower_are_caught_as_not_linearizable(
        control: LocalProcessControl) -> None:
    scenario = asyncio.run(_scenario(control, "serializable"))
    # the follower really served the replaced values...
    assert scenario.reads == [(OpStatus.OK, scenario.first[k]) for k in scenario.first], (
        scenario.follower, scenario.reads)
    # ...and the checker, reading only the recorded history, says so (it stops at the first
    # bad key; each key's history on its own is bad too)
    assert scenario.verdict.validity is Validity.INVALID, scenario.verdict.summary
    ops = scenario.history.operations()
    for key in scenario.first:
        alone = check_linearizable([op for op in ops if op.key == key],
                                   timeout_s=CHECK_TIMEOUT_S, clock=time.monotonic)
        assert alone.validity is Validity.INVALID and key in alone.summary, alone.summary


def test_linearizable_reads_in_the_same_scenario_are_fresh_and_valid(
        control: LocalProcessControl) -> None:
    scenario = asyncio.run(_scenario(control, "linearizable"))
    assert scenario.reads == [(OpStatus.OK, scenario.second[k]) for k in scenario.second], (
        scenario.follower, scenario.reads, scenario.history.errors())
    assert scenario.verdict.validity is Validity.VALID, (
        f"{scenario.verdict.summary}\n{scenario.verdict.details}")
