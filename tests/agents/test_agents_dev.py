"""LiveKit Agents against ``trackyard dev``: the real ``livekit-agents`` worker registers on
``/agent``, gets jobs, joins as kind AGENT, publishes a tone the room hears, answers RPC."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import jwt
import pytest
import websockets
from livekit import api, rtc

from tests.agents.support import AgentWorker
from tests.support.media import dominant_tone, tone_audio
from tests.support.sdk import TIMEOUT, EventWaiter, connected, token
from tests.support.trackyard import API_KEY, API_SECRET, TrackyardProcess

pytestmark = pytest.mark.sdk

CONFIG = {
    "room": {"departure_timeout": 1, "empty_timeout": 3},
    "logging": {"level": "debug"},
}


@pytest.fixture(scope="module")
def server() -> Iterator[TrackyardProcess]:
    with TrackyardProcess(CONFIG) as proc:
        yield proc
        assert proc.alive(), f"server died during the module:\n{proc.logs()}"


@pytest.fixture
async def lk(server: TrackyardProcess) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(server.http_url, API_KEY, API_SECRET)
    yield client
    await client.aclose()


async def _agent_joins(room: rtc.Room, waiter: EventWaiter) -> rtc.RemoteParticipant:
    """The agent participant, whether it was there at connect or came later."""
    for p in room.remote_participants.values():
        if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            return p
    (p,) = await waiter.wait(lambda p: p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT, 45)
    return p  # type: ignore[no-any-return]


async def _agent_tone(room: rtc.Room, subs: EventWaiter, identity: str) -> float:
    (track, _, _) = await subs.wait(lambda t, pub, who: who.identity == identity, 30)
    return await dominant_tone(track)


async def _dispatches(lk: api.LiveKitAPI, room: str) -> list[api.AgentDispatch]:
    return list(await lk.agent_dispatch.list_dispatch(room))


async def test_agent_socket_needs_the_agent_grant(server: TrackyardProcess) -> None:
    plain = api.AccessToken(API_KEY, API_SECRET).with_grants(api.VideoGrants(room_list=True))
    url = server.ws_url + "/agent"
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(
            url, additional_headers={"Authorization": f"Bearer {plain.to_jwt()}"}
        ):
            pass
    assert info.value.response.status_code == 401


async def test_automatic_dispatch_when_the_room_starts(
    server: TrackyardProcess, room_name: str, lk: api.LiveKitAPI
) -> None:
    async with (
        AgentWorker(server.ws_url, "--tone", "440") as worker,
        connected(server.ws_url, "alice", room_name) as alice,
    ):
        if True:  # one block for the whole test
            joins = EventWaiter(alice, "participant_connected")
            subs = EventWaiter(alice, "track_subscribed")
            agent_p = await _agent_joins(alice, joins)
            assert agent_p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
            assert agent_p.attributes.get("lk.agent_name") == ""
            freq = await _agent_tone(alice, subs, agent_p.identity)
            assert abs(freq - 440) < 15, freq
            answer = await asyncio.wait_for(
                alice.local_participant.perform_rpc(
                    destination_identity=agent_p.identity, method="whoami", payload=""
                ),
                TIMEOUT,
            )
            identity, job_id, job_type = answer.split("|")
            assert identity == agent_p.identity and job_type == "0"  # JT_ROOM
            (dispatch,) = await _dispatches(lk, room_name)
            assert dispatch.agent_name == ""
            (job,) = dispatch.state.jobs
            assert job.id == job_id
            assert job.state.status == api.JobStatus.JS_RUNNING
            assert job.state.participant_identity == agent_p.identity
            assert job.state.worker_id == worker.worker_id


async def test_explicit_dispatch_by_name_via_agent_dispatch_service(
    server: TrackyardProcess, room_name: str, lk: api.LiveKitAPI
) -> None:
    async with (
        AgentWorker(server.ws_url, "--agent-name", "greeter", "--tone", "660") as worker,
        connected(server.ws_url, "bob", room_name) as bob,
    ):
        joins = EventWaiter(bob, "participant_connected")
        subs = EventWaiter(bob, "track_subscribed")
        # a named worker is not dispatched automatically: the default dispatch has no job
        (default,) = await _dispatches(lk, room_name)
        assert default.agent_name == "" and not worker.seen("offer")
        created = await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(
                agent_name="greeter", room=room_name, metadata=json.dumps({"tone": 660})
            )
        )
        assert created.id.startswith("AD_") and created.agent_name == "greeter"
        agent_p = await _agent_joins(bob, joins)
        assert agent_p.attributes.get("lk.agent_name") == "greeter"
        freq = await _agent_tone(bob, subs, agent_p.identity)
        assert abs(freq - 660) < 15, freq
        listed = {d.id: d for d in await _dispatches(lk, room_name)}
        assert listed[created.id].state.jobs[0].state.participant_identity == agent_p.identity
        # deleting the dispatch terminates its job: the agent leaves
        gone = EventWaiter(bob, "participant_disconnected")
        await lk.agent_dispatch.delete_dispatch(created.id, room_name)
        await gone.wait(lambda p: p.identity == agent_p.identity, 20)
        assert created.id not in {d.id for d in await _dispatches(lk, room_name)}


async def test_explicit_dispatch_via_the_tokens_room_config(
    server: TrackyardProcess, room_name: str, lk: api.LiveKitAPI
) -> None:
    token = (
        api.AccessToken(API_KEY, API_SECRET)
        .with_identity("carol")
        .with_grants(api.VideoGrants(room_join=True, room=room_name))
        .with_room_config(
            api.RoomConfiguration(
                agents=[api.RoomAgentDispatch(agent_name="concierge", metadata='{"tone": 550}')]
            )
        )
        .to_jwt()
    )
    async with AgentWorker(server.ws_url, "--agent-name", "concierge"):
        carol = rtc.Room()
        joins = EventWaiter(carol, "participant_connected")
        subs = EventWaiter(carol, "track_subscribed")
        await asyncio.wait_for(carol.connect(server.ws_url, token), TIMEOUT)
        try:
            agent_p = await _agent_joins(carol, joins)
            assert agent_p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
            freq = await _agent_tone(carol, subs, agent_p.identity)
            assert abs(freq - 550) < 15, freq
            (dispatch,) = await _dispatches(lk, room_name)
            assert dispatch.agent_name == "concierge"
        finally:
            await asyncio.wait_for(carol.disconnect(), TIMEOUT)


async def test_full_worker_is_skipped_and_a_declining_one_retried(
    server: TrackyardProcess, room_name: str, lk: api.LiveKitAPI
) -> None:
    async with (
        AgentWorker(server.ws_url, "--agent-name", "pool", "--load", "0.9") as full,
        AgentWorker(server.ws_url, "--agent-name", "pool", "--decline") as decliner,
        AgentWorker(server.ws_url, "--agent-name", "pool", "--tone", "330") as free,
    ):
        rooms = [f"pool{i}-{room_name}"[:60] for i in range(3)]
        # one at a time: a worker with a job being accepted answers "not available" to the
        # next offer (livekit-agents reserves a slot), which would be a fair decline too
        for room in rooms:
            await lk.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=60))
            await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="pool", room=room)
            )
            await free.wait("job", timeout=40, room=room)
        assert not full.seen("offer"), "a FULL worker was offered a job"
        for room in rooms:
            (dispatch,) = [d for d in await _dispatches(lk, room) if d.agent_name == "pool"]
            (job,) = dispatch.state.jobs
            assert job.state.worker_id == free.worker_id
        # the decliner, when it was picked first, was skipped for the free one
        for offer in decliner.seen("offer"):
            assert offer["room"] in rooms
        dave = rtc.Room()
        subs = EventWaiter(dave, "track_subscribed")  # before connect: the agent is there
        await asyncio.wait_for(dave.connect(server.ws_url, token("dave", rooms[0])), TIMEOUT)
        try:
            (track, _, _who) = await subs.wait(
                lambda t, p, w: w.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT, 30
            )
            try:
                freq = await dominant_tone(track)
            except TimeoutError:  # say what the worker saw (a job process may have died)
                raise AssertionError(
                    f"no tone from the agent; worker log:\n{free.logs()}"
                ) from None
            assert abs(freq - 330) < 15, freq
        finally:
            await asyncio.wait_for(dave.disconnect(), TIMEOUT)
        for room in rooms:
            await lk.room.delete_room(api.DeleteRoomRequest(room=room))


async def test_publisher_job_for_each_first_publication(
    server: TrackyardProcess, room_name: str, lk: api.LiveKitAPI
) -> None:
    async with (
        AgentWorker(server.ws_url, "--agent-name", "listener", "--type", "publisher") as worker,
        connected(server.ws_url, "erin", room_name) as erin,
    ):
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="listener", room=room_name)
        )
        joins = EventWaiter(erin, "participant_connected")
        async with tone_audio(erin, 440.0):
            await worker.wait("job", timeout=30, room=room_name)
            agent_p = await _agent_joins(erin, joins)
            answer = await asyncio.wait_for(
                erin.local_participant.perform_rpc(
                    destination_identity=agent_p.identity, method="whoami", payload=""
                ),
                TIMEOUT,
            )
            assert answer.split("|")[2] == "1"  # JT_PUBLISHER
            (dispatch,) = [d for d in await _dispatches(lk, room_name) if d.agent_name]
            (job,) = dispatch.state.jobs
            assert job.type == api.JobType.JT_PUBLISHER
            assert job.participant.identity == "erin"


async def test_worker_killed_ends_its_job_as_livekit_does(
    server: TrackyardProcess, room_name: str, lk: api.LiveKitAPI
) -> None:
    """The agent's participant leaves with its worker; the job fails with LiveKit's reason
    and is not dispatched again (LiveKit's room.go: AGENT_LEFT_ROOM)."""
    worker = AgentWorker(server.ws_url, "--agent-name", "fragile")
    async with worker, connected(server.ws_url, "frank", room_name) as frank:
        joins = EventWaiter(frank, "participant_connected")
        gone = EventWaiter(frank, "participant_disconnected")
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="fragile", room=room_name)
        )
        agent_p = await _agent_joins(frank, joins)
        await asyncio.to_thread(worker.kill)
        await gone.wait(lambda p: p.identity == agent_p.identity, 30)

        async def failed() -> api.Job:
            while True:
                for d in await _dispatches(lk, room_name):
                    for job in d.state.jobs:
                        if job.state.status == api.JobStatus.JS_FAILED:
                            return job
                await asyncio.sleep(0.1)  # polling the public API (no event for it)

        job = await asyncio.wait_for(failed(), 15)
        assert job.state.error == "agent worker left the room"
        assert job.state.ended_at > 0


async def test_room_with_only_its_agent_left_closes_and_ends_the_job(
    server: TrackyardProcess, room_name: str, lk: api.LiveKitAPI
) -> None:
    """As LiveKit: agents do not hold a room open (departure_timeout runs when the last
    non-agent leaves); closing the room ends the job."""
    async with AgentWorker(server.ws_url, "--agent-name", "lingerer") as worker:
        async with connected(server.ws_url, "gina", room_name) as gina:
            joins = EventWaiter(gina, "participant_connected")
            await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name="lingerer", room=room_name)
            )
            agent_p = await _agent_joins(gina, joins)
        ended = await worker.wait("ended", timeout=20, room=room_name)
        assert ended["job"]
        assert await _dispatches(lk, room_name) == []
        rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=[room_name]))
        assert not rooms.rooms, f"room kept open by {agent_p.identity}"


async def test_worker_protocol_message_by_message(
    server: TrackyardProcess, room_name: str, lk: api.LiveKitAPI
) -> None:
    """The wire protocol without the framework: register, ping, status, availability,
    assignment (its token), job status."""
    from livekit.protocol import agent as agent_pb

    grant = api.AccessToken(API_KEY, API_SECRET).with_grants(api.VideoGrants(agent=True))
    async with websockets.connect(
        server.ws_url + "/agent", additional_headers={"Authorization": f"Bearer {grant.to_jwt()}"}
    ) as ws:

        async def send(**msg: object) -> None:
            await ws.send(agent_pb.WorkerMessage(**msg).SerializeToString())  # type: ignore[arg-type]

        async def recv() -> agent_pb.ServerMessage:
            raw = await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert isinstance(raw, bytes)
            return agent_pb.ServerMessage.FromString(raw)

        await send(
            register=agent_pb.RegisterWorkerRequest(
                type=agent_pb.JobType.JT_ROOM, agent_name="raw", version="test"
            )
        )
        reg = (await recv()).register
        assert reg.worker_id.startswith("AW_") and reg.server_info.version
        await send(ping=agent_pb.WorkerPing(timestamp=1234))
        assert (await recv()).pong.last_timestamp == 1234
        await send(
            update_worker=agent_pb.UpdateWorkerStatus(
                status=agent_pb.WorkerStatus.WS_AVAILABLE, load=0.1
            )
        )
        await lk.room.create_room(api.CreateRoomRequest(name=room_name))
        created = await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="raw", room=room_name, metadata="m")
        )
        job = (await recv()).availability.job
        assert job.id.startswith("AJ_") and job.type == agent_pb.JobType.JT_ROOM
        assert job.room.name == room_name and job.agent_name == "raw" and job.metadata == "m"
        assert job.dispatch_id == created.id
        await send(
            availability=agent_pb.AvailabilityResponse(
                job_id=job.id,
                available=True,
                participant_identity="raw-agent",
                participant_name="Raw",
                participant_attributes={"a": "b"},
            )
        )
        assignment = (await recv()).assignment
        assert assignment.job.id == job.id
        claims = jwt.decode(assignment.token, options={"verify_signature": False})
        assert claims["sub"] == "raw-agent" and claims["name"] == "Raw"
        assert claims["kind"] == "agent"
        assert claims["video"]["agent"] is True and claims["video"]["room"] == room_name
        assert claims["attributes"] == {"a": "b", "lk.agent_name": "raw"}
        (dispatch,) = [d for d in await _dispatches(lk, room_name) if d.id == created.id]
        assert dispatch.state.jobs[0].state.status == api.JobStatus.JS_RUNNING
        await send(
            update_job=agent_pb.UpdateJobStatus(job_id=job.id, status=agent_pb.JobStatus.JS_SUCCESS)
        )

        async def succeeded() -> None:
            while True:
                (d,) = [d for d in await _dispatches(lk, room_name) if d.id == created.id]
                if d.state.jobs[0].state.status == api.JobStatus.JS_SUCCESS:
                    return
                await asyncio.sleep(0.05)  # polling the public API (no event for it)

        await asyncio.wait_for(succeeded(), TIMEOUT)
    await lk.room.delete_room(api.DeleteRoomRequest(room=room_name))


async def test_participant_jobs_for_every_non_agent_participant(
    server: TrackyardProcess, room_name: str, lk: api.LiveKitAPI
) -> None:
    """JT_PARTICIPANT workers (the Python framework only offers ROOM and PUBLISHER, so this
    one speaks the protocol itself): one job per participant that joins, none for agents."""
    from livekit.protocol import agent as agent_pb

    grant = api.AccessToken(API_KEY, API_SECRET).with_grants(api.VideoGrants(agent=True))
    async with websockets.connect(
        server.ws_url + "/agent", additional_headers={"Authorization": f"Bearer {grant.to_jwt()}"}
    ) as ws:
        register = agent_pb.RegisterWorkerRequest(
            type=agent_pb.JobType.JT_PARTICIPANT, agent_name="each"
        )
        await ws.send(agent_pb.WorkerMessage(register=register).SerializeToString())
        reply = agent_pb.ServerMessage.FromString(await asyncio.wait_for(ws.recv(), TIMEOUT))  # type: ignore[arg-type]
        assert reply.register.worker_id
        await lk.room.create_room(api.CreateRoomRequest(name=room_name, empty_timeout=60))
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="each", room=room_name)
        )
        async with (
            connected(server.ws_url, "hank", room_name),
            connected(server.ws_url, "bot", room_name, kind="agent"),
            connected(server.ws_url, "ivy", room_name),
        ):
            seen = []
            for _ in range(2):
                msg = agent_pb.ServerMessage.FromString(await asyncio.wait_for(ws.recv(), TIMEOUT))  # type: ignore[arg-type]
                job = msg.availability.job
                assert job.type == agent_pb.JobType.JT_PARTICIPANT
                seen.append(job.participant.identity)
                decline = agent_pb.AvailabilityResponse(job_id=job.id, available=False)
                await ws.send(agent_pb.WorkerMessage(availability=decline).SerializeToString())
            assert sorted(seen) == ["hank", "ivy"]  # not the agent "bot"
    await lk.room.delete_room(api.DeleteRoomRequest(room=room_name))
