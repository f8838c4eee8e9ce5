"""Every ``limit.*`` key is enforced where LiveKit enforces it, with LiveKit's errors; and
``room.enable_remote_unmute`` lets the API unmute a track."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import websockets
from livekit import api, rtc
from livekit.protocol import rtc as rtc_pb

from tests.support.sdk import TIMEOUT, EventWaiter, connected, token
from tests.support.trackyard import API_KEY, API_SECRET, TrackyardProcess

pytestmark = pytest.mark.sdk

META = 64  # bytes
ATTRS = 48  # bytes, keys + values
ROOM_NAME = 24
IDENTITY = 12
NAME = 12

CONFIG = {
    "room": {"departure_timeout": 1, "empty_timeout": 3, "enable_remote_unmute": True},
    "limit": {
        "max_metadata_size": META,
        "max_attributes_size": ATTRS,
        "max_room_name_length": ROOM_NAME,
        "max_participant_identity_length": IDENTITY,
        "max_participant_name_length": NAME,
        "subscription_limit_audio": 1,
    },
}


@pytest.fixture(scope="module")
def server() -> Iterator[TrackyardProcess]:
    with TrackyardProcess(CONFIG) as proc:
        yield proc
        assert proc.alive(), f"server died during the module:\n{proc.logs()}"


@contextlib.asynccontextmanager
async def joined(
    server: TrackyardProcess, identity: str, room: str, **attrs: str
) -> AsyncIterator[rtc.Room]:
    """An SDK participant whose token carries ``attrs``."""
    client = rtc.Room()
    await asyncio.wait_for(client.connect(server.ws_url, _token(identity, room, **attrs)), TIMEOUT)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), TIMEOUT)


def _token(identity: str, room: str, *, name: str = "", metadata: str = "", **attrs: str) -> str:
    tok = (
        api.AccessToken(API_KEY, API_SECRET)
        .with_identity(identity)
        .with_name(name or identity)
        .with_grants(api.VideoGrants(room_join=True, room=room, can_update_own_metadata=True))
    )
    if metadata:
        tok = tok.with_metadata(metadata)
    if attrs:
        tok = tok.with_attributes(attrs)
    return tok.to_jwt()


@pytest.mark.parametrize(
    ("identity", "room", "extra", "reason"),
    [
        ("i" * (IDENTITY + 1), "lim-join", {}, "participant identity length exceeds limits"),
        ("p1", "r" * (ROOM_NAME + 1), {}, "room name length exceeds limits"),
        ("p2", "lim-join", {"name": "n" * (NAME + 1)}, "name length exceeds limits"),
        ("p3", "lim-join", {"metadata": "m" * (META + 1)}, "metadata size exceeds limits"),
        ("p4", "lim-join", {"k": "v" * ATTRS}, "attribute size exceeds limits"),
    ],
    ids=["identity", "room-name", "name", "metadata", "attributes"],
)
async def test_join_over_a_limit_is_refused(
    server: TrackyardProcess,
    lkapi: api.LiveKitAPI,
    identity: str,
    room: str,
    extra: dict[str, str],
    reason: str,
) -> None:
    """LiveKit's ValidateConnectRequest/StartSession answer these with 400 and the reason."""
    tok = _token(identity, room, **extra)
    with pytest.raises(rtc.ConnectError):
        await asyncio.wait_for(rtc.Room().connect(server.ws_url, tok), TIMEOUT)
    with pytest.raises(websockets.InvalidStatus) as err:
        await websockets.connect(f"{server.ws_url}/rtc?access_token={tok}", open_timeout=10)
    assert err.value.response.status_code == 400
    assert reason in err.value.response.body.decode()
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(f"{server.http_url}/rtc/validate", params={"access_token": tok})
    assert r.status_code == 400 and reason in r.text
    listed = await lkapi.room.list_rooms(api.ListRoomsRequest(names=[room]))
    assert list(listed.rooms) == []  # the refused join created no room


async def test_join_at_the_limits_is_admitted(
    server: TrackyardProcess, lkapi: api.LiveKitAPI
) -> None:
    room, identity = "r" * ROOM_NAME, "i" * IDENTITY
    tok = _token(identity, room, name="n" * NAME, metadata="m" * META, k="v" * (ATTRS - 1))
    client = rtc.Room()
    await asyncio.wait_for(client.connect(server.ws_url, tok), TIMEOUT)
    try:
        got = await lkapi.room.get_participant(
            api.RoomParticipantIdentity(room=room, identity=identity)
        )
        assert (got.name, got.metadata, dict(got.attributes)) == (
            "n" * NAME,
            "m" * META,
            {"k": "v" * (ATTRS - 1)},
        )
    finally:
        await asyncio.wait_for(client.disconnect(), TIMEOUT)


async def test_api_calls_over_a_limit(server: TrackyardProcess, lkapi: api.LiveKitAPI) -> None:
    """RoomService answers invalid_argument (400) as LiveKit's roomservice.go does, and the
    room or participant is unchanged."""

    async def refused(call: object, reason: str) -> None:
        with pytest.raises(api.TwirpError) as err:
            await call  # type: ignore[misc]
        assert (err.value.code, err.value.status) == ("invalid_argument", 400)
        assert err.value.message.startswith(reason), err.value.message

    room = "lim-api"
    await refused(
        lkapi.room.create_room(api.CreateRoomRequest(name="r" * (ROOM_NAME + 1))),
        "room name length exceeds limits",
    )
    await refused(
        lkapi.room.create_room(api.CreateRoomRequest(name=room, metadata="m" * (META + 1))),
        "metadata size exceeds limits",
    )
    listed = await lkapi.room.list_rooms(api.ListRoomsRequest(names=[room, "r" * (ROOM_NAME + 1)]))
    assert list(listed.rooms) == []
    await lkapi.room.create_room(api.CreateRoomRequest(name=room, metadata="m0"))
    await refused(
        lkapi.room.update_room_metadata(
            api.UpdateRoomMetadataRequest(room=room, metadata="m" * (META + 1))
        ),
        "metadata size exceeds limits",
    )
    async with joined(server, "actor", room, k1="a" * 20):
        update = api.UpdateParticipantRequest
        await refused(
            lkapi.room.update_participant(
                update(room=room, identity="actor", metadata="m" * (META + 1))
            ),
            "metadata size exceeds limits",
        )
        await refused(
            lkapi.room.update_participant(update(room=room, identity="actor", name="n" * 13)),
            "name length exceeds limits",
        )
        # 4 + 20 already there; 2 + 25 more is over 48 in total (LiveKit counts keys + values)
        await refused(
            lkapi.room.update_participant(
                update(room=room, identity="actor", attributes={"k2": "b" * 25})
            ),
            "attribute size exceeds limits",
        )
        got = await lkapi.room.get_participant(
            api.RoomParticipantIdentity(room=room, identity="actor")
        )
        assert (got.metadata, got.name, dict(got.attributes)) == (
            "",
            "actor",
            {"k1": "a" * 20},
        )
        # replacing k1 keeps the total under the limit: allowed
        ok = await lkapi.room.update_participant(
            update(room=room, identity="actor", attributes={"k1": "", "k2": "b" * 25})
        )
        assert dict(ok.attributes) == {"k2": "b" * 25}
    rooms = await lkapi.room.list_rooms(api.ListRoomsRequest(names=[room]))
    assert [r.metadata for r in rooms.rooms] == ["m0"]


async def test_self_update_over_a_limit(server: TrackyardProcess, lkapi: api.LiveKitAPI) -> None:
    """An SDK's own metadata/name/attributes update over a limit changes nothing (LiveKit
    answers request_response LIMIT_EXCEEDED); the next update within limits goes through."""
    room = "lim-self"
    async with (
        connected(server.ws_url, "watch", room) as watcher,
        joined(server, "self", room, k1="a" * 20) as actor,
    ):
        meta = EventWaiter(watcher, "participant_metadata_changed")
        names = EventWaiter(watcher, "participant_name_changed")
        attrs = EventWaiter(watcher, "participant_attributes_changed")
        me = actor.local_participant
        await asyncio.wait_for(me.set_metadata("m" * (META + 1)), TIMEOUT)
        await asyncio.wait_for(me.set_name("n" * (NAME + 1)), TIMEOUT)
        await asyncio.wait_for(me.set_attributes({"k2": "b" * 25}), TIMEOUT)
        await asyncio.wait_for(me.set_metadata("small"), TIMEOUT)
        await asyncio.wait_for(me.set_name("short"), TIMEOUT)
        await asyncio.wait_for(me.set_attributes({"k1": "", "k2": "b" * 25}), TIMEOUT)
        # updates are handled in order: seeing the last ones means the first were refused
        await meta.wait(lambda p, old, new: new == "small")
        await names.wait(lambda p, old, new: new == "short")
        await attrs.wait(lambda changed, p: dict(p.attributes) == {"k2": "b" * 25})
        assert [new for (_, _, new) in meta.calls] == ["small"]
        assert [new for (_, _, new) in names.calls] == ["short"]
        assert [dict(p.attributes) for (_, p) in attrs.calls] == [{"k2": "b" * 25}]

    # what the SDK is told: LiveKit's request_response, reason and message
    ws = await websockets.connect(
        f"{server.ws_url}/rtc?access_token={token('raw', room)}", open_timeout=10
    )
    try:
        assert rtc_pb.SignalResponse.FromString(await ws.recv()).WhichOneof("message") == "join"
        cases = [
            (rtc_pb.UpdateParticipantMetadata(metadata="m" * (META + 1)), "metadata size"),
            (rtc_pb.UpdateParticipantMetadata(name="n" * (NAME + 1)), "name length"),
            (rtc_pb.UpdateParticipantMetadata(attributes={"k": "v" * ATTRS}), "attributes size"),
        ]
        for request_id, (update, what) in enumerate(cases, start=1):
            update.request_id = request_id
            await ws.send(rtc_pb.SignalRequest(update_metadata=update).SerializeToString())
            answer = await asyncio.wait_for(_request_response(ws, request_id), TIMEOUT)
            assert answer.reason == rtc_pb.RequestResponse.LIMIT_EXCEEDED
            assert answer.message == f"exceeds {what} limit"
            assert answer.update_metadata.request_id == request_id
    finally:
        await ws.close()


async def _request_response(
    ws: websockets.ClientConnection, request_id: int
) -> rtc_pb.RequestResponse:
    while True:
        msg = rtc_pb.SignalResponse.FromString(await ws.recv())
        if (
            msg.WhichOneof("message") == "request_response"
            and msg.request_response.request_id == request_id
        ):
            return msg.request_response


async def test_subscription_limit(server: TrackyardProcess) -> None:
    """``subscription_limit_audio: 1``: a second audio track is not subscribed, video (no
    limit) still is."""
    room = "lim-subs"
    async with (
        connected(server.ws_url, "sub", room) as sub,
        connected(server.ws_url, "pub-a", room) as pub_a,
        connected(server.ws_url, "pub-b", room) as pub_b,
    ):
        subscribed = EventWaiter(sub, "track_subscribed")
        audio = [rtc.AudioSource(48000, 1), rtc.AudioSource(48000, 1)]
        pa = await asyncio.wait_for(
            pub_a.local_participant.publish_track(
                rtc.LocalAudioTrack.create_audio_track("a", audio[0])
            ),
            15,
        )
        await subscribed.wait(lambda track, publication, p: publication.sid == pa.sid, 15)
        pb = await asyncio.wait_for(
            pub_b.local_participant.publish_track(
                rtc.LocalAudioTrack.create_audio_track("b", audio[1])
            ),
            15,
        )
        video = rtc.VideoSource(64, 64)
        pv = await asyncio.wait_for(
            pub_b.local_participant.publish_track(
                rtc.LocalVideoTrack.create_video_track("v", video),
                rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=False),
            ),
            15,
        )
        # the video's subscription was asked for after the second audio's: once it is made,
        # the audio's would have been too
        await subscribed.wait(lambda track, publication, p: publication.sid == pv.sid, 15)
        sids = [publication.sid for (_, publication, _) in subscribed.calls]
        assert sids == [pa.sid, pv.sid]
        remote_b = sub.remote_participants["pub-b"]
        assert remote_b.track_publications[pb.sid].subscribed is False


async def test_remote_unmute_when_enabled(server: TrackyardProcess, lkapi: api.LiveKitAPI) -> None:
    room = "lim-unmute"
    async with (
        connected(server.ws_url, "viewer", room) as viewer,
        connected(server.ws_url, "speaker", room) as speaker,
    ):
        source = rtc.AudioSource(48000, 1)
        track = rtc.LocalAudioTrack.create_audio_track("mic", source)
        published = EventWaiter(viewer, "track_published")
        pub = await asyncio.wait_for(speaker.local_participant.publish_track(track), 15)
        await published.wait(lambda publication, p: publication.sid == pub.sid)
        muted = EventWaiter(viewer, "track_muted")
        unmuted = EventWaiter(viewer, "track_unmuted")
        mute = api.MuteRoomTrackRequest(room=room, identity="speaker", track_sid=pub.sid)
        mute.muted = True
        assert (await lkapi.room.mute_published_track(mute)).track.muted
        await muted.wait(lambda p, publication: publication.sid == pub.sid)
        mute.muted = False
        resp = await lkapi.room.mute_published_track(mute)
        assert resp.track.sid == pub.sid and not resp.track.muted
        await unmuted.wait(lambda p, publication: publication.sid == pub.sid)
