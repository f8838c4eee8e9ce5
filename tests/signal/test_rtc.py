"""The edge's ``/rtc`` socket on its own: frame checks, upgrade refusals and ``/rtc/validate``.

The node behind the edge is a fake that answers joins at once. The same frames against the
real server (and its SFU node) are in ``tests/e2e/test_bad_input.py``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from livekit.protocol import models, rtc
from starlette.websockets import WebSocketDisconnect

from tests.signal.fakes import fake_node, fake_router, token
from trackyard.core import messages
from trackyard.core.refusal import CloseReason, Code, Refusal
from trackyard.signal.edge import Edge
from trackyard.signal.rtc import check_frame

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's notice about its httpx transport
    from starlette.testclient import TestClient, WebSocketDenialResponse

MAX = 1024


def _join_token(identity: str = "alice", room: str = "r") -> str:
    return token(identity, roomJoin=True, room=room)


@pytest.fixture
def client(app: FastAPI, edge: Edge) -> Iterator[TestClient]:
    edge.config.signal.max_message_size = MAX
    with TestClient(app) as client:
        yield client


# -- frame checks ----------------------------------------------------------------------------

BAD_FRAMES = [
    (b"\x0a\xff\xff\xff\xff\x0f", Code.MALFORMED, "not a protobuf SignalRequest"),
    (b"\xde\xad\xbe\xef" * 8, Code.MALFORMED, "malformed"),
    (None, Code.UNIMPLEMENTED, "text frames are not supported"),
    (b"\x00" * (MAX + 1), Code.RESOURCE_EXHAUSTED, "exceeds"),
    # a valid protobuf of another type: a SignalResponse (pong) means nothing to the server
    (rtc.SignalResponse(pong=123).SerializeToString(), Code.MALFORMED, "no known request"),
]
FRAME_IDS = ["truncated-protobuf", "garbage", "text", "too-big", "wrong-type"]
CLOSE_CODES = {  # what tests/e2e/test_bad_input.py expects of the real server
    Code.MALFORMED: 1007,
    Code.UNIMPLEMENTED: 1003,
    Code.RESOURCE_EXHAUSTED: 1009,
}


@pytest.mark.parametrize(("frame", "code", "reason"), BAD_FRAMES, ids=FRAME_IDS)
def test_bad_frames_are_refused(frame: bytes | None, code: Code, reason: str) -> None:
    refusal = check_frame(frame, MAX)
    assert refusal is not None
    assert refusal.code is code and reason in refusal.reason
    assert refusal.close_reason.value == CLOSE_CODES[code]


def test_good_frames_pass() -> None:
    for request in (
        rtc.SignalRequest(ping=1),
        rtc.SignalRequest(leave=rtc.LeaveRequest()),
        rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp="v=0")),
    ):
        assert check_frame(request.SerializeToString(), MAX) is None
    assert check_frame(b"\x00" * MAX, MAX) is not None  # at the limit: size passes, content not


@pytest.mark.parametrize(("frame", "code", "reason"), BAD_FRAMES, ids=FRAME_IDS)
def test_bad_frame_closes_the_socket(
    client: TestClient, edge: Edge, frame: bytes | None, code: Code, reason: str
) -> None:
    with client.websocket_connect(f"/rtc?access_token={_join_token()}") as ws:
        first = rtc.SignalResponse.FromString(ws.receive_bytes())
        assert first.WhichOneof("message") == "join"
        if frame is None:
            ws.send_text("a text frame")
        else:
            ws.send_bytes(frame)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_bytes()
    assert closed.value.code == CLOSE_CODES[code] and reason in closed.value.reason
    kinds = [env.kind for env in fake_node(edge).received]
    assert kinds == [messages.JOIN, messages.CLIENT_GONE]  # the bad frame never reached it


def test_good_frame_reaches_the_node(client: TestClient, edge: Edge) -> None:
    ping = rtc.SignalRequest(ping_req=rtc.Ping(timestamp=7)).SerializeToString()
    with client.websocket_connect(f"/rtc?access_token={_join_token()}") as ws:
        ws.receive_bytes()
        ws.send_bytes(ping)
        ws.send_bytes(ping)  # the second proves the first was taken off the socket
    signals = [env.data for env in fake_node(edge).received if env.kind == messages.SIGNAL]
    assert signals[:1] == [ping]


# -- refused upgrades ------------------------------------------------------------------------


def _refused(client: TestClient, query: str) -> tuple[int, str]:
    with (
        pytest.raises(WebSocketDenialResponse) as denied,
        client.websocket_connect(f"/rtc?{query}"),
    ):
        pass
    return denied.value.status_code, denied.value.text


def test_bad_tokens_are_refused_before_upgrade(client: TestClient) -> None:
    assert _refused(client, "access_token=not-a-jwt") == (401, "invalid access token: not a JWT")
    status, reason = _refused(client, f"access_token={token('alice', room='r')}")
    assert (status, reason) == (403, "permission denied: token lacks the roomJoin grant")


def test_refusals_from_router_and_node(client: TestClient, edge: Edge) -> None:
    fake_node(edge).refuse_joins = Refusal(Code.PERMISSION_DENIED, "room r is full")
    assert _refused(client, f"access_token={_join_token()}") == (403, "room r is full")
    fake_router(edge).refusal = Refusal(Code.UNAVAILABLE, "no node can host the room")
    assert _refused(client, f"access_token={_join_token()}") == (503, "no node can host the room")


def test_room_must_exist_without_auto_create(client: TestClient, edge: Edge) -> None:
    edge.config.room.auto_create = False
    assert _refused(client, f"access_token={_join_token()}") == (404, "room r does not exist")


def test_unknown_resume_asks_for_full_reconnect(client: TestClient, edge: Edge) -> None:
    fake_node(edge).refuse_joins = Refusal(Code.NOT_FOUND, "session cannot be resumed")
    query = f"access_token={_join_token()}&reconnect=1&sid=PA_gone"
    with client.websocket_connect(f"/rtc?{query}") as ws:
        leave = rtc.SignalResponse.FromString(ws.receive_bytes()).leave
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_bytes()
    assert leave.action == rtc.LeaveRequest.RECONNECT and leave.can_reconnect
    assert leave.reason == models.DisconnectReason.STATE_MISMATCH
    assert closed.value.code == CloseReason.ENDED


# -- /rtc/validate ---------------------------------------------------------------------------


def test_validate_answers_as_the_upgrade_would(client: TestClient, edge: Edge) -> None:
    resp = client.get("/rtc/validate", params={"access_token": "not-a-jwt"})
    assert (resp.status_code, resp.text) == (401, "invalid access token: not a JWT")
    resp = client.get("/rtc/validate", params={"access_token": _join_token()})
    assert (resp.status_code, resp.text) == (200, "success")  # auto_create: no room yet is fine
    edge.config.room.auto_create = False
    resp = client.get("/rtc/validate", params={"access_token": _join_token()})
    assert (resp.status_code, resp.text) == (404, "room r does not exist")
