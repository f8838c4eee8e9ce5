"""A router and an SFU node faked at the signal edge's interfaces: the placement call and the
node's bus channel."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from livekit.protocol import models

from trackyard.core import keys, messages, responses
from trackyard.core.auth import create_token
from trackyard.core.bus import Envelope, MemoryBus
from trackyard.core.noderpc import reply
from trackyard.core.refusal import Refusal
from trackyard.core.store import Placement, Seat
from trackyard.signal.edge import Edge

NODE = "ND_fake"
API_KEY = "devkey"
API_SECRET = "secret"

RpcHandler = Callable[[bytes], Awaitable[bytes]]


def token(identity: str = "", **grants: object) -> str:
    return create_token(API_KEY, API_SECRET, identity=identity, grants=dict(grants))


@dataclass
class FakeRouter:
    """Places every room (and seats every participant) on :data:`NODE`; ``refusal``, when
    set, is what it raises instead."""

    placements: dict[str, Placement] = field(default_factory=dict)
    refusal: Refusal | None = None

    async def place(self, room: str, *, create: bool, region: str = "") -> Placement | None:
        if self.refusal is not None:
            raise self.refusal
        if create and room not in self.placements:
            self.placements[room] = Placement(room, NODE, 1)
        return self.placements.get(room)

    async def seat(
        self, room: str, identity: str, *, create: bool, region: str = ""
    ) -> Seat | None:
        """Every participant on the room's home, as a room on one node."""
        home = await self.place(room, create=create, region=region)
        return None if home is None else Seat(home, home.node_id)


@dataclass
class FakeNode:
    """Answers the node channel at once, as an SFU node would: a join with a JoinResponse (or
    ``refuse_joins``'s refusal), an RPC with its handler's answer or refusal."""

    bus: MemoryBus
    rpc: dict[str, RpcHandler] = field(default_factory=dict)
    refuse_joins: Refusal | None = None
    received: list[Envelope] = field(default_factory=list)

    async def handle(self, env: Envelope) -> None:
        self.received.append(env)
        if env.kind in (messages.JOIN, messages.RESUME):
            start = messages.SessionStart.model_validate_json(env.data)
            out = keys.session_channel(start.session_id)
            if self.refuse_joins is not None:
                closed = messages.SessionClosed.refused(self.refuse_joins)
                await self.bus.publish(
                    out,
                    Envelope(messages.CLOSE, start.session_id, closed.model_dump_json().encode()),
                )
                return
            join = responses.join(
                room=models.Room(name=start.room, sid="RM_fake"),
                participant=models.ParticipantInfo(sid="PA_fake", identity=start.identity),
                others=[],
                ice_servers=[],
                ping_interval=5,
                ping_timeout=15,
                region="",
                node_id=NODE,
            )
            await self.bus.publish(
                out, Envelope(messages.SIGNAL, start.session_id, join.SerializeToString())
            )
        elif env.kind == messages.RPC:
            handler = self.rpc.get(env.headers.get("method", ""))
            if handler is None:
                return  # an unknown method goes unanswered: the caller times out
            try:
                await reply(self.bus, env, await handler(env.data))
            except Refusal as exc:
                await reply(self.bus, env, error=exc)


class NodeBus(MemoryBus):
    """A memory bus whose node channel is served by a :class:`FakeNode` inline."""

    def __init__(self) -> None:
        super().__init__()
        self.node = FakeNode(self)

    async def publish(self, channel: str, envelope: Envelope) -> None:
        await super().publish(channel, envelope)
        if channel == keys.node_channel(NODE):
            await self.node.handle(envelope)


def fake_node(edge: Edge) -> FakeNode:
    assert isinstance(edge.bus, NodeBus)
    return edge.bus.node


def fake_router(edge: Edge) -> FakeRouter:
    assert isinstance(edge.router, FakeRouter)
    return edge.router
