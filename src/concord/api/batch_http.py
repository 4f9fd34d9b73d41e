"""``POST /v1/kv/batch``: many puts, deletes and gets in one request and one Raft log entry.

It owns the batch document (``{"ops": [op, ...]}``, JSON or msgpack by ``Content-Type``),
its validation (every op checked with the single-op limits before anything is proposed; a bad
op is refused naming its index, and nothing applies) and the answer (one result per op, in
order). The batch is applied as one command at one log position; it is not a transaction: a
condition that does not hold fails its own op only. Parsing, bounds, forwarding and the error
model are shared with ``concord.api.http``. ``docs/api.md`` is the reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from concord.api import BATCH_OP_FIELDS, BATCH_PATH, MAX_REVISION, UTF8_ENCODING, decode_value
from concord.api.http import (
    _TIMEOUT_PARAMS,
    PREFERENCE_APPLIED_HEADER,
    RETURN_MINIMAL,
    ClientApi,
    _bounded,
    _check_key_size,
    _kv_document,
    _kv_document_or_none,
    _metadata,
    _prefers_minimal,
    _query,
    _request_id,
    _timeout_s,
)
from concord.config import LimitSettings
from concord.kv.commands import (
    BatchCommand,
    BatchOp,
    BatchOpResult,
    BatchResult,
    Condition,
    ConditionKind,
    Delete,
    Get,
    Put,
    ReadResult,
    WriteResult,
)
from concord.runtime.errors import BadRequest, NotLeaderHere, TooLarge
from concord.runtime.service import SYSTEM_KEY_PREFIX, NodeService

_BATCH_FIELDS: Final = frozenset({"ops"})


class BatchApi:
    """The batch handler of one node, answering through the node's ``ClientApi``."""

    __slots__ = ("_api", "_service")

    def __init__(self, service: NodeService, api: ClientApi) -> None:
        self._service = service
        self._api = api

    def register(self, router: web.UrlDispatcher) -> None:
        """Add the route; before ``/v1/kv/{key}``, whose other methods still serve a key
        named ``batch``."""
        router.add_post(BATCH_PATH, self.batch)

    async def batch(self, request: web.Request) -> web.Response:
        limits = self._api.limits
        params = _query(request, _TIMEOUT_PARAMS)
        timeout_s = _timeout_s(params, limits)
        request_id = _request_id(request)
        body = await request.read()
        document = _metadata(request, body, _BATCH_FIELDS, empty_allowed=False)
        ops = _ops_list(document.get("ops"), limits)
        self._service.check_write_room(len(ops))  # refused before parsing if there is no room
        command = BatchCommand(parse_ops(ops, limits), request_id)
        try:
            result = await _bounded(self._service.write(command, timeout_s), timeout_s)
        except NotLeaderHere:
            return await self._api.forwarder.forward(request, body, timeout_s=timeout_s)
        minimal = _prefers_minimal(request)
        response = self._api.answer(request, {"results": result_documents(command, result,
                                                                          minimal=minimal)})
        if minimal:
            response.headers[PREFERENCE_APPLIED_HEADER] = RETURN_MINIMAL
        return response


def parse_ops(ops: object, limits: LimitSettings) -> tuple[BatchOp, ...]:
    """The batch's operations; ``BadRequest`` or ``TooLarge`` naming the first bad op."""
    return tuple(_parse_op(op, f"ops[{position}]", limits)
                 for position, op in enumerate(_ops_list(ops, limits)))


def _ops_list(ops: object, limits: LimitSettings) -> list[Any]:
    """``ops`` if it is a list of an allowed length; ``BadRequest`` or ``TooLarge`` if not."""
    if not isinstance(ops, list):
        raise BadRequest("field 'ops' must be a list of operations")
    if not ops:
        raise BadRequest("field 'ops' is empty: a batch needs at least one operation")
    if len(ops) > limits.max_batch_ops:
        raise TooLarge(f"field 'ops' has {len(ops)} operations; the limit is "
                       f"{limits.max_batch_ops} (limits.max_batch_ops)")
    return ops


def _parse_op(item: object, where: str, limits: LimitSettings) -> BatchOp:
    if not isinstance(item, dict):
        raise BadRequest(f"{where}: must be an object like {{\"op\": \"put\", \"key\": ...}}")
    kind = item.get("op")
    fields = BATCH_OP_FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise BadRequest(f"{where}.op: must be \"put\", \"delete\" or \"get\", got {kind!r}")
    unknown = [] if item.keys() <= fields else sorted(
        repr(name) for name in item if name not in fields)
    if unknown:
        raise BadRequest(f"{where}: unknown fields {', '.join(unknown)} for a {kind} "
                         f"(known: {', '.join(sorted(fields))})")
    key = _parse_key(item.get("key"), f"{where}.key", limits, write=kind != "get")
    match kind:
        case "put":
            value = _parse_value(item, "value", "value_encoding", where, required=True)
            assert value is not None
            if len(value) > limits.max_value_bytes:
                raise TooLarge(f"{where}.value is {len(value)} bytes; the limit is "
                               f"{limits.max_value_bytes}")
            return Put(key, value, _parse_condition(item, where, create_only_allowed=True))
        case "delete":
            return Delete(key, _parse_condition(item, where, create_only_allowed=False))
        case _:
            return Get(key)


def _parse_key(key: object, where: str, limits: LimitSettings, *, write: bool) -> str:
    if not isinstance(key, str) or not key:
        raise BadRequest(f"{where}: must be a non-empty string")
    _check_key_size(key, where, limits)  # also refuses a lone surrogate (from JSON)
    if write and key.startswith(SYSTEM_KEY_PREFIX):
        raise BadRequest(f"{where}: keys under {SYSTEM_KEY_PREFIX!r} belong to Concord itself")
    return key


def _parse_value(item: Mapping[str, Any], name: str, encoding_name: str, where: str, *,
                 required: bool) -> bytes | None:
    """``item[name]`` decoded by ``item[encoding_name]`` (default UTF-8), or as it is when a
    msgpack body carries it as binary; None when absent and not required."""
    text = item.get(name)
    encoding = item.get(encoding_name, UTF8_ENCODING)
    if isinstance(text, bytes):  # msgpack bin: the raw value, no encoding to undo
        if encoding_name in item:
            raise BadRequest(f"{where}.{encoding_name}: not for a binary {name}")
        return text
    if text is None:
        if required:
            raise BadRequest(f"{where}.{name}: required")
        if encoding_name in item:
            raise BadRequest(f"{where}.{encoding_name}: given without {name}")
        return None
    if not isinstance(text, str):
        raise BadRequest(f"{where}.{name}: must be a string (UTF-8 text, or base64 with "
                         f"\"{encoding_name}\": \"base64\")")
    if not isinstance(encoding, str):
        raise BadRequest(f"{where}.{encoding_name}: must be \"utf-8\" or \"base64\"")
    try:
        return decode_value(text, encoding)
    except ValueError as error:  # unknown encoding, bad base64, a lone surrogate
        raise BadRequest(f"{where}.{name}: {error}") from None


def _parse_condition(item: Mapping[str, Any], where: str, *,
                     create_only_allowed: bool) -> Condition | None:
    """At most one of ``prev_revision``, ``prev_value`` and ``create_only`` (as the single
    PUT and DELETE take them)."""
    conditions: list[Condition] = []
    revision = item.get("prev_revision")
    if revision is not None:
        if type(revision) is not int or not 0 <= revision <= MAX_REVISION:
            raise BadRequest(f"{where}.prev_revision: must be an integer from 0 to "
                             f"{MAX_REVISION}, got {revision!r}")
        conditions.append(Condition(ConditionKind.MOD_REVISION_EQUALS, revision=revision))
    value = _parse_value(item, "prev_value", "prev_value_encoding", where, required=False)
    if value is not None:
        conditions.append(Condition(ConditionKind.VALUE_EQUALS, value=value))
    if create_only_allowed:
        create_only = item.get("create_only", False)
        if not isinstance(create_only, bool):
            raise BadRequest(f"{where}.create_only: must be true or false")
        if create_only:
            conditions.append(Condition(ConditionKind.ABSENT))
    if len(conditions) > 1:
        named = "prev_revision, prev_value, create_only" if create_only_allowed else (
            "prev_revision, prev_value")
        raise BadRequest(f"{where}: give at most one condition: {named}")
    return conditions[0] if conditions else None


def result_documents(command: BatchCommand, result: BatchResult, *,
                     minimal: bool) -> list[dict[str, Any]]:
    """One answer document per op. ``BadRequest`` when the results are another batch's: the
    request id was first used by a batch of other operations, and that batch's outcome is
    what the store remembers for it."""
    if len(result.results) != len(command.ops) or not all(
            isinstance(outcome, ReadResult) == isinstance(op, Get)
            for op, outcome in zip(command.ops, result.results, strict=True)):
        raise BadRequest(f"X-Request-Id {command.request_id!r} was already used by a batch of "
                         "other operations; send a new request id")
    return [_result_document(op, outcome, minimal)
            for op, outcome in zip(command.ops, result.results, strict=True)]


def _result_document(op: BatchOp, outcome: BatchOpResult, minimal: bool) -> dict[str, Any]:
    if isinstance(outcome, ReadResult):
        if outcome.current is None:
            return {"ok": False, "error": "key_not_found"}
        return {"ok": True, "kv": _kv_document(outcome.current)}
    assert isinstance(outcome, WriteResult)
    if not outcome.succeeded:
        if isinstance(op, Delete) and outcome.current is None:
            return {"ok": False, "error": "key_not_found"}
        return {"ok": False, "error": "compare_failed",
                "current": _kv_document_or_none(outcome.current)}
    if minimal:
        return {"ok": True, "revision": outcome.revision}
    if isinstance(op, Put):
        assert outcome.current is not None, "a successful put leaves the key present"
        return {"ok": True, "revision": outcome.revision,
                "prev": _kv_document_or_none(outcome.prev), "kv": _kv_document(outcome.current)}
    return {"ok": True, "revision": outcome.revision, "prev": _kv_document_or_none(outcome.prev)}
