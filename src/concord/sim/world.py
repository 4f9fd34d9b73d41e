"""The simulated world: nodes, network, faults, clients and a virtual clock, all from one seed.

``run_simulation(SimConfig(seed=...))`` runs a whole cluster deterministically: the same
config always produces the same run. Time is virtual milliseconds; every node ticks every
``tick_ms``. After every step the invariant checker runs; at the end the client history is
checked for linearizability and liveness is checked after the faults heal.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import partial
from itertools import count
from typing import Any

from concord.core.trace import TraceEvent
from concord.kv.commands import Command, Condition, ConditionKind, Put
from concord.raft.config import RaftConfig, ReadMode
from concord.raft.core import RaftNode
from concord.raft.messages import (
    Membership,
    MembershipChange,
    MembershipChangeOp,
    Message,
    NodeId,
)
from concord.raft.ready import Role
from concord.sim.faults import (
    PRESETS,
    FaultKind,
    FaultWindow,
    cut_between,
    generate_schedule,
)
from concord.sim.history import HistoryRecorder, OpStatus
from concord.sim.invariants import InvariantChecker, InvariantViolation
from concord.sim.lincheck import CheckResult, Verdict, check, format_result
from concord.sim.models import ConcordKVModel
from concord.sim.network import LinkConditions, Network
from concord.sim.node import NodeHooks, Reply, SimBugs, SimNode


@dataclass(frozen=True, slots=True)
class SimConfig:
    seed: int
    nodes: int = 3
    faults: str = "all"
    clients: int = 4
    keys: int = 3
    fault_phase_ms: int = 3_000
    liveness_bound_ms: int = 2_000  # after healing: a leader, and client ops complete
    tick_ms: int = 10
    election_timeout_ticks: int = 10
    heartbeat_interval_ticks: int = 2
    client_timeout_ms: int = 600
    snapshot_every_entries: int = 40
    read_mode: ReadMode = ReadMode.SAFE
    max_inflight_appends: int = 8
    max_entries_per_append: int = 16
    link: LinkConditions = field(default_factory=LinkConditions)
    bugs: SimBugs = SimBugs()
    raft_class: type[RaftNode] = RaftNode
    lincheck_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError("a cluster needs at least one node")
        if self.faults not in PRESETS:
            raise ValueError(f"unknown fault preset {self.faults!r}; one of {sorted(PRESETS)}")


@dataclass(frozen=True, slots=True)
class SimResult:
    seed: int
    config: SimConfig
    violation: str | None
    operations: int
    ok_operations: int
    faults: tuple[FaultWindow, ...]
    lincheck: CheckResult | None
    messages_sent: int
    committed_entries: int
    leader_elections: int
    transcript: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return self.violation is None

    def replay_command(self) -> str:
        c = self.config
        cmd = f"concord sim --seed {c.seed} --nodes {c.nodes} --faults {c.faults}"
        if c.read_mode is ReadMode.LEASE:
            cmd += " --read-mode lease"
        if c.bugs.ack_before_sync:
            cmd += " --bug ack-before-sync"
        return cmd


class LivenessFailure(AssertionError):
    pass


@dataclass(slots=True)
class _Client:
    process: int
    busy: bool = False
    op_id: int = -1
    deadline_ms: int = 0
    target: NodeId | None = None
    writes: int = 0
    last_value: bytes | None = None


class World:
    TRANSCRIPT_LINES = 400

    def __init__(self, config: SimConfig, clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.now_ms = 0
        self._queue: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = count()
        self.node_ids = [f"n{i + 1}" for i in range(config.nodes)]
        self.network = Network(random.Random(self.rng.random()), config.link)
        self.checker = InvariantChecker()
        self.history = HistoryRecorder()
        self.transcript: deque[str] = deque(maxlen=self.TRANSCRIPT_LINES)
        self._clock = clock
        founders = Membership(frozenset(self.node_ids))
        self.nodes: dict[NodeId, SimNode] = {}
        for node_id in self.node_ids:
            raft_config = RaftConfig(
                node_id=node_id,
                election_timeout_ticks=config.election_timeout_ticks,
                heartbeat_interval_ticks=config.heartbeat_interval_ticks,
                read_mode=config.read_mode,
                max_inflight_appends=config.max_inflight_appends,
                max_entries_per_append=config.max_entries_per_append,
            )
            hooks = NodeHooks(send=self._send, on_persisted=self.checker.on_persisted,
                              on_applied=self.checker.on_applied, on_trace=self._trace_event)
            self.nodes[node_id] = SimNode(
                node_id, raft_config, founders, random.Random(self.rng.random()), hooks,
                raft_class=config.raft_class, bugs=config.bugs,
                snapshot_every_entries=config.snapshot_every_entries)
        self._client_rng = random.Random(self.rng.random())
        self._next_process = count()
        self.clients = [_Client(next(self._next_process)) for _ in range(config.clients)]
        kinds = PRESETS[config.faults]
        self.faults = generate_schedule(random.Random(self.rng.random()), self.node_ids, kinds,
                                        config.fault_phase_ms)
        self._crashed_by: dict[NodeId, int] = {}
        self.elections = 0
        self._last_role: dict[NodeId, Role | None] = {}

    # --- scheduling ----------------------------------------------------------------------

    def _at(self, time_ms: int, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (time_ms, next(self._seq), action))

    def _log(self, text: str) -> None:
        self.transcript.append(f"{self.now_ms:>7}ms {text}")

    def _trace_event(self, event: TraceEvent) -> None:
        self._log(str(event))

    # --- network -------------------------------------------------------------------------

    def _send(self, msg: Message) -> None:
        for delay in self.network.delivery_delays(msg.sender, msg.recipient):
            self._at(self.now_ms + delay, partial(self._deliver, msg))

    def _deliver(self, msg: Message) -> None:
        if self.network.is_blocked(msg.sender, msg.recipient):
            return
        node = self.nodes[msg.recipient]
        node.deliver(msg)
        self._after_step(node)

    # --- nodes ---------------------------------------------------------------------------

    def _tick(self, node: SimNode) -> None:
        if node.is_up:
            node.tick()
            self._after_step(node)
        self._at(self.now_ms + self.config.tick_ms, lambda: self._tick(node))

    def _after_step(self, node: SimNode) -> None:
        raft = node.raft
        if raft is None:
            return
        self.checker.check_node(node.node_id, raft)
        role = raft.role
        if role is Role.LEADER and self._last_role.get(node.node_id) is not Role.LEADER:
            self.elections += 1
        self._last_role[node.node_id] = role

    def _crash(self, node_id: NodeId) -> None:
        node = self.nodes[node_id]
        if node.is_up:
            self._log(f"nemesis: crash {node_id}")
            node.crash()
            self.checker.forget(node_id)
            self._last_role[node_id] = None

    def _restart(self, node_id: NodeId) -> None:
        node = self.nodes[node_id]
        if not node.is_up:
            self._log(f"nemesis: restart {node_id}")
            node.start()
            self._after_step(node)

    # --- faults --------------------------------------------------------------------------

    def _schedule_faults(self) -> None:
        for window in self.faults:
            self._at(window.start_ms, partial(self._begin_fault, window))
            self._at(window.end_ms, partial(self._end_fault, window))
        self._at(self.config.fault_phase_ms, self._heal_all)

    def _begin_fault(self, window: FaultWindow) -> None:
        self._log(f"nemesis: begin {window.describe()}")
        match window.kind:
            case FaultKind.PARTITION:
                self.network.block(set(window.links))
            case FaultKind.CRASH:
                for node_id in window.nodes:
                    self._crash(node_id)
            case FaultKind.LOSS:
                self.network.conditions.drop_rate = window.rate
            case FaultKind.DUPLICATE:
                self.network.conditions.duplicate_rate = window.rate
            case FaultKind.TRANSFER:
                leader = self.leader()
                if leader is not None:
                    raft = self.nodes[leader].raft
                    assert raft is not None
                    voters = sorted(raft.membership.voters - {leader})
                    if voters:
                        self.nodes[leader].transfer_leadership(self.rng.choice(voters))
                        self._after_step(self.nodes[leader])
            case FaultKind.MEMBERSHIP:
                self._remove_a_voter()

    def _end_fault(self, window: FaultWindow) -> None:
        self._log(f"nemesis: end {window.describe()}")
        match window.kind:
            case FaultKind.PARTITION:
                self.network.block(set())
            case FaultKind.CRASH:
                for node_id in window.nodes:
                    self._restart(node_id)
            case FaultKind.LOSS:
                self.network.conditions.drop_rate = self.network.base.drop_rate
            case FaultKind.DUPLICATE:
                self.network.conditions.duplicate_rate = self.network.base.duplicate_rate
            case FaultKind.TRANSFER | FaultKind.MEMBERSHIP:
                pass  # removed voters come back at heal time

    def _heal_all(self) -> None:
        self._log("nemesis: heal everything")
        self.network.heal()
        for node_id in self.node_ids:
            self._restart(node_id)
        self._restore_membership()

    def _remove_a_voter(self) -> None:
        leader = self.leader()
        if leader is None:
            return
        raft = self.nodes[leader].raft
        assert raft is not None
        others = sorted(raft.membership.voters - {leader})
        if len(others) < 2:
            return  # keep at least three voters' worth of the story
        victim = self.rng.choice(others)
        change = MembershipChange(MembershipChangeOp.REMOVE, victim)
        if self.nodes[leader].change_membership(change):
            self._log(f"nemesis: remove {victim} from the cluster")
        self._after_step(self.nodes[leader])

    def _restore_membership(self) -> None:
        """Add every founding node missing from the configuration back, then promote it."""
        leader = self.leader()
        if leader is not None:
            raft = self.nodes[leader].raft
            assert raft is not None
            membership = raft.membership
            for node_id in self.node_ids:
                if node_id in membership.voters:
                    continue
                op = (MembershipChangeOp.PROMOTE if node_id in membership.learners
                      else MembershipChangeOp.ADD_LEARNER)
                if self.nodes[leader].change_membership(MembershipChange(op, node_id)):
                    self._log(f"nemesis: {op.name.lower()} {node_id}")
                    self._after_step(self.nodes[leader])
                break  # one change at a time
            else:
                return
        self._at(self.now_ms + 20, self._restore_membership)

    # --- clients -------------------------------------------------------------------------

    def _client_step(self, client: _Client) -> None:
        if self.now_ms >= self._clients_stop_ms:
            return
        if client.busy:
            return
        rng = self._client_rng
        key = f"k{rng.randrange(self.config.keys)}"
        target = client.target if client.target and rng.random() < 0.9 else rng.choice(
            self.node_ids)
        node = self.nodes[target]
        choice = rng.random()
        client.busy = True
        client.deadline_ms = self.now_ms + self.config.client_timeout_ms
        if choice < 0.4:
            op_id = self.history.invoke(client.process, "read", key, None, self.now_ms)
            client.op_id = op_id
            self._at(self.now_ms + 1, lambda: node.client_read(
                key, self._reply_to(client, op_id, "read")))
        else:
            client.writes += 1
            value = f"{client.process}.{client.writes}".encode()
            request_id = f"c{client.process}-{client.writes}"
            if choice < 0.75:
                op_id = self.history.invoke(client.process, "write", key, value, self.now_ms)
                command = Command(Put(key, value), request_id)
            else:
                expected = client.last_value
                op_id = self.history.invoke(client.process, "cas", key, (expected, value),
                                            self.now_ms)
                condition = (Condition(ConditionKind.ABSENT) if expected is None
                             else Condition(ConditionKind.VALUE_EQUALS, expected))
                command = Command(Put(key, value, condition), request_id)
            client.op_id = op_id
            f = "write" if choice < 0.75 else "cas"
            self._at(self.now_ms + 1, lambda: node.client_write(
                command, self._reply_to(client, op_id, f)))
        self._at(client.deadline_ms, lambda: self._client_timeout(client, op_id))

    def _reply_to(self, client: _Client, op_id: int, f: str) -> Reply:
        def reply(ok: bool | None, output: Any, leader: NodeId | None) -> None:
            delay = self._client_rng.randint(1, 3)
            self._at(self.now_ms + delay, lambda: self._client_done(client, op_id, f, ok,
                                                                    output, leader))
        return reply

    def _client_done(self, client: _Client, op_id: int, f: str, ok: bool | None,
                     output: Any, leader: NodeId | None) -> None:
        if not client.busy or client.op_id != op_id:
            return  # the client already gave up on this operation
        if ok is None:
            self._finish(client, OpStatus.INFO, None)
            return
        if not ok:
            client.target = leader
            self._finish(client, OpStatus.FAIL, None)
            return
        match f:
            case "read":
                client.last_value = output
                self._finish(client, OpStatus.OK, output)
            case "write":
                self._finish(client, OpStatus.OK, None)
            case _:
                self._finish(client, OpStatus.OK, bool(output.succeeded))

    def _client_timeout(self, client: _Client, op_id: int) -> None:
        if client.busy and client.op_id == op_id:
            self._finish(client, OpStatus.INFO, None)

    def _finish(self, client: _Client, status: OpStatus, output: Any) -> None:
        self.history.complete(client.op_id, status, output, self.now_ms)
        client.busy = False
        if status is OpStatus.INFO:
            # the operation stays open forever: this client continues as a new process
            client.process = next(self._next_process)
            client.target = None
        think = self._client_rng.randint(0, 20)
        self._at(self.now_ms + think, lambda: self._client_step(client))

    # --- running -------------------------------------------------------------------------

    def run(self, script: Script | None = None) -> SimResult:
        """Run to the end. A ``script`` (see ``concord.sim.scenario``) replaces the random
        nemesis; liveness is then not checked, but the script must reach its end."""
        config = self.config
        self._script = script
        self._script_waiting_for: Callable[[], bool] | None = None
        if script is not None:
            self._script_waiting_for = next(script)
        heal_ms = config.fault_phase_ms
        end_ms = heal_ms + config.liveness_bound_ms
        # clients stop invoking a little before the end so the last operations complete
        self._clients_stop_ms = end_ms - config.client_timeout_ms - 50
        for node in self.nodes.values():
            node.start()
            phase = self.rng.randrange(config.tick_ms)
            self._at(phase, partial(self._tick, node))
        if script is None:
            self._schedule_faults()
        for client in self.clients:
            self._at(self.rng.randint(0, 50), partial(self._client_step, client))
        violation: str | None = None
        try:
            while self._queue and self._queue[0][0] <= end_ms:
                self.now_ms, _, action = heapq.heappop(self._queue)
                action()
                if self._script_waiting_for is not None:
                    self._advance_script()
            if script is None:
                self._check_liveness(heal_ms)
        except (InvariantViolation, LivenessFailure) as exc:
            violation = f"{type(exc).__name__}: {exc}"
            self._log(f"VIOLATION {violation}")
        if violation is None and self._script_waiting_for is not None:
            violation = "scenario did not complete: it never reached its last step"
        lin: CheckResult | None = None
        operations = self.history.operations()
        if violation is None:
            model = ConcordKVModel()
            timeout = config.lincheck_timeout_s if self._clock else None
            lin = check(operations, model, timeout_s=timeout, clock=self._clock)
            if lin.verdict is Verdict.NOT_LINEARIZABLE:
                violation = f"not linearizable:\n{format_result(lin, model)}"
            elif lin.verdict is Verdict.UNKNOWN:
                violation = "linearizability undecided within the time budget"
        return SimResult(
            seed=config.seed, config=config, violation=violation, operations=len(operations),
            ok_operations=sum(1 for op in operations if op.status is OpStatus.OK),
            faults=tuple(self.faults), lincheck=lin, messages_sent=self.network.sent,
            committed_entries=len(self.checker.committed), leader_elections=self.elections,
            transcript=tuple(self.transcript))

    def _advance_script(self) -> None:
        assert self._script is not None
        while self._script_waiting_for is not None and self._script_waiting_for():
            try:
                self._script_waiting_for = next(self._script)
            except StopIteration:
                self._script_waiting_for = None

    # --- actions for scripts -------------------------------------------------------------

    def isolate(self, *groups: list[NodeId]) -> None:
        """Cut the network into ``groups``; nodes in no group are cut from everyone."""
        grouped = {n for g in groups for n in g}
        singles = [[n] for n in self.node_ids if n not in grouped]
        self.network.block(cut_between([*groups, *singles]))
        self._log(f"script: partition {[*groups, *singles]}")

    def heal_network(self) -> None:
        self.network.block(set())
        self._log("script: heal network")

    def crash(self, node_id: NodeId) -> None:
        self._crash(node_id)

    def restart(self, node_id: NodeId) -> None:
        self._restart(node_id)

    def submit_write(self, node_id: NodeId, key: str, value: bytes) -> None:
        """A fire-and-forget write straight to a node (not part of the client history)."""
        self.nodes[node_id].client_write(Command(Put(key, value)), lambda *_: None)
        self._after_step(self.nodes[node_id])

    def leader(self) -> NodeId | None:
        leaders = [n for n, node in self.nodes.items() if node.role is Role.LEADER]
        return leaders[0] if len(leaders) == 1 else None

    def _check_liveness(self, heal_ms: int) -> None:
        """After healing: one leader known to all, logs converged, late operations succeed."""
        leaders = {n.raft.leader for n in self.nodes.values() if n.raft is not None}
        if len(leaders) != 1 or None in leaders:
            raise LivenessFailure(
                f"{self.config.liveness_bound_ms} ms after healing the nodes follow {leaders}")
        applied = {n.fsm.applied_index for n in self.nodes.values()}
        commits = {n.raft.commit_index for n in self.nodes.values() if n.raft is not None}
        if len(applied) != 1 or len(commits) != 1:
            raise LivenessFailure(f"logs did not converge after healing: applied {applied}, "
                                  f"commit {commits}")
        settle_ms = heal_ms + 4 * self.config.election_timeout_ticks * self.config.tick_ms
        late_writes = [op for op in self.history.operations()
                       if op.invoke_time >= settle_ms and op.f != "read"]
        stuck = [op for op in late_writes if op.status is OpStatus.INFO]
        if stuck:
            raise LivenessFailure(
                f"{len(stuck)} write(s) invoked after the cluster settled timed out, "
                f"e.g. {stuck[0]}")
        if self.clients and not any(op.status is OpStatus.OK for op in late_writes):
            raise LivenessFailure("no write succeeded after the cluster settled")


Script = Generator[Callable[[], bool], None, None]
"""A scripted nemesis: a generator that acts on the world and yields a condition to wait
for; it resumes after the first step at which the condition holds."""


def run_simulation(config: SimConfig, clock: Callable[[], float] | None = None) -> SimResult:
    return World(config, clock).run()
