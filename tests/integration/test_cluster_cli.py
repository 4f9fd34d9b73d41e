"""``concord cluster up`` and ``down`` as a user runs them, in two terminals: ``down`` stops
the nodes, and ``up`` reports each exit and ends once every node has exited (it used to wait
forever, holding its stopped nodes as zombies)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from concord.cluster import free_cluster_ports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

READY_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 20.0


def concord(*args: str) -> list[str]:
    return [sys.executable, "-m", "concord", *args]


def test_cluster_up_ends_when_cluster_down_stops_its_nodes(tmp_path: Path) -> None:
    client_base, peer_base = free_cluster_ports(2)
    data_dir = tmp_path / "cluster"
    up = subprocess.Popen(
        concord("cluster", "up", "--nodes", "2", "--data-dir", str(data_dir), "--quiet",
                "--client-port", str(client_base), "--peer-port", str(peer_base)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert up.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not any(line.startswith("cluster ready") for line in seen):
            assert time.monotonic() < deadline, f"no 'cluster ready' in {seen}"
            line = up.stdout.readline()
            assert line, f"cluster up ended early: {seen}"
            seen.append(line.strip())
        down = subprocess.run(concord("cluster", "down", "--data-dir", str(data_dir)),
                              check=False, capture_output=True, text=True,
                              timeout=EXIT_TIMEOUT_S)
        assert down.returncode == 0, down.stderr
        rest, _ = up.communicate(timeout=EXIT_TIMEOUT_S)
    finally:
        if up.poll() is None:
            up.terminate()
            up.wait(EXIT_TIMEOUT_S)
    assert up.returncode == 0
    lines = rest.splitlines()
    assert {"n1 exited (cleanly)", "n2 exited (cleanly)"} <= set(lines)
    assert lines[-1] == "every node has exited"


def test_cluster_up_names_the_ports_another_listener_holds_and_starts_nothing(
        tmp_path: Path) -> None:
    client_base, peer_base = free_cluster_ports(2)
    data_dir = tmp_path / "cluster"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        # as a server binds: a connection of an earlier test still in TIME_WAIT on this
        # port (free for a server, and for free_cluster_ports) must not fail the bind
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", peer_base + 1))
        listener.listen()
        up = subprocess.run(
            concord("cluster", "up", "--nodes", "2", "--data-dir", str(data_dir), "--quiet",
                    "--client-port", str(client_base), "--peer-port", str(peer_base)),
            check=False, capture_output=True, text=True, timeout=EXIT_TIMEOUT_S)
    assert up.returncode == 1
    assert f"ports in use: {peer_base + 1} (n2 peer);" in up.stderr
    assert not data_dir.exists()  # no node was started
