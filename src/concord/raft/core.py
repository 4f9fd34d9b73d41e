"""RaftNode: the Raft consensus algorithm as a pure state machine.

Inputs: ``step`` (a peer message), ``tick`` (time passes), ``propose`` / ``read_index`` /
``propose_membership_change`` / ``transfer_leadership`` (client requests), ``compact`` (the
application took a snapshot). Output: ``ready()``, a batch of effects the caller performs in
the order documented in ``concord.raft.ready``, then acknowledges with ``advance``.

Section numbers refer to the Raft paper (Ongaro & Ousterhout, 2014) and "thesis" to Ongaro's
dissertation (2014). Features: randomized elections, pre-vote (thesis §9.6), check-quorum
(thesis §6.2), batched and pipelined replication with fast conflict backtracking, a no-op on
election (§8), ReadIndex and lease reads (thesis §6.4), leadership transfer (thesis §3.10),
snapshots (§7), and one-server-at-a-time membership changes with learners (thesis §4).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from mypy_extensions import mypyc_attr

from concord.core.quorum import has_quorum, majority, quorum_index
from concord.core.trace import TraceEvent
from concord.raft.config import RaftConfig, ReadMode
from concord.raft.errors import (
    MembershipChangeRejected,
    NotLeader,
    ProposalDropped,
    TransferInProgress,
)
from concord.raft.log import RaftLog
from concord.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Membership,
    MembershipChange,
    MembershipChangeOp,
    Message,
    NodeId,
    RequestVote,
    RequestVoteResponse,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
)
from concord.raft.progress import Progress, ReplicationState
from concord.raft.ready import PersistedState, ReadState, Ready, Role, SoftState

# how many committed entries one Ready hands to the state machine at most
MAX_APPLY_BATCH = 4096
# and how many bytes of them (at least one entry): a Ready of 1,000-op batches applied in one
# turn of the driver held a node's event loop for a large part of a second
MAX_APPLY_BYTES = 1 << 20

# what a leader may send before its own Ready is persisted (thesis §10.2.1)
_LEADER_MESSAGES = (AppendEntries, Heartbeat, InstallSnapshot, TimeoutNow)


@dataclass(frozen=True, slots=True)
class PeerStatus:
    match: int
    next: int
    state: str
    is_learner: bool
    recent_active: bool


@dataclass(frozen=True, slots=True)
class RaftStatus:
    """A frozen snapshot of a node for /status, metrics, dashboards and the simulator."""

    node_id: NodeId
    role: Role
    term: int
    vote: NodeId | None
    leader: NodeId | None
    commit_index: int
    applied_index: int
    first_index: int
    last_index: int
    snapshot_index: int
    membership: Membership
    peers: dict[NodeId, PeerStatus] = field(default_factory=dict)
    transferring_to: NodeId | None = None


@dataclass(slots=True)
class _PendingRead:
    request_ids: list[int]
    index: int  # the commit index when the reads arrived
    round: int  # the heartbeat round that must be acknowledged by a quorum


@mypyc_attr(allow_interpreted_subclasses=True)  # the simulator's known bugs subclass it
class RaftNode:
    """One member's Raft state. Not thread-safe; the caller serializes every call."""

    def __init__(self, config: RaftConfig, rng: random.Random, persisted: PersistedState) -> None:
        self.config = config
        self.id = config.node_id
        self._rng = rng

        snapshot = persisted.snapshot
        base = snapshot.meta if snapshot else SnapshotMeta(0, 0, Membership(frozenset()))
        self.log = RaftLog(base.index, base.term, persisted.entries,
                           committed=persisted.hard_state.commit)
        self.term = persisted.hard_state.term
        self.vote = persisted.hard_state.vote
        self.applied = base.index
        self._snapshot: Snapshot | None = snapshot
        self._unstable_snapshot: Snapshot | None = None
        # (index, membership) for every configuration still in the log, oldest first
        self._memberships: list[tuple[int, Membership]] = [(base.index, base.membership)]
        for entry in persisted.entries:
            if entry.membership is not None:
                self._memberships.append((entry.index, entry.membership))

        self.role = Role.FOLLOWER
        self.leader: NodeId | None = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_timeout = 0
        self._reset_randomized_timeout()
        self._votes: dict[NodeId, bool] = {}
        self._progress: dict[NodeId, Progress] = {}
        self._transfer_target: NodeId | None = None
        self._transfer_elapsed = 0
        self._snapshot_sent_tick: dict[NodeId, int] = {}
        # the shell clears this while it cannot trust its clock (lease reads then fall back
        # to ReadIndex, which assumes nothing about clocks)
        self.lease_reads_allowed = True
        # no lease reads until this tick: a transfer's TimeoutNow may elect a successor
        self._lease_blocked_until_tick = 0

        # heartbeat rounds: confirm leadership for ReadIndex and time leases
        self._ticks = 0
        self._round = 0
        self._round_sent_tick: dict[int, int] = {}
        self._unsent_round = 0  # a round whose heartbeats are still in the outbox
        self._pending_reads: list[_PendingRead] = []
        self._reads_waiting_for_noop: list[int] = []

        # the outbox, emptied by ready()
        self._messages: list[Message] = []
        self._events: list[TraceEvent] = []
        self._read_states: list[ReadState] = []
        self._dropped_reads: list[int] = []
        self._persisted_hard_state = persisted.hard_state
        self._reported_soft_state = SoftState(self.role, self.leader, self.term)
        self._ready_outstanding = False

    @classmethod
    def bootstrap(cls, config: RaftConfig, rng: random.Random,
                  membership: Membership) -> RaftNode:
        """A brand-new member of a new cluster whose founding members are ``membership``.

        A node joining an existing cluster bootstraps with an empty membership: it stays a
        silent follower until the leader replicates a configuration that includes it.
        """
        meta = SnapshotMeta(index=0, term=0, membership=membership)
        initial = Snapshot(meta, b"")
        node = cls(config, rng, PersistedState(HardState(), initial, ()))
        node._unstable_snapshot = initial
        return node

    # --- public inspection ---------------------------------------------------------------

    @property
    def membership(self) -> Membership:
        return self._memberships[-1][1]

    @property
    def commit_index(self) -> int:
        return self.log.committed

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    def status(self) -> RaftStatus:
        peers = {
            peer: PeerStatus(p.match, p.next, p.state.value,
                             peer in self.membership.learners, p.recent_active)
            for peer, p in self._progress.items()
        }
        return RaftStatus(
            node_id=self.id, role=self.role, term=self.term, vote=self.vote,
            leader=self.leader, commit_index=self.log.committed, applied_index=self.applied,
            first_index=self.log.first_index, last_index=self.log.last_index,
            snapshot_index=self._snapshot.meta.index if self._snapshot else 0,
            membership=self.membership, peers=peers, transferring_to=self._transfer_target,
        )

    # --- client requests -----------------------------------------------------------------

    def propose(self, data: bytes) -> tuple[int, int]:
        """Append a command; returns (index, term). It is committed once applied at that index
        with that term; an entry of another term at that index means it was lost."""
        return self.propose_many([data])[0]

    def propose_many(self, commands: Iterable[bytes]) -> list[tuple[int, int]]:
        """Append several commands at once (one Ready, one fsync, one round of appends)."""
        self._check_can_propose()
        batch = list(commands)
        uncommitted = self.log.last_index - self.log.committed
        if uncommitted + len(batch) > self.config.max_uncommitted_entries:
            raise ProposalDropped("too many uncommitted entries; try again shortly")
        first = self.log.last_index + 1
        entries = [Entry(first + i, self.term, EntryKind.COMMAND, data)
                   for i, data in enumerate(batch)]
        self._append_as_leader(entries)
        return [(e.index, e.term) for e in entries]

    def propose_membership_change(self, change: MembershipChange) -> tuple[int, int]:
        """Append a one-server membership change (thesis §4.1); in force once appended."""
        self._check_can_propose()
        if self.log.term_at(self.log.committed) != self.term:
            # thesis §4.1 erratum: no change before an entry of this term commits
            raise MembershipChangeRejected("the new leader has not committed an entry yet")
        if self._memberships[-1][0] > self.log.committed:
            raise MembershipChangeRejected("another membership change is still uncommitted")
        current = self.membership
        node = change.node
        match change.op:
            case MembershipChangeOp.ADD_LEARNER:
                if node in current.members:
                    raise MembershipChangeRejected(f"{node} is already a member")
                new = Membership(current.voters, current.learners | {node})
            case MembershipChangeOp.PROMOTE:
                if node not in current.learners:
                    raise MembershipChangeRejected(f"{node} is not a learner")
                progress = self._progress.get(node)
                behind = self.log.last_index - (progress.match if progress else 0)
                if behind > self.config.promotion_catchup_entries:
                    raise MembershipChangeRejected(
                        f"{node} is {behind} entries behind; promote it once caught up")
                new = Membership(current.voters | {node}, current.learners - {node})
            case MembershipChangeOp.REMOVE:
                if node not in current.members:
                    raise MembershipChangeRejected(f"{node} is not a member")
                if current.voters == {node}:
                    raise MembershipChangeRejected("cannot remove the last voter")
                new = Membership(current.voters - {node}, current.learners - {node})
        entry = Entry(self.log.last_index + 1, self.term, EntryKind.MEMBERSHIP, b"", new)
        self._append_as_leader([entry])
        return entry.index, entry.term

    def read_index(self, request_id: int) -> None:
        """Ask to serve a linearizable read; the answer comes as a ReadState (or a drop)."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.log.term_at(self.log.committed) != self.term:
            self._reads_waiting_for_noop.append(request_id)  # thesis §6.4 step 1
            return
        self._start_reads([request_id])

    def transfer_leadership(self, target: NodeId) -> None:
        """Hand leadership to ``target`` (thesis §3.10); proposals pause meanwhile."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if target == self.id:
            return
        if target not in self.membership.voters:
            raise MembershipChangeRejected(f"{target} is not a voter")
        if self._transfer_target == target:
            return
        self._transfer_target = target
        self._transfer_elapsed = 0
        self._block_lease()
        self._event("transfer_started", target=target)
        progress = self._progress[target]
        if progress.match == self.log.last_index:
            self._send(TimeoutNow(self.term, self.id, target))
        else:
            self._send_append(target)

    def campaign(self) -> None:
        """Start an election now (tests and operators); does nothing on a non-voter."""
        if self.role is not Role.LEADER and self._promotable():
            self._start_election(pre_vote=self.config.pre_vote)

    def compact(self, index: int, data: bytes) -> Snapshot:
        """The application's state after applying ``index`` is ``data``; drop older entries.

        Returns the snapshot for the caller to persist (before or after this call: until it
        is durable the entries it covers are still on disk, so a crash loses nothing).
        """
        assert not self._ready_outstanding, "compact between ready() and advance()"
        assert self.log.offset_index < index <= self.applied, "snapshot beyond applied index"
        term = self.log.term_at(index)
        assert term is not None
        snapshot = Snapshot(SnapshotMeta(index, term, self._membership_at(index)), data)
        self._snapshot = snapshot
        self.log.compact(index)
        self._prune_memberships()
        self._event("compacted", index=index)
        return snapshot

    # --- time ----------------------------------------------------------------------------

    def tick(self) -> None:
        assert not self._ready_outstanding, "tick between ready() and advance()"
        self._ticks += 1
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._election_elapsed += 1
            if self._election_elapsed >= self._randomized_election_timeout and self._promotable():
                self._event("election_timeout", elapsed=self._election_elapsed)
                self._start_election(pre_vote=self.config.pre_vote)

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self.config.election_timeout_ticks:
            self._election_elapsed = 0
            if self.config.check_quorum and not self._quorum_active():
                self._event("check_quorum_failed")
                self._become_follower(self.term, None)
                return
            for peer, progress in self._progress.items():
                if peer != self.id:
                    progress.recent_active = False
        if self._transfer_target is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self.config.election_timeout_ticks:
                self._event("transfer_aborted", target=self._transfer_target)
                self._transfer_target = None
                self._block_lease()
        if self._heartbeat_elapsed >= self.config.heartbeat_interval_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    # --- messages ------------------------------------------------------------------------

    def step(self, msg: Message) -> None:
        assert not self._ready_outstanding, "step between ready() and advance()"
        assert msg.recipient == self.id, f"message for {msg.recipient} delivered to {self.id}"
        if msg.term > self.term:
            if not self._accept_higher_term(msg):
                return
        elif msg.term < self.term:
            self._answer_stale_term(msg)
            return
        match msg:
            case RequestVote():
                self._handle_vote_request(msg)
            case RequestVoteResponse():
                self._handle_vote_response(msg)
            case AppendEntries():
                self._follow(msg.sender)
                self._handle_append(msg)
            case Heartbeat():
                self._follow(msg.sender)
                self._handle_heartbeat(msg)
            case InstallSnapshot():
                self._follow(msg.sender)
                self._handle_snapshot(msg)
            case AppendEntriesResponse():
                if self.role is Role.LEADER:
                    self._handle_append_response(msg)
            case HeartbeatResponse():
                if self.role is Role.LEADER:
                    self._handle_heartbeat_response(msg)
            case TimeoutNow():
                if self._promotable():
                    self._event("timeout_now", sender=msg.sender)
                    self._start_election(pre_vote=False, transfer=True)

    def _accept_higher_term(self, msg: Message) -> bool:
        """A message from a higher term. False when it must be ignored."""
        if isinstance(msg, RequestVote):
            in_lease = (self.config.check_quorum and self.leader is not None
                        and self._election_elapsed < self.config.election_timeout_ticks)
            if in_lease and not msg.transfer:
                # thesis §4.2.3: a leader we heard from recently makes this a disruption
                self._event("vote_ignored_in_lease", candidate=msg.sender, term=msg.term)
                return False
            if msg.pre_vote:
                return True  # a pre-vote never changes our term
        if isinstance(msg, RequestVoteResponse) and msg.pre_vote and msg.granted:
            return True  # a granted pre-vote echoes the term we would campaign in
        from_leader = isinstance(msg, AppendEntries | Heartbeat | InstallSnapshot)
        self._become_follower(msg.term, msg.sender if from_leader else None)
        return True

    def _answer_stale_term(self, msg: Message) -> None:
        if isinstance(msg, AppendEntries | Heartbeat | InstallSnapshot):
            # a deposed leader learns the new term and steps down (matters with pre-vote,
            # where our higher term may never reach it otherwise)
            self._send(AppendEntriesResponse(self.term, self.id, msg.sender, success=False))
        elif isinstance(msg, RequestVote) and msg.pre_vote:
            self._send(RequestVoteResponse(self.term, self.id, msg.sender, False, pre_vote=True))

    # --- elections -----------------------------------------------------------------------

    def _promotable(self) -> bool:
        return self.membership.is_voter(self.id)

    def _start_election(self, pre_vote: bool, transfer: bool = False) -> None:
        if pre_vote:
            self.role = Role.PRE_CANDIDATE
            self.leader = None
            campaign_term = self.term + 1
        else:
            self._become_candidate()
            campaign_term = self.term
        self._votes = {self.id: True}
        self._election_elapsed = 0
        self._reset_randomized_timeout()
        self._event("campaign", term=campaign_term, pre_vote=pre_vote)
        if self._tally() == "won":
            self._won_election(pre_vote)
            return
        for peer in sorted(self.membership.voters):
            if peer != self.id:
                self._send(RequestVote(campaign_term, self.id, peer, self.log.last_index,
                                       self.log.last_term, pre_vote=pre_vote, transfer=transfer))

    def _become_candidate(self) -> None:
        self.term += 1
        self.vote = self.id
        self.role = Role.CANDIDATE
        self.leader = None

    def _tally(self) -> str:
        voters = self.membership.voters
        granted = [v for v, ok in self._votes.items() if ok and v in voters]
        rejected = [v for v, ok in self._votes.items() if not ok and v in voters]
        if len(granted) >= majority(len(voters)):
            return "won"
        if len(rejected) >= majority(len(voters)):
            return "lost"
        return "pending"

    def _won_election(self, pre_vote: bool) -> None:
        if pre_vote:
            self._start_election(pre_vote=False)
        else:
            self._become_leader()

    def _may_grant_vote(self, msg: RequestVote) -> bool:
        """§5.2 and §5.4.1: one vote per term, only for an up-to-date log."""
        can_vote = (
            self.vote == msg.sender
            or (self.vote is None and self.leader is None)
            or (msg.pre_vote and msg.term > self.term)
        )
        return can_vote and self.log.is_up_to_date(msg.last_log_index, msg.last_log_term)

    def _handle_vote_request(self, msg: RequestVote) -> None:
        if self._may_grant_vote(msg):
            if not msg.pre_vote:
                self.vote = msg.sender
                self._election_elapsed = 0
            self._event("vote_granted", candidate=msg.sender, term=msg.term, pre_vote=msg.pre_vote)
            self._send(RequestVoteResponse(msg.term, self.id, msg.sender, True, msg.pre_vote))
        else:
            self._send(RequestVoteResponse(self.term, self.id, msg.sender, False, msg.pre_vote))

    def _handle_vote_response(self, msg: RequestVoteResponse) -> None:
        expected = Role.PRE_CANDIDATE if msg.pre_vote else Role.CANDIDATE
        if self.role is not expected:
            return
        if msg.pre_vote and msg.granted and msg.term != self.term + 1:
            return  # an answer to an older pre-vote round
        self._votes.setdefault(msg.sender, msg.granted)
        match self._tally():
            case "won":
                self._won_election(msg.pre_vote)
            case "lost":
                self._become_follower(self.term, None)
            case _:
                pass

    def _become_follower(self, term: int, leader: NodeId | None) -> None:
        was_leader = self.role is Role.LEADER
        if term != self.term:
            self.term = term
            self.vote = None
        self.role = Role.FOLLOWER
        self.leader = leader
        self._election_elapsed = 0
        self._reset_randomized_timeout()
        self._transfer_target = None
        if was_leader:
            self._event("stepped_down", term=term, leader=leader)
            self._progress.clear()
            self._drop_pending_reads()

    def _follow(self, leader: NodeId) -> None:
        """A message from the current term's leader (§5.2: candidates step back)."""
        if self.role is not Role.FOLLOWER:
            assert self.role is not Role.LEADER, f"two leaders in term {self.term}"
            self._become_follower(self.term, leader)
        if self.leader != leader:
            self.leader = leader
        self._election_elapsed = 0

    def _become_leader(self) -> None:
        assert self.role is Role.CANDIDATE
        self.role = Role.LEADER
        self.leader = self.id
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._transfer_target = None
        self._progress = {}
        self._reset_progress()
        self._event("became_leader", term=self.term, last_index=self.log.last_index)
        # §8: commit an entry of the new term so earlier entries commit and reads can be served
        self._append_as_leader([Entry(self.log.last_index + 1, self.term, EntryKind.NOOP)])

    def _reset_progress(self) -> None:
        """Track every member of the latest configuration, and also those of the committed one:
        a removed member still receives the entry that removes it, so it stops campaigning."""
        committed_config = self._membership_at(self.log.committed)
        members = self.membership.members | committed_config.members | {self.id}
        for peer in list(self._progress):
            if peer not in members:
                del self._progress[peer]
        for peer in sorted(members):
            if peer not in self._progress:
                progress = Progress(self.log.last_index + 1, self.config.max_inflight_appends)
                if peer == self.id:
                    progress.match = self.log.unstable_from - 1
                    progress.state = ReplicationState.REPLICATE
                progress.recent_active = peer == self.id
                self._progress[peer] = progress

    def _reset_randomized_timeout(self) -> None:
        timeout = self.config.election_timeout_ticks
        self._randomized_election_timeout = timeout + self._rng.randrange(timeout)

    def _quorum_active(self) -> bool:
        active = [p for p, pr in self._progress.items() if pr.recent_active or p == self.id]
        return has_quorum(self.membership.voters, active)

    # --- replication (leader) ------------------------------------------------------------

    def _check_can_propose(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self._transfer_target is not None:
            raise TransferInProgress(f"leadership is moving to {self._transfer_target}")

    def _append_as_leader(self, entries: list[Entry]) -> None:
        self.log.append(entries)
        for entry in entries:
            if entry.membership is not None:
                self._apply_membership(entry.index, entry.membership)
        self._broadcast_append()

    def _broadcast_append(self) -> None:
        for peer in self._progress:
            if peer != self.id:
                self._send_append(peer)

    def _send_append(self, peer: NodeId) -> None:
        progress = self._progress[peer]
        if progress.is_paused():
            return
        prev_index = progress.next - 1
        prev_term = self.log.term_at(prev_index)
        if prev_term is None or progress.next < self.log.first_index:
            self._send_snapshot(peer, progress)
            return
        entries: list[Entry] = []
        if progress.next <= self.log.last_index:
            entries = self.log.slice(progress.next,
                                     progress.next + self.config.max_entries_per_append - 1,
                                     self.config.max_bytes_per_append)
        elif progress.state is ReplicationState.REPLICATE:
            return  # nothing new to send; heartbeats carry the commit index
        self._send(AppendEntries(self.term, self.id, peer, prev_index, prev_term,
                                 tuple(entries), self.log.committed))
        progress.sent_entries(entries[-1].index if entries else prev_index)

    def _send_snapshot(self, peer: NodeId, progress: Progress) -> None:
        snapshot = self._snapshot
        assert snapshot is not None, "entries were compacted without a snapshot"
        progress.become_snapshot(snapshot.meta.index)
        self._snapshot_sent_tick[peer] = self._ticks
        self._event("snapshot_sent", peer=peer, index=snapshot.meta.index)
        self._send(InstallSnapshot(self.term, self.id, peer, snapshot))

    def _handle_append_response(self, msg: AppendEntriesResponse) -> None:
        progress = self._progress.get(msg.sender)
        if progress is None:
            return
        progress.recent_active = True
        if not msg.success:
            if msg.rejected_index == 0:
                return  # a stale-term answer already handled by the term check
            guess = msg.hint_index + 1
            if msg.hint_term > 0:
                guess = self.log.conflict_hint(msg.hint_index, msg.hint_term) + 1
            if progress.rejected(msg.rejected_index, guess):
                self._send_append(msg.sender)
            return
        if msg.match_index > self.log.last_index:
            return  # cannot happen with an honest follower; never trust it
        if progress.acknowledged(msg.match_index):
            match progress.state:
                case ReplicationState.PROBE:
                    progress.become_replicate()
                case ReplicationState.SNAPSHOT if progress.match >= progress.pending_snapshot:
                    progress.become_probe()
                    progress.become_replicate()
                case _:
                    pass
            if self._maybe_commit():
                if self.role is not Role.LEADER:
                    return  # the commit removed this leader from the cluster
                self._release_reads_waiting_for_noop()
            if msg.sender == self._transfer_target and progress.match == self.log.last_index:
                self._send(TimeoutNow(self.term, self.id, msg.sender))
        elif progress.state is ReplicationState.PROBE:
            progress.probe_sent = False
        # keep the pipeline full
        while not progress.is_paused() and progress.next <= self.log.last_index:
            before = progress.next
            self._send_append(msg.sender)
            if progress.next == before:
                break

    def _can_commit_at(self, index: int) -> bool:
        """§5.4.2: only entries of the current term are committed by counting replicas."""
        return self.log.term_at(index) == self.term

    def _maybe_commit(self) -> bool:
        matched = {peer: p.match for peer, p in self._progress.items()}
        index = quorum_index(self.membership.voters, matched)
        if index > self.log.committed and self._can_commit_at(index):
            previous = self.log.committed
            self.log.commit_to(index)
            self._on_commit_advanced(previous)
            return True
        return False

    def _on_commit_advanced(self, previous_commit: int) -> None:
        if any(previous_commit < at <= self.log.committed for at, _ in self._memberships):
            self._reset_progress()  # stop replicating to members whose removal just committed
        if not self.membership.is_voter(self.id) and self._memberships[-1][0] <= self.log.committed:
            # thesis §4.2.2: a leader removed from the configuration steps down once the
            # configuration that removed it is committed
            self._event("removed_leader_steps_down")
            self._become_follower(self.term, None)

    def _broadcast_heartbeat(self) -> int:
        self._round += 1
        self._round_sent_tick[self._round] = self._ticks
        self._unsent_round = self._round
        self._progress[self.id].acked_round = self._round
        for peer, progress in self._progress.items():
            if peer != self.id:
                commit = min(progress.match, self.log.committed)
                self._send(Heartbeat(self.term, self.id, peer, commit, self._round))
        return self._round

    def _handle_heartbeat_response(self, msg: HeartbeatResponse) -> None:
        progress = self._progress.get(msg.sender)
        if progress is None:
            return
        progress.recent_active = True
        progress.acked_round = max(progress.acked_round, msg.read_context)
        self._resume_stalled(msg.sender, progress)
        self._release_confirmed_reads()

    def _resume_stalled(self, peer: NodeId, progress: Progress) -> None:
        """Recover from lost appends or snapshots: heartbeats show the follower is alive."""
        match progress.state:
            case ReplicationState.PROBE:
                progress.probe_sent = False
            case ReplicationState.REPLICATE:
                if progress.inflight and progress.match == progress.match_at_heartbeat:
                    progress.become_probe()  # no ack for a whole heartbeat: appends were lost
            case ReplicationState.SNAPSHOT:
                sent = self._snapshot_sent_tick.get(peer, 0)
                if self._ticks - sent >= self.config.election_timeout_ticks:
                    progress.become_probe()  # the snapshot was lost: try again
        progress.match_at_heartbeat = progress.match
        if progress.match < self.log.last_index:
            self._send_append(peer)

    # --- reads (leader) ------------------------------------------------------------------

    def _confirmed_round(self) -> int:
        """The latest heartbeat round a quorum of voters has acknowledged."""
        acked = {peer: p.acked_round for peer, p in self._progress.items()}
        return quorum_index(self.membership.voters, acked)

    def _lease_valid(self) -> bool:
        if not self.lease_reads_allowed:
            return False
        if self._transfer_target is not None or self._ticks < self._lease_blocked_until_tick:
            return False
        sent = self._round_sent_tick.get(self._confirmed_round())
        return sent is not None and self._ticks - sent < self.config.lease_ticks

    def _block_lease(self) -> None:
        self._lease_blocked_until_tick = self._ticks + 2 * self.config.election_timeout_ticks

    def _start_reads(self, request_ids: list[int]) -> None:
        index = self.log.committed
        if self.config.read_mode is ReadMode.LEASE and self._lease_valid():
            self._read_states.extend(ReadState(r, index) for r in request_ids)
            return
        if self.membership.voters == {self.id}:
            self._read_states.extend(ReadState(r, index) for r in request_ids)
            return
        # reads that arrive before the next Ready share one heartbeat round (batching)
        round_ = self._unsent_round or self._broadcast_heartbeat()
        if self._pending_reads and self._pending_reads[-1].round == round_:
            self._pending_reads[-1].request_ids.extend(request_ids)
            assert self._pending_reads[-1].index <= index
        else:
            self._pending_reads.append(_PendingRead(list(request_ids), index, round_))

    def _release_confirmed_reads(self) -> None:
        confirmed = self._confirmed_round()
        while self._pending_reads and self._pending_reads[0].round <= confirmed:
            pending = self._pending_reads.pop(0)
            self._read_states.extend(ReadState(r, pending.index) for r in pending.request_ids)
        for old in [r for r in self._round_sent_tick if r < confirmed]:
            del self._round_sent_tick[old]

    def _release_reads_waiting_for_noop(self) -> None:
        if self._reads_waiting_for_noop and self.log.term_at(self.log.committed) == self.term:
            waiting, self._reads_waiting_for_noop = self._reads_waiting_for_noop, []
            self._start_reads(waiting)

    def _drop_pending_reads(self) -> None:
        for pending in self._pending_reads:
            self._dropped_reads.extend(pending.request_ids)
        self._dropped_reads.extend(self._reads_waiting_for_noop)
        self._pending_reads.clear()
        self._reads_waiting_for_noop.clear()
        self._round_sent_tick.clear()
        self._unsent_round = 0

    # --- replication (follower) ----------------------------------------------------------

    def _handle_append(self, msg: AppendEntries) -> None:
        if msg.prev_log_index < self.log.committed:
            # everything up to our commit index is known to match the leader
            self._send(AppendEntriesResponse(self.term, self.id, msg.sender, True,
                                             match_index=self.log.committed))
            return
        if self.log.matches(msg.prev_log_index, msg.prev_log_term):
            known_last = self.log.last_index
            truncated_from = self.log.merge(msg.entries)
            if truncated_from:
                # configurations follow the log (thesis §4.1): forget truncated ones
                self._memberships = [(i, m) for i, m in self._memberships if i < truncated_from]
                self._event("log_truncated", from_index=truncated_from)
                known_last = truncated_from - 1
            for entry in msg.entries:
                if entry.index > known_last and entry.membership is not None:
                    self._apply_membership(entry.index, entry.membership)
            last_new = msg.prev_log_index + len(msg.entries)
            self.log.commit_to(min(msg.leader_commit, last_new))
            self._send(AppendEntriesResponse(self.term, self.id, msg.sender, True,
                                             match_index=last_new))
            return
        hint_index = self.log.conflict_hint(min(msg.prev_log_index, self.log.last_index),
                                            msg.prev_log_term)
        hint_term = self.log.term_at(hint_index) or 0
        self._event("append_rejected", prev_index=msg.prev_log_index, hint_index=hint_index)
        self._send(AppendEntriesResponse(self.term, self.id, msg.sender, False,
                                         rejected_index=msg.prev_log_index,
                                         hint_index=hint_index, hint_term=hint_term))

    def _handle_heartbeat(self, msg: Heartbeat) -> None:
        self.log.commit_to(msg.commit)
        self._send(HeartbeatResponse(self.term, self.id, msg.sender, msg.read_context))

    def _handle_snapshot(self, msg: InstallSnapshot) -> None:
        meta = msg.snapshot.meta
        if meta.index <= self.log.committed:
            self._send(AppendEntriesResponse(self.term, self.id, msg.sender, True,
                                             match_index=self.log.committed))
            return
        if self.log.matches(meta.index, meta.term):
            # §7: we already hold the entries the snapshot covers; keep them and commit
            self.log.commit_to(meta.index)
        else:
            self.log.restore(meta.index, meta.term)
            self._snapshot = msg.snapshot
            self._unstable_snapshot = msg.snapshot
            self._memberships = [(meta.index, meta.membership)]
            self._event("snapshot_installed", index=meta.index)
        self._send(AppendEntriesResponse(self.term, self.id, msg.sender, True,
                                         match_index=meta.index))

    # --- membership ----------------------------------------------------------------------

    def _apply_membership(self, index: int, membership: Membership) -> None:
        self._memberships.append((index, membership))
        self._event("membership_changed", index=index, voters=sorted(membership.voters),
                    learners=sorted(membership.learners))
        if self.role is Role.LEADER:
            self._reset_progress()

    def _membership_at(self, index: int) -> Membership:
        chosen = self._memberships[0][1]
        for at, membership in self._memberships:
            if at <= index:
                chosen = membership
        return chosen

    def _prune_memberships(self) -> None:
        offset = self.log.offset_index
        base = self._membership_at(offset)
        self._memberships = [(offset, base)] + [(i, m) for i, m in self._memberships if i > offset]

    # --- Ready ---------------------------------------------------------------------------

    def _send(self, msg: Message) -> None:
        self._messages.append(msg)

    def _event(self, name: str, **attrs: object) -> None:
        self._events.append(TraceEvent(name, {"node": self.id, "term": self.term, **attrs}))

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _first_unapplied_index(self) -> int:
        """After the applied index, the compacted log and a snapshot still to be applied."""
        low = max(self.applied, self.log.offset_index)
        if self._unstable_snapshot is not None:
            low = max(low, self._unstable_snapshot.meta.index)
        return low + 1

    def _committed_to_apply(self) -> list[Entry]:
        low = self._first_unapplied_index()
        if self.log.committed < low:
            return []
        return self.log.slice(low, min(self.log.committed, low + MAX_APPLY_BATCH - 1),
                              MAX_APPLY_BYTES)

    def has_ready(self) -> bool:
        return bool(
            self._messages or self._events or self._read_states or self._dropped_reads
            or self._unstable_snapshot is not None
            or self.log.unstable_from <= self.log.last_index
            or self._hard_state() != self._persisted_hard_state
            or SoftState(self.role, self.leader, self.term) != self._reported_soft_state
            or self._has_committed_to_apply()
        )

    def _has_committed_to_apply(self) -> bool:
        return self.log.committed >= self._first_unapplied_index()

    def ready(self) -> Ready:
        assert not self._ready_outstanding, "ready() called twice without advance()"
        hard_state = self._hard_state()
        hard_changed = hard_state != self._persisted_hard_state
        entries = tuple(self.log.unstable_entries())
        must_sync = bool(entries) or self._unstable_snapshot is not None or (
            hard_changed and (hard_state.term != self._persisted_hard_state.term
                              or hard_state.vote != self._persisted_hard_state.vote))
        soft = SoftState(self.role, self.leader, self.term)
        early: list[Message] = []
        late: list[Message] = self._messages
        term_or_vote_changed = hard_changed and (
            hard_state.term != self._persisted_hard_state.term
            or hard_state.vote != self._persisted_hard_state.vote)
        if self.role is Role.LEADER and not term_or_vote_changed:
            early = [m for m in self._messages if isinstance(m, _LEADER_MESSAGES)]
            late = [m for m in self._messages if not isinstance(m, _LEADER_MESSAGES)]
        ready = Ready(
            hard_state=hard_state if hard_changed else None,
            entries=entries,
            snapshot=self._unstable_snapshot,
            must_sync=must_sync,
            early_messages=tuple(early),
            messages=tuple(late),
            committed_entries=tuple(self._committed_to_apply()),
            read_states=tuple(self._read_states),
            dropped_reads=tuple(self._dropped_reads),
            soft_state=soft if soft != self._reported_soft_state else None,
            events=tuple(self._events),
        )
        self._messages = []
        self._events = []
        self._read_states = []
        self._dropped_reads = []
        self._unsent_round = 0
        self._ready_outstanding = True
        return ready

    def advance(self, ready: Ready) -> None:
        """The shell did everything ``ready`` asked: persisted, sent, applied."""
        assert self._ready_outstanding, "advance() without ready()"
        self._ready_outstanding = False
        if ready.snapshot is not None:
            assert ready.snapshot is self._unstable_snapshot
            self._unstable_snapshot = None
            self.applied = max(self.applied, ready.snapshot.meta.index)
        if ready.entries:
            self.log.stable_to(ready.entries[-1].index)
        if ready.hard_state is not None:
            self._persisted_hard_state = ready.hard_state
        if ready.soft_state is not None:
            self._reported_soft_state = ready.soft_state
        if ready.committed_entries:
            self.applied = max(self.applied, ready.committed_entries[-1].index)
        if self.role is Role.LEADER and ready.entries:
            self._on_leader_persisted(ready.entries[-1].index)

    def _on_leader_persisted(self, index: int) -> None:
        """The leader's own entries count toward commit only once durable (§5.3)."""
        progress = self._progress.get(self.id)
        if (progress is not None
                and progress.acknowledged(min(index, self.log.unstable_from - 1))
                and self._maybe_commit()):
            self._release_reads_waiting_for_noop()
