"""The SQLite replica store: every ``ReplicaStore`` method behaves as ``MemoryReplicaStore``
does, everything survives close and reopen, batches commit or roll back as one, and damaged
rows, newer schemas, foreign files and a second opener are refused with a clear error."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from concord.dkv.store import MemoryReplicaStore, ReplicaStore
from concord.dkv.versions import (
    EMPTY_CONTEXT,
    MAX_VALUE_BYTES,
    VersionedObject,
    VersionVector,
    new_write,
)
from concord.storage.dkv_sqlite import (
    SCAN_CHUNK_ROWS,
    SCHEMA_VERSION,
    CorruptReplicaError,
    ReplicaSchemaError,
    ReplicaStoreLockedError,
    SqliteReplicaStore,
)
from concord.wire.dkv_codec import encode_object

T0_NS = 1_764_000_000_000_000_000


def _obj(value: bytes | None, node: str = "n1", context: VersionVector = EMPTY_CONTEXT,
         timestamp_ns: int = T0_NS) -> VersionedObject:
    return new_write(None, context, node, value, timestamp_ns)


A = _obj(b"a")
B = new_write(A, EMPTY_CONTEXT, "n2", b"b", T0_NS + 1)  # two siblings
GONE = new_write(A, A.context(), "n3", None, T0_NS + 2)  # a tombstone superseding A


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "replica.db"


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, db_path: Path) -> Iterator[ReplicaStore]:
    if request.param == "memory":
        yield MemoryReplicaStore(max_hints=3)
        return
    with SqliteReplicaStore(db_path, fsync=False, max_hints=3) as sqlite_store:
        yield sqlite_store


# --- the contract, on both stores ----------------------------------------------------------


def test_put_get_replace_remove(store: ReplicaStore) -> None:
    assert store.get("b", "k") is None
    store.put("b", "k", 7, A)
    assert store.get("b", "k") == A
    assert store.get("other", "k") is None
    store.put("b", "k", 7, B)
    assert store.get("b", "k") == B
    assert store.key_count() == 1
    store.remove("b", "k")
    store.remove("b", "k")  # absent: no error
    assert store.get("b", "k") is None
    assert store.key_count() == 0


def test_keys_in_partition_are_sorted_with_digests(store: ReplicaStore) -> None:
    store.put("b2", "a", 1, A)
    store.put("b1", "z", 1, B)
    store.put("b1", "é", 1, GONE)  # beyond ASCII: sorted by code point, as Python sorts
    store.put("b1", "a", 2, A)
    store.put("b1", "m", 1, A)
    assert [(k.bucket, k.key, k.digest) for k in store.keys_in_partition(1)] == [
        ("b1", "m", A.digest()), ("b1", "z", B.digest()), ("b1", "é", GONE.digest()),
        ("b2", "a", A.digest())]
    assert [k.key for k in store.keys_in_partition(2)] == ["a"]
    assert list(store.keys_in_partition(3)) == []
    assert store.partitions() == {1, 2}
    store.put("b1", "a", 1, A)  # refiled under another partition
    assert store.partitions() == {1}
    assert store.key_count() == 5


def test_hints_are_bounded_and_replayed_oldest_first(store: ReplicaStore) -> None:
    first = store.add_hint("n2", "b", "k1", 1, A, created_ns=100)
    second = store.add_hint("n3", "b", "k2", 2, B, created_ns=200)
    third = store.add_hint("n2", "b", "k3", 1, GONE, created_ns=300)
    assert first is not None and second is not None and third is not None
    assert first.hint_id < second.hint_id < third.hint_id
    assert store.add_hint("n2", "b", "k4", 1, A, created_ns=400) is None  # at the bound
    assert store.hint_count() == 3
    assert store.hints_for("n2", 10) == [first, third]
    assert store.hints_for("n2", 1) == [first]
    assert store.hints_for("n2", 0) == []
    assert store.hints_for("n9", 10) == []
    assert store.hints_for("n2", 10**19) == [first, third]
    assert store.hint_targets() == {"n2", "n3"}
    store.remove_hint(first.hint_id)
    store.remove_hint(first.hint_id)  # absent: no error
    store.remove_hint(10**19)
    assert store.hint_count() == 2
    fourth = store.add_hint("n2", "b", "k4", 1, A, created_ns=400)
    assert fourth is not None and fourth.hint_id > third.hint_id  # ids are never reused
    assert store.hints_for("n2", 10) == [third, fourth]


def test_expire_hints_drops_those_created_before(store: ReplicaStore) -> None:
    for created_ns in (100, 200, 300):
        store.add_hint("n2", "b", f"k{created_ns}", 1, A, created_ns)
    assert store.expire_hints(200) == 1  # strictly older only
    assert [h.created_ns for h in store.hints_for("n2", 10)] == [200, 300]
    assert store.expire_hints(200) == 0
    assert store.expire_hints(-(10**19)) == 0
    assert store.expire_hints(10**19) == 2  # past SQLite's 64-bit integers: every hint
    assert store.hint_count() == 0
    assert store.hint_targets() == set()


@pytest.mark.parametrize("seed", range(4))
def test_random_operations_match_the_memory_store(seed: int, db_path: Path) -> None:
    rng = random.Random(seed)
    objects = [A, B, GONE, _obj(b""), _obj(b"x" * 300, node="n4")]
    memory = MemoryReplicaStore(max_hints=20)
    with SqliteReplicaStore(db_path, fsync=False, max_hints=20) as sqlite_store:
        for step in range(400):
            op = rng.randrange(9)
            bucket, key = rng.choice("bc"), rng.choice("klmn")
            partition, obj = rng.randrange(4), rng.choice(objects)
            hint_id, target = rng.randrange(1, 40), rng.choice(["n1", "n2", "n3"])
            results = []
            for replica in (memory, sqlite_store):
                replica_store: ReplicaStore = replica
                match op:
                    case 0 | 1:
                        replica_store.put(bucket, key, partition, obj)
                    case 2:
                        replica_store.remove(bucket, key)
                    case 3:
                        replica_store.add_hint(target, bucket, key, partition, obj, step)
                    case 4:
                        replica_store.remove_hint(hint_id)
                    case 5:
                        replica_store.expire_hints(step - 50)
                results.append((
                    replica_store.get(bucket, key),
                    list(replica_store.keys_in_partition(partition)),
                    replica_store.partitions(), replica_store.key_count(),
                    replica_store.hints_for(target, 5), replica_store.hint_targets(),
                    replica_store.hint_count()))
            assert results[0] == results[1], f"seed {seed} step {step} op {op}"


# --- SQLite specifics ----------------------------------------------------------------------


def test_everything_survives_close_and_reopen(db_path: Path) -> None:
    with SqliteReplicaStore(db_path) as store:
        store.put("b", "k", 3, B)
        store.put("b", "gone", 4, GONE)
        kept = store.add_hint("n2", "b", "k", 3, A, created_ns=5)
        dropped = store.add_hint("n2", "b", "x", 3, A, created_ns=6)
        assert kept is not None and dropped is not None
        store.remove_hint(dropped.hint_id)
    with SqliteReplicaStore(db_path) as store:
        assert store.get("b", "k") == B
        assert store.get("b", "gone") == GONE
        assert store.partitions() == {3, 4}
        assert store.key_count() == 2
        assert store.hint_count() == 1
        assert store.hints_for("n2", 10) == [kept]
        later = store.add_hint("n2", "b", "y", 3, A, created_ns=7)
        assert later is not None and later.hint_id > dropped.hint_id  # no reuse across opens


def test_the_file_is_in_wal_mode_with_the_chosen_sync(db_path: Path) -> None:
    for fsync, level in ((True, 2), (False, 0)):  # FULL, OFF
        with SqliteReplicaStore(db_path, fsync=fsync) as store:
            (synchronous,) = store._conn.execute("PRAGMA synchronous").fetchone()
            assert synchronous == level
    raw = sqlite3.connect(db_path)
    assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert raw.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone() == (
        SCHEMA_VERSION,)
    raw.close()


def test_values_up_to_one_mebibyte(db_path: Path) -> None:
    largest = _obj(b"\xff" * MAX_VALUE_BYTES)
    with SqliteReplicaStore(db_path, fsync=False) as store:
        store.put("b", "big", 0, largest)
    with SqliteReplicaStore(db_path, fsync=False) as store:
        assert store.get("b", "big") == largest


def test_keys_in_partition_pages_through_many_keys_while_they_change(db_path: Path) -> None:
    count = 2 * SCAN_CHUNK_ROWS + 5
    with SqliteReplicaStore(db_path, fsync=False) as store:
        store.put_many((f"b{i % 3}", f"k{i:05}", 9, A) for i in range(count))
        store.put("b0", "other partition", 8, A)
        seen = []
        for stored in store.keys_in_partition(9):
            seen.append((stored.bucket, stored.key))
            store.remove(stored.bucket, stored.key)  # the walk survives changes under it
        assert seen == sorted(seen)
        assert len(seen) == len(set(seen)) == count
        assert store.key_count() == 1


def test_put_many_and_batch_commit_together(db_path: Path) -> None:
    with SqliteReplicaStore(db_path, fsync=True) as store:
        store.put_many([("b", "k1", 1, A), ("b", "k2", 2, B)])
        with store.batch():
            store.put("b", "k3", 1, GONE)
            store.add_hint("n2", "b", "k3", 1, GONE, created_ns=1)
            store.put_many([("b", "k4", 1, A)])  # joins the batch
    with SqliteReplicaStore(db_path) as store:
        assert [k.key for k in store.keys_in_partition(1)] == ["k1", "k3", "k4"]
        assert store.hint_count() == 1


def test_a_failed_batch_leaves_nothing_behind(db_path: Path) -> None:
    with SqliteReplicaStore(db_path, fsync=False, max_hints=2) as store:
        store.put("b", "kept", 1, A)
        with pytest.raises(RuntimeError, match="boom"), store.batch():
            store.put("b", "k", 1, B)
            store.remove("b", "kept")
            store.add_hint("n2", "b", "k", 1, B, created_ns=1)
            raise RuntimeError("boom")
        assert store.get("b", "k") is None
        assert store.get("b", "kept") == A
        assert store.hint_count() == 0
        with store.batch():
            store.add_hint("n2", "b", "outer", 1, A, created_ns=1)
            with pytest.raises(RuntimeError, match="inner"), store.batch():
                store.add_hint("n2", "b", "inner", 1, A, created_ns=2)
                raise RuntimeError("inner")
            assert store.hint_count() == 1  # the inner savepoint alone was undone
        assert [h.key for h in store.hints_for("n2", 10)] == ["outer"]


def test_a_second_store_cannot_open_the_same_file(db_path: Path) -> None:
    with SqliteReplicaStore(db_path, fsync=False), pytest.raises(
            ReplicaStoreLockedError, match="in use by another store"):
        SqliteReplicaStore(db_path, fsync=False)
    with SqliteReplicaStore(db_path, fsync=False) as store:  # free again after close
        assert store.key_count() == 0


def _tamper(db_path: Path, statement: str, *params: object) -> None:
    raw = sqlite3.connect(db_path, isolation_level=None)
    raw.execute(statement, params)
    raw.close()


def test_an_undecodable_object_row_is_an_error_naming_it(db_path: Path) -> None:
    with SqliteReplicaStore(db_path) as store:
        store.put("bkt", "key1", 1, A)
        store.put("bkt", "key2", 1, A)
    _tamper(db_path, "UPDATE objects SET object = ? WHERE key = 'key1'", b"\xc1garbage")
    _tamper(db_path, "UPDATE objects SET object = ? WHERE key = 'key2'", "text")
    with SqliteReplicaStore(db_path) as store:
        with pytest.raises(CorruptReplicaError, match="object 'bkt'/'key1': undecodable: "
                                                      "versioned_object: not valid msgpack"):
            store.get("bkt", "key1")
        with pytest.raises(CorruptReplicaError, match="'bkt'/'key2': stored object is str"):
            store.get("bkt", "key2")


def test_an_object_row_not_matching_its_digest_is_an_error(db_path: Path) -> None:
    with SqliteReplicaStore(db_path) as store:
        store.put("bkt", "key", 1, A)
    _tamper(db_path, "UPDATE objects SET object = ?", encode_object(B))
    with SqliteReplicaStore(db_path) as store, pytest.raises(
            CorruptReplicaError, match=r"'bkt'/'key': stored digest .* does not match"):
        store.get("bkt", "key")


def test_an_undecodable_hint_is_an_error_naming_it(db_path: Path) -> None:
    with SqliteReplicaStore(db_path) as store:
        store.add_hint("n2", "bkt", "key", 1, A, created_ns=1)
    _tamper(db_path, "UPDATE hints SET object = ?", encode_object(A)[:-1])
    with SqliteReplicaStore(db_path) as store, pytest.raises(
            CorruptReplicaError, match=r"hint 1 \('bkt'/'key' for 'n2'\): undecodable"):
        store.hints_for("n2", 10)


def test_a_newer_schema_is_refused(db_path: Path) -> None:
    SqliteReplicaStore(db_path).close()
    _tamper(db_path, "UPDATE meta SET value = ? WHERE name = 'schema_version'",
            SCHEMA_VERSION + 1)
    with pytest.raises(ReplicaSchemaError, match=f"schema version {SCHEMA_VERSION + 1} was "
                                                 "written by a newer build"):
        SqliteReplicaStore(db_path)


def test_a_foreign_database_or_file_is_refused(db_path: Path, tmp_path: Path) -> None:
    _tamper(db_path, "CREATE TABLE accounts (id INTEGER)")
    with pytest.raises(ReplicaSchemaError, match=r"not a replica database .*accounts"):
        SqliteReplicaStore(db_path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"definitely not SQLite" * 300)
    with pytest.raises(CorruptReplicaError, match="not a readable replica database"):
        SqliteReplicaStore(junk)


def test_bad_arguments_are_refused(db_path: Path) -> None:
    with pytest.raises(ValueError, match="max_hints must be an integer >= 0"):
        SqliteReplicaStore(db_path, max_hints=-1)
    with pytest.raises(ValueError, match="SQLite refused WAL mode"):
        SqliteReplicaStore(":memory:")
    with SqliteReplicaStore(db_path, fsync=False) as store:
        with pytest.raises(ValueError, match="limit must be >= 0"):
            store.hints_for("n2", -1)
        with pytest.raises(ValueError, match="partition must fit a signed 64-bit integer"):
            store.put("b", "k", 2**63, A)
        with pytest.raises(ValueError, match="created_ns must fit a signed 64-bit integer"):
            store.add_hint("n2", "b", "k", 1, A, created_ns=2**64)
        assert store.key_count() == store.hint_count() == 0
