"""The browser SDK behind HAProxy loses its signal edge: kill -9, then a drain (SIGTERM).

One SFU node, two signal edges, one router; HAProxy (``balance first``, as in test_chaos and
test_edge_drain) in front of the edges. A page (livekit-client in Chromium, fake camera and
microphone) and a Python SDK peer (pattern video) join through HAProxy's URL, so both sockets
sit on the first healthy edge. Then:

1. kill -9 of the edge holding the page's socket: the page resumes through the other edge
   (``Reconnected``, the engine's ``resuming`` path, never ``restarting``; same local sid).
2. The killed edge comes back; SIGTERM to the edge now holding the page's socket: the page
   resumes through the restarted edge the same way and the drained edge exits 0 by itself,
   before its deadline.

Each time: the Python peer never saw the page leave (nor the page the peer), both keep their
sids, and decoded video never stops for longer than ``MAX_GAP`` either way: frames the page
decodes from the peer (its frame clock) and frames the peer decodes from the page. The SDKs
resume on the same URL; the media path never went through an edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from typing import Any

import pytest
from livekit import rtc

from tests.support.browser import (
    AnyFrameClock,
    Browser,
    Page,
    any_frame_clock,
    browser_fixture,
)
from tests.support.chaos import bad_log_lines
from tests.support.cluster import Cluster, cluster_fixture, eventually, participant_identities
from tests.support.haproxy import HAProxy
from tests.support.media import pattern_video
from tests.support.sdk import EventWaiter, connected, sids
from tests.support.trackyard import TrackyardProcess

pytestmark = pytest.mark.sdk

ROOM = "browser-edges"
DRAIN_DEADLINE = 5.0  # signal.drain_deadline; the page's socket is gone long before it
RECONNECT_WINDOW = 10  # node.reconnect_window: room for the browser's resume (~2-3 s)
RESUME_WAIT = 30.0  # bound for the SDKs' Reconnected after the fault
MAX_GAP = 3.0  # seconds without a decoded frame, either direction, across fault and resume
FRAMES = 10  # decoded frames that count as "media flows"

cluster = cluster_fixture(
    sfu_regions=["us-east"],
    edge_regions=["us-east", "us-east"],
    routers_count=1,
    overrides={
        "node": {"reconnect_window": RECONNECT_WINDOW},
        "signal": {"drain_deadline": DRAIN_DEADLINE},
    },
)
browser = browser_fixture()


def _session_events(edge: TrackyardProcess, identity: str) -> list[str]:
    """The edge's "session started"/"session resumed" log events of ``identity`` (its log
    starts anew when the edge is restarted)."""
    found: list[str] = []
    with contextlib.suppress(OSError):
        for line in edge.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                ev = json.loads(line)
                if isinstance(ev, dict) and ev.get("participant") == identity:
                    found.append(str(ev.get("event")))
    return [e for e in found if e in ("session started", "session resumed")]


def _holders(cluster: Cluster, identity: str) -> list[int]:
    """Indexes of the live edges that took a session of ``identity``: a dead edge holds no
    socket and a restarted one has a fresh log, so this is the edge holding its socket."""
    return [i for i, e in enumerate(cluster.edges) if e.alive() and _session_events(e, identity)]


async def _diagnosis(page: Page) -> str:
    with contextlib.suppress(Exception):
        pcs = await page.call("peerConnections")
        events: list[dict[str, Any]] = []
        for kind in ("signal_reconnecting", "reconnecting", "engine_resuming", "engine_restarting"):
            events += await page.call("eventsOf", kind)
        return f"peer connections: {pcs}\nevents: {events}\n{page.browser.report()}"
    return "(page unreachable)"


async def _lose_edge_and_resume(
    cluster: Cluster,
    page: Page,
    py: rtc.Room,
    from_page: AnyFrameClock,
    sid: str,
    camera_sid: str,
    fault: str,
) -> None:
    """Kill (``fault="kill"``) or drain (``"drain"``) the edge holding the page's socket;
    check the page resumed through the other edge with media flowing both ways."""
    (victim,) = _holders(cluster, "web")
    # balance first: the Python peer's socket is on the same edge and resumes as well
    assert _holders(cluster, "py") == [victim]
    edge, other = cluster.edges[victim], 1 - victim
    py_before = sids(py)
    py_left = EventWaiter(py, "participant_disconnected")
    py_back = EventWaiter(py, "reconnected")
    since = await page.mark()
    exited: asyncio.Task[tuple[int, float]] | None = None

    async def exit_code() -> tuple[int, float]:
        code = await asyncio.to_thread(edge.wait, DRAIN_DEADLINE + 5)
        return code, time.time()

    cut = time.time()
    if fault == "kill":
        assert cluster.kill(edge) == -9
    else:
        edge.signal(signal.SIGTERM)
        exited = asyncio.create_task(exit_code())
    try:
        await page.wait_event("reconnected", since=since, timeout=RESUME_WAIT)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await _diagnosis(page)}") from None
    back = time.time()
    await py_back.wait(timeout=RESUME_WAIT)

    engine = [
        ev
        for kind in ("engine_resuming", "engine_restarting")
        for ev in await page.call("eventsOf", kind, since)
    ]
    kinds = {e["type"] for e in engine}
    assert "engine_restarting" not in kinds, f"full rejoin: {engine}"
    assert "engine_resuming" in kinds, engine
    assert await page.call("localSid") == sid, "the page rejoined with a new sid"
    assert (await page.call("localTrack", "camera"))["sid"] == camera_sid
    await eventually(
        lambda: "session resumed" in _session_events(cluster.edges[other], "web"),
        timeout=5,
        what=f"the page's session resumed on edge {other}",
    )
    try:
        await from_page.frames_after(back, FRAMES)
        await page.decodes("py", frames=FRAMES)
    except (TimeoutError, AssertionError) as exc:
        raise AssertionError(
            f"no media after the resume: {exc!r}\n{await _diagnosis(page)}"
        ) from None
    now = time.time()
    gap_page = (await page.call("frameGap", "py", "camera", cut * 1000))["maxGapMs"] / 1000
    gap_py = from_page.max_gap(cut, now)
    print(
        f"browser behind HAProxy, edge {victim} {'killed' if fault == 'kill' else 'drained'}: "
        f"page reconnected after {back - cut:.2f}s through edge {other}; largest decoded-video "
        f"gap at the page {gap_page:.3f}s, at the Python peer {gap_py:.3f}s"
    )

    if exited is not None:
        code, exited_at = await asyncio.wait_for(exited, DRAIN_DEADLINE + 10)
        assert code == 0, edge.logs()
        assert exited_at - cut < DRAIN_DEADLINE, "the edge waited for its deadline"
        assert "drained: no client socket left" in edge.logs()
    assert not edge.alive()

    assert not py_left.calls, f"the Python peer saw someone leave: {py_left.calls}"
    gone = await page.call("eventsOf", "participant_disconnected", since)
    assert not gone, f"the page saw someone leave: {gone}"
    assert sids(py) == py_before, "the Python peer rejoined"
    assert py.remote_participants["web"].sid == sid
    assert camera_sid in py.remote_participants["web"].track_publications
    assert await participant_identities(cluster.edges[other], ROOM) == ["py", "web"]
    assert gap_page < MAX_GAP, f"the page lost the peer's video for {gap_page:.2f}s"
    assert gap_py < MAX_GAP, f"the peer lost the page's video for {gap_py:.2f}s"
    for proc in cluster.all_processes():
        if proc is not edge:
            assert proc.alive(), proc.logs()


async def test_browser_behind_haproxy_resumes_after_edge_kill_and_drain(
    cluster: Cluster, browser: Browser
) -> None:
    e0, e1 = cluster.edges
    opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=False)
    with HAProxy([e0.port, e1.port]) as lb:
        async with browser.pages("web") as (page,), connected(lb.ws_url, "py", ROOM) as py:
            sid = (await page.join(lb.ws_url, "web", ROOM))["sid"]
            at_py = EventWaiter(py, "track_subscribed")
            async with pattern_video(py, 320, 180, 15, options=opts):  # cheap on 2 cores
                camera_sid, track = await page.cameras_both_ways(at_py, "py", "web")
                async with any_frame_clock(track) as from_page:
                    await from_page.frames_after(time.time(), FRAMES)
                    await page.decodes("py", frames=FRAMES)

                    await _lose_edge_and_resume(
                        cluster, page, py, from_page, sid, camera_sid, "kill"
                    )
                    killed = next(i for i, e in enumerate(cluster.edges) if not e.alive())
                    cluster.edges[killed].start()
                    await eventually(
                        lambda: lb.states()[killed] == "UP",
                        timeout=5,
                        what=f"edge {killed} back in HAProxy",
                    )
                    await _lose_edge_and_resume(
                        cluster, page, py, from_page, sid, camera_sid, "drain"
                    )
                    assert lb.alive()
    for edge in cluster.edges:
        if not edge.alive():
            edge.start()
    bad = bad_log_lines(cluster.logs(full=True))
    assert not bad, "\n".join(bad[:20])
