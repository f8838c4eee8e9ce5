"""Draining an SFU node (SIGTERM): it keeps its rooms, takes no new ones, exits when empty."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from tests.support.cluster import (
    Cluster,
    cluster_fixture,
    eventually,
    participant_identities,
    send_data,
)
from tests.support.sdk import EventWaiter, connected

pytestmark = pytest.mark.sdk


# Spanning rooms drain by moving to their other nodes: tests/cluster/test_span_failover.py.
cluster = cluster_fixture(
    sfu_regions=["us-east", "us-east", "us-east"],
    edge_regions=["us-east"],
    routers_count=1,
    overrides={"span": {"enabled": False}},  # rooms pinned to one node (LiveKit's model)
)


def _state(cluster: Cluster, index: int) -> str | None:
    record = cluster.stored_record(cluster.node_ids[index])
    return None if record is None else str(record["state"])


async def test_drain_keeps_rooms_refuses_new_ones_and_exits_when_empty(cluster: Cluster) -> None:
    url = cluster.edges[0].ws_url
    room = "draining"
    async with connected(url, "p1", room) as p1, connected(url, "p2", room) as p2:
        placed = cluster.placement(room)
        assert placed is not None
        host = cluster.sfu_index(placed[0])
        node = cluster.sfus[host]
        assert _state(cluster, host) == "SERVING"
        assert cluster.ready(node) == 200

        signalled = time.monotonic()
        node.signal(signal.SIGTERM)
        await eventually(
            lambda: _state(cluster, host) == "SHUTTING_DOWN",
            timeout=1.5,
            what="the record to say SHUTTING_DOWN",
        )
        assert time.monotonic() - signalled < 1.5
        assert cluster.sfu_record(host)["state"] == "SHUTTING_DOWN"
        assert cluster.ready(node) == 503
        assert node.alive()

        # Its participants carry on.
        await send_data(p1, p2, b"still here")
        await send_data(p2, p1, b"me too")

        # New rooms go elsewhere: an SDK join, and a burst of placements on the router.
        async with connected(url, "n1", "elsewhere") as n1:
            assert cluster.host_index("elsewhere") not in (None, host)
            async with httpx.AsyncClient(timeout=5) as http:
                for i in range(10):
                    resp = await http.post(
                        f"{cluster.router_urls[0]}/place", json={"room": f"new-{i}"}
                    )
                    assert resp.json()["node_id"] != placed[0], resp.text

            # A newcomer to the active room joins it on the draining node.
            async with connected(url, "p3", room) as p3:
                assert cluster.placement(room) == placed
                assert await participant_identities(cluster.edges[0], room) == ["p1", "p2", "p3"]
                await send_data(p3, p1, b"late but welcome")
                await p1.disconnect()
                await p2.disconnect()
                await eventually(
                    lambda: _only_p3(cluster, room), timeout=5, what="p1 and p2 to have left"
                )
                assert node.alive(), "exited while a participant was still in the room"
            # p3 was the last one: the node exits by itself, successfully.
            assert await asyncio.to_thread(node.wait, 10) == 0
            assert cluster.stored_record(placed[0]) is None  # it removed its record
            assert cluster.placement(room) is None  # and released its room

            # Second node: a second signal forces the exit while a participant remains.
            other = cluster.host_index("elsewhere")
            assert other is not None
            gone = EventWaiter(n1, "disconnected")
            cluster.sfus[other].signal(signal.SIGTERM)
            await eventually(
                lambda: _state(cluster, other) == "SHUTTING_DOWN",
                timeout=1.5,
                what="the second node to drain",
            )
            assert cluster.sfus[other].alive()
            cluster.sfus[other].signal(signal.SIGTERM)
            assert await asyncio.to_thread(cluster.sfus[other].wait, 8) == 1
            await gone.wait(timeout=10)  # its participant is told the server went away
    third = ({0, 1, 2} - {host, other}).pop()
    assert cluster.sfus[third].alive()
    assert cluster.ready(cluster.sfus[third]) == 200


async def _only_p3(cluster: Cluster, room: str) -> bool:
    return await participant_identities(cluster.edges[0], room) == ["p3"]
