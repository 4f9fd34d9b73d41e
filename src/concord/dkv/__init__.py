"""The quorum key-value store (Dynamo-style): placement, versions, quorums, repair.

Protocol layer: pure and deterministic, like ``raft`` and ``detector``; the shell
(``runtime.dkv``, ``storage.dkv_sqlite``, ``api``) drives it for real and ``sim`` runs it
under simulated faults.
"""
