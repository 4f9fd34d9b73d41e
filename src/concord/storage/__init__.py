"""Durable storage for the node daemon: the write-ahead log, snapshot files and Raft state.

``RaftStorage`` is the entry point; ``docs/storage.md`` describes the data directory.
"""

from concord.storage.raft_storage import DataDirectoryLockedError, RaftStorage
from concord.storage.snapshots import CorruptSnapshotError, SnapshotStore
from concord.storage.wal import (
    DEFAULT_SEGMENT_BYTES,
    CorruptLogError,
    Durability,
    Fsyncer,
    RecordType,
    StorageCorruptError,
    WalRecord,
    WriteAheadLog,
)

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "CorruptLogError",
    "CorruptSnapshotError",
    "DataDirectoryLockedError",
    "Durability",
    "Fsyncer",
    "RaftStorage",
    "RecordType",
    "SnapshotStore",
    "StorageCorruptError",
    "WalRecord",
    "WriteAheadLog",
]
