"""Tracks crossing between the nodes of a room that spans nodes.

The link is a WebRTC peer connection between the two nodes (ICE, DTLS-SRTP: safe on any
network between data centres, no shared secret to configure, NAT-tolerant), negotiated in
LiveKit's own signal protocol over the bus. Node B joins the room's part on node A as a hidden
*relay participant* and subscribes to the tracks B's own participants want; each crosses once,
whatever its number of subscribers on B.

- On A the relay participant is an ordinary subscriber: its DownTracks keep the NACK/RTX
  history, send sender reports, forward PLIs to the publisher, switch simulcast layers and
  pause, as for any client.
- On B a relayed track is a :class:`RelayedSource`, the TrackSource B's DownTracks subscribe
  to, with the origin's simulcast layers. Each layer some subscriber on B wants crosses as its
  own stream (its alias ``<track sid>~<quality>`` pins A's DownTrack to that layer), received
  by a :class:`RelayedLayer` (an UpTrack: NACKs, PLIs, receiver reports, sender reports
  kept); layers no one on B wants are paused on A, so only wanted layers cross, once each.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from aiortc import RTCPeerConnection, RTCSessionDescription
from livekit.protocol import models, rtc

from trackyard.core import ids, keys, messages
from trackyard.core.auth import VideoGrants
from trackyard.core.bus import Bus, BusClosedError, Envelope, Subscription
from trackyard.sfu import sdp as sdpparse
from trackyard.sfu.audiolevel import AudioLevel, AudioLevelSettings
from trackyard.sfu.fanout import Fanout, LaneFilter, make_fanout
from trackyard.sfu.rtphooks import CodecInfo
from trackyard.sfu.rtpstats import TrafficCounters
from trackyard.sfu.trackcontract import ForwardedPacket, PacketSink, with_sink
from trackyard.sfu.uptrack import RING_AUDIO, RING_VIDEO, LayerSpec, UpTrack, choose_layer

log = structlog.get_logger(__name__)

SOURCE_TIMEOUT = 10.0  # seconds for a track asked of the origin to arrive in its offer


def relay_identity(node_id: str) -> str:
    return ids.RELAY_IDENTITY_PREFIX + node_id


LAYER_MARK = "~"  # "<track sid>~<quality>": one simulcast layer of a track, pinned


def layer_alias(track_sid: str, quality: int | None) -> str:
    """The track id under which one layer of a track crosses (the track's own sid for a
    single-stream track)."""
    return track_sid if quality is None else f"{track_sid}{LAYER_MARK}{quality}"


def parse_alias(alias: str) -> tuple[str, int | None]:
    """``(track sid, quality)`` of a crossing stream's track id (quality None: the track)."""
    sid, mark, quality = alias.partition(LAYER_MARK)
    return (sid, int(quality)) if mark and quality.isdigit() else (alias, None)


class RelayedLayer(UpTrack):
    """One stream crossing from the origin: a layer of a simulcast track, or the track."""


class _Tap:
    """The sink of one crossing stream: hands its packets to the relayed source's sinks as
    packets of the origin's layer ``layer``."""

    __slots__ = ("_layer", "_source")

    def __init__(self, source: RelayedSource, layer: int) -> None:
        self._source = source
        self._layer = layer

    @property
    def desired_layer(self) -> int:
        return 0  # the origin sends this stream only while it is wanted

    def forward(self, packet: ForwardedPacket) -> None:
        packet.layer = self._layer
        source = self._source
        sinks = source.downtracks
        # lane copies get the packet from the stream's fan-out call (the source's fan-out)
        for sink in sinks if packet.padding else source.lane_filter.python_sinks(sinks):
            sink.forward(packet)

    def layers_changed(self) -> None:
        self._source.layers_changed()

    def source_closed(self) -> None:
        return None  # the relayed source closes its sinks itself


class LayerLink(Protocol):
    """How a relayed source asks its origin for streams (the relay link)."""

    def subscribe(self, alias: str) -> None: ...
    def unsubscribe(self, alias: str) -> None: ...
    def settings(self, alias: str, quality: int | None, *, enabled: bool) -> None: ...


class RelayedSource:
    """A track of another node of the room, as B's DownTracks see it (a ``TrackSource``).

    Its layers are the origin's; each layer some subscriber here wants (or still forwards
    while its wanted one starts) crosses as its own stream, pinned to that layer on the
    origin, and the others stop (paused there): only wanted layers cross, once each."""

    def __init__(
        self,
        info: models.TrackInfo,
        link: LayerLink,
        *,
        on_unused: Callable[[RelayedSource], None],
    ) -> None:
        self.info = info
        self.kind = "video" if info.type == models.TrackType.VIDEO else "audio"
        self.track_sid = info.sid
        origin = sorted(info.layers, key=lambda la: la.quality) if self.kind == "video" else []
        self._origin = [LayerSpec("", la.quality, la.width, la.height) for la in origin]
        self.simulcast = len(self._origin) > 1
        self._link = link
        self._on_unused = on_unused
        # one fan-out for every crossing stream of the track: a DownTrack's copy stays in it
        # (and in its lane) across layer switches
        self._fanout = make_fanout(
            lane=True, ring=RING_VIDEO if self.kind == "video" else RING_AUDIO
        )
        self.lane_filter = LaneFilter(self._fanout)
        self._sinks: tuple[PacketSink, ...] = ()
        self.streams: dict[int, RelayedLayer] = {}  # origin layer -> its crossing stream
        self.asked: dict[int, bool] = {}  # origin layer -> subscribed and not paused
        self._arrived = asyncio.get_running_loop().create_future()
        self._closed = False

    # -- streams --------------------------------------------------------------------------------

    def alias(self, layer: int) -> str:
        return layer_alias(self.track_sid, self._origin[layer].quality if self.simulcast else None)

    def layer_of(self, quality: int | None) -> int | None:
        if quality is None:
            return None if self.simulcast else 0
        for i, spec in enumerate(self._origin):
            if spec.quality == quality:
                return i
        return None

    def start(self) -> None:
        """Ask for the layer a new subscriber gets by default (the top one)."""
        if not self.asked:
            self._ask(len(self._origin) - 1 if self.simulcast else 0)

    async def first_stream(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(self._arrived), timeout)
        except TimeoutError:
            return False
        return not self._closed

    def stream_arrived(self, layer: int, stream: RelayedLayer) -> None:
        old = self.streams.get(layer)
        if old is not None:
            self._drop_stream(old)
        self.streams[layer] = stream
        stream.add_sink(_Tap(self, layer))
        if not self._arrived.done():
            self._arrived.set_result(None)
        self.layers_changed()

    def stream_gone(self, layer: int) -> None:
        stream = self.streams.pop(layer, None)
        if stream is not None:
            self._drop_stream(stream)
            self.layers_changed()

    def _drop_stream(self, stream: RelayedLayer) -> None:
        task = asyncio.ensure_future(stream.close())
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    def _ask(self, layer: int) -> None:
        alias = self.alias(layer)
        if layer not in self.asked:
            self._link.subscribe(alias)
        elif not self.asked[layer]:
            self._link.settings(alias, self._quality(layer), enabled=True)
        self.asked[layer] = True

    def _quality(self, layer: int) -> int | None:
        return self._origin[layer].quality if self.simulcast else None

    def _update(self) -> None:
        """Make the crossing streams the ones needed: every layer a sink desires, and the
        one each such sink forwards meanwhile (until its own has started)."""
        if self._closed or not self._sinks:  # no subscriber yet (or none left: unsubscribed)
            return
        desired = {s.desired_layer for s in self._sinks if s.desired_layer >= 0}
        needed = desired | {self.usable_layer(d) for d in desired}
        if not self.simulcast:
            needed = {0} if needed else set()
        for layer in sorted(needed):
            self._ask(layer)
        for layer, on in list(self.asked.items()):
            if on and layer not in needed:
                self._link.settings(self.alias(layer), self._quality(layer), enabled=False)
                self.asked[layer] = False

    # -- TrackSource ------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def downtracks(self) -> tuple[PacketSink, ...]:
        return self._sinks

    @property
    def fanout(self) -> Fanout:
        return self._fanout

    def _any_stream(self) -> RelayedLayer | None:
        return next(iter(self.streams.values()), None)

    @property
    def clock_rate(self) -> int:
        stream = self._any_stream()
        if stream is not None:
            return stream.clock_rate
        return 90000 if self.kind == "video" else 48000

    def current_codec(self) -> CodecInfo | None:
        stream = self._any_stream()
        return None if stream is None else stream.current_codec()

    def codec_for(self, payload_type: int) -> CodecInfo | None:
        stream = self._any_stream()
        return None if stream is None else stream.codec_for(payload_type)

    def select_layer(self, quality: int | None, width: int = 0, height: int = 0) -> int:
        return choose_layer(self._origin, quality, width, height) if self.simulcast else 0

    def usable_layer(self, desired: int) -> int:
        """``desired`` if its stream is flowing, else the best flowing one below it, else the
        lowest above it; ``desired`` itself when nothing flows yet."""
        if not self.simulcast:
            return 0
        flowing = {i for i, s in self.streams.items() if s.layers and s.layers[0].active}
        below = [i for i in flowing if i <= desired]
        if below:
            return max(below)
        above = [i for i in flowing if i > desired]
        return min(above) if above else desired

    def request_keyframe(self, layer: int) -> None:
        stream = self.streams.get(layer)
        if stream is not None:
            stream.request_keyframe(0)

    def sender_report(self, ssrc: int) -> tuple[int, int, float] | None:
        for stream in self.streams.values():
            if any(layer.ssrc == ssrc for layer in stream.layers):
                return stream.sender_report(ssrc)
        return None

    def add_sink(self, sink: PacketSink, *, ahead: bool = False) -> None:
        if self._closed:
            sink.source_closed()
            return
        self._sinks = with_sink(self._sinks, sink, ahead)

    def remove_sink(self, sink: PacketSink) -> None:
        self._sinks = tuple(s for s in self._sinks if s is not sink)
        if not self._sinks and not self._closed:
            self._on_unused(self)
        else:
            self._update()

    def wanted_changed(self) -> None:
        self._update()

    def layers_changed(self) -> None:
        for sink in self._sinks:
            sink.layers_changed()
        self._update()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._arrived.done():
            self._arrived.set_result(None)
        for sink in self._sinks:
            sink.source_closed()
        self._sinks = ()
        for stream in list(self.streams.values()):
            await stream.close()
        self.streams.clear()


_closing: set[asyncio.Future[None]] = set()  # streams closing in the background


class RelayIn:
    """Node B's link from node A (``origin``) for one room: B's relay participant there.

    ``source(info)`` gives the :class:`RelayedSource` of one of A's tracks, subscribing across
    when it is not relayed yet; it unsubscribes by itself when its last subscriber leaves.
    It is the sources' :class:`LayerLink`."""

    def __init__(
        self,
        room: str,
        origin: str,
        *,
        node_id: str,
        bus: Bus,
        make_peer_connection: Callable[[], RTCPeerConnection],
        counters: TrafficCounters,
        audio: AudioLevelSettings,
        join_timeout: float,
        on_closed: Callable[[RelayIn], None],
    ) -> None:
        self.room = room
        self.origin = origin
        self._node_id = node_id
        self._bus = bus
        self._pc = make_peer_connection()
        self._counters = counters
        self._audio = audio
        self._join_timeout = join_timeout
        self._on_closed = on_closed
        self.session_id = ids.new_id(ids.SESSION)
        self.sources: dict[str, RelayedSource] = {}  # track sid -> its relayed source
        self._by_mid: dict[str, tuple[RelayedSource, int]] = {}  # mid -> (source, layer)
        self._joined: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._sub: Subscription | None = None
        self._reader: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        self.closed = False
        self.log = log.bind(room=room, origin=origin, relay_session=self.session_id)

    # -- set-up -------------------------------------------------------------------------------

    async def _ensure_joined(self) -> bool:
        async with self._start_lock:
            if self._sub is None and not self.closed:
                self._sub = self._bus.subscribe(keys.session_channel(self.session_id))
                self._reader = asyncio.create_task(self._read(self._sub))
                start = messages.SessionStart(
                    session_id=self.session_id,
                    room=self.room,
                    identity=relay_identity(self._node_id),
                    grants=VideoGrants(
                        room_join=True,
                        room=self.room,
                        hidden=True,
                        can_publish=False,
                        can_publish_data=False,
                        can_subscribe=True,
                    ),
                    auto_subscribe=False,
                    relay_node=self._node_id,
                )
                await self._bus.publish(
                    keys.node_channel(self.origin),
                    Envelope(
                        kind=messages.JOIN,
                        session=self.session_id,
                        data=start.model_dump_json().encode(),
                    ),
                )
                self.log.info("relay link opening")
        try:
            return await asyncio.wait_for(asyncio.shield(self._joined), self._join_timeout)
        except TimeoutError:
            self.log.warning("relay link: origin did not answer the join in time")
            await self.close()
            return False

    async def source(self, info: models.TrackInfo) -> RelayedSource | None:
        """The relayed track, once its first stream crossed (None: the origin did not
        deliver it in time, or the link is gone)."""
        if not await self._ensure_joined():
            return None
        source = self.sources.get(info.sid)
        if source is None or source.closed:
            source = RelayedSource(info, self, on_unused=self._unused)
            self.sources[info.sid] = source
            source.start()
        if await source.first_stream(SOURCE_TIMEOUT):
            return source
        self.log.warning("relayed track did not arrive", track=info.sid)
        if self.sources.get(info.sid) is source:
            self._unused(source)
        return None

    # -- the origin's messages ------------------------------------------------------------------

    async def _read(self, sub: Subscription) -> None:
        try:
            async for env in sub:
                if env.kind == messages.CLOSE:
                    self.log.info("relay link closed by origin")
                    break
                if env.kind != messages.SIGNAL:
                    continue
                try:
                    await self._handle(rtc.SignalResponse.FromString(env.data))
                except Exception:
                    self.log.exception("relay link: cannot handle origin message")
        except BusClosedError:
            pass
        if not self.closed:
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.close()))

    async def _handle(self, response: rtc.SignalResponse) -> None:
        which = response.WhichOneof("message")
        if which == "join":
            if not self._joined.done():
                self._joined.set_result(True)
        elif which == "offer":
            await self._on_offer(response.offer)
        elif which == "leave":
            self.log.info("relay link: origin sent leave")
            await self.close()

    async def _on_offer(self, offer: rtc.SessionDescription) -> None:
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        # no await until the new m-lines are bound: their first packets must reach the track
        transceivers = {t.mid: t for t in self._pc.getTransceivers() if t.mid}
        for section in sdpparse.parse_media_sections(offer.sdp):
            if section.kind not in ("audio", "video"):
                continue
            live = section.port != 0 and section.direction in ("sendonly", "sendrecv")
            sid, quality = parse_alias(section.msid_track) if live else ("", None)
            source = self.sources.get(sid)
            layer = source.layer_of(quality) if source is not None else None
            current = self._by_mid.get(section.mid)
            wanted = (source, layer) if source is not None and layer is not None else None
            if current is not None and current != wanted:
                del self._by_mid[section.mid]
                current[0].stream_gone(current[1])
            transceiver = transceivers.get(section.mid)
            if wanted is None or transceiver is None or current == wanted:
                continue
            assert source is not None and layer is not None
            stream = RelayedLayer(
                source.kind,
                track_sid=sid,
                counters=self._counters,
                audio_level=AudioLevel(self._audio) if source.kind == "audio" else None,
                logger=self.log,
                fanout=source.fanout,
            )
            stream.attach(transceiver, mid=section.mid)
            self._by_mid[section.mid] = (source, layer)
            source.stream_arrived(layer, stream)
        answer = await self._pc.createAnswer()
        await self._pc.setLocalDescription(answer)
        self._send(
            rtc.SignalRequest(
                answer=rtc.SessionDescription(
                    type="answer", sdp=self._pc.localDescription.sdp, id=offer.id
                )
            )
        )

    # -- LayerLink: what the sources ask of the origin --------------------------------------------

    def subscribe(self, alias: str) -> None:
        self._send(
            rtc.SignalRequest(
                subscription=rtc.UpdateSubscription(track_sids=[alias], subscribe=True)
            )
        )

    def unsubscribe(self, alias: str) -> None:
        self._send(
            rtc.SignalRequest(
                subscription=rtc.UpdateSubscription(track_sids=[alias], subscribe=False)
            )
        )

    def settings(self, alias: str, quality: int | None, *, enabled: bool) -> None:
        settings = rtc.UpdateTrackSettings(track_sids=[alias], disabled=not enabled)
        if quality is not None:
            settings.quality = quality  # type: ignore[assignment]  # an enum value
        self._send(rtc.SignalRequest(track_setting=settings))

    def _unused(self, source: RelayedSource) -> None:
        """Its last subscriber here left (or it never came): stop the crossing."""
        if self.sources.get(source.track_sid) is source:
            del self.sources[source.track_sid]
        for layer in source.asked:
            self.unsubscribe(source.alias(layer))
        self._forget(source)

    def _forget(self, source: RelayedSource) -> None:
        for mid, (owner, _) in list(self._by_mid.items()):
            if owner is source:
                del self._by_mid[mid]
        task = asyncio.ensure_future(source.close())
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    def _send(self, request: rtc.SignalRequest) -> None:
        env = Envelope(
            kind=messages.SIGNAL, session=self.session_id, data=request.SerializeToString()
        )
        task = asyncio.ensure_future(self._bus.publish(keys.node_channel(self.origin), env))
        task.add_done_callback(_log_failure)

    # -- end ------------------------------------------------------------------------------------

    def track_gone(self, track_sid: str) -> None:
        """The origin's participant unpublished it (or left): drop it here too."""
        source = self.sources.pop(track_sid, None)
        if source is not None:
            self._forget(source)

    async def close(self, *, tell_origin: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if not self._joined.done():
            self._joined.set_result(False)
        if tell_origin:
            with contextlib.suppress(Exception):
                leave = rtc.SignalRequest(leave=rtc.LeaveRequest())
                await self._bus.publish(
                    keys.node_channel(self.origin),
                    Envelope(
                        kind=messages.SIGNAL,
                        session=self.session_id,
                        data=leave.SerializeToString(),
                    ),
                )
        for source in list(self.sources.values()):
            await source.close()
        self.sources.clear()
        self._by_mid.clear()
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.close()
        with contextlib.suppress(Exception):
            await self._bus.delete(keys.session_channel(self.session_id))
        await self._pc.close()
        self.log.info("relay link closed")
        self._on_closed(self)


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("relay link: cannot reach origin", error=str(task.exception()))
