"""Peer messages of the quorum store, one frozen dataclass per kind.

A message carries no sender or recipient: ``DkvNode.step(sender, message, now_ns)`` is
told who sent it and ``DkvReady.messages`` names each recipient. Every message that expects
an answer carries a ``request_id`` chosen by its sender (unique per sending node, starting
at a random value so answers meant for a previous run of the node are not mistaken for
answers to this one); the answer echoes it. Fields are str, int, bytes, bool, None, tuples
of those, and ``VersionedObject`` (encoded by ``concord.wire.dkv_codec``), so the wire
codec can map each class to an append-only tag and encode its fields in order.

Which messages answer which:

- ``ReplicaPut`` (a coordinator's write, a read repair, an anti-entropy repair),
  ``HintDelivery`` and ``HandoffPush`` -> ``PutAck``
- ``ReplicaGet`` -> ``GetReply``
- ``ForwardPut`` -> ``ForwardReply``
- ``AaeLevel`` -> ``AaeLevelReply``; ``AaeKeys`` -> ``AaeKeysReply`` (plus ``ReplicaPut``s
  of the keys the initiator lacks)
- ``TombstoneCheck`` -> ``TombstoneCheckReply``; ``TombstoneCollect`` has no answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from concord.dkv.versions import VersionedObject

Context = tuple[tuple[str, int], ...]
"""A causal context on the wire: ``VersionVector.entries`` (sorted by node)."""


@dataclass(frozen=True, slots=True)
class ReplicaPut:
    """Merge ``obj`` into your copy of the key and acknowledge once it is durable.

    ``hint_for`` names the primary this copy stands in for when the recipient is a fallback
    (sloppy quorum): the recipient also keeps a hint and hands the write on when the
    primary is back.
    """

    request_id: int
    bucket: str
    key: str
    obj: VersionedObject
    hint_for: str | None = None


@dataclass(frozen=True, slots=True)
class PutAck:
    """The answer to ``ReplicaPut``, ``HintDelivery`` and ``HandoffPush``.

    ``ok`` False: the copy was not stored (``error`` says why, e.g. the hint store is full).
    """

    request_id: int
    ok: bool
    error: str = ""


@dataclass(frozen=True, slots=True)
class ReplicaGet:
    """Send me your copy of the key."""

    request_id: int
    bucket: str
    key: str


@dataclass(frozen=True, slots=True)
class GetReply:
    """A replica's copy of a key (``obj`` None: it has none)."""

    request_id: int
    obj: VersionedObject | None


@dataclass(frozen=True, slots=True)
class ForwardPut:
    """Coordinate this client write for me: I am not one of the key's replicas.

    ``value`` None is a delete. ``w`` is the write quorum the client asked for.
    """

    request_id: int
    bucket: str
    key: str
    value: bytes | None
    context: Context
    w: int


@dataclass(frozen=True, slots=True)
class ForwardReply:
    """How a forwarded write ended, field for field a ``DkvNode`` ``OpResult``."""

    request_id: int
    ok: bool
    obj: VersionedObject | None
    replicas: tuple[str, ...]
    needed: int
    answered: int
    targets: int
    error: str
    refused: bool = False


@dataclass(frozen=True, slots=True)
class HintDelivery:
    """A write I held for you (as a fallback) while you were down: merge it."""

    request_id: int
    bucket: str
    key: str
    obj: VersionedObject


@dataclass(frozen=True, slots=True)
class HandoffPush:
    """A key I hold but no longer replicate: merge it; I drop my copy once every primary
    has acknowledged it."""

    request_id: int
    bucket: str
    key: str
    obj: VersionedObject


@dataclass(frozen=True, slots=True)
class AaeLevel:
    """My Merkle hashes for some nodes of one level of the tree of (``partition``, ``n``)."""

    request_id: int
    partition: int
    n: int
    level: int
    positions: tuple[int, ...]
    hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class AaeLevelReply:
    """Which of the positions of an ``AaeLevel`` differ from mine."""

    request_id: int
    differing: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AaeKeys:
    """Every key I hold in these leaf segments, with its digest."""

    request_id: int
    partition: int
    n: int
    segments: tuple[int, ...]
    keys: tuple[tuple[str, str, bytes], ...]
    """(bucket, key, digest), sorted."""


@dataclass(frozen=True, slots=True)
class AaeKeysReply:
    """The keys of an ``AaeKeys`` I lack or hold differently: send me your copies. (The keys
    you lack or hold differently come to you as ``ReplicaPut``s.)"""

    request_id: int
    wanted: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class TombstoneCheck:
    """I may collect this tombstone: do you hold exactly this version, or nothing?"""

    request_id: int
    bucket: str
    key: str
    digest: bytes


@dataclass(frozen=True, slots=True)
class TombstoneCheckReply:
    """``agree``: my copy has the same digest, or I hold no copy."""

    request_id: int
    agree: bool


@dataclass(frozen=True, slots=True)
class TombstoneCollect:
    """Every primary holds this tombstone: forget the key if your copy still has ``digest``."""

    bucket: str
    key: str
    digest: bytes


DkvMessage = (ReplicaPut | PutAck | ReplicaGet | GetReply | ForwardPut | ForwardReply
              | HintDelivery | HandoffPush | AaeLevel | AaeLevelReply | AaeKeys | AaeKeysReply
              | TombstoneCheck | TombstoneCheckReply | TombstoneCollect)

SENDABLE_BEFORE_COMMIT: Final[tuple[type, ...]] = (ReplicaPut, ReplicaGet, ForwardPut)
"""The client path's requests, which a node may send before the writes of the step that
made them are durable: each asks the recipient to store, read or coordinate something and
says nothing about the sender's own copy (a coordinator counts its own copy towards W only
in its answer to the client, which waits). A crash before the commit leaves the recipients
holding a write the coordinator lost, as if its own copy had failed, and cannot reuse the
write's dot: a restarted node writes under a new actor id (``DkvNode``). Every answer
(``PutAck``, ``GetReply``, ...) states what the sender holds, and waits."""
