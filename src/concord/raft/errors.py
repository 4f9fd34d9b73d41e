"""Errors the Raft core raises at its API boundary (never for peer messages)."""

from __future__ import annotations


class RaftError(Exception):
    """Base class of every error the core raises to its caller."""


class NotLeader(RaftError):
    """The request needs the leader; ``leader`` is the best known one (or None)."""

    def __init__(self, leader: str | None) -> None:
        super().__init__(f"not the leader (leader is {leader or 'unknown'})")
        self.leader = leader


class ProposalDropped(RaftError):
    """The leader refused the proposal for now: too many uncommitted entries."""


class TransferInProgress(ProposalDropped):
    """The leader is handing leadership over and takes no proposals meanwhile."""


class MembershipChangeRejected(RaftError):
    """The membership change is invalid or must wait (one change at a time)."""
