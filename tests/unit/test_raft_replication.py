"""Unit tests of Raft log replication: commitment by majority (§5.3), the commitment rule for
entries of earlier terms (§5.4.2, Figure 8), conflict repair with fast backtracking (§5.3),
pipelining, batching, and recovery from lost appends."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from raft_harness import Cluster, MessagePredicate, persisted_state

from concord.raft import (
    AppendEntries,
    AppendEntriesResponse,
    Membership,
    Message,
    RaftConfig,
    RaftNode,
    Role,
)
from concord.raft.core import MAX_APPLY_BYTES

ELECTION_TIMEOUT_TICKS = 10


def carries_term(term: int) -> MessagePredicate:
    """Matches the appends that carry an entry of ``term``."""

    def predicate(msg: Message) -> bool:
        return isinstance(msg, AppendEntries) and any(e.term == term for e in msg.entries)
    return predicate


# --- §5.3: commitment ------------------------------------------------------------------------

# (cluster size, followers that receive and persist the entry, committed)
MAJORITY_CASES = [(3, 0, False), (3, 1, True), (5, 1, False), (5, 2, True), (5, 4, True)]


@pytest.mark.parametrize(("size", "reached", "committed"), MAJORITY_CASES,
                         ids=[f"{s} nodes, {r} followers" for s, r, _ in MAJORITY_CASES])
def test_5_3_entry_commits_once_a_majority_persisted_it(
    size: int, reached: int, committed: bool
) -> None:
    """§5.3: an entry is committed once the leader has replicated it on a majority."""
    ids = "abcde"[:size]
    cluster = Cluster(ids)
    cluster.elect("a")
    cluster.isolate(*ids[1 + reached:])
    index, _ = cluster.propose("a", b"x")
    cluster.settle()
    assert (cluster["a"].commit_index >= index) is committed
    assert (index in cluster.machines["a"]) is committed


def test_5_3_follower_acknowledges_in_the_ready_that_persists_the_entries() -> None:
    """§5.3 with the Ready contract: the ack leaves only in the Ready holding the entries to
    persist first, flagged must_sync, so a majority of acks means a majority on disk."""
    cluster = Cluster("abc")
    cluster.elect("a")
    cluster.propose("a", b"x")
    [append] = cluster.queued(AppendEntries, "a", "b")
    cluster.queue.remove(append)
    follower = cluster["b"]
    follower.step(append)
    ready = follower.ready()
    [ack] = [m for m in ready.messages if isinstance(m, AppendEntriesResponse)]
    assert ack.success and ack.match_index == append.entries[-1].index
    assert ready.entries == append.entries and ready.must_sync
    cluster.apply_ready("b", ready)
    assert cluster.disks["b"].entries[-1] == append.entries[-1]


@pytest.mark.parametrize("voters", ["a", "abc"])
def test_5_3_leader_own_copy_counts_only_after_advance(voters: str) -> None:
    """§5.3 with the Ready contract: the leader's own entry counts toward a majority only
    once the shell persisted it and called advance()."""
    cluster = Cluster(voters)
    cluster.elect("a")
    cluster.isolate(*voters[1:])
    leader = cluster["a"]
    commit_before = leader.commit_index
    index, _ = leader.propose(b"x")
    ready = leader.ready()
    assert [e.index for e in ready.entries] == [index]
    assert leader.status().peers["a"].match == index - 1
    assert leader.commit_index == commit_before
    assert all(e.index < index for e in ready.committed_entries)
    cluster.apply_ready("a", ready)
    assert leader.status().peers["a"].match == index
    # alone it is a majority of one; with two silent peers it is not
    assert leader.commit_index == (index if voters == "a" else commit_before)
    cluster.process("a")
    assert (index in cluster.machines["a"]) is (voters == "a")


# --- §5.4.2: committing entries from previous terms -------------------------------------------


def figure_8_c() -> Cluster:
    """Figure 8 up to (c): S1..S5 are a..e. In (c) a leads term 4 and has copied the term-2
    entry at index 2 to c, so a, b and c (a majority) hold it; a's own term-4 entry is
    on a alone."""
    cluster = Cluster("abcde", max_entries_per_append=1, persisted={
        "a": persisted_state("abcde", [1, 2], term=2, commit=1),
        "b": persisted_state("abcde", [1, 2], term=2, commit=1),
        "c": persisted_state("abcde", [1], term=3, commit=1, vote="e"),
        "d": persisted_state("abcde", [1], term=3, commit=1, vote="e"),
        "e": persisted_state("abcde", [1, 3], term=3, commit=1, vote="e"),
    })
    cluster.partition("abc")
    cluster.elect("a", replicate=False)
    assert cluster["a"].term == 4
    # c refuses a's first append (it lacks index 2); a backs up and sends entry 2 alone
    cluster.deliver(lambda m: isinstance(m, AppendEntries) and m.recipient == "c")
    noop_lost = carries_term(4)
    cluster.settle(lambda m: not noop_lost(m))
    cluster.drop(noop_lost)
    for n in "abc":
        assert cluster[n].log.term_at(2) == 2
    assert cluster["a"].log.term_at(3) == 4
    assert cluster["b"].log.last_index == 2 and cluster["c"].log.last_index == 2
    return cluster


def test_5_4_2_figure_8_entry_of_an_older_term_is_not_committed_by_counting_replicas() -> None:
    """§5.4.2, Figure 8 (c)-(d): the term-2 entry sits on a majority, yet a must not commit
    it: e can still be elected and overwrite it with its term-3 entry."""
    cluster = figure_8_c()
    assert cluster["a"].commit_index == 1
    cluster.partition("a")  # (d): a crashes
    cluster.elect("e")
    assert cluster["e"].term == 5
    cluster.run(1)
    for n in "bcde":
        assert cluster[n].log.term_at(2) == 3
        assert cluster[n].commit_index == 3
    # the overwritten entry was never applied anywhere: committing it would have been unsafe
    [applied] = cluster.applied_by_index[2]
    assert applied.term == 3


def test_5_4_2_figure_8_older_entry_commits_with_an_entry_of_the_current_term() -> None:
    """§5.4.2, Figure 8 (e): once a's term-4 entry reaches a majority, both commit, and e can
    no longer win an election."""
    cluster = figure_8_c()
    cluster.run(3)  # a is still leader: heartbeat answers make it resend the lost appends
    assert cluster["a"].is_leader and cluster["a"].term == 4
    assert [cluster[n].commit_index for n in "abc"] == [3, 3, 3]
    assert cluster["a"].log.term_at(2) == 2
    cluster.partition("a", "bcde")
    cluster["e"].campaign()
    cluster.process("e")
    cluster.settle()
    assert not cluster["e"].is_leader


# --- §5.3: log repair and fast backtracking ----------------------------------------------------


def diverged_follower() -> tuple[Cluster, int]:
    """a led term 1 and appended 50 entries nobody else got; b then led term 2 and committed 51
    entries with c. c is elected in term 3 while a rejoins. Returns the cluster and the number
    of AppendEntries c had sent to a before its election."""
    cluster = Cluster("abc")
    cluster.elect("a")
    cluster.isolate("a")
    for i in range(50):
        cluster.propose("a", f"lost {i}".encode())
    cluster.tick("a", times=2 * ELECTION_TIMEOUT_TICKS)  # check-quorum: a steps down
    assert not cluster["a"].is_leader
    assert (cluster["a"].log.last_index, cluster["a"].log.last_term) == (51, 1)
    cluster.elect("b")
    for i in range(50):
        cluster.propose("b", f"kept {i}".encode())
    cluster.settle()
    cluster.partition("ac")
    sent_before = cluster.sent_count(AppendEntries, "c", "a")
    cluster.elect("c", replicate=False)
    return cluster, sent_before


def lagging_follower() -> tuple[Cluster, int]:
    """a missed 50 committed entries while cut off; c is elected in a new term with a back."""
    cluster = Cluster("abc")
    cluster.elect("b")
    cluster.isolate("a")
    for i in range(50):
        cluster.propose("b", f"kept {i}".encode())
    cluster.settle()
    cluster.partition("ac")
    sent_before = cluster.sent_count(AppendEntries, "c", "a")
    cluster.elect("c", replicate=False)
    return cluster, sent_before


@pytest.mark.parametrize("scenario", [diverged_follower, lagging_follower],
                         ids=["diverged by a whole term", "missing a whole term"])
def test_5_3_conflicts_truncated_with_few_round_trips(
    scenario: Callable[[], tuple[Cluster, int]],
) -> None:
    """§5.3: the leader repairs a follower's log (conflicting suffix removed) and, using the
    conflict term hint, skips a whole term of 50 entries per rejection instead of one."""
    cluster, sent_before = scenario()
    cluster.settle()
    appends = cluster.sent_count(AppendEntries, "c", "a") - sent_before
    # one probe refused, then (about) one append from the point where the logs agree;
    # backing up one entry per rejection would take more than 50
    assert 2 <= appends <= 3, f"{appends} AppendEntries to repair the follower"
    assert cluster.log_of("a") == cluster.log_of("c")
    assert not any(e.data.startswith(b"lost") for e in cluster.log_of("a"))


# --- flow control ------------------------------------------------------------------------------


@pytest.mark.parametrize("max_inflight", [1, 4])
def test_pipelined_appends_never_exceed_max_inflight(max_inflight: int) -> None:
    """Pipelining with a bounded window: at most ``max_inflight_appends`` unacknowledged
    appends to one follower, and the window is used (more than one when allowed)."""
    cluster = Cluster("abc", max_inflight_appends=max_inflight, max_entries_per_append=2)
    cluster.elect("a")
    rng = random.Random(7)
    widest = 0
    for i in range(40):
        cluster.propose("a", f"w{i}".encode())
        for _ in range(2):
            choice = rng.randrange(3)
            to_b = cluster.queued(AppendEntries, "a", "b")
            from_b = cluster.queued(AppendEntriesResponse, "b", "a")
            if choice == 0 and to_b:
                cluster.deliver_at(cluster.queue.index(to_b[0]))
            elif choice == 1 and from_b:
                cluster.deliver_at(cluster.queue.index(from_b[0]))
            cluster.settle(lambda m: "b" not in (m.sender, m.recipient))
            inflight = (len([m for m in cluster.queued(AppendEntries, "a", "b") if m.entries])
                        + len(cluster.queued(AppendEntriesResponse, "b", "a")))
            assert inflight <= max_inflight
            widest = max(widest, inflight)
    assert widest == max_inflight
    cluster.settle()
    assert cluster.log_of("b") == cluster.log_of("a")


# (max_entries_per_append, max_bytes_per_append, bytes per command, commands, entries per append)
BATCH_CASES = {
    "entry count bound": (4, 1 << 20, 1, 10, [4, 4, 2]),
    "byte bound (16 bytes of overhead each)": (256, 120, 40, 10, [2, 2, 2, 2, 2]),
    "both bounds, the smaller wins": (3, 200, 40, 7, [3, 3, 1]),
    "one oversized entry still goes": (256, 10, 40, 3, [1, 1, 1]),
}


@pytest.mark.parametrize(("max_entries", "max_bytes", "size", "count", "expected"),
                         BATCH_CASES.values(), ids=BATCH_CASES.keys())
def test_batching_respects_max_entries_and_bytes_per_append(
    max_entries: int, max_bytes: int, size: int, count: int, expected: list[int]
) -> None:
    """Batching: one append carries at most ``max_entries_per_append`` entries and at most
    ``max_bytes_per_append`` bytes (but always at least one entry)."""
    cluster = Cluster("abc", max_entries_per_append=max_entries, max_bytes_per_append=max_bytes)
    cluster.elect("a")
    sent_before = len(cluster.sent)
    cluster["a"].propose_many([bytes([i]) * size for i in range(count)])
    cluster.process("a")
    cluster.settle()
    appends = [m for m in cluster.sent[sent_before:]
               if isinstance(m, AppendEntries) and m.recipient == "b"]
    assert [len(m.entries) for m in appends] == expected
    assert cluster.log_of("b") == cluster.log_of("a")


def _lose_pipelined_appends(cluster: Cluster) -> None:
    cluster.elect("a")
    for i in range(5):
        cluster.propose("a", f"w{i}".encode())


def _lose_probe(cluster: Cluster) -> None:
    cluster.elect("a", replicate=False)


@pytest.mark.parametrize("loss", [_lose_pipelined_appends, _lose_probe],
                         ids=["pipelined appends lost", "probe lost"])
def test_5_3_lost_appends_are_recovered_through_heartbeats(
    loss: Callable[[Cluster], None],
) -> None:
    """§5.3: the leader retries AppendEntries indefinitely; heartbeat answers reveal a follower
    that is alive but behind, and replication resumes from where it stands."""
    cluster = Cluster("abc")
    loss(cluster)
    cluster.drop(lambda m: isinstance(m, AppendEntries) and m.recipient == "b")
    cluster.settle()
    assert cluster["b"].log.last_index < cluster["a"].log.last_index
    for _ in range(3):
        cluster.run(1)
    assert cluster.log_of("b") == cluster.log_of("a")
    assert cluster["b"].commit_index == cluster["a"].commit_index


def test_single_node_cluster_elects_itself_and_commits_alone() -> None:
    """§5.2 and §5.3 with one voter: its own vote and its own disk are the majority."""
    config = RaftConfig("a", election_timeout_ticks=3)
    node = RaftNode.bootstrap(config, random.Random(0), Membership(frozenset("a")))
    ticks = 0
    while not node.is_leader:
        node.tick()
        ticks += 1
        assert ticks < 6
    assert node.role is Role.LEADER and node.term == 1
    node.propose(b"x")
    committed: list[bytes] = []
    while node.has_ready():
        ready = node.ready()
        committed.extend(e.data for e in ready.committed_entries)
        node.advance(ready)
    assert committed == [b"", b"x"]


def test_a_ready_hands_over_at_most_max_apply_bytes_of_committed_entries() -> None:
    """Committed entries come in Readies of at most ``MAX_APPLY_BYTES`` (but at least one
    entry), so the shell can let its event loop run between them: a Ready of 1,000-op
    batches applied at once held nodes' loops long enough to cost the leader its term."""
    config = RaftConfig("a", election_timeout_ticks=3)
    node = RaftNode.bootstrap(config, random.Random(0), Membership(frozenset("a")))
    while not node.is_leader:
        node.tick()
    chunk = MAX_APPLY_BYTES * 2 // 5  # two fit in one Ready, three do not
    node.propose_many([b"a" * chunk] * 5 + [b"b" * (MAX_APPLY_BYTES * 2)])
    handed: list[list[int]] = []
    while node.has_ready():
        ready = node.ready()
        sizes = [len(e.data) for e in ready.committed_entries if e.data]
        if sizes:
            handed.append(sizes)
        node.advance(ready)
    assert handed == [[chunk, chunk], [chunk, chunk], [chunk], [MAX_APPLY_BYTES * 2]]
