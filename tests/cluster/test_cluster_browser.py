"""A browser participant (livekit-client in Chromium) through a signal edge of a cluster.

The page joins through edge A and publishes its fake camera and microphone (default options,
simulcast); a Python SDK participant joins through edge B, decodes the page's video and hears
its audio, and publishes a pattern video and a tone that the page decodes in turn. The room
lives on an SFU node of its own, so every signal message crosses Redis.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from livekit import rtc

from tests.support.browser import MEDIA_CALL, Browser, browser_fixture
from tests.support.cluster import Cluster, cluster_fixture
from tests.support.media import frame_lumas, pattern_video, tone_audio
from tests.support.sdk import EventWaiter, connected

pytestmark = pytest.mark.sdk

cluster = cluster_fixture(
    sfu_regions=["us-east"], edge_regions=["us-east", "us-east"], routers_count=1
)
browser = browser_fixture()
ROOM = "browser-bridged"


async def test_browser_through_an_edge_exchanges_media_with_python(
    cluster: Cluster, browser: Browser
) -> None:
    edge_a, edge_b = cluster.edges[0].ws_url, cluster.edges[1].ws_url
    async with browser.pages("web") as (web,):
        await web.join(edge_a, "web", ROOM)
        async with connected(edge_b, "py", ROOM) as py:
            assert set(py.remote_participants) == {"web"}
            subscribed = EventWaiter(py, "track_subscribed")

            # Browser -> Python: the fake camera and microphone, decoded by the Python SDK.
            published = await web.call("enableCameraAndMicrophone", timeout=MEDIA_CALL)
            assert [e["rid"] for e in published["camera"]["encodings"]] == ["q", "h", "f"]
            (video, _, _) = await subscribed.wait(
                lambda t, pub, p: t.kind == rtc.TrackKind.KIND_VIDEO, timeout=20
            )
            lumas = await frame_lumas(video, 10)
            assert min(lumas) > 32, lumas  # Chrome's fake camera is bright: not black frames
            (audio, _, _) = await subscribed.wait(
                lambda t, pub, p: t.kind == rtc.TrackKind.KIND_AUDIO, timeout=20
            )
            stream = rtc.AudioStream(audio, sample_rate=48000, num_channels=1)
            try:
                peak = 0.0
                async with asyncio.timeout(20):
                    async for event in stream:
                        samples = np.frombuffer(event.frame.data, dtype=np.int16)
                        peak = max(peak, float(np.abs(samples).max(initial=0)))
                        if peak > 1000:  # the fake microphone beeps
                            break
            finally:
                await stream.aclose()
            assert peak > 1000, peak

            # Python -> browser: a pattern video and a tone, decoded by the page.
            async with pattern_video(py), tone_audio(py):
                await web.wait_event("track_subscribed", {"identity": "py", "source": "camera"})
                await web.wait_event("track_subscribed", {"identity": "py", "source": "microphone"})
                await web.decodes("py", frames=20)
                picture = await web.call("sampleVideo", "py", "camera")
                assert picture["width"] == 640, picture
                assert picture["litFraction"] > 0.5, picture  # a grey frame, not black
                await web.hears("py")

            # Data across the edges, both ways.
            data = EventWaiter(py, "data_received")
            await web.call("publishData", "from the browser", {"reliable": True, "topic": "w"})
            (pkt,) = await data.wait(lambda p: p.topic == "w", timeout=10)
            assert pkt.data == b"from the browser"
            await py.local_participant.publish_data(b"from python", topic="p")
            got = await web.wait_event("data", {"topic": "p"})
            assert got == {**got, "from": "py", "text": "from python"}

        # Python left through edge B; the page, on edge A, sees it go.
        await web.wait_event("participant_disconnected", {"identity": "py"})
