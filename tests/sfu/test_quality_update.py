"""subscribed_quality_update: what the publisher is told when wanted layers change."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from livekit.protocol import models, rtc

from trackyard.core import keys, messages
from trackyard.core.bus import MemoryBus
from trackyard.core.config import Config
from trackyard.core.store import MemoryStore
from trackyard.sfu.node import SfuNode
from trackyard.sfu.participant import Participant


@pytest.fixture
async def publisher() -> AsyncIterator[tuple[Participant, MemoryBus]]:
    bus = MemoryBus()
    node = SfuNode(Config.load(dev=True, env={}), MemoryStore(), bus)
    await node.start()
    sub = bus.subscribe(keys.session_channel("SE_pub"))
    start = messages.SessionStart(session_id="SE_pub", room="r", identity="pub")
    room = await node.ensure_room("r", create=True)
    assert room is not None
    participant = await room.join(start)
    participant.test_sub = sub  # type: ignore[attr-defined]
    participant.test_room = room  # type: ignore[attr-defined]
    yield participant, bus
    await node.stop()


async def _next_quality_update(participant: Participant) -> rtc.SubscribedQualityUpdate:
    sub = participant.test_sub  # type: ignore[attr-defined]
    while True:
        env = await asyncio.wait_for(sub.get(), 5)
        if env is None or env.kind != messages.SIGNAL:
            continue
        msg = rtc.SignalResponse.FromString(env.data)
        if msg.WhichOneof("message") == "subscribed_quality_update":
            return msg.subscribed_quality_update


async def _responses(participant: Participant) -> list[rtc.SignalResponse]:
    """What is queued on the participant's session channel now."""
    sub = participant.test_sub  # type: ignore[attr-defined]
    out = []
    while (env := await sub.get(timeout=0.5)) is not None:
        if env.kind == messages.SIGNAL:
            out.append(rtc.SignalResponse.FromString(env.data))
    return out


async def test_wanted_layers_are_reported(publisher: tuple[Participant, MemoryBus]) -> None:
    participant, _ = publisher
    info = models.TrackInfo(sid="TR_v", type=models.TrackType.VIDEO, mime_type="video/VP8")
    participant.tracks[info.sid] = info
    participant.publisher.wanted_quality("TR_v", models.VideoQuality.MEDIUM)
    update = await _next_quality_update(participant)
    assert update.track_sid == "TR_v"
    enabled = {q.quality: q.enabled for q in update.subscribed_qualities}
    assert enabled == {
        models.VideoQuality.LOW: True,
        models.VideoQuality.MEDIUM: True,
        models.VideoQuality.HIGH: False,
    }
    assert [c.codec for c in update.subscribed_codecs] == ["vp8"]
    participant.publisher.wanted_quality("TR_v", None)  # nobody wants the video
    update = await _next_quality_update(participant)
    assert not any(q.enabled for q in update.subscribed_qualities)


async def test_audio_gets_no_quality_update(publisher: tuple[Participant, MemoryBus]) -> None:
    participant, _ = publisher
    audio = models.TrackInfo(sid="TR_a", type=models.TrackType.AUDIO, mime_type="audio/opus")
    participant.tracks[audio.sid] = audio
    participant.publisher.wanted_quality("TR_a", models.VideoQuality.HIGH)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(_next_quality_update(participant), 0.5)


async def test_a_resume_sends_the_publishing_state_again(
    publisher: tuple[Participant, MemoryBus],
) -> None:
    """A wanted-layers update and the answer to an announced track, published while the
    signal was being lost (before the node noticed), never reached the client: after the
    resume they are sent again."""
    participant, bus = publisher
    info = models.TrackInfo(sid="TR_v", type=models.TrackType.VIDEO, mime_type="video/VP8")
    participant.tracks[info.sid] = info
    participant.publisher.wanted_quality("TR_v", models.VideoQuality.MEDIUM)
    participant.publisher.add_track(
        rtc.AddTrackRequest(cid="mic", type=models.TrackType.AUDIO), participant.permission
    )  # both went to the edge that died
    participant.detach()
    participant.test_sub = bus.subscribe(keys.session_channel("SE_back"))  # type: ignore[attr-defined]
    start = messages.SessionStart(session_id="SE_back", room="r", identity="pub")
    participant.resume(start, rtc.SignalResponse(reconnect=rtc.ReconnectResponse()))
    participant.test_room.send_resume_snapshot(participant)  # type: ignore[attr-defined]
    got = await _responses(participant)
    kinds = [r.WhichOneof("message") for r in got]
    assert kinds[0] == "reconnect"
    (update,) = [
        r.subscribed_quality_update for r in got if r.HasField("subscribed_quality_update")
    ]
    enabled = {q.quality: q.enabled for q in update.subscribed_qualities}
    assert update.track_sid == "TR_v" and enabled[models.VideoQuality.MEDIUM]
    assert not enabled[models.VideoQuality.HIGH]
    assert [r.track_published.cid for r in got if r.HasField("track_published")] == ["mic"]
