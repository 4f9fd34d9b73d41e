"""The quorum-store core (concord.dkv.node) on a hand-driven network: writes and reads at
their quorums, failures that say how many replicas answered, forwarding, sloppy quorum and
hints, read repair, LWW, tombstone collection, hand-off and anti-entropy; and the settings
(concord.dkv.config)."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import replace

import pytest

from concord.dkv.config import BucketProps, DkvConfig
from concord.dkv.messages import (
    DkvMessage,
    ForwardPut,
    HintDelivery,
    PutAck,
    ReplicaGet,
    ReplicaPut,
)
from concord.dkv.node import DkvNode, OpResult
from concord.dkv.ring import partition_of
from concord.dkv.store import MemoryReplicaStore
from concord.dkv.versions import EMPTY_CONTEXT, VersionedObject, VersionVector, new_write

MS = 1_000_000
S = 1_000_000_000
CONFIG = DkvConfig(partition_count=16, request_timeout_ns=1 * S, hint_replay_interval_ns=100 * MS,
                   sweep_interval_ns=100 * MS, aae_interval_ns=100 * MS,
                   aae_timeout_ns=1 * S, hint_max_age_ns=60 * S, tombstone_grace_ns=120 * S)


class Cluster:
    """Nodes wired by a FIFO queue; ``down`` nodes drop what is sent to them."""

    def __init__(self, count: int, config: DkvConfig = CONFIG, max_hints: int = 1000) -> None:
        self.ids = [f"n{i}" for i in range(count)]
        self.config = config
        self.stores = {i: MemoryReplicaStore(max_hints) for i in self.ids}
        self.nodes = {i: DkvNode(i, self.stores[i], random.Random(i), config)
                      for i in self.ids}
        self.down: set[str] = set()
        self.now_ns = 1 * S
        self.results: dict[int, OpResult] = {}
        self.sent: list[tuple[str, str, DkvMessage]] = []
        self.queue: deque[tuple[str, str, DkvMessage]] = deque()
        self._op = 0
        self.view()

    def view(self, members: list[str] | None = None, alive: list[str] | None = None,
             only: list[str] | None = None) -> None:
        members = self.ids if members is None else members
        alive = [i for i in members if i not in self.down] if alive is None else alive
        for node_id in only or self.ids:
            self.nodes[node_id].set_view(members, alive)

    def collect(self, node_id: str) -> None:
        ready = self.nodes[node_id].ready()
        for out in ready.messages:
            self.sent.append((node_id, out.recipient, out.message))
            self.queue.append((node_id, out.recipient, out.message))
        for result in ready.results:
            assert result.op_id not in self.results
            self.results[result.op_id] = result

    def deliver(self, limit: int = 100_000) -> None:
        while self.queue and limit:
            limit -= 1
            sender, recipient, message = self.queue.popleft()
            if recipient in self.down or sender in self.down:
                continue
            self.nodes[recipient].step(sender, message, self.now_ns)
            self.collect(recipient)

    def put(self, via: str, key: str, value: bytes | None,
            context: VersionVector = EMPTY_CONTEXT, props: BucketProps | None = None,
            bucket: str = "b", deliver: bool = True) -> int:
        self._op += 1
        self.nodes[via].put(self._op, bucket, key, value, context, self.now_ns, props)
        self.collect(via)
        if deliver:
            self.deliver()
        return self._op

    def get(self, via: str, key: str, props: BucketProps | None = None, bucket: str = "b",
            deliver: bool = True) -> int:
        self._op += 1
        self.nodes[via].get(self._op, bucket, key, self.now_ns, props)
        self.collect(via)
        if deliver:
            self.deliver()
        return self._op

    def tick(self, duration_ns: int, step_ns: int = 50 * MS) -> None:
        end = self.now_ns + duration_ns
        while self.now_ns < end:
            self.now_ns += step_ns
            for node_id in self.ids:
                if node_id not in self.down:
                    self.nodes[node_id].tick(self.now_ns)
                    self.collect(node_id)
            self.deliver()

    def primaries(self, key: str, bucket: str = "b") -> tuple[str, ...]:
        ring = self.nodes[self.ids[0]].ring
        return ring.preference_list(partition_of(bucket, key, self.config.partition_count),
                                    self.config.props_for(bucket).n)

    def others(self, key: str) -> list[str]:
        return [i for i in self.ids if i not in self.primaries(key)]

    def copy(self, node_id: str, key: str, bucket: str = "b") -> VersionedObject | None:
        return self.stores[node_id].get(bucket, key)


def values(obj: VersionedObject | None) -> list[bytes | None]:
    return [] if obj is None else sorted((s.value for s in obj.siblings), key=repr)


# --- writes and reads -------------------------------------------------------------------


def test_a_write_reaches_every_primary_and_reads_back() -> None:
    cluster = Cluster(5)
    a, b, c = cluster.primaries("k")
    done = cluster.results[cluster.put(a, "k", b"v1")]
    assert done.ok and done.needed == 2 and done.targets == 3 and done.replicas[0] == a
    assert all(values(cluster.copy(p, "k")) == [b"v1"] for p in (a, b, c))
    assert all(cluster.copy(o, "k") is None for o in cluster.others("k"))
    read = cluster.results[cluster.get(cluster.others("k")[0], "k")]
    assert read.ok and values(read.obj) == [b"v1"] and read.answered >= 2


def test_a_missing_key_reads_as_none() -> None:
    cluster = Cluster(3)
    read = cluster.results[cluster.get("n0", "nothing")]
    assert read.ok and read.obj is None


def test_a_write_with_the_read_context_replaces_and_blind_writes_make_siblings() -> None:
    cluster = Cluster(4)
    a, b, _ = cluster.primaries("k")
    first = cluster.results[cluster.put(a, "k", b"1")]
    assert first.obj is not None
    cluster.put(b, "k", b"2")  # blind: a sibling
    read = cluster.results[cluster.get(a, "k")]
    assert values(read.obj) == [b"1", b"2"]
    assert read.obj is not None
    cluster.put(b, "k", b"12", read.obj.context())
    assert values(cluster.results[cluster.get(a, "k")].obj) == [b"12"]


def test_a_write_that_misses_w_says_how_many_replicas_answered() -> None:
    cluster = Cluster(3)
    cluster.down = {"n1", "n2"}  # down, but not yet detected: still asked
    op = cluster.put("n0", "k", b"v")
    assert op not in cluster.results
    cluster.tick(1 * S + 50 * MS)
    result = cluster.results[op]
    assert not result.ok and result.obj is None
    assert (result.replicas, result.needed, result.answered, result.targets) == (("n0",), 2, 1, 3)
    assert "1 of W=2 required replicas acknowledged (n0); 1 of 3 replicas answered" in \
        result.error
    assert cluster.nodes["n0"].status().puts_failed == 1


def test_a_read_that_misses_r_fails_with_counts() -> None:
    cluster = Cluster(3)
    cluster.down = {"n1", "n2"}
    op = cluster.get("n0", "k", props=BucketProps(r=3))
    cluster.tick(1 * S + 50 * MS)
    result = cluster.results[op]
    assert not result.ok
    assert "1 of R=3 required replicas answered (n0); asked 3" in result.error


def test_too_few_reachable_replicas_fail_at_once() -> None:
    cluster = Cluster(3)
    cluster.down = {"n1", "n2"}
    cluster.view()
    result = cluster.results[cluster.put("n0", "k", b"v")]
    assert not result.ok and "W=2 needs 2 replicas, only 1 reachable (n0)" in result.error
    read = cluster.results[cluster.get("n0", "k")]
    assert not read.ok and "R=2 needs 2 replicas, only 1 reachable" in read.error
    assert cluster.results[cluster.get("n0", "k", props=BucketProps(r=1))].ok


def test_a_node_outside_the_preference_list_forwards_writes() -> None:
    cluster = Cluster(5)
    outsider = cluster.others("k")[0]
    op = cluster.put(outsider, "k", b"v")
    forwards = [m for s, _, m in cluster.sent if s == outsider and isinstance(m, ForwardPut)]
    assert len(forwards) == 1
    result = cluster.results[op]
    assert result.ok and result.obj is not None
    assert result.obj.siblings[0].dot.node.startswith(cluster.primaries("k")[0] + "@")
    assert cluster.copy(outsider, "k") is None
    assert cluster.nodes[outsider].status().forwarded == 1


def test_a_write_past_max_siblings_is_refused_until_the_client_merges() -> None:
    cluster = Cluster(5, replace(CONFIG, max_siblings=3))
    coordinator, outsider = cluster.primaries("k")[0], cluster.others("k")[0]
    for value in (b"a", b"b", b"c"):  # blind writes: each one a sibling
        assert cluster.results[cluster.put(coordinator, "k", value)].ok
    stored = cluster.copy(coordinator, "k")
    sent = len(cluster.sent)
    refused = cluster.results[cluster.put(coordinator, "k", b"d")]
    assert not refused.ok and refused.refused
    assert "4 siblings (max_siblings=3)" in refused.error
    assert cluster.copy(coordinator, "k") == stored and len(cluster.sent) == sent  # nothing
    forwarded = cluster.results[cluster.put(outsider, "k", b"d")]
    assert not forwarded.ok and forwarded.refused  # the coordinator's verdict, forwarded
    assert cluster.nodes[coordinator].status().puts_failed == 2
    read = cluster.results[cluster.get(coordinator, "k")]
    assert read.obj is not None
    merged = cluster.results[cluster.put(coordinator, "k", b"abc", read.obj.context())]
    assert merged.ok and values(cluster.copy(coordinator, "k")) == [b"abc"]


def test_a_forward_to_a_coordinator_that_never_answers_fails() -> None:
    cluster = Cluster(5)
    cluster.down = {cluster.primaries("k")[0]}
    op = cluster.put(cluster.others("k")[0], "k", b"v")
    cluster.tick(2 * S + 100 * MS)
    assert not cluster.results[op].ok
    assert "forwarded to" in cluster.results[op].error


def test_bad_requests_raise() -> None:
    node = Cluster(3).nodes["n0"]
    with pytest.raises(ValueError, match="bucket"):
        node.put(1, "", "k", b"v", EMPTY_CONTEXT, 0)
    with pytest.raises(ValueError, match="NUL"):
        node.get(1, "a\x00b", "k", 0)
    with pytest.raises(ValueError, match="key"):
        node.get(1, "b", "", 0)
    with pytest.raises(ValueError, match="value"):
        node.put(1, "b", "k", b"x" * ((1 << 20) + 1), EMPTY_CONTEXT, 0)
    with pytest.raises(ValueError, match="context counter"):
        node.put(1, "b", "k", b"v", VersionVector((("n0", 1 << 63),)), 0)
    with pytest.raises(ValueError, match="override r and w only"):
        node.get(1, "b", "k", 0, BucketProps(n=2, r=1, w=1))
    node.get(7, "b", "k", 0)
    with pytest.raises(ValueError, match="already in flight"):
        node.get(7, "b", "k", 0)


def test_past_the_bound_of_pending_requests_operations_are_refused() -> None:
    cluster = Cluster(3, replace(CONFIG, max_pending_ops=2))
    cluster.get("n0", "a", deliver=False)
    cluster.get("n0", "b", deliver=False)
    refused = cluster.results[cluster.get("n0", "c", deliver=False)]
    assert not refused.ok and "max_pending_ops=2" in refused.error


# --- sloppy quorum and hints --------------------------------------------------------------


def test_a_down_primary_is_replaced_by_a_fallback_holding_a_hint() -> None:
    cluster = Cluster(5)
    a, b, c = cluster.primaries("k")
    cluster.down = {c}
    cluster.view()
    result = cluster.results[cluster.put(a, "k", b"v")]
    assert result.ok and result.targets == 3
    puts = [(r, m) for s, r, m in cluster.sent if isinstance(m, ReplicaPut)]
    fallback = next(r for r, m in puts if m.hint_for == c)
    assert fallback not in (a, b)
    assert [h.target for h in cluster.stores[fallback].hints_for(c, 10)] == [c]
    assert values(cluster.copy(fallback, "k")) == [b"v"]  # reads see it
    # the owner comes back: the hint is replayed and dropped
    cluster.down = set()
    cluster.view()
    cluster.tick(200 * MS)
    assert values(cluster.copy(c, "k")) == [b"v"]
    assert cluster.stores[fallback].hint_count() == 0
    assert cluster.nodes[fallback].status().hints_delivered == 1
    assert any(isinstance(m, HintDelivery) for _, _, m in cluster.sent)
    # and the fallback hands its copy off to the primaries, then forgets it
    cluster.tick(500 * MS)
    assert cluster.copy(fallback, "k") is None
    assert cluster.nodes[fallback].status().handoffs == 1


def test_a_full_hint_store_refuses_and_the_write_counts_it_unacknowledged() -> None:
    cluster = Cluster(5, max_hints=0)
    a, b, c = cluster.primaries("k")
    cluster.down = {b, c}
    cluster.view()
    result = cluster.results[cluster.put(a, "k", b"v")]
    assert not result.ok
    assert "1 of W=2 required replicas acknowledged" in result.error
    assert "every replica answered" in result.error
    refusals = [m for _, _, m in cluster.sent if isinstance(m, PutAck) and not m.ok]
    assert len(refusals) == 2 and refusals[0].error == "hint store full"
    assert all(cluster.copy(o, "k") is None for o in cluster.others("k"))


def test_hints_expire_after_their_max_age() -> None:
    cluster = Cluster(5)
    a, _, c = cluster.primaries("k")
    cluster.down = {c}
    cluster.view()
    cluster.put(a, "k", b"v")
    assert sum(s.hint_count() for s in cluster.stores.values()) == 1
    cluster.tick(61 * S, step_ns=1 * S)
    assert sum(s.hint_count() for s in cluster.stores.values()) == 0
    assert sum(n.status().hints_expired for n in cluster.nodes.values()) == 1


# --- read repair ------------------------------------------------------------------------


def stale_setup(cluster: Cluster) -> tuple[str, str, str]:
    """v1 everywhere, then v2 on two primaries only (the third was unreachable)."""
    a, b, c = cluster.primaries("k")
    first = cluster.results[cluster.put(a, "k", b"v1")]
    assert first.obj is not None
    cluster.down = {c}
    cluster.put(a, "k", b"v2", first.obj.context())
    cluster.down = set()
    assert values(cluster.copy(c, "k")) == [b"v1"]
    return a, b, c


def test_a_quorum_read_waits_for_its_repairs() -> None:
    cluster = Cluster(3)
    _, _, c = stale_setup(cluster)
    op = cluster.get(c, "k", deliver=False)  # c's own stale copy is one of the two
    while op not in cluster.results:
        sender, recipient, message = cluster.queue.popleft()
        cluster.nodes[recipient].step(sender, message, cluster.now_ns)
        cluster.collect(recipient)
    assert values(cluster.results[op].obj) == [b"v2"]
    assert values(cluster.copy(c, "k")) == [b"v2"]  # repaired before the answer


def test_a_quorum_read_repairs_a_remote_stale_replica_before_answering() -> None:
    cluster = Cluster(3)
    a, _, c = stale_setup(cluster)
    op = cluster.get(a, "k", props=BucketProps(r=3), deliver=False)
    while op not in cluster.results:
        sender, recipient, message = cluster.queue.popleft()
        cluster.nodes[recipient].step(sender, message, cluster.now_ns)
        cluster.collect(recipient)
    assert (sender, type(message)) == (c, PutAck), "answered when the repair was acknowledged"
    assert any(isinstance(m, ReplicaGet) for _, _, m in cluster.sent)
    assert values(cluster.results[op].obj) == [b"v2"]
    assert values(cluster.copy(c, "k")) == [b"v2"]
    assert cluster.nodes[a].status().read_repairs == 1


def test_a_read_below_quorum_answers_at_once_and_repairs_in_the_background() -> None:
    cluster = Cluster(3)
    _, _, c = stale_setup(cluster)
    op = cluster.get(c, "k", props=BucketProps(r=1), deliver=False)
    assert values(cluster.results[op].obj) == [b"v1"]  # R=1: its own stale copy
    cluster.deliver()
    assert values(cluster.copy(c, "k")) == [b"v2"]  # late replies repaired it


# --- LWW ---------------------------------------------------------------------------------


def test_an_lww_bucket_keeps_only_the_newest_write() -> None:
    config = replace(CONFIG, buckets=(("cache", BucketProps(lww=True)),))
    cluster = Cluster(3, config)
    cluster.put("n0", "k", b"old", bucket="cache")
    cluster.now_ns += 1 * MS
    cluster.put("n1", "k", b"new", bucket="cache")
    for node_id in cluster.ids:
        assert values(cluster.copy(node_id, "k", "cache")) == [b"new"]
    read = cluster.results[cluster.get("n2", "k", bucket="cache")]
    assert values(read.obj) == [b"new"]


# --- deletes and tombstones -------------------------------------------------------------


def test_a_tombstone_is_collected_once_every_primary_holds_it_and_it_is_old() -> None:
    cluster = Cluster(3)
    written = cluster.results[cluster.put("n0", "k", b"v")]
    assert written.obj is not None
    deleted = cluster.results[cluster.put("n1", "k", None, written.obj.context())]
    assert deleted.ok and deleted.obj is not None and deleted.obj.is_tombstone
    cluster.tick(1 * S)
    assert all(cluster.copy(i, "k") is not None for i in cluster.ids)  # grace period
    cluster.tick(121 * S, step_ns=1 * S)
    assert all(cluster.copy(i, "k") is None for i in cluster.ids)
    assert sum(n.status().tombstones_collected for n in cluster.nodes.values()) >= 3


def test_a_tombstone_is_kept_while_a_primary_holds_another_version() -> None:
    config = replace(CONFIG, aae_interval_ns=3600 * S,
                     aae_catch_up_interval_ns=3600 * S)  # nothing repairs the difference
    cluster = Cluster(3, config)
    written = cluster.results[cluster.put("n0", "k", b"v")]
    assert written.obj is not None
    cluster.down = {"n2"}
    cluster.put("n0", "k", None, written.obj.context())
    cluster.down = set()
    cluster.stores["n2"].put("b", "k", partition_of("b", "k", 16),
                             new_write(None, EMPTY_CONTEXT, "zz", b"other", 5))
    cluster.tick(130 * S, step_ns=1 * S)
    for node_id in ("n0", "n1"):
        copy = cluster.copy(node_id, "k")
        assert copy is not None and copy.is_tombstone
    assert values(cluster.copy("n2", "k")) == [b"other"]
    assert sum(n.status().tombstones_collected for n in cluster.nodes.values()) == 0


# --- hand-off and anti-entropy ------------------------------------------------------------


def test_a_joining_member_gets_its_keys_and_old_owners_let_go() -> None:
    cluster = Cluster(5)
    four = cluster.ids[:4]
    cluster.view(members=four, alive=four)
    keys = [f"key-{i}" for i in range(40)]
    for key in keys:
        assert cluster.results[cluster.put("n0", key, key.encode())].ok
    cluster.view()  # n4 joins
    cluster.tick(3 * S)
    for key in keys:
        holders = {i for i in cluster.ids if cluster.copy(i, key) is not None}
        assert holders == set(cluster.primaries(key)), key
    assert sum(1 for k in keys if "n4" in cluster.primaries(k)) > 0
    assert sum(n.status().handoffs for n in cluster.nodes.values()) > 0


def test_a_node_that_dropped_a_copy_writes_under_a_new_actor() -> None:
    """After a hand-off its old dots may be missing from some copy: a new actor id keeps a
    later context from claiming them."""
    cluster = Cluster(4)
    outsider = cluster.others("k")[0]
    cluster.down = {cluster.primaries("k")[0]}
    cluster.view()
    first = cluster.results[cluster.put(outsider, "k", b"1")]
    assert first.ok and first.obj is not None
    old_actor = first.obj.siblings[0].dot.node
    assert old_actor.startswith(outsider + "@")
    cluster.down = set()
    cluster.view()
    cluster.tick(1 * S)
    assert cluster.copy(outsider, "k") is None  # handed off
    cluster.down = {cluster.primaries("k")[0]}
    cluster.view()
    second = cluster.results[cluster.put(outsider, "k", b"2")]
    assert second.obj is not None
    actors = {s.dot.node for s in second.obj.siblings}
    assert len(actors) == 1 and old_actor not in actors


def test_anti_entropy_repairs_a_replica_that_missed_writes() -> None:
    cluster = Cluster(3, replace(CONFIG, hint_replay_interval_ns=3600 * S))
    cluster.down = {"n2"}
    keys = [f"key-{i}" for i in range(30)]
    for key in keys:
        cluster.put("n0", key, b"v")
    cluster.down = set()
    assert cluster.stores["n2"].key_count() == 0
    cluster.tick(4 * S)  # a round: 16 partitions x 2 peers, one exchange per 100 ms
    assert cluster.stores["n2"].key_count() == 30
    status = [cluster.nodes[i].status() for i in cluster.ids]
    assert sum(s.aae_keys_repaired for s in status) >= 30
    assert sum(s.aae_exchanges for s in status) > 0
    for partition in range(16):
        assert len({cluster.nodes[i].tree(partition, 3).root() for i in cluster.ids}) == 1


def _exchanges(cluster: Cluster) -> int:
    return sum(cluster.nodes[i].status().aae_exchanges for i in cluster.ids)


PACED = replace(CONFIG, hint_replay_interval_ns=3600 * S, aae_interval_ns=1 * S,
                aae_catch_up_interval_ns=50 * MS)
"""Anti-entropy once a second, every 50 ms while catching up; hints never replayed."""


def test_anti_entropy_compares_at_its_interval_while_nothing_waits() -> None:
    cluster = Cluster(3, PACED)
    cluster.tick(1 * S, step_ns=10 * MS)  # each node's first exchange is somewhere in here
    before = _exchanges(cluster)
    cluster.tick(10 * S, step_ns=10 * MS)
    assert 27 <= _exchanges(cluster) - before <= 33  # 3 nodes, one a second each


def test_a_returning_peer_is_repaired_at_the_catch_up_pace() -> None:
    """Every partition shared with a peer that came back is compared every 50 ms, not once a
    second, and a pair whose exchange ``aae_max_keys`` cut short is compared again at once."""
    for max_keys in (1_000, 1):
        cluster = Cluster(3, replace(PACED, aae_max_keys=max_keys))
        cluster.tick(2 * S, step_ns=10 * MS)
        cluster.down = {"n2"}
        cluster.view()
        keys = [f"key-{i}" for i in range(40)]
        for key in keys:
            cluster.put("n0", key, b"v")
        cluster.down = set()
        cluster.view()  # n2 is back: 16 partitions x 2 peers to compare first
        assert cluster.stores["n2"].key_count() == 0
        cluster.tick(3 * S, step_ns=10 * MS)  # once a second, this would take over 30 s
        assert cluster.stores["n2"].key_count() == len(keys), f"max_keys={max_keys}"
        for partition in range(16):
            assert len({cluster.nodes[i].tree(partition, 3).root() for i in cluster.ids}) == 1
        before = _exchanges(cluster)
        cluster.tick(5 * S, step_ns=10 * MS)
        assert _exchanges(cluster) - before <= 3 * 6  # back to one a second


def test_an_owner_back_up_gets_its_hints_batch_after_batch_not_one_batch_an_interval() -> None:
    config = replace(CONFIG, hint_replay_interval_ns=1 * S, hint_replay_batch=4,
                     aae_interval_ns=3600 * S, aae_catch_up_interval_ns=3600 * S)
    cluster = Cluster(4, config)
    keys = [f"key-{i}" for i in range(60)]
    victim = "n3"
    owned = [key for key in keys if victim in cluster.primaries(key)]
    cluster.down = {victim}
    cluster.view()
    for key in owned:
        cluster.put(next(i for i in cluster.primaries(key) if i != victim), key, b"v")
    held = sum(cluster.nodes[i].status().hints_held for i in cluster.ids)
    assert held == len(owned) > 3 * config.hint_replay_batch
    cluster.down = set()
    cluster.view()
    cluster.tick(1 * S + 100 * MS, step_ns=10 * MS)  # one interval: one batch of 4 before
    assert sum(cluster.nodes[i].status().hints_held for i in cluster.ids) == 0
    assert all(cluster.copy(victim, key) is not None for key in owned)


def test_status_counts_keys_and_hints() -> None:
    cluster = Cluster(4)
    a, _, c = cluster.primaries("k")
    cluster.down = {c}
    cluster.view()
    cluster.put(a, "k", b"v")
    held = {i: cluster.nodes[i].status() for i in cluster.ids}
    assert sum(s.keys for s in held.values()) == 3
    assert sum(s.hints_held for s in held.values()) == 1
    assert held[a].puts_ok == 1 and held[a].ring_members == 4 and held[a].alive_members == 3


# --- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "message"), [
    ({"r": 4}, "r=4 is more than n=3"),
    ({"w": 4}, "w=4 is more than n=3"),
    ({"n": 0}, "n must be >= 1"),
    ({"r": True}, "r must be an integer"),
    ({"lww": "yes"}, "lww must be a boolean"),
    ({"x": 1, "q": 2}, "unknown field"),
])
def test_bucket_props_are_validated(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BucketProps.from_mapping(fields)


def test_bucket_props_overrides_keep_n_and_lww() -> None:
    props = BucketProps.from_mapping({"n": 5, "lww": True})
    assert (props.n, props.r, props.w, props.lww, props.quorum) == (5, 2, 2, True, 3)
    assert props.override(r=5).r == 5 and props.override(w=1).w == 1
    with pytest.raises(ValueError, match="r=6"):
        props.override(r=6)


@pytest.mark.parametrize(("fields", "message"), [
    ({"partition_count": 48}, "power of two"),
    ({"merkle_fanout": 3}, "merkle_fanout"),
    ({"request_timeout_ns": 0}, "request_timeout_ns must be >= 1"),
    ({"tombstone_grace_ns": 10, "hint_max_age_ns": 10}, "must exceed hint_max_age_ns"),
    ({"buckets": (("a", BucketProps()), ("a", BucketProps()))}, "listed twice"),
    ({"buckets": (("", BucketProps()),)}, "bucket must be"),
    ({"partition_count": 1 << 16, "merkle_fanout": 1 << 16, "merkle_depth": 4}, "64 bits"),
])
def test_the_config_is_validated(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DkvConfig(**fields)  # type: ignore[arg-type]


def test_bucket_props_come_from_the_table_or_the_default() -> None:
    config = DkvConfig(buckets=(("five", BucketProps(n=5, r=3, w=3)),))
    assert config.props_for("five").n == 5 and config.props_for("other").n == 3
    assert config.replica_counts() == (3, 5)


def test_a_peer_that_comes_back_is_compared_first() -> None:
    """After a peer returns (a healed partition, a restart), the next anti-entropy exchanges
    compare the partitions shared with it before the round robin goes on."""
    from concord.dkv.messages import AaeLevel

    config = replace(CONFIG, aae_interval_ns=10 * MS)
    node = DkvNode("n0", MemoryReplicaStore(), random.Random(7), config)
    members = [f"n{i}" for i in range(5)]
    node.set_view(members, members)
    node.set_view(members, [m for m in members if m != "n3"])
    node.set_view(members, members)  # n3 is back
    shared = [p for p in range(config.partition_count)
              if {"n0", "n3"} <= set(node.ring.preference_list(p, 3))]
    assert shared, "n0 and n3 share partitions on this ring"
    asked: list[tuple[str, int]] = []
    now_ns = 1 * S
    node.tick(now_ns)  # the first tick only schedules the timers
    for _ in range(len(shared)):
        now_ns += 20 * MS
        node.tick(now_ns)
        for outbound in node.ready().messages:
            if isinstance(outbound.message, AaeLevel):
                asked.append((outbound.recipient, outbound.message.partition))
                node._drop_background(outbound.message.request_id)  # answer never comes
    assert [peer for peer, _ in asked] == ["n3"] * len(shared)
    assert sorted(partition for _, partition in asked) == shared


def test_a_context_keeps_only_the_newest_actors_of_each_node() -> None:
    """The pruning rule: of one node's actor ids (one per restart) a write's context keeps
    the newest ``max_actors_per_node``; other nodes' entries are untouched."""
    cluster = Cluster(3)
    old_actors = {f"n1@{stamp}": 7 for stamp in range(1, 7)}  # six restarts of n1
    context = VersionVector.from_mapping({**old_actors, "n2@5": 3})
    op = cluster.put("n0", "k", b"v", context)
    result = cluster.results[op]
    assert result.ok and result.obj is not None
    [written] = [s for s in result.obj.siblings if s.value == b"v"]
    kept = written.context.as_dict()
    assert kept == {"n1@3": 7, "n1@4": 7, "n1@5": 7, "n1@6": 7, "n2@5": 3}
    assert CONFIG.max_actors_per_node == 4
