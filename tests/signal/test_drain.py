"""A draining edge in process: not ready, refuses new sockets, sends its clients to resume
elsewhere (1001) without ending their sessions, and is done when their sockets are gone or at
the deadline. The node behind it is the fake of :mod:`tests.signal.fakes`; the same drain against
real processes, SDK clients and HAProxy is ``tests/cluster/test_edge_drain.py``."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Future

import pytest
from fastapi import FastAPI
from livekit.protocol import rtc
from starlette.websockets import WebSocketDisconnect

from tests.signal.fakes import fake_node, token
from trackyard.core import messages
from trackyard.core.refusal import CloseReason
from trackyard.signal.edge import Edge

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's notice about its httpx transport
    from starlette.testclient import TestClient, WebSocketDenialResponse

JOIN = f"/rtc?access_token={token('alice', roomJoin=True, room='r')}"


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


def _drain(client: TestClient, edge: Edge, deadline: float) -> Future[bool]:
    """Start the edge's drain on the app's event loop (where its sockets live)."""
    assert client.portal is not None
    return client.portal.start_task_soon(edge.drain, deadline)


def _kinds(edge: Edge) -> list[str]:
    return [env.kind for env in fake_node(edge).received]


def test_idle_edge_drains_at_once(client: TestClient, edge: Edge) -> None:
    assert client.get("/readyz").status_code == 200
    assert _drain(client, edge, 30).result(timeout=5) is True
    resp = client.get("/readyz")
    assert (resp.status_code, resp.text) == (503, "draining")


def test_draining_edge_refuses_new_sockets(client: TestClient, edge: Edge) -> None:
    _drain(client, edge, 30).result(timeout=5)
    for query in (JOIN, JOIN + "&reconnect=1&sid=PA_fake"):  # joins and resumes alike
        with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect(query):
            pass
        assert denied.value.status_code == 503  # Code.UNAVAILABLE, what HAProxy retries on
        assert "draining" in denied.value.text
    # and /rtc/validate says so, as the SDKs ask it why an upgrade failed
    resp = client.get("/rtc/validate", params={"access_token": JOIN.split("=", 1)[1]})
    assert resp.status_code == 503 and "draining" in resp.text
    assert fake_node(edge).received == []  # never reached the node
    assert edge.sockets == 0


def test_clients_are_sent_to_resume_elsewhere_and_sessions_kept(
    client: TestClient, edge: Edge
) -> None:
    with client.websocket_connect(JOIN) as ws:
        assert rtc.SignalResponse.FromString(ws.receive_bytes()).WhichOneof("message") == "join"
        assert edge.sockets == 1
        drained = _drain(client, edge, 30)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_bytes()
        # 1001, not 1000: the browser SDK resumes on any close but 1000, the Rust SDK on any
        assert closed.value.code == CloseReason.GOING_AWAY == 1001
        assert "resume elsewhere" in closed.value.reason
        # the node was told the socket went (it detaches: no leave) before the close
        assert _kinds(edge) == [messages.JOIN, messages.CLIENT_GONE]
        assert client.get("/readyz").status_code == 503
    assert drained.result(timeout=5) is True
    assert _kinds(edge) == [messages.JOIN, messages.CLIENT_GONE]  # told once, never a leave
    assert edge.sockets == 0


def test_deadline_ends_the_drain(client: TestClient, edge: Edge) -> None:
    """An upgrade still waiting for its node holds the drain until the deadline."""
    assert client.portal is not None
    client.portal.call(edge.admit, "SE_waiting")
    started = time.monotonic()
    assert _drain(client, edge, 0.3).result(timeout=5) is False
    assert time.monotonic() - started >= 0.3


class _Socket:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def send_elsewhere(self) -> None:
        self.calls.append("send_elsewhere")


def test_upgrade_racing_the_drain_is_sent_on_once_open(client: TestClient, edge: Edge) -> None:
    """A join the node was still answering when the drain began holds the drain open; once
    its socket opens, the client is sent elsewhere at once."""
    assert client.portal is not None
    client.portal.call(edge.admit, "SE_racing")  # the upgrade waits for the node
    drained = _drain(client, edge, 30)
    with pytest.raises(TimeoutError):
        drained.result(timeout=0.2)
    socket = _Socket()
    client.portal.call(edge.attach, "SE_racing", socket)  # the node answered: socket open
    client.portal.call(edge.release, "SE_racing")  # the client went
    assert drained.result(timeout=5) is True
    assert socket.calls == ["send_elsewhere"]
