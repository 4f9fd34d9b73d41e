"""Fixtures shared by the unit tests: an in-memory node and the client API in front of it;
the fsync calls the storage makes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from fake_node import FakeNode, serving


@pytest.fixture
async def node() -> FakeNode:
    return FakeNode("n1")


@pytest.fixture
async def api(node: FakeNode) -> AsyncIterator[TestClient[Any, Any]]:
    async with serving(node) as client:
        yield client


@pytest.fixture
def fsync_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every fd passed to ``os.fsync`` or ``os.fdatasync`` (the real call still runs)."""
    calls: list[int] = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name, None)
        if real is None:
            continue

        def counting(fd: int, real: Any = real) -> None:
            calls.append(fd)
            real(fd)

        monkeypatch.setattr(os, name, counting)
    return calls
