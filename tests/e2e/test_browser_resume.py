"""Session resume with the browser SDK (livekit-client in Chromium): the page's signal WebSocket
is cut by its network (nftables inside the test namespace drops its TCP to the server) while
media keeps its own path. The SDK resumes (``reconnect=1&sid=``) and, as it always does on a
resume, restarts ICE on its publisher connection (an offer with new ICE credentials) before it
counts as reconnected. Asserted: the page resumes (same participant sid, no full rejoin), the
Python peer never saw it leave, and decoded video keeps flowing both ways with a bounded gap."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from livekit import rtc

from tests.support.browser import MEDIA_CALL, Browser, Page, browser_fixture
from tests.support.media import pattern_video
from tests.support.nft import input_rules
from tests.support.sdk import EventWaiter, connected
from tests.support.trackyard import TrackyardProcess

pytestmark = pytest.mark.sdk

browser = browser_fixture()

PAGE_ADDR = "127.0.0.2"  # the page reaches the server's signal port here; only this is cut
# As in test_resume.py: ping_interval 1 s lets the SDK notice the cut within ping_timeout;
# ping_timeout must outlast the resume itself (the SDK's ICE restart and its 2 s settle).
CONFIG = {
    "bind_addresses": ["127.0.0.1", PAGE_ADDR],
    "signal": {"ping_interval": 1, "ping_timeout": 8},
    "node": {"reconnect_window": 20},
    "logging": {"level": "debug"},
}
MAX_GAP = 3.0  # seconds without a decoded frame, either direction


@pytest.fixture(scope="module")
def server() -> Iterator[TrackyardProcess]:
    with TrackyardProcess(CONFIG) as proc:
        yield proc
        assert proc.alive(), f"server died during the module:\n{proc.logs()}"


@contextlib.contextmanager
def tcp_blocked(addr: str, port: int) -> Iterator[None]:
    """Drop every TCP segment to ``addr:port``: the page's signal socket and any new one. The
    Python peer signals through 127.0.0.1 and all media is UDP, so only the page is cut."""
    with input_rules("trackyard_pagecut", f"ip daddr {addr} tcp dport {port} drop"):
        yield


class AnyFrameClock:
    """Arrival times of every decoded frame of one track (the browser's fake camera carries no
    frame numbers, so tests.support.media.FrameClock's pattern check does not apply)."""

    def __init__(self, track: rtc.Track) -> None:
        self.times: list[float] = []
        self._stream = rtc.VideoStream(track)
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for _event in self._stream:
            self.times.append(time.time())
            self._arrived.set()

    async def frames_after(self, t: float, count: int, timeout: float = 30) -> None:
        async def wait() -> None:
            while sum(1 for x in self.times if x > t) < count:
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(wait(), timeout)

    def max_gap(self, since: float) -> float:
        times = [since, *(x for x in self.times if x >= since)]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._stream.aclose()


@contextlib.asynccontextmanager
async def any_frame_clock(track: rtc.Track) -> AsyncIterator[AnyFrameClock]:
    c = AnyFrameClock(track)
    try:
        yield c
    finally:
        await c.close()


async def _diagnosis(page: Page, server: TrackyardProcess) -> str:
    with contextlib.suppress(Exception):
        pcs = await page.call("peerConnections")
        events = await page.call("eventsOf", "engine_signal_resumed")
        return f"peer connections: {pcs}\nreconnecting events: {events}"
    return "(page unreachable)"


async def test_browser_signal_cut_resumes(
    server: TrackyardProcess, browser: Browser, room_name: str
) -> None:
    async with (
        connected(server.ws_url, "watcher", room_name) as watcher,
        browser.pages("mover") as (page,),
    ):
        joined = await page.join(f"ws://{PAGE_ADDR}:{server.port}", "mover", room_name)
        sid = joined["sid"]
        at_watcher = EventWaiter(watcher, "track_subscribed")
        left = EventWaiter(watcher, "participant_disconnected")
        async with pattern_video(watcher):
            published = await page.call("enableCameraAndMicrophone", timeout=MEDIA_CALL)
            camera_sid = published["camera"]["sid"]
            await page.wait_event(
                "track_subscribed", {"identity": "watcher", "source": "camera"}, timeout=MEDIA_CALL
            )
            track, _pub, _p = await at_watcher.wait(
                lambda t, pub, p: p.identity == "mover" and pub.sid == camera_sid, timeout=30
            )
            await page.call("startFrameClock", "watcher", "camera")
            async with any_frame_clock(track) as from_page:
                start = time.time()
                await from_page.frames_after(start, 10)
                await page.decodes("watcher", frames=10)
                before = await page.call("peerConnections")

                since = await page.mark()
                cut = time.time()
                with tcp_blocked(PAGE_ADDR, server.port):
                    await page.wait_event("signal_reconnecting", since=since, timeout=30)
                away = time.time()
                try:
                    await page.wait_event("reconnected", since=since, timeout=45)
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\n{await _diagnosis(page, server)}") from None
                back = time.time()
                # media after the resume: both directions decode again
                await from_page.frames_after(back, 10)
                await page.decodes("watcher", frames=10)
                after = await page.call("peerConnections")
                gap_page = (await page.call("frameGap", "watcher", "camera", cut * 1000))[
                    "maxGapMs"
                ] / 1000
                gap_watcher = from_page.max_gap(cut)
                engine: list[dict[str, Any]] = [
                    ev
                    for kind in ("engine_resuming", "engine_restarting", "signal_reconnecting")
                    for ev in await page.call("eventsOf", kind, since)
                ]
                print(
                    f"browser resume: signal outage {back - cut:.2f}s (resume {back - away:.2f}s), "
                    f"decoded-video gap at the page {gap_page:.3f}s, at the watcher "
                    f"{gap_watcher:.3f}s; engine {sorted(e['type'] for e in engine)}; "
                    f"publisher ufrag {before['publisher']['localUfrag']} -> "
                    f"{after['publisher']['localUfrag']}"
                )
                kinds = {e["type"] for e in engine}
                assert "engine_restarting" not in kinds, f"full rejoin: {engine}"
                assert "engine_resuming" in kinds, engine
                assert await page.call("localSid") == sid, "the page rejoined with a new sid"
                assert watcher.remote_participants["mover"].sid == sid
                assert camera_sid in watcher.remote_participants["mover"].track_publications
                assert not left.calls, "the watcher saw the page leave"
                # the SDK did restart ICE on its publisher connection, and it is connected
                assert after["publisher"]["localUfrag"] != before["publisher"]["localUfrag"]
                assert after["publisher"]["connectionState"] == "connected", after
                assert gap_page < MAX_GAP and gap_watcher < MAX_GAP, (gap_page, gap_watcher)
