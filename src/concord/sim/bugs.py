"""Known Raft bugs, switched on deliberately to prove the simulator's checkers can fail.

Each entry names a bug a real implementation could have; ``concord sim --bug NAME`` runs the
simulator with it, and the test suite requires every one to be caught.
"""

from __future__ import annotations

from dataclasses import dataclass

from concord.raft.core import RaftNode
from concord.raft.messages import RequestVote
from concord.sim.node import SimBugs


class DoubleVoteRaft(RaftNode):
    """Grants a vote to every up-to-date candidate, even after voting in the term (§5.2)."""

    def _may_grant_vote(self, msg: RequestVote) -> bool:
        return self.log.is_up_to_date(msg.last_log_index, msg.last_log_term)


class CommitOldTermRaft(RaftNode):
    """Commits an entry of an earlier term by counting replicas (forbidden by §5.4.2)."""

    def _can_commit_at(self, index: int) -> bool:
        return self.log.term_at(index) is not None


class StaleLogVoteRaft(RaftNode):
    """Votes without comparing logs (forgets the election restriction of §5.4.1)."""

    def _may_grant_vote(self, msg: RequestVote) -> bool:
        return (self.vote in (None, msg.sender) and self.leader is None) or (
            msg.pre_vote and msg.term > self.term)


@dataclass(frozen=True, slots=True)
class KnownBug:
    name: str
    description: str
    raft_class: type[RaftNode] = RaftNode
    driver_bugs: SimBugs = SimBugs()


KNOWN_BUGS: dict[str, KnownBug] = {
    bug.name: bug
    for bug in (
        KnownBug("double-vote", "grant two votes in one term", raft_class=DoubleVoteRaft),
        KnownBug("commit-old-term", "commit a previous term's entry by counting replicas",
                 raft_class=CommitOldTermRaft),
        KnownBug("vote-stale-log", "vote for a candidate whose log is behind",
                 raft_class=StaleLogVoteRaft),
        KnownBug("ack-before-sync", "acknowledge entries before they are fsynced",
                 driver_bugs=SimBugs(ack_before_sync=True)),
    )
}
