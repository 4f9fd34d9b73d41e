"""The compiled build: the module list agrees with the build hook, and a run that expects
compiled modules (CONCORD_EXPECT_COMPILED=1, as scripts/test.sh sets for .venv-fast) gets
them, so a build that silently fell back to Python cannot pass as compiled."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from concord.accel import COMPILABLE_MODULES, build_description, compiled_modules

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_module_list_matches_the_build_hook() -> None:
    config = tomllib.loads(PYPROJECT.read_text())
    included = config["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["mypyc"]["include"]
    as_modules = tuple(path.removeprefix("src/").removesuffix(".py").replace("/", ".")
                       for path in included)
    assert as_modules == COMPILABLE_MODULES


def test_the_build_is_what_this_run_expects() -> None:
    expect_compiled = os.environ.get("CONCORD_EXPECT_COMPILED") == "1"
    assert compiled_modules() == (COMPILABLE_MODULES if expect_compiled else ())
    assert build_description().startswith("mypyc" if expect_compiled else "pure Python")


def test_the_source_tree_holds_no_compiled_module() -> None:
    """An extension beside a source file shadows it: edits to the .py would not run."""
    source = PYPROJECT.parent / "src"
    assert sorted(str(p.relative_to(source)) for p in source.rglob("*.so")) == []
