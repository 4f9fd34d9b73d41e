"""``concord serve``: run one node until SIGTERM/SIGINT, then shut down in order.

Start: set the process's garbage-collector policy, recover storage (what it loaded is then
frozen out of the collector's sight), start the peer listener, the driver, the ticker,
membership (SWIM) and the quorum store, then the client listener. Stop: the node announces
its leave to the other members (bounded by ``LEAVE_TIMEOUT_S``), a leader hands leadership
over, new client work is refused, in-flight work finishes, then the client listener, the
driver, storage (flushed and closed) and the peer transport go down, in that order.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import structlog
from aiohttp import web

from concord.api.forward import LeaderForwarder
from concord.api.http import create_client_app
from concord.config import NodeConfig
from concord.observability.logging import configure_logging
from concord.observability.metrics import NodeMetrics
from concord.runtime.gc_policy import GcPolicy
from concord.runtime.node import ConcordNode
from concord.storage import DataDirectoryLockedError, StorageCorruptError
from concord.storage.dkv_sqlite import ReplicaSchemaError, ReplicaStoreLockedError

log = structlog.get_logger("concord.serve")

SHUTDOWN_TIMEOUT_S = 5.0
LEAVE_TIMEOUT_S = 1.0


async def serve(config: NodeConfig) -> int:
    metrics = NodeMetrics()
    gc_policy = GcPolicy(config.gc, metrics)
    gc_policy.install()
    try:
        return await _serve(config, metrics, gc_policy)
    finally:
        gc_policy.uninstall()


async def _serve(config: NodeConfig, metrics: NodeMetrics, gc_policy: GcPolicy) -> int:
    node = ConcordNode(config, metrics)

    def context() -> dict[str, object]:
        return {"term": node.raft.term if node.raft else 0, "lamport": node.lamport.time}

    configure_logging(config.log, config.node_id, context)
    try:
        await node.start()
    except StorageCorruptError as exc:
        log.error("refusing to start: the data directory is corrupt", error=str(exc),
                  data_dir=str(config.data_dir))
        await node.close()
        return 2
    except (OSError, DataDirectoryLockedError, ReplicaSchemaError,
            ReplicaStoreLockedError) as exc:
        log.error("cannot start", error=str(exc))
        await node.close()
        return 1
    gc_policy.freeze_survivors()
    forwarder = LeaderForwarder(node)
    app = create_client_app(node, limits=config.limits, metrics=metrics, faults=node.faults,
                            forwarder=forwarder, membership=node.membership, dkv=node.dkv)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = config.client_listen.rpartition(":")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with asyncio.TaskGroup() as tasks:
            driver = tasks.create_task(node.run_driver(), name="driver")
            ticker = tasks.create_task(node.run_ticker(), name="ticker")
            membership = tasks.create_task(node.run_membership(), name="membership")
            dkv = (tasks.create_task(node.dkv.run(), name="dkv")
                   if node.dkv is not None else None)
            site = web.TCPSite(runner, host or "0.0.0.0", int(port))
            await site.start()
            log.info("serving", client=config.client_url, peer=config.peer_url,
                     cluster=config.cluster_id)
            await stop.wait()
            log.info("shutting down")
            await node.leave_membership(LEAVE_TIMEOUT_S)
            await node.prepare_shutdown(SHUTDOWN_TIMEOUT_S)
            await runner.cleanup()
            driver.cancel()
            ticker.cancel()
            membership.cancel()
            if dkv is not None:
                dkv.cancel()
    finally:
        await forwarder.close()
        await node.close()
    log.info("stopped")
    return 0


def run(config: NodeConfig) -> int:
    """Run ``serve`` on uvloop when available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on supported platforms
        return asyncio.run(serve(config))
    if sys.platform == "win32":  # pragma: no cover
        return asyncio.run(serve(config))
    return int(uvloop.run(serve(config)))
