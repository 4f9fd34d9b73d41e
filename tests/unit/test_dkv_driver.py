"""The quorum store's driver (``concord.runtime.dkv.DkvDriver``) on a real SQLite store, with
its peer channel replaced by a recorder: which messages leave before a turn's transaction
commits, and which wait for it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, cast

import pytest

from concord.config import DkvSettings
from concord.dkv.messages import DkvMessage, PutAck, ReplicaPut
from concord.dkv.versions import EMPTY_CONTEXT, Dot, Sibling, VersionedObject
from concord.observability.metrics import NodeMetrics
from concord.runtime.dkv import DkvDriver
from concord.runtime.service import MemberInfo, NodeService
from concord.transport.addresses import AddressBook

PEERS = ("n2", "n3")


class _Members:
    """The one part of ``NodeService`` the driver reads: the Raft membership."""

    def members(self) -> list[MemberInfo]:
        return [MemberInfo(node, f"http://127.0.0.1:{7100 + i}", f"http://127.0.0.1:{7000 + i}",
                           "voter", node == "n1")
                for i, node in enumerate(("n1", *PEERS))]


@pytest.fixture
def driver(tmp_path: Path) -> Any:
    addresses = AddressBook({node: f"http://127.0.0.1:{7101 + i}"
                             for i, node in enumerate(PEERS)})
    dkv = DkvDriver(DkvSettings(), node_id="n1", cluster_id="test", data_dir=tmp_path,
                    service=cast(NodeService, _Members()), addresses=addresses,
                    metrics=NodeMetrics(), wall_clock_ns=time.time_ns, alive_members=None)
    dkv.open()
    dkv._refresh_view()
    yield dkv
    assert dkv.store is not None
    dkv.store.close()


def _record_sends(driver: DkvDriver) -> list[tuple[str, type, bool]]:
    """(recipient, message kind, whether the turn's transaction was still open) per send."""
    sent: list[tuple[str, type, bool]] = []
    store = driver.store
    assert store is not None

    def send_batch(recipient: str, address: str | None, batch: list[DkvMessage]) -> None:
        for message in batch:
            sent.append((recipient, type(message), store._conn.in_transaction))

    driver.channel.send_batch = send_batch  # type: ignore[method-assign]
    return sent


async def test_a_coordinators_replica_writes_leave_before_its_own_commit(driver: Any) -> None:
    sent = _record_sends(driver)
    put = asyncio.ensure_future(driver.put("b", "k", b"v", EMPTY_CONTEXT))
    await asyncio.sleep(0.01)  # one turn: the client's put stepped and committed
    assert sorted(sent) == [("n2", ReplicaPut, True), ("n3", ReplicaPut, True)]
    assert not put.done()  # W = 2: it waits for a peer's acknowledgement
    put.cancel()


async def test_a_replicas_acknowledgement_waits_for_its_commit(driver: Any) -> None:
    sent = _record_sends(driver)
    obj = VersionedObject.of([Sibling(Dot("n2@1", 1), EMPTY_CONTEXT, b"v", 1)])
    driver._on_messages("n2", [ReplicaPut(7, "b", "k", obj)])
    await asyncio.sleep(0.01)
    assert sent == [("n2", PutAck, False)]
    assert driver.store.get("b", "k") == obj
