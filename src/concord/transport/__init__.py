"""The peer transport: msgpack batches of Raft messages over persistent HTTP connections.

``peer`` owns the wire protocol between nodes (server, per-peer queues and senders),
``addresses`` the node id -> peer URL book, and ``faults`` application-level fault injection.
"""
