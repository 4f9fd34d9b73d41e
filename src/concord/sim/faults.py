"""Seeded fault schedules (the nemesis): partitions, crashes, message loss and duplication.

A schedule is a list of fault windows generated from the run's random generator before the
run starts, so a seed names the whole run. Every fault is healed by ``heal_at_ms``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from concord.raft.messages import NodeId


class FaultKind(Enum):
    PARTITION = "partition"
    CRASH = "crash"
    LOSS = "loss"
    DUPLICATE = "duplicate"
    TRANSFER = "transfer"  # the leader hands leadership to another voter
    MEMBERSHIP = "membership"  # a voter is removed, then added back as learner and promoted


class PartitionShape(Enum):
    ISOLATE_ONE = "isolate-one"
    MAJORITY_MINORITY = "majority-minority"
    BRIDGE = "bridge"
    RING = "ring"


PRESETS: dict[str, frozenset[FaultKind]] = {
    "none": frozenset(),
    "partitions": frozenset({FaultKind.PARTITION}),
    "crashes": frozenset({FaultKind.CRASH}),
    "loss": frozenset({FaultKind.LOSS, FaultKind.DUPLICATE}),
    "membership": frozenset({FaultKind.MEMBERSHIP, FaultKind.TRANSFER}),
    "all": frozenset(FaultKind),
}


@dataclass(frozen=True, slots=True)
class FaultWindow:
    kind: FaultKind
    start_ms: int
    end_ms: int
    nodes: tuple[NodeId, ...] = ()  # crashed nodes
    links: frozenset[tuple[NodeId, NodeId]] = frozenset()  # blocked directed links
    shape: PartitionShape | None = None
    rate: float = 0.0

    def describe(self) -> str:
        match self.kind:
            case FaultKind.PARTITION:
                assert self.shape is not None
                return f"partition {self.shape.value} ({len(self.links)} links cut)"
            case FaultKind.CRASH:
                return f"crash {','.join(self.nodes)}"
            case FaultKind.LOSS:
                return f"loss {self.rate:.0%}"
            case FaultKind.DUPLICATE:
                return f"duplicate {self.rate:.0%}"
            case FaultKind.TRANSFER:
                return "leadership transfer"
            case FaultKind.MEMBERSHIP:
                return "remove a voter, then add it back"


def cut_between(groups: list[list[NodeId]]) -> set[tuple[NodeId, NodeId]]:
    """Both directions of every link between different groups."""
    links: set[tuple[NodeId, NodeId]] = set()
    for i, group in enumerate(groups):
        for other in groups[i + 1:]:
            for a in group:
                for b in other:
                    links |= {(a, b), (b, a)}
    return links


def partition_links(shape: PartitionShape, nodes: list[NodeId],
                    rng: random.Random) -> frozenset[tuple[NodeId, NodeId]]:
    shuffled = nodes[:]
    rng.shuffle(shuffled)
    n = len(shuffled)
    match shape:
        case PartitionShape.ISOLATE_ONE:
            return frozenset(cut_between([shuffled[:1], shuffled[1:]]))
        case PartitionShape.MAJORITY_MINORITY:
            return frozenset(cut_between([shuffled[: n // 2], shuffled[n // 2:]]))
        case PartitionShape.BRIDGE:
            # two halves that only the bridge node can talk across (Jepsen's "bridge")
            bridge, rest = shuffled[0], shuffled[1:]
            half = len(rest) // 2
            links = cut_between([rest[:half], rest[half:]])
            return frozenset(links - {(bridge, x) for x in rest} - {(x, bridge) for x in rest})
        case PartitionShape.RING:
            # each node reaches only its two ring neighbours
            allowed: set[tuple[NodeId, NodeId]] = set()
            for i, a in enumerate(shuffled):
                for b in (shuffled[(i - 1) % n], shuffled[(i + 1) % n]):
                    allowed |= {(a, b), (b, a)}
            return frozenset((a, b) for a in shuffled for b in shuffled
                             if a != b and (a, b) not in allowed)


def generate_schedule(rng: random.Random, nodes: list[NodeId], kinds: frozenset[FaultKind],
                      heal_at_ms: int, mean_gap_ms: int = 300) -> list[FaultWindow]:
    """Random fault windows in [0, heal_at_ms). Partitions never overlap each other."""
    windows: list[FaultWindow] = []
    if not kinds:
        return windows
    ordered = sorted(kinds, key=lambda k: k.value)
    partition_free_at = 0
    now = rng.randint(50, mean_gap_ms)
    while now < heal_at_ms:
        kind = rng.choice(ordered)
        length = rng.randint(100, 1500)
        end = min(now + length, heal_at_ms)
        match kind:
            case FaultKind.PARTITION:
                if now >= partition_free_at:
                    shape = rng.choice(list(PartitionShape))
                    links = partition_links(shape, nodes, rng)
                    windows.append(FaultWindow(kind, now, end, links=links, shape=shape))
                    partition_free_at = end
            case FaultKind.CRASH:
                count = rng.choice([1, 1, 1, 2, len(nodes) // 2 + 1])
                crashed = tuple(sorted(rng.sample(nodes, min(count, len(nodes)))))
                windows.append(FaultWindow(kind, now, end, nodes=crashed))
            case FaultKind.LOSS:
                windows.append(FaultWindow(kind, now, end, rate=rng.choice([0.05, 0.2, 0.5])))
            case FaultKind.DUPLICATE:
                windows.append(FaultWindow(kind, now, end, rate=rng.choice([0.05, 0.3])))
            case FaultKind.TRANSFER | FaultKind.MEMBERSHIP:
                windows.append(FaultWindow(kind, now, end))
        now += rng.randint(mean_gap_ms // 3, mean_gap_ms * 2)
    return windows
