"""A room part's view of the room's other parts, when the room spans nodes.

Each node of a room holds its own participants and mirrors the others': it tells every other
node of the room what changed among its participants (``PEER`` messages on their bus channels,
in order per node: one sender task per node), and keeps what they tell it as
:class:`RemoteParticipant` mirrors. Room-level state comes from the home node only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from livekit.protocol import models, rtc
from structlog.typing import FilteringBoundLogger

from trackyard.core import keys, messages
from trackyard.core.bus import Bus, Envelope, publish_patiently

log = structlog.get_logger(__name__)

_OUTBOX_LIMIT = 10_000  # messages queued for one node before it is judged unreachable


@dataclass
class RemoteParticipant:
    """A participant hosted on another node of the room, as that node last described it."""

    info: models.ParticipantInfo
    node_id: str

    @property
    def identity(self) -> str:
        return self.info.identity

    @property
    def sid(self) -> str:
        return self.info.sid

    @property
    def hidden(self) -> bool:
        return self.info.permission.hidden

    @property
    def tracks(self) -> dict[str, models.TrackInfo]:
        return {t.sid: t for t in self.info.tracks}


class RoomPeers:
    """The other nodes of one room, and messages to them (one ordered outbox per node)."""

    def __init__(self, room: str, node_id: str, *, bus: Bus, patience: float) -> None:
        self.room = room
        self.node_id = node_id
        self._bus = bus
        self._patience = patience
        self.remotes: dict[str, RemoteParticipant] = {}  # identity -> mirror
        self._outboxes: dict[str, asyncio.Queue[Envelope]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        self.log: FilteringBoundLogger = log.bind(room=room)

    @property
    def nodes(self) -> set[str]:
        return set(self._outboxes)

    def add(self, node_id: str) -> bool:
        """Know this node as a part of the room; True when it is new."""
        if node_id == self.node_id or node_id in self._outboxes:
            return False
        queue: asyncio.Queue[Envelope] = asyncio.Queue(_OUTBOX_LIMIT)
        self._outboxes[node_id] = queue
        self._senders[node_id] = asyncio.create_task(self._send_loop(node_id, queue))
        self.log.info("room part known", peer=node_id)
        return True

    def drop(self, node_id: str) -> list[RemoteParticipant]:
        """Forget a node (it left the room or died); returns its participants' mirrors."""
        sender = self._senders.pop(node_id, None)
        if sender is not None:
            sender.cancel()
        self._outboxes.pop(node_id, None)
        gone = [r for r in self.remotes.values() if r.node_id == node_id]
        for r in gone:
            del self.remotes[r.identity]
        return gone

    def on(self, node_id: str) -> list[RemoteParticipant]:
        return [r for r in self.remotes.values() if r.node_id == node_id]

    # -- sending ------------------------------------------------------------------------------

    def send(
        self,
        op: str,
        data: bytes = b"",
        *,
        to: Iterable[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Queue for every other node (or ``to``); never blocks the caller."""
        targets = self._outboxes.keys() if to is None else to
        for node_id in list(targets):
            queue = self._outboxes.get(node_id)
            if queue is None:
                continue
            env = Envelope(
                kind=messages.PEER,
                data=data,
                headers={"room": self.room, "op": op, "from": self.node_id, **(headers or {})},
            )
            try:
                queue.put_nowait(env)
            except asyncio.QueueFull:
                self.log.warning("room part unreachable: outbox full", peer=node_id)

    async def _send_loop(self, node_id: str, queue: asyncio.Queue[Envelope]) -> None:
        channel = keys.node_channel(node_id)
        while True:
            env = await queue.get()
            try:
                if not await publish_patiently(self._bus, channel, env, within=self._patience):
                    self.log.warning("cannot reach room part; message dropped", peer=node_id)
            finally:
                queue.task_done()

    async def close(self) -> None:
        """Flush what is queued (bounded), then stop the senders."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(q.join() for q in self._outboxes.values())), 2.0
            )
        for task in self._senders.values():
            task.cancel()
        for task in self._senders.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._senders.clear()
        self._outboxes.clear()


def participant_update(infos: Iterable[models.ParticipantInfo]) -> bytes:
    return rtc.ParticipantUpdate(participants=list(infos)).SerializeToString()


def participants_of(data: bytes) -> list[models.ParticipantInfo]:
    return list(rtc.ParticipantUpdate.FromString(data).participants)
