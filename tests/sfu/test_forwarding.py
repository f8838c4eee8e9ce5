"""aiortc to aiortc, end to end, through the forwarding engine (no LiveKit SDK).

A publisher peer connection sends a VP8 video track (each frame shows its number as black and
white blocks) and an opus track (a 440 Hz tone) to an "SFU" peer connection whose receivers are
hooked by UpTracks; DownTracks forward to two subscriber peer connections, which decode and
check what they get. All peer connections are loopback-only (aioice on 127.0.0.1 works
between aiortc peers) and bind inside a test port range.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import itertools
import re
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import av
import numpy as np
import pytest
from aiortc import (
    AudioStreamTrack,
    MediaStreamTrack,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError

from trackyard.sfu import fanout
from trackyard.sfu.downtrack import DownTrack
from trackyard.sfu.portrange import make_peer_connection
from trackyard.sfu.rtphooks import MidRouter, receiver_codecs
from trackyard.sfu.rtpstats import TrafficCounters
from trackyard.sfu.uptrack import UpTrack

PORTS = (47300, 47399)
W, H = 320, 240
BITS = 12
TONE_HZ = 440.0
TIMEOUT = 20.0


# --- media ------------------------------------------------------------------------------


def _pattern(n: int) -> np.ndarray:
    """A yuv420p frame: ``n`` as BITS blocks (white = 1) on one row, inverted on the next."""
    yuv = np.full((H * 3 // 2, W), 128, np.uint8)
    y = yuv[:H]
    y[:] = 100
    for bit in range(BITS):
        on = (n >> bit) & 1
        x = 10 + bit * 25
        y[40:70, x : x + 20] = 235 if on else 16
        y[140:170, x : x + 20] = 16 if on else 235
    return yuv


def read_pattern(frame: av.VideoFrame) -> int | None:
    """The frame number drawn by ``_pattern``, None if the frame does not carry one."""
    if frame.width != W or frame.height != H:
        return None
    y = frame.to_ndarray(format="yuv420p")[:H].astype(np.int32)
    n = 0
    for bit in range(BITS):
        x = 10 + bit * 25
        top = y[45:65, x + 4 : x + 16].mean()
        bottom = y[145:165, x + 4 : x + 16].mean()
        if abs(top - bottom) < 100:
            return None
        if top > bottom:
            n |= 1 << bit
    return n


class PatternTrack(VideoStreamTrack):
    """``noisy``: noise below the pattern, so that frames take several packets."""

    def __init__(self, first: int = 0, noisy: bool = False) -> None:
        super().__init__()
        self.count = first
        self._noise = np.random.default_rng(1) if noisy else None

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        yuv = _pattern(self.count)
        if self._noise is not None:
            yuv[180:H] = self._noise.integers(0, 256, (H - 180, W), np.uint8)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = pts
        frame.time_base = time_base
        self.count += 1
        return frame


class ToneTrack(AudioStreamTrack):
    RATE = 48000
    SAMPLES = 960

    def __init__(self) -> None:
        super().__init__()
        self._n = 0
        self._t0: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self._t0 is None:
            self._t0 = time.time()
        else:
            wait = self._t0 + self._n / self.RATE - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        t = (np.arange(self.SAMPLES) + self._n) / self.RATE
        samples = (0.3 * 32767 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.RATE
        frame.pts = self._n
        frame.time_base = fractions.Fraction(1, self.RATE)
        self._n += self.SAMPLES
        return frame


# --- topology ---------------------------------------------------------------------------


def new_pc(client: bool = False) -> RTCPeerConnection:
    """An SFU-side connection, or (``client``) a test client's, which decodes what it gets."""
    return make_peer_connection(PORTS, "127.0.0.1", [], decode_unattached=client)


async def negotiate(
    offerer: RTCPeerConnection,
    answerer: RTCPeerConnection,
    after_offer: Callable[[], None] | None = None,
) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    if after_offer is not None:
        after_offer()
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


async def wait_for(cond: Callable[[], bool], timeout: float = TIMEOUT, what: str = "") -> None:
    """Poll a condition on received media (frames arrive by themselves, there is no event)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.05)


@dataclass
class Subscriber:
    pc: RTCPeerConnection
    frames: list[int | None] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)
    rtp_payloads: dict[str, list[bytes]] = field(default_factory=dict)
    rtp_ssrcs: dict[str, set[int]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def audio_samples(self) -> int:
        return sum(len(a) for a in self.audio)

    def decoded(self) -> list[int]:
        return [n for n in self.frames if n is not None]

    def consume(self, track: MediaStreamTrack) -> None:
        self.tasks.append(asyncio.ensure_future(_consume(track, self)))


async def _consume(track: MediaStreamTrack, sub: Subscriber) -> None:
    with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
        while True:
            frame = await track.recv()
            if isinstance(frame, av.VideoFrame):
                sub.frames.append(read_pattern(frame))
            elif isinstance(frame, av.AudioFrame):
                data = frame.to_ndarray().astype(np.float64)
                channels = len(frame.layout.channels)
                sub.audio.append(
                    data.reshape(-1, channels).mean(axis=1) if channels > 1 else data[0]
                )


def is_rtx(receiver: RTCRtpReceiver, packet: Any) -> bool:
    codec = receiver_codecs(receiver).get(packet.payload_type)
    return codec is not None and codec.is_rtx


def tap_receiver(receiver: RTCRtpReceiver, sink: Callable[[Any], bool]) -> None:
    """Wrap a receiver's (possibly hooked) packet handler; ``sink`` returns False to drop."""
    inner = receiver._handle_rtp_packet

    async def handler(packet: Any, arrival_time_ms: int) -> None:
        if sink(packet):
            await inner(packet, arrival_time_ms)

    receiver.__dict__["_handle_rtp_packet"] = handler


@dataclass
class Topology:
    publisher: RTCPeerConnection
    sfu_pub: RTCPeerConnection
    video: UpTrack
    audio: UpTrack
    video_track: PatternTrack
    subscribers: list[Subscriber]
    downtracks: list[dict[str, DownTrack]]
    sfu_subs: list[RTCPeerConnection]
    counters: TrafficCounters
    published: dict[str, list[bytes]]
    published_rtx: list[int]
    uplink_drop: list[Callable[[Any], bool]]
    pcs: list[RTCPeerConnection]


async def build(
    subscribers: int = 2,
    *,
    on_subscriber_receiver: Callable[[int, str, RTCRtpReceiver], None] | None = None,
    ahead: Collection[int] = (),
    noisy: bool = False,
) -> Topology:
    """``ahead``: the subscribers whose DownTracks are relays (``DownTrack(ahead=True)``);
    ``noisy``: video frames of several packets (``PatternTrack``)."""
    counters = TrafficCounters()
    publisher = new_pc(client=True)
    video_track = PatternTrack(noisy=noisy)
    publisher.addTrack(ToneTrack())
    publisher.addTrack(video_track)

    sfu_pub = new_pc()
    ups: dict[str, UpTrack] = {}
    published: dict[str, list[bytes]] = {"audio": [], "video": []}
    published_rtx: list[int] = []
    uplink_drop: list[Callable[[Any], bool]] = []

    def attach() -> None:
        for t in sfu_pub.getTransceivers():
            up = UpTrack(t.kind, track_sid=f"TR_{t.kind}", counters=counters)
            up.attach(t.receiver, mid=t.mid)
            ups[t.kind] = up
            kind = t.kind

            def sink(packet: Any, kind: str = kind, receiver: RTCRtpReceiver = t.receiver) -> bool:
                if is_rtx(receiver, packet):
                    published_rtx.append(packet.sequence_number)
                    return True
                for drop in uplink_drop:
                    if kind == "video" and not drop(packet):
                        return False
                published[kind].append(bytes(packet.payload))
                return True

            tap_receiver(t.receiver, sink)

    await negotiate(publisher, sfu_pub, after_offer=attach)

    subs: list[Subscriber] = []
    sfu_subs: list[RTCPeerConnection] = []
    downtracks: list[dict[str, DownTrack]] = []
    for i in range(subscribers):
        sfu_sub = new_pc()
        dts: dict[str, DownTrack] = {}
        for kind in ("audio", "video"):
            t = sfu_sub.addTransceiver(kind, direction="sendonly")
            dts[kind] = DownTrack(
                ups[kind],
                t,
                stream_id="PA_pub|TR_" + kind,
                track_id="TR_" + kind,
                counters=counters,
                ahead=i in ahead,
            )
        sub = Subscriber(new_pc(client=True))

        sub.pc.on("track", sub.consume)

        def hook_sub(sub: Subscriber = sub, index: int = i) -> None:
            for t in sub.pc.getTransceivers():
                kind = t.kind
                payloads = sub.rtp_payloads.setdefault(kind, [])
                ssrcs = sub.rtp_ssrcs.setdefault(kind, set())

                def record(
                    packet: Any,
                    payloads: list[bytes] = payloads,
                    ssrcs: set[int] = ssrcs,
                    receiver: RTCRtpReceiver = t.receiver,
                ) -> bool:
                    ssrcs.add(packet.ssrc)
                    if not is_rtx(receiver, packet):
                        payloads.append(bytes(packet.payload))
                    return True

                if on_subscriber_receiver is not None:
                    on_subscriber_receiver(index, kind, t.receiver)
                tap_receiver(t.receiver, record)

        await negotiate(sfu_sub, sub.pc, after_offer=hook_sub)
        subs.append(sub)
        sfu_subs.append(sfu_sub)
        downtracks.append(dts)

    return Topology(
        publisher=publisher,
        sfu_pub=sfu_pub,
        video=ups["video"],
        audio=ups["audio"],
        video_track=video_track,
        subscribers=subs,
        downtracks=downtracks,
        sfu_subs=sfu_subs,
        counters=counters,
        published=published,
        published_rtx=published_rtx,
        uplink_drop=uplink_drop,
        pcs=[publisher, sfu_pub, *sfu_subs, *(s.pc for s in subs)],
    )


async def teardown(topo: Topology) -> None:
    for sub in topo.subscribers:
        for task in sub.tasks:
            task.cancel()
    await topo.video.close()
    await topo.audio.close()
    for pc in topo.pcs:
        await asyncio.wait_for(pc.close(), 10)


@contextlib.asynccontextmanager
async def topology(**kwargs: Any) -> AsyncIterator[Topology]:
    topo = await build(**kwargs)
    try:
        yield topo
    finally:
        await teardown(topo)


def dominant_frequency(samples: np.ndarray, rate: int = 48000) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def candidate_ports(pc: RTCPeerConnection) -> list[int]:
    sdp = pc.localDescription.sdp
    return [int(m.group(1)) for m in re.finditer(r"a=candidate:\S+ \d+ udp \d+ \S+ (\d+) typ", sdp)]


def _frames_at_least(sub: Subscriber, count: int) -> bool:
    return len(sub.decoded()) >= count


def _audio_at_least(sub: Subscriber, seconds: float) -> bool:
    return sub.audio_samples >= 48000 * seconds


# --- tests ------------------------------------------------------------------------------


async def test_video_pattern_and_audio_tone_reach_both_subscribers() -> None:
    async with topology() as topo:
        for sub in topo.subscribers:
            await wait_for(partial(_frames_at_least, sub, 60), what="60 decoded frames")
            await wait_for(partial(_audio_at_least, sub, 1.5), what="1.5 s audio")

        for sub, dts in zip(topo.subscribers, topo.downtracks, strict=True):
            numbers = sub.decoded()
            # every decoded frame carries a valid pattern; numbers only go up, few are missing
            assert sum(n is None for n in sub.frames) <= 2, sub.frames[:10]
            assert all(b > a for a, b in itertools.pairwise(numbers)), numbers
            span = numbers[-1] - numbers[0] + 1
            assert len(numbers) >= 0.9 * span, (len(numbers), span)
            # the tone survives forwarding (skip the first 0.5 s: decoder warm-up)
            audio = np.concatenate(sub.audio)[24000:72000]
            assert abs(dominant_frequency(audio) - TONE_HZ) < 5
            assert np.sqrt(np.mean(audio**2)) > 1000
            # the subscriber sees our SSRCs, not the publisher's
            assert sub.rtp_ssrcs["video"] == {dts["video"].ssrc} | (
                {dts["video"]._rtx_ssrc} if dts["video"].retransmits else set()
            )
            assert sub.rtp_ssrcs["audio"] == {dts["audio"].ssrc}
            for kind in ("audio", "video"):
                dt = dts[kind]
                assert dt.ready and dt.current_layer == 0 and dt.packets_sent > 0

        # forwarded payloads are the published payloads, byte for byte
        for kind in ("audio", "video"):
            published = set(topo.published[kind])
            for sub in topo.subscribers:
                got = sub.rtp_payloads[kind]
                assert len(got) > 50
                assert all(p in published for p in got), kind

        # each subscriber's first video packet was a keyframe start (requested by the
        # DownTrack), so its very first decoded frame is complete
        for sub in topo.subscribers:
            first = sub.rtp_payloads["video"][0]
            assert first[0] & 0x10 and not (first[6] & 0x01)  # S bit; VP8 P bit 0 = key

        c = topo.counters
        assert c.packets_in > 0 and c.packets_out >= 1.5 * c.packets_in * 0.9
        assert c.plis_sent >= 1
        # everything bound inside the port range
        for pc in topo.pcs:
            ports = candidate_ports(pc)
            assert ports and all(PORTS[0] <= p <= PORTS[1] for p in ports), ports


async def test_a_relay_gets_each_packet_of_a_burst_before_the_local_subscribers() -> None:
    """A DownTrack ahead (a relay to another node) gets each packet as soon as it is read; the
    other subscribers get a burst (a frame's packets, read back to back) once the last of it
    is read, in order, and decode the same video as the relay's subscriber."""
    parts: list[tuple[int, int, int]] = []  # (part, packet number, timestamp), as sent
    async with topology(ahead=(0,), noisy=True) as topo:
        fan = topo.video.fanout
        forward = fan.forward

        def spy(packet: Any, video: bool, level: int, part: int = fanout.WHOLE) -> Any:
            parts.append((part, packet.n, packet.rtp.timestamp))
            return forward(packet, video, level, part)

        fan.__dict__["forward"] = spy
        for sub in topo.subscribers:
            await wait_for(partial(_frames_at_least, sub, 60), what="60 decoded frames")
        for sub in topo.subscribers:
            numbers = sub.decoded()
            assert all(b > a for a, b in itertools.pairwise(numbers)), numbers
            assert len(numbers) >= 0.9 * (numbers[-1] - numbers[0] + 1)
            assert all(p in set(topo.published["video"]) for p in sub.rtp_payloads["video"])

    # whole until both subscribers' copies are in the lane (keyframe, steady stream), then split
    split = next(i for i, (part, _, _) in enumerate(parts) if part == fanout.AHEAD)
    parts = parts[split:]
    assert {part for part, _, _ in parts} == {fanout.AHEAD, fanout.REST}
    ahead_at = {n: i for i, (part, n, _) in enumerate(parts) if part == fanout.AHEAD}
    rest_at = {n: i for i, (part, n, _) in enumerate(parts) if part == fanout.REST}
    assert sorted(ahead_at) == list(rest_at)  # each packet once to each part, in order
    frames: dict[int, list[int]] = {}
    for part, n, ts in parts:
        if part == fanout.AHEAD:
            frames.setdefault(ts, []).append(n)
    bursts = [ns for ns in frames.values() if len(ns) > 1 and ns[-1] in rest_at]
    assert len(bursts) >= 20, frames
    for ns in bursts:  # all of a frame to the relay, then all of it here, back to back
        rest = [rest_at[n] for n in ns]
        assert max(ahead_at[n] for n in ns) < rest[0]
        assert rest == list(range(rest[0], rest[0] + len(ns)))
    # and nothing waits for more than its burst: a local copy follows its relayed one within
    # the packets read meanwhile (a frame and what came with it), never _HOLD_MAX
    assert max(rest_at[n] - ahead_at[n] for n in rest_at) < 2 * max(map(len, bursts)) + 4


async def test_sender_reports_follow_the_publishers_clock() -> None:
    """The SFU's SRs map our output timestamps onto the publisher's NTP clock: audio and
    video SRs from one subscriber agree on the media timeline (lip sync)."""
    # (ntp, rtp, when it arrived on the monotonic clock)
    reports: dict[str, list[tuple[int, int, float]]] = {"audio": [], "video": []}
    async with topology(subscribers=1) as topo:
        sub = topo.subscribers[0]
        for t in sub.pc.getTransceivers():
            kind = t.kind
            inner = t.receiver._handle_rtcp_packet

            async def on_rtcp(packet: Any, kind: str = kind, inner: Any = inner) -> None:
                info = getattr(packet, "sender_info", None)
                if info is not None:
                    reports[kind].append((info.ntp_timestamp, info.rtp_timestamp, time.monotonic()))
                await inner(packet)

            t.receiver.__dict__["_handle_rtcp_packet"] = on_rtcp
        await wait_for(
            lambda: len(reports["audio"]) >= 3 and len(reports["video"]) >= 3,
            what="3 sender reports per track",
        )
        for kind, clock in (("audio", 48000), ("video", 90000)):
            (n0, r0, _), (n1, r1, _) = reports[kind][0], reports[kind][-1]
            elapsed = (n1 - n0) / 2**32
            assert elapsed > 1.0
            # RTP advances at the clock rate along the NTP timeline of the SRs
            assert abs(((r1 - r0) & 0xFFFFFFFF) / clock - elapsed) < 0.05, kind
        # and the SR timeline matches the packets we actually sent: the last sent timestamp is
        # the last SR's, moved on by the time since it arrived (up to an SR interval: a fixed
        # bound of one second failed when the check came 1.1 s after the SR)
        dt = topo.downtracks[0]["video"]
        _, rtp, arrived = reports["video"][-1]
        since = ((dt.last_sent_numbers[1] - rtp + 2**31) & 0xFFFFFFFF) - 2**31
        assert abs(since / 90000 - (time.monotonic() - arrived)) < 0.25


async def test_nack_answered_with_rtx_under_downlink_loss() -> None:
    """Subscriber 0 loses every 8th video packet before aiortc sees it: it NACKs, the
    DownTrack retransmits from its history over RTX, and the video stays continuous."""
    count = [0]

    def lossy(index: int, kind: str, receiver: RTCRtpReceiver) -> None:
        if index != 0 or kind != "video":
            return
        inner = receiver._handle_rtp_packet

        async def drop(packet: Any, arrival_time_ms: int) -> None:
            if not is_rtx(receiver, packet):
                count[0] += 1
                if count[0] > 30 and count[0] % 8 == 0:
                    return
            await inner(packet, arrival_time_ms)

        receiver.__dict__["_handle_rtp_packet"] = drop

    async with topology(on_subscriber_receiver=lossy) as topo:
        lossy_sub = topo.subscribers[0]
        await wait_for(lambda: len(lossy_sub.decoded()) >= 90, what="90 frames under loss")
        dt = topo.downtracks[0]["video"]
        assert dt.nacks_received > 0 and dt.retransmits > 0
        assert dt._rtx_pt >= 0  # RTX negotiated and used
        numbers = lossy_sub.decoded()
        span = numbers[-1] - numbers[0] + 1
        assert len(numbers) >= 0.9 * span, (len(numbers), span)
        assert topo.downtracks[1]["video"].retransmits == 0


async def test_uplink_loss_recovered_by_nack_to_the_publisher() -> None:
    """The SFU loses every 8th video packet from the publisher: the UpTrack NACKs, the
    publisher retransmits over RTX, the UpTrack unwraps and forwards; subscribers keep up."""
    async with topology(subscribers=1) as topo:
        count = [0]

        def drop(packet: Any) -> bool:
            count[0] += 1
            return not (count[0] > 30 and count[0] % 8 == 0)

        topo.uplink_drop.append(drop)
        sub = topo.subscribers[0]
        await wait_for(lambda: len(sub.decoded()) >= 90, what="90 frames under uplink loss")
        assert len(topo.published_rtx) > 5
        numbers = sub.decoded()
        span = numbers[-1] - numbers[0] + 1
        assert len(numbers) >= 0.9 * span, (len(numbers), span)


async def test_pause_and_resume_keeps_the_stream_continuous() -> None:
    async with topology(subscribers=1) as topo:
        sub = topo.subscribers[0]
        dt = topo.downtracks[0]["video"]
        await wait_for(lambda: len(sub.decoded()) >= 20, what="20 frames")
        dt.set_layer_preference(disabled=True)
        assert dt.paused and topo.video.wanted_quality is None
        sent = dt.packets_sent
        last_seq, last_ts = dt.last_sent_numbers
        await asyncio.sleep(0.6)
        assert dt.packets_sent == sent  # nothing while paused
        frames_before = len(sub.decoded())
        dt.set_layer_preference(quality=2)
        await wait_for(lambda: len(sub.decoded()) >= frames_before + 20, what="resumed frames")
        # the resumed stream continues the sequence numbers without a gap, timestamps advanced
        # by about the pause
        assert dt.switches >= 1
        seq, ts = dt.last_sent_numbers
        assert ((seq - last_seq) & 0xFFFF) == dt.packets_sent - sent
        assert ((ts - last_ts) & 0xFFFFFFFF) > 0.5 * 90000


async def test_downtrack_close_stops_forwarding() -> None:
    async with topology(subscribers=1) as topo:
        sub = topo.subscribers[0]
        dt = topo.downtracks[0]["video"]
        await wait_for(lambda: len(sub.decoded()) >= 10, what="10 frames")
        dt.close()
        assert dt not in topo.video.downtracks
        sent = dt.packets_sent
        await asyncio.sleep(0.3)
        assert dt.packets_sent == sent


pytestmark = pytest.mark.timeout(120)


async def test_bundled_video_lines_without_ssrc_are_routed_by_mid() -> None:
    """Two video m-lines with the same payload type and no ``a=ssrc`` (what a simulcast
    publisher offers): aiortc's own router would drop every packet; the MID router learns
    each SSRC from the MID header extension, and each UpTrack gets its own track."""
    publisher = new_pc(client=True)
    publisher.addTrack(PatternTrack(0))
    publisher.addTrack(PatternTrack(2048))
    sfu_pub = new_pc()
    sfu_sub = new_pc()
    sub = Subscriber(new_pc(client=True))
    pcs = [publisher, sfu_pub, sfu_sub, sub.pc]
    ups: list[UpTrack] = []
    try:
        await publisher.setLocalDescription(await publisher.createOffer())
        offer = publisher.localDescription
        stripped = "\r\n".join(
            line for line in offer.sdp.split("\r\n") if not line.startswith("a=ssrc")
        )
        assert "a=ssrc" in offer.sdp and "a=ssrc" not in stripped
        await sfu_pub.setRemoteDescription(RTCSessionDescription(stripped, "offer"))
        for t in sfu_pub.getTransceivers():
            up = UpTrack("video", track_sid=f"TR_{t.mid}")
            up.attach(t.receiver, mid=t.mid)
            ups.append(up)
        await sfu_pub.setLocalDescription(await sfu_pub.createAnswer())
        await publisher.setRemoteDescription(sfu_pub.localDescription)

        for up in ups:
            DownTrack(up, sfu_sub.addTransceiver("video", direction="sendonly"))
        sub.pc.on(
            "track", lambda track: sub.tasks.append(asyncio.ensure_future(_consume(track, sub)))
        )
        await negotiate(sfu_sub, sub.pc)

        def both() -> bool:
            numbers = sub.decoded()
            return sum(n < 2048 for n in numbers) >= 20 and sum(n >= 2048 for n in numbers) >= 20

        await wait_for(both, what="20 frames of each track")
        assert all(up.packets_in > 0 for up in ups)
        router = ups[0]._receiver.transport._rtp_router  # type: ignore[union-attr]
        assert isinstance(router, MidRouter)
        assert {router.ssrc_table[up.layers[0].ssrc] for up in ups} == {  # type: ignore[index]
            up._receiver for up in ups
        }
    finally:
        for task in sub.tasks:
            task.cancel()
        for up in ups:
            await up.close()
        for pc in pcs:
            await asyncio.wait_for(pc.close(), 10)


async def test_h264_is_forwarded() -> None:
    """The subscriber negotiates the codec the publisher sends (the DownTrack sets the
    transceiver's codec preferences); H.264 keyframes are found for the subscriber's start."""
    publisher = new_pc(client=True)
    transceiver = publisher.addTransceiver(PatternTrack(), direction="sendonly")
    caps = RTCRtpSender.getCapabilities("video")
    transceiver.setCodecPreferences([c for c in caps.codecs if c.mimeType == "video/H264"])
    sfu_pub = new_pc()
    sfu_sub = new_pc()
    sub = Subscriber(new_pc(client=True))
    pcs = [publisher, sfu_pub, sfu_sub, sub.pc]
    ups: list[UpTrack] = []

    def attach() -> None:
        for t in sfu_pub.getTransceivers():
            up = UpTrack("video", track_sid="TR_h264")
            up.attach(t, mid=t.mid)  # the transceiver: its codecs are known already
            codec = up.current_codec()
            assert codec is not None and codec.mime == "video/h264" and up.codec is None
            ups.append(up)

    try:
        await negotiate(publisher, sfu_pub, after_offer=attach)
        await wait_for(lambda: ups[0].codec is not None, what="first packet")
        assert ups[0].codec is not None and ups[0].codec.mime == "video/h264"
        dt = DownTrack(ups[0], sfu_sub.addTransceiver("video", direction="sendonly"))
        sub.pc.on(
            "track", lambda track: sub.tasks.append(asyncio.ensure_future(_consume(track, sub)))
        )
        await negotiate(sfu_sub, sub.pc)
        await wait_for(lambda: len(sub.decoded()) >= 30, what="30 H.264 frames")
        assert "H264" in sfu_sub.localDescription.sdp and "VP8" not in sfu_sub.localDescription.sdp
        assert dt.packets_sent > 0 and ups[0].layers[0].keyframes >= 1
        assert sum(n is None for n in sub.frames) <= 2
    finally:
        for task in sub.tasks:
            task.cancel()
        for up in ups:
            await up.close()
        for pc in pcs:
            await asyncio.wait_for(pc.close(), 10)


async def test_subscribing_later_renegotiates_a_connected_subscriber() -> None:
    """A second DownTrack added to a subscriber connection that is already flowing (new
    transceiver, new offer/answer) starts with a keyframe and decodes."""
    async with topology(subscribers=1) as topo:
        sub = topo.subscribers[0]
        await wait_for(partial(_frames_at_least, sub, 10), what="10 frames")
        sfu_sub = topo.sfu_subs[0]
        late = DownTrack(topo.video, sfu_sub.addTransceiver("video", direction="sendonly"))
        before = len(sub.tasks)
        await negotiate(sfu_sub, sub.pc)
        await wait_for(lambda: len(sub.tasks) > before, what="second track")
        await wait_for(lambda: late.packets_sent > 30, what="second track packets")
        assert late.ready and late.current_layer == 0
        assert late.ssrc != topo.downtracks[0]["video"].ssrc
        # both tracks decode the same pattern: each frame number shows up twice
        await wait_for(
            lambda: any(sub.decoded().count(n) == 2 for n in sub.decoded()),
            what="a frame decoded from both tracks",
        )


async def test_sfu_connection_never_decodes_unattached_tracks() -> None:
    """Media for a receiver no UpTrack took over is dropped (aiortc would decode it)."""
    publisher = new_pc(client=True)
    publisher.addTrack(PatternTrack())
    sfu_pub = new_pc()
    tracks: list[MediaStreamTrack] = []
    sfu_pub.on("track", tracks.append)
    try:
        await negotiate(publisher, sfu_pub)
        receiver = sfu_pub.getTransceivers()[0].receiver
        router = receiver.transport._rtp_router
        assert isinstance(router, MidRouter) and router.drop_unhooked
        await wait_for(lambda: bool(router.ssrc_table), what="media reaching the SFU")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(tracks[0].recv(), 1.0)
    finally:
        await publisher.close()
        await sfu_pub.close()
