"""What a running node offers its client API: the contract between ``api`` and ``runtime``.

The HTTP layer (``concord.api``) only talks to a node through ``NodeService``; the runtime
(``concord.runtime.node.ConcordNode``) implements it. Methods raise the errors of
``concord.runtime.errors``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol, overload

from concord.kv.commands import BatchCommand, BatchResult, Command, KeyValue, WriteResult

# keys under this prefix belong to Concord itself (the member address book); the API
# refuses client writes to them
SYSTEM_KEY_PREFIX = "_concord/"
MEMBER_KEY_PREFIX = SYSTEM_KEY_PREFIX + "members/"


@dataclass(frozen=True, slots=True)
class ResponseHeader:
    """Carried by every API response (etcd's ResponseHeader)."""

    cluster_id: str
    member_id: str
    term: int
    revision: int


@dataclass(frozen=True, slots=True)
class MemberInfo:
    node_id: str
    peer_url: str
    client_url: str
    role: str  # "voter" | "learner"
    is_leader: bool


class NodeService(Protocol):
    @property
    def node_id(self) -> str: ...

    @property
    def cluster_id(self) -> str: ...

    def header(self) -> ResponseHeader: ...

    def is_leader(self) -> bool: ...

    def leader_client_url(self) -> str | None:
        """The client URL of the current leader, or None when no leader is known."""
        ...

    def is_ready(self) -> bool:
        """A leader is known and this node has applied what it knows to be committed."""
        ...

    def check_write_room(self, operations: int) -> None:
        """Raise ``Overloaded`` if this node leads and ``operations`` more writes would pass
        its bounds on writes in flight; nothing otherwise. Lets a large batch be refused
        before it is parsed (``write`` checks again)."""
        ...

    @overload
    async def write(self, command: Command, timeout_s: float) -> WriteResult: ...

    @overload
    async def write(self, command: BatchCommand, timeout_s: float) -> BatchResult: ...

    async def write(self, command: Command | BatchCommand,
                    timeout_s: float) -> WriteResult | BatchResult:
        """Replicate and apply a write or a batch (one log entry either way). Leader only
        (NotLeaderHere otherwise)."""
        ...

    async def get(self, key: str, linearizable: bool, timeout_s: float) -> KeyValue | None:
        """Linearizable reads need the leader (NotLeaderHere otherwise); serializable reads
        answer from this node's state machine at once."""
        ...

    async def range(self, prefix: str, limit: int | None, linearizable: bool,
                    timeout_s: float) -> tuple[list[KeyValue], bool]:
        """Keys starting with ``prefix`` in key order, at most ``limit``; (items, more)."""
        ...

    def status(self) -> dict[str, Any]:
        """JSON-ready: id, role, term, leader, commit/applied/snapshot index, log size,
        each peer's match index, membership."""
        ...

    def members(self) -> list[MemberInfo]: ...

    async def add_member(self, node_id: str, peer_url: str, client_url: str,
                         as_learner: bool, timeout_s: float) -> None:
        """Leader only: record the address, add as learner, and (unless ``as_learner``)
        promote once caught up."""
        ...

    async def remove_member(self, node_id: str, timeout_s: float) -> None: ...

    async def transfer_leadership(self, target: str | None, timeout_s: float) -> str:
        """Leader only: hand over to ``target`` (or the most caught-up voter); returns the
        new leader's id once it has taken over."""
        ...


@dataclass(frozen=True, slots=True)
class MemberHealth:
    """One member as this node's failure detectors see it (``GET /v1/cluster/members``).

    ``state`` is SWIM's (alive, suspect, dead, left); ``phi`` and ``heartbeat_available``
    are the phi accrual and fixed-timeout detectors' verdicts on the same signs of life, for
    comparison; ``available`` is the verdict of the configured detector. Clock fields are the
    member's clock minus ours. None: not measured (yet), or this node itself.
    """

    node_id: str
    state: str
    incarnation: int
    address: str
    available: bool
    phi: float | None
    heartbeat_available: bool | None
    last_heard_ms_ago: float | None
    clock_offset_ms: float | None
    clock_uncertainty_ms: float | None


MembershipEvent = dict[str, Any]
"""A JSON-ready membership change: member, previous, state, incarnation, at_unix_ms."""


class MembershipService(Protocol):
    """What the client API reads from a node's membership (``concord.runtime.membership``)."""

    @property
    def detector(self) -> str: ...

    def member_health(self) -> list[MemberHealth]: ...

    def subscribe(self) -> asyncio.Queue[MembershipEvent | None]:
        """A queue of every change from now on; None marks the end (the node stops)."""
        ...

    def unsubscribe(self, queue: asyncio.Queue[MembershipEvent | None]) -> None: ...
