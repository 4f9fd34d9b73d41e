"""Writing a WebSocket frame from the caller's own turn of the event loop, without a task.

``start_frame_write`` runs aiohttp's ``send_bytes`` by hand: an uncompressed frame reaches the
socket before aiohttp waits for the socket to drain (if it must), so when the call returns
the frame is written, and what is left, if anything, is a ``Suspended`` coroutine for a task
to await. Both the Raft peer stream (``peer.py``) and the message channels
(``message_channel.py``) write this way: it saves a task hop per frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

import aiohttp


def start_frame_write(stream: aiohttp.ClientWebSocketResponse, body: bytes) -> Suspended | None:
    """Write ``body`` as one binary frame now. None when the write finished; else its rest,
    which waits for the socket to drain. Raises what ``send_bytes`` raises on a broken
    stream (``aiohttp.ClientError``, ``ConnectionError``, ``OSError``)."""
    sending = stream.send_bytes(body)
    try:
        blocker = sending.send(None)
    except StopIteration:
        return None
    return Suspended(sending, blocker)


class Suspended:
    """A coroutine started by hand (``send(None)``) that suspended on ``blocker``; awaiting
    this object lets the awaiting task drive it to its end, as if it had started it.

    A future yielded by ``await`` is marked as taken by a task (``_asyncio_future_blocking``)
    until that task picks it up; until the awaiting task does, the mark is lifted, or anyone
    else awaiting the same future meanwhile (aiohttp's drain waiter is shared by every writer
    of a connection) fails with "await wasn't used with future".
    """

    __slots__ = ("_blocker", "_coroutine")

    def __init__(self, coroutine: Coroutine[Any, Any, None], blocker: Any) -> None:
        self._coroutine = coroutine
        self._blocker = blocker
        if isinstance(blocker, asyncio.Future):
            blocker._asyncio_future_blocking = False

    def __await__(self) -> Generator[Any, None, None]:
        coroutine, waiting_on = self._coroutine, self._blocker
        if isinstance(waiting_on, asyncio.Future):
            if waiting_on.done():  # finished before this task came: resume at once
                try:
                    waiting_on = coroutine.send(None)
                except StopIteration:
                    return
            else:
                waiting_on._asyncio_future_blocking = True  # taken again, by this task
        while True:
            try:
                yield waiting_on
            except BaseException as thrown:  # the task's cancellation goes to the coroutine
                try:
                    waiting_on = coroutine.throw(thrown)
                except StopIteration:
                    return
            else:
                try:
                    waiting_on = coroutine.send(None)
                except StopIteration:
                    return
