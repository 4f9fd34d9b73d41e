"""The peer transport: Raft messages between nodes as msgpack batches over HTTP.

``PeerTransport`` owns both ends of the peer protocol (``docs/transport.md``):

- the server on the peer listener: ``GET /raft/v1/stream`` upgrades to a WebSocket whose
  binary frames are batches (``concord.wire.encode_messages_batch``); ``POST
  /raft/v1/messages`` takes one batch per request (for tools and tests). Either way the
  cluster id is checked, the sender's Lamport time observed and the accepted messages handed
  to ``on_messages`` in order; ``GET /raft/v1/ping`` answers RTT probes;
- the clients: ``send`` never blocks. When a peer's stream is open and idle, the messages
  for it are encoded and written as one frame at once, inside ``send`` (no task hop between
  the Raft driver and the socket); otherwise they go on the recipient's bounded queue, and
  one sender task per peer drains that queue into batches written as frames on one
  WebSocket stream: no request/response wait per batch, so batches pipeline and TCP keeps
  their order. A batch that cannot be written is dropped (Raft retries by itself), the
  stream is re-opened and the sender backs off. Round-trip times come from pings, at most
  one per peer per ``RTT_PROBE_INTERVAL_S``.

Every drop is counted in ``peer_messages_dropped_total`` by peer and reason.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

import aiohttp
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from concord.config import TransportSettings
from concord.core.lamport import LamportClock
from concord.observability.metrics import NodeMetrics
from concord.raft.messages import Message
from concord.transport.addresses import AddressBook, check_peer_url
from concord.transport.faults import FaultInjector
from concord.wire import (
    MAX_MESSAGE_BYTES,
    DecodeError,
    decode_messages_batch,
    encode_messages_batch,
)

log = structlog.get_logger("concord.transport")

MESSAGES_PATH: Final = "/raft/v1/messages"
STREAM_PATH: Final = "/raft/v1/stream"
PING_PATH: Final = "/raft/v1/ping"
CLUSTER_HEADER: Final = "X-Concord-Cluster"
FROM_HEADER: Final = "X-Concord-From"
PEER_URL_HEADER: Final = "X-Concord-Peer-URL"
CONTENT_TYPE: Final = "application/msgpack"

CONNECTIONS_PER_PEER: Final = 2
"""Per peer: the stream, and a connection for RTT probes."""

RTT_PROBE_INTERVAL_S: Final = 1.0
"""How often a sender measures the round trip to its peer (while it has traffic)."""

RTT_SMOOTHING: Final = 0.125
"""Weight of a new sample in the smoothed RTT (TCP's SRTT gain, RFC 6298)."""

SERVER_SHUTDOWN_TIMEOUT_S: Final = 1.0
"""How long ``close`` lets in-flight peer requests finish."""

MAX_ERROR_TEXT_CHARS: Final = 200
"""How much of a refusal's body ``last_error`` keeps."""


class DropReason(StrEnum):
    """Values of the ``reason`` label of ``peer_messages_dropped_total``."""

    QUEUE_FULL = "queue_full"  # the peer's queue held max_queue_messages
    NO_ADDRESS = "no_address"  # no URL known for the recipient
    SEND_FAILED = "send_failed"  # the batch's POST failed or was refused
    TOO_LARGE = "too_large"  # one message alone exceeds the body limit
    FAULT = "fault"  # fault injection (drop rate or blocked peer)
    CLOSED = "closed"  # sent after close()
    WRONG_RECIPIENT = "wrong_recipient"  # received, addressed to another node
    SENDER_MISMATCH = "sender_mismatch"  # received, sender differs from X-Concord-From


class RejectReason(StrEnum):
    """Values of the ``reason`` label of ``peer_rejected_total`` (a refused request)."""

    CLUSTER_ID = "cluster_id"  # 403: header or envelope names another cluster
    DECODE = "decode"  # 400: body is not a valid batch
    HEADERS = "headers"  # 400: X-Concord-From missing or names this node
    TOO_LARGE = "too_large"  # 413: body over max_body_bytes


def next_backoff_ms(previous_ms: int, settings: TransportSettings) -> int:
    """The backoff ceiling after one more failure: initial, then doubling up to the maximum."""
    if previous_ms <= 0:
        return settings.backoff_initial_ms
    return min(previous_ms * 2, settings.backoff_max_ms)


def backoff_sleep_s(ceiling_ms: int, settings: TransportSettings, rng: random.Random) -> float:
    """A jittered wait for ``ceiling_ms``: uniform in [max(initial, ceiling / 2), ceiling]."""
    assert ceiling_ms >= settings.backoff_initial_ms
    low_ms = max(settings.backoff_initial_ms, ceiling_ms / 2)
    return rng.uniform(low_ms, ceiling_ms) / 1000.0


@dataclass(slots=True, eq=False)
class _Peer:
    """One outbound link: its queue, its sender task and what the link has done so far."""

    node_id: str
    wake: asyncio.Event
    queue: deque[Message] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    sent_batches: int = 0
    sent_messages: int = 0
    failed_batches: int = 0
    backoff_ms: int = 0
    last_error: str | None = None
    smoothed_rtt_ms: float | None = None
    stream: aiohttp.ClientWebSocketResponse | None = None
    last_probe_s: float = 0.0
    writing: bool = False  # a frame is being written (or waits for the socket to drain)


class PeerTransport:
    """Both ends of the peer protocol for one node. Use it from the node's event loop only."""

    def __init__(self, *, node_id: str, cluster_id: str, self_peer_url: str,
                 addresses: AddressBook, on_messages: Callable[[list[Message]], None],
                 lamport: LamportClock, metrics: NodeMetrics, settings: TransportSettings,
                 faults: FaultInjector | None = None) -> None:
        self._node_id = node_id
        self._cluster_id = cluster_id
        self._self_peer_url = check_peer_url(self_peer_url.rstrip("/"))
        self._addresses = addresses
        self._on_messages = on_messages
        self._lamport = lamport
        self._metrics = metrics
        self._settings = settings
        self._faults = faults
        self._rng = random.Random()
        self._peers: dict[str, _Peer] = {}
        self._delayed: set[asyncio.TimerHandle] = set()
        self._body_limit_bytes = min(settings.max_body_bytes, MAX_MESSAGE_BYTES)
        self._headers = {
            CLUSTER_HEADER: cluster_id,
            FROM_HEADER: node_id,
            PEER_URL_HEADER: self._self_peer_url,
            "Content-Type": CONTENT_TYPE,
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._closed = False
        self._inbound_streams: set[web.WebSocketResponse] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._extra_routes: list[tuple[str, str, Handler]] = []

    # --- life cycle ------------------------------------------------------------------------

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Serve ``handler`` on the peer listener too (other peer channels); before ``start``."""
        assert self._runner is None, "routes are added before start()"
        self._extra_routes.append((method, path, handler))

    async def start(self, host: str, port: int) -> None:
        """Listen for peers on ``host:port`` and open the client session."""
        assert self._loop is None, "start() is called once"
        self._loop = asyncio.get_running_loop()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit_per_host=CONNECTIONS_PER_PEER),
            timeout=aiohttp.ClientTimeout(total=self._settings.request_timeout_ms / 1000.0),
            skip_auto_headers=("User-Agent",),
        )
        app = web.Application(client_max_size=self._settings.max_body_bytes)
        app.router.add_post(MESSAGES_PATH, self._handle_messages)
        app.router.add_get(STREAM_PATH, self._handle_stream)
        app.router.add_get(PING_PATH, self._handle_ping)
        for method, path, handler in self._extra_routes:
            app.router.add_route(method, path, handler)
        self._runner = web.AppRunner(app, access_log=None,
                                     shutdown_timeout=SERVER_SHUTDOWN_TIMEOUT_S)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()

    async def close(self) -> None:
        """Stop the senders, drop what is queued, close the session and the server."""
        if self._closed:
            return
        self._closed = True
        for handle in self._delayed:
            handle.cancel()
        self._delayed.clear()
        tasks = [peer.task for peer in self._peers.values() if peer.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for peer in self._peers.values():
            peer.queue.clear()
            if peer.stream is not None:
                await peer.stream.close()
        for stream in list(self._inbound_streams):
            await stream.close()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- sending ---------------------------------------------------------------------------

    def send(self, messages: Sequence[Message]) -> None:
        """Write or queue each message for its recipient; never blocks, never raises for a
        bad link. Without fault injection, the messages for one peer whose stream is open
        and idle are written at once as one frame."""
        assert self._loop is not None, "start() before send()"
        faults = self._faults
        if faults is None and not self._closed:
            by_recipient: dict[str, list[Message]] = {}
            for message in messages:
                assert message.sender == self._node_id, "only this node's messages go out"
                assert message.recipient != self._node_id, "Raft never sends to itself"
                by_recipient.setdefault(message.recipient, []).append(message)
            for recipient, batch in by_recipient.items():
                if not self._write_now(recipient, batch):
                    for message in batch:
                        self._enqueue(message)
            return
        for message in messages:
            assert message.sender == self._node_id, "only this node's messages go out"
            assert message.recipient != self._node_id, "Raft never sends to itself"
            if self._closed:
                self._drop(message.recipient, DropReason.CLOSED)
            elif faults is None:
                self._enqueue(message)
            else:
                self._enqueue_with_faults(message, faults)

    def _write_now(self, recipient: str, batch: list[Message]) -> bool:
        """Write ``batch`` as one frame on the peer's open, idle stream, without a task hop.

        False (nothing done) when the stream is not open, the sender has a backlog or a
        write in progress, or the batch is larger than a batch may be: the queue takes it.
        aiohttp writes an uncompressed frame to the socket before it waits for the socket to
        drain (if it must), so a send that suspends has written its frame: the rest of the
        wait is handed to a task, and the stream takes no more direct writes until it ends.
        """
        peer = self._peers.get(recipient)
        if peer is None or peer.writing or peer.queue:
            return False
        stream = peer.stream
        if stream is None or stream.closed or len(batch) > self._settings.max_batch_messages:
            return False
        body = self._encode_within_limit(peer, batch)  # cut messages go on the queue
        if peer.queue:
            peer.wake.set()
        if body is None:
            return True
        sending = stream.send_bytes(body)
        try:
            blocker = sending.send(None)
        except StopIteration:
            self._record_sent(peer, len(batch))
            return True
        except (aiohttp.ClientError, OSError, ConnectionError):
            # the stream broke: the sender task re-opens it and sends the batch again
            peer.stream = None
            peer.queue.extendleft(reversed(batch))
            peer.wake.set()
            return True
        peer.writing = True
        self._spawn(self._finish_write(peer, _Suspended(sending, blocker), len(batch)))
        return True

    async def _finish_write(self, peer: _Peer, write: _Suspended, count: int) -> None:
        """Wait out a direct write that is waiting for the socket to drain."""
        try:
            await write
            self._record_sent(peer, count)
        except (aiohttp.ClientError, OSError, ConnectionError) as error:
            peer.stream = None
            peer.failed_batches += 1
            peer.last_error = f"{type(error).__name__}: {error}"
            self._drop(peer.node_id, DropReason.SEND_FAILED, count)
        finally:
            peer.writing = False
            if peer.queue:
                peer.wake.set()

    def _record_sent(self, peer: _Peer, count: int) -> None:
        self._metrics.peer_messages_sent_total.labels(peer=peer.node_id).inc(count)
        peer.sent_batches += 1
        peer.sent_messages += count

    def _enqueue_with_faults(self, message: Message, faults: FaultInjector) -> None:
        if faults.should_drop(message.recipient):
            self._drop(message.recipient, DropReason.FAULT)
            return
        for _ in range(2 if faults.should_duplicate() else 1):
            delay_s = faults.delay_s()
            if delay_s > 0.0:
                self._enqueue_later(delay_s, message)
            else:
                self._enqueue(message)

    def _enqueue_later(self, delay_s: float, message: Message) -> None:
        assert self._loop is not None

        def enqueue_now() -> None:
            self._delayed.discard(handle)
            self._enqueue(message)

        handle = self._loop.call_later(delay_s, enqueue_now)
        self._delayed.add(handle)

    def _enqueue(self, message: Message) -> None:
        recipient = message.recipient
        peer = self._peers.get(recipient)
        if peer is None:
            if self._addresses.get(recipient) is None:
                self._drop(recipient, DropReason.NO_ADDRESS)
                return
            peer = self._start_sender(recipient)
        if len(peer.queue) >= self._settings.max_queue_messages:
            self._drop(recipient, DropReason.QUEUE_FULL)
            return
        peer.queue.append(message)
        peer.wake.set()

    def _start_sender(self, node_id: str) -> _Peer:
        assert self._loop is not None and node_id not in self._peers
        peer = _Peer(node_id, asyncio.Event())
        peer.task = self._loop.create_task(self._run_sender(peer), name=f"peer-send-{node_id}")
        peer.task.add_done_callback(self._sender_done)
        self._peers[node_id] = peer
        return peer

    def _sender_done(self, task: asyncio.Task[None]) -> None:
        """A sender only ends when cancelled; if a bug ends it, say so and let a new one start."""
        if task.cancelled():
            return
        error = task.exception()
        assert error is not None, "a sender loops until cancelled"
        crashed = next(p for p in self._peers.values() if p.task is task)
        del self._peers[crashed.node_id]
        self._drop(crashed.node_id, DropReason.SEND_FAILED, len(crashed.queue))
        log.error("peer sender crashed", peer=crashed.node_id, exc_info=error)

    def _drop(self, peer: str, reason: DropReason, count: int = 1) -> None:
        self._metrics.peer_messages_dropped(peer, reason).inc(count)

    async def _run_sender(self, peer: _Peer) -> None:
        """Drain ``peer.queue`` in batches onto the peer's stream, backing off after a failure."""
        max_batch = self._settings.max_batch_messages
        while True:
            if not peer.queue:
                peer.wake.clear()
                await peer.wake.wait()
                continue
            batch = [peer.queue.popleft() for _ in range(min(max_batch, len(peer.queue)))]
            url = self._addresses.get(peer.node_id)
            if url is None:
                self._drop(peer.node_id, DropReason.NO_ADDRESS, len(batch))
                continue
            body = self._encode_within_limit(peer, batch)
            if body is None:
                continue
            peer.writing = True
            try:
                error = await self._write_stream(peer, url, body)
            finally:
                peer.writing = False
            if error is None:
                self._record_sent(peer, len(batch))
                if peer.backoff_ms:
                    log.info("peer reachable again", peer=peer.node_id)
                peer.backoff_ms = 0
                self._maybe_probe_rtt(peer, url)
                continue
            peer.failed_batches += 1
            peer.last_error = error
            if not peer.backoff_ms:
                log.warning("peer unreachable", peer=peer.node_id, url=url, error=error)
            self._drop(peer.node_id, DropReason.SEND_FAILED, len(batch))
            peer.backoff_ms = next_backoff_ms(peer.backoff_ms, self._settings)
            await asyncio.sleep(backoff_sleep_s(peer.backoff_ms, self._settings, self._rng))

    def _encode_within_limit(self, peer: _Peer, batch: list[Message]) -> bytes | None:
        """Encode ``batch`` stamped with a new Lamport time, shrinking it to fit the body limit.

        Messages cut from the batch go back to the front of the queue, in order. A single
        message over the limit is dropped (None).
        """
        stamp = self._lamport.tick()
        body = encode_messages_batch(self._cluster_id, stamp, batch)
        while len(body) > self._body_limit_bytes and len(batch) > 1:
            keep = len(batch) // 2
            peer.queue.extendleft(reversed(batch[keep:]))
            del batch[keep:]
            body = encode_messages_batch(self._cluster_id, stamp, batch)
        if len(body) > self._body_limit_bytes:
            self._drop(peer.node_id, DropReason.TOO_LARGE)
            return None
        return body

    async def _write_stream(self, peer: _Peer, url: str, body: bytes) -> str | None:
        """Write one batch as a frame on the peer's stream, opening it first if needed.

        None when the frame was handed to the connection, else why it could not be.
        """
        assert self._session is not None
        try:
            if peer.stream is None or peer.stream.closed:
                peer.stream = await self._session.ws_connect(
                    url + STREAM_PATH, headers=self._headers, autoclose=True, autoping=True,
                    max_msg_size=self._settings.max_body_bytes, compress=0)
                self._spawn(self._drain_stream(peer, peer.stream))
            await peer.stream.send_bytes(body)
            return None
        except aiohttp.WSServerHandshakeError as error:
            peer.stream = None
            return f"HTTP {error.status}: {error.message}"[:MAX_ERROR_TEXT_CHARS]
        except TimeoutError:
            peer.stream = None
            return f"timed out after {self._settings.request_timeout_ms} ms"
        except (aiohttp.ClientError, OSError, ConnectionError) as error:
            peer.stream = None
            return f"{type(error).__name__}: {error}"

    async def _drain_stream(self, peer: _Peer, stream: aiohttp.ClientWebSocketResponse) -> None:
        """Read the (silent) return direction so closes and pings are noticed at once."""
        async for _ in stream:
            pass
        if peer.stream is stream:
            peer.stream = None

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _maybe_probe_rtt(self, peer: _Peer, url: str) -> None:
        now_s = time.monotonic()
        if now_s - peer.last_probe_s >= RTT_PROBE_INTERVAL_S:
            peer.last_probe_s = now_s
            self._spawn(self._probe_rtt(peer, url))

    async def _probe_rtt(self, peer: _Peer, url: str) -> None:
        """One ping: a round trip through the peer's HTTP server and event loop."""
        assert self._session is not None
        started_s = time.perf_counter()
        try:
            async with self._session.get(url + PING_PATH, headers=self._headers) as response:
                await response.read()
                if response.status != web.HTTPOk.status_code:
                    return
        except (TimeoutError, aiohttp.ClientError, OSError):
            return
        elapsed_s = time.perf_counter() - started_s
        self._metrics.peer_rtt_seconds.labels(peer=peer.node_id).observe(elapsed_s)
        sample_ms = elapsed_s * 1000.0
        peer.smoothed_rtt_ms = sample_ms if peer.smoothed_rtt_ms is None else (
            peer.smoothed_rtt_ms + RTT_SMOOTHING * (sample_ms - peer.smoothed_rtt_ms))

    def peer_stats(self) -> dict[str, dict[str, object]]:
        """Per known peer: URL, queue length, batches sent and failed, last error, RTT."""
        stats: dict[str, dict[str, object]] = {}
        known = set(self._addresses.snapshot()) | set(self._peers)
        for node_id in sorted(known - {self._node_id}):
            peer = self._peers.get(node_id)
            stats[node_id] = {
                "url": self._addresses.get(node_id),
                "queue_messages": len(peer.queue) if peer else 0,
                "sent_batches": peer.sent_batches if peer else 0,
                "sent_messages": peer.sent_messages if peer else 0,
                "failed_batches": peer.failed_batches if peer else 0,
                "backoff_ms": peer.backoff_ms if peer else 0,
                "last_error": peer.last_error if peer else None,
                "rtt_ms": (round(peer.smoothed_rtt_ms, 3)
                           if peer and peer.smoothed_rtt_ms is not None else None),
            }
        return stats

    # --- receiving -------------------------------------------------------------------------

    def _reject(self, reason: RejectReason, status: int, text: str) -> web.Response:
        self._metrics.peer_rejected_total.labels(reason=reason).inc()
        return web.Response(status=status, text=text)

    async def _handle_messages(self, request: web.Request) -> web.StreamResponse:
        """One batch per POST (tools and tests; nodes use the stream)."""
        checked = self._check_peer_headers(request)
        if isinstance(checked, web.Response):
            return checked
        sender = checked
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._reject(RejectReason.TOO_LARGE, web.HTTPRequestEntityTooLarge.status_code,
                                f"body exceeds {self._settings.max_body_bytes} bytes")
        refusal = self._receive_batch(sender, body)
        if refusal is not None:
            return refusal
        self._learn_address(sender, request.headers.get(PEER_URL_HEADER))
        return web.Response(status=web.HTTPNoContent.status_code)

    def _check_peer_headers(self, request: web.Request) -> web.Response | str:
        """The sender's id when the headers are acceptable, else the refusal to answer."""
        if request.headers.get(CLUSTER_HEADER) != self._cluster_id:
            return self._reject(RejectReason.CLUSTER_ID, web.HTTPForbidden.status_code,
                                f"this node belongs to cluster {self._cluster_id!r}")
        sender = request.headers.get(FROM_HEADER, "")
        if not sender or sender == self._node_id:
            return self._reject(RejectReason.HEADERS, web.HTTPBadRequest.status_code,
                                f"{FROM_HEADER} must name the sending node")
        return sender

    async def _handle_stream(self, request: web.Request) -> web.StreamResponse:
        """A peer's outbound stream: every binary frame is one batch."""
        checked = self._check_peer_headers(request)
        if isinstance(checked, web.Response):
            return checked
        sender = checked
        stream = web.WebSocketResponse(max_msg_size=self._settings.max_body_bytes,
                                       autoping=True, compress=False)
        await stream.prepare(request)
        self._learn_address(sender, request.headers.get(PEER_URL_HEADER))
        self._inbound_streams.add(stream)
        try:
            async for frame in stream:
                if frame.type is aiohttp.WSMsgType.BINARY:
                    self._receive_batch(sender, frame.data)
                else:
                    self._metrics.peer_rejected_total.labels(reason=RejectReason.DECODE).inc()
        finally:
            self._inbound_streams.discard(stream)
        return stream

    def _receive_batch(self, sender: str, body: bytes) -> web.Response | None:
        """Decode, check and deliver one batch; the refusal when it is not acceptable."""
        try:
            batch = decode_messages_batch(body)
        except DecodeError as error:
            return self._reject(RejectReason.DECODE, web.HTTPBadRequest.status_code, str(error))
        if batch.cluster_id != self._cluster_id:
            return self._reject(RejectReason.CLUSTER_ID, web.HTTPForbidden.status_code,
                                f"this node belongs to cluster {self._cluster_id!r}")
        self._lamport.observe(batch.lamport)
        accepted = self._accept(sender, batch.messages)
        if accepted:
            self._metrics.peer_messages_received(sender).inc(len(accepted))
            self._on_messages(accepted)
        return None

    def _learn_address(self, sender: str, url: str | None) -> None:
        if url is None or self._addresses.get(sender) == url:
            return
        try:
            self._addresses.set(sender, url)
        except ValueError:
            return  # a bad advertised URL: keep what we know

    def _accept(self, sender: str, messages: Sequence[Message]) -> list[Message]:
        """The messages this node takes, in order; the others are counted as dropped."""
        blocked = self._faults.blocked_peers if self._faults is not None else frozenset()
        accepted: list[Message] = []
        for message in messages:
            if message.recipient != self._node_id:
                self._drop(message.sender, DropReason.WRONG_RECIPIENT)
            elif message.sender != sender:
                self._drop(message.sender, DropReason.SENDER_MISMATCH)
            elif sender in blocked:
                self._drop(sender, DropReason.FAULT)
            else:
                accepted.append(message)
        return accepted

    async def _handle_ping(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"node_id": self._node_id, "cluster_id": self._cluster_id,
                                  "lamport": self._lamport.time})


class _Suspended:
    """A coroutine started by hand (``send(None)``) that suspended on ``blocker``; awaiting
    this object lets the awaiting task drive it to its end, as if it had started it."""

    __slots__ = ("_blocker", "_coroutine")

    def __init__(self, coroutine: Coroutine[Any, Any, None], blocker: Any) -> None:
        self._coroutine = coroutine
        self._blocker = blocker

    def __await__(self) -> Generator[Any, None, None]:
        coroutine, waiting_on = self._coroutine, self._blocker
        while True:
            try:
                yield waiting_on
            except BaseException as thrown:  # the task's cancellation goes to the coroutine
                try:
                    waiting_on = coroutine.throw(thrown)
                except StopIteration:
                    return
            else:
                try:
                    waiting_on = coroutine.send(None)
                except StopIteration:
                    return
