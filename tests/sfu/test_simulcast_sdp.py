"""Negotiating simulcast with aiortc: rid header extensions and the answer's rid lines."""

from __future__ import annotations

from aiortc import RTCSessionDescription

from trackyard.sfu.portrange import make_peer_connection
from trackyard.sfu.rtphooks import simulcast_answer
from trackyard.sfu.rtppacket import EXT_REPAIRED_RID, EXT_RID

RIDS = "a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n"


async def _client_offer() -> str:
    """An offer like a simulcast publisher's: rid extensions, rid lines, no a=ssrc."""
    client = make_peer_connection(None, "127.0.0.1", [])
    try:
        client.addTransceiver("video", direction="sendonly")
        client.addTransceiver("audio", direction="sendonly")
        await client.setLocalDescription(await client.createOffer())
        sdp = client.localDescription.sdp
    finally:
        await client.close()
    lines = [line for line in sdp.split("\r\n") if not line.startswith("a=ssrc")]
    sdp = "\r\n".join(lines)
    video_mid = sdp.index("a=mid:0\r\n") + len("a=mid:0\r\n")
    return sdp[:video_mid] + RIDS + sdp[video_mid:]


async def test_answer_accepts_rid_extensions_and_simulcast() -> None:
    offer = await _client_offer()
    assert f"a=extmap:10 {EXT_RID}" in offer and f"a=extmap:11 {EXT_REPAIRED_RID}" in offer
    pc = make_peer_connection(None, "127.0.0.1", [])
    try:
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = pc.localDescription.sdp
        assert f"a=extmap:10 {EXT_RID}" in answer  # aiortc negotiated the rid extensions
        assert "a=simulcast" not in answer  # but dropped simulcast itself
        munged = simulcast_answer(answer, offer)
        video, audio = munged.split("m=audio")
        assert "a=mid:0\r\na=rid:q recv\r\na=rid:h recv\r\na=rid:f recv\r\n" in video
        assert "a=simulcast:recv q;h;f\r\n" in video
        assert "a=rid" not in audio and "a=simulcast" not in audio
        assert munged.replace(
            RIDS.replace("send", "recv").replace(":recv q;h;f", ":recv q;h;f"), ""
        )
        # the munged answer is still a valid description for aiortc and idempotent
        assert simulcast_answer(munged, offer) == munged
        assert simulcast_answer(answer, answer) == answer  # nothing to add
    finally:
        await pc.close()
