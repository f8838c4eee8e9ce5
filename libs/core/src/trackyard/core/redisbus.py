"""The cluster bus on Redis streams, with the semantics of :class:`MemoryBus`.

One stream per channel. Publishing appends with ``XADD ... MAXLEN ~ maxlen`` (a slow or absent
reader loses the oldest messages, memory stays bounded) through a small Lua script that also
gives a stream a TTL when it is created and now and then afterwards, so channels of sessions
that ended without a ``delete`` disappear by themselves. A subscription reads its stream from
the start (channels are unique per consumer incarnation) and keeps its position across Redis
outages. All of a bus's subscriptions are served by ONE reader task and one connection: it
runs ``XREAD BLOCK`` over every open channel plus a private per-bus wakeup stream, which
:meth:`RedisBus.subscribe` appends to so a new channel joins the read at once instead of
after the current block.

Envelope fields map to stream fields: ``kind``, ``session``, ``data``, ``reply_to`` (empty
ones omitted) and one ``h:<name>`` field per header.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from trackyard.core import keys
from trackyard.core.bus import BusClosedError, Envelope, Subscription, iterate
from trackyard.core.errors import BusUnavailableError

log = structlog.get_logger(__name__)

_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)

# KEYS: stream. ARGV: maxlen, ttl seconds, force TTL refresh ("1"/"0"), field, value, ...
# EXISTS before XADD tells whether this publish creates the stream: a new stream always gets
# its TTL, even if another process deleted the channel a moment ago.
_PUBLISH = """
local created = redis.call('EXISTS', KEYS[1]) == 0
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 4))
if created or ARGV[3] == '1' then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return id
"""

_F_KIND = b"kind"
_F_SESSION = b"session"
_F_DATA = b"data"
_F_REPLY_TO = b"reply_to"
_HEADER_PREFIX = b"h:"

_CLOSED: Any = object()  # queue marker: the subscription was closed


def encode_envelope(envelope: Envelope) -> list[bytes | str]:
    """Flat field/value list for XADD (empty optional fields left out)."""
    fields: list[bytes | str] = [_F_KIND, envelope.kind]
    if envelope.session:
        fields += [_F_SESSION, envelope.session]
    if envelope.data:
        fields += [_F_DATA, envelope.data]
    if envelope.reply_to:
        fields += [_F_REPLY_TO, envelope.reply_to]
    for name, value in envelope.headers.items():
        fields += [_HEADER_PREFIX + name.encode(), value]
    return fields


def decode_envelope(fields: dict[bytes, bytes]) -> Envelope:
    """Inverse of :func:`encode_envelope`; raises KeyError when ``kind`` is missing."""
    headers = {
        k[len(_HEADER_PREFIX) :].decode(): v.decode()
        for k, v in fields.items()
        if k.startswith(_HEADER_PREFIX)
    }
    return Envelope(
        kind=fields[_F_KIND].decode(),
        session=fields.get(_F_SESSION, b"").decode(),
        data=fields.get(_F_DATA, b""),
        reply_to=fields.get(_F_REPLY_TO, b"").decode(),
        headers=headers,
    )


class RedisSubscription:
    """A read position on one stream, filled by its bus's shared reader task.

    The bus's reader starts at once when the subscription is created inside a running event
    loop (else on the first :meth:`get`). A subscription buffers at most ``buffer`` messages
    locally and drops the oldest beyond that, like :class:`MemoryBus`, so a slow consumer sees
    the newest messages in order and memory stays bounded. When Redis is unreachable the
    reader retries with jittered exponential backoff (one warning per outage for the whole
    bus) and resumes from the last id each subscription read.
    """

    def __init__(self, bus: RedisBus, channel: str, *, buffer: int) -> None:
        self._bus = bus
        self.channel = channel
        self._buffer = buffer
        self._queue: asyncio.Queue[Envelope] = asyncio.Queue()
        self._last_id: bytes = b"0-0"
        self._last_key: tuple[int, int] = (0, 0)
        self._closed = False
        self.read_errors = 0  # failed XREADs so far (diagnostics, tests)

    @property
    def last_id(self) -> str:
        """Stream id of the last message taken from Redis."""
        return self._last_id.decode()

    def _deliver(self, entry_id: bytes, key: tuple[int, int], fields: dict[bytes, bytes]) -> None:
        """Called by the bus's reader for each entry of this channel, in stream order."""
        if self._closed or key <= self._last_key:
            return  # closed, or already seen (another subscription re-reads from further back)
        self._last_id = entry_id
        self._last_key = key
        try:
            envelope = decode_envelope(fields)
        except (KeyError, UnicodeDecodeError, AttributeError):
            log.warning("bus dropped a malformed message", channel=self.channel)
            return
        if self._queue.qsize() >= self._buffer:
            self._queue.get_nowait()  # bounded: drop the oldest
        self._queue.put_nowait(envelope)

    async def get(self, timeout: float | None = None) -> Envelope | None:
        """Next message, or None when ``timeout`` passes; BusClosedError once closed."""
        if self._closed:
            raise BusClosedError(self.channel)
        self._bus._ensure_reader()
        try:
            item = self._queue.get_nowait()  # fast path: no timer, no extra task
        except asyncio.QueueEmpty:
            try:
                if timeout is None:
                    item = await self._queue.get()
                else:
                    item = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                return None
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)  # wake any other waiter too
            raise BusClosedError(self.channel)
        return item

    def __aiter__(self) -> AsyncIterator[Envelope]:
        return iterate(self)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._bus._forget(self)
        self._queue.put_nowait(_CLOSED)


def _id_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


async def _stop(task: asyncio.Task[None], deadline: float) -> None:
    """Cancel the read loop and wait (bounded) until it has ended.

    Cancelling mid-XREAD is safe: redis-py drops that connection rather than return it to
    the pool with a reply pending. On Python 3.11 a cancel that lands while redis-py sits in
    ``asyncio.wait_for`` (sending a command) can be swallowed (CPython gh-86296), so cancel
    again until the task ends; the loop's closed flag ends it at the next XREAD regardless.
    """
    end = time.monotonic() + deadline
    while not task.done() and time.monotonic() < end:
        task.cancel()
        await asyncio.wait({task}, timeout=0.02)


def _streams(resp: Any) -> list[tuple[Any, list[tuple[bytes, dict[bytes, bytes]]]]]:
    """XREAD's reply as (stream, entries) pairs, for RESP2 (list) and RESP3 (dict) shapes."""
    if isinstance(resp, dict):
        return list(resp.items())
    return [(item[0], item[1]) for item in resp]


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


class _ReadCommand:
    """The reader's ``XREAD COUNT c BLOCK ms STREAMS k... id...``, packed for the wire and kept.

    The reader sends one per wake-up over every open channel. Packed by redis-py each time,
    with each channel's least advanced position looked up again, that costs about 2 us a
    channel: an edge holding 448 sessions spent ~10% of a core on it (benchmarks/span). Here a
    channel's key is encoded once, and only positions that moved are encoded again.
    """

    def __init__(self, count: int, block_ms: int) -> None:
        head = (b"XREAD", b"COUNT", b"%d" % count, b"BLOCK", b"%d" % block_ms, b"STREAMS")
        self._head = b"".join(_bulk(word) for word in head)
        self._head_words = len(head)
        self._keys: dict[str, bytes] = {}  # channel -> its name as a bulk string
        self._ids: dict[str, bytes] = {}  # channel -> the id to read after, same order
        self._packed: bytes | None = None

    def __len__(self) -> int:
        return len(self._keys)

    def set(self, channel: str, last_id: bytes) -> None:
        """Read ``channel`` after ``last_id``."""
        encoded = _bulk(last_id)
        if self._ids.get(channel) == encoded:
            return
        if channel not in self._keys:
            self._keys[channel] = _bulk(channel.encode())
        self._ids[channel] = encoded
        self._packed = None

    def drop(self, channel: str) -> None:
        if self._keys.pop(channel, None) is not None:
            del self._ids[channel]
            self._packed = None

    def packed(self) -> bytes:
        if self._packed is None:
            count = self._head_words + 2 * len(self._keys)
            parts = [b"*%d\r\n" % count, self._head, *self._keys.values(), *self._ids.values()]
            self._packed = b"".join(parts)
        return self._packed


class RedisBus:
    """:class:`~trackyard.core.bus.Bus` on Redis streams.

    ``client`` must return bytes and have a ``socket_timeout`` longer than ``block_ms`` (as
    :func:`~trackyard.core.redisconn.connect_redis` makes it). One reader task (one pooled
    connection, plus a short-lived one for wakeups) serves every open subscription; each
    subscription buffers up to ``buffer`` (default ``maxlen``) messages its consumer has not
    taken yet. :meth:`close` closes the client only when
    ``owns_client`` is true.
    """

    def __init__(
        self,
        client: Redis,
        *,
        maxlen: int = 10_000,
        channel_ttl: int = 3600,
        block_ms: int = 500,
        read_count: int = 256,
        buffer: int | None = None,
        op_timeout: float = 5.0,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self._maxlen = maxlen
        self._ttl = channel_ttl
        self._block_ms = block_ms
        self._read_count = read_count
        self._buffer = max(1, buffer if buffer is not None else maxlen)
        self._op_timeout = op_timeout
        self._owns_client = owns_client
        self._publish = client.register_script(_PUBLISH)
        self._subs: dict[str, list[RedisSubscription]] = {}
        self._backoff_start = 0.05
        self._backoff_cap = 2.0
        self._reader: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None  # set when a channel joins (reader idle)
        self._in_xread = False  # an XREAD is in flight
        self._waking = False  # a wakeup XADD is in flight or not yet consumed
        # private stream the reader always includes; appending to it ends a blocked XREAD
        self._wake_key = keys.bus_wakeup(uuid.uuid4().hex)
        self._wake_id: bytes = b"0-0"
        self._command = _ReadCommand(read_count, block_ms)  # the channels, the wakeup stream
        self._wake_tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        # channel -> monotonic time this process last refreshed its TTL. Bounded: forgetting
        # a channel only costs one extra EXPIRE later.
        self._refreshed: OrderedDict[str, float] = OrderedDict()
        self._refreshed_cap = 4096

    def _needs_refresh(self, channel: str) -> bool:
        # Refresh when this process first writes a channel, then every quarter TTL, so any
        # message outlives its last write by at least three quarters of the TTL.
        now = time.monotonic()
        last = self._refreshed.get(channel)
        if last is not None and now - last < self._ttl / 4:
            return False
        self._refreshed[channel] = now
        self._refreshed.move_to_end(channel)
        while len(self._refreshed) > self._refreshed_cap:
            self._refreshed.popitem(last=False)
        return True

    async def publish(self, channel: str, envelope: Envelope) -> None:
        """Append to ``channel``; BusUnavailableError when Redis cannot take it in time."""
        refresh = self._needs_refresh(channel)
        args: list[bytes | str | int] = [self._maxlen, self._ttl, "1" if refresh else "0"]
        args += encode_envelope(envelope)
        try:
            async with asyncio.timeout(self._op_timeout):
                await self._publish(keys=[channel], args=args)
        except _UNAVAILABLE as exc:
            self._refreshed.pop(channel, None)  # the TTL may not have been set
            raise BusUnavailableError(
                f"Redis bus unavailable publishing to {channel}: {type(exc).__name__}: {exc}"
            ) from exc

    def subscribe(self, channel: str) -> Subscription:
        sub = RedisSubscription(self, channel, buffer=self._buffer)
        self._subs.setdefault(channel, []).append(sub)
        self._reposition(channel)
        with contextlib.suppress(RuntimeError):  # no running loop: start on first get()
            self._ensure_reader()
            self._wake(channel)
        return sub

    def _ensure_reader(self) -> None:
        """Start (or restart, e.g. under a new event loop) the shared reader task."""
        loop = asyncio.get_running_loop()
        reader = self._reader
        if reader is not None and not reader.done() and reader.get_loop() is loop:
            return
        self._closing = False
        self._changed = asyncio.Event()
        self._in_xread = False
        self._waking = False
        self._reader = loop.create_task(self._read_loop(), name="bus-read")

    def _wake(self, channel: str) -> None:
        """Make the reader include ``channel`` now rather than after its current block."""
        if self._changed is not None:
            self._changed.set()
        # Also for a channel already being read: the new subscription starts from 0-0.
        if not self._in_xread or self._waking:
            return  # reader not in an XREAD (it re-reads the list next), or a wakeup pending
        self._waking = True
        task = asyncio.get_running_loop().create_task(self._send_wakeup())
        self._wake_tasks.add(task)
        task.add_done_callback(self._wake_tasks.discard)

    async def _send_wakeup(self) -> None:
        try:
            async with asyncio.timeout(self._op_timeout):
                await self._publish(
                    keys=[self._wake_key], args=[16, max(60, self._ttl), "1", "w", "1"]
                )
        except Exception:  # Redis down: the reader's retry picks the channel up anyway
            self._waking = False

    def _reposition(self, channel: str) -> None:
        """Read ``channel`` from its least advanced subscription (or not at all: none left)."""
        subs = self._subs.get(channel)
        if not subs:
            self._command.drop(channel)
            return
        least = min(subs, key=lambda sub: sub._last_key)
        self._command.set(channel, least._last_id)

    async def _read_loop(self) -> None:
        client = self.client
        backoff = self._backoff_start
        outage_since: float | None = None
        changed = self._changed
        assert changed is not None
        # The flag, not only cancellation, ends the loop (see _stop).
        command = self._command
        while not self._closing:
            if not self._subs:
                changed.clear()
                await changed.wait()
                continue
            changed.clear()
            self._in_xread = True
            command.set(self._wake_key, self._wake_id)
            try:
                resp = await self._xread(client, command.packed())
            except Exception as exc:  # never die: back off and retry until closed
                self._in_xread = False
                if self._closing:  # e.g. the bus closed the client under us
                    return
                for subs in self._subs.values():
                    for sub in subs:
                        sub.read_errors += 1
                if outage_since is None:
                    outage_since = time.monotonic()
                    self._read_failed(next(iter(self._subs), self._wake_key), exc)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self._backoff_cap)
                continue
            self._in_xread = False
            if outage_since is not None:
                self._read_recovered(time.monotonic() - outage_since)
                outage_since = None
                backoff = self._backoff_start
            if not resp:
                continue
            for stream, entries in _streams(resp):
                name = stream.decode() if isinstance(stream, bytes) else str(stream)
                if name == self._wake_key:
                    if entries:
                        self._wake_id = entries[-1][0]
                    self._waking = False
                    continue
                readers = self._subs.get(name)
                if not readers:
                    continue  # closed while the XREAD was in flight
                for entry_id, fields in entries:
                    key = _id_key(entry_id)
                    for sub in list(readers):
                        sub._deliver(entry_id, key, fields)
                self._reposition(name)

    @staticmethod
    async def _xread(client: Redis, packed: bytes) -> Any:
        """Send the packed XREAD on a pooled connection and parse the reply as ``client.xread``
        does. A failure or cancellation mid-command disconnects the connection (redis-py's
        own rule), so no reply is left pending on it."""
        await client.initialize()
        pool = client.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(packed)
            return await client.parse_response(conn, "XREAD")
        finally:
            await pool.release(conn)

    def _read_failed(self, channel: str, exc: Exception) -> None:
        # One warning per outage for the whole bus, not one per subscription: an edge may
        # hold thousands of session subscriptions that all fail at once.
        error = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, _UNAVAILABLE):
            log.error("bus subscription read failed; retrying", channel=channel, error=error)
        else:
            log.warning("bus cannot read from Redis; retrying", channel=channel, error=error)

    def _read_recovered(self, outage: float) -> None:
        log.info("bus reading from Redis again", outage_s=round(outage, 3))

    def _forget(self, sub: RedisSubscription) -> None:
        subs = self._subs.get(sub.channel)
        if subs and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._subs[sub.channel]
            self._reposition(sub.channel)

    async def delete(self, channel: str) -> None:
        """DEL the stream and close this process's subscriptions to it (as MemoryBus does)."""
        for sub in list(self._subs.get(channel, ())):
            await sub.close()
        self._refreshed.pop(channel, None)
        try:
            async with asyncio.timeout(self._op_timeout):
                await self.client.delete(channel)
        except _UNAVAILABLE as exc:
            raise BusUnavailableError(
                f"Redis bus unavailable deleting {channel}: {type(exc).__name__}: {exc}"
            ) from exc

    async def ping(self) -> bool:
        """True when Redis answers within a second; never raises."""
        try:
            async with asyncio.timeout(1.0):
                return bool(await self.client.ping())
        except Exception:
            return False

    async def close(self) -> None:
        for subs in list(self._subs.values()):
            for sub in list(subs):
                await sub.close()
        self._closing = True
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            with contextlib.suppress(RuntimeError):  # reader of a loop that is gone
                if reader.get_loop() is asyncio.get_running_loop():
                    await _stop(reader, self._block_ms / 1000 + 1.0)
        for task in list(self._wake_tasks):
            task.cancel()
        if self._owns_client:
            await self.client.aclose()
