"""Log configuration: structlog for Concord's own lines, with the stdlib's routed through it.

Every line carries an ISO-8601 UTC timestamp, its level, the node id and the fields the runtime's
``context()`` returns (Raft term and Lamport time), so the logs of all nodes can be merged in
causal order. Lines are JSON, one per line, unless a person is watching (``console``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Final

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from concord.config import LogSettings

LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

STDLIB_MIN_LEVEL: Final = logging.WARNING
"""Lines from other libraries' stdlib loggers (aiohttp's) below this level are dropped."""


class _ConcordHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stdlib handler ``configure_logging`` installs; a new call replaces it."""


def _context_adder(node_id: str, context: Callable[[], dict[str, object]]) -> Processor:
    def add_context(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
        event.setdefault("node", node_id)
        for key, value in context().items():
            event.setdefault(key, value)
        return event

    return add_context


def _wants_console(settings: LogSettings) -> bool:
    match settings.format:
        case "console":
            return True
        case "json":
            return False
        case "auto":
            return sys.stderr.isatty()
        case other:
            raise ValueError(f"log.format: 'auto', 'console' or 'json', got {other!r}")


def configure_logging(settings: LogSettings, node_id: str,
                      context: Callable[[], dict[str, object]]) -> None:
    """Send every log line of this process to stderr, filtered at ``settings.level``."""
    if settings.level not in LEVELS:
        raise ValueError(f"log.level: one of {', '.join(LEVELS)}, got {settings.level!r}")
    level = LEVELS[settings.level]
    console = _wants_console(settings)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _context_adder(node_id, context),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if console:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        finish: list[Processor] = [structlog.processors.StackInfoRenderer()]
    else:
        renderer = structlog.processors.JSONRenderer()
        finish = [structlog.processors.StackInfoRenderer(), structlog.processors.format_exc_info]
    structlog.configure(
        processors=[*shared, *finish, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )

    handler = _ConcordHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared, *finish],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ConcordHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(max(level, STDLIB_MIN_LEVEL))
