"""Dotted version vectors (concord.dkv.versions): table tests of the operations, and a
Hypothesis property test that merging replicas' copies is commutative, associative and
idempotent and never drops a sibling the other copy has not superseded.

The property test builds copies the way the store does: a few replicas, each writing
through its own copy with ``new_write`` (with a context read from any copy seen so far,
however stale) and syncing copies with ``merge`` in any order. Every copy any replica ever
held is then merged pairwise and in triples.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from concord.dkv.versions import (
    EMPTY_CONTEXT,
    Dot,
    Sibling,
    VersionedObject,
    VersionVector,
    last_write_wins,
    merge,
    new_write,
)


def vv(**counters: int) -> VersionVector:
    return VersionVector.from_mapping(counters)


def values(obj: VersionedObject | None) -> list[bytes | None]:
    return [] if obj is None else [s.value for s in obj.siblings]


# --- version vectors --------------------------------------------------------------------


@pytest.mark.parametrize(("left", "right", "descends"), [
    (vv(), vv(), True),
    (vv(a=1), vv(), True),
    (vv(), vv(a=1), False),
    (vv(a=2, b=1), vv(a=1, b=1), True),
    (vv(a=2), vv(a=1, b=1), False),
    (vv(a=1, b=1), vv(a=2), False),
])
def test_descends(left: VersionVector, right: VersionVector, descends: bool) -> None:
    assert left.descends(right) is descends


@pytest.mark.parametrize(("vector", "dot", "covers"), [
    (vv(), Dot("a", 1), False),
    (vv(a=3), Dot("a", 3), True),
    (vv(a=3), Dot("a", 4), False),
    (vv(a=3), Dot("b", 1), False),
])
def test_covers(vector: VersionVector, dot: Dot, covers: bool) -> None:
    assert vector.covers(dot) is covers


def test_join_with_dot_and_without() -> None:
    joined = vv(a=1, b=5).join(vv(a=3, c=2))
    assert joined.as_dict() == {"a": 3, "b": 5, "c": 2}
    assert joined.with_dot(Dot("b", 7)).get("b") == 7
    assert joined.with_dot(Dot("b", 2)).get("b") == 5
    assert joined.without(["a", "zz"]).as_dict() == {"b": 5, "c": 2}


@pytest.mark.parametrize("bad", [{"": 1}, {"a": -1}, {"a": True}, {"a": 1.5}, {1: 1}])
def test_from_mapping_rejects_bad_input(bad: dict[object, object]) -> None:
    with pytest.raises(ValueError, match="version vector"):
        VersionVector.from_mapping(bad)  # type: ignore[arg-type]


def test_from_mapping_drops_zero_counters_and_sorts() -> None:
    assert VersionVector.from_mapping({"b": 1, "a": 0, "c": 2}).entries == (("b", 1), ("c", 2))


# --- writes and merges ------------------------------------------------------------------


def test_a_write_with_the_read_context_supersedes_what_was_read() -> None:
    first = new_write(None, EMPTY_CONTEXT, "a", b"1", 10)
    second = new_write(first, first.context(), "a", b"2", 11)
    assert values(second) == [b"2"]
    assert second.siblings[0].dot == Dot("a", 11)


def test_blind_writes_become_siblings_whichever_coordinator() -> None:
    first = new_write(None, EMPTY_CONTEXT, "a", b"1", 10)
    on_a = new_write(first, EMPTY_CONTEXT, "a", b"2", 11)
    assert values(on_a) == [b"1", b"2"]
    on_b = new_write(None, EMPTY_CONTEXT, "b", b"3", 12)
    assert sorted(values(merge(on_a, on_b))) == [b"1", b"2", b"3"]  # type: ignore[type-var]


def test_two_writers_of_the_same_version_both_survive() -> None:
    base = new_write(None, EMPTY_CONTEXT, "a", b"0", 10)
    left = new_write(base, base.context(), "a", b"L", 11)
    right = new_write(base, base.context(), "b", b"R", 12)
    merged = merge(left, right)
    assert sorted(values(merged)) == [b"L", b"R"]  # type: ignore[type-var]
    resolved = new_write(merged, merged.context() if merged else EMPTY_CONTEXT, "b", b"LR", 13)
    assert values(merge(merged, resolved)) == [b"LR"]


def test_counters_follow_the_timestamp_and_pass_what_the_context_shows() -> None:
    obj = new_write(None, vv(a=50), "a", b"x", 20)
    assert obj.siblings[0].dot == Dot("a", 51)
    assert new_write(None, EMPTY_CONTEXT, "a", b"x", 20).siblings[0].dot == Dot("a", 20)


def test_deletes_are_tombstones() -> None:
    obj = new_write(None, EMPTY_CONTEXT, "a", b"x", 10)
    deleted = new_write(obj, obj.context(), "a", None, 11)
    assert deleted.is_tombstone and deleted.live() == ()
    concurrent = merge(deleted, new_write(None, EMPTY_CONTEXT, "b", b"y", 12))
    assert concurrent is not None and not concurrent.is_tombstone
    assert values(concurrent) == [None, b"y"]


@pytest.mark.parametrize(("left", "right"), [(None, None), ("x", None), (None, "x")])
def test_merge_with_nothing(left: str | None, right: str | None) -> None:
    obj = new_write(None, EMPTY_CONTEXT, "a", b"x", 1)
    result = merge(obj if left else None, obj if right else None)
    assert result == (obj if (left or right) else None)


def test_digest_names_the_set_of_writes() -> None:
    one = new_write(None, EMPTY_CONTEXT, "a", b"x", 1)
    same_dots = VersionedObject((Sibling(Dot("a", 1), EMPTY_CONTEXT, b"other", 5),))
    assert one.digest() == same_dots.digest()
    assert one.digest() != new_write(None, EMPTY_CONTEXT, "a", b"x", 2).digest()


def test_last_write_wins_keeps_the_newest_and_covers_the_rest() -> None:
    older = new_write(None, EMPTY_CONTEXT, "a", b"old", 10)
    newer = new_write(None, EMPTY_CONTEXT, "b", b"new", 20)
    both = merge(older, newer)
    assert both is not None
    winner = last_write_wins(both)
    assert values(winner) == [b"new"]
    assert merge(winner, older) == winner  # a copy still holding the loser drops it
    assert last_write_wins(winner) is winner


def test_last_write_wins_breaks_timestamp_ties_by_dot() -> None:
    tied = merge(new_write(None, EMPTY_CONTEXT, "a", b"A", 10),
                 new_write(None, EMPTY_CONTEXT, "b", b"B", 10))
    assert tied is not None and values(last_write_wins(tied)) == [b"B"]


# --- properties -------------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    replica: int
    context_from: int  # index into every copy seen so far; past the end: empty context
    delete: bool


@dataclass(frozen=True)
class Sync:
    source: int
    target: int


REPLICAS = 3
steps = st.lists(st.one_of(
    st.builds(Write, st.integers(0, REPLICAS - 1), st.integers(0, 40), st.booleans()),
    st.builds(Sync, st.integers(0, REPLICAS - 1), st.integers(0, REPLICAS - 1)),
), min_size=1, max_size=25)


def reachable_copies(script: list[Write | Sync]) -> list[VersionedObject]:
    copies: list[VersionedObject | None] = [None] * REPLICAS
    seen: list[VersionedObject] = []
    clock = 0
    for step in script:
        if isinstance(step, Write):
            clock += 1
            context = (seen[step.context_from].context() if step.context_from < len(seen)
                       else EMPTY_CONTEXT)
            value = None if step.delete else f"v{clock}".encode()
            written = new_write(copies[step.replica], context, f"r{step.replica}", value,
                                clock)
            copies[step.replica] = written
            seen.append(written)
        else:
            synced = merge(copies[step.target], copies[step.source])
            copies[step.target] = synced
            if synced is not None:
                seen.append(synced)
    return seen


def superseded_by(obj: VersionedObject, sibling: Sibling) -> bool:
    return any(other.context.covers(sibling.dot) for other in obj.siblings)


@settings(max_examples=200, deadline=None)
@given(steps, st.data())
def test_merge_is_a_join_that_drops_only_superseded_siblings(
        script: list[Write | Sync], data: st.DataObject) -> None:
    seen = reachable_copies(script)
    if not seen:
        return
    pick = st.sampled_from(seen)
    a, b, c = data.draw(pick), data.draw(pick), data.draw(pick)
    ab = merge(a, b)
    assert ab is not None
    assert ab == merge(b, a), "commutative"
    assert merge(ab, c) == merge(a, merge(b, c)), "associative"
    assert merge(a, a) == a, "idempotent"
    assert merge(ab, a) == ab, "absorbs its inputs"
    kept = set(ab.siblings)
    for mine, theirs in ((a, b), (b, a)):
        for sibling in mine.siblings:
            assert sibling in kept or superseded_by(theirs, sibling), \
                f"{sibling.dot} dropped though the other copy never superseded it"
    assert kept <= set(a.siblings) | set(b.siblings), "merge invents nothing"


@settings(max_examples=200, deadline=None)
@given(steps)
def test_syncing_everything_keeps_every_write_not_superseded(script: list[Write | Sync]) -> None:
    """The merge of every copy holds each write ever made, or a write whose writer saw it."""
    seen = reachable_copies(script)
    total: VersionedObject | None = None
    for copy in seen:
        total = merge(total, copy)
    if total is None:
        return
    for copy in seen:
        for sibling in copy.siblings:
            assert sibling in total.siblings or superseded_by(total, sibling), \
                f"{sibling.dot} vanished without a surviving write that saw it"
