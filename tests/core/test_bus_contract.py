"""One contract, two buses: every test runs against MemoryBus and RedisBus."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

from trackyard.core import keys
from trackyard.core.bus import Bus, BusClosedError, Envelope
from trackyard.core.redisbus import RedisBus, RedisSubscription, decode_envelope, encode_envelope

if TYPE_CHECKING:  # conftest is loaded by pytest itself; importing it again would duplicate it
    from tests.core.conftest import BusFactory

CH = keys.session_channel("SE_test")


def env(i: int, **kw: object) -> Envelope:
    return Envelope(kind="msg", session=f"s{i}", data=i.to_bytes(4, "big"), **kw)  # type: ignore[arg-type]


async def test_round_trip_keeps_every_field(bus: Bus) -> None:
    sub = bus.subscribe(CH)
    sent = Envelope(
        kind="signal",
        session="SE_1",
        data=b"\x00\xff binary \r\n\x00",
        reply_to=keys.reply_channel("RC_1"),
        headers={"identity": "älice", "h:odd": "x:y", "empty": ""},
    )
    await bus.publish(CH, sent)
    assert await sub.get(timeout=5) == sent
    await sub.close()


async def test_minimal_envelope(bus: Bus) -> None:
    sub = bus.subscribe(CH)
    await bus.publish(CH, Envelope(kind=""))
    assert await sub.get(timeout=5) == Envelope(kind="")
    await sub.close()


async def test_order_is_kept(bus: Bus) -> None:
    sub = bus.subscribe(CH)
    for i in range(500):
        await bus.publish(CH, env(i))
    got = [await sub.get(timeout=5) for _ in range(500)]
    assert got == [env(i) for i in range(500)]
    await sub.close()


async def test_concurrent_publishers_keep_per_publisher_order(bus_factory: BusFactory) -> None:
    a, b = bus_factory(), bus_factory()
    sub = a.subscribe(CH)

    async def produce(bus: Bus, tag: str) -> None:
        for i in range(100):
            await bus.publish(CH, Envelope(kind=tag, data=str(i).encode()))

    await asyncio.gather(produce(a, "a"), produce(b, "b"))
    got = [await sub.get(timeout=5) for _ in range(200)]
    for tag in "ab":
        seq = [int(e.data) for e in got if e is not None and e.kind == tag]
        assert seq == list(range(100))
    await sub.close()


async def test_channels_are_independent(bus: Bus) -> None:
    one, two = bus.subscribe(CH + "1"), bus.subscribe(CH + "2")
    await bus.publish(CH + "1", env(1))
    await bus.publish(CH + "2", env(2))
    assert await one.get(timeout=5) == env(1)
    assert await two.get(timeout=5) == env(2)
    assert await one.get(timeout=0.05) is None
    await one.close()
    await two.close()


async def test_other_bus_instance_delivers(bus_factory: BusFactory) -> None:
    reader, writer = bus_factory(), bus_factory()
    sub = reader.subscribe(CH)
    await writer.publish(CH, env(7))
    assert await sub.get(timeout=5) == env(7)
    await sub.close()


async def test_get_returns_none_after_timeout(bus: Bus) -> None:
    sub = bus.subscribe(CH)
    start = time.monotonic()
    assert await sub.get(timeout=0.2) is None
    assert 0.15 < time.monotonic() - start < 1.0
    assert await sub.get(timeout=0) is None
    await bus.publish(CH, env(1))
    assert await sub.get(timeout=5) == env(1)  # still usable after timeouts
    await sub.close()


async def test_close_unblocks_a_waiting_reader(bus: Bus) -> None:
    sub = bus.subscribe(CH)
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0.05)  # let it block
    start = time.monotonic()
    await sub.close()
    with pytest.raises(BusClosedError):
        await asyncio.wait_for(waiter, 2)
    assert time.monotonic() - start < 1.0
    with pytest.raises(BusClosedError):
        await sub.get(timeout=1)
    await sub.close()  # idempotent


async def test_async_iteration_ends_on_close(bus: Bus) -> None:
    sub = bus.subscribe(CH)
    for i in range(3):
        await bus.publish(CH, env(i))
    got: list[Envelope] = []

    async def consume() -> None:
        async for e in sub:
            got.append(e)
            if len(got) == 3:
                await sub.close()

    await asyncio.wait_for(consume(), 5)
    assert got == [env(0), env(1), env(2)]


async def test_bus_close_closes_subscriptions(bus_factory: BusFactory) -> None:
    bus = bus_factory(maxlen=100)  # its own instance, so closing it spares the fixture's
    sub = bus.subscribe(CH)
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0.05)
    await bus.close()
    with pytest.raises(BusClosedError):
        await asyncio.wait_for(waiter, 2)


async def test_bounded_channel_drops_the_oldest(bus_factory: BusFactory) -> None:
    maxlen = 50
    bus = bus_factory(maxlen=maxlen)
    sub = bus.subscribe(CH)
    total = 3000
    for i in range(total):
        await bus.publish(CH, env(i))
    got: list[int] = []
    while (e := await sub.get(timeout=0.3)) is not None:
        got.append(int.from_bytes(e.data, "big"))
    # Redis trims with MAXLEN ~ (whole nodes of up to 100 entries) and the subscription
    # buffers up to maxlen locally, so allow some slack above maxlen but far below total.
    assert maxlen <= len(got) <= 2 * maxlen + 200
    assert got[-1] == total - 1
    assert got == sorted(got) and got[0] > 0
    await sub.close()


async def test_delete_drops_queued_messages_and_closes_local_readers(bus: Bus) -> None:
    sub = bus.subscribe(CH)
    await bus.publish(CH, env(1))
    await bus.delete(CH)
    with pytest.raises(BusClosedError):
        await sub.get(timeout=1)
    fresh = bus.subscribe(CH)
    assert await fresh.get(timeout=0.2) is None
    await bus.publish(CH, env(2))
    assert await fresh.get(timeout=5) == env(2)
    await fresh.close()
    await bus.delete("never-used")


async def test_ping(bus: Bus) -> None:
    assert await bus.ping() is True


async def test_request_reply_round_trip_latency(bus_factory: BusFactory) -> None:
    """A ping-pong between two buses: the bus adds no polling delay."""
    a, b = bus_factory(), bus_factory()
    a_in, b_in = a.subscribe(CH + ":a"), b.subscribe(CH + ":b")

    async def echo() -> None:
        while (e := await b_in.get(timeout=5)) is not None:
            await b.publish(e.reply_to, e)

    echo_task = asyncio.create_task(echo())
    samples = []
    for i in range(300):
        start = time.perf_counter()
        await a.publish(CH + ":b", env(i, reply_to=CH + ":a"))
        assert await a_in.get(timeout=5) == env(i, reply_to=CH + ":a")
        samples.append(time.perf_counter() - start)
    samples.sort()
    p50, p99 = statistics.median(samples), samples[int(len(samples) * 0.99)]
    print(f"bus round trip p50={p50 * 1e3:.3f} ms p99={p99 * 1e3:.3f} ms")
    # Loose bound (shared CI machines); a polling reader would take >= its poll interval.
    assert p50 < 0.01
    await a_in.close()
    await b_in.close()
    echo_task.cancel()


# Redis only -----------------------------------------------------------------------------


@pytest.fixture
async def redis_bus(redis_client_factory: Callable[[], Redis]) -> RedisBus:
    client = redis_client_factory()
    await client.flushdb()
    return RedisBus(client, maxlen=100, channel_ttl=600)


def test_envelope_encoding_round_trip() -> None:
    e = Envelope(kind="k", session="s", data=b"\x00", reply_to="r", headers={"a": "1", "b": ""})
    fields = encode_envelope(e)
    as_dict = {
        (k if isinstance(k, bytes) else k.encode()): (v if isinstance(v, bytes) else v.encode())
        for k, v in zip(fields[::2], fields[1::2], strict=True)
    }
    assert as_dict[b"h:a"] == b"1"
    assert decode_envelope(as_dict) == e


async def test_redis_delivers_messages_published_before_subscribe(redis_bus: RedisBus) -> None:
    await redis_bus.publish(CH, env(1))
    sub = redis_bus.subscribe(CH)
    assert await sub.get(timeout=5) == env(1)
    await sub.close()


async def test_redis_streams_are_trimmed_and_expire(
    redis_bus: RedisBus, redis_client_factory: Callable[[], Redis]
) -> None:
    client = redis_client_factory()
    for i in range(1000):
        await redis_bus.publish(CH, env(i))
    assert await client.xlen(CH) <= 100 + 100  # MAXLEN ~ trims whole macro nodes
    assert 500 < await client.ttl(CH) <= 600
    # A stream deleted behind this process's back gets its TTL again when re-created.
    await client.delete(CH)
    await redis_bus.publish(CH, env(1))
    assert 500 < await client.ttl(CH) <= 600


async def test_redis_subscription_subscribed_outside_a_loop_starts_on_get(
    redis_bus: RedisBus,
) -> None:
    sub = redis_bus.subscribe(CH)
    assert isinstance(sub, RedisSubscription)
    await redis_bus.publish(CH, env(3))
    assert await sub.get(timeout=5) == env(3)
    assert sub.last_id != "0-0"
    await sub.close()


async def test_close_is_prompt_right_after_a_delivery(bus: Bus) -> None:
    for i in range(20):
        sub = bus.subscribe(f"{CH}:{i}")
        await bus.publish(f"{CH}:{i}", env(i))
        assert await sub.get(timeout=5) == env(i)
        start = time.monotonic()
        await sub.close()
        assert time.monotonic() - start < 0.25


async def test_redis_many_subscriptions_share_one_reader_connection(
    redis_client_factory: Callable[[], Redis],
) -> None:
    client = redis_client_factory()
    await client.flushdb()
    bus = RedisBus(client, maxlen=100, block_ms=2000)
    subs = [bus.subscribe(f"{CH}:many:{i}") for i in range(1000)]
    await bus.publish(f"{CH}:many:999", env(999))
    assert await subs[999].get(timeout=5) == env(999)
    await asyncio.sleep(0.3)  # let the reader block again
    pool = client.connection_pool
    opened = len(pool._in_use_connections) + len(pool._available_connections)  # type: ignore[attr-defined]
    assert opened <= 4, opened
    for i in (0, 500):
        await bus.publish(f"{CH}:many:{i}", env(i))
        assert await subs[i].get(timeout=5) == env(i)
    await bus.close()


async def test_redis_new_subscription_joins_a_blocked_reader_at_once(
    redis_client_factory: Callable[[], Redis],
) -> None:
    client = redis_client_factory()
    await client.flushdb()
    bus = RedisBus(client, maxlen=100, block_ms=10_000)  # a blocked XREAD would cost 10 s
    first = bus.subscribe(f"{CH}:blocked")
    await bus.publish(f"{CH}:blocked", env(0))
    assert await first.get(timeout=5) == env(0)
    for i in range(5):
        await asyncio.sleep(0.1)  # the reader is blocked again
        start = time.monotonic()
        sub = bus.subscribe(f"{CH}:fresh:{i}")
        await bus.publish(f"{CH}:fresh:{i}", env(i))
        assert await sub.get(timeout=5) == env(i)
        assert time.monotonic() - start < 0.2
    # A second subscription to an already-read channel still reads it from the start.
    again = bus.subscribe(f"{CH}:blocked")
    assert await again.get(timeout=1) == env(0)
    await bus.publish(f"{CH}:blocked", env(1))
    assert await first.get(timeout=1) == env(1)
    assert await again.get(timeout=1) == env(1)
    assert await first.get(timeout=0.1) is None  # no duplicate from the re-read
    await bus.close()


def test_read_command_is_packed_as_redis_py_packs_xread() -> None:
    """The reader's kept XREAD is byte for byte what redis-py would send, through joins,
    advances and departures of channels."""
    from redis.asyncio.connection import Connection

    from trackyard.core.redisbus import _ReadCommand

    def expected(streams: dict[str, bytes]) -> bytes:
        args = ["XREAD", "COUNT", 256, "BLOCK", 500, "STREAMS", *streams, *streams.values()]
        return b"".join(Connection().pack_command(*args))

    command = _ReadCommand(256, 500)
    streams: dict[str, bytes] = {}
    steps: list[tuple[str, bytes | None]] = [
        ("a", b"0-0"),
        ("b", b"0-0"),
        ("wake", b"0-0"),
        ("a", b"1733380000000-0"),
        ("b", None),
        ("ü-channel", b"0-0"),
        ("a", b"1733380000000-0"),  # unchanged
        ("b", b"0-0"),
        ("a", None),
        ("a", None),  # gone already
    ]
    for channel, last_id in steps:
        if last_id is None:
            command.drop(channel)
            streams.pop(channel, None)
        else:
            command.set(channel, last_id)
            streams[channel] = last_id
        assert command.packed() == expected(streams), (channel, last_id)
        assert len(command) == len(streams)


async def test_redis_reader_follows_channels_that_come_and_go(
    redis_client_factory: Callable[[], Redis],
) -> None:
    """Hundreds of channels, each read from where its subscriptions are; closed ones leave the
    read, and a second subscription to a channel reads it again from the start."""
    client = redis_client_factory()
    await client.flushdb()
    bus = RedisBus(client, maxlen=100, block_ms=2000)
    names = [f"{CH}:come:{i}" for i in range(300)]
    subs = [bus.subscribe(name) for name in names]
    for round_ in range(2):
        for i, name in enumerate(names):
            await bus.publish(name, env(i * 10 + round_))
        for i, sub in enumerate(subs):
            assert await sub.get(timeout=5) == env(i * 10 + round_)
    for sub in subs[::2]:
        await sub.close()
    assert len(bus._command) == 150 + 1  # the open channels and the wakeup stream
    late = bus.subscribe(names[1])  # reads names[1] from its start
    assert [await late.get(timeout=5) for _ in range(2)] == [env(10), env(11)]
    for i, name in enumerate(names):
        await bus.publish(name, env(i * 10 + 2))
    for i in range(1, 300, 2):
        assert await subs[i].get(timeout=5) == env(i * 10 + 2)
    assert await late.get(timeout=5) == env(12)
    assert await subs[1].get(timeout=0.2) is None  # each message once per subscription
    await bus.close()
