"""Durable Raft state for the node daemon: the data directory, ``save(ready)`` and recovery.

This module owns what the write-ahead log's records mean for Raft and how a node's state is
rebuilt from ``<data_dir>/wal`` and ``<data_dir>/snap`` at start:

- ENTRY ``i`` replaces every entry at or after ``i`` (that is how follower truncation is
  written), RESET discards the whole log up to a snapshot installed from the leader, and the
  last HARD_STATE wins. Every segment begins with the hard state current when it was created.
- Recovery then lines the log up with the newest snapshot (§7 of the Raft paper: keep the
  entries after it only if the log holds the snapshot's last entry, or starts right after it).

``save`` follows the Ready contract: snapshot, then entries, then hard state; one fsync for all
of it when ``must_sync``. The calls that change state (``save``, ``publish_snapshot``,
``compact``, ``close``) take one lock: the daemon saves some Readies on its event loop while
its I/O thread may be publishing a snapshot or compacting the log.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar, assert_never

import structlog

from concord.raft.messages import Entry, HardState, Snapshot
from concord.raft.ready import PersistedState, Ready
from concord.storage.snapshots import SnapshotStore, WrittenSnapshot
from concord.storage.wal import (
    DEFAULT_SEGMENT_BYTES,
    CorruptLogError,
    Durability,
    Fsyncer,
    RecordType,
    WalRecord,
    WriteAheadLog,
    ensure_directory,
)
from concord.wire.codec import (
    DecodeError,
    decode_entry,
    decode_hard_state,
    encode_entry,
    encode_hard_state,
)

_log = structlog.get_logger(__name__)

WAL_DIRECTORY: Final = "wal"
SNAPSHOT_DIRECTORY: Final = "snap"
LOCK_FILE: Final = "LOCK"

RESET_PAYLOAD: Final = struct.Struct("<QQ")
"""The payload of a RESET record: the installed snapshot's index and term."""

_Decoded = TypeVar("_Decoded")


class DataDirectoryLockedError(Exception):
    """Another process (or another open ``RaftStorage``) is using this data directory."""


@dataclass(frozen=True, slots=True)
class _Reset:
    index: int
    term: int
    record: WalRecord


@dataclass(frozen=True, slots=True)
class _Replayed:
    """The WAL's records folded into one log, before it is lined up with the snapshot."""

    hard_state: HardState
    hard_state_record: WalRecord | None
    entries: list[Entry]
    first_entry_record: WalRecord | None
    last_reset: _Reset | None
    segment_max_index: dict[int, int]  # per segment: the highest log index it wrote


def _decode(record: WalRecord, decode: Callable[[bytes], _Decoded]) -> _Decoded:
    try:
        return decode(record.payload)
    except DecodeError as exc:
        kind = record.record_type.name
        raise CorruptLogError(record.path, record.offset, f"undecodable {kind}: {exc}") from exc


def _decode_reset(record: WalRecord) -> tuple[int, int]:
    if len(record.payload) != RESET_PAYLOAD.size:
        raise CorruptLogError(
            record.path, record.offset,
            f"RESET payload is {len(record.payload)} bytes, expected {RESET_PAYLOAD.size}",
        )
    index, term = RESET_PAYLOAD.unpack(record.payload)
    return index, term


def _replay(records: Sequence[WalRecord]) -> _Replayed:
    """Fold the records in order, checking that the log stays contiguous with rising terms."""
    hard_state = HardState()
    hard_state_record: WalRecord | None = None
    entries: list[Entry] = []
    first_entry_record: WalRecord | None = None
    last_reset: _Reset | None = None
    segment_max_index: dict[int, int] = {}
    for record in records:
        match record.record_type:
            case RecordType.HARD_STATE:
                hard_state = _decode(record, decode_hard_state)
                hard_state_record = record
                continue
            case RecordType.RESET:
                index, term = _decode_reset(record)
                entries.clear()
                first_entry_record = None
                last_reset = _Reset(index, term, record)
                touched_index = index
            case RecordType.ENTRY:
                entry = _decode(record, decode_entry)
                _check_entry_fits(entry, entries, last_reset, record)
                if entries:
                    del entries[entry.index - entries[0].index :]
                if not entries:
                    first_entry_record = record
                entries.append(entry)
                touched_index = entry.index
            case _:
                assert_never(record.record_type)
        if touched_index > segment_max_index.get(record.segment, 0):
            segment_max_index[record.segment] = touched_index
    return _Replayed(hard_state, hard_state_record, entries, first_entry_record, last_reset,
                     segment_max_index)


def _check_entry_fits(entry: Entry, entries: list[Entry], last_reset: _Reset | None,
                      record: WalRecord) -> None:
    """An entry may replace a suffix of the log or extend it, never leave a gap."""
    if entries:
        low, high = entries[0].index, entries[-1].index + 1
        if not low <= entry.index <= high:
            raise CorruptLogError(
                record.path, record.offset,
                f"entry {entry.index} does not fit the log {low}..{high - 1} "
                "(it may only replace entries or follow the last one)",
            )
        previous_term = entries[entry.index - low - 1].term if entry.index > low else 0
    elif last_reset is not None:
        if entry.index != last_reset.index + 1:
            raise CorruptLogError(
                record.path, record.offset,
                f"entry {entry.index} after a RESET to index {last_reset.index} "
                f"(expected {last_reset.index + 1})",
            )
        previous_term = last_reset.term
    else:
        if entry.index < 1:
            raise CorruptLogError(record.path, record.offset, "entry index 0 (indexes start at 1)")
        previous_term = 0
    if entry.term < previous_term:
        raise CorruptLogError(
            record.path, record.offset,
            f"entry {entry.index} has term {entry.term}, below the term {previous_term} before it",
        )


def _line_up(replayed: _Replayed, snapshot: Snapshot | None) -> tuple[tuple[Entry, ...], bool]:
    """The entries after the snapshot, and whether log entries past it had to be discarded."""
    entries = replayed.entries
    reset = replayed.last_reset
    if reset is not None and (
        snapshot is None or (snapshot.meta.index, snapshot.meta.term) < (reset.index, reset.term)
    ):
        newest = "none" if snapshot is None else (
            f"index {snapshot.meta.index} term {snapshot.meta.term}"
        )
        raise CorruptLogError(
            reset.record.path, reset.record.offset,
            f"RESET to the snapshot at index {reset.index} term {reset.term}, "
            f"but the newest snapshot file is {newest}",
        )
    snapshot_index = snapshot.meta.index if snapshot is not None else 0
    first_index = entries[0].index if entries else snapshot_index + 1
    last_index = entries[-1].index if entries else snapshot_index
    if first_index > snapshot_index + 1:
        record = replayed.first_entry_record
        assert record is not None
        covered = "no snapshot" if snapshot is None else f"the snapshot ends at {snapshot_index}"
        raise CorruptLogError(
            record.path, record.offset,
            f"the log starts at index {first_index} but {covered}: entries are missing",
        )
    kept: tuple[Entry, ...] = ()
    discarded = False
    if snapshot is None or first_index == snapshot_index + 1:
        kept = tuple(entries)
    elif last_index >= snapshot_index:
        # §7: keep what follows the snapshot only if the log holds the snapshot's last entry
        if entries[snapshot_index - first_index].term == snapshot.meta.term:
            kept = tuple(entries[snapshot_index - first_index + 1 :])
        else:
            discarded = last_index > snapshot_index
    hard_state = replayed.hard_state
    log_end_index = kept[-1].index if kept else snapshot_index
    if hard_state.commit > log_end_index:
        record = replayed.hard_state_record
        assert record is not None
        raise CorruptLogError(
            record.path, record.offset,
            f"hard state commit index {hard_state.commit} is beyond the log's end "
            f"{log_end_index}",
        )
    return kept, discarded


def _lock(data_dir: Path) -> int:
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirectoryLockedError(
            f"{data_dir} is in use by another node (lock held on {path})"
        ) from None
    return fd


class RaftStorage:
    """A node's durable Raft state: WAL segments and snapshot files under one data directory."""

    __slots__ = (
        "_fsyncer",
        "_hard_state",
        "_last_index",
        "_lock",
        "_lock_fd",
        "_segment_max_index",
        "_snapshot_index",
        "_snapshots",
        "_wal",
        "data_dir",
    )

    def __init__(self, data_dir: Path, lock_fd: int, fsyncer: Fsyncer, wal: WriteAheadLog,
                 snapshots: SnapshotStore, persisted: PersistedState,
                 segment_max_index: dict[int, int]) -> None:
        self.data_dir = data_dir
        self._lock_fd: int | None = lock_fd
        self._fsyncer = fsyncer
        self._wal = wal
        self._snapshots = snapshots
        self._hard_state = persisted.hard_state
        self._snapshot_index = persisted.snapshot.meta.index if persisted.snapshot else 0
        entries = persisted.entries
        self._last_index = entries[-1].index if entries else self._snapshot_index
        self._segment_max_index = segment_max_index
        # the node saves small Readies and commit-only ones on its event loop while the I/O
        # thread may be publishing a snapshot or compacting: one call at a time
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        fsync: bool = True,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        on_fsync: Callable[[float], None] | None = None,
    ) -> tuple[RaftStorage, PersistedState]:
        """Lock ``data_dir``, recover what it holds, and start a fresh WAL segment.

        ``fsync=False`` is the ``unsafe-no-fsync`` durability mode (tests, benchmarks).
        ``on_fsync(seconds)`` is called after every fsync. Raises ``StorageCorruptError``
        (``CorruptLogError``, ``CorruptSnapshotError``) when the directory cannot be trusted
        and ``DataDirectoryLockedError`` when another node uses it.
        """
        durability = Durability.FSYNC if fsync else Durability.UNSAFE_NO_FSYNC
        fsyncer = Fsyncer(durability, on_fsync)
        ensure_directory(data_dir, fsyncer)
        lock_fd = _lock(data_dir)
        try:
            snapshots, snapshot = SnapshotStore.open(data_dir / SNAPSHOT_DIRECTORY,
                                                     fsyncer=fsyncer)
            wal, records = WriteAheadLog.open(data_dir / WAL_DIRECTORY, fsyncer=fsyncer,
                                              segment_bytes=segment_bytes)
            replayed = _replay(records)
            entries, discarded = _line_up(replayed, snapshot)
            persisted = PersistedState(replayed.hard_state, snapshot, entries)
            storage = cls(data_dir, lock_fd, fsyncer, wal, snapshots, persisted,
                          replayed.segment_max_index)
            storage._start(snapshot if discarded else None)
        except BaseException:
            os.close(lock_fd)
            raise
        _log.info(
            "raft_storage_opened",
            data_dir=str(data_dir),
            durability=durability.value,
            term=persisted.hard_state.term,
            commit=persisted.hard_state.commit,
            snapshot_index=storage._snapshot_index,
            first_index=entries[0].index if entries else None,
            last_index=storage._last_index,
            wal_records=len(records),
        )
        return storage, persisted

    def _start(self, discarded_past: Snapshot | None) -> None:
        """Open a new segment with the recovered hard state; make a §7 discard explicit."""
        self._wal.set_preamble(RecordType.HARD_STATE, encode_hard_state(self._hard_state))
        self._wal.roll()
        if discarded_past is not None:
            meta = discarded_past.meta
            _log.warning("wal_entries_past_snapshot_discarded", snapshot_index=meta.index,
                         snapshot_term=meta.term)
            self._append_reset(meta.index, meta.term)
        self._wal.sync()

    # --- writing ---------------------------------------------------------------------------

    def save(self, ready: Ready) -> None:
        """Persist ``ready``'s snapshot, entries and hard state, in that order.

        Durable (one fsync for all of it) when ``ready.must_sync``; otherwise handed to the OS.
        """
        with self._lock:
            self._save(ready)

    def _save(self, ready: Ready) -> None:
        if ready.snapshot is not None:
            meta = ready.snapshot.meta
            assert meta.index >= self._snapshot_index, "snapshots never move backwards"
            self._snapshots.save(ready.snapshot)
            self._snapshot_index = meta.index
            self._append_reset(meta.index, meta.term)
        if ready.entries:
            self._append_entries(ready.entries)
        if ready.hard_state is not None:
            self._save_hard_state(ready.hard_state)
        if ready.must_sync:
            self._wal.sync()
        else:
            self._wal.flush()

    def _append_reset(self, index: int, term: int) -> None:
        seq = self._wal.append(RecordType.RESET, RESET_PAYLOAD.pack(index, term))
        self._note_index(seq, index)
        self._last_index = index

    def _append_entries(self, entries: Sequence[Entry]) -> None:
        first = entries[0].index
        assert self._snapshot_index < first <= self._last_index + 1, (
            f"entries from {first} leave a gap or rewrite the snapshot "
            f"(snapshot {self._snapshot_index}, last {self._last_index})"
        )
        expected_index = first
        wal = self._wal
        segment_max_index = self._segment_max_index
        for entry in entries:
            assert entry.index == expected_index, "entries must be contiguous"
            seq = wal.append(RecordType.ENTRY, encode_entry(entry))
            if entry.index > segment_max_index.get(seq, 0):
                segment_max_index[seq] = entry.index
            expected_index += 1
        self._last_index = entries[-1].index

    def _save_hard_state(self, hard_state: HardState) -> None:
        assert hard_state.commit <= self._last_index, "commit index beyond the persisted log"
        payload = encode_hard_state(hard_state)
        self._wal.append(RecordType.HARD_STATE, payload)
        self._wal.set_preamble(RecordType.HARD_STATE, payload)
        self._hard_state = hard_state

    def _note_index(self, seq: int, index: int) -> None:
        if index > self._segment_max_index.get(seq, 0):
            self._segment_max_index[seq] = index

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Durably store a snapshot the node took itself (the log is kept; see ``compact``)."""
        self.publish_snapshot(self.write_snapshot(snapshot))

    def write_snapshot(self, snapshot: Snapshot) -> WrittenSnapshot:
        """The slow half of ``save_snapshot`` (encode, write, fsync a temporary file): safe on
        a thread of its own while this storage's owner goes on appending to the log (a
        279 MB snapshot kept the I/O thread, and every WAL fsync behind it, busy for seconds)."""
        return self._snapshots.write(snapshot)

    def publish_snapshot(self, written: WrittenSnapshot) -> bool:
        """The other half: put the written snapshot in place (on the thread that saves Readies).

        False, and the written file removed, when a newer snapshot (one installed from the
        leader meanwhile) is already in place: snapshots never move backwards.
        """
        with self._lock:
            assert written.index <= self._hard_state.commit, "a snapshot covers committed entries"
            if written.index < self._snapshot_index:
                self._snapshots.discard(written)
                return False
            self._snapshots.publish(written)
            self._snapshot_index = written.index
            return True

    def compact(self, index: int) -> int:
        """Delete the WAL segments holding only entries up to ``index``; return how many.

        ``index`` must be covered by a durable snapshot. The active segment always stays.
        """
        with self._lock:
            assert index <= self._snapshot_index, "compact only what a durable snapshot covers"
            covered: list[int] = []
            for seq in self._wal.segments[:-1]:
                if self._segment_max_index.get(seq, 0) > index:
                    break
                covered.append(seq)
            if covered:
                self._wal.delete_segments_through(covered[-1])
                for seq in covered:
                    self._segment_max_index.pop(seq, None)
        if covered:
            _log.info("wal_segments_compacted", through_index=index, segments_removed=len(covered))
        return len(covered)

    def close(self) -> None:
        """Make everything written durable, close the WAL and release the directory lock."""
        with self._lock:
            if self._lock_fd is None:
                return
            self._wal.close()
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- metrics -------------------------------------------------------------------------

    @property
    def durability(self) -> Durability:
        return self._fsyncer.durability

    @property
    def fsync_count(self) -> int:
        """fsync calls so far (WAL segments, snapshot files and directories)."""
        return self._fsyncer.fsync_count
