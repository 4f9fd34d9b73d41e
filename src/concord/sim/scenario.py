"""Scripted scenarios: exact fault sequences that random search reaches too rarely.

``figure8`` replays the Raft paper's Figure 8: a leader that committed an entry of an
earlier term by counting replicas would lose it to a later leader. With a correct core
the entry is never committed and the scenario ends quietly; with the bug the invariant
checker reports a Leader Completeness violation.
"""

from __future__ import annotations

from concord.raft.core import RaftNode
from concord.raft.messages import NodeId
from concord.sim.world import Script, SimConfig, World

# one entry per append and one append in flight, so an old-term entry and the new
# leader's no-op reach a follower in separate messages (as in the paper's figure)
FIGURE8_CONFIG = {"max_entries_per_append": 1, "max_inflight_appends": 1}


def figure8_config(seed: int, **overrides: object) -> SimConfig:
    settings: dict[str, object] = {"nodes": 3, "faults": "none", "clients": 0,
                                   "fault_phase_ms": 0, "liveness_bound_ms": 10_000,
                                   **FIGURE8_CONFIG, **overrides}
    return SimConfig(seed=seed, **settings)  # type: ignore[arg-type]


def figure8(world: World) -> Script:
    def raft_of(node: NodeId) -> RaftNode:
        raft = world.nodes[node].raft
        assert raft is not None
        return raft

    # (a) a leader A is elected and every node has applied its no-op
    yield lambda: world.leader() is not None and all(
        n.raft is not None and n.fsm.applied_index >= 1 for n in world.nodes.values())
    a = world.leader()
    assert a is not None
    index_x = raft_of(a).log.last_index + 1
    term_a = raft_of(a).term
    # A appends X at index_x but cannot replicate it; then A crashes (X is durable on A)
    world.isolate()
    world.submit_write(a, "x", b"from-A")
    yield lambda: raft_of(a).log.last_index >= index_x and world.nodes[a].disk.durable.entries[
        -1].index >= index_x
    world.crash(a)
    others = [n for n in world.node_ids if n != a]
    world.isolate(others)
    # (b) B wins among the others; it is cut off at once, so its no-op stays on B alone
    yield lambda: any(world.nodes[n].raft is not None and raft_of(n).term > term_a
                      and world.nodes[n].role is not None and raft_of(n).is_leader
                      for n in others)
    b = next(n for n in others if raft_of(n).is_leader)
    c = next(n for n in others if n != b)
    world.isolate()
    yield lambda: raft_of(b).log.last_index >= index_x and world.nodes[b].disk.durable.entries[
        -1].index >= index_x
    world.crash(b)
    # (c) A returns and wins with C's vote; it sends X (old term) to C alone
    world.restart(a)
    world.isolate([a, c])
    yield lambda: world.nodes[a].raft is not None and raft_of(a).is_leader
    term_c = raft_of(a).term

    def c_acked_x() -> bool:
        raft = world.nodes[a].raft
        if raft is None or not raft.is_leader or raft.term != term_c:
            return False
        return bool(raft.status().peers[c].match >= index_x)

    yield c_acked_x
    # the leader learned that a majority holds X; its no-op has not reached C yet
    world.isolate()
    world.crash(a)
    # (d) B returns with its newer-term entry at index_x and wins with C's vote
    world.restart(b)
    world.isolate([b, c])
    yield lambda: world.nodes[b].raft is not None and raft_of(b).is_leader
    world.heal_network()
    world.restart(a)
    yield lambda: True
