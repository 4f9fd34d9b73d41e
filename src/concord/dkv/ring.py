"""Placement in the quorum store: the consistent-hashing ring of fixed partitions.

A key hashes (BLAKE2b, 64 bits, of ``bucket + b"\\0" + key``) into one of
``partition_count`` equal ranges of the hash space, named by the top bits of the hash: the
partition never changes, whoever the members are. Each member puts ``vnodes_per_node``
tokens on the same circle (hashes of its id and the token's index). A partition's *walk*
is every member once, in the order their tokens first appear clockwise from the start of
the partition's range; its preference list for N replicas is the first N of the walk, so all
keys of a partition share their replicas and the fallbacks for a down replica are the
members that follow in the walk (Dynamo §4.2-4.6).

Everything is a pure function of the member set: every node that agrees on the members
agrees on every walk. Adding a member only inserts it into walks (the others keep their
order), and removing one only takes it out, so a change of one member moves about N/members
of the preference-list slots and never reorders the rest.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable

HASH_BITS = 64


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def key_hash(bucket: str, key: str) -> int:
    """The 64-bit position of a key on the circle."""
    return _hash64(bucket.encode("utf-8", "surrogatepass") + b"\x00"
                   + key.encode("utf-8", "surrogatepass"))


def partition_bits(partition_count: int) -> int:
    """log2 of a power-of-two partition count."""
    assert partition_count >= 1 and partition_count & (partition_count - 1) == 0, \
        "partition counts are powers of two"
    return partition_count.bit_length() - 1


def partition_of(bucket: str, key: str, partition_count: int) -> int:
    """The partition a key belongs to: the top bits of its hash."""
    return key_hash(bucket, key) >> (HASH_BITS - partition_bits(partition_count))


def token_of(node: str, index: int) -> int:
    """Where a member's ``index``-th token sits on the circle."""
    return _hash64(node.encode("utf-8", "surrogatepass") + b"\x00" + index.to_bytes(4, "big"))


class Ring:
    """The ring for one member set. Immutable; build a new one when the members change."""

    __slots__ = ("_owners", "_tokens", "_walks", "members", "partition_count",
                 "vnodes_per_node")

    def __init__(self, members: Iterable[str], partition_count: int = 64,
                 vnodes_per_node: int = 16) -> None:
        if partition_count < 1 or partition_count & (partition_count - 1):
            raise ValueError(f"ring: partition_count must be a power of two, "
                             f"got {partition_count}")
        if vnodes_per_node < 1:
            raise ValueError(f"ring: vnodes_per_node must be >= 1, got {vnodes_per_node}")
        unique = sorted(set(members))
        if any(not isinstance(m, str) or not m for m in unique):
            raise ValueError(f"ring: member ids are non-empty strings, got {unique!r}")
        self.members: tuple[str, ...] = tuple(unique)
        self.partition_count = partition_count
        self.vnodes_per_node = vnodes_per_node
        placed = sorted((token_of(node, i), node) for node in unique
                        for i in range(vnodes_per_node))
        self._tokens = [token for token, _ in placed]
        self._owners = [node for _, node in placed]
        self._walks: dict[int, tuple[str, ...]] = {}

    def partition_of(self, bucket: str, key: str) -> int:
        return partition_of(bucket, key, self.partition_count)

    def partition_start(self, partition: int) -> int:
        """The first hash of the partition's range."""
        self._check(partition)
        return partition << (HASH_BITS - partition_bits(self.partition_count))

    def walk(self, partition: int) -> tuple[str, ...]:
        """Every member once, clockwise from the partition's start: the preference order."""
        found = self._walks.get(partition)
        if found is None:
            found = self._compute_walk(partition)
            self._walks[partition] = found
        return found

    def preference_list(self, partition: int, n: int) -> tuple[str, ...]:
        """The partition's N primaries (fewer when the ring has fewer members)."""
        if n < 1:
            raise ValueError(f"ring: n must be >= 1, got {n}")
        return self.walk(partition)[:n]

    def primary_partitions(self, node: str, n: int) -> tuple[int, ...]:
        """The partitions whose first ``n`` members include ``node``, ascending."""
        return tuple(p for p in range(self.partition_count)
                     if node in self.preference_list(p, n))

    def _check(self, partition: int) -> None:
        if not 0 <= partition < self.partition_count:
            raise ValueError(f"ring: partition {partition} is outside "
                             f"0..{self.partition_count - 1}")

    def _compute_walk(self, partition: int) -> tuple[str, ...]:
        if not self._tokens:
            self._check(partition)
            return ()
        start = bisect.bisect_left(self._tokens, self.partition_start(partition))
        seen: dict[str, None] = {}
        count = len(self._tokens)
        for step in range(count):
            seen.setdefault(self._owners[(start + step) % count])
            if len(seen) == len(self.members):
                break
        return tuple(seen)
