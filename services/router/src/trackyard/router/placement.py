"""Room placement: which node hosts a room, decided once, atomically, with a fencing epoch."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog
from trackyard.core.node import NodeRecord
from trackyard.core.routing import PlacementError
from trackyard.core.store import Placement, Store

log = structlog.get_logger(__name__)

SelectFn = Callable[[Sequence[NodeRecord]], NodeRecord]


class Placer:
    """The router's placement logic over the shared store."""

    def __init__(self, store: Store, select: SelectFn) -> None:
        self._store = store
        self._select = select

    async def place(self, room: str, *, create: bool) -> Placement | None:
        current = await self._store.get_placement(room)
        if current is not None:
            if await self._store.get_node(current.node_id) is not None:
                return current  # a draining node keeps its active rooms
            log.warning("room host is gone; placing anew", room=room, node=current.node_id)
            node = self._choose(await self._store.list_nodes())
            return await self._store.claim_room(room, node.id, replace=current)
        if not create:
            return None
        node = self._choose(await self._store.list_nodes())
        placement = await self._store.claim_room(room, node.id)
        if placement.node_id == node.id:
            log.info("room placed", room=room, node=node.id, epoch=placement.epoch)
        return placement

    def _choose(self, nodes: Sequence[NodeRecord]) -> NodeRecord:
        try:
            return self._select(nodes)
        except Exception as exc:
            raise PlacementError(503, f"no node can host the room: {exc}") from exc
