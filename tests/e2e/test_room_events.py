"""Room events the SDKs raise from what the node measures and decides, with the real Python SDK:
participant kind, active speakers (from the audio-level header extension of real Opus audio),
connection quality (from real loss, injected with nftables inside the test namespace),
ACTIVE-means-ready data delivery, and permission changes taking effect."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest
from livekit import api, rtc

from tests.support.media import dominant_tone, tone_audio
from tests.support.nft import input_rules
from tests.support.sdk import EventWaiter, connected, token
from tests.support.trackyard import TrackyardProcess

pytestmark = pytest.mark.sdk

PORTS = (47200, 47260)  # this module's SFU port range, so the loss rule touches nobody else
CONFIG = {
    "room": {"departure_timeout": 1, "empty_timeout": 3},
    "rtc": {"port_range_start": PORTS[0], "port_range_end": PORTS[1]},
    "node": {"connection_quality_interval": 1.0},
    "logging": {"level": "debug"},
}
Q = rtc.ConnectionQuality


@pytest.fixture(scope="module")
def server() -> Iterator[TrackyardProcess]:
    with TrackyardProcess(CONFIG) as proc:
        yield proc
        assert proc.alive(), f"server died during the module:\n{proc.logs()}"


@contextlib.contextmanager
def udp_loss_to_sfu(every: int) -> Iterator[None]:
    """Drop 1 in ``every`` UDP packets sent to the SFU's port range (namespace-local)."""
    rule = f"udp dport {PORTS[0]}-{PORTS[1]} numgen random mod {every} 0 drop"
    with input_rules("trackyard_loss", rule):
        yield


async def test_participant_kind_reaches_everyone(server: TrackyardProcess, room_name: str) -> None:
    async with connected(server.ws_url, "human", room_name) as human:
        joined = EventWaiter(human, "participant_connected")
        async with connected(server.ws_url, "bot", room_name, kind="agent") as bot:
            (seen,) = await joined.wait(lambda p: p.identity == "bot")
            assert seen.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
            assert bot.remote_participants["human"].kind == (
                rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD
            )
            async with api.LiveKitAPI(
                server.http_url, "devkey", "secret"
            ) as lkapi:  # the server API reports it too
                listed = await lkapi.room.list_participants(
                    api.ListParticipantsRequest(room=room_name)
                )
            kinds = {p.identity: p.kind for p in listed.participants}
            assert kinds == {
                "bot": api.ParticipantInfo.AGENT,
                "human": api.ParticipantInfo.STANDARD,
            }


async def test_active_speakers_follow_the_loud_one(
    server: TrackyardProcess, room_name: str
) -> None:
    async with (
        connected(server.ws_url, "listener", room_name) as listener,
        connected(server.ws_url, "quiet", room_name) as quiet,
        connected(server.ws_url, "loud", room_name) as loud,
    ):
        speakers = EventWaiter(listener, "active_speakers_changed")
        subscribed = EventWaiter(listener, "track_subscribed")
        async with (
            tone_audio(quiet, 330.0, amplitude=0),
            tone_audio(loud, 440.0) as loud_pub,
        ):
            (track, _, _) = await subscribed.wait(lambda t, p, who: p.sid == loud_pub.sid)
            assert abs(await dominant_tone(track) - 440.0) < 15  # the media is really there
            (first,) = await speakers.wait(lambda s: any(p.identity == "loud" for p in s))
            assert [p.identity for p in first] == ["loud"]
            # absence is observed over a bounded window: 3 more update intervals
            await asyncio.sleep(1.2)
            assert not any(p.identity == "quiet" for (s,) in speakers.calls for p in s)
        # the loud one stopped publishing: it leaves the speaker list
        await speakers.wait(lambda s: not any(p.identity == "loud" for p in s), timeout=10)


async def test_connection_quality_follows_real_loss(
    server: TrackyardProcess, room_name: str
) -> None:
    async with (
        connected(server.ws_url, "viewer", room_name) as viewer,
        connected(server.ws_url, "speaker", room_name) as speaker,
    ):
        quality = EventWaiter(viewer, "connection_quality_changed")
        own = EventWaiter(speaker, "connection_quality_changed")
        subscribed = EventWaiter(viewer, "track_subscribed")
        async with tone_audio(speaker, 440.0) as pub:
            (track, _, _) = await subscribed.wait(lambda t, p, who: p.sid == pub.sid)
            assert abs(await dominant_tone(track) - 440.0) < 15
            await quality.wait(
                lambda p, q: p.identity == "speaker" and q == Q.QUALITY_EXCELLENT, timeout=15
            )
            await own.wait(lambda p, q: p.identity == "speaker" and q == Q.QUALITY_EXCELLENT)
            with udp_loss_to_sfu(every=4):  # 25% of the speaker's audio never arrives
                await quality.wait(
                    lambda p, q: p.identity == "speaker" and q == Q.QUALITY_POOR, timeout=15
                )
                await own.wait(
                    lambda p, q: p.identity == "speaker" and q == Q.QUALITY_POOR, timeout=15
                )
                lossy = len(quality.calls)
            # loss gone: the score climbs back (slowly, as LiveKit's does)
            await quality.wait(
                lambda p, q: p.identity == "speaker" and q != Q.QUALITY_POOR,
                timeout=20,
                since=lossy,
            )


async def test_data_sent_the_moment_a_participant_appears_arrives(
    server: TrackyardProcess, room_name: str
) -> None:
    async with connected(server.ws_url, "early", room_name) as early:
        appeared = EventWaiter(early, "participant_connected")
        got: asyncio.Queue[bytes] = asyncio.Queue()
        late_room = rtc.Room()
        late_room.on("data_received", lambda pkt: got.put_nowait(pkt.data))
        connecting = asyncio.create_task(late_room.connect(server.ws_url, token("late", room_name)))
        try:
            await appeared.wait(lambda p: p.identity == "late")
            # sent as soon as "late" is announced: before or right after its channels open
            for i in range(5):
                await early.local_participant.publish_data(
                    f"hello {i}".encode(), reliable=True, destination_identities=["late"]
                )
            await asyncio.wait_for(connecting, 10)
            received = [await asyncio.wait_for(got.get(), 10) for _ in range(5)]
            assert received == [f"hello {i}".encode() for i in range(5)]
        finally:
            connecting.cancel()
            with contextlib.suppress(Exception):
                await late_room.disconnect()


async def test_revoking_can_publish_unpublishes_tracks(
    server: TrackyardProcess, room_name: str
) -> None:
    async with (
        connected(server.ws_url, "watcher", room_name) as watcher,
        connected(server.ws_url, "talker", room_name) as talker,
    ):
        subscribed = EventWaiter(watcher, "track_subscribed")
        unpublished = EventWaiter(watcher, "track_unpublished")
        async with tone_audio(talker, 440.0) as pub:
            (track, _, _) = await subscribed.wait(lambda t, p, who: p.sid == pub.sid)
            assert abs(await dominant_tone(track) - 440.0) < 15
            async with api.LiveKitAPI(server.http_url, "devkey", "secret") as lkapi:
                await lkapi.room.update_participant(
                    api.UpdateParticipantRequest(
                        room=room_name,
                        identity="talker",
                        permission=api.ParticipantPermission(
                            can_publish=False, can_subscribe=True, can_publish_data=True
                        ),
                    )
                )
                await unpublished.wait(lambda p, who: p.sid == pub.sid)
                # (the browser SDK also unpublishes locally on the track_unpublished the
                # publisher is sent: tests/e2e/test_browser_sdk.py; the Python SDK ignores it)
                listed = await lkapi.room.get_participant(
                    api.RoomParticipantIdentity(room=room_name, identity="talker")
                )
            assert list(listed.tracks) == []
            assert not listed.permission.can_publish
