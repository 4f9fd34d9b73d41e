"""The client-facing HTTP API of one node: routes, validation, encoding and the error model.

It owns the translation between HTTP and ``NodeService``: parsing and bounding every input
(keys, values, query parameters, request ids, timeouts, metadata bodies), choosing JSON or
msgpack, stamping every answer with the response header, mapping ``ConcordError`` classes to
HTTP statuses, forwarding what only the leader can serve, and counting requests. It never
touches Raft or the state machine directly. ``docs/api.md`` is the reference.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import weakref
from collections.abc import Awaitable, Coroutine, Mapping
from typing import Any, Final, TypeVar

import msgpack
import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDictProxy
from yarl import URL

from concord.api import (
    CLUSTER_ID_HEADER,
    CREATE_REVISION_HEADER,
    JSON_MEDIA_TYPE,
    MAX_REQUEST_ID_CHARS,
    MAX_REVISION,
    MAX_TIMEOUT_MS,
    MEMBER_ID_HEADER,
    MOD_REVISION_HEADER,
    MSGPACK_MEDIA_TYPE,
    OCTET_STREAM_MEDIA_TYPE,
    PREV_VALUE_B64_HEADER,
    REQUEST_ID_HEADER,
    REVISION_HEADER,
    TERM_HEADER,
    VERSION_HEADER,
    decode_base64,
    encode_value,
    is_valid_request_id,
)
from concord.api.forward import LeaderForwarder
from concord.config import LimitSettings
from concord.kv.commands import Command, Condition, ConditionKind, Delete, KeyValue, Put
from concord.observability.metrics import NodeMetrics
from concord.runtime.dkv import DkvDriver
from concord.runtime.errors import (
    BadRequest,
    CompareFailed,
    ConcordError,
    Forbidden,
    KeyNotFound,
    NotFound,
    NotLeaderHere,
    TimedOut,
    TooLarge,
)
from concord.runtime.service import (
    SYSTEM_KEY_PREFIX,
    MemberHealth,
    MemberInfo,
    MembershipService,
    NodeService,
    ResponseHeader,
)
from concord.transport.faults import FaultInjector

log = structlog.get_logger("concord.api")

_T = TypeVar("_T")

BACKSTOP_GRACE_S: Final = 0.2
"""The service is asked to answer within the request timeout; the API stops waiting this much
later and answers 504 itself, so a stuck service cannot hold a client forever."""

BACKSTOP_SWEEP_S: Final = 0.1
"""How often the backstop looks for overrun calls while any are waiting (so it cuts one short
at most this much after its deadline)."""

PREFER_HEADER: Final = "Prefer"
PREFERENCE_APPLIED_HEADER: Final = "Preference-Applied"
RETURN_MINIMAL: Final = "return=minimal"
"""RFC 7240: a PUT sent with ``Prefer: return=minimal`` is answered ``{"header", "revision"}``
(the written kv's ``mod_revision`` is ``revision``), without ``prev`` and ``kv``."""

MIN_LINE_BYTES: Final = 8190  # aiohttp's default request-line bound
QUERY_ALLOWANCE_BYTES: Final = 8192  # room for the query string beside a maximal key

_INT_PATTERN: Final = re.compile(r"[0-9]{1,18}")
_TRUE_WORDS: Final = frozenset({"1", "true"})
_FALSE_WORDS: Final = frozenset({"0", "false"})

_PUT_PARAMS: Final = frozenset({"prev_revision", "prev_value", "create_only", "timeout_ms"})
_GET_PARAMS: Final = frozenset({"consistency", "raw", "timeout_ms"})
_DELETE_PARAMS: Final = frozenset({"prev_revision", "prev_value", "timeout_ms"})
_LIST_PARAMS: Final = frozenset({"prefix", "limit", "consistency", "timeout_ms"})
_TIMEOUT_PARAMS: Final = frozenset({"timeout_ms"})
_NO_PARAMS: Final[frozenset[str]] = frozenset()

_MEMBER_FIELDS: Final = frozenset({"id", "peer_url", "client_url", "learner"})
_LEADER_FIELDS: Final = frozenset({"target"})


class MethodNotAllowed(ConcordError):
    status, code, retryable, definite = 405, "method_not_allowed", False, True

    def __init__(self, message: str, allowed_methods: str) -> None:
        super().__init__(message)
        self.allowed_methods = allowed_methods


class CompareFailedOn(CompareFailed):
    """A failed condition together with the key's current state (None when absent)."""

    def __init__(self, message: str, current: KeyValue | None) -> None:
        super().__init__(message)
        self.current = current


def create_client_app(
    service: NodeService,
    *,
    limits: LimitSettings,
    metrics: NodeMetrics | None,
    faults: FaultInjector | None,
    forwarder: LeaderForwarder,
    membership: MembershipService | None = None,
    dkv: DkvDriver | None = None,
) -> web.Application:
    """The aiohttp application serving the client API of ``service``.

    ``faults`` None disables ``/v1/debug/faults`` (403); ``metrics`` None disables
    ``/metrics`` (404) and request counting; ``membership`` None leaves the failure
    detectors' fields out of ``/v1/cluster/members`` and disables ``/v1/cluster/events``;
    ``dkv`` None leaves the quorum store's routes (``/v1/dkv``) out.
    """
    api = ClientApi(service, limits, metrics, faults, forwarder, membership)
    app = web.Application(
        middlewares=[api.middleware],
        client_max_size=limits.max_request_bytes,
        handler_args={
            "max_line_size": max(MIN_LINE_BYTES, 3 * limits.max_key_bytes + QUERY_ALLOWANCE_BYTES)
        },
    )
    router = app.router
    from concord.api.batch_http import BatchApi  # it builds on this module's helpers

    BatchApi(service, api).register(router)
    router.add_get("/v1/kv", api.list_keys)
    router.add_put("/v1/kv/{key:.*}", api.put_key)
    router.add_get("/v1/kv/{key:.*}", api.get_key)
    router.add_delete("/v1/kv/{key:.*}", api.delete_key)
    router.add_get("/v1/status", api.status)
    router.add_get("/v1/cluster/members", api.list_members)
    router.add_post("/v1/cluster/members", api.add_member)
    router.add_delete("/v1/cluster/members/{id}", api.remove_member)
    router.add_get("/v1/cluster/events", api.stream_membership_events)
    router.add_post("/v1/cluster/leader", api.transfer_leader)
    router.add_get("/v1/debug/faults", api.describe_faults)
    router.add_put("/v1/debug/faults", api.configure_faults)
    router.add_delete("/v1/debug/faults", api.clear_faults)
    router.add_get("/health", api.health)
    router.add_get("/ready", api.ready)
    router.add_get("/metrics", api.render_metrics)
    if dkv is not None:
        from concord.api.dkv_http import DkvApi  # it builds on this module's helpers

        DkvApi(dkv, api).register(router)
    return app


class ClientApi:
    """The handlers and middleware of one node's client API."""

    __slots__ = ("_faults", "_forwarder", "_limits", "_membership", "_metrics", "_service")

    def __init__(
        self,
        service: NodeService,
        limits: LimitSettings,
        metrics: NodeMetrics | None,
        faults: FaultInjector | None,
        forwarder: LeaderForwarder,
        membership: MembershipService | None,
    ) -> None:
        self._membership = membership
        self._service = service
        self._limits = limits
        self._metrics = metrics
        self._faults = faults
        self._forwarder = forwarder

    @property
    def limits(self) -> LimitSettings:
        return self._limits

    @property
    def forwarder(self) -> LeaderForwarder:
        return self._forwarder

    def answer(
        self, request: web.Request, document: dict[str, Any], *, status: int = 200
    ) -> web.Response:
        """``document`` with the response header, as JSON or msgpack (for other route sets
        built on this one, such as ``concord.api.dkv_http``)."""
        return self._answer(request, document, status=status)

    # -- middleware ------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Turn every failure into an error answer, stamp the header, count the request."""
        started_s = time.perf_counter()
        response: web.StreamResponse
        try:
            response = await handler(request)
        except ConcordError as error:
            response = self._error_answer(request, error)
        except web.HTTPException as http_error:
            converted = _from_http_exception(request, http_error, self._limits.max_request_bytes)
            response = self._error_answer(request, converted)
        except Exception as unexpected:
            log.exception("client request failed", method=request.method, path=request.path)
            response = self._error_answer(
                request, ConcordError(f"internal error: {type(unexpected).__name__}")
            )
        if not response.prepared and CLUSTER_ID_HEADER not in response.headers:
            # answers built by _answer, relayed answers and streams carry theirs already
            _stamp_header(response, self._service.header())
        self._count(request, response.status, time.perf_counter() - started_s)
        return response

    def _count(self, request: web.Request, status: int, elapsed_s: float) -> None:
        if self._metrics is None:
            return
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        self._metrics.requests.record(request.method, route, str(status), elapsed_s)

    # -- key-value -------------------------------------------------------------------------

    async def put_key(self, request: web.Request) -> web.Response:
        key = self._write_key(request)
        params = _query(request, _PUT_PARAMS)
        timeout_s = _timeout_s(params, self._limits)
        condition = _condition(params, request.headers)
        request_id = _request_id(request)
        value = await request.read()
        if len(value) > self._limits.max_value_bytes:
            raise TooLarge(
                f"value is {len(value)} bytes; the limit is {self._limits.max_value_bytes}"
            )
        command = Command(Put(key, value, condition), request_id)
        try:
            result = await _bounded(self._service.write(command, timeout_s), timeout_s)
        except NotLeaderHere:
            return await self._forwarder.forward(request, value, timeout_s=timeout_s)
        if not result.succeeded:
            raise CompareFailedOn(f"the condition on key {key!r} does not hold", result.current)
        assert result.current is not None, "a successful put leaves the key present"
        if _prefers_minimal(request):
            # the value is what the client sent, and the new mod_revision is the revision
            response = self._answer(request, {"revision": result.revision})
            response.headers[PREFERENCE_APPLIED_HEADER] = RETURN_MINIMAL
            return response
        return self._answer(
            request,
            {
                "revision": result.revision,
                "prev": _kv_document_or_none(result.prev),
                "kv": _kv_document(result.current),
            },
        )

    async def get_key(self, request: web.Request) -> web.Response:
        key = self._read_key(request)
        params = _query(request, _GET_PARAMS)
        timeout_s = _timeout_s(params, self._limits)
        linearizable = _linearizable(params)
        raw = _bool_param(params, "raw")
        try:
            kv = await _bounded(self._service.get(key, linearizable, timeout_s), timeout_s)
        except NotLeaderHere:
            return await self._forwarder.forward(request, b"", timeout_s=timeout_s)
        if kv is None:
            raise KeyNotFound(f"key {key!r} not found")
        if not raw:
            return self._answer(request, {"kv": _kv_document(kv)})
        response = web.Response(body=kv.value, content_type=OCTET_STREAM_MEDIA_TYPE)
        response.headers[CREATE_REVISION_HEADER] = str(kv.create_revision)
        response.headers[MOD_REVISION_HEADER] = str(kv.mod_revision)
        response.headers[VERSION_HEADER] = str(kv.version)
        return response

    async def delete_key(self, request: web.Request) -> web.Response:
        key = self._write_key(request)
        params = _query(request, _DELETE_PARAMS)
        timeout_s = _timeout_s(params, self._limits)
        condition = _condition(params, request.headers)
        command = Command(Delete(key, condition), _request_id(request))
        try:
            result = await _bounded(self._service.write(command, timeout_s), timeout_s)
        except NotLeaderHere:
            return await self._forwarder.forward(request, b"", timeout_s=timeout_s)
        if not result.succeeded:
            if result.current is None:
                raise KeyNotFound(f"key {key!r} not found")
            raise CompareFailedOn(f"the condition on key {key!r} does not hold", result.current)
        return self._answer(
            request, {"revision": result.revision, "prev": _kv_document_or_none(result.prev)}
        )

    async def list_keys(self, request: web.Request) -> web.Response:
        params = _query(request, _LIST_PARAMS)
        timeout_s = _timeout_s(params, self._limits)
        linearizable = _linearizable(params)
        prefix = params.get("prefix", "")
        _check_key_size(prefix, "prefix", self._limits)
        limit = self._limits.max_range_limit
        if "limit" in params:
            limit = _int_param(params, "limit", minimum=1, maximum=self._limits.max_range_limit)
        try:
            kvs, more = await _bounded(
                self._service.range(prefix, limit, linearizable, timeout_s), timeout_s
            )
        except NotLeaderHere:
            return await self._forwarder.forward(request, b"", timeout_s=timeout_s)
        return self._answer(request, {"kvs": [_kv_document(kv) for kv in kvs], "more": more})

    # -- node and cluster ------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        _query(request, _NO_PARAMS)
        return self._answer(request, {"status": self._service.status()})

    async def health(self, request: web.Request) -> web.Response:
        return self._answer(request, {"alive": True})

    async def ready(self, request: web.Request) -> web.Response:
        is_ready = self._service.is_ready()
        return self._answer(request, {"ready": is_ready}, status=200 if is_ready else 503)

    async def render_metrics(self, request: web.Request) -> web.Response:
        if self._metrics is None:
            raise NotFound("metrics are not enabled on this node")
        body, content_type = self._metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def list_members(self, request: web.Request) -> web.Response:
        _query(request, _NO_PARAMS)
        return self._members_answer(request)

    async def stream_membership_events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: one ``member`` event per membership change this node sees,
        after a ``members`` event with its current view; a comment every
        ``SSE_KEEPALIVE_S`` keeps idle connections open."""
        _query(request, _NO_PARAMS)
        membership = self._membership
        if membership is None:
            raise NotFound("membership is disabled on this node")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        _stamp_header(response, self._service.header())
        queue = membership.subscribe()
        try:
            await response.prepare(request)
            view = [_health_document(h) for h in membership.member_health()]
            await response.write(_sse("members", {"members": view}))
            while True:
                try:
                    async with asyncio.timeout(SSE_KEEPALIVE_S):
                        event = await queue.get()
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if event is None:
                    break
                await response.write(_sse("member", event))
        except ConnectionResetError:
            pass  # the reader went away
        finally:
            membership.unsubscribe(queue)
        return response

    async def add_member(self, request: web.Request) -> web.Response:
        params = _query(request, _TIMEOUT_PARAMS)
        timeout_s = _timeout_s(params, self._limits)
        body = await request.read()
        document = _metadata(request, body, _MEMBER_FIELDS, empty_allowed=False)
        node_id = _required_str(document, "id")
        peer_url = _url_field(document, "peer_url")
        client_url = _url_field(document, "client_url")
        learner = document.get("learner", False)
        if not isinstance(learner, bool):
            raise BadRequest("field 'learner' must be true or false")
        try:
            await _bounded(
                self._service.add_member(node_id, peer_url, client_url, learner, timeout_s),
                timeout_s,
            )
        except NotLeaderHere:
            return await self._forwarder.forward(request, body, timeout_s=timeout_s)
        return self._members_answer(request)

    async def remove_member(self, request: web.Request) -> web.Response:
        params = _query(request, _TIMEOUT_PARAMS)
        timeout_s = _timeout_s(params, self._limits)
        node_id = request.match_info["id"]
        try:
            await _bounded(self._service.remove_member(node_id, timeout_s), timeout_s)
        except NotLeaderHere:
            return await self._forwarder.forward(request, b"", timeout_s=timeout_s)
        return self._members_answer(request)

    async def transfer_leader(self, request: web.Request) -> web.Response:
        params = _query(request, _TIMEOUT_PARAMS)
        timeout_s = _timeout_s(params, self._limits)
        body = await request.read()
        document = _metadata(request, body, _LEADER_FIELDS, empty_allowed=True)
        target = document.get("target")
        if target is not None and (not isinstance(target, str) or not target):
            raise BadRequest("field 'target' must be a member id or null")
        try:
            leader = await _bounded(
                self._service.transfer_leadership(target, timeout_s), timeout_s
            )
        except NotLeaderHere:
            return await self._forwarder.forward(request, body, timeout_s=timeout_s)
        return self._answer(request, {"leader": leader})

    # -- fault injection -------------------------------------------------------------------

    async def describe_faults(self, request: web.Request) -> web.Response:
        _query(request, _NO_PARAMS)
        return self._answer(request, {"faults": self._enabled_faults().describe()})

    async def configure_faults(self, request: web.Request) -> web.Response:
        _query(request, _NO_PARAMS)
        faults = self._enabled_faults()
        document = _metadata(request, await request.read(), None, empty_allowed=False)
        try:
            faults.configure(**document)
        except (ValueError, TypeError) as error:
            raise BadRequest(f"bad fault settings: {error}") from None
        return self._answer(request, {"faults": faults.describe()})

    async def clear_faults(self, request: web.Request) -> web.Response:
        _query(request, _NO_PARAMS)
        faults = self._enabled_faults()
        faults.clear()
        return self._answer(request, {"faults": faults.describe()})

    def _enabled_faults(self) -> FaultInjector:
        if self._faults is None:
            raise Forbidden("fault injection is disabled on this node")
        return self._faults

    # -- helpers ---------------------------------------------------------------------------

    def _read_key(self, request: web.Request) -> str:
        key = request.match_info["key"]
        if not key:
            raise BadRequest("the key must not be empty")
        _check_key_size(key, "key", self._limits)
        return key

    def _write_key(self, request: web.Request) -> str:
        key = self._read_key(request)
        if key.startswith(SYSTEM_KEY_PREFIX):
            raise BadRequest(f"keys under {SYSTEM_KEY_PREFIX!r} belong to Concord itself")
        return key

    def _members_answer(self, request: web.Request) -> web.Response:
        members = [_member_document(member) for member in self._service.members()]
        if self._membership is None:
            return self._answer(request, {"members": members})
        health = {h.node_id: _health_document(h) for h in self._membership.member_health()}
        for document in members:
            document.update(health.pop(document["id"], _UNKNOWN_HEALTH))
        # nodes SWIM hears from that are not (or no longer) cluster members: a joining node
        # before it is added, a removed node still running
        others = [{"id": node_id, "peer_url": extra["address"], **extra}
                  for node_id, extra in sorted(health.items())]
        return self._answer(request, {"members": members, "non_members": others,
                                      "detector": self._membership.detector})

    def _answer(
        self, request: web.Request, document: dict[str, Any], *, status: int = 200
    ) -> web.Response:
        header = self._service.header()
        body = {"header": _header_document(header), **document}
        if _wants_msgpack(request):
            payload = msgpack.packb(body, use_bin_type=True)
            response = web.Response(status=status, body=payload, content_type=MSGPACK_MEDIA_TYPE)
        else:
            payload = _json_bytes(body)
            response = web.Response(status=status, body=payload, content_type=JSON_MEDIA_TYPE)
        _stamp_header(response, header)
        return response

    def _error_answer(self, request: web.Request, error: ConcordError) -> web.Response:
        details: dict[str, Any] = {
            "code": error.code,
            "message": error.message,
            "retryable": error.retryable,
            "definite": error.definite,
        }
        if isinstance(error, CompareFailedOn):
            details["current"] = _kv_document_or_none(error.current)
        response = self._answer(request, {"error": details}, status=error.status)
        if isinstance(error, MethodNotAllowed):
            response.headers["Allow"] = error.allowed_methods
        return response


# -- request parsing -------------------------------------------------------------------------


def _query(request: web.Request, allowed: frozenset[str]) -> dict[str, str]:
    """The query parameters, each at most once and all of them known."""
    params: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise BadRequest(f"unknown query parameter {name!r} (known: {known})")
        if name in params:
            raise BadRequest(f"query parameter {name!r} given more than once")
        params[name] = value
    return params


def _int_param(params: Mapping[str, str], name: str, *, minimum: int, maximum: int) -> int:
    text = params[name]
    if not _INT_PATTERN.fullmatch(text):
        raise BadRequest(f"{name} must be a decimal integer, got {text!r}")
    number = int(text)
    if not minimum <= number <= maximum:
        raise BadRequest(f"{name} must be between {minimum} and {maximum}, got {number}")
    return number


def _bool_param(params: Mapping[str, str], name: str) -> bool:
    text = params.get(name, "0").lower()
    if text in _TRUE_WORDS:
        return True
    if text in _FALSE_WORDS:
        return False
    raise BadRequest(f"{name} must be 1, 0, true or false, got {params[name]!r}")


def _linearizable(params: Mapping[str, str]) -> bool:
    match params.get("consistency", "linearizable"):
        case "linearizable":
            return True
        case "serializable":
            return False
        case other:
            raise BadRequest(f"consistency must be linearizable or serializable, got {other!r}")


def _timeout_s(params: Mapping[str, str], limits: LimitSettings) -> float:
    if "timeout_ms" not in params:
        return limits.request_timeout_ms / 1000
    return _int_param(params, "timeout_ms", minimum=1, maximum=MAX_TIMEOUT_MS) / 1000


def _condition(params: Mapping[str, str], headers: CIMultiDictProxy[str]) -> Condition | None:
    """The one condition a write may carry, from its query parameters and headers."""
    conditions: list[Condition] = []
    if "prev_revision" in params:
        revision = _int_param(params, "prev_revision", minimum=0, maximum=MAX_REVISION)
        conditions.append(Condition(ConditionKind.MOD_REVISION_EQUALS, revision=revision))
    if "prev_value" in params:
        value = _utf8(params["prev_value"], "prev_value")
        conditions.append(Condition(ConditionKind.VALUE_EQUALS, value=value))
    encoded_value = headers.getall(PREV_VALUE_B64_HEADER, [])
    if len(encoded_value) > 1:
        raise BadRequest(f"header {PREV_VALUE_B64_HEADER} given more than once")
    if encoded_value:
        try:
            value = decode_base64(encoded_value[0])
        except ValueError as error:
            raise BadRequest(f"header {PREV_VALUE_B64_HEADER}: {error}") from None
        conditions.append(Condition(ConditionKind.VALUE_EQUALS, value=value))
    if _bool_param(params, "create_only"):
        conditions.append(Condition(ConditionKind.ABSENT))
    if len(conditions) > 1:
        raise BadRequest(
            "give at most one condition: prev_revision, prev_value "
            f"(or {PREV_VALUE_B64_HEADER}), create_only"
        )
    return conditions[0] if conditions else None


def _request_id(request: web.Request) -> str:
    """The client's idempotency key, or "" (no de-duplication) when it sent none."""
    given = request.headers.getall(REQUEST_ID_HEADER, [])
    if not given:
        return ""
    if len(given) > 1 or not is_valid_request_id(given[0]):
        raise BadRequest(
            f"{REQUEST_ID_HEADER} must be one value of 1 to {MAX_REQUEST_ID_CHARS} printable "
            "ASCII characters without spaces"
        )
    return given[0]


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{what} is not valid UTF-8") from None


def _check_key_size(key: str, what: str, limits: LimitSettings) -> None:
    size_bytes = len(_utf8(key, what))
    if size_bytes > limits.max_key_bytes:
        raise TooLarge(f"{what} is {size_bytes} bytes; the limit is {limits.max_key_bytes}")


def _metadata(
    request: web.Request,
    body: bytes,
    fields: frozenset[str] | None,
    *,
    empty_allowed: bool,
) -> dict[str, Any]:
    """A JSON (default) or msgpack object body; ``fields`` None accepts any field names."""
    if not body:
        if empty_allowed:
            return {}
        raise BadRequest("the request body must be a JSON or msgpack object")
    document: object
    if request.content_type == MSGPACK_MEDIA_TYPE:
        try:
            document = msgpack.unpackb(body, raw=False, strict_map_key=True)
        except (ValueError, TypeError) as error:
            raise BadRequest(f"malformed msgpack body: {error}") from None
    else:
        try:
            document = json.loads(body)
        except ValueError as error:
            raise BadRequest(f"malformed JSON body: {error}") from None
    if not isinstance(document, dict) or not all(isinstance(name, str) for name in document):
        raise BadRequest("the request body must be an object with string field names")
    if fields is not None:
        unknown = sorted(set(document) - fields)
        if unknown:
            raise BadRequest(f"unknown fields {unknown} (known: {sorted(fields)})")
    return document


def _required_str(document: Mapping[str, Any], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"field {name!r} must be a non-empty string")
    return value


def _url_field(document: Mapping[str, Any], name: str) -> str:
    url = _required_str(document, name)
    try:
        parsed = URL(url)
    except ValueError:
        parsed = URL()
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise BadRequest(f"field {name!r} must be an http:// or https:// URL, got {url!r}")
    return url


def _wants_msgpack(request: web.Request) -> bool:
    accepted = request.headers.get("Accept", "")
    if "msgpack" not in accepted.lower():  # most requests: no need to parse the list
        return False
    return any(
        part.split(";", 1)[0].strip().lower() == MSGPACK_MEDIA_TYPE
        for part in accepted.split(",")
    )


def _prefers_minimal(request: web.Request) -> bool:
    """Whether one of the request's ``Prefer`` preferences is ``return=minimal``."""
    given = request.headers.getall(PREFER_HEADER, ())
    if given == [RETURN_MINIMAL]:  # what Concord's own clients send
        return True
    return any(
        "".join(part.split(";", 1)[0].split()).lower() == RETURN_MINIMAL
        for header in given
        for part in header.split(",")
    )


def _bounded(call: Awaitable[_T], timeout_s: float) -> Coroutine[Any, Any, _T]:
    """Await a service call, answering ``TimedOut`` if it overruns its timeout (the
    backstop's own coroutine, so the wait adds one frame to the handler's stack, not two)."""
    loop = asyncio.get_running_loop()
    backstop = _backstops.get(loop)
    if backstop is None:
        backstop = _backstops[loop] = _Backstop()
    return backstop.bound(call, timeout_s)


class _Wait:
    """One service call the backstop watches (its task held weakly: see ``_backstops``)."""

    __slots__ = ("deadline_s", "overran", "task")

    def __init__(self, task: asyncio.Task[Any], deadline_s: float) -> None:
        self.task = weakref.ref(task)
        self.deadline_s = deadline_s
        self.overran = False


class _Backstop:
    """Cuts short the service calls of one event loop that overran their timeout.

    One timer for every waiting call (instead of an ``asyncio.timeout`` each): while calls
    are waiting it fires every ``BACKSTOP_SWEEP_S`` and cancels the overrun calls' tasks;
    ``bound`` turns that cancellation into ``TimedOut``. It holds only the calls still
    waiting (a call leaves it when it ends), so registering one is a set insertion and a sweep
    looks at no more calls than are in flight. It holds no strong reference to its loop, so a
    closed loop and its backstop can be collected.
    """

    __slots__ = ("_timer", "_waiting")

    def __init__(self) -> None:
        self._waiting: set[_Wait] = set()
        self._timer: asyncio.TimerHandle | None = None

    async def bound(self, call: Awaitable[_T], timeout_s: float) -> _T:
        task = asyncio.current_task()
        assert task is not None, "service calls run in a task"
        loop = task.get_loop()
        wait = _Wait(task, loop.time() + timeout_s + BACKSTOP_GRACE_S)
        self._waiting.add(wait)
        if self._timer is None:
            self._timer = loop.call_later(BACKSTOP_SWEEP_S, self._sweep)
        try:
            return await call
        except asyncio.CancelledError:
            if wait.overran and task.uncancel() == 0:
                raise TimedOut(
                    f"no result within {timeout_s:g} s; a write may or may not have been applied"
                ) from None
            raise
        finally:
            self._waiting.discard(wait)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now_s = loop.time()
        overrun = [wait for wait in self._waiting if wait.deadline_s <= now_s]
        for wait in overrun:
            self._waiting.discard(wait)
            task = wait.task()
            if task is not None:
                wait.overran = True
                task.cancel()
        self._timer = loop.call_later(BACKSTOP_SWEEP_S, self._sweep) if self._waiting else None


_backstops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Backstop] = (
    weakref.WeakKeyDictionary())
"""The backstop of each event loop, dropped with its loop."""


def _from_http_exception(
    request: web.Request, http_error: web.HTTPException, max_request_bytes: int
) -> ConcordError:
    """The error-model equivalent of an answer aiohttp itself chose."""
    match http_error.status:
        case 404:
            return NotFound(f"no route for {request.method} {request.path}")
        case 405:
            allowed = http_error.headers.get("Allow", "")
            return MethodNotAllowed(
                f"{request.method} is not allowed on {request.path} (allowed: {allowed})",
                allowed,
            )
        case 413:
            return TooLarge(f"the request body exceeds {max_request_bytes} bytes")
        case 400:
            return BadRequest(http_error.text or "malformed request")
    error = ConcordError(http_error.text or http_error.reason)
    error.status = http_error.status
    error.code = "http_error"
    error.definite = True
    return error


# -- answer documents ------------------------------------------------------------------------


def _json_bytes(document: object) -> bytes:
    """``document`` as compact UTF-8 JSON (orjson: about a tenth of the stdlib's time for an
    answer; non-ASCII text is sent as UTF-8, not escaped; non-string keys become strings)."""
    return orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS)


def _header_document(header: ResponseHeader) -> dict[str, Any]:
    return {
        "cluster_id": header.cluster_id,
        "member_id": header.member_id,
        "term": header.term,
        "revision": header.revision,
    }


def _stamp_header(response: web.StreamResponse, header: ResponseHeader) -> None:
    """Add the response header as HTTP headers unless present (relayed answers keep theirs)."""
    assert not response.prepared, "the header is stamped before the answer is sent"
    response.headers.setdefault(CLUSTER_ID_HEADER, header.cluster_id)
    response.headers.setdefault(MEMBER_ID_HEADER, header.member_id)
    response.headers.setdefault(TERM_HEADER, str(header.term))
    response.headers.setdefault(REVISION_HEADER, str(header.revision))


def _kv_document(kv: KeyValue) -> dict[str, Any]:
    value, value_encoding = encode_value(kv.value)
    return {
        "key": kv.key,
        "value": value,
        "value_encoding": value_encoding,
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
    }


def _kv_document_or_none(kv: KeyValue | None) -> dict[str, Any] | None:
    return None if kv is None else _kv_document(kv)


_UNKNOWN_HEALTH: Final[dict[str, Any]] = {
    "state": None, "incarnation": None, "available": None, "phi": None,
    "heartbeat_verdict": None, "last_heard_ms_ago": None, "clock_offset_ms": None,
    "clock_uncertainty_ms": None,
}
"""The failure detectors' fields of a Raft member SWIM has not heard of."""

SSE_KEEPALIVE_S: Final = 15.0


def _health_document(health: MemberHealth) -> dict[str, Any]:
    heartbeat = health.heartbeat_available
    return {
        "state": health.state,
        "incarnation": health.incarnation,
        "address": health.address,
        "available": health.available,
        "phi": health.phi,
        "heartbeat_verdict": None if heartbeat is None else (
            "available" if heartbeat else "suspect"),
        "last_heard_ms_ago": health.last_heard_ms_ago,
        "clock_offset_ms": health.clock_offset_ms,
        "clock_uncertainty_ms": health.clock_uncertainty_ms,
    }


def _sse(event: str, data: Mapping[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _json_bytes(data) + b"\n\n"


def _member_document(member: MemberInfo) -> dict[str, Any]:
    return {
        "id": member.node_id,
        "peer_url": member.peer_url,
        "client_url": member.client_url,
        "role": member.role,
        "is_leader": member.is_leader,
    }
