"""A node encodes and restores large snapshots on a thread of its own, and copies a received
one out of its reassembled transfer there; its event loop must keep running meanwhile.

Run under the compiled build too (``.ci/run`` runs the suite twice): a mypyc-compiled loop
never lets go of the GIL by itself, and a million-key snapshot then stopped every node's
event loop for a second at a time (elections under load), and a follower's for about 2 s
while it installed one from its leader (docs/performance.md).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from concord.kv.commands import KeyValue, WriteResult
from concord.kv.fsm import KVSnapshotState, KVStateMachine
from concord.runtime.node import encode_snapshot_beside_the_loop, restore_beside_the_loop
from concord.transport.peer import copy_beside_the_loop
from concord.wire.codec import decode_kv_snapshot, encode_kv_snapshot

KEYS = 300_000
VALUE = bytes(256)
T = TypeVar("T")


def run_beside_the_main_thread(work: Callable[[], T]) -> tuple[T, float, float]:
    """``work()`` on a thread, while this thread wakes every millisecond like an event loop
    between two callbacks: its result, the longest this thread waited at once, and how long
    it all took (seconds)."""
    results: list[T] = []
    worker = threading.Thread(target=lambda: results.append(work()))
    longest_gap_s = 0.0
    started = last = time.perf_counter()
    worker.start()
    while worker.is_alive():
        time.sleep(0.001)
        now = time.perf_counter()
        longest_gap_s = max(longest_gap_s, now - last)
        last = now
    worker.join()
    assert len(results) == 1, "the work failed on its thread"
    return results[0], longest_gap_s, time.perf_counter() - started


def assert_shared(longest_gap_s: float, took_s: float, what: str) -> None:
    # held for the whole work, the gap would be about as long as the work itself
    assert longest_gap_s < max(0.05, took_s / 4), (
        f"the main thread waited {longest_gap_s * 1000:.0f} ms at once during {what} of "
        f"{took_s * 1000:.0f} ms")


def test_the_main_thread_keeps_running_while_a_large_snapshot_is_encoded() -> None:
    state = KVSnapshotState(
        applied_index=KEYS, revision=KEYS,
        key_values=tuple(KeyValue(f"k{i:07d}", VALUE, i + 1, i + 1, 1) for i in range(KEYS)),
        remembered_requests=())
    encoded, longest_gap_s, took_s = run_beside_the_main_thread(
        lambda: encode_snapshot_beside_the_loop(state))
    assert len(encoded) > KEYS * len(VALUE)
    assert encoded == encode_kv_snapshot(state)
    assert_shared(longest_gap_s, took_s, "an encoding")


def test_the_main_thread_keeps_running_while_a_large_snapshot_is_restored() -> None:
    """Keys created in random order (so the key index is merged from many sorted runs), and
    remembered requests: the restored machine equals the one restored in one go."""
    order = list(range(KEYS))
    random.Random(7).shuffle(order)
    key_values = tuple(KeyValue(f"k{n:07d}", VALUE, i + 1, i + 1, 1)
                       for i, n in enumerate(order))
    remembered = tuple((f"request-{i}", WriteResult(True, KEYS - i, None, key_values[-1 - i]))
                       for i in range(3000))
    state = KVSnapshotState(KEYS, KEYS, key_values, remembered)
    data = encode_kv_snapshot(state)

    restored, longest_gap_s, took_s = run_beside_the_main_thread(
        lambda: restore_beside_the_loop(data))
    at_once = KVStateMachine.from_snapshot(decode_kv_snapshot(data))
    assert restored.snapshot_state().key_values == at_once.snapshot_state().key_values
    assert (tuple(restored.snapshot_state().remembered_requests)
            == tuple(at_once.snapshot_state().remembered_requests) == remembered)
    assert (restored.applied_index, restored.revision) == (KEYS, KEYS)
    in_key_order, _ = restored.range("", None)
    assert [kv.key for kv in in_key_order] == sorted(kv.key for kv in key_values)
    assert in_key_order == at_once.range("", None)[0]
    assert_shared(longest_gap_s, took_s, "a restore")


def test_the_main_thread_keeps_running_while_a_received_image_is_copied_out() -> None:
    received = bytearray(range(256)) * (1024 * 1024)  # 256 MiB, as reassembled from fragments
    image_view = memoryview(received)[100:]
    copied, longest_gap_s, took_s = run_beside_the_main_thread(
        lambda: copy_beside_the_loop(image_view))
    assert type(copied) is bytes and copied == image_view
    assert_shared(longest_gap_s, took_s, "a copy")
