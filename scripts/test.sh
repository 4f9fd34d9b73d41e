#!/usr/bin/env bash
# The one test command: creates .venv on first use, installs Concord with its dev tools,
# lints (ruff, mypy --strict) and runs the test suite; then runs the suite again against the
# compiled build (.venv-fast, scripts/ensure-fast-venv.sh), which the benchmarks use. Without
# a C compiler that second run is skipped, said in one line (CONCORD_REQUIRE_COMPILED=1 makes
# it an error). Extra arguments go to pytest, both times.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-venv.sh

echo "==> ruff"
"$VENV/bin/ruff" check src tests scripts
echo "==> mypy --strict"
"$VENV/bin/mypy"
echo "==> pytest (Python)"
status=0
"$VENV/bin/pytest" "$@" || status=$?

source scripts/ensure-fast-venv.sh
if [ "$FAST_VENV" != "$VENV" ]; then
  echo "==> pytest (compiled build, .venv-fast)"
  CONCORD_EXPECT_COMPILED=1 "$FAST_VENV/bin/pytest" -p no:cacheprovider "$@" || status=$?
fi
exit "$status"
