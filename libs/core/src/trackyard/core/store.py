"""The shared store: rooms, participants, room placement, seats and node records.

The hosting SFU node owns a room's live state; the store holds what the rest of the cluster
must see (ListRooms from any edge, where a room lives, which nodes exist). The in-memory store
serves one process; the Redis store serves a cluster. Both pass the same contract tests.
Protobuf objects are stored whole, so a record read back equals the record written.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Protocol

from livekit.protocol import models

from trackyard.core.node import NodeRecord


@dataclass(frozen=True, slots=True)
class Placement:
    """``room`` is hosted on ``node_id``. ``epoch`` grows with every new claim of the room,
    so a node holding an older epoch knows it lost the room (fencing)."""

    room: str
    node_id: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Seat:
    """Where a joining participant goes: ``node_id``, a node of the room, maybe its home.

    A room keeps one home (its placement) and may span more nodes; each participant is hosted
    on one of them."""

    home: Placement
    node_id: str


class Store(Protocol):
    # rooms ------------------------------------------------------------------------------
    async def put_room(self, room: models.Room) -> None: ...
    async def get_room(self, name: str) -> models.Room | None: ...
    async def list_rooms(self, names: list[str] | None = None) -> list[models.Room]: ...
    async def delete_room(self, name: str) -> None:
        """Forget the room, its participants and its seats."""
        ...

    # participants -----------------------------------------------------------------------
    async def put_participant(self, room: str, participant: models.ParticipantInfo) -> None: ...
    async def get_participant(self, room: str, identity: str) -> models.ParticipantInfo | None: ...
    async def list_participants(self, room: str) -> list[models.ParticipantInfo]: ...
    async def delete_participant(self, room: str, identity: str) -> None: ...

    # placement --------------------------------------------------------------------------
    async def claim_room(
        self, room: str, node_id: str, replace: Placement | None = None
    ) -> Placement:
        """Atomically record ``room -> node_id`` unless the room is already placed.

        Returns the placement in force afterwards: ours if we won, the existing one otherwise.
        ``replace``: take the room over only if the current placement still equals it (used
        when the recorded node is gone); the new epoch is greater than the old one.
        """
        ...

    async def get_placement(self, room: str) -> Placement | None: ...
    async def release_room(self, room: str, node_id: str) -> bool:
        """Delete the placement only if it still points at ``node_id`` (compare-and-delete)."""
        ...

    # seats: identity -> the node a participant is (or is being) hosted on -----------------
    async def put_seat(self, room: str, identity: str, node_id: str) -> None: ...
    async def take_seat(self, room: str, identity: str, node_id: str, cap: int) -> bool:
        """Seat ``identity`` on ``node_id`` only if fewer than ``cap`` others of the room are
        seated there (atomically; ``cap`` <= 0: no limit). False: full meanwhile."""
        ...

    async def get_seat(self, room: str, identity: str) -> str | None: ...
    async def list_seats(self, room: str) -> dict[str, str]: ...
    async def delete_seat(self, room: str, identity: str, node_id: str) -> bool:
        """Delete the seat only if it still names ``node_id`` (compare-and-delete): a
        participant that moved to another node meanwhile keeps its new seat."""
        ...

    # nodes ------------------------------------------------------------------------------
    async def put_node(self, record: NodeRecord, ttl: float) -> None: ...
    async def get_node(self, node_id: str) -> NodeRecord | None: ...
    async def list_nodes(self) -> list[NodeRecord]: ...
    async def delete_node(self, node_id: str) -> None: ...
    async def node_heartbeats(self, node_ids: list[str]) -> dict[str, float]:
        """Seconds since each node's last :meth:`put_node`, on the store's own clock (so
        nodes' clocks need not agree). Nodes never written (or forgotten) are left out."""
        ...

    # signal edges -----------------------------------------------------------------------
    async def put_edge(self, edge_id: str, ttl: float) -> None: ...
    async def edge_alive(self, edge_id: str) -> bool: ...

    async def generation(self) -> str:
        """The store's identity: made once by the first caller to find none, so it changes
        exactly when the store lost its data (a Redis restarted empty)."""
        ...

    async def ping(self) -> bool:
        """True when the store answers right now."""
        ...

    async def close(self) -> None: ...


class MemoryStore:
    """Dictionaries in one process; TTLs checked on read."""

    def __init__(self) -> None:
        self._rooms: dict[str, bytes] = {}
        self._participants: dict[str, dict[str, bytes]] = {}
        self._placements: dict[str, Placement] = {}
        self._epochs: dict[str, int] = {}
        self._seats: dict[str, dict[str, str]] = {}
        self._nodes: dict[str, tuple[NodeRecord, float]] = {}
        self._beats: dict[str, float] = {}
        self._edges: dict[str, float] = {}
        self._generation = f"{uuid.uuid4().hex}|{int(time.time())}"

    async def put_room(self, room: models.Room) -> None:
        self._rooms[room.name] = room.SerializeToString()

    async def get_room(self, name: str) -> models.Room | None:
        raw = self._rooms.get(name)
        return None if raw is None else models.Room.FromString(raw)

    async def list_rooms(self, names: list[str] | None = None) -> list[models.Room]:
        wanted = self._rooms.keys() if not names else [n for n in names if n in self._rooms]
        return [models.Room.FromString(self._rooms[n]) for n in sorted(wanted)]

    async def delete_room(self, name: str) -> None:
        self._rooms.pop(name, None)
        self._participants.pop(name, None)
        self._seats.pop(name, None)

    async def put_participant(self, room: str, participant: models.ParticipantInfo) -> None:
        self._participants.setdefault(room, {})[participant.identity] = (
            participant.SerializeToString()
        )

    async def get_participant(self, room: str, identity: str) -> models.ParticipantInfo | None:
        raw = self._participants.get(room, {}).get(identity)
        return None if raw is None else models.ParticipantInfo.FromString(raw)

    async def list_participants(self, room: str) -> list[models.ParticipantInfo]:
        return [
            models.ParticipantInfo.FromString(raw)
            for _, raw in sorted(self._participants.get(room, {}).items())
        ]

    async def delete_participant(self, room: str, identity: str) -> None:
        self._participants.get(room, {}).pop(identity, None)

    async def claim_room(
        self, room: str, node_id: str, replace: Placement | None = None
    ) -> Placement:
        current = self._placements.get(room)
        if current is not None and current != replace:
            return current
        epoch = self._epochs.get(room, 0) + 1
        self._epochs[room] = epoch
        placement = Placement(room, node_id, epoch)
        self._placements[room] = placement
        return placement

    async def get_placement(self, room: str) -> Placement | None:
        return self._placements.get(room)

    async def release_room(self, room: str, node_id: str) -> bool:
        current = self._placements.get(room)
        if current is None or current.node_id != node_id:
            return False
        del self._placements[room]
        return True

    async def put_seat(self, room: str, identity: str, node_id: str) -> None:
        self._seats.setdefault(room, {})[identity] = node_id

    async def take_seat(self, room: str, identity: str, node_id: str, cap: int) -> bool:
        seats = self._seats.setdefault(room, {})
        taken = sum(1 for who, node in seats.items() if node == node_id and who != identity)
        if 0 < cap <= taken:
            return False
        seats[identity] = node_id
        return True

    async def get_seat(self, room: str, identity: str) -> str | None:
        return self._seats.get(room, {}).get(identity)

    async def list_seats(self, room: str) -> dict[str, str]:
        return dict(self._seats.get(room, {}))

    async def delete_seat(self, room: str, identity: str, node_id: str) -> bool:
        seats = self._seats.get(room, {})
        if seats.get(identity) != node_id:
            return False
        del seats[identity]
        if not seats:
            self._seats.pop(room, None)
        return True

    async def put_node(self, record: NodeRecord, ttl: float) -> None:
        self._nodes[record.id] = (record.model_copy(deep=True), time.monotonic() + ttl)
        self._beats[record.id] = time.monotonic()

    async def get_node(self, node_id: str) -> NodeRecord | None:
        entry = self._nodes.get(node_id)
        if entry is None:
            return None
        if entry[1] < time.monotonic():
            del self._nodes[node_id]
            return None
        return entry[0].model_copy(deep=True)

    async def list_nodes(self) -> list[NodeRecord]:
        out = []
        for node_id in sorted(self._nodes):
            record = await self.get_node(node_id)
            if record is not None:
                out.append(record)
        return out

    async def delete_node(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)
        self._beats.pop(node_id, None)

    async def node_heartbeats(self, node_ids: list[str]) -> dict[str, float]:
        now = time.monotonic()
        return {n: now - self._beats[n] for n in node_ids if n in self._beats}

    async def put_edge(self, edge_id: str, ttl: float) -> None:
        self._edges[edge_id] = time.monotonic() + ttl

    async def edge_alive(self, edge_id: str) -> bool:
        return self._edges.get(edge_id, 0.0) >= time.monotonic()

    async def generation(self) -> str:
        return self._generation

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None
