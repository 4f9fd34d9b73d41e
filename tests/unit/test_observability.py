"""Tests of the node's metrics registry and its log configuration (structlog + stdlib)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import structlog

from concord.config import LogSettings
from concord.observability import metrics as metrics_module
from concord.observability.logging import configure_logging
from concord.observability.metrics import NodeMetrics

METRIC_NAMES = [
    "concord_proposals_total", "concord_proposals_failed_total", "concord_commits_total",
    "concord_applied_index", "concord_commit_index", "concord_apply_lag_entries",
    "concord_term", "concord_is_leader", "concord_elections_total",
    "concord_leader_changes_total", "concord_fsync_seconds", "concord_ready_batch_entries",
    "concord_peer_rtt_seconds", "concord_peer_messages_sent_total",
    "concord_peer_messages_received_total", "concord_peer_messages_dropped_total",
    "concord_peer_rejected_total", "concord_reads_total", "concord_http_requests_total",
    "concord_http_request_seconds",
]


# --- metrics ---------------------------------------------------------------------------------


def test_render_exposes_every_metric_with_its_values() -> None:
    metrics = NodeMetrics()
    metrics.proposals_total.inc(3)
    metrics.term.set(7)
    metrics.peer_messages_dropped_total.labels(peer="n2", reason="queue_full").inc(2)
    metrics.fsync_seconds.observe(0.002)
    metrics.requests.record("GET", "/v1/kv", "200", 0.0007)
    body, content_type = metrics.render()
    text = body.decode()
    assert content_type.startswith("text/plain; version=")
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in text, name
    assert "concord_proposals_total 3.0" in text
    assert "concord_term 7.0" in text
    assert 'concord_peer_messages_dropped_total{peer="n2",reason="queue_full"} 2.0' in text
    assert 'concord_fsync_seconds_bucket{le="0.0001"} 0.0' in text
    assert 'concord_fsync_seconds_bucket{le="0.0025"} 1.0' in text
    assert 'concord_fsync_seconds_bucket{le="1.0"} 1.0' in text
    assert ('concord_http_requests_total{method="GET",route="/v1/kv",status="200"} 1.0'
            in text)
    assert 'concord_http_request_seconds_bucket{le="0.0005",route="/v1/kv"} 0.0' in text
    assert 'concord_http_request_seconds_bucket{le="0.001",route="/v1/kv"} 1.0' in text
    assert 'concord_http_request_seconds_bucket{le="+Inf",route="/v1/kv"} 1.0' in text
    assert 'concord_http_request_seconds_sum{route="/v1/kv"} 0.0007' in text


def test_label_cache_keeps_one_child_per_label_set_up_to_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics = NodeMetrics()
    first = metrics.reads("linearizable")
    assert metrics.reads("linearizable") is first
    first.inc()
    monkeypatch.setattr(metrics_module, "MAX_CACHED_LABEL_SETS", 1)
    metrics.reads("serializable").inc()  # over the bound: counted, not kept
    metrics.reads("serializable").inc()
    sample = metrics.registry.get_sample_value
    assert sample("concord_reads_total", {"consistency": "linearizable"}) == 1
    assert sample("concord_reads_total", {"consistency": "serializable"}) == 2
    assert metrics.reads("linearizable") is first


def test_request_stats_count_by_label_set_up_to_a_bound_then_as_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics = NodeMetrics()
    record = metrics.requests.record
    record("GET", "/v1/kv/{key}", "200", 0.002)
    record("GET", "/v1/kv/{key}", "200", 20.0)  # beyond the last bound: only +Inf
    monkeypatch.setattr(metrics_module, "MAX_CACHED_LABEL_SETS", 2)
    record("PUT", "/v1/kv/{key}", "200", 0.001)
    record("BREW", "/v1/kv/{key}", "418", 0.001)  # a third label set: counted as other
    sample = metrics.registry.get_sample_value
    assert sample("concord_http_requests_total",
                  {"method": "GET", "route": "/v1/kv/{key}", "status": "200"}) == 2
    assert sample("concord_http_requests_total",
                  {"method": "PUT", "route": "/v1/kv/{key}", "status": "200"}) == 1
    assert sample("concord_http_requests_total",
                  {"method": "BREW", "route": "/v1/kv/{key}", "status": "418"}) is None
    assert sample("concord_http_requests_total",
                  {"method": "other", "route": "/v1/kv/{key}", "status": "418"}) == 1
    assert sample("concord_http_request_seconds_count", {"route": "/v1/kv/{key}"}) == 4
    assert sample("concord_http_request_seconds_bucket",
                  {"route": "/v1/kv/{key}", "le": "10.0"}) == 3
    assert sample("concord_http_request_seconds_sum", {"route": "/v1/kv/{key}"}) == 20.004


def test_each_node_has_its_own_registry() -> None:
    first, second = NodeMetrics(), NodeMetrics()
    first.commits_total.inc(5)
    assert first.registry.get_sample_value("concord_commits_total") == 5
    assert second.registry.get_sample_value("concord_commits_total") == 0


# --- logging ---------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    saved_config = structlog.get_config()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in saved_handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(saved_level)
    structlog.configure(**saved_config)


class Context:
    def __init__(self) -> None:
        self.term = 3
        self.lamport = 41

    def __call__(self) -> dict[str, object]:
        return {"term": self.term, "lamport": self.lamport}


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line]


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_node_term_lamport_and_a_utc_timestamp(
        capsys: pytest.CaptureFixture[str]) -> None:
    context = Context()
    configure_logging(LogSettings(format="json", level="info"), "n1", context)
    log = structlog.get_logger("concord.test")
    log.info("elected", votes=2)
    context.term, context.lamport = 4, 57
    log.warning("stepped down", term=9)
    log.debug("invisible at info")
    first, second = json_lines(capsys.readouterr().err)
    assert {k: first[k] for k in ("event", "level", "node", "term", "lamport", "votes")} == {
        "event": "elected", "level": "info", "node": "n1", "term": 3, "lamport": 41,
        "votes": 2}
    assert (second["term"], second["lamport"], second["level"]) == (9, 57, "warning")
    stamp = datetime.fromisoformat(str(first["timestamp"]))
    assert stamp.utcoffset() == timedelta(0)


@pytest.mark.usefixtures("restore_logging")
def test_stdlib_warnings_are_routed_through_and_info_is_dropped(
        capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogSettings(format="json", level="debug"), "n2", Context())
    configure_logging(LogSettings(format="json", level="debug"), "n2", Context())  # no doubles
    aiohttp_log = logging.getLogger("aiohttp.server")
    aiohttp_log.info("connection noise")
    aiohttp_log.warning("bad request from %s", "10.0.0.9")
    (line,) = json_lines(capsys.readouterr().err)
    assert {k: line[k] for k in ("event", "level", "logger", "node", "term", "lamport")} == {
        "event": "bad request from 10.0.0.9", "level": "warning", "logger": "aiohttp.server",
        "node": "n2", "term": 3, "lamport": 41}


@pytest.mark.usefixtures("restore_logging")
def test_exceptions_are_rendered_into_the_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogSettings(format="json", level="info"), "n1", Context())
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        structlog.get_logger().exception("apply failed")
    (line,) = json_lines(capsys.readouterr().err)
    assert line["event"] == "apply failed" and line["level"] == "error"
    assert "RuntimeError: disk on fire" in str(line["exception"])


@pytest.mark.usefixtures("restore_logging")
def test_level_warning_filters_info(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogSettings(format="json", level="warning"), "n1", Context())
    structlog.get_logger().info("quiet")
    structlog.get_logger().error("loud")
    assert [line["event"] for line in json_lines(capsys.readouterr().err)] == ["loud"]


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize(("log_format", "is_json"), [("console", False), ("auto", True)])
def test_console_for_people_and_auto_picks_json_off_a_terminal(
        capsys: pytest.CaptureFixture[str], log_format: str, is_json: bool) -> None:
    configure_logging(LogSettings(format=log_format, level="info"), "n7", Context())
    structlog.get_logger().info("ready", port=7001)
    (text,) = capsys.readouterr().err.splitlines()
    if is_json:
        assert json.loads(text)["node"] == "n7"
    else:
        assert text.lstrip().startswith("20") and "ready" in text
        assert "node=n7" in text and "term=3" in text and "port=7001" in text
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)
