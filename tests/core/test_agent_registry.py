"""The agent worker registry beside each store (memory and Redis), and bus calls on any channel."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest

from trackyard.core import keys
from trackyard.core.agentmessages import (
    WORKER_TTL_SECONDS,
    JobRecord,
    WorkerRecord,
    registry_for,
    room_config_from_token,
)
from trackyard.core.auth import create_token
from trackyard.core.bus import MemoryBus
from trackyard.core.noderpc import ChannelRpcClient, reply
from trackyard.core.refusal import Code, Refusal
from trackyard.core.store import Store


def worker(worker_id: str, **kw: object) -> WorkerRecord:
    return WorkerRecord(worker_id=worker_id, edge_id="ED_1", updated_at=time.time(), **kw)  # type: ignore[arg-type]


async def test_workers_listed_while_fresh(store: Store) -> None:
    reg = registry_for(store)
    assert registry_for(store) is reg
    await reg.put_worker(worker("AW_a", agent_name="x", load=0.25))
    await reg.put_worker(worker("AW_b"))
    stale = worker("AW_old")
    stale.updated_at = time.time() - WORKER_TTL_SECONDS - 1  # its edge stopped refreshing
    await reg.put_worker(stale)
    listed = await reg.list_workers()
    assert [w.worker_id for w in listed] == ["AW_a", "AW_b"]
    assert listed[0].agent_name == "x" and listed[0].load == 0.25
    await reg.delete_worker("AW_a")
    assert [w.worker_id for w in await reg.list_workers()] == ["AW_b"]


async def test_job_records(store: Store) -> None:
    reg = registry_for(store)
    rec = JobRecord(job_id="AJ_1", room="r", node_id="ND_1", worker_id="AW_1", edge_id="ED_1")
    await reg.put_job(rec)
    assert await reg.get_job("AJ_1") == rec
    rec.edge_id = "ED_2"
    await reg.put_job(rec)
    got = await reg.get_job("AJ_1")
    assert got is not None and got.edge_id == "ED_2"
    await reg.delete_job("AJ_1")
    assert await reg.get_job("AJ_1") is None


async def test_calls_on_an_agent_channel() -> None:
    bus = MemoryBus()
    sub = bus.subscribe(keys.agent_channel("ED_x"))

    async def serve() -> None:
        env = await sub.get(timeout=5)
        assert env is not None and env.headers["worker_id"] == "AW_1"
        await reply(bus, env, env.data[::-1])
        env = await sub.get(timeout=5)
        assert env is not None
        await reply(bus, env, error=Refusal(Code.UNAVAILABLE, "worker not available"))

    server = asyncio.create_task(serve())
    client = ChannelRpcClient(bus, "ND_1")
    channel = keys.agent_channel("ED_x")
    assert await client.call_channel(channel, "M", b"abc", headers={"worker_id": "AW_1"}) == b"cba"
    with pytest.raises(Refusal) as info:
        await client.call_channel(channel, "M", b"", headers={"worker_id": "AW_1"})
    assert info.value.code == "unavailable"
    await server
    with pytest.raises(Refusal):  # nobody serves this channel
        await client.call_channel(keys.agent_channel("ED_gone"), "M", b"", timeout=0.2)
    await client.close()


def test_room_config_read_from_a_token() -> None:
    token = create_token("k", "s" * 32, identity="a", grants={"roomJoin": True, "room": "r"})
    assert room_config_from_token(token) == ""
    payload = jwt.decode(token, options={"verify_signature": False})
    payload["roomConfig"] = {"agents": [{"agentName": "x"}]}
    token = jwt.encode(payload, "s" * 32, algorithm="HS256")
    assert '"agentName": "x"' in room_config_from_token(token)
