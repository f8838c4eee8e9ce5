"""Sequence number and timestamp rewriting for one outgoing RTP stream. Pure, no I/O.

A DownTrack forwards packets from a succession of *segments*: a segment is a run of packets
from one source stream (one simulcast layer's SSRC), started by ``start_segment`` at a switch or
a resume. Inside a segment the mapping is a plain offset, so late and retransmitted packets of
the segment map onto the numbers their neighbours got. Across segments the output continues
without a gap: the first packet of a new segment gets the next sequence number and a timestamp
chosen by the caller (see ``ts_after_pause`` / ``ts_on_reference``).

``skip`` drops a packet (e.g. padding-only) *without* leaving a hole in the output numbering;
packets of the segment that arrive later still map correctly (a short list of skip points is
kept).

Sequence numbers are tracked internally as unbounded "extended" integers; only the output is
reduced to 16 bits. Timestamps are 32-bit modular.
"""

from __future__ import annotations

from bisect import bisect_left

__all__ = [
    "RtpMunger",
    "seq_newer",
    "ts_after_pause",
    "ts_diff",
    "ts_on_reference",
]

_MAX_SKIPS = 512  # skip points remembered for late packets


def seq_newer(a: int, b: int) -> bool:
    """True if 16-bit sequence number ``a`` comes after ``b`` (RFC 1982 arithmetic)."""
    diff = (a - b) & 0xFFFF
    return 0 < diff < 0x8000


def ts_diff(a: int, b: int) -> int:
    """Signed difference ``a - b`` of two 32-bit RTP timestamps."""
    diff = (a - b) & 0xFFFFFFFF
    return diff - 0x100000000 if diff & 0x80000000 else diff


def ts_after_pause(last_out_ts: int, elapsed_s: float, clock_rate: int) -> int:
    """Output timestamp for a packet sent ``elapsed_s`` after the last one (at least +1)."""
    step = round(elapsed_s * clock_rate)
    return (last_out_ts + max(1, step)) & 0xFFFFFFFF


def ts_on_reference(
    in_ts: int,
    source_sr: tuple[int, int],
    reference_sr: tuple[int, int],
    clock_rate: int,
) -> int:
    """Express ``in_ts`` of a source stream on a reference stream's RTP timeline.

    ``source_sr`` / ``reference_sr`` are ``(ntp, rtp)`` pairs from each stream's latest RTCP
    sender report (64-bit NTP). Both streams come from the same sender, so their NTP clocks are
    the same clock; this is how simulcast layers with unrelated random timestamp bases are
    aligned on a switch.
    """
    src_ntp, src_rtp = source_sr
    ref_ntp, ref_rtp = reference_sr
    capture_ntp_s = src_ntp / 4294967296.0 + ts_diff(in_ts, src_rtp) / clock_rate
    return (ref_rtp + round((capture_ntp_s - ref_ntp / 4294967296.0) * clock_rate)) & 0xFFFFFFFF


class RtpMunger:
    """Maps (sequence number, timestamp) of the forwarded source onto the output stream."""

    __slots__ = (
        "_hi",
        "_last_out_ext",
        "_seg_start",
        "_seq_off",
        "_skips",
        "last_out_ts",
        "started",
        "ts_offset",
    )

    def __init__(self, first_out_seq: int = 0) -> None:
        self.started = False
        self._last_out_ext = (first_out_seq & 0xFFFF) - 1  # newest output seq (extended)
        self.last_out_ts = 0
        self.ts_offset = 0  # in_ts - out_ts (mod 2**32) in the current segment
        self._hi = 0  # newest input seq (extended) seen in the segment
        self._seg_start = 0  # first input seq (extended) of the segment
        self._seq_off = 0  # in_ext - out_ext for packets after the last skip point
        self._skips: list[int] = []  # input seqs (extended) skipped, ascending

    @property
    def last_out_seq(self) -> int:
        return self._last_out_ext & 0xFFFF

    def start_segment(self, in_seq: int, in_ts: int, out_ts: int) -> None:
        """Begin a segment whose first packet (``in_seq``, ``in_ts``) is sent with the next
        sequence number and the timestamp ``out_ts``."""
        self._seg_start = in_seq
        self._hi = in_seq - 1
        self._seq_off = in_seq - (self._last_out_ext + 1)
        self._skips.clear()
        self.ts_offset = (in_ts - out_ts) & 0xFFFFFFFF
        if not self.started:
            self.started = True
            self.last_out_ts = out_ts

    def _extend(self, in_seq: int) -> int:
        hi = self._hi
        diff = (in_seq - hi) & 0xFFFF
        return hi + diff if diff < 0x8000 else hi + diff - 0x10000

    def map(self, in_seq: int, in_ts: int) -> tuple[int, int] | None:
        """Output (seq, ts) for a packet of the current segment; ``None``: drop it (it
        belongs before the segment start)."""
        ext = self._extend(in_seq)
        if ext < self._seg_start:
            return None
        skips = self._skips
        if ext > self._hi:
            self._hi = ext
            off = self._seq_off
        elif skips and ext <= skips[-1]:
            # late packet from before some skip points: fewer skips applied to it
            idx = bisect_left(skips, ext)
            if skips[idx] == ext:
                return None  # a copy of a skipped packet
            off = self._seq_off - (len(skips) - idx)
        else:
            off = self._seq_off
        out_ext = ext - off
        out_ts = (in_ts - self.ts_offset) & 0xFFFFFFFF
        if out_ext > self._last_out_ext:
            self._last_out_ext = out_ext
            self.last_out_ts = out_ts
        return out_ext & 0xFFFF, out_ts

    def lane_state(self) -> tuple[int, int, int, int, int, int, int]:
        """The state the native lane continues from (``fanout.MungerLane``): it maps as
        ``map`` does, and hands packets from before the newest skip point back."""
        skips = self._skips
        floor = skips[-1] if skips else self._seg_start - 1
        return (
            self._hi,
            self._seg_start,
            self._seq_off,
            floor,
            self._last_out_ext,
            self.ts_offset,
            self.last_out_ts,
        )

    def lane_return(self, hi: int, seq_off: int, last_out_ext: int, last_out_ts: int) -> None:
        """Take back what the lane changed (``fanout.MungerBack``)."""
        self._hi, self._seq_off = hi, seq_off
        self._last_out_ext, self.last_out_ts = last_out_ext, last_out_ts

    def skip(self, in_seq: int) -> bool:
        """Drop a packet without a hole in the output. Only newer-than-newest packets can be
        skipped this way; returns False (the packet is dropped, leaving a hole) otherwise."""
        ext = self._extend(in_seq)
        if ext <= self._hi or ext < self._seg_start:
            return False
        self._hi = ext
        self._seq_off += 1
        skips = self._skips
        skips.append(ext)
        if len(skips) > _MAX_SKIPS:
            # forget the oldest skip points; packets from before them can no longer be
            # mapped exactly, so they now count as belonging before the segment
            cut = len(skips) - _MAX_SKIPS
            self._seg_start = skips[cut - 1] + 1
            del skips[:cut]
        return True
