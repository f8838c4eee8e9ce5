"""Session resume with the real Python SDK: the client's signal WebSocket is cut by its network
(nftables inside the test namespace drops its TCP to the edge) with the edge alive; the SDK
resumes (``reconnect=1&sid=``): same participant and track SIDs, nobody saw it leave, and the
media it sends and receives never stops for longer than a bound."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
from livekit import rtc

from tests.support.media import clock, pattern_video
from tests.support.nft import input_rules
from tests.support.sdk import EventWaiter, connected
from tests.support.trackyard import TrackyardProcess

pytestmark = pytest.mark.sdk

MOVER_ADDR = "127.0.0.2"  # the mover reaches the edge here; only this address is cut
# ping_timeout must outlast the SDK's resume, not just detect the cut: while the Rust SDK
# (livekit 1.2.1) resumes it sends no pings (queued until its peer connections are connected
# again, plus a 1 s settle) and the server has nothing to send after the publisher answer, so
# both the SDK's own ping timer and the edge's run on the *new* socket meanwhile. That resume
# takes ~3 s here from the publisher answer to the SDK's first ping (the 1 s settle, and ~2 s
# until its publisher connection counts as connected again: presumably the ICE restart it
# offers, which aiortc answers without restarting). With ping_timeout 3 the new socket died
# first 1 run in 6-8 ("signal connection severed during resume", then a full rejoin with new
# SIDs, whose old remote track then never got frames again).
CONFIG = {
    "bind_addresses": ["127.0.0.1", MOVER_ADDR],
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
    """Drop every TCP segment to ``addr:port`` (the client's signal socket and any new one)."""
    with input_rules("trackyard_sigcut", f"ip daddr {addr} tcp dport {port} drop"):
        yield


def _video(waiter: EventWaiter, identity: str) -> rtc.Track:
    for track, _pub, p in waiter.calls:
        if p.identity == identity:
            return track  # type: ignore[no-any-return]
    raise AssertionError(f"no track of {identity}")


async def test_signal_cut_by_network_resumes(server: TrackyardProcess, room_name: str) -> None:
    async with (
        connected(server.ws_url, "watcher", room_name) as watcher,
        connected(f"ws://{MOVER_ADDR}:{server.port}", "mover", room_name) as mover,
    ):
        at_mover = EventWaiter(mover, "track_subscribed")
        at_watcher = EventWaiter(watcher, "track_subscribed")
        async with pattern_video(mover) as mover_pub, pattern_video(watcher):
            await at_mover.wait(lambda _t, _pub, p: p.identity == "watcher")
            await at_watcher.wait(lambda _t, _pub, p: p.identity == "mover")
            into_mover = _video(at_mover, "watcher")
            into_watcher = _video(at_watcher, "mover")
            async with clock(into_mover) as recv, clock(into_watcher) as sent:
                start = time.monotonic()
                await recv.frames_after(start, 10)
                await sent.frames_after(start, 10)
                sid = mover.local_participant.sid
                track_sid = mover_pub.sid
                left = EventWaiter(watcher, "participant_disconnected")
                reconnecting = EventWaiter(mover, "reconnecting")
                reconnected = EventWaiter(mover, "reconnected")
                cut = time.monotonic()
                with tcp_blocked(MOVER_ADDR, server.port):
                    await reconnecting.wait(timeout=20)
                away = time.monotonic()
                await reconnected.wait(timeout=30)
                back = time.monotonic()
                await recv.frames_after(back, 30)
                await sent.frames_after(back, 30)
                gap_recv, gap_sent = recv.max_gap(cut), sent.max_gap(cut)
                print(
                    f"resume: signal outage {back - cut:.2f}s (resume {back - away:.2f}s), "
                    f"media gap received "
                    f"{gap_recv:.3f}s, sent {gap_sent:.3f}s"
                )
                assert mover.local_participant.sid == sid
                assert {p.sid for p in mover.local_participant.track_publications.values()} == {
                    track_sid
                }
                assert watcher.remote_participants["mover"].sid == sid
                assert track_sid in watcher.remote_participants["mover"].track_publications
                assert not left.calls, "the watcher saw the mover leave"
                assert gap_recv < MAX_GAP and gap_sent < MAX_GAP, (gap_recv, gap_sent)
