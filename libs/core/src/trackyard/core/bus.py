"""The message bus between signal edges and SFU nodes.

A bus carries ordered streams of :class:`Envelope` on named channels. One consumer reads a
channel (an SFU node reads its inbound channel; an edge reads one channel per session). The
in-memory bus serves one process; the Redis bus (streams) serves a cluster. Both keep each
channel bounded: a slow consumer loses the oldest messages rather than growing memory
without limit, and waits are bounded by the caller's timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from trackyard.core.errors import BusUnavailableError


@dataclass(slots=True)
class Envelope:
    """One bus message. ``kind`` says what ``data`` holds (see :mod:`trackyard.core.messages`)."""

    kind: str
    session: str = ""
    data: bytes = b""
    reply_to: str = ""  # channel for a reply, for request/response kinds
    headers: dict[str, str] = field(default_factory=dict)


class Subscription(Protocol):
    """An open read position on one channel."""

    def __aiter__(self) -> AsyncIterator[Envelope]: ...

    async def get(self, timeout: float | None = None) -> Envelope | None:
        """Next message, or None when ``timeout`` passes first."""
        ...

    async def close(self) -> None: ...


class Bus(Protocol):
    async def publish(self, channel: str, envelope: Envelope) -> None: ...

    def subscribe(self, channel: str) -> Subscription:
        """Open a read position on ``channel``.

        Everything published after this returns is delivered, in order. Whether earlier
        messages are delivered is up to the implementation (Redis reads a fresh channel from
        its start), so channels are named uniquely per consumer (node id, session id).
        """
        ...

    async def delete(self, channel: str) -> None:
        """Drop a channel and anything still queued on it."""
        ...

    async def ping(self) -> bool:
        """True when the bus can carry messages right now."""
        ...

    async def close(self) -> None: ...


class BusClosedError(Exception):
    """The subscription or bus was closed while waiting."""


async def iterate(sub: Subscription) -> AsyncIterator[Envelope]:
    """Every message until the subscription is closed (the ``async for`` of subscriptions)."""
    while True:
        try:
            item = await sub.get()
        except BusClosedError:
            return
        if item is not None:
            yield item


async def publish_patiently(bus: Bus, channel: str, envelope: Envelope, *, within: float) -> bool:
    """Publish, riding out a bus outage of up to ``within`` seconds (backing off).

    The caller waits, so a stream of messages keeps its order. False when the outage lasted
    longer (the message is dropped; the caller decides what that means).
    """
    deadline = time.monotonic() + within
    delay = 0.05
    while True:
        try:
            await bus.publish(channel, envelope)
            return True
        except BusUnavailableError:
            if time.monotonic() + delay > deadline:
                return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


# ---------------------------------------------------------------------------------------
# In-memory implementation (one process)


class _MemorySubscription:
    def __init__(self, bus: MemoryBus, channel: str, maxlen: int) -> None:
        self._bus = bus
        self.channel = channel
        self._queue: asyncio.Queue[Envelope | None] = asyncio.Queue()
        self._maxlen = maxlen
        self._closed = False

    def _push(self, envelope: Envelope) -> None:
        if self._queue.qsize() >= self._maxlen:
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()  # bounded: drop the oldest
        self._queue.put_nowait(envelope)

    async def get(self, timeout: float | None = None) -> Envelope | None:
        if self._closed:
            raise BusClosedError(self.channel)
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        if item is None:
            raise BusClosedError(self.channel)
        return item

    def __aiter__(self) -> AsyncIterator[Envelope]:
        return iterate(self)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._bus._unsubscribe(self)
            self._queue.put_nowait(None)


class MemoryBus:
    """Channels as in-process queues. Messages published before a subscribe are dropped."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self._subs: dict[str, list[_MemorySubscription]] = {}
        self._maxlen = maxlen

    async def publish(self, channel: str, envelope: Envelope) -> None:
        for sub in self._subs.get(channel, ()):
            sub._push(envelope)

    def subscribe(self, channel: str) -> Subscription:
        sub = _MemorySubscription(self, channel, self._maxlen)
        self._subs.setdefault(channel, []).append(sub)
        return sub

    def _unsubscribe(self, sub: _MemorySubscription) -> None:
        subs = self._subs.get(sub.channel)
        if subs and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._subs[sub.channel]

    async def delete(self, channel: str) -> None:
        for sub in list(self._subs.get(channel, ())):
            await sub.close()

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        for channel in list(self._subs):
            await self.delete(channel)
