"""The cluster console: ``GET /console`` (one static page) and the JSON it polls.

- ``GET  /console``: ``static/console.html`` (package data, no build step, nothing external).
  The page asks for an admin access token (pasted, or ``/console?token=<jwt>``, which it moves
  into ``sessionStorage`` and strips from the address bar) and sends it as
  ``Authorization: Bearer`` to the endpoints below; the page itself carries no data.
- ``GET  /admin/cluster``: the node records, and every room with its placement (host node,
  fencing epoch) and participant records, read from the store the router reads (no second
  source of truth); ``roomList`` grant.
- ``POST /admin/rooms/{room}/participants/{identity}/remove``: RemoveParticipant on the node
  hosting the room, as the Twirp RoomService does it; ``roomList`` + ``roomAdmin`` (a cluster
  admin token, or one whose admin grant is for that room).

Draining a node is ``POST /admin/nodes/{id}/drain`` (``adminapi``). Errors as ``adminapi``'s.
"""

from __future__ import annotations

import asyncio
import time
from importlib import resources
from typing import Any

import structlog
from livekit.protocol import models
from livekit.protocol import room as room_pb
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from trackyard.core.errors import StoreUnavailableError
from trackyard.core.refusal import Code, Refusal
from trackyard.signal import twirp
from trackyard.signal.adminapi import admin_claims, check_admin
from trackyard.signal.edge import Edge

log = structlog.get_logger(__name__)

_PAGE = resources.files("trackyard.signal").joinpath("static/console.html")


async def page(_request: Request) -> Response:
    return Response(
        _PAGE.read_bytes(),
        media_type="text/html; charset=utf-8",
        headers={
            "Cache-Control": "no-store",
            # the page loads nothing from elsewhere and is never framed
            "Content-Security-Policy": (
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
            ),
            "Referrer-Policy": "no-referrer",
        },
    )


def _participant(info: models.ParticipantInfo) -> dict[str, Any]:
    return {
        "sid": info.sid,
        "identity": info.identity,
        "name": info.name,
        "state": models.ParticipantInfo.State.Name(info.state),
        "joined_at": info.joined_at,
        "tracks": [
            {
                "sid": t.sid,
                "name": t.name,
                "type": models.TrackType.Name(t.type),
                "source": models.TrackSource.Name(t.source),
                "mime_type": t.mime_type,
                "muted": t.muted,
                "simulcast": t.simulcast,
                # layers as the publisher announced them; bitrate is its target (bps)
                "layers": [
                    {
                        "quality": models.VideoQuality.Name(layer.quality),
                        "width": layer.width,
                        "height": layer.height,
                        "bitrate": layer.bitrate,
                    }
                    for layer in t.layers
                ],
            }
            for t in info.tracks
        ],
    }


async def _room(edge: Edge, room: models.Room) -> dict[str, Any]:
    placement, participants = await asyncio.gather(
        edge.store.get_placement(room.name), edge.store.list_participants(room.name)
    )
    return {
        "name": room.name,
        "sid": room.sid,
        "created_at": room.creation_time,
        "node_id": placement.node_id if placement else None,
        "epoch": placement.epoch if placement else None,
        "participants": [_participant(p) for p in participants],
    }


async def cluster(request: Request) -> Response:
    try:
        check_admin(admin_claims(request), drain=False)
        edge: Edge = request.app.state.edge
        try:
            nodes, rooms = await asyncio.gather(edge.store.list_nodes(), edge.store.list_rooms())
            room_views = await asyncio.gather(*(_room(edge, r) for r in rooms))
        except StoreUnavailableError as exc:
            raise Refusal(Code.UNAVAILABLE, str(exc)) from None
    except Refusal as exc:
        return twirp.error_json(exc)
    return JSONResponse(
        {
            "now": time.time(),
            "edge_id": edge.edge_id,
            "nodes": [n.model_dump(mode="json") for n in sorted(nodes, key=lambda n: n.id)],
            "rooms": sorted(room_views, key=lambda r: str(r["name"])),
        }
    )


async def remove_participant(request: Request) -> Response:
    room = request.path_params["room"]
    identity = request.path_params["identity"]
    try:
        claims = admin_claims(request)
        if claims.video.room != room:  # a token for that room's admin will do, too
            check_admin(claims, drain=True)
        elif not claims.video.room_admin:
            raise Refusal(
                Code.PERMISSION_DENIED, "permission denied: token lacks the roomAdmin grant"
            )
        req = room_pb.RoomParticipantIdentity(room=room, identity=identity)
        edge: Edge = request.app.state.edge
        await twirp.call(edge, "RemoveParticipant", req)
    except Refusal as exc:
        log.info("admin api error", action="remove", room=room, identity=identity, code=exc.code)
        return twirp.error_json(exc)
    log.info("participant removed", room=room, identity=identity, by=claims.identity)
    return JSONResponse({"room": room, "identity": identity, "removed": True})
