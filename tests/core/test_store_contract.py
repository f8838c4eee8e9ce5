"""One contract, two stores: every test runs against MemoryStore and RedisStore."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from livekit.protocol import models
from redis.asyncio import Redis

from trackyard.core import keys
from trackyard.core.node import NodeRecord, NodeState, NodeStats
from trackyard.core.redisstore import RedisStore
from trackyard.core.store import Placement, Store


def room(name: str, **kw: object) -> models.Room:
    return models.Room(name=name, sid=f"RM_{name}", **kw)  # type: ignore[arg-type]


def participant(identity: str, **kw: object) -> models.ParticipantInfo:
    return models.ParticipantInfo(identity=identity, sid=f"PA_{identity}", **kw)  # type: ignore[arg-type]


def node(node_id: str, **kw: Any) -> NodeRecord:
    return NodeRecord(id=node_id, address=f"{node_id}:7881", **kw)


async def wait_until_gone(store: Store, node_id: str, timeout: float = 3.0) -> float:
    """Seconds until get_node(node_id) is None (TTL expiry has no event to await)."""
    start = time.monotonic()
    while await store.get_node(node_id) is not None:
        assert time.monotonic() - start < timeout, f"{node_id} did not expire in {timeout}s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


# rooms ----------------------------------------------------------------------------------


async def test_room_round_trip(store: Store) -> None:
    r = room("alpha", metadata="m", max_participants=5, empty_timeout=30)
    r.enabled_codecs.add(mime="video/vp8")
    await store.put_room(r)
    assert await store.get_room("alpha") == r
    assert await store.get_room("missing") is None
    r.metadata = "changed"
    await store.put_room(r)
    got = await store.get_room("alpha")
    assert got is not None and got.metadata == "changed"


async def test_list_rooms_sorted_and_filtered(store: Store) -> None:
    for name in ["c", "a", "b"]:
        await store.put_room(room(name))
    assert [r.name for r in await store.list_rooms()] == ["a", "b", "c"]
    assert [r.name for r in await store.list_rooms(["c", "zz", "a"])] == ["a", "c"]
    assert [r.name for r in await store.list_rooms([])] == ["a", "b", "c"]
    assert await store.list_rooms(["zz"]) == []


async def test_delete_room_drops_participants(store: Store) -> None:
    await store.put_room(room("r"))
    await store.put_participant("r", participant("p1"))
    await store.put_room(room("other"))
    await store.put_participant("other", participant("p1"))
    await store.delete_room("r")
    await store.delete_room("never-existed")
    assert await store.get_room("r") is None
    assert await store.list_participants("r") == []
    assert await store.get_participant("other", "p1") is not None


# participants ---------------------------------------------------------------------------


async def test_participant_round_trip_and_order(store: Store) -> None:
    p = participant("zed", name="Zed", metadata="{}", state=models.ParticipantInfo.ACTIVE)
    p.tracks.add(sid="TR_1", name="cam", type=models.TrackType.VIDEO)
    p.attributes["k"] = "v"
    await store.put_participant("r", p)
    await store.put_participant("r", participant("amy"))
    assert await store.get_participant("r", "zed") == p
    assert await store.get_participant("r", "nobody") is None
    assert await store.get_participant("other-room", "zed") is None
    assert [x.identity for x in await store.list_participants("r")] == ["amy", "zed"]
    await store.delete_participant("r", "zed")
    await store.delete_participant("r", "nobody")
    assert [x.identity for x in await store.list_participants("r")] == ["amy"]


# placement ------------------------------------------------------------------------------


async def test_first_claim_wins_and_later_claims_see_it(store: Store) -> None:
    first = await store.claim_room("r", "ND_a")
    assert first == Placement("r", "ND_a", first.epoch) and first.epoch >= 1
    assert await store.claim_room("r", "ND_b") == first
    assert await store.get_placement("r") == first
    assert await store.get_placement("other") is None


async def test_concurrent_claims_have_exactly_one_winner(store: Store) -> None:
    nodes = [f"ND_{i}" for i in range(50)]
    results = await asyncio.gather(*(store.claim_room("race", n) for n in nodes))
    assert len(set(results)) == 1
    winner = results[0]
    assert winner.node_id in nodes
    assert await store.get_placement("race") == winner


async def test_epochs_grow_across_release_and_reclaim(store: Store) -> None:
    seen = []
    for i in range(5):
        p = await store.claim_room("r", f"ND_{i}")
        assert p.node_id == f"ND_{i}"
        seen.append(p.epoch)
        assert await store.release_room("r", f"ND_{i}")
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


async def test_replace_takes_over_only_from_the_expected_placement(store: Store) -> None:
    old = await store.claim_room("r", "ND_dead")
    new = await store.claim_room("r", "ND_b", replace=old)
    assert new.node_id == "ND_b" and new.epoch > old.epoch
    # A second router still holding the stale placement loses to the first takeover.
    assert await store.claim_room("r", "ND_c", replace=old) == new
    # So does a replace that names another room or epoch.
    assert await store.claim_room("r", "ND_c", replace=Placement("x", "ND_b", new.epoch)) == new
    assert await store.claim_room("r", "ND_c", replace=Placement("r", "ND_b", new.epoch + 1)) == new
    assert await store.get_placement("r") == new


async def test_replace_on_a_free_room_claims_it(store: Store) -> None:
    stale = Placement("r", "ND_gone", 7)
    p = await store.claim_room("r", "ND_b", replace=stale)
    assert p.node_id == "ND_b"


async def test_concurrent_replacements_have_exactly_one_winner(store: Store) -> None:
    old = await store.claim_room("r", "ND_dead")
    results = await asyncio.gather(
        *(store.claim_room("r", f"ND_{i}", replace=old) for i in range(30))
    )
    assert len(set(results)) == 1 and results[0].epoch > old.epoch


async def test_release_is_compare_and_delete(store: Store) -> None:
    assert not await store.release_room("r", "ND_a")
    p = await store.claim_room("r", "ND_a")
    assert not await store.release_room("r", "ND_b")
    assert not await store.release_room("r", "ND_")  # a prefix of the owner is not the owner
    assert await store.get_placement("r") == p
    assert await store.release_room("r", "ND_a")
    assert await store.get_placement("r") is None
    assert not await store.release_room("r", "ND_a")


async def test_node_ids_with_separator_characters(store: Store) -> None:
    p = await store.claim_room("r|x", "ND_a|b")
    assert p == Placement("r|x", "ND_a|b", p.epoch)
    assert await store.get_placement("r|x") == p
    assert not await store.release_room("r|x", "ND_a")
    assert await store.release_room("r|x", "ND_a|b")


# seats ----------------------------------------------------------------------------------


async def test_seat_round_trip_per_room(store: Store) -> None:
    assert await store.get_seat("r", "p1") is None
    assert await store.list_seats("r") == {}
    await store.put_seat("r", "p1", "ND_a")
    await store.put_seat("r", "p2", "ND_b")
    await store.put_seat("other", "p1", "ND_c")
    assert await store.get_seat("r", "p1") == "ND_a"
    assert await store.list_seats("r") == {"p1": "ND_a", "p2": "ND_b"}
    await store.put_seat("r", "p1", "ND_b")  # a rejoin elsewhere moves the seat
    assert await store.list_seats("r") == {"p1": "ND_b", "p2": "ND_b"}
    assert await store.list_seats("other") == {"p1": "ND_c"}


async def test_take_seat_holds_a_nodes_share_when_joins_race(store: Store) -> None:
    await store.put_seat("r", "p1", "ND_a")
    # ten joins decided at once that ND_a has room for 2 more (cap 3): only two get it
    taken = await asyncio.gather(*(store.take_seat("r", f"j{i}", "ND_a", 3) for i in range(10)))
    assert sum(taken) == 2
    seats = await store.list_seats("r")
    assert sum(1 for node in seats.values() if node == "ND_a") == 3
    assert await store.take_seat("r", "p1", "ND_a", 3)  # itself does not count against it
    assert await store.take_seat("r", "p9", "ND_b", 3)
    assert await store.take_seat("r", "p10", "ND_a", 0)  # no cap: an overfill on purpose
    assert (await store.list_seats("r"))["p10"] == "ND_a"


async def test_delete_seat_is_compare_and_delete(store: Store) -> None:
    assert not await store.delete_seat("r", "p1", "ND_a")
    await store.put_seat("r", "p1", "ND_a|b")
    await store.put_seat("r", "p2", "ND_a")
    assert not await store.delete_seat("r", "p1", "ND_a")  # moved on: not ours to delete
    assert not await store.delete_seat("r", "p1", "ND_a|")
    assert await store.get_seat("r", "p1") == "ND_a|b"
    assert await store.delete_seat("r", "p1", "ND_a|b")
    assert not await store.delete_seat("r", "p1", "ND_a|b")
    assert await store.list_seats("r") == {"p2": "ND_a"}


async def test_delete_room_forgets_its_seats(store: Store) -> None:
    await store.put_room(room("r"))
    await store.put_seat("r", "p1", "ND_a")
    await store.put_seat("kept", "p1", "ND_a")
    await store.delete_room("r")
    assert await store.list_seats("r") == {}
    assert await store.get_seat("r", "p1") is None
    assert await store.get_seat("kept", "p1") == "ND_a"


# nodes ----------------------------------------------------------------------------------


async def test_node_round_trip(store: Store) -> None:
    rec = node(
        "ND_one",
        region="eu",
        state=NodeState.SHUTTING_DOWN,
        stats=NodeStats(cpus=8, cpu_load=0.25, sysload=0.125, rooms=3, bytes_in_per_sec=1.5e6),
    )
    await store.put_node(rec, ttl=30)
    assert await store.get_node("ND_one") == rec
    assert await store.get_node("ND_missing") is None
    rec2 = rec.model_copy(update={"state": NodeState.SERVING})
    await store.put_node(rec2, ttl=30)
    assert await store.get_node("ND_one") == rec2


async def test_list_nodes_sorted(store: Store) -> None:
    for i in [3, 1, 2]:
        await store.put_node(node(f"ND_{i}"), ttl=30)
    assert [n.id for n in await store.list_nodes()] == ["ND_1", "ND_2", "ND_3"]
    await store.delete_node("ND_2")
    await store.delete_node("ND_absent")
    assert [n.id for n in await store.list_nodes()] == ["ND_1", "ND_3"]


async def test_node_expires_after_its_ttl(store: Store) -> None:
    await store.put_node(node("ND_short"), ttl=0.3)
    await store.put_node(node("ND_long"), ttl=30)
    assert {n.id for n in await store.list_nodes()} == {"ND_short", "ND_long"}
    took = await wait_until_gone(store, "ND_short")
    assert 0.1 < took < 2.0
    assert [n.id for n in await store.list_nodes()] == ["ND_long"]


async def test_put_node_renews_the_ttl(store: Store) -> None:
    await store.put_node(node("ND_a"), ttl=0.3)
    await store.put_node(node("ND_a"), ttl=30)
    await store.put_node(node("ND_b"), ttl=0.3)
    await wait_until_gone(store, "ND_b")
    assert await store.get_node("ND_a") is not None


async def test_ping(store: Store) -> None:
    assert await store.ping() is True


# Redis only -----------------------------------------------------------------------------


@pytest.fixture
async def redis_store(redis_client_factory: Callable[[], Redis]) -> RedisStore:
    client = redis_client_factory()
    await client.flushdb()
    return RedisStore(client)


async def test_claims_from_separate_connections_have_one_winner(
    redis_store: RedisStore, redis_client_factory: Callable[[], Redis]
) -> None:
    # Separate clients = separate connection pools, as separate router processes would have.
    stores = [RedisStore(redis_client_factory()) for _ in range(5)]
    for round_no in range(10):
        name = f"race-{round_no}"
        results = await asyncio.gather(
            *(stores[i % 5].claim_room(name, f"ND_{i}") for i in range(50))
        )
        assert len(set(results)) == 1, results
        assert await redis_store.get_placement(name) == results[0]


async def test_expired_nodes_are_pruned_from_the_index(
    redis_store: RedisStore, redis_client_factory: Callable[[], Redis]
) -> None:
    client = redis_client_factory()
    await redis_store.put_node(node("ND_short"), ttl=0.2)
    await redis_store.put_node(node("ND_long"), ttl=30)
    assert await client.zcard(keys.NODES) == 2
    assert 0 < await client.pttl(keys.node("ND_short")) <= 200
    await wait_until_gone(redis_store, "ND_short")
    await redis_store.list_nodes()
    assert await client.zrange(keys.NODES, 0, -1) == [b"ND_long"]


async def test_records_are_stored_as_bytes_in_hashes(
    redis_store: RedisStore, redis_client_factory: Callable[[], Redis]
) -> None:
    client = redis_client_factory()
    r = room("bytes")
    await redis_store.put_room(r)
    assert await client.hget(keys.ROOMS, "bytes") == r.SerializeToString()
    p = await redis_store.claim_room("bytes", "ND_x")
    assert await client.hget(keys.PLACEMENTS, "bytes") == f"ND_x|{p.epoch}".encode()


# liveness ---------------------------------------------------------------------------------


async def test_node_heartbeats_on_the_store_clock(store: Store) -> None:
    await store.put_node(node("ND_a"), ttl=30)
    await asyncio.sleep(0.2)
    await store.put_node(node("ND_b"), ttl=30)
    ages = await store.node_heartbeats(["ND_a", "ND_b", "ND_never"])
    assert set(ages) == {"ND_a", "ND_b"}
    assert 0.15 <= ages["ND_a"] - ages["ND_b"] <= 1.0
    assert 0 <= ages["ND_b"] < 0.5
    await store.delete_node("ND_a")
    assert set(await store.node_heartbeats(["ND_a", "ND_b"])) == {"ND_b"}
    assert await store.node_heartbeats([]) == {}


async def test_edge_registration_expires(store: Store) -> None:
    assert not await store.edge_alive("ED_x")
    await store.put_edge("ED_x", ttl=0.2)
    assert await store.edge_alive("ED_x")
    start = time.monotonic()
    while await store.edge_alive("ED_x"):
        assert time.monotonic() - start < 3, "edge registration did not expire"
        await asyncio.sleep(0.02)


async def test_generation_is_stable_until_the_store_forgets(store: Store) -> None:
    first = await store.generation()
    assert first and await store.generation() == first
    if isinstance(store, RedisStore):  # Redis restarted empty: a new generation
        await store._r.flushall()
        assert await store.generation() not in ("", first)
