"""Redis goes away under a live store and subscription, then comes back on the same port."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog
from livekit.protocol import models
from redis.asyncio import Redis

from tests.support.redisserver import RedisServer
from trackyard.core import keys
from trackyard.core.bus import BusClosedError, Envelope
from trackyard.core.config import RedisConfig
from trackyard.core.errors import BusUnavailableError, StoreUnavailableError
from trackyard.core.redisbus import RedisBus, RedisSubscription
from trackyard.core.redisconn import connect_redis
from trackyard.core.redisstore import RedisStore

CH = keys.node_channel("ND_outage")


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A server of its own: this module kills it, so it must not be the shared one."""
    try:
        server = RedisServer()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    with server:
        yield server


@pytest.fixture
async def client(own_server: RedisServer) -> AsyncIterator[Redis]:
    c = connect_redis(RedisConfig(address=own_server.address))
    yield c
    await c.aclose()


async def until_ping(bus: RedisBus, expected: bool, timeout: float) -> float:
    """Seconds until bus.ping() returns ``expected`` (reachability has no event to await)."""
    start = time.monotonic()
    while await bus.ping() is not expected:
        assert time.monotonic() - start < timeout, f"ping never became {expected}"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def test_outage_and_recovery(own_server: RedisServer, client: Redis) -> None:
    store = RedisStore(client, op_timeout=3.0)
    bus = RedisBus(client)
    sub = bus.subscribe(CH)
    other = bus.subscribe(CH + ":other")
    assert isinstance(sub, RedisSubscription)
    await bus.publish(CH, Envelope(kind="before"))
    assert await sub.get(timeout=5) == Envelope(kind="before")
    await store.put_room(models.Room(name="r"))

    with structlog.testing.capture_logs() as logs:
        own_server.stop()

        # Health checks answer False, bounded, and never raise.
        start = time.monotonic()
        assert await bus.ping() is False
        assert await store.ping() is False
        assert time.monotonic() - start < 2.5

        # Store calls fail fast with the one documented error type.
        start = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="unavailable"):
            await store.get_room("r")
        with pytest.raises(StoreUnavailableError):
            await store.claim_room("r", "ND_x")
        with pytest.raises(BusUnavailableError):
            await bus.publish(CH, Envelope(kind="lost"))
        assert time.monotonic() - start < 5.0

        # The subscription stays alive and simply has nothing to deliver.
        assert await sub.get(timeout=0.5) is None
        errors_during_outage = sub.read_errors
        assert errors_during_outage >= 1

        # Backing off, not spinning: a couple of seconds down costs a handful of attempts.
        await asyncio.sleep(1.5)
        assert sub.read_errors - errors_during_outage < 15

        own_server.start()  # same port, empty database
        await until_ping(bus, True, timeout=10)

        # The same subscription object resumes and gets new messages.
        await bus.publish(CH, Envelope(kind="after", data=b"1"))
        assert await sub.get(timeout=10) == Envelope(kind="after", data=b"1")
        await bus.publish(CH, Envelope(kind="after", data=b"2"))
        assert await sub.get(timeout=5) == Envelope(kind="after", data=b"2")
        await bus.publish(CH + ":other", Envelope(kind="other"))
        assert await other.get(timeout=10) == Envelope(kind="other")

    # Once per outage for the whole bus: not per retry, not per subscription.
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1, warnings
    assert len([e for e in logs if e["log_level"] == "info" and "again" in e["event"]]) == 1

    # The store works again (its data went with the old process: no persistence).
    assert await store.get_room("r") is None
    placement = await store.claim_room("r", "ND_x")
    assert placement.node_id == "ND_x"
    assert await store.ping() is True

    start = time.monotonic()
    await sub.close()
    assert time.monotonic() - start < 0.5
    await bus.close()


async def test_subscription_created_while_redis_is_down(
    own_server: RedisServer, client: Redis
) -> None:
    bus = RedisBus(client)
    own_server.stop()
    sub = bus.subscribe(CH)
    assert await sub.get(timeout=0.3) is None
    own_server.start()
    await until_ping(bus, True, timeout=10)
    await bus.publish(CH, Envelope(kind="hello"))
    assert await sub.get(timeout=10) == Envelope(kind="hello")
    await bus.close()


async def test_close_during_outage_is_prompt(own_server: RedisServer, client: Redis) -> None:
    bus = RedisBus(client)
    sub = bus.subscribe(CH)
    own_server.stop()
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0.3)  # let the reader fail and start backing off
    start = time.monotonic()
    await bus.close()
    assert time.monotonic() - start < 0.5
    with pytest.raises(BusClosedError):
        await asyncio.wait_for(waiter, 1)


async def test_frozen_redis_fails_within_the_deadline(
    own_server: RedisServer, client: Redis
) -> None:
    """A Redis that accepts nothing and answers nothing (SIGSTOP) must not hang callers."""
    store = RedisStore(client, op_timeout=1.5)
    bus = RedisBus(client, op_timeout=1.5)
    assert await store.ping()
    assert own_server.proc is not None
    own_server.proc.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        assert await bus.ping() is False
        assert time.monotonic() - start < 1.5
        start = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            await store.list_nodes()
        with pytest.raises(BusUnavailableError):
            await bus.publish(CH, Envelope(kind="x"))
        assert time.monotonic() - start < 4.5
    finally:
        own_server.proc.send_signal(signal.SIGCONT)
    await until_ping(bus, True, timeout=10)
    assert await store.list_nodes() == []
