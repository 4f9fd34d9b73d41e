"""``concord lincheck``: check a recorded client history for linearizability.

The shell around ``concord.sim.lincheck``: reads the file, picks the parser and model,
gives the checker the real clock, prints the verdict and maps it to an exit status:

- 0: linearizable;
- 1: not linearizable (the explanation is printed);
- 2: undecided (time budget or search bound exhausted);
- 64: bad arguments, or a file that cannot be read or parsed.

The main CLI registers it with ``add_lincheck_arguments`` and ``run_lincheck``; ``main``
runs it on its own (``python -m concord.lincheck_cli``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import NoReturn

from concord.sim.history import HistoryError
from concord.sim.history_formats import DEFAULT_MODELS, PARSERS
from concord.sim.lincheck import Verdict, check, format_result
from concord.sim.models import MODELS

EXIT_LINEARIZABLE = 0
EXIT_NOT_LINEARIZABLE = 1
EXIT_UNDECIDED = 2
EXIT_USAGE = 64

DEFAULT_TIMEOUT_S = 60.0


def add_lincheck_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``lincheck`` arguments to ``parser`` (values are validated by ``run_lincheck``)."""
    parser.add_argument("lincheck_file", metavar="FILE", help="the history to check")
    parser.add_argument(
        "--format",
        dest="lincheck_format",
        metavar="|".join(PARSERS),
        help="the history's format (required): Jepsen log, EDN kv lines or JSONL events",
    )
    parser.add_argument(
        "--model",
        dest="lincheck_model",
        metavar="|".join(MODELS),
        help="the sequential model (default: register for jepsen, kv for kv, concord for jsonl)",
    )
    parser.add_argument(
        "--timeout",
        dest="lincheck_timeout",
        metavar="SECONDS",
        default=str(DEFAULT_TIMEOUT_S),
        help=f"give up undecided after this long (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--all-keys",
        dest="lincheck_all_keys",
        action="store_true",
        help="decide every key instead of stopping at the first violation",
    )


def _usage_error(message: str) -> int:
    print(f"concord lincheck: {message}", file=sys.stderr)
    return EXIT_USAGE


def run_lincheck(args: argparse.Namespace) -> int:
    """Run the check the parsed ``args`` describe; return the exit status."""
    format_name: str | None = args.lincheck_format
    if format_name not in PARSERS:
        return _usage_error(f"--format must be one of {', '.join(PARSERS)} (got {format_name!r})")
    model_name: str = args.lincheck_model or DEFAULT_MODELS[format_name]
    if model_name not in MODELS:
        return _usage_error(f"--model must be one of {', '.join(MODELS)} (got {model_name!r})")
    try:
        timeout_s = float(args.lincheck_timeout)
    except ValueError:
        timeout_s = math.nan
    if not (timeout_s > 0 and math.isfinite(timeout_s)):
        return _usage_error(
            f"--timeout must be a positive number of seconds (got {args.lincheck_timeout!r})"
        )

    path = Path(args.lincheck_file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return _usage_error(f"cannot read {path}: {exc}")
    model = MODELS[model_name]
    started_s = time.monotonic()
    try:
        history = PARSERS[format_name](text)
        result = check(
            history,
            model,
            timeout_s=timeout_s,
            clock=time.monotonic,
            decide_every_key=args.lincheck_all_keys,
        )
    except (HistoryError, ValueError) as exc:
        return _usage_error(f"{path}: {exc}")
    elapsed_s = time.monotonic() - started_s

    print(format_result(result, model))
    print(f"checked {len(history)} recorded operations in {elapsed_s:.3f} s")
    match result.verdict:
        case Verdict.LINEARIZABLE:
            return EXIT_LINEARIZABLE
        case Verdict.NOT_LINEARIZABLE:
            return EXIT_NOT_LINEARIZABLE
        case Verdict.UNKNOWN:
            return EXIT_UNDECIDED


class _UsageErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors raise instead of exiting with status 2."""

    def error(self, message: str) -> NoReturn:
        raise _ArgumentsError(message)


class _ArgumentsError(Exception):
    pass


def main(argv: list[str]) -> int:
    """``concord lincheck`` on its own: parse ``argv`` (without the program name) and run."""
    parser = _UsageErrorParser(
        prog="concord lincheck", description="Check a client history for linearizability."
    )
    add_lincheck_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except _ArgumentsError as exc:
        return _usage_error(str(exc))
    return run_lincheck(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
