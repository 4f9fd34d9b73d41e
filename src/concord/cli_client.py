"""The client commands of the ``concord`` CLI: put, get, del, cas, list, batch, status, members,
leader.

``add_client_commands`` registers them on the main parser's subparsers; each sets ``func`` to
a function that takes the parsed arguments and returns the exit code: 0 done, 1 the request
failed (one line on stderr saying why), 2 ``get`` found no such key or an op of a ``batch``
did not succeed (the batch's other ops did). Each command runs one
``AsyncConcordClient`` under ``asyncio.run``. Every command takes ``--endpoints`` (comma-separated;
default ``$CONCORD_ENDPOINTS`` or the three local nodes) and ``-o table|json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

from concord.api import BASE64_ENCODING, UTF8_ENCODING, decode_value, encode_value
from concord.client import (
    AsyncConcordClient,
    ConcordClientError,
    Document,
    Members,
    batch_op_document,
)

ENDPOINTS_ENV: Final = "CONCORD_ENDPOINTS"
DEFAULT_ENDPOINTS: Final = "http://127.0.0.1:7001,http://127.0.0.1:7002,http://127.0.0.1:7003"

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_NOT_FOUND: Final = 2

_Command = Callable[[AsyncConcordClient, argparse.Namespace], Awaitable[int]]


def add_client_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the client commands on the ``concord`` parser's subparsers."""
    common = _common_options()

    put = subparsers.add_parser("put", parents=[common], help="write a key")
    put.add_argument("key")
    put.add_argument("value", nargs="?", help="the value (or use --file)")
    put.add_argument("--file", type=Path, help="read the value from this file ('-': stdin)")
    put.add_argument("--prev-revision", type=int, help="only if the key's mod revision is N "
                     "(0: only if absent)")
    put.add_argument("--prev-value", help="only if the key holds this value")
    put.add_argument("--create-only", action="store_true", help="only if the key is absent")
    put.set_defaults(func=put_command)

    get = subparsers.add_parser("get", parents=[common], help="read a key")
    get.add_argument("key")
    get.add_argument("--serializable", action="store_true",
                     help="answer from the contacted node without asking the leader")
    get.add_argument("--raw", action="store_true", help="write the bare value to stdout")
    get.set_defaults(func=get_command)

    delete = subparsers.add_parser("del", parents=[common], help="delete a key")
    delete.add_argument("key")
    delete.set_defaults(func=delete_command)

    cas = subparsers.add_parser("cas", parents=[common],
                                help="write NEW only if the key holds EXPECTED")
    cas.add_argument("key")
    cas.add_argument("expected")
    cas.add_argument("new")
    cas.set_defaults(func=cas_command)

    listing = subparsers.add_parser("list", parents=[common], help="list keys by prefix")
    listing.add_argument("prefix", nargs="?", default="")
    listing.add_argument("--limit", type=int, help="at most N keys")
    listing.add_argument("--serializable", action="store_true",
                         help="answer from the contacted node without asking the leader")
    listing.set_defaults(func=list_command)

    batch = subparsers.add_parser(
        "batch", parents=[common],
        help="apply ops read as JSON lines in one request (one Raft log entry)",
        description="Each non-blank line is one op: {\"op\": \"put\", \"key\": K, "
                    "\"value\": V} (optional \"value_encoding\": \"base64\", and one of "
                    "\"prev_revision\", \"prev_value\", \"create_only\"), {\"op\": "
                    "\"delete\", \"key\": K} or {\"op\": \"get\", \"key\": K}. Ops apply "
                    "in order; a failed condition fails its own op only.")
    batch.add_argument("file", nargs="?", type=Path, default=Path("-"),
                       help="the JSON lines (default '-': stdin)")
    batch.add_argument("--minimal", action="store_true",
                       help="ask for revisions only, without the written kvs")
    batch.set_defaults(func=batch_command)

    status = subparsers.add_parser("status", parents=[common], help="show a node's status")
    status.set_defaults(func=status_command)

    members = subparsers.add_parser("members", parents=[common],
                                    help="list, add or remove cluster members")
    members.set_defaults(func=members_command)
    member_actions = members.add_subparsers(dest="members_action", metavar="{add,remove}")
    add = member_actions.add_parser("add", parents=[common], help="add a member")
    add.add_argument("id")
    add.add_argument("--peer-url", required=True)
    add.add_argument("--client-url", required=True)
    add.add_argument("--learner", action="store_true", help="stay a non-voting learner")
    add.set_defaults(func=member_add_command)
    remove = member_actions.add_parser("remove", parents=[common], help="remove a member")
    remove.add_argument("id")
    remove.set_defaults(func=member_remove_command)

    leader = subparsers.add_parser("leader", help="leadership operations")
    leader_actions = leader.add_subparsers(dest="leader_action", metavar="{transfer}",
                                           required=True)
    transfer = leader_actions.add_parser(
        "transfer", parents=[common],
        help="hand leadership to TARGET (default: the most caught-up voter)",
    )
    transfer.add_argument("target", nargs="?")
    transfer.set_defaults(func=leader_transfer_command)


def _common_options() -> argparse.ArgumentParser:
    # SUPPRESS defaults: a nested subcommand must not reset an option given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--endpoints", default=argparse.SUPPRESS,
        help=f"comma-separated client URLs (default: ${ENDPOINTS_ENV} or {DEFAULT_ENDPOINTS})",
    )
    common.add_argument("-o", "--output", choices=("table", "json"), default=argparse.SUPPRESS,
                        help="output format (default: table)")
    return common


# -- commands --------------------------------------------------------------------------------


def put_command(args: argparse.Namespace) -> int:
    if (args.value is None) == (args.file is None):
        return _fail("give the value either as VALUE or with --file, not both")
    if args.file is None:
        value: bytes = args.value.encode("utf-8")
    else:
        try:
            value = sys.stdin.buffer.read() if str(args.file) == "-" else args.file.read_bytes()
        except OSError as error:
            return _fail(f"cannot read {args.file}: {error.strerror}")

    async def put(client: AsyncConcordClient, args: argparse.Namespace) -> int:
        answer = await client.put(
            args.key, value, prev_revision=args.prev_revision, prev_value=args.prev_value,
            create_only=args.create_only,
        )
        _print_write(args, answer)
        return EXIT_OK

    return _run(args, put)


def get_command(args: argparse.Namespace) -> int:
    async def get(client: AsyncConcordClient, args: argparse.Namespace) -> int:
        consistency = "serializable" if args.serializable else "linearizable"
        kv = await client.get(args.key, consistency)
        if kv is None:
            print(f"concord: key {args.key!r} not found", file=sys.stderr)
            return EXIT_NOT_FOUND
        if args.raw:
            sys.stdout.buffer.write(kv["value"])
            sys.stdout.buffer.flush()
        elif _output(args) == "json":
            _print_json(_kv_json(kv))
        else:
            _print_kv_table([kv])
        return EXIT_OK

    return _run(args, get)


def delete_command(args: argparse.Namespace) -> int:
    async def delete(client: AsyncConcordClient, args: argparse.Namespace) -> int:
        answer = await client.delete(args.key)
        if answer is None:
            return _fail(f"key {args.key!r} not found")
        if _output(args) == "json":
            _print_json({"header": answer["header"], "revision": answer["revision"],
                         "prev": _kv_json(answer["prev"])})
        else:
            print(f"deleted {args.key} (revision {answer['revision']})")
        return EXIT_OK

    return _run(args, delete)


def cas_command(args: argparse.Namespace) -> int:
    async def cas(client: AsyncConcordClient, args: argparse.Namespace) -> int:
        _print_write(args, await client.cas(args.key, args.expected, args.new))
        return EXIT_OK

    return _run(args, cas)


def list_command(args: argparse.Namespace) -> int:
    async def list_keys(client: AsyncConcordClient, args: argparse.Namespace) -> int:
        consistency = "serializable" if args.serializable else "linearizable"
        answer = await client.list(args.prefix, args.limit, consistency)
        if _output(args) == "json":
            _print_json({"header": answer["header"],
                         "kvs": [_kv_json(kv) for kv in answer["kvs"]],
                         "more": answer["more"]})
            return EXIT_OK
        _print_kv_table(answer["kvs"])
        if answer["more"]:
            print("(more keys follow; raise --limit to see them)")
        return EXIT_OK

    return _run(args, list_keys)


def batch_command(args: argparse.Namespace) -> int:
    try:
        text = (sys.stdin.read() if str(args.file) == "-"
                else args.file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        return _fail(f"cannot read {args.file}: {reason}")
    try:
        ops = read_batch_lines(text)
    except ValueError as error:
        return _fail(f"{args.file}: {error}; nothing was sent")

    async def send(client: AsyncConcordClient, args: argparse.Namespace) -> int:
        results = await client.batch(ops, minimal=args.minimal)
        if _output(args) == "json":
            _print_json({"results": [_batch_result_json(result) for result in results]})
        else:
            rows = [(str(number), op["op"], op["key"], _describe_batch_result(result))
                    for number, (op, result) in enumerate(zip(ops, results, strict=True), 1)]
            _print_table(("#", "OP", "KEY", "RESULT"), rows)
        return EXIT_OK if all(result["ok"] for result in results) else EXIT_NOT_FOUND

    return _run(args, send)


def read_batch_lines(text: str) -> list[dict[str, Any]]:
    """The ops of ``concord batch``: one JSON object per non-blank line, values decoded by
    their ``value_encoding``; ValueError naming the first bad line."""
    ops: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            document = json.loads(line)
        except ValueError as error:
            raise ValueError(f"{where}: not valid JSON ({error})") from None
        if not isinstance(document, dict):
            raise ValueError(f"{where}: expected a JSON object like "
                             '{"op": "put", "key": "k", "value": "v"}')
        op = dict(document)
        for name, encoding_name in (("value", "value_encoding"),
                                    ("prev_value", "prev_value_encoding")):
            encoding = op.pop(encoding_name, UTF8_ENCODING)
            if name not in op:
                if encoding_name in document:
                    raise ValueError(f"{where}: {encoding_name} without {name}")
                continue
            if not isinstance(op[name], str) or not isinstance(encoding, str):
                raise ValueError(f"{where}: {name} must be a string ({encoding_name}: "
                                 f"{UTF8_ENCODING} or {BASE64_ENCODING})")
            try:
                op[name] = decode_value(op[name], encoding)
            except ValueError as error:
                raise ValueError(f"{where}.{name}: {error}") from None
        batch_op_document(op, where)  # the client's own checks, naming the line
        ops.append(op)
    if not ops:
        raise ValueError("no ops (one JSON object per line)")
    return ops


def _batch_result_json(result: Document) -> dict[str, Any]:
    return {name: _kv_json(value) if name in ("prev", "kv", "current") else value
            for name, value in result.items()}


def _describe_batch_result(result: Document) -> str:
    if not result["ok"]:
        if result["error"] == "compare_failed":
            return f"FAILED compare_failed: {_describe_current(result.get('current'))}"
        return f"FAILED {result['error']}"
    if "revision" not in result:  # a get
        kv = result["kv"]
        return (f"{_display_value(kv['value'])} (mod_revision {kv['mod_revision']}, "
                f"version {kv['version']})")
    return f"OK revision {result['revision']}"


def status_command(args: argparse.Namespace) -> int:
    async def status(client: AsyncConcordClient, args: argparse.Namespace) -> int:
        answer = await client.status()
        if _output(args) == "json":
            _print_json(answer)
        else:
            rows = [(name, value if isinstance(value, str) else json.dumps(value))
                    for name, value in answer.items()]
            _print_table(("FIELD", "VALUE"), rows)
        return EXIT_OK

    return _run(args, status)


def members_command(args: argparse.Namespace) -> int:
    async def members(client: AsyncConcordClient, args: argparse.Namespace) -> int:
        _print_members(args, await client.members())
        return EXIT_OK

    return _run(args, members)


def member_add_command(args: argparse.Namespace) -> int:
    async def add(client: AsyncConcordClient, args: argparse.Namespace) -> int:
        members = await client.add_member(args.id, args.peer_url, args.client_url,
                                          learner=args.learner)
        _print_members(args, members)
        return EXIT_OK

    return _run(args, add)


def member_remove_command(args: argparse.Namespace) -> int:
    async def remove(client: AsyncConcordClient, args: argparse.Namespace) -> int:
        _print_members(args, await client.remove_member(args.id))
        return EXIT_OK

    return _run(args, remove)


def leader_transfer_command(args: argparse.Namespace) -> int:
    async def transfer(client: AsyncConcordClient, args: argparse.Namespace) -> int:
        leader = await client.transfer_leader(args.target)
        if _output(args) == "json":
            _print_json({"leader": leader})
        else:
            print(f"leader: {leader}")
        return EXIT_OK

    return _run(args, transfer)


# -- running and printing --------------------------------------------------------------------


def _run(args: argparse.Namespace, command: _Command) -> int:
    """Run ``command`` with a client of the chosen endpoints; its exit code."""
    endpoints = _endpoints(args)

    async def session() -> int:
        async with AsyncConcordClient(endpoints) as client:
            return await command(client, args)

    try:
        return asyncio.run(session())
    except ConcordClientError as error:
        message = str(error)
        if error.code == "compare_failed":
            message += "; " + _describe_current(error.current)
        return _fail(message)
    except ValueError as error:
        return _fail(str(error))


def _fail(message: str) -> int:
    print(f"concord: {message}", file=sys.stderr)
    return EXIT_FAILED


def _endpoints(args: argparse.Namespace) -> list[str]:
    text: str = getattr(args, "endpoints", None) or os.environ.get(ENDPOINTS_ENV) or (
        DEFAULT_ENDPOINTS
    )
    return [endpoint.strip() for endpoint in text.split(",") if endpoint.strip()]


def _output(args: argparse.Namespace) -> str:
    output: str = getattr(args, "output", "table")
    return output


def _describe_current(current: Document | None) -> str:
    if current is None:
        return "the key does not exist"
    return (f"current value {_display_value(current['value'])} "
            f"(mod_revision {current['mod_revision']})")


def _display_value(value: bytes) -> str:
    text, value_encoding = encode_value(value)
    if value_encoding == BASE64_ENCODING:
        return "base64:" + text
    return text if text.isprintable() else json.dumps(text)


def _kv_json(kv: Document | None) -> dict[str, Any] | None:
    if kv is None:
        return None
    value, value_encoding = encode_value(kv["value"])
    return {"key": kv["key"], "value": value, "value_encoding": value_encoding,
            "create_revision": kv["create_revision"], "mod_revision": kv["mod_revision"],
            "version": kv["version"]}


def _print_write(args: argparse.Namespace, answer: Document) -> None:
    if _output(args) == "json":
        _print_json({"header": answer["header"], "revision": answer["revision"],
                     "prev": _kv_json(answer["prev"]), "kv": _kv_json(answer["kv"])})
    else:
        print(f"OK revision {answer['revision']} (version {answer['kv']['version']})")


def _print_members(args: argparse.Namespace, members: Members) -> None:
    if _output(args) == "json":
        _print_json(members)
        return
    rows = [(member["id"], member["role"], "yes" if member["is_leader"] else "",
             member["peer_url"], member["client_url"]) for member in members]
    _print_table(("ID", "ROLE", "LEADER", "PEER_URL", "CLIENT_URL"), rows)


def _print_kv_table(kvs: Sequence[Document]) -> None:
    rows = [(kv["key"], _display_value(kv["value"]), str(kv["create_revision"]),
             str(kv["mod_revision"]), str(kv["version"])) for kv in kvs]
    _print_table(("KEY", "VALUE", "CREATE_REV", "MOD_REV", "VERSION"), rows)


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(header)] + [len(row[column]) for row in rows])
              for column, header in enumerate(headers)]
    for line in [headers, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
              .rstrip())


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))
