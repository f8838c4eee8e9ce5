"""The browser SDK (livekit-client in Chromium) in a room that spans nodes (issue 12).

Three SFU nodes in two regions (us-east x2, us-west), ``span.node_participants: 3``. A page
joins through one region's edge and a Python SDK participant through the other, so the two sit
on different nodes of one room (the seats hash says so) and every track, data packet and
participant update between them crosses the relay link:

- each decodes and hears the other (the page's fake camera and microphone, the Python
  pattern video and tone), data flows both ways, and the page reads the room and the other
  participant as livekit-client holds them: the JoinResponse/RoomUpdate fields
  (numParticipants, numPublishers, sid, metadata set through the API of the other region's
  edge) and ParticipantInfo's version and state, which the browser SDK acts on (it drops an
  update older than the one it has) and the Python SDK ignores;
- the page publishes with default simulcast on a node that is not the room's home (its
  JoinResponse, from that new part, carries the home's metadata), and the Python subscriber on
  the home (the other region) switches LOW then HIGH: the decoded width follows; with dynacast
  the page stops encoding the layers nobody wants;
- a page subscribing with adaptive stream on another node than the publishing page: its
  element's size picks the layer across the link, also when another subscriber on its node
  wants the top layer (each wanted layer crosses as its own stream).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from livekit import api, rtc

from tests.support.browser import (
    MEDIA_CALL,
    MEDIA_MS,
    Browser,
    Page,
    browser_fixture,
)
from tests.support.cluster import Cluster, cluster_fixture, eventually
from tests.support.media import (
    first_frame_size,
    frame_lumas,
    pattern_video,
    tone_audio,
    until_width,
)
from tests.support.sdk import EventWaiter, connected
from tests.support.trackyard import API_KEY, API_SECRET

pytestmark = pytest.mark.sdk

cluster = cluster_fixture(
    sfu_regions=["us-east", "us-east", "us-west"],
    edge_regions=["us-east", "us-west"],
    routers_count=1,
    overrides={"span": {"node_participants": 3}},
)
browser = browser_fixture()

STATE_ACTIVE = 2  # livekit.ParticipantInfo.State.ACTIVE, as livekit-client reads it


def region_of(cluster: Cluster, node_id: str) -> str:
    return cluster.sfu_regions[cluster.sfu_index(node_id)]


@contextlib.asynccontextmanager
async def page_in(
    browser: Browser, url: str, identity: str, room: str, options: dict[str, Any] | None = None
) -> AsyncIterator[Page]:
    """A page joined to ``room`` through ``url`` (``options``: livekit-client's RoomOptions);
    it leaves (page closed) at the end."""
    async with browser.pages(identity) as (page,):
        await page.join(url, identity, room, options)
        yield page


async def active_info(page: Page, identity: str) -> dict[str, Any] | None:
    """``identity`` as ``page`` holds it, once its ParticipantInfo state is ACTIVE."""
    info: dict[str, Any] | None = await page.call("participantInfo", identity)
    return info if info is not None and info["state"] == STATE_ACTIVE else None


async def speaker_seen(page: Page, identity: str) -> bool:
    """Whether ``page`` ever listed ``identity`` among the active speakers."""
    events = await page.call("eventsOf", "active_speakers", 0)
    return any(identity in ev["identities"].split(",") for ev in events)


async def audio_peak(track: rtc.Track, above: float, timeout: float = 20) -> float:
    """The loudest sample of ``track`` decoded by the Python SDK, once it passed ``above``."""
    stream = rtc.AudioStream(track, sample_rate=48000, num_channels=1)
    peak = 0.0
    try:
        async with asyncio.timeout(timeout):
            async for event in stream:
                samples = np.frombuffer(event.frame.data, dtype=np.int16)
                peak = max(peak, float(np.abs(samples).max(initial=0)))
                if peak > above:
                    break
    except TimeoutError:
        pass  # reported by the caller's assertion, with the peak reached
    finally:
        await stream.aclose()
    return peak


async def test_browser_and_python_on_nodes_in_two_regions(
    cluster: Cluster, browser: Browser
) -> None:
    room = "span-browser"
    east, west = cluster.edges[0], cluster.edges[1]
    async with page_in(browser, east.ws_url, "web", room) as web:
        async with connected(west.ws_url, "py", room) as py:
            placed = cluster.seats(room)
            assert set(placed) == {"web", "py"}, placed
            assert placed["web"] != placed["py"], placed
            assert region_of(cluster, placed["web"]) == "us-east"
            assert region_of(cluster, placed["py"]) == "us-west"
            home = cluster.placement(room)
            assert home is not None and home[0] == placed["web"]  # the page came first

            # Each sees the other as that one sees itself, across the link.
            await web.wait_event("participant_connected", {"identity": "py"})
            assert set(py.remote_participants) == {"web"}
            # (ACTIVE once py's peer connection is up: that update may still be on its way)
            seen_py = await eventually(
                lambda: active_info(web, "py"), timeout=10, what="py ACTIVE for the page"
            )
            assert seen_py["sid"] == py.local_participant.sid, seen_py
            assert seen_py["name"] == "py", seen_py
            assert seen_py["permissions"]["canPublish"] is True, seen_py
            own_web = await web.call("participantInfo", "web")
            seen_web = py.remote_participants["web"]
            assert (seen_web.sid, seen_web.name) == (own_web["sid"], "web")
            joined = await web.call("roomInfo")
            assert joined["sid"] == await py.sid, joined  # one room, one sid on both nodes
            assert joined["server"]["nodeId"] == placed["web"], joined
            assert joined["server"]["region"] == "us-east", joined

            # Browser -> Python: the fake camera and microphone, decoded on the us-west node.
            subscribed = EventWaiter(py, "track_subscribed")
            published = await web.call("enableCameraAndMicrophone", timeout=MEDIA_CALL)
            assert [e["rid"] for e in published["camera"]["encodings"]] == ["q", "h", "f"]
            (video, vpub, _) = await subscribed.wait(
                lambda t, pub, p: t.kind == rtc.TrackKind.KIND_VIDEO, timeout=20
            )
            assert vpub.sid == published["camera"]["sid"]
            width, height = await first_frame_size(video, timeout=20)
            assert width > 0 and height * 16 == width * 9, (width, height)  # a 16:9 layer
            lumas = await frame_lumas(video, 20)
            assert min(lumas) > 32, lumas  # Chrome's fake camera is bright: not black frames
            (audio, _, _) = await subscribed.wait(
                lambda t, pub, p: t.kind == rtc.TrackKind.KIND_AUDIO, timeout=20
            )
            peak = await audio_peak(audio, above=1000)
            assert peak > 1000, peak  # the fake microphone beeps

            # Python -> browser: a pattern video and a tone, decoded on the us-east node.
            async with pattern_video(py), tone_audio(py):
                await web.wait_event("track_subscribed", {"identity": "py", "source": "camera"})
                await web.wait_event("track_subscribed", {"identity": "py", "source": "microphone"})
                grown = await web.decodes("py", frames=20)
                assert grown["last"]["codec"] == "video/VP8", grown
                picture = await web.call("sampleVideo", "py", "camera")
                assert picture["width"] == 640, picture
                assert picture["litFraction"] > 0.5, picture  # a grey frame, not black
                heard = await web.hears("py")
                assert heard["last"]["codec"] == "audio/opus", heard
                # the tone makes py an active speaker for the page, whose node is not py's
                await eventually(
                    lambda: speaker_seen(web, "py"), timeout=15, what="py among the speakers"
                )

                # Data across the nodes, both ways, reliable then lossy (the first
                # publishData opens the page's data channels).
                data = EventWaiter(py, "data_received")
                for reliable, topic in ((True, "w-reliable"), (False, "w-lossy")):
                    text = f"from the browser ({topic})"
                    await web.call("publishData", text, {"reliable": reliable, "topic": topic})
                    (pkt,) = await data.wait(lambda p, topic=topic: p.topic == topic, timeout=10)
                    assert (pkt.data, pkt.participant.identity) == (text.encode(), "web")
                for reliable, topic in ((True, "p-reliable"), (False, "p-lossy")):
                    text = f"from python ({topic})"
                    await py.local_participant.publish_data(
                        text.encode(), reliable=reliable, topic=topic
                    )
                    got = await web.wait_event("data", {"topic": topic})
                    assert (got["from"], got["text"]) == ("py", text), got

                # RPC across the nodes, both ways.
                async def echo(inv: rtc.RpcInvocationData) -> str:
                    return f"py echoes {inv.payload} for {inv.caller_identity}"

                py.local_participant.register_rpc_method("py.echo", echo)
                await web.call("registerRpc", "web.echo", "web echoes")
                reply = await web.call("performRpc", "py", "py.echo", "hi", timeout=MEDIA_CALL)
                assert reply == "py echoes hi for web", reply
                reply = await asyncio.wait_for(
                    py.local_participant.perform_rpc(
                        destination_identity="web", method="web.echo", payload="yo"
                    ),
                    MEDIA_CALL,
                )
                assert reply == "web echoes: yo", reply
                invoked = await web.wait_event("rpc_invoked", {"method": "web.echo"})
                assert invoked["caller"] == "py", invoked

                # Room-level state set through the other region's edge reaches the page in a
                # RoomUpdate whose counts cover both nodes (the page and py both publish).
                since = await web.mark()
                changed = EventWaiter(py, "room_metadata_changed")
                async with api.LiveKitAPI(west.http_url, API_KEY, API_SECRET) as lk:
                    await lk.room.update_room_metadata(
                        api.UpdateRoomMetadataRequest(room=room, metadata="spanning")
                    )
                    await web.wait_event(
                        "room_metadata_changed", {"metadata": "spanning"}, since=since
                    )
                    await changed.wait(lambda old, new: new == "spanning")
                    info = await web.call("roomInfo")
                    assert info["metadata"] == "spanning", info
                    assert info["sid"] == joined["sid"], info
                    assert (info["numParticipants"], info["numPublishers"]) == (2, 2), info

                    # A participant on the other node, updated through the API twice: the page
                    # must end on the last one, so its versions must grow (the SDK drops older).
                    before = (await web.call("participantInfo", "py"))["version"]
                    since = await web.mark()
                    for n in (1, 2):
                        await lk.room.update_participant(
                            api.UpdateParticipantRequest(
                                room=room,
                                identity="py",
                                metadata=f"py meta {n}",
                                attributes={"step": str(n)},
                            )
                        )
                    await web.wait_event(
                        "participant_metadata_changed",
                        {"identity": "py", "metadata": "py meta 2"},
                        since=since,
                    )
                    after = await web.call("participantInfo", "py")
                    assert after["metadata"] == "py meta 2", after
                    assert after["attributes"] == {"step": "2"}, after
                    assert after["version"] > before, (before, after)
                    assert [t["source"] for t in after["tracks"]] == ["camera", "microphone"]

                    # and the page's own participant, from the other side
                    web_changed = EventWaiter(py, "participant_metadata_changed")
                    await lk.room.update_participant(
                        api.UpdateParticipantRequest(room=room, identity="web", metadata="web md")
                    )
                    await web_changed.wait(
                        lambda who, old, new: (who.identity, new) == ("web", "web md")
                    )
                    await web.wait_event(  # and the page itself, from its own node
                        "participant_metadata_changed", {"identity": "web", "metadata": "web md"}
                    )

        # py left through the us-west edge; the page, on the us-east node, sees it go.
        await web.wait_event("participant_disconnected", {"identity": "py"}, timeout=15)
        assert await web.call("remoteIdentities") == []


async def test_simulcast_from_the_browser_to_a_subscriber_on_the_home(
    cluster: Cluster, browser: Browser
) -> None:
    room = "span-browser-simulcast"
    east, west = cluster.edges[0], cluster.edges[1]
    async with connected(west.ws_url, "viewer", room) as viewer:
        # Room state set on the home before the room extends: a new part must answer the
        # page's join with it.
        changed = EventWaiter(viewer, "room_metadata_changed")
        async with api.LiveKitAPI(west.http_url, API_KEY, API_SECRET) as lk:
            await lk.room.update_room_metadata(
                api.UpdateRoomMetadataRequest(room=room, metadata="before the page")
            )
        await changed.wait(lambda old, new: new == "before the page")
        async with page_in(browser, east.ws_url, "cam", room) as cam:
            placed = cluster.seats(room)
            home = cluster.placement(room)
            assert home is not None and home[0] == placed["viewer"], (home, placed)
            assert region_of(cluster, placed["cam"]) == "us-east", placed  # not the home
            # what the page read from its JoinResponse, answered by the new part
            assert await cam.call("remoteIdentities") == ["viewer"]
            joined = await cam.call("roomInfo")
            assert joined["sid"] == await viewer.sid, joined
            assert joined["metadata"] == "before the page", joined
            assert joined["numParticipants"] == 2, joined
            assert joined["server"] == {**joined["server"], "nodeId": placed["cam"]}, joined
            seen = await cam.call("participantInfo", "viewer")
            assert seen["sid"] == viewer.local_participant.sid, seen

            await simulcast_follows(viewer, cam)


async def test_dynacast_across_nodes_pauses_the_browser_s_unwanted_layers(
    cluster: Cluster, browser: Browser
) -> None:
    """With dynacast, the layers the only (remote) subscriber wants reach the publishing page
    across the link: it stops encoding the others, and starts again when wanted."""
    room = "span-browser-dynacast"
    east, west = cluster.edges[0], cluster.edges[1]
    async with (
        connected(west.ws_url, "viewer", room) as viewer,
        page_in(browser, east.ws_url, "dyn", room, {"dynacast": True}) as cam,
    ):
        placed = cluster.seats(room)
        assert placed["dyn"] != placed["viewer"], placed
        await simulcast_follows(viewer, cam, dynacast=True)


MEET = {"adaptiveStream": True, "dynacast": True}  # LiveKit Meet's Room options
BIG = {"frameWidth": [640, 1280]}  # layer h (640x360) or f (1280x720); never the 320 px one
SMALL = {"frameWidth": [1, 320]}  # layer q


async def test_adaptive_stream_of_a_page_on_another_node(
    cluster: Cluster, browser: Browser
) -> None:
    """A page subscribes with adaptive stream on another node than the publishing page: the
    size of its <video> element picks the layer across the link (UpdateTrackSettings from B,
    relayed to A), hiding it stops the packets, and dynacast follows."""
    room = "span-browser-adaptive"
    east, west = cluster.edges[0], cluster.edges[1]
    async with (
        page_in(browser, east.ws_url, "pub", room, MEET) as pub,
        page_in(browser, west.ws_url, "sub", room, MEET) as sub,
    ):
        placed = cluster.seats(room)
        assert placed["pub"] != placed["sub"], placed
        await pub.call("enableCameraAndMicrophone", timeout=MEDIA_CALL)
        await sub.wait_event("track_subscribed", {"identity": "pub", "source": "camera"})
        await sub.call("setVideoSize", "pub", "camera", 1280, 720)
        await sub.call("waitStats", "pub", "camera", BIG, MEDIA_MS, timeout=MEDIA_CALL)

        await sub.call("setVideoSize", "pub", "camera", 160, 90)
        small = await sub.call("waitStats", "pub", "camera", SMALL, MEDIA_MS, timeout=MEDIA_CALL)
        assert small["frameHeight"] <= 180, small
        await pub.call("waitActiveLayers", ["q"], MEDIA_MS, timeout=MEDIA_CALL)

        await sub.call("setVideoHidden", "pub", "camera", True)
        quiet = await sub.call(
            "waitStill", "pub", "camera", "packetsReceived", 2000, MEDIA_MS, timeout=MEDIA_CALL
        )
        assert quiet["last"]["framesDecoded"] == quiet["first"]["framesDecoded"], quiet

        await sub.call("setVideoSize", "pub", "camera", 1280, 720)
        back = await sub.call("waitStats", "pub", "camera", BIG, MEDIA_MS, timeout=MEDIA_CALL)
        assert back["framesDecoded"] > quiet["last"]["framesDecoded"], back
        await pub.call("waitActiveLayers", ["q", "h", "f"], MEDIA_MS, timeout=MEDIA_CALL)
        dropped = [m for m in browser.log if "quality update for unknown track" in str(m)]
        assert not dropped, dropped


async def test_a_small_tile_on_a_node_where_another_subscriber_wants_the_top_layer(
    cluster: Cluster, browser: Browser
) -> None:
    room = "span-browser-mixed"
    east, west = cluster.edges[0], cluster.edges[1]
    async with (
        page_in(browser, east.ws_url, "pub", room, MEET) as pub,
        connected(west.ws_url, "big", room) as big,  # auto-subscribes at HIGH
        page_in(browser, west.ws_url, "sub", room, MEET) as sub,
    ):
        placed = cluster.seats(room)
        assert placed["sub"] == placed["big"] != placed["pub"], placed
        subscribed = EventWaiter(big, "track_subscribed")
        await pub.call("enableCameraAndMicrophone", timeout=MEDIA_CALL)
        (track, _, _) = await subscribed.wait(
            lambda t, p, who: t.kind == rtc.TrackKind.KIND_VIDEO, timeout=20
        )
        assert await until_width(track, lambda w: w > 480, 30) > 480
        await sub.wait_event("track_subscribed", {"identity": "pub", "source": "camera"})
        await sub.call("setVideoSize", "pub", "camera", 1280, 720)
        await sub.call("waitStats", "pub", "camera", BIG, MEDIA_MS, timeout=MEDIA_CALL)

        # the page's tile shrinks: it should get layer q, as on one node (test_browser_sdk)
        await sub.call("setVideoSize", "pub", "camera", 160, 90)
        await sub.call("waitStats", "pub", "camera", SMALL, MEDIA_MS, timeout=MEDIA_CALL)
        # while the Python subscriber next to it keeps the top layer
        assert await until_width(track, lambda w: w > 480, 10) > 480


async def simulcast_follows(viewer: rtc.Room, cam: Page, *, dynacast: bool = False) -> None:
    """``cam`` publishes its camera (default simulcast); ``viewer`` switches LOW then HIGH and
    decodes the matching widths (and, with ``dynacast``, the page encodes only what is
    wanted)."""
    subscribed = EventWaiter(viewer, "track_subscribed")
    published = await cam.call("enableCameraAndMicrophone", timeout=MEDIA_CALL)
    camera = published["camera"]
    assert [e["rid"] for e in camera["encodings"]] == ["q", "h", "f"], camera
    (track, publication, _) = await subscribed.wait(
        lambda t, pub, p: pub.sid == camera["sid"], timeout=20
    )
    assert publication.simulcasted

    # The top layer first (the fake camera is 1280x720; a busy encoder may scale its input
    # down, so "more than the middle layer's 640" would be too strict: > 480).
    high = await until_width(track, lambda w: w > 480, 30)
    publication.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_LOW)
    low = await until_width(track, lambda w: w <= 320, 30)
    if dynacast:
        await cam.call("waitActiveLayers", ["q"], MEDIA_MS, timeout=MEDIA_CALL)
    publication.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_HIGH)
    if dynacast:
        await cam.call("waitActiveLayers", ["q", "h", "f"], MEDIA_MS, timeout=MEDIA_CALL)
    again = await until_width(track, lambda w: w > 480, 30)
    assert low < high and low < again, (low, high, again)
    # still decoding the chosen layer, and the picture is the fake camera's
    lumas = await frame_lumas(track, 10)
    assert min(lumas) > 32, lumas
