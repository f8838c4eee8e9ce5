"""Draining a signal edge (SIGTERM) behind HAProxy, with the real Python SDK and live media.

Both clients' sockets are on the edge that drains (HAProxy ``balance first``). The edge
detaches their sessions on the node and closes their sockets with 1001; the SDKs resume
through HAProxy, which takes them to the other edge (the draining one refuses upgrades with
503, retried elsewhere, and fails ``/readyz``). Verdict: same participant and track SIDs,
nobody saw anyone leave, decoded media never stopped for longer than ``DRAIN_GAP`` in either
direction, and the drained edge exited 0 on its own, before its deadline (its sockets were
gone), without an error in any log. An upgrade still waiting (for a frozen router) holds
the drain until the deadline (then exit 0); a second signal ends the drain at once (exit 1).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.chaos import Peer, all_see_media, bad_log_lines, video_peer
from tests.support.cluster import Cluster, cluster_fixture, eventually, participant_identities
from tests.support.haproxy import HAProxy
from tests.support.sdk import EventWaiter, sids, token
from tests.support.trackyard import TrackyardProcess

pytestmark = pytest.mark.sdk

DRAIN_DEADLINE = 1.5  # signal.drain_deadline here; SDK clients are gone long before it
DRAIN_GAP = 1.5  # seconds without a decoded frame, either direction, across the drain
FRAMES = 5

cluster = cluster_fixture(
    sfu_regions=["us-east", "us-east"],
    edge_regions=["us-east", "us-east"],
    routers_count=1,
    overrides={"signal": {"drain_deadline": DRAIN_DEADLINE}},
)


async def _drain_and_check(
    cluster: Cluster, lb: HAProxy, peers: list[Peer], victim: int, room: str
) -> None:
    """SIGTERM edge ``victim`` (it holds both sockets) and check the resume and the exit."""
    edge, other = cluster.edges[victim], cluster.edges[1 - victim]
    a, b = peers
    resumed_before = other.logs().count("session resumed")
    before = {p.identity: sids(p.room) for p in peers}
    left = [EventWaiter(p.room, "participant_disconnected") for p in peers]
    reconnected = [EventWaiter(p.room, "reconnected") for p in peers]

    async def exit_code() -> tuple[int, float]:
        code = await asyncio.to_thread(edge.wait, DRAIN_DEADLINE + 5)
        return code, time.monotonic()

    drained_at = time.monotonic()
    edge.signal(signal.SIGTERM)
    exited = asyncio.create_task(exit_code())
    for waiter in reconnected:
        await waiter.wait(timeout=10)  # the SDK's resume takes ~3 s (its PC checks)
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
    assert {p.identity: sids(p.room) for p in peers} == before  # resumed, not rejoined
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
    e1.start()
    bad = bad_log_lines(cluster.logs(full=True))
    assert not bad, "\n".join(bad)


@contextlib.asynccontextmanager
async def _upgrade_waiting(cluster: Cluster, port: int, identity: str) -> AsyncIterator[None]:
    """A client's upgrade the edge holds open: it waits for the router, which is frozen
    (SIGSTOP; the edge's router calls time out after 3 s). The router thaws on exit."""
    router = cluster.routers[0]
    assert router.proc is not None
    key = base64.b64encode(os.urandom(16)).decode()
    router.proc.send_signal(signal.SIGSTOP)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                f"GET /rtc?access_token={token(identity, 'edge-drain-held')} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            await eventually(
                lambda: _unread_bytes_at(router.ready_port),
                timeout=5,
                what="the edge's placement call to reach the frozen router",
            )
            yield
    finally:
        router.proc.send_signal(signal.SIGCONT)


def _unread_bytes_at(port: int) -> bool:
    """Some TCP connection to ``port`` on this host has data its owner did not read
    (``/proc/net/tcp``): the edge's request reached the frozen router."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        rx_queue = int(fields[4].split(":")[1], 16)
        if local_port == port and fields[3] == "01" and rx_queue > 0:
            return True
    return False


async def _exit(proc: TrackyardProcess, timeout: float) -> tuple[int, float]:
    code = await asyncio.wait_for(asyncio.to_thread(proc.wait, timeout), timeout + 1)
    return code, time.monotonic()


async def _draining(edge: TrackyardProcess) -> None:
    await eventually(
        lambda: "draining: sending clients elsewhere" in edge.logs(),
        timeout=5,
        what="the drain to start",
    )


async def test_socket_still_opening_holds_the_edge_until_the_deadline(cluster: Cluster) -> None:
    edge = cluster.edges[0]
    async with _upgrade_waiting(cluster, edge.port, "held"):
        drained_at = time.monotonic()
        edge.signal(signal.SIGTERM)
        await _draining(edge)
        code, exited_at = await _exit(edge, DRAIN_DEADLINE + 10)
    print(f"held upgrade: edge exited {exited_at - drained_at:.2f}s after SIGTERM")
    assert code == 0, edge.logs()
    # at the deadline, not when the held upgrade gives up (router timeout 3 s)
    assert DRAIN_DEADLINE <= exited_at - drained_at < DRAIN_DEADLINE + 1.0
    assert "drain deadline passed" in edge.logs()
    edge.start()


async def test_second_signal_ends_the_drain_at_once(cluster: Cluster) -> None:
    edge = cluster.edges[0]
    async with _upgrade_waiting(cluster, edge.port, "held2"):
        edge.signal(signal.SIGTERM)
        await _draining(edge)
        forced_at = time.monotonic()
        edge.signal(signal.SIGTERM)
        code, exited_at = await _exit(edge, DRAIN_DEADLINE + 10)
    assert code == 1, edge.logs()
    print(f"second signal: edge exited after {exited_at - forced_at:.2f}s")
    assert exited_at - forced_at < DRAIN_DEADLINE
    edge.start()
