"""A node's Prometheus metrics, in a registry of its own so several nodes fit in one process.

``NodeMetrics`` owns every metric the node exports; the runtime, the transport and the client
API update them, and ``/metrics`` serves ``render()``. ``docs/transport.md`` lists them.
Metrics counted on every request or batch are updated through ``LabelCache``: a metric's
``labels(...)`` builds a key and takes a lock on every call, so each label set's child is
resolved once and kept. The client API's per-request count and duration, the hottest of all,
are plain ints in ``RequestStats``, published when ``/metrics`` is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Final, Generic, Protocol, Self, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

NAMESPACE: Final = "concord"
"""Prefix of every metric name (``concord_proposals_total``, ...)."""

FSYNC_BUCKETS_S: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)
RTT_BUCKETS_S: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)
REQUEST_BUCKETS_S: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
LOOP_LAG_BUCKETS_S: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)
GC_PAUSE_BUCKETS_S: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS_ENTRIES: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

MAX_CACHED_LABEL_SETS: Final = 1024
"""Per metric: label sets whose child ``LabelCache`` keeps; beyond them ``labels`` is asked
each time (label values from the network, such as HTTP methods, must not grow it forever)."""


class _Labelled(Protocol):
    def labels(self, *labelvalues: str) -> Self: ...


_M = TypeVar("_M", bound=_Labelled)


class LabelCache(Generic[_M]):
    """``metric.labels(*values)``, resolved once per label values and then kept."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: _M) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], _M] = {}

    def __call__(self, *values: str) -> _M:
        child = self._children.get(values)
        if child is None:
            child = self._metric.labels(*values)
            if len(self._children) < MAX_CACHED_LABEL_SETS:
                self._children[values] = child
        return child


class RequestStats(Collector):
    """The client API's request count (by method, route, status) and duration (by route),
    kept in plain ints on the event loop and published as ``http_requests_total`` and
    ``http_request_seconds`` when scraped: a request costs two dict lookups and three
    additions instead of two locked updates. Only the event loop's thread may ``record``
    (scrapes run there too). At most ``MAX_CACHED_LABEL_SETS`` label sets are kept; requests
    with a label set beyond them count under the method ``other``."""

    def __init__(self, namespace: str, buckets_s: tuple[float, ...]) -> None:
        self._counter_name = f"{namespace}_http_requests"
        self._histogram_name = f"{namespace}_http_request_seconds"
        self._bounds = buckets_s
        self._counts: dict[tuple[str, str, str], int] = {}
        self._durations: dict[str, tuple[list[int], list[float]]] = {}  # buckets, [sum]

    def record(self, method: str, route: str, status: str, seconds: float) -> None:
        key = (method, route, status)
        counts = self._counts
        count = counts.get(key)
        if count is None and len(counts) >= MAX_CACHED_LABEL_SETS:
            key = ("other", route, status)
            count = counts.get(key)
        counts[key] = 1 if count is None else count + 1
        durations = self._durations.get(route)
        if durations is None:
            if len(self._durations) >= MAX_CACHED_LABEL_SETS:
                return
            durations = self._durations[route] = ([0] * (len(self._bounds) + 1), [0.0])
        durations[0][bisect_left(self._bounds, seconds)] += 1
        durations[1][0] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(self._counter_name, "Client API requests",
                                       labels=("method", "route", "status"))
        for labels, count in self._counts.items():
            requests.add_metric(labels, count)
        yield requests
        seconds = HistogramMetricFamily(self._histogram_name, "Client API request duration",
                                        labels=("route",))
        for route, (buckets, total) in self._durations.items():
            cumulative, running = [], 0
            for bound, count in zip((*map(str, self._bounds), "+Inf"), buckets, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            seconds.add_metric((route,), cumulative, total[0])
        yield seconds


class NodeMetrics:
    """Every metric of one node, registered in ``self.registry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ns = NAMESPACE
        # Raft and the state machine
        self.proposals_total = Counter(
            "proposals", "Client writes proposed to Raft", namespace=ns, registry=r)
        self.proposals_failed_total = Counter(
            "proposals_failed", "Client writes refused or lost before commit",
            ["reason"], namespace=ns, registry=r)
        self.commits_total = Counter(
            "commits", "Log entries committed", namespace=ns, registry=r)
        self.applied_index = Gauge(
            "applied_index", "Index of the last entry applied to the state machine",
            namespace=ns, registry=r)
        self.commit_index = Gauge(
            "commit_index", "Raft commit index", namespace=ns, registry=r)
        self.apply_lag_entries = Gauge(
            "apply_lag_entries", "Committed entries not yet applied", namespace=ns, registry=r)
        self.term = Gauge("term", "Current Raft term", namespace=ns, registry=r)
        self.is_leader = Gauge(
            "is_leader", "1 while this node is the Raft leader, else 0", namespace=ns, registry=r)
        self.elections_total = Counter(
            "elections", "Campaigns this node started", namespace=ns, registry=r)
        self.leader_changes_total = Counter(
            "leader_changes", "Times the known leader changed", namespace=ns, registry=r)
        self.fsync_seconds = Histogram(
            "fsync_seconds", "Duration of one write-ahead-log fsync",
            namespace=ns, registry=r, buckets=FSYNC_BUCKETS_S)
        self.event_loop_lag_seconds = Histogram(
            "event_loop_lag_seconds",
            "How late each Raft tick's timer fired: the event loop was busy that long",
            namespace=ns, registry=r, buckets=LOOP_LAG_BUCKETS_S)
        self.gc_pause_seconds = Histogram(
            "gc_pause_seconds", "Duration of one cycle-collector run (the event loop stops)",
            ["generation"], namespace=ns, registry=r, buckets=GC_PAUSE_BUCKETS_S)
        self.storage_saves_total = Counter(
            "storage_saves", "Raft Readies made durable, by the thread that fsynced them",
            ["thread"], namespace=ns, registry=r)
        self.ready_batch_entries = Histogram(
            "ready_batch_entries", "Entries persisted per Raft ready batch",
            namespace=ns, registry=r, buckets=BATCH_BUCKETS_ENTRIES)
        # peer transport
        self.peer_rtt_seconds = Histogram(
            "peer_rtt_seconds", "Round trip of an acknowledged peer POST",
            ["peer"], namespace=ns, registry=r, buckets=RTT_BUCKETS_S)
        self.peer_messages_sent_total = Counter(
            "peer_messages_sent", "Raft messages delivered to a peer (acknowledged)",
            ["peer"], namespace=ns, registry=r)
        self.peer_messages_received_total = Counter(
            "peer_messages_received", "Raft messages accepted from a peer",
            ["peer"], namespace=ns, registry=r)
        self.peer_messages_dropped_total = Counter(
            "peer_messages_dropped", "Raft messages dropped, by peer and reason",
            ["peer", "reason"], namespace=ns, registry=r)
        self.peer_fragments_total = Counter(
            "peer_fragments", "Fragments of batches larger than a frame, by peer and direction",
            ["peer", "direction"], namespace=ns, registry=r)
        self.peer_rejected_total = Counter(
            "peer_rejected", "Peer requests refused, by reason", ["reason"],
            namespace=ns, registry=r)
        # client API
        self.reads_total = Counter(
            "reads", "Client reads, by consistency", ["consistency"], namespace=ns, registry=r)
        self.requests = RequestStats(ns, REQUEST_BUCKETS_S)
        r.register(self.requests)
        # what is counted on every request or batch: call with the label values, in order
        self.reads = LabelCache(self.reads_total)
        self.peer_messages_sent = LabelCache(self.peer_messages_sent_total)
        self.peer_messages_received = LabelCache(self.peer_messages_received_total)
        self.peer_messages_dropped = LabelCache(self.peer_messages_dropped_total)
        # membership (SWIM)
        self.membership_probes_total = Counter(
            "membership_probes", "SWIM probes this node started", namespace=ns, registry=r)
        self.membership_suspicions_total = Counter(
            "membership_suspicions", "Members that turned suspect in this node's view",
            namespace=ns, registry=r)
        self.membership_deaths_total = Counter(
            "membership_deaths", "Members declared dead in this node's view",
            namespace=ns, registry=r)
        self.membership_refutations_total = Counter(
            "membership_refutations", "Suspicions of this node it refuted",
            namespace=ns, registry=r)
        self.membership_false_positives_corrected_total = Counter(
            "membership_false_positives_corrected",
            "Suspect or dead members later seen alive", namespace=ns, registry=r)
        self.membership_members = Gauge(
            "membership_members", "Members in this node's view, by state", ["state"],
            namespace=ns, registry=r)
        self.membership_clock_offset_seconds = Gauge(
            "membership_clock_offset_seconds", "Each peer's clock minus this node's",
            ["peer"], namespace=ns, registry=r)

    def render(self) -> tuple[bytes, str]:
        """The text exposition of every metric and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
