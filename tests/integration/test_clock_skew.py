"""The clock-skew nemesis on real processes: it moves one node's wall clock at run time
through the fault hook, the other nodes measure the new offset through SWIM
(``/v1/cluster/members``), the skewed node sees itself out of sync (``/v1/status``), and
healing puts the clock back.

Probing runs 2.5x faster than the defaults (200 ms) so that the clock-offset window (the
lowest-delay sample of the last 8 round trips with each peer) refills within seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Final

import aiohttp
import pytest

from concord.chaos.control import LocalProcessControl
from concord.chaos.nemesis import FaultKind, FaultWindow, Nemesis

from .conftest import FAST_RAFT, ClusterHarness, eventually, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TARGET: Final = "n3"
SKEW_MS: Final = 2000
TOLERANCE_MS: Final = 50.0  # loopback round trips take well under a millisecond
MEASURE_TIMEOUT_S: Final = 15.0
MEMBERSHIP: Final[dict[str, object]] = {
    "probe_interval_ms": 200, "probe_timeout_ms": 100, "gossip_interval_ms": 50,
}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHarness]:
    with running_cluster(tmp_path_factory.mktemp("skew"), fault_injection=True,
                         extra_settings={**FAST_RAFT, "membership": MEMBERSHIP}) as harness:
        yield harness


async def offsets_of_target(harness: ClusterHarness) -> dict[str, float] | None:
    """Every other node's estimate of ``TARGET``'s clock minus its own, in ms (None until
    all have one)."""
    observers = [n for n in harness.node_ids if n != TARGET]
    found: dict[str, float] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as session:
        for observer in observers:
            try:
                async with session.get(f"{harness.url(observer)}/v1/cluster/members") as answer:
                    document: dict[str, Any] = await answer.json()
            except (aiohttp.ClientError, TimeoutError):
                return None
            member = {m["id"]: m for m in document["members"]}.get(TARGET)
            if member is None or member["clock_offset_ms"] is None:
                return None
            found[observer] = member["clock_offset_ms"]
    return found


async def wait_offsets_near(harness: ClusterHarness, expected_ms: float) -> dict[str, float]:
    async def near() -> dict[str, float] | None:
        offsets = await offsets_of_target(harness)
        if offsets is None or any(abs(o - expected_ms) >= TOLERANCE_MS
                                  for o in offsets.values()):
            return None
        return offsets

    return await eventually(near, timeout_s=MEASURE_TIMEOUT_S,
                            what=f"every peer measuring {TARGET}'s clock at {expected_ms} ms")


async def wait_out_of_sync(harness: ClusterHarness, expected: bool) -> None:
    async def seen() -> bool | None:
        status = await harness.status(TARGET)
        if status is None or status["membership"]["clock_out_of_sync"] is not expected:
            return None
        return True

    await eventually(seen, timeout_s=MEASURE_TIMEOUT_S,
                     what=f"{TARGET} reporting clock_out_of_sync = {expected}")


async def test_the_clock_skew_nemesis_moves_a_clock_the_peers_measure_and_heal_restores(
        harness: ClusterHarness) -> None:
    control = LocalProcessControl(harness.cluster)
    origin_ns = time.monotonic_ns()
    nemesis = Nemesis(control, lambda: time.monotonic_ns() - origin_ns)
    try:
        await wait_offsets_near(harness, 0.0)
        event = await nemesis.apply(FaultWindow(0, FaultKind.CLOCK_SKEW, 0.0, 0.0, (TARGET,),
                                                clock_offset_ms=SKEW_MS))
        assert (event.action, event.nodes, event.detail) == (
            "start", (TARGET,), f"clock +{SKEW_MS} ms")
        assert await control.faults(TARGET) == f"clock_offset_ms={SKEW_MS}"
        offsets = await wait_offsets_near(harness, SKEW_MS)
        print(f"{TARGET}'s clock as measured by its peers after the skew (ms): {offsets}")
        # 2000 ms is beyond max_clock_offset_ms (500): the skewed node knows it is off
        await wait_out_of_sync(harness, True)

        heal = await nemesis.heal(0)
        assert heal.action == "heal" and heal.nodes == ()  # nobody needed a restart
        assert await control.faults(TARGET) == "none"
        await wait_offsets_near(harness, 0.0)
        await wait_out_of_sync(harness, False)
    finally:
        await control.close()
