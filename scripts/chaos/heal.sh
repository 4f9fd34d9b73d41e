#!/usr/bin/env bash
# Heal the running cluster: resume paused nodes, restart killed ones, clear every node's
# faults. Arguments go to `concord chaos heal` (--data-dir DIR, --compose-project NAME ...).
set -euo pipefail
source "$(dirname "$0")/../ensure-venv.sh"  # also moves to the repository root
exec "$VENV/bin/concord" chaos heal "$@"
