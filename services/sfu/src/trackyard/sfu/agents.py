"""Agent dispatch on the node hosting a room (LiveKit's ``launchRoomAgents`` /
``launchTargetAgents`` in ``pkg/rtc/room.go``, and the worker selection of its agent service).

A room holds agent dispatches: those asked for by CreateRoom's ``agents`` or by the token of
the participant whose join created it (``roomConfig.agents``), or else one default dispatch
with no agent name (automatic dispatch); more come from ``AgentDispatchService.CreateDispatch``.
Each dispatch launches a JT_ROOM job when the room starts (or when the dispatch is created), a
JT_PARTICIPANT job for every participant that joins and a JT_PUBLISHER job for every
participant's first publication (agent participants trigger nothing), each only if some
worker of that agent name and job type is registered, one job per namespace.

A job goes to a worker picked at random weighted by free load among the AVAILABLE workers
(a FULL worker gets nothing); the worker's edge runs the availability handshake; a worker that
declines, does not answer within 10 s or is gone is skipped for the next one. Job state is
kept in the dispatch (``ListDispatch``). When the job's participant leaves, the job fails with
"agent worker left the room" and the worker is sent ``JobTermination``, as LiveKit does (no
re-dispatch); when a dispatch is deleted or the room closes, its running jobs are terminated.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
from google.protobuf import json_format
from livekit.protocol import agent, models
from livekit.protocol import agent_dispatch as ad_pb
from livekit.protocol import room as room_pb

from trackyard.core import ids, keys
from trackyard.core.agentmessages import (
    ASSIGN_JOB,
    AVAILABILITY_TIMEOUT_SECONDS,
    DISPATCH_PREFIX,
    JOB_PREFIX,
    JOB_UPDATE,
    TERMINATE_JOB,
    WorkerRecord,
    registry_for,
)
from trackyard.core.noderpc import ChannelRpcClient
from trackyard.core.refusal import Code, Refusal
from trackyard.sfu import roomapi

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from trackyard.sfu.node import SfuNode
    from trackyard.sfu.participant import Participant
    from trackyard.sfu.room import Room

log = structlog.get_logger(__name__)

ENDED = (agent.JobStatus.JS_SUCCESS, agent.JobStatus.JS_FAILED)


@dataclass
class _RoomAgents:
    dispatches: dict[str, ad_pb.AgentDispatch] = field(default_factory=dict)
    jobs: dict[str, agent.Job] = field(default_factory=dict)  # job id -> job (with state)
    by_identity: dict[str, str] = field(default_factory=dict)  # agent identity -> job id
    published: set[str] = field(default_factory=set)
    workers: dict[str, WorkerRecord] = field(default_factory=dict)  # job id -> its worker


def room_agents_from_config(config_json: str) -> list[ad_pb.RoomAgentDispatch]:
    if not config_json:
        return []
    try:
        config = json_format.ParseDict(
            json.loads(config_json), room_pb.RoomConfiguration(), ignore_unknown_fields=True
        )
    except (ValueError, json_format.ParseError):
        return []
    return list(config.agents)


class AgentDispatcher:
    def __init__(self, node: SfuNode) -> None:
        self.node = node
        self.registry = registry_for(node.store)
        self.rpc = ChannelRpcClient(node.bus, node.node_id, purpose="agents")
        self.rooms: dict[str, _RoomAgents] = {}
        self.log = log.bind(node=node.node_id)

    # -- room events ------------------------------------------------------------------------

    def room_started(self, room: Room, agents: Sequence[ad_pb.RoomAgentDispatch] = ()) -> None:
        state = self.rooms[room.name] = _RoomAgents()
        # LiveKit: with no dispatch asked for, any unnamed agent is dispatched by default
        for rad in agents or [ad_pb.RoomAgentDispatch()]:
            d = ad_pb.AgentDispatch(
                id=ids.new_id(DISPATCH_PREFIX),
                agent_name=rad.agent_name,
                room=room.name,
                metadata=rad.metadata,
                restart_policy=rad.restart_policy,
                deployment=rad.deployment,
                attributes=dict(rad.attributes),
            )
            d.state.created_at = time.time_ns()
            state.dispatches[d.id] = d
            self._launch(room, d, agent.JobType.JT_ROOM, None)

    def participant_joined(self, room: Room, participant: Participant) -> None:
        state = self.rooms.get(room.name)
        if state is None or _dependent(participant):
            return
        for d in list(state.dispatches.values()):
            self._launch(room, d, agent.JobType.JT_PARTICIPANT, participant)

    def track_published(self, room: Room, participant: Participant) -> None:
        state = self.rooms.get(room.name)
        if state is None or participant.identity in state.published:
            return
        state.published.add(participant.identity)
        if _dependent(participant):
            return
        for d in list(state.dispatches.values()):
            self._launch(room, d, agent.JobType.JT_PUBLISHER, participant)

    def participant_left(self, room: Room, participant: Participant) -> None:
        state = self.rooms.get(room.name)
        if state is None:
            return
        state.published.discard(participant.identity)
        job_id = state.by_identity.get(participant.identity)
        if job_id is not None and job_id in state.jobs:
            self.node.spawn(self._agent_left(room, state, participant.identity, job_id))

    async def _agent_left(self, room: Room, state: _RoomAgents, identity: str, job_id: str) -> None:
        """The job's participant left: the job failed (LiveKit's AGENT_LEFT_ROOM), unless the
        same identity took its place (a rejoin replacing a session whose edge died), which
        happens before this task first runs."""
        if room.participants.get(identity) is not None and not room.closed:
            return
        state.by_identity.pop(identity, None)
        failed = agent.JobStatus.JS_FAILED
        await self._terminate(state, job_id, failed, "agent worker left the room")

    async def room_closed(self, room: Room) -> None:
        state = self.rooms.pop(room.name, None)
        if state is None:
            return
        for job_id in list(state.jobs):
            await self._terminate(state, job_id, agent.JobStatus.JS_SUCCESS, "")

    # -- launching --------------------------------------------------------------------------

    def _launch(
        self,
        room: Room,
        dispatch: ad_pb.AgentDispatch,
        job_type: agent.JobType,
        participant: Participant | None,
    ) -> None:
        self.node.spawn(self._launch_jobs(room, dispatch, job_type, participant))

    async def _launch_jobs(
        self,
        room: Room,
        dispatch: ad_pb.AgentDispatch,
        job_type: agent.JobType,
        participant: Participant | None,
    ) -> None:
        try:
            workers = await self._candidates(dispatch.agent_name, job_type)
        except Exception as exc:
            self.log.warning("cannot read agent workers", error=str(exc))
            return
        for namespace in sorted({w.namespace for w in workers}):
            job = agent.Job(
                id=ids.new_id(JOB_PREFIX),
                dispatch_id=dispatch.id,
                type=job_type,
                room=room.info(),
                namespace=namespace,
                metadata=dispatch.metadata,
                agent_name=dispatch.agent_name,
                deployment=dispatch.deployment,
                attributes=dict(dispatch.attributes),
            )
            if participant is not None:
                job.participant.CopyFrom(participant.info())
            self.node.spawn(self._run_job(room, dispatch, job))

    async def _candidates(
        self, agent_name: str, job_type: agent.JobType, namespace: str | None = None
    ) -> list[WorkerRecord]:
        return [
            w
            for w in await self.registry.list_workers()
            if w.agent_name == agent_name
            and w.job_type == job_type
            and (namespace is None or w.namespace == namespace)
        ]

    async def _run_job(self, room: Room, dispatch: ad_pb.AgentDispatch, job: agent.Job) -> None:
        attempted: set[str] = set()
        while not room.closed:
            workers = [
                w
                for w in await self._candidates(job.agent_name, job.type, job.namespace)
                if w.worker_id not in attempted and w.status == agent.WorkerStatus.WS_AVAILABLE
            ]
            worker = _pick(workers)
            if worker is None:
                self.log.info(
                    "no agent worker available", room=room.name, job=job.id, agent=job.agent_name
                )
                return
            attempted.add(worker.worker_id)
            if not await self._edge_alive(worker.edge_id):
                continue  # its edge died; its record has not expired yet
            try:
                data = await self.rpc.call_channel(
                    keys.agent_channel(worker.edge_id),
                    ASSIGN_JOB,
                    job.SerializeToString(),
                    timeout=AVAILABILITY_TIMEOUT_SECONDS + 5,
                    headers={"worker_id": worker.worker_id, "node_id": self.node.node_id},
                )
            except Refusal as exc:
                self.log.info(
                    "agent worker did not take the job; trying another",
                    room=room.name,
                    job=job.id,
                    worker=worker.worker_id,
                    error=exc.reason,
                )
                continue
            job.state.CopyFrom(agent.JobState.FromString(data))
            state = self.rooms.get(room.name)
            if state is None or room.closed:  # the room closed meanwhile
                await self._send_termination(worker.edge_id, worker.worker_id, job.id)
                return
            if dispatch.id not in state.dispatches:  # deleted meanwhile
                await self._send_termination(worker.edge_id, worker.worker_id, job.id)
                return
            dispatch.state.jobs.append(job)
            if job.state.status not in ENDED:
                state.jobs[job.id] = dispatch.state.jobs[-1]
                state.workers[job.id] = worker
                if job.state.participant_identity:
                    state.by_identity[job.state.participant_identity] = job.id
            self.log.info(
                "agent job assigned",
                room=room.name,
                job=job.id,
                type=agent.JobType.Name(job.type),
                worker=worker.worker_id,
                identity=job.state.participant_identity,
            )
            return

    async def _edge_alive(self, edge_id: str) -> bool:
        try:
            return await self.node.store.edge_alive(edge_id)
        except Exception:
            return True  # let the call itself find out

    # -- ending -----------------------------------------------------------------------------

    async def _terminate(
        self, state: _RoomAgents, job_id: str, status: agent.JobStatus, error: str
    ) -> None:
        job = state.jobs.pop(job_id, None)
        worker = state.workers.pop(job_id, None)
        if job is None:
            return
        state.by_identity.pop(job.state.participant_identity, None)
        now = time.time_ns()
        job.state.status = status
        job.state.error = error
        job.state.updated_at = now
        job.state.ended_at = now
        rec = None
        try:
            rec = await self.registry.get_job(job_id)  # where the worker is now (migrations)
            await self.registry.delete_job(job_id)
        except Exception as exc:
            self.log.debug("cannot read job record", job=job_id, error=str(exc))
        if rec is not None:
            await self._send_termination(rec.edge_id, rec.worker_id, job_id)
        elif worker is not None:
            await self._send_termination(worker.edge_id, worker.worker_id, job_id)

    async def _send_termination(self, edge_id: str, worker_id: str, job_id: str) -> None:
        try:
            await self.rpc.call_channel(
                keys.agent_channel(edge_id),
                TERMINATE_JOB,
                agent.JobTermination(job_id=job_id).SerializeToString(),
                headers={"worker_id": worker_id},
            )
        except Refusal as exc:
            self.log.info("cannot send job termination", job=job_id, error=exc.reason)

    # -- API --------------------------------------------------------------------------------

    def add_dispatch(self, room: Room, dispatch: ad_pb.AgentDispatch) -> ad_pb.AgentDispatch:
        state = self.rooms.setdefault(room.name, _RoomAgents())
        dispatch.state.created_at = time.time_ns()
        state.dispatches[dispatch.id] = dispatch
        self._launch(room, dispatch, agent.JobType.JT_ROOM, None)
        for p in list(room.participants.values()):
            if _dependent(p):
                continue
            if p.identity in state.published:
                self._launch(room, dispatch, agent.JobType.JT_PUBLISHER, p)
            self._launch(room, dispatch, agent.JobType.JT_PARTICIPANT, p)
        return dispatch

    async def delete_dispatch(self, room: Room, dispatch_id: str) -> ad_pb.AgentDispatch:
        state = self.rooms.get(room.name)
        dispatch = None if state is None else state.dispatches.pop(dispatch_id, None)
        if state is None or dispatch is None:
            raise Refusal(Code.NOT_FOUND, "dispatch ID not found")
        dispatch.state.deleted_at = time.time_ns()
        for job in list(dispatch.state.jobs):
            if job.id in state.jobs:
                await self._terminate(state, job.id, agent.JobStatus.JS_SUCCESS, "")
        return dispatch

    def list_dispatches(self, room: Room, dispatch_id: str) -> list[ad_pb.AgentDispatch]:
        state = self.rooms.get(room.name)
        if state is None:
            return []
        return [d for d in state.dispatches.values() if not dispatch_id or d.id == dispatch_id]

    def job_update(self, update: agent.UpdateJobStatus) -> None:
        for state in self.rooms.values():
            job = state.jobs.get(update.job_id)
            if job is None:
                continue
            now = time.time_ns()
            if (
                job.state.status == agent.JobStatus.JS_PENDING
                and update.status != agent.JobStatus.JS_PENDING
            ):
                job.state.started_at = now
            job.state.status = update.status
            job.state.error = update.error
            job.state.updated_at = now
            if update.status in ENDED:
                job.state.ended_at = now
                state.jobs.pop(update.job_id, None)
                state.workers.pop(update.job_id, None)
                state.by_identity.pop(job.state.participant_identity, None)
                self.node.spawn(self.registry.delete_job(update.job_id))
            return


def _dependent(participant: Participant) -> bool:
    """Agents (and egress) do not trigger jobs (LiveKit's ``IsDependent``)."""
    return participant.info().kind in (
        models.ParticipantInfo.AGENT,
        models.ParticipantInfo.EGRESS,
    )


def _pick(workers: list[WorkerRecord]) -> WorkerRecord | None:
    """LiveKit's ``selectWorkerWeightedByLoad``: random, weighted by ``1 - load``."""
    weights = [max(0.0, 1.0 - w.load) for w in workers]
    total = sum(weights)
    if total <= 0:
        return None
    return random.choices(workers, weights)[0]


def dispatcher_for(node: SfuNode) -> AgentDispatcher:
    found = getattr(node, "_agent_dispatcher", None)
    if not isinstance(found, AgentDispatcher):
        found = AgentDispatcher(node)
        setattr(node, "_agent_dispatcher", found)  # noqa: B010 (SfuNode is not ours to extend)
    return found


# -- the node's room API: AgentDispatchService and the workers' job updates ----------------


def _room_of(node: SfuNode, name: str) -> Room:
    room = node.rooms.get(name)
    if room is None or room.closed:
        raise Refusal(Code.NOT_FOUND, f"requested room does not exist: {name}")
    return room


@roomapi.method("CreateDispatch", ad_pb.AgentDispatch)
async def _create_dispatch(node: SfuNode, req: ad_pb.AgentDispatch) -> Message:
    async with node.room_lock(req.room):
        room = await node.ensure_room(req.room, create=True)
    assert room is not None
    return dispatcher_for(node).add_dispatch(room, req)


@roomapi.method("DeleteDispatch", ad_pb.DeleteAgentDispatchRequest)
async def _delete_dispatch(node: SfuNode, req: ad_pb.DeleteAgentDispatchRequest) -> Message:
    return await dispatcher_for(node).delete_dispatch(_room_of(node, req.room), req.dispatch_id)


@roomapi.method("ListDispatch", ad_pb.ListAgentDispatchRequest)
async def _list_dispatch(node: SfuNode, req: ad_pb.ListAgentDispatchRequest) -> Message:
    room = node.rooms.get(req.room)
    if room is None or room.closed:
        return ad_pb.ListAgentDispatchResponse()
    found = dispatcher_for(node).list_dispatches(room, req.dispatch_id)
    return ad_pb.ListAgentDispatchResponse(agent_dispatches=found)


@roomapi.method(JOB_UPDATE, agent.UpdateJobStatus)
async def _job_update(node: SfuNode, req: agent.UpdateJobStatus) -> Message:
    dispatcher_for(node).job_update(req)
    return agent.UpdateJobStatus()
