"""The node's one timer for every waiting request: deadlines expire, answers are let go."""

from __future__ import annotations

import asyncio
import gc
import weakref
from types import SimpleNamespace

import pytest

from concord.runtime.errors import TimedOut
from concord.runtime.node import ConcordNode, _Deadlines


async def test_a_deadline_fails_its_future_and_skips_an_answered_one() -> None:
    loop = asyncio.get_running_loop()
    deadlines = _Deadlines()
    waiting, answered = loop.create_future(), loop.create_future()
    deadlines.add(waiting, 1.0, "the write was not committed in time")
    deadlines.add(answered, 1.0, "unused")[0] = None  # its waiter had its answer
    deadlines.expire(0.5)
    assert not waiting.done()
    deadlines.expire(1.0)
    with pytest.raises(TimedOut, match="not committed in time"):
        waiting.result()
    assert not answered.done()


async def test_an_answered_request_is_not_kept_until_its_deadline() -> None:
    """Holding answered futures until their deadlines kept 5 s of results alive under load."""
    node = SimpleNamespace(_deadlines=_Deadlines())
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    result = SimpleNamespace(payload="a batch's results")
    future.set_result(result)
    assert await ConcordNode._await(node, future, 60.0, "unused") is result  # type: ignore[arg-type]
    watched = weakref.ref(future)
    del future
    gc.collect()
    assert watched() is None
