"""Draining under live media, with the real SDK: decoded frames in every pair are the verdict.

Without a deadline the draining node keeps its room, admits a newcomer to it, and everyone
decodes everyone; it exits 0 when the last one leaves. With ``node.drain_deadline`` the
participants still there at the deadline are moved: they rejoin on another node and decode
each other again within the bound. Either way: no process died unexpectedly, no ghost, no
error in any log.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.support.chaos import all_see_media, bad_log_lines, video_peer
from tests.support.cluster import Cluster, cluster_fixture, eventually, participant_identities

pytestmark = pytest.mark.sdk

FRAMES = 5
DEADLINE = 2.0
MOVED_BOUND = DEADLINE + 6.0  # deadline + rejoin elsewhere + first decoded frames (2 cores)

# Spanning rooms drain by moving to their other nodes: tests/cluster/test_span_failover.py.
cluster = cluster_fixture(
    sfu_regions=["us-east", "us-east"],
    edge_regions=["us-east"],
    routers_count=1,
    overrides={"span": {"enabled": False}},  # rooms pinned to one node (LiveKit's model)
)


def _no_errors(cluster: Cluster) -> None:
    bad = bad_log_lines(cluster.logs(full=True))
    assert not bad, "\n".join(bad)


async def test_drain_without_deadline_newcomer_gets_media(cluster: Cluster) -> None:
    room = "drain-media"
    url = cluster.edges[0].ws_url
    async with video_peer(url, "a", room) as a, video_peer(url, "b", room) as b:
        await all_see_media([a, b], 0.0, count=FRAMES, timeout=15)
        host = cluster.host_index(room)
        assert host is not None
        node = cluster.sfus[host]
        node.signal(signal.SIGTERM)
        await eventually(
            lambda: (
                (cluster.stored_record(cluster.node_ids[host]) or {}).get("state")
                == "SHUTTING_DOWN"
            ),
            timeout=3,
            what="the node to drain",
        )
        drained_at = time.monotonic()
        async with video_peer(url, "c", room) as c:
            assert cluster.host_index(room) == host  # the newcomer joined the draining node
            await all_see_media([a, b, c], drained_at, count=FRAMES, timeout=15)
            for p, q in ((a, b), (b, a)):
                gap = p.log.max_gap(q.identity, drained_at, time.monotonic())
                assert gap < 1.0, f"{p.identity} lost {q.identity}'s media for {gap:.2f}s"
            assert await participant_identities(cluster.edges[0], room) == ["a", "b", "c"]
    assert await asyncio.to_thread(node.wait, 15) == 0  # the last one left: it exits
    assert cluster.placement(room) is None
    for proc in cluster.all_processes():
        if proc is not node:
            assert proc.alive(), proc.logs()
    _no_errors(cluster)
    node.start()
    cluster.node_ids[host] = cluster.sfu_record(host)["id"]


async def test_drain_deadline_moves_everyone_with_media(cluster: Cluster) -> None:
    """A third node with a drain deadline hosts the room (the others report load, so the
    selector picks it); after SIGTERM a newcomer still joins there; at the deadline all three
    move to another node and decode each other again within the bound."""
    for i in range(len(cluster.sfus)):
        cluster.set_load(i, cpu_load=0.9, sysload=0.9)
    cluster.overrides["node"] = {**cluster.overrides.get("node", {}), "drain_deadline": DEADLINE}
    try:
        index = cluster.add_sfu("us-east")
    finally:
        del cluster.overrides["node"]["drain_deadline"]
    await eventually(
        lambda: all(
            (cluster.stored_record(cluster.node_ids[i]) or {}).get("stats", {}).get("sysload", 0)
            >= 0.9
            for i in range(index)
        ),
        timeout=10,
        what="the loaded nodes to report their load",
    )
    room = "drain-deadline-media"
    url = cluster.edges[0].ws_url
    async with video_peer(url, "a", room) as a, video_peer(url, "b", room) as b:
        await all_see_media([a, b], 0.0, count=FRAMES, timeout=15)
        assert cluster.host_index(room) == index
        for i in range(index):
            cluster.set_load(i)  # room for the movers elsewhere
        node = cluster.sfus[index]
        node.signal(signal.SIGTERM)
        signalled = time.monotonic()
        async with video_peer(url, "c", room) as c:
            assert cluster.host_index(room) == index  # still admitted before the deadline
            await asyncio.to_thread(node.wait, DEADLINE + 10)
            back = await all_see_media([a, b, c], signalled + DEADLINE, count=FRAMES, timeout=20)
            assert back - signalled < MOVED_BOUND, f"media back {back - signalled:.2f}s after"
            new_host = cluster.host_index(room)
            assert new_host is not None and new_host != index
            assert await participant_identities(cluster.edges[0], room) == ["a", "b", "c"]
    assert node.proc is not None and node.proc.returncode == 0
    _no_errors(cluster)
