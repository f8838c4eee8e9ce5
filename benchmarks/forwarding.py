"""RTP forwarding: one publisher, N subscribers, the SFU's CPU per delivered packet.

A publisher sends a pre-encoded VP8 stream (640x360, ~1 Mbps, 30 fps, a keyframe every 2 s;
encoded once up front with PyAV's libvpx, then replayed, so encoding costs nothing during the
run) to an "SFU" made of aiortc peer connections wired with the server's real code path
(``UpTrack`` on the publisher connection, one ``DownTrack`` per subscriber connection, as in
``tests/sfu/test_forwarding.py``), which forwards it to N subscribers. The publisher and the
subscribers (aiortc peers that count RTP packets as they come off their sockets: no SRTP, no
parsing, no decoding) live in a separate client process, so the SFU process's CPU
(``getrusage``: user + system, all threads) is measured alone. All traffic is on 127.0.0.1.

Per phase (N subscribers, a fixed measuring window) it prints and writes to
``benchmarks/results/forwarding.json``:

- server CPU microseconds per delivered packet, delivered packets per second per core;
- publisher-to-subscriber latency p50/p99: the publisher stamps each packet's send time, the
  subscriber its arrival (same monotonic clock); packets are matched by RTP timestamp and
  sequence number (the SFU keeps the publisher's timestamps and shifts sequence numbers by a
  constant), for all packets and for delta-frame packets only (keyframes come in bursts);
- loss: packets the publisher sent during the window that a subscriber never received.

A baseline phase (publisher straight to one subscriber, no SFU) shows the latency of the client
machinery alone. A naive relay (aiortc's default: decode the published track, ``MediaRelay``
it and re-encode per subscriber, encoders set to the publisher's bitrate) runs at a few sizes
for comparison. A linear fit of CPU against delivered packet rate separates the marginal cost
of a delivered packet from the fixed cost of a received one.

Peers (``--peer``, repeatable, measured one after the other in one run with the same client
process, stream and offer):

- ``trackyard`` (default): the code path above, in this process; its numbers are the
  top-level ``forwarding``/``fit``/``naive``/``targets`` fields of the JSON, as before.
- ``janus``: the Janus WebRTC Server from Debian's package ``janus`` (1.1.x; installed with
  ``apt-get install -y janus`` when ``/usr/bin/janus`` is missing), its VideoRoom plugin with
  Janus's default threading (an event loop and thread per handle). ``janus2``: the same with
  ``event_loops = 2`` in ``janus.jcfg`` (two shared loops, one per core); ``janus1``: one
  shared loop (one core, as Trackyard's one process). Each phase starts a
  fresh Janus child process with a generated configuration (``benchmarks/janus.py``: only the
  VideoRoom plugin and the HTTP transport on 127.0.0.1, logging at warnings) and drives it
  over Janus's HTTP API: a session, a room, the publisher joins and publishes the client
  process's offer, then each subscriber joins the publisher's feed and answers Janus's
  offer. Janus leaves loopback out of ICE, so when a Janus peer is asked for, the benchmark
  installs Janus if needed and then re-runs itself under ``scripts/netns``: a private network
  namespace with a veth test address that exists only there. Janus's ICE is pinned to that
  address and the client peers bind to it, so media stays between the namespace's own
  addresses (Trackyard phases of the same run use 127.0.0.1 of the namespace, the same code
  path). Janus rewrites SSRC, sequence numbers and timestamps per subscriber, so its
  subscribers decrypt each media packet (their own SRTP session, as aiortc would) and packets
  are matched by payload (``benchmarks/bycontent.py``). Its CPU is read with psutil from its
  pid (user + system, all threads; clock-tick resolution, so keep windows of a few seconds).

``--saturate``: per peer, after the ``--sizes`` phases, N grows through ``--saturate-sizes``
(16, 32, 64, 128, 192, 256, 384, 512, ...) until a phase loses more than 1% of the packets owed
to its subscribers or its p99 latency passes 50 ms; the largest N held, its delivered packets/s
and every tried N's CPU per packet, loss and p50/p99 go under ``peers.<peer>.saturation``. The
client process is one Python process too: at large N read ``client_process_cpu_utilization``
before blaming the server for loss. Each peer also gets a table and ``peers.<peer>.phases``.

Run: ``.venv/bin/python -m benchmarks.forwarding [--sizes 1,4,16,64] [--seconds 8]
[--naive-sizes 1,4] [--profile] [--peer trackyard --peer janus --peer janus2] [--saturate]``
(about 80 s with the defaults; ``--profile`` adds a cProfile'd window at the largest size
after the measured one and prints where Trackyard's time goes; cProfile's own overhead inflates
small functions, a sampling profiler such as py-spy on the benchmark's pid is more faithful).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import cProfile
import fractions
import gc
import io
import json
import os
import pstats
import resource
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import psutil
from aiortc import (
    MediaStreamTrack,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay

from benchmarks import bycontent
from benchmarks.janus import (
    JanusServer,
    JanusSession,
    ensure_installed,
    janus_version,
    namespace_address,
)
from benchmarks.stats import percentiles
from trackyard.loadtest.media import EncodedFrame, ReplayTrack
from trackyard.loadtest.media import ice_protocols as _ice_protocols
from trackyard.loadtest.media import is_rtp as _is_rtp
from trackyard.loadtest.rtpcount import Counter, NativeCounter, PyCounter, make_counter
from trackyard.sfu.downtrack import DownTrack
from trackyard.sfu.portrange import make_peer_connection
from trackyard.sfu.rtphooks import transceiver_codecs
from trackyard.sfu.rtpstats import TrafficCounters
from trackyard.sfu.uptrack import UpTrack

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"

WIDTH, HEIGHT, FPS = 640, 360, 30
BITRATE = 1_000_000
KEYFRAME_INTERVAL = 2.0  # seconds between keyframes of the replayed stream
LOOP_SECONDS = 6.0  # length of the pre-encoded loop (a multiple of KEYFRAME_INTERVAL)
SETUP_TIMEOUT = 40.0
WARMUP = 1.5  # seconds of traffic before a window opens
GRACE = 1.0  # seconds after a window closes for its last packets to arrive

# targets on the reference machine (2 cores)
TARGET_US_PER_PACKET = 30.0  # at the largest size (64)
TARGET_P99_MS = 10.0  # at 16 subscribers


# --- the replayed stream (client process) --------------------------------------------------


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    noise = rng.integers(0, 256, (height, width)).astype(np.float64)
    for _ in range(2):  # a little smoothing: detail an encoder can spend bits on
        noise = (
            noise
            + np.roll(noise, 1, 0)
            + np.roll(noise, -1, 0)
            + np.roll(noise, 1, 1)
            + np.roll(noise, -1, 1)
        ) / 5
    return noise.astype(np.uint8)


def encode_stream(seconds: float = LOOP_SECONDS) -> list[EncodedFrame]:
    """A VP8 loop of ``seconds`` (panning texture plus a moving band), libvpx in real-time
    CBR mode at ``BITRATE`` with a keyframe every ``KEYFRAME_INTERVAL`` and keyframe size
    capped as libwebrtc does (max-intra-rate). The first GOP (the encoder settling) is
    dropped, so the loop starts on a steady-state keyframe."""
    gop = round(KEYFRAME_INTERVAL * FPS)
    total = round(seconds * FPS)
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = WIDTH, HEIGHT
    codec.pix_fmt = "yuv420p"
    codec.bit_rate = BITRATE
    codec.framerate = fractions.Fraction(FPS, 1)
    codec.time_base = fractions.Fraction(1, FPS)
    codec.gop_size = gop
    codec.options = {
        "deadline": "good",
        "cpu-used": "5",
        "lag-in-frames": "0",
        "auto-alt-ref": "0",
        "error-resilient": "1",
        "minrate": str(BITRATE),
        "maxrate": str(BITRATE),
        "bufsize": str(BITRATE),
        "undershoot-pct": "95",
        "max-intra-rate": "450",
    }
    rng = np.random.default_rng(7)
    luma = _texture(rng, HEIGHT * 2, WIDTH * 2)
    chroma = _texture(rng, HEIGHT, WIDTH)
    frames: list[EncodedFrame] = []
    for i in range(gop + total):
        yuv = np.full((HEIGHT * 3 // 2, WIDTH), 128, np.uint8)
        y = np.roll(luma, (i * 3, i * 5), (0, 1))[:HEIGHT, :WIDTH].copy()
        band = (i * 7) % (HEIGHT - 40)
        y[band : band + 40] = 255 - y[band : band + 40]
        yuv[:HEIGHT] = y
        yuv[HEIGHT:] = np.roll(chroma, (i, 2 * i), (0, 1))[: HEIGHT // 2, :WIDTH]
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = i
        frames += [EncodedFrame(bytes(p), bool(p.is_keyframe)) for p in codec.encode(frame)]
    frames += [EncodedFrame(bytes(p), bool(p.is_keyframe)) for p in codec.encode(None)]
    loop = frames[gop : gop + total]
    if not loop or not loop[0].keyframe:
        raise RuntimeError("the pre-encoded loop does not start on a keyframe")
    return loop


def stream_info(frames: list[EncodedFrame]) -> dict[str, Any]:
    seconds = len(frames) / FPS
    packets = sum(-(-len(f.data) // 1290) for f in frames)  # aiortc: <= 1300 bytes a payload
    keys = [len(f.data) for f in frames if f.keyframe]
    return {
        "codec": "VP8 (libvpx, pre-encoded, replayed)",
        "width": WIDTH,
        "height": HEIGHT,
        "fps": FPS,
        "loop_frames": len(frames),
        "kbps": round(sum(len(f.data) for f in frames) * 8 / seconds / 1000, 1),
        "packets_per_second": round(packets / seconds, 1),
        "keyframe_interval_s": KEYFRAME_INTERVAL,
        "keyframe_bytes": keys,
        "delta_frame_bytes_mean": round(
            statistics.fmean(len(f.data) for f in frames if not f.keyframe)
        ),
    }


# --- the client process: publisher and subscribers -----------------------------------------


def _vp8_first(transceiver: RTCRtpTransceiver) -> None:
    caps = RTCRtpSender.getCapabilities("video")
    vp8 = [c for c in caps.codecs if c.mimeType.lower() == "video/vp8"]
    rtx = [c for c in caps.codecs if c.mimeType.lower() == "video/rtx"]
    transceiver.setCodecPreferences(vp8 + rtx)


def _media_payload_types(transceiver: RTCRtpTransceiver) -> set[int]:
    return {c.payload_type for c in transceiver_codecs(transceiver) if not c.is_rtx}


ARRIVALS = ("kernel", "kernel-python", "read")
ARRIVAL_HELP = (
    "when a subscriber's packet arrived: kernel = its socket's receive timestamp"
    " (SO_TIMESTAMPNS), the sockets read by trackyard.loadtest.rtpcount's C thread;"
    " kernel-python = the same read by its Python reference on the event loop; read = when"
    " the client process's event loop read it (its own lag included)"
)


@dataclass
class SubscriberCounter:
    """Counts a subscriber's RTP packets as they come off its socket.

    SRTP leaves the RTP header in the clear: the counter reads payload type, sequence number
    and timestamp there and drops the packet (no SRTP, no parsing, no jitter buffer, no
    decoding). STUN, DTLS and RTCP go on to aiortc as usual.

    With a ``counter`` (``trackyard.loadtest.rtpcount``), it reads the sockets and a packet's
    arrival is the kernel's receive timestamp, taken as the datagram reaches the socket; the
    client process's own lag (it reads hundreds of copies of each keyframe on the cores the
    SFU uses) is then not counted as the SFU's latency. Its records land in ``arrivals`` at
    ``ClientSide.collect``. Without one, a packet is timed when the event loop reads it."""

    counter: Counter | None = None
    # (arrival time, rtp timestamp, sequence number, size)
    arrivals: list[tuple[float, int, int, int]] = field(default_factory=list)
    other: int = 0  # RTX and anything not the media payload type
    media: set[int] = field(default_factory=set)  # the media payload types counted
    slots: list[int] = field(default_factory=list)  # the counter's slots of the sockets
    _hooked: set[int] = field(default_factory=set)  # ids of the sockets' protocols wrapped

    def hook(self, pc: RTCPeerConnection) -> None:
        """Count ``pc``'s media packets. Hooking it again after a renegotiation (a LiveKit
        subscriber connection gets its tracks in later offers) adds the new payload types and
        wraps only sockets not wrapped yet, so no packet is counted twice."""
        for transceiver in pc.getTransceivers():
            self.media |= _media_payload_types(transceiver)
        for protocol in _ice_protocols(pc):
            if id(protocol) in self._hooked:
                continue
            self._hooked.add(id(protocol))
            if self.counter is not None:
                self.slots.append(self.counter.watch(protocol, self))
            else:
                self._wrap(protocol)
        if self.counter is not None:
            for slot in self.slots:
                self.counter.media(slot, self.media)

    def count(self) -> int:
        """Media packets received so far (a counter's, collected or not)."""
        if self.counter is None:
            return len(self.arrivals)
        return sum(self.counter.counted(slot) for slot in self.slots)

    def _wrap(self, protocol: Any) -> None:
        inner = protocol.datagram_received
        media = self.media
        arrivals = self.arrivals
        monotonic = time.monotonic
        from_bytes = int.from_bytes

        def received(data: bytes, addr: Any) -> None:
            if not _is_rtp(data):
                inner(data, addr)
            elif data[1] & 0x7F in media:
                seq = (data[2] << 8) | data[3]
                arrivals.append((monotonic(), from_bytes(data[4:8], "big"), seq, len(data)))
            else:
                self.other += 1

        protocol.__dict__["datagram_received"] = received


class ClientSide:
    """State of the client process: the publisher, its send log, and the subscribers."""

    def __init__(self) -> None:
        self.frames: list[EncodedFrame] = []
        self.pcs: list[RTCPeerConnection] = []
        self.track: ReplayTrack | None = None
        # media packets the publisher sent: (time, rtp timestamp, sequence number, keyframe, size)
        self.sent: list[tuple[float, int, int, bool, int]] = []
        self.subs: dict[int, SubscriberCounter] = {}
        # peers that rewrite sequence numbers and timestamps (Janus): matched by payload
        self.sent_content: list[bycontent.Sent] = []
        self.content_subs: dict[int, bycontent.ContentCounter] = {}
        self.arrival = "read"  # ARRIVALS, set by op_init
        self.counter: Counter | None = None  # the subscribers' sockets' (arrival "kernel*")

    def new_pc(self, subscriber: bool, host: str = LOOPBACK) -> RTCPeerConnection:
        pc = make_peer_connection(None, host, [], decode_unattached=not subscriber)
        self.pcs.append(pc)
        return pc

    # ops ---------------------------------------------------------------------------------

    async def op_init(self, arrival: str = "read") -> dict[str, Any]:
        """Encode the stream; ``arrival``: how the subscribers time packets (ARRIVALS)."""
        self.arrival = arrival
        started = time.perf_counter()
        self.frames = await asyncio.get_running_loop().run_in_executor(None, encode_stream)
        info = stream_info(self.frames)
        info["encode_seconds"] = round(time.perf_counter() - started, 2)
        return info

    async def op_publish(self, host: str = LOOPBACK) -> str:
        """A publisher connection replaying the stream; returns its offer."""
        pc = self.new_pc(subscriber=False, host=host)
        self.track = ReplayTrack(self.frames)
        transceiver = pc.addTransceiver(self.track, direction="sendonly")
        _vp8_first(transceiver)
        transceiver.sender.__dict__["_send_keyframe"] = self.track.request_keyframe
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)

    async def op_publish_answer(self, sdp: str, by_content: bool = False) -> None:
        pc = self.pcs[-1]
        await pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        if by_content:
            self._stamp_sends_by_content(pc)
        else:
            self._stamp_sends(pc)

    def _stamp_sends(self, pc: RTCPeerConnection) -> None:
        """Log the send time of every media packet, before SRTP and sendto."""
        transceiver = pc.getTransceivers()[0]
        media = _media_payload_types(transceiver)
        transport = transceiver.sender.transport
        inner = transport._send_rtp
        sent = self.sent
        track = self.track
        assert track is not None

        async def send_rtp(data: bytes) -> None:
            if _is_rtp(data) and data[1] & 0x7F in media:
                sent.append(
                    (
                        time.monotonic(),
                        int.from_bytes(data[4:8], "big"),
                        (data[2] << 8) | data[3],
                        track.keyframe,
                        len(data),
                    )
                )
            await inner(data)

        transport.__dict__["_send_rtp"] = send_rtp

    def _stamp_sends_by_content(self, pc: RTCPeerConnection) -> None:
        """Log the send time and payload key of every media packet, before SRTP."""
        transceiver = pc.getTransceivers()[0]
        media = _media_payload_types(transceiver)
        transport = transceiver.sender.transport
        inner = transport._send_rtp
        sent = self.sent_content
        track = self.track
        assert track is not None

        async def send_rtp(data: bytes) -> None:
            if _is_rtp(data) and data[1] & 0x7F in media:
                key = bycontent.payload_key(data)
                sent.append((time.monotonic(), key, track.keyframe, len(data)))
            await inner(data)

        transport.__dict__["_send_rtp"] = send_rtp

    async def op_subscribe(
        self, index: int, sdp: str, host: str = LOOPBACK, by_content: bool = False
    ) -> str:
        """A subscriber connection answering the SFU's offer; counts what it receives."""
        pc = self.new_pc(subscriber=True, host=host)
        await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())  # gathers: sockets exist
        if by_content:
            media: set[int] = set()
            for transceiver in pc.getTransceivers():
                media |= _media_payload_types(transceiver)
            by_payload = bycontent.ContentCounter()
            by_payload.hook(pc, media)
            self.content_subs[index] = by_payload
            return str(pc.localDescription.sdp)
        counter = SubscriberCounter(self.subscriber_counter())
        counter.hook(pc)
        self.subs[index] = counter
        return str(pc.localDescription.sdp)

    async def op_direct(self) -> None:
        """Baseline: the publisher straight to one subscriber, no SFU in between."""
        offer = await self.op_publish()
        publisher = self.pcs[-1]
        answer = await self.op_subscribe(0, offer)
        await publisher.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        self._stamp_sends(publisher)

    async def op_settle(self) -> None:
        """Every packet is timed here: a full GC pass over hundreds of peer connections stops
        this process for 100+ ms, which every packet in flight would show as the SFU's
        latency. Collect once the subscribers joined and keep those objects out of later
        passes (as the server keeps its own: ``trackyard.sfu.node.GcPolicy``)."""
        gc.collect()
        gc.freeze()

    def subscriber_counter(self) -> Counter | None:
        """The counter of this phase's subscriber sockets, made at the first (None: "read")."""
        if self.counter is None and self.arrival != "read":
            self.counter = PyCounter() if self.arrival == "kernel-python" else make_counter()
        return self.counter

    def collect(self) -> None:
        """Move the counter's records to the subscribers' ``arrivals``."""
        counter = self.counter
        if counter is None:
            return
        for owner, at, ts, seq, size in counter.take():
            assert isinstance(owner, SubscriberCounter)
            owner.arrivals.append((at, ts, seq, size))
        for sub in self.subs.values():
            sub.other = sum(counter.rtx(slot) for slot in sub.slots)

    async def op_counts(self) -> list[int]:
        if self.content_subs:
            return [len(self.content_subs[i].arrivals) for i in sorted(self.content_subs)]
        return [self.subs[i].count() for i in sorted(self.subs)]

    async def op_stats(self, t0: float, t1: float) -> dict[str, Any]:
        """What happened to the packets the publisher sent in [t0, t1]. A subscriber's
        packets are matched to the publisher's by RTP timestamp (the SFU keeps the
        publisher's: its first segment starts on the publisher's timeline) and sequence
        number, minus the subscriber's sequence offset (constant within a segment; taken as
        the most common offset between the first packet of each frame sent and received).
        Subscribers of a peer that rewrites both (Janus) are matched by payload instead."""
        self.collect()
        if self.content_subs:
            return {
                **bycontent.content_stats(self.sent_content, self.content_subs, t0, t1),
                "publisher_restarts": self.track.restarts if self.track else 0,
                "publisher_late_frames": self.track.late if self.track else 0,
            }
        first_sent: dict[int, int] = {}  # rtp timestamp -> sequence number of its 1st packet
        for _, ts, seq, _, _ in self.sent:
            first_sent.setdefault(ts, seq)
        window = [s for s in self.sent if t0 <= s[0] <= t1]
        sent_at: dict[tuple[int, int], tuple[float, bool]] = {}
        for t, ts, seq, key, _ in window:
            sent_at.setdefault((ts, seq), (t, key))
        lat_all: list[float] = []
        lat_delta: list[float] = []
        lat_key: list[float] = []
        delivered = 0
        delivered_bytes = 0
        lost: list[int] = []
        for index in sorted(self.subs):
            arrivals = self.subs[index].arrivals
            first_received: dict[int, int] = {}
            for _, ts, seq, _ in arrivals:
                first_received.setdefault(ts, seq)
            offsets = collections.Counter(
                (seq - first_sent[ts]) & 0xFFFF
                for ts, seq in first_received.items()
                if ts in first_sent
            )
            offset = offsets.most_common(1)[0][0] if offsets else 0
            seen: set[tuple[int, int]] = set()
            for t, ts, seq, size in arrivals:
                if t0 <= t <= t1:
                    delivered += 1
                    delivered_bytes += size
                k = (ts, (seq - offset) & 0xFFFF)
                sent = sent_at.get(k)
                if sent is None or k in seen:
                    continue
                seen.add(k)
                ms = (t - sent[0]) * 1000
                lat_all.append(ms)
                (lat_key if sent[1] else lat_delta).append(ms)
            lost.append(len(sent_at) - len(seen))
        track = self.track
        return {
            "sent": len(window),
            "sent_unique": len(sent_at),
            "sent_kbps": round(sum(s[4] for s in window) * 8 / (t1 - t0) / 1000, 1),
            "sent_keyframe_packets": sum(1 for s in window if s[3]),
            "delivered": delivered,
            "delivered_kbps_per_subscriber": round(
                delivered_bytes * 8 / (t1 - t0) / 1000 / max(1, len(self.subs)), 1
            ),
            "matched": len(lat_all),
            "lost_total": sum(lost),
            "lost_max": max(lost, default=0),
            "subscribers_with_loss": sum(1 for n in lost if n),
            "other_packets": sum(s.other for s in self.subs.values()),
            "publisher_restarts": track.restarts if track else 0,
            "publisher_late_frames": track.late if track else 0,
            "latency_ms": percentiles(lat_all, (50, 90, 99), 3),
            "latency_delta_ms": percentiles(lat_delta, (50, 90, 99), 3),
            "latency_key_ms": percentiles(lat_key, (50, 90, 99), 3),
            "arrival": self.arrival,
            "arrival_counter": type(self.counter).__name__ if self.counter else None,
            "arrival_records_dropped": (
                self.counter.dropped() if isinstance(self.counter, NativeCounter) else 0
            ),
            "arrival_counter_scheduling": (
                self.counter.scheduling() if isinstance(self.counter, NativeCounter) else None
            ),
        }

    def stop_counting(self) -> None:
        """Stop the counter reading the subscribers' sockets: before they close."""
        if self.counter is not None:
            self.counter.close()
            self.counter = None

    async def op_reset(self) -> None:
        self.stop_counting()
        pcs, self.pcs = self.pcs, []
        await asyncio.gather(
            *(asyncio.wait_for(pc.close(), 10) for pc in pcs), return_exceptions=True
        )
        self.track = None
        self.sent = []
        self.subs = {}
        self.sent_content = []
        self.content_subs = {}
        gc.unfreeze()  # the phase's connections are garbage now
        gc.collect()


async def client_main(fd: int, side: ClientSide | None = None) -> None:
    """Serve the driver's ops (``op_<name>`` of ``side``) over the socket ``fd``."""
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 24)
    side = side or ClientSide()
    tasks: set[asyncio.Task[None]] = set()

    async def serve(msg: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"id": msg["id"]}
        try:
            handler: Callable[..., Awaitable[Any]] = getattr(side, "op_" + msg["op"])
            reply["result"] = await handler(**msg.get("args", {}))
        except Exception as exc:
            reply["error"] = f"{type(exc).__name__}: {exc}"
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()

    while True:
        line = await reader.readline()
        if not line:
            break
        msg = json.loads(line)
        if msg["op"] == "quit":
            break
        task = asyncio.ensure_future(serve(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await side.op_reset()
    writer.close()


# --- the SFU process (this one) ------------------------------------------------------------


class Clients:
    """The client process, driven over a socket pair with JSON lines."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.proc = proc
        self.reader = reader
        self.writer = writer
        self._next = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._task = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, module: str = "benchmarks.forwarding") -> Clients:
        """Start ``python -m <module> --clients-fd FD`` (the module runs ``client_main`` or
        its own with a :class:`ClientSide` of its own)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            "--clients-fd",
            str(theirs.fileno()),
            pass_fds=(theirs.fileno(),),
            cwd=ROOT,
            env=env,
        )
        theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=1 << 24)
        return cls(proc, reader, writer)

    def cpu(self) -> float:
        """CPU seconds (user + system) used so far by the client process."""
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    async def _read(self) -> None:
        while True:
            line = await self.reader.readline()
            if not line:
                break
            msg = json.loads(line)
            future = self._pending.pop(msg["id"], None)
            if future is None or future.done():
                continue
            if "error" in msg:
                future.set_exception(RuntimeError(f"client process: {msg['error']}"))
            else:
                future.set_result(msg.get("result"))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RuntimeError("client process exited"))

    async def call(self, op: str, timeout: float = SETUP_TIMEOUT, **args: Any) -> Any:
        self._next += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[self._next] = future
        self.writer.write(json.dumps({"id": self._next, "op": op, "args": args}).encode() + b"\n")
        await self.writer.drain()
        return await asyncio.wait_for(future, timeout)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(b'{"id": 0, "op": "quit"}\n')
            await self.writer.drain()
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self._task.cancel()


def sfu_pc(decode: bool = False) -> RTCPeerConnection:
    return make_peer_connection(None, LOOPBACK, [], decode_unattached=decode)


@dataclass
class Setup:
    pcs: list[RTCPeerConnection]
    sfu_sent: Callable[[], int] | None = None
    close: Callable[[], Awaitable[None]] | None = None
    tune: Callable[[], None] | None = None  # called once all subscribers receive
    # an SFU in another process (Janus): its CPU (user, system seconds), and facts about it
    cpu: Callable[[], tuple[float, float]] | None = None
    extra: Callable[[], dict[str, Any]] | None = None


async def _subscribe_all(
    clients: Clients, n: int, make: Callable[[int], Awaitable[RTCPeerConnection]]
) -> list[RTCPeerConnection]:
    limit = asyncio.Semaphore(16)

    async def one(i: int) -> RTCPeerConnection:
        async with limit:
            pc = await make(i)
            await pc.setLocalDescription(await pc.createOffer())
            answer = await clients.call("subscribe", index=i, sdp=pc.localDescription.sdp)
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            return pc

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def setup_forwarding(clients: Clients, n: int) -> Setup:
    """The server's code path: UpTrack on the publisher connection, DownTracks."""
    counters = TrafficCounters()
    pub = sfu_pc()
    offer = await clients.call("publish")
    await pub.setRemoteDescription(RTCSessionDescription(offer, "offer"))
    transceiver = pub.getTransceivers()[0]
    up = UpTrack("video", track_sid="TR_bench", counters=counters)
    up.attach(transceiver, mid=transceiver.mid)
    await pub.setLocalDescription(await pub.createAnswer())
    await clients.call("publish_answer", sdp=pub.localDescription.sdp)
    downtracks: list[DownTrack] = []

    async def make(i: int) -> RTCPeerConnection:
        pc = sfu_pc()
        t = pc.addTransceiver("video", direction="sendonly")
        downtracks.append(
            DownTrack(up, t, stream_id="PA_bench|TR_bench", track_id="TR_bench", counters=counters)
        )
        return pc

    subs = await _subscribe_all(clients, n, make)

    async def close() -> None:
        for dt in downtracks:
            dt.close()
        await up.close()

    return Setup([pub, *subs], lambda: sum(dt.packets_sent for dt in downtracks), close)


async def setup_naive(clients: Clients, n: int, bitrate: int) -> Setup:
    """aiortc's default: decode the published track, relay it, encode per subscriber."""
    pub = sfu_pc(decode=True)
    tracks: asyncio.Queue[MediaStreamTrack] = asyncio.Queue()
    pub.on("track", tracks.put_nowait)
    offer = await clients.call("publish")
    await pub.setRemoteDescription(RTCSessionDescription(offer, "offer"))
    await pub.setLocalDescription(await pub.createAnswer())
    await clients.call("publish_answer", sdp=pub.localDescription.sdp)
    track = await asyncio.wait_for(tracks.get(), SETUP_TIMEOUT)
    relay = MediaRelay()
    senders: list[RTCRtpSender] = []

    async def make(i: int) -> RTCPeerConnection:
        pc = sfu_pc(decode=True)
        t = pc.addTransceiver(relay.subscribe(track, buffered=False), direction="sendonly")
        _vp8_first(t)
        senders.append(t.sender)
        return pc

    subs = await _subscribe_all(clients, n, make)

    def tune() -> None:
        # aiortc's encoder starts at 500 kbps and our subscribers send no REMB: give it the
        # publisher's bitrate so both relays deliver comparable packet rates
        for sender in senders:
            encoder = sender.__dict__.get("_RTCRtpSender__encoder")
            if encoder is not None and hasattr(encoder, "target_bitrate"):
                encoder.target_bitrate = bitrate

    return Setup([pub, *subs], tune=tune)


JANUS_ROOM = 1000
# peer -> event_loops
JANUS_PEERS: dict[str, int | None] = {"janus": None, "janus1": 1, "janus2": 2}
PEER_MODES = {"trackyard": "forward", "janus": "janus", "janus1": "janus1", "janus2": "janus2"}


async def setup_janus(clients: Clients, n: int, event_loops: int | None) -> Setup:
    """A fresh Janus process, a VideoRoom with the client process's publisher (the same
    offer as Trackyard's) and N subscribers answering Janus's offers, over its HTTP API."""
    address = namespace_address()
    server = JanusServer(address, event_loops)
    session: JanusSession | None = None

    async def close() -> None:
        if session is not None:
            await session.close()
        await server.stop()

    try:
        await server.start()
        session = JanusSession(server.url)
        await session.create()
        admin = await session.attach()
        await session.request(
            admin,
            {
                "request": "create",
                "room": JANUS_ROOM,
                "publishers": 1,
                "videocodec": "vp8",
                "notify_joining": False,
            },
        )
        publisher = await session.attach()
        joined, _ = await session.message(
            publisher, {"request": "join", "ptype": "publisher", "room": JANUS_ROOM}
        )
        offer = await clients.call("publish", host=address)
        _, answer = await session.message(
            publisher, {"request": "publish"}, {"type": "offer", "sdp": offer}
        )
        if answer is None:
            raise RuntimeError("janus: no answer to the publisher's offer")
        await clients.call("publish_answer", sdp=answer["sdp"], by_content=True)
        # a publisher is a feed to subscribe to once its media flows
        await session.wait_event(publisher, "media")
        feed = joined["id"]
        limit = asyncio.Semaphore(16)

        async def one(i: int, session: JanusSession) -> None:
            async with limit:
                handle = await session.attach()
                _, jsep = await session.message(
                    handle,
                    {
                        "request": "join",
                        "ptype": "subscriber",
                        "room": JANUS_ROOM,
                        "streams": [{"feed": feed}],
                    },
                )
                if jsep is None:
                    raise RuntimeError("janus: no offer for a subscriber")
                sdp = await clients.call(
                    "subscribe", index=i, sdp=jsep["sdp"], host=address, by_content=True
                )
                await session.message(handle, {"request": "start"}, {"type": "answer", "sdp": sdp})

        await asyncio.gather(*(one(i, session) for i in range(n)))
    except BaseException:
        await close()
        raise

    def extra() -> dict[str, Any]:
        return {"janus_event_loops": event_loops, "janus_threads": server.threads()}

    return Setup([], close=close, cpu=server.cpu, extra=extra)


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def wait_receiving(clients: Clients, n: int) -> None:
    deadline = time.monotonic() + SETUP_TIMEOUT
    while True:
        counts: list[int] = await clients.call("counts")
        if len(counts) == n and all(counts):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"subscribers receiving: {sum(1 for c in counts if c)}/{n}")
        await asyncio.sleep(0.2)


async def measure(
    clients: Clients,
    setup: Setup,
    n: int,
    seconds: float,
    profile: bool = False,
    warmup: float = WARMUP,
) -> dict[str, Any]:
    await wait_receiving(clients, n)
    if setup.tune is not None:
        setup.tune()
        await asyncio.sleep(WARMUP)  # the encoders settle on the new bitrate
    await asyncio.sleep(warmup)
    await clients.call("settle")
    gc.collect()
    gc.freeze()  # the in-process SFU as a node runs it (GcPolicy freezes what survived)
    sfu_cpu = setup.cpu or _cpu
    sfu_sent0 = setup.sfu_sent() if setup.sfu_sent else 0
    client0 = clients.cpu()
    user0, sys0 = sfu_cpu()
    drops0 = udp_drops()
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    t1 = time.monotonic()
    user1, sys1 = sfu_cpu()
    drops = drops_since(drops0)
    client1 = clients.cpu()
    sfu_sent1 = setup.sfu_sent() if setup.sfu_sent else 0
    profiled = None
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        await asyncio.sleep(seconds)
        profiler.disable()
        profiled = profiler
    else:
        await asyncio.sleep(GRACE)
    stats: dict[str, Any] = await clients.call("stats", t0=t0, t1=t1)
    wall = t1 - t0
    cpu = (user1 - user0) + (sys1 - sys0)
    delivered = stats["delivered"]
    result: dict[str, Any] = {
        "n": n,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "cpu_user_s": round(user1 - user0, 3),
        "cpu_sys_s": round(sys1 - sys0, 3),
        "cpu_utilization": round(cpu / wall, 3),
        # lost at a full socket buffer in the window (a client not reading counts as the SFU's
        # loss in lost_total: this says how much of it the kernel dropped on receive)
        "udp_drops_in_window": drops,
        "client_process_cpu_utilization": round((client1 - client0) / wall, 3),
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "received_pps": round(stats["sent"] / wall, 1),
        "delivered": delivered,
        "delivered_pps": round(delivered / wall, 1),
        "us_per_delivered_packet": round(cpu * 1e6 / delivered, 1) if delivered else None,
        "delivered_pps_per_core": round(delivered / cpu) if cpu else None,
        **stats,
    }
    if setup.sfu_sent is not None:
        result["sfu_sent"] = sfu_sent1 - sfu_sent0
    if setup.extra is not None:
        result.update(setup.extra())
    if profiled is not None:
        result["profile"] = _profile_text(profiled)
    return result


def _profile_text(profiler: cProfile.Profile, top: int = 30) -> str:
    out = io.StringIO()
    st = pstats.Stats(profiler, stream=out)
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


async def teardown(clients: Clients, setup: Setup | None) -> None:
    if setup is not None:
        if setup.close is not None:
            await setup.close()
        await asyncio.gather(
            *(asyncio.wait_for(pc.close(), 10) for pc in setup.pcs), return_exceptions=True
        )
    await clients.call("reset")
    gc.unfreeze()
    gc.collect()


async def run_phase(
    clients: Clients, mode: str, n: int, seconds: float, bitrate: int, profile: bool = False
) -> dict[str, Any]:
    """One phase; a failure is recorded (and printed) rather than ending the run."""
    started = time.monotonic()
    result: dict[str, Any]
    setup: Setup | None = None
    try:
        if mode == "forward":
            setup = await setup_forwarding(clients, n)
        elif mode in JANUS_PEERS:
            setup = await setup_janus(clients, n, JANUS_PEERS[mode])
        else:
            setup = await setup_naive(clients, n, bitrate)
        result = await measure(clients, setup, n, seconds, profile)
    except Exception as exc:
        result = {"n": n, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        try:
            await teardown(clients, setup)
        except Exception as exc:
            result = {"n": n, "error": f"teardown: {type(exc).__name__}: {exc}"}
    result["mode"] = mode
    result["phase_s"] = round(time.monotonic() - started, 1)
    return result


async def run_baseline(clients: Clients, seconds: float) -> dict[str, Any]:
    await clients.call("direct")
    try:
        await wait_receiving(clients, 1)
        await asyncio.sleep(WARMUP)
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        t1 = time.monotonic()
        await asyncio.sleep(GRACE)
        stats: dict[str, Any] = await clients.call("stats", t0=t0, t1=t1)
    finally:
        await clients.call("reset")
    return {"mode": "direct", "n": 1, **stats}


def _fmt_latency(lat: dict[str, float]) -> str:
    if not lat:
        return "-"
    return f"p50 {lat['p50']:.2f} p99 {lat['p99']:.2f} max {lat['max']:.1f}"


def udp_drops() -> dict[str, int]:
    """Datagrams the kernel dropped at full receive buffers, per UDP socket (inode) of this
    network namespace (``/proc/net/udp*``: the clients' and the servers' alike)."""
    drops: dict[str, int] = {}
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(name) as table:
            next(table, None)  # the header
            for line in table:
                fields = line.split()
                if len(fields) > 12:
                    drops[fields[9]] = int(fields[12])
    return drops


def drops_since(before: dict[str, int]) -> int:
    """Drops since ``before`` on the sockets open now (closed ones take their counts along)."""
    return sum(max(0, n - before.get(inode, 0)) for inode, n in udp_drops().items())


def print_phase(r: dict[str, Any]) -> None:
    us = r.get("us_per_delivered_packet")
    line = f"{r['mode']:>7} N={r['n']:<3}"
    if "error" in r:
        line += f" FAILED: {r['error']}"
    if "cpu_s" in r:
        line += (
            f" sfu cpu {r['cpu_utilization'] * 100:5.1f}% {us if us is not None else '-':>7} us/pkt"
            f" {r['delivered_pps_per_core'] or 0:>6} pkt/s/core"
            f"  delivered {r['delivered_pps']:5.0f} pkt/s"
            f"  {r['delivered_kbps_per_subscriber']:.0f} kbps/sub"
            f"  (clients cpu {r['client_process_cpu_utilization'] * 100:.0f}%)"
        )
    if r.get("matched"):
        line += (
            f"  latency ms {_fmt_latency(r['latency_ms'])}"
            f" (delta frames p99 {r['latency_delta_ms'].get('p99', 0):.2f})"
            f"  lost {r['lost_total']}/{r['sent_unique'] * r['n']}"
        )
    if r.get("udp_drops_in_window"):
        line += f"  (udp receive drops in the window {r['udp_drops_in_window']})"
    print(line, flush=True)


def fit(phases: list[dict[str, Any]]) -> dict[str, Any] | None:
    """CPU rate = fixed + marginal * delivered rate: the marginal cost of a delivered packet,
    and the fixed cost (receiving, timers) per received packet."""
    points = [(p["delivered_pps"], p["cpu_utilization"]) for p in phases]
    if len(points) < 2:
        return None
    slope, intercept = statistics.linear_regression([x for x, _ in points], [y for _, y in points])
    received = statistics.fmean(p["received_pps"] for p in phases)
    return {
        "marginal_us_per_delivered_packet": round(slope * 1e6, 1),
        "fixed_cpu_utilization": round(intercept, 4),
        "fixed_us_per_received_packet": round(intercept * 1e6 / received, 1) if received else None,
    }


SATURATE_SIZES = "16,32,64,128,192,256,384,512,640,768,1024"
SATURATE_MAX_LOSS = 0.01  # fraction of the packets owed to all subscribers
SATURATE_MAX_P99_MS = 50.0


def holds(r: dict[str, Any]) -> tuple[bool, str]:
    """Whether a phase held its load (saturation mode), and if not, why."""
    if "error" in r:
        return False, "error"
    owed = r["sent_unique"] * r["n"]
    loss = r["lost_total"] / owed if owed else 1.0
    p99 = r["latency_ms"].get("p99")
    if loss > SATURATE_MAX_LOSS:
        return False, f"loss {loss * 100:.1f}% > {SATURATE_MAX_LOSS * 100:.0f}%"
    if p99 is None or p99 > SATURATE_MAX_P99_MS:
        return False, f"p99 {p99} ms > {SATURATE_MAX_P99_MS:.0f} ms"
    return True, ""


class Sweep:
    """One search for the largest N held: ``next_n()`` is the N to run next (None: done),
    ``record(r)`` takes that phase's result; it stops at the first phase that fails ``holds``."""

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = list(sizes)
        self.phases: list[dict[str, Any]] = []
        self.held: dict[str, Any] | None = None
        self.stopped_by = "sizes exhausted"
        self.done = not self.sizes

    def next_n(self) -> int | None:
        return None if self.done else self.sizes[len(self.phases)]

    def record(self, r: dict[str, Any]) -> None:
        ok, why = holds(r)
        r["held"] = ok
        self.phases.append(r)
        if not ok:
            self.stopped_by = f"N={r['n']}: {why}"
            self.done = True
            return
        self.held = r
        self.done = len(self.phases) == len(self.sizes)

    def result(self, at_max: tuple[str, ...] = ()) -> dict[str, Any]:
        """The largest N held, its figures (and those named in ``at_max``), what stopped the
        search and every phase."""
        held = self.held
        figures = ("delivered_pps", "us_per_delivered_packet", *at_max)
        return {
            "criteria": {"max_loss": SATURATE_MAX_LOSS, "max_p99_ms": SATURATE_MAX_P99_MS},
            "max_n_held": held["n"] if held else None,
            **{f"{name}_at_max_n": held[name] if held else None for name in figures},
            "stopped_by": self.stopped_by,
            "phases": self.phases,
        }


async def grow_until_broken(
    sizes: list[int],
    phase: Callable[[int], Awaitable[dict[str, Any]]],
    show: Callable[[dict[str, Any]], None],
    at_max: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run ``phase(n)`` for each N of ``sizes`` until one fails ``holds`` (``Sweep``)."""
    sweep = Sweep(sizes)
    while (n := sweep.next_n()) is not None:
        r = await phase(n)
        sweep.record(r)
        show(r)
    return sweep.result(at_max)


async def saturate(
    clients: Clients, mode: str, sizes: list[int], seconds: float, bitrate: int
) -> dict[str, Any]:
    """Grow N through ``sizes`` until a phase loses more than 1% or its p99 passes 50 ms."""

    async def phase(n: int) -> dict[str, Any]:
        return await run_phase(clients, mode, n, seconds, bitrate)

    return await grow_until_broken(sizes, phase, print_phase)


def _loss_pct(r: dict[str, Any]) -> float:
    owed = r["sent_unique"] * r["n"]
    return 100.0 * r["lost_total"] / owed if owed else 0.0


def print_table(peer: str, phases: list[dict[str, Any]]) -> None:
    if not phases:
        return
    print(
        f"\n{peer}: {'N':>5} {'us/pkt':>7} {'pkt/s/core':>10} {'delivered/s':>11}"
        f" {'cpu%':>6} {'loss%':>6} {'p50 ms':>8} {'p99 ms':>8}"
    )
    pad = " " * (len(peer) + 1)
    for r in phases:
        if "error" in r:
            print(f"{pad} {r['n']:>5} FAILED: {r['error']}")
            continue
        lat = r["latency_ms"]
        print(
            f"{pad} {r['n']:>5} {r['us_per_delivered_packet'] or 0:>7} "
            f"{r['delivered_pps_per_core'] or 0:>10} {r['delivered_pps']:>11.0f}"
            f" {r['cpu_utilization'] * 100:>6.1f} {_loss_pct(r):>6.2f}"
            f" {lat.get('p50', 0):>8.2f} {lat.get('p99', 0):>8.2f}"
        )


def _describe(peer: str, version: str) -> str:
    if peer == "trackyard":
        return "Trackyard UpTrack/DownTrack on aiortc, in the benchmark process"
    loops = JANUS_PEERS[peer]
    threading = f"event_loops = {loops}" if loops else "default threading (a thread per handle)"
    return f"Janus {version} VideoRoom, {threading}"


async def main(
    sizes: list[int],
    naive_sizes: list[int],
    seconds: float,
    profile: bool,
    peers: list[str] | None = None,
    saturate_sizes: list[int] | None = None,
    arrival: str = "read",
) -> dict[str, Any]:
    peers = peers or ["trackyard"]
    janus = ""
    if any(p in JANUS_PEERS for p in peers):
        ensure_installed()
        janus = janus_version()
    clients = await Clients.start()
    forwarding: list[dict[str, Any]] = []
    naive: list[dict[str, Any]] = []
    sections: dict[str, dict[str, Any]] = {}
    try:
        stream = await clients.call("init", timeout=120, arrival=arrival)
        print(
            f"stream: VP8 {WIDTH}x{HEIGHT}@{FPS} {stream['kbps']} kbps, "
            f"{stream['packets_per_second']} packets/s, keyframe every {KEYFRAME_INTERVAL} s "
            f"({stream['keyframe_bytes']} bytes), encoded once in {stream['encode_seconds']} s",
            flush=True,
        )
        baseline = await run_baseline(clients, min(seconds, 5.0))
        print(
            f" direct N=1   (no SFU) latency ms {_fmt_latency(baseline['latency_ms'])}"
            f"  lost {baseline['lost_total']}/{baseline['sent_unique']}",
            flush=True,
        )
        bitrate = int(stream["kbps"] * 1000)
        for peer in peers:
            mode = PEER_MODES[peer]
            print(f"peer {peer}: {_describe(peer, janus)}", flush=True)
            phases = []
            for n in sizes:
                # cProfile sees this process only: Trackyard's, not Janus's
                profiled = profile and peer == "trackyard" and n == max(sizes)
                r = await run_phase(clients, mode, n, seconds, bitrate, profiled)
                phases.append(r)
                print_phase(r)
            section: dict[str, Any] = {"server": _describe(peer, janus), "phases": phases}
            if peer == "trackyard":
                forwarding = phases
                for n in naive_sizes:
                    r = await run_phase(clients, "naive", n, seconds, bitrate)
                    naive.append(r)
                    print_phase(r)
            if saturate_sizes:
                section["saturation"] = await saturate(
                    clients, mode, saturate_sizes, seconds, bitrate
                )
            section["fit"] = fit([r for r in phases if "error" not in r])
            sections[peer] = section
    finally:
        await clients.close()

    ok = [r for r in forwarding if "error" not in r]
    by_n = {r["n"]: r for r in ok}
    ratios = {}
    for r in naive:
        if "error" in r:
            continue
        f = by_n.get(r["n"])
        if f and f["us_per_delivered_packet"] and r["us_per_delivered_packet"]:
            ratios[str(r["n"])] = round(
                r["us_per_delivered_packet"] / f["us_per_delivered_packet"], 1
            )
    line = fit(ok)
    if line:
        print(
            f"fit: {line['marginal_us_per_delivered_packet']} us per delivered packet (marginal), "
            f"{line['fixed_us_per_received_packet']} us per received packet (fixed)"
        )
    if ratios:
        print(
            "naive relay / forwarding, CPU per delivered packet: "
            + ", ".join(f"N={n}: {v}x" for n, v in ratios.items())
        )
    targets: dict[str, Any] = {}
    if 64 in by_n:
        us = by_n[64]["us_per_delivered_packet"]
        targets["us_per_delivered_packet_at_64"] = {
            "value": us,
            "target": TARGET_US_PER_PACKET,
            "met": us is not None and us <= TARGET_US_PER_PACKET,
        }
    if 16 in by_n:
        p99 = by_n[16]["latency_ms"].get("p99")
        targets["p99_latency_ms_at_16"] = {
            "value": p99,
            "target": TARGET_P99_MS,
            "met": p99 is not None and p99 < TARGET_P99_MS,
        }
    if "trackyard" in sections:
        lost = sum(r["lost_total"] for r in ok)
        targets["loss"] = {"value": lost, "target": 0, "met": lost == 0}
    for name, t in targets.items():
        print(
            f"target {name}: {t['value']} (target {t['target']}) {'met' if t['met'] else 'MISSED'}"
        )
    for r in ok:
        if "profile" in r:
            print(f"\ncProfile of the SFU process, N={r['n']}, {seconds} s:\n{r['profile']}")
    for peer, section in sections.items():
        print_table(peer, section["phases"])
        sat = section.get("saturation")
        if sat is not None:
            print_table(f"{peer} saturation", sat["phases"])
            print(
                f"{peer}: largest N held {sat['max_n_held']}"
                f" ({sat['delivered_pps_at_max_n']} delivered packets/s,"
                f" {sat['us_per_delivered_packet_at_max_n']} us/packet); stopped by"
                f" {sat['stopped_by']}"
            )
    return {
        "benchmark": "forwarding",
        "cpu_count": os.cpu_count(),
        "seconds": seconds,
        "stream": stream,
        "baseline_direct": baseline,
        "forwarding": forwarding,
        "fit": line,
        "naive": naive,
        "naive_over_forwarding_cpu_per_packet": ratios,
        "targets": targets,
        "peers": sections,
    }


def _sizes(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def _enter_namespace() -> None:
    """Janus leaves loopback out of ICE: re-run this benchmark inside ``scripts/netns`` (a
    private network namespace with a veth test address), after installing Janus outside it
    (the package registry is not reachable from inside)."""
    ensure_installed()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    netns = str(ROOT / "scripts" / "netns")
    argv = [netns, sys.executable, "-m", "benchmarks.forwarding", *sys.argv[1:]]
    os.execve(netns, argv, env)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,4,16,64", help="subscriber counts, comma-separated")
    parser.add_argument(
        "--naive-sizes", default="1,4", help="sizes of the naive relay (with --peer trackyard)"
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring window per phase")
    parser.add_argument("--profile", action="store_true", help="cProfile Trackyard at max size")
    parser.add_argument(
        "--peer",
        action="append",
        choices=list(PEER_MODES),
        help="SFU to measure, repeatable (default trackyard): trackyard = Trackyard in this"
        " process; janus = Debian's Janus VideoRoom, default threading; janus2 = the same with"
        " event_loops = 2; janus1 = event_loops = 1. Janus peers install Janus if missing and"
        " run the whole benchmark in a network namespace (scripts/netns)",
    )
    parser.add_argument(
        "--saturate",
        action="store_true",
        help=f"per peer, after --sizes, grow N until loss > {SATURATE_MAX_LOSS * 100:.0f}%% or"
        f" p99 > {SATURATE_MAX_P99_MS:.0f} ms (pass --sizes '' to skip the fixed sizes)",
    )
    parser.add_argument(
        "--saturate-sizes", default=SATURATE_SIZES, help="the N tried by --saturate, in order"
    )
    parser.add_argument("--arrival", choices=ARRIVALS, default="read", help=ARRIVAL_HELP)
    parser.add_argument("--clients-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients_fd is not None:
        asyncio.run(client_main(args.clients_fd))
        sys.exit(0)
    peers: list[str] = list(dict.fromkeys(args.peer or ["trackyard"]))
    if any(p in JANUS_PEERS for p in peers) and os.environ.get("TRACKYARD_NETNS") != "1":
        _enter_namespace()
    started = time.monotonic()
    result = asyncio.run(
        main(
            _sizes(args.sizes),
            _sizes(args.naive_sizes),
            args.seconds,
            args.profile,
            peers,
            _sizes(args.saturate_sizes) if args.saturate else None,
            args.arrival,
        )
    )
    result["command"] = " ".join(["python -m benchmarks.forwarding", *sys.argv[1:]])
    result["run_s"] = round(time.monotonic() - started, 1)
    for r in result["forwarding"]:
        r.pop("profile", None)
    for section in result["peers"].values():
        for r in section["phases"]:
            r.pop("profile", None)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "forwarding.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['run_s']} s)")
