"""The chaos toolkit without a cluster: schedules, partition shapes, the nemesis executor on a
fake cluster, the set and counter checkers, history recording and the report folder.

Known answers: partition shapes worked out by hand (who may hear whom), checker verdicts on
hand-made histories whose validity follows from the definitions, and report files read back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from concord.chaos.checkers import (
    Validity,
    check_counter,
    check_dkv_set,
    check_linearizable,
    check_nodes,
    check_recovery,
    check_set,
    overall,
)
from concord.chaos.control import ClusterControl, ManifestControl
from concord.chaos.nemesis import (
    CLOCK_SKEW_MAX_MS,
    CLOCK_SKEW_MIN_MS,
    CLOCK_SKEW_STEP_MS,
    FAMILIES,
    FaultEvent,
    FaultKind,
    FaultWindow,
    Nemesis,
    ScheduleSettings,
    bridge,
    build_schedule,
    halves,
    isolate,
    parse_nemesis,
    ring,
    split,
)
from concord.chaos.report import RunRecord, drawn_windows, summarize, write_report
from concord.chaos.runner import RunSettings
from concord.chaos.workloads import (
    RAFT_WORKLOADS,
    ChaosHistory,
    Keys,
    WorkloadKind,
    WorkloadSettings,
    assign_clients,
    describe_error,
    dkv_status_of,
    parse_workloads,
    status_of,
    union_of,
)
from concord.client import ConcordClientError
from concord.dkv_client import DkvError
from concord.sim.history import Operation, OpStatus, Value, events_from_jsonl

OK, FAIL, INFO = OpStatus.OK, OpStatus.FAIL, OpStatus.INFO
NODES3 = ("n1", "n2", "n3")
NODES5 = ("n1", "n2", "n3", "n4", "n5")
_op_ids = itertools.count()


def op(f: str, key: str, value: Value, output: Value, start: int, end: int | None,
       status: OpStatus = OK, process: int = 0) -> Operation:
    return Operation(next(_op_ids), process, f, key, value, output, start, end, status)


# -- schedules ----------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    kinds = parse_nemesis("all", 5)
    first = build_schedule(42, NODES5, 300.0, kinds)
    assert first == build_schedule(42, NODES5, 300.0, kinds)
    assert first.to_json() == build_schedule(42, NODES5, 300.0, kinds).to_json()
    assert first.windows != build_schedule(43, NODES5, 300.0, kinds).windows


def test_schedule_windows_are_ordered_disjoint_and_well_formed() -> None:
    kinds = parse_nemesis("all", 5)
    settings = ScheduleSettings(quiet_mean_s=2.0, fault_mean_s=3.0, warmup_s=1.0)
    schedule = build_schedule(7, NODES5, 600.0, kinds, settings)
    assert len(schedule.windows) > 50
    assert {w.kind for w in schedule.windows} == set(kinds)  # 600 s draws every kind
    previous_end = settings.warmup_s
    for index, window in enumerate(schedule.windows):
        assert window.index == index
        assert window.start_s >= previous_end + 0.5 * settings.quiet_mean_s - 1e-9
        assert window.end_s <= schedule.duration_s
        length = window.end_s - window.start_s
        if window.kind is FaultKind.TRANSFER_LEADER:
            assert length == 0
        else:
            assert 0.5 * 3.0 - 1e-3 <= length <= 1.5 * 3.0 + 1e-3
        match window.kind.family:
            case "partition" if window.kind in (FaultKind.PARTITION_HALVES,
                                                FaultKind.PARTITION_BRIDGE,
                                                FaultKind.PARTITION_RING):
                assert sorted(window.targets) == list(NODES5)  # a node order
            case _ if window.kind is FaultKind.KILL_MAJORITY:
                assert len(window.targets) == 3 and set(window.targets) <= set(NODES5)
            case _ if window.kind.name.endswith("_LEADER") and window.kind.family != "transfer":
                assert window.targets == ()
            case "net":
                assert 20 <= window.delay_ms <= 200 or 0.1 <= window.drop_rate <= 0.4
            case "clock":
                assert len(window.targets) == 1 and window.targets[0] in NODES5
                assert CLOCK_SKEW_MIN_MS <= abs(window.clock_offset_ms) <= CLOCK_SKEW_MAX_MS
                assert window.clock_offset_ms % CLOCK_SKEW_STEP_MS == 0
            case _:
                assert len(window.targets) == 1 and window.targets[0] in NODES5
        previous_end = window.end_s


def test_parse_nemesis_expands_families_and_refuses_what_does_not_fit() -> None:
    assert FaultKind.PARTITION_RING not in parse_nemesis("all", 3)
    assert FaultKind.PARTITION_RING in parse_nemesis("all", 5)
    assert set(parse_nemesis("all", 5)) == set(FaultKind)
    assert parse_nemesis("kill", 3) == FAMILIES["kill"]
    assert parse_nemesis("clock", 3) == (FaultKind.CLOCK_SKEW,)
    assert parse_nemesis("pause-one, transfer-leader", 3) == (FaultKind.PAUSE_ONE,
                                                              FaultKind.TRANSFER_LEADER)
    with pytest.raises(ValueError, match="needs more than 3 nodes"):
        parse_nemesis("partition-ring", 3)
    with pytest.raises(ValueError, match="unknown nemesis 'explode'"):
        parse_nemesis("kill,explode", 3)
    with pytest.raises(ValueError, match="no fault kind"):
        parse_nemesis(" , ", 3)


# -- partition shapes ---------------------------------------------------------------------


def _assert_symmetric(grudge: dict[str, frozenset[str]]) -> None:
    for node, blocked in grudge.items():
        assert node not in blocked
        for other in blocked:
            assert node in grudge[other], f"{node} blocks {other} but not the reverse"


def test_isolate_cuts_one_node_off_on_both_sides() -> None:
    partition = isolate(NODES3, "n2")
    assert partition.grudge == {"n1": {"n2"}, "n2": {"n1", "n3"}, "n3": {"n2"}}
    assert partition.description == "n2 | n1 n3"


def test_halves_cut_the_first_half_of_the_order_from_the_rest() -> None:
    partition = halves(("n4", "n2", "n1", "n5", "n3"))
    assert partition.grudge["n4"] == partition.grudge["n2"] == {"n1", "n3", "n5"}
    assert partition.grudge["n1"] == partition.grudge["n3"] == partition.grudge["n5"] == {
        "n2", "n4"}
    assert partition.description == "n4 n2 | n1 n5 n3"
    _assert_symmetric(partition.grudge)


def test_a_bridge_node_sees_both_halves_which_do_not_see_each_other() -> None:
    three = bridge(("n3", "n1", "n2"))
    assert three.grudge == {"n3": {"n2"}, "n1": frozenset(), "n2": {"n3"}}
    five = bridge(("n1", "n2", "n3", "n4", "n5"))
    assert five.grudge["n3"] == frozenset()
    assert five.grudge["n1"] == five.grudge["n2"] == {"n4", "n5"}
    assert five.description == "n1 n2 | n4 n5, bridged by n3"
    _assert_symmetric(five.grudge)


@pytest.mark.parametrize("order", [("n1", "n2", "n3", "n4"), ("n2", "n5", "n1", "n4", "n3"),
                                   tuple(f"n{i}" for i in range(1, 8))])
def test_in_a_ring_every_node_sees_a_majority_and_no_two_the_same(
        order: tuple[str, ...]) -> None:
    grudge = ring(order).grudge
    _assert_symmetric(grudge)
    majority = len(order) // 2 + 1
    seen = {node: frozenset(order) - blocked for node, blocked in grudge.items()}
    assert all(len(view) >= majority for view in seen.values())
    assert any(grudge.values()), "a ring cuts something"
    assert len(set(seen.values())) == len(order)


def test_five_node_ring_blocks_exactly_the_two_far_nodes() -> None:
    grudge = ring(("n1", "n2", "n3", "n4", "n5")).grudge
    assert grudge["n1"] == {"n3", "n4"}
    assert grudge["n3"] == {"n1", "n5"}


def test_split_leaves_nodes_on_no_side_unblocked() -> None:
    partition = split(NODES5, [["n1"], ["n2", "n3"]])
    assert partition.grudge["n4"] == partition.grudge["n5"] == frozenset()
    assert partition.grudge["n1"] == {"n2", "n3"}
    assert partition.description == "n1 | n2 n3"


# -- the nemesis on a fake cluster --------------------------------------------------------


class FakeControl(ClusterControl):
    """An in-memory cluster: process states, fault settings and a leader."""

    def __init__(self, nodes: Sequence[str], leader: str | None = "n1") -> None:
        super().__init__({n: f"http://127.0.0.1:{7000 + i}" for i, n in enumerate(nodes)})
        self.state = dict.fromkeys(nodes, "up")
        self.installed: dict[str, dict[str, object]] = {n: {} for n in nodes}
        self.leader = leader
        self.log: list[str] = []

    async def kill(self, node_id: str) -> None:
        self.state[node_id] = "down"
        self.log.append(f"kill {node_id}")

    async def restart(self, node_id: str) -> None:
        assert self.state[node_id] == "down"
        self.state[node_id] = "up"
        self.installed[node_id] = {}
        self.log.append(f"restart {node_id}")

    async def pause(self, node_id: str) -> None:
        self.state[node_id] = "paused"

    async def resume(self, node_id: str) -> None:
        if self.state[node_id] == "paused":
            self.state[node_id] = "up"

    async def is_up(self, node_id: str) -> bool:
        return self.state[node_id] != "down"

    async def set_faults(self, node_id: str, settings: Mapping[str, object]) -> None:
        assert self.state[node_id] == "up", f"{node_id} cannot answer: {self.state[node_id]}"
        self.installed[node_id].update(settings)

    async def clear_faults(self, node_id: str) -> None:
        assert self.state[node_id] == "up"
        self.installed[node_id] = {}

    async def find_leader(self) -> str | None:
        return self.leader

    async def wait_leader(self, timeout_s: float) -> str | None:
        return self.leader

    async def transfer_leader(self, target: str | None, timeout_s: float) -> str:
        self.leader = target or next(n for n in self.node_ids if n != self.leader)
        return self.leader


def _nemesis(control: FakeControl) -> Nemesis:
    clock = itertools.count(0, 1000)
    return Nemesis(control, lambda: next(clock))


def test_a_partition_is_installed_on_both_sides_and_healing_clears_it() -> None:
    control = FakeControl(NODES3, leader="n3")
    nemesis = _nemesis(control)

    async def scenario() -> None:
        event = await nemesis.apply(FaultWindow(0, FaultKind.PARTITION_LEADER, 1.0, 2.0))
        assert (event.action, event.nodes, event.detail) == ("start", ("n3",), "n3 | n1 n2")
        assert {n: f["blocked_peers"] for n, f in control.installed.items()} == {
            "n1": ["n3"], "n2": ["n3"], "n3": ["n1", "n2"]}
        await nemesis.heal(0)

    asyncio.run(scenario())
    assert control.installed == {"n1": {}, "n2": {}, "n3": {}}
    assert [e.action for e in nemesis.events] == ["start", "heal"]


def test_kills_are_restarted_on_heal_and_only_unexpected_exits_count_as_crashes() -> None:
    control = FakeControl(NODES5, leader="n2")
    nemesis = _nemesis(control)

    async def scenario() -> None:
        await nemesis.apply(FaultWindow(0, FaultKind.KILL_MAJORITY, 1.0, 2.0, ("n1", "n3", "n5")))
        assert [n for n, s in control.state.items() if s == "down"] == ["n1", "n3", "n5"]
        heal = await nemesis.heal(0)
        assert heal.nodes == ("n1", "n3", "n5") and nemesis.crashed == []
        await nemesis.apply(FaultWindow(1, FaultKind.KILL_LEADER, 3.0, 4.0))
        control.state["n4"] = "down"  # exits on its own
        heal = await nemesis.heal(1)
        assert heal.nodes == ("n2", "n4")
        assert "n4 was down without being killed" in heal.detail

    asyncio.run(scenario())
    assert nemesis.crashed == ["n4"]
    assert set(control.state.values()) == {"up"}


def test_pauses_are_resumed_and_net_faults_set_everywhere() -> None:
    control = FakeControl(NODES3)
    nemesis = _nemesis(control)

    async def scenario() -> None:
        await nemesis.apply(FaultWindow(0, FaultKind.PAUSE_LEADER, 1.0, 2.0))
        assert control.state["n1"] == "paused"
        await nemesis.heal(0)
        event = await nemesis.apply(FaultWindow(1, FaultKind.DELAY, 3.0, 4.0, delay_ms=120,
                                                jitter_ms=60))
        assert event.detail == "120 ms ± 60 ms"
        assert all(f == {"delay_ms": 120, "jitter_ms": 60} for f in control.installed.values())
        await nemesis.heal(1)
        event = await nemesis.apply(FaultWindow(2, FaultKind.LOSS, 5.0, 6.0, drop_rate=0.25))
        assert event.detail == "25% dropped"

    asyncio.run(scenario())
    assert control.state["n1"] == "up"


def test_clock_skews_are_seeded_both_ways_on_both_sides_of_the_default_bound() -> None:
    schedule = build_schedule(11, NODES3, 600.0, (FaultKind.CLOCK_SKEW,))
    assert schedule == build_schedule(11, NODES3, 600.0, (FaultKind.CLOCK_SKEW,))
    offsets = [w.clock_offset_ms for w in schedule.windows]
    assert len(offsets) > 50
    assert any(o > 0 for o in offsets) and any(o < 0 for o in offsets)
    # membership's default max_clock_offset_ms is 500: some skews stay within, most not
    assert any(abs(o) < 500 for o in offsets) and any(abs(o) > 500 for o in offsets)
    assert {w.targets[0] for w in schedule.windows} == set(NODES3)
    assert schedule.windows[0].to_json()["clock_offset_ms"] == offsets[0]


def test_a_clock_skew_sets_one_node_offset_and_healing_clears_it() -> None:
    control = FakeControl(NODES3)
    nemesis = _nemesis(control)

    async def scenario() -> None:
        event = await nemesis.apply(FaultWindow(0, FaultKind.CLOCK_SKEW, 1.0, 2.0, ("n2",),
                                                clock_offset_ms=-1500))
        assert (event.action, event.kind, event.nodes, event.detail) == (
            "start", "clock-skew", ("n2",), "clock -1500 ms")
        assert control.installed == {"n1": {}, "n2": {"clock_offset_ms": -1500}, "n3": {}}
        await nemesis.heal(0)

    asyncio.run(scenario())
    assert control.installed == {"n1": {}, "n2": {}, "n3": {}}
    drawn = drawn_windows(nemesis.events, run_end_s=5.0)
    assert [(w.labels[0], w.family) for w in drawn] == [("clock-skew n2 -1500 ms", "clock")]


def test_leader_faults_are_skipped_without_a_leader_and_transfers_pick_another_node() -> None:
    control = FakeControl(NODES3, leader=None)
    nemesis = _nemesis(control)
    skipped = asyncio.run(nemesis.apply(FaultWindow(0, FaultKind.KILL_LEADER, 1.0, 2.0)))
    assert skipped.action == "skip" and control.log == []
    control.leader = "n2"
    moved = asyncio.run(nemesis.apply(FaultWindow(1, FaultKind.TRANSFER_LEADER, 3.0, 3.0,
                                                  ("n2",))))
    assert moved.detail == "leader n2 -> n1" and control.leader == "n1"  # n2 led: any other


def test_the_nemesis_plays_a_schedule_in_real_time_healing_every_window() -> None:
    control = FakeControl(NODES3)
    schedule = build_schedule(3, NODES3, 0.5, (FaultKind.KILL_ONE, FaultKind.PARTITION_ONE),
                              ScheduleSettings(quiet_mean_s=0.04, fault_mean_s=0.04,
                                               warmup_s=0.0))
    origin = time.monotonic_ns()
    nemesis = Nemesis(control, lambda: time.monotonic_ns() - origin)

    async def play() -> None:
        await nemesis.run(schedule, asyncio.Event())

    asyncio.run(play())
    assert len(schedule.windows) >= 3
    actions = [(e.window, e.action) for e in nemesis.events]
    assert actions == [(w.index, a) for w in schedule.windows for a in ("start", "heal")]
    for window, event in zip(schedule.windows, nemesis.events[::2], strict=True):
        assert event.time_ns >= window.start_s * 1e9
    assert set(control.state.values()) == {"up"} and nemesis.crashed == []


# -- a cluster started elsewhere (cluster.json) ---------------------------------------------


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_state(pid: int, wanted: str, timeout_s: float = 5.0) -> str:
    """The process's state letter once it is ``wanted`` (signals arrive asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while _state(pid) != wanted and time.monotonic() < deadline:
        time.sleep(0.01)
    return _state(pid)


def _manifest(tmp_path: Path, pid: int) -> Path:
    manifest = {"cluster_id": "c", "nodes": [
        {"id": "n1", "pid": pid, "client_url": "http://127.0.0.1:1",
         "config": str(tmp_path / "missing.toml")}]}
    (tmp_path / "cluster.json").write_text(json.dumps(manifest))
    return tmp_path


def test_manifest_control_signals_a_concord_process_and_restarts_it_from_its_config(
        tmp_path: Path) -> None:
    fake_node = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                  "concord", "serve"])
    try:
        control = ManifestControl(_manifest(tmp_path, fake_node.pid))

        async def scenario() -> None:
            assert await control.is_up("n1")
            await control.pause("n1")
            assert _wait_state(fake_node.pid, "T") == "T"
            await control.resume("n1")
            assert _wait_state(fake_node.pid, "S") == "S"
            await control.kill("n1")
            assert not await control.is_up("n1")
            await control.restart("n1")

        asyncio.run(scenario())
        assert fake_node.wait(5) == -signal.SIGKILL
        restarted = json.loads((tmp_path / "cluster.json").read_text())["nodes"][0]["pid"]
        assert restarted != fake_node.pid
        _, status = os.waitpid(restarted, 0)  # the config is missing: it exits at once
        assert os.waitstatus_to_exitcode(status) == 64
        assert "missing.toml" in (tmp_path / "n1.chaos.log").read_text()
    finally:
        fake_node.kill()
        fake_node.wait()


def test_manifest_control_never_signals_a_pid_that_is_not_a_concord_node(
        tmp_path: Path) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        control = ManifestControl(_manifest(tmp_path, stranger.pid))
        assert not asyncio.run(control.is_up("n1"))
        asyncio.run(control.kill("n1"))
        asyncio.run(control.pause("n1"))
        assert _wait_state(stranger.pid, "T", timeout_s=0.3) != "T"
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


# -- checkers -----------------------------------------------------------------------------

SET = "chaos/t/set/"


def add(n: int, status: OpStatus, start: int, end: int, output: Value = True) -> Operation:
    return op("cas", f"{SET}0000/{n}", (None, str(n).encode()),
              output if status is OK else None, start, end, status)


def listing(keys: Sequence[int], at: int, status: OpStatus = OK) -> Operation:
    output = tuple(f"{SET}0000/{n}" for n in keys) if status is OK else None
    return op("list", f"{SET}0000/", None, output, at, at + 5, status)


def test_the_set_checker_accepts_acknowledged_adds_and_recovered_unknown_ones() -> None:
    ops = [add(1, OK, 0, 10), add(2, INFO, 5, 20), add(3, FAIL, 6, 8), add(4, INFO, 7, 30),
           listing([1, 2], 100)]
    result = check_set(ops, SET)
    assert result.validity is Validity.VALID, result.summary
    assert result.details["recovered"] == 1 and result.details["acknowledged"] == 1


@pytest.mark.parametrize(("ops", "problem"), [
    ([add(1, OK, 0, 10), add(2, OK, 0, 10), listing([1], 100)], "1 acknowledged add(s) lost"),
    ([add(1, OK, 0, 10), listing([1, 9], 100)], "1 element(s) never added"),
    ([add(1, FAIL, 0, 10), listing([1], 100)], "1 add(s) reported failed yet present"),
    ([add(1, OK, 0, 10, output=False), listing([], 100)],
     "1 create-only add(s) of a fresh key refused"),
])
def test_the_set_checker_reports_lost_phantom_and_wrongly_failed_adds(
        ops: list[Operation], problem: str) -> None:
    result = check_set(ops, SET)
    assert result.validity is Validity.INVALID
    assert problem in result.summary


def test_the_set_checker_uses_the_last_answered_listing_and_needs_one() -> None:
    ops = [add(1, OK, 0, 10), listing([], 50, INFO), listing([1], 100)]
    assert check_set(ops, SET).validity is Validity.VALID
    unread = check_set([add(1, OK, 0, 10), listing([], 50, FAIL)], SET)
    assert unread.validity is Validity.UNKNOWN and "no final read" in unread.summary
    assert check_set([], SET).validity is Validity.UNKNOWN


COUNTER = "chaos/t/counter"


def inc(expected: int, status: OpStatus, start: int, end: int | None,
        applied: bool = True) -> Operation:
    before = None if expected == 0 else str(expected).encode()
    output = applied if status is OK else None
    return op("cas", COUNTER, (before, str(expected + 1).encode()), output, start, end, status)


def read(value: int | None, start: int, end: int) -> Operation:
    return op("read", COUNTER, None, None if value is None else str(value).encode(), start, end)


def test_the_counter_checker_bounds_every_read_by_acknowledged_and_attempted_increments(
        ) -> None:
    ops = [read(None, 0, 1), inc(0, OK, 2, 3), inc(1, INFO, 4, 6), read(1, 7, 8),
           inc(1, OK, 9, 10, applied=False), inc(1, OK, 11, 12), read(2, 13, 14)]
    result = check_counter(ops, COUNTER)
    assert result.validity is Validity.VALID, result.summary
    assert result.details["final_value"] == 2
    assert (result.details["acknowledged"], result.details["attempted"]) == (2, 3)


@pytest.mark.parametrize(("ops", "bounds"), [
    ([inc(0, OK, 0, 1), inc(1, OK, 2, 3), read(1, 4, 5)], "not in [2, 2]"),  # stale / lost
    ([inc(0, OK, 0, 1), read(3, 4, 5)], "not in [1, 1]"),  # more than ever attempted
    ([inc(0, INFO, 0, None), read(2, 4, 5)], "not in [0, 1]"),
])
def test_the_counter_checker_reports_reads_out_of_bounds(ops: list[Operation],
                                                         bounds: str) -> None:
    result = check_counter(ops, COUNTER)
    assert result.validity is Validity.INVALID
    assert bounds in result.summary


def test_an_increment_concurrent_with_a_read_may_or_may_not_count() -> None:
    for seen in (0, 1):
        ops = [inc(0, OK, 0, 10), read(seen, 5, 15)]
        assert check_counter(ops, COUNTER).validity is Validity.VALID
    assert check_counter([], COUNTER).validity is Validity.UNKNOWN
    garbage = [op("read", COUNTER, None, b"seven", 0, 1)]
    assert check_counter(garbage, COUNTER).validity is Validity.INVALID


DKV = "chaos/t/dkv/"


def dkv_add(key: int, element: str, status: OpStatus, start: int, end: int) -> Operation:
    return op("add", f"{DKV}set/0/{key}", element, None, start, end, status)


def union(key: int, elements: Sequence[str], at: int, status: OpStatus = OK) -> Operation:
    output = tuple(sorted(elements)) if status is OK else None
    return op("read-union", f"{DKV}set/0/{key}", None, output, at, at + 5, status)


def converge(key: int, after_ms: int | None, at: int) -> Operation:
    status = OK if after_ms is not None else INFO
    return op("converge", f"{DKV}set/0/{key}", None, after_ms, at, at + 5, status)


def dkv_history(final0: Sequence[str], final1: Sequence[str] = ("c",),
                converged_ms: tuple[int | None, int | None] = (120, 1500)) -> list[Operation]:
    """Key 0: "a" and "b" acknowledged, "x" indefinite, "f" definitely failed; key 1: "c"
    acknowledged; then the convergence polls and the final reads."""
    return [dkv_add(0, "a", OK, 0, 10), dkv_add(0, "b", OK, 5, 20), dkv_add(0, "x", INFO, 6, 30),
            dkv_add(0, "f", FAIL, 7, 9), dkv_add(1, "c", OK, 8, 12),
            converge(0, converged_ms[0], 100), converge(1, converged_ms[1], 100),
            union(0, final0, 200), union(1, final1, 200)]


def test_the_dkv_set_checker_accepts_every_acknowledged_add_present_after_convergence(
        ) -> None:
    result = check_dkv_set(dkv_history(["a", "b"]), DKV)
    assert result.validity is Validity.VALID, result.summary
    details = result.details
    assert (details["keys"], details["attempted"], details["acknowledged"]) == (2, 5, 3)
    assert (details["indefinite_present"], details["indefinite_absent"]) == (0, 1)
    assert details["convergence_s"] == {f"{DKV}set/0/0": 0.12, f"{DKV}set/0/1": 1.5}
    assert details["max_convergence_s"] == 1.5
    recovered = check_dkv_set(dkv_history(["a", "b", "x"]), DKV)
    assert recovered.validity is Validity.VALID
    assert (recovered.details["indefinite_present"], recovered.details["indefinite_absent"]) \
        == (1, 0)
    assert "3 acknowledged of 5 attempted adds on 2 keys all present" in recovered.summary


@pytest.mark.parametrize(("ops", "problem", "evidence"), [
    (dkv_history(["a", "x"]), "1 acknowledged add(s) lost", ("lost", [f"{DKV}set/0/0 b"])),
    (dkv_history(["a", "b", "zz"]), "1 element(s) never added",
     ("phantom", [f"{DKV}set/0/0 zz"])),
    # an element added to another key is a phantom where it was read
    (dkv_history(["a", "b", "c"]), "1 element(s) never added",
     ("phantom", [f"{DKV}set/0/0 c"])),
    (dkv_history(["a", "b", "f"]), "1 add(s) reported failed yet present",
     ("failed_but_present", [f"{DKV}set/0/0 f"])),
    (dkv_history(["a", "b"], converged_ms=(120, None)), "1 key(s) did not converge",
     ("not_converged", [f"{DKV}set/0/1"])),
])
def test_the_dkv_set_checker_reports_lost_phantom_failed_and_unconverged(
        ops: list[Operation], problem: str, evidence: tuple[str, list[str]]) -> None:
    result = check_dkv_set(ops, DKV)
    assert result.validity is Validity.INVALID
    assert problem in result.summary
    name, shown = evidence
    assert result.details[name] == shown


def test_the_dkv_set_checker_uses_the_last_final_read_and_needs_one_per_key() -> None:
    ops = dkv_history(["a", "b"])
    stale_then_full = [*ops[:-2], union(0, ["a"], 150), union(0, ["a", "b"], 200), ops[-1]]
    assert check_dkv_set(stale_then_full, DKV).validity is Validity.VALID
    unread = check_dkv_set([*ops[:-1], union(1, [], 300, INFO)], DKV)
    assert unread.validity is Validity.UNKNOWN and "no final read of 1 key(s)" in unread.summary
    unpolled = check_dkv_set([o for o in ops if o.f != "converge"], DKV)
    assert unpolled.validity is Validity.UNKNOWN and "no convergence poll of 2" \
        in unpolled.summary
    assert check_dkv_set([], DKV).validity is Validity.UNKNOWN


def test_dkv_siblings_are_unioned_and_refusals_are_definite_only_as_client_errors() -> None:
    elements, malformed = union_of([b'["a", "b"]', b'["b", "c"]', b"[1]", b"not json"])
    assert elements == {"a", "b", "c"} and malformed == (b"[1]", b"not json")
    assert union_of([]) == (frozenset(), ())
    assert dkv_status_of(DkvError("bad_request", "w=4 is more than n=3", 400)) is FAIL
    assert dkv_status_of(DkvError("quorum_not_reached", "1 of W=2", 503)) is INFO
    assert dkv_status_of(DkvError("unavailable", "no endpoint answered", 0)) is INFO
    assert describe_error(DkvError("quorum_not_reached", "1 of W=2", 503)) \
        == "quorum_not_reached (503)"


def test_linearizability_is_checked_per_key_on_single_key_operations_only() -> None:
    fine = [op("write", "k", b"a", None, 0, 10), op("read", "k", None, b"a", 20, 30),
            listing([], 40)]
    result = check_linearizable(fine, timeout_s=10.0, clock=time.monotonic)
    assert result.validity is Validity.VALID and result.details["operations"] == 2
    stale = [op("write", "k", b"a", None, 0, 10), op("write", "k", b"b", None, 20, 30),
             op("read", "k", None, b"a", 40, 50)]
    result = check_linearizable(stale, timeout_s=10.0, clock=time.monotonic)
    assert result.validity is Validity.INVALID
    assert "key 'k': no linearization" in str(result.details["explanation"])


def test_overall_validity_is_the_worst_verdict() -> None:
    valid, crashed = check_nodes([]), check_nodes(["n2"])
    late, ready = check_recovery(None, 30.0), check_recovery(1.5, 30.0)
    assert (valid.validity, crashed.validity) == (Validity.VALID, Validity.INVALID)
    assert (late.validity, ready.validity) == (Validity.INVALID, Validity.VALID)
    unknown = check_set([], SET)
    assert overall([valid, ready]) is Validity.VALID
    assert overall([valid, unknown]) is Validity.UNKNOWN
    assert overall([unknown, crashed]) is Validity.INVALID


# -- workloads: parsing, outcomes, recording ----------------------------------------------


def test_workload_names_clients_and_keys() -> None:
    raft = (WorkloadKind.REGISTER, WorkloadKind.SET, WorkloadKind.COUNTER)
    assert parse_workloads("mixed") == RAFT_WORKLOADS == raft  # dkv-set is opt-in
    assert parse_workloads("set, register") == (WorkloadKind.REGISTER, WorkloadKind.SET)
    assert parse_workloads("dkv-set") == parse_workloads("DKV_SET") == (WorkloadKind.DKV_SET,)
    assert parse_workloads("mixed,dkv-set") == tuple(WorkloadKind)
    assert WorkloadKind.DKV_SET.label == "dkv-set"
    with pytest.raises(ValueError, match="unknown workload 'queue'"):
        parse_workloads("queue")
    assigned = assign_clients(raft, 7)
    assert [assigned.count(k) for k in raft] == [3, 2, 2]
    keys = Keys("20250101-000000-7")
    assert keys.set_element(1234) == "chaos/20250101-000000-7/set/0001/1234"
    assert keys.workload_of(keys.set_element(5)) is WorkloadKind.SET
    assert keys.workload_of(keys.register(3, 1)) is WorkloadKind.REGISTER
    assert keys.workload_of(keys.counter) is WorkloadKind.COUNTER
    assert keys.dkv_bucket == "chaos-20250101-000000-7"
    assert keys.dkv_key(2, 1) == "set/2/1"
    assert keys.workload_of(keys.dkv_prefix + keys.dkv_key(2, 1)) is WorkloadKind.DKV_SET
    assert keys.workload_of("elsewhere") is None


def test_definite_errors_are_failures_and_everything_else_unknown() -> None:
    refused = ConcordClientError("no_leader", "no leader", 503, True, True)
    lost = ConcordClientError("timeout", "no answer", 504, True, False)
    unreachable = ConcordClientError("unavailable", "refused", 0, True, True)
    assert (status_of(refused), status_of(lost)) == (FAIL, INFO)
    assert describe_error(refused) == "no_leader (503)"
    assert describe_error(unreachable) == "unavailable"
    assert describe_error(TimeoutError()) == "TimeoutError"


def test_the_history_records_why_operations_failed_in_its_jsonl() -> None:
    ticks = iter(range(0, 1000, 10))
    history = ChaosHistory(lambda: next(ticks))
    first = history.invoke(history.new_process(), "write", "k", b"v")
    history.complete(first, OK, None)
    second = history.invoke(history.new_process(), "read", "k", None)
    history.complete(second, INFO, None, "timeout (504)")
    lines = [json.loads(line) for line in history.to_jsonl().splitlines()]
    assert [line.get("error") for line in lines] == [None, None, None, "timeout (504)"]
    assert [e.time for e in events_from_jsonl(history.to_jsonl())] == [10, 20, 30, 40]
    assert history.errors() == {second: "timeout (504)"}


# -- the report ---------------------------------------------------------------------------


def test_the_report_folder_on_a_synthetic_history(tmp_path: Path) -> None:
    schedule = build_schedule(9, NODES3, 10.0, (FaultKind.KILL_LEADER,))
    events = [FaultEvent(2_000_000_000, 0, "start", "kill-leader", ("n1",), "kill -9 n1"),
              FaultEvent(4_000_000_000, 0, "heal", "heal", ("n1",), "restarted n1"),
              FaultEvent(6_000_000_000, 1, "start", "transfer-leader", ("n3",),
                         "leader n2 -> n3"),
              FaultEvent(9_000_000_000, -1, "heal", "heal", (), "healed")]
    ticks = itertools.count(0, 50_000_000)
    history = ChaosHistory(lambda: next(ticks))
    for n in range(60):
        status = (OK, FAIL, INFO)[n % 3] if 40 <= n < 46 else OK
        process = history.new_process()
        op_id = history.invoke(process, "write", f"chaos/x/r/0/{n % 2}", str(n).encode())
        history.complete(op_id, status, None, "" if status is OK else "no_leader (503)")
    results = [check_linearizable(history.operations(), timeout_s=10.0, clock=time.monotonic),
               check_nodes([])]
    record = RunRecord(
        title="synthetic run", settings={"seed": 9}, schedule=schedule, fault_events=events,
        history_jsonl=history.to_jsonl(), operations=history.operations(),
        errors=history.errors(), results=results, workload_of=lambda key: "register",
        duration_s=10.0)
    summary = write_report(tmp_path / "report", record)
    folder = tmp_path / "report"
    assert sorted(p.name for p in folder.iterdir()) == [
        "history.jsonl", "report.html", "schedule.json", "summary.txt", "verdicts.json"]
    line = (folder / "summary.txt").read_text()
    assert line == ("ops=60 ok=56 fail=2 info=2 faults=2 availability=93.3% "
                    "linearizable=valid nodes=valid => VALID\n")
    assert summary.line() + "\n" == line
    assert len(events_from_jsonl((folder / "history.jsonl").read_text())) == 120
    verdicts = json.loads((folder / "verdicts.json").read_text())
    assert verdicts["validity"] == "valid" and len(verdicts["checkers"]) == 2
    planned = json.loads((folder / "schedule.json").read_text())
    assert planned["planned"]["seed"] == 9 and len(planned["executed"]) == 4
    page = (folder / "report.html").read_text()
    assert "<svg" in page and "<script" not in page and "src=" not in page
    assert "kill-leader n1" in page and "n2 -&gt; n3" in page
    assert "no_leader (503)" in page

    lossy = check_set([add(1, OK, 0, 10), add(2, OK, 0, 10), listing([1], 100)], SET)
    invalid = write_report(tmp_path / "invalid", dataclasses.replace(record, results=[lossy]))
    assert invalid.line().endswith("set=invalid => INVALID")
    page = (tmp_path / "invalid" / "report.html").read_text()
    assert f"{SET}0000/2" in page  # the lost element, as evidence


def test_an_unsafe_run_says_so_in_its_summary_verdicts_and_page(tmp_path: Path) -> None:
    settings = RunSettings(seed=1, workloads=(WorkloadKind.REGISTER,),
                           nemesis=(FaultKind.PARTITION_ONE,), read_consistency="serializable")
    assert settings.to_json()["read_consistency"] == "serializable"
    assert len(settings.unsafe) == 1 and "serializable" in settings.unsafe[0]
    assert dataclasses.replace(settings, read_consistency="linearizable").unsafe == ()
    assert dataclasses.replace(settings, workloads=(WorkloadKind.SET,)).unsafe == ()
    record = RunRecord(
        title="unsafe run", settings=settings.to_json(),
        schedule=build_schedule(1, NODES3, 10.0, settings.nemesis), fault_events=[],
        history_jsonl="", operations=[], errors={}, results=[check_nodes([])],
        workload_of=lambda key: "register", duration_s=10.0, unsafe=settings.unsafe)
    summary = write_report(tmp_path, record)
    assert summary.line().endswith(f"nodes=valid => VALID UNSAFE: {settings.unsafe[0]}")
    assert (tmp_path / "summary.txt").read_text() == summary.line() + "\n"
    verdicts = json.loads((tmp_path / "verdicts.json").read_text())
    assert verdicts["unsafe"] == list(settings.unsafe)
    assert verdicts["settings"]["read_consistency"] == "serializable"
    assert "Unsafe run:" in (tmp_path / "report.html").read_text()


def test_read_consistency_is_checked() -> None:
    with pytest.raises(ValueError, match=r"^read_consistency: expected one of linearizable, "
                                         r"serializable, got 'stale'"):
        RunSettings(seed=1, workloads=(WorkloadKind.REGISTER,),
                    nemesis=(FaultKind.PARTITION_ONE,), read_consistency="stale")
    with pytest.raises(ValueError, match=r"^read_consistency: "):
        WorkloadSettings(kinds=(WorkloadKind.REGISTER,), clients=1, duration_s=1.0, seed=1,
                         keys=Keys("r"), read_consistency="eventual")
    with pytest.raises(ValueError, match=r"^convergence_timeout_s: expected a positive"):
        RunSettings(seed=1, workloads=(WorkloadKind.DKV_SET,),
                    nemesis=(FaultKind.PARTITION_ONE,), convergence_timeout_s=0.0)


def test_fault_windows_are_drawn_from_their_start_to_the_next_heal() -> None:
    events = [FaultEvent(1_000_000_000, 0, "start", "partition-halves", ("n1",), "n1 | n2 n3"),
              FaultEvent(3_500_000_000, 0, "heal", "heal", (), "healed"),
              FaultEvent(4_000_000_000, 1, "skip", "kill-leader", (), "no leader"),
              FaultEvent(5_000_000_000, 2, "start", "pause-one", ("n2",), "SIGSTOP n2")]
    drawn = drawn_windows(events, run_end_s=8.0)
    assert [(w.window, w.start_s, w.end_s, w.labels, w.family) for w in drawn] == [
        (0, 1.0, 3.5, ("partition-halves n1 | n2 n3", "partition-halves", "#0"), "partition"),
        (2, 5.0, 8.0, ("pause-one n2", "pause-one", "#2"), "pause")]
    summary = summarize([], events, [])
    assert summary.faults == 2 and summary.availability_pct == 0.0
