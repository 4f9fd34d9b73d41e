"""A Python client for the quorum store (``/v1/dkv``) and the ``concord dkv`` commands.

``AsyncDkvClient`` talks to any node (each one coordinates); when a node cannot be reached it
tries the next endpoint. A read returns every sibling and the causal context; send the
context back with the write that merges them:

    async with AsyncDkvClient(["http://127.0.0.1:7001"]) as dkv:
        read = await dkv.get("carts", "alice")
        merged = merge_my_way(read.siblings)
        await dkv.put("carts", "alice", merged, context=read.context)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp

from concord.api import CONTEXT_HEADER, JSON_MEDIA_TYPE, decode_value
from concord.cli_client import DEFAULT_ENDPOINTS, ENDPOINTS_ENV, EXIT_FAILED, EXIT_OK, _endpoints


class DkvError(Exception):
    """A request the cluster refused or could not serve (``code`` as in the API's errors;
    ``unavailable`` when no endpoint answered)."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class DkvRead:
    """A read: every live sibling's value (empty when absent or deleted) and the context."""

    found: bool
    siblings: tuple[bytes, ...]
    context: str
    replicas: tuple[str, ...]
    explain: dict[str, Any] | None = field(default=None)


class AsyncDkvClient:
    """The quorum store over HTTP. Use as an async context manager."""

    def __init__(self, endpoints: Sequence[str], *, timeout_s: float = 5.0) -> None:
        cleaned = [endpoint.strip().rstrip("/") for endpoint in endpoints if endpoint.strip()]
        if not cleaned:
            raise ValueError("give at least one endpoint")
        self._endpoints = cleaned
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._preferred = 0

    async def __aenter__(self) -> AsyncDkvClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, bucket: str, key: str, *, r: int | None = None,
                  explain: bool = False) -> DkvRead:
        params = _params(r=r, explain=1 if explain else None)
        status, document = await self._request("GET", _path(bucket, key), params)
        if status not in (200, 404) or "siblings" not in document:
            raise _error(status, document)
        siblings = tuple(decode_value(s["value"], s["value_encoding"])
                         for s in document["siblings"])
        return DkvRead(status == 200, siblings, document["context"],
                       tuple(document["replicas"]), document.get("explain"))

    async def put(self, bucket: str, key: str, value: bytes, *, context: str = "",
                  w: int | None = None) -> str:
        """Write ``value`` over what ``context`` covers; returns the new context."""
        headers = {CONTEXT_HEADER: context} if context else {}
        status, document = await self._request("PUT", _path(bucket, key), _params(w=w),
                                               body=value, headers=headers)
        if status != 200:
            raise _error(status, document)
        context_token: str = document["context"]
        return context_token

    async def delete(self, bucket: str, key: str, *, context: str = "",
                     w: int | None = None) -> str:
        headers = {CONTEXT_HEADER: context} if context else {}
        status, document = await self._request("DELETE", _path(bucket, key), _params(w=w),
                                               headers=headers)
        if status != 200:
            raise _error(status, document)
        context_token: str = document["context"]
        return context_token

    async def bucket(self, bucket: str) -> dict[str, Any]:
        status, document = await self._request("GET", _path(bucket), {})
        if status != 200:
            raise _error(status, document)
        props: dict[str, Any] = document["props"]
        return props

    async def set_bucket(self, bucket: str, **props: object) -> dict[str, Any]:
        body = json.dumps(props).encode()
        status, document = await self._request("PUT", _path(bucket), {}, body=body,
                                               headers={"Content-Type": JSON_MEDIA_TYPE})
        if status != 200:
            raise _error(status, document)
        updated: dict[str, Any] = document["props"]
        return updated

    async def status(self) -> dict[str, Any]:
        status, document = await self._request("GET", "/v1/dkv", {})
        if status != 200:
            raise _error(status, document)
        return document

    async def _request(self, method: str, path: str, params: dict[str, str], *,
                       body: bytes | None = None,
                       headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """Try each endpoint from the last one that answered; (status, JSON document)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        reasons = []
        for attempt in range(len(self._endpoints)):
            index = (self._preferred + attempt) % len(self._endpoints)
            endpoint = self._endpoints[index]
            try:
                async with self._session.request(method, endpoint + path, params=params,
                                                 data=body, headers=headers) as answer:
                    document = await answer.json(content_type=None)
                    self._preferred = index
                    return answer.status, document
            except (aiohttp.ClientConnectionError, TimeoutError, ValueError) as error:
                reasons.append(f"{endpoint}: {type(error).__name__} {error}".strip())
        raise DkvError("unavailable", "; ".join(reasons), 0)


def _path(bucket: str, key: str | None = None) -> str:
    from urllib.parse import quote

    path = "/v1/dkv/" + quote(bucket, safe="")
    return path if key is None else path + "/" + quote(key, safe="/")


def _params(**values: int | None) -> dict[str, str]:
    return {name: str(value) for name, value in values.items() if value is not None}


def _error(status: int, document: dict[str, Any]) -> DkvError:
    error = document.get("error") or {}
    return DkvError(str(error.get("code", "http_error")),
                    str(error.get("message", f"HTTP {status}")), status)


# -- the `concord dkv` commands ---------------------------------------------------------------


def add_dkv_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoints", default=None,
                        help=f"comma-separated client URLs (default: ${ENDPOINTS_ENV} or "
                             f"{DEFAULT_ENDPOINTS})")
    dkv = subparsers.add_parser("dkv", help="the quorum store: get, put, del, bucket, status")
    actions = dkv.add_subparsers(dest="dkv_action", required=True, metavar="ACTION")
    get = actions.add_parser("get", parents=[common], help="read every sibling and the context")
    get.add_argument("bucket")
    get.add_argument("key")
    get.add_argument("--r", type=int, default=None)
    get.add_argument("--explain", action="store_true", help="placement and replica clocks")
    put = actions.add_parser("put", parents=[common], help="write a value")
    put.add_argument("bucket")
    put.add_argument("key")
    put.add_argument("value")
    put.add_argument("--context", default="", help="the context token of what you read")
    put.add_argument("--w", type=int, default=None)
    delete = actions.add_parser("del", parents=[common], help="delete (a tombstone)")
    delete.add_argument("bucket")
    delete.add_argument("key")
    delete.add_argument("--context", default="")
    delete.add_argument("--w", type=int, default=None)
    bucket = actions.add_parser("bucket", parents=[common], help="show or set bucket props")
    bucket.add_argument("bucket")
    bucket.add_argument("--set", dest="changes", default=None, metavar="n=3,r=2,w=2,lww=false",
                        help="properties to change")
    status = actions.add_parser("status", parents=[common], help="a node's quorum-store counters")
    for parser in (get, put, delete, bucket, status):
        parser.set_defaults(func=_run_dkv_command)


def _run_dkv_command(args: argparse.Namespace) -> int:
    try:
        document = asyncio.run(_dkv_command(args, _endpoints(args)))
    except (DkvError, ValueError) as error:
        print(f"concord dkv: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(document, indent=2))
    return EXIT_OK


async def _dkv_command(args: argparse.Namespace, endpoints: list[str]) -> dict[str, Any]:
    async with AsyncDkvClient(endpoints) as client:
        match args.dkv_action:
            case "get":
                read = await client.get(args.bucket, args.key, r=args.r, explain=args.explain)
                document: dict[str, Any] = {
                    "found": read.found,
                    "siblings": [value.decode("utf-8", "backslashreplace")
                                 for value in read.siblings],
                    "context": read.context, "replicas": list(read.replicas)}
                if read.explain is not None:
                    document["explain"] = read.explain
                return document
            case "put":
                context = await client.put(args.bucket, args.key, args.value.encode(),
                                           context=args.context, w=args.w)
                return {"context": context}
            case "del":
                return {"context": await client.delete(args.bucket, args.key,
                                                       context=args.context, w=args.w)}
            case "bucket":
                if args.changes is None:
                    return {"bucket": args.bucket, "props": await client.bucket(args.bucket)}
                changes = _parse_props(args.changes)
                return {"bucket": args.bucket,
                        "props": await client.set_bucket(args.bucket, **changes)}
            case _:
                return await client.status()


def _parse_props(text: str) -> dict[str, object]:
    """``n=3,w=2,lww=false`` -> {"n": 3, "w": 2, "lww": False}; ValueError when malformed."""
    changes: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set: expected name=value, got {item!r}")
        if value.lower() in ("true", "false"):
            changes[name] = value.lower() == "true"
        elif value.isdigit():
            changes[name] = int(value)
        else:
            raise ValueError(f"--set {name}: expected an integer or true/false, got {value!r}")
    return changes
