"""The cluster store on Redis, with the same semantics as :class:`MemoryStore`.

Layout (names from :mod:`trackyard.core.keys`): rooms and participants are hashes of protobuf
bytes; a room's seats are a hash ``identity -> node_id``; placements are a hash
``room -> "node_id|epoch"`` changed only by Lua scripts, so a claim is atomic across every
process that talks to this Redis; epochs come from a per-room counter that only grows
(fencing). Node records are JSON strings with a TTL, indexed by a sorted set of expiry times
that :meth:`RedisStore.list_nodes` prunes.

Any failure to reach Redis surfaces as :class:`StoreUnavailableError`, within ``op_timeout``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from livekit.protocol import models
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from trackyard.core import keys
from trackyard.core.errors import StoreUnavailableError
from trackyard.core.node import NodeRecord
from trackyard.core.store import Placement

# Errors that mean "Redis is not usable right now" rather than a bug. ReadOnlyError shows up
# for a moment after a Sentinel failover, while a client still talks to the old master.
# OSError covers socket errors and asyncio's TimeoutError.
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)

# KEYS: placements, epochs. ARGV: room, node_id, expected "node|epoch" ("" = no replace).
# Claims when the room is free or its placement still equals the expected one.
_CLAIM = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and (ARGV[3] == '' or cur ~= ARGV[3]) then
  return cur
end
local epoch = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
local val = ARGV[2] .. '|' .. epoch
redis.call('HSET', KEYS[1], ARGV[1], val)
return val
"""

# KEYS: placements. ARGV: room, node_id. Deletes only if the placement names node_id.
_RELEASE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and string.match(cur, '^(.*)|%d+$') == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

# KEYS: seats. ARGV: identity, node_id. Deletes only if the seat names node_id.
# KEYS: seats hash. ARGV: identity, node id, cap (<= 0: none). 1: seated, 0: node full.
_TAKE_SEAT = """
local cap = tonumber(ARGV[3])
if cap > 0 then
  local taken = 0
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if all[i + 1] == ARGV[2] and all[i] ~= ARGV[1] then taken = taken + 1 end
  end
  if taken >= cap then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

_UNSEAT = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

# KEYS: node record, node index, heartbeats. ARGV: node id, record JSON, ttl ms.
# The heartbeat is stamped with Redis's clock, so staleness is judged on one clock.
_PUT_NODE = """
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
redis.call('ZADD', KEYS[2], (ms + ttl) / 1000, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ms)
return ms
"""

# KEYS: heartbeats. ARGV: node ids. Returns {now_ms, beat_ms or false per id}.
_BEATS = """
local t = redis.call('TIME')
local out = {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}
for i, id in ipairs(ARGV) do
  out[i + 1] = redis.call('HGET', KEYS[1], id)
end
return out
"""

# KEYS: generation. ARGV: a fresh value, used only when the store has none.
_GENERATION = """
local g = redis.call('GET', KEYS[1])
if g then return g end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""

# Never equal to a stored placement: used when ``replace`` names another room.
_NO_MATCH = "\x00"


def _raw(value: bytes | str) -> bytes:
    """The client returns bytes; the str case only satisfies redis-py's union types."""
    return value if isinstance(value, bytes) else value.encode()


def _encode_placement(p: Placement) -> str:
    return f"{p.node_id}|{p.epoch}"


def _decode_placement(room: str, raw: bytes | str) -> Placement:
    text = raw.decode() if isinstance(raw, bytes) else raw
    node_id, _, epoch = text.rpartition("|")
    return Placement(room, node_id, int(epoch))


class RedisStore:
    """:class:`~trackyard.core.store.Store` on Redis.

    ``client`` must return bytes (``decode_responses=False``, as
    :func:`~trackyard.core.redisconn.connect_redis` makes it). The client may be shared with a
    :class:`~trackyard.core.redisbus.RedisBus`; :meth:`close` closes it only when
    ``owns_client`` is true.
    """

    def __init__(
        self, client: Redis, *, op_timeout: float = 5.0, owns_client: bool = False
    ) -> None:
        self._r = client
        self._op_timeout = op_timeout
        self._owns_client = owns_client
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._unseat = client.register_script(_UNSEAT)
        self._take_seat = client.register_script(_TAKE_SEAT)
        self._put_node = client.register_script(_PUT_NODE)
        self._beats = client.register_script(_BEATS)
        self._generation = client.register_script(_GENERATION)

    @asynccontextmanager
    async def _guard(self, what: str) -> AsyncIterator[None]:
        """Bound one operation in time and turn connection failures into one error type."""
        try:
            async with asyncio.timeout(self._op_timeout):
                yield
        except _UNAVAILABLE as exc:
            raise StoreUnavailableError(
                f"Redis store unavailable during {what}: {type(exc).__name__}: {exc}"
            ) from exc

    # rooms ------------------------------------------------------------------------------

    async def put_room(self, room: models.Room) -> None:
        async with self._guard("put_room"):
            await self._r.hset(keys.ROOMS, room.name, room.SerializeToString())

    async def get_room(self, name: str) -> models.Room | None:
        async with self._guard("get_room"):
            raw = await self._r.hget(keys.ROOMS, name)
        return None if raw is None else models.Room.FromString(_raw(raw))

    async def list_rooms(self, names: list[str] | None = None) -> list[models.Room]:
        async with self._guard("list_rooms"):
            if names:
                wanted = sorted(set(names))
                values = await self._r.hmget(keys.ROOMS, wanted)
                found = {n: v for n, v in zip(wanted, values, strict=True) if v is not None}
            else:
                found = {
                    _raw(k).decode(): v for k, v in (await self._r.hgetall(keys.ROOMS)).items()
                }
        return [models.Room.FromString(_raw(found[n])) for n in sorted(found)]

    async def delete_room(self, name: str) -> None:
        async with self._guard("delete_room"), self._r.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.ROOMS, name)
            pipe.delete(keys.participants(name), keys.seats(name))
            await pipe.execute()

    # participants -----------------------------------------------------------------------

    async def put_participant(self, room: str, participant: models.ParticipantInfo) -> None:
        async with self._guard("put_participant"):
            await self._r.hset(
                keys.participants(room), participant.identity, participant.SerializeToString()
            )

    async def get_participant(self, room: str, identity: str) -> models.ParticipantInfo | None:
        async with self._guard("get_participant"):
            raw = await self._r.hget(keys.participants(room), identity)
        return None if raw is None else models.ParticipantInfo.FromString(_raw(raw))

    async def list_participants(self, room: str) -> list[models.ParticipantInfo]:
        async with self._guard("list_participants"):
            raw = await self._r.hgetall(keys.participants(room))
        return [models.ParticipantInfo.FromString(_raw(raw[k])) for k in sorted(raw)]

    async def delete_participant(self, room: str, identity: str) -> None:
        async with self._guard("delete_participant"):
            await self._r.hdel(keys.participants(room), identity)

    # placement --------------------------------------------------------------------------

    async def claim_room(
        self, room: str, node_id: str, replace: Placement | None = None
    ) -> Placement:
        if replace is None:
            expected = ""
        elif replace.room != room:
            expected = _NO_MATCH
        else:
            expected = _encode_placement(replace)
        async with self._guard("claim_room"):
            raw = await self._claim(
                keys=[keys.PLACEMENTS, keys.EPOCHS], args=[room, node_id, expected]
            )
        return _decode_placement(room, raw)

    async def get_placement(self, room: str) -> Placement | None:
        async with self._guard("get_placement"):
            raw = await self._r.hget(keys.PLACEMENTS, room)
        return None if raw is None else _decode_placement(room, raw)

    async def release_room(self, room: str, node_id: str) -> bool:
        async with self._guard("release_room"):
            deleted = await self._release(keys=[keys.PLACEMENTS], args=[room, node_id])
        return bool(deleted)

    # seats ------------------------------------------------------------------------------

    async def put_seat(self, room: str, identity: str, node_id: str) -> None:
        async with self._guard("put_seat"):
            await self._r.hset(keys.seats(room), identity, node_id)

    async def take_seat(self, room: str, identity: str, node_id: str, cap: int) -> bool:
        async with self._guard("take_seat"):
            taken = await self._take_seat(keys=[keys.seats(room)], args=[identity, node_id, cap])
        return bool(taken)

    async def get_seat(self, room: str, identity: str) -> str | None:
        async with self._guard("get_seat"):
            raw = await self._r.hget(keys.seats(room), identity)
        return None if raw is None else _raw(raw).decode()

    async def list_seats(self, room: str) -> dict[str, str]:
        async with self._guard("list_seats"):
            raw = await self._r.hgetall(keys.seats(room))
        return {_raw(k).decode(): _raw(v).decode() for k, v in raw.items()}

    async def delete_seat(self, room: str, identity: str, node_id: str) -> bool:
        async with self._guard("delete_seat"):
            deleted = await self._unseat(keys=[keys.seats(room)], args=[identity, node_id])
        return bool(deleted)

    # nodes ------------------------------------------------------------------------------

    async def put_node(self, record: NodeRecord, ttl: float) -> None:
        ttl_ms = max(1, round(ttl * 1000))
        async with self._guard("put_node"):
            await self._put_node(
                keys=[keys.node(record.id), keys.NODES, keys.HEARTBEATS],
                args=[record.id, record.model_dump_json(), ttl_ms],
            )

    async def get_node(self, node_id: str) -> NodeRecord | None:
        async with self._guard("get_node"):
            raw = await self._r.get(keys.node(node_id))
        return None if raw is None else NodeRecord.model_validate_json(raw)

    async def list_nodes(self) -> list[NodeRecord]:
        async with self._guard("list_nodes"):
            # Prune index entries whose record has expired; the record keys expire by TTL.
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.zremrangebyscore(keys.NODES, "-inf", time.time())
                pipe.zrange(keys.NODES, 0, -1)
                _, members = await pipe.execute()
            ids = sorted(m.decode() for m in members)
            if not ids:
                return []
            values = await self._r.mget([keys.node(i) for i in ids])
        # A record may expire between the index read and MGET: skip it.
        return [NodeRecord.model_validate_json(v) for v in values if v is not None]

    async def delete_node(self, node_id: str) -> None:
        async with self._guard("delete_node"), self._r.pipeline(transaction=True) as pipe:
            pipe.delete(keys.node(node_id))
            pipe.zrem(keys.NODES, node_id)
            pipe.hdel(keys.HEARTBEATS, node_id)
            await pipe.execute()

    async def node_heartbeats(self, node_ids: list[str]) -> dict[str, float]:
        if not node_ids:
            return {}
        async with self._guard("node_heartbeats"):
            now_ms, *beats = await self._beats(keys=[keys.HEARTBEATS], args=list(node_ids))
        return {
            n: (int(now_ms) - int(b)) / 1000
            for n, b in zip(node_ids, beats, strict=True)
            if b is not None
        }

    # signal edges -----------------------------------------------------------------------

    async def put_edge(self, edge_id: str, ttl: float) -> None:
        async with self._guard("put_edge"):
            await self._r.set(keys.edge(edge_id), b"1", px=max(1, round(ttl * 1000)))

    async def edge_alive(self, edge_id: str) -> bool:
        async with self._guard("edge_alive"):
            return bool(await self._r.exists(keys.edge(edge_id)))

    async def generation(self) -> str:
        async with self._guard("generation"):
            raw = await self._generation(
                keys=[keys.GENERATION], args=[f"{uuid.uuid4().hex}|{int(time.time())}"]
            )
        return _raw(raw).decode()

    # lifecycle --------------------------------------------------------------------------

    async def ping(self) -> bool:
        """True when Redis answers within a second; never raises."""
        try:
            async with asyncio.timeout(1.0):
                return bool(await self._r.ping())
        except Exception:
            return False

    async def close(self) -> None:
        if self._owns_client:
            await self._r.aclose()
