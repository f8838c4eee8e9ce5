"""Room placement across a cluster: concurrency, regions, load, draining and stale nodes.

The cluster: 2 routers, an edge in us-east and one in eu-west, SFU nodes 0 and 1 in us-east
and node 2 in eu-west, region-aware selection (sysload limit 0.7) with us-west configured as a
region that has no real node.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from livekit import rtc

from tests.support.cluster import (
    Cluster,
    cluster_fixture,
    eventually,
    list_rooms,
    participant_identities,
    send_data,
)
from tests.support.sdk import connected, token
from trackyard.core.config import RedisConfig
from trackyard.core.node import NodeRecord, NodeState, NodeStats
from trackyard.core.redisconn import connect_redis
from trackyard.core.redisstore import RedisStore

pytestmark = pytest.mark.sdk

US_EAST = {0, 1}
EU_WEST = 2
CROWD = 50


# the default layout described above, rooms pinned to their home (spanning rooms:
# tests/cluster/test_span.py)
cluster = cluster_fixture(overrides={"span": {"enabled": False}})


@contextlib.asynccontextmanager
async def store_of(cluster: Cluster) -> AsyncIterator[RedisStore]:
    client = connect_redis(RedisConfig(address=cluster.redis.address))
    try:
        yield RedisStore(client)
    finally:
        await client.aclose()


async def set_loads(cluster: Cluster, loads: dict[int, float]) -> None:
    """Drive the reported sysload of SFU nodes and wait until their records carry it."""
    for index, sysload in loads.items():
        cluster.set_load(index, sysload=sysload)

    def reported(index: int, sysload: float) -> bool:
        stored = cluster.stored_record(cluster.node_ids[index]) or {"stats": {}}
        return bool(
            cluster.sfu_record(index)["stats"]["sysload"] == sysload
            and stored["stats"].get("sysload") == sysload
        )

    for index, sysload in loads.items():
        await eventually(
            functools.partial(reported, index, sysload),
            timeout=5,
            what=f"node {index} to report sysload {sysload}",
        )


async def test_fifty_concurrent_joins_end_in_one_room(cluster: Cluster) -> None:
    room = "crowd"
    urls = [cluster.edges[i % 2].ws_url for i in range(CROWD)]
    clients = [rtc.Room() for _ in range(CROWD)]

    async def join(i: int) -> None:
        await asyncio.wait_for(clients[i].connect(urls[i], token(f"p{i:02d}", room)), 60)

    results = await asyncio.gather(*(join(i) for i in range(CROWD)), return_exceptions=True)
    try:
        failures = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
        assert failures == [], f"{len(failures)} joins failed: {failures[:3]}"
        identities = [f"p{i:02d}" for i in range(CROWD)]
        for edge in cluster.edges:
            assert await participant_identities(edge, room) == identities

        async def one_room_of_fifty() -> bool:
            rooms = await list_rooms(cluster.edges[1])
            return [(r.name, r.num_participants) for r in rooms] == [(room, CROWD)]

        await eventually(one_room_of_fifty, timeout=10, what="ListRooms: 1 room of 50")

        host = cluster.host_index(room)
        assert host is not None

        def hosted_once() -> bool:
            records = [cluster.sfu_record(i)["stats"] for i in range(len(cluster.sfus))]
            return all(
                (s["rooms"], s["clients"]) == ((1, CROWD) if i == host else (0, 0))
                for i, s in enumerate(records)
            )

        await eventually(hosted_once, timeout=5, what=f"only node {host} to host the room")
        # Everyone sees everyone: one room, not two rooms with the same name.
        await eventually(
            lambda: all(len(c.remote_participants) == CROWD - 1 for c in clients),
            timeout=20,
            what="every client to see the 49 others",
        )
        await send_data(clients[0], clients[CROWD - 1], b"one room")  # across the two edges
    finally:
        await asyncio.gather(
            *(asyncio.wait_for(c.disconnect(), 10) for c in clients), return_exceptions=True
        )


async def test_region_aware_placement_and_overflow(cluster: Cluster) -> None:
    east_edge, west_edge = cluster.edges
    async with (
        connected(east_edge.ws_url, "e", "east-room") as e,
        connected(west_edge.ws_url, "w", "west-room") as w,
    ):
        assert cluster.host_index("east-room") in US_EAST
        assert cluster.host_index("west-room") == EU_WEST
        assert e.connection_state == w.connection_state == rtc.ConnectionState.CONN_CONNECTED
    try:
        await set_loads(cluster, {0: 0.95, 1: 0.95})
        # Both us-east nodes are over the limit: the nearest other region takes the room.
        async with connected(east_edge.ws_url, "o", "east-overflow"):
            assert cluster.host_index("east-overflow") == EU_WEST
            assert cluster.sfu_record(EU_WEST)["region"] == "eu-west"
            assert await participant_identities(west_edge, "east-overflow") == ["o"]
        # Over the limit everywhere: the load filter falls back to the caller's region.
        await set_loads(cluster, {EU_WEST: 0.95})
        async with connected(east_edge.ws_url, "f", "east-fallback"):
            assert cluster.host_index("east-fallback") in US_EAST
    finally:
        await set_loads(cluster, {0: 0.0, 1: 0.0, EU_WEST: 0.0})


async def _place(client: httpx.AsyncClient, url: str, room: str, region: str) -> str:
    resp = await client.post(f"{url}/place", json={"room": room, "region": region})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["node_id"])


async def test_draining_and_stale_nodes_are_never_chosen(cluster: Cluster) -> None:
    """Fake node records in Redis that would win on load if the filters were wrong."""
    fakes = {
        "ND_fakedraining": NodeRecord(
            id="ND_fakedraining", region="us-east", state=NodeState.SHUTTING_DOWN
        ),
        "ND_fakestale": NodeRecord(
            id="ND_fakestale",
            region="us-east",
            stats=NodeStats(updated_at=time.time() - 30),  # older than 5 s: not fresh
        ),
    }
    real_east = {cluster.node_ids[i] for i in US_EAST}
    async with store_of(cluster) as store, httpx.AsyncClient(timeout=5) as http:
        try:
            await set_loads(cluster, {0: 0.5, 1: 0.5, EU_WEST: 0.5})  # fakes report 0.0
            for record in fakes.values():
                await store.put_node(record, ttl=60)
            assert {n.id for n in await store.list_nodes()} >= set(fakes)
            chosen = await asyncio.gather(
                *(
                    _place(http, cluster.router_urls[i % 2], f"skip-{i}", "us-east")
                    for i in range(20)
                )
            )
            assert set(chosen) <= real_east, chosen
            assert len(set(chosen)) == 2, "equally loaded nodes should share new rooms"

            # us-east overloaded: the nearest other region with a node wins (us-west, a fake
            # node, is nearer to us-east than eu-west is).
            await set_loads(cluster, {0: 0.95, 1: 0.95})
            west = NodeRecord(id="ND_fakeuswest", region="us-west", stats=NodeStats(sysload=0.3))
            await store.put_node(west, ttl=60)
            assert await _place(http, cluster.router_urls[0], "overflow-west", "us-east") == (
                west.id
            )
            # ...and eu-west callers still get their own region.
            assert (
                await _place(http, cluster.router_urls[1], "stay-eu", "eu-west")
                == (cluster.node_ids[EU_WEST])
            )
        finally:
            for node_id in [*fakes, "ND_fakeuswest"]:
                await store.delete_node(node_id)
            await store.release_room("overflow-west", "ND_fakeuswest")
            await set_loads(cluster, {0: 0.0, 1: 0.0, EU_WEST: 0.0})
