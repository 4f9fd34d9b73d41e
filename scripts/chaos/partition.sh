#!/usr/bin/env bash
# Cut peer links on the running cluster (both sides of every cut), through each node's
# fault hook: the nodes must run with fault injection (`concord cluster up --fault-injection`).
#   partition.sh --isolate n2 | --isolate-leader | --halves | --bridge | --ring | --groups n1,n2/n3
# Arguments go to `concord chaos partition`. `heal.sh` removes the cuts.
set -euo pipefail
source "$(dirname "$0")/../ensure-venv.sh"  # also moves to the repository root
exec "$VENV/bin/concord" chaos partition "$@"
