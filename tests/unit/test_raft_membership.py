"""Unit tests of one-server-at-a-time membership changes with learners (thesis §4.1-4.2)."""

from __future__ import annotations

import pytest
from raft_harness import Cluster

from concord.raft import (
    Membership,
    MembershipChange,
    MembershipChangeOp,
    MembershipChangeRejected,
    RequestVote,
    Role,
)

ADD_LEARNER = MembershipChangeOp.ADD_LEARNER
PROMOTE = MembershipChangeOp.PROMOTE
REMOVE = MembershipChangeOp.REMOVE
ELECTION_TIMEOUT_TICKS = 10


def change(cluster: Cluster, leader: str, op: MembershipChangeOp, node: str) -> int:
    index, _ = cluster[leader].propose_membership_change(MembershipChange(op, node))
    cluster.process(leader)
    return index


def test_4_2_1_learner_catches_up_and_is_promoted_only_when_close() -> None:
    """Thesis §4.2.1: a new server joins as a non-voting learner; it becomes a voter only once
    its log is close to the leader's, so it cannot stall commitment while catching up."""
    cluster = Cluster("abc", promotion_catchup_entries=5)
    cluster.elect("a")
    for i in range(20):
        cluster.propose("a", f"w{i}".encode())
    cluster.settle()
    joiner = cluster.add_node("d")
    cluster.isolate("d")
    added = change(cluster, "a", ADD_LEARNER, "d")
    cluster.settle()
    assert cluster["a"].commit_index == added
    assert cluster["a"].membership == Membership(frozenset("abc"), frozenset("d"))
    with pytest.raises(MembershipChangeRejected, match="behind"):
        change(cluster, "a", PROMOTE, "d")
    cluster.heal()
    roles = set()
    for _ in range(3 * ELECTION_TIMEOUT_TICKS):
        cluster.run(1)
        roles.add(joiner.role)
    assert roles == {Role.FOLLOWER}, "a learner never campaigns"
    assert cluster.log_of("d") == cluster.log_of("a")
    assert cluster.machines["d"] == cluster.machines["a"]
    assert joiner.membership == Membership(frozenset("abc"), frozenset("d"))
    promoted = change(cluster, "a", PROMOTE, "d")
    cluster.settle()
    cluster.run(1)
    assert cluster["a"].commit_index == promoted
    for n in "abcd":
        assert cluster[n].membership == Membership(frozenset("abcd"))
    # d now counts: with b and c cut off, a and d are only 2 of 4
    cluster.isolate("b", "c")
    index, _ = cluster.propose("a", b"needs three of four")
    cluster.settle()
    assert cluster["a"].commit_index < index
    cluster.partition("abd")
    cluster.run(2)
    assert cluster["a"].commit_index >= index


# (voters, learners, the change, what the error says)
INVALID_CHANGES = {
    "add an existing voter": ("abc", "", MembershipChange(ADD_LEARNER, "b"), "already"),
    "add an existing learner": ("abc", "d", MembershipChange(ADD_LEARNER, "d"), "already"),
    "promote a voter": ("abc", "", MembershipChange(PROMOTE, "b"), "not a learner"),
    "promote a stranger": ("abc", "", MembershipChange(PROMOTE, "z"), "not a learner"),
    "remove a stranger": ("abc", "", MembershipChange(REMOVE, "z"), "not a member"),
    "remove the last voter": ("a", "", MembershipChange(REMOVE, "a"), "last voter"),
}


@pytest.mark.parametrize(("voters", "learners", "proposed", "reason"), INVALID_CHANGES.values(),
                         ids=INVALID_CHANGES.keys())
def test_4_1_invalid_changes_are_rejected(
    voters: str, learners: str, proposed: MembershipChange, reason: str
) -> None:
    """Thesis §4.1: a change adds or removes exactly one server of the current configuration."""
    cluster = Cluster(voters)
    cluster.elect("a")
    for learner in learners:
        cluster.add_node(learner)
        change(cluster, "a", ADD_LEARNER, learner)
        cluster.settle()
    last_index = cluster["a"].log.last_index
    with pytest.raises(MembershipChangeRejected, match=reason):
        cluster["a"].propose_membership_change(proposed)
    assert cluster["a"].log.last_index == last_index


def test_4_1_one_change_at_a_time() -> None:
    """Thesis §4.1: a new change waits until the previous configuration is committed."""
    cluster = Cluster("abc")
    cluster.elect("a")
    first = change(cluster, "a", ADD_LEARNER, "d")
    assert cluster["a"].membership.learners == {"d"}, "in force once appended"
    with pytest.raises(MembershipChangeRejected, match="uncommitted"):
        change(cluster, "a", ADD_LEARNER, "e")
    cluster.settle()
    assert cluster["a"].commit_index >= first
    second = change(cluster, "a", ADD_LEARNER, "e")
    assert second == first + 1
    assert cluster["a"].membership.learners == {"d", "e"}


def test_4_1_no_change_before_the_new_leader_commits_an_entry_of_its_term() -> None:
    """Thesis §4.1 (the fix published on raft-dev, 2015): a leader must commit an entry of its
    own term before it may append a configuration."""
    cluster = Cluster("abc")
    cluster.elect("a", replicate=False)
    with pytest.raises(MembershipChangeRejected, match="not committed an entry"):
        change(cluster, "a", ADD_LEARNER, "d")
    cluster.settle()
    index = change(cluster, "a", ADD_LEARNER, "d")
    assert cluster["a"].log.entry(index).membership == Membership(frozenset("abc"),
                                                                  frozenset("d"))


def test_4_2_2_removed_leader_steps_down_once_the_change_commits_and_never_campaigns() -> None:
    """Thesis §4.2.2: a leader removing itself keeps leading (without counting itself) until
    the new configuration commits, then steps down; as a non-member it never campaigns."""
    cluster = Cluster("abc")
    cluster.elect("a")
    removal = change(cluster, "a", REMOVE, "a")
    cluster.deliver(lambda m: m.recipient == "b")
    cluster.deliver(lambda m: m.recipient == "a")
    assert cluster["a"].is_leader, "b's ack alone is not a majority of the new voters {b, c}"
    assert cluster["a"].commit_index < removal
    cluster.settle()
    assert cluster["a"].commit_index == removal
    assert cluster["a"].role is Role.FOLLOWER
    votes_before = cluster.sent_count(RequestVote, "a")
    roles = set()
    for _ in range(5 * ELECTION_TIMEOUT_TICKS):
        cluster.run(1)
        roles.add(cluster["a"].role)
    assert roles == {Role.FOLLOWER}
    assert cluster.sent_count(RequestVote, "a") == votes_before
    new_leader = cluster.leader()
    assert new_leader in {"b", "c"}
    assert cluster[new_leader].membership == Membership(frozenset("bc"))
    assert cluster[new_leader].commit_index > removal


def test_4_2_2_removed_leader_steps_down_while_entries_remain_to_send() -> None:
    """Thesis §4.2.2: same as above, with entries after the configuration still to stream to
    a follower (one append in flight at a time) when the configuration commits."""
    cluster = Cluster("abc", max_inflight_appends=1, max_entries_per_append=1)
    cluster.elect("a")
    removal = change(cluster, "a", REMOVE, "a")
    for i in range(3):
        cluster.propose("a", f"w{i}".encode())
    cluster.settle()
    assert cluster["a"].role is Role.FOLLOWER
    assert cluster["a"].commit_index >= removal


def test_4_2_removed_follower_never_campaigns() -> None:
    """Thesis §4.2: a server removed from the configuration must not start elections."""
    cluster = Cluster("abc")
    cluster.elect("a")
    change(cluster, "a", REMOVE, "c")
    cluster.settle()
    roles = set()
    for _ in range(5 * ELECTION_TIMEOUT_TICKS):
        cluster.run(1)
        roles.add(cluster["c"].role)
    assert roles == {Role.FOLLOWER}


@pytest.mark.parametrize("cut_off", [False, True],
                         ids=["learns its removal", "cut off until the removal committed"])
def test_4_2_3_removed_follower_does_not_disrupt_the_cluster(cut_off: bool) -> None:
    """Thesis §4.2.3: whatever a removed server does (one that never saw its removal times
    out and asks for votes), the remaining servers keep their leader and term: their leader
    lease makes them ignore its requests."""
    cluster = Cluster("abc")
    cluster.elect("a")
    term = cluster["a"].term
    if cut_off:
        cluster.isolate("c")
    change(cluster, "a", REMOVE, "c")
    cluster.settle()
    cluster.run(1)
    cluster.heal()
    assert (cluster["c"].membership == Membership(frozenset("abc"))) is cut_off
    for _ in range(5 * ELECTION_TIMEOUT_TICKS):
        cluster.run(1)
        assert cluster["a"].is_leader
    assert (cluster["a"].term, cluster["b"].term) == (term, term)
    index, _ = cluster.propose("a", b"still serving")
    cluster.settle()
    assert cluster["a"].commit_index == index


@pytest.mark.parametrize("proposed", [MembershipChange(REMOVE, "e"),
                                     MembershipChange(ADD_LEARNER, "f")],
                         ids=["remove", "add learner"])
def test_4_1_configuration_truncated_from_the_log_is_forgotten(proposed: MembershipChange) -> None:
    """Thesis §4.1: a server uses the latest configuration in its log, committed or not, so
    when a conflicting leader truncates that entry the server reverts to the previous one."""
    cluster = Cluster("abcde")
    cluster.elect("a")
    cluster.partition("ab")
    cluster["a"].propose_membership_change(proposed)
    cluster.process("a")
    cluster.settle()
    founders = Membership(frozenset("abcde"))
    assert cluster["a"].membership != founders
    assert cluster["b"].membership == cluster["a"].membership
    cluster.partition("a", "bcde")
    cluster.elect("c")
    cluster.run(1)
    assert cluster["b"].log.term_at(2) == cluster["c"].term
    assert cluster["b"].membership == founders
    cluster.heal()
    cluster.run(2 * ELECTION_TIMEOUT_TICKS)
    assert cluster["a"].log.term_at(2) == cluster["c"].term
    assert cluster["a"].membership == founders
    assert cluster.leader() == "c"
