"""Seeded whole-cluster simulations: every Raft safety invariant after every step,
linearizability of the client history at the end, liveness once faults heal.

``CONCORD_SIM_SEEDS`` scales the number of seeds per configuration (default 25; the
whole file then runs 250 simulations). Deeper runs: ``concord sim --seeds 2000 --nodes 5``.
"""

from __future__ import annotations

import os

import pytest

from concord.raft.config import ReadMode
from concord.sim.world import SimConfig, World

from .conftest import describe_failures, run_many

SEEDS = int(os.environ.get("CONCORD_SIM_SEEDS", "25"))

CONFIGURATIONS = [
    pytest.param(3, "all", ReadMode.SAFE, id="3-nodes-all-faults"),
    pytest.param(5, "all", ReadMode.SAFE, id="5-nodes-all-faults"),
    pytest.param(3, "partitions", ReadMode.SAFE, id="3-nodes-partitions"),
    pytest.param(5, "crashes", ReadMode.SAFE, id="5-nodes-crashes"),
    pytest.param(3, "loss", ReadMode.SAFE, id="3-nodes-loss-duplication"),
    pytest.param(3, "membership", ReadMode.SAFE, id="3-nodes-membership-and-transfer"),
    pytest.param(5, "membership", ReadMode.SAFE, id="5-nodes-membership-and-transfer"),
    pytest.param(3, "all", ReadMode.LEASE, id="3-nodes-all-faults-lease-reads"),
    pytest.param(1, "crashes", ReadMode.SAFE, id="1-node-crashes"),
    pytest.param(3, "none", ReadMode.SAFE, id="3-nodes-no-faults"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("nodes", "faults", "read_mode"), CONFIGURATIONS)
def test_seeds_find_no_violation(nodes: int, faults: str, read_mode: ReadMode) -> None:
    base = {"3-nodes": 0, "5-nodes": 10_000}.get(f"{nodes}-nodes", 20_000)
    configs = [SimConfig(seed=base + seed, nodes=nodes, faults=faults, read_mode=read_mode)
               for seed in range(SEEDS)]
    results = run_many(configs)
    assert all(r.passed for r in results), describe_failures(results)
    assert sum(r.ok_operations for r in results) > SEEDS * 50, "clients made little progress"
    if faults != "none":
        assert sum(r.faults for r in results) > 0


def test_a_seed_replays_exactly() -> None:
    """Determinism: the same seed gives the same run, event for event."""
    first = World(SimConfig(seed=7, nodes=3)).run()
    second = World(SimConfig(seed=7, nodes=3)).run()
    assert first.transcript == second.transcript
    assert first.operations == second.operations
    assert first.messages_sent == second.messages_sent


def test_a_failure_names_its_replay_command() -> None:
    result = World(SimConfig(seed=11, nodes=5, faults="partitions")).run()
    assert result.replay_command() == "concord sim --seed 11 --nodes 5 --faults partitions"
