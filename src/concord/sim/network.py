"""A virtual network between simulated nodes: delay, loss, duplication, partitions.

Reordering follows from independent random delays. A partition is a set of directed
links that drop every message; a message already in flight when a partition starts is
dropped on arrival.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from concord.raft.messages import NodeId


@dataclass(slots=True)
class LinkConditions:
    min_delay_ms: int = 1
    max_delay_ms: int = 8
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0


class Network:
    def __init__(self, rng: random.Random, conditions: LinkConditions) -> None:
        self._rng = rng
        self.base = conditions
        self.conditions = LinkConditions(conditions.min_delay_ms, conditions.max_delay_ms,
                                         conditions.drop_rate, conditions.duplicate_rate)
        self._blocked: set[tuple[NodeId, NodeId]] = set()
        self.sent = 0
        self.dropped = 0
        self.duplicated = 0

    def block(self, links: set[tuple[NodeId, NodeId]]) -> None:
        self._blocked = set(links)

    def heal(self) -> None:
        self._blocked = set()
        self.conditions = LinkConditions(self.base.min_delay_ms, self.base.max_delay_ms,
                                         self.base.drop_rate, self.base.duplicate_rate)

    def is_blocked(self, sender: NodeId, recipient: NodeId) -> bool:
        return (sender, recipient) in self._blocked

    def delivery_delays(self, sender: NodeId, recipient: NodeId) -> list[int]:
        """Delays (ms) of each copy of one message that will arrive; empty when dropped."""
        self.sent += 1
        c = self.conditions
        if self.is_blocked(sender, recipient) or self._rng.random() < c.drop_rate:
            self.dropped += 1
            return []
        copies = 1
        if self._rng.random() < c.duplicate_rate:
            copies = 2
            self.duplicated += 1
        return [self._rng.randint(c.min_delay_ms, c.max_delay_ms) for _ in range(copies)]
