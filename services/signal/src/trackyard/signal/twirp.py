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
from trackyard.core.auth import AuthError, Claims, VideoGrants, verify_token
from trackyard.core.config import LimitConfig
from trackyard.core.errors import BusUnavailableError, StoreUnavailableError
from trackyard.core.noderpc import RpcError
from trackyard.core.routing import PlacementError
from trackyard.signal.edge import Edge
from trackyard.signal.metrics import TWIRP_REQUESTS

log = structlog.get_logger(__name__)

PREFIX = "/twirp/livekit.RoomService/"
PROTOBUF = "application/protobuf"
JSON = "application/json"

TWIRP_STATUS = {
    "canceled": 408,
    "invalid_argument": 400,
    "malformed": 400,
    "deadline_exceeded": 408,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "unauthenticated": 401,
    "resource_exhausted": 429,
    "failed_precondition": 412,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "dataloss": 500,
}


class TwirpError(Exception):
    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


Grant = Callable[[VideoGrants, Message], str]  # returns a refusal, or "" when allowed

PERMISSION_DENIED = "permissions denied"  # LiveKit's ErrPermissionDenied text
DEFAULT_RPC_TIMEOUT_MS = 10_000  # LiveKit's DataChannelRpcDefaultResponseTimeout


def _create(grants: VideoGrants, _req: Message) -> str:
    return "" if grants.room_create else "token lacks the roomCreate grant"


def _list(grants: VideoGrants, _req: Message) -> str:
    return "" if grants.room_list else "token lacks the roomList grant"


def _admin(grants: VideoGrants, req: Message) -> str:
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
        room_pb.ListParticipantsRequest, room_pb.ListParticipantsResponse, _admin
    ),
    "GetParticipant": _Method(room_pb.RoomParticipantIdentity, models.ParticipantInfo, _admin),
    "RemoveParticipant": _Method(
        room_pb.RoomParticipantIdentity, room_pb.RemoveParticipantResponse, _admin
    ),
    "MutePublishedTrack": _Method(
        room_pb.MuteRoomTrackRequest, room_pb.MuteRoomTrackResponse, _admin
    ),
    "UpdateParticipant": _Method(room_pb.UpdateParticipantRequest, models.ParticipantInfo, _admin),
    "UpdateSubscriptions": _Method(
        room_pb.UpdateSubscriptionsRequest, room_pb.UpdateSubscriptionsResponse, _admin
    ),
    "SendData": _Method(room_pb.SendDataRequest, room_pb.SendDataResponse, _admin),
    "UpdateRoomMetadata": _Method(room_pb.UpdateRoomMetadataRequest, models.Room, _admin),
    "PerformRpc": _Method(room_pb.PerformRpcRequest, room_pb.PerformRpcResponse, _admin),
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
            raise TwirpError("bad_route", f"no RoomService method {name!r}")
        claims = _claims(request)
        req = _decode(method.request, await request.body(), as_json)
        refusal = method.grant(claims.video, req)
        if refusal:
            raise TwirpError("unauthenticated", f"{PERMISSION_DENIED}: {name}: {refusal}")
        edge: Edge = request.app.state.edge
        invalid = check_request(edge.config.limit, req)
        if invalid:
            raise TwirpError("invalid_argument", invalid)
        resp = await _call(edge, name, method, req)
    except TwirpError as exc:
        TWIRP_REQUESTS.labels(name, exc.code).inc()
        log.info("room service error", method=name, code=exc.code, msg=exc.msg)
        return JSONResponse({"code": exc.code, "msg": exc.msg}, TWIRP_STATUS.get(exc.code, 500))
    TWIRP_REQUESTS.labels(name, "ok").inc()
    if as_json:
        body = json_format.MessageToJson(resp, preserving_proto_field_name=True)
        return Response(body, media_type=JSON)
    return Response(resp.SerializeToString(), media_type=PROTOBUF)


def _claims(request: Request) -> Claims:
    """The token from ``Authorization: Bearer`` or, as LiveKit, an ``access_token`` parameter."""
    header = request.headers.get("authorization", "")
    if header:
        if not header.lower().startswith("bearer "):
            raise TwirpError(
                "unauthenticated", "invalid authorization header. Must start with Bearer "
            )
        token = header[7:].strip()
    else:
        token = request.query_params.get("access_token", "")
    if not token:
        raise TwirpError(
            "unauthenticated",
            f"{PERMISSION_DENIED}: no access token: pass 'Authorization: Bearer <jwt>'",
        )
    try:
        return verify_token(token, request.app.state.edge.keys)
    except AuthError as exc:
        raise TwirpError("unauthenticated", exc.reason) from None


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


def _decode(kind: type[Message], body: bytes, as_json: bool) -> Message:
    try:
        if as_json:
            return json_format.Parse(body or b"{}", kind(), ignore_unknown_fields=True)
        return kind.FromString(body)
    except (DecodeError, json_format.ParseError, UnicodeDecodeError) as exc:
        fmt = "JSON" if as_json else "protobuf"
        raise TwirpError(
            "malformed", f"body is not a {fmt} {kind.DESCRIPTOR.name}: {exc}"
        ) from None


async def _call(edge: Edge, name: str, method: _Method, req: Message) -> Message:
    if name == "ListRooms":
        assert isinstance(req, room_pb.ListRoomsRequest)
        try:
            rooms = await edge.store.list_rooms(list(req.names) or None)
        except StoreUnavailableError as exc:
            raise TwirpError("unavailable", str(exc)) from None
        return room_pb.ListRoomsResponse(rooms=rooms)
    room = req.name if isinstance(req, room_pb.CreateRoomRequest) else getattr(req, "room", "")
    if not room:
        raise TwirpError("invalid_argument", f"{name}: room name is required")
    try:
        placement = await edge.router.place(room, create=name == "CreateRoom")
    except PlacementError as exc:
        raise TwirpError("unavailable", exc.reason) from None
    except StoreUnavailableError as exc:
        raise TwirpError("unavailable", str(exc)) from None
    if placement is None:
        if name == "ListParticipants":
            return room_pb.ListParticipantsResponse()
        if name in _PARTICIPANT_METHODS:
            raise TwirpError("not_found", f"participant does not exist: no room {room}")
        raise TwirpError("not_found", f"requested room does not exist: {room}")
    timeout = messages.RPC_TIMEOUT_SECONDS
    if isinstance(req, room_pb.PerformRpcRequest):
        # the node answers within the participant's response timeout (LiveKit's default 10 s)
        timeout += (req.response_timeout_ms or DEFAULT_RPC_TIMEOUT_MS) / 1000
    try:
        data = await edge.rpc.call(placement.node_id, name, req.SerializeToString(), timeout)
    except RpcError as exc:
        raise TwirpError(exc.code, exc.msg) from None
    except BusUnavailableError as exc:
        raise TwirpError("unavailable", str(exc)) from None
    return method.response.FromString(data)
