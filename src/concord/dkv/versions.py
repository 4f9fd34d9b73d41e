"""Versions in the quorum store: dotted version vectors, siblings, and how copies merge.

Every write makes a *sibling*: the value (or a tombstone), the *dot* that names the write
uniquely (the coordinating node's id and its next counter for this key), and the *causal
context* the client sent (the version vector of what it had read). A sibling is obsolete
once another sibling's context covers its dot, so a write supersedes exactly what its
writer saw and nothing else: two writers that read the same version both survive as
siblings, whichever coordinator they went through (Preguiça, Baquero et al., "Dotted
Version Vectors: Logical Clocks for Optimistic Replication", 2010; Riak 2.0's dvv mode).

Merging two replicas' copies keeps every sibling the other copy has not made obsolete, so
it is commutative, associative and idempotent, and no acknowledged write is dropped by it.

Growth is bounded: a context holds one entry per node that ever coordinated a write of the
key, and ``VersionVector.without`` drops the entries of nodes that have left the cluster for
good. Dropping an entry can only make an old sibling look concurrent again (an extra
sibling that the next write with its context removes), never hide a write.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_VALUE_BYTES = 1 << 20
"""Largest value a sibling may carry (1 MiB)."""


@dataclass(frozen=True, slots=True, order=True)
class Dot:
    """One write: the coordinating node and its counter for the key (counter >= 1)."""

    node: str
    counter: int

    def __post_init__(self) -> None:
        assert self.node, "a dot names its node"
        assert self.counter >= 1, "dot counters start at 1"


@dataclass(frozen=True, slots=True)
class VersionVector:
    """Node id -> highest counter seen; ``entries`` are sorted by node, counters >= 1."""

    entries: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        nodes = [node for node, _ in self.entries]
        assert nodes == sorted(set(nodes)), "entries are sorted by node, one per node"
        assert all(counter >= 1 for _, counter in self.entries), "counters are positive"

    @classmethod
    def from_mapping(cls, counters: Mapping[Any, Any]) -> VersionVector:
        """A vector from a mapping; zero counters are left out. Raises ValueError on bad input
        (the mapping is untrusted: ``Any``, so a compiled build checks nothing first)."""
        entries = []
        for node, counter in counters.items():
            if not isinstance(node, str) or not node:
                raise ValueError(f"version vector: node ids are non-empty strings, got {node!r}")
            if isinstance(counter, bool) or not isinstance(counter, int) or counter < 0:
                raise ValueError(f"version vector: counter for {node!r} must be an integer "
                                 f">= 0, got {counter!r}")
            if counter:
                entries.append((node, counter))
        return cls(tuple(sorted(entries)))

    def as_dict(self) -> dict[str, int]:
        return dict(self.entries)

    def get(self, node: str) -> int:
        for entry_node, counter in self.entries:
            if entry_node == node:
                return counter
        return 0

    def covers(self, dot: Dot) -> bool:
        """Whether the write named by ``dot`` is in this vector's causal past."""
        return self.get(dot.node) >= dot.counter

    def descends(self, other: VersionVector) -> bool:
        """Whether everything ``other`` has seen, this vector has seen too."""
        return all(self.get(node) >= counter for node, counter in other.entries)

    def join(self, other: VersionVector) -> VersionVector:
        """The entry-wise maximum."""
        merged = dict(self.entries)
        for node, counter in other.entries:
            if counter > merged.get(node, 0):
                merged[node] = counter
        return VersionVector(tuple(sorted(merged.items())))

    def with_dot(self, dot: Dot) -> VersionVector:
        """This vector extended to cover ``dot``."""
        return self.join(VersionVector(((dot.node, dot.counter),)))

    def without(self, nodes: Iterable[str]) -> VersionVector:
        """This vector with the entries of ``nodes`` removed (pruning of departed nodes)."""
        dropped = set(nodes)
        return VersionVector(tuple(entry for entry in self.entries if entry[0] not in dropped))


EMPTY_CONTEXT = VersionVector()


@dataclass(frozen=True, slots=True)
class Sibling:
    """One surviving write of a key: its value (None for a delete), dot, context, time."""

    dot: Dot
    context: VersionVector
    value: bytes | None
    timestamp_ns: int
    """Hybrid-logical wall time of the write: orders last-write-wins buckets and ages
    tombstones; never used to decide causality."""

    def __post_init__(self) -> None:
        assert self.value is None or len(self.value) <= MAX_VALUE_BYTES, "value too large"
        assert not self.context.covers(self.dot), "a write does not precede itself"

    @property
    def is_tombstone(self) -> bool:
        return self.value is None


@dataclass(frozen=True, slots=True)
class VersionedObject:
    """Every sibling of one key on one replica, sorted by dot; never empty."""

    siblings: tuple[Sibling, ...]

    def __post_init__(self) -> None:
        assert self.siblings, "an object has at least one sibling"
        dots = [sibling.dot for sibling in self.siblings]
        assert dots == sorted(set(dots)), "siblings are sorted by dot, one per dot"

    @classmethod
    def of(cls, siblings: Iterable[Sibling]) -> VersionedObject:
        by_dot = {sibling.dot: sibling for sibling in siblings}
        return cls(tuple(by_dot[dot] for dot in sorted(by_dot)))

    def context(self) -> VersionVector:
        """The causal context handed to clients: every sibling's context and dot joined."""
        joined = EMPTY_CONTEXT
        for sibling in self.siblings:
            joined = joined.join(sibling.context).with_dot(sibling.dot)
        return joined

    def live(self) -> tuple[Sibling, ...]:
        """The siblings that carry a value (tombstones left out)."""
        return tuple(sibling for sibling in self.siblings if sibling.value is not None)

    @property
    def is_tombstone(self) -> bool:
        """Every sibling is a delete: the key reads as absent."""
        return all(sibling.is_tombstone for sibling in self.siblings)

    def digest(self) -> bytes:
        """A 16-byte hash naming this exact set of writes (dots are unique per write)."""
        hasher = hashlib.blake2b(digest_size=16)
        for sibling in self.siblings:
            hasher.update(sibling.dot.node.encode())
            hasher.update(b"\x00")
            hasher.update(sibling.dot.counter.to_bytes(8, "big"))
        return hasher.digest()

    def newest_timestamp_ns(self) -> int:
        return max(sibling.timestamp_ns for sibling in self.siblings)


def merge(left: VersionedObject | None, right: VersionedObject | None) -> VersionedObject | None:
    """The union of two copies of a key, less every sibling the other copy made obsolete."""
    if left is None:
        return right
    if right is None:
        return left
    left_dots = {sibling.dot for sibling in left.siblings}
    right_dots = {sibling.dot for sibling in right.siblings}
    kept = [sibling for sibling in left.siblings
            if sibling.dot in right_dots or not _obsoleted(sibling, right)]
    kept += [sibling for sibling in right.siblings
             if sibling.dot not in left_dots and not _obsoleted(sibling, left)]
    return VersionedObject.of(kept)


def _obsoleted(sibling: Sibling, other: VersionedObject) -> bool:
    return any(theirs.context.covers(sibling.dot) for theirs in other.siblings)


def new_write(local: VersionedObject | None, context: VersionVector, node: str,
              value: bytes | None, timestamp_ns: int) -> VersionedObject:
    """The coordinator's copy after a write (or delete, ``value`` None) by ``node``.

    The new sibling supersedes the local siblings ``context`` covers and no others. Its
    counter is past anything this node has issued for the key, as far as either the local
    copy or the client's context shows, and at least ``timestamp_ns``: the caller passes a
    per-node strictly increasing hybrid-logical time, so a key whose tombstones were
    collected never hands out an old dot again (a replica that still remembers the old dot
    would otherwise take the new write for one it had already superseded).
    """
    seen = context if local is None else local.context().join(context)
    dot = Dot(node, max(seen.get(node) + 1, timestamp_ns))
    written = Sibling(dot, context, value, timestamp_ns)
    kept = [] if local is None else [s for s in local.siblings if not context.covers(s.dot)]
    return VersionedObject.of([*kept, written])


def last_write_wins(obj: VersionedObject) -> VersionedObject:
    """Only the sibling with the largest (timestamp, dot): for buckets that chose LWW.

    This loses concurrent writes by design; the winner's context is widened to cover the
    losers so that merging with a copy that still holds them drops them there too.
    """
    if len(obj.siblings) == 1:
        return obj
    winner = max(obj.siblings, key=lambda sibling: (sibling.timestamp_ns, sibling.dot))
    covering = winner.context
    for sibling in obj.siblings:
        if sibling.dot != winner.dot:
            covering = covering.join(sibling.context).with_dot(sibling.dot)
    return VersionedObject((Sibling(winner.dot, covering, winner.value, winner.timestamp_ns),))
