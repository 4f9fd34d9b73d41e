#!/usr/bin/env bash
# A checked chaos run: starts its own local cluster (fault injection on), runs the workloads
# under a seeded nemesis, heals, checks and writes reports/chaos-<time>-<seed>/.
#   run.sh --duration 60 --seed 7 --workload mixed --nemesis all
# Arguments go to `concord chaos run`; exit status 0 valid, 1 violation, 2 undecided.
set -euo pipefail
source "$(dirname "$0")/../ensure-venv.sh"  # also moves to the repository root
exec "$VENV/bin/concord" chaos run "$@"
