"""Assemble the services from one config: store and bus (memory or Redis), node, router, edge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
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
