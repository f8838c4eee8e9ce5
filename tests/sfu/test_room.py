"""A room with a fake host (its listener, a memory store, a signal sink per session): joins
and leaves are broadcast, admission honours closing and max_participants, and the close
timer follows who is in the room. No node and no bus; participants' peer connections are
real aiortc objects that never connect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from livekit.protocol import models, rtc

from tests.support.fakenode import WAIT, FakeNode
from trackyard.core import messages
from trackyard.core.auth import VideoGrants
from trackyard.core.refusal import Code, Refusal
from trackyard.sfu.room import Room


def _start(identity: str, *, kind: str = "", hidden: bool = False) -> messages.SessionStart:
    return messages.SessionStart(
        session_id=f"SE_{identity}",
        room="r",
        identity=identity,
        kind=kind,
        grants=VideoGrants(room_join=True, room="r", hidden=hidden),
    )


@pytest.fixture
async def node() -> AsyncIterator[FakeNode]:
    n = FakeNode()
    yield n
    for p in list(n.sessions.values()):
        await p.close()
    for task in list(n.tasks):
        task.cancel()


async def _close(room: Room) -> None:
    await room.close(models.DisconnectReason.ROOM_CLOSED)


async def test_join_is_answered_first_and_announced_to_the_others(node: FakeNode) -> None:
    room = node.room()
    a = await room.join(_start("a"))
    b = await room.join(_start("b"))
    join = (await node.response("SE_b", "join")).join
    assert node.kinds("SE_b")[0] == "join"  # the SDK expects the join response first
    assert join.participant.identity == "b" and join.participant.sid == b.sid
    assert [p.identity for p in join.other_participants] == ["a"]
    assert join.room.name == "r" and join.server_info.node_id == "ND_test"
    assert join.ping_interval > 0 and join.subscriber_primary
    seen = await node.update_about("SE_a", "b", models.ParticipantInfo.JOINED)
    assert seen.sid == b.sid
    assert node.events == [("added", "a"), ("joined", "a"), ("added", "b"), ("joined", "b")]
    assert node.sessions == {"SE_a": a, "SE_b": b}
    await asyncio.sleep(0)  # the store writes are spawned
    assert {p.identity for p in await node.store.list_participants("r")} == {"a", "b"}
    await _close(room)


async def test_leave_is_broadcast_with_its_reason(node: FakeNode) -> None:
    room = node.room()
    a = await room.join(_start("a"))
    await room.join(_start("b"))
    node.events.clear()
    await room.remove(a, models.DisconnectReason.PARTICIPANT_REMOVED, notify=True)
    leave = (await node.response("SE_a", "leave")).leave
    assert leave.reason == models.DisconnectReason.PARTICIPANT_REMOVED
    assert [e.kind for e in node.sent["SE_a"]][-1] == messages.CLOSE  # the session ends
    gone = await node.update_about("SE_b", "a", models.ParticipantInfo.DISCONNECTED)
    assert gone.disconnect_reason == models.DisconnectReason.PARTICIPANT_REMOVED
    assert node.events == [("removed", "a"), ("left", "a")]
    assert set(room.participants) == {"b"} and set(node.sessions) == {"SE_b"}
    await asyncio.sleep(0)
    assert await node.store.get_participant("r", "a") is None
    await _close(room)


async def test_a_second_join_with_the_same_identity_replaces_the_first(node: FakeNode) -> None:
    room = node.room()
    first = await room.join(_start("a"))
    second = await room.join(messages.SessionStart(session_id="SE_a2", room="r", identity="a"))
    leave = (await node.response("SE_a", "leave")).leave
    assert leave.reason == models.DisconnectReason.DUPLICATE_IDENTITY
    assert room.participants == {"a": second} and first is not second
    assert set(node.sessions) == {"SE_a2"}
    await _close(room)


def _updates_about_others(node: FakeNode, session: str) -> list[list[str]]:
    own = f"SE_{session}"
    out = []
    for e in node.sent[own]:
        r = rtc.SignalResponse.FromString(e.data)
        if r.WhichOneof("message") == "update":
            out.append([p.identity for p in r.update.participants if p.identity != session])
    return [ids for ids in out if ids]


async def test_subscribers_joins_reach_the_others_in_one_batch(node: FakeNode) -> None:
    node.config.room.participant_update_interval = 1.5
    node.config.room.participant_update_rate = 0  # always batch (LiveKit's way)
    room = node.room()
    await room.join(_start("a"))
    for identity in "bcd":
        await room.join(_start(identity))
    own = (await node.response("SE_d", "update")).update.participants
    assert [p.identity for p in own] == ["d"]  # its own change goes to a participant at once
    await node.update_about("SE_a", "d", models.ParticipantInfo.JOINED)
    assert _updates_about_others(node, "a") == [["b", "c", "d"]]  # one message for three joins
    # a change the others must see goes at once, alone
    room.participants["c"].update_info(metadata="m")
    async with node.arrived:
        await asyncio.wait_for(
            node.arrived.wait_for(lambda: len(_updates_about_others(node, "a")) == 2), WAIT
        )
    assert _updates_about_others(node, "a") == [["b", "c", "d"], ["c"]]
    await _close(room)


async def test_hidden_participant_is_not_announced(node: FakeNode) -> None:
    room = node.room()
    await room.join(_start("a"))
    ghost = await room.join(_start("g", hidden=True))
    await room.join(_start("b"))
    join_b = (await node.response("SE_b", "join")).join
    assert [p.identity for p in join_b.other_participants] == ["a"]
    own = (await node.response("SE_g", "update")).update.participants
    assert [p.identity for p in own] == ["g"]  # a hidden participant sees itself
    await room.remove(ghost, models.DisconnectReason.CLIENT_INITIATED, notify=False)
    seen_by_a = [
        p.identity
        for r in [rtc.SignalResponse.FromString(e.data) for e in node.sent["SE_a"]]
        if r.WhichOneof("message") == "update"
        for p in r.update.participants
    ]
    assert "g" not in seen_by_a
    assert room.info().num_participants == 2
    await _close(room)


async def test_admission_refuses_a_full_room_but_lets_an_identity_rejoin(node: FakeNode) -> None:
    room = node.room(max_participants=2)
    await room.join(_start("a"))
    await room.join(_start("b"))
    with pytest.raises(Refusal) as full:
        await room.join(_start("c"))
    assert (
        full.value.code is Code.PERMISSION_DENIED
        and full.value.status == 403
        and "max_participants 2" in full.value.reason
    )
    assert "c" not in room.participants and "SE_c" not in node.sent
    room.check_admission(_start("b"))  # replacing b keeps the count
    await _close(room)
    with pytest.raises(Refusal) as closing:
        room.check_admission(_start("d"))
    assert closing.value.code is Code.UNAVAILABLE and closing.value.status == 503


async def test_empty_room_closes_after_empty_timeout(node: FakeNode) -> None:
    node.room(empty_timeout=0)
    await asyncio.wait_for(node.closed.wait(), WAIT)
    assert node.events == [("room_closed", "r")]


async def test_room_closes_after_the_last_leaves_and_tells_dependents(node: FakeNode) -> None:
    room = node.room(departure_timeout=0)
    agent = await room.join(_start("agent", kind="agent"))
    a = await room.join(_start("a"))
    await room.remove(a, models.DisconnectReason.CLIENT_INITIATED, notify=False)
    # an agent alone keeps no room open (LiveKit's dependent participants)
    await asyncio.wait_for(node.closed.wait(), WAIT)
    leave = (await node.response("SE_agent", "leave")).leave
    assert leave.reason == models.DisconnectReason.ROOM_CLOSED
    assert room.closed and not room.participants and agent.session_id not in node.sessions
    assert node.events[-1] == ("room_closed", "r")


async def test_a_join_cancels_the_empty_timer(node: FakeNode) -> None:
    room = node.room(empty_timeout=1)
    await room.join(_start("a"))
    with pytest.raises(TimeoutError):  # the timer's second passing is the point
        await asyncio.wait_for(node.closed.wait(), 1.5)
    assert not room.closed
    await _close(room)


async def test_evict_all_sends_everyone_to_reconnect(node: FakeNode) -> None:
    room = node.room()
    await room.join(_start("a"))
    await room.evict_all("moved")
    leave = (await node.response("SE_a", "leave")).leave
    assert leave.action == rtc.LeaveRequest.RECONNECT
    assert leave.reason == models.DisconnectReason.STATE_MISMATCH
    assert node.closed.is_set() and not room.participants
