#!/usr/bin/env bash
# The quorum store's throughput and latency at every quorum: N = 3 writes at W = 1, 2, 3 and
# reads at R = 1, 2, 3, against a fresh local 3-node cluster (fsync on), one workload at a
# time with the same client (`concord bench run`). Results go to bench-results/dkv-<time>/.
# --compiled runs the nodes from .venv-fast (the hot modules compiled by mypyc, built if
# needed), as `concord bench compare` does; the default is the pure-Python .venv.
#
#   scripts/dkv_bench.sh [--clients 16] [--duration 10] [--compiled]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-venv.sh
clients=16; duration=10; nodes_venv=$VENV
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) clients=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --compiled) source scripts/ensure-fast-venv.sh; nodes_venv=$FAST_VENV; shift ;;
    *) echo "usage: $0 [--clients N] [--duration S] [--compiled]" >&2; exit 64 ;;
  esac
done
out="bench-results/dkv-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
data=$(mktemp -d)
"$nodes_venv/bin/concord" cluster up --nodes 3 --data-dir "$data" --client-port 27101 \
  --peer-port 27201 --quiet > "$out/cluster.log" 2>&1 &
cluster=$!
trap 'kill $cluster 2>/dev/null; wait $cluster 2>/dev/null; rm -rf "$data"' EXIT
endpoints=http://127.0.0.1:27101,http://127.0.0.1:27102,http://127.0.0.1:27103
for i in $(seq 1 60); do
  curl -sf http://127.0.0.1:27101/ready >/dev/null && break; sleep 0.5
done
for op in dkv-put-w1 dkv-put-w2 dkv-put-w3 dkv-get-r1 dkv-get-r2 dkv-get-r3; do
  echo "==> $op, $clients clients, ${duration} s" >&2
  "$VENV/bin/concord" bench run --target concord --endpoints "$endpoints" --op "$op" \
    --clients "$clients" --duration "$duration" --warmup 1 --key-space 1000 \
    --format json --save "$out/$op.json" > /dev/null
done
"$VENV/bin/python" - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = ["| operation | ops/s | p50 ms | p90 ms | p99 ms | max ms | failed |",
        "| --- | --- | --- | --- | --- | --- | --- |"]
for path in sorted(out.glob("dkv-*.json")):
    total = json.loads(path.read_text())["total"]
    lat = total["latency_ms"]
    rows.append(f"| {path.stem} | {total['throughput_ops_per_s']:,.0f} | {lat['p50']} | "
                f"{lat['p90']} | {lat['p99']} | {lat['max']} | {total['failed']} |")
table = "\n".join(rows)
(out / "table.md").write_text(table + "\n")
print(table)
PY
