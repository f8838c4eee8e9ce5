"""Room placement: which node hosts a room, decided once, atomically, with a fencing epoch."""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from trackyard.core.config import LimitConfig, NodeSelectorConfig
from trackyard.core.node import NodeRecord
from trackyard.core.routing import PlacementError
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
    ) -> None:
        self._store = store
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
                raise PlacementError(503, f"cannot select for region {region!r}: {exc}") from exc
            self._selectors[region] = selector
        return selector

    async def place(self, room: str, *, create: bool, region: str = "") -> Placement | None:
        current = await self._store.get_placement(room)
        if current is not None:
            if await self._store.get_node(current.node_id) is not None:
                return current  # a draining node keeps its active rooms
            log.warning("room host is gone; placing anew", room=room, node=current.node_id)
            node = self._choose(await self._store.list_nodes(), region)
            return await self._store.claim_room(room, node.id, replace=current)
        if not create:
            return None
        node = self._choose(await self._store.list_nodes(), region)
        placement = await self._store.claim_room(room, node.id)
        if placement.node_id == node.id:
            log.info("room placed", room=room, node=node.id, epoch=placement.epoch)
        return placement

    def _choose(self, nodes: Sequence[NodeRecord], region: str) -> NodeRecord:
        try:
            return self.selector(region).select(nodes)
        except SelectorError as exc:
            raise PlacementError(503, f"no node can host the room: {exc}") from exc
