"""Failure is local in a room that spans nodes (three us-east nodes, ``node_participants: 2``).

- kill -9 of a node that is not the home: only its participants reconnect (the SDK rejoins
  and lands on a live node of the room); the others' media never stops and they never see
  a reconnect.
- kill -9 of the home: a surviving part takes the home role with a newer epoch; the room
  keeps its sid and metadata; participants on the surviving node keep their session.
- SIGTERM (drain with a deadline) of a node of the room: at the deadline its participants
  move to the room's other nodes; the others' media never stops.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from livekit import api, rtc

from tests.support.cluster import Cluster, cluster_fixture, eventually, send_data
from tests.support.media import clock, pattern_video, read_numbers
from tests.support.sdk import EventWaiter, connected, subscribed_track
from tests.support.trackyard import API_KEY, API_SECRET

pytestmark = pytest.mark.sdk

cluster = cluster_fixture(
    sfu_regions=["us-east", "us-east", "us-east", "us-east"],
    edge_regions=["us-east"],
    routers_count=1,
    overrides={"span": {"node_participants": 2}, "node": {"drain_deadline": 3}},
)

NO_SIMULCAST = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=False)
VIDEO = rtc.TrackKind.KIND_VIDEO
MAX_GAP = 0.7  # seconds without a decoded frame that still counts as "never stopped"


def reconnects(client: rtc.Room) -> list[str]:
    seen: list[str] = []
    for event in ("reconnecting", "reconnected", "disconnected"):
        client.on(event, lambda *_a, e=event: seen.append(e))
    return seen


async def test_killing_a_node_that_is_not_the_home_touches_only_its_participants(
    cluster: Cluster,
) -> None:
    room = "span-kill-part"
    url = cluster.edges[0].ws_url
    async with (
        connected(url, "a", room) as a,
        connected(url, "b", room) as b,
        connected(url, "c", room) as c,
        pattern_video(a, options=NO_SIMULCAST),
    ):
        home = cluster.placement(room)
        assert home is not None
        part = cluster.seated(room, "c")
        assert cluster.seated(room, "a") is cluster.seated(room, "b") is not part
        a_sid, b_sid = a.local_participant.sid, b.local_participant.sid
        seen_a, seen_b = reconnects(a), reconnects(b)
        c_back = EventWaiter(c, "reconnected")

        watched = await subscribed_track(b, "a", VIDEO)
        assert len(await read_numbers(await subscribed_track(c, "a", VIDEO), 3)) == 3
        async with clock(watched) as frames:
            killed = time.monotonic()
            assert cluster.kill(part) == -9
            await c_back.wait(timeout=30)  # its participant rejoins by itself
            numbers = await read_numbers(
                await subscribed_track(c, "a", VIDEO, timeout=30), 5, timeout=30
            )
            assert numbers == sorted(numbers)
            await asyncio.sleep(1.0)  # a little media after the rejoin, for the gap window
            gap = frames.max_gap(killed, time.monotonic())
        assert gap < MAX_GAP, f"b's video of a stopped for {gap:.2f} s"
        assert cluster.seated(room, "c") is not part
        assert cluster.seated(room, "c").alive()
        assert cluster.placement(room) == home  # the home was not touched
        assert (a.local_participant.sid, b.local_participant.sid) == (a_sid, b_sid)
        assert seen_a == seen_b == []
        await send_data(c, a, b"back")


async def test_killing_the_home_keeps_the_room_and_its_state(cluster: Cluster) -> None:
    room = "span-kill-home"
    url = cluster.edges[0].ws_url
    async with (
        connected(url, "a", room) as a,
        connected(url, "b", room),
        connected(url, "c", room) as c,
        pattern_video(c, options=NO_SIMULCAST),
    ):
        placed = cluster.placement(room)
        assert placed is not None
        old_home, old_epoch = placed
        home = cluster.sfus[cluster.sfu_index(old_home)]
        survivor = cluster.seated(room, "c")
        assert cluster.seated(room, "a") is home and survivor is not home
        async with api.LiveKitAPI(cluster.edges[0].http_url, API_KEY, API_SECRET) as lk:
            await lk.room.update_room_metadata(
                api.UpdateRoomMetadataRequest(room=room, metadata="survives")
            )
        await eventually(lambda: c.metadata == "survives", timeout=10, what="c sees metadata")
        sid = await c.sid
        c_sid = c.local_participant.sid
        seen_c = reconnects(c)
        a_back = EventWaiter(a, "reconnected")

        assert cluster.kill(home) == -9
        survivor_id = cluster.node_ids[cluster.sfus.index(survivor)]
        new = await eventually(
            lambda: (p := cluster.placement(room)) is not None and p[0] != old_home and p,
            timeout=15,
            what="a surviving part to take the home role",
        )
        assert new[0] == survivor_id and new[1] > old_epoch
        await a_back.wait(timeout=30)
        # the room and its state: same sid, same metadata, seen from a rejoined client
        numbers = await read_numbers(
            await subscribed_track(a, "c", VIDEO, timeout=30), 5, timeout=30
        )
        assert numbers == sorted(numbers)
        assert await a.sid == sid
        await eventually(lambda: a.metadata == "survives", timeout=10, what="metadata kept")
        async with api.LiveKitAPI(cluster.edges[0].http_url, API_KEY, API_SECRET) as lk:
            rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))
            assert [(r.sid, r.metadata) for r in rooms.rooms] == [(sid, "survives")]
        # the survivor's participant never left
        assert c.local_participant.sid == c_sid
        assert seen_c == []
        await send_data(a, c, b"after the home")


async def test_draining_a_node_moves_its_participants_at_the_deadline(cluster: Cluster) -> None:
    room = "span-drain"
    url = cluster.edges[0].ws_url
    async with (
        connected(url, "a", room) as a,
        connected(url, "b", room) as b,
        connected(url, "c", room) as c,
        pattern_video(a, options=NO_SIMULCAST),
    ):
        part = cluster.seated(room, "c")
        assert part is not cluster.seated(room, "a")
        c_back = EventWaiter(c, "reconnected")
        seen_b = reconnects(b)
        watched = await subscribed_track(b, "a", VIDEO)
        async with clock(watched) as frames:
            drained = time.monotonic()
            part.signal(signal.SIGTERM)
            await c_back.wait(timeout=20)  # moved at the 3 s deadline
            assert time.monotonic() - drained >= 2.5
            assert cluster.seated(room, "c") is not part
            numbers = await read_numbers(
                await subscribed_track(c, "a", VIDEO, timeout=30), 5, timeout=30
            )
            assert numbers == sorted(numbers)
            gap = frames.max_gap(drained, time.monotonic())
        assert gap < MAX_GAP, f"b's video of a stopped for {gap:.2f} s"
        assert seen_b == []
        assert await asyncio.to_thread(part.wait, 15) == 0  # drained, then exited
