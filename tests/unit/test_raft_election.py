"""Unit tests of Raft elections: timeouts, votes, pre-vote, check-quorum, leases, the no-op on
election and leadership transfer. Each test names the section of the Raft paper (§) or of
Ongaro's thesis ("thesis §") that it checks."""

from __future__ import annotations

import random

import pytest
from raft_harness import Cluster, persisted_state

from concord.raft import (
    AppendEntriesResponse,
    EntryKind,
    Heartbeat,
    Membership,
    Message,
    ProposalDropped,
    RaftConfig,
    RaftNode,
    RequestVote,
    RequestVoteResponse,
    Role,
    TimeoutNow,
)
from concord.raft.messages import MembershipChange, MembershipChangeOp

ELECTION_TIMEOUT_TICKS = 10


def vote_answers(node: RaftNode) -> list[RequestVoteResponse]:
    """The vote responses in ``node``'s next Ready (the Ready is consumed and advanced)."""
    ready = node.ready()
    node.advance(ready)
    return [m for m in ready.messages if isinstance(m, RequestVoteResponse)]


# --- §5.2: election timeouts ---------------------------------------------------------------


@pytest.mark.parametrize("pre_vote", [True, False], ids=["pre-vote", "no-pre-vote"])
@pytest.mark.parametrize("timeout_ticks", [3, 10])
def test_5_2_follower_campaigns_within_one_to_two_election_timeouts(
    timeout_ticks: int, pre_vote: bool
) -> None:
    """§5.2 randomized timeouts in [et, 2et); thesis §9.6: a pre-vote campaign keeps the term."""
    waited: list[int] = []
    for seed in range(200):
        config = RaftConfig("a", election_timeout_ticks=timeout_ticks, pre_vote=pre_vote)
        node = RaftNode.bootstrap(config, random.Random(seed), Membership(frozenset("abc")))
        ticks = 0
        while node.role is Role.FOLLOWER:
            node.tick()
            ticks += 1
            assert ticks < 2 * timeout_ticks, f"seed {seed}: no campaign after {ticks} ticks"
        waited.append(ticks)
        assert node.role is (Role.PRE_CANDIDATE if pre_vote else Role.CANDIDATE)
        assert node.term == (0 if pre_vote else 1)
        requests = [m for m in node.ready().messages if isinstance(m, RequestVote)]
        assert sorted(m.recipient for m in requests) == ["b", "c"]
        assert all(m.term == 1 and m.pre_vote is pre_vote for m in requests)
    # the timeout is randomized over the whole range, not stuck at one value
    assert (min(waited), max(waited)) == (timeout_ticks, 2 * timeout_ticks - 1)


def test_9_6_pre_vote_round_changes_no_term_then_campaign_raises_it_by_one() -> None:
    """Thesis §9.6: nobody's term moves until a majority granted the pre-vote."""
    cluster = Cluster("abc")
    while cluster["a"].role is Role.FOLLOWER:
        cluster.tick("a")
    pre_votes = cluster.queued(RequestVote, "a")
    assert [(m.term, m.pre_vote) for m in pre_votes] == [(1, True), (1, True)]
    cluster.deliver(lambda m: isinstance(m, RequestVote))
    assert [cluster[n].term for n in "abc"] == [0, 0, 0]
    assert [cluster[n].vote for n in "abc"] == [None, None, None]
    assert all(m.granted for m in cluster.queued(RequestVoteResponse, recipient="a"))
    cluster.deliver(lambda m: isinstance(m, RequestVoteResponse))
    assert cluster["a"].role is Role.CANDIDATE
    assert (cluster["a"].term, cluster["a"].vote) == (1, "a")
    assert [m.pre_vote for m in cluster.queued(RequestVote, "a")] == [False, False]
    cluster.settle()
    assert cluster.leader() == "a"
    assert [cluster[n].term for n in "abc"] == [1, 1, 1]


# --- §5.2: one vote per term -----------------------------------------------------------------

# (requests as (candidate, term, pre_vote), the grants expected in order)
ONE_VOTE_PER_TERM = {
    "second candidate same term refused": ([("x", 1, False), ("y", 1, False)], [True, False]),
    "same candidate asking again granted": ([("x", 1, False), ("x", 1, False)], [True, True]),
    "new term, new vote": ([("x", 1, False), ("y", 2, False)], [True, True]),
    "a pre-vote binds nothing": ([("x", 1, True), ("y", 1, False)], [True, True]),
    "pre-vote after a real vote in a later term": ([("x", 1, False), ("y", 2, True)],
                                                   [True, True]),
}


@pytest.mark.parametrize(("requests", "expected"), ONE_VOTE_PER_TERM.values(),
                         ids=ONE_VOTE_PER_TERM.keys())
def test_5_2_at_most_one_vote_per_term(
    requests: list[tuple[str, int, bool]], expected: list[bool]
) -> None:
    """§5.2: each server votes for at most one candidate in a term, and persists the vote."""
    config = RaftConfig("v", check_quorum=False)
    node = RaftNode.bootstrap(config, random.Random(1), Membership(frozenset("vxy")))
    node.advance(node.ready())
    granted: list[bool] = []
    for candidate, term, pre_vote in requests:
        node.step(RequestVote(term, candidate, "v", 0, 0, pre_vote=pre_vote))
        ready = node.ready()
        node.advance(ready)
        [answer] = [m for m in ready.messages if isinstance(m, RequestVoteResponse)]
        granted.append(answer.granted)
        if answer.granted and not pre_vote:
            assert ready.hard_state is None or ready.hard_state.vote == candidate
            assert node.vote == candidate
            if ready.hard_state is not None:
                assert ready.must_sync, "a vote must be durable before it is sent"
    assert granted == expected


def test_5_2_restarted_voter_remembers_its_vote() -> None:
    """§5.2 / Figure 2: votedFor is persistent, so a crash cannot yield a second vote."""
    cluster = Cluster("abc", check_quorum=False, pre_vote=False)
    cluster["b"].step(RequestVote(1, "a", "b", 0, 0))
    cluster.process("b")
    restarted = cluster.restart("b")
    assert (restarted.term, restarted.vote) == (1, "a")
    restarted.step(RequestVote(1, "c", "b", 0, 0))
    assert [m.granted for m in vote_answers(restarted)] == [False]


# --- §5.4.1: election restriction ------------------------------------------------------------

VOTER_LOG_TERMS = [1, 1, 2]  # the voter's last entry is (index 3, term 2)

# (candidate last_log_index, last_log_term, granted)
UP_TO_DATE_CASES = {
    "identical log": (3, 2, True),
    "same last term, longer": (5, 2, True),
    "same last term, shorter": (2, 2, False),
    "older last term, longer": (9, 1, False),
    "newer last term, shorter": (1, 3, True),
    "empty log": (0, 0, False),
}


@pytest.mark.parametrize("pre_vote", [False, True], ids=["vote", "pre-vote"])
@pytest.mark.parametrize(("last_index", "last_term", "granted"), UP_TO_DATE_CASES.values(),
                         ids=UP_TO_DATE_CASES.keys())
def test_5_4_1_vote_only_for_an_up_to_date_log(
    last_index: int, last_term: int, granted: bool, pre_vote: bool
) -> None:
    """§5.4.1 (and thesis §9.6 for pre-votes): compare last terms, then lengths."""
    state = persisted_state("vxy", VOTER_LOG_TERMS, term=3)
    node = RaftNode(RaftConfig("v"), random.Random(0), state)
    node.step(RequestVote(4, "x", "v", last_index, last_term, pre_vote=pre_vote))
    assert [m.granted for m in vote_answers(node)] == [granted]
    # §5.1: a real request from a higher term moves the term even when refused; a pre-vote never
    assert node.term == (3 if pre_vote else 4)
    assert node.vote == ("x" if granted and not pre_vote else None)


# --- §5.1: terms -----------------------------------------------------------------------------


def _from_b(term: int) -> dict[str, tuple[Message, str | None]]:
    """Messages from b at ``term`` to the leader a, with the leader a must follow after it."""
    return {
        "heartbeat of a newer leader": (Heartbeat(term, "b", "a", 0), "b"),
        "append response from a newer term": (
            AppendEntriesResponse(term, "b", "a", success=False), None),
        "vote response from a newer term": (
            RequestVoteResponse(term, "b", "a", granted=False), None),
        "vote request of a leadership transfer": (
            RequestVote(term, "b", "a", 100, term, transfer=True), None),
    }


@pytest.mark.parametrize("case", list(_from_b(0)))
def test_5_1_leader_steps_down_on_a_higher_term(case: str) -> None:
    """§5.1: a server that sees a higher term adopts it; a leader reverts to follower."""
    cluster = Cluster("abc")
    cluster.elect("a")
    old_term = cluster["a"].term
    msg, new_leader = _from_b(old_term + 1)[case]
    cluster["a"].step(msg)
    cluster.process("a")
    assert cluster["a"].role is Role.FOLLOWER
    assert (cluster["a"].term, cluster["a"].leader) == (old_term + 1, new_leader)


def test_4_2_3_leader_in_lease_ignores_a_plain_higher_term_vote_request() -> None:
    """Thesis §4.2.3 with §6.2: a vote request is no proof of a newer leader; ignore it."""
    cluster = Cluster("abc")
    cluster.elect("a")
    term = cluster["a"].term
    cluster["a"].step(RequestVote(term + 1, "b", "a", 100, term))
    cluster.process("a")
    assert cluster["a"].is_leader and cluster["a"].term == term
    assert cluster.queued(RequestVoteResponse, "a") == []


# --- §8: the new leader's no-op ----------------------------------------------------------------

PRIOR_LOGS = {
    "fresh cluster": ([], 0),
    "entries of earlier terms": ([1, 1, 2, 2], 2),
}


@pytest.mark.parametrize(("terms", "term"), PRIOR_LOGS.values(), ids=PRIOR_LOGS.keys())
def test_8_new_leader_appends_a_noop_that_commits_earlier_entries(
    terms: list[int], term: int
) -> None:
    """§8 and §5.4.2: a new leader appends a no-op of its term; committing it commits the rest."""
    persisted = {n: persisted_state("abc", terms, term=term) for n in "abc"}
    cluster = Cluster("abc", persisted=persisted)
    cluster.elect("a", replicate=False)
    leader = cluster["a"]
    noop = leader.log.entry(leader.log.last_index)
    assert (noop.index, noop.term, noop.kind) == (len(terms) + 1, leader.term, EntryKind.NOOP)
    assert leader.commit_index == 0
    cluster.settle()
    cluster.run(1)  # the next heartbeat carries the commit index to the followers
    assert [cluster[n].commit_index for n in "abc"] == [noop.index] * 3
    assert sorted(cluster.machines["a"]) == list(range(1, noop.index + 1))


# --- thesis §6.2: check-quorum -----------------------------------------------------------------


@pytest.mark.parametrize(("check_quorum", "isolated", "steps_down"), [
    (True, True, True),
    (True, False, False),
    (False, True, False),
], ids=["check-quorum isolated", "check-quorum connected", "no check-quorum isolated"])
def test_6_2_leader_without_a_quorum_for_an_election_timeout_steps_down(
    check_quorum: bool, isolated: bool, steps_down: bool
) -> None:
    """Thesis §6.2: a leader steps down after an election timeout without hearing a majority."""
    cluster = Cluster("abc", check_quorum=check_quorum)
    cluster.elect("a")
    if isolated:
        cluster.isolate("a")
    ticks = 0
    while cluster["a"].is_leader and ticks < 5 * ELECTION_TIMEOUT_TICKS:
        cluster.tick("a")
        cluster.settle()
        ticks += 1
    if steps_down:
        assert not cluster["a"].is_leader
        # it heard from b and c just before the cut: one full timeout must pass first
        assert ELECTION_TIMEOUT_TICKS <= ticks <= 2 * ELECTION_TIMEOUT_TICKS
        assert cluster["a"].leader is None
    else:
        assert cluster["a"].is_leader


@pytest.mark.parametrize(("pre_vote", "disrupts"), [(True, False), (False, True)],
                         ids=["pre-vote", "no-pre-vote"])
def test_9_6_partitioned_node_keeps_its_term_and_does_not_disrupt_on_rejoin(
    pre_vote: bool, disrupts: bool
) -> None:
    """Thesis §9.6: with pre-vote a node cut off keeps its term and rejoins quietly; without it,
    its inflated term deposes the leader on rejoin (the disruption pre-vote exists for)."""
    cluster = Cluster("abc", pre_vote=pre_vote)
    cluster.elect("a")
    term = cluster["a"].term
    cluster.isolate("c")
    roles = set()
    for _ in range(5 * ELECTION_TIMEOUT_TICKS):
        cluster.run(1)
        roles.add(cluster["c"].role)
    assert cluster["a"].is_leader
    if pre_vote:
        assert Role.PRE_CANDIDATE in roles and Role.CANDIDATE not in roles
        assert cluster["c"].term == term
    else:
        assert cluster["c"].term > term
    cluster.heal()
    cluster.run(3 * ELECTION_TIMEOUT_TICKS)
    if disrupts:
        assert cluster["a"].term > term
    else:
        assert cluster["a"].is_leader and cluster["a"].term == term
        assert (cluster["c"].term, cluster["c"].leader) == (term, "a")
    assert all(len(leaders) == 1 for leaders in cluster.leaders_by_term.values())


# (ticks b spends without hearing the leader, transfer flag, pre-vote flag, answered)
LEASE_CASES = {
    "vote in lease ignored": (0, False, False, False),
    "pre-vote in lease ignored": (0, False, True, False),
    "transfer vote ignores the lease": (0, True, False, True),
    "vote after the lease granted": (ELECTION_TIMEOUT_TICKS, False, False, True),
    "pre-vote after the lease granted": (ELECTION_TIMEOUT_TICKS, False, True, True),
}


@pytest.mark.parametrize(("silent_ticks", "transfer", "pre_vote", "answered"),
                         LEASE_CASES.values(), ids=LEASE_CASES.keys())
def test_4_2_3_vote_request_within_the_leader_lease_is_ignored(
    silent_ticks: int, transfer: bool, pre_vote: bool, answered: bool
) -> None:
    """Thesis §4.2.3: a server that heard from a leader within the minimum election timeout
    neither updates its term nor grants its vote (a transfer's request is exempt, §3.10)."""
    cluster = Cluster("abc")
    cluster.elect("a")
    cluster.run(1)
    cluster.isolate("a")
    cluster.tick("b", times=silent_ticks)
    b = cluster["b"]
    term, vote = b.term, b.vote
    last_index, last_term = b.log.last_index, b.log.last_term
    b.step(RequestVote(term + 1, "c", "b", last_index, last_term, pre_vote, transfer))
    answers = vote_answers(b)
    if answered:
        assert [m.granted for m in answers] == [True]
    else:
        assert answers == []
        assert (b.term, b.vote) == (term, vote)


# --- thesis §3.10: leadership transfer ---------------------------------------------------------


@pytest.mark.parametrize("lagging_entries", [0, 5])
def test_3_10_transfer_sends_timeout_now_once_target_caught_up_and_target_wins(
    lagging_entries: int,
) -> None:
    """Thesis §3.10: the leader brings the target up to date, then sends TimeoutNow; the
    target campaigns at once and wins the next term."""
    cluster = Cluster("abc")
    cluster.elect("a")
    cluster.isolate("c")
    for i in range(lagging_entries):
        cluster.propose("a", f"w{i}".encode())
    cluster.settle()
    cluster.heal()
    term = cluster["a"].term
    cluster["a"].transfer_leadership("c")
    cluster.process("a")
    assert cluster["a"].status().transferring_to == "c"
    if lagging_entries:
        assert cluster.queued(TimeoutNow) == []
    for _ in range(ELECTION_TIMEOUT_TICKS // 2):
        # heartbeats show c alive and the leader resends what c lost while cut off
        while cluster.queue and not cluster.queued(TimeoutNow):
            cluster.deliver_at(0)
        if cluster.queued(TimeoutNow):
            break
        cluster.tick("a")
    [timeout_now] = cluster.queued(TimeoutNow)
    assert (timeout_now.sender, timeout_now.recipient, timeout_now.term) == ("a", "c", term)
    assert cluster["c"].log.last_index == cluster["a"].log.last_index
    cluster.settle()
    assert cluster.leader() == "c"
    assert cluster["c"].term == term + 1
    assert (cluster["a"].role, cluster["a"].leader) == (Role.FOLLOWER, "c")


@pytest.mark.parametrize("request_kind", ["propose", "propose_many", "membership change"])
def test_3_10_proposals_refused_during_transfer(request_kind: str) -> None:
    """Thesis §3.10: the leader stops accepting client requests while a transfer runs."""
    cluster = Cluster("abc")
    cluster.elect("a")
    cluster.isolate("c")
    cluster["a"].transfer_leadership("c")
    leader = cluster["a"]
    last_index = leader.log.last_index
    with pytest.raises(ProposalDropped):
        match request_kind:
            case "propose":
                leader.propose(b"x")
            case "propose_many":
                leader.propose_many([b"x", b"y"])
            case _:
                leader.propose_membership_change(
                    MembershipChange(MembershipChangeOp.ADD_LEARNER, "d"))
    assert leader.log.last_index == last_index


def test_3_10_transfer_aborted_after_an_election_timeout() -> None:
    """Thesis §3.10: a transfer that has not completed within an election timeout is aborted
    and the leader accepts proposals again."""
    cluster = Cluster("abc")
    cluster.elect("a")
    cluster.isolate("c")
    cluster["a"].transfer_leadership("c")
    for _ in range(ELECTION_TIMEOUT_TICKS - 1):
        cluster.tick("a", "b")
        cluster.settle()
    assert cluster["a"].status().transferring_to == "c"
    with pytest.raises(ProposalDropped):
        cluster.propose("a", b"early")
    cluster.tick("a", "b")
    cluster.settle()
    assert cluster["a"].is_leader
    assert cluster["a"].status().transferring_to is None
    index, _ = cluster.propose("a", b"after abort")
    cluster.settle()
    assert cluster["a"].commit_index == index
