"""Merkle trees for anti-entropy: one per (partition, N) on each replica.

A partition's keys are split into ``fanout ** depth`` *segments* by the hash bits that
follow the partition bits. A segment's leaf is the XOR of a 16-byte hash of each of its
``(bucket, key, digest)`` triples, so one write updates a leaf in O(1) (XOR the old triple
out, the new one in) and the order keys arrive in does not matter; every inner node is the
BLAKE2b of its ``fanout`` children. Two replicas holding the same keys with the same
versions have equal roots.

Two replicas find where they differ level by level (``compare``, ``children``): the
initiator sends its hashes of some nodes of one level, the other side answers which of
them differ from its own, and the initiator descends into those only, down to the leaves;
then the two sides swap the keys of the differing segments only (Dynamo §4.7, Riak's
hashtree exchange). Only the differing branches travel, and each side reads its store once
per segment list, not per key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from concord.dkv.ring import HASH_BITS, key_hash
from concord.dkv.store import StoredKey

HASH_BYTES = 16


def triple_hash(bucket: str, key: str, digest: bytes) -> int:
    """The 128-bit contribution of one stored key to its leaf."""
    hasher = hashlib.blake2b(digest_size=HASH_BYTES)
    hasher.update(bucket.encode("utf-8", "surrogatepass"))
    hasher.update(b"\x00")
    hasher.update(key.encode("utf-8", "surrogatepass"))
    hasher.update(b"\x00")
    hasher.update(digest)
    return int.from_bytes(hasher.digest(), "big")


class MerkleTree:
    """The hash tree of one partition's keys (for one N) on one replica.

    Levels are numbered from the root (level 0, one node) down to the leaves (level
    ``depth``, ``fanout ** depth`` nodes); node ``i`` of level ``l`` has children
    ``i * fanout ... i * fanout + fanout - 1`` on level ``l + 1``.
    """

    __slots__ = ("_dirty", "_leaves", "_levels", "_shift", "depth", "fanout", "key_count")

    def __init__(self, partition_bits: int, fanout: int = 16, depth: int = 2) -> None:
        if fanout < 2 or fanout & (fanout - 1):
            raise ValueError(f"merkle: fanout must be a power of two >= 2, got {fanout}")
        if depth < 1:
            raise ValueError(f"merkle: depth must be >= 1, got {depth}")
        segment_bits = (fanout.bit_length() - 1) * depth
        if partition_bits < 0 or partition_bits + segment_bits > HASH_BITS:
            raise ValueError("merkle: partition and segment bits exceed the key hash")
        self.fanout = fanout
        self.depth = depth
        self.key_count = 0
        self._shift = HASH_BITS - partition_bits - segment_bits
        self._leaves = [0] * (fanout ** depth)
        self._levels: list[list[bytes]] = []
        self._dirty = True

    @classmethod
    def build(cls, keys: Iterable[StoredKey], partition_bits: int, fanout: int = 16,
              depth: int = 2) -> MerkleTree:
        """A tree of ``keys`` (each key once)."""
        tree = cls(partition_bits, fanout, depth)
        for stored in keys:
            tree.add(stored.bucket, stored.key, stored.digest)
        return tree

    @property
    def segment_count(self) -> int:
        return len(self._leaves)

    def segment_of(self, bucket: str, key: str) -> int:
        """The leaf a key belongs to."""
        return (key_hash(bucket, key) >> self._shift) & (len(self._leaves) - 1)

    def add(self, bucket: str, key: str, digest: bytes) -> None:
        """A key that was absent is now stored with ``digest``."""
        self._leaves[self.segment_of(bucket, key)] ^= triple_hash(bucket, key, digest)
        self.key_count += 1
        self._dirty = True

    def remove(self, bucket: str, key: str, digest: bytes) -> None:
        """A key stored with ``digest`` is gone."""
        assert self.key_count > 0, "removing a key from an empty tree"
        self._leaves[self.segment_of(bucket, key)] ^= triple_hash(bucket, key, digest)
        self.key_count -= 1
        self._dirty = True

    def update(self, bucket: str, key: str, old_digest: bytes | None,
               new_digest: bytes | None) -> None:
        """A key's digest changed (None: absent before, or removed)."""
        if old_digest == new_digest:
            return
        if old_digest is not None:
            self.remove(bucket, key, old_digest)
        if new_digest is not None:
            self.add(bucket, key, new_digest)

    def root(self) -> bytes:
        return self.level(0)[0]

    def level(self, level: int) -> Sequence[bytes]:
        """Every hash of one level, left to right."""
        if not 0 <= level <= self.depth:
            raise ValueError(f"merkle: level {level} is outside 0..{self.depth}")
        if self._dirty:
            self._rehash()
        return self._levels[level]

    def hashes(self, level: int, positions: Iterable[int]) -> tuple[bytes, ...]:
        """The hashes of some nodes of one level."""
        row = self.level(level)
        return tuple(row[self._position(level, p)] for p in positions)

    def compare(self, level: int, positions: Sequence[int],
                their_hashes: Sequence[bytes]) -> tuple[int, ...]:
        """Of ``positions`` on ``level``, those whose hash here differs from theirs."""
        if len(positions) != len(their_hashes):
            raise ValueError("merkle: one hash per position")
        mine = self.hashes(level, positions)
        return tuple(p for p, here, there in zip(positions, mine, their_hashes, strict=True)
                     if here != there)

    def children(self, level: int, positions: Iterable[int]) -> tuple[int, ...]:
        """The positions on ``level + 1`` under ``positions`` of ``level``."""
        if not 0 <= level < self.depth:
            raise ValueError(f"merkle: level {level} has no children (depth {self.depth})")
        return tuple(child for p in positions
                     for child in range(self._position(level, p) * self.fanout,
                                        (p + 1) * self.fanout))

    def _position(self, level: int, position: int) -> int:
        if not 0 <= position < self.fanout ** level:
            raise ValueError(f"merkle: position {position} is outside level {level}")
        return position

    def _rehash(self) -> None:
        row = [leaf.to_bytes(HASH_BYTES, "big") for leaf in self._leaves]
        levels = [row]
        while len(row) > 1:
            row = [hashlib.blake2b(b"".join(row[i:i + self.fanout]),
                                   digest_size=HASH_BYTES).digest()
                   for i in range(0, len(row), self.fanout)]
            levels.append(row)
        levels.reverse()
        assert len(levels) == self.depth + 1
        self._levels = levels
        self._dirty = False


def differing_segments(mine: MerkleTree, theirs: MerkleTree) -> tuple[int, ...]:
    """The leaf segments where two trees differ, found the way an exchange finds them."""
    if (mine.fanout, mine.depth) != (theirs.fanout, theirs.depth):
        raise ValueError("merkle: trees of different shapes cannot be compared")
    positions: tuple[int, ...] = (0,)
    level = 0
    while True:
        positions = theirs.compare(level, positions, mine.hashes(level, positions))
        if not positions or level == mine.depth:
            return positions
        positions = mine.children(level, positions)
        level += 1
