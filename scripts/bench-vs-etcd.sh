#!/usr/bin/env bash
# Concord and etcd side by side on this machine, in one run, through the same Python client:
# installs Debian's etcd-server if `etcd` is missing, starts a 3-member etcd (fsync on, its
# default), runs the workloads, stops it; then a 3-node Concord (fsync on), the same
# workloads through its JSON and msgpack APIs, stops it. Prints the table with the
# Concord/etcd ratio per workload and saves results.json, table.md and chart.html under
# bench-results/<time>/ (or --out DIR). Everything it starts is stopped, on Ctrl-C too.
# Arguments go to `concord bench compare` (--duration 10, --processes 1, --members leader|all,
# --systems etcd,concord,concord-msgpack, --keep-data, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-venv.sh

if ! command -v etcd >/dev/null 2>&1; then
  echo "==> installing Debian's etcd-server" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends etcd-server
fi
echo "==> $(etcd --version | head -1)" >&2
exec "$VENV/bin/python" -m concord.bench_cli compare "$@"
