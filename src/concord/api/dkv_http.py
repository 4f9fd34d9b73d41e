"""The quorum store's client API: ``/v1/dkv/{bucket}/{key}``, bucket properties, status.

Values travel as in ``/v1/kv``: a PUT body is the raw value; a GET answers with every
sibling, each as UTF-8 text or base64 (``value_encoding``). The causal context is an opaque
token (``X-Concord-Context``) that a GET returns and a PUT or DELETE sends back to supersede
what it read; without it a write is concurrent with everything stored and becomes a sibling.
Parsing, bounds and the error model are shared with ``concord.api.http``. ``docs/dkv.md``
is the reference.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from concord.api import CONTEXT_HEADER, encode_value
from concord.api.http import (
    ClientApi,
    _bool_param,
    _bounded,
    _check_key_size,
    _int_param,
    _metadata,
    _query,
    _timeout_s,
)
from concord.dkv.config import BucketProps
from concord.dkv.node import OpResult
from concord.dkv.versions import EMPTY_CONTEXT, Sibling, VersionedObject, VersionVector
from concord.runtime.dkv import BUCKET_KEY_PREFIX, DkvDriver
from concord.runtime.errors import (
    BadRequest,
    KeyNotFound,
    NotLeaderHere,
    QuorumNotReached,
    TooLarge,
    TooManySiblings,
)
from concord.wire import DecodeError
from concord.wire.dkv_codec import decode_context, encode_context

_PUT_PARAMS: Final = frozenset({"n", "w", "timeout_ms"})
_GET_PARAMS: Final = frozenset({"n", "r", "explain", "timeout_ms"})
_DELETE_PARAMS: Final = frozenset({"n", "w", "timeout_ms"})
_BUCKET_FIELDS: Final = frozenset({"n", "r", "w", "lww"})


class DkvApi:
    """The ``/v1/dkv`` handlers of one node, answering through the node's ``ClientApi``."""

    __slots__ = ("_api", "_dkv")

    def __init__(self, dkv: DkvDriver, api: ClientApi) -> None:
        self._dkv = dkv
        self._api = api

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v1/dkv", self.status)
        router.add_get("/v1/dkv/{bucket}", self.get_bucket)
        router.add_put("/v1/dkv/{bucket}", self.put_bucket)
        router.add_put("/v1/dkv/{bucket}/{key:.+}", self.put_key)
        router.add_get("/v1/dkv/{bucket}/{key:.+}", self.get_key)
        router.add_delete("/v1/dkv/{bucket}/{key:.+}", self.delete_key)

    # -- keys ------------------------------------------------------------------------------

    async def put_key(self, request: web.Request) -> web.Response:
        bucket, key = self._bucket_and_key(request)
        params = _query(request, _PUT_PARAMS)
        timeout_s = _timeout_s(params, self._api.limits)
        w = self._replica_count(params, bucket, "w")
        context = _context(request)
        value = await request.read()
        limit = self._api.limits.max_value_bytes
        if len(value) > limit:
            raise TooLarge(f"value is {len(value)} bytes; the limit is {limit}")
        result = await _bounded(self._dkv.put(bucket, key, value, context, w=w), timeout_s)
        return self._write_answer(request, result, "put")

    async def delete_key(self, request: web.Request) -> web.Response:
        bucket, key = self._bucket_and_key(request)
        params = _query(request, _DELETE_PARAMS)
        timeout_s = _timeout_s(params, self._api.limits)
        w = self._replica_count(params, bucket, "w")
        context = _context(request)
        result = await _bounded(self._dkv.put(bucket, key, None, context, w=w), timeout_s)
        return self._write_answer(request, result, "delete")

    async def get_key(self, request: web.Request) -> web.Response:
        bucket, key = self._bucket_and_key(request)
        params = _query(request, _GET_PARAMS)
        timeout_s = _timeout_s(params, self._api.limits)
        r = self._replica_count(params, bucket, "r")
        explain = _bool_param(params, "explain")
        result = await _bounded(self._dkv.get(bucket, key, r=r), timeout_s)
        if not result.ok:
            raise QuorumNotReached(f"get {bucket}/{key}: {result.error}")
        obj = result.obj
        context = EMPTY_CONTEXT if obj is None else obj.context()
        document: dict[str, Any] = {
            "bucket": bucket, "key": key,
            "siblings": [] if obj is None else [_sibling_document(s) for s in obj.live()],
            "context": encode_context(context),
            "replicas": list(result.replicas), "r": result.needed,
        }
        if explain:
            document["explain"] = self._explain(bucket, key, result)
        found = obj is not None and not obj.is_tombstone
        if not found:
            document["error"] = {"code": KeyNotFound.code, "retryable": False, "definite": True,
                                 "message": f"key {bucket}/{key} not found"
                                 + (" (deleted)" if obj is not None else "")}
        response = self._api.answer(request, document, status=200 if found else 404)
        response.headers[CONTEXT_HEADER] = document["context"]
        return response

    # -- buckets and status ----------------------------------------------------------------

    async def get_bucket(self, request: web.Request) -> web.Response:
        _query(request, frozenset())
        bucket = self._bucket(request)
        props = self._dkv.props(bucket)
        return self._api.answer(request, {"bucket": bucket, "props": _props_document(props),
                                          "custom": bucket in self._dkv.bucket_table()})

    async def put_bucket(self, request: web.Request) -> web.Response:
        params = _query(request, frozenset({"timeout_ms"}))
        timeout_s = _timeout_s(params, self._api.limits)
        bucket = self._bucket(request)
        body = await request.read()
        changes = _metadata(request, body, _BUCKET_FIELDS, empty_allowed=False)
        try:
            props = await _bounded(self._dkv.set_props(bucket, changes, timeout_s), timeout_s)
        except NotLeaderHere:
            return await self._api.forwarder.forward(request, body, timeout_s=timeout_s)
        return self._api.answer(request, {"bucket": bucket, "props": _props_document(props),
                                          "custom": True})

    async def status(self, request: web.Request) -> web.Response:
        params = _query(request, frozenset({"trees"}))
        buckets = {name: _props_document(props)
                   for name, props in sorted(self._dkv.bucket_table().items())}
        document: dict[str, Any] = {"dkv": self._dkv.status(), "buckets": buckets,
                                    "bucket_key_prefix": BUCKET_KEY_PREFIX}
        if _bool_param(params, "trees"):
            document["trees"] = self._dkv.fingerprints()
        return self._api.answer(request, document)

    # -- helpers ---------------------------------------------------------------------------

    def _bucket(self, request: web.Request) -> str:
        bucket = request.match_info["bucket"]
        if not bucket:
            raise BadRequest("the bucket must not be empty")
        _check_key_size(bucket, "bucket", self._api.limits)
        return bucket

    def _bucket_and_key(self, request: web.Request) -> tuple[str, str]:
        bucket = self._bucket(request)
        key = request.match_info["key"]
        if not key:
            raise BadRequest("the key must not be empty")
        _check_key_size(key, "key", self._api.limits)
        return bucket, key

    def _replica_count(self, params: dict[str, str], bucket: str, name: str) -> int | None:
        """The request's R or W (None: the bucket's), after checking a given ``n``."""
        props = self._dkv.props(bucket)
        if "n" in params:
            n = _int_param(params, "n", minimum=1, maximum=64)
            if n != props.n:
                raise BadRequest(f"n={n}: bucket {bucket!r} keeps n={props.n} replicas per key "
                                 f"(N decides placement; change it with PUT /v1/dkv/{bucket})")
        if name not in params:
            return None
        value = _int_param(params, name, minimum=1, maximum=64)
        if value > props.n:
            raise BadRequest(f"{name}={value} is more than the n={props.n} replicas of "
                             f"bucket {bucket!r}")
        return value

    def _write_answer(self, request: web.Request, result: OpResult, what: str) -> web.Response:
        if result.refused:
            raise TooManySiblings(result.error)
        if not result.ok:
            raise QuorumNotReached(f"{what}: {result.error}")
        assert result.obj is not None, "a successful write returns the coordinator's copy"
        token = encode_context(result.obj.context())
        response = self._api.answer(request, {
            "context": token, "replicas": list(result.replicas), "w": result.needed,
            "siblings": len(result.obj.live()),
        })
        response.headers[CONTEXT_HEADER] = token
        return response

    def _explain(self, bucket: str, key: str, result: OpResult) -> dict[str, Any]:
        placement = self._dkv.placement(bucket, key)
        return {
            "partition": placement.partition,
            "preference_list": list(placement.preference_list),
            "targets": [{"node": node, "stands_in_for": primary}
                        for node, primary in placement.targets],
            "down": list(placement.down),
            "copies": [_copy_document(node, copy) for node, copy in result.copies],
        }


def _context(request: web.Request) -> VersionVector:
    given = request.headers.getall(CONTEXT_HEADER, [])
    if len(given) > 1:
        raise BadRequest(f"header {CONTEXT_HEADER} given more than once")
    if not given:
        return EMPTY_CONTEXT
    try:
        return decode_context(given[0])
    except (DecodeError, ValueError) as error:
        raise BadRequest(f"header {CONTEXT_HEADER}: {error}") from None


def _sibling_document(sibling: Sibling) -> dict[str, Any]:
    assert sibling.value is not None, "only live siblings are shown"
    text, encoding = encode_value(sibling.value)
    return {"value": text, "value_encoding": encoding, "timestamp_ns": sibling.timestamp_ns}


def _copy_document(node: str, copy: VersionedObject | None) -> dict[str, Any]:
    if copy is None:
        return {"node": node, "clock": None, "siblings": 0, "tombstones": 0}
    return {"node": node, "clock": copy.context().as_dict(), "siblings": len(copy.live()),
            "tombstones": len(copy.siblings) - len(copy.live()),
            "digest": copy.digest().hex()}


def _props_document(props: BucketProps) -> dict[str, Any]:
    return {"n": props.n, "r": props.r, "w": props.w, "lww": props.lww}
