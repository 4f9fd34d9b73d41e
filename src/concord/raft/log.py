"""The in-memory Raft log: entries since the last compaction, and what is stable on disk.

Indices start at 1. ``offset_index``/``offset_term`` name the last compacted entry (0/0 for a
log never compacted), so the log holds ``offset_index + 1 .. last_index``. Entries at or above
``unstable_from`` have not been persisted yet and belong in the next ``Ready``.
"""

from __future__ import annotations

from collections.abc import Sequence

from concord.raft.messages import Entry


class RaftLog:
    __slots__ = ("_entries", "committed", "offset_index", "offset_term", "unstable_from")

    def __init__(self, offset_index: int = 0, offset_term: int = 0,
                 entries: Sequence[Entry] = (), committed: int = 0) -> None:
        self.offset_index = offset_index
        self.offset_term = offset_term
        self._entries: list[Entry] = list(entries)
        for position, entry in enumerate(self._entries):
            assert entry.index == offset_index + 1 + position, "log entries must be contiguous"
        self.committed = max(committed, offset_index)
        assert self.committed <= self.last_index, "commit index beyond the log"
        self.unstable_from = self.last_index + 1

    # --- reading -----------------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self.offset_index + 1

    @property
    def last_index(self) -> int:
        return self.offset_index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.offset_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at ``index``; None when compacted away or not yet present."""
        if index == self.offset_index:
            return self.offset_term
        if index < self.offset_index or index > self.last_index:
            return None
        return self._entries[index - self.offset_index - 1].term

    def entry(self, index: int) -> Entry:
        assert self.offset_index < index <= self.last_index, f"no entry at {index}"
        return self._entries[index - self.offset_index - 1]

    def slice(self, low: int, high: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``low .. high`` inclusive, cut after ``max_bytes`` of data (at least one)."""
        assert low > self.offset_index, f"entry {low} was compacted"
        start = low - self.offset_index - 1
        stop = min(high, self.last_index) - self.offset_index
        chosen = self._entries[start:stop]
        if max_bytes is None or not chosen:
            return chosen
        size = 0
        for count, entry in enumerate(chosen):
            size += len(entry.data) + 16
            if size > max_bytes and count > 0:
                return chosen[:count]
        return chosen

    def matches(self, index: int, term: int) -> bool:
        return self.term_at(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a candidate's log at least as up-to-date as ours."""
        return (last_term, last_index) >= (self.last_term, self.last_index)

    def conflict_hint(self, index: int, term: int) -> int:
        """The largest index <= ``index`` whose term is <= ``term`` (fast backtracking).

        Never below ``offset_index``: compacted entries are committed, hence match.
        """
        index = min(index, self.last_index)
        while index > self.offset_index:
            entry_term = self.term_at(index)
            assert entry_term is not None
            if entry_term <= term:
                return index
            index -= 1
        return self.offset_index

    def unstable_entries(self) -> list[Entry]:
        if self.unstable_from > self.last_index:
            return []
        return self.slice(self.unstable_from, self.last_index)

    # --- writing -----------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Leader append: new entries go strictly after the last one."""
        for entry in entries:
            assert entry.index == self.last_index + 1, "leader appends must be contiguous"
            self._entries.append(entry)

    def merge(self, entries: Sequence[Entry]) -> int:
        """Follower append (§5.3 step 3-4): skip entries we have, cut at the first conflict.

        The caller has checked that the entry before ``entries[0]`` matches. Returns the index
        of the first entry removed by a conflict, or 0 when nothing was truncated.
        """
        truncated_from = 0
        for position, entry in enumerate(entries):
            if entry.index <= self.offset_index:
                continue  # already compacted: it is committed and therefore matches
            existing = self.term_at(entry.index)
            if existing == entry.term:
                continue
            if existing is not None:
                assert entry.index > self.committed, (
                    f"log matching violated: conflict at committed index {entry.index}")
                del self._entries[entry.index - self.offset_index - 1:]
                truncated_from = entry.index
                self.unstable_from = min(self.unstable_from, entry.index)
            self.append(entries[position:])
            break
        return truncated_from

    def commit_to(self, index: int) -> bool:
        index = min(index, self.last_index)
        if index > self.committed:
            self.committed = index
            return True
        return False

    def stable_to(self, index: int) -> None:
        self.unstable_from = max(self.unstable_from, index + 1)

    def compact(self, index: int) -> None:
        """Drop entries up to ``index`` (which must be stable)."""
        assert index < self.unstable_from, "cannot compact entries not yet persisted"
        if index <= self.offset_index:
            return
        term = self.term_at(index)
        assert term is not None
        del self._entries[: index - self.offset_index]
        self.offset_index, self.offset_term = index, term

    def restore(self, index: int, term: int) -> None:
        """Replace the whole log by a snapshot ending at (index, term) (§7)."""
        assert index > self.committed, "a snapshot must move the log forward"
        self._entries = []
        self.offset_index, self.offset_term = index, term
        self.committed = index
        self.unstable_from = index + 1
