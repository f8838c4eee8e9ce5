"""Two parts of one room on two fake nodes sharing a memory bus and store: the parts mirror
each other's participants (in order), room-level state comes from the home, a dead part's
participants leave everyone's view, and admission counts joins the home admitted elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from livekit.protocol import models

from tests.support.fakenode import FakeNode
from trackyard.core import keys, messages
from trackyard.core.auth import VideoGrants
from trackyard.core.bus import MemoryBus, Subscription
from trackyard.core.refusal import Refusal
from trackyard.core.store import MemoryStore
from trackyard.sfu.room import Room

HOME, PART = "ND_home", "ND_part"
LEFT = models.ParticipantInfo.DISCONNECTED
JOINED = models.ParticipantInfo.JOINED


def _start(identity: str) -> messages.SessionStart:
    return messages.SessionStart(
        session_id=f"SE_{identity}",
        room="r",
        identity=identity,
        grants=VideoGrants(room_join=True, room="r"),
    )


async def _deliver(sub: Subscription, room: Room) -> None:
    """The node's dispatcher, for PEER messages only."""
    async for env in sub:
        if env.kind == messages.PEER:
            room.peer_message(env)


@contextlib.asynccontextmanager
async def _parts(max_participants: int = 0) -> AsyncIterator[tuple[FakeNode, Room, FakeNode, Room]]:
    bus, store = MemoryBus(), MemoryStore()
    home_node = FakeNode(HOME, store=store, bus=bus)
    part_node = FakeNode(PART, store=store, bus=bus)
    home = home_node.room(max_participants=max_participants)
    part = part_node.room(home_node=HOME, max_participants=max_participants)
    subs = [bus.subscribe(keys.node_channel(n)) for n in (HOME, PART)]
    readers = [
        asyncio.create_task(_deliver(subs[0], home)),
        asyncio.create_task(_deliver(subs[1], part)),
    ]
    try:
        yield home_node, home, part_node, part
    finally:
        for room in (part, home):
            await room.close(models.DisconnectReason.ROOM_DELETED)
        for task in readers:
            task.cancel()
        for sub in subs:
            await sub.close()
        for node in (home_node, part_node):
            for task in list(node.tasks):
                task.cancel()


async def _until(check: Callable[[], bool], what: str) -> None:
    """Bounded: the messages it waits for cross a bus (tasks on this loop), no event to await."""
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_parts_mirror_each_others_participants() -> None:
    async with _parts() as (home_node, home, part_node, part):
        assert not part.is_home and home.is_home
        await home.join(_start("a"))
        part.open_to_peers({HOME})  # as a part that just opened
        await _until(lambda: "a" in part.peers.remotes, "the part to mirror a")
        assert part.peers.remotes["a"].node_id == HOME

        await part.join(_start("b"))
        join = (await part_node.response("SE_b", "join")).join
        assert [p.identity for p in join.other_participants] == ["a"]  # the remote one too
        seen = await home_node.update_about("SE_a", "b", JOINED)
        assert seen.identity == "b"
        assert home.info().num_participants == part.info().num_participants == 2

        await part.remove(
            part.participants["b"], models.DisconnectReason.CLIENT_INITIATED, notify=False
        )
        gone = await home_node.update_about("SE_a", "b", LEFT)
        assert gone.disconnect_reason == models.DisconnectReason.CLIENT_INITIATED
        assert "b" not in home.peers.remotes


async def test_room_state_comes_from_the_home() -> None:
    async with _parts() as (_home_node, home, part_node, part):
        await home.join(_start("a"))
        part.open_to_peers({HOME})
        await part.join(_start("b"))
        await _until(lambda: part.sid == home.sid, "the part to take the home's sid")
        home.set_metadata("from the home")
        update = await part_node.response("SE_b", "room_update", index=1)
        assert update.room_update.room.metadata == "from the home"
        assert update.room_update.room.sid == home.sid


async def test_a_dead_part_takes_its_participants_with_it() -> None:
    async with _parts() as (home_node, home, part_node, part):
        await home.join(_start("a"))
        part.open_to_peers({HOME})
        await part.join(_start("b"))
        await _until(lambda: "b" in home.peers.remotes, "the home to mirror b")
        home.peer_gone(PART, "node dead")
        await home_node.update_about("SE_a", "b", LEFT)
        assert not home.peers.remotes and PART not in home.peers.nodes
        part.peer_gone(HOME, "node dead")  # the part's side: the home is gone
        assert ("home_lost", "r") in part_node.events


async def test_the_home_counts_joins_it_admitted_elsewhere() -> None:
    async with _parts(max_participants=2) as (_home_node, home, _part_node, _part):
        await home.join(_start("a"))
        home.admit("x", hold=10)  # a part asked for x: counted until it shows up
        home.admit("x", hold=10)  # asking again for the same identity is not a second place
        with pytest.raises(Refusal, match="full"):
            home.admit("y", hold=10)
        home.admit("a")  # someone already in (a rejoin) always fits
