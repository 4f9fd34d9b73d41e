"""The layer rules of ARCHITECTURE.md, checked on the source: protocol cores stay pure.

protocol (core, raft, kv, detector, dkv): the standard library and concord.core only; no asyncio,
sockets, time, os, logging, threads or global randomness.
simulation (sim): the protocol layer and concord.wire; never asyncio, sockets, time, os.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "concord"

FORBIDDEN_IN_CORES = {
    "asyncio", "socket", "selectors", "ssl", "time", "os", "logging", "threading",
    "multiprocessing", "subprocess", "aiohttp", "uvloop", "structlog", "msgpack", "signal",
    "concurrent", "datetime", "shutil", "tempfile", "pathlib", "io",
}
PROTOCOL_PACKAGES = ("core", "raft", "kv", "detector", "dkv")
ALLOWED_CONCORD_IMPORTS = {
    "core": ("concord.core",),
    "raft": ("concord.core", "concord.raft"),
    "kv": ("concord.core", "concord.kv"),
    "detector": ("concord.core", "concord.detector"),
    "dkv": ("concord.core", "concord.dkv"),
    "sim": ("concord.core", "concord.raft", "concord.kv", "concord.detector", "concord.dkv",
            "concord.sim", "concord.wire"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _global_random_calls(path: Path) -> list[int]:
    """Calls like random.random() / random.choice() use the hidden global generator."""
    tree = ast.parse(path.read_text(), filename=str(path))
    lines = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "random"
                and node.func.attr != "Random"):
            lines.append(node.lineno)
    return lines


def _modules(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


@pytest.mark.parametrize("package", [*PROTOCOL_PACKAGES, "sim"])
def test_layer_imports(package: str) -> None:
    problems = []
    for path in _modules(package):
        for line, module in _imports(path):
            top = module.split(".")[0]
            where = f"{path.relative_to(SRC)}:{line}"
            if top in FORBIDDEN_IN_CORES:
                problems.append(f"{where} imports {module}")
            if top == "concord" and not module.startswith(ALLOWED_CONCORD_IMPORTS[package]):
                problems.append(f"{where} imports {module} (layer {package} may not)")
        problems.extend(f"{path.relative_to(SRC)}:{line} uses the global random generator"
                        for line in _global_random_calls(path))
    assert not problems, "layer rules broken:\n" + "\n".join(problems)


def test_the_checker_sees_violations(tmp_path: Path) -> None:
    """The rule itself can fail: a core module importing asyncio is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom time import monotonic\nimport random\nrandom.random()\n")
    assert [m for _, m in _imports(bad)] == ["asyncio", "time", "random"]
    assert _global_random_calls(bad) == [4]
