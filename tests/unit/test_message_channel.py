"""Tests of the fire-and-forget message channel (SWIM's configuration of it), on real sockets.

Two peer transports on loopback each serve a SwimChannel; the tests check what arrives, and
that the transport's fault injector cuts and drops channel traffic as it does Raft's.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence

import pytest
from test_transport import CLUSTER, Net, Node, eventually, sample

from concord.detector.messages import Gossip, SwimMessage
from concord.observability.metrics import NodeMetrics
from concord.transport.faults import FaultInjector
from concord.transport.swim_channel import SwimChannel


class Pair:
    """Nodes a and b, each with a SwimChannel on its peer listener and an inbox."""

    def __init__(self, nodes: Sequence[Node], faults: dict[str, FaultInjector]) -> None:
        self.nodes = {node.node_id: node for node in nodes}
        self.inbox: dict[str, list[SwimMessage]] = {node.node_id: [] for node in nodes}
        self.metrics = {node.node_id: NodeMetrics() for node in nodes}
        self.channels = {
            node.node_id: SwimChannel(node_id=node.node_id, cluster_id=CLUSTER, timeout_s=1.0,
                                      on_messages=self.inbox[node.node_id].extend,
                                      metrics=self.metrics[node.node_id],
                                      faults=faults.get(node.node_id))
            for node in nodes}
        for node_id, channel in self.channels.items():
            channel.attach(self.nodes[node_id].transport)

    def send(self, sender: str, recipient: str, count: int) -> None:
        messages = [Gossip(sender, recipient, ()) for _ in range(count)]
        self.channels[sender].send(messages, lambda peer: self.nodes[peer].url)


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
