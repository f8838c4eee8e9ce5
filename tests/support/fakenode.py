"""A fake host for rooms (its RoomListener, the participants' services, a signal sink per
session) over a memory store and bus that several fake nodes may share: rooms and their
participants run for real (aiortc peer connections that never connect), the node is fake."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Coroutine
from typing import Any

from livekit.protocol import models, rtc

from trackyard.core import messages
from trackyard.core.bus import Envelope, MemoryBus
from trackyard.core.config import Config
from trackyard.core.store import MemoryStore
from trackyard.sfu.participant import Participant, ParticipantServices
from trackyard.sfu.portrange import make_peer_connection
from trackyard.sfu.room import Room, RoomServices
from trackyard.sfu.rtpstats import TrafficCounters

WAIT = 5.0


class FakeNode:
    """The RoomListener and everything a room and its participants are given."""

    def __init__(
        self,
        node_id: str = "ND_test",
        *,
        store: MemoryStore | None = None,
        bus: MemoryBus | None = None,
    ) -> None:
        self.node_id = node_id
        self.config = Config.load(dev=True, env={})
        self.store = store or MemoryStore()
        self.bus = bus or MemoryBus()
        self.events: list[tuple[str, str]] = []
        self.sessions: dict[str, Participant] = {}
        self.closed = asyncio.Event()
        self.sent: dict[str, list[Envelope]] = defaultdict(list)
        self.arrived = asyncio.Condition()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.services = RoomServices(
            config=self.config,
            node_id=node_id,
            store=self.store,
            spawn=self.spawn,
            participants=ParticipantServices(
                config=self.config,
                counters=TrafficCounters(),
                spawn=self.spawn,
                signal_sink=self.sink,
                make_peer_connection=lambda: make_peer_connection(None, "127.0.0.1", []),
                liveness=self,
            ),
            bus=self.bus,
            relay_counters=TrafficCounters(),
            admit=self.admit,
        )

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def sink(self, env: Envelope) -> bool:
        async with self.arrived:
            self.sent[env.session].append(env)
            self.arrived.notify_all()
        return True

    async def response(self, session: str, which: str, index: int = 0) -> rtc.SignalResponse:
        """The ``index``-th response of kind ``which`` sent to ``session`` (waits for it)."""

        def found() -> list[rtc.SignalResponse]:
            out = [
                rtc.SignalResponse.FromString(e.data)
                for e in self.sent[session]
                if e.kind == messages.SIGNAL
            ]
            return [r for r in out if r.WhichOneof("message") == which]

        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(found()) > index), WAIT)
        return found()[index]

    async def update_about(
        self, session: str, identity: str, state: models.ParticipantInfo.State
    ) -> models.ParticipantInfo:
        """The first ``update`` sent to ``session`` showing ``identity`` in ``state``."""

        def found() -> list[models.ParticipantInfo]:
            return [
                p
                for e in self.sent[session]
                if e.kind == messages.SIGNAL
                for p in rtc.SignalResponse.FromString(e.data).update.participants
                if p.identity == identity and p.state == state
            ]

        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: bool(found())), WAIT)
        return found()[0]

    def kinds(self, session: str) -> list[str]:
        return [
            rtc.SignalResponse.FromString(e.data).WhichOneof("message") or ""
            for e in self.sent[session]
            if e.kind == messages.SIGNAL
        ]

    # -- Liveness --------------------------------------------------------------------------

    def detached(self, participant: Participant) -> None:
        self.events.append(("detached", participant.identity))

    def transport_changed(self, participant: Participant) -> None:
        pass

    # -- RoomListener ----------------------------------------------------------------------

    def participant_added(self, room: Room, participant: Participant) -> None:
        self.events.append(("added", participant.identity))
        self.sessions[participant.session_id] = participant

    def participant_joined(self, room: Room, participant: Participant) -> None:
        self.events.append(("joined", participant.identity))

    def participant_active(self, room: Room, participant: Participant) -> None:
        self.events.append(("active", participant.identity))

    def participant_removed(self, room: Room, participant: Participant) -> None:
        self.events.append(("removed", participant.identity))
        del self.sessions[participant.session_id]

    def participant_left(self, room: Room, participant: Participant) -> None:
        self.events.append(("left", participant.identity))

    def track_published(self, room: Room, participant: Participant, info: models.TrackInfo) -> None:
        self.events.append(("track_published", info.sid))

    def track_unpublished(
        self, room: Room, participant: Participant, info: models.TrackInfo
    ) -> None:
        self.events.append(("track_unpublished", info.sid))

    async def room_closed(self, room: Room) -> None:
        self.events.append(("room_closed", room.name))
        self.closed.set()

    async def admit(self, home: str, room: str, identity: str) -> None:
        raise AssertionError("a single-node room never asks a home")

    def home_lost(self, room: Room) -> None:
        self.events.append(("home_lost", room.name))

    # -- helpers ---------------------------------------------------------------------------

    def room(
        self,
        *,
        empty_timeout: int = 60,
        departure_timeout: int = 60,
        max_participants: int = 0,
        home_node: str = "",
    ) -> Room:
        return Room(
            "r",
            self.services,
            self,
            empty_timeout=empty_timeout,
            departure_timeout=departure_timeout,
            max_participants=max_participants,
            home_node=home_node,
        )
