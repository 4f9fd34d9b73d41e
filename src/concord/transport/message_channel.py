"""A fire-and-forget message channel between nodes over the peer listener.

Protocols that tolerate loss and carry their own timeouts and replies (SWIM, the quorum
store) send with ``MessageChannel``. ``send_batch`` encodes one batch for one peer and writes
it as one binary frame on a WebSocket stream to that peer (``GET <stream_path>``, opened on
first use and kept open), never waiting for an answer:

- when the stream is open and nothing is waiting, the frame is written from the caller's
  own loop turn (``direct_write``); otherwise it joins the link's backlog, which the link's
  pump task writes in order, opening the stream first if need be;
- the backlog holds at most ``max_backlog_per_peer`` batches; a batch beyond that is dropped,
  since that peer is not reading anyway;
- a step of the pump (opening the stream, or one write waiting for the socket to drain) that
  takes longer than the channel's timeout, or a write that fails, closes the stream and drops
  the backlog. Nothing is retried; every drop is counted in ``peer_messages_dropped_total``.

The receiving node decodes each frame and hands the messages, with the sender's id (the
stream's ``X-Concord-From``, checked with the cluster id), to ``on_messages``. ``POST
<path>`` takes one batch per request as well (for tools and tests). The channel has its own
client session, so a stream stalled by a paused peer never holds up Raft's.

When the node runs with fault injection, the transport's ``FaultInjector`` applies here too:
blocked peers are cut in both directions, and drops and delays hit each outgoing batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

import aiohttp
from aiohttp import web

from concord.observability.metrics import NodeMetrics
from concord.transport.direct_write import Suspended, start_frame_write
from concord.transport.faults import FaultInjector
from concord.transport.peer import (
    CLUSTER_HEADER,
    FROM_HEADER,
    PeerTransport,
    RejectReason,
    count_peer_rejection,
    peer_sender_or_refusal,
    refuse_peer_request,
)
from concord.wire import DecodeError

CONTENT_TYPE: Final = "application/msgpack"

CLOSE_TIMEOUT_S: Final = 1.0
"""How long ``close`` waits for a peer to answer the closing of a stream."""

M = TypeVar("M")

_LINK_ERRORS: Final = (TimeoutError, aiohttp.ClientError, OSError, ConnectionError)


@dataclass(frozen=True, slots=True)
class ChannelFormat(Generic[M]):
    """What a channel carries: its routes, its batch encoding and its bounds."""

    path: str
    """``POST``: one batch per request."""
    stream_path: str
    """``GET``: upgrades to the stream whose binary frames are batches."""
    encode_batch: Callable[[str, Sequence[M]], bytes]
    """(cluster id, messages) -> body."""
    decode_batch: Callable[[bytes], tuple[str, Sequence[M]]]
    """body -> (cluster id, messages); raises ``DecodeError`` on anything malformed."""
    max_batch_bytes: int
    max_backlog_per_peer: int = 8
    backlog_drop_reason: str = "channel_backlog"


@dataclass(slots=True, eq=False)
class _Link:
    """The outbound stream to one peer and the batches waiting for it."""

    url: str
    stream: aiohttp.ClientWebSocketResponse | None = None
    backlog: deque[tuple[bytes, int]] = field(default_factory=deque)  # (body, messages)
    pump: asyncio.Task[None] | None = None
    streams_opened: int = 0

    def usable_stream(self) -> aiohttp.ClientWebSocketResponse | None:
        stream = self.stream
        return None if stream is None or stream.closed else stream


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
        self._links: dict[str, _Link] = {}
        self._sending: set[asyncio.Task[None]] = set()  # pumps and delayed batches
        self._background: set[asyncio.Task[None]] = set()  # stream readers and closers
        self._inbound: set[web.WebSocketResponse] = set()
        self._closed = False

    def attach(self, transport: PeerTransport) -> None:
        """Serve the channel's routes on ``transport``'s listener (before it starts)."""
        transport.add_route("POST", self._format.path, self._handle_post)
        transport.add_route("GET", self._format.stream_path, self._handle_stream)

    async def open(self) -> None:
        assert self._session is None, "open() is called once"
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            skip_auto_headers=("User-Agent",))

    async def drain(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until every batch sent so far is written or dropped."""
        if self._sending and timeout_s > 0:
            await asyncio.wait(set(self._sending), timeout=timeout_s)

    async def close(self) -> None:
        """Drop what waits, close every stream (both directions) and the session."""
        self._closed = True
        tasks = self._sending | self._background
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        streams: list[aiohttp.ClientWebSocketResponse | web.WebSocketResponse] = []
        for link in self._links.values():
            link.backlog.clear()
            if link.stream is not None:
                streams.append(link.stream)
        streams.extend(self._inbound)
        if streams:
            closing = [asyncio.ensure_future(stream.close()) for stream in streams]
            _, unanswered = await asyncio.wait(closing, timeout=CLOSE_TIMEOUT_S)
            for unanswered_close in unanswered:
                unanswered_close.cancel()
        if self._session is not None:
            await self._session.close()

    def link_stats(self) -> dict[str, dict[str, object]]:
        """Per peer this node has sent to: the stream's URL, whether it is open, how many
        streams were opened so far and how many batches wait."""
        return {peer: {"url": link.url, "open": link.usable_stream() is not None,
                       "streams_opened": link.streams_opened, "backlog": len(link.backlog)}
                for peer, link in sorted(self._links.items())}

    # --- sending ---------------------------------------------------------------------------

    def send_batch(self, recipient: str, url: str | None, batch: Sequence[M]) -> None:
        """Send ``batch`` to ``recipient`` at peer URL ``url`` (None: no known address)."""
        if not batch:
            return
        faults = self._faults
        if self._closed or self._session is None:
            self._drop(recipient, "closed", len(batch))
        elif url is None:
            self._drop(recipient, "no_address", len(batch))
        elif faults is not None and faults.should_drop(recipient):
            self._drop(recipient, "fault", len(batch))
        else:
            body = self._format.encode_batch(self._cluster_id, batch)
            delay_s = 0.0 if faults is None else faults.delay_s()
            if delay_s > 0:
                self._spawn(self._sending,
                            self._submit_later(delay_s, recipient, url, body, len(batch)))
            else:
                self._submit(recipient, url, body, len(batch))

    async def _submit_later(self, delay_s: float, recipient: str, url: str, body: bytes,
                            count: int) -> None:
        await asyncio.sleep(delay_s)
        self._submit(recipient, url, body, count)

    def _submit(self, recipient: str, url: str, body: bytes, count: int) -> None:
        """Write ``body`` now if the link's stream is open and idle, else queue it for the
        link's pump."""
        if self._closed:
            self._drop(recipient, "closed", count)
            return
        link = self._links.get(recipient)
        if link is None:
            link = self._links[recipient] = _Link(url)
        elif link.url != url:  # the peer moved: later writes go to a new stream
            self._retire_stream(link)
            link.url = url
        stream = link.usable_stream()
        if stream is not None and link.pump is None and not link.backlog:
            try:
                rest = start_frame_write(stream, body)
            except (aiohttp.ClientError, OSError, ConnectionError):
                link.stream = None  # broken: the pump opens a new stream for this batch
            else:
                if rest is not None:
                    link.pump = self._spawn(self._sending,
                                            self._pump(recipient, link, rest, count))
                return
        if len(link.backlog) >= self._format.max_backlog_per_peer:
            self._drop(recipient, self._format.backlog_drop_reason, count)
            return
        link.backlog.append((body, count))
        if link.pump is None:
            link.pump = self._spawn(self._sending, self._pump(recipient, link, None, 0))

    async def _pump(self, recipient: str, link: _Link, rest: Suspended | None,
                    rest_count: int) -> None:
        """Finish a direct write that waits for the socket, then write the backlog in order,
        opening the stream when it is not open; on failure drop the backlog."""
        unsent = rest_count
        try:
            if rest is not None:
                async with asyncio.timeout(self._timeout_s):
                    await rest
                unsent = 0
            while link.backlog:
                body, unsent = link.backlog.popleft()
                async with asyncio.timeout(self._timeout_s):
                    stream = link.usable_stream() or await self._open(link)
                    await stream.send_bytes(body)
                unsent = 0
        except _LINK_ERRORS:
            unsent += sum(count for _, count in link.backlog)
            link.backlog.clear()
            self._retire_stream(link)
            self._drop(recipient, "send_failed", unsent)
        finally:
            link.pump = None

    async def _open(self, link: _Link) -> aiohttp.ClientWebSocketResponse:
        assert self._session is not None
        stream = await self._session.ws_connect(
            link.url + self._format.stream_path, headers=self._headers, autoclose=True,
            autoping=True, max_msg_size=self._format.max_batch_bytes, compress=0)
        link.stream = stream
        link.streams_opened += 1
        self._spawn(self._background, self._read_until_closed(link, stream))
        return stream

    async def _read_until_closed(self, link: _Link,
                                 stream: aiohttp.ClientWebSocketResponse) -> None:
        """Read the (silent) return direction, so a close or a ping is answered at once."""
        async for _ in stream:
            pass
        if link.stream is stream:
            link.stream = None

    def _retire_stream(self, link: _Link) -> None:
        stream, link.stream = link.stream, None
        if stream is not None and not stream.closed:
            self._spawn(self._background, self._close_quietly(stream))

    @staticmethod
    async def _close_quietly(stream: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await stream.close()
        except _LINK_ERRORS:
            pass

    @staticmethod
    def _spawn(tasks: set[asyncio.Task[None]],
               coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    def _drop(self, peer: str, reason: str, count: int) -> None:
        self._metrics.peer_messages_dropped(peer, reason).inc(count)

    # --- receiving -------------------------------------------------------------------------

    def _refuse(self, reason: RejectReason, status: int, text: str) -> web.Response:
        return refuse_peer_request(self._metrics, reason, status, text)

    def _receive(self, sender: str, body: bytes) -> web.Response | None:
        """Decode one batch and deliver it; the refusal when it is not acceptable."""
        try:
            cluster_id, messages = self._format.decode_batch(body)
        except DecodeError as error:
            return self._refuse(RejectReason.DECODE, web.HTTPBadRequest.status_code, str(error))
        if cluster_id != self._cluster_id:
            return self._refuse(RejectReason.CLUSTER_ID, web.HTTPForbidden.status_code,
                                f"this node belongs to cluster {self._cluster_id!r}")
        if self._faults is not None and sender in self._faults.blocked_peers:
            self._drop(sender, "fault", len(messages))
        elif messages and not self._closed:
            self._on_messages(sender, messages)
        return None

    async def _handle_post(self, request: web.Request) -> web.StreamResponse:
        checked = peer_sender_or_refusal(request, cluster_id=self._cluster_id,
                                         node_id=self._node_id, metrics=self._metrics)
        if isinstance(checked, web.Response):
            return checked
        limit = self._format.max_batch_bytes
        if (request.content_length or 0) > limit:
            return self._refuse(RejectReason.TOO_LARGE,
                                web.HTTPRequestEntityTooLarge.status_code,
                                f"body exceeds {limit} bytes")
        refusal = self._receive(checked, await request.read())
        return refusal or web.Response(status=web.HTTPNoContent.status_code)

    async def _handle_stream(self, request: web.Request) -> web.StreamResponse:
        """A peer's outbound stream: every binary frame is one batch; a frame that is not
        acceptable is counted and skipped."""
        checked = peer_sender_or_refusal(request, cluster_id=self._cluster_id,
                                         node_id=self._node_id, metrics=self._metrics)
        if isinstance(checked, web.Response):
            return checked
        stream = web.WebSocketResponse(max_msg_size=self._format.max_batch_bytes,
                                       autoping=True, compress=False)
        await stream.prepare(request)
        self._inbound.add(stream)
        try:
            async for frame in stream:
                if frame.type is aiohttp.WSMsgType.BINARY:
                    self._receive(checked, frame.data)
                else:
                    count_peer_rejection(self._metrics, RejectReason.DECODE)
        finally:
            self._inbound.discard(stream)
        return stream
