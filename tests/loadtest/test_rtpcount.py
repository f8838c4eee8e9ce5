"""The native RTP counter (C thread, epoll + recvmmsg) against its Python reference: the same
datagrams on two sockets give the same records, the same RTX counts, and the same datagrams
handed on to the socket's protocol, in order; arrivals are the kernel's receive times on the
monotonic clock."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from trackyard.loadtest.rtpcount import Counter, NativeCounter, PyCounter

MEDIA, RTX = 96, 97


def rtp(pt: int, seq: int, ts: int, size: int) -> bytes:
    header = bytes([0x80, pt]) + seq.to_bytes(2, "big") + ts.to_bytes(4, "big")
    return header + (1234).to_bytes(4, "big") + bytes(size - 12)


# what an SFU's subscriber socket sees, in order: STUN, DTLS, RTP media, RTX, RTCP, a marker
# bit (pt | 0x80), a short datagram
DATAGRAMS = [
    b"\x00\x01\x00\x00" + bytes(16),  # STUN binding request
    b"\x16\xfe\xfd" + bytes(40),  # DTLS handshake
    *(rtp(MEDIA, 65530 + i & 0xFFFF, 9000 * (i // 3), 100 + i) for i in range(12)),
    rtp(RTX, 7, 9000, 300),
    bytes([0x80, 200]) + bytes(26),  # RTCP sender report
    rtp(MEDIA | 0x80, 8, 99999, 1200),
    b"\x80",
]
FOR_PROTOCOL = [d for d in DATAGRAMS if not (len(d) >= 12 and d[1] & 0x7F in (MEDIA, RTX))]


class Recorder(asyncio.DatagramProtocol):
    def __init__(self, expected: int) -> None:
        self.got: list[tuple[bytes, Any]] = []
        self.all_in = asyncio.Event()
        self.expected = expected
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append((data, addr))
        if len(self.got) == self.expected:
            self.all_in.set()


async def count(counter: Counter, sender: socket.socket) -> tuple[Any, ...]:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: Recorder(len(FOR_PROTOCOL)), local_addr=("127.0.0.1", 0)
    )
    try:
        owner = object()
        slot = counter.watch(protocol, owner)
        counter.media(slot, [MEDIA])
        address = protocol.transport.get_extra_info("sockname")
        before = time.monotonic()
        for data in DATAGRAMS:
            sender.sendto(data, address)
        after = time.monotonic()
        await asyncio.wait_for(protocol.all_in.wait(), 5)
        records: list[Any] = []
        for _ in range(500):  # bounded: the C thread may still be appending
            records += counter.take()
            if len(records) >= 13:
                break
            await asyncio.sleep(0.01)
        assert all(r[0] is owner for r in records)
        assert all(before <= r[1] <= after + 0.005 for r in records), (before, after, records)
        return (
            [r[2:] for r in records],
            counter.rtx(slot),
            counter.counted(slot),
            [data for data, _ in protocol.got],
            {addr for _, addr in protocol.got},
        )
    finally:
        counter.close()
        protocol.transport.close()


@pytest.fixture(scope="module", autouse=True)
def native_library() -> None:
    from trackyard.loadtest.rtpcount import load

    load()  # built from source; a failure is a failure of the native counter


async def test_native_and_python_counters_agree() -> None:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    source = sender.getsockname()
    try:
        native = await count(NativeCounter(slots=4, records=64, others=16), sender)
        python = await count(PyCounter(), sender)
    finally:
        sender.close()
    assert native == python
    records, rtx, counted, handed_on, addrs = native
    want = [
        (int.from_bytes(d[4:8], "big"), (d[2] << 8) | d[3], len(d))
        for d in DATAGRAMS
        if len(d) >= 12 and d[1] & 0x7F == MEDIA
    ]
    assert records == want and len(records) == 13
    assert rtx == 1 and counted == 13
    assert handed_on == FOR_PROTOCOL
    assert addrs == {source}


@pytest.mark.parametrize("make", [NativeCounter, PyCounter])
async def test_a_closed_counter_ignores_late_calls(make: type[Counter]) -> None:
    """A renegotiation during teardown hooks the sockets again after the counter stopped: the
    native one must not touch its freed state (it did: a segfault in tyc_media)."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: Recorder(1), local_addr=("127.0.0.1", 0)
    )
    try:
        counter = make()
        slot = counter.watch(protocol, object())
        counter.close()
        counter.media(slot, [MEDIA])
        assert counter.watch(protocol, object()) == -1
        assert (counter.take(), counter.rtx(slot), counter.counted(slot)) == ([], 0, 0)
        counter.close()
    finally:
        protocol.transport.close()


def _idle_threads() -> set[int]:
    """This process's threads the kernel schedules as SCHED_IDLE (policy 5, stat field 41)."""
    idle = set()
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/self/task/{task}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[38]) == os.SCHED_IDLE:
                idle.add(int(task))
    return idle


@pytest.mark.parametrize("idle", [True, False])
async def test_the_native_thread_runs_only_on_an_idle_core(idle: bool) -> None:
    """SCHED_IDLE, not only nice 19: a nice thread still preempts the server it measures."""
    before = _idle_threads()
    counter = NativeCounter(slots=4, records=64, others=16, idle=idle)
    try:
        for _ in range(200):  # bounded: the thread sets its policy as it starts
            if counter.scheduling() != "starting":
                break
            await asyncio.sleep(0.01)
        assert counter.scheduling() == ("idle" if idle else "nice")
        new = _idle_threads() - before
        assert len(new) == (1 if idle else 0), new
        assert threading.get_native_id() not in new
    finally:
        counter.close()
