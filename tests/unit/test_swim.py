"""SWIM + Lifeguard: timeouts and formulas against memberlist's numbers, the claim precedence
rules, and each mechanism (probe, indirect probe, nack, suspicion, refutation, dissemination,
push-pull, join, leave, local health) on a tiny zero-delay network."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import pytest

from concord.detector.messages import (
    Ack,
    Gossip,
    MemberState,
    MemberUpdate,
    Nack,
    Ping,
    PingReq,
    PushPull,
    SwimMessage,
)
from concord.detector.swim import (
    BroadcastQueue,
    LocalHealth,
    Suspicion,
    SwimConfig,
    SwimNode,
    confirmations_wanted,
    retransmit_limit,
    suspicion_timeouts_ns,
)

MS = 1_000_000
S = 1_000_000_000
ALIVE, SUSPECT, DEAD, LEFT = (MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD,
                              MemberState.LEFT)


class Net:
    """Nodes on a zero-delay network, ticked every ``step_ns``. ``drop`` filters messages."""

    def __init__(self, ids: Iterable[str], config: SwimConfig | None = None, seed: int = 1,
                 wall_offsets_ns: dict[str, int] | None = None) -> None:
        self.config = config or SwimConfig()
        self.nodes = {i: SwimNode(self.config, i, random.Random(f"{seed}-{i}"), address=i)
                      for i in ids}
        self.wall_offsets_ns = wall_offsets_ns or {}
        self.now = 0
        self.down: set[str] = set()
        self.drop: Callable[[SwimMessage], bool] = lambda msg: False
        self.sent: list[SwimMessage] = []
        self.events: list[tuple[int, str, dict[str, object]]] = []

    def wall(self, node_id: str) -> int:
        return self.now + self.wall_offsets_ns.get(node_id, 0)

    def join_all(self) -> None:
        first, *rest = self.nodes
        for node_id in rest:
            self.nodes[node_id].join([first])
        self.run(2 * S)
        assert self.all_see_all_alive()

    def all_see_all_alive(self) -> bool:
        live = [n for n in self.nodes if n not in self.down]
        return all(self.state(o, m) is ALIVE for o in live for m in live)

    def state(self, observer: str, member: str) -> MemberState | None:
        view = self.nodes[observer].member(member)
        return view.state if view is not None else None

    def run(self, duration_ns: int, step_ns: int = 10 * MS) -> None:
        end = self.now + duration_ns
        while self.now < end:
            self.now += step_ns
            for node_id, node in self.nodes.items():
                if node_id not in self.down:
                    node.tick(self.now, self.wall(node_id))
            self.flush()

    def flush(self) -> None:
        pending = self._collect()
        while pending:
            msg = pending.pop(0)
            if msg.recipient in self.down or msg.sender in self.down or self.drop(msg):
                continue
            node = self.nodes[msg.recipient]
            node.step(msg, self.now, self.wall(msg.recipient))
            pending.extend(self._collect())

    def _collect(self) -> list[SwimMessage]:
        out: list[SwimMessage] = []
        for node in self.nodes.values():
            ready = node.ready()
            out.extend(ready.messages)
            self.events.extend((self.now, e.name, e.attrs) for e in ready.events)
        self.sent.extend(out)
        return out


def lone_node(lifeguard: bool = True) -> SwimNode:
    node = SwimNode(SwimConfig(lifeguard=lifeguard), "me", random.Random(0))
    node.tick(0)
    node.ready()
    return node


def feed(node: SwimNode, *updates: MemberUpdate, sender: str = "z", now_ns: int = 0) -> None:
    node.step(Gossip(sender, node.id, updates), now_ns)


def alive(member: str, inc: int) -> MemberUpdate:
    return MemberUpdate(member, ALIVE, inc, member)


def suspect(member: str, inc: int, origin: str = "y") -> MemberUpdate:
    return MemberUpdate(member, SUSPECT, inc, origin)


def dead(member: str, inc: int, origin: str = "y") -> MemberUpdate:
    return MemberUpdate(member, DEAD, inc, origin)


def left(member: str, inc: int, origin: str | None = None) -> MemberUpdate:
    return MemberUpdate(member, LEFT, inc, origin or member)


# --- formulas (memberlist's numbers, research notes §2.5) ---------------------------------

@pytest.mark.parametrize(("live", "expected_s"), [
    (1, (4, 24)), (5, (4, 24)), (10, (4, 24)), (100, (8, 48)), (1000, (12, 72)),
])
def test_suspicion_timeouts_scale_with_log10_of_the_cluster(
        live: int, expected_s: tuple[int, int]) -> None:
    min_ns, max_ns = suspicion_timeouts_ns(SwimConfig(), live)
    assert (min_ns, max_ns) == (expected_s[0] * S, expected_s[1] * S)


@pytest.mark.parametrize(("live", "limit"), [(1, 4), (9, 4), (10, 8), (99, 8), (100, 12)])
def test_retransmit_limit_is_mult_times_ceil_log10_n_plus_one(live: int, limit: int) -> None:
    assert retransmit_limit(SwimConfig(), live) == limit


@pytest.mark.parametrize(("live", "wanted"), [(2, 0), (3, 0), (4, 2), (50, 2)])
def test_confirmations_wanted_is_mult_minus_two_unless_the_cluster_is_too_small(
        live: int, wanted: int) -> None:
    assert confirmations_wanted(SwimConfig(), live) == wanted


def test_suspicion_timeout_falls_from_max_to_min_with_independent_confirmations() -> None:
    suspicion = Suspicion("accuser", 0, started_ns=100 * S, min_timeout_ns=4 * S,
                          max_timeout_ns=24 * S, wanted=2)
    assert suspicion.deadline_ns == 124 * S
    assert not suspicion.confirm("accuser")  # the accuser is not a confirmation
    assert suspicion.confirm("b")
    assert not suspicion.confirm("b")  # nor is a repeat
    # 24 - 20 * log(2) / log(3) = 11.381 s
    assert suspicion.timeout_ns == pytest.approx(11.3815 * S, rel=1e-4)
    assert suspicion.confirm("c")
    assert suspicion.timeout_ns == 4 * S
    assert not suspicion.confirm("d")  # enough already
    assert Suspicion("a", 0, 0, 4 * S, 24 * S, wanted=0).timeout_ns == 4 * S


def test_local_health_is_clamped_and_scales_durations() -> None:
    health = LocalHealth(max_multiplier=8)
    health.apply(-3)
    assert health.score == 0
    health.apply(20)
    assert health.score == 7
    assert health.scale(500 * MS) == 4 * S


def test_broadcast_queue_sends_least_transmitted_newest_first_and_drops_when_done() -> None:
    queue = BroadcastQueue()
    queue.push(alive("a", 1))
    queue.push(alive("b", 1))
    assert queue.take(1, max_transmits=2) == [alive("b", 1)]  # newest first
    assert queue.take(1, max_transmits=2) == [alive("a", 1)]  # then least transmitted
    queue.push(suspect("a", 1))  # replaces the claim about a, with a fresh count
    assert queue.take(5, max_transmits=2) == [suspect("a", 1), alive("b", 1)]
    assert "b" not in queue  # sent twice: done
    assert queue.take(5, max_transmits=2) == [suspect("a", 1)]
    assert len(queue) == 0


def test_config_rejects_a_probe_timeout_not_shorter_than_the_interval() -> None:
    with pytest.raises(ValueError, match="probe_timeout_ns"):
        SwimConfig(probe_timeout_ns=1 * S, probe_interval_ns=1 * S)
    with pytest.raises(ValueError, match="gossip_nodes"):
        SwimConfig(gossip_nodes=0)


# --- claim precedence ----------------------------------------------------------------------

SETUP = {
    ALIVE: lambda inc: [alive("x", inc)],
    SUSPECT: lambda inc: [alive("x", inc), suspect("x", inc)],
    DEAD: lambda inc: [alive("x", inc), dead("x", inc)],
    LEFT: lambda inc: [alive("x", inc), left("x", inc)],
}


@pytest.mark.parametrize(("state", "update", "expected"), [
    (ALIVE, alive("x", 3), (ALIVE, 3)),
    (ALIVE, alive("x", 4), (ALIVE, 4)),
    (ALIVE, alive("x", 2), (ALIVE, 3)),
    (ALIVE, suspect("x", 2), (ALIVE, 3)),
    (ALIVE, suspect("x", 3), (SUSPECT, 3)),
    (ALIVE, suspect("x", 4), (SUSPECT, 4)),
    (ALIVE, dead("x", 2), (ALIVE, 3)),
    (ALIVE, dead("x", 3), (DEAD, 3)),
    (ALIVE, left("x", 3), (LEFT, 3)),
    (ALIVE, left("x", 3, origin="y"), (ALIVE, 3)),  # only x may say that x left
    (SUSPECT, alive("x", 3), (SUSPECT, 3)),  # a refutation needs a higher incarnation
    (SUSPECT, alive("x", 4), (ALIVE, 4)),
    (SUSPECT, suspect("x", 5), (SUSPECT, 5)),
    (SUSPECT, dead("x", 3), (DEAD, 3)),
    (DEAD, alive("x", 3), (DEAD, 3)),
    (DEAD, alive("x", 4), (ALIVE, 4)),
    (DEAD, suspect("x", 4), (DEAD, 3)),  # memberlist: suspicion of the dead is ignored
    (DEAD, left("x", 3), (LEFT, 3)),
    (LEFT, dead("x", 3), (LEFT, 3)),
    (LEFT, alive("x", 4), (ALIVE, 4)),  # rejoined after leaving
])
def test_claims_override_by_incarnation_then_by_state(
        state: MemberState, update: MemberUpdate,
        expected: tuple[MemberState, int]) -> None:
    node = lone_node()
    feed(node, *SETUP[state](3))
    view = node.member("x")
    assert view is not None and (view.state, view.incarnation) == (state, 3)
    feed(node, update)
    view = node.member("x")
    assert view is not None and (view.state, view.incarnation) == expected


def test_only_alive_claims_introduce_an_unknown_member() -> None:
    node = lone_node()
    assert node.ready().is_empty()
    feed(node, suspect("x", 1), dead("y", 1), left("w", 1))
    assert [m.node_id for m in node.members()] == ["me"]
    feed(node, MemberUpdate("x", ALIVE, 2, "x", "10.0.0.7:7000"))
    view = node.member("x")
    assert view is not None and (view.state, view.address) == (ALIVE, "10.0.0.7:7000")
    change = node.ready().changes
    assert [(c.node_id, c.previous, c.state) for c in change] == [("x", None, ALIVE)]


@pytest.mark.parametrize(("claim", "incarnation_after"), [
    (suspect("me", 0), 1),
    (suspect("me", 5), 6),
    (dead("me", 0), 1),
    (left("me", 0, origin="me"), 1),  # a LEFT from an earlier life
    (alive("me", 0), 0),  # agrees with us
    (alive("me", 3), 4),  # an earlier life had a higher incarnation: outbid it
])
def test_a_node_refutes_claims_about_itself_with_a_higher_incarnation(
        claim: MemberUpdate, incarnation_after: int) -> None:
    node = lone_node()
    feed(node, alive("z", 0), claim)
    assert node.incarnation == incarnation_after
    assert node.member("me") is not None
    ready = node.ready()
    refuted = incarnation_after > 0
    assert any(e.name == "refuted" for e in ready.events) is refuted
    assert node.stats().refutations == int(refuted)
    assert node.local_health == int(refuted)  # Lifeguard: being accused hints we are slow


def test_a_stale_accusation_is_answered_with_the_newer_alive_claim() -> None:
    """Our correction: the sender missed a refutation; tell it before its timer runs out."""
    node = lone_node()
    feed(node, alive("x", 4), alive("z", 0))
    node.ready()
    feed(node, suspect("x", 3, origin="z"), sender="z")
    [reply] = node.ready().messages
    assert isinstance(reply, Gossip) and reply.recipient == "z"
    assert reply.updates == (MemberUpdate("x", ALIVE, 4, "x"),)


def test_a_ping_carrying_a_stale_accusation_gets_the_correction_in_its_ack() -> None:
    node = lone_node()
    feed(node, suspect("me", 0), alive("z", 0))  # refuted: we are at incarnation 1 now
    node.ready()
    node.step(Ping("z", "me", seq=9, t1_ns=5, updates=(suspect("me", 0, origin="z"),)), 10)
    [ack] = node.ready().messages
    assert isinstance(ack, Ack) and ack.updates[0] == MemberUpdate("me", ALIVE, 1, "me")


# --- probing -------------------------------------------------------------------------------

def test_a_probe_round_trip_yields_the_peer_clock_offset() -> None:
    net = Net(["a", "b"], wall_offsets_ns={"b": 2 * S + 123})
    net.join_all()
    net.run(3 * S)
    pings = [m for m in net.sent if isinstance(m, Ping) and m.sender == "a"]
    acks = [m for m in net.sent if isinstance(m, Ack) and m.recipient == "a"]
    assert pings and acks
    assert acks[-1].t1_ns == pings[-1].t1_ns  # echoed
    assert acks[-1].t2_ns - acks[-1].t1_ns == 2 * S + 123  # zero delay: only the offset
    offset_at_a = net.nodes["a"].clock_offsets()["b"]
    offset_at_b = net.nodes["b"].clock_offsets()["a"]
    assert (offset_at_a.offset_ns, offset_at_a.uncertainty_ns) == (2 * S + 123, 0)
    assert offset_at_b.offset_ns == -(2 * S + 123)


def test_each_pass_probes_every_member_once_in_a_fresh_random_order() -> None:
    node = lone_node()
    feed(node, *(alive(m, 0) for m in "bcde"))
    targets = []
    for second in range(1, 13):
        node.tick(second * S)
        for msg in node.ready().messages:
            if isinstance(msg, Ping):
                targets.append(msg.recipient)
                node.step(Ack(msg.recipient, "me", msg.seq, msg.recipient), second * S)
    passes = [targets[i:i + 4] for i in range(0, 12, 4)]
    assert all(sorted(p) == ["b", "c", "d", "e"] for p in passes)
    assert len({tuple(p) for p in passes}) > 1  # reshuffled between passes


def test_a_silent_direct_path_is_bridged_by_an_indirect_probe() -> None:
    net = Net(["a", "b", "c"])
    net.join_all()
    net.drop = lambda m: {m.sender, m.recipient} == {"a", "b"}
    net.sent.clear()
    net.run(10 * S)
    requests = [m for m in net.sent if isinstance(m, PingReq)]
    assert {(r.sender, r.recipient, r.target) for r in requests} >= {("a", "c", "b")}
    assert all(r.want_nack for r in requests)
    relayed = [m for m in net.sent if isinstance(m, Ack) and not m.is_direct]
    assert relayed and all((m.t1_ns, m.t2_ns, m.t3_ns) == (0, 0, 0) for m in relayed)
    assert net.all_see_all_alive()
    assert net.nodes["a"].stats().probe_failures == 0


def test_a_crashed_member_is_suspected_after_one_probe_then_declared_dead() -> None:
    net = Net(["a", "b", "c", "d", "e"])
    net.join_all()
    net.down.add("e")
    crash = net.now
    net.run(30 * S)
    suspected = [t for t, name, attrs in net.events
                 if name == "suspect" and attrs["member"] == "e"]
    died = {attrs["node"]: t for t, name, attrs in net.events
            if name == "dead" and attrs["member"] == "e"}
    assert suspected and min(suspected) - crash <= 2 * S  # the next probe of e fails
    assert set(died) == {"a", "b", "c", "d"}
    # four live accusers: two confirmations bring everyone to the 4 s minimum
    assert max(died.values()) - min(suspected) <= 4 * S + 200 * MS
    assert all(net.state(o, "e") is DEAD for o in "abcd")


def test_intermediaries_nack_so_a_healthy_prober_keeps_its_local_health() -> None:
    net = Net(["a", "b", "c", "d"])
    net.join_all()
    net.down.add("d")
    net.run(3 * S)
    nacks = [m for m in net.sent if isinstance(m, Nack)]
    assert nacks and all(m.target == "d" for m in nacks)
    stats = {n: net.nodes[n].stats() for n in "abc"}
    assert sum(s.nacks_received for s in stats.values()) == len(nacks)
    assert all(s.local_health == 0 for s in stats.values())


def test_a_prober_cut_off_from_everyone_raises_its_local_health_and_slows_down() -> None:
    net = Net(["a", "b", "c", "d"])
    net.join_all()
    net.drop = lambda m: m.recipient == "a"  # a hears nothing: no acks, no nacks
    net.sent.clear()
    net.run(12 * S)
    node = net.nodes["a"]
    assert node.local_health >= 4
    pings = [m for m in net.sent if isinstance(m, Ping) and m.sender == "a"]
    # unscaled that is 12 probes; with the score rising 0, 3, 6, 7 the intervals are
    # 1 s, 4 s, 7 s, ... so only a handful fit in 12 s
    assert 2 <= len(pings) <= 4


def test_without_lifeguard_nobody_asks_for_nacks_and_health_stays_zero() -> None:
    net = Net(["a", "b", "c", "d"], SwimConfig(lifeguard=False))
    net.join_all()
    net.drop = lambda m: m.recipient == "a"
    net.run(12 * S)
    assert not any(isinstance(m, Nack) for m in net.sent)
    assert all(not m.want_nack for m in net.sent if isinstance(m, PingReq))
    assert net.nodes["a"].local_health == 0
    pings = [m for m in net.sent if isinstance(m, Ping) and m.sender == "a"]
    assert len(pings) >= 11  # one a second, whatever the phase


# --- suspicion and refutation --------------------------------------------------------------

def test_a_suspected_live_member_refutes_and_everyone_clears_the_suspicion() -> None:
    net = Net(["a", "b", "c"])
    net.join_all()
    net.nodes["a"].step(Gossip("c", "a", (suspect("b", 0, origin="c"),)), net.now)
    assert net.state("a", "b") is SUSPECT
    net.run(1 * S)
    assert net.nodes["b"].incarnation == 1
    assert net.all_see_all_alive()
    assert net.nodes["a"].stats().suspicions_cleared == 1


def test_the_buddy_system_puts_the_suspicion_first_in_messages_to_the_suspect() -> None:
    node = lone_node()
    feed(node, alive("x", 0), alive("y", 0), suspect("x", 0, origin="y"))
    node.tick(1 * S)
    node.ready()
    node.tick(2 * S)  # a gossip round: the suspect x is always among the targets
    to_x = [m for m in node.ready().messages if m.recipient == "x"]
    assert to_x and all(isinstance(m, Gossip | Ping) for m in to_x)
    for msg in to_x:
        assert isinstance(msg, Gossip | Ping)
        assert msg.updates[0] == MemberUpdate("x", SUSPECT, 0, "me")


def test_without_lifeguard_the_suspicion_timeout_is_the_fixed_minimum() -> None:
    node = lone_node(lifeguard=False)
    feed(node, *(alive(m, 0) for m in "vwxy"), suspect("x", 0, origin="y"), now_ns=1 * S)
    assert node.suspicion_deadline_ns("x") == 1 * S + 4 * S
    with_lifeguard = lone_node()
    feed(with_lifeguard, *(alive(m, 0) for m in "vwxy"), suspect("x", 0, origin="y"),
         now_ns=1 * S)
    assert with_lifeguard.suspicion_deadline_ns("x") == 1 * S + 24 * S
    feed(with_lifeguard, suspect("x", 0, origin="v"), suspect("x", 0, origin="w"),
         now_ns=2 * S)
    assert with_lifeguard.suspicion_deadline_ns("x") == 1 * S + 4 * S


# --- dissemination -------------------------------------------------------------------------

def test_a_claim_is_piggybacked_at_most_the_retransmit_limit_times() -> None:
    net = Net(["a", "b", "c", "d", "e"])
    net.join_all()
    net.sent.clear()
    claim = alive("newcomer", 0)
    net.nodes["a"].step(Gossip("b", "a", (claim,)), net.now)
    net.drop = lambda m: m.recipient == "newcomer"  # it never answers: it stays a suspect
    net.run(3 * S)
    carried_by: dict[str, int] = {}
    for m in net.sent:
        if not isinstance(m, PushPull) and claim in m.updates:
            carried_by[m.sender] = carried_by.get(m.sender, 0) + 1
    assert carried_by.keys() == {"a", "b", "c", "d", "e"}  # everyone passed it on
    limit = retransmit_limit(net.config, 6)
    assert all(count <= limit for count in carried_by.values())


def test_push_pull_turns_a_remote_death_into_a_local_suspicion() -> None:
    node = lone_node()
    feed(node, alive("x", 2), alive("y", 0))
    node.step(PushPull("y", "me", (alive("y", 0), dead("x", 2, origin="y"),
                                   alive("w", 1))), 5 * S)
    x, w = node.member("x"), node.member("w")
    assert x is not None and x.state is SUSPECT
    assert w is not None and w.state is ALIVE
    [reply] = node.ready().messages
    assert isinstance(reply, PushPull) and reply.reply and reply.recipient == "y"
    states = {s.member: (s.state, s.incarnation) for s in reply.states}
    assert states == {"me": (ALIVE, 0), "w": (ALIVE, 1), "x": (SUSPECT, 2), "y": (ALIVE, 0)}


# --- joining and leaving -------------------------------------------------------------------

def test_a_new_node_joins_through_one_seed_and_everyone_learns_it() -> None:
    net = Net(["a", "b", "c", "new"])
    for n in "bc":
        net.nodes[n].join(["a"])
    net.run(2 * S)
    net.nodes["new"].join(["b"])
    joined_before = net.nodes["new"].joined
    net.run(2 * S)
    assert (joined_before, net.nodes["new"].joined) == (False, True)
    assert net.all_see_all_alive()


def test_join_retries_an_unreachable_seed_then_gives_up() -> None:
    config = SwimConfig(join_max_attempts=3)
    net = Net(["a", "b"], config)
    net.down.add("a")
    net.nodes["b"].join(["a"])
    net.run(10 * S)
    joins = [m for m in net.sent if isinstance(m, PushPull) and m.join]
    assert len(joins) == 3
    assert any(name == "join_failed" for _, name, _ in net.events)
    assert not net.nodes["b"].joined  # a cluster of one until someone finds it


def test_a_leaving_node_is_seen_as_left_never_dead_and_stops_probing() -> None:
    net = Net(["a", "b", "c", "d"])
    net.join_all()
    net.nodes["d"].leave()
    net.run(2 * S)
    assert net.nodes["d"].leave_propagated
    assert all(net.state(o, "d") is LEFT for o in "abc")
    net.sent.clear()
    net.run(5 * S)
    net.down.add("d")
    net.run(30 * S)
    assert all(net.state(o, "d") is LEFT for o in "abc")
    assert not any(isinstance(m, Ping) and m.sender == "d" for m in net.sent)
    assert not any(name == "dead" for _, name, _ in net.events)


def test_tick_never_leaves_a_timer_overdue() -> None:
    net = Net(["a", "b", "c", "d"])
    net.join_all()
    net.down.add("d")
    for node_id, node in net.nodes.items():
        if node_id == "d":
            continue
        for _ in range(300):
            net.now += 37 * MS
            node.tick(net.now)
            deadline = node.next_deadline_ns()
            assert deadline is None or deadline > net.now
            net.flush()
