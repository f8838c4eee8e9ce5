"""connect_redis: addresses, credentials, db, TLS options and Sentinel, against real servers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis.exceptions import AuthenticationError, ConnectionError, ResponseError

from tests.support.redisserver import RedisSentinel, RedisServer
from trackyard.core.config import RedisConfig
from trackyard.core.redisconn import RedisTimeouts, client_kwargs, connect_redis, parse_address


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("localhost:6380", ("localhost", 6380)),
        ("redis.internal", ("redis.internal", 6379)),
        ("[::1]:7000", ("::1", 7000)),
        ("[::1]", ("::1", 6379)),
        ("::1", ("::1", 6379)),
        (" 10.0.0.1:1 ", ("10.0.0.1", 1)),
    ],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["", ":6379", "host:0", "host:99999", "host:port", "[::1"])
def test_parse_address_rejects(address: str) -> None:
    with pytest.raises(ValueError):
        parse_address(address)


def test_client_options() -> None:
    cfg = RedisConfig(address="h:1", username="u", password="p", db=2, use_tls=True)
    kw = client_kwargs(cfg, RedisTimeouts(connect=1.0, socket=2.0))
    assert kw["ssl"] is True
    assert (kw["username"], kw["password"], kw["db"]) == ("u", "p", 2)
    assert (kw["socket_connect_timeout"], kw["socket_timeout"]) == (1.0, 2.0)
    assert kw["health_check_interval"] > 0
    assert kw["decode_responses"] is False
    assert "ssl" not in client_kwargs(RedisConfig(address="h:1"))


def test_missing_address_is_an_error() -> None:
    with pytest.raises(ValueError):
        connect_redis(RedisConfig())
    with pytest.raises(ValueError, match="sentinel_master_name"):
        connect_redis(RedisConfig(sentinel_addresses=["127.0.0.1:26379"]))


@pytest.fixture(scope="module")
def protected() -> Iterator[RedisServer]:
    with RedisServer(extra_args=["--requirepass", "s3cret"]) as server:
        yield server


async def test_password_and_db(protected: RedisServer) -> None:
    good = connect_redis(RedisConfig(address=protected.address, password="s3cret", db=3))
    await good.set("k", b"v")
    other_db = connect_redis(RedisConfig(address=protected.address, password="s3cret", db=0))
    assert await other_db.get("k") is None
    url = connect_redis(RedisConfig(address=f"redis://:s3cret@{protected.address}/3"))
    assert await url.get("k") == b"v"
    bad = connect_redis(RedisConfig(address=protected.address, password="wrong"))
    with pytest.raises((AuthenticationError, ResponseError)):
        await bad.ping()
    for client in (good, other_db, url, bad):
        await client.aclose()


async def test_hundreds_of_concurrent_commands_all_go_through(protected: RedisServer) -> None:
    """A burst wider than redis-py's default pool (100) is not refused ("Too many
    connections"), even with no retry to hide it."""
    client = connect_redis(
        RedisConfig(address=protected.address, password="s3cret"), RedisTimeouts(retries=0)
    )
    try:
        await asyncio.gather(*(client.xadd("burst", {"i": str(i)}) for i in range(500)))
        assert await client.xlen("burst") == 500
    finally:
        await client.aclose()


async def test_username_and_password_acl(protected: RedisServer) -> None:
    admin = connect_redis(RedisConfig(address=protected.address, password="s3cret"))
    await admin.acl_setuser("ty", enabled=True, passwords=["+typw"], keys=["*"], commands=["+@all"])
    user = connect_redis(RedisConfig(address=protected.address, username="ty", password="typw"))
    assert await user.ping()
    assert await user.acl_whoami() in ("ty", b"ty")
    await user.aclose()
    await admin.aclose()


async def test_unreachable_server_fails_fast() -> None:
    from tests.support.ports import free_port

    client = connect_redis(RedisConfig(address=f"127.0.0.1:{free_port()}"))
    with pytest.raises(ConnectionError):
        await client.ping()
    await client.aclose()


async def test_sentinel(protected: RedisServer) -> None:
    with RedisSentinel(protected, "mymaster", master_password="s3cret", requirepass="sentpw") as s:
        cfg = RedisConfig(
            sentinel_master_name="mymaster",
            sentinel_addresses=[s.address],
            sentinel_password="sentpw",
            password="s3cret",
        )
        client = connect_redis(cfg)
        await client.set("via-sentinel", b"1")
        direct = connect_redis(RedisConfig(address=protected.address, password="s3cret"))
        assert await direct.get("via-sentinel") == b"1"

        wrong = connect_redis(cfg.model_copy(update={"sentinel_password": "nope"}))
        with pytest.raises(Exception, match=r"(?i)master|auth|password"):
            await wrong.ping()
        for c in (client, direct, wrong):
            await c.aclose()
