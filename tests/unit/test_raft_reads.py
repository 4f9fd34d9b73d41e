"""Unit tests of linearizable reads on the leader: ReadIndex (thesis §6.4) and leases (thesis
§6.4.1), their batching, and what happens to pending reads when leadership is lost."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from raft_harness import Cluster

from concord.raft import Heartbeat, ReadMode, ReadState

ELECTION_TIMEOUT_TICKS = 10
LEASE_TICKS = 9  # int(10 * (1 - 0.1)) with the default max_clock_drift


def read_rounds(cluster: Cluster, sent_before: int) -> set[int]:
    """The ReadIndex heartbeat rounds the leader a started since ``sent_before`` messages."""
    return {m.read_context for m in cluster.sent[sent_before:]
            if isinstance(m, Heartbeat) and m.sender == "a" and m.read_context}


@pytest.mark.parametrize("read_mode", list(ReadMode))
def test_6_4_read_waits_until_the_leaders_noop_commits(read_mode: ReadMode) -> None:
    """Thesis §6.4 step 1: a new leader serves reads only once an entry of its term committed
    (before that its commit index may lag the cluster's)."""
    cluster = Cluster("abc", read_mode=read_mode)
    cluster.elect("a", replicate=False)
    leader = cluster["a"]
    noop_index = leader.log.last_index
    sent_before = len(cluster.sent)
    leader.read_index(7)
    cluster.process("a")
    assert cluster.read_states["a"] == []
    assert read_rounds(cluster, sent_before) == set(), "no confirmation round before the no-op"
    cluster.settle()
    assert cluster.read_states["a"] == [ReadState(7, noop_index)]


def _writes_then_read_same_leader(cluster: Cluster) -> str:
    cluster.elect("a")
    for i in range(3):
        cluster.propose("a", f"w{i}".encode())
    cluster.settle()
    cluster.run(1)
    return "a"


def _writes_then_read_on_new_leader(cluster: Cluster) -> str:
    _writes_then_read_same_leader(cluster)
    cluster.isolate("a")
    cluster.elect("b", replicate=False)  # b reads before its own no-op commits
    return "b"


@pytest.mark.parametrize("read_mode", list(ReadMode))
@pytest.mark.parametrize("history", [_writes_then_read_same_leader,
                                     _writes_then_read_on_new_leader],
                         ids=["same leader", "new leader"])
def test_6_4_read_index_covers_every_completed_write(
    history: Callable[[Cluster], str], read_mode: ReadMode
) -> None:
    """Thesis §6.4: the read index is at least the index of every write acknowledged before
    the read began, even on a freshly elected leader."""
    cluster = Cluster("abc", read_mode=read_mode)
    reader = history(cluster)
    completed = max(i for machine in cluster.machines.values() for i in machine)
    cluster[reader].read_index(1)
    cluster.process(reader)
    cluster.settle()
    [state] = cluster.read_states[reader]
    assert state.request_id == 1
    assert completed <= state.index <= cluster[reader].commit_index


def _higher_term_heartbeat(cluster: Cluster) -> None:
    leader = cluster["a"]
    leader.step(Heartbeat(leader.term + 1, "b", "a", 0))
    cluster.process("a")


def _check_quorum_fails(cluster: Cluster) -> None:
    cluster.tick("a", times=2 * ELECTION_TIMEOUT_TICKS)


STEP_DOWNS = {
    "newer leader's heartbeat": (_higher_term_heartbeat, True),
    "check-quorum": (_check_quorum_fails, True),
    "newer leader's heartbeat, read waiting for the no-op": (_higher_term_heartbeat, False),
}


@pytest.mark.parametrize(("step_down", "noop_committed"), STEP_DOWNS.values(),
                         ids=STEP_DOWNS.keys())
def test_6_4_pending_reads_are_dropped_when_the_leader_steps_down(
    step_down: Callable[[Cluster], None], noop_committed: bool
) -> None:
    """Thesis §6.4: a read that leadership was never confirmed for fails (the client retries
    elsewhere); it is never served."""
    cluster = Cluster("abc")
    cluster.elect("a", replicate=noop_committed)
    cluster.isolate("a")
    cluster["a"].read_index(5)
    cluster["a"].read_index(6)
    cluster.process("a")
    assert cluster.read_states["a"] == []
    step_down(cluster)
    assert not cluster["a"].is_leader
    assert sorted(cluster.dropped_reads["a"]) == [5, 6]
    cluster.heal()
    cluster.run(3)
    assert cluster.read_states["a"] == []


@pytest.mark.parametrize(("batches", "rounds"), [
    ([[1, 2, 3]], 1),
    ([[1], [2, 3]], 2),
    ([[1], [2], [3]], 3),
], ids=["one ready", "two readies", "three readies"])
def test_6_4_reads_before_one_ready_share_one_heartbeat_round(
    batches: list[list[int]], rounds: int
) -> None:
    """Thesis §6.4 (batching): reads that arrive before the next Ready are confirmed by one
    round of heartbeats, one message per follower."""
    cluster = Cluster("abc")
    cluster.elect("a")
    sent_before = len(cluster.sent)
    for batch in batches:
        for request_id in batch:
            cluster["a"].read_index(request_id)
        cluster.process("a")
    read_heartbeats = [m for m in cluster.sent[sent_before:]
                       if isinstance(m, Heartbeat) and m.read_context]
    assert len(read_heartbeats) == 2 * rounds
    assert len(read_rounds(cluster, sent_before)) == rounds
    cluster.settle()
    commit = cluster["a"].commit_index
    assert sorted(cluster.read_states["a"], key=lambda s: s.request_id) == [
        ReadState(r, commit) for r in (1, 2, 3)]


@pytest.mark.parametrize(("ticks_since_confirmation", "immediate"), [
    (0, True), (LEASE_TICKS - 1, True), (LEASE_TICKS, False), (LEASE_TICKS + 1, False),
])
def test_6_4_1_lease_read_served_without_round_trip_only_within_the_lease(
    ticks_since_confirmation: int, immediate: bool
) -> None:
    """Thesis §6.4.1: within election timeout x (1 - drift) of a majority's heartbeat answer
    the leader answers from its commit index at once; later it needs a heartbeat round."""
    cluster = Cluster("abc", read_mode=ReadMode.LEASE)
    cluster.elect("a")
    cluster.run(1)  # a heartbeat round sent this tick is confirmed by b and c
    cluster.isolate("a")
    cluster.tick("a", times=ticks_since_confirmation)
    assert cluster["a"].is_leader
    sent_before = len(cluster.sent)
    cluster["a"].read_index(3)
    cluster.process("a")
    served = cluster.read_states["a"] == [ReadState(3, cluster["a"].commit_index)]
    assert served is immediate
    assert (read_rounds(cluster, sent_before) == set()) is immediate


@pytest.mark.parametrize("transfer_outcome", ["in progress", "aborted"])
def test_6_4_1_no_lease_read_around_a_leadership_transfer(transfer_outcome: str) -> None:
    """Thesis §6.4.1 with §3.10: a transfer lets the target win before the lease would end, so
    the leader stops lease reads while it runs and for a while after an abort."""
    cluster = Cluster("abc", read_mode=ReadMode.LEASE)
    cluster.elect("a")
    cluster.isolate("c")
    cluster["a"].transfer_leadership("c")
    cluster.process("a")
    if transfer_outcome == "aborted":
        cluster.tick("a", "b", times=ELECTION_TIMEOUT_TICKS)
        cluster.settle()
        assert cluster["a"].status().transferring_to is None
    cluster.run(1)  # a fresh heartbeat round confirmed by b: the lease alone would allow it
    sent_before = len(cluster.sent)
    cluster["a"].read_index(4)
    cluster.process("a")
    assert cluster.read_states["a"] == []
    assert len(read_rounds(cluster, sent_before)) == 1
    cluster.settle()
    assert cluster.read_states["a"] == [ReadState(4, cluster["a"].commit_index)]


def test_6_4_1_lease_reads_end_before_a_new_leader_exists() -> None:
    """Thesis §6.4.1: with every clock ticking at the same rate, the cut-off leader stops
    answering reads from its lease before the other servers can elect a new leader."""
    cluster = Cluster("abc", read_mode=ReadMode.LEASE)
    cluster.elect("a")
    cluster.run(1)
    term = cluster["a"].term
    cluster.isolate("a")
    lease_reads_at: list[int] = []
    new_leader_at = 0
    for tick in range(1, 3 * ELECTION_TIMEOUT_TICKS):
        cluster.run(1)
        if cluster["a"].is_leader:
            before = len(cluster.read_states["a"])
            cluster["a"].read_index(tick)
            cluster.process("a")
            if len(cluster.read_states["a"]) > before:
                lease_reads_at.append(tick)
        if not new_leader_at and any(cluster[n].is_leader for n in "bc"):
            new_leader_at = tick
    assert new_leader_at, "b or c must take over"
    assert cluster["b"].term > term
    assert lease_reads_at == list(range(1, LEASE_TICKS))
    assert max(lease_reads_at) < new_leader_at



@pytest.mark.parametrize("clock_trusted", [True, False])
def test_6_4_1_lease_reads_need_a_trusted_clock(clock_trusted: bool) -> None:
    """Thesis §6.4.1: a lease is only as good as the clock. When the shell cannot trust its
    clock (``lease_reads_allowed = False``), reads fall back to a heartbeat round."""
    cluster = Cluster("abc", read_mode=ReadMode.LEASE)
    cluster.elect("a")
    cluster.run(1)  # a heartbeat round confirmed by b and c: the lease is valid
    cluster["a"].lease_reads_allowed = clock_trusted
    sent_before = len(cluster.sent)
    cluster["a"].read_index(5)
    cluster.process("a")
    served_at_once = cluster.read_states["a"] == [ReadState(5, cluster["a"].commit_index)]
    assert served_at_once is clock_trusted
    assert (len(read_rounds(cluster, sent_before)) == 1) is not clock_trusted
    cluster.settle()
    assert cluster.read_states["a"] == [ReadState(5, cluster["a"].commit_index)]
