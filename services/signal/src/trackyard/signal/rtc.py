"""``/rtc``: the client's signal WebSocket, bridged to the hosting SFU node over the bus.

The router seats the participant on one node of the room (its home, or another node the room
spans); the join goes there. A join that is refused or times out gives its seat back.

The upgrade is answered only once the node has admitted the participant, so every refusal
(bad token, room full, no node) is an HTTP status with a plain reason, which the SDKs read
back from ``/rtc/validate``. After that, each binary frame is one ``SignalRequest``; frames
are checked here so garbage never reaches the node, and the offender gets a close reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from google.protobuf.message import DecodeError
from livekit.protocol import room as room_pb
from livekit.protocol import rtc
from pydantic import ValidationError
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from trackyard.core import ids, keys, limits, messages, responses
from trackyard.core.agentmessages import room_config_from_token
from trackyard.core.auth import Claims, check_join, verify_token
from trackyard.core.bus import BusClosedError, Envelope, Subscription, publish_patiently
from trackyard.core.errors import BusUnavailableError
from trackyard.core.refusal import CloseReason, Code, Refusal
from trackyard.core.store import Seat
from trackyard.signal.edge import Edge
from trackyard.signal.metrics import SESSIONS, SIGNAL_MESSAGES, record_join

log = structlog.get_logger(__name__)


def _token(conn: HTTPConnection) -> str:
    header = conn.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return conn.query_params.get("access_token", "")


def _flag(conn: HTTPConnection, name: str, default: bool) -> bool:
    value = conn.query_params.get(name)
    if value is None:
        return default
    return value.lower() in ("1", "true")


async def _authorize(edge: Edge, conn: HTTPConnection) -> tuple[Claims, str]:
    claims = verify_token(_token(conn), edge.keys)
    room = check_join(claims, conn.query_params.get("room"))
    refusal = limits.check_join(
        edge.config.limit,
        room=room,
        identity=claims.identity,
        name=claims.name,
        metadata=claims.metadata,
        attributes=claims.attributes,
    )
    if refusal:  # LiveKit answers these with 400 (ValidateConnectRequest, StartSession)
        raise Refusal(Code.INVALID_ARGUMENT, refusal)
    return claims, room


async def _locate(edge: Edge, room: str, identity: str, *, create: bool) -> Seat:
    try:
        seat = await edge.router.seat(room, identity, create=create)
    except Refusal:
        raise
    except Exception as exc:
        log.warning("placement failed", room=room, error=str(exc))
        raise Refusal(Code.UNAVAILABLE, f"cannot place room: {exc}") from None
    if seat is None:
        raise Refusal(Code.NOT_FOUND, f"room {room} does not exist")
    return seat


async def _unseat(edge: Edge, room: str, identity: str, seat: Seat | None) -> None:
    """Give back the seat of a join that did not happen, unless it names another node by now
    (a newer join of the same identity went elsewhere). Best effort: a stale seat only makes
    the room's next joins count one participant too many."""
    if seat is None:
        return
    try:
        await edge.store.delete_seat(room, identity, seat.node_id)
    except Exception as exc:
        log.info("seat left behind", room=room, identity=identity, error=str(exc))


async def validate(request: Request) -> Response:
    """``GET /rtc/validate``: why would a connect with these credentials fail?"""
    edge: Edge = request.app.state.edge
    try:
        edge.check_open()
        claims, room = await _authorize(edge, request)
        placement = await edge.router.place(room, create=False)
        if placement is None and not edge.config.room.auto_create:
            raise Refusal(Code.NOT_FOUND, f"room {room} does not exist")
        if placement is not None:
            try:
                await edge.rpc.call(
                    placement.node_id,
                    "ValidateJoin",
                    room_pb.RoomParticipantIdentity(
                        room=room, identity=claims.identity
                    ).SerializeToString(),
                    timeout=edge.config.signal.join_timeout,
                )
            except BusUnavailableError as exc:
                raise Refusal(Code.UNAVAILABLE, str(exc)) from None
    except Refusal as exc:
        return PlainTextResponse(exc.reason, status_code=exc.status)
    return PlainTextResponse("success")


async def rtc_v1(_request: Request) -> Response:
    # The SDKs try /rtc/v1 first and fall back to /rtc (protocol v0) only on a 404.
    return PlainTextResponse("not found: this server speaks signal protocol v0 on /rtc", 404)


async def rtc_socket(ws: WebSocket) -> None:
    edge: Edge = ws.app.state.edge
    started = time.perf_counter()
    session_id = ids.new_id(ids.SESSION)
    try:
        edge.admit(session_id)
    except Refusal as exc:  # draining
        log.info("connection refused", code=exc.code.value, status=exc.status, reason=exc.reason)
        await ws.send_denial_response(PlainTextResponse(exc.reason, status_code=exc.status))
        return
    try:
        await _serve(edge, ws, session_id, started)
    finally:
        edge.release(session_id)


class _OpenSocket:
    """The edge's hold on one open session socket, for its drain (:meth:`Edge.drain`)."""

    def __init__(
        self,
        edge: Edge,
        ws: WebSocket,
        node_id: str,
        session_id: str,
        slog: structlog.BoundLogger,
    ) -> None:
        self.edge = edge
        self.ws = ws
        self.node_id = node_id
        self.session_id = session_id
        self.slog = slog
        self._node_told = False

    async def send_elsewhere(self) -> None:
        """Detach the session on its node (it keeps the participant and buffers what it
        would send, for the resume to replay), then close the socket with 1001: both SDKs
        resume on that (the browser SDK on any close but 1000, the Rust/Python SDK on any),
        through the load balancer, on another edge.

        Not ``leave{RESUME}`` (LiveKit's migration): the Rust SDK resumes on it too, but its
        own closing of the old socket then counts as a second failure during the resume, and
        it makes its *next* reconnect a full rejoin (seen with livekit 1.2.1)."""
        self.slog.info("draining: sending the client to resume through another edge")
        await self.tell_node_gone()
        await _close(self.ws, CloseReason.GOING_AWAY, "signal edge draining; resume elsewhere")

    async def tell_node_gone(self) -> None:
        """``client_gone`` once: the node detaches the session (no leave)."""
        if not self._node_told:
            self._node_told = True
            await _client_gone(self.edge, self.node_id, self.session_id, ride_out=True)


async def _serve(edge: Edge, ws: WebSocket, session_id: str, started: float) -> None:
    resume_sid = ws.query_params.get("sid", "") if _flag(ws, "reconnect", False) else ""
    if _flag(ws, "reconnect", False) and not resume_sid:
        await _ask_full_reconnect(ws)
        return
    sub: Subscription | None = None
    node_id = ""
    seat: Seat | None = None
    room = identity = ""
    try:
        claims, room = await _authorize(edge, ws)
        identity = claims.identity
        try:
            seat = await _locate(
                edge, room, identity, create=edge.config.room.auto_create and not resume_sid
            )
        except Refusal as exc:
            if resume_sid and exc.code is Code.NOT_FOUND:  # no host: nothing to resume, rejoin
                await _ask_full_reconnect(ws)
                return
            raise
        node_id = seat.node_id
        sub = edge.bus.subscribe(keys.session_channel(session_id))
        start = messages.SessionStart(
            session_id=session_id,
            room=room,
            identity=claims.identity,
            name=claims.name,
            metadata=claims.metadata,
            attributes=claims.attributes,
            grants=claims.video,
            kind=claims.kind,
            auto_subscribe=_flag(ws, "auto_subscribe", True),
            edge_id=edge.edge_id,
            room_config=room_config_from_token(_token(ws)),
            reconnect_sid=resume_sid,
            home_node=seat.home.node_id,
        )
        kind = messages.RESUME if resume_sid else messages.JOIN
        try:
            await edge.bus.publish(
                keys.node_channel(node_id),
                Envelope(kind=kind, session=session_id, data=start.model_dump_json().encode()),
            )
        except BusUnavailableError as exc:
            raise Refusal(Code.UNAVAILABLE, f"cannot reach room host {node_id}: {exc}") from None
        first = await sub.get(timeout=edge.config.signal.join_timeout)
        if first is None:
            raise Refusal(Code.UNAVAILABLE, f"room host {node_id} did not answer the join in time")
        if first.kind == messages.CLOSE:
            if resume_sid:  # unknown sid, participant gone: the SDK rejoins from scratch
                await sub.close()
                await _drop_channel(edge, session_id)
                await _unseat(edge, room, identity, seat)
                await _ask_full_reconnect(ws)
                return
            raise _closed(first).refusal("join refused")
    except Refusal as exc:
        log.info(
            "connection refused",
            code=exc.code.value,
            status=exc.status,
            reason=exc.reason,
            path=ws.url.path,
        )
        if node_id and sub is not None:
            await _client_gone(edge, node_id, session_id, ride_out=False)
        if sub is not None:
            await sub.close()
            await _drop_channel(edge, session_id)
        await _unseat(edge, room, identity, seat)
        await ws.send_denial_response(PlainTextResponse(exc.reason, status_code=exc.status))
        return

    await ws.accept()
    await ws.send_bytes(first.data)
    join_seconds = time.perf_counter() - started
    record_join(join_seconds, int(ws.query_params.get("protocol", "0") or 0))
    SESSIONS.inc()
    slog = log.bind(room=room, participant=claims.identity, session=session_id, node=node_id)
    slog.info(
        "session resumed" if resume_sid else "session started",
        join_ms=round(join_seconds * 1000, 3),
    )
    downstream = asyncio.create_task(_pump_down(ws, sub, slog))

    async def evict(reason: str) -> None:
        slog.warning("evicting session", reason=reason)
        await _send_reconnect(ws, reason)
        downstream.cancel()

    edge.nodewatch.add(node_id, session_id, evict)
    socket = _OpenSocket(edge, ws, node_id, session_id, slog)
    edge.attach(session_id, socket)
    try:
        reason = await _pump_up(edge, ws, node_id, session_id, downstream)
    finally:
        edge.nodewatch.discard(node_id, session_id)
        SESSIONS.dec()
        downstream.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await downstream
        await socket.tell_node_gone()
        await sub.close()
        await _drop_channel(edge, session_id)
    slog.info("session ended", reason=reason)


def _closed(env: Envelope) -> messages.SessionClosed:
    try:
        return messages.SessionClosed.model_validate_json(env.data)
    except ValidationError:
        return messages.SessionClosed.refused(Refusal(Code.INTERNAL, "undecodable close from node"))


async def _drop_channel(edge: Edge, session_id: str) -> None:
    """Delete the session's channel; with the bus away, leave it to the stream's TTL."""
    try:
        await edge.bus.delete(keys.session_channel(session_id))
    except BusUnavailableError as exc:
        log.info("session channel left to expire", session=session_id, error=str(exc))


async def _client_gone(edge: Edge, node_id: str, session_id: str, *, ride_out: bool) -> None:
    """Tell the node. ``ride_out``: through a bus outage too (bounded), or a participant
    whose socket closed during the outage would linger on the node."""
    env = Envelope(kind=messages.CLIENT_GONE, session=session_id)
    with contextlib.suppress(Exception):
        if ride_out:
            await _forward(edge, keys.node_channel(node_id), env)
        else:
            await edge.bus.publish(keys.node_channel(node_id), env)


async def _ask_full_reconnect(ws: WebSocket) -> None:
    """Nothing to resume (no sid, unknown sid, participant gone): the SDK rejoins."""
    await ws.accept()
    await _send_reconnect(ws, "session cannot be resumed; rejoin")


async def _send_reconnect(ws: WebSocket, reason: str) -> None:
    """``leave{STATE_MISMATCH, RECONNECT}`` makes the SDK rejoin from scratch."""
    with contextlib.suppress(Exception):
        await ws.send_bytes(responses.rejoin().SerializeToString())
    await _close(ws, CloseReason.ENDED, reason)


async def _pump_down(ws: WebSocket, sub: Subscription, slog: structlog.BoundLogger) -> None:
    """Node -> client, in order."""
    try:
        async for env in sub:
            if env.kind == messages.SIGNAL:
                await ws.send_bytes(env.data)
            elif env.kind == messages.CLOSE:
                reason = _closed(env).reason or "session ended by server"
                await ws.close(CloseReason.ENDED, reason[:120])
                return
    except (BusClosedError, WebSocketDisconnect, RuntimeError):
        return


async def _pump_up(
    edge: Edge, ws: WebSocket, node_id: str, session_id: str, downstream: asyncio.Task[None]
) -> str:
    """Client -> node, in order. Returns why the session ended."""
    cfg = edge.config.signal
    channel = keys.node_channel(node_id)
    receive = asyncio.ensure_future(ws.receive())
    try:
        while True:
            done, _ = await asyncio.wait(
                {receive, downstream},
                timeout=cfg.ping_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not done:
                await _close(ws, CloseReason.ENDED, "ping timeout: no message from client")
                return "ping timeout"
            if downstream in done:
                return "closed by server"
            msg = receive.result()
            if msg["type"] == "websocket.disconnect":
                return "client disconnected"
            data: bytes | None = msg.get("bytes")
            refusal = check_frame(data, cfg.max_message_size)
            if refusal is not None:
                await _close(ws, refusal.close_reason, refusal.reason)
                return refusal.reason
            assert data is not None  # check_frame refuses text frames
            SIGNAL_MESSAGES.inc()
            envelope = Envelope(kind=messages.SIGNAL, session=session_id, data=data)
            if not await _forward(edge, channel, envelope):
                unavailable = Refusal(Code.UNAVAILABLE, "message bus unavailable; reconnect")
                await _close(ws, unavailable.close_reason, unavailable.reason)
                return "bus unavailable"
            receive = asyncio.ensure_future(ws.receive())
    except (WebSocketDisconnect, RuntimeError):
        return "client disconnected"
    finally:
        receive.cancel()


async def _forward(edge: Edge, channel: str, envelope: Envelope) -> bool:
    """Publish to the node; the client's ping timeout is the longest a session could survive
    without the bus anyway, so that bounds the wait. False when the outage lasted longer."""
    if await publish_patiently(edge.bus, channel, envelope, within=edge.config.signal.ping_timeout):
        return True
    log.warning("bus unavailable; message to node dropped", channel=channel)
    return False


def check_frame(data: bytes | None, max_size: int) -> Refusal | None:
    """Why a client frame (``None``: a text frame) must not reach the node, or None."""
    if data is None:
        return Refusal(
            Code.UNIMPLEMENTED, "text frames are not supported: send binary SignalRequest"
        )
    if len(data) > max_size:
        return Refusal(Code.RESOURCE_EXHAUSTED, f"message of {len(data)} bytes exceeds {max_size}")
    try:
        request = rtc.SignalRequest.FromString(data)
    except DecodeError:
        return Refusal(Code.MALFORMED, "malformed message: not a protobuf SignalRequest")
    if request.WhichOneof("message") is None:
        return Refusal(Code.MALFORMED, "malformed message: SignalRequest carries no known request")
    return None


async def _close(ws: WebSocket, why: CloseReason, reason: str) -> None:
    log.info("closing client socket", code=why.value, why=why.name, reason=reason)
    if ws.application_state is WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await ws.close(why.value, reason[:120])


async def rtc_v1_socket(ws: WebSocket) -> None:
    await ws.send_denial_response(
        PlainTextResponse("not found: this server speaks signal protocol v0 on /rtc", 404)
    )
