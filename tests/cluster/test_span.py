"""One room over three SFU nodes in two regions (``span.node_participants: 3``).

Participants joining through the us-east edge fill the room's home node, then the room extends
to the other us-east node; a participant joining through the us-west edge gets the us-west
node. Everyone sees, hears and exchanges data with everyone (real Python SDK clients, decoded
frames and audio); a track with three subscribers on another node crosses to it once (the
nodes' relay counters); a subscriber on a remote node switches simulcast layers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

import pytest
from livekit import api, rtc

from tests.support.cluster import Cluster, cluster_fixture, eventually, send_data
from tests.support.media import (
    dominant_tone,
    pattern_video,
    read_numbers,
    tone_audio,
    until_width,
)
from tests.support.metrics import metric
from tests.support.nft import input_rules
from tests.support.sdk import EventWaiter, connected, perform_rpc, subscribed_track
from tests.support.trackyard import API_KEY, API_SECRET

pytestmark = pytest.mark.sdk

cluster = cluster_fixture(
    sfu_regions=["us-east", "us-east", "us-west"],
    edge_regions=["us-east", "us-west"],
    routers_count=1,
    sfu_metrics=True,
    overrides={"span": {"node_participants": 3}},
)

NO_SIMULCAST = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=False)


@contextlib.asynccontextmanager
async def everyone(cluster: Cluster, room: str) -> AsyncIterator[list[rtc.Room]]:
    """a, b, x, c through the us-east edge (in that order: c overflows the home), d through
    us-west."""
    east, west = cluster.edges[0].ws_url, cluster.edges[1].ws_url
    async with contextlib.AsyncExitStack() as stack:
        rooms = []
        for url, identity in ((east, "a"), (east, "b"), (east, "x"), (east, "c"), (west, "d")):
            rooms.append(await stack.enter_async_context(connected(url, identity, room)))
        yield rooms


async def test_one_room_on_three_nodes_in_two_regions(cluster: Cluster) -> None:
    room = "span-all"
    async with everyone(cluster, room) as (a, b, x, c, d):
        placed = cluster.seats(room)
        assert set(placed) == {"a", "b", "x", "c", "d"}
        home = cluster.placement(room)
        assert home is not None
        assert placed["a"] == placed["b"] == placed["x"] == home[0]  # the home fills first
        assert placed["c"] != home[0]  # then the room extends within us-east
        assert cluster.sfu_regions[cluster.sfu_index(placed["c"])] == "us-east"
        assert cluster.sfu_regions[cluster.sfu_index(placed["d"])] == "us-west"

        # everyone sees everyone, whichever node they are on
        for client, me in ((a, "a"), (b, "b"), (x, "x"), (c, "c"), (d, "d")):
            await eventually(
                lambda client=client, me=me: (
                    set(client.remote_participants) == {"a", "b", "x", "c", "d"} - {me}
                ),
                timeout=15,
                what=f"{me} sees the other four",
            )

        speaking = [EventWaiter(x, "active_speakers_changed") for x in (a, c)]
        scored = EventWaiter(c, "connection_quality_changed")
        async with (
            pattern_video(a, options=NO_SIMULCAST) as _video,
            tone_audio(d, freq=660.0) as _audio,
        ):
            # a's video (home) decoded on c's node (us-east) and on d's (us-west)
            for viewer in (c, d, b):
                track = await subscribed_track(viewer, "a", rtc.TrackKind.KIND_VIDEO)
                numbers = await read_numbers(track, 5, timeout=20)
                assert numbers == sorted(numbers) and len(set(numbers)) >= 3
            # d's audio (us-west) heard on the home and on c's node
            for listener in (a, c):
                track = await subscribed_track(listener, "d", rtc.TrackKind.KIND_AUDIO)
                assert abs(await dominant_tone(track) - 660.0) < 15
            # and d is an active speaker for participants of every node
            for waiter in speaking:
                await waiter.wait(lambda speakers: "d" in {p.identity for p in speakers})
            # and c hears how a's connection is, scored on a's node
            await scored.wait(lambda who, quality: who.identity == "a", timeout=15)

        # data and RPC across nodes, both ways
        await send_data(d, a, b"west to home")
        await send_data(c, d, b"east part to west")
        await send_data(a, c, b"home to east part")

        @d.local_participant.register_rpc_method("shout")
        async def shout(inv: rtc.RpcInvocationData) -> str:
            return inv.payload.upper() + "@" + inv.caller_identity

        reply = await asyncio.wait_for(
            c.local_participant.perform_rpc(destination_identity="d", method="shout", payload="hi"),
            15,
        )
        assert reply == "HI@c"

        # a text stream (header, chunks, trailer) across nodes, longer than one chunk
        streamed: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()

        readers: list[asyncio.Task[None]] = []

        def on_stream(reader: rtc.TextStreamReader, sender: str) -> None:
            async def read() -> None:
                streamed.set_result((await reader.read_all(), sender))

            readers.append(asyncio.create_task(read()))

        a.register_text_stream_handler("story", on_stream)
        story = "once upon a time " * 2000  # ~34 kB: several chunks
        await d.local_participant.send_text(story, topic="story")
        assert await asyncio.wait_for(streamed, 15) == (story, "d")

        # room-level state has one authority and reaches every node: the API from any edge
        async with api.LiveKitAPI(cluster.edges[1].http_url, API_KEY, API_SECRET) as lk:
            changed = [EventWaiter(x, "room_metadata_changed") for x in (a, c, d)]
            await lk.room.update_room_metadata(
                api.UpdateRoomMetadataRequest(room=room, metadata="one room")
            )
            for waiter in changed:
                await waiter.wait(lambda old, new: new == "one room")
            listed = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
            assert sorted(p.identity for p in listed.participants) == ["a", "b", "c", "d", "x"]
            rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))
            assert [(r.num_participants, r.metadata) for r in rooms.rooms] == [(5, "one room")]
            # a server RPC to a participant on another node than the home reaches it
            answer = await perform_rpc(
                lk,
                api.PerformRpcRequest(
                    room=room, destination_identity="d", method="shout", payload="api"
                ),
            )
            assert answer.payload.startswith("API@")
            # a participant call for someone on another node than the home reaches its node
            await lk.room.update_participant(
                api.UpdateParticipantRequest(room=room, identity="d", metadata="moved by api")
            )
        await eventually(
            lambda: a.remote_participants["d"].metadata == "moved by api",
            timeout=10,
            what="d's metadata seen on the home",
        )
        assert all(y.metadata == "one room" for y in (a, b, x, c, d))
        sid = await a.sid
        assert all([await y.sid == sid for y in (b, x, c, d)])  # one room sid everywhere


async def test_a_track_crosses_to_a_node_once_for_three_subscribers(cluster: Cluster) -> None:
    room = "span-once"
    east, west = cluster.edges[0].ws_url, cluster.edges[1].ws_url
    async with (
        connected(east, "pub", room) as pub,
        connected(west, "s1", room) as s1,
        connected(west, "s2", room) as s2,
        connected(west, "s3", room) as s3,
        pattern_video(pub, options=NO_SIMULCAST),
    ):
        origin, target = cluster.seated(room, "pub"), cluster.seated(room, "s1")
        assert origin is not target
        assert {cluster.seated(room, s) for s in ("s2", "s3")} == {target}
        for sub in (s1, s2, s3):
            track = await subscribed_track(sub, "pub", rtc.TrackKind.KIND_VIDEO)
            assert len(await read_numbers(track, 3, timeout=20)) == 3

        async def figures() -> tuple[float, ...]:
            return (
                await metric(origin, "trackyard_sfu_packets_in_total"),
                await metric(origin, "trackyard_sfu_relay_packets_out_total"),
                await metric(target, "trackyard_sfu_relay_packets_in_total"),
                await metric(target, "trackyard_sfu_packets_out_total"),
            )

        before = await figures()
        await asyncio.sleep(3)  # a counting window: the media flows meanwhile
        after = await figures()
        deltas = [y - x for x, y in zip(before, after, strict=True)]
        published, relayed_out, relayed_in, delivered = deltas
        assert published > 30, (published, relayed_out, relayed_in, delivered)
        # once across the link, not once per subscriber
        assert relayed_out <= 1.1 * published, (published, relayed_out, relayed_in, delivered)
        assert relayed_in <= 1.1 * published
        assert relayed_in >= 0.8 * published
        # and fanned out there to all three
        assert delivered >= 2.7 * relayed_in
        assert relayed_out >= 0.8 * published  # the relay's copy counts as relayed, not delivered
        # the fast path serves both ends: the relay's copy on the origin, the three here
        assert await metric(origin, "trackyard_sfu_lane_downtracks") >= 1
        assert await metric(target, "trackyard_sfu_lane_downtracks") >= 3


async def test_loss_on_the_relay_hop_is_repaired_across_it(cluster: Cluster) -> None:
    """Every 15th media packet from the origin node to the other node is dropped (nftables in
    the test namespace): the receiving node NACKs across the hop, the origin resends, and the
    subscriber there decodes a video that runs on."""
    room = "span-lossy"
    east, west = cluster.edges[0].ws_url, cluster.edges[1].ws_url
    async with (
        connected(east, "cam", room) as cam,
        connected(west, "viewer", room) as viewer,
        pattern_video(cam, options=NO_SIMULCAST),
    ):
        origin, target = cluster.seated(room, "cam"), cluster.seated(room, "viewer")
        assert origin is not target
        track = await subscribed_track(viewer, "cam", rtc.TrackKind.KIND_VIDEO)
        await read_numbers(track, 3)
        src, dst = origin.config["rtc"], target.config["rtc"]
        loss = (
            f"udp sport {src['port_range_start']}-{src['port_range_end']} "
            f"udp dport {dst['port_range_start']}-{dst['port_range_end']} "
            "udp length > 300 numgen inc mod 15 0 counter drop"
        )
        with input_rules("trackyard_relay_loss", loss) as counters:
            numbers = await read_numbers(track, 60, timeout=20)
    dropped = [int(c.split("counter packets ")[1].split()[0]) for c in counters]
    assert dropped and dropped[0] > 0, counters  # the hop really lost packets
    assert await metric(target, "trackyard_sfu_relay_nacks_sent_total") > 0
    assert await metric(origin, "trackyard_sfu_relay_retransmits_total") > 0
    assert numbers == sorted(numbers)
    assert max(b - a for a, b in itertools.pairwise(numbers)) <= 10, numbers


async def test_max_participants_counts_the_room_on_every_node(cluster: Cluster) -> None:
    """Two parts admitting at the same moment, each seeing three of four places taken: only
    the home's count (everyone, plus joins it admitted elsewhere) lets exactly one in."""
    room = "span-full"
    east, west = cluster.edges[0].ws_url, cluster.edges[1].ws_url
    async with api.LiveKitAPI(cluster.edges[0].http_url, API_KEY, API_SECRET) as lk:
        await lk.room.create_room(api.CreateRoomRequest(name=room, max_participants=4))
    async with (
        connected(east, "a", room),
        connected(east, "b", room),
        connected(east, "c", room),  # the home is full (node_participants 3)
        contextlib.AsyncExitStack() as stack,
    ):

        async def join(url: str, identity: str) -> str:
            try:
                await stack.enter_async_context(connected(url, identity, room))
            except rtc.ConnectError as exc:
                assert "full" in str(exc), exc
                return "refused"
            return "joined"

        outcomes = await asyncio.gather(join(east, "x"), join(west, "y"))
        assert sorted(outcomes) == ["joined", "refused"]
        joined = "x" if outcomes[0] == "joined" else "y"
        assert cluster.seated(room, joined) is not cluster.seated(room, "a")
        with pytest.raises(rtc.ConnectError, match="full"):
            async with connected(west, "z", room):
                pass


async def test_simulcast_layers_switch_for_a_subscriber_on_another_node(cluster: Cluster) -> None:
    room = "span-simulcast"
    east, west = cluster.edges[0].ws_url, cluster.edges[1].ws_url
    async with (
        connected(east, "cam", room) as cam,
        connected(west, "viewer", room) as viewer,
    ):
        subscribed = EventWaiter(viewer, "track_subscribed")
        async with pattern_video(cam, width=1280, height=720) as vpub:
            assert cluster.seated(room, "cam") is not cluster.seated(room, "viewer")
            (track, publication, _) = await subscribed.wait(lambda t, p, who: p.sid == vpub.sid)
            assert publication.simulcasted
            assert await until_width(track, lambda w: w > 640, 20) > 640
            publication.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_LOW)
            low = await until_width(track, lambda w: w <= 480, 20)
            publication.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_HIGH)
            high = await until_width(track, lambda w: w > 640, 30)
            assert low < high
            numbers = await read_numbers(track, 5)
            assert numbers == sorted(numbers)
