"""One participant's session on the hosting node.

Calls go down, events come up (as LiveKit's ``Room.Join`` registers a participant's
callbacks): a participant is given what it may use (:class:`ParticipantServices`) and reports
what happens to it through :class:`ParticipantListener`, which its room implements. It is made
of its signal channel (``signalling.py``), its publisher side (``publishing.py``) and its
subscriber side (``subscribing.py``, negotiation in ``negotiation.py``).
"""

from __future__ import annotations

import asyncio
import enum
import json
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiortc import RTCPeerConnection
from aiortc.sdp import candidate_from_sdp
from livekit.protocol import models, rtc

from trackyard.core import ids, limits, messages, responses
from trackyard.core.bus import Envelope
from trackyard.core.config import Config
from trackyard.sfu import sdpcheck
from trackyard.sfu.audiolevel import AudioLevelSettings
from trackyard.sfu.connectionquality import QualityScorer, StreamWindow, to_mos
from trackyard.sfu.downtrack import DownTrack
from trackyard.sfu.publishing import Publisher, PublisherEvents
from trackyard.sfu.rtpstats import TrafficCounters
from trackyard.sfu.signalling import Handler, SignalChannel, SignalSink
from trackyard.sfu.subscribing import LOSSY as LOSSY
from trackyard.sfu.subscribing import RELIABLE as RELIABLE
from trackyard.sfu.subscribing import Subscriber
from trackyard.sfu.trackcontract import TrackSource
from trackyard.sfu.uptrack import UpTrack

log = structlog.get_logger(__name__)

Spawn = Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]

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


_INFO_STATES = {
    State.JOINING: models.ParticipantInfo.JOINING,
    State.JOINED: models.ParticipantInfo.JOINED,
    State.ACTIVE: models.ParticipantInfo.ACTIVE,
    State.DISCONNECTED: models.ParticipantInfo.DISCONNECTED,
}


class Liveness(Protocol):
    """Who decides when a session is gone for good (the node's reaper)."""

    def detached(self, participant: Participant) -> None:
        """Its signal socket went away without a leave."""

    def transport_changed(self, participant: Participant) -> None:
        """One of its peer connections changed state."""


@dataclass(frozen=True)
class ParticipantServices:
    """What a participant may use."""

    config: Config
    counters: TrafficCounters  # media totals of the node
    spawn: Spawn  # background work, kept and logged by the node
    signal_sink: SignalSink  # its responses to the edge holding its session
    make_peer_connection: Callable[[], RTCPeerConnection]
    liveness: Liveness


class ParticipantListener(Protocol):
    """What a participant reports (its room implements this)."""

    def participant_active(self, participant: Participant) -> None:
        """Connected: media up and data channels open."""

    def participant_changed(self, participant: Participant) -> None:
        """Its info changed (metadata, name, attributes, permission, tracks, mute, state);
        its version is already bumped."""

    def track_published(self, participant: Participant, info: models.TrackInfo) -> None: ...

    async def track_unpublished(self, participant: Participant, info: models.TrackInfo) -> None:
        """Before its media closes."""

    def data_received(self, participant: Participant, raw: bytes, label: str) -> None:
        """A data packet on its publisher channel ``label``."""

    async def subscriptions_wanted(
        self, participant: Participant, track_sids: Sequence[str] | None, subscribe: bool
    ) -> None:
        """It asks for (or drops) these tracks; ``None``: every track in the room."""

    async def participant_gone(
        self, participant: Participant, reason: models.DisconnectReason, *, notify: bool
    ) -> None:
        """Its session must end (it left, or cannot go on); ``notify``: tell its client why."""


class Participant:
    def __init__(
        self,
        start: messages.SessionStart,
        *,
        room_name: str,
        services: ParticipantServices,
        listener: ParticipantListener,
    ) -> None:
        self.room_name = room_name
        self._services = services
        self._listener = listener
        self.sid = ids.new_id(ids.PARTICIPANT)
        self.identity = start.identity
        self.name = start.name
        self.metadata = start.metadata
        self.attributes = dict(start.attributes)
        self.kind = start.kind
        self.edge_id = start.edge_id  # the signal edge holding the WebSocket (liveness)
        self.relay_node = start.relay_node  # another node of the room pulling tracks (a relay)
        self.permission = start.grants.permission()
        self.auto_subscribe = start.auto_subscribe
        self.joined_at = time.time()
        self.version = 0
        self.state = State.JOINING
        self.log = log.bind(room=room_name, participant=self.identity, psid=self.sid)
        self.quality = QualityScorer()

        config = services.config
        self.signal = SignalChannel(
            start.session_id,
            sink=services.signal_sink,
            handlers=self._handlers(),
            client_gone=self.detach,
            overflow=self._overflow,
            log=self.log,
        )
        audio = config.audio
        self.publisher = Publisher(
            services.make_peer_connection(),
            send=self.send,
            events=PublisherEvents(
                published=self._published,
                unpublished=self._unpublished,
                changed=self._changed,
                data=self._data,
                negotiation_failed=self._negotiation_failed,
            ),
            counters=services.counters,
            audio=AudioLevelSettings(
                active_level=audio.active_level,
                min_percentile=audio.min_percentile,
                update_interval_ms=audio.update_interval,
                smooth_intervals=audio.smooth_intervals,
            ),
            spawn=services.spawn,
            log=self.log,
        )
        self.subscriber = Subscriber(
            services.make_peer_connection(),
            counters=services.counters,
            history_size=config.rtc.packet_buffer_size,
            ahead=bool(start.relay_node),  # feeds another node's fan-out
            limit=config.limit,
            spawn=services.spawn,
            send_offer=self._send_offer,
            negotiation_failed=self._negotiation_failed,
            on_ready=self._maybe_active,
            log=self.log,
        )
        self.publisher_pc.on("connectionstatechange", self._on_publisher_state)
        self.subscriber_pc.on("connectionstatechange", self._on_subscriber_state)

    # -- what others read ---------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        return self.signal.session_id

    @property
    def hidden(self) -> bool:
        return self.permission.hidden

    @property
    def detached(self) -> bool:
        return self.signal.detached

    @property
    def publisher_pc(self) -> RTCPeerConnection:
        return self.publisher.pc

    @property
    def subscriber_pc(self) -> RTCPeerConnection:
        return self.subscriber.pc

    @property
    def tracks(self) -> dict[str, models.TrackInfo]:
        """Published tracks (their media arrived): track sid -> info."""
        return self.publisher.tracks

    @property
    def pending_tracks(self) -> dict[str, models.TrackInfo]:
        """Announced tracks whose media has not arrived yet: cid -> info."""
        return self.publisher.pending_tracks

    @property
    def uptracks(self) -> dict[str, UpTrack]:
        return self.publisher.uptracks

    @property
    def downtracks(self) -> dict[str, DownTrack]:
        return self.subscriber.downtracks

    def subscribed_count(self) -> int:
        return len(self.subscriber.downtracks)

    def info(self) -> models.ParticipantInfo:
        return models.ParticipantInfo(
            sid=self.sid,
            identity=self.identity,
            name=self.name,
            state=_INFO_STATES[self.state],
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

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self.signal.start()

    def joined(self, join: rtc.SignalResponse) -> None:
        """Admitted: the join response goes out first (the SDK expects it first)."""
        self.send(join)
        self.state = State.JOINED

    def deliver(self, env: Envelope) -> None:
        """Queue one message from the edge (called by the node's dispatcher)."""
        self.signal.deliver(env)

    async def close(self, *, reason: str = "") -> None:
        """Stop everything; tell the edge the session is over."""
        if self.state is State.DISCONNECTED:
            return
        self.state = State.DISCONNECTED
        self.subscriber.stop()
        await self.signal.close(reason)
        await self.publisher.close()
        await self.subscriber.close()

    def _overflow(self, reason: models.DisconnectReason, notify: bool) -> None:
        self._services.spawn(self._listener.participant_gone(self, reason, notify=notify))

    # -- resume -------------------------------------------------------------------------------

    def detach(self) -> None:
        """The signal socket went away without a leave: keep everything for
        ``node.reconnect_window``, buffering what would have been sent (LiveKit's
        SetSignalSourceValid(false)); no resume in time -> it leaves with SIGNAL_CLOSE."""
        if self.state is State.DISCONNECTED or self.signal.detached:
            return
        self.signal.detached = True
        self.subscriber.negotiation.signal_lost()
        self.log.info("signal detached; awaiting resume")
        self._services.liveness.detached(self)

    def resumable(self) -> bool:
        return self.state is not State.DISCONNECTED and not self.signal.replay_overflowed

    def resume(self, start: messages.SessionStart, reconnect: rtc.SignalResponse) -> str:
        """Re-bind to the new session: answer ``reconnect``, then replay in order.
        Returns the old session id."""
        self.edge_id = start.edge_id
        old = self.signal.rebind(start.session_id, reconnect)
        self.subscriber.negotiation.signal_back()
        self.subscriber.restart_ice()  # after the replay: the SDK expects it on a resume
        return old

    # -- outgoing -----------------------------------------------------------------------------

    def send(self, response: rtc.SignalResponse) -> None:
        if self.state is not State.DISCONNECTED:
            self.signal.send(response)

    def send_raw(self, env: Envelope) -> None:
        """Queue an already-encoded response (broadcasts encode once for everyone)."""
        if self.state is not State.DISCONNECTED:
            self.signal.send_raw(env)

    def send_data(self, payload: bytes, label: str) -> bool:
        """Send on the subscriber channel ``label``; held (bounded) until the channel opens."""
        return self.subscriber.send_data(payload, label)

    def _send_offer(self, sdp: str, offer_id: int) -> None:
        self.send(responses.offer(sdp, offer_id))

    def _respond(self, request_id: int, reason: rtc.RequestResponse.Reason, message: str) -> None:
        self.send(responses.request_response(reason, message, request_id=request_id))

    # -- requests -----------------------------------------------------------------------------

    def _handlers(self) -> dict[str, Handler]:
        return {
            "offer": self._on_offer,
            "answer": self._on_answer,
            "trickle": self._on_trickle,
            "add_track": self._on_add_track,
            "mute": self._on_mute,
            "subscription": self._on_subscription,
            "track_setting": self._on_track_setting,
            "leave": self._on_leave,
            "update_metadata": self._on_update_metadata,
            "ping": self._on_ping,
            "ping_req": self._on_ping_req,
        }

    async def _on_offer(self, offer: rtc.SessionDescription) -> None:
        await self.publisher.offer(offer)

    async def _on_answer(self, answer: rtc.SessionDescription) -> None:
        await self.subscriber.negotiation.answer(answer.sdp, answer.type, answer.id)

    async def _on_ping_req(self, ping: rtc.Ping) -> None:
        self.send(responses.pong_resp(ping.timestamp, int(time.time() * 1000)))

    async def _on_ping(self, timestamp: int) -> None:
        self.send(responses.pong(timestamp))

    async def _on_leave(self, _leave: rtc.LeaveRequest) -> None:
        await self._listener.participant_gone(
            self, models.DisconnectReason.CLIENT_INITIATED, notify=False
        )

    async def _negotiation_failed(self, what: str, problem: str) -> None:
        """LiveKit's answer to a failed negotiation (IssueFullReconnect, NegotiateFailed):
        ``leave{STATE_MISMATCH, RECONNECT}``; the client rejoins from scratch."""
        self.log.warning("negotiation failed; client rejoins", sdp=what, problem=problem)
        self.send(responses.rejoin())
        await self._listener.participant_gone(
            self, models.DisconnectReason.STATE_MISMATCH, notify=False
        )

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
        self.publisher.add_track(req, self.permission)

    async def _on_mute(self, req: rtc.MuteTrackRequest) -> None:
        await self.set_track_muted(req.sid, req.muted)

    async def _on_subscription(self, req: rtc.UpdateSubscription) -> None:
        sids = list(req.track_sids) + [s for pt in req.participant_tracks for s in pt.track_sids]
        self.log.debug("subscription request", tracks=sids, subscribe=req.subscribe)
        await self._listener.subscriptions_wanted(self, sids, req.subscribe)

    async def _on_track_setting(self, req: rtc.UpdateTrackSettings) -> None:
        self.subscriber.set_track_preference(req)

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
        limit = self._services.config.limit
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
                responses.request_response(
                    rtc.RequestResponse.LIMIT_EXCEEDED,
                    exceeded,
                    request_id=req.request_id,
                    update_metadata=req,
                )
            )
            return
        self.update_info(
            metadata=req.metadata if req.metadata else None,
            name=req.name if req.name else None,
            attributes=dict(req.attributes) if req.attributes else None,
        )
        self._respond(req.request_id, rtc.RequestResponse.OK, "")

    # -- changes (from its client or the room API) ---------------------------------------------

    async def set_track_muted(self, track_sid: str, muted: bool) -> models.TrackInfo | None:
        return self.publisher.set_muted(track_sid, muted)

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
        self._changed()

    def _enforce_permission(self) -> None:
        """A narrowed permission takes effect at once (as in LiveKit): see
        :meth:`Publisher.revoke`; losing canSubscribe ends every subscription, regaining it
        auto-subscribes again."""
        self.publisher.revoke(self.permission)
        if not self.permission.can_subscribe:
            for sid in list(self.downtracks):
                self._services.spawn(self.unsubscribe(sid))
        elif self.auto_subscribe:
            self._services.spawn(self._listener.subscriptions_wanted(self, None, True))

    def _changed(self) -> None:
        self.version += 1
        self._listener.participant_changed(self)

    # -- publishing events --------------------------------------------------------------------

    def _published(self, infos: list[models.TrackInfo]) -> None:
        for info in infos:
            self._listener.track_published(self, info)
        self._changed()

    async def _unpublished(self, info: models.TrackInfo) -> None:
        await self._listener.track_unpublished(self, info)

    def _data(self, raw: bytes, label: str) -> None:
        self._listener.data_received(self, raw, label)

    # -- subscribing --------------------------------------------------------------------------

    async def subscribe(self, up: TrackSource, *, publisher_sid: str, track_sid: str) -> bool:
        """Start receiving ``track_sid`` (``up``) of ``publisher_sid``; renegotiates the
        subscriber connection."""
        if track_sid in self.downtracks or self.state is State.DISCONNECTED:
            self.log.debug("subscription skipped", track=track_sid, state=self.state.name)
            return False
        if not self.permission.can_subscribe:
            self.log.info("subscription refused: token lacks canSubscribe", track=track_sid)
            return False
        return await self.subscriber.subscribe(up, publisher_sid=publisher_sid, track_sid=track_sid)

    async def unsubscribe(self, track_sid: str) -> bool:
        return await self.subscriber.unsubscribe(track_sid)

    async def negotiate_subscriber(self) -> None:
        """Offer on the subscriber connection (the first offer carries the data channels)."""
        await self.subscriber.negotiation.request()

    # -- peer connection events ---------------------------------------------------------------

    def _on_publisher_state(self) -> None:
        self._services.liveness.transport_changed(self)

    def _on_subscriber_state(self) -> None:
        self._maybe_active()
        self._services.liveness.transport_changed(self)
        self.subscriber.transport_changed()

    def _maybe_active(self) -> None:
        """ACTIVE means ready: media connected and both data channels open, so data sent to
        a participant the moment it is announced ACTIVE reaches it."""
        if self.state is State.JOINED and self.subscriber.ready():
            self.state = State.ACTIVE
            self._changed()
            self._listener.participant_active(self)

    # -- audio level and connection quality ---------------------------------------------------

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
