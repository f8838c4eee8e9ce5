"""The load tester's simulcast publisher: LiveKit's layers, a Chrome-like offer, and the
layers' RTP (rid/mid tagging, per-layer keyframe requests, NACK resends, dynacast pauses)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc import (
    RTCCertificate,
    RTCDtlsTransport,
    RTCIceGatherer,
    RTCIceTransport,
    RTCPeerConnection,
    RTCRtpSender,
)
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    HeaderExtensionsMap,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    RtpPacket,
)

from trackyard.loadtest import simulcast as sc
from trackyard.loadtest.media import EncodedFrame, simulcast_layers
from trackyard.sfu import rtphooks

KEYFRAMES = (0, 4)  # of an 8-frame loop


def test_layers_are_livekits() -> None:
    layers = simulcast_layers("vp8", "high")
    assert [(x.rid, x.quality) for x in layers] == [("q", 0), ("h", 1), ("f", 2)]
    assert [(x.spec.width, x.spec.height, x.spec.bitrate) for x in layers] == [
        (320, 180, 160_000),
        (640, 360, 450_000),
        (1280, 720, 2_000_000),
    ]
    low = simulcast_layers("h264", "low")  # 1/4 of 320x180: sizes kept even for yuv420p
    assert [(x.spec.codec, x.spec.width, x.spec.height) for x in low] == [
        ("h264", 80, 44),
        ("h264", 160, 90),
        ("h264", 320, 180),
    ]


async def test_offer_is_munged_like_chromes() -> None:
    rtphooks.install_simulcast_extensions()
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio", direction="sendonly")
        pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = sc.simulcast_offer(pc.localDescription.sdp, ["q", "h", "f"])
    finally:
        await pc.close()
    audio, video = sdp.split("\r\nm=")[1:]
    assert audio.startswith("audio") and video.startswith("video")
    assert "a=ssrc:" in audio  # other sections untouched
    assert "a=ssrc" not in video
    assert f"{sc.EXT_RID}" in video and f"{sc.EXT_MID}" in video
    lines = video.strip().split("\r\n")
    assert lines[-4:] == ["a=rid:q send", "a=rid:h send", "a=rid:f send", "a=simulcast:send q;h;f"]
    assert sdp.endswith("\r\n")
    with pytest.raises(sc.SimulcastError):
        sc.simulcast_offer(sdp.replace(sc.EXT_RID, "urn:x"), ["q"])


Sent = list[bytes]


@pytest.fixture
async def publisher(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Any, Sent]]:
    """A SimulcastSender started on a real (unconnected) aiortc sender; what it sends is
    captured instead of going out."""
    sent: Sent = []

    def capture(transport: Any, data: bytes, rtcp: bool = False) -> bool:
        sent.append(data)
        return True

    monkeypatch.setattr(rtphooks, "send_rtp_nowait", capture)
    frames = [EncodedFrame(bytes([i]) * 40, i in KEYFRAMES) for i in range(8)]
    layers = [(layer, frames) for layer in simulcast_layers("vp8", "medium")]
    sender, rtp_sender = _started(layers, {sc.EXT_MID: 1, sc.EXT_RID: 10})
    yield sender, sent
    await sender.stop()
    await rtp_sender.stop()


def _started(layers: Any, extensions: dict[str, int]) -> tuple[Any, RTCRtpSender]:
    """A SimulcastSender attached to a real (unconnected) aiortc sender, started with the
    header extensions the server's answer gave it."""
    sender = sc.SimulcastSender(layers, fps=30)
    dtls = RTCDtlsTransport(
        RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()]
    )
    rtp_sender = RTCRtpSender("video", dtls)
    sender.attach(rtp_sender)
    sender.sender_started(
        rtphooks.SendParameters(
            mid="0",
            cname=None,
            ssrc=rtphooks.sender_ssrcs(rtp_sender)[0],
            rtx_ssrc=0,
            codecs=[rtphooks.CodecInfo(96, "video/vp8", 90000)],
            header_extensions=extensions,
        )
    )
    return sender, rtp_sender


def _parse(data: bytes) -> RtpPacket:
    ext = HeaderExtensionsMap()
    ext.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=1, uri=sc.EXT_MID),
                RTCRtpHeaderExtensionParameters(id=10, uri=sc.EXT_RID),
            ]
        )
    )
    return RtpPacket.parse(data, ext)


def _tick(sender: Any, sent: Sent, count: int) -> dict[str, list[int]]:
    """Send one frame of every layer; the frame numbers sent per rid."""
    sent.clear()
    for s in sender.layers:
        sender._send_frame(s, count * 3000, float(count))
    out: dict[str, list[int]] = {}
    for data in sent:
        p = _parse(data)
        out.setdefault(p.extensions.rtp_stream_id, []).append(p.payload[-1])
    return {rid: sorted(set(frames)) for rid, frames in out.items()}


async def test_layers_are_tagged_streams(publisher: tuple[Any, Sent]) -> None:
    sender, sent = publisher
    assert _tick(sender, sent, 0) == {"q": [0], "h": [0], "f": [0]}
    packets = [_parse(d) for d in sent]
    assert {p.extensions.mid for p in packets} == {"0"}
    assert {p.payload_type for p in packets} == {96}
    assert len({p.ssrc for p in packets}) == 3  # one SSRC per layer, none aiortc's own
    assert all(p.marker for p in packets)  # one packet per (small) frame
    assert _tick(sender, sent, 1) == {"q": [1], "h": [1], "f": [1]}
    by_rid = {_parse(d).extensions.rtp_stream_id: _parse(d) for d in sent}
    assert by_rid["q"].timestamp - packets[0].timestamp in (3000, 3000 - 2**32)
    reports = RtcpPacket.parse(sender.rtcp_report())
    assert {r.ssrc for r in reports if isinstance(r, RtcpSrPacket)} == {
        s.ssrc for s in sender.layers
    }
    assert len(reports) == 3


async def test_keyframe_requests_and_nacks_per_layer(publisher: tuple[Any, Sent]) -> None:
    sender, sent = publisher
    _tick(sender, sent, 0)
    _tick(sender, sent, 1)
    h = sender.layers[1]
    nacked = sent[1]  # h's frame 1
    assert _parse(nacked).ssrc == h.ssrc
    await sender.handle_rtcp(RtcpPsfbPacket(fmt=1, ssrc=1, media_ssrc=h.ssrc))  # PLI
    # h jumps to its next keyframe (frame 4); the other layers go on
    assert _tick(sender, sent, 2) == {"q": [2], "h": [4], "f": [2]}
    assert sender.plis == 1 and h.keyframe_requests == 1
    sent.clear()
    seq = _parse(nacked).sequence_number
    await sender.handle_rtcp(RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=h.ssrc, lost=[seq]))
    assert sent == [nacked]  # resent as it was
    assert sender.nacks == 1


async def test_dynacast_pauses_and_resumes_on_a_keyframe(publisher: tuple[Any, Sent]) -> None:
    sender, sent = publisher
    _tick(sender, sent, 0)
    sender.set_wanted({0: True, 1: False, 2: False})  # only LOW wanted
    assert _tick(sender, sent, 1) == {"q": [1]}
    assert _tick(sender, sent, 2) == {"q": [2]}
    f_packets = sender.layers[2].packets
    sender.set_wanted({2: True})  # a quality not named keeps its state
    assert _tick(sender, sent, 3) == {"q": [3], "f": [4]}  # resumed on its next keyframe
    assert sender.layers[2].packets == f_packets + 1
    assert not sender.layers[1].active


async def test_an_answer_without_rid_fails_the_publish() -> None:
    frames = [EncodedFrame(b"\x00" * 10, True)]
    layers = [(simulcast_layers("vp8", "low")[0], frames)]
    sender, rtp_sender = _started(layers, {sc.EXT_MID: 1})  # the server dropped rtp-stream-id
    with pytest.raises(sc.SimulcastError, match="did not accept RID simulcast"):
        await sender.started
    assert sender.sent() == (0, 0)
    await rtp_sender.stop()
