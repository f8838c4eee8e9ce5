"""RTP and RTCP wire formats the forwarding engine writes (RFC 3550, 4585, 5104, 8285, 4588).

Pure, allocation-conscious builders: the SFU writes its own RTP headers (its SSRC, sequence
numbers, timestamps, payload type, header extensions with the subscriber's negotiated ids) in
front of the publisher's untouched payload, and builds the few RTCP messages it sends. Parsing
of received packets is left to aiortc (the DTLS transport parses before routing).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from struct import Struct

__all__ = [
    "EXT_ABS_SEND_TIME",
    "EXT_AUDIO_LEVEL",
    "EXT_MID",
    "EXT_REPAIRED_RID",
    "EXT_RID",
    "ExtensionWriter",
    "ReportBlock",
    "abs_send_time",
    "ntp_now",
    "ntp_to_compact",
    "rtcp_bye",
    "rtcp_fir",
    "rtcp_nack",
    "rtcp_pli",
    "rtcp_remb",
    "rtcp_rr",
    "rtcp_sdes",
    "rtcp_sr",
    "rtp_header",
    "rtx_packet",
]

EXT_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
EXT_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
EXT_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
EXT_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
EXT_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"

_NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01

_HEADER = Struct("!BBHII")
_U16 = Struct("!H")
_U32 = Struct("!I")
_RTCP_HEAD = Struct("!BBH")
_SR = Struct("!BBHIIIIII")
_FB = Struct("!BBHII")
_BLOCK = Struct("!IIIIII")


def ntp_now(now: float | None = None) -> int:
    """64-bit NTP timestamp of ``now`` (Unix seconds, default: the current time)."""
    t = time.time() if now is None else now
    return int((t + _NTP_EPOCH_OFFSET) * 4294967296.0) & 0xFFFFFFFFFFFFFFFF


def ntp_to_compact(ntp: int) -> int:
    """The middle 32 bits of a 64-bit NTP timestamp (LSR / DLSR format)."""
    return (ntp >> 16) & 0xFFFFFFFF


def abs_send_time(now: float | None = None) -> int:
    """24-bit abs-send-time value (6.18 fixed point seconds)."""
    t = time.time() if now is None else now
    return int(t * 262144.0) & 0xFFFFFF


def rtp_header(
    payload_type: int, marker: int, seq: int, ts: int, ssrc: int, extension: bytes = b""
) -> bytes:
    """12-byte RTP header (no CSRC, no padding) followed by an extension block."""
    return (
        _HEADER.pack(
            0x90 if extension else 0x80,
            (0x80 | payload_type) if marker else payload_type,
            seq,
            ts,
            ssrc,
        )
        + extension
    )


def rtx_packet(packet: bytes, header_size: int, payload_type: int, seq: int, ssrc: int) -> bytes:
    """RFC 4588 retransmission of ``packet`` (a plain RTP packet we built, whose header incl.
    extensions is ``header_size`` bytes): RTX payload type/SSRC/seq, the original sequence
    number prepended to the payload, header extensions kept."""
    return (
        _HEADER.pack(
            packet[0], (packet[1] & 0x80) | payload_type, seq, _U32.unpack_from(packet, 4)[0], ssrc
        )
        + packet[12:header_size]
        + packet[2:4]
        + packet[header_size:]
    )


class ExtensionWriter:
    """Writes RFC 8285 one-byte header extension blocks with the peer's negotiated ids.

    The MID element is constant per stream and pre-built; abs-send-time (video) and audio level
    (audio) change per packet.
    """

    __slots__ = ("_abs_id", "_head_abs", "_level_id", "_mid", "_pad_abs")

    def __init__(self, ids: Mapping[str, int], mid: str | None) -> None:
        mid_id = ids.get(EXT_MID, 0)
        self._mid = b""
        if mid and 0 < mid_id < 15 and len(mid) <= 16:
            raw = mid.encode()
            self._mid = bytes([(mid_id << 4) | (len(raw) - 1)]) + raw
        abs_id = ids.get(EXT_ABS_SEND_TIME, 0)
        self._abs_id = abs_id << 4 | 2 if 0 < abs_id < 15 else 0
        level_id = ids.get(EXT_AUDIO_LEVEL, 0)
        self._level_id = level_id << 4 if 0 < level_id < 15 else 0
        size = len(self._mid) + (4 if self._abs_id else 0)
        words = (size + 3) // 4
        self._head_abs = b"\xbe\xde" + _U16.pack(words) + self._mid
        self._pad_abs = b"\x00" * (words * 4 - size)

    def elements(self) -> tuple[bytes, int, int]:
        """What the native fan-out writes the same blocks from: the MID element (header byte
        and value), the abs-send-time element header byte, the audio level one (0: none)."""
        return self._mid, self._abs_id, self._level_id

    def video(self, abs_time: int) -> bytes:
        """Extension block with MID and abs-send-time (each if negotiated)."""
        if self._abs_id:
            return (
                self._head_abs
                + bytes((self._abs_id, abs_time >> 16, (abs_time >> 8) & 0xFF, abs_time & 0xFF))
                + self._pad_abs
            )
        return self._plain()

    def audio(self, level: tuple[bool, int] | None) -> bytes:
        """Extension block with MID and the audio level (if negotiated and known)."""
        if self._level_id and level is not None:
            body = self._mid + bytes(
                (self._level_id, (0x80 if level[0] else 0) | (level[1] & 0x7F))
            )
            words = (len(body) + 3) // 4
            return b"\xbe\xde" + _U16.pack(words) + body + b"\x00" * (words * 4 - len(body))
        return self._plain()

    def _plain(self) -> bytes:
        if not self._mid:
            return b""
        words = (len(self._mid) + 3) // 4
        return b"\xbe\xde" + _U16.pack(words) + self._mid + b"\x00" * (words * 4 - len(self._mid))


# --- RTCP -----------------------------------------------------------------------------------


@dataclass(slots=True)
class ReportBlock:
    """One RFC 3550 reception report block."""

    ssrc: int
    fraction_lost: int  # 0..255
    packets_lost: int  # cumulative, clamped to 24-bit signed
    highest_seq: int  # extended highest sequence number received
    jitter: int  # in timestamp units
    lsr: int = 0
    dlsr: int = 0

    def pack(self) -> bytes:
        lost = max(-(1 << 23), min((1 << 23) - 1, self.packets_lost)) & 0xFFFFFF
        return _BLOCK.pack(
            self.ssrc,
            (self.fraction_lost & 0xFF) << 24 | lost,
            self.highest_seq & 0xFFFFFFFF,
            self.jitter & 0xFFFFFFFF,
            self.lsr & 0xFFFFFFFF,
            self.dlsr & 0xFFFFFFFF,
        )


def rtcp_sr(
    ssrc: int,
    ntp: int,
    rtp_ts: int,
    packet_count: int,
    octet_count: int,
    reports: Sequence[ReportBlock] = (),
) -> bytes:
    """Sender report (PT 200)."""
    body = b"".join(r.pack() for r in reports)
    return (
        _SR.pack(
            0x80 | len(reports),
            200,
            6 + 6 * len(reports),
            ssrc,
            (ntp >> 32) & 0xFFFFFFFF,
            ntp & 0xFFFFFFFF,
            rtp_ts & 0xFFFFFFFF,
            packet_count & 0xFFFFFFFF,
            octet_count & 0xFFFFFFFF,
        )
        + body
    )


def rtcp_rr(ssrc: int, reports: Sequence[ReportBlock]) -> bytes:
    """Receiver report (PT 201)."""
    return (
        _RTCP_HEAD.pack(0x80 | len(reports), 201, 1 + 6 * len(reports))
        + _U32.pack(ssrc)
        + b"".join(r.pack() for r in reports)
    )


def rtcp_sdes(ssrc: int, cname: str) -> bytes:
    """Source description (PT 202) with one CNAME chunk."""
    raw = cname.encode()[:255]
    chunk = _U32.pack(ssrc) + bytes((1, len(raw))) + raw + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    return _RTCP_HEAD.pack(0x81, 202, len(chunk) // 4) + chunk


def rtcp_bye(ssrcs: Sequence[int]) -> bytes:
    """Goodbye (PT 203)."""
    return _RTCP_HEAD.pack(0x80 | len(ssrcs), 203, len(ssrcs)) + b"".join(
        _U32.pack(s) for s in ssrcs
    )


def rtcp_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    """Picture loss indication (PT 206, FMT 1)."""
    return _FB.pack(0x81, 206, 2, sender_ssrc, media_ssrc)


def rtcp_fir(sender_ssrc: int, media_ssrc: int, seqnr: int) -> bytes:
    """Full intra request (PT 206, FMT 4, RFC 5104)."""
    return (
        _FB.pack(0x84, 206, 4, sender_ssrc, 0)
        + _U32.pack(media_ssrc)
        + bytes((seqnr & 0xFF, 0, 0, 0))
    )


def rtcp_nack(sender_ssrc: int, media_ssrc: int, lost: Iterable[int]) -> bytes:
    """Generic NACK (PT 205, FMT 1) for 16-bit sequence numbers."""
    fci = bytearray()
    pid = -1
    blp = 0
    for seq in sorted({s & 0xFFFF for s in lost}, key=lambda s: s):
        if pid >= 0:
            diff = (seq - pid) & 0xFFFF
            if 0 < diff <= 16:
                blp |= 1 << (diff - 1)
                continue
            fci += _U16.pack(pid) + _U16.pack(blp)
        pid = seq
        blp = 0
    if pid >= 0:
        fci += _U16.pack(pid) + _U16.pack(blp)
    return _FB.pack(0x81, 205, 2 + len(fci) // 4, sender_ssrc, media_ssrc) + bytes(fci)


def rtcp_remb(sender_ssrc: int, bitrate: int, ssrcs: Sequence[int]) -> bytes:
    """Receiver estimated maximum bitrate (PT 206, FMT 15, draft-alvestrand-rmcat-remb)."""
    exp = 0
    mantissa = max(0, int(bitrate))
    while mantissa > 0x3FFFF:
        mantissa >>= 1
        exp += 1
    fci = (
        b"REMB"
        + bytes(
            (len(ssrcs), (exp << 2) | (mantissa >> 16), (mantissa >> 8) & 0xFF, mantissa & 0xFF)
        )
        + b"".join(_U32.pack(s) for s in ssrcs)
    )
    return _FB.pack(0x8F, 206, 2 + len(fci) // 4, sender_ssrc, 0) + fci
