"""Fixtures for the docker-compose cluster tests: the concord:local image and a compose project.

The image comes from scripts/docker-build.sh, which skips the build when the image already
matches the sources. Each cluster is a compose project of its own (``concord-test-<pid>``)
with its client ports on free 127.0.0.1 ports, and is always taken down with its volumes.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from concord.cluster import LocalCluster, free_port_block

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE = "concord:local"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
NODE_IDS = ("n1", "n2", "n3")
DOCKER_INFO_TIMEOUT_S = 30.0
# The first build on a machine without a registry (Debian base + image) took ~3.5 minutes on
# 2 shared cores; it must end within pytest's per-test timeout (600 s), which includes setup.
IMAGE_BUILD_TIMEOUT_S = 480.0
COMPOSE_TIMEOUT_S = 120.0
HTTP_TIMEOUT_S = 5.0


def _run(command: list[str], timeout_s: float, env: Mapping[str, str] | None = None,
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO_ROOT, env=dict(env) if env is not None else None,
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def compose_command() -> list[str] | None:
    """``docker compose`` (v2 plugin) when present, else ``docker-compose`` (v1), else None."""
    if _run(["docker", "compose", "version"], DOCKER_INFO_TIMEOUT_S).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose") is not None:
        return ["docker-compose"]
    return None


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """An HTTP answer from a node; ``status`` 0 means no answer (connection failed)."""

    status: int
    document: dict[str, object]

    @property
    def retryable(self) -> bool:
        """No answer, or an error the node says may succeed when sent again."""
        if self.status == 0:
            return True
        error = self.document.get("error")
        return isinstance(error, dict) and bool(error.get("retryable"))


def http_request(method: str, url: str, body: bytes | None = None,
                 headers: Mapping[str, str] | None = None) -> HttpAnswer:
    """One request; HTTP errors are answers, connection failures are status 0."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return HttpAnswer(response.status, json.loads(response.read()))
    except urllib.error.HTTPError as error:
        with error:
            raw = error.read()
        try:
            document = json.loads(raw)
        except ValueError:
            document = {"error": {"message": raw.decode(errors="replace")}}
        return HttpAnswer(error.code, document)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        return HttpAnswer(0, {"error": {"message": str(error)}})


@dataclass(frozen=True, slots=True)
class ComposeCluster:
    """A running compose project: its nodes' client URLs on the host and its compose CLI."""

    project: str
    compose: tuple[str, ...]
    env: Mapping[str, str]
    client_urls: Mapping[str, str]  # node id -> http://127.0.0.1:<published port>

    def run(self, *arguments: str, timeout_s: float = COMPOSE_TIMEOUT_S,
            ) -> subprocess.CompletedProcess[str]:
        command = [*self.compose, "--project-name", self.project, "--file", str(COMPOSE_FILE),
                   *arguments]
        return _run(command, timeout_s, self.env)

    def container_id(self, node_id: str) -> str:
        result = self.run("ps", "-q", node_id)
        assert result.returncode == 0, result.stderr
        container = result.stdout.strip()
        assert container, f"no container for {node_id} in {self.project}"
        return container

    def kill(self, node_id: str) -> None:
        """SIGKILL the node's container (``docker kill``): no shutdown, no flush."""
        result = _run(["docker", "kill", self.container_id(node_id)], COMPOSE_TIMEOUT_S)
        assert result.returncode == 0, result.stderr

    def logs(self) -> str:
        result = self.run("logs", "--no-color", "--tail", "60")
        return result.stdout + result.stderr


@pytest.fixture(scope="session")
def concord_image(request: pytest.FixtureRequest) -> str:
    """concord:local, built by scripts/docker-build.sh (a no-op when it matches the sources);
    skips the tests when no Docker engine is reachable or the image cannot be built."""
    if shutil.which("docker") is None:
        pytest.skip("cluster tests need Docker: no docker command on PATH")
    try:
        info = _run(["docker", "info"], DOCKER_INFO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"cluster tests need Docker: docker info hung for {DOCKER_INFO_TIMEOUT_S} s")
    if info.returncode != 0:
        pytest.skip("cluster tests need a Docker engine: docker info failed: "
                    + _tail(info.stderr, 3))
    started_s = time.monotonic()
    try:
        build = _run([str(REPO_ROOT / "scripts" / "docker-build.sh")], IMAGE_BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"cannot build {IMAGE}: scripts/docker-build.sh took over "
                    f"{IMAGE_BUILD_TIMEOUT_S} s")
    if build.returncode != 0:
        pytest.skip(f"cannot build {IMAGE} (scripts/docker-build.sh exit {build.returncode}):\n"
                    + _tail(build.stdout + build.stderr))
    _report(request, f"{IMAGE} ready after {time.monotonic() - started_s:.0f} s: "
                     + _tail(build.stderr, 1).removeprefix("==> "))
    return IMAGE


def _report(request: pytest.FixtureRequest, line: str) -> None:
    """Write a line to the terminal past pytest's output capture (the build time in CI logs)."""
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\n{line}")


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None],
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember whether a test's body failed, so the cluster fixture can print the logs."""
    report = yield
    if call.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


@pytest.fixture
def compose_cluster(concord_image: str, request: pytest.FixtureRequest,
                    ) -> Iterator[ComposeCluster]:
    """The 3-node docker-compose.yml cluster as a project of its own; ``down -v`` always."""
    compose = compose_command()
    if compose is None:
        pytest.skip("cluster tests need docker compose (plugin) or docker-compose")
    base = free_port_block(len(NODE_IDS))  # below the ephemeral range: see its docstring
    ports = range(base, base + len(NODE_IDS))
    env = dict(os.environ)
    env.update({f"HOST_PORT_{node_id.upper()}": str(port)
                for node_id, port in zip(NODE_IDS, ports, strict=True)})
    cluster = ComposeCluster(
        project=f"concord-test-{os.getpid()}",
        compose=tuple(compose),
        env=env,
        client_urls={node_id: f"http://127.0.0.1:{port}"
                     for node_id, port in zip(NODE_IDS, ports, strict=True)},
    )
    try:
        up = cluster.run("up", "--detach", "--no-build")
        assert up.returncode == 0, f"compose up failed:\n{_tail(up.stdout + up.stderr, 30)}"
        yield cluster
    finally:
        if request.node.stash.get(_CALL_FAILED, False):
            print(f"--- logs of {cluster.project} ---\n{cluster.logs()}", file=sys.stderr)
        down = cluster.run("down", "--volumes", "--remove-orphans", "--timeout", "5")
        assert down.returncode == 0, f"compose down failed:\n{_tail(down.stderr)}"


LOG_TAIL_LINES = 30


def log_tails(cluster: LocalCluster, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of every node's log file of a local process cluster."""
    parts = []
    for node in cluster.nodes.values():
        if node.log_path is not None and node.log_path.exists():
            tail = node.log_path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"----- {node.node_id} -----\n" + "\n".join(tail))
    return "\n".join(parts)
