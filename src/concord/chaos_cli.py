"""``concord chaos ...``: checked chaos runs and one-shot faults.

``concord chaos run`` starts a local cluster of its own (fault injection on), runs the
workloads under a seeded nemesis schedule, heals, checks and writes a report folder; with
``--cluster-dir`` or ``--compose-project`` it drives a cluster that is already running.
Exit status: 0 every checker valid, 1 a checker found a violation, 2 undecided, 64 bad
arguments, 130 interrupted.

The one-shot commands (kill, kill-leader, restart, pause, resume, partition, delay, loss,
clock-skew, transfer-leader, heal, status) act on a running cluster: by default the one
``concord cluster up`` recorded in ``data/cluster/cluster.json``. Partitions, delay, loss and
clock skew need the nodes to run with fault injection (``concord cluster up
--fault-injection``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Final

from concord.chaos.checkers import Validity
from concord.chaos.control import ClusterControl, ComposeControl, ControlError, ManifestControl
from concord.chaos.nemesis import (
    FaultEvent,
    FaultKind,
    FaultWindow,
    Nemesis,
    ScheduleSettings,
    parse_nemesis,
    split,
)
from concord.chaos.runner import (
    RunResult,
    RunSettings,
    check_and_report,
    exercise,
    new_run_id,
    report_folder,
    run_local,
)
from concord.chaos.workloads import READ_CONSISTENCIES, parse_workloads

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_UNDECIDED: Final = 2
EXIT_USAGE: Final = 64
EXIT_INTERRUPTED: Final = 130
DEFAULT_DATA_DIR: Final = Path("data/cluster")
DEFAULT_COMPOSE_NODES: Final = 3
COMPOSE_FIRST_PORT: Final = 7001

Action = Callable[[ClusterControl, Nemesis, argparse.Namespace], Awaitable[None]]


def add_chaos_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``concord chaos`` and its actions on the main parser's subcommands."""
    chaos = commands.add_parser("chaos", help="checked chaos runs and one-shot faults",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = chaos.add_subparsers(dest="chaos_command", required=True, metavar="ACTION")

    run = actions.add_parser("run", help="workload + nemesis + checkers + report")
    run.add_argument("--nodes", type=int, default=3, choices=range(3, 10), metavar="N",
                     help="cluster size when the run starts its own cluster (3-9)")
    run.add_argument("--duration", type=float, default=60.0, metavar="SECONDS")
    run.add_argument("--seed", type=int, default=None, help="default: a random one, printed")
    run.add_argument("--workload", default="mixed", help="register, set, counter, dkv-set "
                     "(the quorum store; comma-separated) or mixed (default: the three Raft "
                     "ones)")
    run.add_argument("--nemesis", default="all", help="all (default), families (kill, pause, "
                     "partition, net, transfer, clock) or kinds (kill-leader, partition-ring, "
                     "...), comma-separated")
    run.add_argument("--read-consistency", choices=READ_CONSISTENCIES, default="linearizable",
                     help="of the register reads (default linearizable); serializable is "
                          "UNSAFE: stale reads are expected, the report says so")
    run.add_argument("--clients", type=int, default=10, help="concurrent clients (default 10)")
    run.add_argument("--max-ops", type=int, default=None, help="stop after this many ops")
    run.add_argument("--quiet", type=float, default=4.0, metavar="SECONDS",
                     help="mean quiet gap before each fault (default 4)")
    run.add_argument("--fault", type=float, default=4.0, metavar="SECONDS",
                     help="mean fault window (default 4)")
    run.add_argument("--op-timeout", type=float, default=1.5, metavar="SECONDS",
                     help="client timeout per request (default 1.5)")
    run.add_argument("--check-timeout", type=float, default=120.0, metavar="SECONDS",
                     help="linearizability search budget (default 120)")
    run.add_argument("--convergence-timeout", type=float, default=60.0, metavar="SECONDS",
                     help="dkv-set: how long after the final heal every replica of every key "
                          "may take to hold the same copy (default 60)")
    run.add_argument("--tick-ms", type=int, default=None,
                     help="Raft tick of the run's own cluster (default: the node default)")
    run.add_argument("--report-dir", type=Path, default=Path("reports"),
                     help="where the chaos-<time>-<seed> folder goes (default reports)")
    run.add_argument("--data-dir", type=Path, default=None,
                     help="an empty directory for the run's own cluster (default: temporary)")
    _add_target_arguments(run, data_dir_default=None)
    run.set_defaults(func=chaos_run)

    def one_shot(name: str, help_text: str, action: Action) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text)
        _add_target_arguments(parser, data_dir_default=DEFAULT_DATA_DIR)
        parser.set_defaults(func=lambda args: _one_shot(args, action))
        return parser

    kill = one_shot("kill", "kill -9 nodes (default: a random one)", _kill)
    kill.add_argument("--node", action="append", default=[], help="repeatable")
    one_shot("kill-leader", "kill -9 the leader", _kill_leader)
    restart = one_shot("restart", "start nodes that are down (default: all of them)", _restart)
    restart.add_argument("--node", action="append", default=[], help="repeatable")
    pause = one_shot("pause", "SIGSTOP a node (default: the leader)", _pause)
    pause.add_argument("--node", default=None)
    resume = one_shot("resume", "SIGCONT nodes (default: all)", _resume)
    resume.add_argument("--node", action="append", default=[], help="repeatable")
    partition = one_shot("partition", "cut peer links (both sides of every cut)", _partition)
    shape = partition.add_mutually_exclusive_group(required=True)
    shape.add_argument("--isolate", metavar="NODE", help="cut one node off")
    shape.add_argument("--isolate-leader", action="store_true")
    shape.add_argument("--halves", action="store_true", help="random minority | majority")
    shape.add_argument("--bridge", action="store_true",
                       help="two halves that both see one bridge node")
    shape.add_argument("--ring", action="store_true",
                       help="each node sees a majority, no two the same (4+ nodes)")
    shape.add_argument("--groups", metavar="A,B/C,...", help="explicit sides, e.g. n1,n2/n3")
    partition.add_argument("--seed", type=int, default=None,
                           help="node order for --halves, --bridge, --ring")
    delay = one_shot("delay", "delay every peer message on every node", _delay)
    delay.add_argument("--ms", type=int, required=True)
    delay.add_argument("--jitter-ms", type=int, default=0)
    loss = one_shot("loss", "drop a share of every peer message on every node", _loss)
    loss.add_argument("--rate", type=float, required=True, help="0..1")
    skew = one_shot("clock-skew", "set a node's wall-clock offset (heal puts it back)",
                    _clock_skew)
    skew.add_argument("--node", default=None, help="default: a random one")
    skew.add_argument("--offset-ms", type=int, required=True,
                      help="the offset, e.g. 1500 or -800")
    transfer = one_shot("transfer-leader", "hand leadership over", _transfer)
    transfer.add_argument("--to", default=None, help="default: the most caught-up voter")
    one_shot("heal", "resume, restart and clear every fault", _heal)
    one_shot("status", "each node's role, term, leader and faults", _status)


def _add_target_arguments(parser: argparse.ArgumentParser, data_dir_default: Path | None,
                          ) -> None:
    target = parser.add_argument_group("which running cluster")
    if data_dir_default is not None:
        target.add_argument("--data-dir", type=Path, default=data_dir_default,
                            help=f"a `concord cluster up` data directory "
                                 f"(default {data_dir_default})")
    else:
        target.add_argument("--cluster-dir", type=Path, default=None,
                            help="drive the `concord cluster up` cluster of this data "
                                 "directory instead of starting one")
    target.add_argument("--compose-project", default=None,
                        help="drive this docker compose project instead")
    target.add_argument("--endpoints", default=None,
                        help="compose: id=url,... client URLs on this host (default "
                             "n1=http://127.0.0.1:7001 .. n3=...:7003)")


def _compose_control(args: argparse.Namespace) -> ComposeControl:
    if args.endpoints:
        urls = {}
        for item in args.endpoints.split(","):
            node_id, sep, url = item.partition("=")
            if not sep or not node_id or not url:
                raise ValueError(f"--endpoints: expected id=url, got {item!r}")
            urls[node_id.strip()] = url.strip().rstrip("/")
    else:
        urls = {f"n{i}": f"http://127.0.0.1:{COMPOSE_FIRST_PORT + i - 1}"
                for i in range(1, DEFAULT_COMPOSE_NODES + 1)}
    return ComposeControl(args.compose_project, urls)


def _print_event(event: FaultEvent) -> None:
    where = f"  (window {event.window})" if event.window >= 0 else ""
    print(f"  {event.time_ns / 1e9:7.2f}s  {event.action:<5} {event.kind:<17} "
          f"{', '.join(event.nodes) or '-':<10} {event.detail}{where}", flush=True)


# -- concord chaos run --------------------------------------------------------------------


def chaos_run(args: argparse.Namespace) -> int:
    seed: int = args.seed if args.seed is not None else secrets.randbelow(1_000_000)
    try:
        control: ClusterControl | None = None
        if args.compose_project:
            control = _compose_control(args)
        elif args.cluster_dir is not None:
            control = ManifestControl(args.cluster_dir)
        nodes = len(control.node_ids) if control is not None else args.nodes
        settings = RunSettings(
            seed=seed, workloads=parse_workloads(args.workload),
            nemesis=parse_nemesis(args.nemesis, nodes), nodes=nodes,
            duration_s=args.duration, clients=args.clients, max_ops=args.max_ops,
            schedule=ScheduleSettings(quiet_mean_s=args.quiet, fault_mean_s=args.fault),
            op_timeout_s=args.op_timeout, check_timeout_s=args.check_timeout,
            raft_tick_ms=args.tick_ms, read_consistency=args.read_consistency,
            convergence_timeout_s=args.convergence_timeout,
        )
    except (ValueError, ControlError, AssertionError) as error:
        print(f"concord chaos run: {error or 'invalid settings'}", file=sys.stderr)
        return EXIT_USAGE
    print(f"chaos run: seed {seed}, {nodes} nodes, {settings.duration_s:g} s, workloads "
          f"{','.join(w.label for w in settings.workloads)}, nemesis "
          f"{','.join(k.label for k in settings.nemesis)}, {settings.clients} clients",
          flush=True)
    for reason in settings.unsafe:
        print(f"UNSAFE run: {reason}", flush=True)
    started = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _interrupt)  # stop our cluster on SIGTERM too
    try:
        if control is None:
            result = run_local(settings, args.report_dir, args.data_dir, _print_event)
        else:
            result = _run_against(control, settings, args.report_dir)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, ControlError, TimeoutError, RuntimeError) as error:
        print(f"concord chaos run: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)
    for checker in result.results:
        print(f"  {checker.name:<12} {checker.validity.label:<8} {checker.summary}")
    print(result.summary.line())
    print(f"report: {result.report_dir}  ({time.monotonic() - started:.0f} s)")
    match result.summary.validity:
        case Validity.VALID:
            return EXIT_OK
        case Validity.INVALID:
            return EXIT_FAILED
        case Validity.UNKNOWN:
            return EXIT_UNDECIDED


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _run_against(control: ClusterControl, settings: RunSettings, report_root: Path,
                 ) -> RunResult:
    run_id = new_run_id(settings.seed)

    async def drive() -> RunResult:
        try:
            done = await exercise(control, settings, run_id, _print_event)
        finally:
            await control.close()
        kind = "compose" if isinstance(control, ComposeControl) else "cluster up"
        return check_and_report(done, settings, report_folder(report_root, run_id),
                                {"cluster": kind, "endpoints": control.endpoints})

    return asyncio.run(drive())


# -- one-shot faults ----------------------------------------------------------------------


def _one_shot(args: argparse.Namespace, action: Action) -> int:
    try:
        control = (_compose_control(args) if args.compose_project
                   else ManifestControl(args.data_dir))
    except (ValueError, ControlError) as error:
        print(f"concord chaos: {error}", file=sys.stderr)
        return EXIT_USAGE
    origin_ns = time.monotonic_ns()
    nemesis = Nemesis(control, lambda: time.monotonic_ns() - origin_ns, _print_event,
                      knows_kills=False)

    async def drive() -> None:
        try:
            await action(control, nemesis, args)
        finally:
            await control.close()

    try:
        asyncio.run(drive())
    except (ControlError, ValueError) as error:
        print(f"concord chaos {args.chaos_command}: {error}", file=sys.stderr)
        return EXIT_FAILED
    failed = any(e.action in ("error", "skip") for e in nemesis.events)
    return EXIT_FAILED if failed else EXIT_OK


def _nodes(control: ClusterControl, chosen: list[str]) -> list[str]:
    unknown = [n for n in chosen if n not in control.node_ids]
    if unknown:
        raise ValueError(f"no such node(s): {', '.join(unknown)} "
                         f"(known: {', '.join(control.node_ids)})")
    return chosen


def _window(kind: FaultKind, targets: tuple[str, ...] = (), *, delay_ms: int = 0,
            jitter_ms: int = 0, drop_rate: float = 0.0, clock_offset_ms: int = 0,
            ) -> FaultWindow:
    """A one-shot fault as a window of its own (index -1: outside any schedule)."""
    return FaultWindow(-1, kind, 0.0, 0.0, targets, delay_ms, jitter_ms, drop_rate,
                       clock_offset_ms)


async def _kill(control: ClusterControl, nemesis: Nemesis, args: argparse.Namespace) -> None:
    victims = _nodes(control, args.node) or [secrets.choice(control.node_ids)]
    await nemesis.apply(_window(FaultKind.KILL_ONE, tuple(victims)))


async def _kill_leader(control: ClusterControl, nemesis: Nemesis,
                       args: argparse.Namespace) -> None:
    await nemesis.apply(_window(FaultKind.KILL_LEADER))


async def _restart(control: ClusterControl, nemesis: Nemesis,
                   args: argparse.Namespace) -> None:
    for node_id in _nodes(control, args.node) or list(control.node_ids):
        if not await control.is_up(node_id):
            await control.restart(node_id)
            print(f"restarted {node_id}")


async def _pause(control: ClusterControl, nemesis: Nemesis, args: argparse.Namespace) -> None:
    if args.node is None:
        await nemesis.apply(_window(FaultKind.PAUSE_LEADER))
    else:
        await nemesis.apply(_window(FaultKind.PAUSE_ONE, tuple(_nodes(control, [args.node]))))


async def _resume(control: ClusterControl, nemesis: Nemesis, args: argparse.Namespace) -> None:
    for node_id in _nodes(control, args.node) or list(control.node_ids):
        await control.resume(node_id)
        print(f"resumed {node_id}")


async def _partition(control: ClusterControl, nemesis: Nemesis,
                     args: argparse.Namespace) -> None:
    nodes = control.node_ids
    order = list(nodes)
    random.Random(args.seed if args.seed is not None else secrets.randbits(32)).shuffle(order)
    if args.isolate is not None:
        await nemesis.apply(_window(FaultKind.PARTITION_ONE,
                                    tuple(_nodes(control, [args.isolate]))))
    elif args.isolate_leader:
        await nemesis.apply(_window(FaultKind.PARTITION_LEADER))
    elif args.halves:
        await nemesis.apply(_window(FaultKind.PARTITION_HALVES, tuple(order)))
    elif args.bridge:
        await nemesis.apply(_window(FaultKind.PARTITION_BRIDGE, tuple(order)))
    elif args.ring:
        if len(nodes) < 4:
            raise ValueError("a ring partition needs at least 4 nodes")
        await nemesis.apply(_window(FaultKind.PARTITION_RING, tuple(order)))
    else:
        sides = [[n.strip() for n in side.split(",") if n.strip()]
                 for side in args.groups.split("/")]
        _nodes(control, [n for side in sides for n in side])
        await nemesis.partition(split(nodes, sides), [n for side in sides for n in side])


async def _delay(control: ClusterControl, nemesis: Nemesis, args: argparse.Namespace) -> None:
    await nemesis.apply(_window(FaultKind.DELAY, delay_ms=args.ms, jitter_ms=args.jitter_ms))


async def _loss(control: ClusterControl, nemesis: Nemesis, args: argparse.Namespace) -> None:
    await nemesis.apply(_window(FaultKind.LOSS, drop_rate=args.rate))


async def _clock_skew(control: ClusterControl, nemesis: Nemesis,
                      args: argparse.Namespace) -> None:
    victim = _nodes(control, [args.node])[0] if args.node else secrets.choice(control.node_ids)
    await nemesis.apply(_window(FaultKind.CLOCK_SKEW, (victim,),
                                clock_offset_ms=args.offset_ms))


async def _transfer(control: ClusterControl, nemesis: Nemesis,
                    args: argparse.Namespace) -> None:
    target = args.to if args.to is not None else ""
    if target:
        _nodes(control, [target])
    before = await control.find_leader()
    after = await control.transfer_leader(target or None, 5.0)
    print(f"leader {before} -> {after}")


async def _heal(control: ClusterControl, nemesis: Nemesis, args: argparse.Namespace) -> None:
    await nemesis.heal()


async def _status(control: ClusterControl, nemesis: Nemesis, args: argparse.Namespace) -> None:
    statuses = await control.statuses()
    for node_id in control.node_ids:
        status = statuses[node_id]
        up = await control.is_up(node_id)
        if status is None:
            print(f"{node_id}  {'no answer' if up else 'down'}")
            continue
        faults = await control.faults(node_id)
        print(f"{node_id}  {status['role']:<9} term {status['term']:<4} leader "
              f"{status['leader']}  faults {faults or 'unavailable'}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m concord.chaos_cli chaos ...``: the same commands without the main CLI."""
    parser = argparse.ArgumentParser(prog="concord")
    add_chaos_commands(parser.add_subparsers(dest="command", required=True,
                                             metavar="COMMAND"))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
