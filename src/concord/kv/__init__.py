"""The consistent key-value state machine applied from the Raft log (etcd's revision model)."""
