"""The official LiveKit browser SDK (livekit-client) in Chromium against Trackyard, unchanged.

One Chromium for the module (tests/support/browser.py); each test opens two pages, each its
own participant, and asserts on what the subscribing page *decodes* (inbound-rtp stats, the
picture drawn from its <video> element), not only on SDK events.
"""

from __future__ import annotations

import time

import pytest

from tests.support.browser import MEDIA_CALL as CALL
from tests.support.browser import MEDIA_MS, Browser, BrowserError, browser_fixture
from tests.support.sdk import token
from tests.support.trackyard import TrackyardProcess

pytestmark = pytest.mark.sdk

browser = browser_fixture()


async def test_camera_and_microphone_decode(
    server: TrackyardProcess, browser: Browser, room_name: str
) -> None:
    async with browser.pages("pub", "sub") as (pub, sub):
        await pub.join(server.ws_url, "alice", room_name)
        await sub.join(server.ws_url, "bob", room_name)
        await pub.wait_event("participant_connected", {"identity": "bob"})

        published = await pub.call("enableCameraAndMicrophone", timeout=CALL)
        camera = published["camera"]
        assert camera["sid"].startswith("TR_")
        # Default options: simulcast, three layers from the 720p fake camera.
        assert [e["rid"] for e in camera["encodings"]] == ["q", "h", "f"], camera
        assert published["microphone"]["sid"].startswith("TR_")

        video = await sub.wait_event("track_subscribed", {"identity": "alice", "source": "camera"})
        assert video["sid"] == camera["sid"]
        await sub.wait_event("track_subscribed", {"identity": "alice", "source": "microphone"})

        grown = await sub.decodes("alice")
        assert grown["last"]["codec"] == "video/VP8"
        assert grown["last"]["frameWidth"] > 0

        # The picture is not black: it is Chrome's fake camera, a green frame with a bright
        # green disc, corner squares and a running clock.
        picture = await sub.call("sampleVideo", "alice", "camera")
        assert picture["width"] > 0, picture
        assert picture["litFraction"] > 0.5, picture
        red, green, blue = picture["meanRgb"]
        assert green > 2 * max(red, blue, 1), picture
        assert picture["distinctColours"] > 4, picture

        audio = await sub.hears("alice")
        assert audio["last"]["codec"] == "audio/opus"
        assert audio["last"]["packetsReceived"] > audio["first"]["packetsReceived"]


MEET = {"adaptiveStream": True, "dynacast": True}  # LiveKit Meet's Room options
BIG = {"frameWidth": [640, 1280]}  # layer h (640x360) or f (1280x720)


async def test_adaptive_stream_and_dynacast(
    server: TrackyardProcess, browser: Browser, room_name: str
) -> None:
    async with browser.pages("pub", "viewer", "hider") as (pub, viewer, hider):
        await pub.join(server.ws_url, "alice", room_name, MEET)
        await viewer.join(server.ws_url, "vera", room_name, MEET)
        await hider.join(server.ws_url, "hugo", room_name, MEET)
        await pub.call("enableCameraAndMicrophone", timeout=CALL)
        for page in (viewer, hider):
            await page.wait_event("track_subscribed", {"identity": "alice", "source": "camera"})
            await page.call("setVideoSize", "alice", "camera", 1280, 720)

        # Large elements: an upper layer (1280x720 from the fake camera; the encoder may scale
        # its input down when the shared cores are busy, hence a range: never the 320 px one).
        for page in (viewer, hider):
            big = await page.call("waitStats", "alice", "camera", BIG, MEDIA_MS, timeout=CALL)
            assert big["frameHeight"] * 16 == big["frameWidth"] * 9, big

        # The viewer shrinks its element: it gets the lowest layer, the other page still the top.
        await viewer.call("setVideoSize", "alice", "camera", 160, 90)
        small = await viewer.call(
            "waitStats", "alice", "camera", {"frameWidth": [1, 320]}, MEDIA_MS, timeout=CALL
        )
        assert small["frameHeight"] <= 180, small
        await hider.call("waitStats", "alice", "camera", BIG, MEDIA_MS, timeout=CALL)

        # The hider hides its element: no more packets for it; the viewer keeps decoding.
        await hider.call("setVideoHidden", "alice", "camera", True)
        quiet = await hider.call(
            "waitStill", "alice", "camera", "packetsReceived", 2000, MEDIA_MS, timeout=CALL
        )
        assert quiet["last"]["framesDecoded"] == quiet["first"]["framesDecoded"], quiet
        await viewer.decodes("alice", frames=10)

        # Dynacast: nobody wants the top layer any more, so the publisher stops encoding it.
        await pub.call("waitActiveLayers", ["q"], MEDIA_MS, timeout=CALL)

        # Shown again (large): the hider decodes the top layer again.
        await hider.call("setVideoSize", "alice", "camera", 1280, 720)
        back = await hider.call("waitStats", "alice", "camera", BIG, MEDIA_MS, timeout=CALL)
        assert back["framesDecoded"] > quiet["last"]["framesDecoded"]
        await pub.call("waitActiveLayers", ["q", "h", "f"], MEDIA_MS, timeout=CALL)
        # every subscribed_quality_update reached a track the publisher's SDK knew
        dropped = [m for m in browser.log if "quality update for unknown track" in str(m)]
        assert not dropped, dropped


async def test_mute_unmute_unpublish_republish(
    server: TrackyardProcess, browser: Browser, room_name: str
) -> None:
    async with browser.pages("pub", "sub") as (pub, sub):
        await pub.join(server.ws_url, "alice", room_name)
        await sub.join(server.ws_url, "bob", room_name)
        first = (await pub.call("enableCameraAndMicrophone", timeout=CALL))["camera"]
        await sub.wait_event("track_subscribed", {"identity": "alice", "source": "camera"})
        await sub.decodes("alice", frames=10)

        # Mute: the other page sees it, and frames stop.
        since = await sub.mark()
        muted = await pub.call("muteCamera", True)
        assert muted["muted"] is True
        await sub.wait_event("track_muted", {"identity": "alice", "source": "camera"}, since=since)
        assert await sub.call("remoteMuted", "alice", "camera") is True
        await sub.call(
            "waitStill", "alice", "camera", "framesDecoded", 2000, MEDIA_MS, timeout=CALL
        )

        # Unmute: seen, and frames flow again.
        since = await sub.mark()
        unmuted = await pub.call("muteCamera", False)
        assert unmuted["muted"] is False
        await sub.wait_event(
            "track_unmuted", {"identity": "alice", "source": "camera"}, since=since
        )
        assert await sub.call("remoteMuted", "alice", "camera") is False
        await sub.decodes("alice", frames=10)

        # Unpublish: the publisher PC renegotiates; the other page loses the track.
        since = await sub.mark()
        pub_since = await pub.mark()
        assert await pub.call("unpublishCamera", timeout=CALL) == first["sid"]
        await pub.wait_event("local_track_unpublished", {"source": "camera"}, since=pub_since)
        await sub.wait_event(
            "track_unpublished", {"identity": "alice", "sid": first["sid"]}, since=since
        )
        assert await sub.call("inbound", "alice", "camera") is None

        # Republish: a new track, renegotiated again, subscribed and decoded.
        since = await sub.mark()
        again = await pub.call("setCameraEnabled", True, timeout=CALL)
        assert again["sid"].startswith("TR_")
        assert again["sid"] != first["sid"]
        assert [e["rid"] for e in again["encodings"]] == ["q", "h", "f"], again
        got = await sub.wait_event(
            "track_subscribed", {"identity": "alice", "source": "camera"}, since=since
        )
        assert got["sid"] == again["sid"]
        await sub.decodes("alice", frames=10)
        picture = await sub.call("sampleVideo", "alice", "camera")
        assert picture["litFraction"] > 0.2, picture
        # The microphone was untouched throughout.
        await sub.hears("alice")


async def test_data_rpc_and_leave(
    server: TrackyardProcess, browser: Browser, room_name: str
) -> None:
    async with browser.pages("a", "b") as (a, b):
        await a.join(server.ws_url, "ann", room_name)
        await b.join(server.ws_url, "ben", room_name)
        await a.wait_event("participant_connected", {"identity": "ben"})
        assert await b.call("remoteIdentities") == ["ann"]  # in its JoinResponse
        await a.call("registerRpc", "ann.echo", "ann echoes")
        await b.call("registerRpc", "ben.echo", "ben echoes")

        # Data both ways, reliable and lossy (the first publishData opens the data channels).
        for sender, receiver, src in ((a, b, "ann"), (b, a, "ben")):
            for reliable in (True, False):
                topic = f"{src}-{'reliable' if reliable else 'lossy'}"
                text = f"hello from {src} ({topic})"
                await sender.call("publishData", text, {"reliable": reliable, "topic": topic})
                got = await receiver.wait_event("data", {"topic": topic})
                assert got["from"] == src, got
                assert got["text"] == text, got

        # Targeted data reaches only its destination.
        await a.call(
            "publishData",
            "for ben only",
            {"reliable": True, "topic": "direct", "destinationIdentities": ["ben"]},
        )
        assert (await b.wait_event("data", {"topic": "direct"}))["text"] == "for ben only"

        # RPC both ways.
        assert await a.call("performRpc", "ben", "ben.echo", "ping from ann") == (
            "ben echoes: ping from ann"
        )
        invoked = await b.wait_event("rpc_invoked", {"method": "ben.echo"})
        assert invoked["caller"] == "ann"
        assert await b.call("performRpc", "ann", "ann.echo", "ping from ben") == (
            "ann echoes: ping from ben"
        )
        invoked = await a.wait_event("rpc_invoked", {"method": "ann.echo"})
        assert invoked["caller"] == "ben"

        # Leave: the other page sees the participant go.
        await a.call("disconnect")
        await b.wait_event("participant_disconnected", {"identity": "ann"})
        assert await b.call("remoteIdentities") == []
        # Nobody got their own data back.
        assert {ev["from"] for ev in await a.call("eventsOf", "data", 0)} == {"ben"}
        assert {ev["from"] for ev in await b.call("eventsOf", "data", 0)} == {"ann"}


async def test_forged_token_is_refused_at_once(
    server: TrackyardProcess, browser: Browser, room_name: str
) -> None:
    # The SDK fetches /rtc/v1/validate cross-origin after the failed upgrade: the 401 and its
    # reason must be readable there, or the SDK retries instead of failing.
    forged = token("mallory", room_name)[:-4] + "AAAA"
    async with browser.pages("x") as (page,):
        started = time.monotonic()
        with pytest.raises(BrowserError, match="invalid access token"):
            await page.call("connect", server.ws_url, forged, {}, timeout=CALL)
        assert time.monotonic() - started < 10
