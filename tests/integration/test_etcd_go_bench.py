"""The etcd-go client for real: built (or found in its cache) and run for a second against a
one-member etcd on loopback. The oracle is etcd's own revision: with no warm-up every put
sent is counted, so the revision grows by exactly the puts counted, and gets leave it alone.
Skipped where Go, etcd's Go client sources or etcd are missing."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from concord.bench import etcd_go
from concord.bench.loadgen import Workload, parse_mix
from concord.bench_cli import EtcdCluster
from concord.cluster import free_ports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

KEY_SPACE = 500
VALUE_SIZE = 100


@pytest.fixture(scope="module")
def binary() -> Path:
    reason = etcd_go.unavailable_reason()
    if reason is not None:
        pytest.skip(f"the etcd Go client cannot be built: {reason}")
    return etcd_go.ensure_binary()  # ~25 s the first time, cached after


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    resolved = shutil.which("etcd")
    if resolved is None:
        pytest.skip("no etcd (Debian's etcd-server)")
    client_port, peer_port = free_ports(2)
    cluster = EtcdCluster(resolved, tmp_path_factory.mktemp("etcd"), size=1,
                          base_client_port=client_port, peer_port_offset=peer_port - client_port)
    try:
        cluster.start()
        asyncio.run(cluster.wait_ready(timeout_s=30.0))
        yield cluster.endpoints[0]
    finally:
        cluster.stop()


def etcd_range(endpoint: str, document: dict[str, Any]) -> dict[str, Any]:
    async def ask() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.post(
                f"{endpoint}/v3/kv/range", json=document) as response:
            assert response.status == 200
            answer: dict[str, Any] = await response.json()
            return answer
    return asyncio.run(ask())


def revision(endpoint: str) -> int:
    return int(etcd_range(endpoint, {"key": base64.b64encode(b"k").decode()})
               ["header"]["revision"])


def run_go(binary: Path, endpoint: str, op: str) -> tuple[dict[str, Any], Workload]:
    workload = Workload("etcd", (endpoint,), parse_mix(op), clients=8, duration_s=1.0,
                        warmup_s=0.0, value_size_bytes=VALUE_SIZE, key_space=KEY_SPACE,
                        request_timeout_s=5.0)
    finished = subprocess.run(etcd_go.command(binary, workload, 2), capture_output=True,
                              timeout=60, check=False)
    assert finished.returncode == 0, finished.stderr.decode()
    document: dict[str, Any] = json.loads(finished.stdout)
    return document, workload


def test_puts_counted_are_the_puts_etcd_applied(binary: Path, etcd: str) -> None:
    before = revision(etcd)
    document, workload = run_go(binary, etcd, "put")
    result = etcd_go.result_from_json(document, workload, 2)
    total = result.total()
    assert total.failed == 0, total.errors
    assert total.succeeded > 50
    assert revision(etcd) - before == total.succeeded
    assert 0.9 < result.elapsed_s < 2.0
    # the Go side's own percentiles are the lowest values of the buckets the Python side reports
    for name, value in (("p50", total.latency.p50_ms), ("p99", total.latency.p99_ms)):
        go_ms = document["latency_ms"][name]
        assert go_ms <= value <= go_ms * 1.001 + 0.001, name
    assert total.latency.max_ms == document["max_us"] / 1000
    # keys and values are the Python bench's: "k" + 7 digits, the alphabet's first bytes
    written = etcd_range(etcd, {"key": base64.b64encode(b"k").decode(),
                                "range_end": base64.b64encode(b"l").decode()})["kvs"]
    assert 0 < len(written) <= KEY_SPACE
    for kv in written:
        assert re.fullmatch(rb"k\d{7}", base64.b64decode(kv["key"]))
        assert base64.b64decode(kv["value"]) == workload.value


def test_gets_find_the_prefilled_keys_and_write_nothing_else(binary: Path, etcd: str) -> None:
    before = revision(etcd)
    document, workload = run_go(binary, etcd, "get")
    total = etcd_go.result_from_json(document, workload, 2).total()
    assert total.failed == 0, total.errors  # no key_not_found: the prefill wrote them all
    assert total.succeeded > 50
    assert revision(etcd) - before == KEY_SPACE  # the prefill's puts, none from the gets
