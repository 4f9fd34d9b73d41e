"""A node encodes its snapshot on a thread of its own; its event loop must keep running.

Run under the compiled build too (``.ci/run`` runs the suite twice): a mypyc-compiled loop
never lets go of the GIL by itself, and a million-key snapshot then stopped every node's
event loop for a second at a time (elections under load, docs/performance.md).
"""

from __future__ import annotations

import threading
import time

from concord.kv.commands import KeyValue
from concord.kv.fsm import KVSnapshotState
from concord.runtime.node import encode_snapshot_beside_the_loop
from concord.wire.codec import encode_kv_snapshot

KEYS = 300_000


def test_the_main_thread_keeps_running_while_a_large_snapshot_is_encoded() -> None:
    value = bytes(256)
    state = KVSnapshotState(
        applied_index=KEYS, revision=KEYS,
        key_values=tuple(KeyValue(f"k{i:07d}", value, i + 1, i + 1, 1) for i in range(KEYS)),
        remembered_requests=())
    encoded: list[bytes] = []
    encoder = threading.Thread(
        target=lambda: encoded.append(encode_snapshot_beside_the_loop(state)))
    longest_gap_s = 0.0
    started = last = time.perf_counter()
    encoder.start()
    while encoder.is_alive():
        time.sleep(0.001)  # like an event loop between two callbacks
        now = time.perf_counter()
        longest_gap_s = max(longest_gap_s, now - last)
        last = now
    encoder.join()
    took_s = time.perf_counter() - started
    assert len(encoded) == 1 and len(encoded[0]) > KEYS * len(value)
    assert encoded[0] == encode_kv_snapshot(state)
    # held for the whole encoding, the gap would be about as long as the encoding itself
    assert longest_gap_s < max(0.05, took_s / 4), (
        f"the main thread waited {longest_gap_s * 1000:.0f} ms at once during an encoding "
        f"of {took_s * 1000:.0f} ms")
