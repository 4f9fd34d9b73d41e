"""Shared by every suite: tests marked ``pure_python`` are skipped where Concord's hot modules
run compiled (``concord.accel``), whose classes cannot be patched or built with wrong types."""

from __future__ import annotations

import pytest

from concord.accel import compiled_modules


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not compiled_modules():
        return
    skip = pytest.mark.skip(reason="patches or mis-types a class the compiled build makes native")
    for item in items:
        if item.get_closest_marker("pure_python") is not None:
            item.add_marker(skip)
