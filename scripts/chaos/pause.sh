#!/usr/bin/env bash
# SIGSTOP a node of the running cluster (default: the leader; --node n2 for another).
# Arguments go to `concord chaos pause`. `heal.sh` (or `concord chaos resume`) resumes it.
set -euo pipefail
source "$(dirname "$0")/../ensure-venv.sh"  # also moves to the repository root
exec "$VENV/bin/concord" chaos pause "$@"
