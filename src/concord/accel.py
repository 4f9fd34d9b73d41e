"""Which of Concord's hot modules run compiled in this process.

The Raft core, the wire codec, the key-value state machine, the write-ahead log and the
quorum store's core (its node, versions, Merkle trees, ring and codecs) can be compiled to C
extensions by mypyc from the same source (pyproject.toml's mypyc build hook;
``scripts/ensure-fast-venv.sh`` builds such a wheel into ``.venv-fast``). Compiled, they run
the same code with fewer interpreter steps, and their classes check argument types and
cannot be patched at run time. Everything else stays Python. docs/performance.md has what
it changes.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from typing import Final

COMPILABLE_MODULES: Final = (
    "concord.raft.core",
    "concord.raft.log",
    "concord.raft.progress",
    "concord.raft.ready",
    "concord.raft.config",
    "concord.wire.codec",
    "concord.kv.fsm",
    "concord.kv.commands",
    "concord.storage.wal",
    "concord.storage.raft_storage",
    "concord.dkv.versions",
    "concord.dkv.merkle",
    "concord.dkv.ring",
    "concord.dkv.node",
    "concord.wire.dkv_codec",
    "concord.wire.dkv_messages_codec",
)


def compiled_modules() -> tuple[str, ...]:
    """The modules of ``COMPILABLE_MODULES`` that this interpreter loads as C extensions."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    found = []
    for name in COMPILABLE_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None and spec.origin.endswith(suffixes):
            found.append(name)
    return tuple(found)


def build_description(compiled: tuple[str, ...] | None = None) -> str:
    """One line for reports: how many of the hot modules are compiled here (``compiled``:
    ``compiled_modules()`` when the caller has it already)."""
    if compiled is None:
        compiled = compiled_modules()
    if not compiled:
        return "pure Python"
    return f"mypyc-compiled ({len(compiled)} of {len(COMPILABLE_MODULES)} hot modules)"
