"""What a signal edge holds: config, keys, store, bus, router and a node RPC client."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import structlog

from trackyard.core import ids
from trackyard.core.auth import KeyProvider
from trackyard.core.bus import Bus
from trackyard.core.config import Config
from trackyard.core.noderpc import NodeRpcClient
from trackyard.core.routing import Router
from trackyard.core.store import Store
from trackyard.signal.nodewatch import NodeWatch

log = structlog.get_logger(__name__)


@dataclass
class Edge:
    config: Config
    store: Store
    bus: Bus
    router: Router
    edge_id: str = field(default_factory=lambda: ids.new_id("ED_"))
    draining: bool = False

    def __post_init__(self) -> None:
        self.keys = KeyProvider(self.config.keys)
        self.rpc = NodeRpcClient(self.bus, self.edge_id)
        node = self.config.node
        # A node re-reports within a heartbeat of a Redis restart; allow dead_after.
        self.nodewatch = NodeWatch(
            self.store,
            interval=node.heartbeat_interval / 2,
            grace=node.dead_after,
            dead_after=node.dead_after,
        )
        self._heartbeat: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Register this edge (a record with a TTL, rewritten every heartbeat) and watch the
        nodes: a node that finds the record expired removes this edge's participants."""
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._register(), name="edge-heartbeat")
        self.nodewatch.start()

    async def stop(self) -> None:
        await self.nodewatch.stop()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat

    @property
    def ttl(self) -> float:
        node = self.config.node
        return max(3 * node.heartbeat_interval, node.dead_after)

    async def _register(self) -> None:
        while True:
            try:
                await self.store.put_edge(self.edge_id, self.ttl)
            except Exception as exc:
                log.debug("cannot register edge", edge=self.edge_id, error=str(exc))
            await asyncio.sleep(self.config.node.heartbeat_interval)

    async def ready(self) -> tuple[bool, str]:
        """Can this edge serve now? (``/readyz``)"""
        if self.draining:
            return False, "draining"
        if not await self.store.ping():
            return False, "store unreachable"
        if not await self.bus.ping():
            return False, "bus unreachable"
        return True, "ok"
