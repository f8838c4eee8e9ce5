"""The operator API on the signal edge: the cluster's nodes, and draining one of them.

- ``GET  /admin/nodes``: the SFU node records (as ``trackyard nodes`` shows them), JSON.
- ``POST /admin/nodes/{node_id}/drain`` (JSON body ``{"deadline": seconds}``, optional): the
  node drains exactly as on SIGTERM (SHUTTING_DOWN at once, no new rooms, exits when its last
  participant left, or moves them at the deadline); answers with the node's record.

Authorization: ``Authorization: Bearer <jwt>`` signed with one of the cluster's keys, with the
``roomList`` grant to read and ``roomList`` + ``roomAdmin`` for no particular room (a cluster
admin, as ``trackyard token create --admin`` makes) to drain. A bad token is 401, a valid one
without the grants 403; errors are ``{"code": ..., "msg": ...}`` as the Twirp API answers them.
"""

from __future__ import annotations

import json

import structlog
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from trackyard.core import admin
from trackyard.core.auth import Claims, verify_token
from trackyard.core.errors import BusUnavailableError, StoreUnavailableError
from trackyard.core.refusal import Code, Refusal
from trackyard.signal.edge import Edge
from trackyard.signal.twirp import error_json

log = structlog.get_logger(__name__)

PREFIX = "/admin/"


def admin_claims(request: Request) -> Claims:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        raise Refusal(
            Code.UNAUTHENTICATED,
            "no access token: pass 'Authorization: Bearer <jwt>' with an admin token "
            "(roomList + roomAdmin grants)",
        )
    return verify_token(header[7:].strip(), request.app.state.edge.keys)


def check_admin(claims: Claims, *, drain: bool) -> None:
    """Raise 403 unless the token may read the cluster (and, with ``drain``, act on it)."""
    video = claims.video
    missing = [
        name
        for name, granted in (("roomList", video.room_list), ("roomAdmin", video.room_admin))
        if not granted and (drain or name == "roomList")
    ]
    if missing:
        raise Refusal(
            Code.PERMISSION_DENIED,
            f"permission denied: token lacks the {' and '.join(missing)} grant",
        )
    if drain and video.room:
        raise Refusal(
            Code.PERMISSION_DENIED,
            f"permission denied: token's admin grant is for room {video.room!r} only; draining a "
            "node needs a cluster admin token (roomAdmin + roomList, no room)",
        )


async def list_nodes(request: Request) -> Response:
    try:
        check_admin(admin_claims(request), drain=False)
        edge: Edge = request.app.state.edge
        try:
            records = await edge.store.list_nodes()
        except StoreUnavailableError as exc:
            raise Refusal(Code.UNAVAILABLE, str(exc)) from None
    except Refusal as exc:
        return error_json(exc)
    return JSONResponse({"nodes": [r.model_dump(mode="json") for r in records]})


async def drain(request: Request) -> Response:
    node_id = request.path_params["node_id"]
    try:
        claims = admin_claims(request)
        check_admin(claims, drain=True)
        body = await request.body()
        try:
            req = admin.DrainRequest.model_validate(json.loads(body) if body.strip() else {})
        except (ValueError, ValidationError) as exc:
            raise Refusal(Code.INVALID_ARGUMENT, f"bad drain request: {exc}") from None
        edge: Edge = request.app.state.edge
        try:
            if await edge.store.get_node(node_id) is None:
                raise Refusal(Code.NOT_FOUND, f"no such node: {node_id} (see GET /admin/nodes)")
            record = await admin.drain_node(edge.rpc, node_id, req)
        except (StoreUnavailableError, BusUnavailableError) as exc:
            raise Refusal(Code.UNAVAILABLE, str(exc)) from None
    except Refusal as exc:
        log.info("admin api error", action="drain", node_id=node_id, code=exc.code, msg=exc.reason)
        return error_json(exc)
    log.info(
        "node drain requested",
        node_id=node_id,
        deadline=req.deadline,
        by=claims.identity or claims.api_key,
    )
    return JSONResponse(record.model_dump(mode="json"))
