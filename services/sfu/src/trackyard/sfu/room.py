"""A room hosted on this node: its participants, their tracks, data relay and lifetime."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
from livekit.protocol import models, rtc

from trackyard.core import ids, messages, responses, turn
from trackyard.core.bus import Envelope
from trackyard.core.config import Config
from trackyard.core.refusal import Code, Refusal
from trackyard.core.store import Store
from trackyard.sfu import serverrpc
from trackyard.sfu.participant import Participant, ParticipantServices, Spawn, State

log = structlog.get_logger(__name__)

SPEAKER_LEVEL_STEPS = 8  # levels are quantised (as LiveKit does) so noise sends no update


@dataclass(frozen=True)
class RoomServices:
    """What a room may use."""

    config: Config
    node_id: str
    store: Store
    spawn: Spawn
    participants: ParticipantServices  # what each of its participants is given


class RoomListener(Protocol):
    """What a room reports (the node implements this)."""

    def participant_added(self, room: Room, participant: Participant) -> None:
        """It is in the room: its session's messages are for it from now on."""

    def participant_joined(self, room: Room, participant: Participant) -> None:
        """Its join is complete (response sent, subscriptions made)."""

    def participant_active(self, room: Room, participant: Participant) -> None: ...

    def participant_removed(self, room: Room, participant: Participant) -> None:
        """It is out of the room (about to close): its session is over."""

    def participant_left(self, room: Room, participant: Participant) -> None:
        """It left and closed; everyone was told."""

    def track_published(
        self, room: Room, participant: Participant, info: models.TrackInfo
    ) -> None: ...

    def track_unpublished(
        self, room: Room, participant: Participant, info: models.TrackInfo
    ) -> None: ...

    async def room_closed(self, room: Room) -> None:
        """Closed or given up: release it."""


class Room:
    """Implements :class:`~trackyard.sfu.participant.ParticipantListener` for its
    participants."""

    def __init__(
        self,
        name: str,
        services: RoomServices,
        listener: RoomListener,
        *,
        empty_timeout: int,
        departure_timeout: int,
        max_participants: int,
        metadata: str = "",
        epoch: int = 0,
    ) -> None:
        self._services = services
        self._listener = listener
        self._spawn = services.spawn
        self.name = name
        self.sid = ids.new_id(ids.ROOM)
        self.created_at = time.time()
        self.empty_timeout = empty_timeout
        self.departure_timeout = departure_timeout
        self.max_participants = max_participants
        self.metadata = metadata
        self.epoch = epoch
        self.participants: dict[str, Participant] = {}  # identity -> participant
        self.closed = False
        self._close_timer: asyncio.TimerHandle | None = None
        self.log = log.bind(room=name, room_sid=self.sid)
        self._arm_close_timer(self.empty_timeout)
        self._monitors = (
            self._spawn(self._speakers_loop()),
            self._spawn(self._quality_loop()),
        )

    # -- snapshot ---------------------------------------------------------------------------

    def info(self) -> models.Room:
        visible = [p for p in self.participants.values() if not p.hidden]
        return models.Room(
            sid=self.sid,
            name=self.name,
            empty_timeout=self.empty_timeout,
            departure_timeout=self.departure_timeout,
            max_participants=self.max_participants,
            creation_time=int(self.created_at),
            creation_time_ms=int(self.created_at * 1000),
            metadata=self.metadata,
            num_participants=len(visible),
            num_publishers=sum(1 for p in visible if p.tracks),
        )

    def _persist(self) -> None:
        if not self.closed:  # a closed room was deleted from the store; keep it deleted
            self._spawn(self._services.store.put_room(self.info()))

    # -- join / leave -----------------------------------------------------------------------

    def check_admission(self, start: messages.SessionStart) -> None:
        if self.closed:
            raise Refusal(Code.UNAVAILABLE, f"room {self.name} is closing")
        replacing = start.identity in self.participants
        if (
            self.max_participants
            and not replacing
            and len(self.participants) >= self.max_participants
        ):
            raise Refusal(
                Code.PERMISSION_DENIED,
                f"room {self.name} is full (max_participants {self.max_participants})",
            )

    async def join(self, start: messages.SessionStart) -> Participant:
        self.check_admission(start)
        old = self.participants.get(start.identity)
        if old is not None:
            await self.remove(old, models.DisconnectReason.DUPLICATE_IDENTITY, notify=True)
        participant = Participant(
            start, room_name=self.name, services=self._services.participants, listener=self
        )
        self.participants[participant.identity] = participant
        self._listener.participant_added(self, participant)
        if not _dependent(participant):  # agents alone keep no room open (LiveKit)
            self._cancel_close_timer()
        participant.start()
        participant.joined(self._join_response(participant))
        self._announce(participant)
        await participant.negotiate_subscriber()
        if participant.auto_subscribe:
            await self.subscribe_all(participant)
        self._listener.participant_joined(self, participant)
        self.log.info("participant joined", participant=participant.identity, psid=participant.sid)
        return participant

    def _join_response(self, participant: Participant) -> rtc.SignalResponse:
        cfg = self._services.config
        others = [
            p.info() for p in self.participants.values() if p is not participant and not p.hidden
        ]
        return responses.join(
            room=self.info(),
            participant=participant.info(),
            others=others,
            ice_servers=turn.ice_servers(cfg.rtc, participant.sid),
            ping_interval=cfg.signal.ping_interval,
            ping_timeout=cfg.signal.ping_timeout,
            region=cfg.region,
            node_id=self._services.node_id,
        )

    def reconnect_response(self, participant: Participant) -> rtc.SignalResponse:
        cfg = self._services.config
        return responses.reconnect(
            ice_servers=turn.ice_servers(cfg.rtc, participant.sid),
            region=cfg.region,
            node_id=self._services.node_id,
        )

    def send_resume_snapshot(self, participant: Participant) -> None:
        """After the replay, as LiveKit's ResumeParticipant: everyone's current info (its own
        too: metadata may have changed) and the room."""
        infos = [p.info() for p in self.participants.values() if p is participant or not p.hidden]
        participant.send(responses.participant_update(infos))
        participant.send(responses.room_update(self.info()))

    async def remove(
        self,
        participant: Participant,
        reason: models.DisconnectReason,
        *,
        notify: bool,
    ) -> None:
        """Take a participant out. ``notify``: tell its client why (server-initiated leave)."""
        if self.participants.get(participant.identity) is not participant:
            return
        del self.participants[participant.identity]
        self._listener.participant_removed(self, participant)
        if notify:
            participant.send(responses.leave(reason))
        self._drop_subscriptions_to(participant)
        await participant.close(reason=models.DisconnectReason.Name(reason))
        if not participant.hidden:
            info = participant.info()
            info.disconnect_reason = reason
            self.broadcast(responses.participant_update([info]))
        self._spawn(self._services.store.delete_participant(self.name, participant.identity))
        self._persist()
        self._listener.participant_left(self, participant)
        self.log.info(
            "participant left",
            participant=participant.identity,
            reason=models.DisconnectReason.Name(reason),
        )
        if not self._has_independent():
            self._arm_close_timer(self.departure_timeout)

    async def close(self, reason: models.DisconnectReason) -> None:
        if self.closed:
            return
        self.closed = True
        self._cancel_close_timer()
        self._stop_monitors()
        for participant in list(self.participants.values()):
            await self.remove(participant, reason, notify=True)
        await self._listener.room_closed(self)
        self.log.info("room closed", reason=models.DisconnectReason.Name(reason))

    async def evict_all(self, reason: str) -> None:
        """Give the room up: release it, and send everyone to reconnect (they land elsewhere)."""
        self.closed = True
        self._cancel_close_timer()
        self._stop_monitors()
        await self._listener.room_closed(self)
        for participant in list(self.participants.values()):
            participant.send(responses.rejoin())
            await self.remove(participant, models.DisconnectReason.STATE_MISMATCH, notify=False)
        self.log.info("room evicted", reason=reason)

    def _stop_monitors(self) -> None:
        for task in self._monitors:
            if task is not asyncio.current_task():
                task.cancel()

    def _arm_close_timer(self, seconds: int) -> None:
        self._cancel_close_timer()
        loop = asyncio.get_running_loop()
        self._close_timer = loop.call_later(
            max(seconds, 0),
            lambda: self._spawn(self._close_if_idle()),
        )

    def _cancel_close_timer(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None

    def _has_independent(self) -> bool:
        return any(not _dependent(p) for p in self.participants.values())

    async def _close_if_idle(self) -> None:
        if not self._has_independent() and not self.closed:
            await self.close(models.DisconnectReason.ROOM_CLOSED)

    # -- updates ----------------------------------------------------------------------------

    def broadcast(self, response: rtc.SignalResponse, exclude: Participant | None = None) -> None:
        data = response.SerializeToString()
        for p in self.participants.values():
            if p is not exclude and p.state is not State.DISCONNECTED:
                p.send_raw(Envelope(kind=messages.SIGNAL, session=p.session_id, data=data))

    def _announce(self, participant: Participant) -> None:
        """Send the participant's snapshot: to everyone, or only to itself when hidden."""
        info = participant.info()
        update = responses.participant_update([info])
        if participant.hidden:
            participant.send(update)
        else:
            self.broadcast(update)
        if not self.closed:
            self._spawn(self._services.store.put_participant(self.name, info))
        self._persist()

    def set_metadata(self, metadata: str) -> None:
        self.metadata = metadata
        self.broadcast(responses.room_update(self.info()))
        self._persist()

    # -- what its participants report (ParticipantListener) ----------------------------------

    def participant_changed(self, participant: Participant) -> None:
        self._announce(participant)

    def participant_active(self, participant: Participant) -> None:
        self._listener.participant_active(self, participant)

    async def participant_gone(
        self, participant: Participant, reason: models.DisconnectReason, *, notify: bool
    ) -> None:
        await self.remove(participant, reason, notify=notify)

    async def subscriptions_wanted(
        self, participant: Participant, track_sids: Sequence[str] | None, subscribe: bool
    ) -> None:
        if track_sids is None:
            await self.subscribe_all(participant)
        else:
            await self.set_subscriptions(participant, track_sids, subscribe)

    def data_received(self, sender: Participant, raw: bytes, label: str) -> None:
        if not sender.permission.can_publish_data:
            sender.log.info("data packet dropped: token lacks canPublishData")
            return
        try:
            packet = models.DataPacket.FromString(raw)
        except Exception:
            sender.log.warning("undecodable data packet dropped", size=len(raw))
            return
        if serverrpc.intercept(sender, packet):
            return  # the ack/response to a server call (RoomService.PerformRpc)
        packet.participant_identity = sender.identity
        packet.participant_sid = sender.sid
        if packet.HasField("user"):
            packet.user.participant_identity = sender.identity
            packet.user.participant_sid = sender.sid
        self.deliver_data(packet, label, exclude=sender)

    def track_published(self, publisher: Participant, info: models.TrackInfo) -> None:
        """Everyone who auto-subscribes gets the new track."""
        self._listener.track_published(self, publisher, info)
        self.log.info(
            "track published",
            participant=publisher.identity,
            track=info.sid,
            mime=info.mime_type,
            simulcast=info.simulcast,
        )
        for p in list(self.participants.values()):
            if p is not publisher and p.auto_subscribe:
                self._spawn(self._subscribe(p, publisher, info.sid))

    async def track_unpublished(self, publisher: Participant, info: models.TrackInfo) -> None:
        self._listener.track_unpublished(self, publisher, info)
        for p in list(self.participants.values()):
            if p is not publisher:
                await p.unsubscribe(info.sid)

    # -- data -------------------------------------------------------------------------------

    def deliver_data(
        self, packet: models.DataPacket, label: str, exclude: Participant | None = None
    ) -> int:
        """Send to the destinations named in the packet (or everyone); returns how many."""
        destinations = set(packet.destination_identities)
        if not destinations and packet.HasField("user"):
            destinations = set(packet.user.destination_identities)
        data = packet.SerializeToString()
        sent = 0
        for p in self.participants.values():
            if p is exclude or (destinations and p.identity not in destinations):
                continue
            if p.send_data(data, label):
                sent += 1
        return sent

    # -- tracks and subscriptions -----------------------------------------------------------

    def _drop_subscriptions_to(self, participant: Participant) -> None:
        """Its tracks leave every subscriber (the participant closes its own media)."""
        for p in list(self.participants.values()):
            for track_sid in participant.uptracks:
                self._spawn(p.unsubscribe(track_sid))

    async def _subscribe(
        self, participant: Participant, publisher: Participant, track_sid: str
    ) -> bool:
        up = publisher.uptracks.get(track_sid)
        if up is None:
            return False
        return await participant.subscribe(up, publisher_sid=publisher.sid, track_sid=track_sid)

    async def set_subscriptions(
        self, participant: Participant, track_sids: Sequence[str], subscribe: bool
    ) -> None:
        for track_sid in track_sids:
            if not subscribe:
                await participant.unsubscribe(track_sid)
                continue
            found = self.find_track(track_sid)
            if found is None or found[0] is participant:
                self.log.info("subscription to unknown track ignored", track=track_sid)
                continue
            await self._subscribe(participant, found[0], track_sid)

    async def subscribe_all(self, participant: Participant) -> None:
        """Subscribe ``participant`` to every track published in the room."""
        for other in list(self.participants.values()):
            if other is not participant:
                for track_sid in list(other.uptracks):
                    await self._subscribe(participant, other, track_sid)

    def find_track(self, track_sid: str) -> tuple[Participant, models.TrackInfo] | None:
        for p in self.participants.values():
            info = p.tracks.get(track_sid)
            if info is not None:
                return p, info
        return None

    # -- active speakers and connection quality ----------------------------------------------

    def active_speakers(self, now: float) -> list[models.SpeakerInfo]:
        """Who is speaking, loudest first, levels quantised."""
        speakers = []
        for p in self.participants.values():
            level, active = p.audio_level(now)
            if active and not p.hidden:
                quantised = math.ceil(level * SPEAKER_LEVEL_STEPS) / SPEAKER_LEVEL_STEPS
                speakers.append(models.SpeakerInfo(sid=p.sid, level=quantised, active=True))
        speakers.sort(key=lambda s: -s.level)
        return speakers

    async def _speakers_loop(self) -> None:
        """Every ``audio.update_interval``: send who started, changed or stopped speaking."""
        interval = self._services.config.audio.update_interval / 1000
        last: dict[str, float] = {}
        while not self.closed:
            await asyncio.sleep(interval)
            speakers = self.active_speakers(time.monotonic())
            now = {s.sid: s.level for s in speakers}
            changed = [s for s in speakers if last.get(s.sid) != s.level]
            changed += [
                models.SpeakerInfo(sid=sid, level=0.0, active=False)
                for sid in last
                if sid not in now
            ]
            last = now
            if changed:
                self.broadcast(responses.speakers_changed(changed))

    async def _quality_loop(self) -> None:
        """Every window: when anyone's quality changed (or someone new is scored), each active
        participant gets its own quality and that of the publishers it subscribes to."""
        interval = self._services.config.node.connection_quality_interval
        last: dict[str, rtc.ConnectionQualityInfo] = {}
        while not self.closed:
            await asyncio.sleep(interval)
            active = [p for p in self.participants.values() if p.state is State.ACTIVE]
            now = {p.sid: p.connection_quality() for p in active}
            changed = any(
                sid not in last or last[sid].quality != info.quality for sid, info in now.items()
            )
            last = now
            if not changed:
                continue
            for p in active:
                publishers = {p.sid}
                for track_sid in p.downtracks:
                    found = self.find_track(track_sid)
                    if found is not None:
                        publishers.add(found[0].sid)
                updates = [now[sid] for sid in publishers if sid in now]
                p.send(responses.connection_quality(updates))


def _dependent(participant: Participant) -> bool:
    """Agents and egress (LiveKit's ``IsDependent``): they neither open nor hold a room."""
    return participant.kind.lower() in ("agent", "egress")
