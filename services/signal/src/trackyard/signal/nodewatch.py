"""Watch the nodes hosting this edge's sessions; when one is gone, send its clients away.

A node killed without draining stops refreshing its record, which expires. The clients of
that node get ``leave{action: RECONNECT}``: the SDK rejoins, and the router places the room
anew on a live node (the placement of a dead node is replaced, with a higher epoch).

A record must stay missing for ``grace`` seconds before its node counts as gone: a Redis that
restarted empty holds no records until each node's next report, and its clients must not be
sent away for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from trackyard.core.store import Store

log = structlog.get_logger(__name__)

Evict = Callable[[str], Awaitable[None]]  # called with the reason


class NodeWatch:
    def __init__(self, store: Store, interval: float = 1.0, grace: float = 0.0) -> None:
        self._store = store
        self._interval = interval
        self._grace = grace
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

    @property
    def session_count(self) -> int:
        return sum(len(s) for s in self._sessions.values())

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="node-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def check_once(self) -> None:
        for node_id in list(self._sessions):
            try:
                alive = await self._store.get_node(node_id) is not None
            except Exception as exc:  # store down: no verdict, try next round
                log.debug("cannot check node", node=node_id, error=str(exc))
                self._missing_since.clear()  # records may come back late: start over
                return
            if alive:
                self._missing_since.pop(node_id, None)
                continue
            now = time.monotonic()
            if now - self._missing_since.setdefault(node_id, now) < self._grace:
                continue  # maybe the store lost it (restarted): wait for the node's next report
            self._missing_since.pop(node_id, None)
            sessions = dict(self._sessions.get(node_id, {}))
            log.warning(
                "hosting node is gone; sending clients to reconnect",
                node=node_id,
                sessions=len(sessions),
            )
            for evict in sessions.values():
                with contextlib.suppress(Exception):
                    await evict(f"host node {node_id} is gone")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check_once()
