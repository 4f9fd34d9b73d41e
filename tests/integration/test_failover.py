"""Leader failures on real processes: kill -9 (no acknowledged write lost, the node catches up
after a restart), SIGSTOP past the election timeout (the old leader never serves a stale
read after SIGCONT) and SIGTERM (leadership is handed over before the process exits 0)."""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest

from concord.client import AsyncConcordClient, ConcordClientError

from .conftest import ClusterHarness, eventually, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WRITES_PER_PHASE = 25
WRITER_TIMEOUT_S = 20.0
RETRY_PAUSE_S = 0.02


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHarness]:
    with running_cluster(tmp_path_factory.mktemp("failover")) as cluster:
        yield cluster


@dataclass(slots=True)
class WriterLog:
    """What a writer loop learned: every write the cluster acknowledged, in order."""

    acknowledged: dict[str, bytes] = field(default_factory=dict)
    failures: int = 0


async def write_unique_keys(client: AsyncConcordClient, prefix: str, log: WriterLog,
                            stop: asyncio.Event) -> None:
    """Write ``prefix00000``, ``prefix00001``, ... until ``stop`` (or the writer's deadline).
    A failed write is retried with the same request id (so it applies at most once) until it
    is acknowledged; only acknowledged writes enter ``log``."""
    deadline = time.monotonic() + WRITER_TIMEOUT_S
    sequence = 0
    while not stop.is_set() and time.monotonic() < deadline:
        key, value = f"{prefix}{sequence:05d}", f"value {sequence}".encode()
        request_id = uuid.uuid4().hex
        while time.monotonic() < deadline:
            try:
                await client.put(key, value, request_id=request_id)
            except ConcordClientError:
                log.failures += 1
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            log.acknowledged[key] = value
            break
        sequence += 1


async def wait_for_count(log: WriterLog, count: int, what: str) -> None:
    async def reached() -> bool | None:
        return True if len(log.acknowledged) >= count else None

    await eventually(reached, timeout_s=WRITER_TIMEOUT_S, what=what)


async def test_kill_leader_loses_no_acknowledged_write(healthy: ClusterHarness) -> None:
    old_leader, old_term = await healthy.wait_for_leader()
    survivors = [n for n in healthy.node_ids if n != old_leader]
    log = WriterLog()
    stop = asyncio.Event()
    async with healthy.client(timeout_s=1.0) as client:
        writer = asyncio.create_task(write_unique_keys(client, "kill9/", log, stop))
        try:
            await wait_for_count(log, WRITES_PER_PHASE, "writes before the kill")
            healthy.cluster.kill(old_leader)
            acknowledged_before_kill = len(log.acknowledged)
            await wait_for_count(log, acknowledged_before_kill + WRITES_PER_PHASE,
                                 "writes after the kill")
        finally:
            stop.set()
            await writer

    new_leader, new_term = await healthy.wait_for_leader(survivors)
    assert new_leader != old_leader and new_term > old_term
    async with healthy.client(*survivors) as client:
        for key, value in log.acknowledged.items():
            kv = await client.get(key)
            assert kv is not None and kv["value"] == value, f"acknowledged {key} lost: {kv}"
        listed = await client.list("kill9/")
    present = {kv["key"]: kv["value"] for kv in listed["kvs"]}
    assert present.items() >= log.acknowledged.items()
    # only keys the writer attempted exist: the last one may have applied unacknowledged
    assert len(present) - len(log.acknowledged) in (0, 1)

    healthy.start_node(old_leader)
    await healthy.cluster.wait_ready([old_leader])
    await healthy.wait_caught_up(old_leader, new_leader)
    async with healthy.client(old_leader) as client:
        local = await client.list("kill9/", consistency="serializable")
    assert {kv["key"]: kv["value"] for kv in local["kvs"]} == present


async def read_once(session: aiohttp.ClientSession, url: str, key: str) -> tuple[int, str | None]:
    """One linearizable GET, no retry: (status, value or None)."""
    params = {"consistency": "linearizable", "timeout_ms": "2000"}
    try:
        async with session.get(f"{url}/v1/kv/{key}", params=params) as response:
            document = await response.json()
            return response.status, (document["kv"]["value"] if response.status == 200 else None)
    except (aiohttp.ClientError, TimeoutError):
        return 0, None


async def test_paused_leader_never_serves_a_stale_read(healthy: ClusterHarness) -> None:
    old_leader, old_term = await healthy.wait_for_leader()
    survivors = [n for n in healthy.node_ids if n != old_leader]
    async with healthy.client() as client:
        await client.put("pause/key", "old")
    healthy.cluster.pause(old_leader)
    try:
        new_leader, new_term = await healthy.wait_for_leader(survivors)
        assert new_term > old_term
        async with healthy.client(*survivors) as client:
            written = await client.put("pause/key", "new")
        assert written["header"]["member_id"] == new_leader
    finally:
        healthy.cluster.resume(old_leader)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        answers = await asyncio.gather(
            *(read_once(session, healthy.url(old_leader), "pause/key") for _ in range(3)))
    for status, value in answers:
        # the new value, or an honest refusal: never "old", never "absent"
        assert (status, value) == (200, "new") or status in (0, 503, 504), answers

    async def demoted() -> bool | None:
        status = await healthy.status(old_leader)
        return (True if status is not None and status["role"] == "follower"
                and status["leader"] not in (None, old_leader) else None)

    await eventually(demoted, timeout_s=5, what=f"{old_leader} reporting role follower")
    async with healthy.client(old_leader) as client:

        async def sees_new_value() -> bool | None:
            kv = await client.get("pause/key", "serializable")
            return True if kv is not None and kv["value"] == b"new" else None

        await eventually(sees_new_value, timeout_s=5, what=f"{old_leader} applying the new value")


async def test_sigterm_hands_leadership_over_before_exiting(healthy: ClusterHarness) -> None:
    old_leader, old_term = await healthy.wait_for_leader()
    survivors = [n for n in healthy.node_ids if n != old_leader]
    log_offset = healthy.log_size(old_leader)
    healthy.cluster.signal(old_leader, signal.SIGTERM)
    signalled_at = time.monotonic()
    new_leader, new_term = await healthy.wait_for_leader(survivors, timeout_s=5)
    handover_s = time.monotonic() - signalled_at
    exit_code = await asyncio.to_thread(healthy.wait_exit, old_leader, 15)
    assert exit_code == 0
    assert new_term > old_term
    logged = healthy.log_since(old_leader, log_offset)
    handed_to = re.findall(r"handed_over_leadership\s.*\bto=(\S+)", logged)
    assert handed_to == [new_leader], logged
    assert "leadership handover failed" not in logged
    assert re.search(r"\]\s+stopped\s", logged.splitlines()[-1] + " "), logged
    # a handover does not wait for an election timeout; 2 s is far more than it needs
    assert handover_s < 2.0
    async with healthy.client(*survivors) as client:
        answer = await client.put("sigterm/after", "still writable")
    assert answer["header"]["member_id"] == new_leader
