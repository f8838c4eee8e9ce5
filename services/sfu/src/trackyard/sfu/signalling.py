"""A participant's signal channel to its edge: inbox, outbox, the replay buffer of a detached
session, and the dispatch of each request to its handler.

Requests are handled one at a time, in arrival order (one task per participant); responses
leave through one writer task so they reach the edge in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from livekit.protocol import models, rtc
from structlog.typing import FilteringBoundLogger

from trackyard.core import messages
from trackyard.core.bus import Envelope

OUTBOX_LIMIT = 2000  # signal responses queued for a slow edge before we give up on it
INBOX_LIMIT = 2000
REPLAY_LIMIT = 1000  # signal responses kept for a detached participant; more: it must rejoin
CLOSE_FLUSH = 2.0  # seconds the last responses (the leave, the close) get to go out

Handler = Callable[[Any], Awaitable[None]]  # one SignalRequest field's value
SignalSink = Callable[[Envelope], Awaitable[bool]]  # to the edge holding env.session; False: lost


class SignalChannel:
    def __init__(
        self,
        session_id: str,
        *,
        sink: SignalSink,
        handlers: Mapping[str, Handler],
        client_gone: Callable[[], None],
        overflow: Callable[[models.DisconnectReason, bool], None],
        log: FilteringBoundLogger,
    ) -> None:
        """``handlers``: SignalRequest field name -> its handler. ``client_gone``: the socket
        of this session closed without a leave. ``overflow(reason, notify)``: a queue filled
        up, the session must end."""
        self.session_id = session_id
        self._sink = sink
        self._handlers = handlers
        self._client_gone = client_gone
        self._overflow = overflow
        self.log = log
        self._inbox: asyncio.Queue[Envelope | None] = asyncio.Queue(INBOX_LIMIT)
        self._outbox: asyncio.Queue[Envelope | None] = asyncio.Queue(OUTBOX_LIMIT)
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.closed = False
        # detached: the socket went away without a leave; responses wait here for a resume
        self.detached = False
        self._replay: deque[Envelope] = deque()
        self.replay_overflowed = False

    def start(self) -> None:
        self._reader = asyncio.create_task(self._run_inbox(), name=f"inbox-{self.session_id}")
        self._writer = asyncio.create_task(self._run_outbox(), name=f"outbox-{self.session_id}")

    # -- in ---------------------------------------------------------------------------------

    def deliver(self, env: Envelope) -> None:
        """Queue one message from the edge."""
        try:
            self._inbox.put_nowait(env)
        except asyncio.QueueFull:
            self.log.warning("signal inbox full; closing session")
            self._overflow(models.DisconnectReason.STATE_MISMATCH, True)

    async def _run_inbox(self) -> None:
        while True:
            env = await self._inbox.get()
            if env is None:
                return
            if env.kind == messages.CLIENT_GONE:
                if env.session == self.session_id:  # not a socket a resume replaced
                    self._client_gone()
                continue
            try:
                request = rtc.SignalRequest.FromString(env.data)
            except Exception:
                self.log.warning("undecodable signal request", size=len(env.data))
                continue
            which = request.WhichOneof("message") or ""
            handler = self._handlers.get(which)
            if handler is None:
                self.log.debug("ignored signal request", message=which)
                continue
            try:
                await handler(getattr(request, which))
            except Exception:
                self.log.exception("signal request failed", message=which)

    # -- out --------------------------------------------------------------------------------

    def send(self, response: rtc.SignalResponse) -> None:
        if not self.closed:
            self.send_raw(
                Envelope(
                    kind=messages.SIGNAL, session=self.session_id, data=response.SerializeToString()
                )
            )

    def send_raw(self, env: Envelope) -> None:
        """Queue an already-encoded response (broadcasts encode once for everyone)."""
        if not self.closed:
            self._queue_out(env)

    def _queue_out(self, env: Envelope) -> None:
        if self.detached and env.kind == messages.SIGNAL:
            if len(self._replay) >= REPLAY_LIMIT:
                self.replay_overflowed = True
            else:
                self._replay.append(env)
            return
        try:
            self._outbox.put_nowait(env)
        except asyncio.QueueFull:
            self.log.warning("signal outbox full: edge is not reading; dropping session")
            self._overflow(models.DisconnectReason.SIGNAL_CLOSE, False)

    async def _run_outbox(self) -> None:
        while True:
            env = await self._outbox.get()
            if env is None:
                return
            if not await self._sink(env):
                self.log.warning("bus unavailable; signal response dropped", kind=env.kind)

    # -- resume -----------------------------------------------------------------------------

    def rebind(self, session_id: str, first: rtc.SignalResponse) -> str:
        """Attach to a new session: ``first``, then what was buffered while detached, in
        order. Returns the old session id."""
        old = self.session_id
        self.session_id = session_id
        self.detached = False
        replay = list(self._replay)
        self._replay.clear()
        self.send(first)
        for env in replay:
            self._queue_out(Envelope(kind=env.kind, session=session_id, data=env.data))
        self.log.info("session resumed", replayed=len(replay), session=session_id)
        return old

    # -- end --------------------------------------------------------------------------------

    async def close(self, reason: str) -> None:
        """Tell the edge the session is over (after what is queued); stop both tasks."""
        self.closed = True
        closed = messages.SessionClosed.ended(reason)
        self._queue_out(
            Envelope(
                kind=messages.CLOSE, session=self.session_id, data=closed.model_dump_json().encode()
            )
        )
        for queue in (self._outbox, self._inbox):  # sentinels end the two tasks
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        if self._writer is not None:  # let queued responses (the leave, the close) go out
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._writer), CLOSE_FLUSH)
        for task in (self._reader, self._writer):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
