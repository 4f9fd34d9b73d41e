"""Unit tests of log compaction and InstallSnapshot (§7), and of restarting a node from what
its Readies persisted (§5.1-5.2, Figure 2's persistent state)."""

from __future__ import annotations

import pytest
from raft_harness import Cluster

from concord.raft import (
    InstallSnapshot,
    Membership,
    MembershipChange,
    MembershipChangeOp,
    Role,
)

ELECTION_TIMEOUT_TICKS = 10
COMMANDS = 10


def committed_cluster(lagging: str = "") -> Cluster:
    """a leads; COMMANDS commands after its no-op are committed and applied everywhere except
    on ``lagging``, which is cut off."""
    cluster = Cluster("abc")
    cluster.elect("a")
    if lagging:
        cluster.isolate(lagging)
    for i in range(COMMANDS):
        cluster.propose("a", f"w{i}".encode())
    cluster.settle()
    cluster.run(1)
    return cluster


@pytest.mark.parametrize("index", [1, 6, COMMANDS + 1])
def test_7_compact_drops_entries_up_to_the_snapshot(index: int) -> None:
    """§7: the snapshot replaces the entries it covers; the last one's term is kept for the
    AppendEntries consistency check."""
    cluster = committed_cluster()
    leader = cluster["a"]
    last_index, last_term = leader.log.last_index, leader.log.last_term
    term_at_index = leader.log.term_at(index)
    cluster.compact("a", index)
    status = leader.status()
    assert (status.snapshot_index, status.first_index, status.last_index) == (
        index, index + 1, last_index)
    assert leader.log.term_at(index) == term_at_index
    assert leader.log.term_at(index - 1) is None
    assert (leader.log.last_index, leader.log.last_term) == (last_index, last_term)
    assert [e.index for e in cluster.disks["a"].entries] == list(range(index + 1, last_index + 1))
    index_after, _ = cluster.propose("a", b"after compaction")
    cluster.settle()
    assert leader.commit_index == index_after


def test_7_lagging_follower_gets_the_snapshot_and_catches_up() -> None:
    """§7: a follower needing compacted entries receives InstallSnapshot, then the rest."""
    cluster = committed_cluster(lagging="c")
    cluster.compact("a", 8)
    cluster.heal()
    cluster.run(3)
    assert cluster.sent_count(InstallSnapshot, "a", "c") == 1
    follower = cluster["c"]
    assert follower.status().snapshot_index == 8
    assert cluster.disks["c"].snapshot == cluster.disks["a"].snapshot
    assert cluster.log_of("c") == cluster.log_of("a")
    assert follower.commit_index == cluster["a"].commit_index
    assert cluster.machines["c"] == cluster.machines["a"]
    index, _ = cluster.propose("a", b"after catch-up")
    cluster.settle()
    cluster.run(1)
    assert cluster.machines["c"][index].data == b"after catch-up"


def test_7_lost_snapshot_is_sent_again() -> None:
    """§7: InstallSnapshot is retried like any RPC; the leader waits an election timeout
    before concluding the first copy was lost."""
    cluster = committed_cluster(lagging="c")
    cluster.compact("a", 8)
    cluster.heal()
    sent_at_tick: list[int] = []
    for tick in range(1, 4 * ELECTION_TIMEOUT_TICKS):
        cluster.tick()
        cluster.settle(lambda m: not isinstance(m, InstallSnapshot))
        while len(sent_at_tick) < cluster.sent_count(InstallSnapshot, "a", "c"):
            sent_at_tick.append(tick)
        if len(sent_at_tick) == 1:
            assert len(cluster.drop(lambda m: isinstance(m, InstallSnapshot))) <= 1
        cluster.settle()
    assert len(sent_at_tick) == 2
    first, second = sent_at_tick
    # not resent while it may still be on its way, and not much later than that either
    assert ELECTION_TIMEOUT_TICKS <= second - first <= ELECTION_TIMEOUT_TICKS + 2
    assert cluster["c"].status().snapshot_index == 8
    assert cluster.machines["c"] == cluster.machines["a"]


def test_7_snapshot_covering_entries_the_follower_already_holds_keeps_them() -> None:
    """§7: a follower whose log already contains the snapshot's last entry keeps its log and
    only learns that those entries are committed."""
    cluster = committed_cluster()
    leader = cluster["a"]
    follower = cluster["b"]
    entries_before = cluster.log_of("b")
    snapshot_index = leader.commit_index
    cluster.compact("a", snapshot_index)
    snapshot = cluster.disks["a"].snapshot
    assert snapshot is not None
    follower.step(InstallSnapshot(leader.term, "a", "b", snapshot))
    cluster.process("b")
    assert cluster.log_of("b") == entries_before
    assert follower.status().snapshot_index == 0
    assert follower.commit_index == snapshot_index


@pytest.mark.parametrize("compacted", [False, True], ids=["log only", "with snapshot"])
@pytest.mark.parametrize("crashed", ["a", "b"], ids=["leader restarts", "follower restarts"])
def test_5_restarted_node_resumes_from_its_disk(crashed: str, compacted: bool) -> None:
    """§5.1-5.2 and §7 (Figure 2): currentTerm, votedFor, the log and the snapshot survive a
    crash; the node comes back as a follower and re-applies its committed entries."""
    cluster = committed_cluster()
    if compacted:
        cluster.compact(crashed, 6)
    before = cluster[crashed].status()
    log_before = cluster.log_of(crashed)
    machine_before = dict(cluster.machines[crashed])
    node = cluster.restart(crashed)
    after = node.status()
    assert (after.term, after.vote, after.commit_index) == (
        before.term, before.vote, before.commit_index)
    assert (after.snapshot_index, after.first_index, after.last_index) == (
        before.snapshot_index, before.first_index, before.last_index)
    assert after.membership == before.membership
    assert cluster.log_of(crashed) == log_before
    assert node.role is Role.FOLLOWER
    assert cluster.machines[crashed] == machine_before, "re-applied from snapshot and log"
    cluster.run(3 * ELECTION_TIMEOUT_TICKS)
    leader = cluster.leader()
    assert leader is not None
    index, _ = cluster.propose(leader, b"after restart")
    cluster.settle()
    cluster.run(1)
    for n in "abc":
        assert cluster.machines[n][index].data == b"after restart"
    assert all(len(entries) == 1 for entries in cluster.applied_by_index.values())


@pytest.mark.parametrize("restart_joiner", [False, True], ids=["running", "restarted"])
def test_7_snapshot_carries_the_configuration_it_covers(restart_joiner: bool) -> None:
    """§7 and thesis §5.1 (configuration in the snapshot): a server that learns the cluster
    only through a snapshot gets the configuration in force at its last index, and keeps it
    across a restart."""
    cluster = committed_cluster()
    joiner = cluster.add_node("d")
    cluster.isolate("d")
    config_index, _ = cluster["a"].propose_membership_change(
        MembershipChange(MembershipChangeOp.ADD_LEARNER, "d"))
    cluster.process("a")
    cluster.settle()
    cluster.propose("a", b"after the change")
    cluster.settle()
    cluster.run(1)
    cluster.compact("a", cluster["a"].commit_index)
    expected = Membership(frozenset("abc"), frozenset("d"))
    snapshot = cluster.disks["a"].snapshot
    assert snapshot is not None and snapshot.meta.membership == expected
    assert snapshot.meta.index > config_index
    cluster.heal()
    cluster.run(3)
    assert cluster.sent_count(InstallSnapshot, "a", "d") == 1
    if restart_joiner:
        joiner = cluster.restart("d")
    assert joiner.membership == expected
    assert joiner.status().snapshot_index == snapshot.meta.index
    assert cluster.machines["d"] == cluster.machines["a"]
