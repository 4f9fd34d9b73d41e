"""Snapshot files: one checksummed file per Raft snapshot, written atomically.

This module owns ``snap/<term:016x>-<index:016x>.snap``: a header (magic, payload length,
crc32 of the payload) followed by the ``concord.wire`` encoding of the snapshot. A snapshot is
written to a temporary file and fsynced (``write``: the slow part, on any thread), then renamed
into place and the directory fsynced (``publish``: with the other changes to the directory);
only then do older snapshots beyond the newest ``KEEP_SNAPSHOTS`` go. On open, leftover
temporary files are removed and the newest snapshot is loaded; if it is damaged the node
refuses to start.
"""

from __future__ import annotations

import itertools
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from concord.raft.messages import Snapshot
from concord.storage.wal import Fsyncer, StorageCorruptError, ensure_directory, write_all_at
from concord.wire.codec import (
    DecodeError,
    decode_snapshot,
    decode_snapshot_parts,
    encode_snapshot_parts,
    snapshot_image_span,
)

_log = structlog.get_logger(__name__)

SNAPSHOT_MAGIC: Final = b"CNCDSNP1"
SNAPSHOT_HEADER: Final = struct.Struct("<8sQI")
"""magic, payload length in bytes, crc32 of the payload."""

KEEP_SNAPSHOTS: Final = 2
"""How many snapshot files stay on disk after a new one is written (newest first)."""

_SNAPSHOT_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")
_TEMP_SUFFIX: Final = ".tmp"
_temp_names = itertools.count()  # one temporary file per write, even for the same snapshot


class CorruptSnapshotError(StorageCorruptError):
    """The newest snapshot file is damaged; the node must not start on an older one."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(
            f"{path}: {problem}; refusing to start (the write-ahead log may no longer hold "
            "the entries this snapshot covered, so an older snapshot is not a safe fallback)"
        )
        self.path = path


def snapshot_file_name(index: int, term: int) -> str:
    return f"{term:016x}-{index:016x}.snap"


@dataclass(frozen=True, slots=True)
class WrittenSnapshot:
    """A snapshot durably written to a temporary file, not yet in place (``publish``)."""

    index: int
    term: int
    temp_path: Path
    path: Path


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    """A snapshot file found on disk, known by its name only."""

    index: int
    term: int
    path: Path


class SnapshotStore:
    """Writes snapshot files atomically and loads the newest one."""

    __slots__ = ("_directory", "_fsyncer")

    def __init__(self, directory: Path, fsyncer: Fsyncer) -> None:
        self._directory = directory
        self._fsyncer = fsyncer

    @classmethod
    def open(cls, directory: Path, *, fsyncer: Fsyncer) -> tuple[SnapshotStore, Snapshot | None]:
        """Remove leftover temporary files and load the newest snapshot (None when none).

        Raises ``CorruptSnapshotError`` when the newest snapshot file is damaged.
        """
        ensure_directory(directory, fsyncer)
        store = cls(directory, fsyncer)
        leftovers = [path for path in directory.iterdir() if path.name.endswith(_TEMP_SUFFIX)]
        for path in leftovers:
            _log.info("snapshot_temp_file_removed", file=str(path))
            path.unlink()
        if leftovers:
            fsyncer.sync_directory(directory)
        files = store.files()
        if not files:
            return store, None
        return store, _load(files[-1])

    def files(self) -> list[SnapshotFile]:
        """The snapshot files on disk, oldest first (by index, then term)."""
        found: list[SnapshotFile] = []
        for path in self._directory.iterdir():
            match = _SNAPSHOT_NAME.match(path.name)
            if match is None:
                if not path.name.endswith(_TEMP_SUFFIX):
                    _log.warning("snapshot_unknown_file_ignored", file=str(path))
                continue
            term, index = int(match.group(1), 16), int(match.group(2), 16)
            found.append(SnapshotFile(index, term, path))
        found.sort(key=lambda file: (file.index, file.term))
        return found

    def save(self, snapshot: Snapshot) -> Path:
        """Write ``snapshot`` durably (temp file, fsync, rename, fsync directory), then prune."""
        return self.publish(self.write(snapshot))

    def write(self, snapshot: Snapshot) -> WrittenSnapshot:
        """Encode ``snapshot`` and write it durably to a temporary file of its own. Safe on
        any thread: it changes nothing another reader or writer of the directory sees."""
        meta = snapshot.meta
        # the image is written as it is, never copied into one record: a copy of a large one
        # holds the GIL for a second and more, and the node's event loop waits that long
        head, image = encode_snapshot_parts(snapshot)
        crc = zlib.crc32(image, zlib.crc32(head))  # zlib lets go of the GIL on large inputs
        header = SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, len(head) + len(image), crc)
        path = self._directory / snapshot_file_name(meta.index, meta.term)
        temp_path = path.with_name(f"{path.name}.{next(_temp_names)}{_TEMP_SUFFIX}")
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all_at(fd, header + head, 0)
            write_all_at(fd, image, len(header) + len(head))
            self._fsyncer.sync_file(fd)
        finally:
            os.close(fd)
        return WrittenSnapshot(meta.index, meta.term, temp_path, path)

    def publish(self, written: WrittenSnapshot) -> Path:
        """Rename a written snapshot into place durably, then prune older ones."""
        os.replace(written.temp_path, written.path)
        # the new snapshot must be durable before any older one can disappear
        self._fsyncer.sync_directory(self._directory)
        self._prune()
        return written.path

    def discard(self, written: WrittenSnapshot) -> None:
        """Remove a written snapshot that will not be published."""
        written.temp_path.unlink(missing_ok=True)

    def _prune(self) -> None:
        doomed = self.files()[:-KEEP_SNAPSHOTS]
        for file in doomed:
            file.path.unlink()
            _log.info("snapshot_removed", file=str(file.path), index=file.index)
        if doomed:
            self._fsyncer.sync_directory(self._directory)


SNAPSHOT_HEAD_READ_BYTES: Final = 64 * 1024
"""How much of a snapshot's payload ``_load`` reads first, to find where its image lies."""


def _load(file: SnapshotFile) -> Snapshot:
    """Read and check one snapshot file; any damage raises ``CorruptSnapshotError``.

    The image is read from the file straight into a bytes object of its own: read whole,
    the payload was copied once to cut the file's header off and once more when decoding
    copied the image out (0.3 s or more for a million keys, at start-up)."""
    with file.path.open("rb") as f:
        file_bytes = os.fstat(f.fileno()).st_size
        header = f.read(SNAPSHOT_HEADER.size)
        if len(header) < SNAPSHOT_HEADER.size:
            raise CorruptSnapshotError(
                file.path, f"short header ({len(header)} of {SNAPSHOT_HEADER.size} bytes)"
            )
        magic, length, crc = SNAPSHOT_HEADER.unpack(header)
        if magic != SNAPSHOT_MAGIC:
            raise CorruptSnapshotError(
                file.path, f"bad magic {magic!r} (expected {SNAPSHOT_MAGIC!r})")
        if file_bytes - SNAPSHOT_HEADER.size != length:
            raise CorruptSnapshotError(
                file.path,
                f"payload is {file_bytes - SNAPSHOT_HEADER.size} bytes but the header says "
                f"{length}")
        head = f.read(min(length, SNAPSHOT_HEAD_READ_BYTES))
        span = snapshot_image_span(head)
        image: bytes | None = None
        if span is not None and sum(span) == length:
            head = head[:span[0]]
            f.seek(SNAPSHOT_HEADER.size + span[0])
            image = f.read(span[1])
        else:  # not the layout this module writes: decoded whole, which says what is wrong
            head += f.read()
    if len(head) + (len(image) if image is not None else 0) != length:
        raise CorruptSnapshotError(file.path, "the file changed while it was read")
    if zlib.crc32(image or b"", zlib.crc32(head)) != crc:
        raise CorruptSnapshotError(file.path, "checksum mismatch")
    try:
        snapshot = (decode_snapshot_parts(head, image) if image is not None
                    else decode_snapshot(head))
    except DecodeError as exc:
        raise CorruptSnapshotError(file.path, f"undecodable snapshot: {exc}") from exc
    meta = snapshot.meta
    if (meta.index, meta.term) != (file.index, file.term):
        raise CorruptSnapshotError(
            file.path,
            f"holds the snapshot at index {meta.index} term {meta.term}, not what its name says",
        )
    return snapshot
