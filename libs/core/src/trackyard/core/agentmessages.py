"""Agent workers across the cluster: the worker registry, job records, and the bus calls
between the SFU node that dispatches a job and the signal edge holding the worker's socket.

The registry lives in the store (Redis hashes named in :mod:`trackyard.core.keys`, or a
dictionary per in-memory store), so a room on any node sees every worker registered on any
edge. Records carry their own expiry: an edge rewrites its workers every
:data:`WORKER_REFRESH_SECONDS`, and a record older than :data:`WORKER_TTL_SECONDS` (its edge
died) is ignored and pruned by readers.

Calls node -> edge ride the bus as ``RPC`` envelopes on :func:`keys.agent_channel` (answered
with :func:`trackyard.core.noderpc.reply`); calls edge -> node use the node's room API
(:class:`trackyard.core.noderpc.NodeRpcClient`) with the method names below.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import Mapping
from typing import Any, Protocol

import jwt
import structlog
from livekit.protocol import models
from pydantic import BaseModel

from trackyard.core import keys
from trackyard.core.errors import StoreUnavailableError

log = structlog.get_logger(__name__)

WORKER_REFRESH_SECONDS = 2.0
WORKER_TTL_SECONDS = 6.0
AVAILABILITY_TIMEOUT_SECONDS = 10.0  # LiveKit's AssignJobTimeout
REGISTER_TIMEOUT_SECONDS = 10.0  # LiveKit's RegisterTimeout
AGENT_NAME_ATTRIBUTE = "lk.agent_name"  # LiveKit's AgentNameAttributeKey

# node -> edge (on keys.agent_channel(edge_id))
ASSIGN_JOB = "AgentAssignJob"  # data: agent.Job (headers worker_id); reply: agent.JobState
TERMINATE_JOB = "AgentTerminateJob"  # data: agent.JobTermination (headers worker_id); reply: b""
# edge -> node (the node's room API)
JOB_UPDATE = "AgentJobUpdate"  # data: agent.UpdateJobStatus; reply: b""

# prefixes LiveKit uses for these ids
WORKER_PREFIX = "AW_"
JOB_PREFIX = "AJ_"
DISPATCH_PREFIX = "AD_"


class WorkerRecord(BaseModel):
    """One registered worker, as every node sees it."""

    worker_id: str
    edge_id: str
    agent_name: str = ""
    namespace: str = ""
    job_type: int = 0  # agent.JobType
    status: int = 0  # agent.WorkerStatus (WS_AVAILABLE = 0)
    load: float = 0.0
    version: str = ""
    updated_at: float = 0.0  # unix seconds of the edge's last refresh

    def fresh(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) - self.updated_at < WORKER_TTL_SECONDS


class JobRecord(BaseModel):
    """Where a running job's messages go: its room's node and its worker's edge."""

    job_id: str
    room: str
    node_id: str
    worker_id: str
    edge_id: str
    participant_identity: str = ""


class AgentRegistry(Protocol):
    async def put_worker(self, record: WorkerRecord) -> None: ...
    async def delete_worker(self, worker_id: str) -> None: ...
    async def list_workers(self) -> list[WorkerRecord]:
        """Fresh records only (stale ones are pruned)."""
        ...

    async def put_job(self, record: JobRecord) -> None: ...
    async def get_job(self, job_id: str) -> JobRecord | None: ...
    async def delete_job(self, job_id: str) -> None: ...


class MemoryAgentRegistry:
    def __init__(self) -> None:
        self._workers: dict[str, WorkerRecord] = {}
        self._jobs: dict[str, JobRecord] = {}

    async def put_worker(self, record: WorkerRecord) -> None:
        self._workers[record.worker_id] = record.model_copy()

    async def delete_worker(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    async def list_workers(self) -> list[WorkerRecord]:
        now = time.time()
        for wid in [w for w, r in self._workers.items() if not r.fresh(now)]:
            del self._workers[wid]
        return [r.model_copy() for _, r in sorted(self._workers.items())]

    async def put_job(self, record: JobRecord) -> None:
        self._jobs[record.job_id] = record.model_copy()

    async def get_job(self, job_id: str) -> JobRecord | None:
        rec = self._jobs.get(job_id)
        return None if rec is None else rec.model_copy()

    async def delete_job(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)


class RedisAgentRegistry:
    """Two hashes (:data:`keys.AGENT_WORKERS`, :data:`keys.AGENT_JOBS`) on the store's Redis."""

    def __init__(self, client: Any) -> None:
        self._r = client

    async def _do(self, coro: Any) -> Any:
        try:
            return await asyncio.wait_for(coro, 2.0)
        except Exception as exc:
            raise StoreUnavailableError(f"agent registry: {exc}") from exc

    async def put_worker(self, record: WorkerRecord) -> None:
        await self._do(self._r.hset(keys.AGENT_WORKERS, record.worker_id, record.model_dump_json()))

    async def delete_worker(self, worker_id: str) -> None:
        await self._do(self._r.hdel(keys.AGENT_WORKERS, worker_id))

    async def list_workers(self) -> list[WorkerRecord]:
        raw: dict[Any, Any] = await self._do(self._r.hgetall(keys.AGENT_WORKERS))
        now = time.time()
        out: list[WorkerRecord] = []
        stale: list[Any] = []
        for wid, value in sorted(raw.items()):
            rec = WorkerRecord.model_validate_json(value)
            if rec.fresh(now):
                out.append(rec)
            elif now - rec.updated_at > 2 * WORKER_TTL_SECONDS:
                stale.append(wid)
        if stale:
            await self._do(self._r.hdel(keys.AGENT_WORKERS, *stale))
        return out

    async def put_job(self, record: JobRecord) -> None:
        await self._do(self._r.hset(keys.AGENT_JOBS, record.job_id, record.model_dump_json()))

    async def get_job(self, job_id: str) -> JobRecord | None:
        value = await self._do(self._r.hget(keys.AGENT_JOBS, job_id))
        return None if value is None else JobRecord.model_validate_json(value)

    async def delete_job(self, job_id: str) -> None:
        await self._do(self._r.hdel(keys.AGENT_JOBS, job_id))


_REGISTRIES: weakref.WeakKeyDictionary[Any, AgentRegistry] = weakref.WeakKeyDictionary()


def registry_for(store: Any) -> AgentRegistry:
    """The registry beside ``store``: its Redis when it has one, else one shared dictionary per
    in-memory store (so an edge and a node of ``trackyard dev`` see the same workers)."""
    reg = _REGISTRIES.get(store)
    if reg is None:
        client = getattr(store, "_r", None)
        reg = RedisAgentRegistry(client) if client is not None else MemoryAgentRegistry()
        _REGISTRIES[store] = reg
    return reg


def agent_token(
    api_key: str,
    secret: str,
    *,
    room: str,
    identity: str,
    name: str,
    metadata: str,
    attributes: Mapping[str, str],
    permission: models.ParticipantPermission,
    ttl_seconds: int = 6 * 3600,
) -> str:
    """The job participant's token, as LiveKit's ``BuildAgentToken``: kind ``agent``, the
    worker's allowed permissions, the agent grant."""
    now = int(time.time())
    video: dict[str, Any] = {
        "roomJoin": True,
        "room": room,
        "agent": True,
        "canPublish": permission.can_publish,
        "canSubscribe": permission.can_subscribe,
        "canPublishData": permission.can_publish_data,
        "canUpdateOwnMetadata": permission.can_update_metadata,
        "hidden": permission.hidden,
    }
    payload: dict[str, Any] = {
        "iss": api_key,
        "sub": identity,
        "jti": identity,
        "nbf": now,
        "exp": now + ttl_seconds,
        "kind": "agent",
        "video": video,
    }
    if name:
        payload["name"] = name
    if metadata:
        payload["metadata"] = metadata
    if attributes:
        payload["attributes"] = dict(attributes)
    return jwt.encode(payload, secret, algorithm="HS256")


def room_config_from_token(token: str) -> str:
    """The ``roomConfig`` claim of an (already verified) token, as JSON text, or ``""``."""
    try:
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return ""
    config = payload.get("roomConfig")
    return json.dumps(config) if isinstance(config, dict) else ""
