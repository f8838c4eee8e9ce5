"""Bad input gets a precise close reason or status, and nobody else is affected."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator

import pytest
import websockets
from livekit.protocol import models, rtc

from tests.support.sdk import EventWaiter, connected, token
from tests.support.trackyard import API_KEY, API_SECRET, TrackyardProcess
from trackyard.core.auth import create_token

pytestmark = pytest.mark.sdk

MAX_MESSAGE = 65536  # well above an SDP offer (several KB)


@pytest.fixture(scope="module")
def server() -> Iterator[TrackyardProcess]:
    cfg = {"signal": {"max_message_size": MAX_MESSAGE}, "room": {"departure_timeout": 1}}
    with TrackyardProcess(cfg) as proc:
        yield proc
        assert proc.alive(), proc.logs()


async def _raw_session(server: TrackyardProcess, identity: str) -> websockets.ClientConnection:
    ws = await websockets.connect(
        f"{server.ws_url}/rtc?access_token={token(identity, 'rough')}", open_timeout=10
    )
    first = rtc.SignalResponse.FromString(await asyncio.wait_for(ws.recv(), 10))
    assert first.WhichOneof("message") == "join"
    return ws


async def _closed_with(ws: websockets.ClientConnection) -> tuple[int, str]:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        for _ in range(50):  # skip the server's offer/updates until the close arrives
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


BAD_FRAMES = [
    (b"\x0a\xff\xff\xff\xff\x0f", 1007, "not a protobuf SignalRequest"),
    (b"\xde\xad\xbe\xef" * 8, 1007, "malformed"),
    ("a text frame", 1003, "text frames are not supported"),
    (b"\x00" * (MAX_MESSAGE + 1), 1009, "exceeds"),
    # a valid protobuf of another type: a SignalResponse (pong) means nothing to the server
    (rtc.SignalResponse(pong=123).SerializeToString(), 1007, "no known request"),
]


@pytest.mark.parametrize(
    ("payload", "code", "reason"),
    BAD_FRAMES,
    ids=["truncated-protobuf", "garbage", "text", "too-big", "wrong-type"],
)
async def test_bad_frames_close_with_reason(
    server: TrackyardProcess, payload: bytes | str, code: int, reason: str
) -> None:
    ws = await _raw_session(server, f"rough-{code}-{len(payload)}")
    await ws.send(payload)
    got_code, got_reason = await _closed_with(ws)
    assert got_code == code
    assert reason in got_reason


async def test_resume_asks_for_full_reconnect(server: TrackyardProcess) -> None:
    url = f"{server.ws_url}/rtc?access_token={token('resumer', 'rough')}&reconnect=1&sid=PA_old"
    async with websockets.connect(url, open_timeout=10) as ws:
        msg = rtc.SignalResponse.FromString(await asyncio.wait_for(ws.recv(), 10))
        assert msg.WhichOneof("message") == "leave"
        assert msg.leave.action == rtc.LeaveRequest.RECONNECT
        assert msg.leave.reason == models.DisconnectReason.STATE_MISMATCH


@pytest.mark.parametrize(
    ("tok", "status", "reason"),
    [
        ("", 401, "no access token"),
        ("not-a-jwt", 401, "not a JWT"),
        (
            create_token("nokey", "x" * 32, identity="i", grants={"roomJoin": True, "room": "r"}),
            401,
            "unknown API key",
        ),
        (
            create_token(
                API_KEY, "wrong-secret", identity="i", grants={"roomJoin": True, "room": "r"}
            ),
            401,
            "signature",
        ),
        (
            create_token(
                API_KEY,
                API_SECRET,
                identity="i",
                grants={"roomJoin": True, "room": "r"},
                ttl=dt.timedelta(seconds=-60),
            ),
            401,
            "expired",
        ),
        (
            create_token(
                API_KEY,
                API_SECRET,
                identity="i",
                grants={"roomJoin": True, "room": "r"},
                not_before=4102444800,
            ),
            401,
            "nbf",
        ),
        (create_token(API_KEY, API_SECRET, identity="i", grants={"room": "r"}), 403, "roomJoin"),
        (
            create_token(API_KEY, API_SECRET, grants={"roomJoin": True, "room": "r"}),
            401,
            "identity",
        ),
    ],
    ids=[
        "missing",
        "garbage",
        "unknown-key",
        "bad-signature",
        "expired",
        "not-yet-valid",
        "no-roomjoin",
        "no-identity",
    ],
)
async def test_token_refusals(server: TrackyardProcess, tok: str, status: int, reason: str) -> None:
    with pytest.raises(websockets.InvalidStatus) as err:
        await websockets.connect(f"{server.ws_url}/rtc?access_token={tok}", open_timeout=10)
    assert err.value.response.status_code == status
    assert reason in err.value.response.body.decode()
    import httpx

    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(f"{server.http_url}/rtc/validate", params={"access_token": tok})
    assert (r.status_code, reason in r.text) == (status, True)


async def test_rtc_v1_is_404_before_token_check(server: TrackyardProcess) -> None:
    with pytest.raises(websockets.InvalidStatus) as err:
        await websockets.connect(f"{server.ws_url}/rtc/v1?access_token=bad", open_timeout=10)
    assert err.value.response.status_code == 404


async def test_bad_input_leaves_others_unaffected(server: TrackyardProcess) -> None:
    """Two SDK clients keep exchanging data while raw clients send every kind of garbage."""
    async with (
        connected(server.ws_url, "calm-a", "calm") as a,
        connected(server.ws_url, "calm-b", "calm") as b,
    ):
        got = EventWaiter(b, "data_received")
        await a.local_participant.publish_data(b"before")
        await got.wait(lambda p: p.data == b"before")
        for i, (payload, code, _reason) in enumerate(BAD_FRAMES):
            ws = await _raw_session(server, f"vandal-{i}")
            await ws.send(payload)
            assert (await _closed_with(ws))[0] == code
        await a.local_participant.publish_data(b"after")
        await got.wait(lambda p: p.data == b"after")
        assert set(b.remote_participants) == {"calm-a"}
        assert set(a.remote_participants) == {"calm-b"}
    assert server.alive()


async def test_message_sent_before_join_is_answered_after_it(server: TrackyardProcess) -> None:
    """A client that talks before reading anything still gets join first, then its answer."""
    ws = await websockets.connect(
        f"{server.ws_url}/rtc?access_token={token('eager', 'rough')}", open_timeout=10
    )
    await ws.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=42)).SerializeToString())
    first = rtc.SignalResponse.FromString(await asyncio.wait_for(ws.recv(), 10))
    assert first.WhichOneof("message") == "join"
    for _ in range(20):
        msg = rtc.SignalResponse.FromString(await asyncio.wait_for(ws.recv(), 10))
        if msg.WhichOneof("message") == "pong_resp":
            assert msg.pong_resp.last_ping_timestamp == 42
            break
    else:
        pytest.fail("no pong_resp for the early ping_req")
    await ws.close()
