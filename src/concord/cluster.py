"""Local clusters of real node processes on 127.0.0.1: ``concord cluster up`` and tests.

``LocalCluster`` writes one TOML config per node under the cluster's data directory,
starts ``python -m concord serve`` for each, waits until every node answers ``/ready``,
and records endpoints and process ids in ``<data-dir>/cluster.json``. Started again on the
same directory it reuses the configs, so the data survives. Nodes can be killed (SIGKILL),
paused (SIGSTOP), resumed and restarted one by one — the process-level nemesis.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiohttp

READY_TIMEOUT_S = 30.0
PORT_SEARCH_ATTEMPTS = 200
PORT_RANGE = (20_000, 32_000)
"""Where test and benchmark clusters take their ports: above the fixed 7001-7103 and below
Linux's default ephemeral range (32768-60999), so no outgoing connection can take them."""
_RANDOM = random.Random()


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports the kernel handed out for port 0 (free again now)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(probe)
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def free_port_block(count: int, avoid: frozenset[int] = frozenset()) -> int:
    """The first of ``count`` consecutive free loopback ports (``LocalCluster`` numbers its
    nodes' ports consecutively from a base), none of them in ``avoid``.

    Chosen below the kernel's ephemeral range (``PORT_RANGE``): a port the kernel handed out
    for ``bind(0)`` is also one it hands out as the source port of outgoing connections, and
    under load one of those took a node's port between this probe and the node's own bind
    ("address already in use"). Never the fixed 7001-7103 a developer's own cluster may hold.
    """
    for _ in range(PORT_SEARCH_ATTEMPTS):
        base = _RANDOM.randrange(PORT_RANGE[0], PORT_RANGE[1] - count)
        ports = range(base, base + count)
        if not avoid & set(ports) and not busy_ports(ports):
            return base
    raise RuntimeError(f"no block of {count} consecutive free ports found")


def busy_ports(ports: Iterable[int]) -> list[int]:
    """Those of ``ports`` a listener could not bind on loopback now: another one holds them.
    Probed with ``SO_REUSEADDR``, as the nodes (and etcd) bind, so a port whose last
    connections linger in TIME_WAIT counts as free."""
    busy = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


def free_cluster_ports(size: int) -> tuple[int, int]:
    """Bases for a cluster's client and peer ports: two disjoint free blocks of ``size``."""
    client_base = free_port_block(size)
    peer_base = free_port_block(size, avoid=frozenset(range(client_base, client_base + size)))
    return client_base, peer_base


@dataclass(slots=True)
class LocalNode:
    node_id: str
    client_port: int
    peer_port: int
    data_dir: Path
    config_path: Path
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass(slots=True)
class LocalCluster:
    data_dir: Path
    size: int = 3
    base_client_port: int = 7001
    base_peer_port: int = 7101
    cluster_id: str = "concord-local"
    fsync: bool = True
    fault_injection: bool = False
    extra_settings: dict[str, dict[str, object]] = field(default_factory=dict)
    log_to_files: bool = False  # tests: each node logs to <data-dir>/<id>.log
    nodes: dict[str, LocalNode] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        for i in range(1, self.size + 1):
            self._define(f"n{i}", self.base_client_port + i - 1, self.base_peer_port + i - 1)

    def _define(self, node_id: str, client_port: int, peer_port: int) -> LocalNode:
        node_dir = self.data_dir / node_id
        node = LocalNode(node_id, client_port, peer_port, node_dir / "data",
                         node_dir / "config.toml")
        self.nodes[node_id] = node
        return node

    @property
    def endpoints(self) -> list[str]:
        return [n.client_url for n in self.nodes.values()]

    # --- configuration ---------------------------------------------------------------

    def write_configs(self, founders: list[str] | None = None) -> None:
        founders = founders or [f"n{i}" for i in range(1, self.size + 1)]
        for node in self.nodes.values():
            if node.config_path.exists():
                continue  # keep what an earlier run (or the user) wrote
            self._write_config(node, founders, join=node.node_id not in founders)

    def _write_config(self, node: LocalNode, founders: list[str], join: bool) -> None:
        node.config_path.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            "# written by concord cluster up; edit freely, it is kept across runs",
            "[node]",
            f'id = "{node.node_id}"',
            f'cluster_id = "{self.cluster_id}"',
            f'data_dir = "{node.data_dir}"',
            f'client_listen = "127.0.0.1:{node.client_port}"',
            f'peer_listen = "127.0.0.1:{node.peer_port}"',
            f"join = {'true' if join else 'false'}",
            f"fault_injection = {'true' if self.fault_injection else 'false'}",
            "",
        ]
        for member_id in founders:
            member = self.nodes[member_id]
            lines += ["[[members]]", f'id = "{member.node_id}"',
                      f'peer_url = "{member.peer_url}"', f'client_url = "{member.client_url}"', ""]
        # fsync off means off for both stores: the Raft log and the quorum store's replicas
        settings: dict[str, dict[str, object]] = {"storage": {"fsync": self.fsync}}
        if not self.fsync:
            settings["dkv"] = {"fsync": False}
        for section, values in self.extra_settings.items():
            settings.setdefault(section, {}).update(values)
        for section, values in settings.items():
            lines.append(f"[{section}]")
            for key, value in values.items():
                lines.append(f"{key} = {_toml_value(value)}")
            lines.append("")
        node.config_path.write_text("\n".join(lines))

    # --- processes -------------------------------------------------------------------

    def start_node(self, node_id: str, stdout: int | IO[bytes] | None = None) -> LocalNode:
        node = self.nodes[node_id]
        assert not node.is_running(), f"{node_id} is already running"
        env = dict(os.environ)
        env.setdefault("CONCORD_LOG_FORMAT", "console")
        env["PYTHONUNBUFFERED"] = "1"
        command = [sys.executable, "-m", "concord", "serve", "--config", str(node.config_path)]
        if self.log_to_files:
            node.log_path = self.data_dir / f"{node_id}.log"
            with node.log_path.open("ab") as log_file:  # the child keeps its own descriptor
                node.process = subprocess.Popen(command, stdout=log_file,
                                                stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True)
        else:
            node.process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        return node

    def start(self, stdout: int | IO[bytes] | None = None) -> None:
        self.write_configs()
        for node_id in self.nodes:
            self.start_node(node_id, stdout)
        self.write_manifest()

    def add_node(self, node_id: str, client_port: int, peer_port: int) -> LocalNode:
        """Define a node that will join the running cluster (start it, then add it)."""
        node = self._define(node_id, client_port, peer_port)
        founders = [f"n{i}" for i in range(1, self.size + 1)]
        self._write_config(node, founders, join=True)
        return node

    def signal(self, node_id: str, signum: int) -> None:
        node = self.nodes[node_id]
        if node.process is not None and node.process.poll() is None:
            os.kill(node.process.pid, signum)

    def kill(self, node_id: str) -> None:
        """kill -9: no shutdown, no flush."""
        self.signal(node_id, signal.SIGKILL)
        node = self.nodes[node_id]
        if node.process is not None:
            node.process.wait(10)

    def pause(self, node_id: str) -> None:
        self.signal(node_id, signal.SIGSTOP)

    def resume(self, node_id: str) -> None:
        self.signal(node_id, signal.SIGCONT)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM everyone (graceful), SIGKILL whoever is still there after the timeout."""
        for node in self.nodes.values():
            if node.is_running():
                self.resume(node.node_id)
                self.signal(node.node_id, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for node in self.nodes.values():
            if node.process is None:
                continue
            try:
                node.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(5)

    def write_manifest(self) -> None:
        manifest = {
            "cluster_id": self.cluster_id,
            "nodes": [
                {"id": n.node_id, "pid": n.pid, "client_url": n.client_url,
                 "peer_url": n.peer_url, "data_dir": str(n.data_dir),
                 "config": str(n.config_path)}
                for n in self.nodes.values()
            ],
        }
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "cluster.json").write_text(json.dumps(manifest, indent=2) + "\n")

    # --- readiness -------------------------------------------------------------------

    async def wait_ready(self, node_ids: list[str] | None = None,
                         timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until every node answers /ready with 200; raises TimeoutError naming the laggards."""
        wanted = node_ids or list(self.nodes)
        deadline = time.monotonic() + timeout_s
        pending = set(wanted)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
            while pending:
                for node_id in sorted(pending):
                    node = self.nodes[node_id]
                    if node.process is not None and node.process.poll() is not None:
                        raise RuntimeError(f"{node_id} exited with status "
                                           f"{node.process.returncode} while starting")
                    try:
                        async with session.get(f"{node.client_url}/ready") as response:
                            if response.status == 200:
                                pending.discard(node_id)
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                if pending:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"not ready after {timeout_s:.0f}s: "
                                           f"{', '.join(sorted(pending))}")
                    await asyncio.sleep(0.1)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))
