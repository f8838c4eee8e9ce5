"""The Twirp RoomService through livekit-api's client, including its error cases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from livekit import api, rtc

from tests.support.sdk import EventWaiter, connected
from tests.support.trackyard import API_KEY, API_SECRET, TrackyardProcess

pytestmark = pytest.mark.sdk


@pytest.fixture
async def lkapi(server: TrackyardProcess) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(server.http_url, API_KEY, API_SECRET)
    yield client
    await client.aclose()


def _limited_api(server: TrackyardProcess, **grants: object) -> api.LiveKitAPI:
    tok = api.AccessToken(API_KEY, API_SECRET).with_grants(api.VideoGrants(**grants)).to_jwt()
    return (
        api.LiveKitAPI.with_token(server.http_url, tok)
        if hasattr(api.LiveKitAPI, "with_token")
        else api.LiveKitAPI(server.http_url, API_KEY, API_SECRET)
    )


async def test_create_list_delete_room(lkapi: api.LiveKitAPI, room_name: str) -> None:
    created = await lkapi.room.create_room(
        api.CreateRoomRequest(name=room_name, empty_timeout=30, max_participants=7, metadata="m0")
    )
    assert created.sid.startswith("RM_")
    assert (created.name, created.max_participants, created.metadata) == (room_name, 7, "m0")
    again = await lkapi.room.create_room(api.CreateRoomRequest(name=room_name))
    assert again.sid == created.sid  # idempotent, as LiveKit
    listed = await lkapi.room.list_rooms(api.ListRoomsRequest(names=[room_name]))
    assert [r.sid for r in listed.rooms] == [created.sid]
    everything = await lkapi.room.list_rooms(api.ListRoomsRequest())
    assert created.sid in [r.sid for r in everything.rooms]
    await lkapi.room.delete_room(api.DeleteRoomRequest(room=room_name))
    listed = await lkapi.room.list_rooms(api.ListRoomsRequest(names=[room_name]))
    assert list(listed.rooms) == []
    with pytest.raises(api.TwirpError) as err:
        await lkapi.room.delete_room(api.DeleteRoomRequest(room=room_name))
    assert err.value.code == "not_found" and err.value.status == 404


async def test_participant_methods(
    server: TrackyardProcess, lkapi: api.LiveKitAPI, room_name: str
) -> None:
    async with (
        connected(server.ws_url, "p1", room_name) as p1,
        connected(server.ws_url, "p2", room_name) as p2,
    ):
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room_name))
        assert sorted(p.identity for p in listed.participants) == ["p1", "p2"]
        got = await lkapi.room.get_participant(
            api.RoomParticipantIdentity(room=room_name, identity="p2")
        )
        assert got.sid == p2.local_participant.sid

        # UpdateParticipant: metadata, name, attributes reach the others
        meta = EventWaiter(p1, "participant_metadata_changed")
        updated = await lkapi.room.update_participant(
            api.UpdateParticipantRequest(
                room=room_name,
                identity="p2",
                metadata="from-api",
                name="P Two",
                attributes={"k": "v"},
            )
        )
        assert (updated.metadata, updated.name, dict(updated.attributes)) == (
            "from-api",
            "P Two",
            {"k": "v"},
        )
        await meta.wait(lambda p, o, n: p.identity == "p2" and n == "from-api")

        # SendData: server-originated data to one destination
        data1 = EventWaiter(p1, "data_received")
        data2 = EventWaiter(p2, "data_received")
        await lkapi.room.send_data(
            api.SendDataRequest(
                room=room_name,
                data=b"just-p2",
                kind=api.DataPacket.Kind.RELIABLE,
                destination_identities=["p2"],
                topic="srv",
            )
        )
        await lkapi.room.send_data(
            api.SendDataRequest(room=room_name, data=b"all", kind=api.DataPacket.Kind.RELIABLE)
        )
        (pkt,) = await data2.wait(lambda p: p.data == b"just-p2")
        assert pkt.topic == "srv"
        await data1.wait(lambda p: p.data == b"all")
        assert b"just-p2" not in [p.data for (p,) in data1.calls]

        # UpdateRoomMetadata -> room_update to everyone
        room_meta = EventWaiter(p1, "room_metadata_changed")
        room = await lkapi.room.update_room_metadata(
            api.UpdateRoomMetadataRequest(room=room_name, metadata="room-meta")
        )
        assert room.metadata == "room-meta"
        await room_meta.wait(lambda old, new: new == "room-meta")

        # UpdateSubscriptions on a track that does not exist is accepted (no-op)
        await lkapi.room.update_subscriptions(
            api.UpdateSubscriptionsRequest(
                room=room_name, identity="p1", track_sids=["TR_nothere"], subscribe=False
            )
        )

        # RemoveParticipant -> the removed client is disconnected, the other sees it leave
        gone = EventWaiter(p1, "participant_disconnected")
        disconnected = EventWaiter(p2, "disconnected")
        await lkapi.room.remove_participant(
            api.RoomParticipantIdentity(room=room_name, identity="p2")
        )
        (reason,) = await disconnected.wait()
        assert reason == rtc.DisconnectReason.PARTICIPANT_REMOVED
        await gone.wait(lambda p: p.identity == "p2")


async def test_mute_published_track(
    server: TrackyardProcess, lkapi: api.LiveKitAPI, room_name: str
) -> None:
    async with (
        connected(server.ws_url, "viewer", room_name) as viewer,
        connected(server.ws_url, "speaker", room_name) as speaker,
    ):
        source = rtc.AudioSource(48000, 1)
        track = rtc.LocalAudioTrack.create_audio_track("mic", source)
        published = EventWaiter(viewer, "track_published")
        pub = await asyncio.wait_for(speaker.local_participant.publish_track(track), 15)
        await published.wait(lambda publication, p: publication.sid == pub.sid)
        muted = EventWaiter(viewer, "track_muted")
        resp = await lkapi.room.mute_published_track(
            api.MuteRoomTrackRequest(
                room=room_name, identity="speaker", track_sid=pub.sid, muted=True
            )
        )
        assert resp.track.sid == pub.sid and resp.track.muted
        participant, publication = await muted.wait()  # SDK order: (participant, publication)
        assert participant.identity == "speaker" and publication.sid == pub.sid
        assert publication.muted
        with pytest.raises(api.TwirpError) as err:
            await lkapi.room.mute_published_track(
                api.MuteRoomTrackRequest(
                    room=room_name, identity="speaker", track_sid="TR_x", muted=True
                )
            )
        assert err.value.code == "not_found"


async def test_delete_room_disconnects_everyone(
    server: TrackyardProcess, lkapi: api.LiveKitAPI, room_name: str
) -> None:
    async with connected(server.ws_url, "a", room_name) as a:
        disconnected = EventWaiter(a, "disconnected")
        await lkapi.room.delete_room(api.DeleteRoomRequest(room=room_name))
        (reason,) = await disconnected.wait()
        assert reason == rtc.DisconnectReason.ROOM_DELETED


async def test_unknown_room_and_participant(lkapi: api.LiveKitAPI, room_name: str) -> None:
    with pytest.raises(api.TwirpError) as err:
        await lkapi.room.list_participants(api.ListParticipantsRequest(room="no-such-room"))
    assert (err.value.code, err.value.status) == ("not_found", 404)
    await lkapi.room.create_room(api.CreateRoomRequest(name=room_name))
    for call in (
        lkapi.room.get_participant(api.RoomParticipantIdentity(room=room_name, identity="ghost")),
        lkapi.room.remove_participant(
            api.RoomParticipantIdentity(room=room_name, identity="ghost")
        ),
        lkapi.room.update_participant(
            api.UpdateParticipantRequest(room=room_name, identity="ghost")
        ),
    ):
        with pytest.raises(api.TwirpError) as err:
            await call
        assert err.value.code == "not_found"
        assert "ghost" in err.value.message


async def test_grants_are_checked(server: TrackyardProcess, room_name: str) -> None:
    async def call(grants: api.VideoGrants, method: str, body: bytes) -> httpx.Response:
        tok = api.AccessToken(API_KEY, API_SECRET).with_grants(grants).to_jwt()
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.post(
                f"{server.http_url}/twirp/livekit.RoomService/{method}",
                content=body,
                headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/protobuf"},
            )

    create = api.CreateRoomRequest(name=room_name).SerializeToString()
    r = await call(api.VideoGrants(room_list=True), "CreateRoom", create)
    assert r.status_code == 403 and r.json()["code"] == "permission_denied"
    assert "roomCreate" in r.json()["msg"]
    r = await call(api.VideoGrants(room_create=True), "ListRooms", b"")
    assert r.status_code == 403 and "roomList" in r.json()["msg"]
    r = await call(api.VideoGrants(room_create=True), "CreateRoom", create)
    assert r.status_code == 200
    lp = api.ListParticipantsRequest(room=room_name).SerializeToString()
    r = await call(api.VideoGrants(room_admin=True, room="other-room"), "ListParticipants", lp)
    assert r.status_code == 403 and "not for room" in r.json()["msg"]
    r = await call(api.VideoGrants(room_admin=True, room=room_name), "ListParticipants", lp)
    assert r.status_code == 200


async def test_twirp_errors_and_json(server: TrackyardProcess, room_name: str) -> None:
    admin = (
        api.AccessToken(API_KEY, API_SECRET)
        .with_grants(
            api.VideoGrants(room_create=True, room_list=True, room_admin=True, room=room_name)
        )
        .to_jwt()
    )
    base = f"{server.http_url}/twirp/livekit.RoomService/"
    auth = {"Authorization": f"Bearer {admin}"}
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(
            base + "CreateRoom", json={"name": room_name, "metadata": "j"}, headers=auth
        )
        assert (
            r.status_code == 200 and r.json()["name"] == room_name and r.json()["metadata"] == "j"
        )
        r = await client.post(base + "NoSuchMethod", json={}, headers=auth)
        assert r.status_code == 404 and r.json()["code"] == "bad_route"
        r = await client.post(
            base + "CreateRoom",
            content=b"\xff\xff\xff",
            headers={**auth, "Content-Type": "application/protobuf"},
        )
        assert r.status_code == 400 and r.json()["code"] == "malformed"
        r = await client.post(
            base + "CreateRoom",
            content=b"{not json",
            headers={**auth, "Content-Type": "application/json"},
        )
        assert r.status_code == 400 and r.json()["code"] == "malformed"
        r = await client.post(base + "ListRooms", json={})
        assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
        r = await client.post(
            base + "ListRooms", json={}, headers={"Authorization": "Bearer garbage"}
        )
        assert r.status_code == 401 and "not a JWT" in r.json()["msg"]
        # CORS preflight from a browser page
        r = await client.options(
            base + "ListRooms",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] in (
            "*",
            "https://app.example",
        )
        # the server still serves after all that
        r = await client.post(base + "ListRooms", json={}, headers=auth)
        assert r.status_code == 200 and room_name in [x["name"] for x in r.json()["rooms"]]
