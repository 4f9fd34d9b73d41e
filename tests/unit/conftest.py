"""Fixtures shared by the client API tests: an in-memory node and the API in front of it."""

from __future__ import annotations

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
