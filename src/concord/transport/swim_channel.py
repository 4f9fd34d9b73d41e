"""The SWIM channel: membership messages between nodes over the peer listener.

A ``MessageChannel`` (a stream per peer, ``GET /swim/v1/stream``; ``POST /swim/v1/messages``
for tools) carrying ``concord.wire.swim_codec`` batches. ``send`` groups messages by
recipient into one batch each; SWIM tolerates loss, so a batch that fails is dropped and
counted, never retried. A received message is handed on only if it names this node as
recipient and the sending node (the stream's or request's ``X-Concord-From``) as sender.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Final

from concord.detector.messages import SwimMessage
from concord.observability.metrics import NodeMetrics
from concord.transport.faults import FaultInjector
from concord.transport.message_channel import ChannelFormat, MessageChannel
from concord.wire.swim_codec import MAX_SWIM_BATCH_BYTES, decode_swim_batch, encode_swim_batch

SWIM_MESSAGES_PATH: Final = "/swim/v1/messages"
SWIM_STREAM_PATH: Final = "/swim/v1/stream"


def _decode(body: bytes) -> tuple[str, Sequence[SwimMessage]]:
    batch = decode_swim_batch(body)
    return batch.cluster_id, batch.messages


SWIM_FORMAT: Final[ChannelFormat[SwimMessage]] = ChannelFormat(
    path=SWIM_MESSAGES_PATH, stream_path=SWIM_STREAM_PATH, encode_batch=encode_swim_batch,
    decode_batch=_decode, max_batch_bytes=MAX_SWIM_BATCH_BYTES,
    backlog_drop_reason="swim_backlog")


class SwimChannel(MessageChannel[SwimMessage]):
    """Both ends of SWIM's peer traffic for one node. Use it from the node's event loop."""

    def __init__(self, *, node_id: str, cluster_id: str, timeout_s: float,
                 on_messages: Callable[[Sequence[SwimMessage]], None],
                 metrics: NodeMetrics, faults: FaultInjector | None = None) -> None:
        super().__init__(SWIM_FORMAT, node_id=node_id, cluster_id=cluster_id,
                         timeout_s=timeout_s, on_messages=self._accept, metrics=metrics,
                         faults=faults)
        self._deliver = on_messages
        self._self_id = node_id

    def send(self, messages: Sequence[SwimMessage],
             address_of: Callable[[str], str | None]) -> None:
        """Send ``messages``, one batch per recipient, to the peer URL ``address_of`` gives."""
        by_recipient: dict[str, list[SwimMessage]] = defaultdict(list)
        for message in messages:
            assert message.sender == self._self_id
            by_recipient[message.recipient].append(message)
        for recipient, batch in by_recipient.items():
            self.send_batch(recipient, address_of(recipient), batch)

    def _accept(self, sender: str, messages: Sequence[SwimMessage]) -> None:
        accepted = [m for m in messages if m.recipient == self._self_id and m.sender == sender]
        if len(accepted) < len(messages):
            self._drop(sender, "wrong_recipient", len(messages) - len(accepted))
        if accepted:
            self._deliver(accepted)
