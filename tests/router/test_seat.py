"""Participant seating (``Placer.seat``): which node of a room a joining participant goes to.

Fake node records in a MemoryStore; the selector sorts by sysload so every choice is
deterministic. The HTTP round trip (``POST /seat`` through :class:`HttpRouter`) at the end.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from trackyard.core.config import LimitConfig, NodeSelectorConfig, RegionConfig, SpanConfig
from trackyard.core.node import NodeRecord, NodeState, NodeStats
from trackyard.core.refusal import Code, Refusal
from trackyard.core.store import MemoryStore, Seat
from trackyard.router.app import create_app
from trackyard.router.client import HttpRouter
from trackyard.router.placement import Placer

EAST = RegionConfig(name="us-east", lat=40.69, lon=-74.04)
WEST = RegionConfig(name="eu-west", lat=53.35, lon=-6.26)
SOUTH = RegionConfig(name="ap-south", lat=19.08, lon=72.88)  # nearer eu-west than us-east

SYSLOAD = NodeSelectorConfig(kind="sysload", sort_by="sysload", sysload_limit=0.7)
REGIONAWARE = NodeSelectorConfig(
    kind="regionaware", sort_by="sysload", sysload_limit=0.7, regions=[EAST, WEST, SOUTH]
)


class AgedStore(MemoryStore):
    """Heartbeat ages set by the test (how liveness tells a dead node from a live one)."""

    def __init__(self) -> None:
        super().__init__()
        self.ages: dict[str, float] = {}

    async def node_heartbeats(self, node_ids: list[str]) -> dict[str, float]:
        beats = await super().node_heartbeats(node_ids)
        return {n: self.ages.get(n, age) for n, age in beats.items()}


async def add_node(
    store: MemoryStore,
    node_id: str,
    *,
    region: str = "us-east",
    sysload: float = 0.0,
    state: NodeState = NodeState.SERVING,
) -> None:
    record = NodeRecord(id=node_id, region=region, state=state, stats=NodeStats(sysload=sysload))
    await store.put_node(record, ttl=60)


def placer(
    store: MemoryStore,
    *,
    selector: NodeSelectorConfig = SYSLOAD,
    region: str = "us-east",
    span: SpanConfig | None = None,
    limits: LimitConfig | None = None,
) -> Placer:
    return Placer(store, selector, limits or LimitConfig(), region, span=span)


async def seat_of(p: Placer, identity: str, room: str = "r", region: str = "") -> Seat:
    seat = await p.seat(room, identity, create=True, region=region)
    assert seat is not None
    return seat


async def test_a_room_on_one_node_seats_everyone_at_home() -> None:
    store = MemoryStore()
    await add_node(store, "ND_a")
    await add_node(store, "ND_b", sysload=0.3)
    p = placer(store)
    first = await seat_of(p, "p1")
    assert first.home.node_id == first.node_id == "ND_a"
    for who in ("p2", "p3"):
        assert (await seat_of(p, who)).node_id == "ND_a"
    assert await store.list_seats("r") == {"p1": "ND_a", "p2": "ND_a", "p3": "ND_a"}
    assert await p.place("r", create=False) == first.home  # place() still names the home


async def test_a_room_node_with_capacity_is_reused_before_a_fresh_node() -> None:
    store = MemoryStore()
    await add_node(store, "ND_home")
    await add_node(store, "ND_used", sysload=0.5)
    await add_node(store, "ND_fresh", sysload=0.1)  # the selector's pick for a new node
    p = placer(store)
    home = (await seat_of(p, "p1")).home
    await store.put_seat("r", "elsewhere", "ND_used")  # the room already spans ND_used
    await add_node(store, "ND_home", sysload=0.9)  # the home is over the load limit now
    for who in ("p2", "p3"):
        seat = await seat_of(p, who)
        assert seat == Seat(home, "ND_used")
    # The home back under the limit is preferred again, although ND_fresh is less loaded.
    await add_node(store, "ND_home", sysload=0.6)
    assert (await seat_of(p, "p4")).node_id == "ND_home"


async def test_a_full_node_sends_joins_to_another_node_then_the_room_extends() -> None:
    store = MemoryStore()
    for node_id, sysload in (("ND_a", 0.0), ("ND_b", 0.1), ("ND_c", 0.2)):
        await add_node(store, node_id, sysload=sysload)
    p = placer(store, span=SpanConfig(node_participants=2))
    got = [(await seat_of(p, f"p{i}")).node_id for i in range(6)]
    assert got == ["ND_a", "ND_a", "ND_b", "ND_b", "ND_c", "ND_c"]
    # Every node holds its share: the next join overfills one rather than being refused.
    assert (await seat_of(p, "p6")).node_id in {"ND_a", "ND_b", "ND_c"}
    # A participant that left (its seat deleted) frees its place on that node.
    assert await store.delete_seat("r", "p2", "ND_b")
    await store.delete_seat("r", "p6", (await store.get_seat("r", "p6")) or "")
    assert (await seat_of(p, "p7")).node_id == "ND_b"


async def test_a_join_from_another_region_goes_to_a_node_of_that_region() -> None:
    store = MemoryStore()
    await add_node(store, "ND_east")
    await add_node(store, "ND_west1", region="eu-west", sysload=0.2)
    await add_node(store, "ND_west2", region="eu-west", sysload=0.1)
    p = placer(store, selector=REGIONAWARE)
    home = (await seat_of(p, "e1", region="us-east")).home
    assert home.node_id == "ND_east"
    assert (await seat_of(p, "w1", region="eu-west")) == Seat(home, "ND_west2")
    await add_node(store, "ND_west2", region="eu-west", sysload=0.3)
    # The room's node in eu-west is reused although ND_west1 is now the lighter one.
    assert (await seat_of(p, "w2", region="eu-west")).node_id == "ND_west2"
    assert (await seat_of(p, "e2", region="us-east")).node_id == "ND_east"
    assert (await seat_of(p, "e3")).node_id == "ND_east"  # "" = the router's own region


async def test_a_region_without_nodes_uses_the_rooms_node_in_the_nearest_region() -> None:
    store = MemoryStore()
    await add_node(store, "ND_east")
    await add_node(store, "ND_west1", region="eu-west", sysload=0.4)
    await add_node(store, "ND_west2", region="eu-west", sysload=0.1)
    p = placer(store, selector=REGIONAWARE)
    await seat_of(p, "e1", region="us-east")
    assert (await seat_of(p, "s1", region="ap-south")).node_id == "ND_west2"  # new node
    await add_node(store, "ND_west2", region="eu-west", sysload=0.5)
    # ND_west1 is lighter now, but the room already has a node in that region.
    assert (await seat_of(p, "s2", region="ap-south")).node_id == "ND_west2"


async def test_callers_without_region_take_any_node_of_the_room() -> None:
    store = MemoryStore()
    await add_node(store, "ND_a", region="us-east")
    await add_node(store, "ND_b", region="eu-west", sysload=0.2)
    p = placer(store, region="")
    assert (await seat_of(p, "p1")).node_id == "ND_a"
    await store.put_seat("r", "x", "ND_b")
    await add_node(store, "ND_a", region="us-east", sysload=0.9)
    assert (await seat_of(p, "p2")).node_id == "ND_b"


async def test_an_identity_already_seated_rejoins_its_node() -> None:
    store = MemoryStore()
    await add_node(store, "ND_a")
    await add_node(store, "ND_b", sysload=0.1)
    p = placer(store, span=SpanConfig(node_participants=1))
    assert [(await seat_of(p, who)).node_id for who in ("p1", "p2")] == ["ND_a", "ND_b"]
    # Draining and over its share: the old participant is there, so the rejoin is too.
    await add_node(store, "ND_b", sysload=0.1, state=NodeState.SHUTTING_DOWN)
    await store.put_seat("r", "p3", "ND_b")
    assert (await seat_of(p, "p2")).node_id == "ND_b"
    resumed = await p.seat("r", "p2", create=False)
    assert resumed is not None and resumed.node_id == "ND_b"
    # A newcomer never joins the draining node.
    assert (await seat_of(p, "p4")).node_id == "ND_a"


async def test_a_seat_on_a_dead_node_is_replaced() -> None:
    store = AgedStore()
    await add_node(store, "ND_a")
    await add_node(store, "ND_b", sysload=0.1)
    await add_node(store, "ND_c", sysload=0.2)
    p = placer(store, span=SpanConfig(node_participants=1))
    assert [(await seat_of(p, who)).node_id for who in ("p1", "p2", "p3")] == [
        "ND_a",
        "ND_b",
        "ND_c",
    ]
    await store.delete_node("ND_b")  # its record expired
    store.ages["ND_c"] = 10.0  # its heartbeat lags the others' by more than dead_after
    await store.delete_seat("r", "p1", "ND_a")  # p1 left: the home has a free place
    assert (await seat_of(p, "p2")).node_id == "ND_a"
    assert await store.get_seat("r", "p2") == "ND_a"
    resumed = await p.seat("r", "p3", create=False)  # a resume re-seats too
    assert resumed is not None and resumed.node_id == "ND_a"


async def test_span_disabled_pins_everyone_to_the_home() -> None:
    store = MemoryStore()
    await add_node(store, "ND_east")
    await add_node(store, "ND_west", region="eu-west")
    p = placer(store, selector=REGIONAWARE, span=SpanConfig(enabled=False, node_participants=1))
    home = (await seat_of(p, "e1", region="us-east")).home
    for who, region in (("e2", "us-east"), ("w1", "eu-west")):
        assert await seat_of(p, who, region=region) == Seat(home, "ND_east")
    assert await store.list_seats("r") == {}


async def test_absent_room_without_create_and_no_node_at_all() -> None:
    store = MemoryStore()
    p = placer(store)
    assert await p.seat("r", "p1", create=False) is None
    with pytest.raises(Refusal) as err:
        await p.seat("r", "p1", create=True)
    assert err.value.code is Code.UNAVAILABLE
    assert await store.list_seats("r") == {}


# HTTP -----------------------------------------------------------------------------------


async def test_seat_over_http() -> None:
    store = MemoryStore()
    await add_node(store, "ND_a")
    await add_node(store, "ND_b", sysload=0.1)
    p = placer(store, span=SpanConfig(node_participants=1))
    router = HttpRouter(["http://router-1"], region="us-east")
    await router.close()
    transport = httpx.ASGITransport(app=create_app(p, store))
    router._client = httpx.AsyncClient(transport=transport)  # the app, without a socket
    try:
        assert await router.seat("r", "p1", create=False) is None
        first = await router.seat("r", "p1", create=True)
        assert first is not None and first.node_id == first.home.node_id == "ND_a"
        assert await router.seat("r", "p2", create=True) == Seat(first.home, "ND_b")
        assert await router.place("r", create=False) == first.home
        assert await store.list_seats("r") == {"p1": "ND_a", "p2": "ND_b"}
        await store.delete_node("ND_a")
        await store.delete_node("ND_b")
        with pytest.raises(Refusal) as err:
            await router.seat("other", "p1", create=True)
        assert err.value.code is Code.UNAVAILABLE
    finally:
        await router.close()


async def test_a_draining_home_alone_still_seats_its_room() -> None:
    """One node, draining: its active room still admits (LiveKit's drain); a new room does not
    get placed there."""
    store = MemoryStore()
    await add_node(store, "ND_a")
    p = placer(store)
    assert (await seat_of(p, "p1")).node_id == "ND_a"
    await add_node(store, "ND_a", state=NodeState.SHUTTING_DOWN)
    assert (await seat_of(p, "p2")).node_id == "ND_a"
    with pytest.raises(Refusal) as refused:
        await p.seat("new-room", "p3", create=True)
    assert refused.value.code is Code.UNAVAILABLE


async def test_a_dead_home_is_replaced_by_a_surviving_part() -> None:
    store = AgedStore()
    for node, load in (("ND_a", 0.0), ("ND_b", 0.1), ("ND_c", 0.2)):
        await add_node(store, node, sysload=load)
    p = placer(store, span=SpanConfig(node_participants=1))
    assert (await seat_of(p, "p1")).node_id == "ND_a"
    assert (await seat_of(p, "p2")).node_id == "ND_b"  # the room extends to ND_b
    await add_node(store, "ND_c", sysload=0.0)  # the selector's pick for a new room now
    store.ages["ND_a"] = 30.0  # ND_a died; ND_c is live but holds no part of the room
    seat = await seat_of(p, "p3")
    assert seat.home.node_id == "ND_b" and seat.home.epoch == 2


class RacingStore(MemoryStore):
    """Every seat read yields first, as a Redis round trip does: joins decide concurrently."""

    async def list_seats(self, room: str) -> dict[str, str]:
        seats = await super().list_seats(room)
        await asyncio.sleep(0)  # the answer travels back while other joins read too
        return seats


async def test_joins_deciding_at_once_do_not_overfill_a_node() -> None:
    store = RacingStore()
    for i, node in enumerate(("ND_a", "ND_b", "ND_c", "ND_d")):
        await add_node(store, node, sysload=0.1 * i)
    p = placer(store, span=SpanConfig(node_participants=3))
    await seat_of(p, "first")  # the room exists: the rest race for seats in it
    seats = await asyncio.gather(*(seat_of(p, f"p{i}") for i in range(11)))
    load = Counter(s.node_id for s in seats) + Counter({"ND_a": 1})
    assert load == {"ND_a": 3, "ND_b": 3, "ND_c": 3, "ND_d": 3}, load
    assert Counter((await store.list_seats("r")).values()) == load
