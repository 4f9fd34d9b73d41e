"""A fire-and-forget message channel between nodes over the peer listener.

Protocols that tolerate loss and carry their own timeouts and replies (SWIM, the quorum
store) send with ``MessageChannel``: ``send_batch`` posts one encoded batch to one peer's
``path`` without waiting for it, and the receiving node hands the decoded messages with the
sender's id to ``on_messages``. A batch that fails or times out is dropped and counted,
never retried; at most ``max_inflight_per_peer`` posts per peer are in flight, beyond that
the batch is dropped, since that peer is not answering anyway. The channel has its own
client session, so a hung post to a paused peer never holds up Raft's connections.

When the node runs with fault injection, the transport's ``FaultInjector`` applies here too:
blocked peers are cut in both directions, and drops and delays hit each outgoing batch.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

import aiohttp
from aiohttp import web

from concord.observability.metrics import NodeMetrics
from concord.transport.faults import FaultInjector
from concord.transport.peer import CLUSTER_HEADER, FROM_HEADER, PeerTransport
from concord.wire import DecodeError

CONTENT_TYPE: Final = "application/msgpack"

M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class ChannelFormat(Generic[M]):
    """What a channel carries: its route, its batch encoding and its bounds."""

    path: str
    encode_batch: Callable[[str, Sequence[M]], bytes]
    """(cluster id, messages) -> body."""
    decode_batch: Callable[[bytes], tuple[str, Sequence[M]]]
    """body -> (cluster id, messages); raises ``DecodeError`` on anything malformed."""
    max_batch_bytes: int
    max_inflight_per_peer: int = 8
    inflight_drop_reason: str = "channel_inflight"


class MessageChannel(Generic[M]):
    """Both ends of one protocol's peer traffic for one node. Use it from the event loop."""

    def __init__(self, channel_format: ChannelFormat[M], *, node_id: str, cluster_id: str,
                 timeout_s: float, on_messages: Callable[[str, Sequence[M]], None],
                 metrics: NodeMetrics, faults: FaultInjector | None = None) -> None:
        assert timeout_s > 0
        self._format = channel_format
        self._node_id = node_id
        self._cluster_id = cluster_id
        self._timeout_s = timeout_s
        self._on_messages = on_messages
        self._metrics = metrics
        self._faults = faults
        self._headers = {CLUSTER_HEADER: cluster_id, FROM_HEADER: node_id,
                         "Content-Type": CONTENT_TYPE}
        self._session: aiohttp.ClientSession | None = None
        self._inflight: dict[str, int] = defaultdict(int)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def attach(self, transport: PeerTransport) -> None:
        """Serve the channel's route on ``transport``'s listener (before it starts)."""
        transport.add_route("POST", self._format.path, self._handle)

    async def open(self) -> None:
        assert self._session is None, "open() is called once"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit_per_host=self._format.max_inflight_per_peer),
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            skip_auto_headers=("User-Agent",))

    async def drain(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until every post sent so far is answered or failed."""
        pending = set(self._tasks)
        if pending and timeout_s > 0:
            await asyncio.wait(pending, timeout=timeout_s)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # --- sending ---------------------------------------------------------------------------

    def send_batch(self, recipient: str, url: str | None, batch: Sequence[M]) -> None:
        """Post ``batch`` to ``recipient`` at peer URL ``url`` (None: no known address)."""
        if not batch:
            return
        faults = self._faults
        if self._closed or self._session is None:
            self._drop(recipient, "closed", len(batch))
        elif url is None:
            self._drop(recipient, "no_address", len(batch))
        elif faults is not None and faults.should_drop(recipient):
            self._drop(recipient, "fault", len(batch))
        elif self._inflight[recipient] >= self._format.max_inflight_per_peer:
            self._drop(recipient, self._format.inflight_drop_reason, len(batch))
        else:
            body = self._format.encode_batch(self._cluster_id, batch)
            delay_s = 0.0 if faults is None else faults.delay_s()
            self._inflight[recipient] += 1
            task = asyncio.get_running_loop().create_task(
                self._post(recipient, url, body, len(batch), delay_s))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _post(self, recipient: str, url: str, body: bytes, count: int,
                    delay_s: float) -> None:
        assert self._session is not None
        try:
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            async with self._session.post(url + self._format.path, data=body,
                                          headers=self._headers) as response:
                await response.read()
                if response.status != web.HTTPNoContent.status_code:
                    self._drop(recipient, "send_failed", count)
        except (TimeoutError, aiohttp.ClientError, OSError):
            self._drop(recipient, "send_failed", count)
        finally:
            self._inflight[recipient] -= 1

    def _drop(self, peer: str, reason: str, count: int) -> None:
        self._metrics.peer_messages_dropped(peer, reason).inc(count)

    # --- receiving -------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get(CLUSTER_HEADER) != self._cluster_id:
            return web.Response(status=web.HTTPForbidden.status_code,
                                text=f"this node belongs to cluster {self._cluster_id!r}")
        sender = request.headers.get(FROM_HEADER, "")
        if not sender or sender == self._node_id:
            return web.Response(status=web.HTTPBadRequest.status_code,
                                text=f"{FROM_HEADER} must name the sending node")
        limit = self._format.max_batch_bytes
        if (request.content_length or 0) > limit:
            return web.Response(status=web.HTTPRequestEntityTooLarge.status_code,
                                text=f"body exceeds {limit} bytes")
        try:
            cluster_id, messages = self._format.decode_batch(await request.read())
        except DecodeError as error:
            return web.Response(status=web.HTTPBadRequest.status_code, text=str(error))
        if cluster_id != self._cluster_id:
            return web.Response(status=web.HTTPForbidden.status_code,
                                text=f"this node belongs to cluster {self._cluster_id!r}")
        if self._faults is not None and sender in self._faults.blocked_peers:
            self._drop(sender, "fault", len(messages))
        elif messages and not self._closed:
            self._on_messages(sender, messages)
        return web.Response(status=web.HTTPNoContent.status_code)
