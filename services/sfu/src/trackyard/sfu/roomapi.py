"""The node's internal room API: the RoomService methods that act on a hosted room.

Called over the bus (see :mod:`trackyard.core.noderpc`); the public Twirp layer on the edge
checks grants and finds the hosting node, this module does the work.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError, Message
from google.protobuf.wrappers_pb2 import StringValue
from livekit.protocol import models
from livekit.protocol import room as room_pb

from trackyard.core import admin, keys, limits, messages, responses
from trackyard.core.refusal import Code, Refusal
from trackyard.sfu import serverrpc
from trackyard.sfu.participant import LOSSY, RELIABLE, Participant
from trackyard.sfu.room import Room

if TYPE_CHECKING:
    from trackyard.sfu.node import SfuNode

ADMISSION_HOLD = 10.0  # seconds a join admitted for another node counts before it shows up

# Method name -> (request type, handler)
Handler = Callable[["SfuNode", Any], Awaitable[Message]]
_METHODS: dict[str, tuple[type[Message], Handler]] = {}


def method(name: str, request_type: type[Message]) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _METHODS[name] = (request_type, fn)
        return fn

    return register


async def handle(node: SfuNode, name: str, data: bytes) -> bytes:
    entry = _METHODS.get(name)
    if entry is None:
        raise Refusal(Code.UNIMPLEMENTED, f"node has no method {name}")
    request_type, fn = entry
    try:
        request = request_type.FromString(data)
    except DecodeError as exc:
        raise Refusal(Code.INVALID_ARGUMENT, f"{name}: undecodable request: {exc}") from None
    try:
        response = await fn(node, request)
    except _Elsewhere as elsewhere:  # a participant of the room hosted on another node
        return await node.rpc.call_channel(
            keys.node_channel(elsewhere.node_id),
            name,
            data,
            timeout=_forward_timeout(request),
            callee=elsewhere.node_id,
        )
    return response.SerializeToString()


def _forward_timeout(request: Message) -> float:
    """As long as the edge waits for the home (a server RPC waits for the participant)."""
    timeout = messages.RPC_TIMEOUT_SECONDS
    if isinstance(request, room_pb.PerformRpcRequest):
        timeout += (request.response_timeout_ms or 10_000) / 1000
    return timeout


class _Elsewhere(Exception):
    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.node_id = node_id


def _room(node: SfuNode, name: str) -> Room:
    room = node.rooms.get(name)
    if room is None or room.closed:
        raise Refusal(Code.NOT_FOUND, f"requested room does not exist: {name}")
    return room


def _participant(node: SfuNode, room_name: str, identity: str) -> tuple[Room, Participant]:
    room = node.rooms.get(room_name)
    participant = None if room is None or room.closed else room.participants.get(identity)
    if room is not None and participant is None:
        remote = room.peers.remotes.get(identity)
        if remote is not None:
            raise _Elsewhere(remote.node_id)
    if room is None or participant is None:
        raise Refusal(
            Code.NOT_FOUND, f"participant does not exist: {identity!r} in room {room_name!r}"
        )
    return room, participant


@method("CreateRoom", room_pb.CreateRoomRequest)
async def create_room(node: SfuNode, req: room_pb.CreateRoomRequest) -> Message:
    async with node.room_lock(req.name):
        room = await node.ensure_room(
            req.name,
            create=True,
            empty_timeout=req.empty_timeout,
            departure_timeout=req.departure_timeout,
            max_participants=req.max_participants,
            metadata=req.metadata,
            agents=list(req.agents),
        )
    assert room is not None
    return room.info()


@method("DeleteRoom", room_pb.DeleteRoomRequest)
async def delete_room(node: SfuNode, req: room_pb.DeleteRoomRequest) -> Message:
    await _room(node, req.room).close(models.DisconnectReason.ROOM_DELETED)
    return room_pb.DeleteRoomResponse()


@method("AdmitParticipant", room_pb.RoomParticipantIdentity)
async def admit_participant(node: SfuNode, req: room_pb.RoomParticipantIdentity) -> Message:
    """From a part of the room: may this identity join there? (The home counts everyone.)"""
    _room(node, req.room).admit(req.identity, hold=ADMISSION_HOLD)
    return req


@method("ListParticipants", room_pb.ListParticipantsRequest)
async def list_participants(node: SfuNode, req: room_pb.ListParticipantsRequest) -> Message:
    room = node.rooms.get(req.room)
    if room is None or room.closed:  # as LiveKit: an unknown room lists nobody
        return room_pb.ListParticipantsResponse()
    return room_pb.ListParticipantsResponse(
        participants=[p.info() for p in room.participants.values()]
        + [r.info for r in room.peers.remotes.values()]
    )


@method("GetParticipant", room_pb.RoomParticipantIdentity)
async def get_participant(node: SfuNode, req: room_pb.RoomParticipantIdentity) -> Message:
    return _participant(node, req.room, req.identity)[1].info()


@method("RemoveParticipant", room_pb.RoomParticipantIdentity)
async def remove_participant(node: SfuNode, req: room_pb.RoomParticipantIdentity) -> Message:
    room, participant = _participant(node, req.room, req.identity)
    await room.remove(participant, models.DisconnectReason.PARTICIPANT_REMOVED, notify=True)
    return room_pb.RemoveParticipantResponse()


@method("MutePublishedTrack", room_pb.MuteRoomTrackRequest)
async def mute_published_track(node: SfuNode, req: room_pb.MuteRoomTrackRequest) -> Message:
    _, participant = _participant(node, req.room, req.identity)
    if not req.muted and not node.config.room.enable_remote_unmute:
        # LiveKit's ErrRemoteUnmuteNoteEnabled (FailedPrecondition)
        raise Refusal(
            Code.FAILED_PRECONDITION,
            "remote unmute not enabled: set room.enable_remote_unmute to allow it",
        )
    info = await participant.set_track_muted(req.track_sid, req.muted)
    if info is None:
        raise Refusal(Code.NOT_FOUND, f"track {req.track_sid} not found on {req.identity}")
    # tell the publisher's SDK, so its local track state follows
    participant.send(responses.mute(req.track_sid, req.muted))
    return room_pb.MuteRoomTrackResponse(track=info)


@method("UpdateParticipant", room_pb.UpdateParticipantRequest)
async def update_participant(node: SfuNode, req: room_pb.UpdateParticipantRequest) -> Message:
    _, participant = _participant(node, req.room, req.identity)
    limit = node.config.limit
    refusal = (
        limits.check_name(limit, req.name)
        or limits.check_metadata(limit, req.metadata)
        # the participant's attributes as they would be after the update
        or limits.check_attributes(
            limit, limits.merged_attributes(participant.attributes, req.attributes)
        )
    )
    if refusal:
        raise Refusal(Code.INVALID_ARGUMENT, refusal)
    participant.update_info(
        metadata=req.metadata if req.metadata else None,
        name=req.name if req.name else None,
        attributes=dict(req.attributes) if req.attributes else None,
        permission=req.permission if req.HasField("permission") else None,
    )
    return participant.info()


@method("UpdateSubscriptions", room_pb.UpdateSubscriptionsRequest)
async def update_subscriptions(node: SfuNode, req: room_pb.UpdateSubscriptionsRequest) -> Message:
    room, participant = _participant(node, req.room, req.identity)
    sids = list(req.track_sids) + [s for pt in req.participant_tracks for s in pt.track_sids]
    await room.set_subscriptions(participant, sids, req.subscribe)
    return room_pb.UpdateSubscriptionsResponse()


@method("SendData", room_pb.SendDataRequest)
async def send_data(node: SfuNode, req: room_pb.SendDataRequest) -> Message:
    room = _room(node, req.room)
    destinations = list(req.destination_identities)
    if req.destination_sids:
        by_sid = {p.sid: p.identity for p in room.participants.values()}
        by_sid.update({r.sid: r.identity for r in room.peers.remotes.values()})
        destinations += [by_sid[s] for s in req.destination_sids if s in by_sid]
        if not destinations:
            return room_pb.SendDataResponse()  # none of the named sids is here
    packet = models.DataPacket(
        kind=req.kind,
        destination_identities=destinations,
        user=models.UserPacket(
            payload=req.data,
            topic=req.topic if req.HasField("topic") else None,
            destination_identities=destinations,
            nonce=req.nonce,
        ),
    )
    label = LOSSY if req.kind == models.DataPacket.LOSSY else RELIABLE
    room.deliver_data(packet, label)
    return room_pb.SendDataResponse()


@method("UpdateRoomMetadata", room_pb.UpdateRoomMetadataRequest)
async def update_room_metadata(node: SfuNode, req: room_pb.UpdateRoomMetadataRequest) -> Message:
    room = _room(node, req.room)
    refusal = limits.check_metadata(node.config.limit, req.metadata)
    if refusal:
        raise Refusal(Code.INVALID_ARGUMENT, refusal)
    room.set_metadata(req.metadata)
    return room.info()


@method("PerformRpc", room_pb.PerformRpcRequest)
async def perform_rpc(node: SfuNode, req: room_pb.PerformRpcRequest) -> Message:
    if not req.destination_identity:
        raise Refusal(Code.INVALID_ARGUMENT, "destination identity is required")
    _, participant = _participant(node, req.room, req.destination_identity)
    payload = await serverrpc.perform(participant, req.method, req.payload, req.response_timeout_ms)
    return room_pb.PerformRpcResponse(payload=payload)


@method(admin.DRAIN_METHOD, StringValue)
async def drain_node(node: SfuNode, req: StringValue) -> Message:
    """The drain API: drain as on SIGTERM, with an optional deadline override."""
    request = admin.decode_drain(req.SerializeToString())
    await node.drain(request.deadline)
    return admin.record_reply(node.record(fresh=False))


@method("ValidateJoin", room_pb.RoomParticipantIdentity)
async def validate_join(node: SfuNode, req: room_pb.RoomParticipantIdentity) -> Message:
    """Would a join of ``identity`` be admitted now? Used by ``/rtc/validate``."""
    room = node.rooms.get(req.room)
    if room is None:
        if not node.config.room.auto_create:
            raise Refusal(Code.NOT_FOUND, f"room {req.room} does not exist")
        return room_pb.RoomParticipantIdentity()
    # raises the refusal a join would get
    room.check_admission(messages.SessionStart(session_id="", room=req.room, identity=req.identity))
    return room_pb.RoomParticipantIdentity()
