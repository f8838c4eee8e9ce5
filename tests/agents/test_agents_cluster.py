"""LiveKit Agents against the cluster (real Redis, routers, SFU nodes, signal edges): the
worker registry lives in the store and the availability handshake rides the bus, so a room on
any node gets its jobs from workers registered on any edge."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator

import pytest
from livekit import api, rtc

from tests.agents.support import AgentWorker, Balancer
from tests.support.cluster import Cluster, cluster_fixture
from tests.support.media import dominant_tone
from tests.support.sdk import TIMEOUT, EventWaiter, token
from tests.support.trackyard import API_KEY, API_SECRET, TrackyardProcess
from trackyard.core import keys

pytestmark = [pytest.mark.sdk, pytest.mark.redis]

cluster = cluster_fixture(
    sfu_regions=["us-east", "us-east"], edge_regions=["us-east", "us-east"], routers_count=1
)


@pytest.fixture
async def lk(cluster: Cluster) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(cluster.edges[1].http_url, API_KEY, API_SECRET)
    yield client
    await client.aclose()


def _registered_edges(cluster: Cluster) -> dict[str, str]:
    """worker id -> edge id, as the store holds the registry."""
    with cluster.redis_client() as r:
        raw = r.hgetall(keys.AGENT_WORKERS)
    return {k.decode(): json.loads(v)["edge_id"] for k, v in raw.items()}


async def _agent_tone_via(
    cluster: Cluster, edge: int, room: str, identity: str, expect: float
) -> str:
    """Join ``room`` through edge ``edge``; hear the agent's tone; return its identity."""
    client = rtc.Room()
    subs = EventWaiter(client, "track_subscribed")
    await asyncio.wait_for(
        client.connect(cluster.edges[edge].ws_url, token(identity, room)), TIMEOUT
    )
    try:
        (track, _, who) = await subs.wait(
            lambda t, p, w: w.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT, 45
        )
        freq = await dominant_tone(track)
        assert abs(freq - expect) < 15, freq
        return str(who.identity)
    finally:
        await asyncio.wait_for(client.disconnect(), TIMEOUT)


async def test_room_on_any_node_gets_a_worker_registered_on_another_edge(
    cluster: Cluster, lk: api.LiveKitAPI
) -> None:
    async with AgentWorker(cluster.edges[0].ws_url, "--agent-name", "far", "--tone", "520") as w:
        assert _registered_edges(cluster)[w.worker_id]  # in the shared store
        rooms = ["agents-far-a", "agents-far-b"]
        for room in rooms:
            await lk.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=60))
            await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="far", room=room)
            )
            await w.wait("job", timeout=40, room=room)
            assert cluster.host_index(room) is not None  # hosted on one of the nodes
            identity = await _agent_tone_via(cluster, 1, room, f"listener-{room}", 520)
            (dispatch,) = [d for d in await lk.agent_dispatch.list_dispatch(room) if d.agent_name]
            (job,) = dispatch.state.jobs
            assert job.state.participant_identity == identity
            assert job.state.status == api.JobStatus.JS_RUNNING
        for room in rooms:
            await lk.room.delete_room(api.DeleteRoomRequest(room=room))


async def test_full_worker_on_one_edge_is_skipped_for_a_free_one_on_another(
    cluster: Cluster, lk: api.LiveKitAPI
) -> None:
    async with (
        AgentWorker(cluster.edges[0].ws_url, "--agent-name", "cap", "--load", "0.9") as full,
        AgentWorker(cluster.edges[1].ws_url, "--agent-name", "cap", "--tone", "610") as free,
    ):
        edges = _registered_edges(cluster)
        assert edges[full.worker_id] != edges[free.worker_id]
        room = "agents-cap"
        await lk.agent_dispatch.create_dispatch(  # creates the room, as LiveKit's does
            api.CreateAgentDispatchRequest(agent_name="cap", room=room)
        )
        await free.wait("job", timeout=40, room=room)
        assert not full.seen("offer")
        await _agent_tone_via(cluster, 0, room, "capper", 610)
        await lk.room.delete_room(api.DeleteRoomRequest(room=room))


async def test_room_close_terminates_the_job(cluster: Cluster, lk: api.LiveKitAPI) -> None:
    async with AgentWorker(cluster.edges[0].ws_url, "--agent-name", "closer") as w:
        room = "agents-closing"
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="closer", room=room)
        )
        job = await w.wait("published", timeout=40, room=room)
        await lk.room.delete_room(api.DeleteRoomRequest(room=room))
        await w.wait("ended", timeout=20, job=job["job"])
        assert await lk.agent_dispatch.list_dispatch(room) == []


def _extra_edge(cluster: Cluster) -> TrackyardProcess:
    cfg = cluster.base_config()
    cfg["region"] = "us-east"
    cfg["router"] = {"urls": cluster.router_urls}
    proc = TrackyardProcess(cfg, command="signal")
    proc.start()
    return proc


async def test_worker_whose_edge_dies_re_registers_elsewhere_and_its_job_goes_on(
    cluster: Cluster, lk: api.LiveKitAPI
) -> None:
    """Worker and job reach the cluster through a balancer, first to an edge that then dies
    (kill -9); the balancer sends them to another edge. The worker registers again (a new
    worker id, LiveKit's way) and reports its running job (MigrateJobRequest); the job's
    participant rejoins and goes on: still RUNNING, its tone heard again."""
    edge = _extra_edge(cluster)
    balancer = await Balancer(edge.port).start()
    room = "agents-edge-death"
    watcher = rtc.Room()
    subs = EventWaiter(watcher, "track_subscribed")
    try:
        async with AgentWorker(balancer.ws_url, "--agent-name", "mover", "--tone", "470") as w:
            first_id = w.worker_id
            await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="mover", room=room)
            )
            published = await w.wait("published", timeout=40, room=room)
            await asyncio.wait_for(
                watcher.connect(cluster.edges[1].ws_url, token("watcher", room)), TIMEOUT
            )
            (track, _, _) = await subs.wait(lambda t, p, x: x.identity == published["identity"], 30)
            assert abs(await dominant_tone(track) - 470) < 15
            seen = len(subs.calls)

            balancer.switch(cluster.edges[0].port)
            Cluster.kill(edge)
            await balancer.close_links()
            again = await asyncio.to_thread(
                w.wait_sync,
                lambda e: e.get("event") == "registered" and e["worker_id"] != first_id,
                60,
            )
            edges = _registered_edges(cluster)
            assert edges.get(again["worker_id"]), edges
            # the agent's media session is with the room's node: its SDK resumes through the
            # other edge (same track) or rejoins (a new one); either way its tone goes on
            ident = published["identity"]

            async def agent_heard() -> None:
                while True:
                    latest = [t for (t, _, x) in subs.calls if x.identity == ident][-1]
                    with contextlib.suppress(TimeoutError, AssertionError):
                        if abs(await dominant_tone(latest, timeout=5) - 470) < 15:
                            return

            await asyncio.wait_for(agent_heard(), 60)
            assert ident in watcher.remote_participants
            assert len(subs.calls) >= seen
            (dispatch,) = [d for d in await lk.agent_dispatch.list_dispatch(room) if d.agent_name]
            (job,) = dispatch.state.jobs
            assert job.state.status == api.JobStatus.JS_RUNNING, job.state
            assert not w.seen("ended")
    finally:
        await asyncio.wait_for(watcher.disconnect(), TIMEOUT)
        await balancer.close()
        edge.stop()
        await lk.room.delete_room(api.DeleteRoomRequest(room=room))


async def test_a_draining_edge_sends_its_workers_elsewhere(
    cluster: Cluster, lk: api.LiveKitAPI
) -> None:
    """SIGTERM on the worker's edge: it closes its worker sockets (LiveKit's DrainConnections)
    and sends its clients to resume elsewhere; the worker registers again through the
    balancer, on another edge, and the drained edge exits 0 by itself."""
    edge = _extra_edge(cluster)
    balancer = await Balancer(edge.port).start()
    room = "agents-edge-drain"
    client = rtc.Room()
    try:
        # a client session through the edge too: the drain sends it elsewhere as well
        await asyncio.wait_for(client.connect(edge.ws_url, token("stayer", room)), TIMEOUT)
        async with AgentWorker(balancer.ws_url, "--agent-name", "drainee") as w:
            first_id = w.worker_id
            assert _registered_edges(cluster)[first_id]
            balancer.switch(cluster.edges[0].port)
            edge.signal(signal.SIGTERM)
            again = await asyncio.to_thread(
                w.wait_sync,
                lambda e: e.get("event") == "registered" and e["worker_id"] != first_id,
                30,
            )
            edges = _registered_edges(cluster)
            assert first_id not in edges  # the draining edge removed its worker
            assert again["worker_id"] in edges
            assert await asyncio.to_thread(edge.wait, 15) == 0  # drained, exits by itself
    finally:
        await asyncio.wait_for(client.disconnect(), TIMEOUT)
        await balancer.close()
        edge.stop()
