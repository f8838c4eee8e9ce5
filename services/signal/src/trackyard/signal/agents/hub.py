"""``/agent``: LiveKit's agent worker WebSocket, on every signal edge.

A worker (``livekit-agents``) connects with a token carrying the ``agent`` grant, registers
(``RegisterWorkerRequest`` -> ``RegisterWorkerResponse{worker_id, server_info}``), then
reports load and status (``UpdateWorkerStatus``), pings, answers job offers
(``AvailabilityRequest`` -> ``AvailabilityResponse``), receives ``JobAssignment`` with a token
for the job's participant, reports ``UpdateJobStatus`` and is sent ``JobTermination``.

Each edge's :class:`AgentHub` writes its workers into the cluster registry
(:mod:`trackyard.core.agentmessages`) and serves the job offers that SFU nodes send on its
agent channel; the node decides which worker gets a job, the hub runs the handshake with it.
A draining edge closes its workers' sockets one by one, so they re-register elsewhere
(LiveKit's DrainConnections); their running jobs go on (the job's media session is with the
room's node).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import structlog
from google.protobuf.message import DecodeError
from livekit.protocol import agent, models
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from trackyard.core import ids, keys
from trackyard.core.agentmessages import (
    AGENT_NAME_ATTRIBUTE,
    ASSIGN_JOB,
    AVAILABILITY_TIMEOUT_SECONDS,
    JOB_UPDATE,
    REGISTER_TIMEOUT_SECONDS,
    TERMINATE_JOB,
    WORKER_PREFIX,
    WORKER_REFRESH_SECONDS,
    AgentRegistry,
    JobRecord,
    WorkerRecord,
    agent_token,
    registry_for,
)
from trackyard.core.auth import verify_token
from trackyard.core.bus import Envelope, Subscription
from trackyard.core.noderpc import reply
from trackyard.core.refusal import CloseReason, Code, Refusal
from trackyard.signal.edge import Edge

log = structlog.get_logger(__name__)

SERVER_VERSION = "1.9.0"
AGENT_PROTOCOL = 1  # LiveKit's agent.CurrentProtocol
DRAIN_INTERVAL_SECONDS = 0.5


class WorkerGone(Exception):
    pass


@dataclass
class Worker:
    """One registered worker socket."""

    ws: WebSocket
    record: WorkerRecord
    api_key: str
    secret: str
    permission: models.ParticipantPermission
    availability: dict[str, asyncio.Future[agent.AvailabilityResponse]] = field(
        default_factory=dict
    )
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, msg: agent.ServerMessage) -> None:
        if self.closed.is_set():
            raise WorkerGone(self.record.worker_id)
        try:
            async with self.send_lock:
                await self.ws.send_bytes(msg.SerializeToString())
        except Exception as exc:
            raise WorkerGone(self.record.worker_id) from exc


class AgentHub:
    """The workers connected to one edge."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.registry: AgentRegistry = registry_for(edge.store)
        self.workers: dict[str, Worker] = {}
        self.jobs: dict[str, JobRecord] = {}  # running jobs of our workers
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self.log = log.bind(edge=edge.edge_id)

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._sub = self.edge.bus.subscribe(keys.agent_channel(self.edge.edge_id))
        self._spawn(self._serve(self._sub))
        self._spawn(self._refresh())

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- registry ---------------------------------------------------------------------------

    async def _refresh(self) -> None:
        """Keep our workers' records fresh; when the edge drains, send workers away."""
        while True:
            for worker in list(self.workers.values()):
                await self._publish(worker)
            if self.edge.draining and self.workers:
                worker = next(iter(self.workers.values()))
                self.log.info("draining: closing worker", worker=worker.record.worker_id)
                with contextlib.suppress(Exception):
                    await worker.ws.close(CloseReason.GOING_AWAY, "server draining")
                await self._unregister(worker)
                await asyncio.sleep(DRAIN_INTERVAL_SECONDS)
                continue
            await asyncio.sleep(WORKER_REFRESH_SECONDS)

    async def _publish(self, worker: Worker) -> None:
        worker.record.updated_at = time.time()
        try:
            await self.registry.put_worker(worker.record)
        except Exception as exc:
            self.log.warning("cannot write worker record", error=str(exc))

    async def _unregister(self, worker: Worker) -> None:
        if self.workers.get(worker.record.worker_id) is worker:
            del self.workers[worker.record.worker_id]
        worker.closed.set()
        for fut in worker.availability.values():
            if not fut.done():
                fut.set_exception(WorkerGone(worker.record.worker_id))
        with contextlib.suppress(Exception):
            await self.registry.delete_worker(worker.record.worker_id)

    # -- the socket -------------------------------------------------------------------------

    async def serve_socket(self, ws: WebSocket) -> None:
        header = ws.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        token = token or ws.query_params.get("access_token", "")
        try:
            claims = verify_token(token, self.edge.keys)
            if not claims.video.agent:
                raise Refusal(
                    Code.UNAUTHENTICATED, "permissions denied: token lacks the agent grant"
                )
            if self.edge.draining:
                raise Refusal(Code.UNAVAILABLE, "server is draining")
        except Refusal as exc:
            await ws.send_denial_response(PlainTextResponse(exc.reason, status_code=exc.status))
            return
        # The edge's drain waits for this socket too; the hub sends it away at its own pace
        # (one worker every DRAIN_INTERVAL_SECONDS, in _refresh).
        hold = f"agent-worker-{id(ws)}"
        try:
            self.edge.admit(hold)
        except Refusal as exc:
            await ws.send_denial_response(PlainTextResponse(exc.reason, status_code=exc.status))
            return
        try:
            await self._serve_worker(ws, claims.api_key)
        finally:
            self.edge.release(hold)

    async def _serve_worker(self, ws: WebSocket, api_key: str) -> None:
        self.start()
        await ws.accept()
        try:
            worker = await self._handshake(ws, api_key)
        except WorkerGone:
            worker = None
        if worker is None:
            with contextlib.suppress(Exception):
                await ws.close(CloseReason.REFUSED, "no registration")
            return
        self.log.info(
            "worker registered",
            worker=worker.record.worker_id,
            agent_name=worker.record.agent_name,
            namespace=worker.record.namespace,
            job_type=agent.JobType.Name(worker.record.job_type),
        )
        try:
            while True:
                raw = await ws.receive_bytes()
                try:
                    msg = agent.WorkerMessage.FromString(raw)
                except DecodeError:
                    self.log.warning("undecodable worker message", worker=worker.record.worker_id)
                    break
                await self._on_message(worker, msg)
        except (WebSocketDisconnect, RuntimeError, KeyError):
            pass
        finally:
            await self._unregister(worker)
            self.log.info("worker gone", worker=worker.record.worker_id)

    async def _handshake(self, ws: WebSocket, api_key: str) -> Worker | None:
        deadline = time.monotonic() + REGISTER_TIMEOUT_SECONDS
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                raw = await asyncio.wait_for(ws.receive_bytes(), remaining)
                msg = agent.WorkerMessage.FromString(raw)
            except (TimeoutError, WebSocketDisconnect, RuntimeError, KeyError, DecodeError):
                return None
            which = msg.WhichOneof("message")
            if which == "ping":
                await ws.send_bytes(_pong(msg.ping).SerializeToString())
                continue
            if which != "register":
                continue  # LiveKit ignores all else until registration
            reg = msg.register
            if reg.type not in agent.JobType.values():
                return None
            permission = models.ParticipantPermission()
            if reg.HasField("allowed_permissions"):
                permission.CopyFrom(reg.allowed_permissions)
            else:
                permission = models.ParticipantPermission(
                    can_subscribe=True,
                    can_publish=True,
                    can_publish_data=True,
                    can_update_metadata=True,
                )
            secret = self.edge.keys.secret(api_key) or ""
            record = WorkerRecord(
                worker_id=ids.new_id(WORKER_PREFIX),
                edge_id=self.edge.edge_id,
                agent_name=reg.agent_name,
                namespace=reg.namespace,
                job_type=reg.type,
                version=reg.version,
            )
            worker = Worker(ws, record, api_key, secret, permission)
            # in the registry before the worker learns its id: visible cluster-wide at once
            self.workers[record.worker_id] = worker
            await self._publish(worker)
            try:
                await worker.send(
                    agent.ServerMessage(
                        register=agent.RegisterWorkerResponse(
                            worker_id=record.worker_id,
                            server_info=models.ServerInfo(
                                edition=models.ServerInfo.Standard,
                                version=SERVER_VERSION,
                                protocol=16,
                                agent_protocol=AGENT_PROTOCOL,
                                region=self.edge.config.region,
                                node_id=self.edge.edge_id,
                            ),
                        )
                    )
                )
            except WorkerGone:
                await self._unregister(worker)
                raise
            return worker

    async def _on_message(self, worker: Worker, msg: agent.WorkerMessage) -> None:
        which = msg.WhichOneof("message")
        if which == "ping":
            await worker.send(_pong(msg.ping))
        elif which == "update_worker":
            upd = msg.update_worker
            changed = False
            if upd.HasField("status") and upd.status != worker.record.status:
                worker.record.status = upd.status
                changed = True
            if upd.load != worker.record.load:
                worker.record.load = upd.load
                changed = True
            if changed:
                await self._publish(worker)
        elif which == "availability":
            fut = worker.availability.pop(msg.availability.job_id, None)
            if fut is not None and not fut.done():
                fut.set_result(msg.availability)
        elif which == "update_job":
            await self._forward_job_update(worker, msg.update_job)
        elif which == "migrate_job":
            # a worker that re-registered reports the jobs it still runs: they are ours now
            for job_id in msg.migrate_job.job_ids:
                rec = await self.registry.get_job(job_id)
                if rec is None:
                    continue
                rec.worker_id = worker.record.worker_id
                rec.edge_id = self.edge.edge_id
                self.jobs[job_id] = rec
                await self.registry.put_job(rec)
                self.log.info("job migrated", job=job_id, worker=worker.record.worker_id)
        elif which == "simulate_job":
            pass  # LiveKit's test helper; not offered
        else:
            self.log.debug("unhandled worker message", which=which)

    async def _forward_job_update(self, worker: Worker, update: agent.UpdateJobStatus) -> None:
        rec = self.jobs.get(update.job_id) or await self.registry.get_job(update.job_id)
        if rec is None:
            self.log.debug("job update for an unknown job", job=update.job_id)
            return
        if update.status in (agent.JobStatus.JS_SUCCESS, agent.JobStatus.JS_FAILED):
            self.jobs.pop(update.job_id, None)
        try:
            await self.edge.rpc.call(rec.node_id, JOB_UPDATE, update.SerializeToString())
        except Exception as exc:
            self.log.info("cannot forward job update", job=update.job_id, error=str(exc))

    # -- calls from nodes -------------------------------------------------------------------

    async def _serve(self, sub: Subscription) -> None:
        async for env in sub:
            self._spawn(self._call(env))

    async def _call(self, env: Envelope) -> None:
        method = env.headers.get("method", "")
        worker = self.workers.get(env.headers.get("worker_id", ""))
        try:
            if worker is None:
                raise Refusal(Code.UNAVAILABLE, "worker closed")
            if method == ASSIGN_JOB:
                state = await self._assign(worker, agent.Job.FromString(env.data), env)
                await reply(self.edge.bus, env, state.SerializeToString())
            elif method == TERMINATE_JOB:
                term = agent.JobTermination.FromString(env.data)
                self.jobs.pop(term.job_id, None)
                await worker.send(agent.ServerMessage(termination=term))
                await reply(self.edge.bus, env, b"")
            else:
                raise Refusal(Code.UNIMPLEMENTED, f"agent hub has no method {method}")
        except Refusal as exc:
            await reply(self.edge.bus, env, error=exc)
        except WorkerGone:
            await reply(self.edge.bus, env, error=Refusal(Code.UNAVAILABLE, "worker closed"))
        except Exception as exc:
            self.log.exception("agent call failed", method=method)
            await reply(self.edge.bus, env, error=Refusal(Code.INTERNAL, str(exc)))

    async def _assign(self, worker: Worker, job: agent.Job, env: Envelope) -> agent.JobState:
        """LiveKit's ``Worker.AssignJob``: offer, wait for the answer, assign with a token."""
        if job.id in worker.availability:
            raise Refusal(Code.ALREADY_EXISTS, "duplicate job assignment")
        now_ns = time.time_ns()
        job.state.worker_id = worker.record.worker_id
        job.state.updated_at = now_ns
        job.state.started_at = now_ns
        job.state.status = agent.JobStatus.JS_RUNNING
        fut: asyncio.Future[agent.AvailabilityResponse] = asyncio.get_running_loop().create_future()
        worker.availability[job.id] = fut
        try:
            await worker.send(agent.ServerMessage(availability=agent.AvailabilityRequest(job=job)))
            res = await asyncio.wait_for(fut, AVAILABILITY_TIMEOUT_SECONDS)
        except TimeoutError:
            raise Refusal(Code.UNAVAILABLE, "agent worker availability timeout") from None
        finally:
            worker.availability.pop(job.id, None)
        if res.terminate:
            job.state.ended_at = now_ns
            job.state.status = agent.JobStatus.JS_SUCCESS
            return job.state
        if not res.available:
            raise Refusal(Code.UNAVAILABLE, "worker not available")
        identity = res.participant_identity or f"agent-{job.id}"
        attributes = dict(res.participant_attributes)
        attributes[AGENT_NAME_ATTRIBUTE] = worker.record.agent_name
        token = agent_token(
            worker.api_key,
            worker.secret,
            room=job.room.name,
            identity=identity,
            name=res.participant_name,
            metadata=res.participant_metadata,
            attributes=attributes,
            permission=worker.permission,
        )
        job.state.participant_identity = identity
        rec = JobRecord(
            job_id=job.id,
            room=job.room.name,
            node_id=env.headers.get("node_id", ""),
            worker_id=worker.record.worker_id,
            edge_id=self.edge.edge_id,
            participant_identity=identity,
        )
        self.jobs[job.id] = rec
        await self.registry.put_job(rec)
        await worker.send(agent.ServerMessage(assignment=agent.JobAssignment(job=job, token=token)))
        return job.state


def _pong(ping: agent.WorkerPing) -> agent.ServerMessage:
    return agent.ServerMessage(
        pong=agent.WorkerPong(last_timestamp=ping.timestamp, timestamp=int(time.time() * 1000))
    )


def hub_for(edge: Edge) -> AgentHub:
    """The edge's hub, made on first use (an edge without workers never starts one)."""
    hub = getattr(edge, "_agent_hub", None)
    if not isinstance(hub, AgentHub):
        hub = AgentHub(edge)
        setattr(edge, "_agent_hub", hub)  # noqa: B010 (Edge is not ours to extend)
    return hub


async def agent_socket(ws: WebSocket) -> None:
    """``GET /agent`` (WebSocket)."""
    await hub_for(ws.app.state.edge).serve_socket(ws)
