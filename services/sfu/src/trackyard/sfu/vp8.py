"""VP8 RTP payload (RFC 7741): descriptor parsing, keyframe detection, picture id rewriting.

Pure wire-format code: no I/O, no aiortc. The SFU never decodes VP8; it only reads the payload
descriptor (to find where a keyframe starts and to read its resolution) and rewrites the picture
id / TL0PICIDX / KEYIDX fields so that a subscriber sees one continuous VP8 stream across
simulcast layer switches (libwebrtc's frame reference finder drops frames whose picture id
jumps backwards).

Descriptor layout::

     0 1 2 3 4 5 6 7
    +-+-+-+-+-+-+-+-+
    |X|R|N|S|R| PID |   X: extension present, S: start of partition, PID: partition index
    +-+-+-+-+-+-+-+-+
    |I|L|T|K| RSV   |   (if X) I: picture id, L: TL0PICIDX, T: TID, K: KEYIDX
    +-+-+-+-+-+-+-+-+
    |M| PictureID   |   (if I) M=1: 15-bit picture id (one more byte follows)
    +-+-+-+-+-+-+-+-+
    |   TL0PICIDX   |   (if L)
    +-+-+-+-+-+-+-+-+
    |TID|Y| KEYIDX  |   (if T or K)
    +-+-+-+-+-+-+-+-+

When S=1 and PID=0 the VP8 payload header follows; its bit 0 (P) is 0 for a keyframe, and a
keyframe carries the start code 9d 01 2a followed by 14-bit width and height (little endian).
"""

from __future__ import annotations

__all__ = ["Vp8Descriptor", "Vp8Munger", "parse_vp8"]


class Vp8Descriptor:
    """What the SFU needs from one VP8 RTP payload. Offsets index into the payload bytes."""

    __slots__ = (
        "begins_frame",
        "height",
        "keyframe",
        "keyidx",
        "keyidx_offset",
        "picture_id",
        "picture_id_offset",
        "picture_id_wide",
        "size",
        "tid",
        "tl0picidx",
        "tl0picidx_offset",
        "width",
    )

    def __init__(self) -> None:
        self.begins_frame = False  # S=1 and PID=0: first packet of a frame
        self.keyframe = False  # begins_frame and the frame is a keyframe
        self.picture_id = -1  # -1: absent
        self.picture_id_offset = 0
        self.picture_id_wide = False  # 15-bit (M=1) rather than 7-bit
        self.tl0picidx = -1
        self.tl0picidx_offset = 0
        self.tid = -1
        self.keyidx = -1
        self.keyidx_offset = 0
        self.size = 1  # descriptor length in bytes
        self.width = 0  # keyframes only
        self.height = 0


def parse_vp8(payload: bytes) -> Vp8Descriptor | None:
    """Parse the payload descriptor (and keyframe header). ``None`` if malformed."""
    n = len(payload)
    if n < 1:
        return None
    d = Vp8Descriptor()
    b0 = payload[0]
    pos = 1
    if b0 & 0x80:
        if n < 2:
            return None
        x = payload[1]
        pos = 2
        if x & 0x80:  # I
            if pos >= n:
                return None
            if payload[pos] & 0x80:  # M: 15-bit picture id
                if pos + 1 >= n:
                    return None
                d.picture_id = ((payload[pos] & 0x7F) << 8) | payload[pos + 1]
                d.picture_id_wide = True
                d.picture_id_offset = pos
                pos += 2
            else:
                d.picture_id = payload[pos]
                d.picture_id_offset = pos
                pos += 1
        if x & 0x40:  # L
            if pos >= n:
                return None
            d.tl0picidx = payload[pos]
            d.tl0picidx_offset = pos
            pos += 1
        if x & 0x30:  # T or K
            if pos >= n:
                return None
            tk = payload[pos]
            if x & 0x20:
                d.tid = tk >> 6
            if x & 0x10:
                d.keyidx = tk & 0x1F
                d.keyidx_offset = pos
            pos += 1
    d.size = pos
    if (b0 & 0x10) and (b0 & 0x07) == 0:
        d.begins_frame = True
        if pos < n and not (payload[pos] & 0x01):
            d.keyframe = True
            # 3-byte frame tag, start code, then 2 x 16-bit little-endian dimensions
            if n >= pos + 10 and payload[pos + 3 : pos + 6] == b"\x9d\x01\x2a":
                d.width = (payload[pos + 6] | (payload[pos + 7] << 8)) & 0x3FFF
                d.height = (payload[pos + 8] | (payload[pos + 9] << 8)) & 0x3FFF
    return d


def _newer(a: int, b: int, modulus: int) -> bool:
    """True if ``a`` follows ``b`` in a wrapping counter of the given modulus."""
    diff = (a - b) % modulus
    return 0 < diff < modulus // 2


class Vp8Munger:
    """Rewrites picture id, TL0PICIDX and KEYIDX so they stay continuous across switches.

    ``switch(d)`` is called with the descriptor of the first packet (a keyframe) of a new
    source; ``rewrite(payload, d)`` returns the payload to send (the same object when nothing
    changes, so an unswitched stream is forwarded byte for byte).
    """

    __slots__ = ("_keyidx_off", "_last_keyidx", "_last_pid", "_last_tl0", "_pid_off", "_tl0_off")

    def __init__(self) -> None:
        self._pid_off = 0
        self._tl0_off = 0
        self._keyidx_off = 0
        self._last_pid = -1  # newest picture id sent (output numbering)
        self._last_tl0 = -1
        self._last_keyidx = -1

    def switch(self, d: Vp8Descriptor) -> None:
        if d.picture_id >= 0 and self._last_pid >= 0:
            modulus = 0x8000 if d.picture_id_wide else 0x80
            self._pid_off = (d.picture_id - (self._last_pid + 1)) % modulus
        if d.tl0picidx >= 0 and self._last_tl0 >= 0:
            self._tl0_off = (d.tl0picidx - (self._last_tl0 + 1)) & 0xFF
        if d.keyidx >= 0 and self._last_keyidx >= 0:
            self._keyidx_off = (d.keyidx - (self._last_keyidx + 1)) & 0x1F

    def lane_state(self) -> tuple[int, int, int, int, int, int]:
        """Offsets and newest values for the native lane (``fanout.Vp8Lane``)."""
        return (
            self._pid_off,
            self._tl0_off,
            self._keyidx_off,
            self._last_pid,
            self._last_tl0,
            self._last_keyidx,
        )

    def lane_return(self, last_pid: int, last_tl0: int, last_keyidx: int) -> None:
        self._last_pid, self._last_tl0, self._last_keyidx = last_pid, last_tl0, last_keyidx

    def rewrite(self, payload: bytes, d: Vp8Descriptor) -> bytes:
        pid = d.picture_id
        tl0 = d.tl0picidx
        keyidx = d.keyidx
        buf: bytearray | None = None
        if pid >= 0:
            wide = d.picture_id_wide
            modulus = 0x8000 if wide else 0x80
            out = (pid - self._pid_off) % modulus
            if self._last_pid < 0 or _newer(out, self._last_pid % modulus, modulus):
                self._last_pid = out
            if out != pid:
                buf = bytearray(payload)
                o = d.picture_id_offset
                if wide:
                    buf[o] = 0x80 | (out >> 8)
                    buf[o + 1] = out & 0xFF
                else:
                    buf[o] = out
        if tl0 >= 0:
            out = (tl0 - self._tl0_off) & 0xFF
            if self._last_tl0 < 0 or _newer(out, self._last_tl0, 0x100):
                self._last_tl0 = out
            if out != tl0:
                if buf is None:
                    buf = bytearray(payload)
                buf[d.tl0picidx_offset] = out
        if keyidx >= 0:
            out = (keyidx - self._keyidx_off) & 0x1F
            if self._last_keyidx < 0 or _newer(out, self._last_keyidx, 0x20):
                self._last_keyidx = out
            if out != keyidx:
                if buf is None:
                    buf = bytearray(payload)
                o = d.keyidx_offset
                buf[o] = (buf[o] & 0xE0) | out
        return payload if buf is None else bytes(buf)
