"""``concord cluster up|down``: a local cluster of real node processes in one command."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Final

from concord.cluster import LocalCluster, busy_ports

COLORS = ["\033[36m", "\033[35m", "\033[33m", "\033[32m", "\033[34m", "\033[31m", "\033[37m"]
RESET = "\033[0m"
WATCH_INTERVAL_S: Final = 0.5
"""How often ``cluster up`` looks for nodes that exited."""


def add_cluster_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cluster = commands.add_parser("cluster", help="run a local cluster of node processes")
    actions = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start N nodes on 127.0.0.1 and show their logs")
    up.add_argument("--nodes", type=int, default=3, choices=range(1, 10), metavar="N")
    up.add_argument("--data-dir", type=Path, default=Path("data/cluster"))
    up.add_argument("--client-port", type=int, default=7001, help="first client API port")
    up.add_argument("--peer-port", type=int, default=7101, help="first peer RPC port")
    up.add_argument("--no-fsync", action="store_true",
                    help="unsafe-no-fsync mode for the Raft log and the quorum store (benchmarks "
                    "only: acknowledged writes can be lost)")
    up.add_argument("--fault-injection", action="store_true",
                    help="allow /v1/debug/faults (chaos testing)")
    up.add_argument("--quiet", action="store_true", help="do not show the nodes' logs")
    up.set_defaults(func=cluster_up)
    down = actions.add_parser("down", help="stop the cluster recorded in <data-dir>/cluster.json")
    down.add_argument("--data-dir", type=Path, default=Path("data/cluster"))
    down.set_defaults(func=cluster_down)


def _pump(prefix: str, stream: object, quiet: bool) -> None:
    assert hasattr(stream, "readline")
    for raw in iter(stream.readline, b""):
        if not quiet:
            sys.stdout.write(f"{prefix} {raw.decode(errors='replace')}")
            sys.stdout.flush()


def cluster_up(args: argparse.Namespace) -> int:
    cluster = LocalCluster(args.data_dir, size=args.nodes, base_client_port=args.client_port,
                           base_peer_port=args.peer_port, fsync=not args.no_fsync,
                           fault_injection=args.fault_injection)
    owners = {port: f"{node.node_id} {kind}" for node in cluster.nodes.values()
              for port, kind in ((node.client_port, "client"), (node.peer_port, "peer"))}
    busy = busy_ports(sorted(owners))
    if busy:
        print(f"error: ports in use: {', '.join(f'{p} ({owners[p]})' for p in busy)}; stop "
              "what holds them (a cluster already running? concord cluster down) or choose "
              "others with --client-port and --peer-port", file=sys.stderr)
        return 1
    existing = (cluster.data_dir / "cluster.json").exists()
    print(f"{'restarting' if existing else 'starting'} a {args.nodes}-node cluster in "
          f"{cluster.data_dir}", flush=True)
    cluster.start(stdout=subprocess.PIPE)
    color = sys.stdout.isatty()
    pumps = []
    for i, node in enumerate(cluster.nodes.values()):
        prefix = f"{COLORS[i % len(COLORS)]}{node.node_id}|{RESET}" if color else f"{node.node_id}|"
        assert node.process is not None and node.process.stdout is not None
        thread = threading.Thread(target=_pump, args=(prefix, node.process.stdout, args.quiet),
                                  daemon=True)
        thread.start()
        pumps.append(thread)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        asyncio.run(cluster.wait_ready())
    except (TimeoutError, RuntimeError) as exc:
        print(f"error: the cluster did not start: {exc}", file=sys.stderr)
        cluster.stop()
        return 1
    except KeyboardInterrupt:
        cluster.stop()
        return 130
    print("\ncluster ready:", flush=True)
    for node in cluster.nodes.values():
        print(f"  {node.node_id}  client {node.client_url}  peer {node.peer_url}  pid {node.pid}")
    print(f"\n  endpoints and pids: {cluster.data_dir / 'cluster.json'}")
    first = cluster.endpoints[0]
    print(f"  try: curl -X PUT --data-binary hello {first}/v1/kv/greeting")
    print(f"       curl {first}/v1/kv/greeting")
    print(f"       concord status --endpoints {','.join(cluster.endpoints)} -o table")
    print("  Ctrl-C stops the cluster (its data stays for the next run)\n", flush=True)
    try:
        outcome = _watch(cluster, stop)
    except KeyboardInterrupt:
        outcome = None
    if outcome is None:
        print("\nstopping the cluster...", flush=True)
        cluster.stop()
    for thread in pumps:
        thread.join(timeout=2)
    return outcome or 0


def _watch(cluster: LocalCluster, stop: threading.Event) -> int | None:
    """Report each node that exits on its own (``concord cluster down``, a crash, a chaos
    kill) until this command is told to stop (None) or every node has exited: then 0 if
    each exited cleanly, else 1."""
    exit_codes: dict[str, int] = {}
    while not stop.wait(WATCH_INTERVAL_S):
        for node in cluster.nodes.values():
            code = node.process.poll() if node.process is not None else None
            if code is not None and node.node_id not in exit_codes:
                exit_codes[node.node_id] = code
                print(f"{node.node_id} exited ({_describe_exit(code)})", flush=True)
        if len(exit_codes) == len(cluster.nodes):
            print("every node has exited", flush=True)
            return 0 if not any(exit_codes.values()) else 1
    return None


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return "cleanly" if code == 0 else f"exit code {code}"


def cluster_down(args: argparse.Namespace) -> int:
    manifest_path = Path(args.data_dir) / "cluster.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        print(f"error: no cluster recorded at {manifest_path}: {exc}", file=sys.stderr)
        return 1
    for node in manifest["nodes"]:
        pid = node.get("pid")
        if pid:
            try:
                os.kill(int(pid), signal.SIGTERM)
                print(f"sent SIGTERM to {node['id']} (pid {pid})")
            except ProcessLookupError:
                print(f"{node['id']} (pid {pid}) is not running")
    return 0
