"""Follower-to-leader forwarding of client requests.

A node that is not the leader re-sends the client's request, unchanged, to the leader's
client URL and relays the leader's answer (status, headers, body). It owns one bounded
``aiohttp.ClientSession``. A forwarded request carries ``X-Concord-Forwarded: <node id>``;
a node never forwards such a request again, so two nodes that each believe the other leads
cannot bounce a request between them.

Failures keep the error model honest: when the leader cannot be connected to, nothing was
sent and the answer is a definite ``NoLeader``; once the request may have reached the leader,
a lost answer is an indefinite ``TimedOut``.
"""

from __future__ import annotations

from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from concord.api import FORWARDED_HEADER
from concord.runtime.errors import NoLeader, NotLeaderHere, TimedOut
from concord.runtime.service import NodeService

FORWARD_MARGIN_S: Final = 0.5
"""How much longer than the request's own timeout the forwarder waits for the leader, so
that the leader's own timeout answer (504) arrives before the forwarder gives up."""

CONNECT_TIMEOUT_S: Final = 1.0
MAX_FORWARD_CONNECTIONS: Final = 64

# hop-by-hop headers and those aiohttp recomputes for the new message
_NOT_RELAYED: Final = frozenset(
    name.lower()
    for name in (
        "Host", "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive", "Upgrade",
        "TE", "Trailer", "Proxy-Authorization", "Proxy-Connection", "Accept-Encoding",
        "Content-Encoding", "Date", "Server",
    )
)


class LeaderForwarder:
    """Relays requests this node cannot serve to the current leader."""

    __slots__ = ("_service", "_session")

    def __init__(self, service: NodeService) -> None:
        self._service = service
        self._session: aiohttp.ClientSession | None = None  # created inside the event loop

    async def forward(self, request: web.Request, body: bytes, *, timeout_s: float) -> web.Response:
        """Send ``request`` (whose body was ``body``) to the leader; its answer, relayed.

        ``timeout_s`` is the request's own timeout; the forwarder waits a margin longer.
        Raises ``NotLeaderHere`` for a request that was already forwarded once, ``NoLeader``
        when no leader is known or it refuses connections, ``TimedOut`` when the answer is lost.
        """
        assert timeout_s > 0, f"timeout must be positive, got {timeout_s}"
        already_forwarded_by = request.headers.get(FORWARDED_HEADER)
        if already_forwarded_by is not None:
            raise NotLeaderHere(
                f"request forwarded by {already_forwarded_by} reached {self._service.node_id}, "
                "which is not the leader either: leadership is changing, retry",
                leader_id=None,
            )
        leader_url = self._service.leader_client_url()
        if leader_url is None:
            raise NoLeader("no leader is known")
        target = URL(leader_url.rstrip("/") + request.rel_url.raw_path_qs, encoded=True)
        headers = _relayed(request.headers)
        headers[FORWARDED_HEADER] = self._service.node_id
        timeout = aiohttp.ClientTimeout(
            total=timeout_s + FORWARD_MARGIN_S, sock_connect=CONNECT_TIMEOUT_S
        )
        try:
            async with self._client_session().request(
                request.method, target, data=body, headers=headers, timeout=timeout,
                allow_redirects=False,
            ) as answer:
                payload = await answer.read()
                return web.Response(
                    status=answer.status, body=payload, headers=_relayed(answer.headers)
                )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
            raise NoLeader(f"leader at {leader_url} is unreachable: {error}") from None
        except (aiohttp.ClientError, TimeoutError) as error:
            reason = str(error) or type(error).__name__
            raise TimedOut(
                f"no answer from leader at {leader_url} ({reason}); the outcome is unknown"
            ) from None

    async def close(self) -> None:
        """Close the connection pool; idempotent."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=MAX_FORWARD_CONNECTIONS),
                auto_decompress=True,
            )
            # aiohttp silently re-sends a PUT/GET/DELETE once when the connection drops before
            # the answer; a forwarded write without a request id could then apply twice. The
            # forwarder relays at most once and reports a lost answer as 504 (outcome unknown).
            session._retry_connection = False
            self._session = session
        return self._session


def _relayed(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The end-to-end headers of a message, in order, duplicates kept."""
    relayed: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in _NOT_RELAYED:
            relayed.add(name, value)
    return relayed
