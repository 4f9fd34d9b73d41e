"""How a nemesis reaches a cluster: ``ClusterControl`` and its three implementations.

``ClusterControl`` is the interface the nemeses are written against. The process-level
actions (kill -9, restart, pause, resume, is the node up) are abstract; the HTTP ones are
shared by every implementation because every node serves the same API: the fault hook
(``/v1/debug/faults``: peer links and wall-clock offset), ``/v1/status`` (who leads),
``/ready`` and leadership transfer.

- ``LocalProcessControl`` wraps a ``LocalCluster`` this process started (signals to its
  children, restart through ``LocalCluster.start_node``);
- ``ManifestControl`` drives a cluster another process started (``concord cluster up``),
  found through ``<data-dir>/cluster.json``: signals by pid, restart by the node's config;
- ``ComposeControl`` drives a docker-compose project through the docker CLI (``docker
  kill``, ``docker start``, ``docker pause`` and ``unpause``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp

from concord.cluster import LocalCluster

HTTP_TIMEOUT_S: Final = 2.0
"""Bound on one control request (fault hook, status, ready)."""

POLL_INTERVAL_S: Final = 0.1
PROCESS_EXIT_TIMEOUT_S: Final = 10.0
DOCKER_TIMEOUT_S: Final = 60.0
CMDLINE_READS: Final = 5
CMDLINE_RETRY_S: Final = 0.01

Document = dict[str, Any]


class ControlError(Exception):
    """A control action that could not be done (the message says which and why)."""


class ClusterControl(ABC):
    """Process and network control over the nodes of one cluster; see the module docstring."""

    def __init__(self, client_urls: Mapping[str, str]) -> None:
        assert client_urls, "a cluster has at least one node"
        self._client_urls = dict(client_urls)
        self._session: aiohttp.ClientSession | None = None

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(self._client_urls)

    def client_url(self, node_id: str) -> str:
        return self._client_urls[node_id]

    @property
    def endpoints(self) -> list[str]:
        return list(self._client_urls.values())

    # -- processes (one implementation per kind of cluster) ------------------------------

    @abstractmethod
    async def kill(self, node_id: str) -> None:
        """SIGKILL the node: no shutdown, no flush; returns once it is gone."""

    @abstractmethod
    async def restart(self, node_id: str) -> None:
        """Start a node that is down, on its existing data."""

    @abstractmethod
    async def pause(self, node_id: str) -> None:
        """Freeze the node (SIGSTOP): it holds its sockets but answers nothing."""

    @abstractmethod
    async def resume(self, node_id: str) -> None:
        """Unfreeze the node (SIGCONT); harmless when it is not paused."""

    @abstractmethod
    async def is_up(self, node_id: str) -> bool:
        """Whether the node's process (or container) exists and has not exited."""

    # -- HTTP, shared ----------------------------------------------------------------------

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
            )
        return self._session

    async def _request(self, method: str, node_id: str, path: str,
                       body: Document | None = None,
                       timeout_s: float = HTTP_TIMEOUT_S) -> tuple[int, Document]:
        """(status, JSON document) of one request; ControlError when no answer came."""
        url = self.client_url(node_id) + path
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._http().request(
                method, url, data=data, headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as answer:
                payload = await answer.read()
                status = answer.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ControlError(f"{node_id}: {method} {path}: no answer "
                               f"({type(error).__name__})") from None
        try:
            document = json.loads(payload) if payload else {}
        except ValueError:
            document = {}
        return status, document if isinstance(document, dict) else {}

    async def set_faults(self, node_id: str, settings: Mapping[str, object]) -> None:
        """Change the node's faults (``FaultInjector`` fields: peer links and
        ``clock_offset_ms``), keeping the rest."""
        status, document = await self._request("PUT", node_id, "/v1/debug/faults",
                                               dict(settings))
        _expect_ok(node_id, "PUT /v1/debug/faults", status, document)

    async def clear_faults(self, node_id: str) -> None:
        """Turn every fault of the node off (its clock back to its startup offset)."""
        status, document = await self._request("DELETE", node_id, "/v1/debug/faults")
        _expect_ok(node_id, "DELETE /v1/debug/faults", status, document)

    async def faults(self, node_id: str) -> str | None:
        """The node's faults in force for a person (``none``, or ``blocked_peers=['n2']``
        and the like), or None when they cannot be read (no answer, fault injection off)."""
        try:
            code, document = await self._request("GET", node_id, "/v1/debug/faults")
        except ControlError:
            return None
        faults = document.get("faults")
        if code != 200 or not isinstance(faults, dict):
            return None
        active = [f"{name}={value}" for name, value in faults.items() if value]
        return ", ".join(active) or "none"

    async def status(self, node_id: str) -> Document | None:
        """The node's ``/v1/status`` document, or None when it does not answer."""
        try:
            code, document = await self._request("GET", node_id, "/v1/status",
                                                 timeout_s=HTTP_TIMEOUT_S / 2)
        except ControlError:
            return None
        status = document.get("status")
        return status if code == 200 and isinstance(status, dict) else None

    async def statuses(self) -> dict[str, Document | None]:
        answers = await asyncio.gather(*(self.status(n) for n in self.node_ids))
        return dict(zip(self.node_ids, answers, strict=True))

    async def find_leader(self) -> str | None:
        """The node that says it leads in the highest term, or None when none does."""
        claims = [(s["term"], node_id) for node_id, s in (await self.statuses()).items()
                  if s is not None and s.get("role") == "leader"]
        return max(claims)[1] if claims else None

    async def wait_leader(self, timeout_s: float) -> str | None:
        """The leader once one is found, or None after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            leader = await self.find_leader()
            if leader is not None or time.monotonic() >= deadline:
                return leader
            await asyncio.sleep(POLL_INTERVAL_S)

    async def transfer_leader(self, target: str | None, timeout_s: float) -> str:
        """Ask the cluster to hand leadership to ``target`` (None: the most caught-up voter);
        the new leader's id."""
        via = await self.find_leader() or self.node_ids[0]
        timeout_ms = max(1, round(timeout_s * 1000))
        status, document = await self._request(
            "POST", via, f"/v1/cluster/leader?timeout_ms={timeout_ms}", {"target": target},
            timeout_s=timeout_s + 1.0,
        )
        _expect_ok(via, "POST /v1/cluster/leader", status, document)
        leader = document.get("leader")
        if not isinstance(leader, str):
            raise ControlError(f"{via}: POST /v1/cluster/leader answered no leader")
        return leader

    async def ready_nodes(self) -> set[str]:
        """The nodes answering ``/ready`` with 200 now."""

        async def ready(node_id: str) -> bool:
            try:
                code, _ = await self._request("GET", node_id, "/ready",
                                              timeout_s=HTTP_TIMEOUT_S / 2)
            except ControlError:
                return False
            return code == 200

        answers = await asyncio.gather(*(ready(n) for n in self.node_ids))
        return {n for n, ok in zip(self.node_ids, answers, strict=True) if ok}

    async def wait_ready(self, timeout_s: float) -> float:
        """Seconds until every node answered ``/ready``; TimeoutError naming the laggards."""
        started = time.monotonic()
        while True:
            pending = set(self.node_ids) - await self.ready_nodes()
            if not pending:
                return time.monotonic() - started
            if time.monotonic() - started >= timeout_s:
                raise TimeoutError(f"not ready after {timeout_s:g} s: "
                                   f"{', '.join(sorted(pending))}")
            await asyncio.sleep(POLL_INTERVAL_S)


def _expect_ok(node_id: str, what: str, status: int, document: Document) -> None:
    if status == 200:
        return
    error = document.get("error")
    message = error.get("message", "") if isinstance(error, dict) else ""
    if status == 403:
        raise ControlError(f"{node_id}: {what}: fault injection is off (start the nodes with "
                           f"fault_injection = true: concord cluster up --fault-injection)")
    raise ControlError(f"{node_id}: {what}: HTTP {status} {message}".rstrip())


class LocalProcessControl(ClusterControl):
    """A ``LocalCluster`` whose node processes are children of this process."""

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__({n.node_id: n.client_url for n in cluster.nodes.values()})
        self.cluster = cluster

    async def kill(self, node_id: str) -> None:
        self.cluster.kill(node_id)

    async def restart(self, node_id: str) -> None:
        if not self.cluster.nodes[node_id].is_running():
            self.cluster.start_node(node_id)
            self.cluster.write_manifest()

    async def pause(self, node_id: str) -> None:
        self.cluster.pause(node_id)

    async def resume(self, node_id: str) -> None:
        self.cluster.resume(node_id)

    async def is_up(self, node_id: str) -> bool:
        return self.cluster.nodes[node_id].is_running()


class ManifestControl(ClusterControl):
    """A local cluster started by another process, described by ``<data-dir>/cluster.json``.

    Signals go to the recorded pids, but only while ``/proc`` shows a ``concord serve``
    process there (a pid may have been reused). A restarted node is started from its config
    file in a new session, logs to ``<data-dir>/<id>.chaos.log``, and its pid is written back
    to the manifest so that ``concord cluster down`` stops it too.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.manifest_path = self.data_dir / "cluster.json"
        try:
            manifest = json.loads(self.manifest_path.read_text())
            nodes = {str(n["id"]): n for n in manifest["nodes"]}
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ControlError(f"no cluster recorded at {self.manifest_path}: {error}") from None
        super().__init__({node_id: str(n["client_url"]) for node_id, n in nodes.items()})
        self._manifest: Document = manifest
        self._nodes: dict[str, Document] = nodes

    def pid(self, node_id: str) -> int | None:
        pid = self._nodes[node_id].get("pid")
        return pid if isinstance(pid, int) and pid > 0 else None

    def _live_pid(self, node_id: str) -> int | None:
        pid = self.pid(node_id)
        return pid if pid is not None and _live_state(pid) is not None else None

    async def kill(self, node_id: str) -> None:
        pid = self._live_pid(node_id)
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + PROCESS_EXIT_TIMEOUT_S
        while self._live_pid(node_id) is not None:
            if time.monotonic() > deadline:
                raise ControlError(f"{node_id} (pid {pid}) still alive after SIGKILL")
            await asyncio.sleep(POLL_INTERVAL_S / 2)

    async def restart(self, node_id: str) -> None:
        if self._live_pid(node_id) is not None:
            return
        config = self._nodes[node_id].get("config")
        if not isinstance(config, str):
            raise ControlError(f"{node_id}: the manifest has no config path to restart from")
        log_path = self.data_dir / f"{node_id}.chaos.log"
        command = [sys.executable, "-m", "concord", "serve", "--config", config]
        env = dict(os.environ)
        env.setdefault("CONCORD_LOG_FORMAT", "console")
        env["PYTHONUNBUFFERED"] = "1"
        file_actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
             0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        # posix_spawn rather than Popen: the node outlives this command and nobody waits
        # for it here (its parent becomes init when this process exits).
        pid = os.posix_spawn(sys.executable, command, env, file_actions=file_actions,
                             setsid=True)
        self._nodes[node_id]["pid"] = pid
        self.manifest_path.write_text(json.dumps(self._manifest, indent=2) + "\n")

    async def pause(self, node_id: str) -> None:
        pid = self._live_pid(node_id)
        if pid is not None:
            os.kill(pid, signal.SIGSTOP)

    async def resume(self, node_id: str) -> None:
        pid = self._live_pid(node_id)
        if pid is not None:
            os.kill(pid, signal.SIGCONT)

    async def is_up(self, node_id: str) -> bool:
        return self._live_pid(node_id) is not None


def _live_state(pid: int) -> str | None:
    """The ``/proc`` state letter of the live ``concord serve`` process with this pid, or None
    when there is none: no such process, a pid now used by another program, or a zombie
    whose threads have all exited. (A killed process's main thread turns zombie before its
    other threads are gone; until they are, it still holds its sockets.)"""
    proc = Path("/proc") / str(pid)
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return state if len(os.listdir(proc / "task")) > 1 else None
        command_line = b""
        for _ in range(CMDLINE_READS):  # empty for a moment right after exec
            command_line = (proc / "cmdline").read_bytes()
            if command_line:
                break
            time.sleep(CMDLINE_RETRY_S)
    except OSError:
        return None
    arguments = command_line.split(b"\0")
    return state if b"concord" in arguments and b"serve" in arguments else None


class ComposeControl(ClusterControl):
    """A docker compose project (v1 or v2), driven with the docker CLI: each node's
    container is the one labelled with the project and the node's id as its service.
    ``pause`` uses the cgroup freezer (``docker pause``), which freezes the node as SIGSTOP
    does."""

    def __init__(self, project: str, client_urls: Mapping[str, str]) -> None:
        super().__init__(client_urls)
        self.project = project
        self._containers: dict[str, str] = {}

    async def _run(self, *command: str) -> str:
        try:
            process = await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
        except OSError as error:
            raise ControlError(f"{command[0]}: cannot run it: {error}") from None
        try:
            out, err = await asyncio.wait_for(process.communicate(), DOCKER_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise ControlError(f"{' '.join(command)}: no answer in {DOCKER_TIMEOUT_S:g} s") \
                from None
        if process.returncode != 0:
            raise ControlError(f"{' '.join(command)}: exit {process.returncode}: "
                               f"{err.decode(errors='replace').strip()}")
        return out.decode(errors="replace").strip()

    async def container(self, node_id: str) -> str:
        """The id of the node's container."""
        if node_id not in self._containers:
            found = await self._run(
                "docker", "ps", "--all", "--quiet",
                "--filter", f"label=com.docker.compose.project={self.project}",
                "--filter", f"label=com.docker.compose.service={node_id}")
            if not found:
                raise ControlError(f"no container for {node_id} in compose project "
                                   f"{self.project}")
            self._containers[node_id] = found.splitlines()[0]
        return self._containers[node_id]

    async def _state(self, node_id: str) -> tuple[bool, bool]:
        """(running, paused) of the node's container."""
        answer = await self._run("docker", "inspect", "--format",
                                 "{{.State.Running}} {{.State.Paused}}",
                                 await self.container(node_id))
        running, paused = answer.split()
        return running == "true", paused == "true"

    async def kill(self, node_id: str) -> None:
        running, _ = await self._state(node_id)
        if running:
            await self._run("docker", "kill", "--signal", "KILL",
                            await self.container(node_id))

    async def restart(self, node_id: str) -> None:
        running, _ = await self._state(node_id)
        if not running:
            await self._run("docker", "start", await self.container(node_id))

    async def pause(self, node_id: str) -> None:
        running, paused = await self._state(node_id)
        if running and not paused:
            await self._run("docker", "pause", await self.container(node_id))

    async def resume(self, node_id: str) -> None:
        _, paused = await self._state(node_id)
        if paused:
            await self._run("docker", "unpause", await self.container(node_id))

    async def is_up(self, node_id: str) -> bool:
        running, _ = await self._state(node_id)
        return running
