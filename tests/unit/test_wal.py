"""Unit tests of the segmented write-ahead log: the exact record bytes, rotation, group commit,
torn tails cut at every byte of the last record, and damage that must stop the node.

The oracle for every byte layout is the format written out by hand:
``[u32 length][u32 crc32(type byte + payload)][u8 type][payload]``, little-endian.
"""

from __future__ import annotations

import errno
import os
import struct
import zlib
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from concord.storage.wal import (
    MIN_SEGMENT_BYTES,
    PREALLOCATE_BYTES,
    CorruptLogError,
    Durability,
    Fsyncer,
    RecordType,
    WalRecord,
    WriteAheadLog,
)

ENTRY = RecordType.ENTRY
HARD_STATE = RecordType.HARD_STATE


def framed(record_type: RecordType, payload: bytes) -> bytes:
    """The record layout, spelled out independently of the implementation."""
    type_byte = bytes([record_type])
    return struct.pack("<II", len(payload), zlib.crc32(type_byte + payload)) + type_byte + payload


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


def unsafe() -> Fsyncer:
    return Fsyncer(Durability.UNSAFE_NO_FSYNC)


def write_log(directory: Path, payloads: list[bytes], *, segment_bytes: int = 1 << 20,
              preamble: bytes = b"hs0") -> None:
    wal, records = WriteAheadLog.open(directory, fsyncer=unsafe(), segment_bytes=segment_bytes)
    assert records == ()
    wal.set_preamble(HARD_STATE, preamble)
    wal.roll()
    for payload in payloads:
        wal.append(ENTRY, payload)
    wal.close()


def read_log(directory: Path) -> tuple[WalRecord, ...]:
    _, records = WriteAheadLog.open(directory, fsyncer=unsafe())
    return records


def payloads_of(records: tuple[WalRecord, ...]) -> list[tuple[RecordType, bytes]]:
    return [(record.record_type, record.payload) for record in records]


def test_record_bytes_match_the_documented_layout(tmp_path: Path) -> None:
    write_log(tmp_path, [b"abc", b""], preamble=b"hs")
    segment = tmp_path / "0000000000000000.wal"
    assert segment.read_bytes() == (
        framed(HARD_STATE, b"hs") + framed(ENTRY, b"abc") + framed(ENTRY, b"")
    )
    # hand-derived header of the first record: length 2, crc32(b"\x02hs"), type 2
    assert segment.read_bytes()[:9] == struct.pack("<IIB", 2, zlib.crc32(b"\x02hs"), 2)


def test_reopen_returns_every_record_in_order_with_its_offset(tmp_path: Path) -> None:
    payloads = [bytes([i]) * i for i in range(20)]
    write_log(tmp_path, payloads, preamble=b"h")
    records = read_log(tmp_path)
    assert payloads_of(records) == [(HARD_STATE, b"h")] + [(ENTRY, p) for p in payloads]
    expected_offset = 0
    for record in records:
        assert record.offset == expected_offset
        assert record.path == tmp_path / "0000000000000000.wal"
        expected_offset += 9 + len(record.payload)


def test_rotation_keeps_segments_within_size_and_starts_each_with_the_preamble(
    tmp_path: Path,
) -> None:
    wal, _ = WriteAheadLog.open(tmp_path, fsyncer=unsafe(), segment_bytes=4096)
    wal.set_preamble(HARD_STATE, b"term=1")
    wal.roll()
    for i in range(100):
        wal.append(ENTRY, i.to_bytes(2, "big") * 100)
        if i == 50:
            wal.append(HARD_STATE, b"term=2")
            wal.set_preamble(HARD_STATE, b"term=2")
    wal.close()

    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == [f"{seq:016x}.wal" for seq in range(len(files))]
    assert len(files) >= 5  # 100 records of 209 bytes, at most 19 per 4096-byte segment
    assert all(f.stat().st_size <= 4096 for f in files)
    records = read_log(tmp_path)
    for seq in range(len(files) - 1):  # a segment closes only when the next record won't fit
        next_record = [r for r in records if r.segment == seq + 1][1]
        assert files[seq].stat().st_size + 9 + len(next_record.payload) > 4096
    entries = [r.payload for r in records if r.record_type is ENTRY]
    assert entries == [i.to_bytes(2, "big") * 100 for i in range(100)]
    for seq in range(len(files)):
        first = next(r for r in records if r.segment == seq)
        assert first.offset == 0
        assert first.record_type is HARD_STATE
        assert first.payload in (b"term=1", b"term=2")
    firsts = [next(r for r in records if r.segment == seq).payload for seq in range(len(files))]
    assert firsts == sorted(firsts)  # term=1 segments, then term=2 segments: never back


def test_a_record_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    big = b"x" * 10_000
    write_log(tmp_path, [b"a", big, b"b"], segment_bytes=4096)
    records = read_log(tmp_path)
    assert [(r.segment, r.payload) for r in records] == [
        (0, b"hs0"), (0, b"a"), (1, b"hs0"), (1, big), (2, b"hs0"), (2, b"b"),
    ]


def test_group_commit_one_fsync_for_many_records(
    tmp_path: Path, fsync_calls: list[int]
) -> None:
    latencies: list[float] = []
    fsyncer = Fsyncer(Durability.FSYNC, on_fsync=latencies.append)
    wal, _ = WriteAheadLog.open(tmp_path, fsyncer=fsyncer)
    wal.set_preamble(HARD_STATE, b"hs")
    wal.roll()
    wal.sync()
    before = len(fsync_calls)
    for i in range(256):
        wal.append(ENTRY, bytes(256) + i.to_bytes(2, "big"))
    wal.sync()
    assert len(fsync_calls) - before == 1
    wal.append(ENTRY, b"later")
    wal.flush()  # to the OS only
    assert len(fsync_calls) - before == 1
    assert len(read_log(tmp_path)) == 1 + 256 + 1
    wal.sync()  # 'later' reached the OS but not the disk: this fsync covers it
    assert len(fsync_calls) - before == 2
    wal.sync()  # nothing new: no fsync
    assert len(fsync_calls) - before == 2
    wal.close()
    assert fsyncer.fsync_count == len(fsync_calls)
    assert len(latencies) == len(fsync_calls)
    assert all(seconds >= 0 for seconds in latencies)


def test_new_segments_fsync_the_directory(tmp_path: Path, fsync_calls: list[int]) -> None:
    fsyncer = Fsyncer(Durability.FSYNC)
    wal, _ = WriteAheadLog.open(tmp_path / "wal", fsyncer=fsyncer)
    assert len(fsync_calls) == 1  # the new wal/ directory's name, in its parent
    wal.set_preamble(HARD_STATE, b"hs")
    wal.roll()
    assert len(fsync_calls) == 2  # the directory, for the new segment's name
    wal.roll()
    assert len(fsync_calls) == 4  # the old segment's data, then the directory again
    wal.delete_segments_through(0)
    assert len(fsync_calls) == 5
    assert [p.name for p in (tmp_path / "wal").iterdir()] == ["0000000000000001.wal"]
    wal.close()


def test_unsafe_mode_never_fsyncs_and_warns_once_at_open(
    tmp_path: Path, fsync_calls: list[int], logs: list[MutableMapping[str, Any]]
) -> None:
    wal, _ = WriteAheadLog.open(tmp_path, fsyncer=unsafe(), segment_bytes=4096)
    wal.set_preamble(HARD_STATE, b"hs")
    wal.roll()
    for _ in range(50):
        wal.append(ENTRY, bytes(300))
        wal.sync()
    wal.delete_segments_through(wal.segments[-2])
    wal.close()
    assert fsync_calls == []
    warnings = [e for e in logs if e["event"] == "wal_fsync_disabled"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["durability"] == "unsafe-no-fsync"


# --- torn tails ---------------------------------------------------------------------------


PAYLOADS = [b"first", b"second" * 10, b"last record" * 3]


def segment_with_records(tmp_path: Path) -> tuple[bytes, int]:
    """A one-segment log of PAYLOADS, and the offset where its last record starts."""
    source = tmp_path / "source"
    write_log(source, PAYLOADS)
    data = (source / "0000000000000000.wal").read_bytes()
    last_start = len(data) - len(framed(ENTRY, PAYLOADS[-1]))
    return data, last_start


def expect_torn_tail_cut(directory: Path, content: bytes, last_start: int,
                         logs: list[MutableMapping[str, Any]]) -> None:
    segment = directory / "0000000000000000.wal"
    directory.mkdir(exist_ok=True)
    segment.write_bytes(content)
    logs.clear()
    records = read_log(directory)
    assert payloads_of(records) == [(HARD_STATE, b"hs0")] + [(ENTRY, p) for p in PAYLOADS[:-1]]
    assert segment.stat().st_size == last_start
    torn = [e for e in logs if e["event"] == "wal_torn_tail_truncated"]
    assert len(torn) == 1
    assert torn[0]["log_level"] == "warning"
    assert torn[0]["file"] == str(segment)
    assert torn[0]["offset"] == last_start
    assert torn[0]["bytes_dropped"] == len(content) - last_start


def test_torn_tail_cut_at_every_byte_of_the_last_record_keeps_the_prefix(
    tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    data, last_start = segment_with_records(tmp_path)
    for cut in range(last_start + 1, len(data)):
        expect_torn_tail_cut(tmp_path / "log", data[:cut], last_start, logs)


def test_torn_tail_followed_by_zeros_or_garbage_is_cut(
    tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    data, last_start = segment_with_records(tmp_path)
    for cut in range(last_start, len(data), 7):
        for filler in (bytes(4096), b"\xff" * 100, bytes(range(256))):
            if cut == last_start and not any(filler):
                continue  # nothing of the last record, only zeros: preallocated space (below)
            expect_torn_tail_cut(tmp_path / "log", data[:cut] + filler, last_start, logs)


def test_zeros_after_the_last_record_are_preallocated_space_cut_quietly(
    tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    """What a crash leaves in the active segment: its records, then the zeros written ahead
    of them. Every record is kept, the zeros are cut off, and nothing is reported as torn."""
    data, _ = segment_with_records(tmp_path)
    segment = tmp_path / "log" / "0000000000000000.wal"
    segment.parent.mkdir()
    segment.write_bytes(data + bytes(PREALLOCATE_BYTES))
    logs.clear()
    assert payloads_of(read_log(tmp_path / "log")) == (
        [(HARD_STATE, b"hs0")] + [(ENTRY, p) for p in PAYLOADS])
    assert segment.stat().st_size == len(data)
    assert not [e for e in logs if e["event"] == "wal_torn_tail_truncated"]


def test_zeros_inside_a_segment_that_is_not_the_last_are_damage(tmp_path: Path) -> None:
    """A closed segment never keeps preallocated zeros (a clean close and every roll cut them
    off), so zeros there mean lost records."""
    write_log(tmp_path, [b"a" * 3000, b"b" * 3000], segment_bytes=MIN_SEGMENT_BYTES)
    first = tmp_path / "0000000000000000.wal"
    assert (tmp_path / "0000000000000001.wal").exists()
    first.write_bytes(first.read_bytes() + bytes(64))
    with pytest.raises(CorruptLogError, match="not the last"):
        read_log(tmp_path)


def test_the_active_segment_is_zero_filled_ahead_and_a_clean_close_cuts_it(
    tmp_path: Path, fsync_calls: list[int]
) -> None:
    """Records land inside the file's size (made durable with fdatasync where the platform
    has it); what a crash would leave reads back whole; a close leaves only the records."""
    wal, _ = WriteAheadLog.open(tmp_path / "log", fsyncer=Fsyncer(Durability.FSYNC))
    wal.set_preamble(HARD_STATE, b"hs")
    wal.roll()
    for payload in PAYLOADS:
        wal.append(ENTRY, payload)
    wal.sync()
    segment = tmp_path / "log" / "0000000000000000.wal"
    records_bytes = len(framed(HARD_STATE, b"hs")) + sum(len(framed(ENTRY, p)) for p in PAYLOADS)
    assert segment.stat().st_size == records_bytes + PREALLOCATE_BYTES
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    (crashed / segment.name).write_bytes(segment.read_bytes())
    assert payloads_of(read_log(crashed))[1:] == [(ENTRY, p) for p in PAYLOADS]
    if hasattr(os, "fdatasync"):
        synced_with_fdatasync: list[int] = []
        real_fdatasync = os.fdatasync
        os.fdatasync = lambda fd: (synced_with_fdatasync.append(fd), real_fdatasync(fd))[1]
        try:
            wal.append(ENTRY, b"one more")
            wal.sync()
        finally:
            os.fdatasync = real_fdatasync
        assert len(synced_with_fdatasync) == 1
        records_bytes += len(framed(ENTRY, b"one more"))
    wal.close()
    assert segment.stat().st_size == records_bytes


def test_a_sector_never_written_inside_zero_filled_space_is_a_tear_despite_later_records(
    tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    """A power loss during a sync into zero-filled space may persist a later sector and not
    an earlier one: the records from the lost sector on were never acknowledged (their sync
    did not return), so they are cut off like any torn tail, not refused as damage."""
    payloads = [bytes([i % 200 + 1]) * 300 for i in range(12)]  # records across sectors
    write_log(tmp_path / "source", payloads)
    data = (tmp_path / "source" / "0000000000000000.wal").read_bytes()
    starts = [record.offset for record in read_log(tmp_path / "source")]
    segment = tmp_path / "log" / "0000000000000000.wal"
    segment.parent.mkdir()
    # the sector holding record 6's start is lost: record 6 is damaged, 8 and later are whole
    lost = starts[6] // 512 * 512
    torn = data[:lost] + bytes(512) + data[lost + 512:] + bytes(PREALLOCATE_BYTES)
    record_bytes = len(framed(ENTRY, payloads[0]))
    first_damaged = next(i for i, start in enumerate(starts) if start + record_bytes > lost)
    segment.write_bytes(torn)
    logs.clear()
    kept = read_log(tmp_path / "log")
    assert [record.payload for record in kept[1:]] == payloads[:first_damaged - 1]
    assert segment.stat().st_size == starts[first_damaged]
    assert [e["event"] for e in logs].count("wal_torn_tail_truncated") == 1
    # the same bytes with the sector garbled instead of zero are damage, not a tear
    garbled = data[:lost] + b"\xa5" * 512 + data[lost + 512:]
    segment.write_bytes(garbled)
    with pytest.raises(CorruptLogError, match="valid record follows"):
        read_log(tmp_path / "log")


def test_a_disk_refusing_the_zeros_costs_speed_not_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logs: list[MutableMapping[str, Any]]
) -> None:
    """Writing zeros ahead is an optimization: when the disk is full for them, records are
    appended past the file's end as before, one warning says so, and the zeros are tried
    again only after another ``PREALLOCATE_BYTES`` of records."""
    real_pwrite = os.pwrite
    refused: list[int] = []

    def pwrite_without_room_for_zeros(fd: int, data: Any, offset: int) -> int:
        if len(data) >= 4096 and not any(data):
            refused.append(offset)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite_without_room_for_zeros)
    wal, _ = WriteAheadLog.open(tmp_path / "log", fsyncer=Fsyncer(Durability.FSYNC))
    wal.set_preamble(HARD_STATE, b"hs")
    wal.roll()
    payloads = [bytes([i + 1]) * 1000 for i in range(50)]
    for payload in payloads:
        wal.append(ENTRY, payload)
        wal.sync()
    assert len(refused) == 1, "tried once, not on every sync"
    assert [e["event"] for e in logs].count("wal_preallocation_failed") == 1
    segment = tmp_path / "log" / "0000000000000000.wal"
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    (crashed / segment.name).write_bytes(segment.read_bytes())
    assert [r.payload for r in read_log(crashed)[1:]] == payloads
    wal.close()


def test_bad_checksum_on_the_last_record_is_a_torn_tail(
    tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    data, last_start = segment_with_records(tmp_path)
    for position in range(last_start + 4, len(data)):  # crc, type and payload bytes
        damaged = bytearray(data)
        damaged[position] ^= 0x01
        expect_torn_tail_cut(tmp_path / "log", bytes(damaged), last_start, logs)


def test_clean_end_logs_nothing_and_cuts_nothing(
    tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    data, _ = segment_with_records(tmp_path)
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "0000000000000000.wal").write_bytes(data)
    logs.clear()
    assert len(read_log(tmp_path / "log")) == 1 + len(PAYLOADS)
    assert not [e for e in logs if e["event"] == "wal_torn_tail_truncated"]


# --- damage that must stop the node ---------------------------------------------------------


def test_flipped_byte_mid_log_raises_naming_file_and_offset(tmp_path: Path) -> None:
    data, _ = segment_with_records(tmp_path)
    second_start = len(framed(HARD_STATE, b"hs0"))
    third_start = second_start + len(framed(ENTRY, PAYLOADS[0]))
    segment = tmp_path / "log" / "0000000000000000.wal"
    (tmp_path / "log").mkdir()
    for record_start, record_end in ((0, second_start), (second_start, third_start)):
        for position in range(record_start, record_end):
            damaged = bytearray(data)
            damaged[position] ^= 0x40
            segment.write_bytes(bytes(damaged))
            with pytest.raises(CorruptLogError) as caught:
                read_log(tmp_path / "log")
            assert caught.value.path == segment
            assert caught.value.offset == record_start
            assert f"{segment}: byte offset {record_start}:" in str(caught.value)
            assert segment.read_bytes() == bytes(damaged), "damage is never truncated away"


def test_length_claiming_past_the_end_mid_log_is_not_mistaken_for_a_torn_tail(
    tmp_path: Path,
) -> None:
    data, _ = segment_with_records(tmp_path)
    second_start = len(framed(HARD_STATE, b"hs0"))
    damaged = bytearray(data)
    damaged[second_start + 2] = 0x10  # length of the second record: now ~1 MiB
    (tmp_path / "log").mkdir()
    segment = tmp_path / "log" / "0000000000000000.wal"
    segment.write_bytes(bytes(damaged))
    with pytest.raises(CorruptLogError, match=r"short payload.*yet a valid record follows"):
        read_log(tmp_path / "log")


def test_any_damage_in_a_segment_that_is_not_the_last_raises(tmp_path: Path) -> None:
    write_log(tmp_path, [bytes(300)] * 30, segment_bytes=4096)
    first = tmp_path / "0000000000000000.wal"
    data = first.read_bytes()
    first.write_bytes(data[:-1])  # even a "torn" tail: a later segment exists
    with pytest.raises(CorruptLogError, match="not the last") as caught:
        read_log(tmp_path)
    assert caught.value.path == first
    assert caught.value.offset == len(data) - len(framed(ENTRY, bytes(300)))


def test_a_missing_segment_raises(tmp_path: Path) -> None:
    write_log(tmp_path, [bytes(300)] * 40, segment_bytes=4096)
    (tmp_path / "0000000000000001.wal").unlink()
    with pytest.raises(CorruptLogError, match=r"segment 0000000000000001\.wal is missing"):
        read_log(tmp_path)


def test_a_checksummed_record_of_unknown_type_raises_even_at_the_tail(tmp_path: Path) -> None:
    write_log(tmp_path, [b"a"])
    segment = tmp_path / "0000000000000000.wal"
    unknown = b"\x09"
    record = struct.pack("<II", 1, zlib.crc32(unknown + b"z")) + unknown + b"z"
    segment.write_bytes(segment.read_bytes() + record)
    with pytest.raises(CorruptLogError, match="unknown record type 9"):
        read_log(tmp_path)
