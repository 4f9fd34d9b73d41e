"""A short chaos run against the docker-compose cluster (skipped where Docker is absent).

Three containers of docker-compose.yml; register, set and dkv-set workloads for 20 s under a
seeded schedule of container kills (``docker kill``), pauses (``docker pause``) and
partitions (the nodes' peer-link fault hook); heal, final reads, every checker. The run
must come out VALID: linearizable registers, no lost or phantom set element, no lost
quorum-store add and converged replicas. The ten-minute runs use the same command
(README, "Containers and benchmarks").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from concord.chaos_cli import main as chaos_main

from .conftest import ComposeCluster

pytestmark = pytest.mark.cluster

SEED = 11
DURATION_S = 20


def test_a_short_chaos_run_on_the_compose_cluster_is_valid(compose_cluster: ComposeCluster,
                                                          tmp_path: Path) -> None:
    endpoints = ",".join(f"{node_id}={url}"
                         for node_id, url in sorted(compose_cluster.client_urls.items()))
    code = chaos_main(["chaos", "run", "--compose-project", compose_cluster.project,
                       "--endpoints", endpoints, "--duration", str(DURATION_S),
                       "--seed", str(SEED), "--nemesis", "kill,pause,partition",
                       "--workload", "register,set,dkv-set", "--clients", "6",
                       "--report-dir", str(tmp_path)])
    [report] = list(tmp_path.iterdir())
    summary = (report / "summary.txt").read_text()
    verdicts = json.loads((report / "verdicts.json").read_text())
    assert code == 0, summary
    assert summary.rstrip().endswith("=> VALID"), summary
    assert "faults=0 " not in summary, "the schedule injected no fault"
    assert verdicts, "no checker ran"
