"""What a signal edge holds: config, keys, store, bus, router, a node RPC client, and the
client sockets it carries (which its drain sends elsewhere)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from trackyard.core import ids
from trackyard.core.auth import KeyProvider
from trackyard.core.bus import Bus
from trackyard.core.config import Config
from trackyard.core.noderpc import NodeRpcClient
from trackyard.core.refusal import Code, Refusal
from trackyard.core.routing import Router
from trackyard.core.store import Store
from trackyard.signal.nodewatch import NodeWatch

log = structlog.get_logger(__name__)


class ClientSocket(Protocol):
    """An open client signal socket, as the edge's drain sees it."""

    async def send_elsewhere(self) -> None:
        """Have the client resume through another edge, keeping its session on the node."""


@dataclass
class Edge:
    config: Config
    store: Store
    bus: Bus
    router: Router
    edge_id: str = field(default_factory=lambda: ids.new_id("ED_"))
    draining: bool = False  # not ready (``/readyz`` 503); set by :meth:`drain` and by dev mode

    def __post_init__(self) -> None:
        self.keys = KeyProvider(self.config.keys)
        self.rpc = NodeRpcClient(self.bus, self.edge_id)
        node = self.config.node
        # A node re-reports within a heartbeat of a Redis restart; allow dead_after.
        self.nodewatch = NodeWatch(
            self.store,
            interval=node.heartbeat_interval / 2,
            grace=node.dead_after,
            dead_after=node.dead_after,
        )
        self._heartbeat: asyncio.Task[None] | None = None
        # This edge's own drain: no new sockets, and the open ones are sent elsewhere.
        # (An all-in-one server draining its node only sets ``draining``: its edge keeps
        # taking the sockets of the rooms the node still hosts.)
        self.leaving = False
        # session id -> its open socket; None for one the drain waits for but does not send
        # away itself: an upgrade still waiting for its node, an agent worker (the hub sends
        # those away one at a time)
        self._sockets: dict[str, ClientSocket | None] = {}
        self._no_sockets = asyncio.Event()
        self._no_sockets.set()
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Register this edge (a record with a TTL, rewritten every heartbeat) and watch the
        nodes: a node that finds the record expired removes this edge's participants."""
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._register(), name="edge-heartbeat")
        self.nodewatch.start()

    async def stop(self) -> None:
        await self.nodewatch.stop()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat

    @property
    def ttl(self) -> float:
        node = self.config.node
        return max(3 * node.heartbeat_interval, node.dead_after)

    async def _register(self) -> None:
        while True:
            try:
                await self.store.put_edge(self.edge_id, self.ttl)
            except Exception as exc:
                log.debug("cannot register edge", edge=self.edge_id, error=str(exc))
            await asyncio.sleep(self.config.node.heartbeat_interval)

    # -- client sockets and the drain ------------------------------------------------------

    def check_open(self) -> None:
        """Refuse (503) while the edge drains, so that a load balancer (which retries a 503
        elsewhere, or has seen ``/readyz`` fail) takes the client elsewhere."""
        if self.leaving:
            raise Refusal(Code.UNAVAILABLE, "signal edge is draining; connect again")

    def admit(self, session_id: str) -> None:
        """A client opens ``/rtc`` (see :meth:`check_open`)."""
        self.check_open()
        self._sockets[session_id] = None
        self._no_sockets.clear()

    def attach(self, session_id: str, socket: ClientSocket) -> None:
        """The session's socket is open. One whose upgrade raced the drain is sent on at once."""
        self._sockets[session_id] = socket
        if self.leaving:
            self._spawn(socket.send_elsewhere())

    def release(self, session_id: str) -> None:
        """The session's socket is gone (or its upgrade was refused)."""
        self._sockets.pop(session_id, None)
        if not self._sockets:
            self._no_sockets.set()

    @property
    def sockets(self) -> int:
        return len(self._sockets)

    async def drain(self, deadline: float) -> bool:
        """Take no new sockets, send every client to resume through another edge, and return
        when their sockets are gone (True) or at ``deadline`` seconds (False: what is left, a
        close handshake or an upgrade still waiting for its node, ends with the process).
        Sessions stay on their nodes: the resume finds them."""
        self.draining = True
        self.leaving = True
        open_sockets = [s for s in self._sockets.values() if s is not None]
        log.info(
            "draining: sending clients elsewhere", edge=self.edge_id, sockets=len(open_sockets)
        )
        for socket in open_sockets:
            self._spawn(socket.send_elsewhere())
        try:
            await asyncio.wait_for(self._no_sockets.wait(), deadline)
        except TimeoutError:
            log.warning("drain deadline passed", edge=self.edge_id, sockets=len(self._sockets))
            return False
        log.info("drained: no client socket left", edge=self.edge_id)
        return True

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def ready(self) -> tuple[bool, str]:
        """Can this edge serve now? (``/readyz``)"""
        if self.draining:
            return False, "draining"
        if not await self.store.ping():
            return False, "store unreachable"
        if not await self.bus.ping():
            return False, "bus unreachable"
        return True, "ok"
