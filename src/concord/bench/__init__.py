"""The load generator behind ``concord bench``: one client code path for Concord and etcd.

``targets`` turns an operation on a key into an HTTP request for one system and judges its
answer; ``loadgen`` drives N concurrent clients over worker processes for a bounded duration
or count; ``report`` holds latency histograms, merges per-process results and renders tables,
JSON and the comparison chart. ``concord.bench_cli`` is the command line.
"""
