#!/usr/bin/env python3
"""Entries per second through a 3-node in-memory Raft cluster (no network, no disk).

Every node runs the real core and applies each committed entry to the real KV state
machine; messages are delivered in memory in FIFO order. This measures the protocol
code's CPU cost per entry, the ceiling for the daemon. Bounded: --entries per batch size.

    .venv/bin/python scripts/sim_throughput.py [--entries 50000] [--batches 1,16,256]
"""

from __future__ import annotations

import argparse
import random
import time
from collections import deque

from concord.kv.commands import Command, Put
from concord.kv.fsm import KVStateMachine
from concord.raft import Membership, RaftConfig, RaftNode
from concord.raft.messages import EntryKind, Message
from concord.wire.codec import decode_command, encode_command


def run(entries: int, batch: int, nodes: int = 3) -> float:
    ids = [f"n{i + 1}" for i in range(nodes)]
    membership = Membership(frozenset(ids))
    rafts = {i: RaftNode.bootstrap(RaftConfig(node_id=i, max_entries_per_append=max(batch, 64)),
                                   random.Random(n), membership) for n, i in enumerate(ids)}
    machines = {i: KVStateMachine() for i in ids}
    queue: deque[Message] = deque()

    def pump() -> None:
        progressed = True
        while progressed:
            progressed = False
            while queue:
                msg = queue.popleft()
                rafts[msg.recipient].step(msg)
            for node_id, raft in rafts.items():
                while raft.has_ready():
                    progressed = True
                    ready = raft.ready()
                    queue.extend(ready.early_messages)
                    queue.extend(ready.messages)
                    fsm = machines[node_id]
                    for entry in ready.committed_entries:
                        if entry.kind is EntryKind.COMMAND:
                            fsm.apply(entry.index, decode_command(entry.data))
                        else:
                            fsm.apply_noop(entry.index)
                    raft.advance(ready)

    rafts[ids[0]].campaign()
    pump()
    leader = rafts[ids[0]]
    assert leader.is_leader
    value = b"v" * 256
    payloads = [encode_command(Command(Put(f"key{n % 1000:05d}", value))) for n in range(batch)]
    started = time.perf_counter()
    proposed = 0
    while proposed < entries:
        leader.propose_many(payloads)
        proposed += batch
        pump()
    for _ in range(leader.config.heartbeat_interval_ticks):
        leader.tick()  # a heartbeat tells the followers the final commit index
    pump()
    elapsed = time.perf_counter() - started
    target = leader.log.last_index
    assert all(m.applied_index == target for m in machines.values()), "not all nodes applied"
    return proposed / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--batches", default="1,16,256")
    args = parser.parse_args()
    print("batch  entries/s (3 nodes, in memory, applied on every node)")
    for batch in (int(b) for b in args.batches.split(",")):
        rate = run(args.entries, batch)
        print(f"{batch:>5}  {rate:>10,.0f}")


if __name__ == "__main__":
    main()
