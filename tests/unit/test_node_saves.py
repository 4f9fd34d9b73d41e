"""Where the driver makes a Ready durable: a leader's or follower's small one on its event
loop, the rest on the node's I/O thread (``ConcordNode._saves_inline``,
``storage.inline_sync_bytes``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from config_env import MINIMAL_NODE_ENV

from concord.config import ConfigError, StorageSettings, load_config
from concord.raft.ready import Role
from concord.runtime.node import ConcordNode


def saves_inline(role: Role, entry_sizes: list[int], *, limit: int = 4096,
                 snapshot: object = None, snapshotting: object = None) -> bool:
    node = SimpleNamespace(config=SimpleNamespace(
        storage=StorageSettings(inline_sync_bytes=limit)), _snapshotting=snapshotting)
    ready = SimpleNamespace(snapshot=snapshot,
                            entries=tuple(SimpleNamespace(data=bytes(n)) for n in entry_sizes))
    return ConcordNode._saves_inline(node, SimpleNamespace(role=role), ready)  # type: ignore[arg-type]


def test_a_followers_or_leaders_small_ready_is_saved_on_the_event_loop() -> None:
    for role in (Role.FOLLOWER, Role.LEADER):
        assert saves_inline(role, [300])
        assert saves_inline(role, [])  # a vote, a term, a commit: no entries at all
        assert saves_inline(role, [2048, 2048])  # exactly the limit


def test_a_large_ready_a_snapshot_and_a_candidate_go_to_the_io_thread() -> None:
    for role in (Role.FOLLOWER, Role.LEADER):
        assert not saves_inline(role, [2048, 2049])
        assert not saves_inline(role, [100], snapshot=object())
        assert not saves_inline(role, [], limit=0)  # 0 turns it off
        # its own snapshot's publication and compaction run on the I/O thread
        assert not saves_inline(role, [100], snapshotting=object())
    for role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
        assert not saves_inline(role, [100])


def test_the_setting_loads_and_refuses_a_negative_size() -> None:
    assert load_config(None, MINIMAL_NODE_ENV).storage.inline_sync_bytes == 4096
    setting = "CONCORD_STORAGE_INLINE_SYNC_BYTES"
    loaded = load_config(None, {**MINIMAL_NODE_ENV, setting: "0"})
    assert loaded.storage.inline_sync_bytes == 0
    with pytest.raises(ConfigError, match=r"storage\.inline_sync_bytes: must be 0"):
        load_config(None, {**MINIMAL_NODE_ENV, setting: "-1"})
