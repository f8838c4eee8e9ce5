"""An UpTrack with relays (copies ahead) holds a burst's packets for its local copies until
the burst is read (``UpTrack._hold`` / ``_release``, ``rtphooks.ReceiveBurst``): what happens
when a local copy leaves the lane while held packets go out. The end-to-end order (relays
first, each burst after it is read) is in ``test_forwarding``."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
from aiortc.rtp import RtpPacket

from tests.sfu.test_fanout import Route, ssrcs, udp_pair
from trackyard.sfu import fanout
from trackyard.sfu.fanout import Copy
from trackyard.sfu.native import build
from trackyard.sfu.trackcontract import ForwardedPacket
from trackyard.sfu.uptrack import UpTrack


@pytest.fixture(scope="module", autouse=True)
def native_library() -> None:
    build.build()
    assert fanout.native_available(), fanout.describe()


@pytest.fixture
def udp() -> Iterator[tuple[socket.socket, socket.socket]]:
    yield from udp_pair()


class Burst:
    """Stands in for the connection's ReceiveBurst: the test runs the deferred work."""

    def __init__(self) -> None:
        self.work: list[Callable[[], None]] = []

    def defer(self, work: Callable[[], None]) -> None:
        self.work.append(work)


class Sink:
    """A subscriber copy in the lane; ``leave_on`` a packet number: when that packet is
    handed back to it, it takes its copy out of the lane (Python decides from then on)."""

    desired_layer = 0

    def __init__(self, up: UpTrack, copy: Copy, leave_on: int = -1) -> None:
        self.up, self.copy, self.leave_on = up, copy, leave_on
        self.got: list[int] = []

    def forward(self, packet: ForwardedPacket) -> None:
        self.got.append(packet.n)
        if packet.n == self.leave_on:
            self.up.fanout.lane_remove(self.copy)

    def layers_changed(self) -> None:
        return None

    def source_closed(self) -> None:
        return None


def test_held_packets_reach_a_copy_that_leaves_the_lane_meanwhile(
    udp: tuple[socket.socket, socket.socket],
) -> None:
    tx, rx = udp
    up = UpTrack("video", track_sid="TR_held")
    fan = up.fanout
    burst = Burst()
    up._burst = burst  # type: ignore[assignment]
    sinks: dict[int, Sink] = {}
    for ssrc, ahead in ((100, True), (1, False), (2, False)):
        c = fan.new_copy()
        c.set_route(Route(None, tx, rx.getsockname()))
        c.fields.ssrc = ssrc
        c.enter_lane((5, 0, 96, 100), (0, 0, 0, -1, -1, 0, 0), (0, 0, 0, -1, -1, -1), 0.0)
        sinks[ssrc] = Sink(up, c, leave_on=2 if ssrc == 1 else -1)
        up.add_sink(sinks[ssrc], ahead=ahead)  # type: ignore[arg-type]
        assert fan.lane_add(c, sinks[ssrc], 1, None, ahead=ahead)  # type: ignore[arg-type]
    assert fan.splits()
    out = up._packet
    for n, pt in ((1, 96), (2, 97), (3, 96)):  # 2: a payload type only Python decides
        out.rtp = RtpPacket(payload_type=pt, ssrc=5, sequence_number=n, payload=b"p")
        out.n = n
        up._forward(out, fanout.AHEAD)
        up._hold(out)
    assert len(burst.work) == 1  # deferred once for the burst
    assert ssrcs(rx) == [100, 100]  # packets 1 and 3 to the relay; 2 went to Python
    assert sinks[100].got == [2]

    burst.work.pop()()  # the burst was read: the local copies get it, in order
    assert sinks[1].got == [2, 3]  # 2 handed back (it left the lane), 3 by Python
    assert sinks[2].got == [2]  # 1 and 3 by the lane
    assert sinks[100].got == [2]  # the relay had them all already
    assert sorted(ssrcs(rx)) == [1, 2, 2]  # lane: 1 -> copies 1 and 2; 3 -> copy 2
    assert up._n_held == 0
