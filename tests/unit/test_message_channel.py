"""Tests of the fire-and-forget message channel (SWIM's configuration of it), on real sockets.

Two peer transports on loopback each serve a SwimChannel; the tests check what arrives and in
which order, that batches share one stream per peer (re-opened when the peer comes back),
that what cannot be written is dropped and counted, and that the transport's fault injector
cuts and drops channel traffic as it does Raft's.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence

import aiohttp
import pytest
from test_transport import CLUSTER, FAST, Net, Node, eventually, free_port, sample

from concord.detector.messages import Gossip, Ping, SwimMessage
from concord.observability.metrics import NodeMetrics
from concord.transport.faults import FaultInjector
from concord.transport.peer import CLUSTER_HEADER, FROM_HEADER, PeerTransport
from concord.transport.swim_channel import (
    SWIM_FORMAT,
    SWIM_MESSAGES_PATH,
    SWIM_STREAM_PATH,
    SwimChannel,
)
from concord.wire.swim_codec import encode_swim_batch


class Pair:
    """Nodes a and b, each with a SwimChannel on its peer listener and an inbox."""

    def __init__(self, nodes: Sequence[Node], faults: dict[str, FaultInjector]) -> None:
        self.nodes = {node.node_id: node for node in nodes}
        self.inbox: dict[str, list[SwimMessage]] = {node.node_id: [] for node in nodes}
        self.metrics = {node.node_id: NodeMetrics() for node in nodes}
        self.channels = {node.node_id: self.channel(node, faults.get(node.node_id))
                         for node in nodes}

    def channel(self, node: Node, faults: FaultInjector | None = None) -> SwimChannel:
        made = SwimChannel(node_id=node.node_id, cluster_id=CLUSTER, timeout_s=1.0,
                           on_messages=self.inbox[node.node_id].extend,
                           metrics=self.metrics[node.node_id], faults=faults)
        made.attach(node.transport)
        return made

    def send(self, sender: str, recipient: str, count: int) -> None:
        messages = [Gossip(sender, recipient, ()) for _ in range(count)]
        self.channels[sender].send(messages, lambda peer: self.nodes[peer].url)

    def send_pings(self, sender: str, recipient: str, seqs: range) -> None:
        """One batch per ping (``seq`` tells them apart)."""
        for seq in seqs:
            self.channels[sender].send([Ping(sender, recipient, seq, 0)],
                                       lambda peer: self.nodes[peer].url)

    def seqs(self, node_id: str) -> list[int]:
        return [m.seq for m in self.inbox[node_id] if isinstance(m, Ping)]


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    network = Net()
    yield network
    for node in network.nodes:
        await node.transport.close()


async def pair(net: Net, faults: dict[str, FaultInjector] | None = None) -> Pair:
    nodes = await net.make(["a", "b"], start=False)
    made = Pair(nodes, faults or {})
    for node in nodes:
        await node.start()
    for channel in made.channels.values():
        await channel.open()
    return made


async def close(made: Pair) -> None:
    for channel in made.channels.values():
        await channel.close()


async def test_a_batch_arrives_whole(net: Net) -> None:
    made = await pair(net)
    made.send("a", "b", 3)
    await eventually(lambda: len(made.inbox["b"]) == 3)
    assert all(m.sender == "a" and m.recipient == "b" for m in made.inbox["b"])
    await close(made)


async def test_a_blocked_peer_is_cut_on_send_and_on_receive(net: Net) -> None:
    sender_faults = FaultInjector(random.Random(1))
    receiver_faults = FaultInjector(random.Random(2))
    made = await pair(net, {"a": sender_faults, "b": receiver_faults})
    sender_faults.configure(blocked_peers=["b"])
    made.send("a", "b", 2)
    assert sample(made.metrics["a"], "peer_messages_dropped_total", peer="b", reason="fault") == 2
    sender_faults.clear()
    receiver_faults.configure(blocked_peers=["a"])
    made.send("a", "b", 4)
    await eventually(lambda: sample(made.metrics["b"], "peer_messages_dropped_total",
                                    peer="a", reason="fault") == 4)
    receiver_faults.clear()
    made.send("a", "b", 1)
    await eventually(lambda: len(made.inbox["b"]) == 1)
    await close(made)


async def test_delay_holds_a_batch_back(net: Net) -> None:
    faults = FaultInjector(random.Random(3))
    made = await pair(net, {"a": faults})
    faults.configure(delay_ms=300)
    made.send("a", "b", 1)
    await asyncio.sleep(0.15)
    assert made.inbox["b"] == []
    await eventually(lambda: len(made.inbox["b"]) == 1)
    await close(made)


async def test_batches_share_one_stream_and_keep_their_order(net: Net) -> None:
    made = await pair(net)
    made.send_pings("a", "b", range(5))  # one loop turn: the first opens the stream
    await eventually(lambda: len(made.inbox["b"]) == 5)
    for seq in range(5, 40):  # each from its own turn, written directly on the open stream
        made.send_pings("a", "b", range(seq, seq + 1))
        await asyncio.sleep(0)
    await eventually(lambda: len(made.inbox["b"]) == 40)
    assert made.seqs("b") == list(range(40))
    stats = made.channels["a"].link_stats()["b"]
    assert stats["streams_opened"] == 1 and stats["open"] and stats["backlog"] == 0
    await close(made)


async def test_a_restarted_peer_gets_a_new_stream(net: Net) -> None:
    made = await pair(net)
    made.send_pings("a", "b", range(3))
    await eventually(lambda: len(made.inbox["b"]) == 3)
    b = made.nodes["b"]
    await made.channels["b"].close()
    await b.transport.close()
    await eventually(lambda: not made.channels["a"].link_stats()["b"]["open"])
    b.transport = PeerTransport(  # the same node, on the same port, started again
        node_id="b", cluster_id=CLUSTER, self_peer_url=b.url, addresses=b.addresses,
        on_messages=b.batches.append, lamport=b.lamport, metrics=b.metrics, settings=FAST)
    made.channels["b"] = made.channel(b)
    await b.start()
    await made.channels["b"].open()
    made.send_pings("a", "b", range(3, 6))
    await eventually(lambda: len(made.inbox["b"]) == 6)
    assert made.seqs("b") == list(range(6))
    assert made.channels["a"].link_stats()["b"]["streams_opened"] == 2
    await close(made)


async def test_an_unreachable_peer_drops_what_waits_and_a_full_backlog_the_newest(
        net: Net) -> None:
    made = await pair(net)
    nobody = f"http://127.0.0.1:{free_port()}"
    sent_in_one_turn = SWIM_FORMAT.max_backlog_per_peer + 3
    for seq in range(sent_in_one_turn):
        made.channels["a"].send([Ping("a", "b", seq, 0)], lambda peer: nobody)
    metrics = made.metrics["a"]
    assert sample(metrics, "peer_messages_dropped_total", peer="b", reason="swim_backlog") == 3
    await eventually(lambda: sample(metrics, "peer_messages_dropped_total", peer="b",
                                    reason="send_failed") == SWIM_FORMAT.max_backlog_per_peer)
    assert made.channels["a"].link_stats()["b"]["backlog"] == 0
    await close(made)


async def test_a_peer_that_never_answers_the_upgrade_times_out(net: Net) -> None:
    made = await pair(net)
    connected = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        await reader.read()  # reads the upgrade request and answers nothing
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    made.channels["a"].send([Ping("a", "b", 1, 0)], lambda peer: f"http://127.0.0.1:{port}")
    await connected.wait()
    await asyncio.sleep(0.5)  # the channel's timeout is 1 s
    assert sample(made.metrics["a"], "peer_messages_dropped_total", peer="b",
                  reason="send_failed") == 0
    await eventually(lambda: sample(made.metrics["a"], "peer_messages_dropped_total", peer="b",
                                    reason="send_failed") == 1)
    server.close()
    await close(made)


async def test_bad_frames_and_posts_are_refused_and_counted_good_ones_delivered(
        net: Net) -> None:
    made = await pair(net)
    url, metrics = made.nodes["b"].url, made.metrics["b"]
    good = encode_swim_batch(CLUSTER, [Ping("a", "b", 7, 0)])
    headers = {CLUSTER_HEADER: CLUSTER, FROM_HEADER: "a"}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url + SWIM_STREAM_PATH, headers=headers) as stream:
            await stream.send_bytes(b"\x93not a batch")
            await stream.send_bytes(encode_swim_batch("other-cluster", [Ping("a", "b", 1, 0)]))
            await stream.send_str("text is not a batch")
            await stream.send_bytes(good)
            await eventually(lambda: made.seqs("b") == [7])
        async with session.post(url + SWIM_MESSAGES_PATH, data=b"junk",
                                headers=headers) as answer:
            assert answer.status == 400
        async with session.post(url + SWIM_MESSAGES_PATH, data=good,
                                headers={**headers, CLUSTER_HEADER: "other"}) as answer:
            assert answer.status == 403
        async with session.post(url + SWIM_MESSAGES_PATH, data=good,
                                headers={CLUSTER_HEADER: CLUSTER}) as answer:
            assert answer.status == 400  # no sender named
        async with session.post(url + SWIM_MESSAGES_PATH, data=good, headers=headers) as answer:
            assert answer.status == 204
    assert made.seqs("b") == [7, 7]
    assert sample(metrics, "peer_rejected_total", reason="decode") == 3
    assert sample(metrics, "peer_rejected_total", reason="cluster_id") == 2
    assert sample(metrics, "peer_rejected_total", reason="headers") == 1
    await close(made)


async def test_drain_waits_for_the_backlog_to_be_written(net: Net) -> None:
    made = await pair(net)
    made.send_pings("a", "b", range(6))  # one turn: the stream is opened, then all written
    assert made.channels["a"].link_stats()["b"]["backlog"] == 6
    await made.channels["a"].drain(2.0)
    assert made.channels["a"].link_stats()["b"]["backlog"] == 0
    await eventually(lambda: made.seqs("b") == list(range(6)))
    await close(made)
