"""Chaos testing of a real cluster: nemeses, checked workloads, checkers and run reports.

- ``control``: ``ClusterControl``, how a nemesis reaches a cluster (processes, containers, the
  HTTP fault hook, leader lookup), with local-process, ``concord cluster up`` and compose
  implementations;
- ``nemesis``: fault kinds, seeded fault schedules, partition shapes and the executor;
- ``workloads``: the register, set and counter clients that record every operation;
- ``checkers``: linearizability per key, set and counter checks over a history;
- ``report``: the run's report folder (history, schedule, verdicts, summary, HTML chart);
- ``runner``: one whole run (cluster, workload, nemesis, heal, final reads, checks, report).
"""
