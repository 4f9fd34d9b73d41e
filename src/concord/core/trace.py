"""Trace events: what a protocol core reports instead of logging.

A core appends events to its ``Ready``; the shell turns them into structured log lines and
the simulator into transcripts. Events never cause effects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One thing a core wants a person to be able to see (an election, a step-down...)."""

    name: str
    attrs: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = " ".join(f"{k}={v}" for k, v in self.attrs.items())
        return f"{self.name} {parts}".rstrip()
