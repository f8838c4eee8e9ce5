"""``trackyard signal|router|sfu``: each service as its own process, from one config file."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

import structlog

from trackyard.cli.runtime import (
    Servers,
    SignalWatcher,
    http_server,
    make_placer,
    make_store_and_bus,
)
from trackyard.core.config import Config
from trackyard.router.app import create_app as router_app
from trackyard.router.client import HttpRouter
from trackyard.signal.app import create_app as signal_app
from trackyard.signal.edge import Edge

log = structlog.get_logger(__name__)


def _host(config: Config) -> str:
    """The address others reach this process at (the first listen address)."""
    first = config.listen_addresses()[0]
    return first or "127.0.0.1"


async def run_sfu(config: Config) -> int:
    """Serve rooms until drained (first signal) or forced (second). Exit 0 when drained."""
    # Imported here: the media plane (aiortc, PyAV) loads only in SFU processes.
    from trackyard.sfu.app import create_app as sfu_app
    from trackyard.sfu.node import SfuNode

    store, bus = make_store_and_bus(config)
    host = _host(config)
    node = SfuNode(config, store, bus, address=f"{host}:{config.node.api_port}")
    server = http_server(sfu_app(node), "", config.node.api_port)
    servers = Servers()
    servers.add(server, config.listen_addresses(), config.node.api_port)
    servers.add_metrics(config)
    forced = asyncio.Event()
    watcher = SignalWatcher(on_drain=lambda: node.spawn(node.drain()), on_force=forced.set)
    watcher.install()
    await node.start()
    serving = servers.start()
    log.info(
        "sfu serving",
        node=node.node_id,
        api=f"http://{host}:{config.node.api_port}",
        region=config.region,
        pid=os.getpid(),
    )
    done_waits = [asyncio.create_task(node.drained.wait()), asyncio.create_task(forced.wait())]
    await asyncio.wait([*done_waits, serving], return_when=asyncio.FIRST_COMPLETED)
    code = 1 if forced.is_set() else 0
    servers.request_stop()
    await node.stop()
    await _finish(servers, serving, done_waits)
    await bus.close()
    await store.close()
    log.info("sfu stopped", node=node.node_id, code=code)
    return code


async def run_router(config: Config) -> int:
    store, bus = make_store_and_bus(config)
    placer = make_placer(config, store)  # refuses bad node_selector config here
    app = router_app(placer, store)
    server = http_server(app, "", config.router.port)
    servers = Servers()
    servers.add(server, [config.router.bind_address], config.router.port)
    servers.add_metrics(config)
    stop = asyncio.Event()

    def drain() -> None:
        app.state.draining = True
        stop.set()

    SignalWatcher(on_drain=drain, on_force=stop.set).install()
    serving = servers.start()
    log.info(
        "router serving",
        url=f"http://{config.router.bind_address}:{config.router.port}",
        region=config.region,
        pid=os.getpid(),
    )
    waits = [asyncio.create_task(stop.wait())]
    await asyncio.wait([*waits, serving], return_when=asyncio.FIRST_COMPLETED)
    await _finish(servers, serving, waits)
    await bus.close()
    await store.close()
    return 0


async def run_signal(config: Config) -> int:
    """Serve client sockets. First signal: drain (refuse new sockets, send clients to resume
    through another edge) and exit 0 once their sockets are gone or at
    ``signal.drain_deadline``; a second signal exits at once (1)."""
    store, bus = make_store_and_bus(config)
    router = HttpRouter(
        config.router.urls or [f"http://{config.router.bind_address}:{config.router.port}"],
        region=config.region,
    )
    edge = Edge(config=config, store=store, bus=bus, router=router)
    host = _host(config)
    server = http_server(
        signal_app(edge), "", config.port, ws_max_size=2 * config.signal.max_message_size
    )
    servers = Servers()
    servers.add(server, config.listen_addresses(), config.port)
    servers.add_metrics(config)
    forced = asyncio.Event()
    idle = asyncio.Event()
    late = False  # the drain reached its deadline

    async def drain() -> None:
        nonlocal late
        late = not await edge.drain(config.signal.drain_deadline)
        idle.set()

    tasks: set[asyncio.Task[None]] = set()
    SignalWatcher(
        on_drain=lambda: tasks.add(asyncio.create_task(drain())), on_force=forced.set
    ).install()
    edge.start()
    serving = servers.start()
    log.info(
        "signal edge serving",
        url=f"ws://{host}:{config.port}",
        edge=edge.edge_id,
        region=config.region,
        pid=os.getpid(),
    )
    waits = [asyncio.create_task(idle.wait()), asyncio.create_task(forced.wait())]
    await asyncio.wait([*waits, serving], return_when=asyncio.FIRST_COMPLETED)
    # forced or past the deadline: an upgrade still waiting for its node or router does not
    # hold the exit
    servers.request_stop(force=forced.is_set() or late)
    await edge.stop()
    await _finish(servers, serving, waits)
    await edge.rpc.close()
    await router.close()
    await bus.close()
    await store.close()
    return 1 if forced.is_set() else 0


async def _finish(
    servers: Servers, serving: asyncio.Task[None], waits: Sequence[asyncio.Task[Any]]
) -> None:
    await servers.stop()
    serving.cancel()
    for task in waits:
        task.cancel()
