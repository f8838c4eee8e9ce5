"""DownTrack: one subscriber's copy of one UpTrack, sent on a send-only transceiver.

For every packet of its source (an ``UpTrack``, seen only through the ``TrackSource`` protocol
of ``trackyard.sfu.trackcontract``; it is that source's ``PacketSink``) the DownTrack asks its
``Forwarder`` whether to forward it (the layer it currently forwards, or the start of a keyframe
on the layer it wants to switch to), and applies the decision: rewrites SSRC, payload type,
sequence number, timestamp (``RtpMunger``) and, for VP8, the picture id fields (``Vp8Munger``),
adds its own header extensions (MID, abs-send-time, audio level with the subscriber's negotiated
ids) and sends it through aiortc's SRTP/ICE: on a plain UDP route it fills its ``Copy`` and adds
it to the source's ``Fanout``, which writes, protects and sends all copies of the packet in one
native call after the fan-out; otherwise (TURN, no native library loaded: the reference path) it
builds and sends the packet itself. Once it forwards one stream steadily it hands its copy and
munger state to the fan-out's lane (C decides its packets from then on, the UpTrack no longer
calls it) and takes them back whenever Python must decide. The subscriber sees one continuous
stream across layer switches and pauses. It keeps a short history of sent packets and answers
NACKs with RTX (or a plain resend when RTX was not negotiated), forwards PLI/FIR to the UpTrack
(throttled there), and sends sender reports derived from the publisher's, so the subscriber can
keep audio and video in sync.

Integration (subscriber peer connection, the server offers)::

    transceiver = sub_pc.addTransceiver(up.kind, direction="sendonly")
    dt = DownTrack(
        up, transceiver,
        stream_id=f"{publisher_sid}|{track_sid}", track_id=track_sid,   # a=msid
        counters=node_counters,                                         # optional
    )
    dt.set_layer_preference(quality=QUALITY_HIGH)      # UpdateTrackSettings: quality,
    dt.set_layer_preference(width=640, height=360)     # or a view size,
    dt.set_layer_preference(disabled=True)             # or paused
    offer = await sub_pc.createOffer(); await sub_pc.setLocalDescription(offer); ...
    ...
    dt.close()                                          # unsubscribe; then stop the transceiver

``logger``: an optional structlog logger bound to the caller's context (room, participant);
the DownTrack binds the track sid, kind and its SSRC.

Create the DownTrack *before* the offer that adds the transceiver is negotiated: it hooks the
transceiver's sender, which aiortc starts once the answer is applied; forwarding begins then,
with a keyframe request. The DownTrack restricts the transceiver's codecs to the UpTrack's codec
(when known) so the subscriber negotiates what the publisher sends.
Counters: ``packets_sent``, ``bytes_sent`` (payload), ``retransmits``, ``nacks_received``,
``plis_received``, ``rtt``, ``fraction_lost`` and ``remb_bitrate`` (the subscriber's feedback),
plus the shared ``TrafficCounters`` if given.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

import structlog
from aiortc import RTCRtpSender

from trackyard.sfu import rtphooks
from trackyard.sfu.connectionquality import LOSS_WEIGHT_AUDIO, LOSS_WEIGHT_VIDEO, StreamWindow
from trackyard.sfu.forwarder import Decision, Forwarder
from trackyard.sfu.rtphooks import (
    AnyRtcpPacket,
    CodecInfo,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    SendParameters,
)
from trackyard.sfu.rtpmunger import RtpMunger, ts_after_pause, ts_diff, ts_on_reference
from trackyard.sfu.rtppacket import (
    ExtensionWriter,
    abs_send_time,
    ntp_to_compact,
    rtcp_bye,
    rtcp_sdes,
    rtcp_sr,
    rtp_header,
    rtx_packet,
)
from trackyard.sfu.rtpstats import TrafficCounters
from trackyard.sfu.trackcontract import QUALITY_OFF, ForwardedPacket, TrackSource
from trackyard.sfu.vp8 import Vp8Munger

if TYPE_CHECKING:
    from aiortc import RTCRtpTransceiver
    from structlog.typing import FilteringBoundLogger

    from trackyard.sfu.fanout import Copy

__all__ = ["DownTrack"]

log: FilteringBoundLogger = structlog.get_logger(__name__)

_SWITCH = Decision.SWITCH
_SKIP = Decision.SKIP
_REQUEST_KEYFRAME = Decision.REQUEST_KEYFRAME

_RTCP_PSFB_PLI = 1
_RTCP_PSFB_FIR = 4
_RTCP_PSFB_APP = 15
_RTCP_RTPFB_NACK = 1


def _history_size(requested: int) -> int:
    size = 1
    while size < requested:
        size <<= 1
    return min(size, 32768)


class DownTrack:
    """One subscriber's copy of an UpTrack; see the module docstring for how to wire it."""

    def __init__(
        self,
        uptrack: TrackSource,
        transceiver: RTCRtpTransceiver,
        *,
        stream_id: str | None = None,
        track_id: str | None = None,
        history_size: int | None = None,
        counters: TrafficCounters | None = None,
        rtcp_interval: float = 1.0,
        ahead: bool = False,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        """``ahead``: this copy feeds another fan-out (a relay to another node), so it is sent
        before the subscribers' copies of each packet: the other node's subscribers then wait
        for the hop only, not for this node's whole fan-out too."""
        self.uptrack = uptrack  # the source (TrackSource); named as before for callers
        self.ahead = ahead
        self.kind = uptrack.kind
        self.transceiver = transceiver
        self.counters = counters
        self._sender: RTCRtpSender = transceiver.sender
        self._video = uptrack.kind == "video"
        if history_size is None:
            history_size = 1024 if self._video else 128
        self._mask = _history_size(history_size) - 1
        n = self._mask + 1
        # sent packets by sequence number, for NACKs: payload, seq, timestamp, pt | marker
        self._hist: list[bytes | None] = [None] * n
        self._hist_seq = [0] * n
        self._hist_ts = [0] * n
        self._hist_pt = [0] * n
        self._hist_rtx = [0.0] * n
        self._hist_at = [0.0] * n  # arrival of the source packet (the lane keeps its own)
        # while the transport has a plain-UDP route: this subscriber's slot in the fan-out
        self._copy: Copy | None = None
        self._copy_own_payload = False
        self._lane_ok = False  # the copy may join the source's native lane
        self._lane = False  # it is in the lane: C decides its packets, munger state is there
        self._watched: object | None = None  # the transport whose state we follow
        # negotiated when aiortc starts the sender
        self._ssrc, self._rtx_ssrc = rtphooks.sender_ssrcs(self._sender)
        self._base_log = logger if logger is not None else log
        self._log = self._base_log.bind(track=uptrack.track_sid, kind=uptrack.kind, ssrc=self._ssrc)
        self._out_codecs: list[CodecInfo] = []
        self._pt_map: dict[int, int] = {}
        self._rtx_pt = -1
        self._rtx_seq = random.randrange(0x8000)
        self._ext = ExtensionWriter({}, None)
        self._cname = ""
        # forwarding state
        self._fwd = Forwarder()
        self._munger = RtpMunger(first_out_seq=random.randrange(0x8000))
        self._vp8 = Vp8Munger()
        self._last_sent = 0.0
        self.desired_layer = 0
        self._quality: int | None = None
        self._width = 0
        self._height = 0
        self._disabled = False
        self._closed = False
        self._errors = 0
        # statistics (the lane counts its own packets: see packets_sent)
        self._packets = 0
        self._bytes = 0
        self.retransmits = 0
        self.nacks_received = 0
        self.plis_received = 0
        self.rtt: float | None = None
        self.fraction_lost = 0
        self.packets_lost = 0
        self.jitter = 0
        self.remb_bitrate: int | None = None
        self._window_sent = 0
        self._sr_sent: dict[int, float] = {}
        self._rtx_min_interval = 0.03

        self.carried: set[str] = set()  # stream ids this m-line has carried
        if stream_id is not None:
            self.carried.add(stream_id)
        if stream_id is not None or track_id is not None:
            rtphooks.set_sender_msid(
                self._sender,
                stream_id if stream_id is not None else uptrack.track_sid,
                track_id if track_id is not None else uptrack.track_sid,
            )
        self._prefer_codec()
        rtphooks.hook_sender(self._sender, self, rtcp_interval=rtcp_interval)
        self._retarget()
        uptrack.add_sink(self, ahead=self.ahead)

    # --- public surface -----------------------------------------------------------------

    @property
    def ssrc(self) -> int:
        return self._ssrc

    @property
    def current_layer(self) -> int:
        """Index (in ``uptrack.layers``) of the layer being forwarded, -1 if none."""
        return self._fwd.current_layer

    @property
    def target_layer(self) -> int:
        return self._fwd.target

    @property
    def switches(self) -> int:
        """Source streams switched to after the first (layer changes, resumes, rebinds)."""
        return self._fwd.switches

    @property
    def packets_sent(self) -> int:
        copy = self._copy
        return self._packets + (copy.sent()[0] if copy is not None else 0)

    @property
    def bytes_sent(self) -> int:
        copy = self._copy
        return self._bytes + (copy.sent()[1] if copy is not None else 0)

    @property
    def last_sent_numbers(self) -> tuple[int, int]:
        """(sequence number, timestamp) of the newest packet sent."""
        if self._lane:
            assert self._copy is not None
            (_, _, last_out_ext, last_out_ts), _, _ = self._copy.lane_state()
            return last_out_ext & 0xFFFF, last_out_ts
        return self._munger.last_out_seq, self._munger.last_out_ts

    @property
    def in_lane(self) -> bool:
        """C decides this copy's packets (its steady state on the native fan-out)."""
        return self._lane

    @property
    def paused(self) -> bool:
        return self._disabled or self._closed

    @property
    def ready(self) -> bool:
        """The sender has been negotiated and started."""
        return self._fwd.ready

    def quality_window(self) -> StreamWindow | None:
        """What the subscriber reported for this copy since the previous call (None while
        nothing is being sent: paused, or not started)."""
        sent = self.packets_sent - self._window_sent
        self._window_sent = self.packets_sent
        if self.paused or not self._fwd.ready or self.current_layer < 0:
            return None
        clock = self.uptrack.clock_rate or 90000
        return StreamWindow(
            packets=sent,
            loss_percent=100.0 * self.fraction_lost / 256,
            rtt_ms=1000.0 * self.rtt if self.rtt is not None else 0.0,
            jitter_ms=1000.0 * self.jitter / clock,
            loss_weight=LOSS_WEIGHT_VIDEO if self._video else LOSS_WEIGHT_AUDIO,
        )

    def set_layer_preference(
        self,
        quality: int | None = None,
        width: int = 0,
        height: int = 0,
        disabled: bool = False,
    ) -> None:
        """What the subscriber wants: a quality (``QUALITY_LOW``/``MEDIUM``/``HIGH``; None:
        the best), or a view size (the smallest layer covering it), or nothing (``disabled``
        or ``QUALITY_OFF``: paused, nothing is sent until re-enabled, then it resumes at a
        keyframe). Values as in LiveKit's ``UpdateTrackSettings``."""
        self._quality = quality
        self._width = width
        self._height = height
        self._disabled = disabled or quality == QUALITY_OFF
        self._retarget()
        self.uptrack.wanted_changed()

    def close(self) -> None:
        """Stop forwarding and detach from the UpTrack (the transceiver is the caller's)."""
        if self._closed:
            return
        self._closed = True
        self._fwd.pause()
        self._lane_leave()
        self.desired_layer = -1
        self.uptrack.remove_sink(self)

    def can_rebind(self, uptrack: TrackSource, stream_id: str) -> bool:
        """Could this closed DownTrack's transceiver carry ``uptrack`` as ``stream_id``?

        Same kind, a codec the subscriber negotiated, and a stream this m-line never carried:
        the LiveKit SDKs raise a track once per (mid, stream id), so an m-line cannot bring
        the same track back a second time.
        """
        if not self._closed or uptrack.kind != self.kind or not self._fwd.ready:
            return False
        if stream_id in self.carried:
            return False
        codec = uptrack.current_codec()
        return codec is not None and any(
            c.mime == codec.mime and c.clock_rate == codec.clock_rate for c in self._out_codecs
        )

    def rebind(self, uptrack: TrackSource, *, stream_id: str, track_id: str) -> None:
        """Reuse this transceiver for another track (subscriptions come and go; m-lines stay).

        The SSRC stays, and the munger carries sequence numbers and timestamps on as across
        any source switch, so the subscriber sees one continuous stream under a new msid.
        """
        if not self.can_rebind(uptrack, stream_id):
            raise RuntimeError("DownTrack.rebind: not closed, or a different kind or codec")
        self.uptrack = uptrack
        self._log = self._base_log.bind(track=uptrack.track_sid, kind=self.kind, ssrc=self._ssrc)
        self._closed = False
        self._fwd.reset()
        self._quality = None
        self._width = self._height = 0
        self._disabled = False
        self._pt_map.clear()
        self._hist = [None] * (self._mask + 1)
        self._hist_at = [0.0] * (self._mask + 1)
        self._update_route()  # the copy comes from the new source's fan-out
        rtphooks.set_sender_msid(self._sender, stream_id, track_id)
        self.carried.add(stream_id)
        uptrack.add_sink(self, ahead=self.ahead)
        self._retarget()
        self.uptrack.request_keyframe(self._fwd.target)

    def _update_route(self) -> None:
        """(Re)build the fan-out copy when the transport's route, SSRC or extension ids
        change; no copy (the Python send path) while there is no plain-UDP route."""
        self._lane_leave()
        old = self._copy
        if old is not None:  # its lane counts carry over
            packets, size = old.sent()
            self._packets += packets
            self._bytes += size
        route = rtphooks.udp_route(self._sender.transport)
        if route is None:
            self._copy = None
            self._lane_ok = False
            return
        fanout = self.uptrack.fanout
        copy = fanout.new_copy()
        copy.set_route(route)
        copy.set_extensions(*self._ext.elements())
        copy.fields.ssrc = self._ssrc
        if fanout.lane:
            copy.set_history(self._mask + 1, old)
        self._copy = copy
        self._copy_own_payload = False
        self._lane_ok = fanout.lane

    def _lane_enter(self, packet: ForwardedPacket, in_pt: int, out_pt: int) -> None:
        copy = self._copy
        assert copy is not None
        rtp = packet.rtp
        copy.enter_lane(
            (rtp.ssrc, packet.layer, in_pt, out_pt),
            self._munger.lane_state(),
            self._vp8.lane_state(),
            self._last_sent,
        )
        # from the next packet on: this one is in the batch already
        self._lane = packet.fanout.lane_add(
            copy, self, packet.n + 1, self.counters, ahead=self.ahead
        )
        self._lane_ok = self._lane  # refused: stays on the Python path

    def _lane_leave(self) -> None:
        """Take the forwarding state back from the lane (Python decides from here)."""
        if not self._lane:
            return
        self._lane = False
        copy = self._copy
        assert copy is not None
        self.uptrack.fanout.lane_remove(copy)
        munger, vp8, self._last_sent = copy.lane_state()
        self._munger.lane_return(*munger)
        self._vp8.lane_return(*vp8)

    # --- layer choice (PacketSink) ------------------------------------------------------

    def layers_changed(self) -> None:
        """The source's received layers changed: the usable layer may be another."""
        self._retarget()

    def source_closed(self) -> None:
        self._closed = True
        self._fwd.pause()
        self._lane_leave()

    def _retarget(self) -> None:
        if self._closed:
            return
        up = self.uptrack
        fwd = self._fwd
        if self._disabled:
            self.desired_layer = -1
            fwd.pause()  # resume needs a keyframe
            self._lane_leave()
            return
        fwd.resume()
        desired = up.select_layer(self._quality, self._width, self._height)
        self.desired_layer = desired
        if fwd.retarget(up.usable_layer(desired)):
            up.request_keyframe(fwd.target)
        if fwd.target != fwd.current:  # a switch is pending: Python watches for its keyframe
            self._lane_leave()

    def _failed(self) -> None:
        self._errors += 1
        if self._errors in (1, 100, 10000):  # rate-limited: this is the packet path
            self._log.exception("forwarding error", errors=self._errors)

    # --- codecs -------------------------------------------------------------------------

    def _prefer_codec(self) -> None:
        codec = self.uptrack.current_codec()
        if codec is None:
            return
        caps = RTCRtpSender.getCapabilities(self.kind)
        if caps is None:
            return
        wanted = [c for c in caps.codecs if c.mimeType.lower() == codec.mime]
        if not wanted:
            return
        rtx = [c for c in caps.codecs if c.mimeType.lower().endswith("/rtx")]
        try:
            self.transceiver.setCodecPreferences(wanted + rtx)
        except Exception:  # preferences are an optimisation only
            self._log.debug("could not set codec preferences", exc_info=True)

    def _map_pt(self, payload_type: int) -> int:
        codec = self.uptrack.codec_for(payload_type)
        out = -1
        if codec is not None:
            for c in self._out_codecs:
                if c.mime == codec.mime and c.clock_rate == codec.clock_rate:
                    out = c.payload_type
                    self._rtx_pt = c.rtx_payload_type
                    break
        if out < 0:
            self._log.warning(
                "the subscriber did not negotiate the codec; not forwarding",
                codec=codec.mime if codec else f"payload type {payload_type}",
            )
        self._pt_map[payload_type] = out
        return out

    # --- SenderHandler (rtphooks) -------------------------------------------------------

    def sender_started(self, params: SendParameters) -> None:
        if params.ssrc != self._ssrc:
            self._log = self._log.bind(ssrc=params.ssrc)
        self._ssrc = params.ssrc
        self._rtx_ssrc = params.rtx_ssrc
        self._out_codecs = params.codecs
        self._ext = ExtensionWriter(params.header_extensions, params.mid)
        self._cname = params.cname or ""
        self._pt_map.clear()
        transport = self._sender.transport
        if self._watched is not transport:
            self._watched = transport
            rtphooks.on_transport_state(transport, self._update_route)
        self._update_route()
        if self._fwd.start() and not self._closed:
            self.uptrack.request_keyframe(self._fwd.target)

    async def handle_rtcp(self, packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpRtpfbPacket):
            if packet.fmt == _RTCP_RTPFB_NACK:
                self.nacks_received += 1
                if self.counters is not None:
                    self.counters.nacks_received += 1
                self._retransmit(packet.lost)
        elif isinstance(packet, RtcpPsfbPacket):
            if packet.fmt in (_RTCP_PSFB_PLI, _RTCP_PSFB_FIR):
                self.plis_received += 1
                if self.counters is not None:
                    self.counters.plis_received += 1
                if self._fwd.current >= 0:
                    self.uptrack.request_keyframe(self._fwd.current)
            elif packet.fmt == _RTCP_PSFB_APP:
                remb = _parse_remb(packet.fci)
                if remb is not None:
                    self.remb_bitrate = remb
        elif isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc != self._ssrc:
                    continue
                self.fraction_lost = report.fraction_lost
                self.packets_lost = report.packets_lost
                self.jitter = report.jitter
                sent = self._sr_sent.get(report.lsr)
                if sent is not None and report.dlsr:
                    rtt = time.monotonic() - sent - report.dlsr / 65536
                    if rtt >= 0:
                        self.rtt = rtt if self.rtt is None else 0.85 * self.rtt + 0.15 * rtt
                        self._rtx_min_interval = min(0.2, max(0.01, self.rtt))

    def rtcp_report(self) -> bytes | None:
        if self._closed or not self._fwd.ready or not self.packets_sent:
            return None
        last_ssrc = self._fwd.last_ssrc
        if last_ssrc is None:
            return None
        sr = self.uptrack.sender_report(last_ssrc)
        if sr is None:
            return None
        sr_ntp, sr_rtp, sr_time = sr
        now = time.monotonic()
        elapsed = now - sr_time
        ntp = (sr_ntp + int(elapsed * 4294967296.0)) & 0xFFFFFFFFFFFFFFFF
        clock = self.uptrack.clock_rate
        rtp_ts = (sr_rtp + round(elapsed * clock) - self._munger.ts_offset) & 0xFFFFFFFF
        sent = self._sr_sent
        sent[ntp_to_compact(ntp)] = now
        if len(sent) > 8:
            del sent[next(iter(sent))]
        data = rtcp_sr(self._ssrc, ntp, rtp_ts, self.packets_sent, self.bytes_sent)
        if self._cname:
            data += rtcp_sdes(self._ssrc, self._cname)
        return data

    def rtcp_bye(self) -> bytes | None:
        return rtcp_bye([self._ssrc]) if self._fwd.ready else None

    # --- packet path (PacketSink.forward, called by the source) -----------------------------

    def _begin_segment(self, packet: ForwardedPacket) -> None:
        rtp = packet.rtp
        munger = self._munger
        fwd = self._fwd
        in_ts = rtp.timestamp
        ssrc = rtp.ssrc
        if not munger.started:
            out_ts = in_ts
        else:
            up = self.uptrack
            clock = up.clock_rate
            last_ts = munger.last_out_ts
            out_ts = ts_after_pause(last_ts, packet.arrival - self._last_sent, clock)
            previous = fwd.last_ssrc
            if ssrc == previous:
                # resuming the same stream: its own timeline is the right one
                out_ts = (in_ts - munger.ts_offset) & 0xFFFFFFFF
            elif previous is not None:
                new_sr = up.sender_report(ssrc)
                ref_sr = up.sender_report(previous)
                if new_sr is not None and ref_sr is not None:
                    on_ref = ts_on_reference(in_ts, new_sr[:2], ref_sr[:2], clock)
                    aligned = (on_ref - munger.ts_offset) & 0xFFFFFFFF
                    if abs(ts_diff(aligned, out_ts)) < clock:  # trust SRs unless way off
                        out_ts = aligned
            if ts_diff(out_ts, last_ts) <= 0:
                out_ts = (last_ts + 1) & 0xFFFFFFFF
        munger.start_segment(rtp.sequence_number, in_ts, out_ts)
        if packet.vp8 is not None:
            self._vp8.switch(packet.vp8)
        fwd.switched(packet.layer, ssrc)

    def forward(self, packet: ForwardedPacket) -> None:
        """Forward one packet of the source, or drop it, as the ``Forwarder`` decides.
        Never raises (errors are counted and logged, rate-limited)."""
        try:
            if self._lane:  # a packet the lane hands back (or padding): decide it here
                self._lane_leave()
            rtp = packet.rtp
            fwd = self._fwd
            # decide()'s first rule (the stream being forwarded goes on) inlined: it holds
            # for nearly every packet, and this runs once per packet per subscriber
            if rtp.ssrc != fwd.ssrc or packet.padding:
                decision = fwd.decide(packet.layer, rtp.ssrc, packet.keyframe, packet.padding)
                if decision != _SWITCH:  # (never FORWARD here: that is the rule inlined)
                    if decision == _SKIP:
                        self._munger.skip(rtp.sequence_number)
                    elif decision == _REQUEST_KEYFRAME:
                        self.uptrack.request_keyframe(packet.layer)
                    return
                self._begin_segment(packet)
            # one function on purpose: this runs once per packet per subscriber
            mapped = self._munger.map(rtp.sequence_number, rtp.timestamp)
            if mapped is None:
                return
            pt = self._pt_map.get(rtp.payload_type)
            if pt is None:
                pt = self._map_pt(rtp.payload_type)
            if pt < 0:
                return
            payload = rtp.payload
            desc = packet.vp8
            if desc is not None:
                payload = self._vp8.rewrite(payload, desc)
            seq, ts = mapped
            i = seq & self._mask
            self._hist[i] = payload
            self._hist_seq[i] = seq
            self._hist_ts[i] = ts
            self._hist_pt[i] = pt | 0x80 if rtp.marker else pt
            self._hist_rtx[i] = 0.0
            self._hist_at[i] = packet.arrival
            self._last_sent = packet.arrival
            size = len(payload)
            self._packets += 1
            self._bytes += size
            counters = self.counters
            if counters is not None:
                counters.packets_out += 1
                counters.bytes_out += size
            copy = self._copy
            if copy is not None:  # the source's fan-out sends it with the other copies
                f = copy.fields
                f.seq = seq
                f.ts = ts
                f.pt = pt
                if payload is not rtp.payload:  # rewritten for this subscriber (VP8 ids)
                    copy.set_payload(payload)
                    self._copy_own_payload = True
                elif self._copy_own_payload:
                    copy.set_payload(None)
                    self._copy_own_payload = False
                packet.fanout.add(copy)
                if self._lane_ok and fwd.current == fwd.target:  # steady: C takes it from here
                    self._lane_enter(packet, rtp.payload_type, pt)
            else:
                if self._video:
                    ext = self._ext.video(packet.abs_send_time)
                else:
                    ext = self._ext.audio(packet.audio_level)
                header = rtp_header(pt, rtp.marker, seq, ts, self._ssrc, ext)
                rtphooks.send_rtp_nowait(self._sender.transport, header + payload)
        except Exception:
            self._failed()

    def _retransmit(self, lost: list[int]) -> None:
        now = time.monotonic()
        transport = self._sender.transport
        copy = self._copy
        for seq in lost:
            i = seq & self._mask
            payload = self._hist[i]
            if payload is not None and self._hist_seq[i] != seq:
                payload = None
            laned = copy.sent_packet(seq) if copy is not None else None
            if laned is not None and (payload is None or laned[0] > self._hist_at[i]):
                _, payload, ts, ptm = laned  # the lane sent it (more recently)
            elif payload is not None:
                ts, ptm = self._hist_ts[i], self._hist_pt[i]
            else:
                continue
            if now - self._hist_rtx[i] < self._rtx_min_interval:
                continue
            self._hist_rtx[i] = now
            ext = self._ext.video(abs_send_time()) if self._video else self._ext.audio(None)
            header = rtp_header(ptm & 0x7F, ptm >> 7, seq, ts, self._ssrc, ext)
            data = header + payload
            if self._rtx_pt >= 0:
                out = rtx_packet(data, len(header), self._rtx_pt, self._rtx_seq, self._rtx_ssrc)
                self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            else:
                out = data
            self.retransmits += 1
            if self.counters is not None:
                self.counters.retransmits += 1
                self.counters.retransmit_bytes += len(payload)
            rtphooks.send_rtp_nowait(transport, out)


def _parse_remb(fci: bytes) -> int | None:
    if len(fci) < 8 or fci[:4] != b"REMB":
        return None
    exp = fci[5] >> 2
    mantissa = ((fci[5] & 0x03) << 16) | (fci[6] << 8) | fci[7]
    return mantissa << exp
