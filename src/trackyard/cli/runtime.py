"""Assemble the services from one config: store and bus (memory or Redis), node, router, edge."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import uvicorn

from trackyard.core.bus import Bus, MemoryBus
from trackyard.core.config import Config
from trackyard.core.node import NodeRecord
from trackyard.core.store import MemoryStore, Store
from trackyard.router.placement import Placer

log = structlog.get_logger(__name__)

DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def make_store_and_bus(config: Config) -> tuple[Store, Bus]:
    if not config.redis.enabled:
        return MemoryStore(), MemoryBus()
    from trackyard.core.redisbus import RedisBus
    from trackyard.core.redisconn import connect_redis
    from trackyard.core.redisstore import RedisStore

    client = connect_redis(config.redis)
    return RedisStore(client, owns_client=True), RedisBus(client)  # the store closes the client


async def list_nodes(config: Config) -> list[NodeRecord]:
    store, bus = make_store_and_bus(config)
    try:
        return await store.list_nodes()
    finally:
        await bus.close()
        await store.close()


def make_placer(config: Config, store: Store) -> Placer:
    return Placer(
        store,
        config.node_selector,
        config.limit,
        config.region,
        dead_after=config.node.dead_after,
        span=config.span,
    )


class _DenialLogFilter(logging.Filter):
    """uvicorn's sans-io WebSocket protocol logs an error after every denial response
    (HTTP refusal of an upgrade) although the response was sent; we refuse on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing handshake" not in record.getMessage()


logging.getLogger("uvicorn.error").addFilter(_DenialLogFilter())


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the process owns signal handling (drain)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def http_server(app: Any, host: str, port: int, *, ws_max_size: int = 16 << 20) -> QuietServer:
    cfg = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        ws="websockets-sansio",
        ws_max_size=ws_max_size,
        lifespan="off",
    )
    return QuietServer(cfg)


def bind_sockets(addresses: list[str], port: int) -> list[socket.socket]:
    """Listening TCP sockets on every address; ``""`` means every interface (IPv6 dual-stack
    where the host has it). ``::1`` is skipped where the host has no IPv6 loopback."""
    out: list[socket.socket] = []
    try:
        for address in addresses:
            if address in ("", "::"):
                if socket.has_dualstack_ipv6():
                    try:
                        out.append(
                            socket.create_server(
                                ("", port), family=socket.AF_INET6, dualstack_ipv6=True
                            )
                        )
                        continue
                    except OSError as exc:
                        if exc.errno != errno.EADDRNOTAVAIL:
                            raise
                out.append(socket.create_server(("0.0.0.0", port), reuse_port=False))
                continue
            family = (
                socket.AF_INET6
                if ipaddress.ip_address(address.strip("[]")).version == 6
                else socket.AF_INET
            )
            try:
                out.append(socket.create_server((address.strip("[]"), port), family=family))
            except OSError as exc:
                if address == "::1" and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    log.info("no IPv6 loopback; not listening on ::1", port=port)
                    continue
                raise
    except BaseException:
        for sock in out:
            sock.close()
        raise
    for sock in out:
        sock.setblocking(False)
    return out


async def serve(server: uvicorn.Server, addresses: list[str], port: int) -> None:
    """Run ``server`` on every address of ``addresses`` (see :func:`bind_sockets`)."""
    await server.serve(sockets=bind_sockets(addresses, port))


class Servers:
    """The HTTP listeners of one process, bound up front (a port in use fails start-up)."""

    def __init__(self) -> None:
        self._servers: list[tuple[uvicorn.Server, list[socket.socket]]] = []
        self.tasks: list[asyncio.Task[None]] = []

    def add(self, server: uvicorn.Server, addresses: list[str], port: int) -> None:
        self._servers.append((server, bind_sockets(addresses, port)))

    def add_metrics(self, config: Config) -> None:
        found = metrics_server(config)
        if found is not None:
            self.add(*found)

    def start(self) -> asyncio.Task[None]:
        """Serve all; the returned task ends when the first listener stops."""
        self.tasks = [
            asyncio.create_task(server.serve(sockets=socks)) for server, socks in self._servers
        ]
        return asyncio.create_task(self._first())

    async def _first(self) -> None:
        await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)

    def request_stop(self, *, force: bool = False) -> None:
        """Stop serving; ``force``: without waiting for open connections and requests still
        being handled (uvicorn's second Ctrl-C)."""
        for server, _ in self._servers:
            server.should_exit = True
            if force:
                server.force_exit = True

    async def stop(self, timeout: float = 5.0) -> None:
        self.request_stop()
        if self.tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), timeout)


def metrics_server(config: Config) -> tuple[uvicorn.Server, list[str], int] | None:
    """The Prometheus listener on ``prometheus.port`` (basic auth when a username is set),
    or None when no port is configured."""
    if not config.prometheus.port:
        return None
    from trackyard.core.metrics import metrics_app

    app = metrics_app(config.prometheus.username, config.prometheus.password)
    return (
        http_server(app, "", config.prometheus.port),
        config.listen_addresses(),
        (config.prometheus.port),
    )


@dataclass
class SignalWatcher:
    """First drain signal calls ``on_drain``; a second one forces exit."""

    on_drain: Callable[[], object]
    on_force: Callable[[], object]
    count: int = 0
    _installed: list[int] = field(default_factory=list)

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in DRAIN_SIGNALS:
            loop.add_signal_handler(sig, self._fired, sig)
            self._installed.append(sig)

    def _fired(self, sig: int) -> None:
        self.count += 1
        log.info("signal received", signal=signal.Signals(sig).name, count=self.count)
        if self.count == 1:
            self.on_drain()
        else:
            self.on_force()
