"""Schemas of what travels on the bus between signal edges and SFU nodes.

Wire formats only; behaviour lives with the services. Client signal messages travel as the
protobuf bytes the client sent (``SignalRequest``) or will receive (``SignalResponse``), so
bridging never re-encodes them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from trackyard.core.auth import VideoGrants
from trackyard.core.refusal import Code, Refusal

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
RPC_REPLY = "rpc_reply"  # headers["error"] = refusal code on error; data: response or reason
# node -> node of the same room (a room spanning nodes); headers: room, op, from (node id)
PEER = "peer"

# PEER ops: what one part of a room tells the others
PEER_HELLO = "hello"  # a part opened; data: ParticipantUpdate of its participants; reply: SNAPSHOT
PEER_SNAPSHOT = "snapshot"  # data: ParticipantUpdate of the sender's participants (no reply)
PEER_PARTICIPANTS = "participants"  # data: ParticipantUpdate (state DISCONNECTED: it left)
PEER_ROOM = "room"  # from the home: data: models.Room, headers["epoch"]: the home's epoch
PEER_SPEAKERS = "speakers"  # data: SpeakersChanged, the sender's active speakers (all of them)
PEER_QUALITY = "quality"  # data: ConnectionQualityUpdate of the sender's participants
PEER_DATA = "data"  # data: DataPacket for the receiver's participants; headers["label"]
PEER_BYE = "bye"  # the sender's part closed (its participants are gone)
PEER_CLOSE = "close"  # from the home: the room is closed; headers["reason"]: DisconnectReason


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
    reconnect_sid: str = ""  # RESUME only: the participant (sid) to re-bind to this session
    edge_id: str = ""  # the edge holding the socket, for the node's edge-liveness checks
    room_config: str = ""  # the token's roomConfig claim (JSON), used if this join creates the room
    home_node: str = ""  # the room's home node (placement) when the join goes to another node
    relay_node: str = ""  # set when another node of the room joins to pull tracks (a relay)


class SessionClosed(BaseModel):
    """The node refused a join or resume, or ended a session.

    ``code``: a :class:`~trackyard.core.refusal.Code` value when refused, ``""`` when ended.
    """

    code: str = ""
    reason: str = ""

    @classmethod
    def refused(cls, refusal: Refusal) -> SessionClosed:
        return cls(code=refusal.code.value, reason=refusal.reason)

    @classmethod
    def ended(cls, reason: str) -> SessionClosed:
        return cls(reason=reason)

    def refusal(self, default: str) -> Refusal:
        """As a refusal (a close during a join means one); ``default``: the reason if none."""
        code = Code.parse(self.code) if self.code else Code.UNAVAILABLE
        return Refusal(code, self.reason or default)
