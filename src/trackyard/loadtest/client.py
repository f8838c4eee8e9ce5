"""One load-test participant: LiveKit signalling over ``/rtc`` plus aiortc peer connections.

Speaks protocol v0 (two peer connections, the server offers on the subscriber one) as the
LiveKit SDKs do, so it works against any LiveKit-compatible server. Light by construction:
- a publisher replays pre-encoded media (:mod:`trackyard.loadtest.media`): packetization and
  SRTP only, no encoding;
- a subscriber counts RTP as it comes off its socket (RTP headers are in the clear under
  SRTP): per SSRC packets, bytes, sequence gaps (loss); no SRTP, no jitter buffer, no
  decoding. STUN, DTLS and RTCP go on to aiortc as usual. SSRCs are mapped to track sids
  through the server's offer (``a=msid`` / ``a=ssrc`` / ``a=ssrc-group:FID``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.sdp import candidate_from_sdp
from livekit.protocol import models, rtc

from trackyard.loadtest.media import EncodedFrame, ReplayTrack, SimulcastLayer, ice_protocols
from trackyard.loadtest.simulcast import SimulcastError, SimulcastSender, simulcast_offer
from trackyard.sfu import rtphooks

PROTOCOL_VERSION = 15  # the v0 signalling generation the LiveKit SDKs of 2025 speak
SIGNAL_TIMEOUT = 15.0


class JoinError(Exception):
    """Joining failed; ``status`` is the HTTP status when the server refused the socket."""

    def __init__(self, reason: str, status: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def ws_base(url: str) -> str:
    url = url.strip().rstrip("/")
    if url.startswith("http://"):
        return "ws://" + url[7:]
    if url.startswith("https://"):
        return "wss://" + url[8:]
    if "://" not in url:
        return "ws://" + url
    return url


def http_base(url: str) -> str:
    url = ws_base(url)
    return "http" + url[2:]


@dataclass(slots=True)
class StreamCounter:
    """Packets of one received SSRC."""

    track: str  # track sid ("" when the offer did not name it)
    rtx: bool = False
    packets: int = 0
    bytes: int = 0
    first_seq: int = -1
    max_seq: int = -1  # extended (wrap-counted)
    first_at: float = 0.0

    def add(self, seq: int, size: int, now: float) -> None:
        self.packets += 1
        self.bytes += size
        if self.first_seq < 0:
            self.first_seq = self.max_seq = seq
            self.first_at = now
            return
        delta = (seq - self.max_seq) & 0xFFFF
        if 0 < delta < 0x8000:
            self.max_seq += delta

    @property
    def lost(self) -> int:
        if self.first_seq < 0 or self.rtx:
            return 0
        return max(self.max_seq - self.first_seq + 1 - self.packets, 0)


@dataclass
class SdpStreams:
    """What the server's subscriber offer says about its SSRCs."""

    track_of: dict[int, str] = field(default_factory=dict)  # ssrc -> track sid
    kind_of: dict[str, str] = field(default_factory=dict)  # track sid -> audio|video
    rtx: set[int] = field(default_factory=set)

    def parse(self, sdp: str) -> None:
        for section in sdp.split("\nm=")[1:]:
            kind = section.split(" ", 1)[0]
            track = ""
            ssrcs: list[int] = []
            for line in section.splitlines():
                line = line.strip()
                if line.startswith("a=msid:"):
                    parts = line[7:].split()
                    track = parts[1] if len(parts) > 1 else parts[0].split("|")[-1]
                elif line.startswith("a=ssrc:"):
                    ssrc_text, _, attr = line[7:].partition(" ")
                    ssrcs.append(int(ssrc_text))
                    if attr.startswith("msid:") and not track:
                        parts = attr[5:].split()
                        track = parts[1] if len(parts) > 1 else parts[0].split("|")[-1]
                elif line.startswith("a=ssrc-group:FID"):
                    group = line.split()[1:]
                    self.rtx.update(int(s) for s in group[1:])
            if track and ssrcs and kind in ("audio", "video"):
                self.kind_of[track] = kind
                for ssrc in ssrcs:
                    self.track_of[ssrc] = track


@dataclass
class PublishSpec:
    kind: str  # audio | video
    frames: Any  # list[EncodedFrame]
    fps: float
    codec: str = "vp8"  # video codec (mime subtype, lower case)
    width: int = 0
    height: int = 0
    bitrate: int = 0
    # video simulcast: the layers (lowest first) and their pre-encoded loops
    layers: list[tuple[SimulcastLayer, list[EncodedFrame]]] | None = None


class Tester:
    """One participant of the load test."""

    def __init__(
        self,
        name: str,
        url: str,
        token: str,
        room: str,
        *,
        publish: PublishSpec | None = None,
        subscribe: bool = False,
        quality: int | None = None,
        decode: bool = False,
    ) -> None:
        self.name = name
        self.url = url
        self.token = token
        self.room = room
        self.publish = publish
        self.subscribe = subscribe
        # subscriber: the simulcast layer to ask for (models.VideoQuality; None: the server's
        # default, the highest)
        self.quality = quality
        self._quality_asked: set[str] = set()
        # subscriber: decode the first video track (aiortc's receiver, PyAV) to prove the content
        self.decode = decode
        self.decoded_track = ""
        self.decoded_frames = 0
        self.decoded_size: tuple[int, int] = (0, 0)  # of the last decoded frame
        self._passthrough: set[int] = set()  # SSRCs whose packets aiortc also gets (decoding)
        self.ws: Any = None
        self.join: rtc.JoinResponse | None = None
        self.error = ""  # why this tester failed, if it did
        self.left = asyncio.Event()  # the server ended the session
        self.connect_started = 0.0
        self.join_latency: float | None = None  # socket opened -> subscriber PC connected
        self.subscriber_pc: RTCPeerConnection | None = None
        self.publisher_pc: RTCPeerConnection | None = None
        self.sdp = SdpStreams()
        self.streams: dict[int, StreamCounter] = {}
        self._hooked: set[int] = set()
        self._pending_tracks: dict[str, asyncio.Future[models.TrackInfo]] = {}
        self._answer: asyncio.Future[rtc.SessionDescription] | None = None
        self._sub_connected = asyncio.Event()
        self._offer_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        self.track: ReplayTrack | None = None
        self.simulcast: SimulcastSender | None = None
        self.sender: RTCRtpSender | None = None
        self._nacks = 0  # publisher: NACKed packets the server asked for
        self._plis = 0  # publisher: keyframe requests
        self.published_sid = ""
        # the room as this participant's updates show it: identity -> (sid, state), others only
        self.others: dict[str, tuple[str, int]] = {}
        self.update_messages = 0  # participant_update messages received
        self.others_changed = asyncio.Event()  # set at every update; cleared by who waits

    # -- what it measured ---------------------------------------------------------------------

    @property
    def nacks(self) -> int:
        """Publisher: NACKed packets the server asked for."""
        return self._nacks + (self.simulcast.nacks if self.simulcast else 0)

    @property
    def plis(self) -> int:
        """Publisher: keyframe requests (PLI/FIR)."""
        return self._plis + (self.simulcast.plis if self.simulcast else 0)

    def media_streams(self) -> list[StreamCounter]:
        return [s for s in self.streams.values() if not s.rtx]

    def tracks_received(self) -> set[str]:
        return {s.track or f"ssrc:{ssrc}" for ssrc, s in self.streams.items() if not s.rtx}

    def received(self) -> tuple[int, int, int, int]:
        """(packets, bytes, lost, retransmitted packets) received so far."""
        packets = bytes_ = lost = rtx = 0
        for s in self.streams.values():
            if s.rtx:
                rtx += s.packets
            else:
                packets += s.packets
                lost += s.lost
            bytes_ += s.bytes
        return packets, bytes_, lost, rtx

    async def sent(self) -> tuple[int, int]:
        """Publisher: (packets, bytes) sent."""
        if self.simulcast is not None:
            return self.simulcast.sent()
        if self.sender is None:
            return 0, 0
        for stat in (await self.sender.getStats()).values():
            if getattr(stat, "type", "") == "outbound-rtp":
                return int(stat.packetsSent), int(stat.bytesSent)
        return 0, 0

    def first_packet_delay(self) -> float | None:
        firsts = [s.first_at for s in self.media_streams() if s.first_at]
        return min(firsts) - self.connect_started if firsts else None

    # -- joining ------------------------------------------------------------------------------

    async def run_join(self, timeout: float = SIGNAL_TIMEOUT) -> None:
        """Join (and publish); raises :class:`JoinError` with the server's reason."""
        self.connect_started = time.monotonic()
        try:
            await asyncio.wait_for(self._join(), timeout)
        except TimeoutError:
            raise JoinError(f"join timed out after {timeout:g}s") from None
        if self.publish is not None:
            try:
                await asyncio.wait_for(self._publish(self.publish), timeout)
            except TimeoutError:
                raise JoinError(f"publishing timed out after {timeout:g}s") from None

    async def _join(self) -> None:
        query = urllib.parse.urlencode(
            {
                "access_token": self.token,
                "auto_subscribe": "1" if self.subscribe else "0",
                "sdk": "python",
                "version": "1.2.1",
                "protocol": str(PROTOCOL_VERSION),
            }
        )
        url = f"{ws_base(self.url)}/rtc?{query}"
        try:
            self.ws = await websockets.connect(url, max_size=16 << 20, open_timeout=10)
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            raise JoinError(await self._refusal(query, status), status) from None
        except (OSError, websockets.InvalidHandshake) as exc:
            raise JoinError(f"cannot connect to {ws_base(self.url)}: {exc}") from None
        self._tasks.append(asyncio.create_task(self._read(), name=f"{self.name}-signal"))
        first = await self._first_message
        if first.WhichOneof("message") == "leave":
            raise JoinError(
                f"server sent leave ({models.DisconnectReason.Name(first.leave.reason)})"
            )
        if first.WhichOneof("message") != "join":
            raise JoinError(f"expected join, got {first.WhichOneof('message')}")
        self.join = first.join
        self._tasks.append(asyncio.create_task(self._ping(), name=f"{self.name}-ping"))
        await self._sub_connected.wait()
        self.join_latency = time.monotonic() - self.connect_started

    async def _refusal(self, query: str, status: int) -> str:
        """The reason, as the SDKs learn it: ``GET /rtc/validate`` with the same query."""
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                resp = await http.get(f"{http_base(self.url)}/rtc/validate?{query}")
            text = resp.text.strip()
            return f"{status}: {text}" if text else f"HTTP {status}"
        except httpx.HTTPError:
            return f"HTTP {status}"

    @property
    def _first_message(self) -> asyncio.Future[rtc.SignalResponse]:
        if not hasattr(self, "_first"):
            self._first: asyncio.Future[rtc.SignalResponse] = (
                asyncio.get_running_loop().create_future()
            )
        return self._first

    async def _ping(self) -> None:
        assert self.join is not None
        interval = max(self.join.ping_interval, 1)
        while True:
            await asyncio.sleep(interval)
            now = int(time.time() * 1000)
            await self._send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=now)))

    async def _send(self, req: rtc.SignalRequest) -> None:
        if self.ws is not None:
            await self.ws.send(req.SerializeToString())

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                if not isinstance(raw, bytes):
                    continue
                msg = rtc.SignalResponse.FromString(raw)
                if not self._first_message.done():
                    self._first_message.set_result(msg)
                    if msg.WhichOneof("message") != "join":
                        continue
                await self._handle(msg)
        except websockets.ConnectionClosed:
            pass
        except Exception as exc:  # a bug here must not pass silently
            self.error = self.error or f"signal reader failed: {type(exc).__name__}: {exc}"
        finally:
            if not self._first_message.done():
                self._first_message.set_exception(JoinError("server closed the socket"))
            self.left.set()

    def _see(self, infos: Iterable[models.ParticipantInfo]) -> None:
        own = self.join.participant.identity if self.join is not None else ""
        for info in infos:
            if info.identity == own:
                continue
            if info.state == models.ParticipantInfo.DISCONNECTED:
                seen = self.others.get(info.identity)
                if seen is not None and seen[0] == info.sid:  # not a newer session's
                    del self.others[info.identity]
            else:
                self.others[info.identity] = (info.sid, info.state)
        self.others_changed.set()

    def sees_active(self) -> int:
        """How many others this participant's updates show as ACTIVE."""
        return sum(1 for _, state in self.others.values() if state == models.ParticipantInfo.ACTIVE)

    async def _handle(self, msg: rtc.SignalResponse) -> None:
        which = msg.WhichOneof("message")
        if which == "join":  # before anything after it (the reader handles messages in order)
            self.join = msg.join
            self._see(msg.join.other_participants)
        elif which == "update":
            self.update_messages += 1
            self._see(msg.update.participants)
        elif which == "offer":
            await self._on_offer(msg.offer)
        elif which == "answer":
            if self._answer is not None and not self._answer.done():
                self._answer.set_result(msg.answer)
        elif which == "trickle":
            await self._on_trickle(msg.trickle)
        elif which == "track_published":
            fut = self._pending_tracks.get(msg.track_published.cid)
            if fut is not None and not fut.done():
                fut.set_result(msg.track_published.track)
        elif which == "request_response":
            resp = msg.request_response
            if resp.reason != rtc.RequestResponse.OK:
                for fut in self._pending_tracks.values():
                    if not fut.done():
                        fut.set_exception(JoinError(f"add_track refused: {resp.message}"))
        elif which == "subscribed_quality_update":
            self._on_quality_update(msg.subscribed_quality_update)
        elif which == "leave":
            reason = models.DisconnectReason.Name(msg.leave.reason)
            if not self.error:
                self.error = f"server sent leave ({reason})"
            self.left.set()

    async def _on_offer(self, offer: rtc.SessionDescription) -> None:
        async with self._offer_lock:  # one negotiation at a time
            if self.subscriber_pc is None:
                self.subscriber_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
                pc = self.subscriber_pc

                @pc.on("connectionstatechange")
                def _state() -> None:
                    if pc.connectionState == "connected":
                        self._sub_connected.set()
                    elif pc.connectionState == "failed" and not self.error:
                        self.error = "subscriber connection failed"

                if self.decode:

                    @pc.on("track")
                    def _track(track: MediaStreamTrack) -> None:
                        if track.kind == "video" and not self.decoded_track:
                            self.decoded_track = track.id
                            self._tasks.append(
                                asyncio.create_task(self._decode(track), name=f"{self.name}-dec")
                            )

            pc = self.subscriber_pc
            self.sdp.parse(offer.sdp)
            if self.decode:
                sample = self.decoded_track or next(
                    (sid for sid, kind in self.sdp.kind_of.items() if kind == "video"), ""
                )
                self._passthrough.update(
                    ssrc for ssrc, sid in self.sdp.track_of.items() if sid and sid == sample
                )
            await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            self._hook_sockets(pc)
            for ssrc, counter in self.streams.items():  # SSRCs seen before their offer
                if not counter.track:
                    counter.track = self.sdp.track_of.get(ssrc, "")
                    counter.rtx = ssrc in self.sdp.rtx
            await self._send(
                rtc.SignalRequest(
                    answer=rtc.SessionDescription(
                        type="answer", sdp=pc.localDescription.sdp, id=offer.id
                    )
                )
            )
            await self._ask_quality()

    async def _ask_quality(self) -> None:
        """Subscriber: ask for ``quality`` of each video track once (UpdateTrackSettings)."""
        if self.quality is None:
            return
        sids = [
            sid
            for sid, kind in self.sdp.kind_of.items()
            if kind == "video" and sid not in self._quality_asked
        ]
        if sids:
            self._quality_asked.update(sids)
            settings = rtc.UpdateTrackSettings(
                track_sids=sids, quality=models.VideoQuality.Name(self.quality)
            )
            await self._send(rtc.SignalRequest(track_setting=settings))

    def _on_quality_update(self, update: rtc.SubscribedQualityUpdate) -> None:
        """Publisher: stop sending the layers nobody wants (the SDKs' dynacast)."""
        if self.simulcast is None or update.track_sid != self.published_sid:
            return
        qualities = list(update.subscribed_qualities)
        codec = self.publish.codec if self.publish is not None else ""
        for c in update.subscribed_codecs:  # per-codec form (LiveKit >= 1.5)
            if c.codec.lower().removeprefix("video/") == codec:
                qualities = list(c.qualities)
        self.simulcast.set_wanted({int(q.quality): q.enabled for q in qualities})

    async def _on_trickle(self, trickle: rtc.TrickleRequest) -> None:
        pc = (
            self.publisher_pc
            if trickle.target == rtc.SignalTarget.PUBLISHER
            else self.subscriber_pc
        )
        if pc is None:
            return
        try:
            init = json.loads(trickle.candidateInit)
            text = str(init.get("candidate", ""))
            if not text:
                return
            candidate = candidate_from_sdp(text.removeprefix("candidate:"))
            candidate.sdpMid = init.get("sdpMid")
            candidate.sdpMLineIndex = init.get("sdpMLineIndex")
            await pc.addIceCandidate(candidate)
        except (ValueError, KeyError, TypeError):
            return  # a candidate aiortc cannot use (TCP, mDNS): skip it

    async def _decode(self, track: MediaStreamTrack) -> None:
        """Count the frames aiortc decodes from the sample track's packets."""
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.decoded_frames += 1
                self.decoded_size = (int(frame.width), int(frame.height))  # type: ignore[union-attr]

    def _hook_sockets(self, pc: RTCPeerConnection) -> None:
        """Count RTP off the sockets; everything else goes on to aiortc (and the RTP of a
        decoded sample track too)."""
        streams = self.streams
        sdp = self.sdp
        passthrough = self._passthrough
        monotonic = time.monotonic
        from_bytes = int.from_bytes
        for protocol in ice_protocols(pc):
            if id(protocol) in self._hooked:
                continue
            self._hooked.add(id(protocol))
            inner = protocol.datagram_received

            def received(data: bytes, addr: Any, inner: Callable[..., None] = inner) -> None:
                if len(data) >= 12 and 127 < data[0] < 192 and not 191 < data[1] < 224:
                    ssrc = from_bytes(data[8:12], "big")
                    counter = streams.get(ssrc)
                    if counter is None:
                        counter = streams[ssrc] = StreamCounter(
                            sdp.track_of.get(ssrc, ""), ssrc in sdp.rtx
                        )
                    counter.add((data[2] << 8) | data[3], len(data), monotonic())
                    if ssrc in passthrough:
                        inner(data, addr)
                else:
                    inner(data, addr)

            protocol.__dict__["datagram_received"] = received

    # -- publishing ---------------------------------------------------------------------------

    async def _publish(self, spec: PublishSpec) -> None:
        if spec.layers is not None:
            await self._publish_simulcast(spec, spec.layers)
            return
        track = ReplayTrack(spec.frames, kind=spec.kind, fps=spec.fps)
        self.track = track
        video = spec.kind == "video"
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[models.TrackInfo] = loop.create_future()
        self._pending_tracks[track.id] = fut
        req = rtc.AddTrackRequest(
            cid=track.id,
            name="camera" if video else "microphone",
            type=models.TrackType.VIDEO if video else models.TrackType.AUDIO,
            source=models.TrackSource.CAMERA if video else models.TrackSource.MICROPHONE,
            width=spec.width,
            height=spec.height,
        )
        if video:
            req.layers.append(
                models.VideoLayer(
                    quality=models.VideoQuality.HIGH,
                    width=spec.width,
                    height=spec.height,
                    bitrate=spec.bitrate,
                )
            )
        await self._send(rtc.SignalRequest(add_track=req))
        info = await fut
        self.published_sid = info.sid
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.publisher_pc = pc
        transceiver = pc.addTransceiver(track, direction="sendonly")
        if video:
            mime = f"video/{spec.codec}"
            caps = RTCRtpSender.getCapabilities("video").codecs
            chosen = [c for c in caps if c.mimeType.lower() == mime]
            if spec.codec == "h264":  # the packetization-mode=1 profile the browsers use
                chosen = [c for c in chosen if "packetization-mode=1" in _fmtp(c)][:1] or chosen
            rtx = [c for c in caps if c.mimeType.lower() == "video/rtx"]
            transceiver.setCodecPreferences(chosen + rtx)
        sender = transceiver.sender
        self.sender = sender
        sender.__dict__["_send_keyframe"] = track.request_keyframe
        self._count_rtcp(sender)
        self._answer = loop.create_future()
        await pc.setLocalDescription(await pc.createOffer())
        await self._send(
            rtc.SignalRequest(
                offer=rtc.SessionDescription(type="offer", sdp=pc.localDescription.sdp)
            )
        )
        answer = await self._answer
        await pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))

    async def _publish_simulcast(
        self, spec: PublishSpec, layers: list[tuple[SimulcastLayer, list[EncodedFrame]]]
    ) -> None:
        """Announce the layers as the SDKs do (``layers`` lowest first, ``simulcast_codecs``),
        offer them as Chrome does (``a=rid`` / ``a=simulcast``) and send them ourselves."""
        rtphooks.install_simulcast_extensions()  # aiortc offers the rtp-stream-id extension
        simulcast = SimulcastSender(layers, spec.fps)
        self.simulcast = simulcast
        cid = f"TR_loadtest_{self.name}"
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[models.TrackInfo] = loop.create_future()
        self._pending_tracks[cid] = fut
        req = rtc.AddTrackRequest(
            cid=cid,
            name="camera",
            type=models.TrackType.VIDEO,
            source=models.TrackSource.CAMERA,
            width=spec.width,
            height=spec.height,
            simulcast_codecs=[rtc.SimulcastCodec(codec=spec.codec, cid=cid)],
        )
        for layer, _ in layers:
            req.layers.append(
                models.VideoLayer(
                    quality=models.VideoQuality.Name(layer.quality),
                    width=layer.spec.width,
                    height=layer.spec.height,
                    bitrate=layer.spec.bitrate,
                )
            )
        await self._send(rtc.SignalRequest(add_track=req))
        info = await fut
        self.published_sid = info.sid
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.publisher_pc = pc
        transceiver = pc.addTransceiver("video", direction="sendonly")
        mime = f"video/{spec.codec}"
        caps = RTCRtpSender.getCapabilities("video").codecs
        chosen = [c for c in caps if c.mimeType.lower() == mime]
        if spec.codec == "h264":
            chosen = [c for c in chosen if "packetization-mode=1" in _fmtp(c)][:1] or chosen
        transceiver.setCodecPreferences(chosen)  # no RTX: NACKed packets are resent as they were
        sender = transceiver.sender
        self.sender = sender
        rtphooks.set_sender_msid(sender, f"PA_loadtest_{self.name}", cid)
        simulcast.attach(sender)
        self._answer = loop.create_future()
        await pc.setLocalDescription(await pc.createOffer())
        sdp = simulcast_offer(pc.localDescription.sdp, simulcast.rids)
        await self._send(rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp=sdp)))
        answer = await self._answer
        await pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
        try:
            await simulcast.started
        except SimulcastError as exc:
            raise JoinError(str(exc)) from None

    def _count_rtcp(self, sender: RTCRtpSender) -> None:
        from aiortc.rtp import RtcpPsfbPacket, RtcpRtpfbPacket

        inner = sender._handle_rtcp_packet

        async def handle(packet: Any) -> None:
            if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == 1:  # NACK
                self._nacks += len(packet.lost)
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (1, 4):  # PLI, FIR
                self._plis += 1
            await inner(packet)

        sender.__dict__["_handle_rtcp_packet"] = handle

    # -- leaving ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Leave politely (``leave`` then close), bounded; safe to call twice."""
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._send(
                        rtc.SignalRequest(
                            leave=rtc.LeaveRequest(
                                reason=models.DisconnectReason.CLIENT_INITIATED,
                                action=rtc.LeaveRequest.DISCONNECT,
                            )
                        )
                    ),
                    2,
                )
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 2)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.simulcast is not None:
            await self.simulcast.stop()
        for pc in (self.publisher_pc, self.subscriber_pc):
            if pc is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pc.close(), 5)
        if self.track is not None:
            self.track.stop()


def _fmtp(codec: RTCRtpCodecCapability) -> str:
    return ";".join(f"{k}={v}" for k, v in (codec.parameters or {}).items())
