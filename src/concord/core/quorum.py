"""Majority quorum maths shared by every consensus core."""

from __future__ import annotations

from collections.abc import Collection, Mapping


def majority(size: int) -> int:
    """The smallest number of members that forms a majority of ``size`` members."""
    if size < 0:
        raise ValueError(f"cluster size must be non-negative, got {size}")
    return size // 2 + 1


def has_quorum(voters: Collection[str], granted: Collection[str]) -> bool:
    """True when the members in ``granted`` that are voters form a majority of ``voters``."""
    if not voters:
        return False
    return len(set(voters) & set(granted)) >= majority(len(voters))


def quorum_index(voters: Collection[str], match_index: Mapping[str, int]) -> int:
    """The highest index that a majority of ``voters`` has reached.

    A voter missing from ``match_index`` counts as having reached index 0. An empty voter set
    has no quorum and yields 0.
    """
    if not voters:
        return 0
    matched = sorted((match_index.get(v, 0) for v in voters), reverse=True)
    return matched[majority(len(voters)) - 1]
