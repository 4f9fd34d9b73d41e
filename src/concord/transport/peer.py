"""The peer transport: Raft messages between nodes as msgpack batches over HTTP.

``PeerTransport`` owns both ends of the peer protocol (``docs/transport.md``):

- the server on the peer listener: ``GET /raft/v1/stream`` upgrades to a WebSocket whose
  binary frames are batches (``concord.wire.encode_messages_batch``); ``POST
  /raft/v1/messages`` takes one batch per request (for tools and tests). Either way the
  cluster id is checked, the sender's Lamport time observed and the accepted messages handed
  to ``on_messages`` in order; ``GET /raft/v1/ping`` answers RTT probes;
- the clients: ``send`` never blocks: it puts each message on its recipient's bounded
  queue. When the peer's stream is open and idle, a callback at the end of the loop turn
  writes everything queued meanwhile as one frame (no task hop between the Raft driver and
  the socket); otherwise one sender task per peer drains that queue into batches written as
  frames on one
  WebSocket stream: no request/response wait per batch, so batches pipeline and TCP keeps
  their order. A batch that cannot be written is dropped (Raft retries by itself), the
  stream is re-opened and the sender backs off, until the peer reaches this node (a node
  greets its peers when it starts, ``greet_peers``). Round-trip times come from pings, at
  most one per peer per ``RTT_PROBE_INTERVAL_S``;
- transfers: a single message whose batch exceeds the frame bound (``max_frame_bytes``; in
  practice an InstallSnapshot) goes out as fragments, one per sender turn between ordinary
  batches, so heartbeats keep flowing while a large snapshot streams; the receiver keeps at
  most one transfer per stream, reassembles it in order and decodes the batch (a snapshot's
  image is copied out on a thread, ``copy_beside_the_loop``, while the stream goes on).

Every drop is counted in ``peer_messages_dropped_total`` by peer and reason, every refused
request, frame or transfer in ``peer_rejected_total`` by reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
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
from concord.raft.messages import InstallSnapshot, Message, Snapshot
from concord.transport.addresses import AddressBook, check_peer_url
from concord.transport.direct_write import Suspended, start_frame_write
from concord.transport.faults import FaultInjector
from concord.wire import (
    MAX_MESSAGE_BYTES,
    DecodeError,
    EnvelopeBatch,
    decode_messages_batch,
    encode_messages_batch,
)
from concord.wire.codec import (
    FRAGMENT_OVERHEAD_BYTES,
    MAX_SNAPSHOT_BYTES,
    Fragment,
    decode_reassembled_batch,
    decode_stream_frame,
    encode_fragment,
    encode_snapshot_batch,
    split_snapshot_batch,
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
    TOO_LARGE = "too_large"  # one message alone exceeds what a transfer may carry
    TRANSFER_BUSY = "transfer_busy"  # needs a transfer while one to the peer still streams
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
    FRAGMENT_ORDER = "fragment_order"  # a fragment that does not continue the transfer
    FRAGMENT_SIZE = "fragment_size"  # a transfer's chunks do not add up to its total
    FRAGMENT_INTERRUPTED = "fragment_interrupted"  # a transfer left unfinished (new id, close)


def count_peer_rejection(metrics: NodeMetrics, reason: RejectReason) -> None:
    """Count one refused peer request, frame or transfer (``peer_rejected_total``)."""
    metrics.peer_rejected_total.labels(reason=reason).inc()


def refuse_peer_request(metrics: NodeMetrics, reason: RejectReason, status: int,
                        text: str) -> web.Response:
    """Count a refused peer request and build its answer."""
    count_peer_rejection(metrics, reason)
    return web.Response(status=status, text=text)


def peer_sender_or_refusal(request: web.Request, *, cluster_id: str, node_id: str,
                           metrics: NodeMetrics) -> str | web.Response:
    """The sending node's id when a peer request's headers name this cluster and another
    node, else the counted refusal to answer (every peer route checks them the same way)."""
    if request.headers.get(CLUSTER_HEADER) != cluster_id:
        return refuse_peer_request(metrics, RejectReason.CLUSTER_ID,
                                   web.HTTPForbidden.status_code,
                                   f"this node belongs to cluster {cluster_id!r}")
    sender = request.headers.get(FROM_HEADER, "")
    if not sender or sender == node_id:
        return refuse_peer_request(metrics, RejectReason.HEADERS,
                                   web.HTTPBadRequest.status_code,
                                   f"{FROM_HEADER} must name the sending node")
    return sender


IMAGE_COPY_PIECE_BYTES: Final = 4 * 1024 * 1024
"""How much of a received snapshot image ``copy_beside_the_loop`` copies between hand-overs."""


def copy_beside_the_loop(view: memoryview) -> bytes:
    """``bytes(view)`` for a thread beside the event loop: copied a piece at a time into an
    ``io.BytesIO`` (whose ``getvalue`` hands over its buffer without a copy), with the GIL
    handed over between pieces. One copy of a 278 MB image held it for 0.14 s on an idle
    machine and up to a second on a busy one."""
    buffer = io.BytesIO()
    for start in range(0, len(view), IMAGE_COPY_PIECE_BYTES):
        buffer.write(view[start:start + IMAGE_COPY_PIECE_BYTES])
        time.sleep(0)  # lets a waiting thread (the event loop) take the GIL
    return buffer.getvalue()


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
class _Transfer:
    """An outbound batch too large for one frame, written as fragments, one per sender turn.

    The batch's bytes are the concatenation of ``parts`` (a snapshot image is one of them,
    never copied whole)."""

    transfer_id: int
    parts: tuple[bytes, ...]
    chunk_bytes: int
    message_count: int
    next_index: int = 0
    stream: aiohttp.ClientWebSocketResponse | None = None  # where fragment 0 went

    @property
    def total_bytes(self) -> int:
        return sum(len(part) for part in self.parts)

    @property
    def count(self) -> int:
        return -(-self.total_bytes // self.chunk_bytes)

    def next_frame(self) -> bytes:
        start = self.next_index * self.chunk_bytes
        end = start + self.chunk_bytes
        pieces, offset = [], 0
        for part in self.parts:
            low, high = max(start - offset, 0), min(end - offset, len(part))
            if low < high:
                pieces.append(memoryview(part)[low:high])
            offset += len(part)
        chunk = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        return encode_fragment(self.transfer_id, self.next_index, self.count,
                               self.total_bytes, chunk)


@dataclass(slots=True, eq=False)
class _Reassembly:
    """An inbound transfer: the fragments received so far, in order."""

    transfer_id: int
    count: int
    total_bytes: int
    body: bytearray = field(default_factory=bytearray)
    next_index: int = 0


@dataclass(slots=True, eq=False)
class _InboundStream:
    """What one peer's inbound stream holds between frames: at most one transfer."""

    transfer: _Reassembly | None = None


@dataclass(slots=True, eq=False)
class _Peer:
    """One outbound link: its queue, its sender task and what the link has done so far."""

    node_id: str
    wake: asyncio.Event
    contact: asyncio.Event = field(default_factory=asyncio.Event)  # the peer reached us
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
    greet: bool = False  # open the stream even with nothing queued (``greet_peers``)
    flush_due: bool = False  # a flush of the queue is scheduled for this loop turn
    transfer: _Transfer | None = None  # a batch streaming as fragments
    transfers_started: int = 0
    sent_fragments: int = 0


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
        self._frame_limit_bytes = min(settings.max_frame_bytes, self._body_limit_bytes)
        assert self._frame_limit_bytes > FRAGMENT_OVERHEAD_BYTES, "a frame holds a fragment"
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

    def greet_peers(self) -> None:
        """Open a stream to every peer in the address book, with nothing to say yet.

        A peer's sender backs off after failed writes, up to ``backoff_max_ms``; a node that
        restarts would otherwise wait out its peers' backoff (or its own election timeout)
        before anyone writes to it. Its stream reaching a peer cuts that peer's backoff short
        (``_heard_from``). A greeting that fails is not retried and not counted as a failure.
        """
        assert self._loop is not None, "start() before greet_peers()"
        for node_id in self._addresses.snapshot():
            if node_id == self._node_id or self._closed:
                continue
            peer = self._peers.get(node_id) or self._start_sender(node_id)
            peer.greet = True
            peer.wake.set()

    async def close(self) -> None:
        """Stop the senders and background tasks, drop what is queued, close the session and
        the server."""
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
            peer.transfer = None
            if peer.stream is not None:
                await peer.stream.close()
        for stream in list(self._inbound_streams):
            await stream.close()
        background = list(self._background)  # writes finishing, probes, snapshot deliveries
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- sending ---------------------------------------------------------------------------

    def send(self, messages: Sequence[Message]) -> None:
        """Queue each message for its recipient; never blocks, never raises for a bad link.

        Without fault injection, a peer's queue is flushed once at the end of this loop turn
        (a callback, not a task: everything sent to the peer meanwhile becomes one frame,
        written without waking its sender task when its stream is open and idle).
        """
        assert self._loop is not None, "start() before send()"
        faults = self._faults
        for message in messages:
            assert message.sender == self._node_id, "only this node's messages go out"
            assert message.recipient != self._node_id, "Raft never sends to itself"
            if self._closed:
                self._drop(message.recipient, DropReason.CLOSED)
            elif faults is None:
                self._enqueue(message, flush_soon=True)
            else:
                self._enqueue_with_faults(message, faults)

    def flush(self) -> None:
        """Write every queue waiting for its end-of-turn flush now, before this loop turn
        blocks (a leader's AppendEntries before its own fsync on the event loop)."""
        for peer in self._peers.values():
            if peer.flush_due:
                self._flush(peer)

    def _flush(self, peer: _Peer) -> None:
        """Write what is queued for ``peer`` as one frame if its stream is open and idle, or
        leave it to the sender task."""
        peer.flush_due = False
        queue = peer.queue
        if not queue or len(queue) > self._settings.max_batch_messages:
            if queue:
                peer.wake.set()
            return
        stream = peer.stream
        if stream is None or stream.closed or peer.writing:
            peer.wake.set()
            return
        batch = list(queue)
        queue.clear()
        self._write_now(peer, stream, batch)

    def _write_now(self, peer: _Peer, stream: aiohttp.ClientWebSocketResponse,
                   batch: list[Message]) -> None:
        """Write ``batch`` as one frame on the peer's open, idle stream, without a task hop.

        aiohttp writes an uncompressed frame to the socket before it waits for the socket to
        drain (if it must), so a send that suspends has written its frame: the rest of the
        wait is handed to a task, and the stream takes no more direct writes until it ends.
        """
        body = self._encode_within_limit(peer, batch)  # cut messages go on the queue
        if peer.queue or peer.transfer is not None:
            peer.wake.set()
        if body is None:
            return
        try:
            rest = start_frame_write(stream, body)
        except (aiohttp.ClientError, OSError, ConnectionError):
            # the stream broke: the sender task re-opens it and sends the batch again
            peer.stream = None
            peer.queue.extendleft(reversed(batch))
            peer.wake.set()
            return
        if rest is None:
            self._record_sent(peer, len(batch))
            return
        peer.writing = True
        self._spawn(self._finish_write(peer, rest, len(batch)))

    async def _finish_write(self, peer: _Peer, write: Suspended, count: int) -> None:
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
        self._metrics.peer_messages_sent(peer.node_id).inc(count)
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

    def _enqueue(self, message: Message, *, flush_soon: bool = False) -> None:
        """Queue ``message``; ``flush_soon``: by a flush at the end of this loop turn rather
        than by waking the sender task (which a new peer's first messages always do)."""
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
        if not flush_soon or peer.stream is None or peer.writing:
            peer.wake.set()
        elif not peer.flush_due:
            peer.flush_due = True
            assert self._loop is not None
            self._loop.call_soon(self._flush, peer)

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
        in_transfer = crashed.transfer.message_count if crashed.transfer is not None else 0
        self._drop(crashed.node_id, DropReason.SEND_FAILED, len(crashed.queue) + in_transfer)
        log.error("peer sender crashed", peer=crashed.node_id, exc_info=error)

    def _drop(self, peer: str, reason: DropReason, count: int = 1) -> None:
        self._metrics.peer_messages_dropped(peer, reason).inc(count)

    async def _run_sender(self, peer: _Peer) -> None:
        """Drain ``peer.queue`` in batches onto the peer's stream, backing off after a failure.

        A turn writes one ordinary batch (if any is queued), then one fragment of the transfer
        in progress (if any), so a transfer never holds up the batches behind it.
        """
        while True:
            if not peer.queue and peer.transfer is None:
                if peer.greet:
                    peer.greet = False
                    await self._greet(peer)
                    continue
                peer.wake.clear()
                await peer.wake.wait()
                continue
            error = await self._send_batch(peer) if peer.queue else None
            if error is None and peer.transfer is not None:
                error = await self._send_fragment(peer)
                await asyncio.sleep(0)  # a fragment that did not wait for the socket still yields
            if error is None:
                continue
            peer.failed_batches += 1
            peer.last_error = error
            if not peer.backoff_ms:
                log.warning("peer unreachable", peer=peer.node_id,
                            url=self._addresses.get(peer.node_id), error=error)
            peer.backoff_ms = next_backoff_ms(peer.backoff_ms, self._settings)
            await self._back_off(peer)

    async def _back_off(self, peer: _Peer) -> None:
        """Wait before the next write to a peer that failed: the jittered backoff, cut short
        when the peer has reached this node since the failure began (it is up again)."""
        if not peer.contact.is_set():
            try:
                async with asyncio.timeout(
                        backoff_sleep_s(peer.backoff_ms, self._settings, self._rng)):
                    await peer.contact.wait()
            except TimeoutError:
                pass
        peer.contact.clear()

    async def _greet(self, peer: _Peer) -> None:
        """Open the peer's stream, if it is not open, without writing to it."""
        url = self._addresses.get(peer.node_id)
        if url is None or (peer.stream is not None and not peer.stream.closed):
            return
        try:
            await self._open_stream(peer, url)
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            log.debug("peer not reachable at start", peer=peer.node_id, error=str(error))

    async def _send_batch(self, peer: _Peer) -> str | None:
        """Write the next batch off the queue; why it failed, if it did (it is dropped)."""
        max_batch = self._settings.max_batch_messages
        batch = [peer.queue.popleft() for _ in range(min(max_batch, len(peer.queue)))]
        url = self._addresses.get(peer.node_id)
        if url is None:
            self._drop(peer.node_id, DropReason.NO_ADDRESS, len(batch))
            return None
        body = self._encode_within_limit(peer, batch)
        if body is None:
            return None
        error = await self._write(peer, url, body)
        if error is not None:
            self._drop(peer.node_id, DropReason.SEND_FAILED, len(batch))
            return error
        self._record_sent(peer, len(batch))
        self._link_works(peer, url)
        return None

    async def _send_fragment(self, peer: _Peer) -> str | None:
        """Write the next fragment of the transfer in progress; the whole transfer is dropped
        when a write fails or the stream it started on is gone (the receiver lost it too)."""
        transfer = peer.transfer
        assert transfer is not None
        url = self._addresses.get(peer.node_id)
        if url is None:
            peer.transfer = None
            self._drop(peer.node_id, DropReason.NO_ADDRESS, transfer.message_count)
            return None
        stream = peer.stream
        if transfer.next_index > 0 and (stream is None or stream is not transfer.stream
                                        or stream.closed):
            peer.transfer = None
            self._drop(peer.node_id, DropReason.SEND_FAILED, transfer.message_count)
            return None
        error = await self._write(peer, url, transfer.next_frame())
        if peer.transfer is not transfer:
            return error  # dropped meanwhile (close)
        if error is not None:
            peer.transfer = None
            self._drop(peer.node_id, DropReason.SEND_FAILED, transfer.message_count)
            return error
        if transfer.next_index == 0:
            transfer.stream = peer.stream
        transfer.next_index += 1
        peer.sent_fragments += 1
        self._metrics.peer_fragments_total.labels(peer=peer.node_id, direction="sent").inc()
        if transfer.next_index == transfer.count:
            peer.transfer = None
            self._record_sent(peer, transfer.message_count)
        self._link_works(peer, url)
        return None

    async def _write(self, peer: _Peer, url: str, body: bytes) -> str | None:
        peer.writing = True
        try:
            return await self._write_stream(peer, url, body)
        finally:
            peer.writing = False

    def _link_works(self, peer: _Peer, url: str) -> None:
        """A frame went out: end the backoff and measure the RTT now and then."""
        if peer.backoff_ms:
            log.info("peer reachable again", peer=peer.node_id)
            peer.backoff_ms = 0
            peer.contact.clear()  # set only while backing off
        self._maybe_probe_rtt(peer, url)

    def _needs_transfer(self, message: Message) -> bool:
        """Known without encoding: a snapshot whose image alone exceeds the frame bound."""
        return (isinstance(message, InstallSnapshot)
                and len(message.snapshot.data) > self._frame_limit_bytes)

    def _encode_within_limit(self, peer: _Peer, batch: list[Message]) -> bytes | None:
        """Encode ``batch`` stamped with a new Lamport time, cutting it to fit the frame bound.

        Messages cut from the batch go back to the front of the queue, in order. A snapshot
        whose image alone exceeds the frame bound is cut off to travel alone, encoded without
        copying its image. A single message over the frame bound starts a transfer (None):
        up to the body limit, or ``MAX_SNAPSHOT_BYTES`` for an InstallSnapshot. It is dropped
        (None) when larger (``too_large``) or when a transfer to the peer is still streaming
        (``transfer_busy``): Raft asks for the snapshot again every election timeout until
        the follower has it, and one copy on the way is enough.
        """
        large = next((i for i, message in enumerate(batch) if self._needs_transfer(message)),
                     None)
        if large is not None and len(batch) > 1:
            self._cut(peer, batch, max(large, 1))
        if large == 0:
            snapshot = batch[0]
            assert isinstance(snapshot, InstallSnapshot)
            parts = encode_snapshot_batch(self._cluster_id, self._lamport.tick(), snapshot)
            self._start_transfer(peer, parts, 1, MAX_SNAPSHOT_BYTES)
            return None
        limit = self._frame_limit_bytes
        stamp = self._lamport.tick()
        body = encode_messages_batch(self._cluster_id, stamp, batch)
        while len(body) > limit and len(batch) > 1:
            # cut in proportion to the excess (at least in half): one re-encoding, usually
            self._cut(peer, batch, max(1, min(len(batch) // 2, len(batch) * limit // len(body))))
            body = encode_messages_batch(self._cluster_id, stamp, batch)
        if len(body) <= limit:
            return body
        self._start_transfer(peer, (body,), len(batch), (
            MAX_SNAPSHOT_BYTES if isinstance(batch[0], InstallSnapshot)
            else self._body_limit_bytes))
        return None

    def _start_transfer(self, peer: _Peer, parts: tuple[bytes, ...], message_count: int,
                        limit_bytes: int) -> None:
        """Stream the batch ``parts`` make as fragments, unless it is over ``limit_bytes``
        (``too_large``) or a transfer to the peer still streams (``transfer_busy``)."""
        if sum(len(part) for part in parts) > limit_bytes:
            self._drop(peer.node_id, DropReason.TOO_LARGE, message_count)
        elif peer.transfer is not None:
            self._drop(peer.node_id, DropReason.TRANSFER_BUSY, message_count)
        else:
            peer.transfers_started += 1
            peer.transfer = _Transfer(peer.transfers_started, parts,
                                      self._frame_limit_bytes - FRAGMENT_OVERHEAD_BYTES,
                                      message_count)

    @staticmethod
    def _cut(peer: _Peer, batch: list[Message], keep: int) -> None:
        """Keep the first ``keep`` messages of ``batch``; the rest go back to the queue's front."""
        peer.queue.extendleft(reversed(batch[keep:]))
        del batch[keep:]

    async def _write_stream(self, peer: _Peer, url: str, body: bytes) -> str | None:
        """Write one batch as a frame on the peer's stream, opening it first if needed.

        None when the frame was handed to the connection, else why it could not be.
        """
        try:
            stream = peer.stream
            if stream is None or stream.closed:
                stream = await self._open_stream(peer, url)
            await stream.send_bytes(body)
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

    async def _open_stream(self, peer: _Peer, url: str) -> aiohttp.ClientWebSocketResponse:
        """Open the peer's stream (its sender task's, or a greeting before it has any)."""
        assert self._session is not None
        stream = await self._session.ws_connect(
            url + STREAM_PATH, headers=self._headers, autoclose=True, autoping=True,
            max_msg_size=self._settings.max_body_bytes, compress=0)
        peer.stream = stream
        self._spawn(self._drain_stream(peer, stream))
        return stream

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
        """Per known peer: URL, queue length, batches sent and failed, fragments sent and
        left to send, last error, RTT."""
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
                "sent_fragments": peer.sent_fragments if peer else 0,
                "transfer_fragments_left": (peer.transfer.count - peer.transfer.next_index
                                            if peer and peer.transfer else 0),
                "backoff_ms": peer.backoff_ms if peer else 0,
                "last_error": peer.last_error if peer else None,
                "rtt_ms": (round(peer.smoothed_rtt_ms, 3)
                           if peer and peer.smoothed_rtt_ms is not None else None),
            }
        return stats

    # --- receiving -------------------------------------------------------------------------

    def _reject(self, reason: RejectReason, status: int, text: str) -> web.Response:
        return refuse_peer_request(self._metrics, reason, status, text)

    def _count_rejected(self, reason: RejectReason) -> None:
        count_peer_rejection(self._metrics, reason)

    async def _handle_messages(self, request: web.Request) -> web.StreamResponse:
        """One batch per POST (tools and tests; nodes use the stream)."""
        checked = peer_sender_or_refusal(request, cluster_id=self._cluster_id,
                                         node_id=self._node_id, metrics=self._metrics)
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
        self._heard_from(sender)
        return web.Response(status=web.HTTPNoContent.status_code)

    async def _handle_stream(self, request: web.Request) -> web.StreamResponse:
        """A peer's outbound stream: every binary frame is one batch."""
        checked = peer_sender_or_refusal(request, cluster_id=self._cluster_id,
                                         node_id=self._node_id, metrics=self._metrics)
        if isinstance(checked, web.Response):
            return checked
        sender = checked
        stream = web.WebSocketResponse(max_msg_size=self._settings.max_body_bytes,
                                       autoping=True, compress=False)
        await stream.prepare(request)
        self._learn_address(sender, request.headers.get(PEER_URL_HEADER))
        self._heard_from(sender)
        self._inbound_streams.add(stream)
        inbound = _InboundStream()
        try:
            async for frame in stream:
                if frame.type is aiohttp.WSMsgType.BINARY:
                    self._receive_frame(sender, frame.data, inbound)
                else:
                    self._count_rejected(RejectReason.DECODE)
        finally:
            self._inbound_streams.discard(stream)
            if inbound.transfer is not None:
                self._count_rejected(RejectReason.FRAGMENT_INTERRUPTED)
        return stream

    def _receive_frame(self, sender: str, body: bytes, inbound: _InboundStream) -> None:
        """One frame of a peer's stream: a batch to deliver or a fragment of one."""
        try:
            frame = decode_stream_frame(body)
        except DecodeError:
            self._count_rejected(RejectReason.DECODE)
            return
        if isinstance(frame, Fragment):
            self._receive_fragment(sender, frame, inbound)
        else:
            self._deliver(sender, frame)

    def _receive_fragment(self, sender: str, fragment: Fragment,
                          inbound: _InboundStream) -> None:
        """Add a fragment to the stream's transfer; deliver the batch once it is whole (a
        snapshot's from a task, once its image is copied out: ``_deliver_snapshot``).

        A fragment of another transfer abandons the one in progress; a fragment out of order
        or that would overfill the transfer drops it. Each is counted in ``peer_rejected``.
        """
        self._metrics.peer_fragments_total.labels(peer=sender, direction="received").inc()
        transfer = inbound.transfer
        if transfer is not None and fragment.transfer_id != transfer.transfer_id:
            inbound.transfer = transfer = None
            self._count_rejected(RejectReason.FRAGMENT_INTERRUPTED)
        if transfer is None:
            if fragment.index != 0:
                self._count_rejected(RejectReason.FRAGMENT_ORDER)
                return
            transfer = inbound.transfer = _Reassembly(fragment.transfer_id, fragment.count,
                                                      fragment.total_bytes)
        elif ((fragment.index, fragment.count, fragment.total_bytes)
              != (transfer.next_index, transfer.count, transfer.total_bytes)):
            inbound.transfer = None
            self._count_rejected(RejectReason.FRAGMENT_ORDER)
            return
        if len(transfer.body) + len(fragment.chunk) > transfer.total_bytes:
            inbound.transfer = None
            self._count_rejected(RejectReason.FRAGMENT_SIZE)
            return
        transfer.body += fragment.chunk
        transfer.next_index += 1
        if transfer.next_index < transfer.count:
            return
        inbound.transfer = None
        if len(transfer.body) != transfer.total_bytes:
            self._count_rejected(RejectReason.FRAGMENT_SIZE)
            return
        try:
            split = split_snapshot_batch(transfer.body)
            if split is None:
                batch = decode_reassembled_batch(transfer.body)
        except DecodeError:
            self._count_rejected(RejectReason.DECODE)
            return
        if split is None:
            self._deliver(sender, batch)
            return
        self._spawn(self._deliver_snapshot(sender, *split))

    async def _deliver_snapshot(self, sender: str, batch: EnvelopeBatch,
                                image: memoryview) -> None:
        """Deliver a reassembled InstallSnapshot (``batch``, with an empty image in its
        place) once ``image`` is copied out of the reassembled bytes on a thread. The stream
        goes on meanwhile: the heartbeats behind it keep the follower from an election."""
        data = await asyncio.get_running_loop().run_in_executor(
            None, copy_beside_the_loop, image)
        message = batch.messages[0]
        assert isinstance(message, InstallSnapshot), "split_snapshot_batch checked it"
        whole = dataclasses.replace(message, snapshot=Snapshot(message.snapshot.meta, data))
        self._deliver(sender, dataclasses.replace(batch, messages=(whole,)))

    def _receive_batch(self, sender: str, body: bytes) -> web.Response | None:
        """Decode, check and deliver one POSTed batch; the refusal when it is not acceptable."""
        try:
            batch = decode_messages_batch(body)
        except DecodeError as error:
            return self._reject(RejectReason.DECODE, web.HTTPBadRequest.status_code, str(error))
        return self._deliver(sender, batch)

    def _deliver(self, sender: str, batch: EnvelopeBatch) -> web.Response | None:
        """Check a decoded batch's cluster, observe its clock and hand on its messages."""
        if batch.cluster_id != self._cluster_id:
            return self._reject(RejectReason.CLUSTER_ID, web.HTTPForbidden.status_code,
                                f"this node belongs to cluster {self._cluster_id!r}")
        self._lamport.observe(batch.lamport)
        accepted = self._accept(sender, batch.messages)
        if accepted:
            self._metrics.peer_messages_received(sender).inc(len(accepted))
            self._on_messages(accepted)
        return None

    def _heard_from(self, sender: str) -> None:
        """A peer reached this node: if its sender is backing off, it writes again at once."""
        peer = self._peers.get(sender)
        if peer is not None and peer.backoff_ms:
            peer.contact.set()

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
