"""Schemas of what travels on the bus between signal edges and SFU nodes.

Wire formats only; behaviour lives with the services. Client signal messages travel as the
protobuf bytes the client sent (``SignalRequest``) or will receive (``SignalResponse``), so
bridging never re-encodes them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from trackyard.core.auth import VideoGrants

# Envelope kinds ---------------------------------------------------------------------------
# edge -> node
JOIN = "join"  # data: SessionStart JSON; reply on session channel: SIGNAL(join) or CLOSE
SIGNAL = "signal"  # data: SignalRequest bytes (edge->node) / SignalResponse bytes (node->edge)
CLIENT_GONE = "client_gone"  # the WebSocket closed; data: empty
RESUME = "resume"  # data: SessionStart JSON (reconnect_sid set); reply like JOIN: SIGNAL(reconnect)
# node -> edge
CLOSE = "close"  # the node ends the session; data: SessionClosed JSON
# anyone -> node, and the reply
RPC = "rpc"  # headers["method"]; data: request protobuf bytes; reply_to set
RPC_REPLY = "rpc_reply"  # headers["error"] = twirp code on error; data: response bytes or msg


RPC_TIMEOUT_SECONDS = 5.0


class SessionStart(BaseModel):
    """A client asks to join; everything the node needs to admit it."""

    session_id: str
    room: str
    identity: str
    name: str = ""
    metadata: str = ""
    attributes: dict[str, str] = Field(default_factory=dict)
    grants: VideoGrants = Field(default_factory=VideoGrants)
    kind: str = ""
    auto_subscribe: bool = True
    adaptive_stream: bool = False
    reconnect: bool = False
    reconnect_sid: str = ""
    protocol: int = 0
    sdk: str = ""
    sdk_version: str = ""
    edge_id: str = ""
    placement_epoch: int = 0
    room_config: str = ""  # the token's roomConfig claim (JSON), used if this join creates the room


class SessionClosed(BaseModel):
    """The node refused or ended a session. ``status`` is the HTTP status for refusals."""

    status: int = 0
    reason: str = ""


RPC_TIMEOUT_SECONDS = 5.0
