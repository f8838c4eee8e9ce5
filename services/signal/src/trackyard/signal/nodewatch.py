"""Watch the nodes hosting this edge's sessions; when one is dead, send its clients away.

A node killed without draining stops its heartbeat. It is dead (:mod:`trackyard.core.liveness`)
once its heartbeat lags its peers' by ``dead_after``, or its record stayed missing for
``grace``. Its clients get ``leave{action: RECONNECT}``: the SDK rejoins, and the router,
judging by the same rule, places the room anew on a live node (higher epoch).

No verdict while the store is settling: a Redis that restarted empty (its generation changed)
or did not answer holds no records until each node's next heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from trackyard.core.liveness import StoreGeneration, stale_nodes
from trackyard.core.store import Store

log = structlog.get_logger(__name__)

Evict = Callable[[str], Awaitable[None]]  # called with the reason


class NodeWatch:
    def __init__(
        self,
        store: Store,
        interval: float = 1.0,
        grace: float = 0.0,
        dead_after: float = 2.0,
    ) -> None:
        self._store = store
        self._interval = interval
        self._grace = grace
        self._dead_after = dead_after
        self.generation = StoreGeneration(max(grace, dead_after))
        self._missing_since: dict[str, float] = {}  # node id -> when its record was missed
        self._sessions: dict[str, dict[str, Evict]] = {}  # node id -> session id -> evict
        self._task: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()  # set while no session is open here
        self.idle.set()

    def add(self, node_id: str, session_id: str, evict: Evict) -> None:
        self._sessions.setdefault(node_id, {})[session_id] = evict
        self.idle.clear()

    def discard(self, node_id: str, session_id: str) -> None:
        sessions = self._sessions.get(node_id)
        if sessions is not None:
            sessions.pop(session_id, None)
            if not sessions:
                del self._sessions[node_id]
                self._missing_since.pop(node_id, None)
        if not self._sessions:
            self.idle.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="node-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def check_once(self) -> None:
        if not self._sessions:
            return
        watched = list(self._sessions)
        try:
            await self.generation.observe(self._store)
            records = {n.id for n in await self._store.list_nodes()}
            ages = await self._store.node_heartbeats(sorted(records))
        except Exception as exc:  # store down: no verdict, try next round
            log.debug("cannot check nodes", error=str(exc))
            self.generation.unsettled()
            self._missing_since.clear()
            return
        if self.generation.settling():
            self._missing_since.clear()  # records may come back late: start over
            return
        stale = stale_nodes(ages, self._dead_after)
        now = time.monotonic()
        for node_id in watched:
            if node_id in records and node_id not in stale:
                self._missing_since.pop(node_id, None)
                continue
            if node_id in records:
                why = "missed heartbeats"
            else:
                if now - self._missing_since.setdefault(node_id, now) < self._grace:
                    continue  # maybe the store lost it (restarted): wait for its next heartbeat
                why = "record expired"
            self._missing_since.pop(node_id, None)
            sessions = dict(self._sessions.get(node_id, {}))
            log.warning(
                "hosting node is dead; sending clients to reconnect",
                node=node_id,
                why=why,
                sessions=len(sessions),
            )
            for evict in sessions.values():
                with contextlib.suppress(Exception):
                    await evict(f"host node {node_id} is dead ({why})")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check_once()
