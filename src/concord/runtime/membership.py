"""The membership driver: runs the SWIM core (``concord.detector.swim``) for real.

``MembershipDriver`` owns one ``SwimNode``. It steps it with every SWIM message the channel
delivers and ticks it at ``next_deadline_ns()``, reading ``time.monotonic_ns()`` for
timers and the node's wall clock (``WallClock``: ``time.time_ns()`` plus an injected offset
and drift, for tests) for clock offset samples. After each step or tick it performs the
core's ``ready()``: sends the messages through the ``SwimChannel``, publishes the changes
(log lines, metrics, subscribers of ``/v1/cluster/events``) and logs the trace events.

Side by side with SWIM, every message from a peer is a heartbeat for a phi accrual and a
fixed-timeout detector of that peer, so the three verdicts can be compared;
``settings.detector`` names the one ``available`` reports.

Clock check: when this node's clock is surely (beyond the estimate's uncertainty) more than
``max_clock_offset_ms`` away from a strict majority of its live peers, it says so loudly,
once per change, and ``clock_out_of_sync`` turns True (and ``/v1/status`` shows it). A
strict majority, unlike ``ClockOffsetEstimator.out_of_sync``'s "at least half", so that in a
three-node cluster the two good clocks do not both accuse themselves of the third's fault.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Final, Protocol

import structlog

from concord.config import MembershipSettings
from concord.core.trace import TraceEvent
from concord.detector.heartbeat import HeartbeatDetector
from concord.detector.messages import MemberState, NodeId, SwimMessage
from concord.detector.phi import PhiAccrualConfig, PhiAccrualDetector
from concord.detector.swim import MemberChange, MemberView, SwimConfig, SwimNode
from concord.observability.metrics import NodeMetrics
from concord.runtime.service import MemberHealth, MembershipEvent
from concord.transport.addresses import AddressBook

log = structlog.get_logger("concord.membership")

_MS: Final = 1_000_000
MAX_SUBSCRIBER_EVENTS: Final = 1_000
"""Events queued for one slow ``/v1/cluster/events`` reader; beyond it new ones are lost."""

MAX_SLEEP_S: Final = 1.0
"""The driver wakes at least this often, deadline or not."""

LEAVE_POLL_S: Final = 0.02

LOGGED_EVENTS: Final = frozenset({"alive", "suspect", "dead", "left", "refuted", "joined",
                                  "join_failed"})
"""Trace events logged at info; the others at debug."""


class SwimSender(Protocol):
    """Where the driver's messages go (``concord.transport.swim_channel.SwimChannel``)."""

    def send(self, messages: Sequence[SwimMessage],
             address_of: Callable[[NodeId], str | None]) -> None: ...

    async def drain(self, timeout_s: float) -> None: ...


class WallClock:
    """This node's wall clock: ``time.time_ns()`` + ``offset_ms``, running ``drift_ppm``
    parts per million fast (negative: slow) since it was created.

    ``offset_ms`` may be changed while the node runs: the fault hook's ``clock_offset_ms``
    (``concord.transport.faults.FaultInjector``) skews the clock this way."""

    __slots__ = ("_drift_ppm", "_started_mono_ns", "offset_ms")

    def __init__(self, offset_ms: int = 0, drift_ppm: float = 0.0) -> None:
        self.offset_ms = offset_ms
        self._drift_ppm = drift_ppm
        self._started_mono_ns = time.monotonic_ns()

    def now_ns(self) -> int:
        drift_ns = (time.monotonic_ns() - self._started_mono_ns) * self._drift_ppm / 1e6
        return time.time_ns() + self.offset_ms * _MS + int(drift_ns)


def swim_config(settings: MembershipSettings) -> SwimConfig:
    """The SWIM core's configuration from the ``[membership]`` settings."""
    return SwimConfig(
        probe_interval_ns=settings.probe_interval_ms * _MS,
        probe_timeout_ns=settings.probe_timeout_ms * _MS,
        suspicion_mult=settings.suspicion_mult,
        suspicion_max_timeout_mult=settings.suspicion_max_timeout_mult,
        gossip_interval_ns=settings.gossip_interval_ms * _MS,
    )


class MembershipDriver:
    """Implements ``concord.runtime.service.MembershipService``. Event-loop only."""

    def __init__(self, settings: MembershipSettings, *, node_id: NodeId, address: str,
                 seeds: Iterable[NodeId], channel: SwimSender, addresses: AddressBook,
                 metrics: NodeMetrics, rng: random.Random | None = None,
                 wall_clock: WallClock | None = None) -> None:
        self.settings = settings
        self.node_id = node_id
        self._seeds = sorted(set(seeds) - {node_id})
        self._channel = channel
        self._addresses = addresses
        self._metrics = metrics
        self._clock = wall_clock or WallClock(settings.clock_offset_ms, settings.clock_drift_ppm)
        self.swim = SwimNode(swim_config(settings), node_id, rng or random.Random(), address)
        self._phi_config = PhiAccrualConfig(
            threshold=settings.phi_threshold,
            acceptable_heartbeat_pause_ns=settings.phi_acceptable_pause_ms * _MS,
            first_heartbeat_estimate_ns=settings.probe_interval_ms * _MS)
        self._phi: dict[NodeId, PhiAccrualDetector] = {}
        self._heartbeats = HeartbeatDetector(settings.heartbeat_timeout_ms * _MS)
        self._subscribers: set[asyncio.Queue[MembershipEvent | None]] = set()
        self._wake = asyncio.Event()
        self._counted = {"probes": 0, "suspicions": 0, "deaths": 0, "refutations": 0}
        self._states_counted = False  # the member-state gauges reflect every change so far
        self._clock_checked = -1  # the clock version _check_clock last looked at
        self._out_of_sync = False
        self._started = False

    # --- clocks --------------------------------------------------------------------------

    @staticmethod
    def monotonic_ns() -> int:
        return time.monotonic_ns()

    def wall_ns(self) -> int:
        return self._clock.now_ns()

    @property
    def clock_out_of_sync(self) -> bool:
        """True while this node's clock is too far from a majority of its live peers."""
        return self._out_of_sync

    # --- inputs --------------------------------------------------------------------------

    def on_messages(self, messages: Sequence[SwimMessage]) -> None:
        """Messages from the channel: every one is a heartbeat of its sender, then a step."""
        now_ns = self.monotonic_ns()
        wall_ns = self.wall_ns()
        for message in messages:
            self._heartbeat(message.sender, now_ns)
            self.swim.step(message, now_ns, wall_ns)
        self._flush()
        self._wake.set()

    def _heartbeat(self, peer: NodeId, now_ns: int) -> None:
        detector = self._phi.get(peer)
        if detector is None:
            detector = self._phi[peer] = PhiAccrualDetector(self._phi_config)
        detector.heartbeat(now_ns)
        self._heartbeats.heartbeat(peer, now_ns)

    async def run(self) -> None:
        """Join through the seeds, then tick the core at its deadlines; forever."""
        self.swim.tick(self.monotonic_ns(), self.wall_ns())
        self.swim.join(self._seeds)
        self._started = True
        self._flush()
        while True:
            deadline_ns = self.swim.next_deadline_ns()
            sleep_s = MAX_SLEEP_S
            if deadline_ns is not None:
                sleep_s = min(sleep_s, max(0.0, (deadline_ns - self.monotonic_ns()) / 1e9))
            self._wake.clear()
            try:
                async with asyncio.timeout(sleep_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self.swim.tick(self.monotonic_ns(), self.wall_ns())
            self._flush()

    async def leave(self, timeout_s: float) -> bool:
        """Announce LEFT and wait (at most ``timeout_s``) until it has been gossiped enough
        and the batches carrying it are written. True when it was."""
        if not self._started:
            return False
        self.swim.leave()
        self._flush()
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        while not self.swim.leave_propagated and time.monotonic() < deadline:
            await asyncio.sleep(LEAVE_POLL_S)
        await self._channel.drain(max(0.0, deadline - time.monotonic()))
        propagated = self.swim.leave_propagated
        log.info("left the cluster", propagated=propagated)
        return propagated

    def close(self) -> None:
        """End every ``/v1/cluster/events`` stream."""
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()  # make room for the end mark
            queue.put_nowait(None)
        self._subscribers.clear()

    # --- outputs -------------------------------------------------------------------------

    def _flush(self) -> None:
        ready = self.swim.ready()
        if ready.messages:
            self._channel.send(ready.messages, self._address_of)
        for change in ready.changes:
            self._publish(change)
        for event in ready.events:
            self._log(event)
        # Run on every incoming batch, so each part runs only when its inputs moved: member
        # states change only through ``ready.changes``, clock estimates with a new sample.
        self._update_counters()
        if ready.changes or not self._states_counted:
            self._update_member_gauges()
        if ready.changes or self.swim.clock_version != self._clock_checked:
            self._check_clock()

    def _address_of(self, node_id: NodeId) -> str | None:
        member = self.swim.member(node_id)
        if member is not None and member.address:
            return member.address
        return self._addresses.get(node_id)

    def _publish(self, change: MemberChange) -> None:
        corrected = (change.state is MemberState.ALIVE
                     and change.previous in (MemberState.SUSPECT, MemberState.DEAD))
        if corrected:
            self._metrics.membership_false_positives_corrected_total.inc()
        if change.state is MemberState.LEFT:
            self._phi.pop(change.node_id, None)
            self._heartbeats.forget(change.node_id)
        event: MembershipEvent = {
            "member": change.node_id,
            "previous": change.previous.name.lower() if change.previous is not None else None,
            "state": change.state.name.lower(),
            "incarnation": change.incarnation,
            "at_unix_ms": self.wall_ns() // _MS,
        }
        for queue in self._subscribers:
            _offer(queue, event)

    def _log(self, event: TraceEvent) -> None:
        attrs = {k: v for k, v in event.attrs.items() if k != "node"}
        if event.name in LOGGED_EVENTS:
            log.info(f"member_{event.name}", **attrs)
        else:
            log.debug(f"swim_{event.name}", **attrs)

    def _update_counters(self) -> None:
        stats = self.swim.stats()
        m = self._metrics
        current = {"probes": stats.probes, "suspicions": stats.suspicions,
                   "deaths": stats.deaths, "refutations": stats.refutations}
        counters = {"probes": m.membership_probes_total,
                    "suspicions": m.membership_suspicions_total,
                    "deaths": m.membership_deaths_total,
                    "refutations": m.membership_refutations_total}
        for name, value in current.items():
            if value > self._counted[name]:
                counters[name].inc(value - self._counted[name])
                self._counted[name] = value

    def _update_member_gauges(self) -> None:
        states = [member.state for member in self.swim.members()]
        for state in MemberState:
            self._metrics.membership_members.labels(state=state.name.lower()).set(
                states.count(state))
        self._states_counted = True

    def _check_clock(self) -> None:
        self._clock_checked = self.swim.clock_version
        offsets = self.swim.clock_offsets()
        for peer, estimate in offsets.items():
            self._metrics.membership_clock_offset_seconds.labels(peer=peer).set(
                estimate.offset_ns / 1e9)
        live = [m.node_id for m in self.swim.members()
                if m.node_id != self.node_id and m.state is MemberState.ALIVE]
        max_ns = self.settings.max_clock_offset_ms * _MS
        far = [p for p in live if p in offsets
               and abs(offsets[p].offset_ns) - offsets[p].uncertainty_ns > max_ns]
        out_of_sync = 2 * len(far) > len(live)
        if out_of_sync == self._out_of_sync:
            return
        self._out_of_sync = out_of_sync
        if out_of_sync:
            log.warning("CLOCK OUT OF SYNC: this node's clock is more than max_clock_offset_ms "
                        "away from a majority of its peers",
                        max_clock_offset_ms=self.settings.max_clock_offset_ms, far_peers=far,
                        offsets_ms={p: offsets[p].offset_ns / _MS for p in far})
        else:
            log.warning("clock back in sync with the majority of peers")

    # --- MembershipService ---------------------------------------------------------------

    @property
    def detector(self) -> str:
        return self.settings.detector

    def member_health(self) -> list[MemberHealth]:
        now_ns = self.monotonic_ns()
        offsets = self.swim.clock_offsets()
        reports = []
        for member in self.swim.members():
            is_self = member.node_id == self.node_id
            phi = self._phi_of(member.node_id, now_ns)
            heartbeat = (None if is_self
                         else self._heartbeats.is_available(member.node_id, now_ns))
            estimate = offsets.get(member.node_id)
            available = self._is_up(member, now_ns)
            reports.append(MemberHealth(
                node_id=member.node_id,
                state=member.state.name.lower(),
                incarnation=member.incarnation,
                address=member.address,
                available=available,
                phi=None if phi is None else round(phi, 3),
                heartbeat_available=heartbeat,
                last_heard_ms_ago=(None if member.last_heard_ns is None
                                   else round((now_ns - member.last_heard_ns) / _MS, 1)),
                clock_offset_ms=None if estimate is None else estimate.offset_ns / _MS,
                clock_uncertainty_ms=None if estimate is None else estimate.uncertainty_ns / _MS,
            ))
        return reports

    def available_members(self) -> set[NodeId]:
        """The members ``member_health`` reports as available (this node among them),
        without building the rest of the report: the quorum store asks every tick."""
        now_ns = self.monotonic_ns()
        return {self.node_id} | {member.node_id for member in self.swim.members()
                                 if self._is_up(member, now_ns)}

    def _is_up(self, member: MemberView, now_ns: int) -> bool:
        """The configured detector's verdict on ``member``. SWIM judges this node by its own
        state too; phi and heartbeat hear no heartbeats from it and count it as up."""
        detector = self.settings.detector
        if detector not in ("phi", "heartbeat"):
            return member.state is MemberState.ALIVE
        if member.node_id == self.node_id:
            return True
        if detector == "phi":
            phi = self._phi_of(member.node_id, now_ns)
            return phi is not None and phi < self._phi_config.threshold
        return bool(self._heartbeats.is_available(member.node_id, now_ns))

    def _phi_of(self, node_id: NodeId, now_ns: int) -> float | None:
        detector = self._phi.get(node_id)
        return detector.phi(now_ns) if detector is not None else None

    def status(self) -> dict[str, object]:
        """JSON-ready, for ``/v1/status``."""
        stats = self.swim.stats()
        counts: dict[str, int] = {}
        for member in self.swim.members():
            name = member.state.name.lower()
            counts[name] = counts.get(name, 0) + 1
        return {"detector": self.detector, "incarnation": stats.incarnation,
                "local_health": stats.local_health, "members": counts,
                "clock_out_of_sync": self._out_of_sync,
                "max_clock_offset_ms": self.settings.max_clock_offset_ms}

    def subscribe(self) -> asyncio.Queue[MembershipEvent | None]:
        queue: asyncio.Queue[MembershipEvent | None] = asyncio.Queue(MAX_SUBSCRIBER_EVENTS)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[MembershipEvent | None]) -> None:
        self._subscribers.discard(queue)


def _offer(queue: asyncio.Queue[MembershipEvent | None], item: MembershipEvent) -> None:
    try:
        queue.put_nowait(item)
    except asyncio.QueueFull:
        log.warning("membership event dropped: a /v1/cluster/events reader is too slow")
