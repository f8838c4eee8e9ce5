"""A room on this node: its participants, their tracks, data relay and lifetime.

A room may span nodes: then this is one part of it. Its home node (the placement) is the
authority for room-level state; each part hosts its own participants, mirrors the others'
(:mod:`trackyard.sfu.peers`) and pulls the remote tracks its participants subscribe to over
relay links (:mod:`trackyard.sfu.relay`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import structlog
from livekit.protocol import models, rtc

from trackyard.core import ids, messages, responses, turn
from trackyard.core.bus import Bus, Envelope
from trackyard.core.config import Config
from trackyard.core.refusal import Code, Refusal
from trackyard.core.store import Store
from trackyard.sfu import serverrpc
from trackyard.sfu.audiolevel import AudioLevelSettings
from trackyard.sfu.participant import Participant, ParticipantServices, Spawn, State
from trackyard.sfu.peers import RemoteParticipant, RoomPeers, participant_update, participants_of
from trackyard.sfu.relay import LAYER_MARK, RelayIn, parse_alias
from trackyard.sfu.roomrecord import RoomRecord
from trackyard.sfu.rtpstats import TrafficCounters
from trackyard.sfu.updates import ParticipantUpdates

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
    bus: Bus  # to the room's other nodes
    relay_counters: TrafficCounters  # media crossing between nodes, apart from the clients'
    # a part asks the home (node, room, identity) to admit a join; raises Refusal
    admit: Callable[[str, str, str], Awaitable[None]]


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

    def home_lost(self, room: Room) -> None:
        """The room's home node left or died: one of its parts must take the home role."""


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
        home_node: str = "",
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
        self.home_node = home_node or services.node_id
        self.participants: dict[str, Participant] = {}  # identity -> participant
        self.record = RoomRecord(
            services.store,
            name,
            services.node_id,
            spawn=services.spawn,
            room_info=self._stored_info,
        )
        self.peers = RoomPeers(
            name, services.node_id, bus=services.bus, patience=services.config.signal.ping_timeout
        )
        self.relays: dict[str, Participant] = {}  # node id -> its relay participant here
        self._relays_in: dict[str, RelayIn] = {}  # node id -> our link pulling its tracks
        self._remote_speakers: dict[str, list[models.SpeakerInfo]] = {}  # node id -> speakers
        # node id -> participant sid -> its quality, as its node scored it
        self._remote_quality: dict[str, dict[str, rtc.ConnectionQualityInfo]] = {}
        self._admitted: dict[str, float] = {}  # home: joins admitted for other nodes -> until
        self.closed = False
        self.handed_over = False  # closed here while the room lives on on other nodes
        self._close_timer: asyncio.TimerHandle | None = None
        room_cfg = services.config.room
        self.updates = ParticipantUpdates(
            self._send_update,
            lambda: len(self.participants),
            interval=room_cfg.participant_update_interval,
            rate=room_cfg.participant_update_rate,
            target_size=room_cfg.update_batch_target_size,
        )
        self.log = log.bind(room=name, room_sid=self.sid)
        self._arm_close_timer(self.empty_timeout)
        self._monitors = (
            self._spawn(self._speakers_loop()),
            self._spawn(self._quality_loop()),
        )

    # -- snapshot ---------------------------------------------------------------------------

    @property
    def is_home(self) -> bool:
        return self.home_node == self._services.node_id

    def visible_infos(self, exclude: Participant | None = None) -> list[models.ParticipantInfo]:
        """Everyone others may see: its own participants and the other nodes'."""
        infos = [p.info() for p in self.participants.values() if p is not exclude and not p.hidden]
        infos += [r.info for r in self.peers.remotes.values() if not r.hidden]
        return infos

    def info(self) -> models.Room:
        visible = [p for p in self.participants.values() if not p.hidden]
        remote = [r for r in self.peers.remotes.values() if not r.hidden]
        return models.Room(
            sid=self.sid,
            name=self.name,
            empty_timeout=self.empty_timeout,
            departure_timeout=self.departure_timeout,
            max_participants=self.max_participants,
            creation_time=int(self.created_at),
            creation_time_ms=int(self.created_at * 1000),
            metadata=self.metadata,
            num_participants=len(visible) + len(remote),
            num_publishers=sum(1 for p in visible if p.tracks)
            + sum(1 for r in remote if r.info.tracks),
        )

    def _persist(self) -> None:
        if self.is_home:  # the home writes the room's record
            self.record.room()

    def _stored_info(self) -> models.Room | None:
        """The record as written now (a closed room was deleted: keep it deleted)."""
        return self.info() if self.is_home and not self.closed else None

    # -- join / leave -----------------------------------------------------------------------

    def check_admission(self, start: messages.SessionStart) -> None:
        self.admit(start.identity)

    def admit(self, identity: str, *, hold: float = 0.0) -> None:
        """Refuse a join the room has no place for. Counts everyone on every node the home
        knows of and the joins it admitted for other nodes that have not shown up yet;
        ``hold``: count this one too for that long (a join admitted for another node)."""
        if self.closed:
            raise Refusal(Code.UNAVAILABLE, f"room {self.name} is closing")
        now = time.monotonic()
        present = self.participants.keys() | self.peers.remotes.keys()
        self._admitted = {
            who: until
            for who, until in self._admitted.items()
            if until > now and who not in present
        }
        counted = len(present) + len(self._admitted.keys() - {identity})
        if self.max_participants and identity not in present and counted >= self.max_participants:
            raise Refusal(
                Code.PERMISSION_DENIED,
                f"room {self.name} is full (max_participants {self.max_participants})",
            )
        if hold:
            self._admitted[identity] = now + hold

    async def _admitted_by_home(self, start: messages.SessionStart) -> None:
        """A part asks the home, which counts the whole room; the part's own view decides
        only when the home cannot answer."""
        try:
            await self._services.admit(self.home_node, self.name, start.identity)
        except Refusal as exc:
            if exc.code is not Code.UNAVAILABLE and exc.code is not Code.NOT_FOUND:
                raise
            self.log.warning(
                "home cannot admit; counting here", home=self.home_node, why=exc.reason
            )
            self.check_admission(start)
        else:
            if self.closed:
                raise Refusal(Code.UNAVAILABLE, f"room {self.name} is closing")

    async def join(self, start: messages.SessionStart) -> Participant:
        if start.relay_node:
            return await self._join_relay(start)
        if self.max_participants and not self.is_home and start.identity not in self.participants:
            await self._admitted_by_home(start)
        else:
            self.check_admission(start)
        old = self.participants.get(start.identity)
        if old is not None:
            await self.remove(old, models.DisconnectReason.DUPLICATE_IDENTITY, notify=True)
        # a mirror of the same identity is a stale one (it rejoins here): this one wins
        self.peers.remotes.pop(start.identity, None)
        participant = Participant(
            start, room_name=self.name, services=self._services.participants, listener=self
        )
        self.participants[participant.identity] = participant
        self.record.seat(participant.identity)
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
        others = self.visible_infos(exclude=participant)
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
        too: metadata may have changed), the room, and its publishing state (what was sent
        before the node noticed the signal was gone is lost)."""
        infos = [*self.visible_infos(exclude=participant), participant.info()]
        participant.send(responses.participant_update(infos))
        participant.send(responses.room_update(self.info()))
        participant.publisher.resend_state()

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
        info = participant.info()
        info.disconnect_reason = reason
        if not participant.hidden:
            self.updates.push(info)
        self.peers.send(messages.PEER_PARTICIPANTS, participant_update([info]))
        self.record.participant_gone(participant.identity)
        self.record.unseat(participant.identity)
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
        self.updates.close()
        if self.is_home and reason != models.DisconnectReason.SERVER_SHUTDOWN:
            self.peers.send(messages.PEER_CLOSE, headers={"reason": str(int(reason))})
        else:  # a part, or a home going away with its node: the others keep the room
            self.handed_over = bool(self.peers.nodes)
            self.peers.send(messages.PEER_BYE)
        await self._close_relays()
        await self.record.flush()
        await self._listener.room_closed(self)
        self.log.info("room closed", reason=models.DisconnectReason.Name(reason))

    async def evict_all(self, reason: str) -> None:
        """Give the room up: release it, and send everyone to reconnect (they land elsewhere)."""
        self.closed = True
        self._cancel_close_timer()
        self._stop_monitors()
        self.handed_over = bool(self.peers.nodes)
        await self._listener.room_closed(self)
        for participant in list(self.participants.values()):
            participant.send(responses.rejoin())
            await self.remove(participant, models.DisconnectReason.STATE_MISMATCH, notify=False)
        self.updates.close()
        self.peers.send(messages.PEER_BYE)  # the others keep the room (one of them takes home)
        await self._close_relays()
        self.log.info("room evicted", reason=reason)

    async def _close_relays(self) -> None:
        for link in list(self._relays_in.values()):
            await link.close(tell_origin=True)
        for relay in list(self.relays.values()):
            await self._remove_relay(relay)
        await self.peers.close()

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
        """Someone keeps the room open: a participant here, or (for the home, which holds
        room-level state for everyone) on another node."""
        if any(not _dependent(p) for p in self.participants.values()):
            return True
        return self.is_home and any(not _remote_dependent(r) for r in self.peers.remotes.values())

    async def _close_if_idle(self) -> None:
        if not self._has_independent() and not self.closed:
            await self.close(models.DisconnectReason.ROOM_CLOSED)

    # -- updates ----------------------------------------------------------------------------

    def broadcast(self, response: rtc.SignalResponse, exclude: Participant | None = None) -> None:
        data = response.SerializeToString()
        for p in self.participants.values():
            if p is not exclude and p.state is not State.DISCONNECTED:
                p.send_raw(Envelope(kind=messages.SIGNAL, session=p.session_id, data=data))

    def _send_update(self, infos: list[models.ParticipantInfo]) -> None:
        self.broadcast(responses.participant_update(infos))

    def _announce(self, participant: Participant) -> None:
        """Send the participant's snapshot: to everyone (at once or batched: :mod:`updates`),
        and at once to itself (only to itself when hidden)."""
        info = participant.info()
        if participant.hidden or not self.updates.push(info):
            participant.send(responses.participant_update([info]))
        if not self.closed:
            self.record.participant(info)
        self.peers.send(messages.PEER_PARTICIPANTS, participant_update([info]))
        self._persist()

    def set_metadata(self, metadata: str) -> None:
        self.metadata = metadata
        self.broadcast(responses.room_update(self.info()))
        self._send_room_state()
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
        self._unsubscribe_relays(info.sid)

    # -- data -------------------------------------------------------------------------------

    def deliver_data(
        self, packet: models.DataPacket, label: str, exclude: Participant | None = None
    ) -> int:
        """Send to the destinations named in the packet (or everyone), here and on the
        room's other nodes hosting any of them; returns how many were sent here."""
        destinations = _destinations(packet)
        data = packet.SerializeToString()
        if destinations:
            nodes = {r.node_id for r in self.peers.remotes.values() if r.identity in destinations}
            self.peers.send(messages.PEER_DATA, data, to=nodes, headers={"label": label})
        else:
            self.peers.send(messages.PEER_DATA, data, headers={"label": label})
        return self._deliver_here(packet, data, label, exclude)

    def _deliver_here(
        self,
        packet: models.DataPacket,
        data: bytes,
        label: str,
        exclude: Participant | None = None,
    ) -> int:
        destinations = _destinations(packet)
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
        for track_sid in participant.uptracks:
            for p in self.participants.values():
                self._spawn(p.unsubscribe(track_sid))
            self._unsubscribe_relays(track_sid)

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
            if participant.relay_node:
                await self._subscribe_relay(participant, track_sid)
                continue
            found = self.find_track(track_sid)
            if found is None:
                remote = self._find_remote_track(track_sid)
                if remote is not None:
                    await self._subscribe_remote(participant, *remote)
                    continue
            if found is None or found[0] is participant:
                self.log.info("subscription to unknown track ignored", track=track_sid)
                continue
            await self._subscribe(participant, found[0], track_sid)

    async def _subscribe_relay(self, relay: Participant, alias: str) -> None:
        """Another node pulls one of our tracks (relays take local tracks only), or one
        layer of it (``<sid>~<quality>``: its DownTrack stays on that layer)."""
        track_sid, quality = parse_alias(alias)
        found = self.find_track(track_sid)
        up = found[0].uptracks.get(track_sid) if found is not None else None
        if found is None or up is None:
            self.log.info("relay subscription to unknown track ignored", track=alias)
            return
        subscribed = await relay.subscribe(up, publisher_sid=found[0].sid, track_sid=alias)
        if subscribed and quality is not None:
            pin = rtc.UpdateTrackSettings(track_sids=[alias])
            pin.quality = quality  # type: ignore[assignment]  # an enum value
            relay.subscriber.set_track_preference(pin)

    def _unsubscribe_relays(self, track_sid: str) -> None:
        """The track is gone: the streams other nodes pull of it (each layer) end."""
        prefix = track_sid + LAYER_MARK
        for relay in self.relays.values():
            for alias in list(relay.downtracks):
                if alias == track_sid or alias.startswith(prefix):
                    self._spawn(relay.unsubscribe(alias))

    async def subscribe_all(self, participant: Participant) -> None:
        """Subscribe ``participant`` to every track published in the room."""
        for other in list(self.participants.values()):
            if other is not participant:
                for track_sid in list(other.uptracks):
                    await self._subscribe(participant, other, track_sid)
        for remote in list(self.peers.remotes.values()):
            for info in remote.info.tracks:
                self._spawn(self._subscribe_remote(participant, remote, info))

    def find_track(self, track_sid: str) -> tuple[Participant, models.TrackInfo] | None:
        for p in self.participants.values():
            info = p.tracks.get(track_sid)
            if info is not None:
                return p, info
        return None

    # -- the room's other nodes --------------------------------------------------------------

    def seed_remotes(self, infos: Sequence[models.ParticipantInfo], seats: dict[str, str]) -> None:
        """A part that just opened: the other nodes' participants as the store has them, so
        its first join response lists them (the nodes' own snapshots follow)."""
        for info in infos:
            node = seats.get(info.identity, "")
            if node and node != self._services.node_id and info.identity not in self.participants:
                self.peers.remotes[info.identity] = RemoteParticipant(info, node)

    def open_to_peers(self, nodes: set[str]) -> None:
        """This part just opened (or learned of more parts): say hello to them."""
        fresh = [n for n in nodes if self.peers.add(n)]
        if fresh:
            hello = participant_update(self._own_infos())
            self.peers.send(messages.PEER_HELLO, hello, to=fresh)

    def _own_infos(self) -> list[models.ParticipantInfo]:
        return [p.info() for p in self.participants.values()]

    def peer_message(self, env: Envelope) -> None:
        """What another node of the room told this part (in its order)."""
        op = env.headers.get("op", "")
        sender = env.headers.get("from", "")
        if self.closed or not sender or sender == self._services.node_id:
            return
        if self.peers.add(sender) and op not in (messages.PEER_HELLO, messages.PEER_BYE):
            # it knows us but we missed its hello: ask for its snapshot
            self.peers.send(messages.PEER_HELLO, participant_update(self._own_infos()), to=[sender])
        if op == messages.PEER_HELLO:
            self._apply_remote(sender, participants_of(env.data), snapshot=True)
            self.peers.send(
                messages.PEER_SNAPSHOT, participant_update(self._own_infos()), to=[sender]
            )
            if self.is_home:
                self._send_room_state(to=[sender])
        elif op == messages.PEER_SNAPSHOT:
            self._apply_remote(sender, participants_of(env.data), snapshot=True)
        elif op == messages.PEER_PARTICIPANTS:
            self._apply_remote(sender, participants_of(env.data), snapshot=False)
        elif op == messages.PEER_ROOM:
            self._adopt_room(sender, models.Room.FromString(env.data), env.headers)
        elif op == messages.PEER_SPEAKERS:
            speakers = list(rtc.SpeakersChanged.FromString(env.data).speakers)
            self._remote_speakers[sender] = speakers
        elif op == messages.PEER_QUALITY:
            infos = rtc.ConnectionQualityUpdate.FromString(env.data).updates
            self._remote_quality[sender] = {i.participant_sid: i for i in infos}
        elif op == messages.PEER_DATA:
            packet = models.DataPacket.FromString(env.data)
            self._deliver_here(packet, env.data, env.headers.get("label", ""))
        elif op == messages.PEER_BYE:
            self.peer_gone(sender, "left the room")
        elif op == messages.PEER_CLOSE and sender == self.home_node:
            reason = int(env.headers.get("reason", "0") or 0)
            self._spawn(self.close(cast(models.DisconnectReason, reason)))
        else:
            self.log.warning("unknown peer message", op=op, peer=sender)

    def _apply_remote(
        self, node: str, infos: list[models.ParticipantInfo], *, snapshot: bool
    ) -> None:
        listed = {i.identity for i in infos}
        changed: list[models.ParticipantInfo] = []
        for info in infos:
            if info.identity in self.participants or info.identity.startswith(
                ids.RELAY_IDENTITY_PREFIX
            ):
                continue
            old = self.peers.remotes.get(info.identity)
            if info.state == models.ParticipantInfo.DISCONNECTED:
                if old is not None and old.node_id == node:
                    self._remote_left(old, info)
                continue
            if old is not None and old.node_id == node and old.info.version > info.version:
                continue
            remote = RemoteParticipant(info, node)
            self.peers.remotes[info.identity] = remote
            self._remote_tracks_changed(old, remote)
            if not remote.hidden:
                changed.append(info)
        if snapshot:
            for r in self.peers.on(node):
                if r.identity not in listed:
                    self._remote_left(r, None)
        if changed:
            self.updates.push(*changed)
            if self._has_independent():
                self._cancel_close_timer()
            self._persist()

    def _remote_tracks_changed(self, old: RemoteParticipant | None, new: RemoteParticipant) -> None:
        before = old.tracks if old is not None else {}
        after = new.tracks
        for sid in before.keys() - after.keys():
            self._remote_track_gone(new.node_id, sid)
        for sid, info in after.items():
            if sid not in before:
                self.log.info("remote track", participant=new.identity, track=sid, node=new.node_id)
                for p in list(self.participants.values()):
                    if p.auto_subscribe:
                        self._spawn(self._subscribe_remote(p, new, info))

    def _remote_track_gone(self, node: str, track_sid: str) -> None:
        for p in list(self.participants.values()):
            self._spawn(p.unsubscribe(track_sid))
        link = self._relays_in.get(node)
        if link is not None:
            link.track_gone(track_sid)

    def _remote_left(self, remote: RemoteParticipant, info: models.ParticipantInfo | None) -> None:
        if self.peers.remotes.get(remote.identity) is not remote:
            return
        del self.peers.remotes[remote.identity]
        for sid in remote.tracks:
            self._remote_track_gone(remote.node_id, sid)
        if info is None:
            info = models.ParticipantInfo()
            info.CopyFrom(remote.info)
            info.state = models.ParticipantInfo.DISCONNECTED
        if not remote.hidden:
            self.updates.push(info)
        self._persist()
        if not self._has_independent() and not self.closed:
            self._arm_close_timer(self.departure_timeout)

    def peer_gone(self, node: str, why: str) -> None:
        """A node of the room left it or died: its participants are gone from here."""
        for remote in self.peers.on(node):
            info = models.ParticipantInfo()
            info.CopyFrom(remote.info)
            info.state = models.ParticipantInfo.DISCONNECTED
            self._remote_left(remote, info)
        self.peers.drop(node)
        self._remote_speakers.pop(node, None)
        self._remote_quality.pop(node, None)
        link = self._relays_in.pop(node, None)
        if link is not None:
            self._spawn(link.close())
        relay = self.relays.get(node)
        if relay is not None:
            self._spawn(self._remove_relay(relay))
        self.log.info("room part gone", peer=node, why=why)
        if node == self.home_node and not self.closed:
            self._listener.home_lost(self)

    def _adopt_room(self, sender: str, info: models.Room, headers: dict[str, str]) -> None:
        """Room-level state from the home (the authority): take it as is."""
        epoch = int(headers.get("epoch", "0") or 0)
        if sender != self.home_node and epoch < self.epoch:
            return  # a stale home
        self.home_node = sender
        self.epoch = max(self.epoch, epoch)
        self.adopt(info)
        self.broadcast(responses.room_update(self.info()))

    def adopt(self, info: models.Room) -> None:
        """Take room-level state from the home (or from the store, written by the home)."""
        self.sid = info.sid
        self.created_at = info.creation_time_ms / 1000 if info.creation_time_ms else self.created_at
        self.empty_timeout = info.empty_timeout
        self.departure_timeout = info.departure_timeout
        self.max_participants = info.max_participants
        self.metadata = info.metadata

    def _send_room_state(self, to: list[str] | None = None) -> None:
        if self.is_home:
            self.peers.send(
                messages.PEER_ROOM,
                self.info().SerializeToString(),
                to=to,
                headers={"epoch": str(self.epoch)},
            )

    def become_home(self, epoch: int) -> None:
        """This part took the home role (the old home is gone): the others hear it first."""
        self.home_node = self._services.node_id
        self.epoch = epoch
        self.log.info("took the home role", epoch=epoch)
        self._send_room_state()
        self._persist()

    # -- relays: tracks crossing to and from the room's other nodes ---------------------------

    async def _join_relay(self, start: messages.SessionStart) -> Participant:
        """Another node of the room pulls tracks from this one (its relay participant)."""
        if self.closed:
            raise Refusal(Code.UNAVAILABLE, f"room {self.name} is closing")
        old = self.relays.get(start.relay_node)
        if old is not None:
            await self._remove_relay(old)
        relay = Participant(
            start,
            room_name=self.name,
            services=dataclasses.replace(
                self._services.participants, counters=self._services.relay_counters
            ),
            listener=_RelayListener(self),
        )
        self.relays[start.relay_node] = relay
        self._listener.participant_added(self, relay)
        relay.start()
        relay.joined(self._join_response(relay))
        await relay.negotiate_subscriber()
        self.open_to_peers({start.relay_node})
        self.log.info("relay joined", peer=start.relay_node, psid=relay.sid)
        return relay

    async def remove_relay(self, relay: Participant) -> None:
        await self._remove_relay(relay)

    async def _remove_relay(self, relay: Participant) -> None:
        if self.relays.get(relay.relay_node) is not relay:
            return
        del self.relays[relay.relay_node]
        self._listener.participant_removed(self, relay)
        await relay.close(reason="relay closed")
        self.log.info("relay left", peer=relay.relay_node)

    def _find_remote_track(
        self, track_sid: str
    ) -> tuple[RemoteParticipant, models.TrackInfo] | None:
        for remote in self.peers.remotes.values():
            info = remote.tracks.get(track_sid)
            if info is not None:
                return remote, info
        return None

    def _relay_in(self, node: str) -> RelayIn:
        link = self._relays_in.get(node)
        if link is None or link.closed:
            services = self._services.participants
            audio = services.config.audio
            link = RelayIn(
                self.name,
                node,
                node_id=self._services.node_id,
                bus=self._services.bus,
                make_peer_connection=services.make_peer_connection,
                counters=self._services.relay_counters,
                audio=AudioLevelSettings(
                    active_level=audio.active_level,
                    min_percentile=audio.min_percentile,
                    update_interval_ms=audio.update_interval,
                    smooth_intervals=audio.smooth_intervals,
                ),
                join_timeout=services.config.signal.join_timeout,
                on_closed=self._relay_in_closed,
            )
            self._relays_in[node] = link
        return link

    def _relay_in_closed(self, link: RelayIn) -> None:
        if self._relays_in.get(link.origin) is link:
            del self._relays_in[link.origin]

    async def _subscribe_remote(
        self, participant: Participant, remote: RemoteParticipant, info: models.TrackInfo
    ) -> bool:
        if participant.relay_node or info.sid in participant.downtracks:
            return False
        source = await self._relay_in(remote.node_id).source(info)
        if source is None or self.participants.get(participant.identity) is not participant:
            return False
        if self.peers.remotes.get(remote.identity) is None:
            return False  # it left meanwhile
        return await participant.subscribe(source, publisher_sid=remote.sid, track_sid=info.sid)

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
        told: list[models.SpeakerInfo] = []  # what the room's other nodes last heard from us
        while not self.closed:
            await asyncio.sleep(interval)
            speakers = self.active_speakers(time.monotonic())
            if speakers != told:  # ours, for the other nodes' participants
                told = speakers
                update = rtc.SpeakersChanged(speakers=speakers).SerializeToString()
                self.peers.send(messages.PEER_SPEAKERS, update)
            for remote in self._remote_speakers.values():
                speakers = speakers + remote
            speakers.sort(key=lambda s: -s.level)
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
            ours = {p.sid: p.connection_quality() for p in active}
            changed_here = any(
                sid not in last or last[sid].quality != info.quality for sid, info in ours.items()
            )
            if changed_here:  # the other nodes' subscribers to ours need it too
                update = rtc.ConnectionQualityUpdate(updates=list(ours.values()))
                self.peers.send(messages.PEER_QUALITY, update.SerializeToString())
            now = dict(ours)
            for remote in self._remote_quality.values():
                now.update(remote)
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
                    elif (elsewhere := self._find_remote_track(track_sid)) is not None:
                        publishers.add(elsewhere[0].sid)
                updates = [now[sid] for sid in publishers if sid in now]
                p.send(responses.connection_quality(updates))


def _dependent(participant: Participant) -> bool:
    """Agents and egress (LiveKit's ``IsDependent``): they neither open nor hold a room."""
    return participant.kind.lower() in ("agent", "egress")


def _remote_dependent(remote: RemoteParticipant) -> bool:
    return remote.info.kind in (models.ParticipantInfo.AGENT, models.ParticipantInfo.EGRESS)


def _destinations(packet: models.DataPacket) -> set[str]:
    destinations = set(packet.destination_identities)
    if not destinations and packet.HasField("user"):
        destinations = set(packet.user.destination_identities)
    return destinations


class _RelayListener:
    """A relay participant's events (ParticipantListener): it only subscribes and leaves; it
    is never shown, counted or announced."""

    def __init__(self, room: Room) -> None:
        self._room = room

    def participant_active(self, participant: Participant) -> None:
        return None

    def participant_changed(self, participant: Participant) -> None:
        return None

    def track_published(self, participant: Participant, info: models.TrackInfo) -> None:
        return None

    async def track_unpublished(self, participant: Participant, info: models.TrackInfo) -> None:
        return None

    def data_received(self, participant: Participant, raw: bytes, label: str) -> None:
        return None

    async def subscriptions_wanted(
        self, participant: Participant, track_sids: Sequence[str] | None, subscribe: bool
    ) -> None:
        if track_sids is not None:
            await self._room.set_subscriptions(participant, track_sids, subscribe)

    async def participant_gone(
        self, participant: Participant, reason: models.DisconnectReason, *, notify: bool
    ) -> None:
        await self._room.remove_relay(participant)
