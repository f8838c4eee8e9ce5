"""Fixtures for the core contract tests: each store/bus test runs on memory and on Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from tests.support.redisserver import RedisServer, redis_server_fixture
from trackyard.core.bus import Bus, MemoryBus
from trackyard.core.config import RedisConfig
from trackyard.core.redisbus import RedisBus
from trackyard.core.redisconn import connect_redis
from trackyard.core.redisstore import RedisStore
from trackyard.core.store import MemoryStore, Store

redis_server = redis_server_fixture(scope="module")

IMPLS = ["memory", "redis"]


def redis_client(server: RedisServer) -> Redis:
    return connect_redis(RedisConfig(address=server.address))


@pytest.fixture
async def redis_client_factory(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[[], Redis]]:
    """Makes extra, independent clients (separate connection pools) to the module's Redis."""
    server: RedisServer = request.getfixturevalue("redis_server")
    made: list[Redis] = []

    def make() -> Redis:
        client = redis_client(server)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


async def _fresh_redis(request: pytest.FixtureRequest) -> Redis:
    # Only Redis-backed params start the server, so memory-only runs need no redis-server.
    server: RedisServer = request.getfixturevalue("redis_server")
    client = redis_client(server)
    await client.flushdb()
    return client


@pytest.fixture(params=IMPLS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        mem = MemoryStore()
        yield mem
        await mem.close()
        return
    rstore = RedisStore(await _fresh_redis(request), owns_client=True)
    yield rstore
    await rstore.close()


class BusFactory:
    """Makes buses of one kind on one backend, so two buses see each other's channels."""

    def __init__(self, kind: str, client: Redis | None = None) -> None:
        self.kind = kind
        self._client = client
        self._shared_memory = MemoryBus()
        self.made: list[Bus] = []

    def __call__(self, maxlen: int | None = None) -> Bus:
        bus: Bus
        if self._client is None:
            bus = self._shared_memory if maxlen is None else MemoryBus(maxlen=maxlen)
        else:
            bus = RedisBus(self._client, maxlen=10_000 if maxlen is None else maxlen)
        if bus not in self.made:
            self.made.append(bus)
        return bus

    async def close(self) -> None:
        for bus in self.made:
            await bus.close()
        if self._client is not None:
            await self._client.aclose()


@pytest.fixture(params=IMPLS)
async def bus_factory(request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    client = None if request.param == "memory" else await _fresh_redis(request)
    factory = BusFactory(request.param, client)
    yield factory
    await factory.close()


@pytest.fixture
def bus(bus_factory: BusFactory) -> Bus:
    return bus_factory()
