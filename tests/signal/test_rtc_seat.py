"""The edge sends a join to the participant's seat (a node of the room, not always its home),
names the home in the session start, and gives the seat back when the join does not happen."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from fastapi import FastAPI

from tests.signal.fakes import NODE, NodeBus, fake_node, token
from trackyard.core import messages
from trackyard.core.config import Config
from trackyard.core.refusal import Code, Refusal
from trackyard.core.store import MemoryStore, Placement, Seat
from trackyard.signal.app import create_app
from trackyard.signal.edge import Edge

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's notice about its httpx transport
    from starlette.testclient import TestClient, WebSocketDenialResponse

HOME = "ND_home"


@dataclass
class SpanningRouter:
    """Homes every room on :data:`HOME` and seats participants on the fake node, recording
    the seat in the store first, as the real router does."""

    store: MemoryStore
    calls: list[tuple[str, str, bool]] = field(default_factory=list)

    async def place(self, room: str, *, create: bool, region: str = "") -> Placement | None:
        return Placement(room, HOME, 3)

    async def seat(
        self, room: str, identity: str, *, create: bool, region: str = ""
    ) -> Seat | None:
        self.calls.append((room, identity, create))
        await self.store.put_seat(room, identity, NODE)
        return Seat(Placement(room, HOME, 3), NODE)


@pytest.fixture
def edge() -> Edge:
    store = MemoryStore()
    return Edge(Config.load(dev=True, env={}), store, NodeBus(), SpanningRouter(store))


@pytest.fixture
def client(edge: Edge) -> Iterator[TestClient]:
    app: FastAPI = create_app(edge)
    with TestClient(app) as client:
        yield client


def _query(identity: str, extra: str = "") -> str:
    return f"/rtc?access_token={token(identity, roomJoin=True, room='r')}{extra}"


def _starts(edge: Edge) -> list[tuple[str, messages.SessionStart]]:
    return [
        (env.kind, messages.SessionStart.model_validate_json(env.data))
        for env in fake_node(edge).received
        if env.kind in (messages.JOIN, messages.RESUME)
    ]


def test_join_goes_to_the_seat_and_names_the_home(client: TestClient, edge: Edge) -> None:
    with client.websocket_connect(_query("alice")) as ws:
        ws.receive_bytes()  # the fake node's JoinResponse: the join reached the seat's node
    [(kind, start)] = _starts(edge)
    assert kind == messages.JOIN
    assert (start.identity, start.home_node) == ("alice", HOME)
    assert isinstance(edge.router, SpanningRouter)
    assert edge.router.calls == [("r", "alice", True)]
    assert _seats(edge) == {"alice": NODE}  # an admitted participant keeps its seat


def _seats(edge: Edge) -> dict[str, str]:
    # The memory store needs no loop of its own: read it from this (the test's) thread.
    return asyncio.run(edge.store.list_seats("r"))


def test_a_refused_join_gives_its_seat_back(client: TestClient, edge: Edge) -> None:
    fake_node(edge).refuse_joins = Refusal(Code.PERMISSION_DENIED, "room r is full")
    with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect(_query("bob")):
        pass
    assert denied.value.status_code == 403
    assert _seats(edge) == {}


def test_a_refused_resume_gives_its_seat_back_and_asks_for_a_rejoin(
    client: TestClient, edge: Edge
) -> None:
    fake_node(edge).refuse_joins = Refusal(Code.NOT_FOUND, "session cannot be resumed")
    with client.websocket_connect(_query("carol", "&reconnect=1&sid=PA_gone")) as ws:
        ws.receive_bytes()  # leave{RECONNECT}
    [(kind, start)] = _starts(edge)
    assert kind == messages.RESUME and start.home_node == HOME
    assert isinstance(edge.router, SpanningRouter)
    assert edge.router.calls == [("r", "carol", False)]  # a resume never creates the room
    assert _seats(edge) == {}
