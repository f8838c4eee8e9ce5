"""What a signal edge holds: config, keys, store, bus, router and a node RPC client."""

from __future__ import annotations

from dataclasses import dataclass, field

from trackyard.core import ids
from trackyard.core.auth import KeyProvider
from trackyard.core.bus import Bus
from trackyard.core.config import Config
from trackyard.core.noderpc import NodeRpcClient
from trackyard.core.routing import Router
from trackyard.core.store import Store
from trackyard.signal.nodewatch import NodeWatch


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
        # A node re-reports within a stats interval of a Redis restart; allow two.
        self.nodewatch = NodeWatch(self.store, grace=2 * self.config.node.stats_update_interval)

    async def ready(self) -> tuple[bool, str]:
        """Can this edge serve now? (``/readyz``)"""
        if self.draining:
            return False, "draining"
        if not await self.store.ping():
            return False, "store unreachable"
        if not await self.bus.ping():
            return False, "bus unreachable"
        return True, "ok"
