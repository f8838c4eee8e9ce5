"""Redis goes away under a running cluster and comes back empty on the same port."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import websockets

from tests.support.cluster import (
    Cluster,
    cluster_fixture,
    eventually,
    list_rooms,
    participant_identities,
    send_data,
)
from tests.support.sdk import EventWaiter, admin_token, connected, token
from trackyard.core import keys

pytestmark = pytest.mark.sdk

OUTAGE_SECONDS = 3.0  # several record refreshes (0.5 s), well under the clients' ping timeout


# Pinned rooms: a room the store gives to another node is given up (a spanning room's part
# follows the new home instead).
cluster = cluster_fixture(
    sfu_regions=["us-east", "us-east"],
    edge_regions=["us-east", "us-east"],
    overrides={"span": {"enabled": False}},  # rooms pinned to one node (LiveKit's model)
)


def _statuses(cluster: Cluster) -> dict[str, int]:
    return {f"{p.command}:{p.ready_port}": cluster.ready(p) for p in cluster.all_processes()}


async def test_redis_outage_and_recovery(cluster: Cluster) -> None:
    room = "steady"
    e0, e1 = cluster.edges
    async with (
        connected(e0.ws_url, "a", room) as a,
        connected(e1.ws_url, "b", room) as b,
        connected(e1.ws_url, "q", room) as q,
    ):
        # Both publish first: a client's publisher connection (its data channels) is
        # negotiated over signalling on first use, which needs the bus.
        await send_data(a, b, b"before")
        await send_data(b, a, b"before, back")
        host = cluster.placement(room)
        assert host is not None
        seen: dict[str, list[str]] = {"a": [], "b": []}
        for client, name in ((a, "a"), (b, "b")):
            for event in ("reconnecting", "reconnected", "disconnected"):
                client.on(event, lambda *_args, e=event, n=name: seen[n].append(e))

        cluster.redis.stop()
        down_at = time.monotonic()
        await eventually(
            lambda: set(_statuses(cluster).values()) == {503},
            timeout=5,
            what="every /readyz to say 503",
        )
        # Joins and API calls are refused with a reason while the store is away.
        query = f"room={room}&access_token={token('x', room)}"
        async with httpx.AsyncClient(timeout=10) as http:
            resp = await http.get(f"{e0.http_url}/rtc/validate?{query}")
            assert resp.status_code == 503, resp.text
            for method in ("ListRooms", "ListParticipants"):
                resp = await http.post(
                    f"{e1.http_url}/twirp/livekit.RoomService/{method}",
                    json={"room": room},
                    headers={"Authorization": f"Bearer {admin_token(room)}"},
                )
                assert (resp.status_code, resp.json()["code"]) == (503, "unavailable"), resp.text
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(f"{e1.ws_url}/rtc?{query}", open_timeout=10):
                pass
        assert refused.value.response.status_code == 503

        # The existing session's data flows (client <-> node, no Redis on that path) ...
        await send_data(a, b, b"during")
        await send_data(b, a, b"during, back")
        # ... a signal message sent now reaches the node once Redis is back ...
        meta = EventWaiter(b, "participant_metadata_changed")
        update = asyncio.create_task(a.local_participant.set_metadata("sent during outage"))
        # ... and so does the leave of a client that goes now.
        await asyncio.wait_for(q.disconnect(), 10)
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
        for proc in cluster.all_processes():
            assert proc.alive(), proc.logs()

        cluster.redis.start()  # same port, empty
        await eventually(
            lambda: set(_statuses(cluster).values()) == {200},
            timeout=10,
            what="every /readyz to say 200 again",
        )
        await meta.wait(lambda p, _old, new: new == "sent during outage", timeout=15)
        await asyncio.wait_for(update, 10)
        # The hosting node puts its room back in the (empty) store.
        await eventually(
            lambda: cluster.placement(room) is not None, timeout=5, what="placement re-asserted"
        )
        assert cluster.placement(room)[0] == host[0]  # type: ignore[index]

        async def q_gone() -> bool:
            return await participant_identities(e0, room) == ["a", "b"]

        await eventually(q_gone, timeout=10, what="q, who left during the outage, to be gone")

        # Service resumes: a newcomer joins the same room on the same node, a new room works.
        async with connected(e0.ws_url, "c", room) as c:
            assert await participant_identities(e1, room) == ["a", "b", "c"]
            await send_data(c, b, b"after")
            await send_data(a, c, b"after, to the newcomer")
        async with connected(e1.ws_url, "d", "after-outage"):
            assert cluster.host_index("after-outage") is not None
        assert [r.name for r in await list_rooms(e0, [room])] == [room]
        assert seen == {"a": [], "b": []}, "the sessions should survive the outage"
    for proc in cluster.all_processes():
        assert proc.alive(), proc.logs()


async def test_room_yields_when_the_store_names_another_node(cluster: Cluster) -> None:
    """After Redis lost its data, a newcomer can reach a router before the room's host has
    re-asserted its placement: the room is then claimed afresh, with epoch 1 again, for
    another node. The host must give its copy up (its clients reconnect and land on the
    store's node) rather than keep a second room of the same name forever. The racing claim
    is written directly here, which makes the race deterministic."""
    room = "split"
    e0, e1 = cluster.edges
    async with connected(e0.ws_url, "a", room) as a, connected(e1.ws_url, "b", room) as b:
        placed = cluster.placement(room)
        assert placed is not None and placed[1] == 1
        host = cluster.sfu_index(placed[0])
        other = cluster.node_ids[1 - host]
        reconnected = [EventWaiter(a, "reconnected"), EventWaiter(b, "reconnected")]
        with cluster.redis_client() as r:
            r.hset(keys.PLACEMENTS, room, f"{other}|1")  # same epoch, another node
        await asyncio.gather(*(w.wait(timeout=15) for w in reconnected))
        assert cluster.placement(room) == (other, 1)
        assert await participant_identities(e0, room) == ["a", "b"]
        await eventually(
            lambda: (
                cluster.sfu_record(host)["stats"]["rooms"] == 0
                and cluster.sfu_record(1 - host)["stats"]["clients"] >= 2
            ),
            timeout=5,
            what="the room to live on the store's node only",
        )
        await eventually(
            lambda: set(a.remote_participants) == {"b"}, timeout=10, what="a to see b again"
        )
        await send_data(a, b, b"one room again")
