"""An in-memory ``NodeService`` for API, client and CLI tests, and a way to serve it.

``FakeNode`` applies writes to the real ``KVStateMachine`` at once (no Raft, no disk). Its
switches make it answer the way a real node can: not the leader (``leader = False``, with the
leader's client URL to forward to), overloaded, timed out (raised by the service, or a hang the
API must cut short), failing unexpectedly, not ready. It records every call so tests can check
what reached the service.

``build_app`` and ``serving`` put the real client API in front of it (a test server in the
test's own loop); ``serve_in_thread`` runs an aiohttp application on a free loopback port in a
background thread with its own event loop, for the blocking client and the CLI commands.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from concord.api.forward import LeaderForwarder
from concord.api.http import create_client_app
from concord.config import LimitSettings
from concord.kv.commands import BatchCommand, BatchResult, Command, KeyValue, WriteResult
from concord.kv.fsm import KVStateMachine
from concord.observability.metrics import NodeMetrics
from concord.runtime.errors import (
    BadRequest,
    MembershipChangeRefused,
    NotFound,
    NotLeaderHere,
    Overloaded,
    TimedOut,
)
from concord.runtime.service import MemberInfo, ResponseHeader
from concord.transport.faults import FaultInjector


@dataclass(frozen=True, slots=True)
class ServiceCall:
    """One call that reached the service."""

    method: str
    timeout_s: float


class FakeNode:
    """A single-node stand-in for ``ConcordNode``; see the module docstring."""

    def __init__(
        self,
        node_id: str = "n1",
        *,
        client_url: str = "http://127.0.0.1:7001",
        cluster_id: str = "test-cluster",
        term: int = 3,
    ) -> None:
        self._node_id = node_id
        self._cluster_id = cluster_id
        self.client_url = client_url
        self.term = term
        self.fsm = KVStateMachine()
        self.leader = True
        self.leader_id: str | None = node_id
        self.leader_url: str | None = client_url
        self.ready = True
        self.overloaded = False
        self.time_out = False
        self.hang = False
        self.crash: Exception | None = None
        self.calls: list[ServiceCall] = []
        self.commands: list[Command | BatchCommand] = []
        self.member_list: list[MemberInfo] = [
            MemberInfo(node_id, f"http://{node_id}.peer:8001", client_url, "voter", True)
        ]
        self._next_index = 1

    def follow(self, leader_id: str | None, leader_url: str | None) -> None:
        """Become a follower of ``leader_id`` reachable at ``leader_url`` (None: unknown)."""
        self.leader = False
        self.leader_id = leader_id
        self.leader_url = leader_url

    def calls_to(self, method: str) -> int:
        return sum(1 for call in self.calls if call.method == method)

    # -- NodeService -----------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def cluster_id(self) -> str:
        return self._cluster_id

    def header(self) -> ResponseHeader:
        return ResponseHeader(self._cluster_id, self._node_id, self.term, self.fsm.revision)

    def is_leader(self) -> bool:
        return self.leader

    def leader_client_url(self) -> str | None:
        return self.leader_url

    def is_ready(self) -> bool:
        return self.ready

    def check_write_room(self, operations: int) -> None:
        if self.leader and self.overloaded:
            raise Overloaded("the proposal queue is full")

    async def write(self, command: Command | BatchCommand,
                    timeout_s: float) -> WriteResult | BatchResult:
        await self._enter("write", timeout_s, leader_only=True)
        self.commands.append(command)
        result: WriteResult | BatchResult
        if isinstance(command, BatchCommand):
            result = self.fsm.apply_batch(self._next_index, command)
        else:
            result = self.fsm.apply(self._next_index, command)
        self._next_index += 1
        return result

    async def get(self, key: str, linearizable: bool, timeout_s: float) -> KeyValue | None:
        await self._enter("get", timeout_s, leader_only=linearizable)
        return self.fsm.get(key)

    async def range(
        self, prefix: str, limit: int | None, linearizable: bool, timeout_s: float
    ) -> tuple[list[KeyValue], bool]:
        await self._enter("range", timeout_s, leader_only=linearizable)
        return self.fsm.range(prefix, limit)

    def status(self) -> dict[str, Any]:
        return {
            "id": self._node_id,
            "role": "leader" if self.leader else "follower",
            "term": self.term,
            "leader": self.leader_id,
            "applied_index": self.fsm.applied_index,
        }

    def members(self) -> list[MemberInfo]:
        return list(self.member_list)

    async def add_member(
        self, node_id: str, peer_url: str, client_url: str, as_learner: bool, timeout_s: float
    ) -> None:
        await self._enter("add_member", timeout_s, leader_only=True)
        if any(member.node_id == node_id for member in self.member_list):
            raise MembershipChangeRefused(f"{node_id} is already a member")
        role = "learner" if as_learner else "voter"
        self.member_list.append(MemberInfo(node_id, peer_url, client_url, role, False))

    async def remove_member(self, node_id: str, timeout_s: float) -> None:
        await self._enter("remove_member", timeout_s, leader_only=True)
        remaining = [member for member in self.member_list if member.node_id != node_id]
        if len(remaining) == len(self.member_list):
            raise NotFound(f"{node_id} is not a member")
        self.member_list = remaining

    async def transfer_leadership(self, target: str | None, timeout_s: float) -> str:
        await self._enter("transfer_leadership", timeout_s, leader_only=True)
        voters = [
            member for member in self.member_list
            if member.role == "voter" and member.node_id != self._node_id
        ]
        chosen = [member for member in voters if target is None or member.node_id == target]
        if not chosen:
            raise BadRequest(f"no voter {target!r} to hand leadership to")
        new_leader = chosen[0]
        self.member_list = [
            replace(member, is_leader=member.node_id == new_leader.node_id)
            for member in self.member_list
        ]
        self.follow(new_leader.node_id, new_leader.client_url)
        return new_leader.node_id

    async def _enter(self, method: str, timeout_s: float, *, leader_only: bool) -> None:
        self.calls.append(ServiceCall(method, timeout_s))
        if self.crash is not None:
            raise self.crash
        if leader_only and not self.leader:
            raise NotLeaderHere(f"{self._node_id} is not the leader", self.leader_id)
        if self.overloaded:
            raise Overloaded("the proposal queue is full")
        if self.time_out:
            raise TimedOut("the write was not committed in time")
        if self.hang:
            await asyncio.Event().wait()


def free_port() -> int:
    """A loopback TCP port nothing listens on (connections to it are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serve_in_thread(make_app: Callable[[], web.Application]) -> Iterator[str]:
    """Serve ``make_app()`` on 127.0.0.1 from a background event loop; yields its base URL."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-node-server", daemon=True)
    thread.start()

    async def start() -> tuple[web.AppRunner, str]:
        runner = web.AppRunner(make_app(), access_log=None)
        await runner.setup()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        await web.SockSite(runner, listener).start()
        port = listener.getsockname()[1]
        return runner, f"http://127.0.0.1:{port}"

    runner, url = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        yield url
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


TEST_LIMITS = LimitSettings(
    max_key_bytes=64,
    max_value_bytes=1024,
    max_request_bytes=2048,
    request_timeout_ms=1000,
    max_range_limit=100,
    max_batch_ops=8,
)
"""Small limits so that the 413 paths are cheap to reach."""


def build_app(
    node: FakeNode,
    *,
    limits: LimitSettings = TEST_LIMITS,
    metrics: NodeMetrics | None = None,
    faults: FaultInjector | None = None,
) -> web.Application:
    """The client API (with its leader forwarder) in front of ``node``."""
    forwarder = LeaderForwarder(node)
    app = create_client_app(node, limits=limits, metrics=metrics, faults=faults,
                            forwarder=forwarder)

    async def close_forwarder(_: web.Application) -> None:
        await forwarder.close()

    app.on_cleanup.append(close_forwarder)
    return app


@asynccontextmanager
async def serving(node: FakeNode, **options: Any) -> AsyncIterator[TestClient[Any, Any]]:
    """A test client of ``build_app(node, **options)`` in the running loop."""
    async with TestClient(TestServer(build_app(node, **options))) as client:
        yield client
