"""H.264 RTP payload (RFC 6184): keyframe detection. Pure wire-format code.

A payload is one of: a single NAL unit (types 1-23), an aggregation packet STAP-A (24: a
sequence of 16-bit size + NAL), or a fragment FU-A (28: FU indicator, FU header with S/E bits
and the fragmented NAL's type). A keyframe is an IDR picture (NAL type 5), normally preceded by
SPS (7) and PPS (8); a decoder can start at a packet that carries the SPS, or at the first
fragment of the IDR slice when no parameter sets are sent in band.
"""

from __future__ import annotations

__all__ = ["NAL_IDR", "NAL_PPS", "NAL_SPS", "begins_keyframe", "nal_types"]

NAL_IDR = 5
NAL_SPS = 7
NAL_PPS = 8
_STAP_A = 24
_FU_A = 28


def nal_types(payload: bytes) -> list[int]:
    """NAL unit types present in (or, for FU-A, starting in) one RTP payload."""
    if not payload:
        return []
    t = payload[0] & 0x1F
    if t == _STAP_A:
        types: list[int] = []
        pos = 1
        n = len(payload)
        while pos + 2 < n:
            size = (payload[pos] << 8) | payload[pos + 1]
            pos += 2
            if size == 0 or pos + size > n:
                break
            types.append(payload[pos] & 0x1F)
            pos += size
        return types
    if t == _FU_A:
        if len(payload) < 2 or not (payload[1] & 0x80):  # not the first fragment
            return []
        return [payload[1] & 0x1F]
    return [t]


def begins_keyframe(payload: bytes) -> bool:
    """True if a decoder can start at this packet: it carries an SPS or starts an IDR slice."""
    if not payload:
        return False
    t = payload[0] & 0x1F
    if t in (NAL_SPS, NAL_IDR):
        return True
    if t in (_STAP_A, _FU_A):
        for nal in nal_types(payload):
            if nal in (NAL_SPS, NAL_IDR):
                return True
    return False
