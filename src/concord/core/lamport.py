"""A Lamport logical clock: every send ticks it, every receive jumps past the sender's."""

from __future__ import annotations


class LamportClock:
    __slots__ = ("time",)

    def __init__(self, time: int = 0) -> None:
        self.time = time

    def tick(self) -> int:
        """A local event or a send: the new time to stamp on it."""
        self.time += 1
        return self.time

    def observe(self, remote_time: int) -> int:
        """A receive stamped ``remote_time``: move past it."""
        self.time = max(self.time, remote_time) + 1
        return self.time
