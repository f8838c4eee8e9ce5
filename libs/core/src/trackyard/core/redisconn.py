"""One place that turns :class:`RedisConfig` into a ready ``redis.asyncio.Redis`` client.

Every Redis user in Trackyard (store, bus) goes through :func:`connect_redis` so that all of
them fail fast on a dead Redis (short connect and command timeouts), ride out short blips
(retry with jittered backoff) and notice half-dead pooled connections (health checks).
The client speaks bytes (``decode_responses=False``): protobuf records are stored raw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from trackyard.core.config import RedisConfig

DEFAULT_PORT = 6379
SENTINEL_DEFAULT_PORT = 26379


@dataclass(frozen=True, slots=True)
class RedisTimeouts:
    """Client timing. Defaults keep a dead Redis from stalling a caller for long.

    ``socket_timeout`` bounds every reply, so blocking commands (the bus's ``XREAD BLOCK``)
    must block for less than it.
    """

    connect: float = 2.0
    socket: float = 3.0
    health_check_interval: int = 10
    retries: int = 2  # extra attempts after a connection error or timeout
    backoff_base: float = 0.05
    backoff_cap: float = 0.5


def parse_address(address: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or a bare host -> ``(host, port)``."""
    address = address.strip()
    if not address:
        raise ValueError("empty Redis address")
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep:
            raise ValueError(f"bad Redis address {address!r}")
        port_text = rest.removeprefix(":")
    elif address.count(":") == 1:
        host, _, port_text = address.partition(":")
    else:  # bare host name or bare IPv6 address
        host, port_text = address, ""
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ValueError(f"bad port in Redis address {address!r}") from None
    if not host or not 0 < port < 65536:
        raise ValueError(f"bad Redis address {address!r}")
    return host, port


# Connections one process may open (opened on demand). redis-py's default, 100, refuses the
# 101st concurrent command at once ("Too many connections"): a node fanning a participant
# update out to a few hundred sessions in one go hit it (benchmarks/span.py, N >= 192).
MAX_CONNECTIONS = 2000


def _retry(t: RedisTimeouts) -> Retry:
    return Retry(
        ExponentialWithJitterBackoff(base=t.backoff_base, cap=t.backoff_cap),
        t.retries,
        (RedisConnectionError, RedisTimeoutError),
    )


def client_kwargs(cfg: RedisConfig, timeouts: RedisTimeouts | None = None) -> dict[str, Any]:
    """Keyword arguments for the data connections (not the Sentinel ones)."""
    t = timeouts or RedisTimeouts()
    kwargs: dict[str, Any] = {
        "db": cfg.db,
        "username": cfg.username or None,
        "password": cfg.password or None,
        "socket_connect_timeout": t.connect,
        "socket_timeout": t.socket,
        "socket_keepalive": True,
        "health_check_interval": t.health_check_interval,
        "retry": _retry(t),
        "decode_responses": False,
        "client_name": "trackyard",
        "max_connections": MAX_CONNECTIONS,
    }
    if cfg.use_tls:
        kwargs["ssl"] = True
    return kwargs


def connect_redis(cfg: RedisConfig, timeouts: RedisTimeouts | None = None) -> Redis:
    """A client for ``cfg``: Sentinel when ``sentinel_addresses`` is set, else ``address``.

    No I/O happens here; connections open on first use (so this never hangs). Use
    ``await client.ping()`` to check reachability.
    """
    t = timeouts or RedisTimeouts()
    kwargs = client_kwargs(cfg, t)
    if cfg.sentinel_addresses:
        if not cfg.sentinel_master_name:
            raise ValueError("redis.sentinel_master_name is required with sentinel_addresses")
        sentinels = [parse_address(a, SENTINEL_DEFAULT_PORT) for a in cfg.sentinel_addresses]
        # Sentinels have their own credentials; without sentinel_kwargs redis-py would
        # reuse only the socket_* options and connect to them unauthenticated.
        sentinel_kwargs: dict[str, Any] = {
            "username": cfg.sentinel_username or None,
            "password": cfg.sentinel_password or None,
            "socket_connect_timeout": t.connect,
            "socket_timeout": t.socket,
            "retry": _retry(t),
        }
        if cfg.use_tls:
            sentinel_kwargs["ssl"] = True
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            sentinels, sentinel_kwargs=sentinel_kwargs, **kwargs
        )
        client: Redis = sentinel.master_for(cfg.sentinel_master_name, redis_class=Redis)
        return client
    if not cfg.address:
        raise ValueError("redis.address (or redis.sentinel_addresses) is required")
    if "://" in cfg.address:
        # redis://user:pass@host:port/db or rediss://...; explicit config fields win.
        url_kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if not cfg.db:
            url_kwargs.pop("db")
        return Redis.from_url(cfg.address, **url_kwargs)
    host, port = parse_address(cfg.address)
    return Redis(host=host, port=port, **kwargs)
