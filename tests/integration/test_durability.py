"""Durability on real processes: every node killed with SIGKILL and restarted keeps every
acknowledged write; a torn WAL tail is cut off (and logged) and the node rejoins; a damaged
record inside the log keeps the node from starting (exit code 2, file and byte offset logged).
The WAL framing is ``docs/storage.md``'s: ``[u32 length][u32 crc][u8 type][payload]``."""

from __future__ import annotations

import asyncio
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import ClusterHarness, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RECORD_HEADER = struct.Struct("<IIB")
GARBAGE = b"\xff" * 23  # 0xff is no record type, so no valid record can start in it
EXIT_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHarness]:
    with running_cluster(tmp_path_factory.mktemp("durability")) as cluster:
        yield cluster


@dataclass(frozen=True, slots=True)
class RecordSpan:
    """Where one WAL record sits in its segment."""

    offset: int
    payload_bytes: int

    @property
    def payload_offset(self) -> int:
        return self.offset + RECORD_HEADER.size

    @property
    def end(self) -> int:
        return self.payload_offset + self.payload_bytes


def wal_segments(harness: ClusterHarness, node_id: str) -> list[Path]:
    return sorted((harness.cluster.nodes[node_id].data_dir / "wal").glob("*.wal"))


def wal_records(data: bytes) -> list[RecordSpan]:
    """Every record of an intact segment, checked against its CRC; a running node's active
    segment ends in zeros written ahead of its records (docs/storage.md)."""
    spans = []
    offset = 0
    while offset < len(data) and data.count(0, offset) != len(data) - offset:
        length, crc, _ = RECORD_HEADER.unpack_from(data, offset)
        end = offset + RECORD_HEADER.size + length
        assert end <= len(data) and zlib.crc32(data[offset + 8 : end]) == crc, \
            f"the segment is damaged at byte {offset} before the test touched it"
        spans.append(RecordSpan(offset, length))
        offset = end
    return spans


async def write_keys(harness: ClusterHarness, prefix: str, count: int,
                     *node_ids: str) -> dict[str, dict[str, Any]]:
    """Write ``count`` keys concurrently; the acknowledged key-value of each."""
    async with harness.client(*node_ids) as client:
        answers = await asyncio.gather(
            *(client.put(f"{prefix}{i:03d}", f"{prefix} value {i}") for i in range(count)))
    return {answer["kv"]["key"]: answer["kv"] for answer in answers}


async def assert_node_holds(harness: ClusterHarness, node_id: str, leader: str, prefix: str,
                            expected: dict[str, dict[str, Any]]) -> None:
    """Once caught up, ``node_id``'s own state (a serializable list) is exactly ``expected``."""
    await harness.wait_caught_up(node_id, leader)
    async with harness.client(node_id) as client:
        listed = await client.list(prefix, consistency="serializable")
    assert listed["kvs"] == [expected[key] for key in sorted(expected)], f"on {node_id}"


async def test_every_node_killed_and_restarted_keeps_acknowledged_writes(
        healthy: ClusterHarness) -> None:
    _, term_before = await healthy.wait_for_leader()
    written = await write_keys(healthy, "all-killed/", 40)
    for node_id in healthy.node_ids:
        healthy.cluster.kill(node_id)
    assert not any(healthy.is_running(n) for n in healthy.node_ids)
    for node_id in healthy.node_ids:
        healthy.start_node(node_id)
    await healthy.cluster.wait_ready()
    leader, term_after = await healthy.wait_for_leader()
    assert term_after > term_before
    async with healthy.client() as client:
        for key, kv in written.items():
            assert await client.get(key) == kv
    for node_id in healthy.node_ids:
        await assert_node_holds(healthy, node_id, leader, "all-killed/", written)


@pytest.mark.parametrize("damage", ["garbage_appended", "last_record_cut"])
async def test_torn_wal_tail_is_cut_off_and_the_node_rejoins(healthy: ClusterHarness,
                                                             damage: str) -> None:
    leader, _ = await healthy.wait_for_leader()
    victim = next(n for n in healthy.node_ids if n != leader)
    prefix = f"torn-{damage}/"
    written = await write_keys(healthy, prefix, 10)
    await healthy.wait_caught_up(victim, leader)
    healthy.cluster.kill(victim)

    segment = wal_segments(healthy, victim)[-1]
    data = segment.read_bytes()
    records = wal_records(data)
    assert len(records) >= 2, f"{segment} holds {len(records)} records"
    if damage == "garbage_appended":  # over the zeros after the last record
        torn_at = records[-1].end
        segment.write_bytes(data[:torn_at] + GARBAGE + data[torn_at + len(GARBAGE):])
        dropped = max(len(data), torn_at + len(GARBAGE)) - torn_at
    else:
        last = records[-1]
        cut = last.payload_offset + last.payload_bytes // 2
        segment.write_bytes(data[:cut])
        torn_at, dropped = last.offset, cut - last.offset

    survivors = [n for n in healthy.node_ids if n != victim]
    written |= await write_keys(healthy, prefix + "while-down-", 10, *survivors)
    log_offset = healthy.log_size(victim)
    healthy.start_node(victim)
    await healthy.cluster.wait_ready([victim])

    lines = [line for line in healthy.log_since(victim, log_offset).splitlines()
             if "wal_torn_tail_truncated" in line]
    assert len(lines) == 1, lines
    fields = dict(re.findall(r"(\w+)=(\S+)", lines[0]))
    assert (fields["file"], fields["offset"], fields["bytes_dropped"]) == (
        str(segment), str(torn_at), str(dropped))
    assert segment.stat().st_size == torn_at
    leader, _ = await healthy.wait_for_leader()
    await assert_node_holds(healthy, victim, leader, prefix, written)


async def test_damaged_record_inside_the_log_keeps_the_node_down(
        healthy: ClusterHarness) -> None:
    leader, _ = await healthy.wait_for_leader()
    victim = next(n for n in healthy.node_ids if n != leader)
    written = await write_keys(healthy, "flipped/", 10)
    await healthy.wait_caught_up(victim, leader)
    healthy.cluster.kill(victim)

    segments = wal_segments(healthy, victim)
    target = segments[0]
    original = target.read_bytes()
    records = wal_records(original)
    assert len(segments) >= 2 or len(records) >= 3, "the damaged record must not be the tail"
    damaged = records[1]
    position = damaged.payload_offset + damaged.payload_bytes // 2
    flipped = bytearray(original)
    flipped[position] ^= 0xFF
    target.write_bytes(bytes(flipped))

    log_offset = healthy.log_size(victim)
    healthy.start_node(victim)
    exit_code = await asyncio.to_thread(healthy.wait_exit, victim, EXIT_TIMEOUT_S)
    assert exit_code == 2
    logged = healthy.log_since(victim, log_offset)
    assert "refusing to start" in logged
    assert f"{target}: byte offset {damaged.offset}:" in logged, logged
    assert target.read_bytes() == bytes(flipped), "a refused start must not touch the log"

    # the same directory with the byte restored starts and catches up: the flip was the cause
    target.write_bytes(original)
    healthy.start_node(victim)
    await healthy.cluster.wait_ready([victim])
    leader, _ = await healthy.wait_for_leader()
    await assert_node_holds(healthy, victim, leader, "flipped/", written)
