"""Application-level fault injection for the peer transport and the wall clock (chaos
testing only).

The kernel offers no netem here, so the transport itself drops, delays (and so reorders) and
duplicates peer messages, and cuts links to blocked peers. ``FaultInjector`` holds the current
settings and makes each random decision from the ``random.Random`` it is given. It also skews
the node's wall clock (``clock_offset_ms``) through the ``SkewableClock`` it is given: the one
membership reads for clock offset estimates (``concord.runtime.membership.WallClock``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Final, Protocol

MAX_FAULT_DELAY_MS: Final = 60_000
"""Largest accepted ``delay_ms`` and ``jitter_ms``: one minute."""

MAX_CLOCK_OFFSET_MS: Final = 3_600_000
"""Largest accepted ``clock_offset_ms``, either way: one hour."""

FAULT_FIELDS: Final = ("drop_rate", "delay_ms", "jitter_ms", "duplicate_rate", "blocked_peers",
                       "clock_offset_ms")


class SkewableClock(Protocol):
    """A wall clock whose injected offset (milliseconds added to the real time) can change."""

    offset_ms: int


def _rate(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
    return float(value)


def _milliseconds(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected an integer number of milliseconds, got {value!r}")
    if not 0 <= value <= MAX_FAULT_DELAY_MS:
        raise ValueError(f"{name}: expected 0..{MAX_FAULT_DELAY_MS} ms, got {value!r}")
    return value


def _clock_offset(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected an integer number of milliseconds, got {value!r}")
    if abs(value) > MAX_CLOCK_OFFSET_MS:
        raise ValueError(f"{name}: expected -{MAX_CLOCK_OFFSET_MS}..{MAX_CLOCK_OFFSET_MS} ms, "
                         f"got {value!r}")
    return value


def _peers(name: str, value: object) -> frozenset[str]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueError(f"{name}: expected a list of node ids, got {value!r}")
    peers = list(value)
    if not all(isinstance(peer, str) and peer for peer in peers):
        raise ValueError(f"{name}: expected a list of non-empty node ids, got {value!r}")
    return frozenset(peers)


class FaultInjector:
    """The faults in force on one node's peer links and wall clock; all off until
    ``configure``.

    - ``drop_rate``: probability that a message is dropped on send.
    - ``delay_ms`` and ``jitter_ms``: each message waits ``delay_ms`` plus a uniform offset in
      ``[-jitter_ms, +jitter_ms]`` (never below zero) before it is queued, so jitter reorders.
    - ``duplicate_rate``: probability that a message is queued twice.
    - ``blocked_peers``: every message to or from these nodes is dropped.
    - ``clock_offset_ms``: the offset of ``clock`` (replacing, not adding to, the one it
      started with, which ``clear`` restores). Refused without a clock; None in ``describe``.
    """

    __slots__ = ("_clock", "_rng", "_startup_clock_offset_ms", "blocked_peers", "delay_ms",
                 "drop_rate", "duplicate_rate", "jitter_ms")

    def __init__(self, rng: random.Random, clock: SkewableClock | None = None) -> None:
        self._rng = rng
        self._clock = clock
        self._startup_clock_offset_ms = clock.offset_ms if clock is not None else 0
        self.drop_rate = 0.0
        self.delay_ms = 0
        self.jitter_ms = 0
        self.duplicate_rate = 0.0
        self.blocked_peers: frozenset[str] = frozenset()

    def configure(self, **fields: object) -> None:
        """Change the named settings, keeping the others; all are checked before any is set.

        Raises ValueError naming the field for an unknown field or a bad value.
        """
        checked: dict[str, object] = {}
        for name, value in fields.items():
            match name:
                case "drop_rate" | "duplicate_rate":
                    checked[name] = _rate(name, value)
                case "delay_ms" | "jitter_ms":
                    checked[name] = _milliseconds(name, value)
                case "blocked_peers":
                    checked[name] = _peers(name, value)
                case "clock_offset_ms":
                    if self._clock is None:
                        raise ValueError(f"{name}: this node has no wall clock to skew")
                    checked[name] = _clock_offset(name, value)
                case _:
                    raise ValueError(f"{name}: unknown fault setting "
                                     f"(known: {', '.join(FAULT_FIELDS)})")
        for name, value in checked.items():
            if name == "clock_offset_ms":
                assert self._clock is not None and isinstance(value, int)
                self._clock.offset_ms = value
            else:
                setattr(self, name, value)

    def clear(self) -> None:
        """Turn every fault off; the clock goes back to the offset it started with."""
        self.drop_rate = 0.0
        self.delay_ms = 0
        self.jitter_ms = 0
        self.duplicate_rate = 0.0
        self.blocked_peers = frozenset()
        if self._clock is not None:
            self._clock.offset_ms = self._startup_clock_offset_ms

    def describe(self) -> dict[str, object]:
        """The settings in force, JSON-ready (peers sorted)."""
        return {
            "drop_rate": self.drop_rate,
            "delay_ms": self.delay_ms,
            "jitter_ms": self.jitter_ms,
            "duplicate_rate": self.duplicate_rate,
            "blocked_peers": sorted(self.blocked_peers),
            "clock_offset_ms": self._clock.offset_ms if self._clock is not None else None,
        }

    def should_drop(self, peer: str) -> bool:
        """Whether a message to or from ``peer`` is lost."""
        if peer in self.blocked_peers:
            return True
        return self.drop_rate > 0.0 and self._rng.random() < self.drop_rate

    def delay_s(self) -> float:
        """How long to hold the next message back before queuing it, in seconds."""
        delay_ms = float(self.delay_ms)
        if self.jitter_ms:
            delay_ms += self._rng.uniform(-self.jitter_ms, self.jitter_ms)
        return max(0.0, delay_ms) / 1000.0

    def should_duplicate(self) -> bool:
        """Whether the next message is queued twice."""
        return self.duplicate_rate > 0.0 and self._rng.random() < self.duplicate_rate
