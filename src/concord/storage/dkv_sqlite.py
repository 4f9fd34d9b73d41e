"""The durable quorum-store replica: ``concord.dkv.store.ReplicaStore`` kept in SQLite.

This module owns the replica's database file and its schema:

- ``objects(bucket, key, partition, digest, object)``, primary key ``(bucket, key)``, indexed
  by ``(partition, bucket, key)`` so anti-entropy and hand-off walk one partition in order;
  ``object`` is ``concord.wire.dkv_codec.encode_object`` and ``digest`` is
  ``VersionedObject.digest()``, kept beside it so a partition's digests are read without
  decoding a single object.
- ``hints(id, target, bucket, key, partition, object, created_ns)``: ``id`` is an
  AUTOINCREMENT key, so ids are never reused and id order is arrival order (oldest first).
- ``meta(name, value)`` holding ``schema_version``; a file written by a newer build is refused.

Durability. The database runs in WAL mode. With ``fsync=True`` it runs ``synchronous=FULL``:
every method that changes something returns only after its transaction is committed and the
WAL is fsynced, so when a replica acknowledges a write to the coordinator its copy survives
a power loss, and W acknowledgements mean W durable copies. With ``fsync=False``
(``synchronous=OFF``) a commit is handed to the operating system and never fsynced: it
survives the process crashing but not the machine, so an acknowledgement promises nothing
past a power loss and W acks may be fewer durable copies. Use it for tests and benchmarks.
Each write outside a batch is its own transaction (one fsync); ``batch()`` and ``put_many``
group many writes into one transaction and one fsync (group commit).

The store holds SQLite's exclusive lock from open to ``close()``: a second store, in this
process or another, cannot open the same file. It is not thread-safe: the daemon calls it
from one worker thread at a time. A row whose object cannot be decoded, or whose digest does
not match its object, raises ``CorruptReplicaError`` naming the row; it is never served.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Final

from concord.dkv.store import Hint, ReplicaStore, StoredKey
from concord.dkv.versions import VersionedObject
from concord.storage.wal import StorageCorruptError
from concord.wire.codec import DecodeError
from concord.wire.dkv_codec import decode_object, encode_object

SCHEMA_VERSION: Final = 1
"""The schema this build creates and the newest it opens."""

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
"""SQLite's INTEGER range: partitions, hint ids and ``created_ns`` (until the year 2262)."""

SCAN_CHUNK_ROWS: Final = 1024
"""Rows ``keys_in_partition`` reads per query; no cursor stays open while the caller runs."""

_SCHEMA: Final = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE objects (bucket TEXT NOT NULL, key TEXT NOT NULL,"
    " partition INTEGER NOT NULL, digest BLOB NOT NULL, object BLOB NOT NULL,"
    " PRIMARY KEY (bucket, key))",
    "CREATE INDEX objects_by_partition ON objects (partition, bucket, key)",
    "CREATE TABLE hints (id INTEGER PRIMARY KEY AUTOINCREMENT, target TEXT NOT NULL,"
    " bucket TEXT NOT NULL, key TEXT NOT NULL, partition INTEGER NOT NULL,"
    " object BLOB NOT NULL, created_ns INTEGER NOT NULL)",
    "CREATE INDEX hints_by_target ON hints (target, id)",
    "CREATE INDEX hints_by_created ON hints (created_ns)",
)

_PUT: Final = (
    "INSERT INTO objects (bucket, key, partition, digest, object) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (bucket, key) DO UPDATE SET partition = excluded.partition,"
    " digest = excluded.digest, object = excluded.object"
)

_PARTITIONS: Final = (  # a loose index scan: one index seek per distinct partition
    "WITH RECURSIVE held(partition) AS ("
    " SELECT min(partition) FROM objects"
    " UNION ALL"
    " SELECT (SELECT min(partition) FROM objects WHERE partition > held.partition)"
    " FROM held WHERE held.partition IS NOT NULL)"
    " SELECT partition FROM held WHERE partition IS NOT NULL"
)


class CorruptReplicaError(StorageCorruptError):
    """A row of the replica database is damaged; the message names the file and the row."""


class ReplicaSchemaError(Exception):
    """The file is not a replica database this build can open (newer or foreign schema)."""


class ReplicaStoreLockedError(Exception):
    """Another open store (in this process or another) holds the replica database."""


class SqliteReplicaStore:
    """``ReplicaStore`` in one SQLite file (see the module docstring for durability)."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True,
                 max_hints: int = 100_000) -> None:
        if isinstance(max_hints, bool) or not isinstance(max_hints, int) or max_hints < 0:
            raise ValueError(f"max_hints must be an integer >= 0, got {max_hints!r}")
        self.path = Path(path)
        self.fsync = fsync
        self.max_hints = max_hints
        self._batch_depth = 0
        # timeout=0: a database another store holds fails the open at once, never waits
        self._conn = sqlite3.connect(self.path, timeout=0, isolation_level=None,
                                     check_same_thread=False)
        try:
            self._configure()
            self._open_schema()
            self._hint_count = self._count_hints()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            name = getattr(exc, "sqlite_errorname", "")
            if name == "SQLITE_BUSY":
                raise ReplicaStoreLockedError(
                    f"{self.path}: replica database is in use by another store") from exc
            if name in {"SQLITE_NOTADB", "SQLITE_CORRUPT"}:
                raise CorruptReplicaError(
                    f"{self.path}: not a readable replica database: {exc}") from exc
            raise
        except BaseException:
            self._conn.close()
            raise

    def _configure(self) -> None:
        # exclusive locking before WAL: no shared-memory index, and no second opener
        self._conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        (mode,) = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode != "wal":
            raise ValueError(f"{self.path}: SQLite refused WAL mode (journal_mode={mode}); "
                             "a replica store needs a database file")
        self._conn.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'OFF'}")

    def _open_schema(self) -> None:
        """Create the schema in a new file, or check the version of an existing one."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._create_or_check_schema()
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _create_or_check_schema(self) -> None:
        tables = {name for (name,) in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            for statement in _SCHEMA:
                self._conn.execute(statement)
            self._conn.execute("INSERT INTO meta (name, value) VALUES ('schema_version', ?)",
                               (SCHEMA_VERSION,))
            return
        if "meta" not in tables:
            raise ReplicaSchemaError(f"{self.path}: not a replica database (no meta table; "
                                     f"tables: {', '.join(sorted(tables))})")
        row = self._conn.execute(
            "SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        if row is None or type(row[0]) is not int:
            raise ReplicaSchemaError(f"{self.path}: replica database has no schema version")
        (version,) = row
        if version > SCHEMA_VERSION:
            raise ReplicaSchemaError(
                f"{self.path}: replica schema version {version} was written by a newer "
                f"build; this build reads schema version {SCHEMA_VERSION} only")
        if version < SCHEMA_VERSION:
            raise ReplicaSchemaError(f"{self.path}: unknown replica schema version {version}")

    def _count_hints(self) -> int:
        (count,) = self._conn.execute("SELECT count(*) FROM hints").fetchone()
        assert type(count) is int
        return count

    # --- transactions ----------------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: every write inside is one transaction, durable at once on exit.

        On a normal exit the transaction commits, with one fsync for all of it when the
        store was opened with ``fsync=True``; acknowledge the writes only after that. If the
        block raises, none of its writes happen. A batch inside a batch is a savepoint: it
        undoes only its own writes if it raises, and commits with the outermost batch.
        """
        savepoint = f"batch_{self._batch_depth}"
        self._conn.execute(f"SAVEPOINT {savepoint}")
        self._batch_depth += 1
        try:
            yield
        except BaseException:
            self._batch_depth -= 1
            self._undo(savepoint)
            raise
        self._batch_depth -= 1
        try:
            self._conn.execute(f"RELEASE {savepoint}")  # the outermost release commits
        except BaseException:
            self._undo(savepoint)
            raise

    def _undo(self, savepoint: str) -> None:
        if self._conn.in_transaction:  # SQLite rolls back by itself on some I/O errors
            self._conn.execute(f"ROLLBACK TO {savepoint}")
            self._conn.execute(f"RELEASE {savepoint}")
        self._hint_count = self._count_hints()

    def put_many(self, items: Iterable[tuple[str, str, int, VersionedObject]]) -> None:
        """``put`` each ``(bucket, key, partition, obj)`` in one transaction (one fsync)."""
        rows = [(bucket, key, _check_int64(partition, "partition"), obj.digest(),
                 encode_object(obj)) for bucket, key, partition, obj in items]
        with self.batch():
            self._conn.executemany(_PUT, rows)

    # --- objects ---------------------------------------------------------------------------

    def get(self, bucket: str, key: str) -> VersionedObject | None:
        row = self._conn.execute("SELECT digest, object FROM objects WHERE bucket = ? AND key = ?",
                                 (bucket, key)).fetchone()
        if row is None:
            return None
        digest, blob = row
        obj = self._decode(blob, f"object {bucket!r}/{key!r}")
        if digest != obj.digest():
            raise CorruptReplicaError(f"{self.path}: object {bucket!r}/{key!r}: stored digest "
                                      f"{_hex(digest)} does not match its object's "
                                      f"{obj.digest().hex()}")
        return obj

    def put(self, bucket: str, key: str, partition: int, obj: VersionedObject) -> None:
        _check_int64(partition, "partition")
        self._conn.execute(_PUT, (bucket, key, partition, obj.digest(), encode_object(obj)))

    def remove(self, bucket: str, key: str) -> None:
        self._conn.execute("DELETE FROM objects WHERE bucket = ? AND key = ?", (bucket, key))

    def keys_in_partition(self, partition: int) -> Iterator[StoredKey]:
        if not _INT64_MIN <= partition <= _INT64_MAX:
            return  # no key is filed there
        rows = self._conn.execute(
            "SELECT bucket, key, digest FROM objects WHERE partition = ?"
            " ORDER BY bucket, key LIMIT ?", (partition, SCAN_CHUNK_ROWS)).fetchall()
        while rows:
            for bucket, key, digest in rows:
                if type(digest) is not bytes:
                    raise CorruptReplicaError(f"{self.path}: object {bucket!r}/{key!r}: "
                                              f"digest is {type(digest).__name__}, not bytes")
                yield StoredKey(bucket, key, digest)
            if len(rows) < SCAN_CHUNK_ROWS:
                return
            last_bucket, last_key, _ = rows[-1]
            rows = self._conn.execute(
                "SELECT bucket, key, digest FROM objects WHERE partition = ?"
                " AND (bucket, key) > (?, ?) ORDER BY bucket, key LIMIT ?",
                (partition, last_bucket, last_key, SCAN_CHUNK_ROWS)).fetchall()

    def partitions(self) -> set[int]:
        return {partition for (partition,) in self._conn.execute(_PARTITIONS)}

    def key_count(self) -> int:
        (count,) = self._conn.execute("SELECT count(*) FROM objects").fetchone()
        assert type(count) is int
        return count

    # --- hints -----------------------------------------------------------------------------

    def add_hint(self, target: str, bucket: str, key: str, partition: int,
                 obj: VersionedObject, created_ns: int) -> Hint | None:
        _check_int64(partition, "partition")
        _check_int64(created_ns, "created_ns")
        if self._hint_count >= self.max_hints:
            return None
        cursor = self._conn.execute(
            "INSERT INTO hints (target, bucket, key, partition, object, created_ns)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (target, bucket, key, partition, encode_object(obj), created_ns))
        hint_id = cursor.lastrowid
        assert hint_id is not None, "an insert names its row"
        self._hint_count += 1
        return Hint(hint_id, target, bucket, key, partition, obj, created_ns)

    def hints_for(self, target: str, limit: int) -> list[Hint]:
        if limit < 0:
            raise ValueError(f"hints_for: limit must be >= 0, got {limit}")
        rows = self._conn.execute(
            "SELECT id, bucket, key, partition, object, created_ns FROM hints"
            " WHERE target = ? ORDER BY id LIMIT ?", (target, min(limit, _INT64_MAX))).fetchall()
        hints = []
        for hint_id, bucket, key, partition, blob, created_ns in rows:
            where = f"hint {hint_id} ({bucket!r}/{key!r} for {target!r})"
            if type(partition) is not int or type(created_ns) is not int:
                raise CorruptReplicaError(f"{self.path}: {where}: partition {partition!r} and "
                                          f"created_ns {created_ns!r} must be integers")
            obj = self._decode(blob, where)
            hints.append(Hint(hint_id, target, bucket, key, partition, obj, created_ns))
        return hints

    def hint_targets(self) -> set[str]:
        return {target for (target,) in self._conn.execute("SELECT DISTINCT target FROM hints")}

    def remove_hint(self, hint_id: int) -> None:
        if not _INT64_MIN <= hint_id <= _INT64_MAX:
            return  # no hint has such an id
        cursor = self._conn.execute("DELETE FROM hints WHERE id = ?", (hint_id,))
        self._hint_count -= cursor.rowcount

    def hint_count(self) -> int:
        return self._hint_count

    def expire_hints(self, older_than_ns: int) -> int:
        if older_than_ns <= _INT64_MIN:
            return 0
        if older_than_ns > _INT64_MAX:  # every stored created_ns is older
            cursor = self._conn.execute("DELETE FROM hints")
        else:
            cursor = self._conn.execute("DELETE FROM hints WHERE created_ns < ?",
                                        (older_than_ns,))
        self._hint_count -= cursor.rowcount
        return cursor.rowcount

    # --- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database (a batch still open is rolled back). Idempotent."""
        self._conn.close()

    def __enter__(self) -> SqliteReplicaStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _decode(self, blob: object, where: str) -> VersionedObject:
        if type(blob) is not bytes:
            raise CorruptReplicaError(f"{self.path}: {where}: stored object is "
                                      f"{type(blob).__name__}, not bytes")
        try:
            return decode_object(blob)
        except DecodeError as exc:
            raise CorruptReplicaError(f"{self.path}: {where}: undecodable: {exc}") from exc


def _check_int64(value: int, field: str) -> int:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"{field} must fit a signed 64-bit integer, got {value}")
    return value


def _hex(value: object) -> str:
    return value.hex() if isinstance(value, bytes) else repr(value)


_: type[ReplicaStore] = SqliteReplicaStore
"""mypy checks here that the class keeps the whole ``ReplicaStore`` contract."""
