#!/usr/bin/env bash
# Start a local cluster of real node processes on 127.0.0.1 (default 3 nodes) and show
# their merged logs; Ctrl-C stops it, its data stays in data/cluster for the next run.
# Arguments go to `concord cluster up` (--nodes 5, --data-dir DIR, --no-fsync, ...).
# The nodes run the compiled build (.venv-fast, built on first use; pure Python when it
# cannot be built here: scripts/ensure-fast-venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-fast-venv.sh
exec "$FAST_VENV/bin/concord" cluster up "$@"
