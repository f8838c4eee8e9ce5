"""The edge's node watch: a node counts as gone only after its record stayed away a while.

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

    async def get_node(self, node_id: str) -> NodeRecord | None:
        if self.down:
            raise ConnectionError("store down")
        return await super().get_node(node_id)


async def test_missing_record_evicts_only_after_grace() -> None:
    store = FlakyStore()
    watch = NodeWatch(store, grace=GRACE)
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

    # Gone for longer than the grace: its sessions are sent away, once.
    await asyncio.sleep(GRACE + 0.05)
    await watch.check_once()
    assert evicted == ["host node ND_a is gone"]
    watch.discard("ND_a", "SE_1")
    assert watch.idle.is_set()
