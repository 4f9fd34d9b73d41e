"""A virtual disk: what a node wrote, and the part of it that survives a crash.

Writes land in a volatile buffer; ``sync`` makes them durable; ``crash`` throws away every
write not yet synced, as a power cut would with a page cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from concord.raft.messages import Entry, HardState, Snapshot
from concord.raft.ready import PersistedState


@dataclass(slots=True)
class DiskImage:
    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """A snapshot from the leader replaces the whole log."""
        self.snapshot = snapshot
        self.entries = []

    def apply_local_snapshot(self, snapshot: Snapshot) -> None:
        """A snapshot this node took: drop the entries it covers, keep the rest."""
        self.snapshot = snapshot
        self.entries = [e for e in self.entries if e.index > snapshot.meta.index]

    def apply_entries(self, entries: tuple[Entry, ...]) -> None:
        first = entries[0].index
        offset = self.snapshot.meta.index if self.snapshot else 0
        keep = max(0, first - offset - 1)
        assert keep <= len(self.entries), "a gap in the persisted log"
        del self.entries[keep:]
        self.entries.extend(entries)


_Write = tuple[str, object]


class VirtualDisk:
    def __init__(self) -> None:
        self.durable = DiskImage()
        self._unsynced: list[_Write] = []
        self.syncs = 0

    def write_snapshot(self, snapshot: Snapshot) -> None:
        self._unsynced.append(("snapshot", snapshot))

    def write_local_snapshot(self, snapshot: Snapshot) -> None:
        self._unsynced.append(("local_snapshot", snapshot))

    def write_entries(self, entries: tuple[Entry, ...]) -> None:
        self._unsynced.append(("entries", entries))

    def write_hard_state(self, hard_state: HardState) -> None:
        self._unsynced.append(("hard_state", hard_state))

    def sync(self) -> None:
        for kind, payload in self._unsynced:
            match kind:
                case "snapshot":
                    assert isinstance(payload, Snapshot)
                    self.durable.apply_snapshot(payload)
                case "local_snapshot":
                    assert isinstance(payload, Snapshot)
                    self.durable.apply_local_snapshot(payload)
                case "entries":
                    assert isinstance(payload, tuple)
                    self.durable.apply_entries(payload)
                case "hard_state":
                    assert isinstance(payload, HardState)
                    self.durable.hard_state = payload
        self._unsynced.clear()
        self.syncs += 1

    def crash(self) -> int:
        """Lose every unsynced write; returns how many were lost."""
        lost = len(self._unsynced)
        self._unsynced.clear()
        return lost

    def is_blank(self) -> bool:
        return self.durable.snapshot is None and not self.durable.entries

    def load(self) -> PersistedState:
        image = self.durable
        return PersistedState(image.hard_state, image.snapshot, tuple(image.entries))
