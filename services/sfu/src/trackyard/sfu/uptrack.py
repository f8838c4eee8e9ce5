"""UpTrack: one published track (audio or video) received on a publisher peer connection.

The UpTrack takes the decrypted RTP of one receiver (1 to 3 simulcast layers, or a single
stream), keeps per-layer state (SSRC, reception statistics, missing packets, keyframes, the
publisher's latest sender report, activity) and fans every packet out to its DownTracks. It
never decodes. Toward the publisher it sends receiver reports, REMB, NACKs for lost packets
(the publisher answers with RTX, which is unwrapped here) and PLIs on request (throttled per
layer).

It is the ``TrackSource`` of ``trackyard.sfu.trackcontract``: DownTracks (its sinks, ``PacketSink``)
use only that protocol, and get each packet as one reused ``ForwardedPacket``. The packet path
awaits nothing: a packet is fanned out to every sink, then the feedback it caused (NACKs for
what it showed missing, PLIs the sinks asked for) is sent, all synchronously.

Integration (publisher peer connection, the server answers the client's offers)::

    pc = portrange.make_peer_connection(port_range, node_ip, stun_servers)
    await pc.setRemoteDescription(offer)
    for section in sdp.parse_media_sections(offer.sdp):        # new audio/video sections
        transceiver = <the transceiver whose mid == section.mid>
        up = UpTrack(
            section.kind,
            track_sid="TR_...",
            layers=[LayerSpec("q", QUALITY_LOW, 320, 180), ...],  # from AddTrackRequest.layers;
            counters=node_counters,                                 # optional
            on_wanted_quality=lambda q: ...,                        # SubscribedQualityUpdate
        )
        up.attach(transceiver, mid=section.mid, rids=section.rids)
    await pc.setLocalDescription(await pc.createAnswer())
    answer_sdp = rtphooks.simulcast_answer(pc.localDescription.sdp, offer.sdp)  # send this
    ...
    await up.close()                                          # unpublish / participant left

``logger``: an optional structlog logger already bound to the caller's context (room,
participant); the track binds its sid, kind and (once known) SSRCs.

``attach`` must run before packets flow (right after ``setRemoteDescription``, before yielding
to the event loop is best; packets that arrive earlier are decoded by aiortc and lost for
forwarding). ``on_wanted_quality(q)`` reports the highest quality any subscriber wants
(``QUALITY_LOW``/``MEDIUM``/``HIGH``, ``None``: nobody wants this video), whenever it
changes: send the publisher a ``subscribed_quality_update`` enabling the layers up to it.
Counters: ``packets``/``bytes`` (payload) per layer, ``packets_in``/``bytes_in`` per track,
and the shared ``TrafficCounters`` if given.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import structlog
from aiortc import RTCRtpTransceiver

from trackyard.sfu import rtphooks
from trackyard.sfu.audiolevel import AudioLevel
from trackyard.sfu.connectionquality import (
    LOSS_WEIGHT_AUDIO,
    LOSS_WEIGHT_VIDEO,
    StreamWindow,
)
from trackyard.sfu.fanout import AHEAD, REST, WHOLE, Fanout, LaneFilter, make_fanout
from trackyard.sfu.forwarder import KeyframeThrottle
from trackyard.sfu.h264 import begins_keyframe as h264_begins_keyframe
from trackyard.sfu.rtphooks import (
    AnyRtcpPacket,
    CodecInfo,
    RtcpByePacket,
    RtcpSrPacket,
    RtpPacket,
)
from trackyard.sfu.rtppacket import (
    ReportBlock,
    abs_send_time,
    ntp_to_compact,
    rtcp_nack,
    rtcp_pli,
    rtcp_remb,
    rtcp_rr,
)
from trackyard.sfu.rtpstats import NackTracker, ReceiveStats, TrafficCounters
from trackyard.sfu.trackcontract import (
    QUALITY_HIGH,
    QUALITY_LOW,
    QUALITY_MEDIUM,
    QUALITY_OFF,
    ForwardedPacket,
    PacketSink,
    with_sink,
)
from trackyard.sfu.vp8 import Vp8Descriptor, parse_vp8

if TYPE_CHECKING:
    from aiortc import RTCRtpReceiver
    from structlog.typing import FilteringBoundLogger

__all__ = [
    "QUALITY_HIGH",
    "QUALITY_LOW",
    "QUALITY_MEDIUM",
    "QUALITY_OFF",
    "Layer",
    "LayerSpec",
    "UpTrack",
]

log: FilteringBoundLogger = structlog.get_logger(__name__)

_RID_QUALITY = {"q": QUALITY_LOW, "h": QUALITY_MEDIUM, "f": QUALITY_HIGH}
_NACK_RETRY_INTERVAL = 0.05  # seconds between NACKs for the same packet
# source payloads a fan-out keeps for its lane copies' NACKs (all layers together)
RING_VIDEO = 2048
RING_AUDIO = 256
_HOLD_MAX = 32  # packets held for the local fan-out (see _hold) before it runs anyway
_NTP_ONE_SECOND = 1 << 32


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """A simulcast layer as announced by the publisher (AddTrackRequest.layers)."""

    rid: str
    quality: int
    width: int = 0
    height: int = 0


class Layer:
    """One received stream of the track: a simulcast layer or the only stream."""

    __slots__ = (
        "active",
        "bytes",
        "height",
        "index",
        "keyframes",
        "last_packet",
        "lsr",
        "lsr_time",
        "nack_checked",
        "nacks",
        "packets",
        "quality",
        "rid",
        "sr",
        "sr_time",
        "ssrc",
        "stats",
        "width",
        "window_expected",
        "window_received",
    )

    def __init__(self, index: int, rid: str, quality: int, width: int, height: int) -> None:
        self.index = index
        self.rid = rid
        self.quality = quality
        self.width = width
        self.height = height
        self.ssrc: int | None = None
        self.stats: ReceiveStats | None = None
        self.nacks = NackTracker()
        self.nack_checked = 0.0
        self.active = False
        self.last_packet = 0.0
        self.keyframes = 0
        self.sr: tuple[int, int] | None = None  # (ntp, rtp) of the publisher's last SR
        self.sr_time = 0.0  # monotonic arrival time of that SR
        self.lsr = 0
        self.lsr_time = 0.0
        self.packets = 0
        self.bytes = 0
        self.window_expected = 0  # ReceiveStats figures at the last quality window
        self.window_received = 0


class _LayerShape(Protocol):
    @property
    def quality(self) -> int: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...


def choose_layer(
    layers: Sequence[_LayerShape], quality: int | None, width: int = 0, height: int = 0
) -> int:
    """Index of the layer (``layers`` lowest quality first) for a subscriber asking for
    ``quality`` or for a ``width`` x ``height`` view."""
    if len(layers) <= 1:
        return 0
    if (width > 0 or height > 0) and all(layer.width and layer.height for layer in layers):
        for i, layer in enumerate(layers):
            if layer.width >= width and layer.height >= height:
                return i
        return len(layers) - 1
    wanted = QUALITY_HIGH if quality is None else quality
    best = 0
    for i, layer in enumerate(layers):
        if layer.quality <= wanted:
            best = i
    return best


class UpTrack:
    """One published track; see the module docstring for how to wire it."""

    def __init__(
        self,
        kind: str,
        *,
        track_sid: str = "",
        layers: Sequence[LayerSpec] = (),
        counters: TrafficCounters | None = None,
        on_wanted_quality: Callable[[int | None], None] | None = None,
        pli_interval: float = 0.5,
        layer_timeout: float = 1.0,
        rtcp_interval: float = 1.0,
        remb_bitrate: int = 3_000_000,
        nack: bool = True,
        audio_level: AudioLevel | None = None,
        logger: FilteringBoundLogger | None = None,
        fanout: Fanout | None = None,
    ) -> None:
        if kind not in ("audio", "video"):
            raise ValueError(f"UpTrack kind must be audio or video, not {kind!r}")
        self.kind = kind
        self.track_sid = track_sid
        self.counters = counters
        self.on_wanted_quality = on_wanted_quality
        self._log = (logger if logger is not None else log).bind(track=track_sid, kind=kind)
        self._keyframes = KeyframeThrottle(pli_interval)
        self.layer_timeout = layer_timeout
        self.rtcp_interval = rtcp_interval
        self.remb_bitrate = remb_bitrate if kind == "video" else 0
        self.nack = nack and kind == "video"
        self.audio_level = audio_level if kind == "audio" else None
        self.layers: list[Layer] = []
        self._specs = list(layers)
        self.codec: CodecInfo | None = None
        self.packets_in = 0
        self.bytes_in = 0
        self.mid: str | None = None
        self._receiver: RTCRtpReceiver | None = None
        self._transceiver: RTCRtpTransceiver | None = None
        self._rtcp_ssrc = random.getrandbits(32)
        self._pt: dict[int, CodecInfo] = {}
        self._by_ssrc: dict[int, Layer] = {}
        self._by_rtx_ssrc: dict[int, Layer] = {}
        self._by_rid: dict[str, Layer] = {}
        self._sinks: tuple[PacketSink, ...] = ()
        self._ahead: set[PacketSink] = set()  # the sinks added ahead (relays)
        self._is_vp8 = False
        self._is_h264 = False
        self._wanted: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._started_at: float | None = None  # first packet
        self._starting = True  # within layer_timeout of the first packet
        # the hand-off to the sinks, refilled for every received packet
        # its own fan-out (copies on their steady stream are decided in C) may send a burst to
        # the relays before fanning it out here (see _hold); a shared one may not
        self._holds = fanout is None
        if fanout is None:
            fanout = make_fanout(lane=True, ring=RING_VIDEO if kind == "video" else RING_AUDIO)
            fanout.watch_lane(self._release)
        self._fanout = fanout
        self._packet = ForwardedPacket(RtpPacket(), self._fanout)
        self._lane_filter = LaneFilter(fanout)
        self._fanning_out = False  # PLIs asked for meanwhile wait in _plis_due
        self._plis_due: list[int] = []
        # packets sent to the copies ahead, their local fan-out due when the burst is read
        self._held: list[ForwardedPacket] = []  # reused: the first _n_held are due
        self._n_held = 0
        self._releasing = False
        self._burst: rtphooks.ReceiveBurst | None = None

    # --- wiring -------------------------------------------------------------------------

    def attach(
        self,
        receiver: RTCRtpReceiver | RTCRtpTransceiver,
        mid: str | None = None,
        rids: Sequence[str] = (),
    ) -> None:
        """Take over the packets of a receiver (or of a transceiver's receiver: then the
        negotiated codec is known before the first packet). ``rids``: the simulcast rids of
        the m-line (from the offer's ``a=rid:<rid> send``), empty for a single stream."""
        if self._receiver is not None:
            raise RuntimeError("UpTrack.attach: already attached")
        if isinstance(receiver, RTCRtpTransceiver):
            self._transceiver = receiver
            receiver = receiver.receiver
        self._receiver = receiver
        self.mid = mid
        self._make_layers(list(rids))
        rtphooks.hook_receiver(receiver, self)
        rtcp_ssrc = rtphooks.receiver_rtcp_ssrc(receiver)
        if rtcp_ssrc is not None:
            self._rtcp_ssrc = rtcp_ssrc
        self._task = asyncio.ensure_future(self._run())

    def _make_layers(self, rids: list[str]) -> None:
        specs = {s.rid: s for s in self._specs}
        if not rids or self.kind == "audio":
            spec = self._specs[0] if len(self._specs) == 1 else None
            quality = spec.quality if spec is not None else QUALITY_HIGH
            width = spec.width if spec is not None else 0
            height = spec.height if spec is not None else 0
            self.layers = [Layer(0, "", quality, width, height)]
            return
        entries = []
        for order, rid in enumerate(rids):
            spec = specs.get(rid)
            if spec is not None:
                quality = spec.quality
            else:
                quality = _RID_QUALITY.get(rid, min(order, QUALITY_HIGH))
            entries.append(
                (quality, order, rid, spec.width if spec else 0, spec.height if spec else 0)
            )
        entries.sort()
        self.layers = [
            Layer(i, rid, quality, width, height)
            for i, (quality, _, rid, width, height) in enumerate(entries)
        ]
        self._by_rid = {layer.rid: layer for layer in self.layers}

    async def close(self) -> None:
        """Stop: detach the DownTracks (they send nothing more) and the receiver hooks."""
        if self._closed:
            return
        self._closed = True
        self._n_held = 0  # the subscribers go too
        for sink in self._sinks:
            sink.source_closed()
        self._sinks = ()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._receiver is not None:
            rtphooks.silence_receiver(self._receiver)  # aiortc decodes nothing still arriving

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def fanout(self) -> Fanout:
        return self._fanout

    @property
    def downtracks(self) -> tuple[PacketSink, ...]:
        """The sinks being fed (DownTracks)."""
        return self._sinks

    @property
    def clock_rate(self) -> int:
        if self.codec is not None:
            return self.codec.clock_rate
        return 90000 if self.kind == "video" else 48000

    def current_codec(self) -> CodecInfo | None:
        """The codec being received, else the first negotiated one (publishers send their
        preferred codec)."""
        if self.codec is not None or self._receiver is None:
            return self.codec
        for info in rtphooks.receiver_codecs(self._receiver).values():
            if not info.is_rtx:
                return info
        if self._transceiver is not None:
            for info in rtphooks.transceiver_codecs(self._transceiver):
                if not info.is_rtx:
                    return info
        return None

    def codec_for(self, payload_type: int) -> CodecInfo | None:
        info = self._pt.get(payload_type)
        if info is None:
            info = self._learn_pt(payload_type)
        return info

    def add_sink(self, sink: PacketSink, *, ahead: bool = False) -> None:
        if self._closed:
            sink.source_closed()
            return
        self._sinks = with_sink(self._sinks, sink, ahead)
        if ahead:
            self._ahead.add(sink)
        self.wanted_changed()

    def remove_sink(self, sink: PacketSink) -> None:
        self._sinks = tuple(s for s in self._sinks if s is not sink)
        self._ahead.discard(sink)
        self.wanted_changed()

    # --- layer selection ----------------------------------------------------------------

    def select_layer(self, quality: int | None, width: int = 0, height: int = 0) -> int:
        """The layer a subscriber asking for ``quality`` (or a ``width`` x ``height`` view)
        should get, regardless of what is being received right now."""
        return choose_layer(self.layers, quality, width, height)

    def usable_layer(self, desired: int) -> int:
        """``desired`` if it is being received, else the best received layer below it, else
        the lowest received above it; ``desired`` itself when nothing is received yet.

        During the first ``layer_timeout`` after the track's first packet, layers not seen
        yet count as received: simulcast layers start a few packets apart, and falling back to
        the first one to arrive would cost a keyframe per layer at every subscription."""
        layers = self.layers
        if not layers:
            return desired
        desired = min(desired, len(layers) - 1)
        started = self._started_at
        if started is None:
            return desired
        pending = self._starting and time.monotonic() - started < self.layer_timeout
        for i in range(desired, -1, -1):
            layer = layers[i]
            if layer.active or (pending and layer.ssrc is None):
                return i
        for i in range(desired + 1, len(layers)):
            if layers[i].active:
                return i
        return desired

    def wanted_changed(self) -> None:
        """A sink's desired layer changed: report the best one wanted to the publisher."""
        if self.kind != "video":
            return
        best = -1
        for sink in self._sinks:
            if sink.desired_layer > best:
                best = sink.desired_layer
        quality = self.quality_of(best)
        if quality != self._wanted:
            self._wanted = quality
            if self.on_wanted_quality is not None:
                try:
                    self.on_wanted_quality(quality)
                except Exception:
                    self._log.exception("on_wanted_quality callback failed")

    def quality_of(self, layer: int) -> int | None:
        """The quality of a layer index (None: no layer)."""
        return self.layers[layer].quality if 0 <= layer < len(self.layers) else None

    @property
    def wanted_quality(self) -> int | None:
        return self._wanted

    def _layers_changed(self) -> None:
        for sink in self._sinks:
            sink.layers_changed()

    # --- keyframes and sender reports ---------------------------------------------------

    def request_keyframe(self, layer_index: int) -> None:
        """Ask the publisher for a keyframe on a layer (PLI), at most once per
        ``pli_interval`` per layer."""
        if self.kind != "video" or not 0 <= layer_index < len(self.layers):
            return
        layer = self.layers[layer_index]
        if layer.ssrc is None or self._receiver is None:
            return
        if not self._keyframes.allow(layer_index):
            return
        if self._fanning_out:  # asked by a sink for the packet being fanned out: after it
            self._plis_due.append(layer_index)
        else:
            self._send_pli(layer)

    def _send_pli(self, layer: Layer) -> None:
        if layer.ssrc is None or self._receiver is None:
            return
        if self.counters is not None:
            self.counters.plis_sent += 1
        rtphooks.send_rtcp_nowait(self._receiver.transport, rtcp_pli(self._rtcp_ssrc, layer.ssrc))

    def sender_report(self, ssrc: int) -> tuple[int, int, float] | None:
        """The publisher's latest SR for a media SSRC: (ntp, rtp, monotonic arrival)."""
        layer = self._by_ssrc.get(ssrc)
        if layer is None or layer.sr is None or layer.ssrc != ssrc:
            return None
        return layer.sr[0], layer.sr[1], layer.sr_time

    # --- packet path (called by aiortc's DTLS transport through rtphooks) ----------------

    def _learn_pt(self, payload_type: int) -> CodecInfo | None:
        if self._receiver is None:
            return None
        codecs = rtphooks.receiver_codecs(self._receiver)
        info = codecs.get(payload_type)
        if info is None:
            return None
        self._pt[payload_type] = info
        if not info.is_rtx and self.codec is None:
            self.codec = info
            self._is_vp8 = info.mime == "video/vp8"
            self._is_h264 = info.mime == "video/h264"
            for layer in self.layers:
                if layer.stats is not None:
                    layer.stats.clock_rate = info.clock_rate
        return info

    def _learn_ssrc(self, packet: RtpPacket) -> Layer | None:
        layers = self.layers
        rid = packet.extensions.rtp_stream_id
        layer: Layer | None
        if rid:
            layer = self._by_rid.get(rid)
            if layer is None and len(layers) == 1 and not layers[0].rid:
                # simulcast the signalling did not tell us about: forward the first rid seen
                layer = layers[0]
                layer.rid = rid
                self._by_rid[rid] = layer
                self._log.warning(
                    "simulcast rid not announced at attach; forwarding only it",
                    rid=rid,
                    ssrc=packet.ssrc,
                )
        elif len(layers) == 1:
            layer = layers[0]
        else:
            return None  # simulcast packet without rid from an unknown SSRC: wait for one
        if layer is None:
            return None
        old = layer.ssrc
        if old is not None:
            self._by_ssrc.pop(old, None)
        if old is not None:
            self._log.info("layer stream changed", rid=layer.rid, ssrc=packet.ssrc, old_ssrc=old)
        layer.ssrc = packet.ssrc
        layer.stats = ReceiveStats(self.clock_rate)
        layer.nacks = NackTracker()
        layer.sr = None
        self._by_ssrc[packet.ssrc] = layer
        return layer

    def _learn_rtx_ssrc(self, packet: RtpPacket) -> Layer | None:
        layer: Layer | None = None
        assert self._receiver is not None
        media_ssrc = rtphooks.receiver_rtx_ssrcs(self._receiver).get(packet.ssrc)
        if media_ssrc is not None:
            layer = self._by_ssrc.get(media_ssrc)
        if layer is None:
            rid = packet.extensions.repaired_rtp_stream_id
            if rid:
                layer = self._by_rid.get(rid)
            elif len(self.layers) == 1:
                layer = self.layers[0]
        if layer is not None:
            self._by_rtx_ssrc[packet.ssrc] = layer
        return layer

    async def handle_rtp(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        # aiortc awaits this handler; nothing in it awaits (see the module docstring)
        info = self._pt.get(packet.payload_type)
        if info is None:
            info = self._learn_pt(packet.payload_type)
            if info is None:
                return
        retransmitted = False
        if info.is_rtx:
            payload = packet.payload
            if len(payload) < 2:
                return  # padding / probing on the RTX stream
            layer = self._by_rtx_ssrc.get(packet.ssrc) or self._learn_rtx_ssrc(packet)
            if layer is None or layer.ssrc is None:
                return
            # unwrap in place: aiortc is done with this object
            packet.sequence_number = (payload[0] << 8) | payload[1]
            packet.payload = payload[2:]
            packet.payload_type = info.apt
            packet.ssrc = layer.ssrc
            retransmitted = True
        else:
            layer = self._by_ssrc.get(packet.ssrc) or self._learn_ssrc(packet)
            if layer is None:
                return
        now = time.monotonic()
        payload = packet.payload
        size = len(payload)
        stats = layer.stats
        assert stats is not None
        prev_hi = stats.hi_ext
        started = stats.started
        ext = stats.update(packet.sequence_number, packet.timestamp, now, retransmitted)
        layer.packets += 1
        layer.bytes += size
        self.packets_in += 1
        self.bytes_in += size
        counters = self.counters
        if counters is not None:
            counters.packets_in += 1
            counters.bytes_in += size
        if not layer.active:
            layer.active = True
            layer.last_packet = now
            if self._started_at is None:
                self._started_at = now
            self._layers_changed()
        layer.last_packet = now

        nack = self.nack and started
        lost: list[int] | None = None
        if nack:
            if retransmitted:
                # libwebrtc also resends packets we have (RTX as bandwidth probes): forward
                # only the ones that were missing
                if not layer.nacks.recover(ext):
                    return
            else:
                lost = layer.nacks.on_packet(ext, prev_hi, now)

        audio_level = self.audio_level
        if audio_level is not None:
            level = packet.extensions.audio_level  # RFC 6464: (voice, -dBov)
            if level is not None:
                audio_level.observe(level[1], packet.timestamp, now)

        # the hand-off: one object per track, refilled per packet
        out = self._packet
        out.rtp = packet
        out.n = self._fanout.next_number()
        out.layer = layer.index
        out.arrival = now
        fan_out = True
        if not size:  # padding only: sinks forwarding this stream close the sequence gap
            out.padding = True
            out.keyframe = False
            out.vp8 = None
        else:
            out.padding = False
            keyframe = True
            desc: Vp8Descriptor | None = None
            if self.kind == "video":
                out.abs_send_time = abs_send_time()
                if self._is_vp8:
                    desc = parse_vp8(payload)
                    if desc is None:
                        fan_out = False
                    else:
                        keyframe = desc.keyframe
                        if (
                            keyframe
                            and desc.width
                            and (desc.width, desc.height)
                            != (
                                layer.width,
                                layer.height,
                            )
                        ):
                            layer.width = desc.width
                            layer.height = desc.height
                            self._layers_changed()  # view-size preferences may pick another
                elif self._is_h264:
                    keyframe = h264_begins_keyframe(payload)
                else:
                    keyframe = False
                if keyframe and fan_out:
                    layer.keyframes += 1
            else:
                out.audio_level = packet.extensions.audio_level
            out.keyframe = keyframe
            out.vp8 = desc

        sinks = self._sinks
        if fan_out and sinks:
            self._fanning_out = True
            fanout = self._fanout
            try:
                python = () if out.padding else self._lane_filter.python_sinks(sinks)
                if (
                    not python
                    and not out.padding
                    and self._holds
                    and fanout.splits()
                    and self._can_hold()
                ):
                    self._forward(out, AHEAD)  # to the relays now, here after the burst
                    self._hold(out)
                else:
                    if self._n_held:  # a held packet goes before this one
                        self._release()
                    if out.padding:  # every sink, the lane's too (they leave it to skip)
                        for sink in sinks:
                            sink.forward(out)  # never raises (PacketSink contract)
                    else:
                        for sink in python:
                            sink.forward(out)
                        # the copies the sinks added and the lane's, in one native call
                        self._forward(out)
                        if counters is not None:  # LiveKit's forward latency
                            counters.forwarded += 1
                            counters.forward_ns += int((time.monotonic() - now) * 1e9)
            finally:
                self._fanning_out = False
            if self._plis_due:
                self._flush_plis()

        # feedback for what this packet showed, after it went out
        if nack:
            nacks = layer.nacks
            if lost:
                self._send_nack(layer, lost)
            if nacks.pending and now - layer.nack_checked >= _NACK_RETRY_INTERVAL:
                layer.nack_checked = now
                again = nacks.due(now, _NACK_RETRY_INTERVAL * 2)
                if again:
                    self._send_nack(layer, again)

    def _forward(self, out: ForwardedPacket, part: int = WHOLE) -> None:
        """``out`` to the fan-out's copies (``part``: ``Fanout.forward``'s), and to the lane
        copies it hands back to Python."""
        level = out.audio_level
        video = self.kind == "video"
        lvl = -1 if level is None else (0x80 if level[0] else 0) | (level[1] & 0x7F)
        fanout = self._fanout
        handed_back = fanout.forward(out, video, lvl, part)
        if handed_back:  # lane copies this packet needs Python for
            for sink in handed_back:
                sink.forward(out)
            rtp = out.rtp
            fanout.send(rtp.payload, rtp.marker, video, out.abs_send_time, lvl)

    # --- bursts: relays first -----------------------------------------------------------
    # A track with copies ahead (relays to other nodes) and local copies sends each packet of
    # a burst (a keyframe: tens of packets at once) to the relays as it is read, and fans the
    # burst out here once it is read (rtphooks.ReceiveBurst). Otherwise the other node gets
    # packet i+1 only after this node's whole fan-out of packet i, and finishes a keyframe
    # later than this node by up to the keyframe's local fan-out time.

    def _can_hold(self) -> bool:
        if self._n_held >= _HOLD_MAX:
            self._release()
        burst = self._burst
        if burst is None and self._receiver is not None:
            burst = self._burst = rtphooks.receive_burst(self._receiver)
        return burst is not None

    def _hold(self, out: ForwardedPacket) -> None:
        held = self._held
        i = self._n_held
        if i == len(held):
            held.append(ForwardedPacket(out.rtp, self._fanout))
        h = held[i]
        h.rtp, h.n, h.layer, h.arrival = out.rtp, out.n, out.layer, out.arrival
        h.keyframe, h.padding, h.vp8 = out.keyframe, out.padding, out.vp8
        h.abs_send_time, h.audio_level = out.abs_send_time, out.audio_level
        self._n_held = i + 1
        if not i:
            assert self._burst is not None
            self._burst.defer(self._release)

    def _release(self) -> None:
        """The held packets to the copies not ahead, in order (also before the lane changes:
        a copy leaving it takes its state back after them, one joining starts after them)."""
        n = self._n_held
        if not n or self._releasing:
            return
        self._releasing = True
        fanning_out, self._fanning_out = self._fanning_out, True
        counters = self.counters
        fanout = self._fanout
        version = fanout.lane_version
        try:
            for i in range(n):
                h = self._held[i]
                if fanout.lane_version != version:  # a copy left the lane: Python decides
                    for sink in self._lane_filter.python_sinks(self._sinks):
                        if sink not in self._ahead:  # (the relays had this packet)
                            sink.forward(h)
                self._forward(h, REST)
                if counters is not None:
                    counters.forwarded += 1
                    counters.forward_ns += int((time.monotonic() - h.arrival) * 1e9)
        finally:
            self._n_held = 0
            self._releasing = False
            self._fanning_out = fanning_out
        if not fanning_out and self._plis_due:
            self._flush_plis()

    def _flush_plis(self) -> None:
        due = self._plis_due
        self._plis_due = []
        for index in due:
            self._send_pli(self.layers[index])

    async def handle_rtcp(self, packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpSrPacket):
            layer = self._by_ssrc.get(packet.ssrc)
            if layer is None:
                return
            now = time.monotonic()
            info = packet.sender_info
            layer.sr = (info.ntp_timestamp, info.rtp_timestamp)
            layer.sr_time = now
            layer.lsr = ntp_to_compact(info.ntp_timestamp)
            layer.lsr_time = now
        elif isinstance(packet, RtcpByePacket):
            changed = False
            for ssrc in packet.sources:
                layer = self._by_ssrc.get(ssrc)
                if layer is not None and layer.active:
                    layer.active = False
                    changed = True
            if changed:
                self._layers_changed()

    def _send_nack(self, layer: Layer, lost: list[int]) -> None:
        if layer.ssrc is None or self._receiver is None:
            return
        if self.counters is not None:
            self.counters.nacks_sent += 1
        rtphooks.send_rtcp_nowait(
            self._receiver.transport, rtcp_nack(self._rtcp_ssrc, layer.ssrc, lost)
        )

    def quality_window(self) -> list[StreamWindow]:
        """Each layer's reception since the previous call (for connection quality); layers
        that are not expected to send (stopped by the publisher) are left out."""
        weight = LOSS_WEIGHT_AUDIO if self.kind == "audio" else LOSS_WEIGHT_VIDEO
        windows: list[StreamWindow] = []
        for layer in self.layers:
            stats = layer.stats
            if stats is None or not stats.started:
                continue
            expected = stats.expected - layer.window_expected
            received = stats.received - layer.window_received
            layer.window_expected = stats.expected
            layer.window_received = stats.received
            if not layer.active and received == 0:
                continue
            lost = max(0, expected - received)
            windows.append(
                StreamWindow(
                    packets=received,
                    loss_percent=100.0 * lost / expected if expected > 0 else 0.0,
                    jitter_ms=1000.0 * stats.jitter / stats.clock_rate,
                    loss_weight=weight,
                )
            )
        return windows

    # --- periodic: receiver reports, REMB, layer activity -------------------------------

    def _report(self) -> bytes | None:
        now = time.monotonic()
        blocks: list[ReportBlock] = []
        ssrcs: list[int] = []
        for layer in self.layers:
            stats = layer.stats
            if layer.ssrc is None or stats is None or not stats.started:
                continue
            dlsr = 0
            if layer.lsr:
                dlsr = int((now - layer.lsr_time) * 65536)
            blocks.append(
                ReportBlock(
                    ssrc=layer.ssrc,
                    fraction_lost=stats.fraction_lost(),
                    packets_lost=stats.lost,
                    highest_seq=stats.hi_ext,
                    jitter=stats.jitter,
                    lsr=layer.lsr,
                    dlsr=dlsr,
                )
            )
            if layer.active:
                ssrcs.append(layer.ssrc)
        if not blocks:
            return None
        data = rtcp_rr(self._rtcp_ssrc, blocks)
        if self.remb_bitrate > 0 and ssrcs:
            data += rtcp_remb(self._rtcp_ssrc, self.remb_bitrate, ssrcs)
        return data

    def _check_activity(self) -> None:
        now = time.monotonic()
        changed = False
        if (
            self._starting
            and self._started_at is not None
            and now - self._started_at >= self.layer_timeout
        ):
            self._starting = False
            changed = True  # layers still missing now count as missing
        for layer in self.layers:
            if layer.active and now - layer.last_packet > self.layer_timeout:
                layer.active = False
                changed = True
        if changed:
            self._layers_changed()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.rtcp_interval * (0.5 + random.random()))
            try:
                self._check_activity()
                data = self._report()
                if data is not None and self._receiver is not None:
                    await rtphooks.send_rtcp(self._receiver.transport, data)
            except asyncio.CancelledError:
                raise
            except Exception:
                self._log.exception("RTCP loop error")
