"""The native fan-out (C: header rewrite + SRTP + sendmmsg) writes exactly the bytes of the
pure-Python reference, for every kind of copy, and delivers them on real UDP sockets."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from aiortc.rtp import RtpPacket
from pylibsrtp import Policy, Session

from trackyard.sfu import fanout
from trackyard.sfu.fanout import Copy, Fanout, NativeFanout, PyFanout
from trackyard.sfu.native import build
from trackyard.sfu.rtpstats import TrafficCounters
from trackyard.sfu.trackcontract import ForwardedPacket, PacketSink, with_sink

KEY = bytes(range(30))  # AES_CM_128 master key + salt


@pytest.fixture(scope="module", autouse=True)
def native_library() -> None:
    build.build()  # the install step's build; a failure here is a failure of the fast path
    assert fanout.native_available(), fanout.describe()


def session(profile: int = Policy.SRTP_PROFILE_AES128_CM_SHA1_80) -> Session:
    return Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))


@dataclass
class Route:
    srtp: Session | None
    sock: socket.socket
    addr: tuple[str, int]

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    @property
    def family(self) -> int:
        return int(self.sock.family)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sock.sendto(data, addr)


def ssrcs(rx: socket.socket) -> list[int]:
    """The SSRCs of what a non-blocking ``rx`` has received (loopback delivers at once)."""
    out = []
    while True:
        try:
            out.append(int.from_bytes(rx.recv(2048)[8:12], "big"))
        except BlockingIOError:
            return out


def udp_pair(timeout: float | None = None) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A sending socket and a bound receiving one (big buffer; ``timeout`` None: non-blocking)."""
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    if timeout is None:
        rx.setblocking(False)
    else:
        rx.settimeout(timeout)
    yield tx, rx
    tx.close()
    rx.close()


@pytest.fixture
def udp() -> Iterator[tuple[socket.socket, socket.socket]]:
    yield from udp_pair(2.0)


# (mid element, abs-send-time element id, audio level element id) as ExtensionWriter makes them
EXTENSIONS = [
    (b"", 0, 0),
    (bytes([(1 << 4) | 0]) + b"0", 0, 0),
    (bytes([(1 << 4) | 1]) + b"12", 3 << 4 | 2, 0),
    (bytes([(4 << 4) | 15]) + b"abcdefghijklmnop", 2 << 4 | 2, 5 << 4),
    (b"", 3 << 4 | 2, 0),
    (bytes([(1 << 4) | 2]) + b"mid", 0, 2 << 4),
]


def configure(copy: Copy, ext: tuple[bytes, int, int], i: int, srtp: Session | None) -> None:
    copy.set_extensions(*ext)
    f = copy.fields
    f.ssrc, f.seq, f.ts, f.pt = 0x11223344 + i, (65530 + i) & 0xFFFF, 0xFFFFFFF0 + i, 96 + i % 3
    copy.set_route(None)
    if srtp is not None:  # build() protects with the route's session
        copy.set_route(
            Route(srtp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM), ("1.2.3.4", 9))
        )


@pytest.mark.parametrize("protected", [False, True])
@pytest.mark.parametrize("video", [True, False])
def test_native_and_reference_build_the_same_bytes(protected: bool, video: bool) -> None:
    native, ref = NativeFanout(), PyFanout()
    payload = os.urandom(1100)
    for i, ext in enumerate(EXTENSIONS):
        for marker in (0, 1):
            for level in (-1, 0, 0x80 | 42, 127):
                # one SRTP session per path, same key: SRTP output is deterministic per index
                sessions = (session(), session()) if protected else (None, None)
                a, b = native.new_copy(), ref.new_copy()
                configure(a, ext, i, sessions[0])
                configure(b, ext, i, sessions[1])
                got = native.build(a, payload, marker, video, 0xABCDEF, level)
                want = ref.build(b, payload, marker, video, 0xABCDEF, level)
                assert got == want, (ext, marker, level)
                if protected:  # and really encrypted
                    assert payload not in got


def test_per_copy_payload_override_and_gcm() -> None:
    native, ref = NativeFanout(), PyFanout()
    shared, own = os.urandom(900), os.urandom(901)
    profile = Policy.SRTP_PROFILE_AEAD_AES_128_GCM
    key = KEY[:28]  # GCM-128: 16-byte key, 12-byte salt
    a, b = native.new_copy(), ref.new_copy()
    for copy in (a, b):
        s = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
        configure(copy, EXTENSIONS[2], 1, s)
        copy.set_payload(own)
    assert native.build(a, shared, 1, True, 5, -1) == ref.build(b, shared, 1, True, 5, -1)
    a.set_payload(None)
    b.set_payload(None)
    a.fields.seq = b.fields.seq = b.fields.seq + 1  # SRTP refuses to protect an index twice
    assert native.build(a, shared, 1, True, 6, -1) == ref.build(b, shared, 1, True, 6, -1)


def run_batch(fan: Fanout, tx: socket.socket, rx: socket.socket, n: int) -> list[bytes]:
    addr = rx.getsockname()
    payload = bytes(range(200))  # small: n of them fit the receiver's socket buffer
    copies = []
    for i in range(n):
        c = fan.new_copy()
        c.set_extensions(*EXTENSIONS[i % len(EXTENSIONS)])
        c.set_route(Route(session(), tx, addr))
        f = c.fields
        f.ssrc, f.seq, f.ts, f.pt = 1000 + i, i, 90000 * i, 100
        copies.append(c)
    for c in copies:
        fan.add(c)
    assert fan.send(payload, 1, True, 777, -1) == n
    return sorted(rx.recv(4096) for _ in range(n))


def test_batches_arrive_as_the_reference_sends_them(
    udp: tuple[socket.socket, socket.socket],
) -> None:
    tx, rx = udp
    n = 300  # more than one sendmmsg batch (64) and than the first array size (256)
    native = run_batch(NativeFanout(), tx, rx, n)
    reference = run_batch(PyFanout(), tx, rx, n)
    assert len(native) == n
    assert native == reference


def test_copies_on_different_sockets_each_reach_their_peer() -> None:
    fan = NativeFanout()
    pairs = []
    for i in range(5):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(2.0)
        c = fan.new_copy()
        c.set_route(Route(None, tx, rx.getsockname()))
        c.fields.ssrc, c.fields.seq = 7, i
        fan.add(c)
        pairs.append((tx, rx, c))
    assert fan.send(b"payload", 0, False, 0, -1) == 5
    for i, (tx, rx, _) in enumerate(pairs):
        data = rx.recv(2048)
        assert data[2:4] == i.to_bytes(2, "big") and data.endswith(b"payload")
        tx.close()
        rx.close()


def test_an_unroutable_copy_does_not_stop_the_others(
    udp: tuple[socket.socket, socket.socket],
) -> None:
    tx, rx = udp
    fan = NativeFanout()
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bad = fan.new_copy()
    bad.set_route(Route(None, dead, ("127.0.0.1", 9)))
    dead.close()  # its fd is gone: sendmmsg fails with EBADF for that copy only
    good = fan.new_copy()
    good.set_route(Route(None, tx, rx.getsockname()))
    fan.add(bad)
    fan.add(good)
    fan.send(b"x" * 10, 0, True, 0, -1)
    assert rx.recv(2048).endswith(b"x" * 10)


def test_the_lane_credits_each_copy_to_its_own_counters(
    udp: tuple[socket.socket, socket.socket],
) -> None:
    """Subscribers count as delivered media, a relay's copies as relayed media: the lane
    credits each copy's packets to the counters its DownTrack gave, and refuses a fifth kind."""
    tx, rx = udp
    fan = NativeFanout(lane=True)
    clients, relay = TrafficCounters(), TrafficCounters()
    owners: list[object] = []
    for counters in (clients, clients, relay):
        c = fan.new_copy()
        c.set_route(Route(None, tx, rx.getsockname()))
        c.enter_lane((5, 0, 96, 100), (0, 0, 0, -1, -1, 0, 0), (0, 0, 0, -1, -1, -1), 0.0)
        owners.append(object())
        assert fan.lane_add(c, owners[-1], 1, counters)  # type: ignore[arg-type]
    for counters in (TrafficCounters(), TrafficCounters()):  # copies of another layer's stream
        c = fan.new_copy()
        c.enter_lane((6, 1, 96, 100), (0, 0, 0, -1, -1, 0, 0), (0, 0, 0, -1, -1, -1), 0.0)
        assert fan.lane_add(c, object(), 1, counters)  # type: ignore[arg-type]
    refused = fan.new_copy()
    assert not fan.lane_add(refused, object(), 1, TrafficCounters())  # type: ignore[arg-type]
    rtp = RtpPacket(payload_type=96, ssrc=5, sequence_number=1, timestamp=0, payload=b"p" * 100)
    packet = ForwardedPacket(rtp, fan)
    packet.n = 1
    assert fan.forward(packet, True, -1) == []
    assert (clients.packets_out, clients.bytes_out) == (2, 200)
    assert (relay.packets_out, relay.bytes_out) == (1, 100)
    assert sorted(len(rx.recv(2048)) for _ in range(3)) == [112, 112, 112]  # header + 100


def test_copies_added_ahead_go_out_first(udp: tuple[socket.socket, socket.socket]) -> None:
    """A relay's copy feeds another node's fan-out, so it leaves before the subscribers'
    copies, whatever the order the copies joined and left the lane in."""
    tx, rx = udp
    fan = NativeFanout(lane=True)
    copies: dict[int, Copy] = {}

    def join(ssrc: int, ahead: bool) -> None:
        c = fan.new_copy()
        c.set_route(Route(None, tx, rx.getsockname()))
        c.fields.ssrc = ssrc
        c.enter_lane((5, 0, 96, 100), (0, 0, 0, -1, -1, 0, 0), (0, 0, 0, -1, -1, -1), 0.0)
        assert fan.lane_add(c, object(), 1, None, ahead=ahead)  # type: ignore[arg-type]
        copies[ssrc] = c

    for ssrc in (1, 2, 100, 3, 101, 4, 102):  # ahead: 100 and up
        join(ssrc, ssrc >= 100)
    for ssrc in (100, 2, 4):
        fan.lane_remove(copies.pop(ssrc))
    join(103, True)
    join(5, False)
    rtp = RtpPacket(payload_type=96, ssrc=5, sequence_number=1, timestamp=0, payload=b"p" * 10)
    packet = ForwardedPacket(rtp, fan)
    packet.n = 1
    assert fan.forward(packet, True, -1) == []
    order = [int.from_bytes(rx.recv(2048)[8:12], "big") for _ in copies]
    assert sorted(order[:3]) == [101, 102, 103]
    assert sorted(order[3:]) == [1, 3, 5]


def test_sinks_added_ahead_come_first() -> None:
    sinks: tuple[PacketSink, ...] = ()
    a, b, relay = object(), object(), object()
    for sink, ahead in ((a, False), (b, False), (relay, True)):
        sinks = with_sink(sinks, sink, ahead)  # type: ignore[arg-type]
    assert sinks == (relay, a, b)


def test_a_packet_goes_to_the_copies_ahead_and_later_to_the_rest(
    udp: tuple[socket.socket, socket.socket],
) -> None:
    """``AHEAD`` sends a packet to the lane's copies ahead (relays) only, ``REST`` to the
    others; what a part hands back to Python is that part's owners; a lane change is
    announced before it happens (a source holding packets for ``REST`` sends them first)."""
    tx, rx = udp
    rx.setblocking(False)  # loopback delivers within sendmmsg: what was sent is there
    fan = NativeFanout(lane=True)
    changes: list[int] = []
    fan.watch_lane(lambda: changes.append(len(fan.lane_owners())))
    owners: dict[int, object] = {}
    copies: dict[int, Copy] = {}
    assert not fan.splits()
    for ssrc in (1, 100, 2, 101, 3):  # ahead: 100 and up
        c = fan.new_copy()
        c.set_route(Route(None, tx, rx.getsockname()))
        c.fields.ssrc = ssrc
        c.enter_lane((5, 0, 96, 100), (0, 0, 0, -1, -1, 0, 0), (0, 0, 0, -1, -1, -1), 0.0)
        owners[ssrc] = object()
        assert fan.lane_add(c, owners[ssrc], 1, None, ahead=ssrc >= 100)  # type: ignore[arg-type]
        copies[ssrc] = c
    assert changes == [0, 1, 2, 3, 4]  # each announced before the copy joined
    assert fan.splits()

    packets = []
    for n in (1, 2):
        rtp = RtpPacket(payload_type=96, ssrc=5, sequence_number=n, timestamp=0, payload=b"p")
        packets.append(ForwardedPacket(rtp, fan))
        packets[-1].n = n
    for p in packets:
        assert fan.forward(p, True, -1, fanout.AHEAD) == []
    assert sorted(ssrcs(rx)) == [100, 100, 101, 101]
    for p in packets:
        assert fan.forward(p, True, -1, fanout.REST) == []
    assert sorted(ssrcs(rx)) == [1, 1, 2, 2, 3, 3]
    assert [copies[s].lane_state()[0][2] for s in (1, 100, 3)] == [2, 2, 2]  # last seq out

    other_pt = RtpPacket(payload_type=97, ssrc=5, sequence_number=3, timestamp=0, payload=b"p")
    packet = ForwardedPacket(other_pt, fan)
    packet.n = 3
    ahead = fan.forward(packet, True, -1, fanout.AHEAD)  # only Python decides a new pt
    rest = fan.forward(packet, True, -1, fanout.REST)
    assert set(map(id, ahead)) == {id(owners[100]), id(owners[101])}
    assert set(map(id, rest)) == {id(owners[1]), id(owners[2]), id(owners[3])}
    assert ssrcs(rx) == []

    fan.lane_remove(copies[101])
    fan.lane_remove(copies[101])  # not in the lane: nothing to announce
    assert changes[5:] == [5]
    fan.lane_remove(copies[100])
    assert not fan.splits()  # nothing ahead: the whole packet goes in one part
