#!/usr/bin/env bash
# Source this: makes sure .venv exists with Concord and its dev tools installed (on first use,
# or when pyproject.toml changed). Leaves VENV set to the environment's directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
         >/dev/null 2>&1; then
      PYTHON="$candidate"; break
    fi
  done
fi
[ -n "$PYTHON" ] || { echo "error: Python 3.11+ is required" >&2; exit 1; }

VENV="$PWD/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating .venv with $PYTHON" >&2
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.concord-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing concord[dev] into .venv" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e '.[dev]'
  touch "$stamp"
fi
