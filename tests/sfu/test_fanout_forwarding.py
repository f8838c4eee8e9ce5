"""The native fan-out path of a DownTrack sends the same RTP as the Python path, packet for
packet, through simulcast layer switches, a pause and resume, and NACK retransmissions; and so
does the lane (C deciding a copy's packets on its steady stream) through late packets, padding
and packets from before a skip point, which it hands back to Python.

Two DownTracks subscribe to one simulcast UpTrack (the set-up of test_simulcast: real aiortc
receiver/sender objects, no network) with the same sequence-number seeds: one has no route
(Python path: rtp_header + send_rtp_nowait, captured), the other a plain UDP route to a local
socket without SRTP (its copies go out through the native fan-out). Their outputs must match
byte for byte, apart from each sender's own SSRC.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from aiortc.rtp import RtcpRtpfbPacket, RtpPacket

from tests.sfu.test_fanout import Route, udp_pair
from tests.sfu.test_simulcast import (  # noqa: F401  (fixtures used by name)
    _setup,
    capture_nowait,
    stop_receivers,
)
from trackyard.sfu import fanout
from trackyard.sfu.downtrack import DownTrack
from trackyard.sfu.native import build
from trackyard.sfu.uptrack import QUALITY_HIGH, QUALITY_LOW


@pytest.fixture
def udp() -> Iterator[tuple[socket.socket, socket.socket]]:
    yield from udp_pair()


def drain(rx: socket.socket, into: list[bytes]) -> None:
    while True:
        try:
            into.append(rx.recv(4096))
        except BlockingIOError:
            return


def media(out: list[bytes]) -> list[bytes]:
    """RTP only (no RTCP), the SSRC masked (each sender has its own)."""
    return [d[:8] + b"\0\0\0\0" + d[12:] for d in out if not 192 <= d[1] <= 223]


def nack(dt: DownTrack, seqs: list[int]) -> RtcpRtpfbPacket:
    return RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=dt.ssrc, lost=seqs)


async def test_native_and_python_paths_send_the_same_packets(
    monkeypatch: pytest.MonkeyPatch, udp: tuple[socket.socket, socket.socket]
) -> None:
    build.build()
    assert fanout.native_available(), fanout.describe()
    tx, rx = udp
    monkeypatch.setattr(random, "randrange", lambda *a: 4242)  # same munger seeds for both
    _, pub, (py_dt, c_dt), (py_out, c_rtcp), _ = await _setup([QUALITY_HIGH, QUALITY_HIGH], [])
    route = Route(None, tx, rx.getsockname())  # plain UDP, no SRTP
    monkeypatch.setattr("trackyard.sfu.rtphooks.udp_route", lambda transport: route)
    c_dt._update_route()  # what a DTLS state change to "connected" does
    assert c_dt._copy is not None and py_dt._copy is None
    c_out: list[bytes] = []

    async def both(action: Any, frames: int) -> None:
        for dt in (py_dt, c_dt):
            action(dt)
        await pub.frames(frames)
        drain(rx, c_out)

    await both(lambda dt: None, 8)
    assert c_dt.in_lane and not py_dt.in_lane  # steady: C decides the native copy's packets
    lane_sent = c_dt._copy.sent()[0]
    assert lane_sent > 0
    await both(lambda dt: dt.set_layer_preference(quality=QUALITY_LOW), 8)  # switch down
    await both(lambda dt: dt.set_layer_preference(disabled=True), 4)  # pause
    await both(lambda dt: dt.set_layer_preference(quality=QUALITY_HIGH), 8)  # resume, up
    sent = media(py_out)
    assert len(sent) >= 20 and py_dt.switches >= 2
    assert media(c_out) == sent

    # NACKs: both rebuild the same retransmissions from their histories
    seqs = [RtpPacket.parse(d).sequence_number for d in sent[-5:]]
    rtx_before = len(media(py_out)), len(media(c_rtcp))
    await py_dt.handle_rtcp(nack(py_dt, seqs))
    await c_dt.handle_rtcp(nack(c_dt, seqs))
    py_rtx = media(py_out)[rtx_before[0] :]
    c_rtx = media(c_rtcp)[rtx_before[1] :]
    assert len(py_rtx) == 5 and py_dt.retransmits == c_dt.retransmits == 5
    # the RTX SSRC (per sender) is masked, and abs-send-time, stamped at retransmission
    # (extension block: BEDE header, MID element "7", abs-send-time element at 18..21)
    assert c_rtx[0][18] == py_rtx[0][18] == (6 << 4 | 2)
    assert [p[:19] + p[22:] for p in c_rtx] == [p[:19] + p[22:] for p in py_rtx]


async def test_the_lane_hands_back_what_only_python_can_decide(
    monkeypatch: pytest.MonkeyPatch, udp: tuple[socket.socket, socket.socket]
) -> None:
    build.build()
    tx, rx = udp
    monkeypatch.setattr(random, "randrange", lambda *a: 4242)
    _, pub, (_, c_dt), (py_out, _), _ = await _setup([QUALITY_HIGH, QUALITY_HIGH], [])
    route = Route(None, tx, rx.getsockname())
    monkeypatch.setattr("trackyard.sfu.rtphooks.udp_route", lambda transport: route)
    c_dt._update_route()
    fed: list[RtpPacket] = []
    handle = pub.receiver._handle_rtp_packet

    async def feed(packet: RtpPacket, arrival: int) -> None:
        if packet.ssrc == pub.layers["f"].ssrc:
            fed.append(packet)
        await handle(packet, arrival)

    pub.receiver.__dict__["_handle_rtp_packet"] = feed
    c_out: list[bytes] = []
    f = pub.layers["f"]

    def again(packet: RtpPacket) -> RtpPacket:  # a fresh copy (the track unwraps in place)
        return RtpPacket.parse(bytes(packet.serialize()))

    async def padding() -> None:  # probing: no payload, the next sequence number
        await handle(RtpPacket(payload_type=96, sequence_number=f.seq, timestamp=0, ssrc=f.ssrc), 0)
        f.seq = (f.seq + 1) & 0xFFFF

    await pub.frames(6)
    assert c_dt.in_lane
    await handle(again(fed[-3]), 0)  # late (reordered or repaired): the lane maps it
    assert c_dt.in_lane
    before_skip = again(fed[-1])
    await padding()  # Python skips it (the lane keeps no skip list) ...
    assert not c_dt.in_lane
    await pub.frames(2)
    assert c_dt.in_lane  # ... and hands the copy back with the next packet it forwards
    await handle(before_skip, 0)  # older than the skip point: the lane hands it back
    await padding()
    await pub.frames(3)
    await handle(again(fed[-2]), 0)
    drain(rx, c_out)
    sent = media(py_out)
    assert len(sent) >= 12
    assert media(c_out) == sent
    assert c_dt.in_lane
