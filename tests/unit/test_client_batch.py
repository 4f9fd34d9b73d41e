"""Tests of the client's ``batch`` and ``put_many`` and of ``concord batch`` (JSON lines in, a
result per op out), against an in-memory node behind the real HTTP API."""

from __future__ import annotations

import argparse
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_node import FakeNode, build_app, serve_in_thread
from test_client import served

from concord.cli_client import add_client_commands, read_batch_lines
from concord.client import AsyncConcordClient, ConcordClient, ConcordClientError
from concord.kv.commands import BatchCommand


@pytest.mark.parametrize("use_msgpack", [False, True])
async def test_batch_results_per_op_with_decoded_values(use_msgpack: bool) -> None:
    node = FakeNode("n1")
    async with served(node) as url, AsyncConcordClient([url], msgpack=use_msgpack) as client:
        await client.put("lock", b"held")
        results = await client.batch([
            {"op": "put", "key": "bin", "value": b"\x00\xff"},
            {"op": "put", "key": "lock", "value": "mine", "create_only": True},
            {"op": "get", "key": "bin"},
            {"op": "put", "key": "lock", "value": "next", "prev_value": b"held"},
            {"op": "delete", "key": "nothing"},
            {"op": "delete", "key": "bin", "prev_revision": 2},
        ], request_id="b-1")
        stored = {"key": "bin", "value": b"\x00\xff", "create_revision": 2, "mod_revision": 2,
                  "version": 1}
        assert results == [
            {"ok": True, "revision": 2, "prev": None, "kv": stored},
            {"ok": False, "error": "compare_failed",
             "current": {"key": "lock", "value": b"held", "create_revision": 1,
                         "mod_revision": 1, "version": 1}},
            {"ok": True, "kv": stored},
            {"ok": True, "revision": 3,
             "prev": {"key": "lock", "value": b"held", "create_revision": 1, "mod_revision": 1,
                      "version": 1},
             "kv": {"key": "lock", "value": b"next", "create_revision": 1, "mod_revision": 3,
                    "version": 2}},
            {"ok": False, "error": "key_not_found"},
            {"ok": True, "revision": 4, "prev": stored},
        ]
        batches = [c for c in node.commands if isinstance(c, BatchCommand)]
        assert [(len(b.ops), b.request_id) for b in batches] == [(6, "b-1")]
        assert await client.put_many({"x": "1", "y": b"\x01"}) == {"x": 5, "y": 6}
        assert await client.batch([{"op": "get", "key": "y"}], minimal=True) == [
            {"ok": True, "kv": {"key": "y", "value": b"\x01", "create_revision": 6,
                                "mod_revision": 6, "version": 1}}]


async def test_malformed_ops_raise_before_anything_is_sent() -> None:
    node = FakeNode("n1")
    async with served(node) as url, AsyncConcordClient([url]) as client:
        for ops, message in [
            ([], "at least one op"),
            ([{"op": "get", "key": "a"}, {"op": "put", "key": "b"}], r"ops\[1\].value: required"),
            ([{"op": "scan", "key": "a"}], r"ops\[0\].op: must be"),
            ([{"op": "get", "key": ""}], r"ops\[0\].key"),
            ([{"op": "get", "key": "a", "value": "v"}], r"ops\[0\]: unknown fields \['value'\]"),
            ([{"op": "put", "key": "a", "value": 3}], r"ops\[0\].value: must be bytes or str"),
        ]:
            with pytest.raises(ValueError, match=message):
                await client.batch(ops)
        with pytest.raises(ConcordClientError) as refused:  # the server's own refusal
            await client.batch([{"op": "put", "key": "_concord/x", "value": "v"}])
        assert (refused.value.code, refused.value.status) == ("bad_request", 400)
        assert node.calls_to("write") == 0


@pytest.fixture
def threaded_node() -> Iterator[tuple[FakeNode, str]]:
    node = FakeNode("n1")
    with serve_in_thread(lambda: build_app(node)) as url:
        yield node, url


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="concord")
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_blocking_client_batch(threaded_node: tuple[FakeNode, str]) -> None:
    _, url = threaded_node
    with ConcordClient([url]) as client:
        assert client.put_many({"a": "1", "b": "2"}) == {"a": 1, "b": 2}
        results = client.batch([{"op": "get", "key": "a"}, {"op": "delete", "key": "b"}],
                               minimal=True)
        assert results == [
            {"ok": True, "kv": {"key": "a", "value": b"1", "create_revision": 1,
                                "mod_revision": 1, "version": 1}},
            {"ok": True, "revision": 3},
        ]


def test_cli_batch_from_a_file_and_stdin(threaded_node: tuple[FakeNode, str], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    node, url = threaded_node
    lines = tmp_path / "ops.jsonl"
    lines.write_text('{"op": "put", "key": "a", "value": "1"}\n\n'
                     '{"op": "put", "key": "b", "value": "/w==", "value_encoding": "base64"}\n'
                     '{"op": "get", "key": "b"}\n'
                     '{"op": "put", "key": "a", "value": "2", "create_only": true}\n')
    assert run("batch", str(lines), "--endpoints", url) == 2, "one op failed"
    table = capsys.readouterr().out.splitlines()
    assert [row.split()[:3] for row in table] == [
        ["#", "OP", "KEY"], ["1", "put", "a"], ["2", "put", "b"], ["3", "get", "b"],
        ["4", "put", "a"]]
    assert table[1].endswith("OK revision 1")
    assert table[3].endswith("base64:/w== (mod_revision 2, version 1)")
    assert table[4].endswith("FAILED compare_failed: current value 1 (mod_revision 1)")
    stored = node.fsm.get("b")
    assert stored is not None and stored.value == b"\xff"

    monkeypatch.setattr("sys.stdin", io.StringIO('{"op": "delete", "key": "a"}\n'))
    assert run("batch", "-o", "json", "--minimal", "--endpoints", url) == 0
    assert json.loads(capsys.readouterr().out) == {"results": [{"ok": True, "revision": 3}]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"op": "put", "key": "a", "value": "1"}\n{"op": "put", "key": "a"', "line 2: not valid "
         "JSON"),
        ('\n\n["put", "a"]\n', "line 3: expected a JSON object"),
        ('{"op": "get", "key": "a"}\n{"op": "rm", "key": "a"}\n', "line 2.op: must be"),
        ('{"op": "put", "key": "a", "value": "%%", "value_encoding": "base64"}\n',
         "line 1.value: invalid base64"),
        ('{"op": "delete", "key": "a", "prev_value_encoding": "base64"}\n',
         "line 1: prev_value_encoding without prev_value"),
        ("\n  \n", "no ops"),
    ],
)
def test_cli_bad_lines_are_named_and_nothing_is_sent(
        threaded_node: tuple[FakeNode, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        text: str, message: str) -> None:
    node, url = threaded_node
    path = tmp_path / "ops.jsonl"
    path.write_text(text)
    assert run("batch", str(path), "--endpoints", url) == 1
    error = capsys.readouterr().err
    assert message in error and error.rstrip().endswith("nothing was sent"), error
    assert node.calls == []
    with pytest.raises(ValueError, match=re.escape(message)):
        read_batch_lines(text)
