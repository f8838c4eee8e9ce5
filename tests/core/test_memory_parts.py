"""Behaviour of the in-memory bus and node RPC that the contract tests do not cover."""

from __future__ import annotations

import asyncio

import pytest

from trackyard.core import keys, messages
from trackyard.core.bus import Envelope, MemoryBus
from trackyard.core.noderpc import NodeRpcClient, reply
from trackyard.core.refusal import Code, Refusal


async def test_rpc_round_trip_and_error() -> None:
    bus = MemoryBus()
    sub = bus.subscribe(keys.node_channel("ND_x"))

    async def serve() -> None:
        async for env in sub:
            assert env.kind == messages.RPC
            if env.headers["method"] == "Echo":
                await reply(bus, env, env.data[::-1])
            else:
                await reply(bus, env, error=Refusal(Code.NOT_FOUND, "nope"))

    server = asyncio.create_task(serve())
    client = NodeRpcClient(bus)
    assert await client.call("ND_x", "Echo", b"abc", timeout=2) == b"cba"
    with pytest.raises(Refusal) as err:
        await client.call("ND_x", "Other", b"", timeout=2)
    assert err.value.code == "not_found"
    with pytest.raises(Refusal) as err:
        await client.call("ND_gone", "Echo", b"", timeout=0.2)
    assert err.value.code == "unavailable" and "ND_gone" in err.value.reason
    await client.close()
    await sub.close()
    await asyncio.wait_for(server, 2)


async def test_memory_bus_bounded() -> None:
    bus = MemoryBus(maxlen=3)
    sub = bus.subscribe("c")
    for i in range(5):
        await bus.publish("c", Envelope(kind=str(i)))
    got = [(await sub.get(timeout=1)) for _ in range(3)]
    assert [e.kind for e in got if e] == ["2", "3", "4"]
    assert await sub.get(timeout=0.05) is None
