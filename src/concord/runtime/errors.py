"""Errors a node reports to its clients, each with an HTTP status and retry semantics.

``definite`` says whether the request certainly had no effect (False means the outcome is
unknown: a write may or may not have been applied). ``retryable`` says whether the same
request may succeed if sent again (with the same request id, a retried write applies at
most once).
"""

from __future__ import annotations


class ConcordError(Exception):
    status = 500
    code = "internal"
    retryable = False
    definite = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ConcordError):
    status, code, retryable, definite = 400, "bad_request", False, True


class KeyNotFound(ConcordError):
    status, code, retryable, definite = 404, "key_not_found", False, True


class NotFound(ConcordError):
    status, code, retryable, definite = 404, "not_found", False, True


class CompareFailed(ConcordError):
    """A conditional write whose condition did not hold (nothing changed)."""

    status, code, retryable, definite = 409, "compare_failed", False, True


class TooLarge(ConcordError):
    status, code, retryable, definite = 413, "too_large", False, True


class Overloaded(ConcordError):
    """The bounded proposal queue is full: back off and retry."""

    status, code, retryable, definite = 429, "overloaded", True, True


class Forbidden(ConcordError):
    status, code, retryable, definite = 403, "forbidden", False, True


class NoLeader(ConcordError):
    """No leader is known, or it is unreachable: the request was definitely not applied."""

    status, code, retryable, definite = 503, "no_leader", True, True


class NotLeaderHere(ConcordError):
    """This node is not the leader; ``leader_id`` is the best known one (may be None).

    The HTTP layer forwards the request to the leader instead of returning this.
    """

    status, code, retryable, definite = 503, "not_leader", True, True

    def __init__(self, message: str, leader_id: str | None) -> None:
        super().__init__(message)
        self.leader_id = leader_id


class LeaderChanged(ConcordError):
    """The entry was overwritten by a new leader: definitely not applied."""

    status, code, retryable, definite = 503, "leader_changed", True, True


class MembershipChangeRefused(ConcordError):
    status, code, retryable, definite = 409, "membership_change_refused", True, True


class TimedOut(ConcordError):
    """No answer in time: the write may or may not have been applied."""

    status, code, retryable, definite = 504, "timeout", True, False


class ShuttingDown(ConcordError):
    status, code, retryable, definite = 503, "shutting_down", True, True


class TooManySiblings(ConcordError):
    """A quorum-store write refused because it would leave its key with more siblings than
    ``[dkv] max_siblings``: nothing was written. Read the key, merge, write with its context."""

    status, code, retryable, definite = 409, "too_many_siblings", False, True


class QuorumNotReached(ConcordError):
    """The quorum store could not reach R (or W) replicas in time. A write may still have
    reached some replicas (and will spread from them): the outcome is not definite."""

    status, code, retryable, definite = 503, "quorum_not_reached", True, False
