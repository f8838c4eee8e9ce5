"""A room's store writes go out one at a time, and changes made meanwhile coalesce: a burst
of joins makes a handful of writes of the latest state, not one per change."""

from __future__ import annotations

import asyncio
from typing import Any

from livekit.protocol import models

from trackyard.core.store import MemoryStore
from trackyard.sfu.roomrecord import RoomRecord


class SlowStore(MemoryStore):
    """Counts writes and how many run at once; each write waits until released."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.running = 0
        self.most = 0
        self.release = asyncio.Event()

    async def _write(self, what: str) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        self.writes.append(what)
        await self.release.wait()
        self.running -= 1

    async def put_room(self, room: models.Room) -> None:
        await self._write(f"room:{room.num_participants}")
        await super().put_room(room)

    async def put_participant(self, room: str, participant: models.ParticipantInfo) -> None:
        await self._write(f"put:{participant.identity}:{participant.metadata}")
        await super().put_participant(room, participant)

    async def delete_participant(self, room: str, identity: str) -> None:
        await self._write(f"delete:{identity}")
        await super().delete_participant(room, identity)


async def test_a_burst_of_changes_makes_few_writes_of_the_latest_state() -> None:
    store = SlowStore()
    tasks: set[asyncio.Task[Any]] = set()
    count = {"n": 0}

    def spawn(coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        return task

    record = RoomRecord(
        store,
        "r",
        "ND_a",
        spawn=spawn,
        room_info=lambda: models.Room(name="r", num_participants=count["n"]),
    )
    record.room()  # the first write goes out and blocks
    await asyncio.sleep(0)
    for i in range(100):  # meanwhile: a hundred joins and metadata changes
        count["n"] = i + 1
        record.participant(models.ParticipantInfo(identity="a", metadata=str(i)))
        record.room()
    record.participant(models.ParticipantInfo(identity="b"))
    record.participant_gone("b")  # b left before its put went out: only the delete remains
    store.release.set()
    await record.flush()
    assert store.most == 1  # one connection's worth at a time
    assert store.writes == ["room:0", "put:a:99", "room:100", "delete:b"]
    assert (await store.get_participant("r", "a")).metadata == "99"  # type: ignore[union-attr]
