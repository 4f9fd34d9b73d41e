"""The consistent-hashing ring (concord.dkv.ring): placement is a pure function of the
member set, preference lists hold N distinct members, and one member joining or leaving
moves a bounded share of the preference-list slots without reordering the others."""

from __future__ import annotations

import pytest

from concord.dkv.ring import HASH_BITS, Ring, key_hash, partition_of


def members(count: int) -> list[str]:
    return [f"node-{i}" for i in range(count)]


def test_placement_depends_only_on_the_member_set() -> None:
    one = Ring(members(5), 64, 8)
    other = Ring(reversed([*members(5), "node-0"]), 64, 8)
    assert one.members == other.members == tuple(sorted(members(5)))
    assert [one.walk(p) for p in range(64)] == [other.walk(p) for p in range(64)]


def test_every_walk_holds_every_member_once() -> None:
    ring = Ring(members(7), 32, 4)
    for partition in range(32):
        walk = ring.walk(partition)
        assert sorted(walk) == sorted(members(7))
        assert ring.preference_list(partition, 3) == walk[:3]


@pytest.mark.parametrize(("count", "n", "expected"), [(0, 3, 0), (1, 3, 1), (2, 3, 2),
                                                      (3, 3, 3), (9, 3, 3), (9, 5, 5)])
def test_preference_lists_have_n_distinct_members_or_all(count: int, n: int,
                                                         expected: int) -> None:
    ring = Ring(members(count), 16, 4)
    for partition in range(16):
        found = ring.preference_list(partition, n)
        assert len(found) == len(set(found)) == expected


def test_a_key_lands_in_the_partition_its_hash_starts() -> None:
    ring = Ring(members(3), 64)
    span = 1 << (HASH_BITS - 6)
    for i in range(200):
        key = f"key-{i}"
        partition = ring.partition_of("bucket", key)
        assert partition == partition_of("bucket", key, 64)
        start = ring.partition_start(partition)
        assert start <= key_hash("bucket", key) < start + span


def test_bucket_and_key_are_hashed_apart() -> None:
    assert key_hash("ab", "c") != key_hash("a", "bc")
    assert key_hash("b", "k") != key_hash("k", "b")


def test_the_same_key_in_other_buckets_spreads_over_partitions() -> None:
    partitions = {partition_of(f"bucket-{i}", "same-key", 64) for i in range(100)}
    assert len(partitions) > 40


@pytest.mark.parametrize(("count", "vnodes", "field"), [(0, 1, "partition_count"),
                                                    (4, 0, "vnodes_per_node")])
def test_bad_shapes_are_refused(count: int, vnodes: int, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Ring(members(3), count, vnodes)
    with pytest.raises(ValueError, match="partition_count"):
        Ring(members(3), 48)


def test_out_of_range_partitions_and_n_are_refused() -> None:
    ring = Ring(members(3), 16)
    with pytest.raises(ValueError, match="partition 16"):
        ring.walk(16)
    with pytest.raises(ValueError, match="n must be"):
        ring.preference_list(0, 0)


def test_partitions_spread_evenly_enough_over_members() -> None:
    ring = Ring(members(8), 256, 16)
    owned = [len(ring.primary_partitions(m, 3)) for m in members(8)]
    assert sum(owned) == 256 * 3
    fair = 256 * 3 / 8
    assert all(0.6 * fair <= count <= 1.4 * fair for count in owned), owned


@pytest.mark.parametrize("size", [4, 5, 8, 12])
def test_a_join_only_inserts_the_newcomer_into_walks(size: int) -> None:
    before = Ring(members(size), 256, 16)
    newcomer = f"node-{size}"
    after = Ring([*members(size), newcomer], 256, 16)
    moved = 0
    for partition in range(256):
        assert tuple(m for m in after.walk(partition) if m != newcomer) == \
            before.walk(partition), "the other members keep their order"
        old, new = before.preference_list(partition, 3), after.preference_list(partition, 3)
        if old != new:
            moved += 1
            assert newcomer in new and set(old) - set(new) == {old[-1]}
    # the newcomer takes about N / (size + 1) of the lists; allow a 50 % margin
    expected = 256 * 3 / (size + 1)
    assert 0.5 * expected <= moved <= 1.5 * expected, (moved, expected)


@pytest.mark.parametrize("size", [5, 8])
def test_a_leave_only_changes_lists_that_held_the_leaver(size: int) -> None:
    before = Ring(members(size), 128, 16)
    leaver = "node-2"
    after = Ring([m for m in members(size) if m != leaver], 128, 16)
    for partition in range(128):
        old, new = before.preference_list(partition, 3), after.preference_list(partition, 3)
        if leaver not in old:
            assert new == old
        else:
            assert tuple(m for m in old if m != leaver) == new[:2]
            assert leaver not in new
