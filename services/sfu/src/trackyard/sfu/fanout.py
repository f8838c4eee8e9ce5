"""Fan-out: one received RTP packet becomes every subscriber's SRTP packet in one step.

A ``Copy`` is one subscriber's target: its SRTP session and ICE socket (the route), its SSRC
and header-extension ids (the stream), and per packet the sequence number, timestamp and
payload type its DownTrack decided on. A ``Fanout`` collects the copies of one received
packet and sends them together: the header rewriting, SRTP protection and sending of all of
them happen in one call into C (``native/fanout.c``: one ``sendmmsg`` per socket run), not in
a chain of Python calls and one ``sendto`` per copy.

``PyFanout``/``PyCopy`` are the pure-Python reference (``rtp_header`` + pylibsrtp + ``sendto``)
with the same surface; tests check that both write the same bytes. ``make_fanout()`` picks
the native one when its library was built (``python -m trackyard.sfu.native.build``).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from pylibsrtp import Session

from trackyard.sfu.native.build import LIBRARY

__all__ = [
    "Copy",
    "CopyFields",
    "Fanout",
    "NativeFanout",
    "PyCopy",
    "PyFanout",
    "Route",
    "make_fanout",
    "native_available",
]

log = structlog.get_logger(__name__)

SLOT = 2048  # bytes per packet in the scratch buffer: MTU + header + SRTP trailer fit
FIRST_CAPACITY = 256  # copies per received packet before the array grows

_CDEF = """
typedef int (*ty_protect_fn)(void *ctx, void *rtp, int *len);
typedef struct ty_packet {
    const uint8_t *payload; uint32_t payload_len; uint32_t abs_time; int32_t level;
    uint8_t marker; uint8_t video;
} ty_packet;
typedef struct ty_copy {
    void *srtp; int32_t fd; uint32_t addrlen; uint8_t addr[128];
    uint32_t ssrc; uint32_t ts; uint16_t seq; uint8_t pt; uint8_t mid_len; uint8_t mid[17];
    uint8_t abs_id; uint8_t level_id; const uint8_t *payload; uint32_t payload_len;
} ty_copy;
int ty_build(const ty_copy *c, const ty_packet *p, uint8_t *out, uint32_t out_cap,
             ty_protect_fn protect);
int ty_fanout(const ty_packet *p, ty_copy *const *copies, int n, uint8_t *scratch,
              uint32_t slot, ty_protect_fn protect);
"""


class Route(Protocol):
    """Where a copy goes: what ``rtphooks.udp_route`` finds on a connected DTLS transport."""

    @property
    def srtp(self) -> Session | None:
        """The transport's outbound SRTP session (None: clear RTP, tests)."""
        ...

    @property
    def fd(self) -> int:
        """The selected ICE pair's UDP socket."""
        ...

    @property
    def family(self) -> int: ...

    @property
    def addr(self) -> tuple[str, int]:
        """The pair's remote address."""
        ...

    @property
    def sendto(self) -> Callable[[bytes, tuple[str, int]], None]:
        """Send on that socket the way its owner does (the asyncio transport)."""
        ...


class CopyFields(Protocol):
    """What a DownTrack writes per packet (a C struct on the native path)."""

    ssrc: int
    seq: int
    ts: int
    pt: int


class Copy(Protocol):
    """One subscriber's copy target: ``fields`` per packet, the rest when they change."""

    @property
    def fields(self) -> CopyFields: ...

    def set_route(self, route: Route | None) -> None: ...
    def set_extensions(self, mid: bytes, abs_id: int, level_id: int) -> None: ...
    def set_payload(self, payload: bytes | None) -> None: ...


class Fanout(Protocol):
    def new_copy(self) -> Copy: ...
    def add(self, copy: Copy) -> None: ...
    def send(self, payload: bytes, marker: int, video: bool, abs_time: int, level: int) -> int: ...
    def build(
        self, copy: Copy, payload: bytes, marker: int, video: bool, abs_time: int, level: int
    ) -> bytes: ...


# --- the pure-Python reference ----------------------------------------------------------------


class PyCopy:
    __slots__ = (
        "_route",
        "abs_id",
        "addr",
        "fields",
        "level_id",
        "mid",
        "payload",
        "pt",
        "seq",
        "srtp",
        "ssrc",
        "ts",
    )

    def __init__(self) -> None:
        self.fields = self
        self.srtp: Session | None = None
        self._route: Route | None = None
        self.addr: tuple[str, int] | None = None
        self.ssrc = self.ts = self.seq = self.pt = 0
        self.mid = b""
        self.abs_id = self.level_id = 0
        self.payload: bytes | None = None

    def set_route(self, route: Route | None) -> None:
        self.srtp = route.srtp if route else None
        self._route = route
        self.addr = route.addr if route else None

    def set_extensions(self, mid: bytes, abs_id: int, level_id: int) -> None:
        self.mid, self.abs_id, self.level_id = mid, abs_id, level_id

    def set_payload(self, payload: bytes | None) -> None:
        self.payload = payload


class PyFanout:
    """Reference: the same bytes as ``native/fanout.c``, one Python ``sendto`` per copy."""

    def __init__(self) -> None:
        self._batch: list[PyCopy] = []

    def new_copy(self) -> PyCopy:
        return PyCopy()

    def add(self, copy: Copy) -> None:
        assert isinstance(copy, PyCopy)
        self._batch.append(copy)

    def build(
        self, copy: Copy, payload: bytes, marker: int, video: bool, abs_time: int, level: int
    ) -> bytes:
        assert isinstance(copy, PyCopy)
        body = bytearray(copy.mid)
        if video:
            if copy.abs_id:
                body += bytes(
                    (copy.abs_id, abs_time >> 16 & 0xFF, abs_time >> 8 & 0xFF, abs_time & 0xFF)
                )
        elif copy.level_id and level >= 0:
            body += bytes((copy.level_id, level & 0xFF))
        ext = b""
        if body:
            words = (len(body) + 3) // 4
            ext = b"\xbe\xde" + words.to_bytes(2, "big") + bytes(body)
            ext += b"\x00" * (words * 4 - len(body))
        head = bytes((0x90 if ext else 0x80, (0x80 if marker else 0) | (copy.pt & 0x7F)))
        data = (
            head
            + (copy.seq & 0xFFFF).to_bytes(2, "big")
            + (copy.ts & 0xFFFFFFFF).to_bytes(4, "big")
            + (copy.ssrc & 0xFFFFFFFF).to_bytes(4, "big")
            + ext
            + (copy.payload if copy.payload is not None else payload)
        )
        return copy.srtp.protect(data) if copy.srtp is not None else data

    def send(self, payload: bytes, marker: int, video: bool, abs_time: int, level: int) -> int:
        batch, self._batch = self._batch, []
        for copy in batch:
            data = self.build(copy, payload, marker, video, abs_time, level)
            route = copy._route
            if route is not None:
                with contextlib.suppress(OSError):  # a full socket loses it, as the wire would
                    route.sendto(data, route.addr)
        return len(batch)


# --- the native path --------------------------------------------------------------------------

_native: tuple[Any, Any, Any] | None = None  # (ffi, lib, srtp_protect pointer)
_native_error = ""


def _load() -> tuple[Any, Any, Any] | None:
    global _native, _native_error
    if _native is not None or _native_error:
        return _native
    try:
        import cffi
        from pylibsrtp import _binding  # the libsrtp aiortc's sessions live in

        ffi = cffi.FFI()
        ffi.cdef(_CDEF)
        lib = ffi.dlopen(str(LIBRARY))
        protect = ffi.cast(
            "ty_protect_fn",
            _binding.ffi.cast("uintptr_t", _binding.ffi.addressof(_binding.lib, "srtp_protect")),
        )
        _native = (ffi, lib, protect)
    except Exception as exc:  # not built, or no cffi: the reference path serves
        _native_error = f"{type(exc).__name__}: {exc}"
    return _native


def native_available() -> bool:
    return _load() is not None


def _srtp_handle(session: Session | None) -> int:
    """The ``srtp_t`` inside a pylibsrtp Session (pinned pylibsrtp 1.0: ``_srtp[0]``)."""
    if session is None:
        return 0
    from pylibsrtp import _binding

    return int(_binding.ffi.cast("uintptr_t", session._srtp[0]))


class NativeCopy:
    __slots__ = ("_c", "_keep", "_route", "fields")

    def __init__(self, ffi: Any) -> None:
        self._c = ffi.new("ty_copy *")
        self._c.fd = -1
        self.fields: Any = self._c
        self._keep: Any = None  # the payload buffer _c.payload points into
        self._route: Route | None = None  # keeps the SRTP session (and its srtp_t) alive

    def set_route(self, route: Route | None) -> None:
        ffi = _load()[0]  # type: ignore[index]
        c = self._c
        self._route = route
        if route is None:
            c.srtp, c.fd, c.addrlen = ffi.NULL, -1, 0
            return
        c.srtp = ffi.cast("void *", _srtp_handle(route.srtp))
        c.fd = route.fd
        raw = _sockaddr(route.family, route.addr)
        c.addrlen = len(raw)
        ffi.memmove(c.addr, raw, len(raw))

    def set_extensions(self, mid: bytes, abs_id: int, level_id: int) -> None:
        ffi = _load()[0]  # type: ignore[index]
        c = self._c
        c.mid_len = len(mid)
        ffi.memmove(c.mid, mid, len(mid))
        c.abs_id, c.level_id = abs_id, level_id

    def set_payload(self, payload: bytes | None) -> None:
        ffi = _load()[0]  # type: ignore[index]
        if payload is None:
            self._c.payload, self._keep = ffi.NULL, None
        else:
            self._keep = ffi.from_buffer(payload)
            self._c.payload, self._c.payload_len = self._keep, len(payload)


class NativeFanout:
    def __init__(self) -> None:
        loaded = _load()
        if loaded is None:
            raise RuntimeError(f"native fan-out unavailable: {_native_error}")
        self._ffi, self._lib, self._protect = loaded
        self._copies = self._ffi.new("ty_copy *[]", FIRST_CAPACITY)
        self._capacity = FIRST_CAPACITY
        self._n = 0
        self._packet = self._ffi.new("ty_packet *")
        self._scratch = self._ffi.new("uint8_t[]", 64 * SLOT)

    def new_copy(self) -> NativeCopy:
        return NativeCopy(self._ffi)

    def add(self, copy: Copy) -> None:
        if self._n == self._capacity:  # more subscribers than ever: twice the room
            grown = self._ffi.new("ty_copy *[]", 2 * self._capacity)
            self._ffi.memmove(grown, self._copies, self._ffi.sizeof("ty_copy *") * self._n)
            self._copies, self._capacity = grown, 2 * self._capacity
        self._copies[self._n] = copy._c  # type: ignore[attr-defined]
        self._n += 1

    def _fill(self, payload: bytes, marker: int, video: bool, abs_time: int, level: int) -> Any:
        pk = self._packet
        buf = self._ffi.from_buffer(payload)
        pk.payload, pk.payload_len = buf, len(payload)
        pk.marker, pk.video, pk.abs_time, pk.level = marker, video, abs_time, level
        return buf

    def send(self, payload: bytes, marker: int, video: bool, abs_time: int, level: int) -> int:
        n, self._n = self._n, 0
        if not n:
            return 0
        buf = self._fill(payload, marker, video, abs_time, level)
        sent: int = self._lib.ty_fanout(
            self._packet, self._copies, n, self._scratch, SLOT, self._protect
        )
        del buf
        return sent

    def build(
        self, copy: Copy, payload: bytes, marker: int, video: bool, abs_time: int, level: int
    ) -> bytes:
        buf = self._fill(payload, marker, video, abs_time, level)
        out = self._ffi.new("uint8_t[]", SLOT)
        n = self._lib.ty_build(copy._c, self._packet, out, SLOT, self._protect)  # type: ignore[attr-defined]
        del buf
        if n < 0:
            raise ValueError(f"ty_build failed ({n})")
        return bytes(self._ffi.buffer(out, n))


def _sockaddr(family: int, addr: tuple[str, int]) -> bytes:
    if family == socket.AF_INET6:
        host = socket.inet_pton(socket.AF_INET6, addr[0])
        return (
            socket.AF_INET6.to_bytes(2, "little")
            + addr[1].to_bytes(2, "big")
            + b"\x00" * 4
            + host
            + b"\x00" * 4
        )
    return (
        socket.AF_INET.to_bytes(2, "little")
        + addr[1].to_bytes(2, "big")
        + socket.inet_aton(addr[0])
        + b"\x00" * 8
    )


def make_fanout(*, native: bool | None = None) -> Fanout:
    """The native fan-out when built (or required: ``native=True``), else the reference."""
    if native is False or (native is None and not native_available()):
        return PyFanout()
    return NativeFanout()


def describe() -> str:
    """For the start-up log: which path forwards packets, and why."""
    if native_available():
        return f"native ({LIBRARY.name})"
    return f"python reference ({_native_error or 'not loaded'})"
