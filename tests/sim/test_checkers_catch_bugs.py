"""The checkers are proven able to fail: each known bug must be caught.

Random search catches most of them within a few seeds; the paper's Figure 8 (commit of an
earlier term's entry by counting replicas) needs an exact sequence, so a scripted scenario
replays it and the correct core is shown to pass the very same script.
"""

from __future__ import annotations

import pytest

from concord.sim.bugs import KNOWN_BUGS
from concord.sim.scenario import figure8, figure8_config
from concord.sim.world import SimConfig, World

from .conftest import first_failure

SEARCH_BUDGET_SEEDS = 40


@pytest.mark.slow
@pytest.mark.parametrize("bug", ["double-vote", "vote-stale-log", "ack-before-sync"])
def test_random_search_catches(bug: str) -> None:
    known = KNOWN_BUGS[bug]
    configs = [SimConfig(seed=seed, nodes=5 if bug == "ack-before-sync" else 3, faults="all",
                         raft_class=known.raft_class, bugs=known.driver_bugs)
               for seed in range(SEARCH_BUDGET_SEEDS)]
    caught = first_failure(configs)
    assert caught is not None, (
        f"{bug} survived {SEARCH_BUDGET_SEEDS} seeds: the checkers are blind to it")


@pytest.mark.parametrize("seed", range(5))
def test_figure8_is_caught_with_the_bug(seed: int) -> None:
    bug = KNOWN_BUGS["commit-old-term"]
    world = World(figure8_config(seed, raft_class=bug.raft_class))
    result = world.run(figure8(world))
    assert result.violation is not None
    assert "Leader Completeness" in result.violation


@pytest.mark.parametrize("seed", range(5))
def test_figure8_is_safe_with_the_correct_core(seed: int) -> None:
    world = World(figure8_config(seed))
    result = world.run(figure8(world))
    assert result.violation is None, result.violation
