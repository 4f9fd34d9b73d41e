"""The ``concord`` command: run a node, a local cluster, the client, simulations, checkers."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from concord import __version__


def _serve(args: argparse.Namespace) -> int:
    from concord.config import ConfigError, load_config
    from concord.runtime.serve import run

    overrides = {key: value for key, value in (
        ("node.id", args.node_id), ("node.data_dir", args.data_dir),
        ("node.client_listen", args.client_listen), ("node.peer_listen", args.peer_listen),
    ) if value is not None}
    try:
        config = load_config(args.config, os.environ, overrides)
    except ConfigError as exc:
        print(f"concord serve: configuration error: {exc}", file=sys.stderr)
        return 64
    return run(config)


def build_parser(*, serve_only: bool = False) -> argparse.ArgumentParser:
    """The whole command line; with ``serve_only``, the ``serve`` command alone, so that a
    starting node does not import the other commands' modules (0.1-0.2 s of a restart)."""
    parser = argparse.ArgumentParser(prog="concord", description=__doc__)
    parser.add_argument("--version", action="version", version=f"concord {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run one node")
    serve.add_argument("--config", type=Path, default=None, help="TOML configuration file")
    serve.add_argument("--node-id", default=None)
    serve.add_argument("--data-dir", default=None)
    serve.add_argument("--client-listen", default=None, help="host:port of the client API")
    serve.add_argument("--peer-listen", default=None, help="host:port of the peer RPC")
    serve.set_defaults(func=_serve)
    if serve_only:
        return parser

    from concord.bench_cli import add_bench_commands
    from concord.chaos_cli import add_chaos_commands
    from concord.cli_client import add_client_commands
    from concord.cluster_cli import add_cluster_commands
    from concord.dkv_client import add_dkv_commands
    from concord.lincheck_cli import add_lincheck_arguments, run_lincheck
    from concord.sim_cli import add_sim_arguments, run_sim

    lincheck = commands.add_parser("lincheck", help="check a history for linearizability")
    add_lincheck_arguments(lincheck)
    lincheck.set_defaults(func=run_lincheck)

    sim = commands.add_parser("sim", help="run seeded whole-cluster simulations")
    add_sim_arguments(sim)
    sim.set_defaults(func=run_sim)

    add_cluster_commands(commands)
    add_bench_commands(commands)
    add_chaos_commands(commands)
    add_client_commands(commands)
    add_dkv_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(serve_only=arguments[:1] == ["serve"])
    args = parser.parse_args(arguments)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
