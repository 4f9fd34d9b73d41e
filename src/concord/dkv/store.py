"""What a quorum-store replica keeps, as a storage contract, and an in-memory keeper of it.

``ReplicaStore`` is the contract between the protocol core and storage: ``storage.dkv_sqlite``
keeps it durably in SQLite, ``MemoryReplicaStore`` keeps it in dicts for the simulator and
unit tests. Every method is synchronous and returns once its change is as durable as the
store promises (SQLite: committed, fsynced when the store was opened with ``fsync=True``).

Objects are filed under ``(bucket, key)`` with the ring partition they hash to, so
anti-entropy and hand-off can walk one partition at a time. Hints are writes a fallback node
holds for a primary that was down: bounded in count (``add_hint`` refuses past the bound)
and replayed oldest first.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from concord.dkv.versions import VersionedObject


@dataclass(frozen=True, slots=True)
class StoredKey:
    """One key of a partition as anti-entropy sees it."""

    bucket: str
    key: str
    digest: bytes


@dataclass(frozen=True, slots=True)
class Hint:
    """A write held for ``target`` (a primary that was down) since ``created_ns``."""

    hint_id: int
    target: str
    bucket: str
    key: str
    partition: int
    obj: VersionedObject
    created_ns: int


class ReplicaStore(Protocol):
    """The durable state of one quorum-store replica."""

    def get(self, bucket: str, key: str) -> VersionedObject | None:
        """The stored copy of a key, or None."""
        ...

    def put(self, bucket: str, key: str, partition: int, obj: VersionedObject) -> None:
        """Replace the stored copy (callers merge first)."""
        ...

    def remove(self, bucket: str, key: str) -> None:
        """Forget a key entirely (tombstone collection, hand-off). No error if absent."""
        ...

    def keys_in_partition(self, partition: int) -> Iterator[StoredKey]:
        """Every key filed under ``partition``, sorted by (bucket, key)."""
        ...

    def partitions(self) -> set[int]:
        """The partitions this replica holds at least one key of."""
        ...

    def key_count(self) -> int:
        ...

    def add_hint(self, target: str, bucket: str, key: str, partition: int,
                 obj: VersionedObject, created_ns: int) -> Hint | None:
        """Hold a write for ``target``; None when the store already holds its bound of hints."""
        ...

    def hints_for(self, target: str, limit: int) -> list[Hint]:
        """Up to ``limit`` hints for ``target``, oldest first."""
        ...

    def hint_targets(self) -> set[str]:
        """The nodes some hint is held for."""
        ...

    def remove_hint(self, hint_id: int) -> None:
        """Drop a delivered or expired hint. No error if absent."""
        ...

    def hint_count(self) -> int:
        ...

    def expire_hints(self, older_than_ns: int) -> int:
        """Drop every hint created before ``older_than_ns``; returns how many."""
        ...


class MemoryReplicaStore:
    """``ReplicaStore`` in memory: for the simulator and tests (nothing survives a crash)."""

    def __init__(self, max_hints: int = 10_000) -> None:
        self.max_hints = max_hints
        self._objects: dict[tuple[str, str], tuple[int, VersionedObject]] = {}
        self._hints: dict[int, Hint] = {}
        self._next_hint_id = 1

    def get(self, bucket: str, key: str) -> VersionedObject | None:
        found = self._objects.get((bucket, key))
        return None if found is None else found[1]

    def put(self, bucket: str, key: str, partition: int, obj: VersionedObject) -> None:
        self._objects[(bucket, key)] = (partition, obj)

    def remove(self, bucket: str, key: str) -> None:
        self._objects.pop((bucket, key), None)

    def keys_in_partition(self, partition: int) -> Iterator[StoredKey]:
        for (bucket, key), (filed, obj) in sorted(self._objects.items()):
            if filed == partition:
                yield StoredKey(bucket, key, obj.digest())

    def partitions(self) -> set[int]:
        return {partition for partition, _ in self._objects.values()}

    def key_count(self) -> int:
        return len(self._objects)

    def add_hint(self, target: str, bucket: str, key: str, partition: int,
                 obj: VersionedObject, created_ns: int) -> Hint | None:
        if len(self._hints) >= self.max_hints:
            return None
        hint = Hint(self._next_hint_id, target, bucket, key, partition, obj, created_ns)
        self._hints[hint.hint_id] = hint
        self._next_hint_id += 1
        return hint

    def hints_for(self, target: str, limit: int) -> list[Hint]:
        held = [hint for hint in self._hints.values() if hint.target == target]
        return sorted(held, key=lambda hint: hint.hint_id)[:limit]

    def hint_targets(self) -> set[str]:
        return {hint.target for hint in self._hints.values()}

    def remove_hint(self, hint_id: int) -> None:
        self._hints.pop(hint_id, None)

    def hint_count(self) -> int:
        return len(self._hints)

    def expire_hints(self, older_than_ns: int) -> int:
        expired = [hint_id for hint_id, hint in self._hints.items()
                   if hint.created_ns < older_than_ns]
        for hint_id in expired:
            del self._hints[hint_id]
        return len(expired)
