"""Faults under live media, with the real SDK: what the clients decode is the verdict.

Each test keeps SDK clients publishing a pattern video to each other, does something violent
(kill -9 of the hosting SFU node, of a signal edge, of Redis with an empty restart and joins
racing it) and asserts, per pair of clients, when decoded frames came back; and that no
process died, no participant is a ghost (ListParticipants lists exactly the live clients) and
no Trackyard process logged an error.

Bounds (README, "Faults"): media back within ``MEDIA_BACK`` (5 s) of a node's kill -9; a dead
edge's participant leaves within edge TTL + ``reconnect_window`` + two heartbeats; a Redis
restart never interrupts media between clients already in a room.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import websockets

from tests.support.chaos import all_see_media, bad_log_lines, video_peer
from tests.support.cluster import Cluster, cluster_fixture, eventually, participant_identities
from tests.support.sdk import EventWaiter, connected, token

pytestmark = pytest.mark.sdk

MEDIA_BACK = 5.0  # seconds from kill -9 of the hosting node to decoded frames in every pair
RECONNECT_WINDOW = 1.0  # test config; the default is LiveKit's 5 s
FRAMES = 5  # readable frames that count as "media is back"


cluster = cluster_fixture(
    sfu_regions=["us-east", "us-east"],
    edge_regions=["us-east", "us-east"],
    routers_count=1,
    overrides={"node": {"reconnect_window": RECONNECT_WINDOW}},
)


def _no_errors(cluster: Cluster) -> None:
    bad = bad_log_lines(cluster.logs(full=True))
    assert not bad, "\n".join(bad[:20])


def _alive(cluster: Cluster, *, except_: tuple[object, ...] = ()) -> None:
    for proc in cluster.all_processes():
        if proc not in except_:
            assert proc.alive(), proc.logs()


def _restart(cluster: Cluster, index: int) -> None:
    """Bring a killed SFU back (same config) so the next test has two nodes again."""
    proc = cluster.sfus[index]
    proc.start()
    cluster.node_ids[index] = cluster.sfu_record(index)["id"]


async def test_kill_hosting_node_media_back_within_bound(cluster: Cluster) -> None:
    room = "chaos-node"
    e0, e1 = cluster.edges
    async with video_peer(e0.ws_url, "a", room) as a, video_peer(e1.ws_url, "b", room) as b:
        await all_see_media([a, b], 0.0, count=FRAMES, timeout=15)
        host = cluster.host_index(room)
        assert host is not None
        killed_at = time.monotonic()
        assert cluster.kill(cluster.sfus[host]) == -9
        back = await all_see_media([a, b], killed_at, count=FRAMES, timeout=MEDIA_BACK + 10)
        took = back - killed_at
        assert took < MEDIA_BACK, f"media back after {took:.2f}s"
        assert cluster.host_index(room) == 1 - host
        for edge in cluster.edges:
            assert await participant_identities(edge, room) == ["a", "b"]
        _alive(cluster, except_=(cluster.sfus[host],))
    _no_errors(cluster)
    _restart(cluster, host)


async def test_kill_edge_its_participants_leave_others_keep_media(cluster: Cluster) -> None:
    """c (a bare signal socket, no peer connections) and d (an SDK client) can come in only
    through edge 1; edge 1 dies. a and b (edge 0) never lose each other's media and see c
    leave with SIGNAL_CLOSE (its edge's registration expired) and d leave too (its SDK gives
    up and closes its peer connections: CONNECTION_TIMEOUT, or SIGNAL_CLOSE if the edge's
    expiry is noticed first), within the bound; ListParticipants and the store agree."""
    room = "chaos-edge"
    e0, e1 = cluster.edges
    async with (
        video_peer(e0.ws_url, "a", room) as a,
        video_peer(e0.ws_url, "b", room) as b,
        connected(e1.ws_url, "d", room),
        websockets.connect(f"{e1.ws_url}/rtc?access_token={token('c', room)}", open_timeout=10),
    ):
        await all_see_media([a, b], 0.0, count=FRAMES, timeout=15)
        await eventually(
            lambda: {"c", "d"} <= set(a.room.remote_participants), timeout=5, what="a to see c, d"
        )
        left = EventWaiter(a.room, "participant_disconnected")
        killed_at = time.monotonic()
        assert cluster.kill(e1) == -9
        ttl = max(3 * 0.5, 2.0)  # Edge.ttl at the default heartbeat settings
        bound = ttl + RECONNECT_WINDOW + 2 * 0.5 + 2.0  # + 2 heartbeats + scheduling margin
        (c,) = await left.wait(lambda p: p.identity == "c", timeout=bound + 5)
        (d,) = await left.wait(lambda p: p.identity == "d", timeout=bound + 5)
        gone_after = time.monotonic() - killed_at
        assert gone_after < bound, f"c and d left {gone_after:.2f}s after their edge died"
        assert c.disconnect_reason == rtc_reason("SIGNAL_CLOSE")
        assert d.disconnect_reason in (rtc_reason("SIGNAL_CLOSE"), rtc_reason("CONNECTION_TIMEOUT"))
        assert await participant_identities(e0, room) == ["a", "b"]
        await eventually(
            lambda: _stored_identities(cluster, room) == ["a", "b"],
            timeout=2,
            what="the store to agree",
        )
        now = time.monotonic()
        for p, q in ((a, b), (b, a)):
            gap = p.log.max_gap(q.identity, killed_at, now)
            assert gap < 1.0, f"{p.identity} lost {q.identity}'s media for {gap:.2f}s"
        _alive(cluster, except_=(e1,))
    _no_errors(cluster)
    e1.start()


def rtc_reason(name: str) -> int:
    from livekit.protocol import models

    return int(models.DisconnectReason.Value(name))


def _stored_identities(cluster: Cluster, room: str) -> list[str]:
    from trackyard.core import keys

    with cluster.redis_client() as r:
        return sorted(k.decode() for k in r.hkeys(keys.participants(room)))


ROUNDS = 4


async def test_redis_restart_empty_with_racing_joins_keeps_one_room(cluster: Cluster) -> None:
    """kill -9 of Redis, empty restart, and a newcomer's join racing it, ROUNDS times: the
    newcomer always lands on the room's real host, the room never splits, media between the
    clients already there never stops, and the newcomer gets media."""
    room = "chaos-redis"
    e0, e1 = cluster.edges
    async with video_peer(e0.ws_url, "a", room) as a, video_peer(e1.ws_url, "b", room) as b:
        await all_see_media([a, b], 0.0, count=FRAMES, timeout=15)
        host = cluster.placement(room)
        assert host is not None
        reconnects: list[str] = []
        for client in (a.room, b.room):
            client.on("reconnecting", lambda *_: reconnects.append("reconnecting"))
        start = time.monotonic()
        for n in range(ROUNDS):
            cluster.redis.stop()  # SIGKILL; no persistence: it comes back empty
            await asyncio.sleep(0.3 + 0.4 * n)  # outage lengths vary; nothing to await
            # The newcomer's connect starts while Redis is down (the SDK retries a 503)...
            url = (e0 if n % 2 else e1).ws_url
            joining = asyncio.create_task(_join_and_see(url, f"n{n}", room, ["a", "b"]))
            await asyncio.sleep(0.05 * n)
            cluster.redis.start()  # same port, empty
            await asyncio.wait_for(joining, 30)
            placed = cluster.placement(room)
            assert placed is not None and placed[0] == host[0], (n, placed, host)
            for index in range(len(cluster.sfus)):
                if cluster.node_ids[index] != host[0]:
                    assert cluster.sfu_record(index)["stats"]["rooms"] == 0, "room split"
        now = time.monotonic()
        for p, q in ((a, b), (b, a)):
            gap = p.log.max_gap(q.identity, start, now)
            assert gap < 1.0, f"{p.identity} lost {q.identity}'s media for {gap:.2f}s"
        assert reconnects == []
        assert await participant_identities(e0, room) == ["a", "b"]
        _alive(cluster)
    _no_errors(cluster)


async def _join_and_see(url: str, identity: str, room: str, others: list[str]) -> None:
    async with video_peer(url, identity, room) as n:
        for other in others:
            await n.log.back_after(other, 0.0, count=FRAMES, timeout=20)
