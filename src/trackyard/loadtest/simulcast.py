"""A simulcast video publisher for the load tester: three RID layers on one m-line.

aiortc sends one RTP stream per sender and writes no ``a=rid`` / ``a=simulcast``, so this does
by hand what a browser publishing with the LiveKit SDK does:

- the offer sent to the server is munged as Chrome writes it (:func:`simulcast_offer`):
  ``a=rid:q send``, ``a=rid:h send``, ``a=rid:f send`` and ``a=simulcast:send q;h;f`` on the
  video m-line and no ``a=ssrc`` lines: layers are told apart by the RtpStreamId header
  extension, which aiortc offers once ``rtphooks.install_simulcast_extensions`` ran;
- the aiortc sender is turned into a raw packet sender (``rtphooks.hook_sender``): each
  layer's pre-encoded frames are packetized by aiortc's payloader, tagged with the mid and
  the layer's rid, encrypted and sent on the sender's DTLS transport
  (``rtphooks.send_rtp_nowait``); every layer has its own SSRC, sequence numbers,
  timestamp base and picture ids, as a browser's;
- RTCP: a keyframe request (PLI/FIR) for a layer makes it jump to its next keyframe in the
  loop; NACKed packets are resent from a short history (no RTX is negotiated); sender reports
  for every layer (an SFU aligns the layers' timestamps with them);
- :meth:`SimulcastSender.set_wanted` pauses the layers nobody subscribes to (LiveKit's
  ``subscribed_quality_update``, as the SDKs' dynacast does); a resumed layer starts on a
  keyframe, as a browser's encoder does.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fractions
import random
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc import RTCRtpSender
from aiortc.clock import current_ntp_time
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpParameters,
)
from aiortc.rtp import (
    HeaderExtensionsMap,
    RtcpByePacket,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
    RtpPacket,
)

from trackyard.loadtest.media import EncodedFrame, SimulcastLayer
from trackyard.sfu import rtphooks

EXT_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
EXT_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
CLOCK_RATE = 90000
HISTORY = 1024  # packets kept per layer for NACKs (~2 s of a 2 Mbps layer)
_PLI, _FIR, _NACK = 1, 4, 1  # RTCP feedback message types (RFC 4585, RFC 5104)


class SimulcastError(RuntimeError):
    """The server did not negotiate what RID simulcast needs."""


@dataclass
class LayerState:
    """One layer being sent: where it is in its loop and what it sent."""

    layer: SimulcastLayer
    frames: list[EncodedFrame]
    encoder: Any  # aiortc's payloader for the codec (``pack``)
    ssrc: int = field(default_factory=lambda: random.randint(1, 0xFFFFFFFF))
    seq: int = field(default_factory=lambda: random.randint(0, 0xFFFF))
    ts_base: int = field(default_factory=lambda: random.randint(0, 0xFFFFFFFF))
    index: int = 0
    active: bool = True
    want_keyframe: bool = False
    packets: int = 0
    octets: int = 0
    keyframe_requests: int = 0
    last_ts: int = 0
    last_at: float = 0.0
    keyframes: list[int] = field(default_factory=list)
    history: list[bytes | None] = field(default_factory=lambda: [None] * HISTORY)

    def __post_init__(self) -> None:
        self.keyframes = [i for i, f in enumerate(self.frames) if f.keyframe]
        if not self.keyframes:
            raise ValueError(f"layer {self.layer.rid}: the loop has no keyframe")

    def next_keyframe(self) -> int:
        """The index of the first keyframe at or after the current frame (wrapping)."""
        i = bisect.bisect_left(self.keyframes, self.index)
        return self.keyframes[i] if i < len(self.keyframes) else self.keyframes[0]


def simulcast_offer(sdp: str, rids: list[str]) -> str:
    """Chrome's form of a simulcast offer from aiortc's single-stream one: on the video
    m-line, ``a=rid:<rid> send`` for each layer and ``a=simulcast:send q;h;f``, and no
    ``a=ssrc`` / ``a=ssrc-group`` lines (the layers' SSRCs are not known in advance)."""
    if EXT_RID not in sdp:
        raise SimulcastError("aiortc did not offer the rtp-stream-id header extension")
    crlf = "\r\n" if "\r\n" in sdp else "\n"
    out: list[str] = []
    video = False

    def close_video() -> None:
        if video:
            out.extend(f"a=rid:{rid} send" for rid in rids)
            out.append(f"a=simulcast:send {';'.join(rids)}")

    lines = sdp.split(crlf)
    trailing = lines and lines[-1] == ""
    for line in lines[:-1] if trailing else lines:
        if line.startswith("m="):
            close_video()
            video = line.startswith("m=video")
        elif video and line.startswith(("a=ssrc:", "a=ssrc-group:")):
            continue
        out.append(line)
    close_video()
    return crlf.join(out) + (crlf if trailing else "")


class SimulcastSender:
    """Sends the layers on one hooked aiortc sender (a ``rtphooks.SenderHandler``)."""

    def __init__(self, layers: list[tuple[SimulcastLayer, list[EncodedFrame]]], fps: float):
        if not layers:
            raise ValueError("no layers")
        codec = layers[0][0].spec.codec
        self.fps = fps
        self.layers = [
            LayerState(
                layer,
                frames,
                get_encoder(RTCRtpCodecParameters(mimeType=f"video/{codec}", clockRate=CLOCK_RATE)),
            )
            for layer, frames in layers
        ]
        self.by_ssrc = {s.ssrc: s for s in self.layers}
        self.nacks = 0  # NACKed packets the server asked for
        self.plis = 0  # keyframe requests (PLI/FIR), all layers
        self.late = 0  # ticks so late the pacing was reset
        # aiortc starts the sender once DTLS is up: then the layers go out, or the error
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sender: RTCRtpSender | None = None
        self._ext = HeaderExtensionsMap()
        self._mid = ""
        self._pt = 0
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def rids(self) -> list[str]:
        return [s.layer.rid for s in self.layers]

    def attach(self, sender: RTCRtpSender) -> None:
        """Take over ``sender`` (before the offer/answer that starts it)."""
        self._sender = sender
        rtphooks.hook_sender(sender, self)

    def sent(self) -> tuple[int, int]:
        """(packets, bytes) sent, all layers."""
        return sum(s.packets for s in self.layers), sum(s.octets for s in self.layers)

    # -- rtphooks.SenderHandler ---------------------------------------------------------------

    def sender_started(self, params: rtphooks.SendParameters) -> None:
        sender = self._sender
        assert sender is not None
        ext = params.header_extensions
        if EXT_RID not in ext or EXT_MID not in ext or not params.mid or not params.codecs:
            if not self.started.done():
                self.started.set_exception(
                    SimulcastError(
                        "the server's answer did not accept RID simulcast "
                        f"(header extensions: {sorted(ext)}, mid: {params.mid!r})"
                    )
                )
            return
        self._pt = params.codecs[0].payload_type
        self._mid = params.mid
        self._ext.configure(
            RTCRtpParameters(
                headerExtensions=[
                    RTCRtpHeaderExtensionParameters(id=ext[uri], uri=uri)
                    for uri in (EXT_MID, EXT_RID)
                ]
            )
        )
        transport = sender.transport
        # RTCP feedback is routed to senders by SSRC: the layers' SSRCs come here too
        # (aiortc registers only the one SSRC it would send on itself)
        rtphooks.route_rtcp_ssrcs(sender, self.by_ssrc)

        def state() -> None:
            if transport.state == "connected":
                self._connected.set()

        rtphooks.on_transport_state(transport, state)
        state()
        self._task = asyncio.create_task(self._run(), name="simulcast-sender")
        if not self.started.done():
            self.started.set_result(None)

    async def handle_rtcp(self, packet: Any) -> None:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == _NACK:
            layer = self.by_ssrc.get(packet.media_ssrc)
            if layer is None or self._sender is None:
                return
            for seq in packet.lost:
                self.nacks += 1
                data = layer.history[seq % HISTORY]
                if data is not None and (data[2] << 8 | data[3]) == seq:
                    rtphooks.send_rtp_nowait(self._sender.transport, data)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == _PLI:
            self._keyframe_request(packet.media_ssrc)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == _FIR:
            for i in range(0, len(packet.fci) - 7, 8):  # FCI: SSRC, seq nr, reserved
                self._keyframe_request(struct.unpack_from("!L", packet.fci, i)[0])

    def rtcp_report(self) -> bytes | None:
        now = time.monotonic()
        ntp = current_ntp_time()
        reports = b""
        for s in self.layers:
            if s.packets and s.active:
                ts = (s.last_ts + round((now - s.last_at) * CLOCK_RATE)) & 0xFFFFFFFF
                info = RtcpSenderInfo(ntp, ts, s.packets & 0xFFFFFFFF, s.octets & 0xFFFFFFFF)
                reports += bytes(RtcpSrPacket(s.ssrc, info))
        return reports or None

    def rtcp_bye(self) -> bytes | None:
        sources = [s.ssrc for s in self.layers if s.packets]
        return bytes(RtcpByePacket(sources)) if sources else None

    # -- dynacast -----------------------------------------------------------------------------

    def set_wanted(self, enabled: dict[int, bool]) -> None:
        """``enabled``: VideoQuality -> wanted; qualities not named keep their state."""
        for s in self.layers:
            on = enabled.get(s.layer.quality, s.active)
            if on and not s.active:
                s.want_keyframe = True
            s.active = on

    # -- sending ------------------------------------------------------------------------------

    def _keyframe_request(self, ssrc: int) -> None:
        layer = self.by_ssrc.get(ssrc)
        if layer is not None:
            self.plis += 1
            layer.keyframe_requests += 1
            layer.want_keyframe = True

    async def _run(self) -> None:
        await self._connected.wait()
        period = 1 / self.fps
        step = round(CLOCK_RATE / self.fps)
        start = time.monotonic()
        count = 0
        while True:
            wait = start + count * period - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -3 * period:  # too far behind: do not burst to catch up
                self.late += 1
                start = time.monotonic() - count * period
            now = time.monotonic()
            for s in self.layers:
                self._send_frame(s, count * step, now)
            count += 1

    def _send_frame(self, s: LayerState, pts: int, now: float) -> None:
        assert self._sender is not None
        if s.want_keyframe and s.active:
            s.want_keyframe = False
            s.index = s.next_keyframe()
        frame = s.frames[s.index]
        s.index = (s.index + 1) % len(s.frames)
        if not s.active:
            return
        packet = av.Packet(frame.data)
        packet.pts = pts
        packet.time_base = fractions.Fraction(1, CLOCK_RATE)
        payloads, ts = s.encoder.pack(packet)
        ts = (ts + s.ts_base) & 0xFFFFFFFF
        transport = self._sender.transport
        last = len(payloads) - 1
        for i, payload in enumerate(payloads):
            rtp = RtpPacket(self._pt, int(i == last), s.seq, ts, s.ssrc, payload)
            rtp.extensions.mid = self._mid
            rtp.extensions.rtp_stream_id = s.layer.rid
            data = rtp.serialize(self._ext)
            if not rtphooks.send_rtp_nowait(transport, data):
                return  # the transport closed
            s.history[s.seq % HISTORY] = data
            s.seq = (s.seq + 1) & 0xFFFF
            s.packets += 1
            s.octets += len(data)
        s.last_ts, s.last_at = ts, now

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
