"""Signalling with the real LiveKit Python SDK against an embedded Trackyard process."""

from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np
import pytest
from livekit import rtc

from tests.support.sdk import EventWaiter, connected, token
from tests.support.trackyard import TrackyardProcess

pytestmark = pytest.mark.sdk


async def test_two_participants_see_each_other(server: TrackyardProcess, room_name: str) -> None:
    async with connected(server.ws_url, "alice", room_name) as alice:
        joined = EventWaiter(alice, "participant_connected")
        async with connected(server.ws_url, "bob", room_name) as bob:
            assert set(bob.remote_participants) == {"alice"}
            (participant,) = await joined.wait(lambda p: p.identity == "bob")
            assert participant.sid.startswith("PA_")
            assert alice.name == room_name
            assert (await alice.sid).startswith("RM_")
            assert alice.local_participant.sid.startswith("PA_")


async def test_data_reliable_lossy_and_destinations(
    server: TrackyardProcess, room_name: str
) -> None:
    url = server.ws_url
    async with (
        connected(url, "a", room_name) as a,
        connected(url, "b", room_name) as b,
        connected(url, "c", room_name) as c,
    ):
        got = {
            name: EventWaiter(room, "data_received")
            for name, room in (("a", a), ("b", b), ("c", c))
        }
        await a.local_participant.publish_data(b"to-all", reliable=True, topic="t1")
        await a.local_participant.publish_data(
            b"only-b", reliable=True, destination_identities=["b"]
        )
        await a.local_participant.publish_data(b"marker", reliable=True)
        for name in ("b", "c"):
            (pkt,) = await got[name].wait(lambda p: p.data == b"marker")
            assert pkt.participant.identity == "a"
            datas = [p.data for (p,) in got[name].calls]
            assert datas.index(b"to-all") < datas.index(b"marker")
            assert [p.topic for (p,) in got[name].calls if p.data == b"to-all"] == ["t1"]
        assert b"only-b" in [p.data for (p,) in got["b"].calls]
        assert b"only-b" not in [p.data for (p,) in got["c"].calls]
        # lossy: unordered, no retransmits, but loopback does not drop
        await a.local_participant.publish_data(b"lossy", reliable=False)
        (pkt,) = await got["b"].wait(lambda p: p.data == b"lossy")
        assert pkt.kind == rtc.DataPacketKind.KIND_LOSSY
        await got["c"].wait(lambda p: p.data == b"lossy")
        # never echoed to the sender
        await a.local_participant.publish_data(b"end", reliable=True)
        await b.local_participant.publish_data(b"from-b", reliable=True)
        await got["a"].wait(lambda p: p.data == b"from-b")
        assert not [p for (p,) in got["a"].calls if p.participant and p.participant.identity == "a"]


async def test_rpc_and_text_round_trip(server: TrackyardProcess, room_name: str) -> None:
    async with (
        connected(server.ws_url, "caller", room_name) as caller,
        connected(server.ws_url, "callee", room_name) as callee,
    ):

        @callee.local_participant.register_rpc_method("reverse")
        async def reverse(data: rtc.RpcInvocationData) -> str:
            assert data.caller_identity == "caller"
            return data.payload[::-1]

        result = await asyncio.wait_for(
            caller.local_participant.perform_rpc(
                destination_identity="callee", method="reverse", payload="trackyard"
            ),
            10,
        )
        assert result == "draykcart"

        texts: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

        def on_text(reader: rtc.TextStreamReader, identity: str) -> None:
            async def read() -> None:
                await texts.put((await reader.read_all(), identity))

            asyncio.get_running_loop().create_task(read())

        callee.register_text_stream_handler("chat", on_text)
        await caller.local_participant.send_text("hello over text stream", topic="chat")
        text, identity = await asyncio.wait_for(texts.get(), 10)
        assert (text, identity) == ("hello over text stream", "caller")


async def test_metadata_name_attributes_events(server: TrackyardProcess, room_name: str) -> None:
    async with (
        connected(server.ws_url, "watcher", room_name) as watcher,
        connected(server.ws_url, "actor", room_name) as actor,
    ):
        meta = EventWaiter(watcher, "participant_metadata_changed")
        names = EventWaiter(watcher, "participant_name_changed")
        attrs = EventWaiter(watcher, "participant_attributes_changed")
        await asyncio.wait_for(actor.local_participant.set_metadata("m1"), 10)
        participant, _old, _new = await meta.wait(lambda p, o, n: n == "m1")
        assert participant.identity == "actor"
        await asyncio.wait_for(actor.local_participant.set_name("Actor Prime"), 10)
        await names.wait(lambda p, o, n: n == "Actor Prime")
        await asyncio.wait_for(actor.local_participant.set_attributes({"role": "lead"}), 10)
        _changed, participant = await attrs.wait(lambda ch, p: ch.get("role") == "lead")
        assert participant.attributes == {"role": "lead"}
        assert actor.local_participant.metadata == "m1"


async def test_update_metadata_refused_without_grant(
    server: TrackyardProcess, room_name: str
) -> None:
    async with (
        connected(server.ws_url, "watcher", room_name) as watcher,
        connected(server.ws_url, "mute", room_name, can_update_own_metadata=False) as muted,
    ):
        meta = EventWaiter(watcher, "participant_metadata_changed")
        seen_by_muted = EventWaiter(muted, "participant_metadata_changed")
        # The server answers request_response{NOT_ALLOWED}; SDK 1.2.1 does not raise on it,
        # so what we can check is that the change went nowhere.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(muted.local_participant.set_metadata("nope"), 10)
        # the room keeps working for everyone, and no change leaked out
        await asyncio.wait_for(watcher.local_participant.set_metadata("fine"), 10)
        await seen_by_muted.wait(lambda p, o, n: n == "fine")
        assert [c for c in meta.calls if c[2] == "nope"] == []
        assert muted.local_participant.metadata != "nope"


async def test_leave_raises_participant_disconnected(
    server: TrackyardProcess, room_name: str
) -> None:
    async with connected(server.ws_url, "stayer", room_name) as stayer:
        gone = EventWaiter(stayer, "participant_disconnected")
        async with connected(server.ws_url, "leaver", room_name):
            assert "leaver" in stayer.remote_participants or await EventWaiter(
                stayer, "participant_connected"
            ).wait(lambda p: p.identity == "leaver")
        await gone.wait(lambda p: p.identity == "leaver")
        assert "leaver" not in stayer.remote_participants


async def test_duplicate_identity_replaces_old(server: TrackyardProcess, room_name: str) -> None:
    async with (
        connected(server.ws_url, "observer", room_name) as observer,
        connected(server.ws_url, "twin", room_name) as first,
    ):
        first_sid = first.local_participant.sid
        disconnected = EventWaiter(first, "disconnected")
        async with connected(server.ws_url, "twin", room_name) as second:
            (reason,) = await disconnected.wait()
            assert reason == rtc.DisconnectReason.DUPLICATE_IDENTITY
            assert second.local_participant.sid != first_sid
            connected_ev = EventWaiter(observer, "participant_connected")
            if observer.remote_participants.get("twin") is None or (
                observer.remote_participants["twin"].sid == first_sid
            ):
                await connected_ev.wait(lambda p: p.identity == "twin" and p.sid != first_sid)
            assert observer.remote_participants["twin"].sid == second.local_participant.sid


async def test_bad_token_fails_connect_at_once(server: TrackyardProcess, room_name: str) -> None:
    bad = token("mallory", room_name).rsplit(".", 1)[0] + ".invalidsignature"
    room = rtc.Room()
    started = time.monotonic()
    with pytest.raises(rtc.ConnectError) as err:
        await asyncio.wait_for(room.connect(server.ws_url, bad), 20)
    assert "signature" in str(err.value).lower() or "401" in str(err.value)
    assert time.monotonic() - started < 5, "a 401 must not be retried"


async def test_token_for_other_room_is_refused(server: TrackyardProcess, room_name: str) -> None:
    no_join = rtc.Room()
    from livekit import api

    tok = (
        api.AccessToken("devkey", "secret")
        .with_identity("x")
        .with_grants(api.VideoGrants(room_join=False, room=room_name))
        .to_jwt()
    )
    with pytest.raises(rtc.ConnectError) as err:
        await asyncio.wait_for(no_join.connect(server.ws_url, tok), 20)
    assert "roomjoin" in str(err.value).lower() or "403" in str(err.value)


async def test_hidden_participant_is_not_announced(
    server: TrackyardProcess, room_name: str
) -> None:
    async with connected(server.ws_url, "visible", room_name) as visible:
        data = EventWaiter(visible, "data_received")
        async with connected(server.ws_url, "ghost", room_name, hidden=True) as ghost:
            assert "visible" in ghost.remote_participants
            await ghost.local_participant.publish_data(b"boo")
            await data.wait(lambda p: p.data == b"boo")
            assert "ghost" not in visible.remote_participants


async def test_publish_data_refused_without_grant(server: TrackyardProcess, room_name: str) -> None:
    async with (
        connected(server.ws_url, "listener", room_name) as listener,
        connected(server.ws_url, "silent", room_name, can_publish_data=False) as silent,
        connected(server.ws_url, "talker", room_name) as talker,
    ):
        data = EventWaiter(listener, "data_received")
        await silent.local_participant.publish_data(b"forbidden")
        await talker.local_participant.publish_data(b"allowed")
        await data.wait(lambda p: p.data == b"allowed")
        assert b"forbidden" not in [p.data for (p,) in data.calls]


def _audio_track() -> tuple[rtc.AudioSource, rtc.LocalAudioTrack]:
    source = rtc.AudioSource(48000, 1)
    return source, rtc.LocalAudioTrack.create_audio_track("mic", source)


async def test_add_track_is_published_to_others(server: TrackyardProcess, room_name: str) -> None:
    async with (
        connected(server.ws_url, "viewer", room_name) as viewer,
        connected(server.ws_url, "speaker", room_name) as speaker,
    ):
        published = EventWaiter(viewer, "track_published")
        source, track = _audio_track()
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        pub = await asyncio.wait_for(speaker.local_participant.publish_track(track, opts), 15)
        assert pub.sid.startswith("TR_")
        frame = rtc.AudioFrame.create(48000, 1, 480)
        np.frombuffer(frame.data, dtype=np.int16)[:] = 0
        await source.capture_frame(frame)
        publication, participant = await published.wait()
        assert participant.identity == "speaker"
        assert publication.sid == pub.sid
        assert publication.kind == rtc.TrackKind.KIND_AUDIO


async def test_publish_refused_without_grant(server: TrackyardProcess, room_name: str) -> None:
    async with connected(server.ws_url, "nopub", room_name, can_publish=False) as room:
        _, track = _audio_track()
        with pytest.raises(Exception):  # noqa: B017 - the SDK raises its own error types
            await asyncio.wait_for(room.local_participant.publish_track(track), 15)
        # the session survives the refusal
        await asyncio.wait_for(room.local_participant.set_metadata("still here"), 10)


async def test_max_participants_refuses_with_reason(room_name: str) -> None:
    with TrackyardProcess({"room": {"max_participants": 1, "departure_timeout": 1}}) as srv:
        async with connected(srv.ws_url, "first", room_name):
            second = rtc.Room()
            with pytest.raises(rtc.ConnectError) as err:
                await asyncio.wait_for(second.connect(srv.ws_url, token("second", room_name)), 20)
            assert "full" in str(err.value).lower() or "403" in str(err.value)


async def test_publish_sources_enforced(server: TrackyardProcess, room_name: str) -> None:
    async with connected(
        server.ws_url, "camonly", room_name, can_publish_sources=["camera"]
    ) as room:
        _, track = _audio_track()
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        with pytest.raises(Exception):  # noqa: B017 - the SDK raises its own error types
            await asyncio.wait_for(room.local_participant.publish_track(track, opts), 15)
        assert not room.local_participant.track_publications
