"""Node configuration: TOML file, overridden by CONCORD_* environment variables and flags.

Every setting has a default fit for a local cluster; ``load_config`` validates everything
and names the offending field in ``ConfigError``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad setting; the message names the field (``section.key``) and what is wrong."""


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """A founding member: how peers and clients reach it."""

    node_id: str
    peer_url: str
    client_url: str


@dataclass(frozen=True, slots=True)
class RaftSettings:
    tick_ms: int = 50
    election_timeout_ticks: int = 10
    heartbeat_interval_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    read_mode: str = "safe"  # "safe" (ReadIndex) | "lease"
    max_clock_drift: float = 0.1
    max_entries_per_append: int = 512
    max_inflight_appends: int = 64
    snapshot_every_entries: int = 20_000
    snapshot_every_bytes: int = 64 * 1024 * 1024  # of applied commands (batches are large)


@dataclass(frozen=True, slots=True)
class StorageSettings:
    fsync: bool = True  # False = "unsafe-no-fsync": benchmarks only, loudly logged
    segment_bytes: int = 64 * 1024 * 1024
    # a leader or follower writes and fsyncs a Ready whose entries total at most this many
    # bytes on its event loop, not the I/O thread (0: always on the I/O thread); see
    # docs/storage.md
    inline_sync_bytes: int = 4096


@dataclass(frozen=True, slots=True)
class LimitSettings:
    max_key_bytes: int = 4096
    max_value_bytes: int = 1024 * 1024
    max_request_bytes: int = 3 * 1024 * 1024 // 2
    max_pending_proposals: int = 10_000  # write requests (log entries) not yet applied
    max_pending_operations: int = 100_000  # their operations: a batch counts as its ops
    max_pending_reads: int = 10_000
    request_timeout_ms: int = 5_000
    max_range_limit: int = 10_000
    max_batch_ops: int = 1_000  # operations in one POST /v1/kv/batch


@dataclass(frozen=True, slots=True)
class TransportSettings:
    max_queue_messages: int = 10_000  # per peer; beyond it messages are dropped
    max_batch_messages: int = 1024
    request_timeout_ms: int = 2_000
    backoff_initial_ms: int = 50
    backoff_max_ms: int = 2_000
    max_body_bytes: int = 512 * 1024 * 1024
    max_frame_bytes: int = 4 * 1024 * 1024  # larger batches go out as fragments of this size


@dataclass(frozen=True, slots=True)
class MembershipSettings:
    """SWIM failure detection and clock offsets (``concord.runtime.membership``)."""

    enabled: bool = True
    detector: str = "swim"  # the verdict the node acts on: "swim" | "phi" | "heartbeat"
    probe_interval_ms: int = 500
    probe_timeout_ms: int = 250
    suspicion_mult: int = 6
    suspicion_max_timeout_mult: int = 6
    gossip_interval_ms: int = 200
    phi_threshold: float = 8.0
    phi_acceptable_pause_ms: int = 3_000
    heartbeat_timeout_ms: int = 3_000
    max_clock_offset_ms: int = 500
    clock_offset_ms: int = 0  # tests only: added to this node's wall clock
    clock_drift_ppm: float = 0.0  # tests only: this node's wall clock runs fast (or slow)


@dataclass(frozen=True, slots=True)
class DkvSettings:
    """The quorum key-value store (``concord.runtime.dkv``); ring settings match cluster-wide."""

    enabled: bool = True
    fsync: bool = True  # a replica acknowledges a write once it is fsynced (SQLite FULL)
    partition_count: int = 64
    vnodes_per_node: int = 16
    n: int = 3  # defaults for buckets without their own props
    r: int = 2
    w: int = 2
    request_timeout_ms: int = 2_000
    tick_ms: int = 50
    max_hints: int = 100_000
    hint_max_age_s: int = 3 * 3600
    aae_interval_ms: int = 200  # one anti-entropy exchange per interval ...
    aae_catch_up_interval_ms: int = 50  # ... or per this while a healed peer waits
    tombstone_grace_s: int = 6 * 3600
    max_siblings: int = 100  # a client write leaving a key with more is refused (409)


@dataclass(frozen=True, slots=True)
class LogSettings:
    format: str = "auto"  # "auto" (console on a terminal, else json) | "console" | "json"
    level: str = "info"


@dataclass(frozen=True, slots=True)
class GcSettings:
    """CPython's cycle collector for the node process (``gc.set_threshold``; its defaults are
    700 / 10 / 10): see ``concord.runtime.gc_policy``."""

    young_threshold: int = 100_000  # net container allocations between young collections
    middle_threshold: int = 10  # young collections per middle-generation collection
    old_threshold: int = 100  # middle collections before a full one is considered
    freeze_at_start: bool = True  # gc.freeze() once a recovered or installed state is loaded


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: str
    data_dir: Path
    client_listen: str  # host:port
    peer_listen: str  # host:port
    cluster_id: str = "concord"
    members: tuple[PeerSpec, ...] = ()  # founding members (including this node)
    join: bool = False  # start with no membership and wait to be added by the leader
    advertise_client_url: str = ""  # defaults to http://<client_listen>
    advertise_peer_url: str = ""  # defaults to http://<peer_listen>
    fault_injection: bool = False  # allow /v1/debug/faults (chaos testing only)
    raft: RaftSettings = field(default_factory=RaftSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    transport: TransportSettings = field(default_factory=TransportSettings)
    log: LogSettings = field(default_factory=LogSettings)
    membership: MembershipSettings = field(default_factory=MembershipSettings)
    dkv: DkvSettings = field(default_factory=DkvSettings)
    gc: GcSettings = field(default_factory=GcSettings)

    @property
    def client_url(self) -> str:
        return self.advertise_client_url or f"http://{self.client_listen}"

    @property
    def peer_url(self) -> str:
        return self.advertise_peer_url or f"http://{self.peer_listen}"


# --- loading -------------------------------------------------------------------------------

_SECTIONS: dict[str, type[Any]] = {
    "raft": RaftSettings,
    "storage": StorageSettings,
    "limits": LimitSettings,
    "transport": TransportSettings,
    "log": LogSettings,
    "membership": MembershipSettings,
    "dkv": DkvSettings,
    "gc": GcSettings,
}
_NODE_KEYS: dict[str, str] = {  # [node] key -> NodeConfig field
    "id": "node_id",
    "data_dir": "data_dir",
    "client_listen": "client_listen",
    "peer_listen": "peer_listen",
    "cluster_id": "cluster_id",
    "join": "join",
    "advertise_client_url": "advertise_client_url",
    "advertise_peer_url": "advertise_peer_url",
    "fault_injection": "fault_injection",
}
_NODE_TYPES: dict[str, type[Any]] = {
    "node_id": str, "data_dir": Path, "client_listen": str, "peer_listen": str,
    "cluster_id": str, "join": bool, "advertise_client_url": str, "advertise_peer_url": str,
    "fault_injection": bool,
}
_MAY_BE_ZERO_OR_NEGATIVE = frozenset({"max_clock_drift", "clock_offset_ms", "clock_drift_ppm",
                                      "inline_sync_bytes"})
ENV_PREFIX = "CONCORD_"
# CONCORD_* variables read by other parts of Concord (the client; the build scripts and
# tests: scripts/ensure-fast-venv.sh, scripts/test.sh), not node settings
_CLIENT_ENV = frozenset({"endpoints", "output", "expect_compiled", "require_compiled"})


def _coerce(value: object, kind: type[Any], where: str) -> Any:
    """A TOML value or an environment string, checked against the field's type."""
    if isinstance(value, str) and kind is not str and kind is not Path:
        text = value.strip()
        try:
            if kind is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            return kind(text)
        except ValueError:
            raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}") from None
    if kind is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value


def _field_types(settings_class: type[Any]) -> dict[str, type[Any]]:
    defaults = settings_class()
    return {f.name: type(getattr(defaults, f.name)) for f in fields(settings_class)}


def _parse_members(raw: object, where: str) -> tuple[PeerSpec, ...]:
    """TOML: a list of {id, peer_url, client_url} tables.
    Environment: ``n1=http://peer-url;http://client-url,n2=...``."""
    specs: list[PeerSpec] = []
    if isinstance(raw, str):
        for item in filter(None, (part.strip() for part in raw.split(","))):
            node_id, _, urls = item.partition("=")
            peer_url, _, client_url = urls.partition(";")
            if not (node_id and peer_url and client_url):
                raise ConfigError(f"{where}: expected id=peer_url;client_url, got {item!r}")
            specs.append(PeerSpec(node_id, peer_url, client_url))
    elif isinstance(raw, list):
        for position, table in enumerate(raw):
            spot = f"{where}[{position}]"
            if not isinstance(table, dict) or set(table) != {"id", "peer_url", "client_url"}:
                raise ConfigError(f"{spot}: expected a table with id, peer_url, client_url")
            specs.append(PeerSpec(*(_coerce(table[k], str, f"{spot}.{k}")
                                    for k in ("id", "peer_url", "client_url"))))
    else:
        raise ConfigError(f"{where}: expected a list of members")
    ids = [s.node_id for s in specs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{where}: duplicate member id")
    return tuple(specs)


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, object] | None = None) -> NodeConfig:
    """Build a NodeConfig from a TOML file, then ``CONCORD_*`` variables, then ``overrides``
    (keys like ``node.id`` or ``raft.tick_ms``), validating every field."""
    document: dict[str, Any] = {}
    if path is not None:
        try:
            document = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(document) - {"node", "members", *_SECTIONS}
    if unknown:
        raise ConfigError(f"unknown section(s): {', '.join(sorted(unknown))}")
    node_values: dict[str, Any] = {}
    for key, value in document.get("node", {}).items():
        if key not in _NODE_KEYS:
            raise ConfigError(f"node.{key}: unknown setting")
        name = _NODE_KEYS[key]
        node_values[name] = _coerce(value, _NODE_TYPES[name], f"node.{key}")
    section_values: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    for section, settings_class in _SECTIONS.items():
        types = _field_types(settings_class)
        for key, value in document.get(section, {}).items():
            if key not in types:
                raise ConfigError(f"{section}.{key}: unknown setting")
            section_values[section][key] = _coerce(value, types[key], f"{section}.{key}")
    members = (_parse_members(document["members"], "members") if "members" in document else ())

    layered: dict[str, object] = {}
    for name, value in (env or {}).items():
        if name.startswith(ENV_PREFIX) and name[len(ENV_PREFIX):].lower() not in _CLIENT_ENV:
            layered[name[len(ENV_PREFIX):].lower()] = value
    for dotted, value in (overrides or {}).items():
        layered[dotted.replace(".", "_")] = value
    for flat, value in layered.items():
        where = f"{ENV_PREFIX}{flat.upper()}"
        if flat == "members":
            members = _parse_members(value, where)
            continue
        node_key = flat.removeprefix("node_")
        if node_key in _NODE_KEYS:
            name = _NODE_KEYS[node_key]
            node_values[name] = _coerce(value, _NODE_TYPES[name], where)
            continue
        section, _, key = flat.partition("_")
        types = _field_types(_SECTIONS[section]) if section in _SECTIONS else {}
        if key not in types:
            raise ConfigError(f"{where}: unknown setting")
        section_values[section][key] = _coerce(value, types[key], where)

    for required in ("node_id", "data_dir", "client_listen", "peer_listen"):
        if required not in node_values:
            key = next(k for k, v in _NODE_KEYS.items() if v == required)
            env_name = f"{ENV_PREFIX}NODE_ID" if key == "id" else f"{ENV_PREFIX}{key.upper()}"
            raise ConfigError(f"node.{key}: required (set it in the file, {env_name} or a flag)")
    config = NodeConfig(
        members=members,
        raft=RaftSettings(**section_values["raft"]),
        storage=StorageSettings(**section_values["storage"]),
        limits=LimitSettings(**section_values["limits"]),
        transport=TransportSettings(**section_values["transport"]),
        log=LogSettings(**section_values["log"]),
        membership=MembershipSettings(**section_values["membership"]),
        dkv=DkvSettings(**section_values["dkv"]),
        gc=GcSettings(**section_values["gc"]),
        **node_values,
    )
    validate(config)
    return config


def validate(config: NodeConfig) -> None:
    """Semantic checks that span fields; raises ConfigError naming the field."""
    for name in ("client_listen", "peer_listen"):
        _, sep, port = getattr(config, name).rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"node.{name}: expected host:port, got {getattr(config, name)!r}")
    if not config.node_id or not config.node_id.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"node.id: use letters, digits, - and _ only, got {config.node_id!r}")
    if not config.join and config.node_id not in {m.node_id for m in config.members}:
        raise ConfigError("members: must include this node (node.id) unless node.join is true")
    for section in _SECTIONS:
        settings = getattr(config, section)
        for f in fields(settings):
            value = getattr(settings, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0 \
                    and f.name not in _MAY_BE_ZERO_OR_NEGATIVE:
                raise ConfigError(f"{section}.{f.name}: must be positive, got {value}")
    if config.limits.max_pending_operations < config.limits.max_batch_ops:
        raise ConfigError("limits.max_pending_operations: must be at least limits.max_batch_ops "
                          "(the largest batch must fit)")
    if config.storage.inline_sync_bytes < 0:
        raise ConfigError("storage.inline_sync_bytes: must be 0 or more, got "
                          f"{config.storage.inline_sync_bytes}")
    raft = config.raft
    if raft.election_timeout_ticks <= raft.heartbeat_interval_ticks:
        raise ConfigError("raft.election_timeout_ticks: must exceed raft.heartbeat_interval_ticks")
    if raft.read_mode not in ("safe", "lease"):
        raise ConfigError(f"raft.read_mode: 'safe' or 'lease', got {raft.read_mode!r}")
    if raft.read_mode == "lease" and not raft.check_quorum:
        raise ConfigError("raft.read_mode: 'lease' requires raft.check_quorum = true")
    if not 0 <= raft.max_clock_drift < 0.5:
        raise ConfigError("raft.max_clock_drift: must be in [0, 0.5)")
    transport = config.transport
    if not 1024 <= transport.max_frame_bytes <= transport.max_body_bytes:
        raise ConfigError("transport.max_frame_bytes: must be in [1024, transport.max_body_bytes]"
                          f", got {transport.max_frame_bytes}")
    membership = config.membership
    if membership.detector not in ("swim", "phi", "heartbeat"):
        raise ConfigError("membership.detector: 'swim', 'phi' or 'heartbeat', "
                          f"got {membership.detector!r}")
    if membership.probe_timeout_ms >= membership.probe_interval_ms:
        raise ConfigError("membership.probe_timeout_ms: must be shorter than probe_interval_ms")
    if abs(membership.clock_drift_ppm) >= 100_000:
        raise ConfigError("membership.clock_drift_ppm: must be within +-100000")
    dkv = config.dkv
    if dkv.partition_count & (dkv.partition_count - 1):
        raise ConfigError(f"dkv.partition_count: must be a power of two, got {dkv.partition_count}")
    if dkv.r > dkv.n or dkv.w > dkv.n:
        raise ConfigError(f"dkv.r and dkv.w: must not exceed dkv.n ({dkv.n}), got r={dkv.r}, "
                          f"w={dkv.w}")
    if dkv.tombstone_grace_s <= dkv.hint_max_age_s:
        raise ConfigError("dkv.tombstone_grace_s: must exceed dkv.hint_max_age_s")
    if config.log.format not in ("auto", "console", "json"):
        raise ConfigError(f"log.format: 'auto', 'console' or 'json', got {config.log.format!r}")
    if config.log.level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log.level: debug, info, warning or error, got {config.log.level!r}")
