"""``trackyard dev``: edge, router and one SFU node in one process (embedded store and bus)."""

from __future__ import annotations

import asyncio
import os

import structlog

from trackyard.cli.runtime import (
    Servers,
    SignalWatcher,
    http_server,
    make_placer,
    make_store_and_bus,
)
from trackyard.core.config import Config
from trackyard.sfu.node import SfuNode
from trackyard.signal.app import create_app
from trackyard.signal.edge import Edge

log = structlog.get_logger(__name__)


async def run_all_in_one(config: Config) -> int:
    """Serve until drained (first signal) or forced (second signal). Returns the exit code."""
    store, bus = make_store_and_bus(config)
    node = SfuNode(config, store, bus)
    placer = make_placer(config, store)
    edge = Edge(config=config, store=store, bus=bus, router=placer)
    addresses = config.listen_addresses()
    server = http_server(
        create_app(edge), "", config.port, ws_max_size=2 * config.signal.max_message_size
    )
    servers = Servers()
    servers.add(server, addresses, config.port)
    servers.add_metrics(config)
    forced = asyncio.Event()

    def drain() -> None:
        edge.draining = True
        node.spawn(node.drain())

    watcher = SignalWatcher(on_drain=drain, on_force=forced.set)
    watcher.install()
    await node.start()
    edge.start()
    serving = servers.start()
    log.info(
        "trackyard serving",
        url=f"ws://{addresses[0] or '0.0.0.0'}:{config.port}",
        listen=[a or "*" for a in addresses],
        metrics_port=config.prometheus.port or None,
        node=node.node_id,
        keys=list(config.keys),
        pid=os.getpid(),
    )
    waits = [asyncio.create_task(node.drained.wait()), asyncio.create_task(forced.wait()), serving]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    code = 0 if not forced.is_set() else 1
    servers.request_stop()
    await node.stop()
    await edge.stop()
    await servers.stop()
    await edge.rpc.close()
    await bus.close()
    await store.close()
    for task in waits:
        task.cancel()
    log.info("trackyard stopped", code=code)
    return code
