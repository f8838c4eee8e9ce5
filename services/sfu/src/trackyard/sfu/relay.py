"""Tracks crossing between the nodes of a room that spans nodes.

The link is a WebRTC peer connection between the two nodes (ICE, DTLS-SRTP: safe on any
network between data centres, no shared secret to configure, NAT-tolerant), negotiated in
LiveKit's own signal protocol over the bus. Node B joins the room's part on node A as a hidden
*relay participant* and subscribes to the tracks B's own participants want; each crosses once,
whatever its number of subscribers on B.

- On A the relay participant is an ordinary subscriber: its DownTracks keep the NACK/RTX
  history, send sender reports, forward PLIs to the publisher, switch simulcast layers and
  pause, as for any client.
- On B each relayed track is received by a :class:`RelayedTrack`: an UpTrack (NACKs, PLIs,
  receiver reports, sender reports kept) that B's DownTracks subscribe to like any other source.
  Their layer wishes are made against the origin's layers and sent to A as track settings, so
  only the best layer anyone on B wants crosses (nothing, when no one on B wants the track).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from typing import Any

import structlog
from aiortc import RTCPeerConnection, RTCSessionDescription
from livekit.protocol import models, rtc
from structlog.typing import FilteringBoundLogger

from trackyard.core import ids, keys, messages
from trackyard.core.auth import VideoGrants
from trackyard.core.bus import Bus, BusClosedError, Envelope, Subscription
from trackyard.sfu import sdp as sdpparse
from trackyard.sfu.audiolevel import AudioLevel, AudioLevelSettings
from trackyard.sfu.rtpstats import TrafficCounters
from trackyard.sfu.trackcontract import QUALITY_HIGH, PacketSink
from trackyard.sfu.uptrack import LayerSpec, UpTrack, choose_layer

log = structlog.get_logger(__name__)

RELAY_IDENTITY_PREFIX = "relay:"  # identity of a node's relay participant on another node
SOURCE_TIMEOUT = 10.0  # seconds for a track asked of the origin to arrive in its offer


def relay_identity(node_id: str) -> str:
    return RELAY_IDENTITY_PREFIX + node_id


class RelayedTrack(UpTrack):
    """A track of another node of the room, received over the relay link.

    One stream crosses (the origin's DownTrack switches layers itself), so this is a single
    layer UpTrack; but subscribers choose among the origin's layers, and the best choice is
    what the origin is asked to send."""

    def __init__(
        self,
        info: models.TrackInfo,
        *,
        on_unused: Callable[[RelayedTrack], None],
        counters: TrafficCounters | None,
        on_wanted_quality: Callable[[int | None], None],
        audio: AudioLevelSettings,
        logger: FilteringBoundLogger,
    ) -> None:
        kind = "video" if info.type == models.TrackType.VIDEO else "audio"
        super().__init__(
            kind,
            track_sid=info.sid,
            counters=counters,
            on_wanted_quality=on_wanted_quality,
            audio_level=AudioLevel(audio) if kind == "audio" else None,
            logger=logger,
        )
        self.info = info
        self._origin = [LayerSpec("", la.quality, la.width, la.height) for la in info.layers]
        self._origin.sort(key=lambda spec: spec.quality)
        self._on_unused = on_unused

    def select_layer(self, quality: int | None, width: int = 0, height: int = 0) -> int:
        return choose_layer(self._origin, quality, width, height)

    def quality_of(self, layer: int) -> int | None:
        if layer < 0:
            return None
        if layer < len(self._origin):
            return self._origin[layer].quality
        return QUALITY_HIGH

    def remove_sink(self, sink: PacketSink) -> None:
        super().remove_sink(sink)
        if not self.downtracks and not self.closed:
            self._on_unused(self)


class RelayIn:
    """Node B's link from node A (``origin``) for one room: B's relay participant there.

    ``source(info)`` gives the :class:`RelayedTrack` of one of A's tracks, subscribing across
    when it is not relayed yet; it unsubscribes by itself when its last subscriber leaves."""

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
        self.tracks: dict[str, RelayedTrack] = {}  # track sid -> its relayed source
        self._by_mid: dict[str, RelayedTrack] = {}
        self._asked: dict[str, models.TrackInfo] = {}  # subscribed, not arrived yet
        self._arrived: dict[str, asyncio.Future[RelayedTrack | None]] = {}
        self._joined: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._sub: Subscription | None = None
        self._reader: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        self._closing: set[asyncio.Future[None]] = set()
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

    async def source(self, info: models.TrackInfo) -> RelayedTrack | None:
        """The relayed track (None: the origin did not deliver it in time, or the link is
        gone)."""
        track = self.tracks.get(info.sid)
        if track is not None and not track.closed:
            return track
        if not await self._ensure_joined():
            return None
        waiter = self._arrived.get(info.sid)
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
            self._arrived[info.sid] = waiter
            self._asked[info.sid] = info
            self._send(
                rtc.SignalRequest(
                    subscription=rtc.UpdateSubscription(track_sids=[info.sid], subscribe=True)
                )
            )
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), SOURCE_TIMEOUT)
        except TimeoutError:
            self.log.warning("relayed track did not arrive", track=info.sid)
            if self._arrived.get(info.sid) is waiter:
                del self._arrived[info.sid]
                self._asked.pop(info.sid, None)
                self._unsubscribe(info.sid)
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
            current = self._by_mid.get(section.mid)
            live = section.port != 0 and section.direction in ("sendonly", "sendrecv")
            sid = section.msid_track if live else ""
            if current is not None and current.track_sid != sid:
                self._forget(current)
            info = self._asked.get(sid)
            transceiver = transceivers.get(section.mid)
            if info is None or transceiver is None or sid in self.tracks:
                continue
            track = RelayedTrack(
                info,
                on_unused=self._unused,
                counters=self._counters,
                on_wanted_quality=functools.partial(self._wanted, sid),
                audio=self._audio,
                logger=self.log,
            )
            track.attach(transceiver, mid=section.mid)
            self.tracks[sid] = track
            self._by_mid[section.mid] = track
            del self._asked[sid]
            waiter = self._arrived.pop(sid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(track)
        answer = await self._pc.createAnswer()
        await self._pc.setLocalDescription(answer)
        self._send(
            rtc.SignalRequest(
                answer=rtc.SessionDescription(
                    type="answer", sdp=self._pc.localDescription.sdp, id=offer.id
                )
            )
        )

    # -- subscriptions --------------------------------------------------------------------------

    def _wanted(self, track_sid: str, quality: int | None) -> None:
        settings = rtc.UpdateTrackSettings(track_sids=[track_sid], disabled=quality is None)
        if quality is not None:
            settings.quality = quality  # type: ignore[assignment]  # an enum value
        self._send(rtc.SignalRequest(track_setting=settings))

    def _unused(self, track: RelayedTrack) -> None:
        """Its last subscriber here left: stop the crossing."""
        self._forget(track)
        self._unsubscribe(track.track_sid)

    def _forget(self, track: RelayedTrack) -> None:
        if self.tracks.get(track.track_sid) is track:
            del self.tracks[track.track_sid]
        if track.mid is not None and self._by_mid.get(track.mid) is track:
            del self._by_mid[track.mid]
        task = asyncio.ensure_future(track.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _unsubscribe(self, track_sid: str) -> None:
        self._send(
            rtc.SignalRequest(
                subscription=rtc.UpdateSubscription(track_sids=[track_sid], subscribe=False)
            )
        )

    def _send(self, request: rtc.SignalRequest) -> None:
        env = Envelope(
            kind=messages.SIGNAL, session=self.session_id, data=request.SerializeToString()
        )
        task = asyncio.ensure_future(self._bus.publish(keys.node_channel(self.origin), env))
        task.add_done_callback(_log_failure)

    # -- end ------------------------------------------------------------------------------------

    def track_gone(self, track_sid: str) -> None:
        """The origin's participant unpublished it (or left): drop it here too."""
        track = self.tracks.get(track_sid)
        if track is not None:
            self._forget(track)

    async def close(self, *, tell_origin: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if not self._joined.done():
            self._joined.set_result(False)
        for waiter in self._arrived.values():
            if not waiter.done():
                waiter.set_result(None)
        self._arrived.clear()
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
        for track in list(self.tracks.values()):
            await track.close()
        self.tracks.clear()
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
