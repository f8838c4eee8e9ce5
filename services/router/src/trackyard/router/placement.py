"""Room placement: which node hosts a room, decided once, atomically, with a fencing epoch;
and participant seating: which node of a (possibly spanning) room a joining participant goes to.

A placement is replaced only when its node is dead by :mod:`trackyard.core.liveness` (record
gone, or heartbeat lagging its peers by ``dead_after``). A room with no placement is not
claimed while the store is settling after it restarted empty: live nodes re-assert their
rooms within a heartbeat, and a join racing that waits (bounded by the grace) for the real
host's claim instead of placing a second copy of the room elsewhere.

A room keeps its placement as its *home* and may span more nodes (``span:``). A participant
is seated on one of them (:meth:`Placer.seat`): where its identity already sits if that node
lives (a rejoin replaces the old participant there), else a node of the room in the caller's
region with room to spare (the home first), else a node the selector picks, which the room
then extends to. The seat is written before the join goes out, so concurrent joins count it,
and written only if the node still has room (``Store.take_seat``): joins deciding at the same
moment, through this router or another, do not overfill a node; the loser decides again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence

import structlog

from trackyard.core.config import LimitConfig, NodeSelectorConfig, SpanConfig
from trackyard.core.liveness import StoreGeneration, stale_nodes
from trackyard.core.node import NodeRecord
from trackyard.core.refusal import Code, Refusal
from trackyard.core.store import Placement, Seat, Store
from trackyard.router.selector import NodeSelector, SelectorError, build_selector

log = structlog.get_logger(__name__)

SEAT_ATTEMPTS = 4  # decisions per join before it is seated on a node that filled meanwhile

# Live node records (dead ones left out) by id: what one placement decision looked at.
_Live = dict[str, NodeRecord]


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
        span: SpanConfig | None = None,
    ) -> None:
        self._store = store
        self._span = SpanConfig() if span is None else span
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
        placed = await self._place(room, create=create, region=region)
        return None if placed is None else placed[0]

    async def _place(
        self, room: str, *, create: bool, region: str
    ) -> tuple[Placement, _Live] | None:
        """The room's placement (made when ``create``) and the live nodes it was judged on."""
        await self.generation.observe(self._store)
        current = await self._store.get_placement(room)
        if current is None and self.generation.settling():
            current = await self._await_reassertion(room)
        if current is not None:
            host = current.node_id
            live = await self._live(lambda ns: any(n.id == host for n in ns))
            if host in live:
                return current, live  # a draining node keeps its active rooms
            log.warning("room host is dead; placing anew", room=room, node=current.node_id)
            node = await self._survivor(room, live) or self._choose(list(live.values()), region)
            return await self._store.claim_room(room, node.id, replace=current), live
        live = await self._live(bool)
        # a home that went away (drained, or closed by its node) may leave parts behind
        survivor = await self._survivor(room, live)
        if not create and survivor is None:
            return None
        node = survivor or self._choose(list(live.values()), region)
        placement = await self._store.claim_room(room, node.id)
        if placement.node_id == node.id:
            log.info("room placed", room=room, node=node.id, epoch=placement.epoch)
        return placement, live

    async def _survivor(self, room: str, live: _Live) -> NodeRecord | None:
        """A live node still holding part of a room whose home is gone: the room (its state,
        its participants) lives on there, so it becomes the home rather than a new node."""
        if not self._span.enabled:
            return None
        nodes = {n for n in (await self._store.list_seats(room)).values() if n in live}
        parts = [live[n] for n in sorted(nodes) if live[n].is_available()]
        return self.selector("").lowest(parts) if parts else None

    async def seat(
        self, room: str, identity: str, *, create: bool, region: str = ""
    ) -> Seat | None:
        """Where ``identity`` joins (or resumes in) ``room``: the room's home placement (made
        when ``create``) and the node of the room to send the participant to; None when the
        room is absent and not created. The seat is recorded before returning."""
        placed = await self._place(room, create=create, region=region)
        if placed is None:
            return None
        home, live = placed
        if not self._span.enabled:
            return Seat(home, home.node_id)
        cap = self._span.node_participants
        for _ in range(SEAT_ATTEMPTS):
            seats = await self._store.list_seats(room)
            node_id, why = self._seat_node(home, identity, seats, live, region)
            # a choice made because the node had room is re-checked as it is written: joins
            # deciding at the same moment (this router or another) cannot overfill it
            taken = sum(1 for who, n in seats.items() if n == node_id and who != identity)
            limit = cap if cap > 0 and taken < cap else 0
            if await self._store.take_seat(room, identity, node_id, limit):
                break
            log.info("node filled meanwhile; seating again", room=room, node=node_id)
        else:  # the room is filling faster than we can decide: overfill rather than refuse
            await self._store.put_seat(room, identity, node_id)
            why = "node filled meanwhile, seated anyway"
        log.info("participant seated", room=room, identity=identity, node=node_id, why=why)
        return Seat(home, node_id)

    def _seat_node(
        self, home: Placement, identity: str, seats: dict[str, str], live: _Live, region: str
    ) -> tuple[str, str]:
        """The node for the participant and why it was chosen (for the log)."""
        previous = seats.get(identity)
        if previous is not None and previous in live:
            # A rejoin lands where the old participant is, so the node replaces it (duplicate
            # identity); a draining node still takes joins to its active rooms.
            return previous, "seated before"
        cap = self._span.node_participants
        load = Counter(node for who, node in seats.items() if who != identity)
        # Capacity and sort order do not depend on the caller's region: judge them with the
        # router's own selector (a caller's region may be unknown to node_selector.regions).
        gauge = self.selector("")

        def fits(node: NodeRecord) -> bool:
            return cap <= 0 or load[node.id] < cap

        room_nodes = sorted({home.node_id, *seats.values()} & live.keys())
        spare = [
            live[n]
            for n in room_nodes
            if live[n].is_available() and fits(live[n]) and gauge.has_capacity(live[n])
        ]
        # A caller without a region (none configured anywhere) takes any node of the room.
        want = region or self._region
        local = [n for n in spare if not want or n.region == want]
        if local:
            return self._prefer_home(home, local, gauge), "room node in region"
        fitting = [n for n in live.values() if fits(n)]
        try:
            chosen = self.selector(region).select(fitting)
        except SelectorError:
            # Every usable node already holds its share of the room: overfill one rather
            # than refuse the join (node_participants spreads a room; it admits no one).
            if not any(n.is_available() for n in live.values()) and home.node_id in live:
                # nothing SERVING: a draining home still admits to its active room
                return home.node_id, "draining home, no other node"
            chosen = self._choose(list(live.values()), region)
        # The caller's region had no room for it: when the selector went to a region where
        # the room already has a node with room to spare, use that one instead of spreading
        # the room over one more node.
        there = [n for n in spare if n.region == chosen.region]
        if there and chosen.id not in room_nodes:
            return self._prefer_home(home, there, gauge), "room node in nearest region"
        return chosen.id, "room node picked by selector" if chosen.id in room_nodes else "new node"

    @staticmethod
    def _prefer_home(home: Placement, nodes: list[NodeRecord], selector: NodeSelector) -> str:
        if any(n.id == home.node_id for n in nodes):
            return home.node_id
        return selector.lowest(nodes).id

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

    async def _live(self, enough: Callable[[list[NodeRecord]], bool]) -> _Live:
        """Node records by id, without the ones that missed heartbeats. While the store is
        settling, records missing now may come back with the nodes' next heartbeat: wait
        (bounded by the grace) until ``enough`` of them are there."""
        nodes = await self._store.list_nodes()
        while not enough(nodes) and (left := self.generation.remaining()) > 0:
            await asyncio.sleep(min(self._poll, left))
            nodes = await self._store.list_nodes()
        ages = await self._store.node_heartbeats([n.id for n in nodes])
        dead = stale_nodes(ages, self._dead_after)
        return {n.id: n for n in nodes if n.id not in dead}

    def _choose(self, nodes: Sequence[NodeRecord], region: str) -> NodeRecord:
        try:
            return self.selector(region).select(nodes)
        except SelectorError as exc:
            raise Refusal(Code.UNAVAILABLE, f"no node can host the room: {exc}") from exc
