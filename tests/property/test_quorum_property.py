"""Property tests of the majority quorum maths against brute-force oracles that count."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from concord.core.quorum import has_quorum, majority, quorum_index

NODES = [f"n{i}" for i in range(9)]

voter_sets = st.sets(st.sampled_from(NODES), max_size=len(NODES))
node_sets = st.sets(st.sampled_from([*NODES, "stranger"]))
match_maps = st.dictionaries(st.sampled_from([*NODES, "stranger"]), st.integers(0, 12))


def oracle_majority(size: int) -> int:
    """The smallest count that is more than half of ``size``."""
    return next(k for k in range(size + 2) if 2 * k > size)


@given(st.integers(min_value=0, max_value=1000))
def test_majority_is_the_smallest_count_above_half(size: int) -> None:
    assert majority(size) == oracle_majority(size)


def test_majority_of_a_negative_size_is_an_error() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        majority(-1)


@given(voter_sets, node_sets)
def test_has_quorum_counts_granting_voters_only(voters: set[str], granted: set[str]) -> None:
    granting_voters = sum(1 for v in voters if v in granted)
    expected = bool(voters) and 2 * granting_voters > len(voters)
    assert has_quorum(voters, granted) is expected
    assert has_quorum(list(voters), list(granted) * 2) is expected  # duplicates count once


@given(voter_sets, match_maps)
def test_quorum_index_is_the_highest_index_a_majority_reached(
    voters: set[str], match_index: dict[str, int]
) -> None:
    def reached(index: int) -> int:
        return sum(1 for v in voters if match_index.get(v, 0) >= index)

    result = quorum_index(voters, match_index)
    if not voters:
        assert result == 0
        return
    candidates = [0, *match_index.values()]  # index 0 is reached by everyone
    assert result == max(i for i in candidates if 2 * reached(i) > len(voters))
    assert 2 * reached(result + 1) <= len(voters)


@given(voter_sets, match_maps, st.sampled_from(NODES), st.integers(0, 12))
def test_quorum_index_never_falls_when_a_voter_advances(
    voters: set[str], match_index: dict[str, int], node: str, step: int
) -> None:
    before = quorum_index(voters, match_index)
    advanced = {**match_index, node: match_index.get(node, 0) + step}
    assert quorum_index(voters, advanced) >= before
