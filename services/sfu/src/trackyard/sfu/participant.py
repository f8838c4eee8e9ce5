"""One participant's session on the hosting node: its signal messages and peer connections.

Signal requests are handled one at a time, in arrival order (one task per participant), and
responses leave through one writer task so they reach the edge in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidStateError
from aiortc.sdp import candidate_from_sdp
from livekit.protocol import models, rtc

from trackyard.core import ids, keys, limits, messages, mime
from trackyard.core.bus import Bus, Envelope, publish_patiently
from trackyard.sfu import rtphooks, sdpcheck
from trackyard.sfu import sdp as sdpparse
from trackyard.sfu.audiolevel import AudioLevel, AudioLevelSettings
from trackyard.sfu.connectionquality import QualityScorer, StreamWindow, to_mos
from trackyard.sfu.downtrack import DownTrack
from trackyard.sfu.uptrack import LayerSpec, UpTrack

if TYPE_CHECKING:
    from trackyard.sfu.room import Room

log = structlog.get_logger(__name__)

_RIDS = {
    models.VideoQuality.LOW: "q",
    models.VideoQuality.MEDIUM: "h",
    models.VideoQuality.HIGH: "f",
}

_NOT_MEDIA_CODECS = {"rtx", "red", "ulpfec", "flexfec-03"}  # never a track's primary codec

RELIABLE = "_reliable"
LOSSY = "_lossy"
# The publisher's SDK drops a subscribed_quality_update for a track it has not registered yet
# (it registers after our answer is applied), so the first updates of a new track are held
# this long and only the latest is sent (LiveKit holds its first dynacast update too).
QUALITY_HOLD = 2.0
DATA_QUEUE_LIMIT = 256  # data packets held per channel until the participant's channel opens
OUTBOX_LIMIT = 2000  # signal responses queued for a slow edge before we give up on it
INBOX_LIMIT = 2000
REPLAY_LIMIT = 1000  # signal responses kept for a detached participant; more: it must rejoin

PeerConnectionFactory = Callable[[], RTCPeerConnection]

_KINDS = {  # the token's ``kind`` claim -> ParticipantInfo.Kind
    "standard": models.ParticipantInfo.STANDARD,
    "ingress": models.ParticipantInfo.INGRESS,
    "egress": models.ParticipantInfo.EGRESS,
    "sip": models.ParticipantInfo.SIP,
    "agent": models.ParticipantInfo.AGENT,
    "connector": models.ParticipantInfo.CONNECTOR,
    "bridge": models.ParticipantInfo.BRIDGE,
}


class State(enum.Enum):
    JOINING = 0
    JOINED = 1
    ACTIVE = 2
    DISCONNECTED = 3


class Participant:
    def __init__(
        self,
        room: Room,
        start: messages.SessionStart,
        bus: Bus,
        pc_factory: PeerConnectionFactory,
    ) -> None:
        self.room = room
        self.bus = bus
        self.session_id = start.session_id
        self.sid = ids.new_id(ids.PARTICIPANT)
        self.identity = start.identity
        self.name = start.name
        self.metadata = start.metadata
        self.attributes = dict(start.attributes)
        self.kind = start.kind
        self.edge_id = start.edge_id  # the signal edge holding the WebSocket (liveness)
        self.grants = start.grants
        self.permission = start.grants.permission()
        self.auto_subscribe = start.auto_subscribe
        self.joined_at = time.time()
        self.version = 0
        self.state = State.JOINING
        self.tracks: dict[str, models.TrackInfo] = {}  # track sid -> info
        self.pending_tracks: dict[str, models.TrackInfo] = {}  # cid -> info awaiting an offer
        self.uptracks: dict[str, UpTrack] = {}  # published track sid -> its media
        self.downtracks: dict[str, DownTrack] = {}  # subscribed track sid -> its media
        self._spare: list[DownTrack] = []  # idle subscriber m-lines, reusable
        self.log = log.bind(room=room.name, participant=self.identity, psid=self.sid)

        self.publisher_pc = pc_factory()
        self.subscriber_pc = pc_factory()
        self.publisher_channels: dict[str, RTCDataChannel] = {}
        self.subscriber_channels = {
            RELIABLE: self.subscriber_pc.createDataChannel(RELIABLE, ordered=True),
            LOSSY: self.subscriber_pc.createDataChannel(LOSSY, ordered=False, maxRetransmits=0),
        }
        # data for this participant before its channels open: held, not dropped
        self._data_backlog: dict[str, deque[bytes]] = {
            RELIABLE: deque(maxlen=DATA_QUEUE_LIMIT),
            LOSSY: deque(maxlen=DATA_QUEUE_LIMIT),
        }
        self.quality = QualityScorer()
        self._quality_held: dict[str, list[int | None]] = {}  # track sid -> held updates
        self._offer_in_flight = False
        self._renegotiate = False
        self._offer_id = 0
        self._inbox: asyncio.Queue[Envelope | None] = asyncio.Queue(INBOX_LIMIT)
        self._outbox: asyncio.Queue[Envelope | None] = asyncio.Queue(OUTBOX_LIMIT)
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        # detached: its socket went away without a leave; responses wait here for a resume
        self.detached = False
        self._replay: deque[Envelope] = deque()
        self._replay_overflow = False
        self._wire_peer_connections()

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def hidden(self) -> bool:
        return self.permission.hidden

    def start(self) -> None:
        self._reader = asyncio.create_task(self._run_inbox(), name=f"inbox-{self.sid}")
        self._writer = asyncio.create_task(self._run_outbox(), name=f"outbox-{self.sid}")

    def deliver(self, env: Envelope) -> None:
        """Queue one message from the edge (called by the node's dispatcher)."""
        try:
            self._inbox.put_nowait(env)
        except asyncio.QueueFull:
            self.log.warning("signal inbox full; closing session")
            self.room.node.spawn(
                self.room.remove(self, models.DisconnectReason.STATE_MISMATCH, notify=True)
            )

    async def close(self, *, reason: str = "") -> None:
        """Stop everything; tell the edge the session is over."""
        if self.state is State.DISCONNECTED:
            return
        self.state = State.DISCONNECTED
        closed = messages.SessionClosed(status=0, reason=reason)
        self._queue_out(
            Envelope(
                kind=messages.CLOSE, session=self.session_id, data=closed.model_dump_json().encode()
            )
        )
        for queue in (self._outbox, self._inbox):  # sentinels end the two tasks
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        if self._writer is not None:  # let queued responses (the leave, the close) go out
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._writer), 2.0)
        for task in (self._reader, self._writer):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        for dt in self.downtracks.values():
            dt.close()
        self.downtracks.clear()
        for up in self.uptracks.values():
            await up.close()
        self.uptracks.clear()
        await self.publisher_pc.close()
        await self.subscriber_pc.close()

    # -- resume -----------------------------------------------------------------------------

    def detach(self) -> None:
        """The signal socket went away without a leave: keep everything for
        ``node.reconnect_window``, buffering what would have been sent (LiveKit's
        SetSignalSourceValid(false)); no resume in time -> it leaves with SIGNAL_CLOSE."""
        if self.state is State.DISCONNECTED or self.detached:
            return
        self.detached = True
        self.log.info("signal detached; awaiting resume")
        self.room.node.reaper.detached(self)

    def resumable(self) -> bool:
        return self.state is not State.DISCONNECTED and not self._replay_overflow

    def resume(self, start: messages.SessionStart, reconnect: rtc.ReconnectResponse) -> str:
        """Re-bind to the new session: answer ``reconnect``, then replay in order.
        Returns the old session id."""
        old = self.session_id
        self.session_id = start.session_id
        self.edge_id = start.edge_id
        self.detached = False
        replay = list(self._replay)
        self._replay.clear()
        self.send(rtc.SignalResponse(reconnect=reconnect))
        for env in replay:
            self._queue_out(Envelope(kind=env.kind, session=self.session_id, data=env.data))
        self.log.info("session resumed", replayed=len(replay), session=self.session_id)
        return old

    # -- outgoing ---------------------------------------------------------------------------

    def send(self, response: rtc.SignalResponse) -> None:
        if self.state is State.DISCONNECTED:
            return
        self._queue_out(
            Envelope(
                kind=messages.SIGNAL, session=self.session_id, data=response.SerializeToString()
            )
        )

    def send_leave(
        self,
        reason: models.DisconnectReason,
        action: rtc.LeaveRequest.Action = rtc.LeaveRequest.DISCONNECT,
    ) -> None:
        self.send(
            rtc.SignalResponse(
                leave=rtc.LeaveRequest(
                    can_reconnect=action == rtc.LeaveRequest.RECONNECT,
                    reason=reason,
                    action=action,
                )
            )
        )

    def send_raw(self, env: Envelope) -> None:
        """Queue an already-encoded response (broadcasts encode once for everyone)."""
        if self.state is not State.DISCONNECTED:
            self._queue_out(env)

    def _queue_out(self, env: Envelope) -> None:
        if self.detached and env.kind == messages.SIGNAL:
            if len(self._replay) >= REPLAY_LIMIT:
                self._replay_overflow = True
            else:
                self._replay.append(env)
            return
        try:
            self._outbox.put_nowait(env)
        except asyncio.QueueFull:
            self.log.warning("signal outbox full: edge is not reading; dropping session")
            self.room.node.spawn(
                self.room.remove(self, models.DisconnectReason.SIGNAL_CLOSE, notify=False)
            )

    async def _run_outbox(self) -> None:
        while True:
            env = await self._outbox.get()
            if env is None:
                return
            channel = keys.session_channel(self.session_id)  # re-bound by a resume
            within = self.room.node.config.signal.ping_timeout
            if not await publish_patiently(self.bus, channel, env, within=within):
                self.log.warning("bus unavailable; signal response dropped", kind=env.kind)

    # -- incoming ---------------------------------------------------------------------------

    async def _run_inbox(self) -> None:
        while True:
            env = await self._inbox.get()
            if env is None:
                return
            if env.kind == messages.CLIENT_GONE:
                if env.session == self.session_id:  # not a socket a resume replaced
                    self.detach()
                continue
            try:
                request = rtc.SignalRequest.FromString(env.data)
            except Exception:
                self.log.warning("undecodable signal request", size=len(env.data))
                continue
            try:
                await self.handle(request)
            except Exception:
                self.log.exception("signal request failed", message=request.WhichOneof("message"))

    async def handle(self, req: rtc.SignalRequest) -> None:
        which = req.WhichOneof("message")
        handler = self._handlers.get(which or "")
        if handler is None:
            self.log.debug("ignored signal request", message=which)
            return
        await handler(self, getattr(req, which or ""))

    async def _on_ping_req(self, ping: rtc.Ping) -> None:
        self.send(
            rtc.SignalResponse(
                pong_resp=rtc.Pong(
                    last_ping_timestamp=ping.timestamp, timestamp=int(time.time() * 1000)
                )
            )
        )

    async def _on_ping(self, timestamp: int) -> None:
        self.send(rtc.SignalResponse(pong=timestamp))

    async def _on_leave(self, _leave: rtc.LeaveRequest) -> None:
        await self.room.remove(self, models.DisconnectReason.CLIENT_INITIATED, notify=False)

    async def _on_offer(self, offer: rtc.SessionDescription) -> None:
        """The client (re)negotiates its publisher connection."""
        problem = sdpcheck.problem(offer.sdp, offer.type or "offer")
        if problem or self.publisher_pc.signalingState == "closed":
            await self._negotiation_failed("offer", problem or "publisher connection closed")
            return
        try:
            await self.publisher_pc.setRemoteDescription(
                RTCSessionDescription(sdp=offer.sdp, type="offer")
            )
            # no await between here and attach: packets of a new m-line must reach its UpTrack
            self._bind_published_media(offer.sdp)
            answer = await self.publisher_pc.createAnswer()
            await self.publisher_pc.setLocalDescription(answer)
        except Exception as exc:  # what the checks above did not foresee
            await self._negotiation_failed("offer", f"{type(exc).__name__}: {exc}")
            return
        # aiortc drops a=rid/a=simulcast from answers; without them the client sends one layer
        sdp_text = rtphooks.simulcast_answer(self.publisher_pc.localDescription.sdp, offer.sdp)
        self.send(
            rtc.SignalResponse(
                answer=rtc.SessionDescription(type="answer", sdp=sdp_text, id=offer.id)
            )
        )

    async def _on_answer(self, answer: rtc.SessionDescription) -> None:
        """The client answers our subscriber offer."""
        if self.subscriber_pc.signalingState != "have-local-offer":
            self.log.warning(
                "unexpected subscriber answer", state=self.subscriber_pc.signalingState
            )
            return
        problem = sdpcheck.problem(answer.sdp, answer.type or "answer")
        if problem:
            await self._negotiation_failed("answer", problem)
            return
        try:
            await self.subscriber_pc.setRemoteDescription(
                RTCSessionDescription(sdp=answer.sdp, type="answer")
            )
        except Exception as exc:
            await self._negotiation_failed("answer", f"{type(exc).__name__}: {exc}")
            return
        self._offer_in_flight = False
        if self._renegotiate:
            self._renegotiate = False
            await self.negotiate_subscriber()

    async def _negotiation_failed(self, what: str, problem: str) -> None:
        """LiveKit's answer to a failed negotiation (IssueFullReconnect, NegotiateFailed):
        ``leave{STATE_MISMATCH, RECONNECT}``; the client rejoins from scratch."""
        self.log.warning("bad session description; client rejoins", sdp=what, problem=problem)
        self.send_leave(models.DisconnectReason.STATE_MISMATCH, rtc.LeaveRequest.RECONNECT)
        await self.room.remove(self, models.DisconnectReason.STATE_MISMATCH, notify=False)

    async def _on_trickle(self, trickle: rtc.TrickleRequest) -> None:
        try:
            init = json.loads(trickle.candidateInit)
        except ValueError:
            self.log.warning("trickle with undecodable candidate")
            return
        if not isinstance(init, dict):
            self.log.warning("trickle candidate is not a JSON object")
            return
        text = str(init.get("candidate") or "")
        if not text:
            return  # end-of-candidates
        text = text.split(":", 1)[1] if text.startswith("candidate:") else text
        mid, index = init.get("sdpMid"), init.get("sdpMLineIndex")
        problem = sdpcheck.candidate_problem(text)
        if problem or not isinstance(mid, str | None) or not isinstance(index, int | None):
            self.log.warning("malformed trickle candidate ignored", problem=problem or "sdpMid")
            return
        candidate = candidate_from_sdp(text)
        candidate.sdpMid = mid
        candidate.sdpMLineIndex = index
        pc = self.subscriber_pc if trickle.target == rtc.SUBSCRIBER else self.publisher_pc
        if pc.remoteDescription is None or pc.signalingState == "closed":
            self.log.debug("candidate before remote description; ignored")
            return
        try:
            await pc.addIceCandidate(candidate)
        except Exception as exc:  # e.g. an sdpMid naming no m-line
            self.log.warning("trickle candidate refused", error=f"{type(exc).__name__}: {exc}")

    async def _on_add_track(self, req: rtc.AddTrackRequest) -> None:
        refusal = self._publish_refusal(req)
        if refusal:
            self.log.info("add_track refused", cid=req.cid, reason=refusal)
            self.send(
                rtc.SignalResponse(
                    request_response=rtc.RequestResponse(
                        reason=rtc.RequestResponse.NOT_ALLOWED, message=refusal, add_track=req
                    )
                )
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
        self.send(
            rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(cid=req.cid, track=info))
        )

    def may_publish_source(self, source: models.TrackSource) -> bool:
        allowed = self.permission.can_publish_sources
        return self.permission.can_publish and (not allowed or source in allowed)

    def _publish_refusal(self, req: rtc.AddTrackRequest) -> str:
        if not self.permission.can_publish:
            return "not allowed to publish: token lacks canPublish"
        if not self.may_publish_source(req.source):
            name = models.TrackSource.Name(req.source)
            return f"not allowed to publish source {name}: not in canPublishSources"
        if req.cid in self.pending_tracks:
            return f"track {req.cid} is already being published"
        return ""

    def _bind_published_media(self, offer_sdp: str) -> None:
        """Pending tracks whose cid appears as an msid in the offer become published; published
        tracks whose m-line stopped sending are unpublished."""
        transceivers = {t.mid: t for t in self.publisher_pc.getTransceivers() if t.mid}
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
                counters=self.room.node.counters,
                on_wanted_quality=functools.partial(self._on_wanted_quality, info.sid),
                audio_level=AudioLevel(self._audio_settings) if section.kind == "audio" else None,
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
            self.room.node.spawn(self.unpublish(sid))
        for info in published:
            self.room.on_track_published(self, info)
        if published:
            self.room.participant_changed(self)

    async def unpublish(self, track_sid: str) -> None:
        info = self.tracks.pop(track_sid, None)
        up = self.uptracks.pop(track_sid, None)
        if info is None:
            return
        self.log.info("track unpublished", track=track_sid)
        await self.room.on_track_unpublished(self, info)
        if up is not None:
            await up.close()
        self.room.participant_changed(self)

    def _on_wanted_quality(self, track_sid: str, quality: int | None) -> None:
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

    def _send_wanted_quality(self, track_sid: str, quality: int | None) -> None:
        info = self.tracks.get(track_sid)
        if info is None or info.type != models.TrackType.VIDEO:
            return
        wanted = -1 if quality is None else quality
        qualities = [
            rtc.SubscribedQuality(quality=q, enabled=q <= wanted)
            for q in (models.VideoQuality.LOW, models.VideoQuality.MEDIUM, models.VideoQuality.HIGH)
        ]
        codec = mime.short_name(info.mime_type) or "vp8"  # LiveKit's wire form here
        self.send(
            rtc.SignalResponse(
                subscribed_quality_update=rtc.SubscribedQualityUpdate(
                    track_sid=track_sid,
                    subscribed_qualities=qualities,
                    subscribed_codecs=[rtc.SubscribedCodec(codec=codec, qualities=qualities)],
                )
            )
        )

    # -- subscribing --------------------------------------------------------------------------

    async def subscribe(self, publisher: Participant, track_sid: str) -> bool:
        """Start receiving ``track_sid`` of ``publisher``; renegotiates the subscriber PC."""
        if track_sid in self.downtracks or self.state is State.DISCONNECTED:
            return False
        if not self.permission.can_subscribe:
            self.log.info("subscription refused: token lacks canSubscribe", track=track_sid)
            return False
        up = publisher.uptracks.get(track_sid)
        if up is None or up.closed:
            return False
        limit = self.room.node.config.limit  # LiveKit's subscription_limit_video/_audio
        cap = (
            limit.subscription_limit_video if up.kind == "video" else limit.subscription_limit_audio
        )
        if cap and sum(1 for d in self.downtracks.values() if d.kind == up.kind) >= cap:
            self.log.info("subscription refused: limit reached", track=track_sid, limit=cap)
            return False
        stream_id = f"{publisher.sid}|{track_sid}"
        spare = next((dt for dt in self._spare if dt.can_rebind(up, stream_id)), None)
        if spare is not None:  # an idle m-line of an earlier subscription
            self._spare.remove(spare)
            spare.transceiver.direction = "sendonly"
            spare.rebind(up, stream_id=stream_id, track_id=track_sid)
            dt = spare
        else:
            try:
                transceiver = self.subscriber_pc.addTransceiver(up.kind, direction="sendonly")
            except InvalidStateError:  # its transport closed: the client is going away
                self.log.info("subscription skipped: subscriber connection closed", track=track_sid)
                return False
            dt = DownTrack(
                up,
                transceiver,
                stream_id=stream_id,
                track_id=track_sid,
                counters=self.room.node.counters,
                history_size=self.room.node.config.rtc.packet_buffer_size,
            )
        self.downtracks[track_sid] = dt
        self.log.debug("subscribed", track=track_sid, publisher=publisher.identity)
        await self.negotiate_subscriber()
        return True

    async def unsubscribe(self, track_sid: str) -> bool:
        dt = self.downtracks.pop(track_sid, None)
        if dt is None:
            return False
        dt.close()
        # The m-line goes idle and is reused by a later subscription to another track. It must
        # drop the track's msid: the SDK rejects an SDP with the same msid twice.
        dt.transceiver.direction = "inactive"
        rtphooks.set_sender_msid(dt.transceiver.sender, "-", ids.new_id("idle-"))
        self._spare.append(dt)
        if self.state is not State.DISCONNECTED:
            await self.negotiate_subscriber()
        return True

    def set_track_preference(self, req: rtc.UpdateTrackSettings) -> None:
        """A view size, when given, wins over a quality (as in LiveKit)."""
        by_size = bool(req.width or req.height)
        for sid in req.track_sids:
            dt = self.downtracks.get(sid)
            if dt is not None:
                dt.set_layer_preference(
                    quality=None if by_size else int(req.quality),
                    width=req.width,
                    height=req.height,
                    disabled=req.disabled,
                )

    async def _on_mute(self, req: rtc.MuteTrackRequest) -> None:
        await self.set_track_muted(req.sid, req.muted)

    async def set_track_muted(self, track_sid: str, muted: bool) -> models.TrackInfo | None:
        info = self.tracks.get(track_sid)
        if info is None:
            pending = [i for i in self.pending_tracks.values() if i.sid == track_sid]
            if pending:
                pending[0].muted = muted  # published muted once its media arrives
                return pending[0]
            return None
        if info.muted != muted:
            info.muted = muted
            self.room.participant_changed(self)
        return info

    async def _on_update_metadata(self, req: rtc.UpdateParticipantMetadata) -> None:
        if not self.permission.can_update_metadata:
            self._respond(
                req.request_id,
                rtc.RequestResponse.NOT_ALLOWED,
                "not allowed to update own metadata: token lacks canUpdateOwnMetadata",
            )
            return
        # LiveKit's checkMetadataLimits and messages; attributes are counted as they would be
        # after the update (an empty value deletes)
        limit = self.room.node.config.limit
        exceeded = ""
        if limits.check_name(limit, req.name):
            exceeded = "exceeds name length limit"
        elif limits.check_metadata(limit, req.metadata):
            exceeded = "exceeds metadata size limit"
        elif limits.check_attributes(
            limit, limits.merged_attributes(self.attributes, req.attributes)
        ):
            exceeded = "exceeds attributes size limit"
        if exceeded:
            self.send(
                rtc.SignalResponse(
                    request_response=rtc.RequestResponse(
                        request_id=req.request_id,
                        reason=rtc.RequestResponse.LIMIT_EXCEEDED,
                        message=exceeded,
                        update_metadata=req,
                    )
                )
            )
            return
        self.update_info(
            metadata=req.metadata if req.metadata else None,
            name=req.name if req.name else None,
            attributes=dict(req.attributes) if req.attributes else None,
        )
        self._respond(req.request_id, rtc.RequestResponse.OK, "")

    def _respond(self, request_id: int, reason: rtc.RequestResponse.Reason, message: str) -> None:
        self.send(
            rtc.SignalResponse(
                request_response=rtc.RequestResponse(
                    request_id=request_id, reason=reason, message=message
                )
            )
        )

    def update_info(
        self,
        *,
        metadata: str | None = None,
        name: str | None = None,
        attributes: dict[str, str] | None = None,
        permission: models.ParticipantPermission | None = None,
    ) -> None:
        if metadata is not None:
            self.metadata = metadata
        if name is not None:
            self.name = name
        if attributes is not None:
            self.attributes = limits.merged_attributes(self.attributes, attributes)
        if permission is not None:
            self.permission = permission
            self._enforce_permission()
        self.room.participant_changed(self)

    def _enforce_permission(self) -> None:
        """A narrowed permission takes effect at once (as in LiveKit): tracks of sources no
        longer allowed are unpublished (the client is told with ``track_unpublished``), and
        losing canSubscribe ends every subscription; regaining it auto-subscribes again."""
        for sid, info in list(self.tracks.items()):
            if not self.may_publish_source(info.source):
                self.log.info("permission revoked: unpublishing", track=sid)
                self.send(
                    rtc.SignalResponse(
                        track_unpublished=rtc.TrackUnpublishedResponse(track_sid=sid)
                    )
                )
                self.room.node.spawn(self.unpublish(sid))
        for cid, info in list(self.pending_tracks.items()):
            if not self.may_publish_source(info.source):
                del self.pending_tracks[cid]
        if not self.permission.can_subscribe:
            for sid in list(self.downtracks):
                self.room.node.spawn(self.unsubscribe(sid))
        elif self.auto_subscribe:
            self.room.node.spawn(self.room.subscribe_all(self))

    async def _on_subscription(self, req: rtc.UpdateSubscription) -> None:
        sids = list(req.track_sids) + [s for pt in req.participant_tracks for s in pt.track_sids]
        await self.room.set_subscriptions(self, sids, req.subscribe)

    async def _on_track_setting(self, req: rtc.UpdateTrackSettings) -> None:
        self.room.on_track_setting(self, req)

    _handlers: dict[str, Callable[[Participant, Any], Awaitable[None]]] = {
        "offer": _on_offer,
        "answer": _on_answer,
        "trickle": _on_trickle,
        "add_track": _on_add_track,
        "mute": _on_mute,
        "subscription": _on_subscription,
        "track_setting": _on_track_setting,
        "leave": _on_leave,
        "update_metadata": _on_update_metadata,
        "ping": _on_ping,
        "ping_req": _on_ping_req,
    }

    # -- subscriber negotiation -------------------------------------------------------------

    async def negotiate_subscriber(self) -> None:
        """Offer on the subscriber connection; one offer in flight at a time."""
        if self.state is State.DISCONNECTED:
            return
        if self._offer_in_flight:
            self._renegotiate = True
            return
        if self.subscriber_pc.signalingState == "closed":
            return
        if (
            self.subscriber_pc.remoteDescription is not None
            and self.subscriber_pc.connectionState in ("new", "connecting")
        ):
            # aiortc starts a sender only if DTLS is already up when the answer that adds it
            # is applied; an answer applied while the first one is still connecting leaves the
            # new senders unstarted forever (the newcomer who never gets media). Offer again
            # once connected (see _on_state).
            self._renegotiate = True
            return
        self._offer_in_flight = True
        try:
            offer = await self.subscriber_pc.createOffer()
            await self.subscriber_pc.setLocalDescription(offer)
        except Exception:
            if self.subscriber_pc.signalingState == "closed":
                return  # the participant left while the offer was being made
            raise
        self._offer_id += 1
        self.send(
            rtc.SignalResponse(
                offer=rtc.SessionDescription(
                    type="offer", sdp=self.subscriber_pc.localDescription.sdp, id=self._offer_id
                )
            )
        )

    # -- peer connection events -------------------------------------------------------------

    def _wire_peer_connections(self) -> None:
        @self.publisher_pc.on("datachannel")
        def _on_datachannel(channel: RTCDataChannel) -> None:
            self.publisher_channels[channel.label] = channel

            @channel.on("message")
            def _on_message(message: bytes | str) -> None:
                if isinstance(message, str):
                    message = message.encode()
                self.room.relay_data(self, message, channel.label)

        @self.subscriber_pc.on("connectionstatechange")
        def _on_state() -> None:
            self._maybe_active()
            self.room.node.reaper.transport_changed(self)
            if (
                self.subscriber_pc.connectionState == "connected"
                and self._renegotiate
                and not self._offer_in_flight
            ):
                self._renegotiate = False
                self.room.node.spawn(self.negotiate_subscriber())

        @self.publisher_pc.on("connectionstatechange")
        def _on_publisher_state() -> None:
            self.room.node.reaper.transport_changed(self)

        for label, channel in self.subscriber_channels.items():
            channel.on("open", functools.partial(self._on_channel_open, label))

    def _on_channel_open(self, label: str) -> None:
        backlog = self._data_backlog[label]
        channel = self.subscriber_channels[label]
        while backlog:
            channel.send(backlog.popleft())
        self._maybe_active()

    def _maybe_active(self) -> None:
        """ACTIVE means ready: media connected and both data channels open, so data sent to
        a participant the moment it is announced ACTIVE reaches it."""
        if (
            self.state is State.JOINED
            and self.subscriber_pc.connectionState == "connected"
            and all(c.readyState == "open" for c in self.subscriber_channels.values())
        ):
            self.state = State.ACTIVE
            self.room.participant_changed(self)
            self.room.node.on_participant_active(self.room, self)

    # -- data -------------------------------------------------------------------------------

    def send_data(self, payload: bytes, label: str) -> bool:
        """Send on the subscriber channel ``label``; held (bounded) until the channel opens."""
        channel = self.subscriber_channels.get(label)
        if channel is None or self.state is State.DISCONNECTED:
            return False
        if channel.readyState == "open":
            channel.send(payload)
            return True
        if channel.readyState != "connecting":
            return False
        backlog = self._data_backlog[label]
        if len(backlog) == backlog.maxlen:
            self.log.warning("data backlog full before channel opened; oldest dropped", label=label)
        backlog.append(payload)
        return True

    # -- audio level and connection quality ------------------------------------------------

    @property
    def _audio_settings(self) -> AudioLevelSettings:
        cfg = self.room.node.config.audio
        return AudioLevelSettings(
            active_level=cfg.active_level,
            min_percentile=cfg.min_percentile,
            update_interval_ms=cfg.update_interval,
            smooth_intervals=cfg.smooth_intervals,
        )

    def audio_level(self, now: float) -> tuple[float, bool]:
        """The loudest of its unmuted audio tracks: (linear level, speaking)."""
        best = (0.0, False)
        for sid, up in self.uptracks.items():
            info = self.tracks.get(sid)
            if up.audio_level is None or info is None or info.muted:
                continue
            level = up.audio_level.level(now)
            if level[0] > best[0]:
                best = level
        return best

    def connection_quality(self) -> rtc.ConnectionQualityInfo:
        """Fold one window of every stream it sends and receives into its score."""
        windows: list[StreamWindow] = []
        for sid, up in self.uptracks.items():
            received = up.quality_window()  # called while muted too: the next window starts now
            info = self.tracks.get(sid)
            if info is not None and not info.muted:
                windows.extend(received)
        for dt in self.downtracks.values():
            window = dt.quality_window()
            if window is not None:
                windows.append(window)
        score = self.quality.update(windows)
        return rtc.ConnectionQualityInfo(
            participant_sid=self.sid, quality=self.quality.quality, score=to_mos(score)
        )

    def subscribed_count(self) -> int:
        return len(self.downtracks)

    # -- snapshot ---------------------------------------------------------------------------

    def info(self) -> models.ParticipantInfo:
        state = {
            State.JOINING: models.ParticipantInfo.JOINING,
            State.JOINED: models.ParticipantInfo.JOINED,
            State.ACTIVE: models.ParticipantInfo.ACTIVE,
            State.DISCONNECTED: models.ParticipantInfo.DISCONNECTED,
        }[self.state]
        return models.ParticipantInfo(
            sid=self.sid,
            identity=self.identity,
            name=self.name,
            state=state,
            tracks=list(self.tracks.values()),
            metadata=self.metadata,
            joined_at=int(self.joined_at),
            joined_at_ms=int(self.joined_at * 1000),
            version=self.version,
            permission=self.permission,
            is_publisher=bool(self.tracks),
            attributes=self.attributes,
            kind=_KINDS.get(self.kind.lower(), models.ParticipantInfo.STANDARD),
        )
