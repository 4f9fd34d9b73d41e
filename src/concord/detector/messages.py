"""SWIM membership messages: probes, indirect probes, nacks, gossip and full state sync.

Every message names its ``sender`` and ``recipient`` and may piggyback membership updates
(``updates``), which is how SWIM spreads news without extra messages. Fields are ints,
strs, bools and tuples of those so the wire codec can encode them directly; the wire layer
maps each class to an append-only integer tag.

Clock offsets ride on probes: a ``Ping`` carries ``t1`` (the prober's clock at send), its
``Ack`` echoes ``t1`` and adds ``t2``/``t3`` (the target's clock at receive and at reply);
the prober reads ``t4`` when the ack arrives (``concord.core.clock_offset``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

NodeId = str


class MemberState(IntEnum):
    """A member's state as one node sees it. Wire values are append-only."""

    ALIVE = 0
    SUSPECT = 1  # missed a probe; dead unless it refutes before the suspicion timeout
    DEAD = 2  # declared failed
    LEFT = 3  # announced a graceful leave


@dataclass(frozen=True, slots=True)
class MemberUpdate:
    """A claim about ``member`` at ``incarnation``.

    ``origin`` is who makes the claim: the accuser for SUSPECT and DEAD (Lifeguard counts
    independent accusers), the member itself for ALIVE and LEFT. ``address`` is where the
    member can be reached (set on ALIVE claims; the shell decides its format).
    """

    member: NodeId
    state: MemberState
    incarnation: int
    origin: NodeId
    address: str = ""

    def __post_init__(self) -> None:
        assert self.incarnation >= 0


@dataclass(frozen=True, slots=True)
class Ping:
    """A direct probe. ``seq`` identifies it at the prober; ``t1_ns`` is the prober's clock."""

    sender: NodeId
    recipient: NodeId
    seq: int
    t1_ns: int
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    """The answer to a Ping, proving that ``target`` is alive.

    A direct ack has ``target == sender`` and carries the clock readings (``t1`` echoed,
    ``t2`` at receive, ``t3`` at reply, on the target's clock). An intermediary relaying the
    ack of an indirect probe sets ``target`` to the probed member and the clock readings to 0:
    they measured another pair of clocks.
    """

    sender: NodeId
    recipient: NodeId
    seq: int
    target: NodeId
    t1_ns: int = 0
    t2_ns: int = 0
    t3_ns: int = 0
    updates: tuple[MemberUpdate, ...] = ()

    @property
    def is_direct(self) -> bool:
        return self.target == self.sender


@dataclass(frozen=True, slots=True)
class PingReq:
    """Please probe ``target`` for me and relay its ack (SWIM's indirect probe).

    ``want_nack`` asks for a Nack if ``target`` does not answer in time (Lifeguard): a
    prober that gets neither acks nor nacks learns that the problem is on its own side.
    """

    sender: NodeId
    recipient: NodeId
    seq: int
    target: NodeId
    want_nack: bool
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    """An intermediary's answer to a PingReq whose target stayed silent (Lifeguard)."""

    sender: NodeId
    recipient: NodeId
    seq: int
    target: NodeId
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True)
class Gossip:
    """Nothing but piggybacked updates, sent to a few members every gossip interval."""

    sender: NodeId
    recipient: NodeId
    updates: tuple[MemberUpdate, ...]


@dataclass(frozen=True, slots=True)
class PushPull:
    """A full state exchange: ``states`` holds one claim per member the sender knows.

    The recipient merges it and answers with its own full state (``reply=True``) unless
    this already is an answer. ``join`` marks the first exchange of a joining node.
    """

    sender: NodeId
    recipient: NodeId
    states: tuple[MemberUpdate, ...]
    join: bool = False
    reply: bool = False


SwimMessage = Ping | Ack | PingReq | Nack | Gossip | PushPull
