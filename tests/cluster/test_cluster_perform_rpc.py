"""RoomService.PerformRpc through one edge to a participant connected to another edge, the room
on a third process, over Redis."""

from __future__ import annotations

import asyncio

import pytest
from livekit import api, rtc

from tests.support.cluster import Cluster
from tests.support.sdk import connected
from tests.support.trackyard import API_KEY, API_SECRET

pytestmark = pytest.mark.sdk

SLOW = 6.0  # seconds: longer than the edge's usual 5 s wait for a node's answer


async def _perform_rpc(lk: api.LiveKitAPI, req: api.PerformRpcRequest) -> api.PerformRpcResponse:
    # livekit-api 1.2.2 has no perform_rpc method: its own Twirp client and token signing
    service = lk.room
    return await service._client.request(
        "RoomService",
        "PerformRpc",
        req,
        service._auth_header(api.VideoGrants(room_admin=True, room=req.room)),
        api.PerformRpcResponse,
    )


async def test_perform_rpc_across_edges(cluster: Cluster) -> None:
    room = "rpc-cluster"
    async with connected(cluster.edges[1].ws_url, "worker", room) as worker:

        @worker.local_participant.register_rpc_method("work")
        async def work(data: rtc.RpcInvocationData) -> str:
            if data.payload == "slow":
                await asyncio.sleep(SLOW)  # the slow handler is the case under test
            return f"done:{data.payload}"

        async with api.LiveKitAPI(cluster.edges[0].http_url, API_KEY, API_SECRET) as lk:
            req = api.PerformRpcRequest(
                room=room, destination_identity="worker", method="work", payload="fast"
            )
            assert (await asyncio.wait_for(_perform_rpc(lk, req), 20)).payload == "done:fast"
            # a response later than the bus's default wait still arrives within its timeout
            req.payload, req.response_timeout_ms = "slow", 15_000
            started = asyncio.get_running_loop().time()
            resp = await asyncio.wait_for(_perform_rpc(lk, req), 30)
            assert resp.payload == "done:slow"
            assert asyncio.get_running_loop().time() - started >= SLOW
            # ... and one later than its timeout is RESPONSE_TIMEOUT
            req.response_timeout_ms = 1000
            with pytest.raises(api.TwirpError) as err:
                await asyncio.wait_for(_perform_rpc(lk, req), 20)
            assert (err.value.code, err.value.message) == (
                "canceled",
                "RpcError 1502: Response timeout",
            )
            req.destination_identity = "nobody"
            with pytest.raises(api.TwirpError) as err:
                await asyncio.wait_for(_perform_rpc(lk, req), 20)
            assert (err.value.code, err.value.status) == ("not_found", 404)
