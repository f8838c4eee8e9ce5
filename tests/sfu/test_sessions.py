"""No ghosts: a participant whose session is gone leaves after the reconnect window.

In-process node (memory store and bus, no clients): the peer-connection state change is
driven by hand (aiortc reaches "failed" only after ~30 s of consent failures); the edge's
registration expires for real. The SDK-level check of the same paths is
tests/cluster/test_chaos.py::test_kill_edge_its_participants_leave_others_keep_media.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from livekit.protocol import models, rtc

from trackyard.core import keys, messages
from trackyard.core.bus import MemoryBus, Subscription
from trackyard.core.config import Config
from trackyard.core.store import MemoryStore
from trackyard.sfu.node import SfuNode
from trackyard.sfu.participant import Participant

WINDOW = 0.3


@pytest.fixture
async def node() -> AsyncIterator[SfuNode]:
    config = Config.load(dev=True, env={})
    config.node.reconnect_window = WINDOW
    config.node.heartbeat_interval = 0.05
    n = SfuNode(config, MemoryStore(), MemoryBus())
    await n.start()
    yield n
    await n.stop()


async def _join(
    node: SfuNode, identity: str, edge_id: str = ""
) -> tuple[Participant, Subscription]:
    session = f"SE_{identity}"
    sub = node.bus.subscribe(keys.session_channel(session))
    room = await node.ensure_room("r", create=True)
    assert room is not None
    start = messages.SessionStart(session_id=session, room="r", identity=identity, edge_id=edge_id)
    return await room.join(start), sub


async def _left(sub: Subscription, identity: str, timeout: float) -> models.ParticipantInfo:
    """The update telling ``sub``'s participant that ``identity`` left."""

    async def find() -> models.ParticipantInfo:
        while True:
            env = await sub.get()
            if env is None or env.kind != messages.SIGNAL:
                continue
            msg = rtc.SignalResponse.FromString(env.data)
            if msg.WhichOneof("message") != "update":
                continue
            for info in msg.update.participants:
                if info.identity == identity and info.state == models.ParticipantInfo.DISCONNECTED:
                    return info

    return await asyncio.wait_for(find(), timeout)


def _set_state(participant: Participant, state: str) -> None:
    pc = participant.publisher_pc
    pc._RTCPeerConnection__connectionState = state  # type: ignore[attr-defined]
    pc.emit("connectionstatechange")


async def test_failed_peer_connection_leaves_after_window(node: SfuNode) -> None:
    _, watcher = await _join(node, "w")
    victim, _ = await _join(node, "v")
    failed_at = time.monotonic()
    _set_state(victim, "failed")
    info = await _left(watcher, "v", timeout=WINDOW + 3)
    assert time.monotonic() - failed_at >= WINDOW * 0.9
    assert info.disconnect_reason == models.DisconnectReason.CONNECTION_TIMEOUT
    assert "v" not in node.rooms["r"].participants
    await asyncio.sleep(0)  # the store write is spawned
    assert await node.store.get_participant("r", "v") is None


async def test_recovered_peer_connection_stays(node: SfuNode) -> None:
    await _join(node, "w")
    victim, _ = await _join(node, "v")
    _set_state(victim, "failed")
    _set_state(victim, "connecting")  # back within the window (an ICE restart would do this)
    await asyncio.sleep(WINDOW * 2)  # the window passing is the point: nothing to await
    assert node.rooms["r"].participants.get("v") is victim


async def test_participants_of_a_dead_edge_leave(node: SfuNode) -> None:
    await node.store.put_edge("ED_live", ttl=60)
    await node.store.put_edge("ED_dead", ttl=0.2)
    _, watcher = await _join(node, "w", "ED_live")
    await _join(node, "v", "ED_dead")
    start = time.monotonic()
    info = await _left(watcher, "v", timeout=WINDOW + 3)
    assert info.disconnect_reason == models.DisconnectReason.SIGNAL_CLOSE
    assert time.monotonic() - start >= WINDOW
    assert set(node.rooms["r"].participants) == {"w"}
