"""What one benchmark operation is on the wire, for each system the generator can drive.

A ``Target`` turns an ``Op`` on a key into an ``HttpRequest`` and judges the answer (``None``
for success, else a short error kind). Every target is driven by the same client loop in
``concord.bench.loadgen``, so Concord and etcd are measured by the same code. A target also
finds the leader's endpoint, for runs aimed at the leader alone.

Adding an operation (say the quorum store's put and get) means one ``Op`` member and one
``case`` in ``request`` and ``judge`` of each target that supports it, listed in its ``ops``.

``concord-batch`` is Concord's batched path: one ``POST /v1/kv/batch`` carries many puts of
distinct keys (``request_many``), so one request is several operations.

Quorum-store puts carry the causal context the process last saw for the key (from an
earlier put's answer), as an application that keeps contexts does: each put supersedes what
that context covers, so a key holds about as many siblings as it has concurrent writers. A
put without one is concurrent with everything stored and adds a sibling, so blind puts would
grow every object for as long as the run lasts and measure that growth.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Protocol
from urllib.parse import quote

import aiohttp
import msgpack

from concord.api import (
    BATCH_PATH,
    CONTEXT_HEADER,
    JSON_MEDIA_TYPE,
    MSGPACK_MEDIA_TYPE,
    OCTET_STREAM_MEDIA_TYPE,
    PREV_VALUE_B64_HEADER,
    kv_key_path,
)

CONCORD_MINIMAL_ANSWER: Final = {"Prefer": "return=minimal"}
"""Sent with Concord's Raft writes: answer ``{"header", "revision"}`` (as etcd answers a put
by default), not the written kv with its value (``docs/api.md``)."""
DEFAULT_BATCH_SIZE: Final = 64
"""Puts per request of the ``concord-batch`` target unless told otherwise."""
LEADER_PROBE_TIMEOUT_S: Final = 5.0
MAX_ERROR_DETAIL_CHARS: Final = 60


class Op(StrEnum):
    """A benchmark operation; the value is its name on the command line and in results."""

    PUT = "put"
    GET = "get"  # linearizable
    GET_SERIALIZABLE = "get-serializable"
    CAS = "cas"  # write the value if the key holds it now
    # the quorum store (/v1/dkv, bucket "bench", N = 3): a put waiting for W acknowledgements,
    # a get for R replies
    DKV_PUT_W1 = "dkv-put-w1"
    DKV_PUT_W2 = "dkv-put-w2"
    DKV_PUT_W3 = "dkv-put-w3"
    DKV_GET_R1 = "dkv-get-r1"
    DKV_GET_R2 = "dkv-get-r2"
    DKV_GET_R3 = "dkv-get-r3"


DKV_OPS: Final = frozenset({Op.DKV_PUT_W1, Op.DKV_PUT_W2, Op.DKV_PUT_W3, Op.DKV_GET_R1,
                            Op.DKV_GET_R2, Op.DKV_GET_R3})
DKV_PUTS: Final = frozenset({Op.DKV_PUT_W1, Op.DKV_PUT_W2, Op.DKV_PUT_W3})
DKV_BENCH_BUCKET: Final = "bench"

PREFILL_WITH: Final[Mapping[Op, Op]] = {
    Op.GET: Op.PUT, Op.GET_SERIALIZABLE: Op.PUT, Op.CAS: Op.PUT,
    Op.DKV_GET_R1: Op.DKV_PUT_W3, Op.DKV_GET_R2: Op.DKV_PUT_W3, Op.DKV_GET_R3: Op.DKV_PUT_W3,
}
"""Operations that need every key of the key space to exist, holding the workload's value,
and the write that puts it there (quorum-store keys are written to all three replicas)."""
PREFILLED_OPS: Final = frozenset(PREFILL_WITH)

KEY_NOT_FOUND: Final = "key_not_found"
COMPARE_FAILED: Final = "compare_failed"
SEMANTIC_ERRORS: Final = frozenset({KEY_NOT_FOUND, COMPARE_FAILED})
"""Error kinds that are the server's correct answer, not a failure to serve."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str  # percent-encoded, with its query string
    body: bytes
    headers: Mapping[str, str]
    key: bytes = b""  # the one key the request is about; empty for a batch


class Target(Protocol):
    """One system's request building and answer judging for the shared client loop."""

    @property
    def name(self) -> str: ...

    @property
    def ops(self) -> frozenset[Op]: ...

    def request(self, op: Op, key: bytes) -> HttpRequest:
        """The request performing ``op`` on ``key`` (writes carry the target's value)."""
        ...

    def judge(self, op: Op, status: int, body: bytes, *, key: bytes = b"") -> str | None:
        """None when the answer is a success, else the error kind to count (``key``: the
        request's, for targets that remember something per key)."""
        ...

    async def leader_endpoint(self, session: aiohttp.ClientSession,
                              endpoints: tuple[str, ...]) -> str:
        """The endpoint (one of ``endpoints``) of the current leader."""
        ...


def _http_error(status: int, detail: object) -> str:
    text = str(detail)[:MAX_ERROR_DETAIL_CHARS] if detail else "-"
    return f"http {status} {text}"


@dataclass(frozen=True, slots=True)
class ConcordTarget:
    """Concord's client API (``docs/api.md``), answers in JSON or msgpack."""

    value: bytes
    msgpack_answers: bool
    # quorum-store key -> the context token of the last put answer for it (this process's)
    contexts: dict[bytes, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def name(self) -> str:
        return "concord-msgpack" if self.msgpack_answers else "concord"

    @property
    def ops(self) -> frozenset[Op]:
        return frozenset(Op)

    @property
    def _accept(self) -> str:
        return MSGPACK_MEDIA_TYPE if self.msgpack_answers else JSON_MEDIA_TYPE

    def request(self, op: Op, key: bytes) -> HttpRequest:
        path = kv_key_path(key)
        accept = {"Accept": self._accept}
        if op in DKV_OPS:
            return self._dkv_request(op, key, accept)
        match op:
            case Op.PUT:
                return HttpRequest("PUT", path, self.value, {
                    **accept, **CONCORD_MINIMAL_ANSWER, "Content-Type": OCTET_STREAM_MEDIA_TYPE})
            case Op.GET:
                return HttpRequest("GET", path, b"", accept)
            case Op.GET_SERIALIZABLE:
                return HttpRequest("GET", path + "?consistency=serializable", b"", accept)
            case Op.CAS:
                return HttpRequest("PUT", path, self.value, {
                    **accept, **CONCORD_MINIMAL_ANSWER, "Content-Type": OCTET_STREAM_MEDIA_TYPE,
                    PREV_VALUE_B64_HEADER: base64.b64encode(self.value).decode("ascii")})
        raise ValueError(f"{self.name} has no operation {op.value!r}")

    def _dkv_request(self, op: Op, key: bytes, accept: Mapping[str, str]) -> HttpRequest:
        path = f"/v1/dkv/{DKV_BENCH_BUCKET}/" + quote(key, safe="")
        kind, level = op.value.rsplit("-", 1)  # "dkv-put", "w2"
        query = f"?{level[0]}={level[1:]}"
        if kind == "dkv-put":
            headers = {**accept, "Content-Type": OCTET_STREAM_MEDIA_TYPE}
            context = self.contexts.get(key)
            if context is not None:
                headers[CONTEXT_HEADER] = context
            return HttpRequest("PUT", path + query, self.value, headers, key)
        return HttpRequest("GET", path + query, b"", accept, key)

    def _decode(self, body: bytes) -> Any:
        return msgpack.unpackb(body) if self.msgpack_answers else json.loads(body)

    def judge(self, op: Op, status: int, body: bytes, *, key: bytes = b"") -> str | None:
        try:
            document = self._decode(body)
        except ValueError:
            return _http_error(status, "undecodable answer")
        # a Raft write answers its revision (and the kv, from a server ignoring the preference)
        expected = ("context" if op in DKV_OPS
                    else "revision" if op in (Op.PUT, Op.CAS) else "kv")
        if status == 200:
            if not isinstance(document, dict) or expected not in document:
                return _http_error(status, f"answer without {expected}")
            if op in DKV_PUTS and key:
                self.contexts[key] = str(document["context"])
            return None
        error = document.get("error") if isinstance(document, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        if code in SEMANTIC_ERRORS:
            return str(code)
        return _http_error(status, code)

    async def leader_endpoint(self, session: aiohttp.ClientSession,
                              endpoints: tuple[str, ...]) -> str:
        for endpoint in endpoints:
            try:
                async with session.get(f"{endpoint}/v1/cluster/members",
                                       headers={"Accept": JSON_MEDIA_TYPE}) as response:
                    if response.status != 200:
                        continue
                    document = await response.json()
            except (aiohttp.ClientError, TimeoutError):
                continue
            for member in document.get("members", []):
                if member.get("is_leader") and member.get("client_url") in endpoints:
                    return str(member["client_url"])
        raise LookupError(f"no Concord leader among {', '.join(endpoints)}")


@dataclass(frozen=True, slots=True)
class ConcordBatchTarget:
    """Concord's batched puts (``POST /v1/kv/batch``), msgpack both ways, minimal answers:
    one request applies all its puts in one Raft log entry."""

    value: bytes

    @property
    def name(self) -> str:
        return "concord-batch"

    @property
    def ops(self) -> frozenset[Op]:
        return frozenset({Op.PUT})

    def request(self, op: Op, key: bytes) -> HttpRequest:
        return self.request_many(op, (key,))

    def request_many(self, op: Op, keys: Sequence[bytes]) -> HttpRequest:
        """One batch putting the target's value to each of ``keys``."""
        if op is not Op.PUT:
            raise ValueError(f"{self.name} sends batches of puts only, not {op.value!r}")
        try:
            fields = {"op": "put", "value": self.value.decode("utf-8")}
        except UnicodeDecodeError:
            fields = {"op": "put", "value": base64.b64encode(self.value).decode("ascii"),
                      "value_encoding": "base64"}
        body = msgpack.packb({"ops": [{**fields, "key": key.decode("utf-8")} for key in keys]})
        return HttpRequest("POST", BATCH_PATH, body, {
            "Accept": MSGPACK_MEDIA_TYPE, "Content-Type": MSGPACK_MEDIA_TYPE,
            **CONCORD_MINIMAL_ANSWER})

    def judge(self, op: Op, status: int, body: bytes, *, key: bytes = b"") -> str | None:
        """None when every put of the batch succeeded."""
        try:
            document = msgpack.unpackb(body)
        except ValueError:
            return _http_error(status, "undecodable answer")
        if not isinstance(document, dict):
            return _http_error(status, "answer not an object")
        if status != 200:
            error = document.get("error")
            return _http_error(status, error.get("code") if isinstance(error, dict) else None)
        results = document.get("results")
        if not isinstance(results, list) or not results:
            return _http_error(status, "answer without results")
        failed = [r for r in results if not (isinstance(r, dict) and r.get("ok") is True)]
        if failed:
            first = failed[0]
            return f"batch op {first.get('error') if isinstance(first, dict) else first}"
        return None

    async def leader_endpoint(self, session: aiohttp.ClientSession,
                              endpoints: tuple[str, ...]) -> str:
        return await ConcordTarget(self.value, msgpack_answers=True).leader_endpoint(
            session, endpoints)


@dataclass(frozen=True, slots=True)
class EtcdTarget:
    """etcd's v3 JSON gateway (``/v3/kv/*``): keys and values in base64."""

    value: bytes

    @property
    def name(self) -> str:
        return "etcd"

    @property
    def ops(self) -> frozenset[Op]:
        return frozenset(Op) - DKV_OPS

    def request(self, op: Op, key: bytes) -> HttpRequest:
        key_b64 = base64.b64encode(key).decode("ascii")
        value_b64 = base64.b64encode(self.value).decode("ascii")
        headers = {"Content-Type": JSON_MEDIA_TYPE}
        match op:
            case Op.PUT:
                document: dict[str, Any] = {"key": key_b64, "value": value_b64}
                return HttpRequest("POST", "/v3/kv/put", json.dumps(document).encode(), headers)
            case Op.GET:
                document = {"key": key_b64}
                return HttpRequest("POST", "/v3/kv/range", json.dumps(document).encode(), headers)
            case Op.GET_SERIALIZABLE:
                document = {"key": key_b64, "serializable": True}
                return HttpRequest("POST", "/v3/kv/range", json.dumps(document).encode(), headers)
            case Op.CAS:
                document = {
                    "compare": [{"key": key_b64, "target": "VALUE", "result": "EQUAL",
                                 "value": value_b64}],
                    "success": [{"request_put": {"key": key_b64, "value": value_b64}}],
                }
                return HttpRequest("POST", "/v3/kv/txn", json.dumps(document).encode(), headers)
        raise ValueError(f"etcd has no operation {op.value!r}")

    def judge(self, op: Op, status: int, body: bytes, *, key: bytes = b"") -> str | None:
        try:
            document = json.loads(body)
        except ValueError:
            return _http_error(status, "undecodable answer")
        if not isinstance(document, dict):
            return _http_error(status, "answer not an object")
        if status != 200:
            return _http_error(status, document.get("message") or document.get("error"))
        match op:
            case Op.PUT:
                return None if "header" in document else _http_error(status, "no header")
            case Op.GET | Op.GET_SERIALIZABLE:
                return None if document.get("kvs") else KEY_NOT_FOUND
            case Op.CAS:
                return None if document.get("succeeded") is True else COMPARE_FAILED
        raise ValueError(f"etcd has no operation {op.value!r}")

    async def leader_endpoint(self, session: aiohttp.ClientSession,
                              endpoints: tuple[str, ...]) -> str:
        for endpoint in endpoints:
            try:
                async with session.post(f"{endpoint}/v3/maintenance/status", json={}) as response:
                    if response.status != 200:
                        continue
                    document = await response.json()
            except (aiohttp.ClientError, TimeoutError):
                continue
            member_id = document.get("header", {}).get("member_id")
            if member_id is not None and member_id == document.get("leader"):
                return endpoint
        raise LookupError(f"no etcd leader among {', '.join(endpoints)}")


class ConcordDkvTarget:
    """The quorum store as a comparison system: its ``put`` is a quorum-store write at W = 2
    (bucket ``bench``, N = 3), the Dynamo-style answer to the same workload. It has no get:
    a quorum read is not linearizable, so it has no place in that row."""

    QUORUM_PUT: Final = Op.DKV_PUT_W2

    def __init__(self, value: bytes) -> None:
        self._store = ConcordTarget(value, msgpack_answers=False)

    @property
    def name(self) -> str:
        return "concord-dkv"

    @property
    def ops(self) -> frozenset[Op]:
        return frozenset({Op.PUT})

    def request(self, op: Op, key: bytes) -> HttpRequest:
        if op is not Op.PUT:
            raise ValueError(f"{self.name} has no operation {op.value!r}")
        return self._store.request(self.QUORUM_PUT, key)

    def judge(self, op: Op, status: int, body: bytes, *, key: bytes = b"") -> str | None:
        return self._store.judge(self.QUORUM_PUT, status, body, key=key)

    async def leader_endpoint(self, session: aiohttp.ClientSession,
                              endpoints: tuple[str, ...]) -> str:
        """The Raft leader's endpoint (any node coordinates a quorum-store write; the leader,
        so ``--members leader`` compares like with like)."""
        return await self._store.leader_endpoint(session, endpoints)


TARGETS: Final[Mapping[str, Callable[[bytes], Target]]] = {
    "concord": lambda value: ConcordTarget(value, msgpack_answers=False),
    "concord-msgpack": lambda value: ConcordTarget(value, msgpack_answers=True),
    "concord-batch": ConcordBatchTarget,
    "concord-dkv": ConcordDkvTarget,
    "etcd": EtcdTarget,
}
"""Target name -> factory taking the value every write carries."""


def make_target(name: str, value: bytes) -> Target:
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r} (known: {', '.join(TARGETS)})")
    return TARGETS[name](value)


async def find_leader(target: Target, endpoints: tuple[str, ...]) -> str:
    """The leader's endpoint, asked with a short-lived session."""
    timeout = aiohttp.ClientTimeout(total=LEADER_PROBE_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        return await target.leader_endpoint(session, endpoints)
