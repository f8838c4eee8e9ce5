"""Draining a signal edge (SIGTERM) behind HAProxy, with the real Python SDK and live media.

Both clients' sockets are on the edge that drains (HAProxy ``balance first``). The edge
detaches their sessions on the node and closes their sockets with 1001; the SDKs resume
through HAProxy, which takes them to the other edge (the draining one refuses upgrades with
503, retried elsewhere, and fails ``/readyz``). Verdict: same participant and track SIDs,
nobody saw anyone leave, decoded media never stopped for longer than ``DRAIN_GAP`` in either
direction, and the drained edge exited 0 on its own, before its deadline (its sockets were
gone), without an error in any log.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from livekit import rtc

from tests.support.chaos import Peer, all_see_media, bad_log_lines, video_peer
from tests.support.cluster import Cluster, cluster_fixture, eventually, participant_identities
from tests.support.haproxy import HAProxy
from tests.support.sdk import EventWaiter

pytestmark = pytest.mark.sdk

DRAIN_DEADLINE = 8.0  # signal.drain_deadline here; the clients leave long before it
DRAIN_GAP = 1.5  # seconds without a decoded frame, either direction, across the drain
FRAMES = 5

cluster = cluster_fixture(
    sfu_regions=["us-east", "us-east"],
    edge_regions=["us-east", "us-east"],
    routers_count=1,
    overrides={"signal": {"drain_deadline": DRAIN_DEADLINE}},
)


def _sids(room: rtc.Room) -> tuple[str, frozenset[str], dict[str, str]]:
    """The client's own SID, its tracks' SIDs, and the SIDs it knows the others by."""
    local = room.local_participant
    return (
        local.sid,
        frozenset(local.track_publications),
        {p.identity: p.sid for p in room.remote_participants.values()},
    )


async def _drain_and_check(
    cluster: Cluster, lb: HAProxy, peers: list[Peer], victim: int, room: str
) -> None:
    """SIGTERM edge ``victim`` (it holds both sockets) and check the resume and the exit."""
    edge, other = cluster.edges[victim], cluster.edges[1 - victim]
    a, b = peers
    resumed_before = other.logs().count("session resumed")
    sids = {p.identity: _sids(p.room) for p in peers}
    left = [EventWaiter(p.room, "participant_disconnected") for p in peers]
    reconnected = [EventWaiter(p.room, "reconnected") for p in peers]

    async def exit_code() -> tuple[int, float]:
        code = await asyncio.to_thread(edge.wait, DRAIN_DEADLINE + 5)
        return code, time.monotonic()

    drained_at = time.monotonic()
    edge.signal(signal.SIGTERM)
    exited = asyncio.create_task(exit_code())
    for waiter in reconnected:
        await waiter.wait(timeout=DRAIN_DEADLINE)
    resumed_at = time.monotonic()  # the SDKs' "reconnected": after their PC checks
    code, exited_at = await asyncio.wait_for(exited, DRAIN_DEADLINE + 10)
    back = await all_see_media(peers, resumed_at, count=FRAMES, timeout=5)

    assert code == 0, edge.logs()
    assert exited_at - drained_at < DRAIN_DEADLINE, "the edge waited for its deadline"
    assert "drained: no client socket left" in edge.logs()
    assert other.logs().count("session resumed") == resumed_before + 2
    for p, q in ((a, b), (b, a)):
        gap = p.log.max_gap(q.identity, drained_at, back)
        print(
            f"edge {victim} drained behind HAProxy: resumed after "
            f"{resumed_at - drained_at:.2f}s, edge exited after {exited_at - drained_at:.2f}s, "
            f"{p.identity} lost {q.identity}'s media for at most {gap:.3f}s"
        )
        assert gap < DRAIN_GAP, f"{p.identity} lost {q.identity}'s media for {gap:.2f}s"
    seen_leaving = [(p.identity, p.sid, p.disconnect_reason) for w in left for (p,) in w.calls]
    assert not seen_leaving, f"someone saw a resuming participant leave: {seen_leaving}"
    assert {p.identity: _sids(p.room) for p in peers} == sids  # resumed, not rejoined
    assert await participant_identities(other, room) == ["a", "b"]
    assert lb.alive()
    for proc in cluster.all_processes():
        if proc is not edge:
            assert proc.alive(), proc.logs()


async def test_sigterm_edge_clients_resume_elsewhere_without_media_gap(cluster: Cluster) -> None:
    """Drain edge 0, bring it back, then drain edge 1: the second drain checks that the first
    left the SDKs able to resume again (an SDK that counted the first as a failed resume
    would rejoin from scratch the next time: new SIDs)."""
    room = "edge-drain"
    e0, e1 = cluster.edges
    with HAProxy([e0.port, e1.port]) as lb:
        async with video_peer(lb.ws_url, "a", room) as a, video_peer(lb.ws_url, "b", room) as b:
            await all_see_media([a, b], 0.0, count=FRAMES, timeout=15)
            assert "session started" in e0.logs() and "session started" not in e1.logs()
            await _drain_and_check(cluster, lb, [a, b], 0, room)
            e0.start()
            await eventually(lambda: lb.states()[0] == "UP", timeout=5, what="e0 back in HAProxy")
            await _drain_and_check(cluster, lb, [a, b], 1, room)
    bad = bad_log_lines(cluster.logs(full=True))
    assert not bad, "\n".join(bad)
