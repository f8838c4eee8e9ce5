"""Two parts of one room on two fake nodes sharing a memory bus and store: the parts mirror
each other's participants (in order), room-level state comes from the home, a dead part's
participants leave everyone's view, and admission counts joins the home admitted elsewhere.

And a real node (memory store and bus) holding a part: its heartbeat never waits behind its
checks (peers judge it dead when its heartbeat lags), and its periodic check writes back only
the participants the store lost (rewriting a hundred every round held the heartbeat back over
``dead_after``, found by benchmarks/span at N=192). The node's garbage-collector policy
keeps full passes (80-260 ms with a hundred peer connections, every few seconds) out of the
media path: surviving objects are frozen, and cycles left among them are collected by one
deliberate full pass after a departure, at most once per interval."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import AsyncIterator, Callable

import pytest
from livekit.protocol import models

from tests.support.fakenode import FakeNode
from trackyard.core import keys, messages
from trackyard.core.auth import VideoGrants
from trackyard.core.bus import MemoryBus, Subscription
from trackyard.core.config import Config
from trackyard.core.node import NodeRecord
from trackyard.core.refusal import Refusal
from trackyard.core.store import MemoryStore, Placement
from trackyard.sfu.node import GcPolicy, SfuNode, resident_pages
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


class _WatchedStore(MemoryStore):
    """A memory store that records participant and seat writes and heartbeats, and whose
    placement reads can be made to hang (a store read that does not come back)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, str]] = []
        self.beats = 0
        self.hang_reads = False
        self.read_hanging = asyncio.Event()

    async def put_participant(self, room: str, participant: models.ParticipantInfo) -> None:
        self.writes.append(("participant", participant.identity))
        await super().put_participant(room, participant)

    async def put_seat(self, room: str, identity: str, node_id: str) -> None:
        self.writes.append(("seat", identity))
        await super().put_seat(room, identity, node_id)

    async def put_node(self, record: NodeRecord, ttl: float) -> None:
        self.beats += 1
        await super().put_node(record, ttl)

    async def get_placement(self, room: str) -> Placement | None:
        if self.hang_reads:
            self.read_hanging.set()
            await asyncio.Event().wait()
        return await super().get_placement(room)


def _config(interval: float) -> Config:
    config = Config.load(dev=True, env={})
    config.node.heartbeat_interval = interval
    config.node.stats_update_interval = interval
    return config


async def test_a_node_beats_while_its_checks_hang() -> None:
    store = _WatchedStore()
    node = SfuNode(_config(0.02), store, MemoryBus())
    await node.start()
    try:
        assert await node.ensure_room("r", create=True) is not None
        store.hang_reads = True  # the next placement check never returns
        await asyncio.wait_for(store.read_hanging.wait(), 5)
        beats = store.beats
        await _until(lambda: store.beats >= beats + 5, "five heartbeats during the hung check")
    finally:
        await node.stop()


async def test_a_part_writes_back_only_participants_the_store_lost() -> None:
    store = _WatchedStore()
    await store.claim_room("r", HOME)
    node = SfuNode(_config(60.0), store, MemoryBus(), node_id=PART)  # checks run by hand
    await node.start()
    try:
        part = await node.ensure_room("r", create=True, home_node=HOME)
        assert part is not None and not part.is_home
        for identity in ("a", "b", "c"):
            await part.join(_start(identity))

        async def seats() -> dict[str, str]:
            return await store.list_seats("r")

        for _ in range(500):  # the room's own writes go out in the background
            if await seats() == {"a": PART, "b": PART, "c": PART}:
                break
            await asyncio.sleep(0.01)
        assert await seats() == {"a": PART, "b": PART, "c": PART}

        store.writes.clear()
        await node.check_placements()
        assert store.writes == []  # nothing lost: nothing written

        await store.delete_seat("r", "b", PART)
        await store.delete_participant("r", "b")
        await node.check_placements()
        assert store.writes == [("participant", "b"), ("seat", "b")]
        assert await seats() == {"a": PART, "b": PART, "c": PART}
        stored = await store.get_participant("r", "b")
        assert stored is not None and stored.identity == "b"
    finally:
        await node.stop()


class _Cycle:
    """Garbage only the collector can free (a reference cycle)."""

    def __init__(self) -> None:
        self.me = self


def test_frozen_cycles_wait_for_a_full_pass_after_a_departure() -> None:
    policy = GcPolicy(full_after=0.0, full_growth=1e9)  # growth alone never makes one due
    try:
        cycle = _Cycle()
        ref = weakref.ref(cycle)
        policy.tick()  # it survived: frozen
        del cycle
        gc.collect()
        assert ref() is not None  # left out of every pass, even a full one
        policy.tick()  # nothing departed: only freezes again
        gc.collect()
        assert ref() is not None
        policy.departed()
        policy.tick()  # the deliberate full pass
        assert ref() is None
    finally:
        policy.stop()


def test_full_passes_come_at_most_once_per_interval() -> None:
    policy = GcPolicy(full_after=3600.0, full_growth=0.0, growth_after=3600.0)
    try:
        cycle = _Cycle()
        ref = weakref.ref(cycle)
        policy.tick()
        del cycle
        policy.departed()
        policy.tick()  # due, but the interval since the last full pass has not passed
        assert ref() is not None
    finally:
        policy.stop()
    gc.collect()  # unfrozen: the collector has it again
    assert ref() is None


def test_ticks_never_count_the_frozen_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting them walks every one (40 ms at N=384): a pause of its own."""
    counted: list[int] = []
    count = gc.get_freeze_count

    def counting() -> int:
        counted.append(1)
        return count()

    monkeypatch.setattr(gc, "get_freeze_count", counting)
    policy = GcPolicy(full_after=0.0, full_growth=0.0, growth_after=0.0)
    try:
        for _ in range(3):
            policy.tick()
        policy.departed()
        policy.tick()  # a full pass too
        assert counted == []
    finally:
        policy.stop()


@pytest.mark.parametrize(
    ("growth_after", "full_after_growing"),
    [(0.0, True), (3600.0, False)],  # a join storm's growth: no full pass a minute later
)
def test_memory_growth_makes_a_full_pass_due_after_its_own_interval(
    growth_after: float, full_after_growing: bool
) -> None:
    policy = GcPolicy(full_after=0.0, full_growth=0.5, growth_after=growth_after)
    ballast = b""
    try:
        cycle = _Cycle()
        ref = weakref.ref(cycle)
        policy.tick()  # frozen
        del cycle
        policy.tick()  # resident memory as it was, nothing departed: no full pass
        assert ref() is not None
        ballast = b"\x01" * (resident_pages() * 4096)  # doubles it (every page written)
        policy.tick()
        assert (ref() is None) is full_after_growing
        policy.departed()
        policy.tick()
        assert ref() is None
    finally:
        del ballast
        policy.stop()
