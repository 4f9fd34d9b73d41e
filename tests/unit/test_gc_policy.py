"""The node process's garbage-collector policy: settings, thresholds, pause metric, freeze."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from config_env import MINIMAL_NODE_ENV

from concord.config import ConfigError, GcSettings, load_config
from concord.observability.metrics import NodeMetrics
from concord.runtime.gc_policy import GcPolicy, collector_paused


@pytest.fixture
def restored_gc() -> Iterator[None]:
    """Whatever a test does to this process's collector is undone after it."""
    threshold, callbacks, enabled = gc.get_threshold(), list(gc.callbacks), gc.isenabled()
    yield
    (gc.enable if enabled else gc.disable)()
    gc.set_threshold(*threshold)
    gc.callbacks[:] = callbacks
    gc.unfreeze()


def test_gc_settings_load_from_the_environment_and_refuse_nonsense() -> None:
    assert load_config(None, MINIMAL_NODE_ENV).gc == GcSettings(100_000, 10, 100, True)
    loaded = load_config(None, {**MINIMAL_NODE_ENV, "CONCORD_GC_YOUNG_THRESHOLD": "5000",
                                "CONCORD_GC_FREEZE_AT_START": "false"})
    assert (loaded.gc.young_threshold, loaded.gc.freeze_at_start) == (5000, False)
    for bad in ("0", "-1", "many"):
        with pytest.raises(ConfigError, match=r"(?i)gc.young_threshold"):
            load_config(None, {**MINIMAL_NODE_ENV, "CONCORD_GC_YOUNG_THRESHOLD": bad})


def pauses(metrics: NodeMetrics, generation: int) -> float:
    value = metrics.registry.get_sample_value(
        "concord_gc_pause_seconds_count", {"generation": str(generation)})
    return value or 0.0


def test_the_policy_sets_thresholds_times_collections_and_puts_everything_back(
        restored_gc: None) -> None:
    before = gc.get_threshold()
    metrics = NodeMetrics()
    policy = GcPolicy(GcSettings(12_345, 7, 42, freeze_at_start=False), metrics)
    policy.install()
    assert gc.get_threshold() == (12_345, 7, 42)
    gc.collect(0)
    gc.collect()
    assert (pauses(metrics, 0), pauses(metrics, 2)) == (1.0, 1.0)
    policy.uninstall()
    assert gc.get_threshold() == before
    gc.collect()
    assert pauses(metrics, 2) == 1.0  # no longer timed


def test_freezing_survivors_hides_them_from_later_collections(restored_gc: None) -> None:
    survivors = [[index] for index in range(1000)]  # tracked containers, alive
    frozen_before = gc.get_freeze_count()
    GcPolicy(GcSettings(freeze_at_start=False), NodeMetrics()).freeze_survivors()
    assert gc.get_freeze_count() == frozen_before
    GcPolicy(GcSettings(freeze_at_start=True), NodeMetrics()).freeze_survivors()
    assert gc.get_freeze_count() >= frozen_before + len(survivors)


def test_the_collector_stays_off_while_paused_and_comes_back_as_it_was(
        restored_gc: None) -> None:
    gc.enable()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():  # nested: the outer pause still holds afterwards
            pass
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled(), "a collector that was off stays off"
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("a failed restore")
    assert not gc.isenabled()
    gc.enable()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("a failed restore")
    assert gc.isenabled(), "a failure inside still turns the collector back on"


def test_a_pause_that_freezes_hides_what_it_built_and_only_when_it_ends_well(
        restored_gc: None) -> None:
    gc.enable()
    frozen_before = gc.get_freeze_count()
    with pytest.raises(RuntimeError), collector_paused(freeze=True):
        raise RuntimeError("a failed restore")
    assert gc.get_freeze_count() == frozen_before, "nothing is frozen after a failure"
    with collector_paused(freeze=True):
        built = [[index] for index in range(1000)]
    assert gc.get_freeze_count() >= frozen_before + len(built)
    assert gc.isenabled()
