"""What a room writes to the shared store: its record, its participants and their seats.

Writes go out one at a time from one task, and a change made while writes are pending replaces
the pending write of the same thing (the latest state wins, in order: a participant's delete
replaces its pending put). A burst of joins thus makes a few writes, not one per change; every
write in flight holds a Redis connection, and redis-py's pool refuses the 101st at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog
from livekit.protocol import models

from trackyard.core.store import Store

log = structlog.get_logger(__name__)

Spawn = Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]
FLUSH_TIMEOUT = 5.0  # seconds a closing room waits for its last writes


class RoomRecord:
    def __init__(
        self,
        store: Store,
        room: str,
        node_id: str,
        *,
        spawn: Spawn,
        room_info: Callable[[], models.Room | None],
    ) -> None:
        self._store = store
        self._room = room
        self._node_id = node_id
        self._spawn = spawn
        self._room_info = room_info  # None: write no record (a closed room stays deleted)
        self._pending: dict[tuple[str, str], Callable[[], Awaitable[None]]] = {}
        self._task: asyncio.Task[Any] | None = None

    def room(self) -> None:
        self._set(("room", ""), self._put_room)

    def participant(self, info: models.ParticipantInfo) -> None:
        self._set(
            ("participant", info.identity),
            lambda: self._store.put_participant(self._room, info),
        )

    def participant_gone(self, identity: str) -> None:
        self._set(
            ("participant", identity),
            lambda: self._store.delete_participant(self._room, identity),
        )

    def seat(self, identity: str) -> None:
        self._set(
            ("seat", identity),
            lambda: self._store.put_seat(self._room, identity, self._node_id),
        )

    def unseat(self, identity: str) -> None:
        self._set(
            ("seat", identity),
            lambda: self._store.delete_seat(self._room, identity, self._node_id),
        )

    async def _put_room(self) -> None:
        info = self._room_info()
        if info is not None:
            await self._store.put_room(info)

    def _set(self, key: tuple[str, str], write: Callable[[], Awaitable[Any]]) -> None:
        self._pending.pop(key, None)  # the latest goes last, after what was pending before
        self._pending[key] = write
        if self._task is None:
            self._task = self._spawn(self._run())

    async def _run(self) -> None:
        try:
            while self._pending:
                key = next(iter(self._pending))
                write = self._pending.pop(key)
                try:
                    await write()
                except Exception as exc:  # the store is away: the next change writes again
                    log.warning(
                        "room store write failed", room=self._room, what=key[0], error=str(exc)
                    )
        finally:
            self._task = None

    async def flush(self) -> None:
        """Wait (bounded) for the pending writes: a closing room's last ones go out before
        the room itself is deleted."""
        task = self._task
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), FLUSH_TIMEOUT)
