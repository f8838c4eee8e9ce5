"""A participant's publisher side: its publisher connection, the tracks it announced
(``add_track``) and those whose media arrived (UpTracks), and which layers anyone wants."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from livekit.protocol import models, rtc
from structlog.typing import FilteringBoundLogger

from trackyard.core import ids, mime, responses
from trackyard.sfu import rtphooks, sdpcheck
from trackyard.sfu import sdp as sdpparse
from trackyard.sfu.audiolevel import AudioLevel, AudioLevelSettings
from trackyard.sfu.rtpstats import TrafficCounters
from trackyard.sfu.uptrack import LayerSpec, UpTrack

_RIDS = {
    models.VideoQuality.LOW: "q",
    models.VideoQuality.MEDIUM: "h",
    models.VideoQuality.HIGH: "f",
}


_NOT_MEDIA_CODECS = {"rtx", "red", "ulpfec", "flexfec-03"}  # never a track's primary codec

# The publisher's SDK drops a subscribed_quality_update for a track it has not registered yet
# (it registers after our answer is applied), so the first updates of a new track are held
# this long and only the latest is sent (LiveKit holds its first dynacast update too).
QUALITY_HOLD = 2.0


@dataclass(frozen=True)
class PublisherEvents:
    """What the publisher side reports to its participant."""

    published: Callable[[list[models.TrackInfo]], None]  # media of announced tracks arrived
    unpublished: Callable[[models.TrackInfo], Coroutine[Any, Any, None]]
    changed: Callable[[], None]  # a track's info changed (muted)
    data: Callable[[bytes, str], None]  # a data packet on the channel with that label
    negotiation_failed: Callable[[str, str], Coroutine[Any, Any, None]]


def may_publish_source(permission: models.ParticipantPermission, source: int) -> bool:
    allowed = permission.can_publish_sources
    return permission.can_publish and (not allowed or source in allowed)


class Publisher:
    def __init__(
        self,
        pc: RTCPeerConnection,
        *,
        send: Callable[[rtc.SignalResponse], None],
        events: PublisherEvents,
        counters: TrafficCounters,
        audio: AudioLevelSettings,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
        log: FilteringBoundLogger,
    ) -> None:
        self.pc = pc
        self._send = send
        self._events = events
        self._counters = counters
        self._audio = audio
        self._spawn = spawn
        self.log = log
        self.tracks: dict[str, models.TrackInfo] = {}  # track sid -> info
        self.pending_tracks: dict[str, models.TrackInfo] = {}  # cid -> info awaiting an offer
        self.uptracks: dict[str, UpTrack] = {}  # published track sid -> its media
        self.channels: dict[str, RTCDataChannel] = {}
        self._quality_held: dict[str, list[int | None]] = {}  # track sid -> held updates
        self._quality_sent: dict[str, int | None] = {}  # track sid -> last quality sent
        pc.on("datachannel", self._on_datachannel)

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        self.channels[channel.label] = channel

        @channel.on("message")
        def _on_message(message: bytes | str) -> None:
            if isinstance(message, str):
                message = message.encode()
            self._events.data(message, channel.label)

    # -- announcing ---------------------------------------------------------------------------

    def add_track(self, req: rtc.AddTrackRequest, permission: models.ParticipantPermission) -> None:
        refusal = self._refusal(req, permission)
        if refusal:
            self.log.info("add_track refused", cid=req.cid, reason=refusal)
            self._send(
                responses.request_response(rtc.RequestResponse.NOT_ALLOWED, refusal, add_track=req)
            )
            return
        info = models.TrackInfo(
            sid=req.sid or ids.new_id(ids.TRACK),
            type=req.type,
            name=req.name,
            muted=req.muted,
            width=req.width,
            height=req.height,
            simulcast=len(req.layers) > 1,
            disable_dtx=req.disable_dtx,
            source=req.source,
            layers=req.layers,
            stereo=req.stereo,
            disable_red=req.disable_red,
            encryption=req.encryption,
            stream=req.stream,
        )
        kind = "video" if req.type == models.TrackType.VIDEO else "audio"
        for codec in req.simulcast_codecs:
            info.codecs.add(
                mime_type=mime.canonical(codec.codec, kind), cid=codec.cid, layers=codec.layers
            )
        self.pending_tracks[req.cid] = info
        self._send(responses.track_published(req.cid, info))

    def _refusal(self, req: rtc.AddTrackRequest, permission: models.ParticipantPermission) -> str:
        if not permission.can_publish:
            return "not allowed to publish: token lacks canPublish"
        if not may_publish_source(permission, req.source):
            name = models.TrackSource.Name(req.source)
            return f"not allowed to publish source {name}: not in canPublishSources"
        if req.cid in self.pending_tracks:
            return f"track {req.cid} is already being published"
        return ""

    def set_muted(self, track_sid: str, muted: bool) -> models.TrackInfo | None:
        info = self.tracks.get(track_sid)
        if info is None:
            pending = [i for i in self.pending_tracks.values() if i.sid == track_sid]
            if pending:
                pending[0].muted = muted  # published muted once its media arrives
                return pending[0]
            return None
        if info.muted != muted:
            info.muted = muted
            self._events.changed()
        return info

    def revoke(self, permission: models.ParticipantPermission) -> None:
        """A narrowed permission takes effect at once (as in LiveKit): tracks of sources no
        longer allowed are unpublished (the client is told with ``track_unpublished``)."""
        for sid, info in list(self.tracks.items()):
            if not may_publish_source(permission, info.source):
                self.log.info("permission revoked: unpublishing", track=sid)
                self._send(responses.track_unpublished(sid))
                self._spawn(self.unpublish(sid))
        for cid, info in list(self.pending_tracks.items()):
            if not may_publish_source(permission, info.source):
                del self.pending_tracks[cid]

    # -- negotiation --------------------------------------------------------------------------

    async def offer(self, offer: rtc.SessionDescription) -> None:
        """The client (re)negotiates its publisher connection."""
        problem = sdpcheck.problem(offer.sdp, offer.type or "offer")
        if problem or self.pc.signalingState == "closed":
            await self._events.negotiation_failed("offer", problem or "publisher connection closed")
            return
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
            self._follow_ice_restart(offer.sdp)
            # no await between here and attach: packets of a new m-line must reach its UpTrack
            self._bind_media(offer.sdp)
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
        except Exception as exc:  # what the checks above did not foresee
            await self._events.negotiation_failed("offer", f"{type(exc).__name__}: {exc}")
            return
        # aiortc drops a=rid/a=simulcast from answers; without them the client sends one layer
        sdp_text = rtphooks.simulcast_answer(self.pc.localDescription.sdp, offer.sdp)
        self._send(responses.answer(sdp_text, offer.id))

    def _follow_ice_restart(self, offer_sdp: str) -> None:
        """An offer with new ICE credentials is the SDK's ICE restart (every browser SDK
        resume sends one): aiortc would ignore it, so the connection takes them itself, and
        the client can move to a new path when its old one died (network change)."""
        credentials = sdpparse.ice_credentials(offer_sdp)
        if credentials is not None and rtphooks.restart_remote_ice(self.pc, *credentials):
            self.log.info("publisher ICE restarted by the client", ufrag=credentials[0])

    def _bind_media(self, offer_sdp: str) -> None:
        """Pending tracks whose cid appears as an msid in the offer become published; published
        tracks whose m-line stopped sending are unpublished."""
        transceivers = {t.mid: t for t in self.pc.getTransceivers() if t.mid}
        sending: set[str] = set()
        published: list[models.TrackInfo] = []
        for section in sdpparse.parse_media_sections(offer_sdp):
            if section.kind not in ("audio", "video"):
                continue
            if section.port != 0 and section.direction in ("sendrecv", "sendonly"):
                sending.add(section.mid)
            info = self.pending_tracks.pop(section.msid_track, None)
            transceiver = transceivers.get(section.mid)
            if info is None or transceiver is None:
                continue
            info.mid = section.mid
            media_codecs = [c for c in section.codecs if c not in _NOT_MEDIA_CODECS]
            if media_codecs:
                info.mime_type = mime.canonical(media_codecs[0], section.kind)
            up = UpTrack(
                section.kind,
                track_sid=info.sid,
                layers=[
                    LayerSpec(
                        _RIDS.get(layer.quality, ""), layer.quality, layer.width, layer.height
                    )
                    for layer in info.layers
                ],
                counters=self._counters,
                on_wanted_quality=functools.partial(self.wanted_quality, info.sid),
                audio_level=AudioLevel(self._audio) if section.kind == "audio" else None,
                logger=self.log,  # room and participant context in the media plane's logs
            )
            up.attach(transceiver, mid=section.mid, rids=section.rids)
            self._quality_held[info.sid] = []
            asyncio.get_running_loop().call_later(
                QUALITY_HOLD, self._release_wanted_quality, info.sid
            )
            self.uptracks[info.sid] = up
            self.tracks[info.sid] = info
            published.append(info)
        gone = [sid for sid, info in self.tracks.items() if info.mid not in sending]
        for sid in gone:
            self._spawn(self.unpublish(sid))
        if published:
            self._events.published(published)

    async def unpublish(self, track_sid: str) -> None:
        info = self.tracks.pop(track_sid, None)
        up = self.uptracks.pop(track_sid, None)
        self._quality_sent.pop(track_sid, None)
        if info is None:
            return
        self.log.info("track unpublished", track=track_sid)
        await self._events.unpublished(info)
        if up is not None:
            await up.close()
        self._events.changed()

    # -- wanted layers ------------------------------------------------------------------------

    def wanted_quality(self, track_sid: str, quality: int | None) -> None:
        """Tell the publisher which simulcast layers anyone wants (it may stop the others)."""
        held = self._quality_held.get(track_sid)
        if held is not None:
            held[:] = [quality]
            return
        self._send_wanted_quality(track_sid, quality)

    def _release_wanted_quality(self, track_sid: str) -> None:
        held = self._quality_held.pop(track_sid, None)
        if held:
            self._send_wanted_quality(track_sid, held[-1])

    def resend_state(self) -> None:
        """After a resume, what may have been lost while the signal was going away (sent
        before the node noticed): the last wanted-layers update of each track (a publisher
        that missed an "enable" keeps those layers off) and the answer to each announced
        track whose media has not come (its publish waits for it; the SDKs ignore a repeat)."""
        for track_sid, quality in list(self._quality_sent.items()):
            if track_sid not in self._quality_held:
                self._send_wanted_quality(track_sid, quality)
        for cid, info in self.pending_tracks.items():
            self._send(responses.track_published(cid, info))

    def _send_wanted_quality(self, track_sid: str, quality: int | None) -> None:
        info = self.tracks.get(track_sid)
        if info is None or info.type != models.TrackType.VIDEO:
            return
        self._quality_sent[track_sid] = quality
        wanted = -1 if quality is None else quality
        qualities = [
            rtc.SubscribedQuality(quality=q, enabled=q <= wanted)
            for q in (models.VideoQuality.LOW, models.VideoQuality.MEDIUM, models.VideoQuality.HIGH)
        ]
        codec = mime.short_name(info.mime_type) or "vp8"  # LiveKit's wire form here
        self._send(responses.subscribed_quality_update(track_sid, qualities, codec))

    # -- end --------------------------------------------------------------------------------

    async def close(self) -> None:
        for up in self.uptracks.values():
            await up.close()
        self.uptracks.clear()
        await self.pc.close()
