"""A malformed offer or answer is refused the LiveKit way and touches nobody else.

The node checks session descriptions before aiortc parses them (``trackyard.sfu.sdpcheck``).
A bad one is a failed negotiation, which LiveKit answers with a full reconnect: the sender gets
``leave{reason: STATE_MISMATCH, action: RECONNECT}`` and its session ends; the others see it
leave (STATE_MISMATCH) and keep their media. Nothing is logged as an error.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import websockets
from livekit import rtc as rtc_sdk
from livekit.protocol import models, rtc

from tests.support.chaos import all_see_media, bad_log_lines, video_peer
from tests.support.sdk import EventWaiter, token
from tests.support.trackyard import TrackyardProcess

pytestmark = pytest.mark.sdk

ROOM = "bad-sdp"
BAD = [
    (
        "offer",
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
    ),
    ("offer", "v=0\r\nc=IN IP9 nowhere\r\n"),
    ("answer", "v=0\r\nm=video x UDP/TLS/RTP/SAVPF 96\r\n"),
]


@pytest.fixture(scope="module")
def server() -> object:
    with TrackyardProcess({"room": {"departure_timeout": 1}}) as proc:
        yield proc
        assert proc.alive(), proc.logs()


@pytest.mark.parametrize(("kind", "sdp"), BAD, ids=["no-ice", "bad-address", "bad-port"])
async def test_bad_description_sends_only_its_sender_to_rejoin(
    server: TrackyardProcess, kind: str, sdp: str
) -> None:
    identity = f"x-{kind}-{len(sdp)}"
    async with (
        video_peer(server.ws_url, "a", ROOM) as a,
        video_peer(server.ws_url, "b", ROOM) as b,
    ):
        await all_see_media([a, b], 0.0, count=3, timeout=15)
        start = time.monotonic()
        left = EventWaiter(a.room, "participant_disconnected")
        async with websockets.connect(
            f"{server.ws_url}/rtc?access_token={token(identity, ROOM)}", open_timeout=10
        ) as ws:
            join = rtc.SignalResponse.FromString(await asyncio.wait_for(ws.recv(), 10))
            assert join.WhichOneof("message") == "join"
            desc = rtc.SessionDescription(type=kind, sdp=sdp, id=1)
            if kind == "answer":
                await ws.send(rtc.SignalRequest(answer=desc).SerializeToString())
            else:
                await ws.send(rtc.SignalRequest(offer=desc).SerializeToString())
            leave = None
            with pytest.raises(websockets.ConnectionClosed):
                for _ in range(50):
                    msg = rtc.SignalResponse.FromString(await asyncio.wait_for(ws.recv(), 10))
                    if msg.WhichOneof("message") == "leave":
                        leave = msg.leave
            assert leave is not None
            assert leave.reason == models.DisconnectReason.STATE_MISMATCH
            assert leave.action == rtc.LeaveRequest.RECONNECT
        (who,) = await left.wait(lambda p: p.identity == identity, timeout=10)
        assert who.disconnect_reason == models.DisconnectReason.STATE_MISMATCH
        # a and b are untouched: still connected, media flowing both ways throughout
        await all_see_media([a, b], time.monotonic(), count=3, timeout=10)
        for p, q in ((a, b), (b, a)):
            assert p.room.connection_state == rtc_sdk.ConnectionState.CONN_CONNECTED
            gap = p.log.max_gap(q.identity, start, time.monotonic())
            assert gap < 1.0, f"{p.identity} lost {q.identity}'s media for {gap:.2f}s"
    bad = bad_log_lines(server.log_path.read_text(errors="replace"))
    assert not bad, "\n".join(bad)
