"""Property tests of the Raft log against a plain-list oracle, and of whole 3-node clusters
under random schedules of ticks, deliveries, drops, duplicates, partitions, restarts,
compactions, leadership transfers, membership changes and reads: never two leaders in one
term (§5.2 Election Safety), never two different entries applied at one index (§5.4.3 State
Machine Safety), and Log Matching (§5.3)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from hypothesis import event, given, settings
from hypothesis import strategies as st
from raft_harness import Cluster

from concord.raft import (
    Entry,
    EntryKind,
    MembershipChange,
    MembershipChangeOp,
    MembershipChangeRejected,
    ProposalDropped,
    ReadMode,
)
from concord.raft.log import RaftLog


def entry(index: int, term: int, data: bytes) -> Entry:
    return Entry(index, term, EntryKind.COMMAND, data)


@dataclass
class LogModel:
    """The oracle: the log as a plain list of entries after ``offset_index``."""

    offset_index: int
    offset_term: int
    entries: list[Entry]
    committed: int
    unstable_from: int

    @property
    def last_index(self) -> int:
        return self.offset_index + len(self.entries)

    def term_at(self, index: int) -> int | None:
        if index == self.offset_index:
            return self.offset_term
        if self.offset_index < index <= self.last_index:
            return self.entries[index - self.offset_index - 1].term
        return None


@st.composite
def log_models(draw: st.DrawFn) -> LogModel:
    """A log with nondecreasing terms, a compacted prefix, a stable part and a commit index."""
    offset_index = draw(st.integers(0, 4))
    offset_term = 0 if offset_index == 0 else draw(st.integers(1, 3))
    term = max(offset_term, 1)
    entries = []
    for index in range(offset_index + 1, offset_index + 1 + draw(st.integers(0, 8))):
        term += draw(st.sampled_from([0, 0, 1, 2]))
        entries.append(entry(index, term, b"old"))
    stable = draw(st.integers(0, len(entries)))
    committed = draw(st.integers(offset_index, offset_index + stable))
    return LogModel(offset_index, offset_term, entries, committed, offset_index + stable + 1)


def build(model: LogModel) -> RaftLog:
    stable = model.unstable_from - model.offset_index - 1
    log = RaftLog(model.offset_index, model.offset_term, model.entries[:stable], model.committed)
    log.append(model.entries[stable:])
    assert log.unstable_from == model.unstable_from
    return log


@given(log_models(), st.integers(0, 16))
def test_term_at_matches_the_list_oracle(model: LogModel, index: int) -> None:
    log = build(model)
    assert log.term_at(index) == model.term_at(index)
    assert (log.first_index, log.last_index) == (model.offset_index + 1, model.last_index)


@given(log_models(), st.data())
def test_conflict_hint_matches_the_list_oracle(model: LogModel, data: st.DataObject) -> None:
    """The largest index <= ``index`` whose term is <= ``term`` (the compaction point at least)."""
    index = data.draw(st.integers(model.offset_index, model.last_index + 3))
    term = data.draw(st.integers(0, 8))
    top = min(index, model.last_index)
    expected = max(
        (i for i in range(model.offset_index + 1, top + 1) if (model.term_at(i) or 0) <= term),
        default=model.offset_index,
    )
    assert build(model).conflict_hint(index, term) == expected


@given(log_models(), st.data())
def test_merge_matches_the_list_oracle(model: LogModel, data: st.DataObject) -> None:
    """§5.3 receiver steps 3-4: keep matching entries, cut at the first conflict, append."""
    start = data.draw(st.integers(max(1, model.offset_index - 2), model.last_index + 1))
    term = max(model.term_at(start - 1) or model.offset_term, 1)
    incoming = []
    for index in range(start, start + data.draw(st.integers(1, 6))):
        term += data.draw(st.sampled_from([0, 0, 1]))
        incoming.append(entry(index, term, b"new"))

    expected = list(model.entries)
    truncated_from = 0
    unstable_from = model.unstable_from
    conflict_at_committed = False
    for position, new in enumerate(incoming):
        if new.index <= model.offset_index or model.term_at(new.index) == new.term:
            continue
        if model.term_at(new.index) is not None:
            conflict_at_committed = new.index <= model.committed
            truncated_from = new.index
            unstable_from = min(unstable_from, new.index)
            del expected[new.index - model.offset_index - 1:]
        expected.extend(incoming[position:])
        break

    log = build(model)
    if conflict_at_committed:
        try:
            log.merge(incoming)
        except AssertionError as error:
            assert "log matching violated" in str(error)
        else:
            raise AssertionError("a conflict at a committed index must be refused")
        return
    assert log.merge(incoming) == truncated_from
    assert [log.entry(i) for i in range(log.first_index, log.last_index + 1)] == expected
    assert log.unstable_from == unstable_from
    assert log.committed == model.committed
    assert log.unstable_entries() == expected[unstable_from - model.offset_index - 1:]


# --- whole clusters under random schedules -------------------------------------------------------

NODE_IDS = "abc"
OPERATIONS = [
    "tick", "tick_all", "tick_all", "tick_all", "deliver", "deliver", "deliver_many",
    "deliver_many", "drop", "duplicate", "propose", "propose", "propose", "settle", "run",
    "run", "run", "isolate", "heal", "restart", "compact", "transfer", "read", "read",
    "membership",
]
schedules = st.lists(
    st.tuples(st.sampled_from(OPERATIONS), st.sampled_from(NODE_IDS), st.integers(0, 63)),
    min_size=20, max_size=200,
)


def perform(cluster: Cluster, operation: str, node_id: str, number: int,
            reads: dict[int, int]) -> None:
    """Run one operation; a read records the last index applied anywhere when it began."""
    node = cluster[node_id]
    match operation:
        case "tick":
            cluster.tick(node_id)
        case "tick_all":
            cluster.tick(times=1 + number % 4)
        case "deliver" if cluster.queue:
            cluster.deliver_at(number % len(cluster.queue))
        case "deliver_many":
            for _ in range(min(number % 8, len(cluster.queue))):
                cluster.deliver_at(0)
        case "drop" if cluster.queue:
            cluster.queue.pop(number % len(cluster.queue))
        case "duplicate" if cluster.queue:
            cluster.duplicate_at(number % len(cluster.queue))
        case "propose":
            leader = cluster.leader()
            if leader is not None:
                with contextlib.suppress(ProposalDropped):  # a transfer is under way
                    cluster.propose(leader, f"{node_id}{number}".encode())
        case "transfer":
            leader = cluster.leader()
            if leader is not None:
                with contextlib.suppress(MembershipChangeRejected):  # not a voter (any more)
                    cluster[leader].transfer_leadership(node_id)
                cluster.process(leader)
        case "membership":
            leader = cluster.leader()
            if leader is not None:
                op = list(MembershipChangeOp)[number % len(MembershipChangeOp)]
                with contextlib.suppress(MembershipChangeRejected, ProposalDropped):
                    cluster[leader].propose_membership_change(MembershipChange(op, node_id))
                cluster.process(leader)
        case "read":
            leader = cluster.leader()
            if leader is not None:
                request_id = len(reads) + 1
                reads[request_id] = max(cluster.applied_by_index, default=0)
                cluster[leader].read_index(request_id)
                cluster.process(leader)
        case "settle":
            cluster.settle()
        case "run":
            cluster.run(1 + number % 4)
        case "isolate":
            cluster.isolate(node_id)
        case "heal":
            cluster.heal()
        case "restart":
            cluster.restart(node_id)
        case "compact" if node.applied > node.log.offset_index:
            cluster.compact(node_id, node.applied)
        case _:
            pass


def check_log_matching(cluster: Cluster) -> None:
    """§5.3 Log Matching: same index and term means the same entry and the same prefix."""
    for a in NODE_IDS:
        for b in NODE_IDS:
            log_a, log_b = cluster[a].log, cluster[b].log
            low = max(log_a.first_index, log_b.first_index)
            high = min(log_a.last_index, log_b.last_index)
            matched = [i for i in range(low, high + 1) if log_a.term_at(i) == log_b.term_at(i)]
            for index in matched:
                assert all(log_a.entry(i) == log_b.entry(i) for i in range(low, index + 1))


def check_reads(cluster: Cluster, reads: dict[int, int]) -> None:
    """Thesis §6.4: a read is answered at most once, either served or dropped, and its index
    covers every write applied anywhere before it began (so it sees every completed write)."""
    served = [s for states in cluster.read_states.values() for s in states]
    dropped = [r for lost in cluster.dropped_reads.values() for r in lost]
    answered = [s.request_id for s in served] + dropped
    assert len(answered) == len(set(answered)), "a read answered twice"
    for state in served:
        assert state.index >= reads[state.request_id], f"stale read {state}"


@settings(max_examples=150, deadline=None)
@given(schedules, st.booleans(), st.booleans(), st.booleans(), st.integers(0, 2**16))
def test_random_schedules_keep_raft_safety(
    schedule: list[tuple[str, str, int]], pre_vote: bool, check_quorum: bool, lease: bool,
    seed: int,
) -> None:
    read_mode = ReadMode.LEASE if lease and check_quorum else ReadMode.SAFE
    cluster = Cluster(NODE_IDS, seed=seed, election_timeout_ticks=4, pre_vote=pre_vote,
                      check_quorum=check_quorum, read_mode=read_mode)
    reads: dict[int, int] = {}
    for operation, node_id, number in schedule:
        perform(cluster, operation, node_id, number, reads)
        for term, leaders in cluster.leaders_by_term.items():
            assert len(leaders) <= 1, f"two leaders in term {term}: {sorted(leaders)}"
        for index, entries in cluster.applied_by_index.items():
            assert len(entries) == 1, f"different entries applied at {index}: {entries}"
        check_reads(cluster, reads)
    check_log_matching(cluster)
    event(f"terms with a leader: {min(len(cluster.leaders_by_term), 3)}+")
    applied = len(cluster.applied_by_index)
    event("indexes applied: " + ("0" if applied == 0 else "1-9" if applied < 10 else "10+"))
    event(f"reads served: {min(sum(map(len, cluster.read_states.values())), 2)}+")
