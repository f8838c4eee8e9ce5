"""The public RoomService API, Twirp over HTTP: ``POST /twirp/livekit.RoomService/<Method>``.

Bodies are protobuf or JSON (answered in kind). Grants and the stateless ``limit.*`` checks
are done here; the work happens on the node hosting the room (over the bus), except ListRooms,
which reads the shared store.

Errors follow LiveKit (``pkg/service/roomservice.go``, ``auth.go``): a missing or bad token and
a missing grant are all ``unauthenticated`` (401), LiveKit's "permissions denied" followed by
what was missing; a limit is ``invalid_argument``; ListParticipants of a room that does not
exist is an empty list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit.protocol import models
from livekit.protocol import room as room_pb
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from trackyard.core import limits, messages
from trackyard.core.auth import Claims, VideoGrants, verify_token
from trackyard.core.config import LimitConfig
from trackyard.core.errors import BusUnavailableError, StoreUnavailableError
from trackyard.core.refusal import Code, Refusal
from trackyard.core.store import Placement
from trackyard.signal.edge import Edge
from trackyard.signal.metrics import TWIRP_REQUESTS

log = structlog.get_logger(__name__)

PREFIX = "/twirp/livekit.RoomService/"
PROTOBUF = "application/protobuf"
JSON = "application/json"

Grant = Callable[[VideoGrants, Message], str]  # returns a refusal, or "" when allowed

PERMISSION_DENIED = "permissions denied"  # LiveKit's ErrPermissionDenied text
DEFAULT_RPC_TIMEOUT_MS = 10_000  # LiveKit's DataChannelRpcDefaultResponseTimeout


def _create(grants: VideoGrants, _req: Message) -> str:
    return "" if grants.room_create else "token lacks the roomCreate grant"


def _list(grants: VideoGrants, _req: Message) -> str:
    return "" if grants.room_list else "token lacks the roomList grant"


def admin_grant(grants: VideoGrants, req: Message) -> str:
    room = getattr(req, "room", "")
    if not grants.room_admin:
        return "token lacks the roomAdmin grant"
    if grants.room != room:
        return f"token's roomAdmin grant is for room {grants.room!r}, not {room!r}"
    return ""


@dataclass(frozen=True)
class _Method:
    request: type[Message]
    response: type[Message]
    grant: Grant


METHODS: dict[str, _Method] = {
    "CreateRoom": _Method(room_pb.CreateRoomRequest, models.Room, _create),
    "ListRooms": _Method(room_pb.ListRoomsRequest, room_pb.ListRoomsResponse, _list),
    "DeleteRoom": _Method(room_pb.DeleteRoomRequest, room_pb.DeleteRoomResponse, _create),
    "ListParticipants": _Method(
        room_pb.ListParticipantsRequest, room_pb.ListParticipantsResponse, admin_grant
    ),
    "GetParticipant": _Method(room_pb.RoomParticipantIdentity, models.ParticipantInfo, admin_grant),
    "RemoveParticipant": _Method(
        room_pb.RoomParticipantIdentity, room_pb.RemoveParticipantResponse, admin_grant
    ),
    "MutePublishedTrack": _Method(
        room_pb.MuteRoomTrackRequest, room_pb.MuteRoomTrackResponse, admin_grant
    ),
    "UpdateParticipant": _Method(
        room_pb.UpdateParticipantRequest, models.ParticipantInfo, admin_grant
    ),
    "UpdateSubscriptions": _Method(
        room_pb.UpdateSubscriptionsRequest, room_pb.UpdateSubscriptionsResponse, admin_grant
    ),
    "SendData": _Method(room_pb.SendDataRequest, room_pb.SendDataResponse, admin_grant),
    "UpdateRoomMetadata": _Method(room_pb.UpdateRoomMetadataRequest, models.Room, admin_grant),
    "PerformRpc": _Method(room_pb.PerformRpcRequest, room_pb.PerformRpcResponse, admin_grant),
}

# Methods addressing one participant: an unknown room means an unknown participant (LiveKit's
# ErrParticipantNotFound), except that ListParticipants of an unknown room lists nobody.
_PARTICIPANT_METHODS = {
    "GetParticipant",
    "RemoveParticipant",
    "MutePublishedTrack",
    "UpdateParticipant",
    "UpdateSubscriptions",
    "PerformRpc",
}


async def handle(request: Request) -> Response:
    name = request.path_params["method"]
    content_type = request.headers.get("content-type", PROTOBUF).split(";")[0].strip().lower()
    as_json = content_type == JSON
    try:
        method = METHODS.get(name)
        if method is None:
            raise Refusal(Code.BAD_ROUTE, f"no RoomService method {name!r}")
        claims = claims_of(request)
        req = decode_body(method.request, await request.body(), as_json)
        refusal = method.grant(claims.video, req)
        if refusal:
            raise Refusal(Code.UNAUTHENTICATED, f"{PERMISSION_DENIED}: {name}: {refusal}")
        edge: Edge = request.app.state.edge
        invalid = check_request(edge.config.limit, req)
        if invalid:
            raise Refusal(Code.INVALID_ARGUMENT, invalid)
        resp = await call(edge, name, req)
    except Refusal as exc:
        return error_response(name, exc)
    TWIRP_REQUESTS.labels(name, "ok").inc()
    if as_json:
        body = json_format.MessageToJson(resp, preserving_proto_field_name=True)
        return Response(body, media_type=JSON)
    return Response(resp.SerializeToString(), media_type=PROTOBUF)


def error_json(refusal: Refusal) -> Response:
    """A Twirp error body, ``{"code", "msg"}``, with the code's HTTP status."""
    return JSONResponse({"code": refusal.twirp_code, "msg": refusal.reason}, refusal.status)


def error_response(method: str, refusal: Refusal) -> Response:
    """A refused Twirp call, counted and logged under ``method``."""
    TWIRP_REQUESTS.labels(method, refusal.twirp_code).inc()
    log.info("twirp error", method=method, code=refusal.twirp_code, msg=refusal.reason)
    return error_json(refusal)


def claims_of(request: Request) -> Claims:
    """The token from ``Authorization: Bearer`` or, as LiveKit, an ``access_token`` parameter."""
    header = request.headers.get("authorization", "")
    if header:
        if not header.lower().startswith("bearer "):
            raise Refusal(
                Code.UNAUTHENTICATED, "invalid authorization header. Must start with Bearer "
            )
        token = header[7:].strip()
    else:
        token = request.query_params.get("access_token", "")
    if not token:
        raise Refusal(
            Code.UNAUTHENTICATED,
            f"{PERMISSION_DENIED}: no access token: pass 'Authorization: Bearer <jwt>'",
        )
    return verify_token(token, request.app.state.edge.keys)


def check_request(limit: LimitConfig, req: Message) -> str:
    """The ``limit.*`` and argument checks LiveKit does before calling a node, or ``""``."""
    if isinstance(req, room_pb.CreateRoomRequest):
        return limits.check_room_name(limit, req.name) or limits.check_metadata(limit, req.metadata)
    if isinstance(req, room_pb.UpdateRoomMetadataRequest):
        return limits.check_metadata(limit, req.metadata)
    if isinstance(req, room_pb.UpdateParticipantRequest):
        # the node checks the participant's attributes as they would be after the update
        return (
            limits.check_name(limit, req.name)
            or limits.check_metadata(limit, req.metadata)
            or limits.check_attributes(limit, req.attributes)
        )
    if isinstance(req, room_pb.SendDataRequest) and len(req.nonce) not in (0, 16):
        return f"nonce should be 16-bytes or not present, got: {len(req.nonce)} bytes"
    if isinstance(req, room_pb.PerformRpcRequest) and not req.destination_identity:
        return "destination identity is required"
    return ""


def decode_body(kind: type[Message], body: bytes, as_json: bool) -> Message:
    try:
        if as_json:
            return json_format.Parse(body or b"{}", kind(), ignore_unknown_fields=True)
        return kind.FromString(body)
    except (DecodeError, json_format.ParseError, UnicodeDecodeError) as exc:
        fmt = "JSON" if as_json else "protobuf"
        raise Refusal(
            Code.MALFORMED, f"body is not a {fmt} {kind.DESCRIPTOR.name}: {exc}"
        ) from None


async def call(edge: Edge, name: str, req: Message) -> Message:
    """Method ``name`` of RoomService (grants already checked), where the room lives."""
    method = METHODS[name]
    if name == "ListRooms":
        assert isinstance(req, room_pb.ListRoomsRequest)
        try:
            rooms = await edge.store.list_rooms(list(req.names) or None)
        except StoreUnavailableError as exc:
            raise Refusal(Code.UNAVAILABLE, str(exc)) from None
        return room_pb.ListRoomsResponse(rooms=rooms)
    room = req.name if isinstance(req, room_pb.CreateRoomRequest) else getattr(req, "room", "")
    if not room:
        raise Refusal(Code.INVALID_ARGUMENT, f"{name}: room name is required")
    placement = await place(edge, room, create=name == "CreateRoom")
    if placement is None:
        if name == "ListParticipants":
            return room_pb.ListParticipantsResponse()
        if name in _PARTICIPANT_METHODS:
            raise Refusal(Code.NOT_FOUND, f"participant does not exist: no room {room}")
        raise Refusal(Code.NOT_FOUND, f"requested room does not exist: {room}")
    timeout = messages.RPC_TIMEOUT_SECONDS
    if isinstance(req, room_pb.PerformRpcRequest):
        # the node answers within the participant's response timeout (LiveKit's default 10 s)
        timeout += (req.response_timeout_ms or DEFAULT_RPC_TIMEOUT_MS) / 1000
    data = await call_node(edge, placement.node_id, name, req.SerializeToString(), timeout)
    return method.response.FromString(data)


async def place(edge: Edge, room: str, *, create: bool) -> Placement | None:
    """Where ``room`` lives; a store outage is ``unavailable``."""
    try:
        return await edge.router.place(room, create=create)
    except StoreUnavailableError as exc:
        raise Refusal(Code.UNAVAILABLE, str(exc)) from None


async def call_node(edge: Edge, node_id: str, method: str, body: bytes, timeout: float) -> bytes:
    """The node's answer (its refusals pass on unchanged); a bus outage is ``unavailable``."""
    try:
        return await edge.rpc.call(node_id, method, body, timeout)
    except BusUnavailableError as exc:
        raise Refusal(Code.UNAVAILABLE, str(exc)) from None
