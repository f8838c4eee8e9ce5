"""ICE sockets inside the configured port range, advertised node IP, STUN only if configured."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator
from typing import cast

import pytest
from aioice import stun
from aiortc import RTCPeerConnection

from trackyard.sfu.portrange import PortRangePolicy, make_peer_connection, stun_urls

RANGE = (47400, 47409)


def _candidates(pc: RTCPeerConnection) -> list[tuple[str, int, str]]:
    return [
        (m.group(1), int(m.group(2)), m.group(3))
        for m in re.finditer(
            r"a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ (\w+)", pc.localDescription.sdp
        )
    ]


def test_bind_inside_range_until_exhausted() -> None:
    policy = PortRangePolicy((RANGE[0], RANGE[0] + 2), "127.0.0.1")
    socks = [policy.bind_udp("127.0.0.1") for _ in range(3)]
    try:
        assert sorted(s.getsockname()[1] for s in socks) == [RANGE[0], RANGE[0] + 1, RANGE[0] + 2]
        with pytest.raises(OSError, match=r"no free UDP port in 47400\.\.47402"):
            policy.bind_udp("127.0.0.1")
    finally:
        for s in socks:
            s.close()


def test_invalid_range() -> None:
    with pytest.raises(ValueError, match="invalid UDP port range"):
        PortRangePolicy((6000, 5000))


def test_addresses() -> None:
    assert PortRangePolicy(None, "").host_addresses(["10.0.0.5"]) == [("10.0.0.5", "10.0.0.5")]
    assert PortRangePolicy(None, "127.0.0.1").host_addresses(["10.0.0.5"]) == [
        ("127.0.0.1", "127.0.0.1")
    ]
    # not an address of this host (documentation range): bind everywhere, advertise it
    assert PortRangePolicy(None, "203.0.113.7").host_addresses(["10.0.0.5"]) == [
        ("0.0.0.0", "203.0.113.7")
    ]


def test_stun_urls() -> None:
    assert stun_urls(["stun.example.org:3478", "stun:a:1", " ", "stuns:b:5349"]) == [
        "stun:stun.example.org:3478",
        "stun:a:1",
        "stuns:b:5349",
    ]


async def _gather(pc: RTCPeerConnection) -> None:
    pc.addTransceiver("audio", direction="sendonly")
    pc.createDataChannel("x")
    await pc.setLocalDescription(await pc.createOffer())


async def test_peer_connection_binds_in_range_and_advertises_node_ip() -> None:
    pc = make_peer_connection(RANGE, "203.0.113.7", [])
    try:
        await _gather(pc)
        candidates = _candidates(pc)
        assert candidates  # max-bundle: one transport for audio + data
        for host, port, kind in candidates:
            assert host == "203.0.113.7" and kind == "host"
            assert RANGE[0] <= port <= RANGE[1]
        config = pc._RTCPeerConnection__configuration  # type: ignore[attr-defined]
        assert config.iceServers == []  # aiortc's default public STUN server is not used
    finally:
        await pc.close()


class _StunServer(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = stun.parse_message(data)
        response = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=request.transaction_id,
        )
        response.attributes["XOR-MAPPED-ADDRESS"] = ("198.51.100.9", addr[1])
        self.transport.sendto(bytes(response), addr)


@contextlib.asynccontextmanager
async def stun_server() -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        _StunServer, local_addr=("127.0.0.1", 0), family=socket.AF_INET
    )
    try:
        yield transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


async def test_server_reflexive_candidates_only_with_stun_configured() -> None:
    async with stun_server() as port:
        pc = make_peer_connection(RANGE, "127.0.0.1", [f"127.0.0.1:{port}"])
        try:
            await _gather(pc)
            kinds = {(kind, host) for host, _, kind in _candidates(pc)}
            assert kinds == {("host", "127.0.0.1"), ("srflx", "198.51.100.9")}
        finally:
            await pc.close()
