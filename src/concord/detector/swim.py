"""SwimNode: SWIM membership (Das et al., DSN 2002) with Lifeguard (Dadgar et al., 2018) as a
pure state machine.

Inputs: ``step(msg, now_ns)`` (a peer message), ``tick(now_ns)`` (time passes), ``join`` and
``leave`` (operator requests). Output: ``ready()``, a ``SwimReady`` with the messages to send
(any order; loss is tolerated), the member state changes this node saw, and trace events.
Nothing is durable, so there is no ``advance``: ``ready()`` empties the outbox. Call ``tick``
at ``next_deadline_ns()`` (or more often); ``now_ns`` is a monotonic clock in nanoseconds.
``wall_ns`` is the node's wall clock, only used to stamp probes for clock offset estimates
(it defaults to ``now_ns``).

The protocol, with memberlist's LAN defaults (research notes §2.3-2.5, §8):

- **Probing.** Every probe interval, ping the next member of a shuffled round-robin list.
  No ack within the probe timeout: ask ``indirect_checks`` other members to ping it
  (PingReq) and relay its ack. No ack by the end of the interval: suspect it.
- **Suspicion.** A suspect is declared dead when its suspicion timer runs out, unless it
  refutes first: a live member that hears itself suspected gossips ALIVE with a higher
  incarnation, which overrides every claim made about an older incarnation.
- **Dissemination.** Claims ride on every message (piggybacking); each claim is sent
  ``retransmit_mult * ceil(log10(n + 1))`` times, least-sent first, plus a gossip round to
  ``gossip_nodes`` random members every ``gossip_interval``. Every ``push_pull_interval``
  a full state exchange with one random member repairs whatever gossip missed.
- **Corrections** (ours). A node that receives a SUSPECT or DEAD claim about an incarnation
  older than the one it knows ALIVE answers the sender with the newer ALIVE claim (in the
  reply when there is one), so a node that missed a refutation learns it before its own
  suspicion timer runs out, instead of hoping that limited retransmits reach it.
- **Joining, leaving, healing.** A node joins with a full state exchange with its seeds. A
  leaving node gossips LEFT about itself. Every ``reconnect_interval`` a node exchanges state
  with one random DEAD member, so the two sides of a healed partition find each other again
  (Serf's reconnect; memberlist alone never talks to the dead again).

Lifeguard (``lifeguard=True``):

- **Local health awareness.** A score 0..``awareness_max_multiplier - 1`` grows when this
  node's probes fail without the expected nacks, or when it must refute a suspicion about
  itself, and shrinks on timely acks. Probe interval and timeout are scaled by
  ``score + 1``, so a struggling node probes (and accuses) less.
- **Local health aware suspicion.** The suspicion timeout starts at ``max`` and falls toward
  ``min`` as independent confirmations arrive (memberlist's formula, see ``Suspicion``).
- **Nacks.** Intermediaries answer an indirect probe whose target stayed silent with a Nack.
  They wait 80 % of the probe timeout (our choice), so that the nack reaches the prober
  before its probe interval ends (at the LAN defaults it has 500 ms left after its PingReq).
- **Buddy system.** A message to a suspect carries the suspicion, so it can refute at once;
  we also add every suspect to each gossip round (ours: under heavy loss the suspect is the
  one member that must hear the news, and random fan-out with a few retransmits can miss it).

Without Lifeguard the suspicion timeout is fixed at ``min`` and none of the above applies.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Final

from concord.core.clock_offset import ClockOffsetEstimator, OffsetEstimate
from concord.core.trace import TraceEvent
from concord.detector.messages import (
    Ack,
    Gossip,
    MemberState,
    MemberUpdate,
    Nack,
    NodeId,
    Ping,
    PingReq,
    PushPull,
    SwimMessage,
)

_MS = 1_000_000
_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class SwimConfig:
    """memberlist's ``DefaultLANConfig`` (research notes §2.5) plus a few bounds of our own."""

    probe_interval_ns: int = 1 * _S
    probe_timeout_ns: int = 500 * _MS
    indirect_checks: int = 3
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    retransmit_mult: int = 4
    gossip_interval_ns: int = 200 * _MS
    gossip_nodes: int = 3
    gossip_to_the_dead_ns: int = 30 * _S
    push_pull_interval_ns: int = 30 * _S
    reconnect_interval_ns: int = 10 * _S
    join_retry_interval_ns: int = 1 * _S
    join_max_attempts: int = 10
    awareness_max_multiplier: int = 8
    max_piggyback_updates: int = 8
    max_pending_relays: int = 64
    clock_samples: int = 8
    lifeguard: bool = True

    def __post_init__(self) -> None:
        for name in ("probe_interval_ns", "probe_timeout_ns", "suspicion_mult",
                     "suspicion_max_timeout_mult", "retransmit_mult", "gossip_interval_ns",
                     "gossip_nodes", "push_pull_interval_ns", "reconnect_interval_ns",
                     "join_retry_interval_ns", "join_max_attempts", "awareness_max_multiplier",
                     "max_piggyback_updates", "max_pending_relays", "clock_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.indirect_checks < 0 or self.gossip_to_the_dead_ns < 0:
            raise ValueError("indirect_checks and gossip_to_the_dead_ns must be >= 0")
        if self.probe_timeout_ns >= self.probe_interval_ns:
            raise ValueError("probe_timeout_ns must be shorter than probe_interval_ns")


def cluster_scale(live_members: int) -> float:
    """memberlist's ``max(1, log10(n))``: how much longer timeouts get as the cluster grows."""
    return max(1.0, math.log10(max(1, live_members)))


def suspicion_timeouts_ns(config: SwimConfig, live_members: int) -> tuple[int, int]:
    """(min, max) suspicion timeouts: ``suspicion_mult * scale * probe_interval`` and
    ``suspicion_max_timeout_mult`` times that."""
    min_ns = int(config.suspicion_mult * cluster_scale(live_members) * config.probe_interval_ns)
    return min_ns, min_ns * config.suspicion_max_timeout_mult


def confirmations_wanted(config: SwimConfig, live_members: int) -> int:
    """Independent confirmations that bring a suspicion down to its minimum timeout:
    ``suspicion_mult - 2``, or 0 when the cluster is too small to provide them."""
    wanted = max(0, config.suspicion_mult - 2)
    return 0 if live_members - 2 < wanted else wanted


def retransmit_limit(config: SwimConfig, live_members: int) -> int:
    """How many times each claim is piggybacked: ``retransmit_mult * ceil(log10(n + 1))``."""
    return config.retransmit_mult * math.ceil(math.log10(live_members + 1))


class Suspicion:
    """Lifeguard's suspicion timer for one member (memberlist ``suspicion.go``).

    With ``wanted`` confirmations expected, after ``c`` independent ones the timeout is
    ``max - (max - min) * log(c + 1) / log(wanted + 1)``, never below ``min``. The accuser
    and repeat confirmers do not count.
    """

    __slots__ = ("_confirmers", "confirmations", "incarnation", "max_timeout_ns",
                 "min_timeout_ns", "started_ns", "wanted")

    def __init__(self, accuser: NodeId, incarnation: int, started_ns: int,
                 min_timeout_ns: int, max_timeout_ns: int, wanted: int) -> None:
        assert 0 < min_timeout_ns <= max_timeout_ns and wanted >= 0
        self.incarnation = incarnation
        self.started_ns = started_ns
        self.min_timeout_ns = min_timeout_ns
        self.max_timeout_ns = max_timeout_ns
        self.wanted = wanted
        self.confirmations = 0
        self._confirmers = {accuser}

    @property
    def timeout_ns(self) -> int:
        if self.wanted < 1:
            return self.min_timeout_ns
        fraction = math.log(self.confirmations + 1) / math.log(self.wanted + 1)
        shrunk = self.max_timeout_ns - fraction * (self.max_timeout_ns - self.min_timeout_ns)
        return max(self.min_timeout_ns, math.floor(shrunk))

    @property
    def deadline_ns(self) -> int:
        return self.started_ns + self.timeout_ns

    def confirm(self, origin: NodeId) -> bool:
        """Count ``origin``'s suspicion; False when it adds nothing (repeat or enough)."""
        if self.confirmations >= self.wanted or origin in self._confirmers:
            return False
        self._confirmers.add(origin)
        self.confirmations += 1
        return True


class LocalHealth:
    """Lifeguard's local health multiplier: a score in ``0 .. max_multiplier - 1``."""

    __slots__ = ("max_multiplier", "score")

    def __init__(self, max_multiplier: int) -> None:
        assert max_multiplier >= 1
        self.max_multiplier = max_multiplier
        self.score = 0

    def apply(self, delta: int) -> None:
        self.score = min(self.max_multiplier - 1, max(0, self.score + delta))

    def scale(self, duration_ns: int) -> int:
        return duration_ns * (self.score + 1)


@dataclass(slots=True)
class _Broadcast:
    update: MemberUpdate
    transmits: int
    order: int


class BroadcastQueue:
    """Claims waiting to be piggybacked, at most one per member (a newer claim replaces the
    older one). ``take`` hands out the least-transmitted first, newest first among equals,
    and drops a claim once it has been sent ``max_transmits`` times."""

    __slots__ = ("_by_member", "_pushed")

    def __init__(self) -> None:
        self._by_member: dict[NodeId, _Broadcast] = {}
        self._pushed = 0

    def __len__(self) -> int:
        return len(self._by_member)

    def __contains__(self, member: object) -> bool:
        return member in self._by_member

    def push(self, update: MemberUpdate) -> None:
        self._pushed += 1
        self._by_member[update.member] = _Broadcast(update, 0, self._pushed)

    def take(self, limit: int, max_transmits: int) -> list[MemberUpdate]:
        assert max_transmits >= 1
        if limit < 1 or not self._by_member:
            return []
        chosen = sorted(self._by_member.values(), key=lambda b: (b.transmits, -b.order))[:limit]
        for broadcast in chosen:
            broadcast.transmits += 1
            if broadcast.transmits >= max_transmits:
                del self._by_member[broadcast.update.member]
        return [b.update for b in chosen]


@dataclass(frozen=True, slots=True)
class MemberView:
    """One member as this node sees it. ``last_heard_ns`` is this node's monotonic clock at
    the last message received from the member (None if never)."""

    node_id: NodeId
    state: MemberState
    incarnation: int
    address: str
    last_heard_ns: int | None
    state_changed_ns: int


@dataclass(frozen=True, slots=True)
class MemberChange:
    """A member's state changed in this node's view (``previous`` None: newly learned)."""

    node_id: NodeId
    previous: MemberState | None
    state: MemberState
    incarnation: int
    at_ns: int


@dataclass(frozen=True, slots=True)
class SwimReady:
    """Everything the shell must do now: send ``messages``, report ``changes``, log ``events``."""

    messages: tuple[SwimMessage, ...]
    changes: tuple[MemberChange, ...]
    events: tuple[TraceEvent, ...]

    def is_empty(self) -> bool:
        return not (self.messages or self.changes or self.events)


@dataclass(slots=True)
class _Counters:
    probes: int = 0
    probe_failures: int = 0
    indirect_probes: int = 0
    nacks_received: int = 0
    suspicions: int = 0  # members that turned SUSPECT in this node's view
    suspicions_cleared: int = 0  # SUSPECT -> ALIVE: false positives corrected
    deaths: int = 0  # members that turned DEAD in this node's view
    revivals: int = 0  # DEAD or LEFT -> ALIVE (a refuted death, or a restart)
    refutations: int = 0  # this node outbid a claim about itself


_COUNTER_NAMES: Final = tuple(f.name for f in fields(_Counters))


@dataclass(frozen=True, slots=True)
class SwimStats:
    """Counters for metrics, from this node's point of view."""

    incarnation: int
    local_health: int
    probes: int
    probe_failures: int
    indirect_probes: int
    nacks_received: int
    suspicions: int
    suspicions_cleared: int
    deaths: int
    revivals: int
    refutations: int


@dataclass(slots=True)
class _Member:
    node_id: NodeId
    state: MemberState
    incarnation: int
    address: str
    state_changed_ns: int
    last_heard_ns: int | None = None


@dataclass(slots=True)
class _Probe:
    target: NodeId
    seq: int
    started_ns: int
    timeout_at_ns: int
    deadline_ns: int
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: set[NodeId] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Relay:
    """A ping this node sent on behalf of ``origin``'s indirect probe."""

    origin: NodeId
    origin_seq: int
    target: NodeId
    expires_ns: int
    want_nack: bool


_UP = (MemberState.ALIVE, MemberState.SUSPECT)


class SwimNode:
    """One member's SWIM state. Not thread-safe; the caller serializes every call."""

    def __init__(self, config: SwimConfig, node_id: NodeId, rng: random.Random,
                 address: str = "") -> None:
        self.config = config
        self.id = node_id
        self._rng = rng
        self._members: dict[NodeId, _Member] = {
            node_id: _Member(node_id, MemberState.ALIVE, 0, address, 0)}
        self._health = LocalHealth(config.awareness_max_multiplier)
        self._broadcasts = BroadcastQueue()
        self._suspicions: dict[NodeId, Suspicion] = {}
        self._clocks = ClockOffsetEstimator(config.clock_samples)
        self._probe: _Probe | None = None
        self._probe_order: list[NodeId] = []
        self._probe_position = 0
        self._relays: dict[int, _Relay] = {}
        self._seq = 0
        self._counts = _Counters()

        self._started = False
        self._now_ns = 0
        self._next_probe_ns = 0
        self._next_gossip_ns = 0
        self._next_push_pull_ns = 0
        self._next_reconnect_ns = 0

        self._seeds: tuple[NodeId, ...] = ()
        self._joined = True
        self._join_pending = False  # retrying the seeds
        self._join_attempts = 0
        self._next_join_ns = 0
        self._leaving = False

        # newer claims for the sender of the message in hand, sent with the reply if any
        self._corrections: list[MemberUpdate] = []
        self._replying_to: NodeId | None = None
        self._messages: list[SwimMessage] = []
        self._changes: list[MemberChange] = []
        self._events: list[TraceEvent] = []

    # --- inspection ----------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._members[self.id].incarnation

    @property
    def local_health(self) -> int:
        return self._health.score

    @property
    def joined(self) -> bool:
        """True once a seed answered, or when no seed was given (a cluster of one)."""
        return self._joined

    @property
    def leave_propagated(self) -> bool:
        """After ``leave``: the LEFT claim has been sent as often as gossip requires."""
        return self._leaving and self.id not in self._broadcasts

    def members(self) -> list[MemberView]:
        """Every member this node knows, itself included, sorted by id."""
        return [self._view(m) for _, m in sorted(self._members.items())]

    def member(self, node_id: NodeId) -> MemberView | None:
        m = self._members.get(node_id)
        return self._view(m) if m is not None else None

    def clock_offsets(self) -> dict[NodeId, OffsetEstimate]:
        """Each probed peer's clock minus ours (lowest-delay sample of the last few)."""
        return self._clocks.estimates()

    @property
    def clock_version(self) -> int:
        """Changes whenever a clock sample is taken: ``clock_offsets`` is the same as long
        as this is."""
        return self._clocks.version

    def stats(self) -> SwimStats:
        counts = self._counts
        return SwimStats(incarnation=self.incarnation, local_health=self._health.score,
                         **{name: getattr(counts, name) for name in _COUNTER_NAMES})

    def suspicion_deadline_ns(self, node_id: NodeId) -> int | None:
        """When ``node_id`` will be declared dead unless it refutes (None: not suspected)."""
        suspicion = self._suspicions.get(node_id)
        return suspicion.deadline_ns if suspicion is not None else None

    @staticmethod
    def _view(m: _Member) -> MemberView:
        return MemberView(m.node_id, m.state, m.incarnation, m.address, m.last_heard_ns,
                          m.state_changed_ns)

    # --- operator requests ---------------------------------------------------------------

    def join(self, seed_ids: Iterable[NodeId]) -> None:
        """Join the cluster through ``seed_ids`` (full state exchanges, retried until one
        answers or ``join_max_attempts`` is reached). No seeds: stay a cluster of one."""
        assert not self._leaving, "a node that left cannot join again; start a new one"
        self._seeds = tuple(sorted(set(seed_ids) - {self.id}))
        self._joined = not self._seeds
        self._join_pending = bool(self._seeds)
        self._join_attempts = 0
        if self._seeds:
            self._send_join()
            self._next_join_ns = self._now_ns + self.config.join_retry_interval_ns

    def leave(self) -> None:
        """Leave gracefully: gossip LEFT about ourselves, stop probing and accusing.

        Keep calling ``tick`` until ``leave_propagated`` (or a timeout of the shell's).
        """
        if self._leaving:
            return
        self._leaving = True
        self._probe = None
        me = self._members[self.id]
        self._set_state(me, MemberState.LEFT)
        self._broadcast(MemberUpdate(self.id, MemberState.LEFT, me.incarnation, self.id))

    # --- time ----------------------------------------------------------------------------

    def tick(self, now_ns: int, wall_ns: int | None = None) -> None:
        """Time passes: fire every timer due at ``now_ns``."""
        self._advance_clock(now_ns)
        wall = now_ns if wall_ns is None else wall_ns
        if not self._started:
            self._start_timers(now_ns)
        self._expire_relays(now_ns)
        if not self._leaving:
            self._retry_join(now_ns)
            self._run_probe(now_ns, wall)
            self._expire_suspicions(now_ns)
            self._push_pull(now_ns)
            self._reconnect(now_ns)
        self._gossip(now_ns)

    def next_deadline_ns(self) -> int | None:
        """When ``tick`` next has work (0 before the first tick; None: only messages can
        create work)."""
        if not self._started:
            return 0
        deadlines = [relay.expires_ns for relay in self._relays.values()]
        if len(self._broadcasts) or self._buddies():
            deadlines.append(self._next_gossip_ns)
        if not self._leaving:
            if self._join_pending:
                deadlines.append(self._next_join_ns)
            probe = self._probe
            if probe is None:
                deadlines.append(self._next_probe_ns)
            else:
                deadlines.append(probe.deadline_ns if probe.indirect_sent
                                 else probe.timeout_at_ns)
            deadlines.extend(s.deadline_ns for s in self._suspicions.values())
            deadlines.append(self._next_push_pull_ns)
            if any(m.state is MemberState.DEAD for m in self._members.values()):
                deadlines.append(self._next_reconnect_ns)
        return min(deadlines) if deadlines else None

    def _advance_clock(self, now_ns: int) -> None:
        assert now_ns >= self._now_ns, "now_ns must not go backwards"
        self._now_ns = now_ns

    def _start_timers(self, now_ns: int) -> None:
        """Random phases, so that nodes started together do not probe in lockstep."""
        self._started = True
        self._members[self.id].state_changed_ns = now_ns
        c = self.config
        self._next_probe_ns = now_ns + self._rng.randrange(c.probe_interval_ns)
        self._next_gossip_ns = now_ns + self._rng.randrange(c.gossip_interval_ns)
        self._next_push_pull_ns = now_ns + self._rng.randrange(c.push_pull_interval_ns)
        self._next_reconnect_ns = now_ns + self._rng.randrange(c.reconnect_interval_ns)
        self._next_join_ns = now_ns + c.join_retry_interval_ns

    def _retry_join(self, now_ns: int) -> None:
        if not self._join_pending or now_ns < self._next_join_ns:
            return
        if self._join_attempts >= self.config.join_max_attempts:
            self._event("join_failed", seeds=",".join(self._seeds),
                        attempts=self._join_attempts)
            self._join_pending = False  # a cluster of one until someone finds us
            return
        self._send_join()
        self._next_join_ns = now_ns + self.config.join_retry_interval_ns

    def _send_join(self) -> None:
        self._join_attempts += 1
        state = self._full_state()
        for seed in self._seeds:
            self._send(PushPull(self.id, seed, state, join=True))

    # --- probing -------------------------------------------------------------------------

    def _run_probe(self, now_ns: int, wall_ns: int) -> None:
        probe = self._probe
        if probe is not None:
            if not probe.indirect_sent and now_ns >= probe.timeout_at_ns:
                self._send_indirect_probes(probe)
            if now_ns >= probe.deadline_ns:
                self._probe = None
                self._probe_failed(probe)
        if self._probe is None and now_ns >= self._next_probe_ns:
            self._start_probe(now_ns, wall_ns)

    def _start_probe(self, now_ns: int, wall_ns: int) -> None:
        interval_ns = self._health.scale(self.config.probe_interval_ns)
        self._next_probe_ns = now_ns + interval_ns
        target = self._next_probe_target()
        if target is None:
            return
        seq = self._next_seq()
        timeout_ns = self._health.scale(self.config.probe_timeout_ns)
        self._probe = _Probe(target, seq, now_ns, now_ns + timeout_ns, now_ns + interval_ns)
        self._counts.probes += 1
        self._send(Ping(self.id, target, seq, wall_ns, self._piggyback(target)))

    def _next_probe_target(self) -> NodeId | None:
        """Round-robin over a shuffled list, reshuffled after each pass (SWIM §4.3)."""
        for _ in range(len(self._probe_order) + 1):
            if self._probe_position >= len(self._probe_order):
                self._probe_order = [m.node_id for _, m in sorted(self._members.items())
                                     if m.node_id != self.id and m.state in _UP]
                self._rng.shuffle(self._probe_order)
                self._probe_position = 0
                if not self._probe_order:
                    return None
            candidate = self._probe_order[self._probe_position]
            self._probe_position += 1
            if self._members[candidate].state in _UP:
                return candidate
        return None

    def _schedule_probe(self, node_id: NodeId) -> None:
        """A member just became probe-worthy: make sure this pass reaches it."""
        if node_id not in self._probe_order[self._probe_position:]:
            position = self._rng.randint(self._probe_position, len(self._probe_order))
            self._probe_order.insert(position, node_id)

    def _send_indirect_probes(self, probe: _Probe) -> None:
        probe.indirect_sent = True
        candidates = [m.node_id for _, m in sorted(self._members.items())
                      if m.state is MemberState.ALIVE and m.node_id not in (self.id, probe.target)]
        relays = self._rng.sample(candidates, min(self.config.indirect_checks, len(candidates)))
        want_nack = self.config.lifeguard
        probe.expected_nacks = len(relays) if want_nack else 0
        self._counts.indirect_probes += len(relays)
        for relay in relays:
            self._send(PingReq(self.id, relay, probe.seq, probe.target, want_nack,
                               self._piggyback(relay)))

    def _probe_succeeded(self, probe: _Probe, ack: Ack) -> None:
        self._probe = None
        if self.config.lifeguard and ack.is_direct and self._now_ns < probe.timeout_at_ns:
            self._health.apply(-1)

    def _probe_failed(self, probe: _Probe) -> None:
        self._counts.probe_failures += 1
        if self.config.lifeguard:
            # with nackers to vouch for the network, only their silence is our fault
            if probe.expected_nacks > 0:
                self._health.apply(probe.expected_nacks - len(probe.nacks))
            else:
                self._health.apply(1)
        target = self._members.get(probe.target)
        self._event("probe_failed", target=probe.target, nacks=len(probe.nacks),
                    local_health=self._health.score)
        if target is not None and target.state in _UP:
            self._apply_suspect(
                MemberUpdate(target.node_id, MemberState.SUSPECT, target.incarnation, self.id))

    def _expire_relays(self, now_ns: int) -> None:
        for seq, relay in list(self._relays.items()):
            if now_ns >= relay.expires_ns:
                del self._relays[seq]
                if relay.want_nack:
                    self._send(Nack(self.id, relay.origin, relay.origin_seq, relay.target,
                                    self._piggyback(relay.origin)))

    # --- suspicion -----------------------------------------------------------------------

    def _expire_suspicions(self, now_ns: int) -> None:
        for node_id, suspicion in list(self._suspicions.items()):
            if now_ns >= suspicion.deadline_ns:
                del self._suspicions[node_id]
                member = self._members[node_id]
                assert member.state is MemberState.SUSPECT
                assert member.incarnation == suspicion.incarnation
                self._event("suspicion_expired", member=node_id,
                            confirmations=suspicion.confirmations,
                            timeout_ms=suspicion.timeout_ns // _MS)
                self._apply_down(MemberUpdate(node_id, MemberState.DEAD, member.incarnation,
                                              self.id))

    def _new_suspicion(self, accuser: NodeId, incarnation: int) -> Suspicion:
        live = self._live_count()
        min_ns, max_ns = suspicion_timeouts_ns(self.config, live)
        if not self.config.lifeguard:
            return Suspicion(accuser, incarnation, self._now_ns, min_ns, min_ns, 0)
        return Suspicion(accuser, incarnation, self._now_ns, min_ns, max_ns,
                         confirmations_wanted(self.config, live))

    # --- periodic dissemination ----------------------------------------------------------

    def _gossip(self, now_ns: int) -> None:
        if now_ns < self._next_gossip_ns:
            return
        self._next_gossip_ns = now_ns + self.config.gossip_interval_ns
        buddies = self._buddies()
        if not (len(self._broadcasts) or buddies):
            return
        candidates = [m.node_id for _, m in sorted(self._members.items())
                      if m.node_id != self.id and self._gossip_worthy(m, now_ns)]
        targets = self._rng.sample(candidates, min(self.config.gossip_nodes, len(candidates)))
        for target in targets + [b for b in buddies if b not in targets]:
            updates = self._piggyback(target)
            if updates:
                self._send(Gossip(self.id, target, updates))

    def _buddies(self) -> list[NodeId]:
        """Members that must hear our suspicion of them (Lifeguard only)."""
        if not self.config.lifeguard or self._leaving:
            return []
        return sorted(self._suspicions)

    def _gossip_worthy(self, m: _Member, now_ns: int) -> bool:
        """Up members, and the recently dead so that they learn it and can refute."""
        if m.state in _UP:
            return True
        return (m.state is MemberState.DEAD
                and now_ns - m.state_changed_ns <= self.config.gossip_to_the_dead_ns)

    def _push_pull(self, now_ns: int) -> None:
        if now_ns < self._next_push_pull_ns:
            return
        self._next_push_pull_ns = now_ns + self.config.push_pull_interval_ns
        self._exchange_state_with_one(MemberState.ALIVE)

    def _reconnect(self, now_ns: int) -> None:
        if now_ns < self._next_reconnect_ns:
            return
        self._next_reconnect_ns = now_ns + self.config.reconnect_interval_ns
        self._exchange_state_with_one(MemberState.DEAD)

    def _exchange_state_with_one(self, state: MemberState) -> None:
        candidates = [m.node_id for _, m in sorted(self._members.items())
                      if m.node_id != self.id and m.state is state]
        if candidates:
            self._send(PushPull(self.id, self._rng.choice(candidates), self._full_state()))

    def _full_state(self) -> tuple[MemberUpdate, ...]:
        states = []
        for _, m in sorted(self._members.items()):
            own_claim = m.state in (MemberState.ALIVE, MemberState.LEFT)
            states.append(MemberUpdate(m.node_id, m.state, m.incarnation,
                                       m.node_id if own_claim else self.id, m.address))
        return tuple(states)

    # --- messages ------------------------------------------------------------------------

    def step(self, msg: SwimMessage, now_ns: int, wall_ns: int | None = None) -> None:
        """A message from a peer arrived at ``now_ns``."""
        assert msg.recipient == self.id, f"message for {msg.recipient} delivered to {self.id}"
        assert msg.sender != self.id, "a node never messages itself"
        self._advance_clock(now_ns)
        wall = now_ns if wall_ns is None else wall_ns
        sender = self._members.get(msg.sender)
        if sender is not None:
            sender.last_heard_ns = now_ns
        self._replying_to = msg.sender
        if isinstance(msg, PushPull):
            self._handle_push_pull(msg)
        else:
            for update in msg.updates:
                self._apply(update)
            self._corrections = self._corrections[:self.config.max_piggyback_updates]
            self._handle(msg, now_ns, wall)
        if self._corrections:
            self._send(Gossip(self.id, msg.sender, tuple(self._corrections)))
            self._corrections = []
        self._replying_to = None

    def _handle(self, msg: Ping | PingReq | Ack | Nack | Gossip, now_ns: int,
                wall: int) -> None:
        match msg:
            case Ping():
                self._send(Ack(self.id, msg.sender, msg.seq, self.id, msg.t1_ns, wall, wall,
                               self._piggyback(msg.sender)))
            case PingReq():
                self._handle_ping_req(msg, now_ns, wall)
            case Ack():
                self._handle_ack(msg, wall)
            case Nack():
                probe = self._probe
                if probe is not None and msg.seq == probe.seq and msg.target == probe.target:
                    probe.nacks.add(msg.sender)
                    self._counts.nacks_received += 1
            case Gossip():
                pass  # nothing but the updates, applied above

    def _handle_ping_req(self, msg: PingReq, now_ns: int, wall_ns: int) -> None:
        if msg.target in (self.id, msg.sender):
            self._event("ping_req_ignored", sender=msg.sender, target=msg.target)
            return
        if len(self._relays) >= self.config.max_pending_relays:
            self._event("ping_req_dropped", sender=msg.sender, target=msg.target)
            return
        seq = self._next_seq()
        wait_ns = self.config.probe_timeout_ns * 4 // 5
        self._relays[seq] = _Relay(msg.sender, msg.seq, msg.target, now_ns + wait_ns,
                                   msg.want_nack)
        self._send(Ping(self.id, msg.target, seq, wall_ns, self._piggyback(msg.target)))

    def _handle_ack(self, msg: Ack, wall_ns: int) -> None:
        if msg.is_direct:
            if msg.t1_ns <= wall_ns and msg.t2_ns <= msg.t3_ns:
                self._clocks.add(msg.sender, msg.t1_ns, msg.t2_ns, msg.t3_ns, wall_ns)
            else:
                self._event("clock_sample_rejected", peer=msg.sender)
        relay = self._relays.get(msg.seq)
        if relay is not None and msg.is_direct and msg.sender == relay.target:
            del self._relays[msg.seq]
            self._send(Ack(self.id, relay.origin, relay.origin_seq, relay.target,
                           updates=self._piggyback(relay.origin)))
            return
        probe = self._probe
        if probe is not None and msg.seq == probe.seq and msg.target == probe.target:
            self._probe_succeeded(probe, msg)

    def _handle_push_pull(self, msg: PushPull) -> None:
        for state in msg.states:
            match state.state:
                case MemberState.ALIVE | MemberState.LEFT:
                    self._apply(MemberUpdate(state.member, state.state, state.incarnation,
                                             state.member, state.address))
                case MemberState.SUSPECT | MemberState.DEAD:
                    # memberlist: a remote verdict of death only makes us suspect
                    self._apply(MemberUpdate(state.member, MemberState.SUSPECT,
                                             state.incarnation, msg.sender))
        if not msg.reply:
            self._corrections = []  # our full state says it all
            self._send(PushPull(self.id, msg.sender, self._full_state(), join=msg.join,
                                reply=True))
        elif not self._joined:
            self._joined = True
            self._join_pending = False
            self._event("joined", through=msg.sender)

    # --- applying claims -----------------------------------------------------------------

    def _apply(self, update: MemberUpdate) -> None:
        if update.member == self.id:
            self._apply_about_me(update)
            return
        match update.state:
            case MemberState.ALIVE:
                self._apply_alive(update)
            case MemberState.SUSPECT:
                self._apply_suspect(update)
            case MemberState.DEAD | MemberState.LEFT:
                self._apply_down(update)

    def _apply_about_me(self, update: MemberUpdate) -> None:
        me = self._members[self.id]
        if self._leaving:
            return  # a leaving node does not argue
        if update.state is MemberState.ALIVE:
            stale = update.incarnation <= me.incarnation  # a newer one: from an earlier life
        else:
            stale = update.incarnation < me.incarnation
        if not stale:
            self._refute(update)
        elif update.state is not MemberState.ALIVE:
            self._correct(me)

    def _refute(self, update: MemberUpdate) -> None:
        me = self._members[self.id]
        me.incarnation = update.incarnation + 1
        self._counts.refutations += 1
        if self.config.lifeguard:
            self._health.apply(1)  # being accused hints that we are the slow one
        self._event("refuted", claim=update.state.name, origin=update.origin,
                    incarnation=me.incarnation)
        self._broadcast(MemberUpdate(self.id, MemberState.ALIVE, me.incarnation, self.id,
                                     me.address))

    def _apply_alive(self, update: MemberUpdate) -> None:
        member = self._members.get(update.member)
        if member is None:
            member = _Member(update.member, MemberState.ALIVE, update.incarnation,
                             update.address, self._now_ns)
            self._members[update.member] = member
            self._changes.append(MemberChange(member.node_id, None, MemberState.ALIVE,
                                              member.incarnation, self._now_ns))
            self._event("member_added", member=member.node_id, incarnation=member.incarnation)
            self._schedule_probe(member.node_id)
            self._broadcast(update)
            return
        if update.incarnation <= member.incarnation:
            return  # only a newer incarnation overrides a claim
        member.incarnation = update.incarnation
        if update.address:
            member.address = update.address
        self._suspicions.pop(member.node_id, None)
        if member.state is not MemberState.ALIVE:
            self._set_state(member, MemberState.ALIVE)
            self._schedule_probe(member.node_id)
        self._broadcast(update)

    def _correct(self, member: _Member) -> None:
        """The sender of the message in hand holds an outdated claim: tell it ours."""
        if any(c.member == member.node_id for c in self._corrections):
            return
        self._corrections.append(MemberUpdate(member.node_id, MemberState.ALIVE,
                                              member.incarnation, member.node_id,
                                              member.address))

    def _apply_suspect(self, update: MemberUpdate) -> None:
        member = self._members.get(update.member)
        if member is None:
            return
        if update.incarnation < member.incarnation:
            if member.state is MemberState.ALIVE:
                self._correct(member)
            return
        if member.state in (MemberState.DEAD, MemberState.LEFT):
            return
        if member.state is MemberState.SUSPECT and update.incarnation == member.incarnation:
            suspicion = self._suspicions[member.node_id]
            if suspicion.confirm(update.origin):
                self._event("suspicion_confirmed", member=member.node_id, by=update.origin,
                            confirmations=suspicion.confirmations,
                            timeout_ms=suspicion.timeout_ns // _MS)
                self._broadcast(update)
            return
        member.incarnation = update.incarnation
        self._suspicions[member.node_id] = self._new_suspicion(update.origin,
                                                               update.incarnation)
        if member.state is not MemberState.SUSPECT:
            self._set_state(member, MemberState.SUSPECT, accuser=update.origin)
        self._broadcast(update)

    def _apply_down(self, update: MemberUpdate) -> None:
        """A DEAD claim, or a LEFT claim (which only the member itself may make)."""
        member = self._members.get(update.member)
        if member is None:
            return
        if update.incarnation < member.incarnation:
            if member.state is MemberState.ALIVE and update.state is MemberState.DEAD:
                self._correct(member)
            return
        if update.state is MemberState.LEFT and update.origin != update.member:
            return
        if member.state is MemberState.LEFT or member.state is update.state:
            return
        member.incarnation = update.incarnation
        self._suspicions.pop(member.node_id, None)
        self._set_state(member, update.state, origin=update.origin)
        self._broadcast(update)

    def _set_state(self, member: _Member, state: MemberState, **attrs: str) -> None:
        previous = member.state
        assert previous is not state
        member.state = state
        member.state_changed_ns = self._now_ns
        self._changes.append(MemberChange(member.node_id, previous, state, member.incarnation,
                                          self._now_ns))
        counts = self._counts
        match state:
            case MemberState.SUSPECT:
                counts.suspicions += 1
            case MemberState.DEAD:
                counts.deaths += 1
            case MemberState.ALIVE if previous is MemberState.SUSPECT:
                counts.suspicions_cleared += 1
            case MemberState.ALIVE:
                counts.revivals += 1
            case MemberState.LEFT:
                pass
        self._event(state.name.lower(), member=member.node_id, incarnation=member.incarnation,
                    previous=previous.name, **attrs)

    # --- outbox --------------------------------------------------------------------------

    def _broadcast(self, update: MemberUpdate) -> None:
        self._broadcasts.push(update)

    def _piggyback(self, recipient: NodeId) -> tuple[MemberUpdate, ...]:
        """At most ``max_piggyback_updates`` claims for a message to ``recipient``: first
        what we hold against it, then corrections it needs, then the broadcast queue."""
        first: list[MemberUpdate] = []
        target = self._members.get(recipient)
        if target is not None and (
                target.state is MemberState.DEAD
                or (target.state is MemberState.SUSPECT and self.config.lifeguard)):
            first.append(MemberUpdate(recipient, target.state, target.incarnation, self.id))
        if self._corrections and recipient == self._replying_to:
            first.extend(self._corrections)
            self._corrections = []
        first = first[:self.config.max_piggyback_updates]
        room = self.config.max_piggyback_updates - len(first)
        max_transmits = retransmit_limit(self.config, self._live_count())
        return tuple(first + self._broadcasts.take(room, max_transmits))

    def _live_count(self) -> int:
        return sum(1 for m in self._members.values() if m.state in _UP)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _send(self, msg: SwimMessage) -> None:
        assert msg.recipient != self.id
        self._messages.append(msg)

    def _event(self, name: str, **attrs: object) -> None:
        self._events.append(TraceEvent(name, {"node": self.id, **attrs}))

    def ready(self) -> SwimReady:
        """Take everything produced since the last call."""
        ready = SwimReady(tuple(self._messages), tuple(self._changes), tuple(self._events))
        self._messages = []
        self._changes = []
        self._events = []
        return ready
