"""Media through the SFU with the real LiveKit SDK: content checked after the SDK decodes it."""

from __future__ import annotations

import asyncio

import pytest
from livekit import rtc

from tests.support.media import dominant_tone, pattern_video, read_numbers, tone_audio
from tests.support.sdk import EventWaiter, connected
from tests.support.trackyard import TrackyardProcess

pytestmark = pytest.mark.sdk

NO_SIMULCAST = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=False)


def _increasing(numbers: list[int]) -> bool:
    return all(b > a for a, b in zip(numbers, numbers[1:], strict=False))


async def test_audio_and_video_reach_every_subscriber(server: TrackyardProcess, room_name: str) -> None:
    async with (
        connected(server.ws_url, "sub1", room_name) as sub1,
        connected(server.ws_url, "sub2", room_name) as sub2,
    ):
        waits = [EventWaiter(s, "track_subscribed") for s in (sub1, sub2)]
        async with connected(server.ws_url, "pub", room_name) as pub, pattern_video(
            pub, options=NO_SIMULCAST
        ) as vpub, tone_audio(pub, 440.0) as apub:
            for w in waits:
                (vtrack, _, participant) = await w.wait(lambda t, p, who: p.sid == vpub.sid)
                assert participant.identity == "pub"
                numbers = await read_numbers(vtrack, 10)
                assert len(numbers) == 10 and _increasing(numbers), numbers
                (atrack, _, _) = await w.wait(lambda t, p, who: p.sid == apub.sid)
                freq = await dominant_tone(atrack)
                assert abs(freq - 440.0) < 15, freq
