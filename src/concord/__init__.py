"""Concord: a distributed coordination and key-value daemon.

The protocol cores (``concord.core``, ``concord.raft``, ``concord.kv``) are pure state
machines; ``concord.sim`` runs them deterministically; the shell packages run them for real.
"""

__version__ = "0.1.0"
