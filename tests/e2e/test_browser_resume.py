"""Session resume with the browser SDK (livekit-client in Chromium): the page's signal WebSocket
is cut by its network (nftables inside the test namespace drops its TCP to the server) while
media keeps its own path. The SDK resumes (``reconnect=1&sid=``) and, as it always does on a
resume, restarts ICE on its publisher connection (an offer with new ICE credentials) before it
counts as reconnected; the server, as LiveKit's does, offers an ICE restart on the subscriber
connection. Asserted: the page resumes (same participant sid, no full rejoin), the Python peer
never saw it leave, and decoded video keeps flowing both ways with a bounded gap, also when the
old ICE paths of the publisher connection, or of both connections, died with the signal."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.browser import Browser, Page, any_frame_clock, browser_fixture
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
# With the publisher's path cut as well, the page's video cannot reach the server from the
# path cut (at the SDK's signal_reconnecting) until the SDK's ICE restart, sent once the signal
# is back, moved the connection to a new pair: the outage plus the resume (~3 s here).
MAX_GAP_PATH_LOST = 6.0
CUT_NONE, CUT_PUBLISHER, CUT_BOTH = "signal_cut", "signal_and_path_cut", "signal_and_both_paths_cut"


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


async def _diagnosis(page: Page) -> str:
    with contextlib.suppress(Exception):
        pcs = await page.call("peerConnections")
        events = await page.call("eventsOf", "engine_resuming")
        events += await page.call("eventsOf", "engine_restarting")
        return f"peer connections: {pcs}\nengine events: {events}"
    return "(page unreachable)"


@contextlib.contextmanager
def udp_port_blocked(port: int, table: str = "trackyard_pathcut") -> Iterator[None]:
    """Drop all UDP from and to the page's local ``port`` (its old ICE path dies, as when the
    client's network changes); the sockets of the ICE restart's new generation get new ports."""
    with input_rules(table, f"udp sport {port} drop", f"udp dport {port} drop"):
        yield


def _port(candidate: str) -> int:
    return int(candidate.rsplit("/", 1)[0].rsplit(":", 1)[1])


@pytest.mark.parametrize("mode", [CUT_NONE, CUT_PUBLISHER, CUT_BOTH])
async def test_browser_signal_cut_resumes(
    server: TrackyardProcess, browser: Browser, room_name: str, mode: str
) -> None:
    """``signal_cut``: only the signal socket is lost. ``signal_and_path_cut``: the publisher
    connection's ICE path dies as well while the signal is away, so media from the page comes
    back only if the SDK's ICE restart really takes effect on the server's side.
    ``signal_and_both_paths_cut``: the subscriber connection's path dies too (a network
    change), so media to the page comes back only through the server's ICE restart offer."""
    path_lost = mode != CUT_NONE
    async with (
        connected(server.ws_url, "watcher", room_name) as watcher,
        browser.pages("mover") as (page,),
    ):
        joined = await page.join(f"ws://{PAGE_ADDR}:{server.port}", "mover", room_name)
        sid = joined["sid"]
        at_watcher = EventWaiter(watcher, "track_subscribed")
        left = EventWaiter(watcher, "participant_disconnected")
        async with pattern_video(watcher):
            camera_sid, track = await page.cameras_both_ways(at_watcher, "watcher", "mover")
            async with any_frame_clock(track) as from_page:
                start = time.time()
                await from_page.frames_after(start, 10)
                await page.decodes("watcher", frames=10)
                before = await page.call("peerConnections")

                since = await page.mark()
                cut = time.time()
                old_port = _port(before["publisher"]["pair"]["local"])
                old_sub_port = _port(before["subscriber"]["pair"]["local"])
                with contextlib.ExitStack() as cuts:
                    with tcp_blocked(PAGE_ADDR, server.port):
                        await page.wait_event("signal_reconnecting", since=since, timeout=30)
                        if path_lost:
                            cuts.enter_context(udp_port_blocked(old_port))
                        if mode == CUT_BOTH:
                            assert old_sub_port != old_port, before
                            cuts.enter_context(udp_port_blocked(old_sub_port, "trackyard_subcut"))
                    away = time.time()
                    try:
                        await page.wait_event("reconnected", since=since, timeout=45)
                    except AssertionError as exc:
                        raise AssertionError(f"{exc}\n{await _diagnosis(page)}") from None
                    back = time.time()
                    engine: list[dict[str, Any]] = [
                        ev
                        for kind in ("engine_resuming", "engine_restarting")
                        for ev in await page.call("eventsOf", kind, since)
                    ]
                    kinds = {e["type"] for e in engine}
                    assert "engine_restarting" not in kinds, f"full rejoin: {engine}"
                    assert "engine_resuming" in kinds, engine
                    assert await page.call("localSid") == sid, "the page rejoined with a new sid"
                    # media after the resume: both directions decode again
                    try:
                        await from_page.frames_after(back, 10)
                        await page.decodes("watcher", frames=10)
                    except (TimeoutError, AssertionError) as exc:
                        raise AssertionError(
                            f"no media after the resume: {exc!r}\n{await _diagnosis(page)}"
                        ) from None
                    after = await page.call("peerConnections")
                gap_page = (await page.call("frameGap", "watcher", "camera", cut * 1000))[
                    "maxGapMs"
                ] / 1000
                gap_watcher = from_page.max_gap(cut, until=time.time())
                print(
                    f"browser resume ({mode}): signal "
                    f"outage {back - cut:.2f}s (resume {back - away:.2f}s), decoded-video gap "
                    f"at the page {gap_page:.3f}s, at the watcher {gap_watcher:.3f}s; publisher "
                    f"ICE pair {before['publisher']['pair']} -> {after['publisher']['pair']}; "
                    f"subscriber {before['subscriber']['pair']} -> {after['subscriber']['pair']}"
                )
                assert watcher.remote_participants["mover"].sid == sid
                assert camera_sid in watcher.remote_participants["mover"].track_publications
                assert not left.calls, "the watcher saw the page leave"
                # The SDK restarted ICE on its publisher connection (new local credentials),
                # the server took the restart: the connection moved to a new-generation pair
                # (new local sockets, so a new local port) and is connected.
                pub_before, pub_after = before["publisher"], after["publisher"]
                assert pub_after["localUfrag"] != pub_before["localUfrag"], after
                assert pub_after["connectionState"] == "connected", after
                assert _port(pub_after["pair"]["local"]) != old_port, after
                # The server restarted ICE on the subscriber connection (new credentials on its
                # side, and the page's new ones in its answer); when the old path was cut, the
                # connection moved to a new-generation pair, whose sockets are new.
                sub_before, sub_after = before["subscriber"], after["subscriber"]
                assert sub_after["remoteUfrag"] != sub_before["remoteUfrag"], after
                assert sub_after["localUfrag"] != sub_before["localUfrag"], after
                assert sub_after["connectionState"] == "connected", after
                if mode == CUT_BOTH:
                    assert _port(sub_after["pair"]["local"]) != old_sub_port, after
                    assert gap_page < MAX_GAP_PATH_LOST, gap_page
                else:
                    assert gap_page < MAX_GAP, gap_page  # the subscriber path was never cut
                assert gap_watcher < (MAX_GAP_PATH_LOST if path_lost else MAX_GAP), gap_watcher
