"""Settings of the quorum store: per-bucket replication (``BucketProps``) and the node's
bounds and intervals (``DkvConfig``).

``BucketProps`` carries N (replicas), R and W (how many replicas a read or a write waits
for) and the LWW flag. N is fixed per bucket: it decides which nodes hold a key, so every
request of a bucket must use the same N. A request may override R and W
(``BucketProps.override``). ``DkvConfig`` is the same on every node of a cluster (ring shape,
bucket table) plus the node's own bounds: every queue, batch and background job has one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

_MS = 1_000_000
_S = 1_000_000_000
_HOUR = 3600 * _S

MAX_PARTITION_COUNT = 1 << 16
MAX_CONTEXT_COUNTER = (1 << 63) - 1
"""Largest version-vector counter a client context may carry (digests hash 8 bytes)."""


def _require_int(owner: str, name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{owner}: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return value


def validate_bucket_name(bucket: object) -> str:
    """``bucket`` itself when it is a valid bucket name, else ValueError."""
    if not isinstance(bucket, str) or not bucket:
        raise ValueError(f"bucket must be a non-empty string, got {bucket!r}")
    if "\x00" in bucket:
        raise ValueError(f"bucket {bucket!r} must not contain a NUL character")
    return bucket


@dataclass(frozen=True, slots=True)
class BucketProps:
    """How a bucket replicates: ``n`` copies, reads wait for ``r``, writes for ``w``.

    ``lww`` (last write wins) keeps one sibling per key, the one with the newest timestamp,
    and loses concurrent writes by design; only buckets that ask for it get it.
    """

    n: int = 3
    r: int = 2
    w: int = 2
    lww: bool = False

    def __post_init__(self) -> None:
        _require_int("bucket props", "n", self.n, 1)
        _require_int("bucket props", "r", self.r, 1)
        _require_int("bucket props", "w", self.w, 1)
        if not isinstance(self.lww, bool):
            raise ValueError(f"bucket props: lww must be a boolean, got {self.lww!r}")
        if self.r > self.n:
            raise ValueError(f"bucket props: r={self.r} is more than n={self.n} replicas")
        if self.w > self.n:
            raise ValueError(f"bucket props: w={self.w} is more than n={self.n} replicas")

    @classmethod
    def from_mapping(cls, values: Mapping[str, object],
                     base: BucketProps | None = None) -> BucketProps:
        """Props from e.g. parsed JSON: fields missing from ``values`` come from ``base``
        (the defaults when None). Raises ValueError naming an unknown or bad field."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(name) for name in values if name not in known)
        if unknown:
            raise ValueError(f"bucket props: unknown field(s) {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(known))})")
        return replace(base or cls(), **values)  # type: ignore[arg-type]

    def override(self, *, r: int | None = None, w: int | None = None) -> BucketProps:
        """These props with a request's own R and/or W (N and LWW stay the bucket's)."""
        return replace(self, r=self.r if r is None else r, w=self.w if w is None else w)

    @property
    def quorum(self) -> int:
        """A majority of the ``n`` replicas."""
        return self.n // 2 + 1


@dataclass(frozen=True, slots=True)
class DkvConfig:
    """The quorum store's settings; the ring and bucket fields must match cluster-wide."""

    partition_count: int = 64
    """Fixed ring partitions (a power of two); keys of one partition share their replicas."""
    vnodes_per_node: int = 16
    """Tokens each member places on the ring: more tokens, more even partition spread."""
    default_props: BucketProps = field(default_factory=BucketProps)
    buckets: tuple[tuple[str, BucketProps], ...] = ()
    """Buckets whose props differ from ``default_props``: ``(name, props)`` pairs."""

    request_timeout_ns: int = 2 * _S
    """A client operation not at its quorum by then fails (forwarded: twice as long)."""
    max_pending_ops: int = 10_000
    """Client operations in flight on one node; more are refused at once."""

    hint_max_age_ns: int = 3 * _HOUR
    """Hints older than this are dropped (the fallback's copy still reaches the owner by
    hand-off, and anti-entropy repairs the rest)."""
    hint_replay_interval_ns: int = 1 * _S
    """How often hints are looked at for owners that are up: the retry pace. An owner whose
    last batch was all acknowledged gets its next at the next tick."""
    hint_replay_batch: int = 64
    """Hints in flight to one owner at a time."""

    sweep_interval_ns: int = 1 * _S
    """How often the node looks at a slice of its keys for hand-off and tombstone collection."""
    sweep_keys: int = 256
    """Keys looked at per sweep (and the most hand-offs or collections it starts)."""
    tombstone_grace_ns: int = 6 * _HOUR
    """A tombstone is collected only once it is this old; longer than ``hint_max_age_ns``, so
    no hint holding an older value can bring the key back after it is collected."""

    aae_interval_ns: int = 5 * _S
    """Anti-entropy: at most one exchange (one partition, one peer) per interval."""
    aae_catch_up_interval_ns: int = 50 * _MS
    """The pace instead (when shorter) while pairs wait to be compared first: the partitions
    shared with peers that came back, and pairs whose last exchange ``aae_max_keys`` cut
    short."""
    aae_timeout_ns: int = 10 * _S
    aae_max_keys: int = 1_000
    """Most keys one exchange compares and repairs; the rest wait for the next exchange."""
    merkle_fanout: int = 16
    merkle_depth: int = 2
    """Merkle trees have ``merkle_fanout ** merkle_depth`` leaf segments per partition."""

    max_siblings: int = 100
    """A client write that would leave the coordinator's copy of a key with more siblings
    than this is refused (``OpResult.refused``): blind writes (no context) each add one, and
    an object that grows without bound slows every read and merge of its key. The client
    reads the key, merges its siblings and writes back with the context. Replicas merging
    copies never refuse (that would keep them apart). Riak's ``max_siblings`` is 100 too."""

    max_actors_per_node: int = 4
    """Context entries kept per node: a node's oldest actor ids (one per restart) beyond
    this many are dropped from a write's context (the pruning rule; see ``DkvNode._pruned``)."""

    max_clock_offset_ns: int = 500 * _MS
    """A write's timestamp is pushed past the newest one on the coordinator's copy only when
    that one is at most this far ahead of the local clock (the HLC max-offset guard)."""

    def __post_init__(self) -> None:
        owner = "dkv config"
        partitions = _require_int(owner, "partition_count", self.partition_count, 1)
        if partitions & (partitions - 1) or partitions > MAX_PARTITION_COUNT:
            raise ValueError(f"{owner}: partition_count must be a power of two <= "
                             f"{MAX_PARTITION_COUNT}, got {partitions}")
        for name in ("vnodes_per_node", "request_timeout_ns", "max_pending_ops",
                     "hint_max_age_ns", "hint_replay_interval_ns", "hint_replay_batch",
                     "sweep_interval_ns", "sweep_keys", "tombstone_grace_ns",
                     "aae_interval_ns", "aae_catch_up_interval_ns", "aae_timeout_ns",
                     "aae_max_keys", "merkle_depth", "max_actors_per_node",
                     "max_clock_offset_ns", "max_siblings"):
            _require_int(owner, name, getattr(self, name), 1)
        fanout = _require_int(owner, "merkle_fanout", self.merkle_fanout, 2)
        if fanout & (fanout - 1):
            raise ValueError(f"{owner}: merkle_fanout must be a power of two, got {fanout}")
        if self.partition_bits + self.segment_bits > 64:
            raise ValueError(f"{owner}: partition_count and merkle_fanout ** merkle_depth "
                             f"need more than the 64 bits of a key hash")
        if self.tombstone_grace_ns <= self.hint_max_age_ns:
            raise ValueError(f"{owner}: tombstone_grace_ns ({self.tombstone_grace_ns}) must "
                             f"exceed hint_max_age_ns ({self.hint_max_age_ns})")
        if not isinstance(self.default_props, BucketProps):
            raise ValueError(f"{owner}: default_props must be BucketProps")
        seen: set[str] = set()
        for entry in self.buckets:
            if not (isinstance(entry, tuple) and len(entry) == 2
                    and isinstance(entry[1], BucketProps)):
                raise ValueError(f"{owner}: buckets holds (name, BucketProps) pairs, "
                                 f"got {entry!r}")
            name = validate_bucket_name(entry[0])
            if name in seen:
                raise ValueError(f"{owner}: bucket {name!r} is listed twice")
            seen.add(name)

    @property
    def partition_bits(self) -> int:
        return self.partition_count.bit_length() - 1

    @property
    def segment_bits(self) -> int:
        return (self.merkle_fanout.bit_length() - 1) * self.merkle_depth

    def props_for(self, bucket: str) -> BucketProps:
        """The bucket's props (``default_props`` unless listed in ``buckets``)."""
        for name, props in self.buckets:
            if name == bucket:
                return props
        return self.default_props

    def replica_counts(self) -> tuple[int, ...]:
        """Every distinct N in use, ascending (anti-entropy keeps one tree per N)."""
        return tuple(sorted({self.default_props.n, *(p.n for _, p in self.buckets)}))

