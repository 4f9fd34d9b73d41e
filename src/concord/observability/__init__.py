"""Observability: structured logs (structlog) and Prometheus metrics for a node."""
