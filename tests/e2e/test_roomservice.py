"""The Twirp RoomService through livekit-api's client, including its error cases."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from livekit import api, rtc

from tests.support.sdk import EventWaiter, connected, perform_rpc
from tests.support.trackyard import API_KEY, API_SECRET, TrackyardProcess

pytestmark = pytest.mark.sdk


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
        # remote unmute is off unless room.enable_remote_unmute (LiveKit's
        # ErrRemoteUnmuteNoteEnabled: failed_precondition, 412)
        with pytest.raises(api.TwirpError) as err:
            await lkapi.room.mute_published_track(
                api.MuteRoomTrackRequest(
                    room=room_name, identity="speaker", track_sid=pub.sid, muted=False
                )
            )
        assert (err.value.code, err.value.status) == ("failed_precondition", 412)
        assert "remote unmute not enabled" in err.value.message
        got = await lkapi.room.get_participant(
            api.RoomParticipantIdentity(room=room_name, identity="speaker")
        )
        assert [t.muted for t in got.tracks] == [True]


async def test_delete_room_disconnects_everyone(
    server: TrackyardProcess, lkapi: api.LiveKitAPI, room_name: str
) -> None:
    async with connected(server.ws_url, "a", room_name) as a:
        disconnected = EventWaiter(a, "disconnected")
        await lkapi.room.delete_room(api.DeleteRoomRequest(room=room_name))
        (reason,) = await disconnected.wait()
        assert reason == rtc.DisconnectReason.ROOM_DELETED


async def test_unknown_room_and_participant(lkapi: api.LiveKitAPI, room_name: str) -> None:
    # LiveKit lists the participants of an unknown room from its store: nobody, no error
    listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room="no-such-room"))
    assert list(listed.participants) == []
    listed_rooms = await lkapi.room.list_rooms(api.ListRoomsRequest(names=["no-such-room"]))
    assert list(listed_rooms.rooms) == []  # ... and creates no room doing so
    # a participant of an unknown room does not exist (LiveKit's ErrParticipantNotFound)
    with pytest.raises(api.TwirpError) as err:
        await lkapi.room.get_participant(
            api.RoomParticipantIdentity(room="no-such-room", identity="anyone")
        )
    assert (err.value.code, err.value.status) == ("not_found", 404)
    assert err.value.message.startswith("participant does not exist")
    # room-addressed calls: LiveKit's ErrRoomNotFound
    for room_call in (
        lkapi.room.update_room_metadata(
            api.UpdateRoomMetadataRequest(room="no-such-room", metadata="x")
        ),
        lkapi.room.send_data(api.SendDataRequest(room="no-such-room", data=b"x")),
    ):
        with pytest.raises(api.TwirpError) as err:
            await room_call
        assert (err.value.code, err.value.status) == ("not_found", 404)
        assert err.value.message.startswith("requested room does not exist")
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


async def test_grants_are_checked(
    server: TrackyardProcess, lkapi: api.LiveKitAPI, room_name: str
) -> None:
    """As LiveKit (pkg/service/auth.go): a missing grant is Twirp ``unauthenticated`` (401)
    "permissions denied", not permission_denied/403; so are a missing or bad token."""

    def denied(err: api.TwirpError, missing: str) -> None:
        assert (err.code, err.status) == ("unauthenticated", 401)
        assert err.message.startswith("permissions denied") and missing in err.message

    def client(**grants: object) -> api.LiveKitAPI:
        tok = api.AccessToken(API_KEY, API_SECRET).with_grants(api.VideoGrants(**grants))
        return api.LiveKitAPI(server.http_url, token=tok.to_jwt())

    create = api.CreateRoomRequest(name=room_name)
    async with client(room_list=True) as lk:
        with pytest.raises(api.TwirpError) as err:
            await lk.room.create_room(create)
        denied(err.value, "roomCreate")
        with pytest.raises(api.TwirpError) as err:
            await lk.room.delete_room(api.DeleteRoomRequest(room=room_name))
        denied(err.value, "roomCreate")
    async with client(room_create=True) as lk:
        with pytest.raises(api.TwirpError) as err:
            await lk.room.list_rooms(api.ListRoomsRequest())
        denied(err.value, "roomList")
        assert (await lk.room.create_room(create)).name == room_name
        with pytest.raises(api.TwirpError) as err:  # roomCreate is not roomAdmin
            await lk.room.list_participants(api.ListParticipantsRequest(room=room_name))
        denied(err.value, "roomAdmin")
    async with client(room_admin=True, room="other-room") as lk:
        for call in (
            lk.room.list_participants(api.ListParticipantsRequest(room=room_name)),
            lk.room.update_room_metadata(
                api.UpdateRoomMetadataRequest(room=room_name, metadata="nope")
            ),
            perform_rpc(lk, api.PerformRpcRequest(room=room_name, destination_identity="x")),
        ):
            with pytest.raises(api.TwirpError) as err:
                await call
            denied(err.value, "other-room")
    async with client(room_admin=True, room=room_name) as lk:
        listed = await lk.room.list_participants(api.ListParticipantsRequest(room=room_name))
        assert list(listed.participants) == []
    listed_rooms = await lkapi.room.list_rooms(api.ListRoomsRequest(names=[room_name]))
    assert [r.metadata for r in listed_rooms.rooms] == [""]  # the refused update did nothing

    # no token, a header that is not Bearer, a token that is not a JWT, a wrong secret
    base = f"{server.http_url}/twirp/livekit.RoomService/ListRooms"
    forged = api.AccessToken(API_KEY, "not-the-secret").with_grants(api.VideoGrants(room_list=True))
    async with httpx.AsyncClient(timeout=10) as http:
        for headers, reason in (
            ({}, "permissions denied"),
            ({"Authorization": "Basic Zm9vOmJhcg=="}, "Must start with Bearer"),
            ({"Authorization": "Bearer garbage"}, "not a JWT"),
            ({"Authorization": f"Bearer {forged.to_jwt()}"}, "signature"),
        ):
            r = await http.post(base, json={}, headers=headers)
            assert (r.status_code, r.json()["code"]) == (401, "unauthenticated"), headers
            assert reason in r.json()["msg"]
        # LiveKit also takes the token as an access_token parameter
        good = api.AccessToken(API_KEY, API_SECRET).with_grants(api.VideoGrants(room_list=True))
        r = await http.post(base, json={}, params={"access_token": good.to_jwt()})
        assert r.status_code == 200 and "rooms" in r.json()


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


async def testperform_rpc(server: TrackyardProcess, lkapi: api.LiveKitAPI, room_name: str) -> None:
    """Server-initiated RPC to a real SDK participant, errors mapped as LiveKit maps them
    (protocol utils/data_channel_rpc.go PsrpcError, then psrpc -> Twirp)."""
    async with (
        connected(server.ws_url, "agent", room_name) as agent,
        connected(server.ws_url, "bystander", room_name) as bystander,
    ):
        calls: list[rtc.RpcInvocationData] = []
        release = asyncio.Event()

        @agent.local_participant.register_rpc_method("echo")
        async def echo(data: rtc.RpcInvocationData) -> str:
            calls.append(data)
            return f"echo:{data.payload}"

        @agent.local_participant.register_rpc_method("size")
        async def size(data: rtc.RpcInvocationData) -> str:
            return str(len(data.payload))

        @agent.local_participant.register_rpc_method("fail")
        async def fail(data: rtc.RpcInvocationData) -> str:
            raise rtc.RpcError(4042, "no such order", data="order-7")

        @agent.local_participant.register_rpc_method("crash")
        async def crash(data: rtc.RpcInvocationData) -> str:
            raise ValueError("boom")

        @agent.local_participant.register_rpc_method("stall")
        async def stall(data: rtc.RpcInvocationData) -> str:
            stalled.set()
            await release.wait()
            return "late"

        stalled = asyncio.Event()
        misdelivered: list[rtc.RpcInvocationData] = []

        @bystander.local_participant.register_rpc_method("echo")
        async def bystander_echo(data: rtc.RpcInvocationData) -> str:
            misdelivered.append(data)
            return "wrong participant"

        def rpc(destination: str, method: str, payload: str = "", timeout_ms: int = 0) -> Any:
            return perform_rpc(
                lkapi,
                api.PerformRpcRequest(
                    room=room_name,
                    destination_identity=destination,
                    method=method,
                    payload=payload,
                    response_timeout_ms=timeout_ms,
                ),
            )

        async def fails(call: Any) -> api.TwirpError:
            with pytest.raises(api.TwirpError) as err:
                await asyncio.wait_for(call, 20)
            return err.value

        # success: the payload comes back; the handler saw the method, payload and timeout
        resp = await asyncio.wait_for(rpc("agent", "echo", "hello", 5000), 20)
        assert resp.payload == "echo:hello"
        (call,) = calls
        assert (call.method, call.payload) == ("echo", "hello")
        assert 0 < call.response_timeout <= 5.0
        resp = await asyncio.wait_for(rpc("agent", "size", "x" * 15360), 20)  # the 15 KiB max
        assert resp.payload == "15360"
        # a response over 15 KiB: the SDK's RESPONSE_PAYLOAD_TOO_LARGE (malformed, 400)
        err = await fails(rpc("agent", "echo", "x" * 15360))
        assert (err.code, err.status) == ("malformed", 400)
        assert err.message == "RpcError 1504: Response payload too large"

        # the handler's own error: its code and message (and data) reach the caller
        err = await fails(rpc("agent", "fail"))
        assert (err.code, err.status) == ("internal", 500)
        assert err.message == "RpcError 4042: no such order: order-7"
        # any other exception in the handler is APPLICATION_ERROR
        err = await fails(rpc("agent", "crash"))
        assert (err.code, err.status) == ("internal", 500)
        assert err.message.startswith("RpcError 1500: ")
        # no handler for the method: the SDK's UNSUPPORTED_METHOD
        err = await fails(rpc("agent", "nope"))
        assert (err.code, err.status) == ("invalid_argument", 400)
        assert err.message == "RpcError 1400: Method not supported at destination"
        # over 15 KiB of payload never leaves the server
        err = await fails(rpc("agent", "echo", "x" * 15361))
        assert (err.code, err.status) == ("malformed", 400)
        assert err.message == "RpcError 1402: Request payload too large"
        assert len(calls) == 2  # "echo" ran for "hello" and the oversized answer only
        # unknown participant, unknown room, no destination
        err = await fails(rpc("ghost", "echo"))
        assert (err.code, err.status) == ("not_found", 404)
        assert "ghost" in err.message
        err = await fails(
            perform_rpc(
                lkapi, api.PerformRpcRequest(room="no-such-room", destination_identity="agent")
            )
        )
        assert (err.code, err.status) == ("not_found", 404)
        err = await fails(rpc("", "echo"))
        assert (err.code, err.status) == ("invalid_argument", 400)
        assert err.message == "destination identity is required"

        # a handler slower than the caller's timeout: RESPONSE_TIMEOUT (canceled, 408)
        started = asyncio.get_running_loop().time()
        err = await fails(rpc("agent", "stall", timeout_ms=1500))
        elapsed = asyncio.get_running_loop().time() - started
        assert (err.code, err.status) == ("canceled", 408)
        assert err.message == "RpcError 1502: Response timeout"
        assert 1.4 < elapsed < 8, elapsed

        # the requests went to the destination only
        assert misdelivered == []
        resp = await asyncio.wait_for(rpc("bystander", "echo", "b"), 20)
        assert resp.payload == "wrong participant" and len(misdelivered) == 1

        # the participant leaves while its handler runs: RECIPIENT_DISCONNECTED (503)
        stalled.clear()
        pending = asyncio.ensure_future(rpc("agent", "stall", timeout_ms=15000))
        gone = EventWaiter(bystander, "participant_disconnected")
        await asyncio.wait_for(stalled.wait(), 10)
        await asyncio.wait_for(agent.disconnect(), 10)
        await gone.wait(lambda p: p.identity == "agent")
        err = await fails(pending)
        assert (err.code, err.status) == ("unavailable", 503)
        assert err.message == "RpcError 1503: Recipient disconnected"
        release.set()


async def test_perform_rpc_unacknowledged(
    server: TrackyardProcess, lkapi: api.LiveKitAPI, room_name: str
) -> None:
    """A participant whose replies the server drops (no canPublishData, as LiveKit drops its
    data) never acks: CONNECTION_TIMEOUT after LiveKit's 2 s round-trip allowance."""
    async with connected(server.ws_url, "mute-agent", room_name, can_publish_data=False) as agent:
        invoked = asyncio.Event()

        @agent.local_participant.register_rpc_method("echo")
        async def echo(data: rtc.RpcInvocationData) -> str:
            invoked.set()
            return data.payload

        with pytest.raises(api.TwirpError) as err:
            await asyncio.wait_for(
                perform_rpc(
                    lkapi,
                    api.PerformRpcRequest(
                        room=room_name,
                        destination_identity="mute-agent",
                        method="echo",
                        payload="p",
                        response_timeout_ms=8000,
                    ),
                ),
                20,
            )
        assert (err.value.code, err.value.status) == ("canceled", 408)
        assert err.value.message == "RpcError 1501: Connection timeout"
        assert invoked.is_set()  # the request did arrive; only the answers were dropped
