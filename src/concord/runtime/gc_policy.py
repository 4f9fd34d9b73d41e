"""The node process's garbage-collector policy: when CPython's cycle collector runs, and how
long its pauses are (``concord_gc_pause_seconds``).

The cycle collector stops the event loop while it walks the objects it tracks. With CPython's
defaults (a young collection every 700 net allocations, a full one whenever a quarter of the
old objects are new) a leader under 256 clients sending 64-put batches spent 7.9 s of 25 s in
31 full collections, the longest 388 ms: Raft ticks came late, the followers heard nothing
for longer than an election timeout, and leadership moved under load. The objects that
lived through the young collections there were writes in flight and answered results still
held (by the deadline heap and the at-most-once table, which now let them go or keep them
in a form the collector skips), all freed by reference counting in the end: cycles are rare
(2,000–3,500 objects collected per node in later runs of the same load, with higher
thresholds). So Concord collects less often (``[gc]`` settings; CPython's defaults are
700 / 10 / 10) and, once a node has recovered its state, freezes everything then alive so
full collections never walk it again.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from typing import Any

from concord.config import GcSettings
from concord.observability.metrics import NodeMetrics


class GcPolicy:
    """Applies ``GcSettings`` to this process and times every collection into ``metrics``."""

    def __init__(self, settings: GcSettings, metrics: NodeMetrics) -> None:
        self._settings = settings
        self._pause = {generation: metrics.gc_pause_seconds.labels(generation=str(generation))
                       for generation in range(3)}
        self._started_at = 0.0
        self._previous_threshold: tuple[int, int, int] | None = None

    def install(self) -> None:
        """Set the collection thresholds and start timing collections."""
        settings = self._settings
        self._previous_threshold = gc.get_threshold()
        gc.set_threshold(settings.young_threshold, settings.middle_threshold,
                         settings.old_threshold)
        gc.callbacks.append(self._on_collection)

    def freeze_survivors(self) -> None:
        """Once the node holds its recovered state: collect, then move every object still
        alive out of the collector's sight (``gc.freeze``), when ``freeze_at_start`` is set."""
        if self._settings.freeze_at_start:
            gc.collect()
            gc.freeze()

    def uninstall(self) -> None:
        """Put the previous thresholds back and stop timing (the frozen objects stay)."""
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)
        if self._previous_threshold is not None:
            gc.set_threshold(*self._previous_threshold)
            self._previous_threshold = None

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started_at = time.perf_counter()
        else:
            self._pause[info["generation"]].observe(time.perf_counter() - self._started_at)


@contextlib.contextmanager
def collector_paused(*, freeze: bool = False) -> Iterator[None]:
    """No cycle collection while a large structure that lives on is built (a snapshot's
    state): each collection would walk all of it built so far, for nothing (about ten full
    collections, 0.6 s, while a million keys were decoded).

    ``freeze``: at the end, everything alive moves out of the collector's sight
    (``gc.freeze``) before it runs again. Otherwise its first young collection walks every
    object made meanwhile (0.23 s, then 0.18 s for the next generation, after a
    million keys were restored on a thread beside the event loop).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        if freeze:
            gc.freeze()
    finally:
        if was_enabled:
            gc.enable()
