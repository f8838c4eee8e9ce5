"""Simulcast: three VP8 layers (rid q/h/f, unrelated SSRC, sequence and timestamp bases and
picture ids) into one UpTrack; a DownTrack switches layers at keyframes and the subscriber's
stream stays continuous and decodable.

Real aiortc receiver/sender/DTLS objects are used (hooked exactly as in production), without a
network: the DTLS transports' ``_send_rtp`` is replaced by a capture, packets are handed to
the receiver's hooked handler, and the "publisher" answers PLIs by forcing a keyframe.
"""

from __future__ import annotations

import asyncio
import fractions
import itertools
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import pytest
from aiortc import (
    RTCCertificate,
    RTCDtlsTransport,
    RTCIceGatherer,
    RTCIceTransport,
    RTCRtpCodecParameters,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc.codecs.vpx import Vp8Encoder, vp8_depayload
from aiortc.rtcrtpparameters import (
    RTCRtcpParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpReceiveParameters,
    RTCRtpSendParameters,
)
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import RtcpPacket, RtcpPsfbPacket, RtcpSenderInfo, RtcpSrPacket, RtpPacket

from trackyard.sfu import rtphooks
from trackyard.sfu.downtrack import DownTrack
from trackyard.sfu.rtpmunger import ts_diff
from trackyard.sfu.rtppacket import EXT_ABS_SEND_TIME, EXT_MID, EXT_RID
from trackyard.sfu.uptrack import (
    QUALITY_HIGH,
    QUALITY_LOW,
    QUALITY_MEDIUM,
    QUALITY_OFF,
    LayerSpec,
    UpTrack,
)
from trackyard.sfu.vp8 import parse_vp8

SIZES = {"q": (160, 120), "h": (320, 240), "f": (640, 480)}
VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
RTX = RTCRtpCodecParameters(
    mimeType="video/rtx", clockRate=90000, payloadType=97, parameters={"apt": 96}
)
NTP_BASE = 0xE100000000000000
RECEIVERS: list[RTCRtpReceiver] = []


@pytest.fixture(autouse=True)
async def stop_receivers() -> AsyncIterator[None]:
    yield
    while RECEIVERS:
        await RECEIVERS.pop().stop()  # joins aiortc's (idle) decoder thread
    SINKS.clear()


def _dtls() -> RTCDtlsTransport:
    return RTCDtlsTransport(
        RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()]
    )


SINKS: dict[int, list[bytes]] = {}


def _capture(dtls: RTCDtlsTransport, sink: list[bytes]) -> None:
    """Collect what is sent on ``dtls`` (RTCP through ``_send_rtp``, forwarded RTP and
    packet-path RTCP through ``rtphooks.send_rtp_nowait`` / ``send_rtcp_nowait``, patched
    below) instead of encrypting and sending it."""

    async def send(data: bytes) -> None:
        sink.append(bytes(data))

    dtls.__dict__["_send_rtp"] = send
    SINKS[id(dtls)] = sink


@pytest.fixture(autouse=True)
def capture_nowait(monkeypatch: pytest.MonkeyPatch) -> None:
    def send_rtp_nowait(transport: RTCDtlsTransport, data: bytes) -> bool:
        SINKS[id(transport)].append(bytes(data))
        return True

    monkeypatch.setattr(rtphooks, "send_rtp_nowait", send_rtp_nowait)
    monkeypatch.setattr(rtphooks, "send_rtcp_nowait", send_rtp_nowait)


@dataclass
class Layer:
    rid: str
    ssrc: int = field(default_factory=lambda: random.getrandbits(32))
    seq: int = field(default_factory=lambda: random.randrange(65536))
    ts_base: int = field(default_factory=lambda: random.getrandbits(32))
    encoder: Vp8Encoder = field(default_factory=Vp8Encoder)
    force_key: bool = True


def _frame(n: int, width: int, height: int) -> av.VideoFrame:
    yuv = np.full((height * 3 // 2, width), 128, np.uint8)
    yuv[:height] = (np.arange(width, dtype=np.uint32)[None, :] * 640 // width + 5 * n) % 256
    frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
    frame.pts = n * 3000
    frame.time_base = fractions.Fraction(1, 90000)
    return frame


class FakePublisher:
    """Encodes the same picture sequence at three sizes and feeds the UpTrack's receiver."""

    def __init__(self, receiver: RTCRtpReceiver, rtcp_out: list[bytes]) -> None:
        self.receiver = receiver
        self.rtcp_out = rtcp_out
        self.layers = {rid: Layer(rid) for rid in SIZES}
        self.n = 0
        self.seen_rtcp = 0

    def _answer_plis(self) -> None:
        for data in self.rtcp_out[self.seen_rtcp :]:
            for packet in RtcpPacket.parse(data):
                if isinstance(packet, RtcpPsfbPacket) and packet.fmt == 1:
                    for layer in self.layers.values():
                        if layer.ssrc == packet.media_ssrc:
                            layer.force_key = True
        self.seen_rtcp = len(self.rtcp_out)

    async def send_srs(self) -> None:
        for layer in self.layers.values():
            ntp = NTP_BASE + int(self.n / 30 * 2**32)
            sr = RtcpSrPacket(
                ssrc=layer.ssrc,
                sender_info=RtcpSenderInfo(
                    ntp_timestamp=ntp,
                    rtp_timestamp=(layer.ts_base + self.n * 3000) & 0xFFFFFFFF,
                    packet_count=0,
                    octet_count=0,
                ),
            )
            await self.receiver._handle_rtcp_packet(sr)

    async def frame(self, rids: tuple[str, ...] = ("q", "h", "f")) -> None:
        """One picture on each layer in ``rids``; sender reports after the first one and
        then every 15 pictures (like a real sender, which reports once it has sent)."""
        self._answer_plis()
        for rid in rids:
            layer = self.layers[rid]
            width, height = SIZES[rid]
            payloads, _ = layer.encoder.encode(_frame(self.n, width, height), layer.force_key)
            layer.force_key = False
            for i, payload in enumerate(payloads):
                packet = RtpPacket(
                    payload_type=96,
                    marker=int(i == len(payloads) - 1),
                    sequence_number=layer.seq,
                    timestamp=(layer.ts_base + self.n * 3000) & 0xFFFFFFFF,
                    ssrc=layer.ssrc,
                    payload=payload,
                )
                packet.extensions.rtp_stream_id = rid
                packet.extensions.mid = "0"
                layer.seq = (layer.seq + 1) & 0xFFFF
                await self.receiver._handle_rtp_packet(packet, 0)
        if self.n % 15 == 0:
            await self.send_srs()
        self.n += 1
        await asyncio.sleep(0)  # let PLIs go out

    async def frames(self, count: int, rids: tuple[str, ...] = ("q", "h", "f")) -> None:
        for _ in range(count):
            await self.frame(rids)


async def _setup(
    qualities: list[int | None], wanted: list[int | None]
) -> tuple[UpTrack, FakePublisher, list[DownTrack], list[list[bytes]], list[Any]]:
    pub_dtls = _dtls()
    rtcp_out: list[bytes] = []
    _capture(pub_dtls, rtcp_out)
    receiver = RTCRtpReceiver("video", pub_dtls)
    receiver._track = RemoteStreamTrack(kind="video")
    RECEIVERS.append(receiver)
    up = UpTrack(
        "video",
        track_sid="TR_sim",
        layers=[
            LayerSpec("q", QUALITY_LOW, *SIZES["q"]),
            LayerSpec("h", QUALITY_MEDIUM, *SIZES["h"]),
            LayerSpec("f", QUALITY_HIGH, *SIZES["f"]),
        ],
        on_wanted_quality=wanted.append,
        pli_interval=0.0,  # the fake publisher runs faster than real time
    )
    up.attach(receiver, mid="0", rids=["q", "h", "f"])
    await receiver.receive(
        RTCRtpReceiveParameters(
            codecs=[VP8, RTX],
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=1, uri=EXT_MID),
                RTCRtpHeaderExtensionParameters(id=4, uri=EXT_RID),
            ],
            muxId="0",
        )
    )
    downtracks: list[DownTrack] = []
    outputs: list[list[bytes]] = []
    for quality in qualities:
        sub_dtls = _dtls()
        out: list[bytes] = []
        _capture(sub_dtls, out)
        sender = RTCRtpSender("video", sub_dtls)
        transceiver = RTCRtpTransceiver(
            "video", RTCRtpReceiver("video", sub_dtls), sender, direction="sendonly"
        )
        dt = DownTrack(up, transceiver, stream_id="PA_x|TR_sim", track_id="TR_sim")
        dt.set_layer_preference(quality=quality)
        await sender.send(
            RTCRtpSendParameters(
                codecs=[
                    RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=100),
                    RTCRtpCodecParameters(
                        mimeType="video/rtx",
                        clockRate=90000,
                        payloadType=101,
                        parameters={"apt": 100},
                    ),
                ],
                headerExtensions=[
                    RTCRtpHeaderExtensionParameters(id=5, uri=EXT_MID),
                    RTCRtpHeaderExtensionParameters(id=6, uri=EXT_ABS_SEND_TIME),
                ],
                muxId="7",
                rtcp=RTCRtcpParameters(cname="sfu"),
            )
        )
        downtracks.append(dt)
        outputs.append(out)
    return up, FakePublisher(receiver, rtcp_out), downtracks, outputs, [receiver]


def _parse(out: list[bytes]) -> Iterator[RtpPacket]:
    for data in out:
        if 192 <= data[1] <= 223:
            continue  # RTCP
        yield RtpPacket.parse(data)


def _check_continuous(packets: list[RtpPacket]) -> None:
    seqs = [p.sequence_number for p in packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs)), seqs
    tss = [p.timestamp for p in packets]
    assert all(ts_diff(b, a) >= 0 for a, b in itertools.pairwise(tss))
    assert len({p.ssrc for p in packets}) == 1 and {p.payload_type for p in packets} == {100}
    pids = []
    for p in packets:
        d = parse_vp8(p.payload)
        assert d is not None
        if d.begins_frame:
            pids.append(d.picture_id)
    assert all((b - a) % 0x8000 == 1 for a, b in itertools.pairwise(pids)), pids


def _begins_frame(packet: RtpPacket) -> bool:
    d = parse_vp8(packet.payload)
    return d is not None and d.begins_frame


def _decode(packets: list[RtpPacket]) -> list[tuple[int, int]]:
    codec = av.CodecContext.create("libvpx", "r")
    sizes: list[tuple[int, int]] = []
    frame = b""
    for p in packets:
        frame += vp8_depayload(p.payload)
        if p.marker:
            for decoded in codec.decode(av.Packet(frame)):
                sizes.append((decoded.width, decoded.height))
            frame = b""
    return sizes


async def test_layer_switches_happen_at_keyframes_and_output_stays_continuous() -> None:
    wanted: list[int | None] = []
    _, pub, (dt,), (out,), _ = await _setup([QUALITY_HIGH], wanted)
    assert wanted[-1] == QUALITY_HIGH
    await pub.frames(10)
    assert dt.current_layer == 2
    first = list(_parse(out))
    assert first and parse_vp8(first[0].payload).keyframe  # type: ignore[union-attr]

    # down to LOW: keeps sending "f" until a keyframe of "q" (requested by PLI) arrives
    dt.set_layer_preference(quality=QUALITY_LOW)
    assert wanted[-1] == QUALITY_LOW
    assert dt.current_layer == 2 and dt.target_layer == 0
    await pub.frames(10)
    assert dt.current_layer == 0
    # then by view size: 300x200 needs "h"
    dt.set_layer_preference(width=300, height=200)
    await pub.frames(10)
    assert dt.current_layer == 1
    await pub.frames(5)

    packets = list(_parse(out))
    _check_continuous(packets)
    sizes = _decode(packets)
    # 35 pictures; switching *up* at a keyframe captured at the same instant as the last
    # picture sent from the lower layer shows that instant twice (timestamps +1 apart)
    assert len(sizes) in (35, 36)
    assert sizes[0] == SIZES["f"] and SIZES["q"] in sizes and sizes[-1] == SIZES["h"]
    assert dt.switches == 2
    # timestamps follow the capture clock across switches (aligned via the SRs)
    frame_ts = [p.timestamp for p in packets if _begins_frame(p)]
    steps = [ts_diff(b, a) for a, b in itertools.pairwise(frame_ts)]
    assert set(steps) <= {1, 2999, 3000, 3001}, steps
    assert abs(ts_diff(frame_ts[-1], frame_ts[0]) - 34 * 3000) <= 2


async def test_missing_layer_falls_back_and_comes_back() -> None:
    wanted: list[int | None] = []
    up, pub, (dt,), (out,), _ = await _setup([QUALITY_HIGH], wanted)
    await pub.frames(5)
    assert dt.current_layer == 2
    # the publisher stops "f" (e.g. bandwidth): after the layer timeout the DownTrack moves to
    # "h", the best layer still received
    up.layer_timeout = 0.05
    for _ in range(5):
        await pub.frame(("q", "h"))
        await asyncio.sleep(0.03)
    up._check_activity()
    await pub.frames(5, ("q", "h"))
    assert dt.target_layer == 1 and dt.current_layer == 1
    assert up.wanted_quality == QUALITY_HIGH  # still wanted: the publisher should send it
    # "f" comes back: switch up again at its next keyframe
    await pub.frames(5)
    assert dt.current_layer == 2
    packets = list(_parse(out))
    _check_continuous(packets)
    sizes = _decode(packets)
    assert len(sizes) == sum(p.marker for p in packets)  # every forwarded picture decodes
    assert sizes[0] == sizes[-1] == SIZES["f"] and SIZES["h"] in sizes


async def test_subscribers_choose_independently_and_pause() -> None:
    wanted: list[int | None] = []
    up, pub, dts, outs, _ = await _setup([QUALITY_LOW, QUALITY_MEDIUM, None], wanted)
    await pub.frames(8)
    assert [dt.current_layer for dt in dts] == [0, 1, 2]
    for out, size in zip(outs, ("q", "h", "f"), strict=True):
        packets = list(_parse(out))
        _check_continuous(packets)
        assert set(_decode(packets)) == {SIZES[size]}
    assert wanted[-1] == QUALITY_HIGH
    dts[2].set_layer_preference(quality=QUALITY_OFF)
    assert dts[2].paused and wanted[-1] == QUALITY_MEDIUM
    sent = dts[2].packets_sent
    await pub.frames(3)
    assert dts[2].packets_sent == sent
    dts[0].close()
    dts[1].set_layer_preference(disabled=True)
    assert wanted[-1] is None
    await up.close()
    assert all(dt.paused for dt in dts)
