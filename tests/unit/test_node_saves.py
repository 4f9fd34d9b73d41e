"""Where the driver makes a Ready durable: a follower's small one on its event loop, the rest
on the node's I/O thread (``ConcordNode._saves_inline``, ``storage.follower_inline_sync_bytes``)."""

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
        storage=StorageSettings(follower_inline_sync_bytes=limit)), _snapshotting=snapshotting)
    ready = SimpleNamespace(snapshot=snapshot,
                            entries=tuple(SimpleNamespace(data=bytes(n)) for n in entry_sizes))
    return ConcordNode._saves_inline(node, SimpleNamespace(role=role), ready)  # type: ignore[arg-type]


def test_a_followers_small_ready_is_saved_on_the_event_loop() -> None:
    assert saves_inline(Role.FOLLOWER, [300])
    assert saves_inline(Role.FOLLOWER, [])  # a vote or a term: no entries at all
    assert saves_inline(Role.FOLLOWER, [2048, 2048])  # exactly the limit


def test_a_large_ready_a_snapshot_and_every_other_role_go_to_the_io_thread() -> None:
    assert not saves_inline(Role.FOLLOWER, [2048, 2049])
    assert not saves_inline(Role.FOLLOWER, [100], snapshot=object())
    for role in (Role.LEADER, Role.CANDIDATE, Role.PRE_CANDIDATE):
        assert not saves_inline(role, [100])
    assert not saves_inline(Role.FOLLOWER, [], limit=0)  # 0 turns it off
    # its own snapshot's publication and compaction run on the I/O thread
    assert not saves_inline(Role.FOLLOWER, [100], snapshotting=object())


def test_the_setting_loads_and_refuses_a_negative_size() -> None:
    assert load_config(None, MINIMAL_NODE_ENV).storage.follower_inline_sync_bytes == 4096
    setting = "CONCORD_STORAGE_FOLLOWER_INLINE_SYNC_BYTES"
    loaded = load_config(None, {**MINIMAL_NODE_ENV, setting: "0"})
    assert loaded.storage.follower_inline_sync_bytes == 0
    with pytest.raises(ConfigError, match=r"storage\.follower_inline_sync_bytes: must be 0"):
        load_config(None, {**MINIMAL_NODE_ENV, setting: "-1"})
