"""Nemeses: the fault kinds, seeded fault schedules, partition shapes, and the executor.

A schedule is generated up front from a seed (``build_schedule``): quiet gaps alternate with
fault windows, one fault at a time, each window's kind, length and targets drawn from a
``random.Random(seed)``. Targets that only exist at run time (the current leader) are
resolved when the window opens, and what was actually done is recorded as ``FaultEvent``s.
The same seed, node list, duration, kinds and timing give the same schedule.

Partitions use each node's peer-link fault hook: a *grudge* maps every node to the peers it
must not hear from, and is set on both sides (``blocked_peers``). A clock skew sets one node's
wall-clock offset through the same hook (``clock_offset_ms``). Healing (at the end of every
window and of the run) resumes paused nodes, restarts dead ones and clears every node's
faults (which puts a skewed clock back to its startup offset).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

from concord.chaos.control import ClusterControl, ControlError

LEADER_WAIT_S: Final = 5.0
"""How long a leader-targeted fault waits for a leader before it is skipped."""

HEAL_RETRY_S: Final = 5.0
"""How long healing keeps trying to clear a node's faults."""

TRANSFER_TIMEOUT_S: Final = 5.0


class FaultKind(IntEnum):
    """One kind of fault. Values are append-only (they appear in saved schedules)."""

    KILL_ONE = 1  # kill -9 one node, restart it at the end of the window
    KILL_LEADER = 2
    KILL_MAJORITY = 3
    PAUSE_ONE = 4  # SIGSTOP one node, SIGCONT at the end
    PAUSE_LEADER = 5
    PARTITION_ONE = 6  # isolate one node
    PARTITION_LEADER = 7
    PARTITION_HALVES = 8  # a majority and a minority that cannot talk
    PARTITION_BRIDGE = 9  # two halves that both see one bridge node
    PARTITION_RING = 10  # each node sees a majority, no two the same (4 nodes or more)
    DELAY = 11  # every peer message delayed, with jitter (so reordered)
    LOSS = 12  # a share of every peer message lost
    TRANSFER_LEADER = 13  # hand leadership to another node (an instant, not a window)
    CLOCK_SKEW = 14  # shift one node's wall clock, back at the end of the window

    @property
    def label(self) -> str:
        """The command-line and report name, e.g. ``kill-leader``."""
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_label(cls, label: str) -> FaultKind:
        return cls[label.upper().replace("-", "_")]

    @property
    def family(self) -> str:
        """kill, pause, partition, net, transfer or clock: the group in ``--nemesis`` and
        charts."""
        return FAMILY_OF[self]


FAMILIES: Final[dict[str, tuple[FaultKind, ...]]] = {
    "kill": (FaultKind.KILL_ONE, FaultKind.KILL_LEADER, FaultKind.KILL_MAJORITY),
    "pause": (FaultKind.PAUSE_ONE, FaultKind.PAUSE_LEADER),
    "partition": (FaultKind.PARTITION_ONE, FaultKind.PARTITION_LEADER,
                  FaultKind.PARTITION_HALVES, FaultKind.PARTITION_BRIDGE,
                  FaultKind.PARTITION_RING),
    "net": (FaultKind.DELAY, FaultKind.LOSS),
    "transfer": (FaultKind.TRANSFER_LEADER,),
    "clock": (FaultKind.CLOCK_SKEW,),
}
FAMILY_OF: Final = {kind: family for family, kinds in FAMILIES.items() for kind in kinds}
assert set(FAMILY_OF) == set(FaultKind), "every fault kind belongs to one family"

MIN_RING_NODES: Final = 4
"""With three nodes every node sees a majority only if it sees everyone: no ring exists."""


MIN_CHAOS_NODES: Final = 3
"""Fewer nodes leave no majority to survive a fault, nor two sides to partition."""

CLOCK_SKEW_MIN_MS: Final = 200
CLOCK_SKEW_MAX_MS: Final = 2_000
"""A clock skew shifts a clock by this much either way, in steps of ``CLOCK_SKEW_STEP_MS``:
on both sides of membership's default ``max_clock_offset_ms`` (500)."""
CLOCK_SKEW_STEP_MS: Final = 50


def available_kinds(node_count: int) -> tuple[FaultKind, ...]:
    """The fault kinds a cluster of ``node_count`` nodes supports (ring needs four)."""
    assert node_count >= MIN_CHAOS_NODES, f"chaos runs need {MIN_CHAOS_NODES} nodes or more"
    return tuple(k for k in FaultKind
                 if k is not FaultKind.PARTITION_RING or node_count >= MIN_RING_NODES)


def parse_nemesis(spec: str, node_count: int) -> tuple[FaultKind, ...]:
    """``all``, family names (kill, pause, partition, net, transfer, clock) and kind labels,
    comma-separated, as the sorted kinds they name; ValueError for an unknown or
    unsupported name."""
    supported = available_kinds(node_count)
    chosen: set[FaultKind] = set()
    for raw in spec.split(","):
        name = raw.strip().lower()
        if name == "all":
            chosen.update(supported)
        elif name in FAMILIES:
            chosen.update(k for k in FAMILIES[name] if k in supported)
        elif name:
            try:
                kind = FaultKind.from_label(name)
            except KeyError:
                names = ["all", *FAMILIES, *(k.label for k in FaultKind)]
                raise ValueError(f"unknown nemesis {name!r} (known: {', '.join(names)})") \
                    from None
            if kind not in supported:
                raise ValueError(f"nemesis {kind.label} needs more than {node_count} nodes")
            chosen.add(kind)
    if not chosen:
        raise ValueError(f"no fault kind in {spec!r} fits a {node_count}-node cluster")
    return tuple(sorted(chosen))


# -- partition shapes ---------------------------------------------------------------------

Grudge = dict[str, frozenset[str]]
"""For every node, the peers it drops messages to and from."""


@dataclass(frozen=True, slots=True)
class Partition:
    """A partition shape: the grudge to install and how a person reads it."""

    grudge: Grudge
    description: str  # e.g. "n2 | n1 n3"


def _side(nodes: Iterable[str]) -> str:
    return " ".join(nodes)


def split(node_ids: Sequence[str], sides: Sequence[Sequence[str]]) -> Partition:
    """Every node blocks every node outside its own side (nodes on no side block nobody)."""
    side_of = {node: index for index, side in enumerate(sides) for node in side}
    grudge = {node: frozenset(other for other in node_ids if node in side_of
                              and other in side_of and side_of[other] != side_of[node])
              for node in node_ids}
    return Partition(grudge, " | ".join(_side(side) for side in sides))


def isolate(node_ids: Sequence[str], isolated: str) -> Partition:
    """``isolated`` hears nobody and nobody hears it."""
    assert isolated in node_ids
    return split(node_ids, [[isolated], [n for n in node_ids if n != isolated]])


def halves(order: Sequence[str]) -> Partition:
    """The first ``n // 2`` nodes of ``order`` (a minority) cut off from the rest."""
    minority = len(order) // 2
    return split(order, [order[:minority], order[minority:]])


def bridge(order: Sequence[str]) -> Partition:
    """Two halves of ``order`` that cannot talk, and between them one node that sees both."""
    assert len(order) >= 3
    middle = (len(order) - 1) // 2
    cut = split(order, [order[:middle], order[middle + 1:]])
    return Partition(cut.grudge, f"{cut.description}, bridged by {order[middle]}")


def ring(order: Sequence[str]) -> Partition:
    """Nodes on a circle in ``order``, each hearing the nodes at most ``majority // 2``
    steps away: every node sees a majority (itself included), no two the same one."""
    count = len(order)
    assert count >= MIN_RING_NODES
    reach = (count // 2 + 1) // 2
    grudge: Grudge = {}
    for index, node in enumerate(order):
        grudge[node] = frozenset(
            other for step, other in enumerate(order)
            if min((step - index) % count, (index - step) % count) > reach
        )
    return Partition(grudge, f"ring {'-'.join(order)}, each sees {2 * reach} neighbours")


# -- schedules ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FaultWindow:
    """One planned fault: from ``start_s`` to ``end_s`` seconds after the run started.

    ``targets``: the node for kill, pause, partition-one and clock-skew; the killed nodes
    for kill-majority; a node order for halves, bridge and ring; the new leader for a
    transfer; empty for leader-targeted kinds (resolved when the window opens).
    ``clock_offset_ms``: the skewed node's wall-clock offset during a clock-skew window.
    """

    index: int
    kind: FaultKind
    start_s: float
    end_s: float
    targets: tuple[str, ...] = ()
    delay_ms: int = 0
    jitter_ms: int = 0
    drop_rate: float = 0.0
    clock_offset_ms: int = 0

    def __post_init__(self) -> None:
        assert 0.0 <= self.start_s <= self.end_s, "a window ends after it starts"

    def to_json(self) -> dict[str, object]:
        return {"index": self.index, "kind": self.kind.label, "start_s": self.start_s,
                "end_s": self.end_s, "targets": list(self.targets), "delay_ms": self.delay_ms,
                "jitter_ms": self.jitter_ms, "drop_rate": self.drop_rate,
                "clock_offset_ms": self.clock_offset_ms}


@dataclass(frozen=True, slots=True)
class ScheduleSettings:
    """The timing of a schedule: a quiet gap before each fault, then its window (seconds;
    each drawn uniformly from half to one and a half times the mean)."""

    quiet_mean_s: float = 4.0
    fault_mean_s: float = 4.0
    warmup_s: float = 2.0

    def __post_init__(self) -> None:
        assert self.quiet_mean_s > 0 and self.fault_mean_s > 0 and self.warmup_s >= 0


@dataclass(frozen=True, slots=True)
class Schedule:
    seed: int
    node_ids: tuple[str, ...]
    duration_s: float
    kinds: tuple[FaultKind, ...]
    settings: ScheduleSettings
    windows: tuple[FaultWindow, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "seed": self.seed, "node_ids": list(self.node_ids), "duration_s": self.duration_s,
            "kinds": [k.label for k in self.kinds],
            "quiet_mean_s": self.settings.quiet_mean_s,
            "fault_mean_s": self.settings.fault_mean_s, "warmup_s": self.settings.warmup_s,
            "windows": [w.to_json() for w in self.windows],
        }


def build_schedule(seed: int, node_ids: Sequence[str], duration_s: float,
                   kinds: Sequence[FaultKind],
                   settings: ScheduleSettings = ScheduleSettings()) -> Schedule:
    """The fault windows of a run, a pure function of its arguments (see the module doc)."""
    assert kinds, "at least one fault kind"
    assert len(set(node_ids)) == len(node_ids) >= 1
    rng = random.Random(seed)
    nodes = list(node_ids)
    windows: list[FaultWindow] = []
    now_s = settings.warmup_s
    while True:
        now_s += rng.uniform(0.5, 1.5) * settings.quiet_mean_s
        kind = rng.choice(list(kinds))
        length_s = 0.0 if kind is FaultKind.TRANSFER_LEADER else (
            rng.uniform(0.5, 1.5) * settings.fault_mean_s)
        if now_s + length_s > duration_s:
            break
        windows.append(_window(rng, len(windows), kind, now_s, now_s + length_s, nodes))
        now_s += length_s
    return Schedule(seed, tuple(nodes), duration_s, tuple(kinds), settings, tuple(windows))


def _window(rng: random.Random, index: int, kind: FaultKind, start_s: float, end_s: float,
            nodes: list[str]) -> FaultWindow:
    start_s, end_s = round(start_s, 3), round(end_s, 3)
    match kind:
        case FaultKind.KILL_ONE | FaultKind.PAUSE_ONE | FaultKind.PARTITION_ONE \
                | FaultKind.TRANSFER_LEADER:
            return FaultWindow(index, kind, start_s, end_s, (rng.choice(nodes),))
        case FaultKind.KILL_MAJORITY:
            majority = rng.sample(nodes, len(nodes) // 2 + 1)
            return FaultWindow(index, kind, start_s, end_s, tuple(sorted(majority)))
        case FaultKind.PARTITION_HALVES | FaultKind.PARTITION_BRIDGE | FaultKind.PARTITION_RING:
            return FaultWindow(index, kind, start_s, end_s, tuple(rng.sample(nodes, len(nodes))))
        case FaultKind.KILL_LEADER | FaultKind.PAUSE_LEADER | FaultKind.PARTITION_LEADER:
            return FaultWindow(index, kind, start_s, end_s)
        case FaultKind.DELAY:
            delay_ms = rng.randrange(20, 201, 10)
            return FaultWindow(index, kind, start_s, end_s, delay_ms=delay_ms,
                               jitter_ms=delay_ms // 2)
        case FaultKind.LOSS:
            return FaultWindow(index, kind, start_s, end_s,
                               drop_rate=round(rng.uniform(0.1, 0.4), 2))
        case FaultKind.CLOCK_SKEW:
            victim = rng.choice(nodes)
            offset_ms = rng.choice((-1, 1)) * rng.randrange(
                CLOCK_SKEW_MIN_MS, CLOCK_SKEW_MAX_MS + 1, CLOCK_SKEW_STEP_MS)
            return FaultWindow(index, kind, start_s, end_s, (victim,),
                               clock_offset_ms=offset_ms)


# -- execution ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """Something the nemesis did, ``time_ns`` after the run started.

    ``action`` is ``start`` (a window opened), ``heal`` (faults healed), ``skip`` (a window
    that could not be applied) or ``error``; ``window`` is -1 outside any window.
    """

    time_ns: int
    window: int
    action: str
    kind: str
    nodes: tuple[str, ...]
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"time_ns": self.time_ns, "window": self.window, "action": self.action,
                "kind": self.kind, "nodes": list(self.nodes), "detail": self.detail}


@dataclass(slots=True)
class Nemesis:
    """Applies fault windows to a cluster through ``control`` and heals them.

    ``clock_ns`` gives nanoseconds since the run started (the history's time base).
    Nodes found down that the nemesis did not kill are recorded in ``crashed`` (unless
    ``knows_kills`` is off); ``on_event`` sees every event as it is recorded.
    """

    control: ClusterControl
    clock_ns: Callable[[], int]
    on_event: Callable[[FaultEvent], None] | None = None
    knows_kills: bool = True  # False for one-shot commands: kills happened elsewhere
    events: list[FaultEvent] = field(default_factory=list)
    crashed: list[str] = field(default_factory=list)
    _killed: set[str] = field(default_factory=set)

    def _record(self, window: int, action: str, kind: str, nodes: Iterable[str],
                detail: str) -> FaultEvent:
        event = FaultEvent(self.clock_ns(), window, action, kind, tuple(nodes), detail)
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)
        return event

    async def run(self, schedule: Schedule, stop: asyncio.Event) -> None:
        """Play ``schedule`` in real time (its zero is ``clock_ns`` zero) until it ends or
        ``stop`` is set; heal after every window."""
        for window in schedule.windows:
            if await _sleep_until(self.clock_ns, window.start_s, stop):
                return
            await self.apply(window)
            if window.kind is FaultKind.TRANSFER_LEADER:
                continue
            stopped = await _sleep_until(self.clock_ns, window.end_s, stop)
            await self.heal(window.index)
            if stopped:
                return

    async def apply(self, window: FaultWindow) -> FaultEvent:
        """Open one window; its ``start`` event (``skip`` without a leader, ``error`` when
        the cluster refused an action)."""
        kind = window.kind
        control = self.control
        nodes = control.node_ids
        try:
            leader = None
            if kind in (FaultKind.KILL_LEADER, FaultKind.PAUSE_LEADER,
                        FaultKind.PARTITION_LEADER):
                leader = await control.wait_leader(LEADER_WAIT_S)
                if leader is None:
                    return self._record(window.index, "skip", kind.label, (),
                                        f"no leader within {LEADER_WAIT_S:g} s")
            match kind:
                case FaultKind.KILL_ONE | FaultKind.KILL_LEADER | FaultKind.KILL_MAJORITY:
                    victims = (leader,) if leader is not None else window.targets
                    for node_id in victims:
                        self._killed.add(node_id)
                        await control.kill(node_id)
                    return self._record(window.index, "start", kind.label, victims,
                                        f"kill -9 {', '.join(victims)}")
                case FaultKind.PAUSE_ONE | FaultKind.PAUSE_LEADER:
                    victims = (leader,) if leader is not None else window.targets
                    for node_id in victims:
                        await control.pause(node_id)
                    return self._record(window.index, "start", kind.label, victims,
                                        f"SIGSTOP {', '.join(victims)}")
                case FaultKind.PARTITION_ONE | FaultKind.PARTITION_LEADER:
                    victim = leader if leader is not None else window.targets[0]
                    return await self.partition(isolate(nodes, victim), (victim,), window)
                case FaultKind.PARTITION_HALVES:
                    return await self.partition(halves(window.targets),
                                                window.targets[:len(nodes) // 2], window)
                case FaultKind.PARTITION_BRIDGE:
                    middle = (len(nodes) - 1) // 2
                    return await self.partition(bridge(window.targets),
                                                (window.targets[middle],), window)
                case FaultKind.PARTITION_RING:
                    return await self.partition(ring(window.targets), window.targets, window)
                case FaultKind.DELAY | FaultKind.LOSS:
                    settings: dict[str, object] = (
                        {"delay_ms": window.delay_ms, "jitter_ms": window.jitter_ms}
                        if kind is FaultKind.DELAY else {"drop_rate": window.drop_rate})
                    await asyncio.gather(*(control.set_faults(n, settings) for n in nodes))
                    shown = (f"{window.delay_ms} ms ± {window.jitter_ms} ms"
                             if kind is FaultKind.DELAY else f"{window.drop_rate:.0%} dropped")
                    return self._record(window.index, "start", kind.label, nodes, shown)
                case FaultKind.CLOCK_SKEW:
                    victim = window.targets[0]
                    await control.set_faults(victim,
                                             {"clock_offset_ms": window.clock_offset_ms})
                    return self._record(window.index, "start", kind.label, (victim,),
                                        f"clock {window.clock_offset_ms:+d} ms")
                case FaultKind.TRANSFER_LEADER:
                    before = await control.find_leader()
                    target = window.targets[0] if window.targets[0] != before else None
                    after = await control.transfer_leader(target, TRANSFER_TIMEOUT_S)
                    return self._record(window.index, "start", kind.label, (after,),
                                        f"leader {before} -> {after}")
        except ControlError as error:
            return self._record(window.index, "error", kind.label, (), str(error))

    async def partition(self, partition: Partition, shown_nodes: Sequence[str],
                        window: FaultWindow | None = None) -> FaultEvent:
        """Set every node's ``blocked_peers`` from the partition's grudge (both sides of
        every cut); the ``start`` event (kind ``partition`` outside a window)."""
        await asyncio.gather(*(self.control.set_faults(node, {"blocked_peers": sorted(peers)})
                               for node, peers in partition.grudge.items()))
        index, kind = (-1, "partition") if window is None else (window.index, window.kind.label)
        return self._record(index, "start", kind, shown_nodes, partition.description)

    async def heal(self, window: int = -1) -> FaultEvent:
        """Resume every node, restart the dead ones, clear every node's faults (all nodes
        at once: with containers each step is a docker command)."""
        control = self.control
        outcomes = await asyncio.gather(*(self._heal_node(n) for n in control.node_ids))
        restarted = [n for n, (was_restarted, _) in zip(control.node_ids, outcomes, strict=True)
                     if was_restarted]
        notes = [note for _, note in outcomes if note]
        self._killed.clear()
        if restarted:
            notes.insert(0, f"restarted {', '.join(restarted)}")
        return self._record(window, "heal", "heal", restarted, "; ".join(notes) or "healed")

    async def _heal_node(self, node_id: str) -> tuple[bool, str]:
        """Resume the node, restart it if it is down (and wait until it answers), else clear
        its faults: (restarted, notes or ''). A step that fails is noted and the next is
        still tried."""
        control = self.control
        notes = []
        try:
            await control.resume(node_id)
        except ControlError as error:
            notes.append(str(error))
        try:
            up = await control.is_up(node_id)
        except ControlError as error:
            notes.append(str(error))
            up = True  # unknown: at least clear its faults
        if up:
            notes.append(await self._clear(node_id))
            return False, "; ".join(note for note in notes if note)
        if self.knows_kills and node_id not in self._killed:
            self.crashed.append(node_id)
            notes.append(f"{node_id} was down without being killed")
        try:
            await control.restart(node_id)
        except ControlError as error:
            notes.append(str(error))
            return False, "; ".join(notes)
        # wait (bounded) until it answers, so that the next fault finds it listening
        notes.append(await self._clear(node_id))
        return True, "; ".join(note for note in notes if note)

    async def _clear(self, node_id: str) -> str:
        """Clear the node's faults, retrying while it does not answer; an error or ''."""
        deadline = time.monotonic() + HEAL_RETRY_S
        while True:
            try:
                await self.control.clear_faults(node_id)
                return ""
            except ControlError as error:
                if time.monotonic() >= deadline:
                    return str(error)
            await asyncio.sleep(0.2)


async def _sleep_until(clock_ns: Callable[[], int], at_s: float, stop: asyncio.Event) -> bool:
    """Wait until ``at_s`` seconds on ``clock_ns``; True if ``stop`` was set first."""
    delay_s = at_s - clock_ns() / 1e9
    if delay_s > 0:
        try:
            await asyncio.wait_for(stop.wait(), delay_s)
        except TimeoutError:
            return False
    return stop.is_set()
