"""Room placement: which node hosts a room, decided once, atomically, with a fencing epoch.

A placement is replaced only when its node is dead by :mod:`trackyard.core.liveness` (record
gone, or heartbeat lagging its peers by ``dead_after``). A room with no placement is not
claimed while the store is settling after it restarted empty: live nodes re-assert their
rooms within a heartbeat, and a join racing that waits (bounded by the grace) for the real
host's claim instead of placing a second copy of the room elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import structlog

from trackyard.core.config import LimitConfig, NodeSelectorConfig
from trackyard.core.liveness import StoreGeneration, stale_nodes
from trackyard.core.node import NodeRecord
from trackyard.core.refusal import Code, Refusal
from trackyard.core.store import Placement, Store
from trackyard.router.selector import NodeSelector, SelectorError, build_selector

log = structlog.get_logger(__name__)


class Placer:
    """The router's placement logic over the shared store.

    One selector per caller region (region-aware selection prefers the caller's region);
    the router's own region's selector is built at start-up so bad config fails early.
    """

    def __init__(
        self,
        store: Store,
        selector_config: NodeSelectorConfig,
        limits: LimitConfig,
        region: str,
        *,
        dead_after: float = 2.0,
        poll: float = 0.05,
    ) -> None:
        self._store = store
        self._dead_after = dead_after
        self._poll = poll
        self.generation = StoreGeneration(dead_after)
        self._selector_config = selector_config
        self._limits = limits
        self._region = region
        self._selectors: dict[str, NodeSelector] = {
            region: build_selector(selector_config, limits, region)
        }

    def selector(self, region: str) -> NodeSelector:
        region = region or self._region
        selector = self._selectors.get(region)
        if selector is None:
            try:
                selector = build_selector(self._selector_config, self._limits, region)
            except SelectorError as exc:
                raise Refusal(
                    Code.UNAVAILABLE, f"cannot select for region {region!r}: {exc}"
                ) from exc
            self._selectors[region] = selector
        return selector

    async def place(self, room: str, *, create: bool, region: str = "") -> Placement | None:
        await self.generation.observe(self._store)
        current = await self._store.get_placement(room)
        if current is None and self.generation.settling():
            current = await self._await_reassertion(room)
        if current is not None:
            host = current.node_id
            nodes, dead = await self._nodes(lambda ns: any(n.id == host for n in ns))
            if current.node_id not in dead and any(n.id == current.node_id for n in nodes):
                return current  # a draining node keeps its active rooms
            log.warning("room host is dead; placing anew", room=room, node=current.node_id)
            node = self._choose([n for n in nodes if n.id not in dead], region)
            return await self._store.claim_room(room, node.id, replace=current)
        if not create:
            return None
        nodes, dead = await self._nodes(bool)
        node = self._choose([n for n in nodes if n.id not in dead], region)
        placement = await self._store.claim_room(room, node.id)
        if placement.node_id == node.id:
            log.info("room placed", room=room, node=node.id, epoch=placement.epoch)
        return placement

    async def _await_reassertion(self, room: str) -> Placement | None:
        """The store restarted empty a moment ago: the room may live on a node that has not
        re-asserted it yet. Wait for its claim until the grace ends (no event to await: the
        claim is another process's write)."""
        log.info("store is settling; waiting for the room's host", room=room)
        while (left := self.generation.remaining()) > 0:
            await asyncio.sleep(min(self._poll, left))
            current = await self._store.get_placement(room)
            if current is not None:
                return current
        return None

    async def _nodes(
        self, enough: Callable[[list[NodeRecord]], bool]
    ) -> tuple[list[NodeRecord], set[str]]:
        """Live node records and the ids among them that missed heartbeats. While the store
        is settling, records missing now may come back with the nodes' next heartbeat: wait
        (bounded by the grace) until ``enough`` of them are there."""
        nodes = await self._store.list_nodes()
        while not enough(nodes) and (left := self.generation.remaining()) > 0:
            await asyncio.sleep(min(self._poll, left))
            nodes = await self._store.list_nodes()
        ages = await self._store.node_heartbeats([n.id for n in nodes])
        return nodes, stale_nodes(ages, self._dead_after)

    def _choose(self, nodes: Sequence[NodeRecord], region: str) -> NodeRecord:
        try:
            return self.selector(region).select(nodes)
        except SelectorError as exc:
            raise Refusal(Code.UNAVAILABLE, f"no node can host the room: {exc}") from exc
