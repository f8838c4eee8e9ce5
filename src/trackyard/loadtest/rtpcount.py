"""Counting the RTP a load-test client's subscribers receive, timed by the kernel.

A counter takes over reading some of aiortc's UDP sockets (aioice's ``StunProtocol`` on
asyncio's selector transport). Per RTP packet of a media payload type it keeps the socket's
owner, the kernel's receive time (``SO_TIMESTAMPNS``: when the datagram reached the socket, on
the monotonic clock), the RTP timestamp, sequence number and size; SRTP leaves that header in
the clear, so nothing is decrypted. RTP of another payload type (RTX) is only counted; every
other datagram (STUN, DTLS, RTCP) goes on to the protocol as before.

- ``NativeCounter``: ``native/rtpcount.c``, one C thread reading all the sockets with epoll and
  recvmmsg, no Python per packet. The client process then costs the machine little while it
  reads hundreds of subscribers' copies of a keyframe, on the cores the SFU it measures uses.
- ``PyCounter``: the reference, the same in Python on the event loop (a recvmsg per datagram).

``tests/loadtest/test_rtpcount.py`` checks that both count the same datagrams the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

NATIVE = Path(__file__).parent / "native"
LIBRARY = NATIVE / "librtpcount.so"
SO_TIMESTAMPNS = 35  # Linux; the socket module does not name it
READ_BATCH = 64  # PyCounter: datagrams read per wake-up of a socket
# NativeCounter's thread yields to the server measured: a round of reads at most every 2 ms (the
# kernel's timestamps keep arrivals exact; a socket buffers far more than 2 ms of one stream),
# as SCHED_IDLE (at the lowest nice value where that is refused)
PAUSE_US = 2000
NICE = 19
IDLE = True
_TIMESPEC = struct.Struct("=qq")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)
_RECORD = struct.Struct("=dIHHi4x")  # tyc_rec: at, ts, seq, size, slot (padded to 24)

# (owner, arrival on the monotonic clock, RTP timestamp, sequence number, size)
Record = tuple[object, float, int, int, int]


class Counter(Protocol):
    def watch(self, protocol: Any, owner: object) -> int:
        """Read ``protocol``'s socket from now on; its records carry ``owner``. Returns the
        socket's slot. Once closed, a counter ignores its calls (a renegotiation during
        teardown hooks sockets again): ``watch`` returns -1, and counts are 0."""
        ...

    def media(self, slot: int, payload_types: Iterable[int]) -> None:
        """Count RTP of these payload types on ``slot`` as media (others as RTX)."""
        ...

    def take(self) -> list[Record]:
        """The records since the last take."""
        ...

    def rtx(self, slot: int) -> int: ...

    def counted(self, slot: int) -> int:
        """Media packets recorded on ``slot`` so far (taken or not)."""
        ...

    def close(self) -> None:
        """Stop reading (before the sockets close)."""
        ...


def _is_rtp(data: bytes) -> bool:
    return len(data) >= 12 and data[0] & 0xC0 == 0x80 and not 192 <= data[1] <= 223


def _clock_shift() -> float:
    """CLOCK_REALTIME (the kernel's stamps) minus the monotonic clock (everything else)."""
    return time.time() - time.monotonic()


def _socket_of(protocol: Any) -> socket.socket:
    sock: socket.socket = protocol.transport._sock  # extra_info's wrapper hides recvmsg
    return sock


class PyCounter:
    """The reference: ``NativeCounter``'s counting, in Python on the event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._shift = _clock_shift()
        self._records: list[Record] = []
        self._media: list[set[int]] = []
        self._rtx: list[int] = []
        self._counted: list[int] = []
        self._fds: list[int] = []
        self._closed = False

    def watch(self, protocol: Any, owner: object) -> int:
        if self._closed:
            return -1
        sock = _socket_of(protocol)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        slot = len(self._media)
        media: set[int] = set()
        self._media.append(media)
        self._rtx.append(0)
        self._counted.append(0)
        inner: Callable[[bytes, Any], None] = protocol.datagram_received
        records = self._records
        unpack = _TIMESPEC.unpack_from
        shift = self._shift

        def ready() -> None:
            for _ in range(READ_BATCH):
                try:
                    data, ancillary, _, addr = sock.recvmsg(65536, _ANCILLARY)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    protocol.error_received(exc)
                    return
                if not _is_rtp(data):
                    inner(data, addr)
                elif data[1] & 0x7F in media:
                    if ancillary:
                        sec, nsec = unpack(ancillary[0][2])
                        at = sec + nsec * 1e-9 - shift
                    else:
                        at = time.monotonic()
                    seq = (data[2] << 8) | data[3]
                    ts = int.from_bytes(data[4:8], "big")
                    records.append((owner, at, ts, seq, len(data)))
                    self._counted[slot] += 1
                else:
                    self._rtx[slot] += 1

        fd = sock.fileno()
        # the private pair: the public one refuses an fd a transport owns; its close removes it
        self._loop._remove_reader(fd)  # type: ignore[attr-defined]
        self._loop._add_reader(fd, ready)  # type: ignore[attr-defined]
        self._fds.append(fd)
        return slot

    def media(self, slot: int, payload_types: Iterable[int]) -> None:
        if 0 <= slot < len(self._media):
            self._media[slot].update(payload_types)

    def take(self) -> list[Record]:
        out, self._records = self._records, []
        return out

    def rtx(self, slot: int) -> int:
        return self._rtx[slot] if 0 <= slot < len(self._rtx) else 0

    def counted(self, slot: int) -> int:
        return self._counted[slot] if 0 <= slot < len(self._counted) else 0

    def close(self) -> None:
        self._closed = True
        for fd in self._fds:
            self._loop._remove_reader(fd)  # type: ignore[attr-defined]
        self._fds = []


# --- the native counter ---------------------------------------------------------------------

_native: tuple[Any, Any] | None = None


def load() -> tuple[Any, Any]:
    """cffi's ffi and the library, built from source first if it is missing or stale."""
    global _native
    if _native is None:
        import cffi

        from trackyard.sfu.native.build import build

        header = NATIVE / "rtpcount.h"
        build(
            library=LIBRARY,
            sources=[NATIVE / "rtpcount.c"],
            headers=[header],
            libs=("-lpthread",),
        )
        ffi = cffi.FFI()
        ffi.cdef("\n".join(ln for ln in header.read_text().splitlines() if not ln.startswith("#")))
        _native = (ffi, ffi.dlopen(str(LIBRARY)))
    return _native


def _address(family: int, raw: bytes) -> tuple[Any, ...]:
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET6:
        flow = int.from_bytes(raw[4:8], "big")
        (scope,) = struct.unpack_from("=I", raw, 24)
        return (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, flow, scope)
    return (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)


class NativeCounter:
    """``native/rtpcount.c``: all the sockets read on one C thread."""

    def __init__(
        self,
        slots: int = 8192,
        records: int = 1 << 24,
        others: int = 4096,
        pause_us: int = PAUSE_US,
        nice: int = NICE,
        idle: bool = IDLE,
    ) -> None:
        """``records``: held until taken (the pages are touched only as they fill);
        ``pause_us`` between the thread's rounds, its ``nice`` value and whether it runs as
        SCHED_IDLE (see rtpcount.c)."""
        self._ffi, self._lib = load()
        self._loop = asyncio.get_running_loop()
        self._shift = _clock_shift()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._c = self._lib.tyc_new(slots, records, others, self._wake, pause_us, nice, int(idle))
        if self._c == self._ffi.NULL:
            os.close(self._wake)
            raise RuntimeError("rtpcount: tyc_new failed")
        self._idle = idle
        self._slots = slots
        self._protocols: list[tuple[Any, object, int]] = []  # by slot: protocol, owner, family
        self._records = self._ffi.new("tyc_rec[]", 1 << 16)
        self._other = self._ffi.new("tyc_other *")
        self._loop.add_reader(self._wake, self._deliver)

    @property
    def _open(self) -> bool:
        return bool(self._c != self._ffi.NULL)

    def watch(self, protocol: Any, owner: object) -> int:
        if not self._open:
            return -1
        sock = _socket_of(protocol)
        slot = len(self._protocols)
        if slot == self._slots:
            raise RuntimeError(f"rtpcount: more than {self._slots} sockets")
        self._protocols.append((protocol, owner, sock.family))
        fd = sock.fileno()
        self._loop._remove_reader(fd)  # type: ignore[attr-defined]
        err = self._lib.tyc_watch(self._c, fd, slot)
        if err:
            raise OSError(-err, f"rtpcount: watching fd {fd}: {os.strerror(-err)}")
        return slot

    def media(self, slot: int, payload_types: Iterable[int]) -> None:
        if self._open:
            for pt in payload_types:
                self._lib.tyc_media(self._c, slot, pt)

    def take(self) -> list[Record]:
        out: list[Record] = []
        if not self._open:
            return out
        owners = [owner for _, owner, _ in self._protocols]
        shift = self._shift
        chunk = len(self._records)
        while True:
            n = self._lib.tyc_take(self._c, self._records, chunk)
            raw = self._ffi.buffer(self._records, n * _RECORD.size)
            out += [
                (owners[slot], at - shift, ts, seq, size)
                for at, ts, seq, size, slot in _RECORD.iter_unpack(raw)
            ]
            if n < chunk:
                return out

    def rtx(self, slot: int) -> int:
        return int(self._lib.tyc_rtx(self._c, slot)) if self._open else 0

    def counted(self, slot: int) -> int:
        return int(self._lib.tyc_counted(self._c, slot)) if self._open else 0

    def dropped(self) -> int:
        """Records or datagrams a full buffer refused (0 unless the buffers are too small)."""
        return int(self._lib.tyc_dropped(self._c)) if self._open else 0

    def scheduling(self) -> str:
        """How the thread runs: "idle" (SCHED_IDLE), "nice" (refused SCHED_IDLE, or not asked),
        "starting" (the thread has not got that far yet)."""
        got = int(self._lib.tyc_idle(self._c)) if self._open else -1
        return {1: "idle", -1: "nice"}.get(got, "starting" if self._idle else "nice")

    def _deliver(self) -> None:
        with contextlib.suppress(BlockingIOError):  # several wake-ups read at once
            os.eventfd_read(self._wake)
        other = self._other
        while self._lib.tyc_next_other(self._c, other):
            protocol, _, family = self._protocols[other.slot]
            data = bytes(self._ffi.buffer(other.data, other.len))
            addr = _address(family, bytes(self._ffi.buffer(other.addr, other.addrlen)))
            protocol.datagram_received(data, addr)

    def close(self) -> None:
        if not self._open:
            return
        self._loop.remove_reader(self._wake)
        self._lib.tyc_free(self._c)  # stops and joins the thread
        self._c = self._ffi.NULL
        os.close(self._wake)


def make_counter() -> Counter:
    """The native counter where it builds (a C compiler), else the reference."""
    try:
        return NativeCounter()
    except (ImportError, OSError, RuntimeError, subprocess.CalledProcessError):
        return PyCounter()
