"""A deterministic simulator for SWIM membership: virtual time, a virtual network, faults.

Every node runs a ``SwimNode``. The world delivers messages after a random delay drawn per
message (per directed link when set), drops a fraction of them, cuts links between groups
(partitions), crashes nodes (they stop for good) and pauses them (like SIGSTOP: nothing
runs, arriving messages wait in the socket buffer and are handled on resume, before the
timers). A node is ticked exactly when its core asks (``next_deadline_ns``).

Each node reads its own clocks: a monotonic clock with an arbitrary base (so the core can
never get away with comparing monotonic readings across nodes) and a wall clock that may
be offset from true time (to check clock offset estimation). The same seed gives the same
run, event for event.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from concord.detector.messages import MemberState, NodeId, SwimMessage
from concord.detector.swim import MemberView, SwimConfig, SwimNode

_MS = 1_000_000
_S = 1_000_000_000
# true wall-clock time at the start of every simulation (2024-01-01T00:00:00Z)
WALL_EPOCH_NS = 1_704_067_200 * _S


@dataclass(frozen=True, slots=True)
class Observation:
    """``observer`` saw ``member`` change state at true time ``at_ns``."""

    at_ns: int
    observer: NodeId
    member: NodeId
    previous: MemberState | None
    state: MemberState
    incarnation: int


class _EventKind(IntEnum):
    DELIVER = 0
    WAKE = 1
    RESUME = 2


@dataclass(slots=True)
class _Node:
    swim: SwimNode
    monotonic_base_ns: int
    clock_offset_ns: int
    crashed_at_ns: int | None = None
    paused: bool = False
    inbox: list[SwimMessage] = field(default_factory=list)
    wake_ns: int | None = None


class MembershipWorld:
    """A cluster of SWIM nodes on a virtual network. Node ``node_ids[0]`` is the seed every
    other node joins through at time 0."""

    def __init__(self, seed: int, node_ids: Sequence[NodeId], config: SwimConfig, *,
                 loss_rate: float = 0.0, min_delay_ns: int = 1 * _MS,
                 max_delay_ns: int = 10 * _MS,
                 clock_offsets_ns: Mapping[NodeId, int] | None = None) -> None:
        assert node_ids and len(set(node_ids)) == len(node_ids)
        assert 0 <= min_delay_ns <= max_delay_ns
        self.seed = seed
        self.config = config
        self.now_ns = 0
        self.loss_rate = loss_rate
        self.min_delay_ns = min_delay_ns
        self.max_delay_ns = max_delay_ns
        self.observations: list[Observation] = []
        self.messages_sent = 0
        self.messages_dropped = 0
        self._rng = random.Random(seed)
        self._link_delays_ns: dict[tuple[NodeId, NodeId], tuple[int, int]] = {}
        self._group_of: dict[NodeId, int] = {}
        self._queue: list[tuple[int, int, _EventKind, NodeId, SwimMessage | None]] = []
        self._pushed = 0
        self._seed_id = node_ids[0]
        offsets = clock_offsets_ns or {}
        self._nodes: dict[NodeId, _Node] = {}
        for node_id in node_ids:
            self._add(node_id, offsets.get(node_id, 0))

    # --- building and faults -------------------------------------------------------------

    def _add(self, node_id: NodeId, clock_offset_ns: int) -> None:
        swim = SwimNode(self.config, node_id, random.Random(self._rng.getrandbits(64)),
                        address=node_id)
        node = _Node(swim, self._rng.randrange(1 << 40), clock_offset_ns)
        self._nodes[node_id] = node
        swim.join([] if node_id == self._seed_id else [self._seed_id])
        self._schedule_wake(node_id, self.now_ns)

    def add_node(self, node_id: NodeId, clock_offset_ns: int = 0) -> None:
        """Start a new node now; it joins through the seed."""
        assert node_id not in self._nodes
        self._add(node_id, clock_offset_ns)

    def crash(self, node_id: NodeId) -> None:
        """Stop ``node_id`` for good: it never runs again, messages to it are lost."""
        node = self._nodes[node_id]
        assert node.crashed_at_ns is None
        node.crashed_at_ns = self.now_ns
        node.inbox.clear()

    def pause(self, node_id: NodeId, duration_ns: int) -> None:
        """Freeze ``node_id`` for ``duration_ns`` (SIGSTOP then SIGCONT)."""
        node = self._nodes[node_id]
        assert node.crashed_at_ns is None and not node.paused
        node.paused = True
        self._push(self.now_ns + duration_ns, _EventKind.RESUME, node_id, None)

    def leave(self, node_id: NodeId) -> None:
        """``node_id`` leaves gracefully (it keeps running to spread the news)."""
        self._nodes[node_id].swim.leave()
        self._flush(node_id)

    def partition(self, *groups: Collection[NodeId]) -> None:
        """Cut every link between different groups (messages in flight are lost too)."""
        self._group_of = {node_id: i for i, group in enumerate(groups) for node_id in group}

    def heal(self) -> None:
        self._group_of = {}

    def set_link_delay(self, sender: NodeId, recipient: NodeId, min_ns: int,
                       max_ns: int) -> None:
        """Messages from ``sender`` to ``recipient`` take between ``min_ns`` and ``max_ns``."""
        assert 0 <= min_ns <= max_ns
        self._link_delays_ns[(sender, recipient)] = (min_ns, max_ns)

    def _cut(self, sender: NodeId, recipient: NodeId) -> bool:
        groups = self._group_of
        return (sender in groups or recipient in groups) and (
            groups.get(sender) != groups.get(recipient))

    # --- inspection ----------------------------------------------------------------------

    def node(self, node_id: NodeId) -> SwimNode:
        return self._nodes[node_id].swim

    def is_running(self, node_id: NodeId) -> bool:
        """Not crashed (a paused node is still running, only frozen)."""
        return self._nodes[node_id].crashed_at_ns is None

    def running(self) -> list[NodeId]:
        return [n for n in self._nodes if self.is_running(n)]

    def true_clock_offset_ns(self, of: NodeId, seen_from: NodeId) -> int:
        """``of``'s wall clock minus ``seen_from``'s: what ``seen_from`` should estimate."""
        return self._nodes[of].clock_offset_ns - self._nodes[seen_from].clock_offset_ns

    def view(self, observer: NodeId) -> dict[NodeId, MemberView]:
        return {m.node_id: m for m in self._nodes[observer].swim.members()}

    def converged(self) -> bool:
        """Every running node sees every running node ALIVE at its current incarnation, and
        every crashed node as DEAD or LEFT (or has never heard of it)."""
        running = self.running()
        incarnation = {n: self._nodes[n].swim.incarnation for n in running}
        for observer in running:
            view = self.view(observer)
            for member in self._nodes:
                seen = view.get(member)
                if member in incarnation:
                    if (seen is None or seen.state is not MemberState.ALIVE
                            or seen.incarnation != incarnation[member]):
                        return False
                elif seen is not None and seen.state in (MemberState.ALIVE,
                                                         MemberState.SUSPECT):
                    return False
        return True

    def false_deaths(self) -> list[Observation]:
        """Observations declaring DEAD a member that had not crashed at that time."""
        found = []
        for o in self.observations:
            if o.state is MemberState.DEAD:
                crashed = self._nodes[o.member].crashed_at_ns
                if crashed is None or o.at_ns < crashed:
                    found.append(o)
        return found

    # --- running -------------------------------------------------------------------------

    def run_until(self, until_ns: int) -> None:
        """Process every event up to and including true time ``until_ns``."""
        queue = self._queue
        while queue and queue[0][0] <= until_ns:
            at_ns, _, kind, node_id, msg = heapq.heappop(queue)
            self.now_ns = at_ns
            node = self._nodes[node_id]
            if node.crashed_at_ns is not None:
                continue
            match kind:
                case _EventKind.DELIVER:
                    assert msg is not None
                    if self._cut(msg.sender, node_id):
                        self.messages_dropped += 1
                    elif node.paused:
                        node.inbox.append(msg)
                    else:
                        self._deliver(node_id, msg)
                case _EventKind.WAKE:
                    if not node.paused and node.wake_ns == at_ns:
                        node.wake_ns = None
                        self._tick(node_id)
                case _EventKind.RESUME:
                    node.paused = False
                    waiting, node.inbox = node.inbox, []
                    for waiting_msg in waiting:
                        self._deliver(node_id, waiting_msg)
                    node.wake_ns = None
                    self._tick(node_id)
        self.now_ns = max(self.now_ns, until_ns)

    def run_for(self, duration_ns: int) -> None:
        self.run_until(self.now_ns + duration_ns)

    def run_until_converged(self, limit_ns: int, check_every_ns: int = 100 * _MS) -> int | None:
        """Run until ``converged()`` (checked every ``check_every_ns``); returns the true
        time it took from now, or None if ``limit_ns`` passed first."""
        start_ns = self.now_ns
        while self.now_ns - start_ns <= limit_ns:
            if self.converged():
                return self.now_ns - start_ns
            self.run_for(check_every_ns)
        return None

    def _clocks(self, node: _Node) -> tuple[int, int]:
        """(monotonic, wall) readings of ``node``'s clocks now."""
        return (self.now_ns + node.monotonic_base_ns,
                WALL_EPOCH_NS + self.now_ns + node.clock_offset_ns)

    def _deliver(self, node_id: NodeId, msg: SwimMessage) -> None:
        node = self._nodes[node_id]
        monotonic_ns, wall_ns = self._clocks(node)
        node.swim.step(msg, monotonic_ns, wall_ns)
        self._flush(node_id)

    def _tick(self, node_id: NodeId) -> None:
        node = self._nodes[node_id]
        monotonic_ns, wall_ns = self._clocks(node)
        node.swim.tick(monotonic_ns, wall_ns)
        deadline = node.swim.next_deadline_ns()
        assert deadline is None or deadline > monotonic_ns, "tick left a timer overdue"
        self._flush(node_id)

    def _flush(self, node_id: NodeId) -> None:
        """Send what the node produced, record its changes, schedule its next tick."""
        node = self._nodes[node_id]
        ready = node.swim.ready()
        for change in ready.changes:
            self.observations.append(Observation(self.now_ns, node_id, change.node_id,
                                                 change.previous, change.state,
                                                 change.incarnation))
        for msg in ready.messages:
            self._send(msg)
        deadline = node.swim.next_deadline_ns()
        if deadline is not None:
            self._schedule_wake(node_id, max(self.now_ns, deadline - node.monotonic_base_ns))

    def _schedule_wake(self, node_id: NodeId, at_ns: int) -> None:
        node = self._nodes[node_id]
        if node.wake_ns is None or at_ns < node.wake_ns:
            node.wake_ns = at_ns
            self._push(at_ns, _EventKind.WAKE, node_id, None)

    def _send(self, msg: SwimMessage) -> None:
        self.messages_sent += 1
        if self._cut(msg.sender, msg.recipient) or self._rng.random() < self.loss_rate:
            self.messages_dropped += 1
            return
        low, high = self._link_delays_ns.get((msg.sender, msg.recipient),
                                             (self.min_delay_ns, self.max_delay_ns))
        self._push(self.now_ns + self._rng.randint(low, high), _EventKind.DELIVER,
                   msg.recipient, msg)

    def _push(self, at_ns: int, kind: _EventKind, node_id: NodeId,
              msg: SwimMessage | None) -> None:
        self._pushed += 1
        heapq.heappush(self._queue, (at_ns, self._pushed, kind, node_id, msg))


def first_time(observations: Iterable[Observation], member: NodeId, state: MemberState,
               after_ns: int = 0) -> int | None:
    """When any observer first saw ``member`` turn ``state`` at or after ``after_ns``."""
    times = [o.at_ns for o in observations
             if o.member == member and o.state is state and o.at_ns >= after_ns]
    return min(times) if times else None
