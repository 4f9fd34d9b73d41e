"""The SWIM channel: membership messages between nodes over the peer listener.

``SwimChannel`` serves ``POST /swim/v1/messages`` on the node's existing peer aiohttp app
(registered through ``PeerTransport.add_route``) and sends with a client session of its
own, so that a hung request to a paused peer never holds up Raft's connections. Each
``send`` groups messages by recipient into one batch (``concord.wire.swim_codec``) and
posts it without waiting: SWIM tolerates loss, so a batch that fails or times out is
dropped and counted, never retried. At most ``MAX_INFLIGHT_PER_PEER`` posts per peer are
in flight; beyond that the batch is dropped, since that peer is not answering anyway.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Final

import aiohttp
import structlog
from aiohttp import web

from concord.detector.messages import SwimMessage
from concord.observability.metrics import NodeMetrics
from concord.transport.peer import CLUSTER_HEADER, FROM_HEADER, PeerTransport
from concord.wire import DecodeError
from concord.wire.swim_codec import MAX_SWIM_BATCH_BYTES, decode_swim_batch, encode_swim_batch

log = structlog.get_logger("concord.swim")

SWIM_MESSAGES_PATH: Final = "/swim/v1/messages"
CONTENT_TYPE: Final = "application/msgpack"
MAX_INFLIGHT_PER_PEER: Final = 8
"""Posts to one peer awaiting an answer; more are dropped (reason ``swim_inflight``)."""


class SwimChannel:
    """Both ends of SWIM's peer traffic for one node. Use it from the node's event loop."""

    def __init__(self, *, node_id: str, cluster_id: str, timeout_s: float,
                 on_messages: Callable[[Sequence[SwimMessage]], None],
                 metrics: NodeMetrics) -> None:
        assert timeout_s > 0
        self._node_id = node_id
        self._cluster_id = cluster_id
        self._timeout_s = timeout_s
        self._on_messages = on_messages
        self._metrics = metrics
        self._headers = {CLUSTER_HEADER: cluster_id, FROM_HEADER: node_id,
                         "Content-Type": CONTENT_TYPE}
        self._session: aiohttp.ClientSession | None = None
        self._inflight: dict[str, int] = defaultdict(int)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def attach(self, transport: PeerTransport) -> None:
        """Serve the SWIM route on ``transport``'s listener (before it starts)."""
        transport.add_route("POST", SWIM_MESSAGES_PATH, self._handle)

    async def open(self) -> None:
        assert self._session is None, "open() is called once"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit_per_host=MAX_INFLIGHT_PER_PEER),
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

    def send(self, messages: Sequence[SwimMessage],
             address_of: Callable[[str], str | None]) -> None:
        """Post ``messages``, one batch per recipient, to the peer URL ``address_of`` gives."""
        by_recipient: dict[str, list[SwimMessage]] = defaultdict(list)
        for message in messages:
            assert message.sender == self._node_id
            by_recipient[message.recipient].append(message)
        for recipient, batch in by_recipient.items():
            url = address_of(recipient)
            if self._closed or self._session is None:
                self._drop(recipient, "closed", len(batch))
            elif url is None:
                self._drop(recipient, "no_address", len(batch))
            elif self._inflight[recipient] >= MAX_INFLIGHT_PER_PEER:
                self._drop(recipient, "swim_inflight", len(batch))
            else:
                body = encode_swim_batch(self._cluster_id, batch)
                self._inflight[recipient] += 1
                task = asyncio.get_running_loop().create_task(
                    self._post(recipient, url, body, len(batch)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _post(self, recipient: str, url: str, body: bytes, count: int) -> None:
        assert self._session is not None
        try:
            async with self._session.post(url + SWIM_MESSAGES_PATH, data=body,
                                          headers=self._headers) as response:
                await response.read()
                if response.status != web.HTTPNoContent.status_code:
                    self._drop(recipient, "send_failed", count)
                    log.debug("swim batch refused", peer=recipient, status=response.status)
        except (TimeoutError, aiohttp.ClientError, OSError):
            self._drop(recipient, "send_failed", count)
        finally:
            self._inflight[recipient] -= 1

    def _drop(self, peer: str, reason: str, count: int) -> None:
        self._metrics.peer_messages_dropped_total.labels(peer=peer, reason=reason).inc(count)

    # --- receiving -------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get(CLUSTER_HEADER) != self._cluster_id:
            return web.Response(status=web.HTTPForbidden.status_code,
                                text=f"this node belongs to cluster {self._cluster_id!r}")
        sender = request.headers.get(FROM_HEADER, "")
        if not sender or sender == self._node_id:
            return web.Response(status=web.HTTPBadRequest.status_code,
                                text=f"{FROM_HEADER} must name the sending node")
        if (request.content_length or 0) > MAX_SWIM_BATCH_BYTES:
            return web.Response(status=web.HTTPRequestEntityTooLarge.status_code,
                                text=f"body exceeds {MAX_SWIM_BATCH_BYTES} bytes")
        try:
            batch = decode_swim_batch(await request.read())
        except DecodeError as error:
            return web.Response(status=web.HTTPBadRequest.status_code, text=str(error))
        if batch.cluster_id != self._cluster_id:
            return web.Response(status=web.HTTPForbidden.status_code,
                                text=f"this node belongs to cluster {self._cluster_id!r}")
        accepted = [m for m in batch.messages
                    if m.recipient == self._node_id and m.sender == sender]
        if len(accepted) < len(batch.messages):
            self._drop(sender, "wrong_recipient", len(batch.messages) - len(accepted))
        if accepted and not self._closed:
            self._on_messages(accepted)
        return web.Response(status=web.HTTPNoContent.status_code)
