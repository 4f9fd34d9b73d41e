#!/usr/bin/env bash
# Concord and etcd side by side on this machine, in one run: installs Debian's etcd-server if
# `etcd` is missing, and golang-go with golang-etcd-server-dev (etcd's Go client sources) if
# Go or those sources are missing; starts a 3-member etcd (fsync on, its default), runs the
# workloads through the Python client and through etcd's own Go client (built once, cached
# under ~/.cache/concord/etcd-go-bench/), stops it; then a 3-node Concord (fsync on), the same
# workloads through its JSON and msgpack APIs, stops it. Prints the table with each system's
# ratio to etcd (Python client) per workload and saves results.json, table.md and chart.html
# under bench-results/<time>/ (or --out DIR). Everything it starts is stopped, on Ctrl-C too.
# Without Go (the install failed) the etcd-go column is skipped, said in one line.
# Arguments go to `concord bench compare` (--duration 10, --processes 1, --members leader|all,
# --systems etcd,etcd-go,concord,concord-msgpack, --go-conns M, --rounds R, --keep-data, ...);
# --rounds 5 repeats it all five times, the systems taking turns to go first, and pools them.
# Concord runs its compiled build (.venv-fast, scripts/ensure-fast-venv.sh) when it can be
# built here, else pure Python; the table's title says which. The client is the same either
# way (its modules are not compiled).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-fast-venv.sh

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
updated=""
install() {  # Debian packages, quietly; apt-get update once
  [ -n "$updated" ] || { $sudo apt-get update -qq; updated=1; }
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}
if ! command -v etcd >/dev/null 2>&1; then
  echo "==> installing Debian's etcd-server" >&2
  install etcd-server
fi
if ! command -v go >/dev/null 2>&1 || [ ! -d /usr/share/gocode/src/go.etcd.io/etcd/clientv3 ]; then
  echo "==> installing Debian's golang-go golang-etcd-server-dev (etcd's Go client)" >&2
  install golang-go golang-etcd-server-dev || echo "==> could not install them" >&2
fi
echo "==> $(etcd --version | head -1)" >&2
command -v go >/dev/null 2>&1 && echo "==> $(go version)" >&2
exec "$FAST_VENV/bin/python" -m concord.bench_cli compare "$@"
