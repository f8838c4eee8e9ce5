"""Fan-out: one received RTP packet becomes every subscriber's SRTP packet in one step.

A ``Copy`` is one subscriber's target: its SRTP session and ICE socket (the route), its SSRC
and header-extension ids (the stream), and per packet the sequence number, timestamp and
payload type its DownTrack decided on. A ``Fanout`` collects the copies of one received
packet and sends them together: the header rewriting, SRTP protection and sending of all of
them happen in one call into C (``native/fanout.c``: one ``sendmmsg`` per socket run), not in
a chain of Python calls and one ``sendto`` per copy.

The lane: on a source's own fan-out (``make_fanout(lane=True)``), a copy whose DownTrack
forwards one stream steadily is handed to C with its munger state (``Copy.enter_lane``); C then
decides, rewrites (sequence number, timestamp, payload type, VP8 picture ids) and records its
packets itself, by the same rules as ``RtpMunger``/``Vp8Munger``, and hands back to Python the
packets only Python can decide (``Fanout.forward`` returns their owners). The fan-out keeps the
source payloads in a ring so the lane's NACK history holds numbers, not bytes.

``PyFanout``/``PyCopy`` are the pure-Python reference (``rtp_header`` + pylibsrtp + ``sendto``)
with the same surface; tests check that both write the same bytes. ``make_fanout()`` picks
the native one when its library was built (``python -m trackyard.sfu.native.build``).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from pylibsrtp import Session

from trackyard.sfu.native.build import LIBRARY

if TYPE_CHECKING:
    from trackyard.sfu.rtpstats import TrafficCounters
    from trackyard.sfu.trackcontract import ForwardedPacket, PacketSink

__all__ = [
    "AHEAD",
    "REST",
    "WHOLE",
    "Copy",
    "CopyFields",
    "Fanout",
    "LaneFilter",
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
_CREDITS = 4  # TY_CREDITS: distinct counters objects one fan-out's lane copies credit

# the parts of a packet's fan-out (``Fanout.forward``)
WHOLE = 0
AHEAD = 1  # the copies added and the lane's copies ahead (relays to other nodes)
REST = 2  # the lane's other copies

_CDEF = """
typedef int (*ty_protect_fn)(void *ctx, void *rtp, int *len);
typedef struct ty_packet {
    const uint8_t *payload; uint32_t payload_len; uint32_t abs_time; int32_t level;
    uint8_t marker; uint8_t video;
    uint8_t pt; uint8_t pid_wide; uint32_t ssrc; uint32_t ts; uint16_t seq; int16_t layer;
    int32_t pid; int32_t tl0; int32_t keyidx; uint16_t pid_at, tl0_at, keyidx_at;
    uint32_t n; double arrival; uint32_t lane_packets[4]; uint64_t lane_bytes[4];
} ty_packet;
typedef struct ty_hist {
    double at; uint32_t ts; uint32_t src; uint16_t seq; uint8_t ptm; uint8_t pid_wide;
    int32_t pid; int16_t tl0; int16_t keyidx; uint16_t pid_at, tl0_at, keyidx_at;
} ty_hist;
typedef struct ty_copy {
    void *srtp; int32_t fd; uint32_t addrlen; uint8_t addr[128];
    uint32_t ssrc; uint32_t ts; uint16_t seq; uint8_t pt; uint8_t mid_len; uint8_t mid[17];
    uint8_t abs_id; uint8_t level_id; const uint8_t *payload; uint32_t payload_len;
    uint32_t lane_from; uint32_t src_ssrc; int16_t layer; uint8_t in_pt, out_pt; uint8_t credit;
    int64_t hi, seg_start, seq_off, late_floor, last_out_ext;
    uint32_t ts_offset, last_out_ts;
    int32_t pid_off, tl0_off, keyidx_off, last_pid, last_tl0, last_keyidx;
    double last_sent; uint64_t packets, bytes; ty_hist *hist; uint32_t hist_mask;
} ty_copy;
int ty_build(const ty_copy *c, const ty_packet *p, uint8_t *out, uint32_t out_cap,
             ty_protect_fn protect);
int ty_fanout(ty_packet *p, ty_copy *const *copies, int n, ty_copy *const *lane, int n_lane,
              int32_t *deferred, int32_t *n_deferred, uint8_t *scratch, uint32_t slot,
              ty_protect_fn protect);
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


MungerLane = tuple[int, int, int, int, int, int, int]
"""RtpMunger's state a lane copy starts from: hi, seg_start, seq_off, late_floor,
last_out_ext, ts_offset, last_out_ts (see ``RtpMunger.lane_state``)."""
MungerBack = tuple[int, int, int, int]
"""What the lane changed: hi, seq_off, last_out_ext, last_out_ts."""
Vp8Lane = tuple[int, int, int, int, int, int]
"""Vp8Munger's offsets and newest values: pid_off, tl0_off, keyidx_off, last_pid, last_tl0,
last_keyidx."""
Vp8Back = tuple[int, int, int]
"""What the lane changed: last_pid, last_tl0, last_keyidx."""
SentPacket = tuple[float, bytes, int, int]
"""A packet a copy sent, for a retransmission: (arrival of its source packet, payload as sent,
timestamp, payload type | marker << 7)."""


class Copy(Protocol):
    """One subscriber's copy target: ``fields`` per packet, the rest when they change.

    On a fan-out with a lane (``Fanout.lane``) a copy forwarding one stream steadily is handed
    to C (``enter_lane``): from the next packet on C decides, rewrites and records its packets
    by the munger's rules, until Python takes it back (``lane_state``) to decide anything else.
    """

    @property
    def fields(self) -> CopyFields: ...

    def set_route(self, route: Route | None) -> None: ...
    def set_extensions(self, mid: bytes, abs_id: int, level_id: int) -> None: ...
    def set_payload(self, payload: bytes | None) -> None: ...
    def set_history(self, size: int, previous: Copy | None) -> None: ...
    def enter_lane(
        self,
        stream: tuple[int, int, int, int],
        munger: MungerLane,
        vp8: Vp8Lane,
        last_sent: float,
    ) -> None: ...
    def lane_state(self) -> tuple[MungerBack, Vp8Back, float]:
        """What the lane changed so far (the munger state Python continues from)."""
        ...

    def sent(self) -> tuple[int, int]:
        """Packets and payload bytes the lane sent for this copy."""
        ...

    def sent_packet(self, seq: int) -> SentPacket | None:
        """What the lane sent as ``seq`` (still in the history), else None."""
        ...


class Fanout(Protocol):
    @property
    def lane(self) -> bool:
        """Copies may join the lane (the native fan-out of a source that numbers its packets)."""
        ...

    @property
    def lane_version(self) -> int:
        """Changes whenever a copy joins or leaves the lane."""
        ...

    def lane_owners(self) -> frozenset[object]: ...
    def next_number(self) -> int:
        """The number of the next packet handed out (``ForwardedPacket.n``): one count per
        fan-out, which several streams may share (a relayed track's layers)."""
        ...

    def lane_add(
        self,
        copy: Copy,
        owner: PacketSink,
        start: int,
        counters: TrafficCounters | None,
        *,
        ahead: bool = False,
    ) -> bool:
        """C decides ``copy``'s packets from packet number ``start`` on and credits them to
        ``counters``; False: not taken (the lane serves few distinct counters objects).
        ``ahead``: sent before the copies not ahead (it feeds another node's fan-out)."""
        ...

    def lane_remove(self, copy: Copy) -> None: ...
    def new_copy(self) -> Copy: ...
    def add(self, copy: Copy) -> None: ...
    def send(self, payload: bytes, marker: int, video: bool, abs_time: int, level: int) -> int: ...
    def forward(
        self, packet: ForwardedPacket, video: bool, level: int, part: int = WHOLE
    ) -> list[PacketSink]:
        """Send the copies added for ``packet`` and the lane's; returns the owners of lane
        copies that must decide this packet in Python (their ``forward`` takes the copy back).
        ``part``: ``WHOLE``; or ``AHEAD`` (the copies added and the lane's copies ahead) now
        and ``REST`` (the lane's other copies) later, the packets in the same order."""
        ...

    def splits(self) -> bool:
        """The lane has copies ahead and copies not ahead (``forward`` may go in parts)."""
        ...

    def watch_lane(self, before_change: Callable[[], None] | None) -> None:
        """Call ``before_change()`` before a copy joins or leaves the lane (a source holding
        packets for ``REST`` sends them first)."""
        ...

    def build(
        self, copy: Copy, payload: bytes, marker: int, video: bool, abs_time: int, level: int
    ) -> bytes: ...


class LaneFilter:
    """Which of a source's sinks a packet must still be handed to: those whose copy is not in
    the fan-out's lane (recomputed only when the sinks or the lane change)."""

    __slots__ = ("_fanout", "_python", "_seen", "_sinks")

    def __init__(self, fanout: Fanout) -> None:
        self._fanout = fanout
        self._sinks: tuple[PacketSink, ...] = ()
        self._python: tuple[PacketSink, ...] = ()
        self._seen = -1

    def python_sinks(self, sinks: tuple[PacketSink, ...]) -> tuple[PacketSink, ...]:
        version = self._fanout.lane_version
        if sinks is not self._sinks or version != self._seen:
            laned = self._fanout.lane_owners()
            self._sinks, self._seen = sinks, version
            self._python = tuple(s for s in sinks if s not in laned)
        return self._python


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

    # the reference path has no lane: its DownTracks decide every packet in Python

    def set_history(self, size: int, previous: Copy | None) -> None:
        return None

    def enter_lane(
        self,
        stream: tuple[int, int, int, int],
        munger: MungerLane,
        vp8: Vp8Lane,
        last_sent: float,
    ) -> None:
        raise RuntimeError("the reference fan-out has no lane")

    def lane_state(self) -> tuple[MungerBack, Vp8Back, float]:
        raise RuntimeError("the reference fan-out has no lane")

    def sent(self) -> tuple[int, int]:
        return 0, 0

    def sent_packet(self, seq: int) -> SentPacket | None:
        return None


class PyFanout:
    """Reference: the same bytes as ``native/fanout.c``, one Python ``sendto`` per copy."""

    lane = False
    lane_version = 0

    def __init__(self) -> None:
        self._batch: list[PyCopy] = []

    def lane_owners(self) -> frozenset[object]:
        return frozenset()

    def next_number(self) -> int:
        return 0

    def lane_add(
        self,
        copy: Copy,
        owner: PacketSink,
        start: int,
        counters: TrafficCounters | None,
        *,
        ahead: bool = False,
    ) -> bool:
        return False

    def lane_remove(self, copy: Copy) -> None:
        return None

    def forward(
        self, packet: ForwardedPacket, video: bool, level: int, part: int = WHOLE
    ) -> list[PacketSink]:
        rtp = packet.rtp
        self.send(rtp.payload, rtp.marker, video, packet.abs_send_time, level)
        return []

    def splits(self) -> bool:
        return False  # no lane

    def watch_lane(self, before_change: Callable[[], None] | None) -> None:
        return None

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
    __slots__ = ("_c", "_fanout", "_hist", "_keep", "_route", "fields", "lane_index")

    def __init__(self, fanout: NativeFanout) -> None:
        ffi = fanout._ffi
        self._fanout = fanout
        self._c = ffi.new("ty_copy *")
        self._c.fd = -1
        self.fields: Any = self._c
        self._keep: Any = None  # the payload buffer _c.payload points into
        self._route: Route | None = None  # keeps the SRTP session (and its srtp_t) alive
        self._hist: Any = None  # the ty_hist array _c.hist points into
        self.lane_index = -1  # position in the fan-out's lane, -1: not in it

    def set_route(self, route: Route | None) -> None:
        ffi = self._fanout._ffi
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
        c = self._c
        c.mid_len = len(mid)
        self._fanout._ffi.memmove(c.mid, mid, len(mid))
        c.abs_id, c.level_id = abs_id, level_id

    def set_payload(self, payload: bytes | None) -> None:
        ffi = self._fanout._ffi
        if payload is None:
            self._c.payload, self._keep = ffi.NULL, None
        else:
            self._keep = ffi.from_buffer(payload)
            self._c.payload, self._c.payload_len = self._keep, len(payload)

    def set_history(self, size: int, previous: Copy | None) -> None:
        """Record the lane's packets in a ring of ``size`` (a power of two), the previous
        copy's when it is of the same source (a new route keeps the history)."""
        if (
            isinstance(previous, NativeCopy)
            and previous._fanout is self._fanout
            and previous._hist is not None
            and previous._c.hist_mask == size - 1
        ):
            self._hist = previous._hist
        else:
            self._hist = self._fanout._ffi.new("ty_hist[]", size)
        self._c.hist = self._hist
        self._c.hist_mask = size - 1

    def enter_lane(
        self,
        stream: tuple[int, int, int, int],
        munger: MungerLane,
        vp8: Vp8Lane,
        last_sent: float,
    ) -> None:
        """``stream``: (source SSRC, layer, source payload type, payload type sent)."""
        c = self._c
        c.src_ssrc, c.layer, c.in_pt, c.out_pt = stream
        (c.hi, c.seg_start, c.seq_off, c.late_floor, c.last_out_ext, c.ts_offset) = munger[:6]
        c.last_out_ts = munger[6]
        c.pid_off, c.tl0_off, c.keyidx_off, c.last_pid, c.last_tl0, c.last_keyidx = vp8
        c.last_sent = last_sent

    def lane_state(self) -> tuple[MungerBack, Vp8Back, float]:
        c = self._c
        return (
            (c.hi, c.seq_off, c.last_out_ext, c.last_out_ts),
            (c.last_pid, c.last_tl0, c.last_keyidx),
            c.last_sent,
        )

    def sent(self) -> tuple[int, int]:
        return self._c.packets, self._c.bytes

    def sent_packet(self, seq: int) -> SentPacket | None:
        if self._hist is None:
            return None
        h = self._hist[seq & self._c.hist_mask]
        if h.at == 0.0 or h.seq != seq:
            return None
        payload = self._fanout.payload_of(h.src)
        if payload is None:
            return None
        if h.pid >= 0 or h.tl0 >= 0 or h.keyidx >= 0:  # as the lane rewrote it (VP8)
            buf = bytearray(payload)
            if h.pid >= 0:
                if h.pid_wide:
                    buf[h.pid_at] = 0x80 | (h.pid >> 8)
                    buf[h.pid_at + 1] = h.pid & 0xFF
                else:
                    buf[h.pid_at] = h.pid
            if h.tl0 >= 0:
                buf[h.tl0_at] = h.tl0
            if h.keyidx >= 0:
                buf[h.keyidx_at] = (buf[h.keyidx_at] & 0xE0) | h.keyidx
            payload = bytes(buf)
        return h.at, payload, h.ts, h.ptm


class NativeFanout:
    def __init__(self, *, lane: bool = False, ring: int = 2048) -> None:
        loaded = _load()
        if loaded is None:
            raise RuntimeError(f"native fan-out unavailable: {_native_error}")
        self._ffi, self._lib, self._protect = loaded
        self._copies = self._ffi.new("ty_copy *[]", FIRST_CAPACITY)
        self._capacity = FIRST_CAPACITY
        self._n = 0
        self._packet = self._ffi.new("ty_packet *")
        self._scratch = self._ffi.new("uint8_t[]", 64 * SLOT)
        # the lane: copies C decides for, their owners (same order), deferred indices
        self.lane = lane
        self.lane_version = 0
        self._lane = self._ffi.new("ty_copy *[]", FIRST_CAPACITY)
        self._lane_cap = FIRST_CAPACITY
        self._lane_copies: list[NativeCopy] = []
        self._owners: list[PacketSink] = []
        self._n_ahead = 0  # the lane's first copies, added with ahead
        self._before_change: Callable[[], None] | None = None  # watch_lane
        self._deferred = self._ffi.new("int32_t[]", FIRST_CAPACITY)
        self._n_deferred = self._ffi.new("int32_t *")
        self._number = 0  # packets handed out (next_number)
        self._credits: list[TrafficCounters] = []  # the counters lane copies credit, by slot
        # the source payloads the lane's histories point at (a lane copy keeps no bytes)
        self._ring_mask = ring - 1
        self._ring: list[bytes | None] = [None] * ring if lane else []
        self._ring_n = [-1] * ring if lane else []

    def new_copy(self) -> NativeCopy:
        return NativeCopy(self)

    def add(self, copy: Copy) -> None:
        if self._n == self._capacity:  # more subscribers than ever: twice the room
            self._copies, self._capacity = self._grow(self._copies, self._capacity, self._n)
        self._copies[self._n] = copy._c  # type: ignore[attr-defined]
        self._n += 1

    def _grow(self, array: Any, capacity: int, used: int) -> tuple[Any, int]:
        grown = self._ffi.new("ty_copy *[]", 2 * capacity)
        self._ffi.memmove(grown, array, self._ffi.sizeof("ty_copy *") * used)
        return grown, 2 * capacity

    # --- the lane ------------------------------------------------------------------------

    def lane_owners(self) -> frozenset[object]:
        return frozenset(self._owners)

    def next_number(self) -> int:
        self._number = (self._number + 1) & 0xFFFFFFFF
        return self._number

    def lane_add(
        self,
        copy: Copy,
        owner: PacketSink,
        start: int,
        counters: TrafficCounters | None,
        *,
        ahead: bool = False,
    ) -> bool:
        assert isinstance(copy, NativeCopy) and self.lane and copy.lane_index < 0
        if self._before_change is not None:
            self._before_change()
        credit = _CREDITS  # none
        if counters is not None:
            credits = self._credits
            credit = next((i for i, c in enumerate(credits) if c is counters), len(credits))
            if credit == _CREDITS:
                return False
            if credit == len(credits):
                credits.append(counters)
        copy._c.credit = credit
        n = len(self._lane_copies)
        if n == self._lane_cap:
            self._lane, self._lane_cap = self._grow(self._lane, self._lane_cap, n)
            self._deferred = self._ffi.new("int32_t[]", self._lane_cap)
        copy._c.lane_from = start & 0xFFFFFFFF
        self._lane_copies.append(copy)
        self._owners.append(owner)
        if ahead:  # the prefix of copies ahead grows: its next slot's copy goes to the end
            slot, self._n_ahead = self._n_ahead, self._n_ahead + 1
            if slot != n:
                self._move(slot, n)
            self._owners[slot] = owner
            n = slot
        self._place(copy, n)
        self.lane_version += 1
        return True

    def _place(self, copy: NativeCopy, i: int) -> None:
        self._lane[i] = copy._c
        self._lane_copies[i] = copy
        copy.lane_index = i

    def _move(self, src: int, dst: int) -> None:
        """Lane slot ``src``'s copy and owner to slot ``dst``."""
        self._place(self._lane_copies[src], dst)
        self._owners[dst] = self._owners[src]

    def lane_remove(self, copy: Copy) -> None:
        assert isinstance(copy, NativeCopy)
        if copy.lane_index < 0:
            return
        if self._before_change is not None:
            self._before_change()
        i = copy.lane_index
        if i < 0:  # left meanwhile
            return
        last = len(self._lane_copies) - 1
        if i < self._n_ahead:  # the last ahead fills it; the last of all fills that
            self._n_ahead -= 1
            if i != self._n_ahead:
                self._move(self._n_ahead, i)
            i = self._n_ahead
        if i != last:
            self._move(last, i)
        self._lane_copies.pop()
        self._owners.pop()
        copy.lane_index = -1
        self.lane_version += 1

    def payload_of(self, n: int) -> bytes | None:
        i = n & self._ring_mask
        return self._ring[i] if self._ring and self._ring_n[i] == n else None

    # --- sending -------------------------------------------------------------------------

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
            self._packet,
            self._copies,
            n,
            self._lane,
            0,
            self._deferred,
            self._n_deferred,
            self._scratch,
            SLOT,
            self._protect,
        )
        del buf
        return sent

    def splits(self) -> bool:
        return 0 < self._n_ahead < len(self._lane_copies)

    def watch_lane(self, before_change: Callable[[], None] | None) -> None:
        self._before_change = before_change

    def forward(
        self, packet: ForwardedPacket, video: bool, level: int, part: int = WHOLE
    ) -> list[PacketSink]:
        count = packet.n
        rtp = packet.rtp
        payload = rtp.payload
        first, lane_n = 0, len(self._lane_copies)
        if part == REST:
            first = self._n_ahead
            lane = self._lane + first
            lane_n -= first
        else:
            if part == AHEAD:
                lane_n = self._n_ahead
            lane = self._lane
            if self._ring:
                i = count & self._ring_mask
                self._ring[i] = payload
                self._ring_n[i] = count
        n, self._n = self._n, 0
        pk = self._packet
        if not n and not lane_n:
            return []
        buf = self._fill(payload, rtp.marker, video, packet.abs_send_time, level)
        pk.pt, pk.ssrc, pk.ts = rtp.payload_type, rtp.ssrc, rtp.timestamp
        pk.seq = rtp.sequence_number
        pk.layer, pk.n, pk.arrival = packet.layer, count, packet.arrival
        d = packet.vp8
        if d is None:
            pk.pid = pk.tl0 = pk.keyidx = -1
        else:
            pk.pid, pk.pid_at, pk.pid_wide = d.picture_id, d.picture_id_offset, d.picture_id_wide
            pk.tl0, pk.tl0_at = d.tl0picidx, d.tl0picidx_offset
            pk.keyidx, pk.keyidx_at = d.keyidx, d.keyidx_offset
        self._lib.ty_fanout(
            pk,
            self._copies,
            n,
            lane,
            lane_n,
            self._deferred,
            self._n_deferred,
            self._scratch,
            SLOT,
            self._protect,
        )
        del buf
        for i, counters in enumerate(self._credits):  # what the lane sent, where it counts
            sent = pk.lane_packets[i]
            if sent:
                counters.packets_out += sent
                counters.bytes_out += pk.lane_bytes[i]
        deferred = self._n_deferred[0]
        if not deferred:
            return []
        owners = self._owners
        return [owners[first + self._deferred[i]] for i in range(deferred)]

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


def make_fanout(*, native: bool | None = None, lane: bool = False, ring: int = 2048) -> Fanout:
    """The native fan-out when built (or required: ``native=True``), else the reference.
    ``lane``: copies may join the C lane (a source that hands ``forward`` every packet it
    fans out, so the lane's histories can point at them; ``ring`` of them are kept)."""
    if native is False or (native is None and not native_available()):
        return PyFanout()
    return NativeFanout(lane=lane, ring=ring)


def describe() -> str:
    """For the start-up log: which path forwards packets, and why."""
    if native_available():
        return f"native ({LIBRARY.name})"
    return f"python reference ({_native_error or 'not loaded'})"
