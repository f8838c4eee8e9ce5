"""An SFU node dies (kill -9) under a live room: the room comes back on another node.

Nothing tells the cluster the node died: its record stops being refreshed and expires (TTL),
the edges' node watch notices and sends the node's clients ``leave{STATE_MISMATCH,
RECONNECT}``, the SDK (livekit 1.2.1) answers with a full reconnect (events ``reconnecting``
then ``reconnected``, never ``disconnected``), and the router places the room anew on a live
node with a higher fencing epoch.
"""

from __future__ import annotations

import asyncio
import time

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


cluster = cluster_fixture(
    sfu_regions=["us-east", "us-east"], edge_regions=["us-east", "us-east"], routers_count=1
)


async def test_killed_host_room_moves_to_another_node(cluster: Cluster) -> None:
    room = "failover"
    a_url, b_url = cluster.edges[0].ws_url, cluster.edges[1].ws_url
    async with connected(a_url, "a", room) as a, connected(b_url, "b", room) as b:
        await send_data(a, b, b"before")
        placed = cluster.placement(room)
        assert placed is not None
        old_node, old_epoch = placed
        old = cluster.sfu_index(old_node)
        survivor = 1 - old

        seen: dict[str, list[str]] = {"a": [], "b": []}
        for client, name in ((a, "a"), (b, "b")):
            for event in ("reconnecting", "reconnected", "disconnected"):
                client.on(event, lambda *_args, e=event, n=name: seen[n].append(e))
        reconnected = [EventWaiter(a, "reconnected"), EventWaiter(b, "reconnected")]

        killed_at = time.monotonic()
        assert cluster.kill(cluster.sfus[old]) == -9
        # The dead node's record disappears by itself (TTL 5 s), nothing deletes it.
        await eventually(
            lambda: cluster.stored_record(old_node) is None,
            timeout=10,
            what="the dead node's record to expire",
        )
        assert time.monotonic() - killed_at >= 2.0, "record vanished too early for a TTL"
        # The clients are sent to reconnect and the SDK rejoins by itself.
        await asyncio.gather(*(w.wait(timeout=20) for w in reconnected))
        for name in ("a", "b"):
            assert seen[name][:2] == ["reconnecting", "reconnected"], seen
            assert "disconnected" not in seen[name], seen

        new_node, new_epoch = cluster.placement(room) or ("", 0)
        assert new_node == cluster.node_ids[survivor]
        assert new_epoch > old_epoch  # fencing: the takeover is a newer claim
        for edge in cluster.edges:
            assert await participant_identities(edge, room) == ["a", "b"]
        await eventually(
            lambda: (
                (rec := cluster.sfu_record(survivor))["stats"]["rooms"] == 1
                and rec["stats"]["clients"] == 2
            ),
            timeout=5,
            what="the survivor's record to show the room and both clients",
        )
        await eventually(
            lambda: set(a.remote_participants) == {"b"} and set(b.remote_participants) == {"a"},
            timeout=10,
            what="both clients to see each other again",
        )
        await send_data(a, b, b"after")
        await send_data(b, a, b"after, back")
        # A newcomer joins the moved room, on the survivor.
        async with connected(a_url, "c", room) as c:
            await send_data(c, a, b"newcomer")
            assert await participant_identities(cluster.edges[1], room) == ["a", "b", "c"]
        assert cluster.placement(room) == (new_node, new_epoch)
    for proc in (*cluster.routers, *cluster.edges, cluster.sfus[survivor]):
        assert proc.alive(), proc.logs()
