"""Merkle trees for anti-entropy (concord.dkv.merkle): equal key sets give equal roots,
a level-by-level comparison finds exactly the segments that differ while looking at few
nodes, and incremental updates give the same tree as a rebuild."""

from __future__ import annotations

import random

import pytest

from concord.dkv.merkle import MerkleTree, differing_segments
from concord.dkv.ring import partition_of
from concord.dkv.store import StoredKey

PARTITION_BITS = 2  # four partitions; the tests use partition 0's keys


def keys_of_partition_zero(count: int) -> list[StoredKey]:
    found: list[StoredKey] = []
    i = 0
    while len(found) < count:
        key = f"key-{i}"
        if partition_of("b", key, 1 << PARTITION_BITS) == 0:
            found.append(StoredKey("b", key, f"digest-{i}".encode()))
        i += 1
    return found


def tree_of(keys: list[StoredKey], fanout: int = 4, depth: int = 3) -> MerkleTree:
    return MerkleTree.build(keys, PARTITION_BITS, fanout, depth)


def test_equal_key_sets_have_equal_roots_whatever_the_order() -> None:
    keys = keys_of_partition_zero(200)
    shuffled = list(keys)
    random.Random(1).shuffle(shuffled)
    assert tree_of(keys).root() == tree_of(shuffled).root()
    assert differing_segments(tree_of(keys), tree_of(shuffled)) == ()
    assert tree_of(keys).key_count == 200


def test_an_empty_tree_differs_from_a_tree_with_one_key() -> None:
    keys = keys_of_partition_zero(1)
    full, empty = tree_of(keys), tree_of([])
    assert differing_segments(full, empty) == (full.segment_of("b", keys[0].key),)


@pytest.mark.parametrize("change", ["digest", "missing", "extra"])
def test_the_comparison_finds_exactly_the_changed_segments(change: str) -> None:
    keys = keys_of_partition_zero(300)
    changed = [keys[7], keys[150]]
    theirs = list(keys)
    if change == "digest":
        theirs = [StoredKey(k.bucket, k.key, b"new") if k in changed else k for k in keys]
    elif change == "missing":
        theirs = [k for k in keys if k not in changed]
    else:
        keys = [k for k in keys if k not in changed]
    mine_tree, their_tree = tree_of(keys), tree_of(theirs)
    expected = tuple(sorted({mine_tree.segment_of(k.bucket, k.key) for k in changed}))
    assert differing_segments(mine_tree, their_tree) == expected


def test_the_comparison_descends_only_into_differing_branches() -> None:
    keys = keys_of_partition_zero(500)
    theirs = [StoredKey(k.bucket, k.key, b"x") if i == 3 else k for i, k in enumerate(keys)]
    mine, other = tree_of(keys, fanout=16, depth=2), tree_of(theirs, fanout=16, depth=2)
    level_one = other.compare(0, (0,), mine.hashes(0, (0,)))
    assert level_one == (0,)
    children = mine.children(0, level_one)
    assert len(children) == 16
    differing = other.compare(1, children, mine.hashes(1, children))
    assert len(differing) == 1
    leaves = mine.children(1, differing)
    assert len(other.compare(2, leaves, mine.hashes(2, leaves))) == 1
    assert mine.segment_count == 256


def test_incremental_updates_match_a_rebuild() -> None:
    keys = keys_of_partition_zero(100)
    tree = tree_of(keys[:50])
    tree.root()  # hashed once, then changed: the cache must be refreshed
    for k in keys[50:]:
        tree.update(k.bucket, k.key, None, k.digest)
    tree.update(keys[0].bucket, keys[0].key, keys[0].digest, b"changed")
    tree.update(keys[1].bucket, keys[1].key, keys[1].digest, None)
    tree.update(keys[2].bucket, keys[2].key, keys[2].digest, keys[2].digest)
    expected = [StoredKey(keys[0].bucket, keys[0].key, b"changed"), *keys[2:]]
    rebuilt = tree_of(expected)
    assert tree.root() == rebuilt.root()
    assert tree.key_count == rebuilt.key_count == 99


def test_bad_shapes_and_positions_are_refused() -> None:
    with pytest.raises(ValueError, match="fanout"):
        MerkleTree(PARTITION_BITS, fanout=3)
    with pytest.raises(ValueError, match="depth"):
        MerkleTree(PARTITION_BITS, depth=0)
    with pytest.raises(ValueError, match="exceed"):
        MerkleTree(60, fanout=16, depth=2)
    tree = tree_of([])
    with pytest.raises(ValueError, match="position"):
        tree.hashes(1, (4,))
    with pytest.raises(ValueError, match="level"):
        tree.level(4)
    with pytest.raises(ValueError, match="no children"):
        tree.children(3, (0,))
    with pytest.raises(ValueError, match="one hash per position"):
        tree.compare(0, (0,), ())
    with pytest.raises(ValueError, match="shapes"):
        differing_segments(tree, tree_of([], fanout=2))
