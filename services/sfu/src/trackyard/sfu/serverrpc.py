"""Server-initiated RPC to a participant (``RoomService.PerformRpc``), as LiveKit does it.

The node sends the participant an ``rpc_request`` DataPacket on the reliable channel, whose
``participant_identity`` is the request id (so the SDK's ``rpc_ack`` and ``rpc_response`` come
back addressed to that id); :func:`intercept` takes those two replies out of the room's data
relay. Deadlines and error codes are LiveKit's (``livekit/protocol`` ``utils/data_channel_rpc.go``,
``livekit/livekit`` ``pkg/rtc/participant.go`` ``PerformRpc``): no ack within 2 s is 1501
CONNECTION_TIMEOUT, no response within ``response_timeout_ms`` (default 10 s) is 1502
RESPONSE_TIMEOUT, the participant leaving is 1503 RECIPIENT_DISCONNECTED, a payload over 15 KiB
is 1402 REQUEST_PAYLOAD_TOO_LARGE. An error reaches the Twirp caller as LiveKit's psrpc mapping
makes it: the Twirp code of the RPC error code and the message ``RpcError <code>: <message>``
(``: <data>`` appended when the handler gave data).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Literal

from livekit.protocol import models

from trackyard.core.refusal import Code, Refusal
from trackyard.sfu.participant import RELIABLE, Participant

MAX_PAYLOAD_BYTES = 15360  # DataChannelRpcMaxPayloadBytes
MAX_ROUND_TRIP_SECONDS = 2.0  # DataChannelRpcMaxRoundTripLatency: the ack deadline
DEFAULT_RESPONSE_TIMEOUT_MS = 10_000  # DataChannelRpcDefaultResponseTimeout
RPC_VERSION = 1

APPLICATION_ERROR = 1500
CONNECTION_TIMEOUT = 1501
RESPONSE_TIMEOUT = 1502
RECIPIENT_DISCONNECTED = 1503
RESPONSE_PAYLOAD_TOO_LARGE = 1504
SEND_FAILED = 1505
UNSUPPORTED_METHOD = 1400
RECIPIENT_NOT_FOUND = 1401
REQUEST_PAYLOAD_TOO_LARGE = 1402
UNSUPPORTED_SERVER = 1403
UNSUPPORTED_VERSION = 1404

# code -> (LiveKit's built-in message, the refusal code its psrpc error becomes)
_BUILT_IN: dict[int, tuple[str, Code]] = {
    APPLICATION_ERROR: ("Application error in method handler", Code.INTERNAL),
    CONNECTION_TIMEOUT: ("Connection timeout", Code.CANCELED),
    RESPONSE_TIMEOUT: ("Response timeout", Code.CANCELED),
    RECIPIENT_DISCONNECTED: ("Recipient disconnected", Code.UNAVAILABLE),
    RESPONSE_PAYLOAD_TOO_LARGE: ("Response payload too large", Code.MALFORMED),
    SEND_FAILED: ("Failed to send", Code.INTERNAL),
    UNSUPPORTED_METHOD: ("Method not supported at destination", Code.INVALID_ARGUMENT),
    RECIPIENT_NOT_FOUND: ("Recipient not found", Code.NOT_FOUND),
    REQUEST_PAYLOAD_TOO_LARGE: ("Request payload too large", Code.MALFORMED),
    UNSUPPORTED_SERVER: ("RPC not supported by server", Code.UNIMPLEMENTED),
    UNSUPPORTED_VERSION: ("Unsupported RPC version", Code.UNIMPLEMENTED),
}


def rpc_error(code: int, message: str | None = None, data: str = "") -> Refusal:
    """The refusal for an RPC error code (an application's own code is ``internal``)."""
    built_in, refusal_code = _BUILT_IN.get(code, ("", Code.INTERNAL))
    text = f"RpcError {code}: {built_in if message is None else message}"
    if data:
        text += f": {data}"
    return Refusal(refusal_code, text)


@dataclass
class _Pending:
    participant: Participant
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    response: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


_pending: dict[str, _Pending] = {}  # request id -> call awaiting the participant's replies


def pending_count() -> int:
    return len(_pending)


def intercept(sender: Participant, packet: models.DataPacket) -> bool:
    """Take an ``rpc_ack``/``rpc_response`` for a server call out of the relay (True if taken).

    Only the participant the call went to can answer it; anything else is relayed as before.
    """
    which = packet.WhichOneof("value")
    if which == "rpc_ack":
        request_id = packet.rpc_ack.request_id
    elif which == "rpc_response":
        request_id = packet.rpc_response.request_id
    else:
        return False
    call = _pending.get(request_id)
    if call is None or call.participant is not sender:
        return False
    call.acked.set()  # a response without an ack counts as both, as in LiveKit
    if which == "rpc_response" and not call.response.done():
        response = packet.rpc_response
        if response.WhichOneof("value") == "error":
            err = response.error
            call.response.set_exception(rpc_error(err.code, err.message, err.data))
        else:
            call.response.set_result(response.payload)
    return True


async def perform(participant: Participant, method: str, payload: str, timeout_ms: int) -> str:
    """Call ``method`` on the participant's SDK; its response payload, or a :class:`Refusal`."""
    if len(payload.encode()) > MAX_PAYLOAD_BYTES:
        raise rpc_error(REQUEST_PAYLOAD_TOO_LARGE)
    timeout_ms = timeout_ms or DEFAULT_RESPONSE_TIMEOUT_MS
    request_id = str(uuid.uuid4())
    packet = models.DataPacket(
        kind=models.DataPacket.RELIABLE,
        participant_identity=request_id,  # the SDK answers to this "caller"
        rpc_request=models.RpcRequest(
            id=request_id,
            method=method,
            payload=payload,
            response_timeout_ms=timeout_ms,
            version=RPC_VERSION,
        ),
    )
    call = _Pending(participant)
    _pending[request_id] = call
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()
    pc = participant.subscriber_pc

    def on_state() -> None:
        if pc.connectionState in ("closed", "failed") and not gone.done():
            gone.set_result(None)

    pc.on("connectionstatechange", on_state)
    try:
        if not participant.send_data(packet.SerializeToString(), RELIABLE):
            raise rpc_error(SEND_FAILED, data=f"data channel to {participant.identity} is not open")
        deadline = loop.time() + timeout_ms / 1000
        ack_deadline = loop.time() + MAX_ROUND_TRIP_SECONDS
        acked = asyncio.ensure_future(call.acked.wait())
        try:
            return await _outcome(call, acked, gone, ack_deadline, deadline)
        finally:
            acked.cancel()
    finally:
        pc.remove_listener("connectionstatechange", on_state)
        _pending.pop(request_id, None)
        if not call.response.done():
            call.response.cancel()


async def _outcome(
    call: _Pending,
    acked: asyncio.Future[Literal[True]],
    gone: asyncio.Future[None],
    ack_deadline: float,
    deadline: float,
) -> str:
    loop = asyncio.get_running_loop()
    waiting: set[asyncio.Future[object]] = {call.response, acked, gone}  # type: ignore[arg-type]
    while True:
        if call.response.done():
            return call.response.result()
        if gone.done():
            raise rpc_error(RECIPIENT_DISCONNECTED)
        now = loop.time()
        if now >= deadline:
            raise rpc_error(RESPONSE_TIMEOUT)
        until = deadline
        if not acked.done():
            if now >= ack_deadline:
                raise rpc_error(CONNECTION_TIMEOUT)
            until = min(until, ack_deadline)
        pending = {f for f in waiting if not f.done()}
        await asyncio.wait(pending, timeout=until - now, return_when=asyncio.FIRST_COMPLETED)
