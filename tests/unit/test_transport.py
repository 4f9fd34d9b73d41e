"""Tests of the peer transport: real PeerTransports on 127.0.0.1 exchanging Raft messages.

Each test checks what arrived (and in which batches) against what was sent, and the counters
against the number of messages the test knows were dropped or refused.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import aiohttp
import pytest
from structlog.testing import capture_logs

from concord.config import ConfigError, TransportSettings, load_config
from concord.core.lamport import LamportClock
from concord.observability.metrics import NodeMetrics
from concord.raft.messages import (
    AppendEntries,
    Entry,
    Heartbeat,
    InstallSnapshot,
    Membership,
    Message,
    Snapshot,
    SnapshotMeta,
)
from concord.transport.addresses import AddressBook
from concord.transport.direct_write import Suspended
from concord.transport.faults import FaultInjector
from concord.transport.peer import (
    CLUSTER_HEADER,
    FROM_HEADER,
    MESSAGES_PATH,
    PEER_URL_HEADER,
    PING_PATH,
    STREAM_PATH,
    PeerTransport,
    backoff_sleep_s,
    next_backoff_ms,
)
from concord.wire import encode_messages_batch
from concord.wire.codec import FRAGMENT_OVERHEAD_BYTES, encode_fragment

CLUSTER = "test-cluster"
FAST = TransportSettings(request_timeout_ms=1_000, backoff_initial_ms=20, backoff_max_ms=80)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def heartbeat(sender: str, recipient: str, commit: int) -> Heartbeat:
    return Heartbeat(term=1, sender=sender, recipient=recipient, commit=commit)


def heartbeats(sender: str, recipient: str, count: int, first: int = 0) -> list[Message]:
    return [heartbeat(sender, recipient, i) for i in range(first, first + count)]


def append_1kb(sender: str, recipient: str, index: int, size_bytes: int = 1024) -> AppendEntries:
    entry = Entry(index=index, term=1, data=bytes([index % 256]) * size_bytes)
    return AppendEntries(term=1, sender=sender, recipient=recipient, prev_log_index=index - 1,
                         prev_log_term=1, entries=(entry,), leader_commit=0)


def sample(metrics: NodeMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(f"concord_{name}", labels)
    return 0.0 if value is None else value


async def eventually(predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline_s = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline_s, "condition not reached in time"
        await asyncio.sleep(0.005)


@dataclass(eq=False)
class Node:
    node_id: str
    port: int
    addresses: AddressBook
    transport: PeerTransport
    lamport: LamportClock
    metrics: NodeMetrics
    faults: FaultInjector | None
    batches: list[list[Message]]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def received(self) -> list[Message]:
        return [message for batch in self.batches for message in batch]

    async def start(self) -> None:
        await self.transport.start("127.0.0.1", self.port)


class Net:
    """Builds transports on reserved loopback ports; every node knows every other's URL."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []

    async def make(self, ids: Sequence[str], *, settings: TransportSettings = FAST,
                   fault_seed: int | None = None, start: bool = True,
                   unknown_to: Sequence[str] = ()) -> list[Node]:
        """``unknown_to``: ids of the new nodes whose books hold only themselves."""
        ports = {node_id: free_port() for node_id in ids}
        urls = {node_id: f"http://127.0.0.1:{port}" for node_id, port in ports.items()}
        made = []
        for node_id in ids:
            book = AddressBook({node_id: urls[node_id]} if node_id in unknown_to else urls)
            lamport, metrics = LamportClock(), NodeMetrics()
            faults = None if fault_seed is None else FaultInjector(random.Random(fault_seed))
            batches: list[list[Message]] = []
            transport = PeerTransport(
                node_id=node_id, cluster_id=CLUSTER, self_peer_url=urls[node_id],
                addresses=book, on_messages=batches.append, lamport=lamport,
                metrics=metrics, settings=settings, faults=faults)
            node = Node(node_id, ports[node_id], book, transport, lamport, metrics, faults,
                        batches)
            self.nodes.append(node)
            made.append(node)
        if start:
            for node in made:
                await node.start()
        return made


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    network = Net()
    yield network
    for node in network.nodes:
        await node.transport.close()


# --- delivery --------------------------------------------------------------------------------


async def test_batches_arrive_in_order_and_carry_lamport_time(net: Net) -> None:
    a, b = await net.make(["a", "b"])
    sent = heartbeats("a", "b", 3000)
    a.transport.send(sent)
    await eventually(lambda: len(b.received) == 3000)
    assert [len(batch) for batch in b.batches] == [1024, 1024, 952]  # max_batch_messages
    assert b.received == sent
    assert a.lamport.time == 3  # one tick per batch
    assert b.lamport.time == 4  # observe(1) -> 2, observe(2) -> 3, observe(3) -> 4
    assert sample(a.metrics, "peer_messages_sent_total", peer="b") == 3000
    assert sample(b.metrics, "peer_messages_received_total", peer="a") == 3000
    # one RTT probe per peer per RTT_PROBE_INTERVAL_S while there is traffic
    await eventually(lambda: sample(a.metrics, "peer_rtt_seconds_count", peer="b") == 1)
    stats = a.transport.peer_stats()["b"]
    assert stats["sent_batches"] == 3 and stats["failed_batches"] == 0
    assert stats["queue_messages"] == 0 and stats["url"] == b.url
    assert isinstance(stats["rtt_ms"], float) and stats["rtt_ms"] > 0


async def test_once_the_stream_is_open_sends_of_one_loop_turn_go_out_as_one_frame(
        net: Net) -> None:
    a, b = await net.make(["a", "b"])
    a.transport.send(heartbeats("a", "b", 1))  # the sender task opens the stream
    await eventually(lambda: len(b.received) == 1)
    # an open, idle stream: what is sent during one loop turn is flushed after it, as one
    # frame, by a callback (the sender task is not woken)
    a.transport.send(heartbeats("a", "b", 2, first=1))
    a.transport.send(heartbeats("a", "b", 3, first=3))
    assert a.transport.peer_stats()["b"]["sent_batches"] == 1
    await asyncio.sleep(0)
    stats = a.transport.peer_stats()["b"]
    assert stats["sent_batches"] == 2 and stats["queue_messages"] == 0
    # more messages than a batch may carry go through the sender task, in order, after it
    a.transport.send(heartbeats("a", "b", 1500, first=6))
    a.transport.send(heartbeats("a", "b", 2, first=1506))  # behind that backlog
    await eventually(lambda: len(b.received) == 1508)
    assert b.received == heartbeats("a", "b", 1508)
    assert [len(batch) for batch in b.batches] == [1, 5, 1024, 478]


async def test_a_suspended_write_is_driven_to_its_end_or_cancelled() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    steps: list[str] = []

    async def write() -> None:
        steps.append("written")
        try:
            await gate
        except asyncio.CancelledError:
            steps.append("cancelled")
            raise
        steps.append("drained")

    coroutine = write()
    blocker = coroutine.send(None)
    assert steps == ["written"]
    finishing = asyncio.ensure_future(_awaiting(Suspended(coroutine, blocker)))
    await asyncio.sleep(0)
    assert not finishing.done()
    gate.set_result(None)
    await finishing
    assert steps == ["written", "drained"]

    gate = asyncio.get_running_loop().create_future()
    steps.clear()
    coroutine = write()
    stuck = asyncio.ensure_future(_awaiting(Suspended(coroutine, coroutine.send(None))))
    await asyncio.sleep(0)
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck
    assert steps == ["written", "cancelled"]


async def _awaiting(write: Suspended) -> None:
    await write


async def test_a_suspended_write_shares_its_future_with_other_waiters() -> None:
    """aiohttp's drain waiter is one future for every writer of a connection: another writer
    awaiting it before the suspended write's task first runs must not be refused (it was:
    "await wasn't used with future", which crashed a peer sender under load)."""
    drained: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    steps: list[str] = []

    async def write(name: str) -> None:
        await drained
        steps.append(name)

    coroutine = write("direct")
    suspended = Suspended(coroutine, coroutine.send(None))
    other = asyncio.ensure_future(write("sender"))  # runs before ``finishing`` first does
    finishing = asyncio.ensure_future(_awaiting(suspended))
    await asyncio.sleep(0)
    drained.set_result(None)
    await asyncio.gather(finishing, other)
    assert sorted(steps) == ["direct", "sender"]

    # a future that finished before the task came is resumed without being yielded
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def wait_ready() -> None:
        await ready
        steps.append("late")

    coroutine = wait_ready()
    blocker = coroutine.send(None)
    ready.set_result(None)
    await _awaiting(Suspended(coroutine, blocker))
    assert steps[-1] == "late"


async def test_three_nodes_each_link_keeps_its_own_order(net: Net) -> None:
    a, b, c = await net.make(["a", "b", "c"])
    to_b, to_c = heartbeats("a", "b", 50), heartbeats("a", "c", 50, first=1000)
    interleaved = [message for pair in zip(to_b, to_c, strict=True) for message in pair]
    for start in range(0, len(interleaved), 7):  # several send() calls, as the driver makes
        a.transport.send(interleaved[start:start + 7])
    from_c = heartbeats("c", "b", 20, first=5000)
    c.transport.send(from_c)
    await eventually(lambda: len(b.received) == 70 and len(c.received) == 50)
    assert [m for m in b.received if m.sender == "a"] == to_b
    assert [m for m in b.received if m.sender == "c"] == from_c
    assert c.received == to_c
    assert a.received == []


async def test_ping_answers_with_identity(net: Net) -> None:
    (a,) = await net.make(["a"])
    async with aiohttp.ClientSession() as session, session.get(a.url + PING_PATH) as response:
        assert response.status == 200
        assert await response.json() == {"node_id": "a", "cluster_id": CLUSTER, "lamport": 0}


# --- refusals --------------------------------------------------------------------------------

GOOD_HEADERS = {CLUSTER_HEADER: CLUSTER, FROM_HEADER: "x"}
GOOD_BODY = encode_messages_batch(CLUSTER, 7, [heartbeat("x", "a", 1)])


@pytest.mark.parametrize(("headers", "body", "status", "reason"), [
    ({CLUSTER_HEADER: "other", FROM_HEADER: "x"}, GOOD_BODY, 403, "cluster_id"),
    ({FROM_HEADER: "x"}, GOOD_BODY, 403, "cluster_id"),
    (GOOD_HEADERS, encode_messages_batch("other", 7, [heartbeat("x", "a", 1)]), 403,
     "cluster_id"),
    (GOOD_HEADERS, b"\xc1 not msgpack", 400, "decode"),
    (GOOD_HEADERS, b"", 400, "decode"),
    (GOOD_HEADERS, GOOD_BODY[:-3], 400, "decode"),
    ({CLUSTER_HEADER: CLUSTER}, GOOD_BODY, 400, "headers"),
    ({CLUSTER_HEADER: CLUSTER, FROM_HEADER: "a"}, GOOD_BODY, 400, "headers"),
])
async def test_bad_requests_are_refused_counted_and_the_server_keeps_serving(
        net: Net, headers: dict[str, str], body: bytes, status: int, reason: str) -> None:
    a, b = await net.make(["a", "b"])
    async with aiohttp.ClientSession() as session:
        for attempt in (1, 2):
            async with session.post(a.url + MESSAGES_PATH, data=body,
                                    headers=headers) as response:
                assert response.status == status
            assert sample(a.metrics, "peer_rejected_total", reason=reason) == attempt
        async with session.post(a.url + MESSAGES_PATH, data=GOOD_BODY,
                                headers=GOOD_HEADERS) as response:
            assert response.status == 204
    assert a.received == [heartbeat("x", "a", 1)]
    assert a.lamport.time == 8  # only the accepted batch (stamped 7) was observed
    b.transport.send(heartbeats("b", "a", 1))
    await eventually(lambda: len(a.received) == 2)


async def test_messages_for_another_node_or_from_an_impostor_are_dropped(net: Net) -> None:
    (a,) = await net.make(["a"])
    body = encode_messages_batch(CLUSTER, 1, [
        heartbeat("x", "a", 1), heartbeat("x", "z", 2), heartbeat("y", "a", 3),
        heartbeat("x", "a", 4)])
    async with aiohttp.ClientSession() as session, session.post(
            a.url + MESSAGES_PATH, data=body, headers=GOOD_HEADERS) as response:
        assert response.status == 204
    assert a.received == [heartbeat("x", "a", 1), heartbeat("x", "a", 4)]
    assert sample(a.metrics, "peer_messages_dropped_total", peer="x",
                  reason="wrong_recipient") == 1
    assert sample(a.metrics, "peer_messages_dropped_total", peer="y",
                  reason="sender_mismatch") == 1


async def test_oversized_body_is_refused_with_413() -> None:
    net = Net()
    (a,) = await net.make(["a"], settings=TransportSettings(max_body_bytes=2_000))
    try:
        body = encode_messages_batch(CLUSTER, 1, [append_1kb("x", "a", i) for i in (1, 2, 3)])
        async with aiohttp.ClientSession() as session, session.post(
                a.url + MESSAGES_PATH, data=body, headers=GOOD_HEADERS) as response:
            assert response.status == 413
        assert sample(a.metrics, "peer_rejected_total", reason="too_large") == 1
        assert a.received == []
    finally:
        await a.transport.close()


# --- sending: bounds, unknown peers, failures ---------------------------------------------


async def test_unknown_recipient_is_dropped_and_counted(net: Net) -> None:
    (a,) = await net.make(["a"])
    a.transport.send(heartbeats("a", "ghost", 2))
    assert sample(a.metrics, "peer_messages_dropped_total", peer="ghost",
                  reason="no_address") == 2
    assert "ghost" not in a.transport.peer_stats()


async def test_full_queue_drops_the_newest(net: Net) -> None:
    a, b = await net.make(["a", "b"], settings=TransportSettings(max_queue_messages=5))
    sent = heartbeats("a", "b", 20)
    a.transport.send(sent)  # the sender task has not run yet: the queue takes 5
    assert a.transport.peer_stats()["b"]["queue_messages"] == 5
    assert sample(a.metrics, "peer_messages_dropped_total", peer="b", reason="queue_full") == 15
    await eventually(lambda: len(b.received) == 5)
    assert b.received == sent[:5]


async def test_batches_are_split_to_fit_the_body_limit(net: Net) -> None:
    limit_bytes = 5_000
    a, b = await net.make(["a", "b"], settings=TransportSettings(max_body_bytes=limit_bytes))
    sent: list[Message] = [append_1kb("a", "b", i) for i in range(1, 11)]
    a.transport.send(sent)
    await eventually(lambda: len(b.received) == 10)
    assert b.received == sent
    assert all(len(encode_messages_batch(CLUSTER, a.lamport.time, batch)) <= limit_bytes
               for batch in b.batches)
    assert len(b.batches) >= 3  # 10 KiB cannot fit in fewer 5 KB bodies
    a.transport.send([append_1kb("a", "b", 11, size_bytes=limit_bytes)])
    await eventually(lambda: sample(a.metrics, "peer_messages_dropped_total", peer="b",
                                    reason="too_large") == 1)


async def test_peer_down_then_up_backs_off_then_delivers(net: Net) -> None:
    a, b = await net.make(["a", "b"], start=False)
    await a.start()
    lost = heartbeat("a", "b", 1)
    with capture_logs() as logs:
        a.transport.send([lost])
        await eventually(lambda: a.transport.peer_stats()["b"]["failed_batches"] == 1)
    stats = a.transport.peer_stats()["b"]
    assert stats["backoff_ms"] == FAST.backoff_initial_ms
    assert "ClientConnectorError" in str(stats["last_error"])
    assert sample(a.metrics, "peer_messages_dropped_total", peer="b", reason="send_failed") == 1
    await b.start()
    delivered = heartbeat("a", "b", 2)
    with capture_logs() as more_logs:
        a.transport.send([delivered])
        await eventually(lambda: len(b.received) == 1)
    assert b.received == [delivered]  # the failed batch was dropped, not retried
    stats = a.transport.peer_stats()["b"]
    assert stats["backoff_ms"] == 0 and stats["sent_batches"] == 1
    assert [(line["event"], line["peer"]) for line in logs + more_logs] == [
        ("peer unreachable", "b"), ("peer reachable again", "b")]


SLOW_BACKOFF = TransportSettings(backoff_initial_ms=10_000, backoff_max_ms=10_000)
"""A backoff (5-10 s) far longer than any of these tests waits."""


async def test_greet_peers_opens_a_stream_to_every_peer_with_nothing_sent(net: Net) -> None:
    a, b, c = await net.make(["a", "b", "c"])
    a.transport.greet_peers()
    await eventually(lambda: len(b.transport._inbound_streams) == 1
                     and len(c.transport._inbound_streams) == 1)
    assert b.received == [] and c.received == []
    assert a.transport.peer_stats()["b"]["sent_batches"] == 0  # a greeting is not a batch
    a.transport.send([heartbeat("a", "b", 1)])  # the sender writes on the greeted stream
    await eventually(lambda: len(b.received) == 1)
    assert len(b.transport._inbound_streams) == 1


async def test_a_greeting_to_a_peer_that_is_down_is_not_a_failure(net: Net) -> None:
    a, _ = await net.make(["a", "b"], start=False)
    await a.start()
    with capture_logs() as logs:
        a.transport.greet_peers()
        await asyncio.sleep(0.2)
    stats = a.transport.peer_stats()["b"]
    assert (stats["failed_batches"], stats["backoff_ms"]) == (0, 0)
    assert [line["event"] for line in logs if line["log_level"] != "debug"] == []
    assert [line["event"] for line in logs] == ["peer not reachable at start"]  # it was tried


async def test_a_peer_that_reaches_us_cuts_our_backoff_to_it_short(net: Net) -> None:
    """``a`` failed to write to ``b`` and backs off for 5-10 s; ``b`` comes up and greets
    ``a``, so ``a``'s next write goes out at once instead."""
    a, b = await net.make(["a", "b"], settings=SLOW_BACKOFF, start=False)
    await a.start()
    a.transport.send([heartbeat("a", "b", 1)])
    await eventually(lambda: a.transport.peer_stats()["b"]["failed_batches"] == 1)
    await b.start()
    a.transport.send([heartbeat("a", "b", 2)])
    await asyncio.sleep(0.3)
    assert b.received == []  # still backing off: nothing reached b yet
    b.transport.greet_peers()
    await eventually(lambda: len(b.received) == 1, timeout_s=2.0)
    assert b.received == [heartbeat("a", "b", 2)]
    assert a.transport.peer_stats()["b"]["backoff_ms"] == 0


async def test_a_crashed_sender_is_logged_and_replaced(net: Net) -> None:
    a, b = await net.make(["a", "b"], settings=TransportSettings(max_batch_messages=1))
    unencodable = Entry(index=1, term=1, data=object())  # type: ignore[arg-type]
    with capture_logs() as logs:
        a.transport.send([AppendEntries(1, "a", "b", 0, 0, (unencodable,), 0),
                          *heartbeats("a", "b", 2)])
        await eventually(lambda: len(logs) == 1)
    assert (logs[0]["event"], logs[0]["log_level"]) == ("peer sender crashed", "error")
    # the two heartbeats still queued behind the bad batch went with the sender
    assert sample(a.metrics, "peer_messages_dropped_total", peer="b", reason="send_failed") == 2
    a.transport.send(heartbeats("a", "b", 2, first=5))
    await eventually(lambda: len(b.received) == 2)
    assert b.received == heartbeats("a", "b", 2, first=5)


def test_backoff_doubles_from_initial_to_max_with_bounded_jitter() -> None:
    settings = TransportSettings(backoff_initial_ms=50, backoff_max_ms=300)
    ceilings = [0]
    for _ in range(5):
        ceilings.append(next_backoff_ms(ceilings[-1], settings))
    assert ceilings == [0, 50, 100, 200, 300, 300]
    rng = random.Random(1)
    assert backoff_sleep_s(50, settings, rng) == pytest.approx(0.050)
    waits_s = [backoff_sleep_s(300, settings, rng) for _ in range(1000)]
    assert 0.150 <= min(waits_s) < 0.160 and 0.290 < max(waits_s) <= 0.300


# --- addresses -------------------------------------------------------------------------------


def test_address_book_keeps_checked_urls() -> None:
    book = AddressBook({"a": "http://10.0.0.1:7001/", "b": "https://b.example:7001"})
    assert book.snapshot() == {"a": "http://10.0.0.1:7001", "b": "https://b.example:7001"}
    book.set("a", "http://10.0.0.9:7001")
    book.remove("b")
    book.remove("never-known")
    copy = book.snapshot()
    copy["c"] = "http://elsewhere:1"
    assert book.snapshot() == {"a": "http://10.0.0.9:7001"}
    assert book.get("b") is None and book.get("c") is None
    for bad in ("10.0.0.1:7001", "ftp://a:1", "http://", "http://a:99999", "http://[::1"):
        with pytest.raises(ValueError, match="peer URL"):
            book.set("a", bad)
    with pytest.raises(ValueError, match="node id"):
        book.set("", "http://a:1")
    assert book.get("a") == "http://10.0.0.9:7001"


async def test_a_sender_url_is_learned_from_its_header(net: Net) -> None:
    a, b = await net.make(["a", "b"], unknown_to=["b"])
    assert b.addresses.get("a") is None
    a.transport.send(heartbeats("a", "b", 1))
    await eventually(lambda: len(b.received) == 1)
    assert b.addresses.get("a") == a.url
    b.transport.send(heartbeats("b", "a", 1))
    await eventually(lambda: len(a.received) == 1)


async def test_a_bad_advertised_url_is_ignored_but_the_messages_accepted(net: Net) -> None:
    (a,) = await net.make(["a"])
    headers = {**GOOD_HEADERS, PEER_URL_HEADER: "ftp://nowhere"}
    async with aiohttp.ClientSession() as session, session.post(
            a.url + MESSAGES_PATH, data=GOOD_BODY, headers=headers) as response:
        assert response.status == 204
    assert a.addresses.get("x") is None
    assert a.received == [heartbeat("x", "a", 1)]


# --- fault injection -------------------------------------------------------------------------


async def test_blocking_on_the_sender_drops_before_any_request(net: Net) -> None:
    a, b = await net.make(["a", "b"], fault_seed=1)
    assert a.faults is not None
    a.faults.configure(blocked_peers=["b"])
    a.transport.send(heartbeats("a", "b", 3))
    assert sample(a.metrics, "peer_messages_dropped_total", peer="b", reason="fault") == 3
    assert a.transport.peer_stats()["b"]["queue_messages"] == 0
    a.faults.clear()
    a.transport.send(heartbeats("a", "b", 1, first=9))
    await eventually(lambda: len(b.received) == 1)
    assert b.received == [heartbeat("a", "b", 9)]


async def test_blocking_on_the_receiver_drops_what_arrives(net: Net) -> None:
    a, b = await net.make(["a", "b"], fault_seed=1)
    assert b.faults is not None
    b.faults.configure(blocked_peers=["a"])
    a.transport.send(heartbeats("a", "b", 3))
    await eventually(lambda: sample(b.metrics, "peer_messages_dropped_total", peer="a",
                                    reason="fault") == 3)
    assert b.received == []
    assert a.transport.peer_stats()["b"]["sent_batches"] == 1  # the request itself succeeded


async def test_drop_rate_loses_some_and_keeps_the_order_of_the_rest(net: Net) -> None:
    a, b = await net.make(["a", "b"], fault_seed=7)
    assert a.faults is not None
    a.faults.configure(drop_rate=0.5)
    sent = heartbeats("a", "b", 200)
    a.transport.send(sent)
    dropped = sample(a.metrics, "peer_messages_dropped_total", peer="b", reason="fault")
    assert 60 < dropped < 140
    await eventually(lambda: len(b.received) == 200 - dropped)
    assert [m for m in sent if m in b.received] == b.received


async def test_delay_holds_messages_back(net: Net) -> None:
    a, b = await net.make(["a", "b"], fault_seed=1)
    assert a.faults is not None
    a.faults.configure(delay_ms=80)
    started_s = time.monotonic()
    a.transport.send(heartbeats("a", "b", 3))
    await eventually(lambda: len(b.received) == 3)
    assert time.monotonic() - started_s >= 0.080
    assert b.received == heartbeats("a", "b", 3)


async def test_jitter_reorders_but_loses_nothing(net: Net) -> None:
    a, b = await net.make(["a", "b"], fault_seed=3)
    assert a.faults is not None
    a.faults.configure(delay_ms=20, jitter_ms=20)
    sent = heartbeats("a", "b", 40)
    a.transport.send(sent)
    await eventually(lambda: len(b.received) == 40)
    assert sorted(b.received, key=sent.index) == sent
    assert b.received != sent


async def test_duplicate_rate_one_sends_every_message_twice(net: Net) -> None:
    a, b = await net.make(["a", "b"], fault_seed=1)
    assert a.faults is not None
    a.faults.configure(duplicate_rate=1.0)
    sent = heartbeats("a", "b", 3)
    a.transport.send(sent)
    await eventually(lambda: len(b.received) == 6)
    assert b.received == [m for m in sent for _ in (1, 2)]


# --- closing ---------------------------------------------------------------------------------


async def test_a_busy_port_fails_start_and_close_still_cleans_up(net: Net) -> None:
    (a,) = await net.make(["a"])
    book = AddressBook({"a2": a.url})
    clash = PeerTransport(node_id="a2", cluster_id=CLUSTER, self_peer_url=a.url, addresses=book,
                          on_messages=lambda _: None, lamport=LamportClock(),
                          metrics=NodeMetrics(), settings=FAST)
    with pytest.raises(OSError):
        await clash.start("127.0.0.1", a.port)
    await clash.close()  # no "Unclosed client session": warnings are errors here


async def test_close_stops_senders_cancels_delays_and_frees_the_port() -> None:
    net = Net()
    a, b = await net.make(["a", "b"], fault_seed=1)
    assert a.faults is not None
    a.transport.send(heartbeats("a", "b", 1))
    await eventually(lambda: len(b.received) == 1)
    a.faults.configure(delay_ms=10_000)
    a.transport.send(heartbeats("a", "b", 1))  # waits on a timer when close comes
    started_s = time.monotonic()
    await a.transport.close()
    await b.transport.close()
    assert time.monotonic() - started_s < 2.0
    a.transport.send(heartbeats("a", "b", 2))
    assert sample(a.metrics, "peer_messages_dropped_total", peer="b", reason="closed") == 2
    await a.transport.close()  # a second close is harmless
    await asyncio.sleep(0.02)
    assert b.received == [heartbeat("a", "b", 0)]
    for node in (a, b):
        with socket.socket() as sock:  # binds only if nothing listens there any more
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", node.port))


# --- transfers: a message larger than a frame --------------------------------------------------

FRAME_BYTES = 1024
CHUNK_BYTES = FRAME_BYTES - FRAGMENT_OVERHEAD_BYTES
FRAMED = TransportSettings(request_timeout_ms=1_000, backoff_initial_ms=20, backoff_max_ms=80,
                           max_frame_bytes=FRAME_BYTES)


def install_snapshot(sender: str, recipient: str, size_bytes: int, index: int = 7
                     ) -> InstallSnapshot:
    image = bytes(range(256)) * (size_bytes // 256)
    meta = SnapshotMeta(index, 1, Membership(frozenset({sender, recipient})))
    return InstallSnapshot(term=1, sender=sender, recipient=recipient,
                           snapshot=Snapshot(meta, image))


def fragment_count(message: Message, stamp: int) -> int:
    return -(-len(encode_messages_batch(CLUSTER, stamp, [message])) // CHUNK_BYTES)


async def after_first_fragment(node: Node, peer: str) -> int:
    """Fragments still to send once the first has gone (yielding one loop turn at a time)."""
    for _ in range(1_000):
        await asyncio.sleep(0)
        stats = node.transport.peer_stats()[peer]
        if stats["sent_fragments"]:
            left = stats["transfer_fragments_left"]
            assert isinstance(left, int)
            return left
    raise AssertionError("no fragment went out")


@pytest.mark.parametrize("path", ["direct", "queued"])
async def test_a_snapshot_larger_than_a_frame_streams_between_heartbeats(
        net: Net, path: str) -> None:
    """40 fragments of 1 KiB: heartbeats sent while they stream arrive before the snapshot,
    in order, by a direct write (no faults) or through the sender's queue (fault injection
    on, nothing configured, so every message is queued)."""
    a, b = await net.make(["a", "b"], settings=FRAMED,
                          fault_seed=None if path == "direct" else 1)
    a.transport.send(heartbeats("a", "b", 1))  # opens the stream
    await eventually(lambda: len(b.received) == 1)
    snapshot = install_snapshot("a", "b", 40 * CHUNK_BYTES)
    count = fragment_count(snapshot, a.lamport.time + 1)
    a.transport.send([snapshot])
    left = await after_first_fragment(a, "b")
    assert left == count - 1, "one fragment per sender turn, not the whole batch at once"
    sent = heartbeats("a", "b", 1)
    for commit in range(1, 1_000):  # one heartbeat per loop turn while the transfer lasts
        if not a.transport.peer_stats()["b"]["transfer_fragments_left"]:
            break
        a.transport.send(heartbeats("a", "b", 1, first=commit))
        sent.extend(heartbeats("a", "b", 1, first=commit))
        await asyncio.sleep(0)
    await eventually(lambda: len(b.received) == len(sent) + 1)
    assert [m for m in b.received if isinstance(m, Heartbeat)] == sent  # order kept
    position = b.received.index(snapshot)  # arrived whole, equal to what was sent
    assert position > len(sent) // 2, "the heartbeats did not wait for the snapshot"
    assert [snapshot] in b.batches
    assert sample(a.metrics, "peer_fragments_total", peer="b", direction="sent") == count
    assert sample(b.metrics, "peer_fragments_total", peer="a", direction="received") == count
    assert sample(a.metrics, "peer_messages_sent_total", peer="b") == len(sent) + 1
    stats = a.transport.peer_stats()["b"]
    assert stats["sent_fragments"] == count and stats["transfer_fragments_left"] == 0
    assert sample(b.metrics, "peer_rejected_total", reason="fragment_order") == 0


async def test_a_snapshot_sent_again_while_one_streams_is_dropped(net: Net) -> None:
    """Raft resends InstallSnapshot after an election timeout without an answer; while the
    first copy still streams to the peer, the transport drops the new ones."""
    a, b = await net.make(["a", "b"], settings=FRAMED)
    first = install_snapshot("a", "b", 30 * CHUNK_BYTES)
    a.transport.send([first])
    assert await after_first_fragment(a, "b") > 0
    a.transport.send([first, *heartbeats("a", "b", 2)])
    a.transport.send([install_snapshot("a", "b", 30 * CHUNK_BYTES, index=9)])
    await eventually(lambda: len(b.received) == 3)
    assert b.received.index(first) == 2  # the heartbeats went ahead of it
    assert sample(a.metrics, "peer_messages_dropped_total", peer="b",
                  reason="transfer_busy") == 2
    later = install_snapshot("a", "b", 30 * CHUNK_BYTES, index=11)
    a.transport.send([later])  # the link is free again
    await eventually(lambda: len(b.received) == 4)
    assert b.received[-1] == later


async def test_any_message_over_a_frame_streams_but_not_past_the_body_limit(net: Net) -> None:
    settings = TransportSettings(max_frame_bytes=FRAME_BYTES, max_body_bytes=6_000)
    a, b = await net.make(["a", "b"], settings=settings)
    big_append = append_1kb("a", "b", 1, size_bytes=5_000)
    a.transport.send([big_append, *heartbeats("a", "b", 2)])
    await eventually(lambda: len(b.received) == 3)
    assert big_append in b.received
    a.transport.send([append_1kb("a", "b", 2, size_bytes=6_000)])  # over max_body_bytes
    await eventually(lambda: sample(a.metrics, "peer_messages_dropped_total", peer="b",
                                    reason="too_large") == 1)
    snapshot = install_snapshot("a", "b", 20_000)  # a snapshot may exceed the body limit
    a.transport.send([snapshot])
    await eventually(lambda: len(b.received) == 4)
    assert b.received[-1] == snapshot


async def test_a_broken_stream_drops_the_transfer_and_a_resend_gets_through(net: Net) -> None:
    a, b = await net.make(["a", "b"], settings=FRAMED)
    snapshot = install_snapshot("a", "b", 2_000 * CHUNK_BYTES)  # a few hundred ms
    a.transport.send([snapshot])
    assert await after_first_fragment(a, "b") > 0
    await eventually(lambda: sample(b.metrics, "peer_fragments_total", peer="a",
                                    direction="received") > 0)
    for stream in list(b.transport._inbound_streams):
        await stream.close()
    await eventually(lambda: sample(a.metrics, "peer_messages_dropped_total", peer="b",
                                    reason="send_failed") == 1)
    await eventually(lambda: sample(b.metrics, "peer_rejected_total",
                                    reason="fragment_interrupted") == 1)
    assert b.received == []
    a.transport.send([snapshot])  # Raft's next attempt
    await eventually(lambda: b.received == [snapshot])


async def test_the_receiver_refuses_broken_transfers_and_keeps_the_stream(net: Net) -> None:
    (b,) = await net.make(["b"])
    good = encode_messages_batch(CLUSTER, 5, heartbeats("x", "b", 3))

    def frame(transfer_id: int, index: int, count: int, total: int, chunk: bytes) -> bytes:
        return encode_fragment(transfer_id, index, count, total, chunk)

    frames = [
        frame(1, 1, 3, 30, b"x" * 10),  # no transfer started: fragment_order
        frame(2, 0, 3, 30, b"x" * 10),
        frame(3, 0, 3, 30, b"x" * 10),  # abandons 2: fragment_interrupted
        frame(3, 2, 3, 30, b"x" * 10),  # skips 1: fragment_order
        frame(4, 0, 2, 10, b"x" * 8),
        frame(4, 1, 2, 10, b"x" * 5),  # overfills: fragment_size
        frame(5, 0, 2, 10, b"x" * 4),
        frame(5, 1, 2, 10, b"x" * 4),  # ends short: fragment_size
        frame(6, 0, 2, 12, b"not a batch!"[:6]),
        frame(6, 1, 2, 12, b"not a batch!"[6:]),  # whole, but not a batch: decode
        frame(7, 0, 3, len(good), good[:10]),
        encode_messages_batch(CLUSTER, 6, heartbeats("x", "b", 1, first=9)),  # between pieces
        frame(7, 1, 3, len(good), good[10:20]),
        frame(7, 2, 3, len(good), good[20:]),  # delivered
        frame(8, 0, 2, 20, b"x" * 10),  # the stream closes before the end
    ]
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(b.url + STREAM_PATH, headers=GOOD_HEADERS) as stream:
            for data in frames:
                await stream.send_bytes(data)
        await eventually(lambda: sample(b.metrics, "peer_rejected_total",
                                        reason="fragment_interrupted") == 2)
    assert b.received == [heartbeat("x", "b", 9), *heartbeats("x", "b", 3)]
    assert {reason: sample(b.metrics, "peer_rejected_total", reason=reason)
            for reason in ("fragment_order", "fragment_size", "decode")} == {
        "fragment_order": 2, "fragment_size": 2, "decode": 1}
    assert sample(b.metrics, "peer_fragments_total", peer="x", direction="received") == 14


def test_max_frame_bytes_is_a_validated_setting(tmp_path: object) -> None:
    required = {"node.id": "n1", "node.data_dir": str(tmp_path),
                "node.client_listen": "127.0.0.1:7001", "node.peer_listen": "127.0.0.1:8001",
                "members": "n1=http://127.0.0.1:8001;http://127.0.0.1:7001"}
    assert load_config(None, {}, required).transport.max_frame_bytes == 4 * 1024 * 1024
    assert load_config(None, {"CONCORD_TRANSPORT_MAX_FRAME_BYTES": "65536"},
                       required).transport.max_frame_bytes == 65_536
    for bad in ("0", "1023", str(512 * 1024 * 1024 + 1), "big"):
        with pytest.raises(ConfigError, match=r"(?i)max_frame_bytes"):
            load_config(None, {"CONCORD_TRANSPORT_MAX_FRAME_BYTES": bad}, required)
