"""Unit tests of RaftStorage: what a restart recovers after each kind of save, follower
truncation, snapshots from the leader (RESET) and local ones (compaction), group commit, the
unsafe no-fsync mode, and the damage that must keep a node from starting.

The oracle is the Raft log the saves describe, kept by hand in each test: an entry at index i
replaces every entry from i on; a snapshot from the leader discards the log up to it (§7).
"""

from __future__ import annotations

import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from concord.raft.messages import (
    Entry,
    EntryKind,
    HardState,
    Membership,
    Snapshot,
    SnapshotMeta,
)
from concord.raft.ready import PersistedState, Ready
from concord.storage import (
    CorruptLogError,
    CorruptSnapshotError,
    DataDirectoryLockedError,
    Durability,
    Fsyncer,
    RaftStorage,
    RecordType,
    SnapshotStore,
    WriteAheadLog,
)
from concord.wire.codec import decode_entry, encode_entry, encode_hard_state

MEMBERS = Membership(frozenset({"n1", "n2", "n3"}), frozenset({"n4"}))


def entries(first: int, last: int, term: int, size: int = 16) -> tuple[Entry, ...]:
    return tuple(
        Entry(i, term, data=i.to_bytes(4, "big") * (size // 4)) for i in range(first, last + 1)
    )


def snapshot(index: int, term: int, data: bytes = b"state") -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, MEMBERS), data)


def ready(
    new_entries: tuple[Entry, ...] = (),
    hard_state: HardState | None = None,
    snap: Snapshot | None = None,
    *,
    must_sync: bool = True,
) -> Ready:
    return Ready(
        hard_state=hard_state, entries=new_entries, snapshot=snap, must_sync=must_sync,
        early_messages=(), messages=(), committed_entries=(), read_states=(), dropped_reads=(),
        soft_state=None, events=(),
    )


def reopen(data_dir: Path, **options: Any) -> PersistedState:
    storage, persisted = RaftStorage.open(data_dir, fsync=False, **options)
    storage.close()
    return persisted


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


def wal_segments(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "wal").iterdir())


# --- round trips ------------------------------------------------------------------------------


def test_a_new_directory_recovers_nothing(tmp_path: Path) -> None:
    assert reopen(tmp_path / "node") == PersistedState(HardState(), None, ())
    assert sorted(p.name for p in (tmp_path / "node").iterdir()) == ["LOCK", "snap", "wal"]


def test_restart_recovers_exactly_what_was_saved(tmp_path: Path) -> None:
    boot = Snapshot(SnapshotMeta(0, 0, MEMBERS), b"")
    log = (
        Entry(1, 1, EntryKind.NOOP),
        Entry(2, 1, data=b"\x00put x=1"),
        Entry(3, 2, EntryKind.MEMBERSHIP, membership=MEMBERS),
        *entries(4, 40, 2, size=256),
    )
    storage, persisted = RaftStorage.open(tmp_path, fsync=True)
    assert persisted == PersistedState(HardState(), None, ())
    storage.save(ready(snap=boot, hard_state=HardState(1, "n1", 0)))
    storage.save(ready(log[:3], HardState(2, "n2", 1)))
    storage.save(ready(log[3:], HardState(2, "n2", 30)))
    storage.save(ready(hard_state=HardState(2, "n2", 40), must_sync=False))
    storage.close()

    expected = PersistedState(HardState(2, "n2", 40), boot, log)
    assert reopen(tmp_path) == expected
    assert reopen(tmp_path) == expected  # opening again changes nothing


def test_an_entry_at_an_existing_index_replaces_it_and_everything_after(tmp_path: Path) -> None:
    storage, _ = RaftStorage.open(tmp_path, fsync=False)
    storage.save(ready(entries(1, 10, 1), HardState(1, None, 2)))
    storage.save(ready(entries(6, 7, 2), HardState(2, "n3", 3)))  # follower truncation
    storage.save(ready(entries(8, 9, 2)))
    storage.save(ready(entries(9, 9, 3), HardState(3, None, 3)))
    storage.close()
    expected = entries(1, 5, 1) + entries(6, 8, 2) + entries(9, 9, 3)
    assert reopen(tmp_path) == PersistedState(HardState(3, None, 3), None, expected)


def test_a_snapshot_from_the_leader_discards_the_whole_log(tmp_path: Path) -> None:
    storage, _ = RaftStorage.open(tmp_path, fsync=False)
    storage.save(ready(entries(1, 5, 1), HardState(1, None, 2)))
    leader_snapshot = snapshot(10, 3)
    storage.save(ready(entries(11, 12, 3), HardState(3, None, 10), snap=leader_snapshot))
    storage.close()
    assert reopen(tmp_path) == PersistedState(
        HardState(3, None, 10), leader_snapshot, entries(11, 12, 3)
    )
    assert [p.name for p in (tmp_path / "snap").iterdir()] == [
        "0000000000000003-000000000000000a.snap"
    ]


def test_a_snapshot_inside_the_log_with_another_term_discards_the_log(tmp_path: Path) -> None:
    storage, _ = RaftStorage.open(tmp_path, fsync=False)
    storage.save(ready(entries(1, 3, 1) + entries(4, 8, 2), HardState(2, None, 2)))
    storage.save(ready(snap=snapshot(5, 4)))  # index 5 held term 2 here: RESET
    storage.close()
    assert reopen(tmp_path) == PersistedState(HardState(2, None, 2), snapshot(5, 4), ())


@pytest.mark.parametrize(
    ("snapshot_term", "expected_entries"),
    [(2, entries(6, 8, 2)), (4, ())],
    ids=["log-holds-the-snapshot-entry", "log-conflicts-with-the-snapshot"],
)
def test_crash_between_snapshot_file_and_reset_follows_section_7(
    tmp_path: Path, snapshot_term: int, expected_entries: tuple[Entry, ...],
    logs: list[MutableMapping[str, Any]],
) -> None:
    storage, _ = RaftStorage.open(tmp_path, fsync=False)
    storage.save(ready(entries(1, 3, 1) + entries(4, 8, 2), HardState(2, None, 2)))
    storage.close()
    # the snapshot file reached the disk, the RESET record did not
    store, _ = SnapshotStore.open(tmp_path / "snap", fsyncer=Fsyncer(Durability.FSYNC))
    store.save(snapshot(5, snapshot_term))

    persisted = reopen(tmp_path)
    assert persisted == PersistedState(HardState(2, None, 2), snapshot(5, snapshot_term),
                                       expected_entries)
    discards = [e for e in logs if e["event"] == "wal_entries_past_snapshot_discarded"]
    assert len(discards) == (1 if snapshot_term == 4 else 0)
    # the discard was made durable as a RESET: the next open neither repeats nor undoes it
    logs.clear()
    assert reopen(tmp_path) == persisted
    assert not [e for e in logs if e["event"] == "wal_entries_past_snapshot_discarded"]


# --- rotation and compaction -----------------------------------------------------------------


def test_rotation_spreads_the_log_over_segments_and_recovers_it_all(tmp_path: Path) -> None:
    storage, _ = RaftStorage.open(tmp_path, fsync=False, segment_bytes=4096)
    for first in range(1, 200, 10):
        storage.save(ready(entries(first, first + 9, 1, size=256), HardState(1, "n1", first)))
    storage.close()
    segments = wal_segments(tmp_path)
    assert len(segments) >= 200 * 256 // 4096
    assert all(p.stat().st_size <= 4096 for p in segments)
    assert reopen(tmp_path, segment_bytes=4096) == PersistedState(
        HardState(1, "n1", 191), None, entries(1, 200, 1, size=256)
    )


def test_compaction_deletes_covered_segments_and_keeps_the_hard_state(tmp_path: Path) -> None:
    storage, _ = RaftStorage.open(tmp_path, fsync=False, segment_bytes=4096)
    storage.save(ready(hard_state=HardState(7, "n2", 0)))  # written once, early
    for first in range(1, 300, 20):
        storage.save(ready(entries(first, first + 19, 7, size=256)))
    storage.save(ready(hard_state=HardState(7, "n2", 250), must_sync=False))
    segments_before = wal_segments(tmp_path)
    local = snapshot(250, 7, b"kv image at 250")
    storage.save_snapshot(local)
    removed = storage.compact(250)
    storage.close()

    segments_after = wal_segments(tmp_path)
    assert removed > 0
    assert segments_after == segments_before[removed:]
    # every removed segment held only entries <= 250; the first kept one holds a later entry
    _, records = WriteAheadLog.open(tmp_path / "wal", fsyncer=Fsyncer(Durability.FSYNC))
    first_kept = [r for r in records if r.segment == records[0].segment]
    assert first_kept[0].record_type is RecordType.HARD_STATE
    assert max(
        decode_entry(r.payload).index for r in first_kept if r.record_type is RecordType.ENTRY
    ) > 250
    assert reopen(tmp_path, segment_bytes=4096) == PersistedState(
        HardState(7, "n2", 250), local, entries(251, 300, 7, size=256)
    )


def test_a_snapshot_written_beside_the_log_is_published_unless_a_newer_one_came(
    tmp_path: Path,
) -> None:
    """The node writes its own snapshots on a thread of its own and publishes them on the
    thread that saves Readies; one installed from the leader meanwhile wins."""
    storage, _ = RaftStorage.open(tmp_path, fsync=False)
    storage.save(ready(entries(1, 40, 2), HardState(2, None, 40)))
    written = storage.write_snapshot(snapshot(20, 2, b"state at 20"))
    storage.save(ready(entries(41, 50, 2), HardState(2, None, 50)))  # the log goes on meanwhile
    assert [p.suffix for p in (tmp_path / "snap").iterdir()] == [".tmp"]  # not yet in place
    assert storage.publish_snapshot(written)
    stale = storage.write_snapshot(snapshot(30, 2, b"state at 30"))
    from_leader = snapshot(80, 3, b"the leader's state at 80")  # this node had fallen behind
    storage.save(ready(hard_state=HardState(3, None, 80), snap=from_leader))
    assert not storage.publish_snapshot(stale)
    storage.close()
    assert reopen(tmp_path).snapshot == from_leader
    assert sorted(p.name for p in (tmp_path / "snap").iterdir()) == [
        "0000000000000002-0000000000000014.snap", "0000000000000003-0000000000000050.snap"]


def test_compaction_keeps_a_hard_state_last_written_many_segments_ago(tmp_path: Path) -> None:
    storage, _ = RaftStorage.open(tmp_path, fsync=False, segment_bytes=4096)
    storage.save(ready(entries(1, 20, 7, size=256), HardState(7, "n2", 20)))
    for first in range(21, 200, 20):  # no hard state change: many rotations
        storage.save(ready(entries(first, first + 19, 7, size=256)))
    leader_snapshot = snapshot(500, 7)
    storage.save(ready(snap=leader_snapshot))
    segments_before = wal_segments(tmp_path)
    assert storage.compact(500) == len(segments_before) - 1  # all but the active segment
    storage.close()
    assert reopen(tmp_path) == PersistedState(HardState(7, "n2", 20), leader_snapshot, ())


def test_compaction_never_removes_a_segment_with_entries_past_the_snapshot(
    tmp_path: Path,
) -> None:
    storage, _ = RaftStorage.open(tmp_path, fsync=False, segment_bytes=4096)
    storage.save(ready(entries(1, 100, 1, size=256), HardState(1, None, 100)))
    storage.save_snapshot(snapshot(3, 1))
    assert storage.compact(3) == 0  # the first segment also holds entries 4..
    storage.close()
    assert reopen(tmp_path, segment_bytes=4096).entries == entries(4, 100, 1, size=256)


# --- durability --------------------------------------------------------------------------------


def test_group_commit_is_one_fsync_per_save_with_must_sync(
    tmp_path: Path, fsync_calls: list[int]
) -> None:
    latencies: list[float] = []
    storage, _ = RaftStorage.open(tmp_path, fsync=True, on_fsync=latencies.append)
    opened_with = len(fsync_calls)
    assert storage.fsync_count == opened_with
    storage.save(ready(entries(1, 256, 1, size=256), HardState(1, "n1", 0)))
    assert len(fsync_calls) == opened_with + 1
    storage.save(ready(entries(257, 512, 1, size=256), HardState(1, "n1", 256)))
    assert len(fsync_calls) == opened_with + 2
    assert storage.fsync_count == len(fsync_calls) == len(latencies)

    bytes_before = wal_segments(tmp_path)[-1].read_bytes()
    storage.save(ready(hard_state=HardState(1, "n1", 512), must_sync=False))
    assert len(fsync_calls) == opened_with + 2, "commit-only changes are not fsynced"
    assert wal_segments(tmp_path)[-1].read_bytes() != bytes_before, "but reach the OS"
    storage.close()


def test_no_fsync_mode_never_calls_fsync(
    tmp_path: Path, fsync_calls: list[int], logs: list[MutableMapping[str, Any]]
) -> None:
    storage, _ = RaftStorage.open(tmp_path, fsync=False, segment_bytes=4096)
    assert storage.durability is Durability.UNSAFE_NO_FSYNC
    storage.save(ready(entries(1, 50, 1, size=256), HardState(1, "n1", 50)))
    storage.save(ready(entries(51, 52, 2), HardState(2, None, 50), snap=snapshot(50, 1)))
    storage.save(ready(hard_state=HardState(2, None, 52), must_sync=False))
    storage.save_snapshot(snapshot(52, 2))
    assert storage.compact(52) > 0
    storage.close()
    assert fsync_calls == []
    assert storage.fsync_count == 0
    warnings = [e for e in logs if e["event"] == "wal_fsync_disabled"]
    assert len(warnings) == 1
    assert warnings[0]["durability"] == "unsafe-no-fsync"


def test_torn_tail_after_a_crash_recovers_the_prefix_and_logs_it(
    tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    source = tmp_path / "source"
    storage, _ = RaftStorage.open(source, fsync=False)
    storage.save(ready(entries(1, 5, 1), HardState(1, None, 3)))
    storage.save(ready(entries(6, 6, 1, size=64)))
    storage.close()
    segment = wal_segments(source)[0]
    data = segment.read_bytes()
    last_record_bytes = 9 + len(encode_entry(entries(6, 6, 1, size=64)[0]))
    for cut in range(len(data) - last_record_bytes + 1, len(data), 5):
        node = tmp_path / f"cut{cut}"
        (node / "wal").mkdir(parents=True)
        (node / "wal" / segment.name).write_bytes(data[:cut])
        logs.clear()
        assert reopen(node) == PersistedState(HardState(1, None, 3), None, entries(1, 5, 1))
        torn = [e for e in logs if e["event"] == "wal_torn_tail_truncated"]
        assert [(e["file"], e["offset"]) for e in torn] == [
            (str(node / "wal" / segment.name), len(data) - last_record_bytes)
        ]


# --- refusing to start -------------------------------------------------------------------------


def test_a_flipped_byte_mid_log_refuses_to_start(tmp_path: Path) -> None:
    storage, _ = RaftStorage.open(tmp_path, fsync=False)
    storage.save(ready(entries(1, 20, 1), HardState(1, None, 20)))
    storage.close()
    segment = wal_segments(tmp_path)[0]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError) as caught:
        RaftStorage.open(tmp_path, fsync=False)
    assert caught.value.path == segment
    assert 0 < caught.value.offset <= len(data) // 2
    assert str(segment) in str(caught.value)
    assert f"byte offset {caught.value.offset}" in str(caught.value)
    storage, _ = RaftStorage.open(tmp_path / "elsewhere", fsync=False)  # lock was released
    storage.close()


def test_a_checksummed_but_undecodable_record_refuses_to_start(tmp_path: Path) -> None:
    reopen(tmp_path)
    segment = wal_segments(tmp_path)[-1]
    garbage = b"\x93\x01\x04\xc0"  # [1, ENTRY, nil]: valid msgpack, not an entry
    type_byte = bytes([RecordType.ENTRY])
    record = struct.pack("<II", len(garbage), zlib.crc32(type_byte + garbage)) + type_byte
    offset = segment.stat().st_size
    with segment.open("ab") as file:
        file.write(record + garbage)
    with pytest.raises(CorruptLogError, match=f"byte offset {offset}: undecodable ENTRY"):
        RaftStorage.open(tmp_path, fsync=False)


def write_raw_log(data_dir: Path, records: list[tuple[RecordType, bytes]]) -> None:
    wal, _ = WriteAheadLog.open(data_dir / "wal", fsyncer=Fsyncer(Durability.FSYNC))
    wal.set_preamble(RecordType.HARD_STATE, encode_hard_state(HardState()))
    wal.roll()
    for record_type, payload in records:
        wal.append(record_type, payload)
    wal.close()


@pytest.mark.parametrize(
    ("records", "problem"),
    [
        (
            [(RecordType.ENTRY, encode_entry(e)) for e in entries(1, 2, 1) + entries(4, 4, 1)],
            "entry 4 does not fit the log 1..2",
        ),
        (
            [(RecordType.ENTRY, encode_entry(e)) for e in entries(1, 2, 2) + entries(3, 3, 1)],
            "entry 3 has term 1, below the term 2",
        ),
        (
            [(RecordType.ENTRY, encode_entry(e)) for e in entries(5, 6, 1)],
            "the log starts at index 5 but no snapshot",
        ),
        (
            [(RecordType.RESET, struct.pack("<QQ", 9, 2))],
            "RESET to the snapshot at index 9 term 2, but the newest snapshot file is none",
        ),
        (
            [(RecordType.ENTRY, encode_entry(entries(1, 1, 1)[0])),
             (RecordType.HARD_STATE, encode_hard_state(HardState(1, None, 2)))],
            "hard state commit index 2 is beyond the log's end 1",
        ),
    ],
    ids=["gap", "falling-term", "no-snapshot-before-log", "reset-without-snapshot",
         "commit-past-log"],
)
def test_an_inconsistent_log_refuses_to_start(
    tmp_path: Path, records: list[tuple[RecordType, bytes]], problem: str
) -> None:
    write_raw_log(tmp_path, records)
    with pytest.raises(CorruptLogError, match=re.escape(problem)) as caught:
        RaftStorage.open(tmp_path, fsync=False)
    assert caught.value.path == wal_segments(tmp_path)[0]


def corrupt_newest_snapshot(data_dir: Path) -> Path:
    storage, _ = RaftStorage.open(data_dir, fsync=False)
    storage.save(ready(entries(1, 10, 1), HardState(1, None, 10)))
    storage.save_snapshot(snapshot(5, 1))
    storage.save_snapshot(snapshot(10, 1))
    storage.close()
    return data_dir / "snap" / "0000000000000001-000000000000000a.snap"


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda data: data[:-1], "payload is .* bytes but the header says"),
        (lambda data: data[:10], "short header"),
        (lambda data: data[:30] + bytes([data[30] ^ 1]) + data[31:], "checksum mismatch"),
        (lambda data: b"X" + data[1:], "bad magic"),
    ],
    ids=["truncated", "short-header", "flipped-byte", "bad-magic"],
)
def test_a_corrupt_newest_snapshot_refuses_to_start_even_with_an_older_one(
    tmp_path: Path, damage: Callable[[bytes], bytes], problem: str
) -> None:
    newest = corrupt_newest_snapshot(tmp_path)
    assert len(list((tmp_path / "snap").iterdir())) == 2  # an older, valid one exists
    newest.write_bytes(damage(newest.read_bytes()))
    with pytest.raises(CorruptSnapshotError, match=problem) as caught:
        RaftStorage.open(tmp_path, fsync=False)
    assert caught.value.path == newest
    assert str(newest) in str(caught.value)


def test_a_snapshot_file_whose_content_disagrees_with_its_name_refuses_to_start(
    tmp_path: Path,
) -> None:
    newest = corrupt_newest_snapshot(tmp_path)
    newest.rename(newest.with_name("0000000000000001-000000000000000b.snap"))
    with pytest.raises(CorruptSnapshotError, match="not what its name says"):
        RaftStorage.open(tmp_path, fsync=False)


def test_only_the_newest_two_snapshots_stay_and_temp_files_are_removed(tmp_path: Path) -> None:
    storage, _ = RaftStorage.open(tmp_path, fsync=False)
    storage.save(ready(entries(1, 30, 2), HardState(2, None, 30)))
    for index in (10, 20, 30):
        storage.save_snapshot(snapshot(index, 2))
    storage.close()
    snap_dir = tmp_path / "snap"
    assert sorted(p.name for p in snap_dir.iterdir()) == [
        "0000000000000002-0000000000000014.snap",
        "0000000000000002-000000000000001e.snap",
    ]
    (snap_dir / "0000000000000002-0000000000000028.snap.tmp").write_bytes(b"half written")
    assert reopen(tmp_path).snapshot == snapshot(30, 2)
    assert not list(snap_dir.glob("*.tmp"))


def test_a_second_open_of_the_same_directory_is_refused(tmp_path: Path) -> None:
    storage, _ = RaftStorage.open(tmp_path, fsync=False)
    with pytest.raises(DataDirectoryLockedError, match="in use by another node"):
        RaftStorage.open(tmp_path, fsync=False)
    storage.close()
    reopen(tmp_path)


@pytest.mark.pure_python  # slows a method of WriteAheadLog down by patching it
def test_a_save_from_another_thread_waits_for_a_compaction_in_progress(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node saves some Readies on its event loop while its I/O thread compacts: a save
    must not interleave with a compaction that is rewriting the segment list."""
    storage, _ = RaftStorage.open(tmp_path, fsync=False, segment_bytes=4096)
    for first in range(1, 200, 20):
        storage.save(ready(entries(first, first + 19, 1, size=256)))
    storage.save(ready(hard_state=HardState(1, "n1", 150), must_sync=False))
    storage.save_snapshot(snapshot(150, 1))
    deleting, release = threading.Event(), threading.Event()
    delete_segments = WriteAheadLog.delete_segments_through

    def slow_delete(wal: WriteAheadLog, seq: int) -> None:
        deleting.set()
        assert release.wait(5), "the test never released the compaction"
        delete_segments(wal, seq)

    monkeypatch.setattr(WriteAheadLog, "delete_segments_through", slow_delete)
    compaction = threading.Thread(target=storage.compact, args=(150,))
    compaction.start()
    assert deleting.wait(5)
    saved = threading.Event()
    saver = threading.Thread(
        target=lambda: (storage.save(ready(entries(201, 220, 1, size=256))), saved.set()))
    saver.start()
    assert not saved.wait(0.3), "the save ran while the compaction was rewriting segments"
    release.set()
    compaction.join(5)
    saver.join(5)
    assert saved.is_set()
    storage.close()
    assert reopen(tmp_path, segment_bytes=4096).entries == entries(151, 220, 1, size=256)
