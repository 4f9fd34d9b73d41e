#!/usr/bin/env bash
# kill -9 the leader of the running `concord cluster up` cluster (default data/cluster).
# Arguments go to `concord chaos kill-leader`: --data-dir DIR, or --compose-project NAME
# [--endpoints n1=URL,...] for a docker compose cluster. `heal.sh` restarts it.
set -euo pipefail
source "$(dirname "$0")/../ensure-venv.sh"  # also moves to the repository root
exec "$VENV/bin/concord" chaos kill-leader "$@"
