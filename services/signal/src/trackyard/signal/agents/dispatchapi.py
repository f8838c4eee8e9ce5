"""Twirp ``livekit.AgentDispatchService``: CreateDispatch, DeleteDispatch, ListDispatch.

Same rules as RoomService (:mod:`trackyard.signal.twirp`): protobuf or JSON bodies, the
``roomAdmin`` grant for the request's room (LiveKit's ``EnsureAdminPermission``), Twirp JSON
errors. The dispatches live with the room on its node (as in LiveKit); CreateDispatch creates
the room when it does not exist yet, as LiveKit does.
"""

from __future__ import annotations

import structlog
from google.protobuf import json_format
from google.protobuf.message import Message
from livekit.protocol import agent_dispatch as ad_pb
from starlette.requests import Request
from starlette.responses import Response

from trackyard.core import ids, limits, messages
from trackyard.core.agentmessages import DISPATCH_PREFIX
from trackyard.core.refusal import Code, Refusal
from trackyard.signal import twirp
from trackyard.signal.edge import Edge
from trackyard.signal.metrics import TWIRP_REQUESTS

log = structlog.get_logger(__name__)

PREFIX = "/twirp/livekit.AgentDispatchService/"

METHODS: dict[str, tuple[type[Message], type[Message]]] = {
    "CreateDispatch": (ad_pb.CreateAgentDispatchRequest, ad_pb.AgentDispatch),
    "DeleteDispatch": (ad_pb.DeleteAgentDispatchRequest, ad_pb.AgentDispatch),
    "ListDispatch": (ad_pb.ListAgentDispatchRequest, ad_pb.ListAgentDispatchResponse),
}


async def handle(request: Request) -> Response:
    name = request.path_params["method"]
    content_type = request.headers.get("content-type", twirp.PROTOBUF).split(";")[0]
    as_json = content_type.strip().lower() == twirp.JSON
    label = f"AgentDispatch.{name}"
    try:
        entry = METHODS.get(name)
        if entry is None:
            raise Refusal(Code.BAD_ROUTE, f"no AgentDispatchService method {name!r}")
        request_type, response_type = entry
        claims = twirp.claims_of(request)
        req = twirp.decode_body(request_type, await request.body(), as_json)
        refusal = twirp.admin_grant(claims.video, req)
        if refusal:
            raise Refusal(Code.UNAUTHENTICATED, f"{twirp.PERMISSION_DENIED}: {refusal}")
        edge: Edge = request.app.state.edge
        if isinstance(req, ad_pb.CreateAgentDispatchRequest):
            invalid = limits.check_metadata(edge.config.limit, req.metadata) or (
                limits.check_attributes(edge.config.limit, req.attributes)
            )
            if invalid:
                raise Refusal(Code.INVALID_ARGUMENT, invalid)
        resp = await _call(edge, name, req, response_type)
    except Refusal as exc:
        return twirp.error_response(label, exc)
    TWIRP_REQUESTS.labels(label, "ok").inc()
    if as_json:
        body = json_format.MessageToJson(resp, preserving_proto_field_name=True)
        return Response(body, media_type=twirp.JSON)
    return Response(resp.SerializeToString(), media_type=twirp.PROTOBUF)


async def _call(edge: Edge, name: str, req: Message, response_type: type[Message]) -> Message:
    room = getattr(req, "room", "")
    if not room:
        raise Refusal(Code.INVALID_ARGUMENT, f"{name}: room name is required")
    placement = await twirp.place(edge, room, create=name == "CreateDispatch")
    if placement is None:
        if name == "ListDispatch":
            return ad_pb.ListAgentDispatchResponse()
        raise Refusal(Code.NOT_FOUND, f"requested room does not exist: {room}")
    body: Message = req
    if isinstance(req, ad_pb.CreateAgentDispatchRequest):
        body = ad_pb.AgentDispatch(
            id=ids.new_id(DISPATCH_PREFIX),
            agent_name=req.agent_name,
            room=req.room,
            metadata=req.metadata,
            restart_policy=req.restart_policy,
            deployment=req.deployment,
            attributes=dict(req.attributes),
        )
    data = await twirp.call_node(
        edge, placement.node_id, name, body.SerializeToString(), messages.RPC_TIMEOUT_SECONDS
    )
    return response_type.FromString(data)
