"""Hybrid logical clock properties under random sends and receives (Kulkarni et al.):
timestamps only grow, a receive is stamped after what it received, wall time stays within
the max offset of physical time, and the counter resets whenever physical time moves on."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from concord.core.hlc import ClockOffsetExceeded, HLCTimestamp, HybridLogicalClock

MAX_OFFSET = 500


@dataclass(frozen=True)
class Local:
    advance: int  # physical time moves this much first


@dataclass(frozen=True)
class Receive:
    advance: int
    remote_lead: int  # remote wall time minus our physical time
    remote_logical: int


ops = st.lists(
    st.one_of(
        st.builds(Local, st.integers(0, 50)),
        st.builds(Receive, st.integers(0, 50), st.integers(-800, 800), st.integers(0, 5)),
    ),
    max_size=60,
)


@given(ops)
def test_hlc_is_monotonic_causal_and_close_to_physical_time(script: list[Local | Receive]) -> None:
    clock = HybridLogicalClock(max_offset_ns=MAX_OFFSET)
    physical = 1_000
    previous = clock.last
    highest_physical = physical
    for op in script:
        physical += op.advance
        was_ahead = physical > previous.wall_ns
        if isinstance(op, Local):
            stamp = clock.now(physical)
        else:
            remote = HLCTimestamp(physical + op.remote_lead, op.remote_logical)
            if op.remote_lead > MAX_OFFSET:
                with pytest.raises(ClockOffsetExceeded):
                    clock.update(remote, physical)
                assert clock.last == previous  # rejected: nothing changed
                continue
            stamp = clock.update(remote, physical)
            assert stamp > remote  # causality: after what we received
            was_ahead = was_ahead and physical > remote.wall_ns
        assert stamp > previous  # monotonic
        assert stamp == clock.last
        highest_physical = max(highest_physical, physical)
        assert physical <= stamp.wall_ns <= highest_physical + MAX_OFFSET  # bounded drift
        if was_ahead:
            assert stamp == HLCTimestamp(physical, 0)  # physical time took over
        previous = stamp


@given(st.lists(st.integers(-100, 100), min_size=1, max_size=50))
def test_hlc_stays_monotonic_when_physical_time_steps_back(steps: list[int]) -> None:
    clock = HybridLogicalClock()
    physical = 10_000
    stamps = []
    for step in steps:
        physical += step
        stamps.append(clock.now(physical))
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)
