"""Tests of the Python client (failover, at-most-once retries, error reporting, msgpack) and of
the CLI client commands, against in-memory nodes behind the real HTTP API."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from fake_node import FakeNode, build_app, free_port, serve_in_thread

from concord.cli_client import add_client_commands
from concord.client import AsyncConcordClient, ConcordClient, ConcordClientError


@asynccontextmanager
async def served(node: FakeNode) -> AsyncIterator[str]:
    """Serve ``node`` on loopback in this event loop; yields its base URL."""
    server = TestServer(build_app(node))
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def dead_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"


# -- the async client ------------------------------------------------------------------------------


@pytest.mark.parametrize("use_msgpack", [False, True])
async def test_key_value_operations(use_msgpack: bool) -> None:
    node = FakeNode("n1")
    async with served(node) as url, AsyncConcordClient([url], msgpack=use_msgpack) as client:
        written = await client.put("dir/key one", b"\x00\xffbinary")
        assert written["revision"] == 1
        assert written["prev"] is None
        assert written["kv"] == {"key": "dir/key one", "value": b"\x00\xffbinary",
                                 "create_revision": 1, "mod_revision": 1, "version": 1}
        assert written["header"]["member_id"] == "n1"
        assert await client.get("dir/key one") == written["kv"]
        assert await client.get("dir/key one", "serializable") == written["kv"]
        assert await client.get("absent") is None
        replaced = await client.put("dir/key one", "text", prev_revision=1)
        assert replaced["prev"] is not None and replaced["prev"]["value"] == b"\x00\xffbinary"
        assert replaced["kv"]["value"] == b"text"
        swapped = await client.cas("dir/key one", "text", "next")
        assert swapped["kv"]["version"] == 3
        with pytest.raises(ConcordClientError) as failed:
            await client.cas("dir/key one", "stale", "lost")
        assert failed.value.code == "compare_failed"
        assert (failed.value.status, failed.value.definite) == (409, True)
        assert failed.value.current is not None and failed.value.current["value"] == b"next"
        created = await client.put("dir/other", b"x", create_only=True)
        assert created["revision"] == 4
        with pytest.raises(ConcordClientError, match="compare_failed"):
            await client.put("dir/other", b"y", create_only=True)
        binary_cas = await client.put("dir/other", b"z", prev_value=b"x")
        assert binary_cas["revision"] == 5
        listed = await client.list("dir/", limit=1)
        assert [kv["key"] for kv in listed["kvs"]] == ["dir/key one"]
        assert listed["more"] is True
        everything = await client.list()
        assert [kv["value"] for kv in everything["kvs"]] == [b"next", b"z"]
        deleted = await client.delete("dir/other", prev_revision=5)
        assert deleted is not None and deleted["prev"]["value"] == b"z"
        assert await client.delete("dir/other") is None
        with pytest.raises(ConcordClientError) as refused:
            await client.put("_concord/members/x", b"v")
        assert (refused.value.code, refused.value.retryable) == ("bad_request", False)
    assert node.fsm.revision == 6
    assert all(len(command.request_id) == 32 for command in node.commands)
    assert len({command.request_id for command in node.commands}) == len(node.commands)


async def test_cluster_operations() -> None:
    node = FakeNode("n1")
    async with served(node) as url, AsyncConcordClient([url], msgpack=True) as client:
        assert (await client.status())["id"] == "n1"
        assert await client.ready() is True
        members = await client.add_member("n2", "http://p2", "http://c2")
        assert [(m["id"], m["role"]) for m in members] == [("n1", "voter"), ("n2", "voter")]
        members = await client.add_member("n3", "http://p3", "http://c3", learner=True)
        assert members[-1]["role"] == "learner"
        assert [m["id"] for m in await client.remove_member("n3")] == ["n1", "n2"]
        assert [m["id"] for m in await client.members()] == ["n1", "n2"]
        assert await client.transfer_leader() == "n2"
        node.ready = False
        assert await client.ready() is False


async def test_fails_over_from_a_dead_endpoint_and_sticks_to_the_live_one() -> None:
    node = FakeNode("n1")
    dead = dead_endpoint()
    async with served(node) as url, AsyncConcordClient([dead, url]) as client:
        assert (await client.put("k", b"v"))["revision"] == 1
        assert (await client.get("k")) is not None
        assert node.fsm.revision == 1
    assert [call.method for call in node.calls] == ["write", "get"]


async def test_fails_over_from_a_node_that_knows_no_leader() -> None:
    orphan, leader = FakeNode("n1"), FakeNode("n2")
    orphan.follow(None, None)
    async with (
        served(orphan) as orphan_url,
        served(leader) as leader_url,
        AsyncConcordClient([orphan_url, leader_url]) as client,
    ):
        written = await client.put("k", b"v", request_id="fixed-id")
    assert written["header"]["member_id"] == "n2"
    assert orphan.calls_to("write") == 1
    assert [command.request_id for command in leader.commands] == ["fixed-id"]


async def test_a_follower_endpoint_forwards_to_the_leader() -> None:
    follower, leader = FakeNode("n1"), FakeNode("n2")
    async with served(leader) as leader_url, served(follower) as follower_url:
        follower.follow("n2", leader_url)
        async with AsyncConcordClient([follower_url]) as client:
            written = await client.put("k", "v")
            assert written["header"]["member_id"] == "n2"
            assert (await client.get("k")) == written["kv"]
    assert leader.fsm.revision == 1
    assert follower.fsm.revision == 0


async def test_retryable_server_errors_move_to_the_next_endpoint() -> None:
    busy, calm = FakeNode("n1"), FakeNode("n2")
    busy.overloaded = True
    async with (
        served(busy) as busy_url,
        served(calm) as calm_url,
        AsyncConcordClient([busy_url, calm_url]) as client,
    ):
        assert (await client.put("k", b"v"))["header"]["member_id"] == "n2"
    assert busy.calls_to("write") == 1


async def test_a_retried_write_whose_answer_was_lost_applies_once() -> None:
    """The first attempt reaches the leader but its answer is lost on the way back; the client
    retries on the next endpoint with the same request id and the state machine de-duplicates."""
    leader = FakeNode("n2")
    async with served(leader) as leader_url, aiohttp.ClientSession() as relay:

        async def lose_the_answer(request: web.Request) -> web.StreamResponse:
            headers = {name: request.headers[name] for name in ("X-Request-Id", "Content-Type")}
            async with relay.request(request.method, leader_url + request.rel_url.raw_path_qs,
                                     data=await request.read(), headers=headers) as answer:
                await answer.read()
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError

        lossy_app = web.Application()
        lossy_app.router.add_route("*", "/{tail:.*}", lose_the_answer)
        lossy = TestServer(lossy_app)
        await lossy.start_server()
        try:
            lossy_url = str(lossy.make_url("")).rstrip("/")
            async with AsyncConcordClient([lossy_url, leader_url]) as client:
                written = await client.put("once", b"v")
        finally:
            await lossy.close()
    assert written["revision"] == 1
    assert leader.fsm.revision == 1
    # aiohttp itself re-sends once to the lossy endpoint before the client moves on
    assert len(leader.commands) >= 2
    assert len({command.request_id for command in leader.commands}) == 1
    assert leader.commands[0].request_id != ""


async def test_unreachable_cluster_raises_a_definite_unavailable_error() -> None:
    async with AsyncConcordClient([dead_endpoint(), dead_endpoint()], retries=2) as client:
        with pytest.raises(ConcordClientError) as failed:
            await client.put("k", b"v", request_id="r-9")
    error = failed.value
    assert (error.code, error.status, error.retryable, error.definite) == (
        "unavailable", 0, True, True)
    assert error.request_id == "r-9"


async def test_errors_that_are_not_retryable_and_definite_are_raised_at_once() -> None:
    slow, spare = FakeNode("n1"), FakeNode("n2")
    slow.time_out = True
    async with (
        served(slow) as slow_url,
        served(spare) as spare_url,
        AsyncConcordClient([slow_url, spare_url]) as client,
    ):
        with pytest.raises(ConcordClientError) as timed_out:
            await client.put("k", b"v", request_id="slow-1")
        assert (timed_out.value.code, timed_out.value.status) == ("timeout", 504)
        assert (timed_out.value.retryable, timed_out.value.definite) == (True, False)
        assert timed_out.value.request_id == "slow-1"
        slow.time_out = False
        slow.crash = RuntimeError("bug")
        with pytest.raises(ConcordClientError) as broken:
            await client.get("k")
        assert (broken.value.code, broken.value.status) == ("internal", 500)
    assert spare.calls == []


async def test_a_client_side_timeout_is_reported_as_indefinite() -> None:
    release = asyncio.Event()

    async def never_answer(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", never_answer)
    server = TestServer(app)
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        async with AsyncConcordClient([url], timeout_s=0.001) as client:
            with pytest.raises(ConcordClientError) as failed:
                await client.delete("k", request_id="del-1")
    finally:
        release.set()
        await server.close()
    assert (failed.value.code, failed.value.status, failed.value.definite) == ("timeout", 0, False)
    assert failed.value.request_id == "del-1"


@pytest.mark.parametrize(
    ("endpoints", "options"),
    [([], {}), (["ftp://x"], {}), (["http://x"], {"timeout_s": 0}),
     (["http://x"], {"retries": -1})],
)
async def test_bad_client_settings_are_refused(endpoints: list[str],
                                               options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AsyncConcordClient(endpoints, **options)


# -- the blocking client ---------------------------------------------------------------------------


@pytest.fixture
def threaded_node() -> Iterator[tuple[FakeNode, str]]:
    node = FakeNode("n1")
    with serve_in_thread(lambda: build_app(node)) as url:
        yield node, url


def test_blocking_client(threaded_node: tuple[FakeNode, str]) -> None:
    node, url = threaded_node
    with ConcordClient([dead_endpoint(), url]) as client:
        assert client.put("a", b"1")["revision"] == 1
        assert client.cas("a", b"1", b"2")["kv"]["value"] == b"2"
        got = client.get("a")
        assert got is not None and got["version"] == 2
        assert [kv["key"] for kv in client.list("a")["kvs"]] == ["a"]
        deleted = client.delete("a")
        assert deleted is not None and deleted["revision"] == 3
        assert client.get("a") is None
        assert client.status()["id"] == "n1"
        assert client.ready() is True
        assert [m["id"] for m in client.add_member("n2", "http://p2", "http://c2")] == [
            "n1", "n2"]
        assert [m["id"] for m in client.members()] == ["n1", "n2"]
        assert client.transfer_leader("n2") == "n2"
        node.leader = True
        assert [m["id"] for m in client.remove_member("n2")] == ["n1"]
    with pytest.raises(RuntimeError, match="closed"):
        client.status()
    client.close()


# -- the CLI commands ------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="concord")
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def run(*argv: str) -> int:
    args = parse(*argv)
    code: int = args.func(args)
    return code


def test_cli_put_get_list_and_delete(threaded_node: tuple[FakeNode, str],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    node, url = threaded_node
    assert run("put", "app/a", "alpha", "--endpoints", url) == 0
    assert capsys.readouterr().out == "OK revision 1 (version 1)\n"
    assert run("put", "app/b", "beta", "--create-only", "--endpoints", url) == 0
    capsys.readouterr()
    assert run("get", "app/a", "--endpoints", url) == 0
    assert capsys.readouterr().out.splitlines() == [
        "KEY    VALUE  CREATE_REV  MOD_REV  VERSION",
        "app/a  alpha  1           1        1",
    ]
    assert run("get", "app/a", "-o", "json", "--serializable", "--endpoints", url) == 0
    assert json.loads(capsys.readouterr().out) == {
        "key": "app/a", "value": "alpha", "value_encoding": "utf-8", "create_revision": 1,
        "mod_revision": 1, "version": 1}
    assert run("list", "app/", "--limit", "1", "--endpoints", url) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["app/a", "alpha", "1", "1", "1"]
    assert lines[2] == "(more keys follow; raise --limit to see them)"
    assert run("list", "-o", "json", "--endpoints", url) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [kv["key"] for kv in listed["kvs"]] == ["app/a", "app/b"]
    assert listed["more"] is False
    assert run("del", "app/a", "--endpoints", url) == 0
    assert capsys.readouterr().out == "deleted app/a (revision 3)\n"
    assert run("get", "app/a", "--endpoints", url) == 2
    assert capsys.readouterr().err == "concord: key 'app/a' not found\n"
    assert run("del", "app/a", "--endpoints", url) == 1
    assert capsys.readouterr().err == "concord: key 'app/a' not found\n"
    assert node.fsm.revision == 3


def test_cli_conditional_writes(threaded_node: tuple[FakeNode, str],
                                capsys: pytest.CaptureFixture[str]) -> None:
    node, url = threaded_node
    assert run("put", "k", "v1", "--endpoints", url) == 0
    assert run("put", "k", "v2", "--prev-revision", "1", "--endpoints", url) == 0
    assert run("put", "k", "v3", "--prev-value", "v2", "-o", "json", "--endpoints", url) == 0
    document = json.loads(capsys.readouterr().out.split("\n", 2)[2])
    assert document["kv"]["value"] == "v3"
    assert document["prev"]["value"] == "v2"
    assert run("cas", "k", "v3", "v4", "--endpoints", url) == 0
    capsys.readouterr()
    assert run("cas", "k", "v3", "v5", "--endpoints", url) == 1
    error_lines = capsys.readouterr().err.splitlines()
    assert len(error_lines) == 1
    assert error_lines[0].startswith("concord: compare_failed (409): ")
    assert error_lines[0].endswith("current value v4 (mod_revision 4)")
    assert run("put", "k", "v6", "--create-only", "--endpoints", url) == 1
    assert node.fsm.revision == 4


def test_cli_binary_values_from_a_file_and_raw_output(
    threaded_node: tuple[FakeNode, str], tmp_path: Path,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    _, url = threaded_node
    blob = bytes(range(256))
    path = tmp_path / "blob.bin"
    path.write_bytes(blob)
    assert run("put", "blob", "--file", str(path), "--endpoints", url) == 0
    capsysbinary.readouterr()
    assert run("get", "blob", "--raw", "--endpoints", url) == 0
    assert capsysbinary.readouterr().out == blob
    assert run("get", "blob", "--endpoints", url) == 0
    assert b"base64:AAECAwQF" in capsysbinary.readouterr().out
    assert run("put", "blob", "x", "--file", str(path), "--endpoints", url) == 1
    assert run("put", "blob", "--file", str(tmp_path / "missing"), "--endpoints", url) == 1
    assert b"cannot read" in capsysbinary.readouterr().err


def test_cli_status_members_and_leader(threaded_node: tuple[FakeNode, str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    node, url = threaded_node
    assert run("status", "--endpoints", url) == 0
    rows = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines()[1:])
    assert rows["id"] == "n1" and rows["role"] == "leader" and rows["term"] == "3"
    assert run("members", "add", "n2", "--peer-url", "http://p2", "--client-url", "http://c2",
               "--endpoints", url) == 0
    assert run("members", "-o", "json", "add", "n3", "--peer-url", "http://p3",
               "--client-url", "http://c3", "--learner", "--endpoints", url) == 0
    capsys.readouterr()
    assert run("members", "--endpoints", url, "-o", "json") == 0
    members = json.loads(capsys.readouterr().out)
    assert [(m["id"], m["role"]) for m in members] == [
        ("n1", "voter"), ("n2", "voter"), ("n3", "learner")]
    assert run("members", "remove", "n3", "--endpoints", url) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["ID", "ROLE", "LEADER", "PEER_URL", "CLIENT_URL"]
    assert table[1].split() == ["n1", "voter", "yes", "http://n1.peer:8001",
                                "http://127.0.0.1:7001"]
    assert len(table) == 3
    assert run("leader", "transfer", "n2", "--endpoints", url) == 0
    assert capsys.readouterr().out == "leader: n2\n"
    assert node.leader_id == "n2"


def test_cli_endpoints_come_from_the_environment(
    threaded_node: tuple[FakeNode, str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    node, url = threaded_node
    monkeypatch.setenv("CONCORD_ENDPOINTS", f"{dead_endpoint()}, {url}")
    assert run("put", "env", "v") == 0
    assert node.fsm.get("env") is not None
    monkeypatch.setenv("CONCORD_ENDPOINTS", dead_endpoint())
    assert run("get", "env") == 1
    error = capsys.readouterr().err
    assert error.startswith("concord: unavailable: ") and error.count("\n") == 1


def test_cli_parser_shape() -> None:
    args = parse("members", "-o", "json", "add", "n9", "--peer-url", "http://p",
                 "--client-url", "http://c")
    assert args.output == "json"
    assert args.func.__name__ == "member_add_command"
    assert parse("members").func.__name__ == "members_command"
    assert parse("leader", "transfer").target is None
    assert not hasattr(parse("status"), "output")
    with pytest.raises(SystemExit):
        parse("leader")
