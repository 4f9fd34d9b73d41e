"""The integration harness: one real cluster of ``concord serve`` processes per test module.

``ClusterHarness`` wraps ``concord.cluster.LocalCluster`` on free loopback ports
(``free_cluster_ports``: below the kernel's ephemeral range, never the developer's 7001-7103)
in a temporary directory. It owns each node's log file (``<data-dir>/<id>.log``, appended
across restarts), polls the nodes' ``/v1/status`` with deadlines (who leads, has a node
caught up), and stops every process on teardown, paused ones included. A failing test's
report gets the tail of every node's log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, TypeVar

import aiohttp
import pytest

from concord.client import AsyncConcordClient
from concord.cluster import LocalCluster, free_cluster_ports

T = TypeVar("T")
Status = dict[str, Any]

FAST_RAFT: Final[dict[str, dict[str, object]]] = {"raft": {"tick_ms": 20}}
"""Elections in 200-400 ms instead of 0.5-1 s (10 ticks of election timeout)."""

READY_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0
POLL_INTERVAL_S: Final = 0.02
STATUS_TIMEOUT_S: Final = 0.5
LEADER_TIMEOUT_S: Final = 10.0
LOG_TAIL_LINES: Final = 25


# -- polling -------------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[T | None]], *, timeout_s: float,
                     what: str) -> T:
    """Poll ``check`` until it returns something other than None; AssertionError naming
    ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        await asyncio.sleep(POLL_INTERVAL_S)


# -- the harness ---------------------------------------------------------------------------


class ClusterHarness:
    """A ``LocalCluster`` under test: processes, logs and status polling."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster

    @property
    def node_ids(self) -> list[str]:
        return list(self.cluster.nodes)

    def url(self, node_id: str) -> str:
        return self.cluster.nodes[node_id].client_url

    def client(self, *node_ids: str, timeout_s: float = 2.0,
               retries: int = 3) -> AsyncConcordClient:
        """A client of the given nodes (default: all), in that order."""
        chosen = node_ids or tuple(self.node_ids)
        return AsyncConcordClient([self.url(n) for n in chosen], timeout_s=timeout_s,
                                  retries=retries)

    # -- processes -----------------------------------------------------------------------

    def start(self) -> None:
        self.cluster.write_configs()
        for node_id in self.node_ids:
            self.start_node(node_id)
        self.cluster.write_manifest()

    def start_node(self, node_id: str) -> None:
        """Start the node's process, its output appended to its log file."""
        self.cluster.start_node(node_id)

    def is_running(self, node_id: str) -> bool:
        return self.cluster.nodes[node_id].is_running()

    def wait_exit(self, node_id: str, timeout_s: float) -> int:
        """The node's exit status once its process has ended (TimeoutExpired after the bound)."""
        process = self.cluster.nodes[node_id].process
        assert process is not None, f"{node_id} was never started"
        return process.wait(timeout_s)

    async def heal(self) -> None:
        """Resume paused nodes, start stopped ones, and wait until every node is ready."""
        for node_id in self.node_ids:
            if self.is_running(node_id):
                self.cluster.resume(node_id)
            else:
                self.start_node(node_id)
        await self.cluster.wait_ready(timeout_s=READY_TIMEOUT_S)

    def stop(self) -> None:
        """SIGCONT + SIGTERM every process, SIGKILL stragglers."""
        self.cluster.stop(timeout_s=STOP_TIMEOUT_S)

    # -- logs ----------------------------------------------------------------------------

    def log_path(self, node_id: str) -> Path:
        return self.cluster.data_dir / f"{node_id}.log"

    def log_size(self, node_id: str) -> int:
        path = self.log_path(node_id)
        return path.stat().st_size if path.exists() else 0

    def log_since(self, node_id: str, offset: int) -> str:
        """What the node logged after byte ``offset`` of its log file."""
        with self.log_path(node_id).open("rb") as log_file:
            log_file.seek(offset)
            return log_file.read().decode("utf-8", errors="replace")

    def log_tails(self, lines: int = LOG_TAIL_LINES) -> str:
        parts = []
        for node_id in self.node_ids:
            text = self.log_since(node_id, 0) if self.log_path(node_id).exists() else ""
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"----- {node_id} (last {lines} lines) -----\n{tail}")
        return "\n".join(parts)

    # -- status --------------------------------------------------------------------------

    async def status(self, node_id: str) -> Status | None:
        """The node's ``/v1/status``, or None when it does not answer in time."""
        return (await self.statuses([node_id]))[node_id]

    async def statuses(self, node_ids: list[str] | None = None) -> dict[str, Status | None]:
        chosen = node_ids or self.node_ids
        timeout = aiohttp.ClientTimeout(total=STATUS_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def one(node_id: str) -> Status | None:
                try:
                    async with session.get(f"{self.url(node_id)}/v1/status") as response:
                        if response.status != 200:
                            return None
                        document = await response.json()
                        status: Status = document["status"]
                        return status
                except (aiohttp.ClientError, TimeoutError):
                    return None

            answers = await asyncio.gather(*(one(node_id) for node_id in chosen))
        return dict(zip(chosen, answers, strict=True))

    async def wait_for_leader(self, node_ids: list[str] | None = None, *,
                              not_in: tuple[str, ...] = (), min_term: int = 0,
                              timeout_s: float = LEADER_TIMEOUT_S) -> tuple[str, int]:
        """(leader, term) once every node of ``node_ids`` answers and all agree on one leader
        among them (not in ``not_in``, term at least ``min_term``) that reports itself leader,
        and no other node claims leadership."""
        chosen = node_ids or self.node_ids
        seen: dict[str, Status | None] = {}

        async def agreed() -> tuple[str, int] | None:
            seen.update(await self.statuses(chosen))
            answers = [seen[n] for n in chosen]
            if any(s is None for s in answers):
                return None
            leaders = {s["leader"] for s in answers if s is not None}
            terms = {s["term"] for s in answers if s is not None}
            if len(leaders) != 1 or len(terms) != 1:
                return None
            leader, term = leaders.pop(), terms.pop()
            claimants = [n for n in chosen if (seen[n] or {}).get("role") == "leader"]
            if leader not in chosen or claimants != [leader] or leader in not_in:
                return None
            return (leader, term) if term >= min_term else None

        try:
            return await eventually(agreed, timeout_s=timeout_s, what="an agreed leader")
        except AssertionError:
            summary = {n: None if s is None else (s["role"], s["term"], s["leader"])
                       for n, s in seen.items()}
            raise AssertionError(f"no agreed leader among {chosen} (not {list(not_in)}, "
                                 f"term >= {min_term}) within {timeout_s:g} s; "
                                 f"last (role, term, leader): {summary}") from None

    async def wait_applied(self, node_id: str, index: int,
                           timeout_s: float = LEADER_TIMEOUT_S) -> Status:
        """The node's status once it has applied at least ``index``."""

        async def applied() -> Status | None:
            status = await self.status(node_id)
            return status if status is not None and status["applied_index"] >= index else None

        return await eventually(applied, timeout_s=timeout_s,
                                what=f"{node_id} applying index {index}")

    async def wait_caught_up(self, node_id: str, leader: str) -> Status:
        """The node's status once it has applied what ``leader`` had committed just now."""
        leader_status = await self.status(leader)
        assert leader_status is not None, f"leader {leader} did not answer /v1/status"
        return await self.wait_applied(node_id, leader_status["commit_index"])


@contextmanager
def running_cluster(data_dir: Path, *, size: int = 3,
                    extra_settings: dict[str, dict[str, object]] | None = None,
                    fault_injection: bool = False,
                    ) -> Iterator[ClusterHarness]:
    """A ready ``size``-node cluster on free ports in ``data_dir``; every process stopped after."""
    client_base, peer_base = free_cluster_ports(size)
    cluster = LocalCluster(
        data_dir, size=size, base_client_port=client_base, base_peer_port=peer_base,
        cluster_id=f"itest-{data_dir.name}",
        extra_settings=FAST_RAFT if extra_settings is None else extra_settings,
        log_to_files=True, fault_injection=fault_injection,
    )
    harness = ClusterHarness(cluster)
    try:
        harness.start()
        asyncio.run(cluster.wait_ready(timeout_s=READY_TIMEOUT_S))
        yield harness
    finally:
        harness.stop()


@pytest.fixture
async def healthy(harness: ClusterHarness) -> ClusterHarness:
    """The module's cluster with every node running, resumed and ready."""
    await harness.heal()
    return harness


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Attach the tail of every node's log to the report of a failing test."""
    report = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, ClusterHarness):
                report.sections.append((f"node logs ({report.when})", value.log_tails()))
                break
    return report
