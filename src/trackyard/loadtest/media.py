"""Pre-encoded media for light clients: encode a loop once, replay it without encoding.

A publisher replays a loop encoded up front (VP8 or H.264 video, Opus audio; PyAV's libvpx /
libx264 / libopus), cached on disk so later runs skip even that. aiortc packetizes an
``av.Packet`` without encoding it, so a replaying publisher costs packetization and SRTP only.
Also here: the raw-socket helpers subscribers use to count RTP without SRTP or decoding.
Shared by ``trackyard load-test`` and ``benchmarks/forwarding.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import os
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

VIDEO_FPS = 30
AUDIO_FRAME_MS = 20
KEYFRAME_INTERVAL = 2.0  # seconds between keyframes of a replayed video loop
LOOP_SECONDS = 6.0  # length of a pre-encoded loop (a multiple of KEYFRAME_INTERVAL)


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    data: bytes
    keyframe: bool


@dataclass(frozen=True)
class VideoSpec:
    codec: str  # "vp8" | "h264"
    width: int
    height: int
    bitrate: int  # bits per second
    fps: int = VIDEO_FPS

    @property
    def key(self) -> str:
        return f"{self.codec}-{self.width}x{self.height}-{self.bitrate // 1000}k-{self.fps}"


# --lower resolutions for lighter runs (LiveKit's load tester names its presets the same)
RESOLUTIONS: dict[str, tuple[int, int, int]] = {
    "low": (320, 180, 250_000),
    "medium": (640, 360, 800_000),
    "high": (1280, 720, 2_000_000),
}


@dataclass(frozen=True)
class SimulcastLayer:
    """One simulcast layer as the LiveKit SDKs publish it: ``rid`` q/h/f, its
    ``models.VideoQuality`` (LOW/MEDIUM/HIGH = 0/1/2) and what it is encoded as."""

    rid: str
    quality: int
    spec: VideoSpec


# the lower layers' bitrates by height: LiveKit's VideoPresets (h90 90k, h180 160k, h360 450k,
# h540 800k; 40k below 90 lines); the full layer keeps its --video-resolution bitrate
_LAYER_BITRATES = ((45, 40_000), (90, 90_000), (180, 160_000), (360, 450_000), (540, 800_000))


def _even(n: float) -> int:
    return max(2, int(n) // 2 * 2)  # yuv420p needs even sizes


def simulcast_layers(codec: str, resolution: str) -> list[SimulcastLayer]:
    """q, h, f at 1/4, 1/2 and full resolution (LiveKit's rids and order: lowest first)."""
    width, height, bitrate = RESOLUTIONS[resolution]
    out: list[SimulcastLayer] = []
    for quality, (rid, scale) in enumerate((("q", 4), ("h", 2), ("f", 1))):
        w, h = _even(width / scale), _even(height / scale)
        rate = bitrate
        if scale > 1:
            rate = next((b for top, b in _LAYER_BITRATES if h <= top), bitrate)
        out.append(SimulcastLayer(rid, quality, VideoSpec(codec, w, h, rate)))
    return out


def _noise(rng: random.Random, height: int, width: int, block: int = 8) -> bytes:
    """Noise in ``block`` x ``block`` squares, smoothed horizontally: detail an encoder can
    spend bits on without needing far more than its target bitrate."""
    cols = -(-width // block)
    out: list[bytes] = []
    for _ in range(-(-height // block)):
        raw = rng.randbytes(cols)
        row = bytes(b for i in range(cols) for b in [(raw[i] + raw[i - 1]) >> 1] * block)[:width]
        out += [row] * block
    return b"".join(out[:height])


def _frames_yuv(width: int, height: int, count: int) -> list[bytes]:
    """A panning texture with a moving inverted band, yuv420p, no numpy."""
    rng = random.Random(7)
    lw, lh = width * 2, height * 2
    luma = _noise(rng, lh, lw)
    cw, ch = width, height  # chroma texture, twice the chroma plane
    chroma = _noise(rng, ch, cw)
    invert = bytes(range(255, -1, -1))
    out: list[bytes] = []
    band_h = max(height // 9, 2)
    for i in range(count):
        dy, dx = (i * 3) % height, (i * 5) % width
        rows = [luma[(r + dy) * lw + dx : (r + dy) * lw + dx + width] for r in range(height)]
        band = (i * 7) % (height - band_h)
        for r in range(band, band + band_h):
            rows[r] = rows[r].translate(invert)
        cy, cx = i % (ch // 2), (2 * i) % (cw // 2)
        u = [
            chroma[(r + cy) * cw + cx : (r + cy) * cw + cx + width // 2] for r in range(height // 2)
        ]
        out.append(b"".join(rows) + b"".join(u) + b"".join(u))
    return out


def _video_frame(yuv: bytes, width: int, height: int) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, "yuv420p")
    offset = 0
    for plane in frame.planes:
        size = plane.width * plane.height
        data = yuv[offset : offset + size]
        offset += size
        if plane.line_size != plane.width:  # rows padded to the plane's stride
            pad = bytes(plane.line_size - plane.width)
            rows = (data[r * plane.width : (r + 1) * plane.width] for r in range(plane.height))
            data = b"".join(row + pad for row in rows)
        plane.update(data)
    return frame


def encode_video(spec: VideoSpec, seconds: float = LOOP_SECONDS) -> list[EncodedFrame]:
    """A loop of ``seconds``, real-time CBR at ``spec.bitrate``, a keyframe every
    ``KEYFRAME_INTERVAL``, keyframe size capped (libvpx max-intra-rate, as libwebrtc does).
    The first GOP (the encoder settling) is dropped: the loop starts on a steady keyframe."""
    fps = spec.fps
    gop = round(KEYFRAME_INTERVAL * fps)
    total = round(seconds * fps)
    rate = spec.bitrate
    if spec.codec == "vp8":
        codec = av.CodecContext.create("libvpx", "w")
        codec.options = {
            "deadline": "good",
            "cpu-used": "5",
            "lag-in-frames": "0",
            "auto-alt-ref": "0",
            "error-resilient": "1",
            "minrate": str(rate),
            "maxrate": str(rate),
            "bufsize": str(rate),
            "undershoot-pct": "95",
            "max-intra-rate": "450",
        }
    elif spec.codec == "h264":
        codec = av.CodecContext.create("libx264", "w")
        codec.options = {
            "preset": "veryfast",
            "tune": "zerolatency",
            "profile": "baseline",
            "level": "3.1",
            "maxrate": str(rate),
            "bufsize": str(rate),
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:repeat-headers=1",
        }
    else:
        raise ValueError(f"unknown video codec {spec.codec!r} (vp8, h264)")
    codec.width, codec.height = spec.width, spec.height
    codec.pix_fmt = "yuv420p"
    codec.bit_rate = rate
    codec.framerate = fractions.Fraction(fps, 1)
    codec.time_base = fractions.Fraction(1, fps)
    codec.gop_size = gop
    frames: list[EncodedFrame] = []
    for i, yuv in enumerate(_frames_yuv(spec.width, spec.height, gop + total)):
        frame = _video_frame(yuv, spec.width, spec.height)
        frame.pts = i
        frames += [EncodedFrame(bytes(p), bool(p.is_keyframe)) for p in codec.encode(frame)]
    frames += [EncodedFrame(bytes(p), bool(p.is_keyframe)) for p in codec.encode(None)]
    loop = frames[gop : gop + total]
    if not loop or not loop[0].keyframe:
        raise RuntimeError("the pre-encoded loop does not start on a keyframe")
    return loop


def encode_audio(bitrate: int = 32_000, seconds: float = LOOP_SECONDS) -> list[EncodedFrame]:
    """Opus, 48 kHz mono, 20 ms frames: a slowly warbling tone."""
    import math

    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = 48000
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = bitrate
    codec.options = {"frame_duration": str(AUDIO_FRAME_MS), "application": "voip"}
    samples = 48000 * AUDIO_FRAME_MS // 1000
    frames: list[EncodedFrame] = []
    count = round(seconds * 1000 / AUDIO_FRAME_MS)
    for i in range(count):
        pcm = bytearray()
        for n in range(samples):
            t = (i * samples + n) / 48000
            value = int(8000 * math.sin(2 * math.pi * (440 + 40 * math.sin(t)) * t))
            pcm += struct.pack("<h", value)
        frame = av.AudioFrame(format="s16", layout="mono", samples=samples)
        frame.planes[0].update(bytes(pcm))
        frame.sample_rate = 48000
        frame.pts = i * samples
        frames += [EncodedFrame(bytes(p), True) for p in codec.encode(frame)]
    frames += [EncodedFrame(bytes(p), True) for p in codec.encode(None)]
    return frames


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trackyard" / "loadtest"


def _save(path: Path, frames: list[EncodedFrame]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        for fr in frames:
            f.write(struct.pack(">BI", fr.keyframe, len(fr.data)))
            f.write(fr.data)
    tmp.replace(path)


def _load(path: Path) -> list[EncodedFrame] | None:
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    frames: list[EncodedFrame] = []
    i = 0
    while i + 5 <= len(raw):
        key, size = struct.unpack_from(">BI", raw, i)
        frames.append(EncodedFrame(raw[i + 5 : i + 5 + size], bool(key)))
        i += 5 + size
    return frames if i == len(raw) and frames else None


def cached(name: str, make: Callable[[], list[EncodedFrame]]) -> list[EncodedFrame]:
    """``make()``'s frames, from the on-disk cache when a previous run made them."""
    path = cache_dir() / f"{name}.frames"
    frames = _load(path)
    if frames is None:
        frames = make()
        with contextlib.suppress(OSError):  # a read-only home: encode again next time
            _save(path, frames)
    return frames


class ReplayTrack(MediaStreamTrack):
    """Replays pre-encoded frames at ``fps`` (aiortc packetizes ``av.Packet`` without
    encoding). A keyframe request (PLI/FIR) restarts a video loop at its first frame, a real
    keyframe followed by its own delta frames."""

    def __init__(self, frames: list[EncodedFrame], kind: str = "video", fps: float = 30) -> None:
        super().__init__()
        self.kind = kind
        self.frames = frames
        self.fps = fps
        self.clock_rate = 90000 if kind == "video" else 48000
        self.keyframe = False  # the frame being sent is a keyframe
        self.restarts = 0
        self.late = 0
        self._index = 0
        self._count = 0
        self._start: float | None = None
        self._restart = False

    def request_keyframe(self) -> None:
        if self.kind == "video":
            self._restart = True

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            wait = self._start + self._count / self.fps - now
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -3 / self.fps:  # too far behind: do not burst to catch up
                self.late += 1
                self._start = now - self._count / self.fps
        if self._restart:
            self._restart = False
            self._index = 0
            self.restarts += 1
        frame = self.frames[self._index]
        self._index = (self._index + 1) % len(self.frames)
        packet = av.Packet(frame.data)
        packet.pts = self._count * round(self.clock_rate / self.fps)
        packet.time_base = fractions.Fraction(1, self.clock_rate)
        self._count += 1
        self.keyframe = frame.keyframe
        return packet


def is_rtp(data: bytes) -> bool:
    """RTP (not STUN, DTLS or RTCP) on a muxed ICE socket (RFC 7983, RFC 5761)."""
    return len(data) >= 12 and 127 < data[0] < 192 and not 191 < data[1] < 224


def ice_protocols(pc: RTCPeerConnection) -> list[Any]:
    """The aioice sockets (``StunProtocol``) of a connection's transports (media and SCTP)."""
    out: list[Any] = []
    dtls_transports = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        dtls_transports.append(pc.sctp.transport)
    for dtls in dtls_transports:
        if dtls is None:
            continue
        for protocol in dtls.transport._connection._protocols:
            if protocol not in out:
                out.append(protocol)
    return out
