"""The edge's Twirp RoomService on its own: grant checks, request checks, and how refusals
(its own, the router's, the node's) reach the caller. The node and router are fakes; the same
calls against real processes and the official client are in ``tests/e2e/test_roomservice.py``."""

from __future__ import annotations

import httpx
import pytest
from livekit.protocol import models
from livekit.protocol import room as room_pb

from tests.signal.fakes import fake_node, fake_router, token
from trackyard.core.refusal import Code, Refusal
from trackyard.signal.edge import Edge

BASE = "/twirp/livekit.RoomService/"
PROTOBUF = {"Content-Type": "application/protobuf"}


def _auth(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}", **PROTOBUF}


async def _post(http: httpx.AsyncClient, method: str, req: object, tok: str) -> httpx.Response:
    assert hasattr(req, "SerializeToString")
    return await http.post(BASE + method, content=req.SerializeToString(), headers=_auth(tok))


def _denied(resp: httpx.Response, missing: str) -> None:
    """LiveKit (pkg/service/auth.go): a missing grant is ``unauthenticated`` (401)."""
    assert (resp.status_code, resp.json()["code"]) == (401, "unauthenticated"), resp.text
    msg = resp.json()["msg"]
    assert msg.startswith("permissions denied") and missing in msg, msg


# Each method and the grant it needs (LiveKit's roomservice.go).
GRANTS = [
    ("CreateRoom", room_pb.CreateRoomRequest(name="r"), "roomCreate"),
    ("DeleteRoom", room_pb.DeleteRoomRequest(room="r"), "roomCreate"),
    ("ListRooms", room_pb.ListRoomsRequest(), "roomList"),
    ("ListParticipants", room_pb.ListParticipantsRequest(room="r"), "roomAdmin"),
    ("GetParticipant", room_pb.RoomParticipantIdentity(room="r", identity="i"), "roomAdmin"),
    ("RemoveParticipant", room_pb.RoomParticipantIdentity(room="r", identity="i"), "roomAdmin"),
    ("MutePublishedTrack", room_pb.MuteRoomTrackRequest(room="r", identity="i"), "roomAdmin"),
    ("UpdateParticipant", room_pb.UpdateParticipantRequest(room="r", identity="i"), "roomAdmin"),
    ("UpdateSubscriptions", room_pb.UpdateSubscriptionsRequest(room="r"), "roomAdmin"),
    ("SendData", room_pb.SendDataRequest(room="r", data=b"x"), "roomAdmin"),
    ("UpdateRoomMetadata", room_pb.UpdateRoomMetadataRequest(room="r"), "roomAdmin"),
    ("PerformRpc", room_pb.PerformRpcRequest(room="r", destination_identity="i"), "roomAdmin"),
]
GRANT_FLAGS = {"roomCreate": "roomCreate", "roomList": "roomList", "roomAdmin": "roomAdmin"}


@pytest.mark.parametrize(("method", "req", "grant"), GRANTS, ids=[g[0] for g in GRANTS])
async def test_each_method_needs_its_grant(
    http: httpx.AsyncClient, edge: Edge, method: str, req: object, grant: str
) -> None:
    others = {flag: True for flag in GRANT_FLAGS if flag != grant}
    resp = await _post(http, method, req, token(**others, room="r"))
    _denied(resp, grant)
    assert fake_node(edge).received == []  # refused at the edge: the node never heard of it


async def test_admin_grant_is_for_one_room(http: httpx.AsyncClient, edge: Edge) -> None:
    req = room_pb.UpdateRoomMetadataRequest(room="r", metadata="nope")
    _denied(await _post(http, "UpdateRoomMetadata", req, token(roomAdmin=True, room="o")), "'o'")
    _denied(await _post(http, "UpdateRoomMetadata", req, token(roomAdmin=True)), "not 'r'")
    assert fake_node(edge).received == []


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "permissions denied"),
        ({"Authorization": "Basic Zm9vOmJhcg=="}, "Must start with Bearer"),
        ({"Authorization": "Bearer garbage"}, "not a JWT"),
    ],
    ids=["none", "basic", "garbage"],
)
async def test_missing_or_bad_token_is_unauthenticated(
    http: httpx.AsyncClient, headers: dict[str, str], reason: str
) -> None:
    resp = await http.post(BASE + "ListRooms", json={}, headers=headers)
    assert (resp.status_code, resp.json()["code"]) == (401, "unauthenticated")
    assert reason in resp.json()["msg"]


async def test_token_as_query_parameter(http: httpx.AsyncClient) -> None:
    resp = await http.post(
        BASE + "ListRooms", json={}, params={"access_token": token(roomList=True)}
    )
    assert resp.status_code == 200 and resp.json() == {}


async def test_bad_route_and_malformed_body(http: httpx.AsyncClient) -> None:
    tok = token(roomCreate=True)
    resp = await http.post(BASE + "NoSuchMethod", json={}, headers=_auth(tok))
    assert (resp.status_code, resp.json()["code"]) == (404, "bad_route")
    resp = await http.post(BASE + "CreateRoom", content=b"\xff\xff\xff", headers=_auth(tok))
    assert (resp.status_code, resp.json()["code"]) == (400, "malformed")
    resp = await http.post(
        BASE + "CreateRoom",
        content=b"{not json",
        headers={**_auth(tok), "Content-Type": "application/json"},
    )
    assert (resp.status_code, resp.json()["code"]) == (400, "malformed")


async def test_limits_are_invalid_argument(http: httpx.AsyncClient, edge: Edge) -> None:
    tok = token(roomAdmin=True, room="r")
    req = room_pb.SendDataRequest(room="r", data=b"x", nonce=b"short")
    resp = await _post(http, "SendData", req, tok)
    assert (resp.status_code, resp.json()["code"]) == (400, "invalid_argument")
    assert "nonce" in resp.json()["msg"]
    resp = await _post(http, "PerformRpc", room_pb.PerformRpcRequest(room="r"), tok)
    assert (resp.status_code, resp.json()["code"]) == (400, "invalid_argument")
    assert fake_node(edge).received == []


async def test_unknown_room(http: httpx.AsyncClient) -> None:
    tok = token(roomAdmin=True, room="r")
    listed = await _post(http, "ListParticipants", room_pb.ListParticipantsRequest(room="r"), tok)
    assert listed.status_code == 200 and listed.content == b""  # nobody, no error (LiveKit)
    req = room_pb.RoomParticipantIdentity(room="r", identity="i")
    resp = await _post(http, "GetParticipant", req, tok)
    assert (resp.status_code, resp.json()["code"]) == (404, "not_found")
    assert resp.json()["msg"].startswith("participant does not exist")
    resp = await _post(http, "SendData", room_pb.SendDataRequest(room="r", data=b"x"), tok)
    assert (resp.status_code, resp.json()["code"]) == (404, "not_found")
    assert resp.json()["msg"].startswith("requested room does not exist")


async def test_node_refusal_passes_through(http: httpx.AsyncClient, edge: Edge) -> None:
    """The node's refusal code and reason reach the caller unchanged, with the code's status."""

    async def mute(_data: bytes) -> bytes:
        raise Refusal(Code.FAILED_PRECONDITION, "remote unmute not enabled")

    async def get(_data: bytes) -> bytes:
        return models.ParticipantInfo(identity="i", sid="PA_i").SerializeToString()

    fake_node(edge).rpc.update({"MutePublishedTrack": mute, "GetParticipant": get})
    tok = token(roomAdmin=True, room="r")
    await fake_router(edge).place("r", create=True)
    req = room_pb.MuteRoomTrackRequest(room="r", identity="i", track_sid="TR_x", muted=False)
    resp = await _post(http, "MutePublishedTrack", req, tok)
    assert (resp.status_code, resp.json()) == (
        412,
        {"code": "failed_precondition", "msg": "remote unmute not enabled"},
    )
    req2 = room_pb.RoomParticipantIdentity(room="r", identity="i")
    resp = await _post(http, "GetParticipant", req2, tok)
    assert resp.status_code == 200
    assert models.ParticipantInfo.FromString(resp.content).sid == "PA_i"


async def test_placement_refusal_is_unavailable(http: httpx.AsyncClient, edge: Edge) -> None:
    fake_router(edge).refusal = Refusal(Code.UNAVAILABLE, "no node can host the room")
    resp = await _post(
        http, "CreateRoom", room_pb.CreateRoomRequest(name="r"), token(roomCreate=True)
    )
    assert (resp.status_code, resp.json()) == (
        503,
        {"code": "unavailable", "msg": "no node can host the room"},
    )
