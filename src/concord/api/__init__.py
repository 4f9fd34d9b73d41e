"""The conventions of the client-facing HTTP API that the server and the client share.

This module owns the media types, the ``X-Concord-*`` header names, the bound on request ids,
a key's URL path, the fields of a batch's ops, and how a value travels inside a JSON or msgpack
document (UTF-8 text when it is valid UTF-8, base64 otherwise, flagged by ``value_encoding``).
The server is ``concord.api.http``; the client library is ``concord.client``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Final
from urllib.parse import quote

JSON_MEDIA_TYPE: Final = "application/json"
MSGPACK_MEDIA_TYPE: Final = "application/msgpack"
OCTET_STREAM_MEDIA_TYPE: Final = "application/octet-stream"

CLUSTER_ID_HEADER: Final = "X-Concord-Cluster-Id"
MEMBER_ID_HEADER: Final = "X-Concord-Member-Id"
TERM_HEADER: Final = "X-Concord-Term"
REVISION_HEADER: Final = "X-Concord-Revision"
CREATE_REVISION_HEADER: Final = "X-Concord-Create-Revision"
MOD_REVISION_HEADER: Final = "X-Concord-Mod-Revision"
VERSION_HEADER: Final = "X-Concord-Version"
FORWARDED_HEADER: Final = "X-Concord-Forwarded"
PREV_VALUE_B64_HEADER: Final = "X-Concord-Prev-Value-B64"
REQUEST_ID_HEADER: Final = "X-Request-Id"
CONTEXT_HEADER: Final = "X-Concord-Context"
"""The quorum store's opaque causal context: sent back with a write to supersede what was
read."""

MAX_REQUEST_ID_CHARS: Final = 128
MAX_TIMEOUT_MS: Final = 60_000
MAX_REVISION: Final = 2**63 - 1
"""The largest revision a condition may name (a signed 64-bit integer)."""

BATCH_PATH: Final = "/v1/kv/batch"
KV_PATH_PREFIX: Final = "/v1/kv/"


def kv_key_path(key: str | bytes) -> str:
    """The URL path of one key: ``/v1/kv/`` then the key percent-encoded, ``/`` included."""
    return KV_PATH_PREFIX + quote(key, safe="")


UTF8_ENCODING: Final = "utf-8"
BASE64_ENCODING: Final = "base64"

_CONDITION_FIELDS: Final = frozenset({"prev_revision", "prev_value", "prev_value_encoding"})
BATCH_OP_FIELDS: Final[Mapping[str, frozenset[str]]] = {
    "put": frozenset({"op", "key", "value", "value_encoding", "create_only"}) | _CONDITION_FIELDS,
    "delete": frozenset({"op", "key"}) | _CONDITION_FIELDS,
    "get": frozenset({"op", "key"}),
}
"""The fields of each kind of ``POST /v1/kv/batch`` op in a request document."""
ENCODING_FIELDS: Final = frozenset({"value_encoding", "prev_value_encoding"})
"""Fields of the document that the client library fills itself (from bytes or str values)."""


def encode_value(value: bytes) -> tuple[str, str]:
    """``(text, value_encoding)``: the value as UTF-8 text when it decodes, else base64."""
    try:
        return value.decode("utf-8"), UTF8_ENCODING
    except UnicodeDecodeError:
        return base64.b64encode(value).decode("ascii"), BASE64_ENCODING


def decode_value(text: str, value_encoding: str) -> bytes:
    """The inverse of ``encode_value``; ValueError for an unknown encoding or bad base64."""
    match value_encoding:
        case "utf-8":
            return text.encode("utf-8")
        case "base64":
            return decode_base64(text)
        case _:
            raise ValueError(f"unknown value_encoding {value_encoding!r}")


def decode_base64(text: str) -> bytes:
    """Strict standard base64 (with padding); ValueError for anything else."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as error:
        raise ValueError(f"invalid base64: {error}") from None


def is_valid_request_id(request_id: str) -> bool:
    """1 to ``MAX_REQUEST_ID_CHARS`` printable ASCII characters (space excluded)."""
    return 0 < len(request_id) <= MAX_REQUEST_ID_CHARS and all(
        "!" <= char <= "~" for char in request_id
    )
