"""The one place that touches aiortc (and aioice) internals. Written against aiortc 1.16.0.

aiortc is a WebRTC *endpoint*: it decodes what it receives and encodes what it sends. An SFU
forwards RTP packets instead, so this module bends a few internals, each on single objects
(per-instance attributes), never by patching aiortc's classes for everybody:

Receiving (publisher peer connection)
  ``hook_receiver(receiver, handler)`` replaces the receiver's packet handlers: decrypted,
  parsed RTP and RTCP go to ``handler`` *instead of* aiortc's NACK generator, jitter buffer
  and decoder, so nothing is decoded and no frame queues up. The DTLS transport's RTP router
  is replaced by ``MidRouter``, which routes by the MID header extension when the SSRC is
  unknown (aiortc's router drops packets of bundled m-lines that share a payload type and
  carry no ``a=ssrc``, which is what simulcast publishers send) and learns SSRC -> receiver.

Sending (subscriber peer connection)
  ``hook_sender(sender, handler)`` turns an ``RTCRtpSender`` of a send-only transceiver into
  a raw packet sender: its encoder loop is replaced by an idle task, its RTCP loop by one that
  sends the handler's sender reports, and RTCP feedback for its SSRC (NACK, PLI, FIR, REMB,
  receiver reports) goes to ``handler.handle_rtcp``. ``handler.sender_started`` receives the
  negotiated parameters (payload types, RTX, header extension ids, MID) when aiortc starts
  the sender. Packets are sent with ``send_rtp`` / ``send_rtcp`` (SRTP + ICE of aiortc), or
  on the packet path with ``send_rtp_nowait`` / ``send_rtcp_nowait`` (the same, synchronous:
  nothing between receiving a packet and sending its copies and feedback is awaited).
  ``silence_receiver`` makes a closed track's receiver drop what still arrives.

Bursts
  ``receive_burst(receiver)`` lets a receiver's handler put work off until the datagrams that
  have already arrived on its connection are handled (``ReceiveBurst``): a track relayed to
  other nodes sends a keyframe's packets there first and fans them out locally after.

ICE sockets
  ``hook_peer_connection(pc, policy)`` installs the MID router on every DTLS transport the
  connection creates and lets ``policy`` bind the UDP sockets aioice gathers host candidates
  on (port range, advertised address). See ``trackyard.sfu.portrange``.

Simulcast
  aiortc's SDP has no ``a=rid`` / ``a=simulcast``: ``install_simulcast_extensions`` lets it
  negotiate the RtpStreamId header extensions, and ``simulcast_answer`` adds the receive side
  of the offer's simulcast to an answer before it is sent to the client.

ICE restart
  ``restart_remote_ice(pc, ufrag, password)`` takes a remote peer's new ICE credentials
  (an offer with ``iceRestart``) into the started aioice connection; ``restart_local_ice(pc)``
  gives the started connection new local credentials for the next offer we make, and
  ``answered_local_ice`` takes the client's answer to it; see there. ``on_transport_state``
  also reports a newly nominated pair (the native fan-out's cached route follows it).

``check_aiortc_internals()`` verifies that everything used here still exists; run it at
start-up (the SFU node does) and in the test suite.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
import secrets
import select
import socket
import string
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import CodeType
from typing import Any, Protocol

import aioice.candidate
import aioice.ice
import aioice.turn
import aiortc
import structlog
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.codecs import HEADER_EXTENSIONS
from aiortc.rtcdtlstransport import RTCDtlsTransport, RtpRouter
from aiortc.rtcdtlstransport import State as _DtlsState
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters
from aiortc.rtp import (
    AnyRtcpPacket,
    RtcpByePacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    RtpPacket,
)

from trackyard.sfu.rtppacket import EXT_REPAIRED_RID, EXT_RID

__all__ = [
    "EXPECTED_AIORTC_VERSION",
    "AiortcInternalsError",
    "AnyRtcpPacket",
    "CodecInfo",
    "IceSocketPolicy",
    "MidRouter",
    "ReceiveBurst",
    "ReceiverHandler",
    "RtcpByePacket",
    "RtcpPsfbPacket",
    "RtcpRrPacket",
    "RtcpRtpfbPacket",
    "RtcpSrPacket",
    "RtpPacket",
    "SendParameters",
    "SenderHandler",
    "answered_local_credentials",
    "answered_local_ice",
    "check_aiortc_internals",
    "hook_peer_connection",
    "hook_receiver",
    "hook_sender",
    "install_mid_router",
    "install_simulcast_extensions",
    "on_nominated",
    "on_transport_state",
    "receive_burst",
    "receiver_codecs",
    "receiver_rtcp_ssrc",
    "receiver_rtx_ssrcs",
    "restart_local_credentials",
    "restart_local_ice",
    "restart_remote_credentials",
    "restart_remote_ice",
    "send_rtcp",
    "send_rtcp_nowait",
    "send_rtp",
    "send_rtp_nowait",
    "sender_ssrcs",
    "set_sender_msid",
    "silence_receiver",
    "simulcast_answer",
    "spawn",
    "transceiver_codecs",
    "unhook_receiver",
]

EXPECTED_AIORTC_VERSION = "1.16.0"

_DTLS_CONNECTED = _DtlsState.CONNECTED

log = structlog.get_logger(__name__)


# --- the internals we rely on ----------------------------------------------------------------


class AiortcInternalsError(RuntimeError):
    """aiortc/aioice no longer has an attribute or method this module hooks."""


@dataclass(frozen=True, slots=True)
class _Need:
    owner: Any  # a class/module/mapping, or (class, "function name") for kind "uses"
    name: str
    kind: str  # "attr": class/module attribute; "uses": the function's code (incl. nested
    # comprehensions) refers to the name: an assignment or call site we rely on; "key": key
    label: str


def _needs() -> list[_Need]:
    ice_conn = aioice.ice.Connection
    return [
        # receiving
        _Need(RTCRtpReceiver, "_handle_rtp_packet", "attr", "RTCRtpReceiver._handle_rtp_packet"),
        _Need(RTCRtpReceiver, "_handle_rtcp_packet", "attr", "RTCRtpReceiver._handle_rtcp_packet"),
        _Need(RTCRtpReceiver, "setTransport", "attr", "RTCRtpReceiver.setTransport"),
        _Need(RTCRtpReceiver, "transport", "attr", "RTCRtpReceiver.transport"),
        _Need(
            (RTCRtpReceiver, "__init__"),
            "_RTCRtpReceiver__codecs",
            "uses",
            "RTCRtpReceiver.__codecs",
        ),
        _Need(
            (RTCRtpReceiver, "__init__"),
            "_RTCRtpReceiver__rtx_ssrc",
            "uses",
            "RTCRtpReceiver.__rtx_ssrc",
        ),
        _Need(
            (RTCRtpReceiver, "__init__"),
            "_RTCRtpReceiver__rtcp_ssrc",
            "uses",
            "RTCRtpReceiver.__rtcp_ssrc",
        ),
        _Need((RTCRtpTransceiver, "__init__"), "_codecs", "uses", "RTCRtpTransceiver._codecs"),
        # routing
        _Need(
            (RTCDtlsTransport, "__init__"), "_rtp_router", "uses", "RTCDtlsTransport._rtp_router"
        ),
        _Need(RTCDtlsTransport, "_handle_rtp_data", "attr", "RTCDtlsTransport._handle_rtp_data"),
        _Need(RtpRouter, "register_sender", "attr", "RtpRouter.register_sender"),
        _Need(
            (RTCDtlsTransport, "_handle_rtp_data"),
            "route_rtp",
            "uses",
            "RTCDtlsTransport._handle_rtp_data -> RtpRouter.route_rtp",
        ),
        _Need(
            (RTCDtlsTransport, "_handle_rtp_data"),
            "_handle_rtp_packet",
            "uses",
            "RTCDtlsTransport._handle_rtp_data -> receiver._handle_rtp_packet",
        ),
        _Need(
            (RTCDtlsTransport, "_handle_rtcp_data"),
            "_handle_rtcp_packet",
            "uses",
            "RTCDtlsTransport._handle_rtcp_data -> recipient._handle_rtcp_packet",
        ),
        _Need(RTCDtlsTransport, "_send_rtp", "attr", "RTCDtlsTransport._send_rtp"),
        # the synchronous send path (send_rtp_nowait) mirrors _send_rtp
        _Need((RTCDtlsTransport, "_send_rtp"), "_state", "uses", "RTCDtlsTransport._state"),
        _Need((RTCDtlsTransport, "_send_rtp"), "_tx_srtp", "uses", "RTCDtlsTransport._tx_srtp"),
        _Need((RTCDtlsTransport, "__init__"), "_transport", "uses", "RTCDtlsTransport._transport"),
        _Need(aiortc.rtcdtlstransport.State, "CONNECTED", "attr", "aiortc.rtcdtlstransport.State"),
        _Need(
            (aiortc.rtcicetransport.RTCIceTransport, "__init__"),
            "_connection",
            "uses",
            "RTCIceTransport._connection",
        ),
        _Need((ice_conn, "sendto"), "_nominated", "uses", "aioice.Connection._nominated"),
        # bursts: the receive loop asks the ICE transport for each datagram
        _Need(
            (aiortc.rtcicetransport.RTCIceTransport, "__init__"),
            "_recv",
            "uses",
            "RTCIceTransport._recv",
        ),
        _Need(
            (RTCDtlsTransport, "_recv_next"),
            "_recv",
            "uses",
            "RTCDtlsTransport._recv_next -> transport._recv",
        ),
        _Need((ice_conn, "__init__"), "_queue", "uses", "aioice.Connection._queue"),
        _Need((ice_conn, "sendto"), "send_data", "uses", "aioice.Connection.sendto -> send_data"),
        _Need(
            (aioice.ice.CandidatePair, "__init__"),
            "protocol",
            "uses",
            "aioice.CandidatePair.protocol",
        ),
        _Need(aioice.ice.CandidatePair, "remote_addr", "attr", "aioice.CandidatePair.remote_addr"),
        _Need(
            (aioice.ice.StunProtocol, "send_data"),
            "sendto",
            "uses",
            "aioice.StunProtocol.send_data -> transport.sendto",
        ),
        _Need(RtpRouter, "route_rtp", "attr", "RtpRouter.route_rtp"),
        _Need(RtpRouter, "route_rtcp", "attr", "RtpRouter.route_rtcp"),
        _Need((RtpRouter, "__init__"), "receivers", "uses", "RtpRouter.receivers"),
        _Need((RtpRouter, "__init__"), "senders", "uses", "RtpRouter.senders"),
        _Need((RtpRouter, "__init__"), "mid_table", "uses", "RtpRouter.mid_table"),
        _Need((RtpRouter, "__init__"), "ssrc_table", "uses", "RtpRouter.ssrc_table"),
        _Need(
            (RtpRouter, "__init__"), "payload_type_table", "uses", "RtpRouter.payload_type_table"
        ),
        # sending
        _Need(RTCRtpSender, "send", "attr", "RTCRtpSender.send"),
        _Need(RTCRtpSender, "_run_rtp", "attr", "RTCRtpSender._run_rtp"),
        _Need(RTCRtpSender, "_run_rtcp", "attr", "RTCRtpSender._run_rtcp"),
        _Need(RTCRtpSender, "_handle_rtcp_packet", "attr", "RTCRtpSender._handle_rtcp_packet"),
        _Need((RTCRtpSender, "send"), "_run_rtp", "uses", "RTCRtpSender.send -> self._run_rtp"),
        _Need((RTCRtpSender, "send"), "_run_rtcp", "uses", "RTCRtpSender.send -> self._run_rtcp"),
        _Need((RTCRtpSender, "__init__"), "_ssrc", "uses", "RTCRtpSender._ssrc"),
        _Need((RTCRtpSender, "__init__"), "_rtx_ssrc", "uses", "RTCRtpSender._rtx_ssrc"),
        _Need((RTCRtpSender, "__init__"), "_stream_id", "uses", "RTCRtpSender._stream_id"),
        _Need(RTCRtpSender, "replaceTrack", "attr", "RTCRtpSender.replaceTrack"),
        _Need((RTCRtpSender, "replaceTrack"), "_track_id", "uses", "RTCRtpSender._track_id"),
        _Need(
            (RTCRtpSender, "stop"),
            "_RTCRtpSender__rtp_started",
            "uses",
            "RTCRtpSender.__rtp_started",
        ),
        _Need(
            (RTCRtpSender, "stop"), "_RTCRtpSender__rtp_exited", "uses", "RTCRtpSender.__rtp_exited"
        ),
        _Need(
            (RTCRtpSender, "stop"),
            "_RTCRtpSender__rtcp_started",
            "uses",
            "RTCRtpSender.__rtcp_started",
        ),
        _Need(
            (RTCRtpSender, "stop"),
            "_RTCRtpSender__rtcp_exited",
            "uses",
            "RTCRtpSender.__rtcp_exited",
        ),
        _Need(
            (RTCRtpSender, "__init__"), "_RTCRtpSender__started", "uses", "RTCRtpSender.__started"
        ),
        # peer connection / ICE
        _Need(
            RTCPeerConnection,
            "_RTCPeerConnection__createDtlsTransport",
            "attr",
            "RTCPeerConnection.__createDtlsTransport",
        ),
        _Need(
            (aiortc.rtcicetransport.RTCIceGatherer, "__init__"),
            "_connection",
            "uses",
            "RTCIceGatherer._connection",
        ),
        _Need(
            ice_conn,
            "get_component_candidates",
            "attr",
            "aioice.Connection.get_component_candidates",
        ),
        _Need(
            (ice_conn, "gather_candidates"),
            "get_component_candidates",
            "uses",
            "aioice.Connection.gather_candidates -> self.get_component_candidates",
        ),
        _Need((ice_conn, "__init__"), "_protocols", "uses", "aioice.Connection._protocols"),
        _Need((ice_conn, "__init__"), "stun_server", "uses", "aioice.Connection.stun_server"),
        _Need(aioice.ice, "StunProtocol", "attr", "aioice.ice.StunProtocol"),
        _Need(aioice.candidate, "Candidate", "attr", "aioice.candidate.Candidate"),
        _Need(
            aioice.candidate,
            "candidate_foundation",
            "attr",
            "aioice.candidate.candidate_foundation",
        ),
        _Need(
            aioice.candidate, "candidate_priority", "attr", "aioice.candidate.candidate_priority"
        ),
        _Need(
            aioice.ice,
            "server_reflexive_candidate",
            "attr",
            "aioice.ice.server_reflexive_candidate",
        ),
        _Need(aioice.turn, "UDP_SOCKET_BUFFER_SIZE", "attr", "aioice.turn.UDP_SOCKET_BUFFER_SIZE"),
        _Need(aioice.ice, "relayed_candidate", "attr", "aioice.ice.relayed_candidate"),
        _Need((ice_conn, "__init__"), "turn_server", "uses", "aioice.Connection.turn_server"),
        # ICE restart by the remote side (restart_remote_ice)
        _Need((ice_conn, "__init__"), "remote_username", "uses", "aioice.remote_username"),
        _Need((ice_conn, "__init__"), "remote_password", "uses", "aioice.remote_password"),
        _Need(ice_conn, "_valid_username", "attr", "aioice.Connection._valid_username"),
        _Need(
            (ice_conn, "request_received"),
            "_valid_username",
            "uses",
            "aioice.Connection.request_received -> self._valid_username",
        ),
        _Need(
            (ice_conn, "build_request"),
            "remote_username",
            "uses",
            "aioice.Connection.build_request -> self.remote_username",
        ),
        _Need(
            (ice_conn, "check_incoming"),
            "check_complete",
            "uses",
            "aioice.Connection.check_incoming -> check_complete (nomination after connect)",
        ),
        _Need(
            (ice_conn, "request_received"),
            "check_incoming",
            "uses",
            "aioice.Connection.request_received -> self.check_incoming",
        ),
        _Need(
            (ice_conn, "request_received"),
            "local_password",
            "uses",
            "aioice.Connection.request_received -> self.local_password (signs responses)",
        ),
        _Need(
            (aioice.ice.StunProtocol, "datagram_received"),
            "request_received",
            "uses",
            "aioice.StunProtocol.datagram_received -> receiver.request_received",
        ),
        # ICE restart by us (restart_local_ice)
        _Need((ice_conn, "request_received"), "_closing", "uses", "aioice.Connection._closing"),
        _Need((ice_conn, "__init__"), "_local_username", "uses", "aioice._local_username"),
        _Need((ice_conn, "__init__"), "_local_password", "uses", "aioice._local_password"),
        _Need(
            (aiortc.rtcicetransport.RTCIceGatherer, "getLocalParameters"),
            "local_username",
            "uses",
            "RTCIceGatherer.getLocalParameters -> connection.local_username (offers)",
        ),
        _Need(
            (ice_conn, "check_start"),
            "build_request",
            "uses",
            "aioice.Connection.check_start -> build_request (triggered checks, nominating)",
        ),
        # a newly nominated pair (on_transport_state)
        _Need(
            (ice_conn, "check_start"),
            "check_complete",
            "uses",
            "aioice.Connection.check_start -> self.check_complete",
        ),
        _Need(
            (ice_conn, "check_complete"),
            "_nominated",
            "uses",
            "aioice.Connection.check_complete sets _nominated",
        ),
        _Need(RTCPeerConnection, "sctp", "attr", "RTCPeerConnection.sctp"),
        # simulcast negotiation
        _Need(HEADER_EXTENSIONS, "video", "key", "aiortc.codecs.HEADER_EXTENSIONS['video']"),
    ]


def _present(need: _Need) -> bool:
    if need.kind == "attr":
        return hasattr(need.owner, need.name)
    if need.kind == "key":
        return need.name in need.owner
    cls, function = need.owner
    code = getattr(getattr(cls, function, None), "__code__", None)
    return code is not None and _code_uses(code, need.name)


def _code_uses(code: CodeType, name: str) -> bool:
    if name in code.co_names:
        return True
    return any(isinstance(c, CodeType) and _code_uses(c, name) for c in code.co_consts)


def check_aiortc_internals() -> None:
    """Raise ``AiortcInternalsError`` naming every hooked aiortc/aioice internal that is
    missing; warn if aiortc is not the version the hooks were written for."""
    missing = [n.label for n in _needs() if not _present(n)]
    if missing:
        raise AiortcInternalsError(
            f"aiortc {aiortc.__version__} lacks internals that trackyard.sfu.rtphooks hooks "
            f"(written for aiortc {EXPECTED_AIORTC_VERSION}): " + ", ".join(missing)
        )
    if aiortc.__version__ != EXPECTED_AIORTC_VERSION:
        warnings.warn(
            f"aiortc {aiortc.__version__} installed; trackyard.sfu.rtphooks was written and "
            f"tested for {EXPECTED_AIORTC_VERSION} (all hooked internals are present)",
            RuntimeWarning,
            stacklevel=2,
        )


# --- routing ------------------------------------------------------------------------------


class MidRouter(RtpRouter):
    """aiortc's router, plus MID-based routing of unknown SSRCs.

    Known SSRC -> its receiver (one dict lookup, the hot path). Unknown SSRC with a MID header
    extension -> the receiver of that MID, and the SSRC is learned. Otherwise aiortc's own
    rule (a payload type served by a single receiver). With ``drop_unhooked``, packets for
    receivers without a ``hook_receiver`` handler are dropped instead of decoded.
    """

    def __init__(self, previous: RtpRouter | None = None, drop_unhooked: bool = False) -> None:
        super().__init__()
        self.drop_unhooked = drop_unhooked
        if previous is not None:
            self.receivers.update(previous.receivers)
            self.senders.update(previous.senders)
            self.mid_table.update(previous.mid_table)
            self.ssrc_table.update(previous.ssrc_table)
            for pt, receivers in previous.payload_type_table.items():
                self.payload_type_table[pt] = set(receivers)

    def route_rtp(self, packet: RtpPacket) -> Any:
        receiver = self.ssrc_table.get(packet.ssrc)
        if receiver is None:
            mid = packet.extensions.mid
            if mid is not None:
                receiver = self.mid_table.get(mid)
                if receiver is None:
                    return None
                self.ssrc_table[packet.ssrc] = receiver
            else:
                receiver = super().route_rtp(packet)
                if receiver is None:
                    return None
        if self.drop_unhooked and "_handle_rtp_packet" not in receiver.__dict__:
            return None
        return receiver


def install_mid_router(transport: RTCDtlsTransport, drop_unhooked: bool = False) -> MidRouter:
    """Replace the DTLS transport's RTP router by a ``MidRouter`` (idempotent; an installed
    router keeps its ``drop_unhooked`` unless this call asks for it)."""
    router = transport._rtp_router
    if isinstance(router, MidRouter):
        router.drop_unhooked = router.drop_unhooked or drop_unhooked
        return router
    new = MidRouter(router, drop_unhooked)
    transport._rtp_router = new
    return new


# --- bursts -------------------------------------------------------------------------------


class ReceiveBurst:
    """Work a publisher connection's packet handlers put off until the datagrams already
    waiting for it have been handled (a keyframe arrives as a burst of them).

    ``defer(work)``: ``work()`` runs, once, just before the connection next waits for a
    datagram that has not arrived yet: aiortc's receive loop asks for the next datagram
    (``RTCIceTransport._recv``), and if aioice's queue and the nominated pair's socket are both
    empty the deferred work runs first. asyncio reads one datagram a loop iteration, so the
    socket is asked (``poll``, no timeout), not only the queue. Used by an UpTrack that relays
    to other nodes: each packet of a burst goes to the relays as it is read, the local fan-out
    of the burst after its last packet."""

    __slots__ = ("_connection", "_fd", "_poll", "_work")

    def __init__(self, connection: aioice.ice.Connection) -> None:
        self._connection = connection
        self._work: list[Callable[[], None]] = []
        self._poll = select.poll()
        self._fd = -1

    def defer(self, work: Callable[[], None]) -> None:
        if work not in self._work:
            self._work.append(work)

    def run(self) -> None:
        """The deferred work, now (in the order it was deferred)."""
        work, self._work = self._work, []
        for item in work:
            try:
                item()
            except Exception:
                log.exception("deferred packet work failed")

    def _waiting(self) -> bool:
        """A datagram for this connection is already here (queued or in the socket)."""
        if not self._connection._queue.empty():
            return True
        pair = self._connection._nominated.get(1)
        sock = pair.protocol.transport.get_extra_info("socket") if pair is not None else None
        fd = sock.fileno() if sock is not None else -1
        if fd != self._fd:
            if self._fd >= 0:
                self._poll.unregister(self._fd)
            if fd >= 0:
                self._poll.register(fd, select.POLLIN)
            self._fd = fd
        return fd >= 0 and bool(self._poll.poll(0))

    async def _recv(self, receive: Callable[[], Awaitable[bytes]]) -> bytes:
        if self._work and not self._waiting():
            self.run()
        return await receive()


def receive_burst(receiver: RTCRtpReceiver) -> ReceiveBurst | None:
    """The ``ReceiveBurst`` of the receiver's connection (installed on first use); None while
    the receiver has no ICE transport."""
    dtls = receiver.transport
    ice = getattr(dtls, "_transport", None) if dtls is not None else None
    if ice is None:
        return None
    d = ice.__dict__
    burst = d.get("_trackyard_burst")
    if burst is None:
        burst = d["_trackyard_burst"] = ReceiveBurst(ice._connection)
        receive = d["_recv"]

        async def recv() -> bytes:
            return await burst._recv(receive)

        d["_recv"] = recv
    assert isinstance(burst, ReceiveBurst)
    return burst


# --- receivers ----------------------------------------------------------------------------


class ReceiverHandler(Protocol):
    async def handle_rtp(self, packet: RtpPacket, arrival_time_ms: int) -> None: ...

    async def handle_rtcp(self, packet: AnyRtcpPacket) -> None: ...


@dataclass(frozen=True, slots=True)
class CodecInfo:
    """A negotiated codec: payload type, ``mime`` in lower case (``video/vp8``), clock rate,
    and the RTX payload type that protects it (``-1``: none). For an RTX codec, ``apt`` is
    the payload type it protects."""

    payload_type: int
    mime: str
    clock_rate: int
    channels: int = 0
    rtx_payload_type: int = -1
    apt: int = -1

    @property
    def is_rtx(self) -> bool:
        return self.mime.endswith("/rtx")


def _codec_infos(codecs: list[Any]) -> list[CodecInfo]:
    rtx_for: dict[int, int] = {}
    for c in codecs:
        if c.mimeType.lower().endswith("/rtx"):
            apt = c.parameters.get("apt")
            if isinstance(apt, int):
                rtx_for[apt] = c.payloadType
    out = []
    for c in codecs:
        mime = c.mimeType.lower()
        apt = c.parameters.get("apt") if mime.endswith("/rtx") else None
        out.append(
            CodecInfo(
                payload_type=c.payloadType,
                mime=mime,
                clock_rate=c.clockRate,
                channels=c.channels or 0,
                rtx_payload_type=rtx_for.get(c.payloadType, -1),
                apt=apt if isinstance(apt, int) else -1,
            )
        )
    return out


def hook_receiver(receiver: RTCRtpReceiver, handler: ReceiverHandler) -> None:
    """Send the receiver's decrypted RTP/RTCP to ``handler`` instead of aiortc's decoder."""
    d = receiver.__dict__
    d["_handle_rtp_packet"] = handler.handle_rtp
    d["_handle_rtcp_packet"] = handler.handle_rtcp
    install_mid_router(receiver.transport)
    if "setTransport" not in d:
        original = receiver.setTransport

        def set_transport(transport: RTCDtlsTransport) -> None:
            original(transport)
            install_mid_router(transport)

        d["setTransport"] = set_transport


def unhook_receiver(receiver: RTCRtpReceiver) -> None:
    """Give the receiver back its own handlers (packets are then decoded again)."""
    for name in ("_handle_rtp_packet", "_handle_rtcp_packet", "setTransport"):
        receiver.__dict__.pop(name, None)


def silence_receiver(receiver: RTCRtpReceiver) -> None:
    """Drop whatever RTP still reaches the receiver (a closed track: nothing is decoded)."""
    unhook_receiver(receiver)
    receiver.__dict__["_handle_rtp_packet"] = _drop_rtp


async def _drop_rtp(packet: RtpPacket, arrival_time_ms: int) -> None:
    return None


def receiver_codecs(receiver: RTCRtpReceiver) -> dict[int, CodecInfo]:
    """Payload type -> codec negotiated for the receiver (empty before aiortc starts it)."""
    codecs: dict[int, Any] = receiver.__dict__.get("_RTCRtpReceiver__codecs", {})
    return {c.payload_type: c for c in _codec_infos(list(codecs.values()))}


def transceiver_codecs(transceiver: RTCRtpTransceiver) -> list[CodecInfo]:
    """Codecs negotiated for a transceiver (known as soon as the remote description is set,
    before the connection is up), preferred first."""
    return _codec_infos(list(transceiver.__dict__.get("_codecs", [])))


def receiver_rtx_ssrcs(receiver: RTCRtpReceiver) -> dict[int, int]:
    """RTX SSRC -> media SSRC, as signalled with ``a=ssrc-group:FID`` (often empty)."""
    return dict(receiver.__dict__.get("_RTCRtpReceiver__rtx_ssrc", {}))


def receiver_rtcp_ssrc(receiver: RTCRtpReceiver) -> int | None:
    """The SSRC aiortc uses as the sender of this receiver's RTCP feedback."""
    value = receiver.__dict__.get("_RTCRtpReceiver__rtcp_ssrc")
    return value if isinstance(value, int) else None


# --- senders ------------------------------------------------------------------------------


@dataclass(slots=True)
class SendParameters:
    """What was negotiated for a sender, as handed to ``SenderHandler.sender_started``."""

    mid: str | None
    cname: str | None
    ssrc: int
    rtx_ssrc: int
    codecs: list[CodecInfo]  # media codecs (no RTX entries), preferred first
    header_extensions: dict[str, int] = field(default_factory=dict)  # uri -> id


class SenderHandler(Protocol):
    def sender_started(self, params: SendParameters) -> None: ...

    async def handle_rtcp(self, packet: AnyRtcpPacket) -> None: ...

    def rtcp_report(self) -> bytes | None: ...

    def rtcp_bye(self) -> bytes | None: ...


def sender_ssrcs(sender: RTCRtpSender) -> tuple[int, int]:
    """(media SSRC, RTX SSRC) that aiortc signals for this sender in its SDP."""
    return int(sender._ssrc), int(sender._rtx_ssrc)


def set_sender_msid(sender: RTCRtpSender, stream_id: str, track_id: str) -> None:
    """Set the ``a=msid:<stream_id> <track_id>`` aiortc writes for this sender."""
    sender._stream_id = stream_id
    sender._track_id = track_id


def hook_sender(sender: RTCRtpSender, handler: SenderHandler, rtcp_interval: float = 1.0) -> None:
    """Make a sender forward pre-built packets: see the module docstring. Must be called
    before aiortc starts the sender (before the offer/answer that activates it completes)."""
    d = sender.__dict__
    if d.get("_RTCRtpSender__started"):
        raise RuntimeError("hook_sender: the sender has already been started by aiortc")
    if "send" in d:
        raise RuntimeError("hook_sender: the sender is already hooked")
    original_send = sender.send

    async def idle_rtp(codec: Any) -> None:
        started: asyncio.Event = d["_RTCRtpSender__rtp_started"]
        exited: asyncio.Event = d["_RTCRtpSender__rtp_exited"]
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass
        finally:
            exited.set()

    async def run_rtcp() -> None:
        started: asyncio.Event = d["_RTCRtpSender__rtcp_started"]
        exited: asyncio.Event = d["_RTCRtpSender__rtcp_exited"]
        started.set()
        try:
            while True:
                await asyncio.sleep(rtcp_interval * (0.5 + random.random()))
                data = handler.rtcp_report()
                if data:
                    await send_rtcp(sender.transport, data)
        except asyncio.CancelledError:
            pass
        try:
            data = handler.rtcp_bye()
            if data:
                await send_rtcp(sender.transport, data)
        finally:
            exited.set()

    async def send(parameters: Any) -> None:
        first = not d.get("_RTCRtpSender__started")
        await original_send(parameters)
        if first:
            handler.sender_started(
                SendParameters(
                    mid=parameters.muxId,
                    cname=parameters.rtcp.cname,
                    ssrc=int(sender._ssrc),
                    rtx_ssrc=int(sender._rtx_ssrc),
                    codecs=[c for c in _codec_infos(list(parameters.codecs)) if not c.is_rtx],
                    header_extensions={e.uri: e.id for e in parameters.headerExtensions},
                )
            )

    d["_run_rtp"] = idle_rtp
    d["_run_rtcp"] = run_rtcp
    d["_handle_rtcp_packet"] = handler.handle_rtcp
    d["send"] = send


# --- sending ------------------------------------------------------------------------------


async def send_rtp(transport: RTCDtlsTransport, data: bytes) -> bool:
    """Encrypt and send one RTP packet; False if the transport is not connected."""
    try:
        await transport._send_rtp(data)
    except ConnectionError:
        return False
    return True


def send_rtp_nowait(transport: RTCDtlsTransport, data: bytes, rtcp: bool = False) -> bool:
    """Encrypt and send one RTP packet (``rtcp``: one compound RTCP packet) synchronously:
    aiortc's ``_send_rtp`` without its chain of four coroutines (DTLS -> ICE connection ->
    candidate pair -> protocol), which would cost more than the rest of the forwarding work.
    Falls back to the asynchronous path for anything but a plain UDP candidate pair (TURN).
    False if not connected. (The DTLS transport's own byte/packet counters do not count these
    packets.)"""
    if transport._state is not _DTLS_CONNECTED:
        return False
    pair = transport._transport._connection._nominated.get(1)
    if pair is None:
        return False
    protocol = pair.protocol
    if type(protocol) is not aioice.ice.StunProtocol:
        spawn(send_rtp(transport, data))  # aiortc tells RTCP from RTP itself
        return True
    srtp = transport._tx_srtp
    protocol.transport.sendto(
        srtp.protect_rtcp(data) if rtcp else srtp.protect(data), pair.remote_addr
    )
    return True


@dataclass(frozen=True, slots=True)
class UdpRoute:
    """A connected transport's plain-UDP path, for the native fan-out (``fanout.Route``):
    its outbound SRTP session, the ICE pair's socket and remote address."""

    srtp: Any  # pylibsrtp.Session
    fd: int
    family: int
    addr: tuple[str, int]
    sendto: Callable[[bytes, tuple[str, int]], None]


def udp_route(transport: RTCDtlsTransport) -> UdpRoute | None:
    """The route copies can be sent on directly; None while not connected, and for pairs
    that are not plain UDP (TURN: those keep ``send_rtp_nowait``)."""
    if transport._state is not _DTLS_CONNECTED or transport._tx_srtp is None:
        return None
    pair = transport._transport._connection._nominated.get(1)
    if pair is None or type(pair.protocol) is not aioice.ice.StunProtocol:
        return None
    udp = pair.protocol.transport
    sock = udp.get_extra_info("socket")
    if sock is None:
        return None
    return UdpRoute(
        transport._tx_srtp, sock.fileno(), int(sock.family), pair.remote_addr, udp.sendto
    )


def route_rtcp_ssrcs(sender: RTCRtpSender, ssrcs: Iterable[int]) -> None:
    """Route RTCP feedback (PLI, NACK, reports) about ``ssrcs`` to ``sender``: aiortc routes
    only the one SSRC it sends on itself (a simulcast sender sends several)."""
    for ssrc in ssrcs:
        sender.transport._rtp_router.register_sender(sender, ssrc)


def on_transport_state(transport: RTCDtlsTransport, callback: Callable[[], None]) -> None:
    """Call ``callback`` whenever the DTLS transport's state changes or its ICE connection
    nominates another pair (an ICE restart moved it to a new path): routes come and go."""
    transport.on("statechange", callback)
    on_nominated(transport._transport._connection, callback)


def on_nominated(connection: aioice.ice.Connection, callback: Callable[[], None]) -> None:
    """Call ``callback`` whenever ``connection`` nominates another pair (sends elsewhere)."""
    watchers = _pair_watchers.get(connection)
    if watchers is None:
        watchers = _pair_watchers[connection] = []
        # per instance: aioice sets the nominated pair here and tells nobody
        connection.__dict__["check_complete"] = functools.partial(
            _check_complete, connection, watchers, connection.check_complete
        )
    watchers.append(callback)


_pair_watchers: weakref.WeakKeyDictionary[aioice.ice.Connection, list[Callable[[], None]]] = (
    weakref.WeakKeyDictionary()
)


def _check_complete(
    connection: aioice.ice.Connection,
    watchers: list[Callable[[], None]],
    original: Callable[[aioice.ice.CandidatePair], None],
    pair: aioice.ice.CandidatePair,
) -> None:
    before = connection._nominated.get(pair.component)
    original(pair)
    if connection._nominated.get(pair.component) is not before:
        for callback in list(watchers):
            callback()


def send_rtcp_nowait(transport: RTCDtlsTransport, data: bytes) -> bool:
    """Encrypt and send one (compound) RTCP packet synchronously, as ``send_rtp_nowait``
    does RTP: feedback on the packet path (NACK, PLI) is sent without awaiting anything."""
    return send_rtp_nowait(transport, data, rtcp=True)


async def send_rtcp(transport: RTCDtlsTransport, data: bytes) -> bool:
    """Encrypt and send one (compound) RTCP packet; False if not connected."""
    try:
        await transport._send_rtp(data)
    except ConnectionError:
        return False
    return True


# --- ICE restart ------------------------------------------------------------------------


def _ice_connections(pc: RTCPeerConnection) -> list[aioice.ice.Connection]:
    """The aioice connections of ``pc``'s ICE transports (one when bundled)."""
    found: dict[int, aioice.ice.Connection] = {}
    dtls = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        dtls.append(pc.sctp.transport)
    for transport in dtls:
        connection = transport.transport._connection
        found[id(connection)] = connection
    return list(found.values())


def restart_remote_ice(pc: RTCPeerConnection, ufrag: str, password: str) -> bool:
    """The remote peer restarted ICE: its offer carries new credentials (``ufrag``,
    ``password``). aiortc has no ICE restart (it keeps the first remote credentials, so the
    peer's new-generation checks are refused as unauthenticated and only its old path works;
    when that path died, e.g. the client's network changed, the connection is lost).

    On each aioice connection of ``pc`` that is started and knew other remote credentials:
    checks we send (triggered and consent checks) use the new ones, and incoming checks of
    both the previous and the new generation are accepted, so the old path keeps working
    until the peer nominates a new-generation pair, which aioice then sends on (a nomination
    after ``connect`` completed still replaces the nominated pair). Our local credentials
    stay: the peer restarts its side only. True if anything was restarted."""
    restarted = [restart_remote_credentials(c, ufrag, password) for c in _ice_connections(pc)]
    return any(restarted)


def restart_remote_credentials(
    connection: aioice.ice.Connection, ufrag: str, password: str
) -> bool:
    """``restart_remote_ice`` on one aioice connection; False if it was not started yet
    (``connect`` takes the first credentials) or already has these."""
    previous = connection.remote_username
    if previous is None or previous == ufrag:
        return False
    state = _generations(connection)
    connection.remote_username = ufrag
    connection.remote_password = password
    state.remote = [*state.remote, ufrag][-_GENERATIONS:]
    return True


def restart_local_ice(pc: RTCPeerConnection) -> str | None:
    """Restart ICE from our side (an offer we make next carries new local credentials, as
    LiveKit's subscriber offer on a resume does): the client's network may have changed,
    and only an ICE restart lets it check and move to new paths. Returns the new ufrag,
    None if no ICE connection of ``pc`` was started yet (the first offer is still out).

    The started aioice connection keeps running: incoming checks of the previous local
    generations are still answered, each signed with its own password (the old path works
    until the new one is nominated); checks of the new generation are answered at once, and
    the pairs they reveal are checked (triggered checks, nominating: we are the controlling
    side of a connection we offered) once the client's answer gave its credentials
    (``answered_local_ice``), when the pair with the new generation is nominated and sent on
    (``on_transport_state`` callbacks run)."""
    connections = _ice_connections(pc)
    if not any(c.remote_username is not None for c in connections):
        return None
    ufrag = "".join(secrets.choice(_ICE_CHARS) for _ in range(8))
    password = "".join(secrets.choice(_ICE_CHARS) for _ in range(24))
    for connection in connections:
        restart_local_credentials(connection, ufrag, password)
    return ufrag


def restart_local_credentials(connection: aioice.ice.Connection, ufrag: str, password: str) -> None:
    """``restart_local_ice`` on one aioice connection (one not started yet just takes the new
    credentials: it starts with them)."""
    if connection.remote_username is None:
        connection._local_username = ufrag
        connection._local_password = password
        return
    state = _generations(connection)
    state.local = [*state.local, (ufrag, password)][-_GENERATIONS:]
    connection._local_username = ufrag
    connection._local_password = password
    state.awaiting_answer = True
    state.deferred.clear()


def answered_local_ice(pc: RTCPeerConnection, ufrag: str, password: str) -> bool:
    """The client answered our offer with ICE credentials ``ufrag``/``password`` (new ones
    if it followed our restart, as a browser does): take them (``restart_remote_ice``) and
    check the pairs the new generation's incoming checks revealed meanwhile. True if the
    remote credentials changed."""
    changed = [answered_local_credentials(c, ufrag, password) for c in _ice_connections(pc)]
    return any(changed)


def answered_local_credentials(
    connection: aioice.ice.Connection, ufrag: str, password: str
) -> bool:
    """``answered_local_ice`` on one aioice connection."""
    changed = restart_remote_credentials(connection, ufrag, password)
    state = _states.get(connection)
    if state is not None and state.awaiting_answer:
        state.awaiting_answer = False
        deferred, state.deferred = state.deferred, {}
        for message, addr, protocol in deferred.values():
            if connection._closing:  # as aioice's request_received: no checks once closing
                break
            connection.check_incoming(message, addr, protocol)
    return changed


_ICE_CHARS = string.ascii_letters + string.digits  # ice-char without "+" and "/"
_GENERATIONS = 3  # ICE credential generations answered per side (resumes in a row)
_DEFERRED_CHECKS = 32  # new-generation checks held until the client's answer


@dataclass(slots=True, eq=False)
class _IceGenerations:
    """The ICE credential generations one aioice connection answers (aioice knows a single
    local and remote pair), newest last."""

    local: list[tuple[str, str]]  # (ufrag, password)
    remote: list[str]
    awaiting_answer: bool = False  # a local restart's offer awaits the client's credentials
    # incoming checks of the new local generation, by source, until then
    deferred: dict[tuple[tuple[str, int], int], tuple[Any, tuple[str, int], Any]] = field(
        default_factory=dict
    )


_states: weakref.WeakKeyDictionary[aioice.ice.Connection, _IceGenerations] = (
    weakref.WeakKeyDictionary()
)


def _generations(connection: aioice.ice.Connection) -> _IceGenerations:
    """The connection's generations; on first use, its per-instance request handling."""
    state = _states.get(connection)
    if state is None:
        state = _IceGenerations(
            local=[(connection.local_username, connection.local_password)],
            remote=[connection.remote_username] if connection.remote_username else [],
        )
        _states[connection] = state
        d = connection.__dict__
        # per instance: aioice's own checks know a single local and remote generation
        d["_valid_username"] = functools.partial(_valid_username_of, connection, state)
        d["request_received"] = functools.partial(
            _request_received, connection, state, connection.request_received
        )
    return state


def _valid_username_of(
    connection: aioice.ice.Connection, state: _IceGenerations, username: str
) -> bool:
    """aioice's USERNAME check of an incoming request, with more than one generation (the
    request's local generation is in place, see ``_request_received``)."""
    local, colon, remote = username.partition(":")
    if colon != ":" or local != connection.local_username:
        return False
    if state.awaiting_answer and local == state.local[-1][0]:
        return True  # the client's new ufrag comes with its answer (aioice: any until known)
    return remote in state.remote


def _request_received(
    connection: aioice.ice.Connection,
    state: _IceGenerations,
    original: Callable[[Any, tuple[str, int], Any], None],
    message: Any,
    addr: tuple[str, int],
    protocol: Any,
) -> None:
    """aioice's handling of an incoming check, with the local generation its USERNAME names
    in place (so it is verified and answered with that generation's password); a check of
    a new generation whose answer is not in yet is answered, and checked back later."""
    username = message.attributes.get("USERNAME")
    local = username.partition(":")[0] if isinstance(username, str) else ""
    generation = next((g for g in state.local if g[0] == local), None)
    if generation is None:
        original(message, addr, protocol)  # refused (401) by aioice
        return
    current = connection._local_username, connection._local_password
    defer = state.awaiting_answer and generation == state.local[-1]
    d = connection.__dict__
    connection._local_username, connection._local_password = generation
    if defer:
        d["check_incoming"] = functools.partial(_defer_check, state)
    try:
        original(message, addr, protocol)
    finally:
        connection._local_username, connection._local_password = current
        if defer:
            del d["check_incoming"]


def _defer_check(
    state: _IceGenerations, message: Any, addr: tuple[str, int], protocol: Any
) -> None:
    """A triggered check now would use the client's old credentials (refused by a client that
    restarted): held until its answer, the latest per source and socket, bounded."""
    key = (addr, id(protocol))
    if key in state.deferred or len(state.deferred) < _DEFERRED_CHECKS:
        state.deferred[key] = (message, addr, protocol)


# --- ICE sockets --------------------------------------------------------------------------


class IceSocketPolicy(Protocol):
    def host_addresses(self, default: list[str]) -> list[tuple[str, str]]:
        """(address to bind, address to advertise) pairs, given aioice's default host
        addresses."""
        ...

    def bind_udp(self, address: str) -> socket.socket:
        """A UDP socket bound on ``address`` (raise ``OSError`` if impossible)."""
        ...


async def _gather_with_policy(
    connection: aioice.ice.Connection,
    policy: IceSocketPolicy,
    component: int,
    addresses: list[str],
    timeout: int = 5,
) -> list[aioice.candidate.Candidate]:
    """aioice's ``get_component_candidates`` with sockets from ``policy`` (TURN: one relay
    candidate when the connection has a TURN server)."""
    loop = asyncio.get_running_loop()
    candidates: list[aioice.candidate.Candidate] = []
    protocols: list[aioice.ice.StunProtocol] = []
    for bind_address, advertised in policy.host_addresses(addresses):
        try:
            sock = policy.bind_udp(bind_address)
        except OSError:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, aioice.turn.UDP_SOCKET_BUFFER_SIZE)
            _, protocol = await loop.create_datagram_endpoint(
                lambda: aioice.ice.StunProtocol(connection), sock=sock
            )
        except OSError:
            sock.close()
            continue
        port = sock.getsockname()[1]
        protocol.local_candidate = aioice.candidate.Candidate(
            foundation=aioice.candidate.candidate_foundation("host", "udp", advertised),
            component=component,
            transport="udp",
            priority=aioice.candidate.candidate_priority(component, "host"),
            host=advertised,
            port=port,
            type="host",
        )
        candidates.append(protocol.local_candidate)
        protocols.append(protocol)
    connection._protocols += protocols

    stun_server = connection.stun_server
    if stun_server:
        tasks = [
            asyncio.ensure_future(aioice.ice.server_reflexive_candidate(p, stun_server))
            for p in protocols
            if ":" not in p.local_candidate.host
        ]
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in done:
                if task.exception() is None:
                    candidates.append(task.result()[0])
            for task in pending:
                task.cancel()
    if connection.turn_server:  # a relay candidate, as aioice gathers it
        try:
            relayed, relay_protocol = await asyncio.wait_for(
                aioice.ice.relayed_candidate(
                    component=component,
                    hide_related_address=False,
                    protocol_factory=lambda: aioice.ice.StunProtocol(connection),
                    turn_server=connection.turn_server,
                    turn_username=connection.turn_username,
                    turn_password=connection.turn_password,
                    turn_ssl=connection.turn_ssl,
                    turn_transport=connection.turn_transport,
                ),
                timeout,
            )
        except Exception:  # an unreachable or refusing TURN server leaves the host candidates
            pass
        else:
            candidates.append(relayed)
            connection._protocols.append(relay_protocol)
    return candidates


def hook_peer_connection(
    pc: RTCPeerConnection, policy: IceSocketPolicy | None, decode_unattached: bool = False
) -> None:
    """For every DTLS transport ``pc`` creates from now on: install the MID router, and (with
    a policy) bind its ICE host candidates' sockets through the policy. Unless
    ``decode_unattached``, RTP for receivers not hooked by ``hook_receiver`` is dropped: an SFU
    connection never decodes, even for a track nobody attached."""
    d = pc.__dict__
    if "_RTCPeerConnection__createDtlsTransport" in d:
        raise RuntimeError("hook_peer_connection: already hooked")
    original: Callable[[], RTCDtlsTransport] = pc._RTCPeerConnection__createDtlsTransport  # type: ignore[attr-defined]

    def create_dtls_transport() -> RTCDtlsTransport:
        dtls = original()
        install_mid_router(dtls, drop_unhooked=not decode_unattached)
        if policy is not None:
            connection = dtls.transport.iceGatherer._connection
            connection.__dict__["get_component_candidates"] = functools.partial(
                _gather_with_policy, connection, policy
            )
        return dtls

    d["_RTCPeerConnection__createDtlsTransport"] = create_dtls_transport


# --- simulcast negotiation ----------------------------------------------------------------

# ids used when *we* offer (answers echo the offerer's ids); unique across audio and video
_SIMULCAST_EXTENSIONS = ((EXT_RID, 10), (EXT_REPAIRED_RID, 11))


def install_simulcast_extensions() -> None:
    """Let aiortc negotiate the RtpStreamId / RepairedRtpStreamId header extensions for video
    (process-wide, idempotent): simulcast publishers tag each layer's packets with its rid."""
    video: list[RTCRtpHeaderExtensionParameters] = HEADER_EXTENSIONS["video"]
    for uri, ext_id in _SIMULCAST_EXTENSIONS:
        if not any(e.uri == uri for e in video):
            video.append(RTCRtpHeaderExtensionParameters(id=ext_id, uri=uri))


_SIMULCAST_RE = re.compile(r"^a=simulcast:(.*)$")


def _sections(sdp: str) -> list[list[str]]:
    lines = sdp.replace("\r\n", "\n").split("\n")
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    return sections


def _mid_of(section: list[str]) -> str | None:
    for line in section:
        if line.startswith("a=mid:"):
            return line[6:].strip()
    return None


def simulcast_answer(answer_sdp: str, offer_sdp: str) -> str:
    """Add ``a=rid:<rid> recv`` and ``a=simulcast:recv ...`` to each answer section whose
    offer section sends simulcast (aiortc drops these lines, and a client whose simulcast is
    not accepted sends one layer only)."""
    offered: dict[str, tuple[list[str], str]] = {}
    for section in _sections(offer_sdp)[1:]:
        mid = _mid_of(section)
        rids: list[str] = []
        send_list = ""
        for line in section:
            if line.startswith("a=rid:"):
                parts = line[6:].split()
                if len(parts) >= 2 and parts[1] == "send":
                    rids.append(parts[0])
            match = _SIMULCAST_RE.match(line.strip())
            if match:
                tokens = match.group(1).split()
                for i in range(0, len(tokens) - 1, 2):
                    if tokens[i] == "send":
                        send_list = tokens[i + 1]
        if mid is not None and rids and send_list:
            offered[mid] = (rids, send_list)
    if not offered:
        return answer_sdp
    crlf = "\r\n" in answer_sdp
    out: list[str] = []
    for section in _sections(answer_sdp):
        mid = _mid_of(section)
        has_simulcast = any(line.startswith("a=simulcast:") for line in section)
        for line in section:
            out.append(line)
            if mid in offered and not has_simulcast and line.startswith("a=mid:"):
                rids, send_list = offered[mid]
                out.extend(f"a=rid:{rid} recv" for rid in rids)
                out.append(f"a=simulcast:recv {send_list}")
    return ("\r\n" if crlf else "\n").join(out)


# keep references to fire-and-forget tasks (asyncio holds only weak references)
_background: set[asyncio.Future[Any]] = set()


def spawn(aw: Awaitable[Any]) -> None:
    """Run ``aw`` in the background, keeping a reference until it is done."""
    task = asyncio.ensure_future(aw)
    _background.add(task)
    task.add_done_callback(_background.discard)
    task.add_done_callback(_ignore_result)


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, ConnectionError):
        log.warning("background RTP task failed", error=repr(exc))
