#!/usr/bin/env bash
# The one test command: creates .venv on first use, installs Concord with its dev tools,
# lints (ruff, mypy --strict) and runs the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-venv.sh

echo "==> ruff"
"$VENV/bin/ruff" check src tests scripts
echo "==> mypy --strict"
"$VENV/bin/mypy"
echo "==> pytest"
exec "$VENV/bin/pytest" "$@"
