"""The edge's node watch: a node counts as gone only after its record stayed away a while,
or when its heartbeat lags its peers' (missed heartbeats).

A Redis that restarted empty holds no node records until each node's next report; the watch
must not send the clients of a live node away in that gap (seen in the Redis outage test).
"""

from __future__ import annotations

import asyncio

from trackyard.core.node import NodeRecord
from trackyard.core.store import MemoryStore
from trackyard.signal.nodewatch import NodeWatch

GRACE = 0.3


class FlakyStore(MemoryStore):
    down = False

    async def list_nodes(self) -> list[NodeRecord]:
        if self.down:
            raise ConnectionError("store down")
        return await super().list_nodes()


async def test_missing_record_evicts_only_after_grace() -> None:
    store = FlakyStore()
    watch = NodeWatch(store, grace=GRACE, dead_after=GRACE)
    evicted: list[str] = []

    async def evict(reason: str) -> None:
        evicted.append(reason)

    await store.put_node(NodeRecord(id="ND_a"), ttl=60)
    watch.add("ND_a", "SE_1", evict)
    await watch.check_once()
    assert evicted == []

    # The record vanishes (store restarted empty) and comes back within the grace: no verdict.
    await store.delete_node("ND_a")
    await watch.check_once()
    assert evicted == []
    await store.put_node(NodeRecord(id="ND_a"), ttl=60)
    await asyncio.sleep(GRACE + 0.05)
    await watch.check_once()
    assert evicted == []

    # An unreachable store gives no verdict and restarts the clock.
    await store.delete_node("ND_a")
    await watch.check_once()
    await asyncio.sleep(GRACE + 0.05)
    store.down = True
    await watch.check_once()
    store.down = False
    await watch.check_once()
    assert evicted == []

    # Gone for longer than the grace once the store settled: its sessions are sent away, once.
    await asyncio.sleep(GRACE + 0.05)
    await watch.check_once()  # settled: the record's absence starts to count
    assert evicted == []
    await asyncio.sleep(GRACE + 0.05)
    await watch.check_once()
    assert evicted == ["host node ND_a is dead (record expired)"]
    watch.discard("ND_a", "SE_1")
    assert watch.idle.is_set()


async def test_missed_heartbeats_evict_but_a_stalled_store_does_not() -> None:
    """Dead = lagging the peers' heartbeats; everyone equally late (a stalled store) is not."""
    store = FlakyStore()
    watch = NodeWatch(store, grace=GRACE, dead_after=GRACE)
    evicted: list[str] = []

    async def evict(reason: str) -> None:
        evicted.append(reason)

    for node_id in ("ND_a", "ND_b"):
        await store.put_node(NodeRecord(id=node_id), ttl=60)
    watch.add("ND_a", "SE_1", evict)
    await asyncio.sleep(GRACE + 0.05)  # nobody beat: both equally late
    await watch.check_once()
    assert evicted == []
    await store.put_node(NodeRecord(id="ND_a"), ttl=60)
    await store.put_node(NodeRecord(id="ND_b"), ttl=60)
    await watch.check_once()
    assert evicted == []
    await asyncio.sleep(GRACE + 0.05)
    await store.put_node(NodeRecord(id="ND_b"), ttl=60)  # only b beats: a lags by > GRACE
    await watch.check_once()
    assert evicted == ["host node ND_a is dead (missed heartbeats)"]
