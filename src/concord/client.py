"""The Python client of Concord's HTTP API: endpoint failover and at-most-once write retries.

``AsyncConcordClient`` talks to a list of node endpoints. It sticks to the last endpoint that
answered and moves to the next one on a connection error or on an error that is retryable and
definite (overloaded, no leader, not leader, leader changed, shutting down), backing off
between server-refused attempts. Every write carries an ``X-Request-Id`` (generated unless
given) that stays the same across retries, so a retried write applies at most once. Other
failures raise ``ConcordClientError`` with the server's error code.

``ConcordClient`` is the blocking twin: it runs one ``AsyncConcordClient`` on a private event
loop in a daemon thread (so connections are pooled across calls) and waits for each call.
Close either client when done (or use it as a context manager).

Values are returned as ``bytes``; a key-value dict has ``key``, ``value``,
``create_revision``, ``mod_revision`` and ``version``.

``batch`` sends many puts, deletes and gets as one request that the cluster applies as one
Raft log entry (``POST /v1/kv/batch``); each op gets its own result, and a failed condition
fails its op only. ``put_many`` is the common case: unconditional puts of a mapping.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import uuid
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, TypeVar
from urllib.parse import quote

import aiohttp
import msgpack as msgpack_codec
from yarl import URL

from concord.api import (
    BATCH_OP_FIELDS,
    BATCH_PATH,
    ENCODING_FIELDS,
    JSON_MEDIA_TYPE,
    MAX_TIMEOUT_MS,
    MSGPACK_MEDIA_TYPE,
    OCTET_STREAM_MEDIA_TYPE,
    PREV_VALUE_B64_HEADER,
    REQUEST_ID_HEADER,
    decode_value,
    encode_value,
    is_valid_request_id,
    kv_key_path,
)

Document = dict[str, Any]
Members = list[dict[str, Any]]
BatchResults = list[Document]

_T = TypeVar("_T")

CLIENT_MARGIN_S: Final = 1.0
"""How much longer than the server-side timeout the client waits for an answer, so that the
server's own answer (504, or a relayed one) arrives first."""

CONNECT_TIMEOUT_S: Final = 1.0
BACKOFF_INITIAL_S: Final = 0.05
BACKOFF_MAX_S: Final = 1.0
MAX_CONNECTIONS: Final = 32
_BATCH_OP_FIELDS: Final[Mapping[str, frozenset[str]]] = {
    kind: fields - ENCODING_FIELDS for kind, fields in BATCH_OP_FIELDS.items()}
"""The server's op fields (``concord.api``) but the encodings, which the client fills itself."""


class ConcordClientError(Exception):
    """A request that failed; ``code`` is the server's error code (or a client-side one:
    ``unavailable`` when no endpoint could be reached, ``timeout`` when no answer came in time,
    ``bad_response`` for an answer that is not Concord's). ``status`` is 0 when no HTTP answer
    arrived. ``definite`` False means a write may or may not have been applied; retrying it
    with the same ``request_id`` applies it at most once. ``current`` is the key's state when
    a condition failed (``compare_failed``)."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int,
        retryable: bool,
        definite: bool,
        *,
        current: Document | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{code} ({status}): {message}" if status else f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retryable = retryable
        self.definite = definite
        self.current = current
        self.request_id = request_id


class _Unreachable(Exception):
    """The endpoint did not answer; ``sent`` says whether the request may have reached it."""

    def __init__(self, reason: str, *, sent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent


class AsyncConcordClient:
    """An asyncio client of a Concord cluster; see the module docstring."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout_s: float = 5.0,
        msgpack: bool = False,
        retries: int = 3,
    ) -> None:
        cleaned = [endpoint.strip().rstrip("/") for endpoint in endpoints if endpoint.strip()]
        if not cleaned:
            raise ValueError("at least one endpoint is needed")
        for endpoint in cleaned:
            if URL(endpoint).scheme not in ("http", "https"):
                raise ValueError(f"endpoint must be an http:// or https:// URL: {endpoint!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if retries < 0:
            raise ValueError(f"retries must be at least 0, got {retries}")
        self._endpoints = cleaned
        self._timeout_s = timeout_s
        self._msgpack = msgpack
        self._retries = retries
        self._preferred = 0
        self._session: aiohttp.ClientSession | None = None

    @property
    def endpoints(self) -> list[str]:
        return list(self._endpoints)

    async def __aenter__(self) -> AsyncConcordClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close pooled connections; idempotent."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- key-value -------------------------------------------------------------------------

    async def put(
        self,
        key: str,
        value: bytes | str,
        *,
        prev_revision: int | None = None,
        prev_value: bytes | str | None = None,
        create_only: bool = False,
        request_id: str | None = None,
    ) -> Document:
        """Write ``value``; ``{"header", "revision", "prev", "kv"}``. A condition that does
        not hold raises ``ConcordClientError`` with code ``compare_failed``."""
        params = self._timeout_param()
        headers = {REQUEST_ID_HEADER: _request_id(request_id)}
        if prev_revision is not None:
            params["prev_revision"] = str(prev_revision)
        if prev_value is not None:
            encoded = base64.b64encode(_as_bytes(prev_value)).decode("ascii")
            headers[PREV_VALUE_B64_HEADER] = encoded
        if create_only:
            params["create_only"] = "1"
        document = await self._call(
            "PUT", _key_path(key), params=params, headers=headers, body=_as_bytes(value),
            content_type=OCTET_STREAM_MEDIA_TYPE,
        )
        return {
            "header": document["header"],
            "revision": document["revision"],
            "prev": _kv_or_none(document["prev"]),
            "kv": _kv(document["kv"]),
        }

    async def get(self, key: str, consistency: str = "linearizable") -> Document | None:
        """The key-value dict, or None when the key does not exist."""
        params = self._timeout_param()
        params["consistency"] = consistency
        try:
            document = await self._call("GET", _key_path(key), params=params)
        except ConcordClientError as error:
            if error.code == "key_not_found":
                return None
            raise
        return _kv(document["kv"])

    async def delete(
        self,
        key: str,
        *,
        prev_revision: int | None = None,
        prev_value: bytes | str | None = None,
        request_id: str | None = None,
    ) -> Document | None:
        """Delete the key; ``{"header", "revision", "prev"}``, or None when it was absent."""
        params = self._timeout_param()
        headers = {REQUEST_ID_HEADER: _request_id(request_id)}
        if prev_revision is not None:
            params["prev_revision"] = str(prev_revision)
        if prev_value is not None:
            encoded = base64.b64encode(_as_bytes(prev_value)).decode("ascii")
            headers[PREV_VALUE_B64_HEADER] = encoded
        try:
            document = await self._call("DELETE", _key_path(key), params=params, headers=headers)
        except ConcordClientError as error:
            if error.code == "key_not_found":
                return None
            raise
        return {
            "header": document["header"],
            "revision": document["revision"],
            "prev": _kv_or_none(document["prev"]),
        }

    async def cas(
        self, key: str, expected: bytes | str, new: bytes | str, *, request_id: str | None = None
    ) -> Document:
        """Write ``new`` only if the key holds ``expected`` (``compare_failed`` otherwise)."""
        return await self.put(key, new, prev_value=expected, request_id=request_id)

    async def list(
        self, prefix: str = "", limit: int | None = None, consistency: str = "linearizable"
    ) -> Document:
        """Keys starting with ``prefix`` in key order: ``{"header", "kvs", "more"}``."""
        params = self._timeout_param()
        params["prefix"] = prefix
        params["consistency"] = consistency
        if limit is not None:
            params["limit"] = str(limit)
        document = await self._call("GET", "/v1/kv", params=params)
        kvs = [_kv(item) for item in document["kvs"]]
        return {"header": document["header"], "kvs": kvs, "more": bool(document["more"])}

    async def batch(
        self,
        ops: Iterable[Mapping[str, Any]],
        *,
        minimal: bool = False,
        request_id: str | None = None,
    ) -> BatchResults:
        """Apply ``ops`` in order as one batch (one Raft log entry); a result per op.

        An op is ``{"op": "put", "key", "value"}`` (optionally ``prev_revision``,
        ``prev_value`` or ``create_only``), ``{"op": "delete", "key"}`` (optionally
        ``prev_revision`` or ``prev_value``) or ``{"op": "get", "key"}``; values are bytes or
        str. A result is ``{"ok": True, "revision", "prev", "kv"}`` for a put (``"prev"`` only
        for a delete; only ``"revision"`` when ``minimal``), ``{"ok": True, "kv"}`` for a get,
        or ``{"ok": False, "error": "compare_failed" | "key_not_found"}`` (with ``"current"``
        for ``compare_failed``). It is not a transaction: a failed op leaves the others
        applied. A malformed op raises ``ValueError`` naming its index before anything is
        sent; a refused batch (``bad_request``, ``too_large``) applied nothing.
        """
        documents = [batch_op_document(op, f"ops[{i}]") for i, op in enumerate(ops)]
        if not documents:
            raise ValueError("a batch needs at least one op")
        body, content_type = self._encoded({"ops": documents})
        headers = {REQUEST_ID_HEADER: _request_id(request_id)}
        if minimal:
            headers["Prefer"] = "return=minimal"
        answer = await self._call("POST", BATCH_PATH, params=self._timeout_param(),
                                  headers=headers, body=body, content_type=content_type)
        results = answer.get("results")
        if not isinstance(results, list) or len(results) != len(documents):
            raise ConcordClientError("bad_response", "the batch answer has no result per op",
                                     200, False, False, request_id=headers[REQUEST_ID_HEADER])
        return [_batch_result(result) for result in results]

    async def put_many(self, items: Mapping[str, bytes | str], *,
                       request_id: str | None = None) -> dict[str, int]:
        """Write every key of ``items`` in one batch; each key's new ``mod_revision``."""
        results = await self.batch(
            ({"op": "put", "key": key, "value": value} for key, value in items.items()),
            minimal=True, request_id=request_id)
        return {key: result["revision"] for key, result in zip(items, results, strict=True)}

    # -- node and cluster ------------------------------------------------------------------

    async def status(self) -> Document:
        """The answering node's status (its id, role, term, leader, indexes, ...)."""
        document = await self._call("GET", "/v1/status")
        status: Document = document["status"]
        return status

    async def members(self) -> Members:
        document = await self._call("GET", "/v1/cluster/members")
        members: Members = document["members"]
        return members

    async def add_member(
        self, node_id: str, peer_url: str, client_url: str, *, learner: bool = False
    ) -> Members:
        """Add a member (as a learner, promoted once caught up unless ``learner``)."""
        body, content_type = self._encoded(
            {"id": node_id, "peer_url": peer_url, "client_url": client_url, "learner": learner}
        )
        document = await self._call(
            "POST", "/v1/cluster/members", params=self._timeout_param(), body=body,
            content_type=content_type,
        )
        members: Members = document["members"]
        return members

    async def remove_member(self, node_id: str) -> Members:
        path = "/v1/cluster/members/" + quote(node_id, safe="")
        document = await self._call("DELETE", path, params=self._timeout_param())
        members: Members = document["members"]
        return members

    async def transfer_leader(self, target: str | None = None) -> str:
        """Hand leadership to ``target`` (or the most caught-up voter); the new leader's id."""
        body, content_type = self._encoded({"target": target})
        document = await self._call(
            "POST", "/v1/cluster/leader", params=self._timeout_param(), body=body,
            content_type=content_type,
        )
        leader: str = document["leader"]
        return leader

    async def ready(self) -> bool:
        """Whether some endpoint reports itself ready (a leader is known, state caught up)."""
        for endpoint in self._endpoints:
            try:
                status, _ = await self._exchange(endpoint, "GET", "/ready", {}, {}, None, None)
            except (_Unreachable, ConcordClientError):
                continue
            if status == 200:
                return True
        return False

    # -- transport -------------------------------------------------------------------------

    def _timeout_param(self) -> dict[str, str]:
        timeout_ms = max(1, min(round(self._timeout_s * 1000), MAX_TIMEOUT_MS))
        return {"timeout_ms": str(timeout_ms)}

    def _encoded(self, document: Document) -> tuple[bytes, str]:
        """A metadata body in the client's encoding: (body, content type)."""
        if self._msgpack:
            return msgpack_codec.packb(document), MSGPACK_MEDIA_TYPE
        return json.dumps(document).encode("utf-8"), JSON_MEDIA_TYPE

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> Document:
        """Send the request to the endpoints in turn until one answers it; its document."""
        request_headers = dict(headers or {})
        request_id = request_headers.get(REQUEST_ID_HEADER)
        all_definite = True
        last_error: ConcordClientError | None = None
        for attempt in range(self._retries + 1):
            if attempt > 0 and last_error is not None and last_error.status != 0:
                await asyncio.sleep(min(BACKOFF_INITIAL_S * 2 ** (attempt - 1), BACKOFF_MAX_S))
            index = (self._preferred + attempt) % len(self._endpoints)
            endpoint = self._endpoints[index]
            try:
                status, document = await self._exchange(
                    endpoint, method, path, params or {}, request_headers, body, content_type
                )
            except _Unreachable as failure:
                all_definite = all_definite and not failure.sent
                last_error = ConcordClientError(
                    "unavailable", f"{endpoint}: {failure.reason}", 0, True, all_definite,
                    request_id=request_id,
                )
                continue
            if status < 400:
                self._preferred = index
                return document
            error = _error_from(status, document, request_id)
            if not (error.retryable and error.definite):
                if not all_definite:
                    error.definite = False
                raise error
            last_error = error
        assert last_error is not None
        last_error.definite = last_error.definite and all_definite
        raise last_error

    async def _exchange(
        self,
        endpoint: str,
        method: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes | None,
        content_type: str | None,
    ) -> tuple[int, Document]:
        """One request to one endpoint: (status, decoded document)."""
        request_headers = dict(headers)
        request_headers["Accept"] = MSGPACK_MEDIA_TYPE if self._msgpack else JSON_MEDIA_TYPE
        if content_type is not None:
            request_headers["Content-Type"] = content_type
        url = URL(endpoint + path, encoded=True).update_query(params)
        timeout = aiohttp.ClientTimeout(
            total=self._timeout_s + CLIENT_MARGIN_S, sock_connect=CONNECT_TIMEOUT_S
        )
        try:
            async with self._client_session().request(
                method, url, data=body, headers=request_headers, timeout=timeout,
                allow_redirects=False,
            ) as answer:
                payload = await answer.read()
                return answer.status, _decode(answer.status, answer.content_type, payload)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
            raise _Unreachable(str(error) or type(error).__name__, sent=False) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                aiohttp.ClientPayloadError) as error:
            raise _Unreachable(str(error) or type(error).__name__, sent=True) from None
        except TimeoutError:
            raise ConcordClientError(
                "timeout", f"{endpoint} did not answer {method} {path} in time", 0, True, False,
                request_id=headers.get(REQUEST_ID_HEADER),
            ) from None

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS))
            # aiohttp silently re-sends a request once when a pooled connection drops before
            # the answer; a refused re-send would then look as if nothing was ever sent, and a
            # committed write would be reported as definitely failed. This client retries by
            # itself (same request id), so it wants every attempt's true outcome.
            session._retry_connection = False
            self._session = session
        return self._session


class ConcordClient:
    """A blocking client: an ``AsyncConcordClient`` on a private event loop thread."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout_s: float = 5.0,
        msgpack: bool = False,
        retries: int = 3,
    ) -> None:
        self._client = AsyncConcordClient(
            endpoints, timeout_s=timeout_s, msgpack=msgpack, retries=retries
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="concord-client", daemon=True
        )
        self._thread.start()
        self._closed = False

    def __enter__(self) -> ConcordClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close connections and stop the loop thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def put(
        self,
        key: str,
        value: bytes | str,
        *,
        prev_revision: int | None = None,
        prev_value: bytes | str | None = None,
        create_only: bool = False,
        request_id: str | None = None,
    ) -> Document:
        return self._run(self._client.put(
            key, value, prev_revision=prev_revision, prev_value=prev_value,
            create_only=create_only, request_id=request_id,
        ))

    def get(self, key: str, consistency: str = "linearizable") -> Document | None:
        return self._run(self._client.get(key, consistency))

    def delete(
        self,
        key: str,
        *,
        prev_revision: int | None = None,
        prev_value: bytes | str | None = None,
        request_id: str | None = None,
    ) -> Document | None:
        return self._run(self._client.delete(
            key, prev_revision=prev_revision, prev_value=prev_value, request_id=request_id
        ))

    def cas(
        self, key: str, expected: bytes | str, new: bytes | str, *, request_id: str | None = None
    ) -> Document:
        return self._run(self._client.cas(key, expected, new, request_id=request_id))

    def list(
        self, prefix: str = "", limit: int | None = None, consistency: str = "linearizable"
    ) -> Document:
        return self._run(self._client.list(prefix, limit, consistency))

    def batch(
        self,
        ops: Iterable[Mapping[str, Any]],
        *,
        minimal: bool = False,
        request_id: str | None = None,
    ) -> BatchResults:
        return self._run(self._client.batch(ops, minimal=minimal, request_id=request_id))

    def put_many(self, items: Mapping[str, bytes | str], *,
                 request_id: str | None = None) -> dict[str, int]:
        return self._run(self._client.put_many(items, request_id=request_id))

    def status(self) -> Document:
        return self._run(self._client.status())

    def members(self) -> Members:
        return self._run(self._client.members())

    def add_member(
        self, node_id: str, peer_url: str, client_url: str, *, learner: bool = False
    ) -> Members:
        return self._run(self._client.add_member(node_id, peer_url, client_url,
                                                 learner=learner))

    def remove_member(self, node_id: str) -> Members:
        return self._run(self._client.remove_member(node_id))

    def transfer_leader(self, target: str | None = None) -> str:
        return self._run(self._client.transfer_leader(target))

    def ready(self) -> bool:
        return self._run(self._client.ready())

    def _run(self, call: Coroutine[Any, Any, _T]) -> _T:
        if self._closed:
            call.close()
            raise RuntimeError("the client is closed")
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()


# -- helpers -------------------------------------------------------------------------------


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _request_id(given: str | None) -> str:
    if given is None:
        return uuid.uuid4().hex
    if not is_valid_request_id(given):
        raise ValueError(f"invalid request id {given!r}")
    return given


def _key_path(key: str) -> str:
    if not key:
        raise ValueError("the key must not be empty")
    return kv_key_path(key)


def _kv(document: Document) -> Document:
    return {
        "key": document["key"],
        "value": decode_value(document["value"], document["value_encoding"]),
        "create_revision": document["create_revision"],
        "mod_revision": document["mod_revision"],
        "version": document["version"],
    }


def _kv_or_none(document: Document | None) -> Document | None:
    return None if document is None else _kv(document)


def batch_op_document(op: Mapping[str, Any], where: str) -> Document:
    """One op of ``batch`` as the server's document (values as text or base64); ValueError
    starting with ``where`` for a malformed op."""
    if not isinstance(op, Mapping):
        raise ValueError(f"{where}: an op is a mapping like {{'op': 'put', 'key': ...}}")
    kind = op.get("op")
    fields = _BATCH_OP_FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise ValueError(f"{where}.op: must be 'put', 'delete' or 'get', got {kind!r}")
    unknown = sorted(str(name) for name in op if name not in fields)
    if unknown:
        raise ValueError(f"{where}: unknown fields {unknown} for a {kind} "
                         f"(known: {sorted(fields)})")
    key = op.get("key")
    if not isinstance(key, str) or not key:
        raise ValueError(f"{where}.key: must be a non-empty str")
    document: Document = {"op": kind, "key": key}
    for name, encoding_name in (("value", "value_encoding"),
                                ("prev_value", "prev_value_encoding")):
        if name in op:
            value = op[name]
            if not isinstance(value, bytes | str):
                raise ValueError(f"{where}.{name}: must be bytes or str")
            document[name], document[encoding_name] = encode_value(_as_bytes(value))
    if kind == "put" and "value" not in op:
        raise ValueError(f"{where}.value: required for a put")
    if op.get("prev_revision") is not None:
        document["prev_revision"] = op["prev_revision"]
    if op.get("create_only"):
        document["create_only"] = True
    return document


def _batch_result(document: object) -> Document:
    """A batch result with its kvs decoded (values as bytes)."""
    if not isinstance(document, dict) or not isinstance(document.get("ok"), bool):
        raise ConcordClientError("bad_response", f"not a batch result: {document!r}", 200,
                                 False, False)
    result: Document = dict(document)
    for name in ("prev", "kv", "current"):
        if name in result:
            result[name] = _kv_or_none(result[name])
    return result


def _decode(status: int, content_type: str, payload: bytes) -> Document:
    """The answer's JSON or msgpack document; {} for an error answer in another media type
    (a proxy's page, say), which the caller reports by its status."""
    try:
        if content_type == MSGPACK_MEDIA_TYPE:
            document = msgpack_codec.unpackb(payload, raw=False)
        elif content_type == JSON_MEDIA_TYPE:
            document = json.loads(payload)
        elif status >= 400:
            return {}
        else:
            raise ValueError("not a JSON or msgpack answer")
    except ValueError as error:
        raise ConcordClientError(
            "bad_response", f"undecodable {content_type} answer: {error}", status, False, False
        ) from None
    if not isinstance(document, dict):
        raise ConcordClientError(
            "bad_response", f"the answer is not an object: {document!r}", status, False, False
        )
    return document


def _error_from(status: int, document: Document, request_id: str | None) -> ConcordClientError:
    details = document.get("error")
    if not isinstance(details, dict):
        return ConcordClientError(
            f"http_{status}", f"unexpected HTTP {status} answer", status, False, False,
            request_id=request_id,
        )
    current = details.get("current")
    return ConcordClientError(
        str(details.get("code", "unknown")),
        str(details.get("message", "")),
        status,
        bool(details.get("retryable", False)),
        bool(details.get("definite", False)),
        current=_kv(current) if isinstance(current, dict) else None,
        request_id=request_id,
    )
