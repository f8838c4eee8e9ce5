"""Receive-side RTP statistics and loss tracking for one source stream. Pure, no I/O.

- ``ReceiveStats``: RFC 3550 appendix A.1/A.3/A.8 bookkeeping (extended highest sequence
  number, cumulative and interval loss, interarrival jitter) for reception reports.
- ``NackTracker``: which sequence numbers are missing and when to (re)request them.
- ``TrafficCounters``: plain packet/byte counters a node can share between its tracks.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NackTracker", "ReceiveStats", "TrafficCounters"]


@dataclass(slots=True)
class TrafficCounters:
    """Packets and bytes through the forwarding engine (shared, mutated in place)."""

    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    retransmits: int = 0
    retransmit_bytes: int = 0
    nacks_received: int = 0  # NACK packets from subscribers
    plis_received: int = 0  # PLI/FIR from subscribers
    nacks_sent: int = 0  # NACK packets sent to publishers
    plis_sent: int = 0
    forwarded: int = 0  # received packets fanned out to at least one DownTrack
    forward_ns: int = 0  # summed time from arrival to the last DownTrack's send, of those


class ReceiveStats:
    """Reception statistics of one SSRC."""

    __slots__ = (
        "_expected_prior",
        "_jitter",
        "_last_transit",
        "_received_prior",
        "base_ext",
        "clock_rate",
        "hi_ext",
        "received",
        "started",
    )

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.started = False
        self.base_ext = 0
        self.hi_ext = 0  # extended highest sequence number received
        self.received = 0
        self._jitter = 0.0
        self._last_transit: float | None = None
        self._expected_prior = 0
        self._received_prior = 0

    def extend(self, seq: int) -> int:
        """The extended sequence number closest to the highest one seen."""
        hi = self.hi_ext
        diff = (seq - hi) & 0xFFFF
        return hi + diff if diff < 0x8000 else hi + diff - 0x10000

    def update(self, seq: int, ts: int, arrival_s: float, retransmitted: bool = False) -> int:
        """Count a packet; returns its extended sequence number."""
        self.received += 1
        if not self.started:
            self.started = True
            self.base_ext = self.hi_ext = seq
            self._last_transit = arrival_s * self.clock_rate - ts
            return seq
        ext = self.extend(seq)
        if ext > self.hi_ext:
            self.hi_ext = ext
            if not retransmitted:
                transit = arrival_s * self.clock_rate - ts
                last = self._last_transit
                if last is not None:
                    d = transit - last
                    if d < 0:
                        d = -d
                    if d < self.clock_rate * 10:  # ignore timestamp jumps (source restarts)
                        self._jitter += (d - self._jitter) / 16.0
                self._last_transit = transit
        elif ext < self.base_ext:
            self.base_ext = ext
        return ext

    @property
    def expected(self) -> int:
        return self.hi_ext - self.base_ext + 1 if self.started else 0

    @property
    def lost(self) -> int:
        return self.expected - self.received

    @property
    def jitter(self) -> int:
        return int(self._jitter)

    def fraction_lost(self) -> int:
        """Fraction lost since the previous call, in 1/256 (the RR field). Resets the interval."""
        expected = self.expected
        interval_expected = expected - self._expected_prior
        interval_received = self.received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self.received
        lost = interval_expected - interval_received
        if interval_expected <= 0 or lost <= 0:
            return 0
        return min(255, (lost << 8) // interval_expected)


class NackTracker:
    """Missing sequence numbers of one stream (extended), with retry bookkeeping."""

    __slots__ = ("_missing", "max_age", "max_gap", "max_retries")

    def __init__(self, max_gap: int = 200, max_age: float = 1.0, max_retries: int = 3) -> None:
        self.max_gap = max_gap  # bigger jumps are stream restarts, not loss
        self.max_age = max_age  # seconds after which a missing packet is given up
        self.max_retries = max_retries
        self._missing: dict[int, list[float]] = {}  # ext seq -> [first seen, last asked, tries]

    def __len__(self) -> int:
        return len(self._missing)

    def on_packet(self, ext: int, prev_hi: int, now: float) -> list[int]:
        """Record a received packet; returns the newly missing ext seqs (to NACK now)."""
        missing = self._missing
        if ext <= prev_hi:
            missing.pop(ext, None)
            return []
        gap = ext - prev_hi - 1
        if gap <= 0:
            return []
        if gap > self.max_gap:
            missing.clear()
            return []
        new = list(range(prev_hi + 1, ext))
        for s in new:
            missing[s] = [now, now, 1.0]
        if len(missing) > 4 * self.max_gap:
            for s in sorted(missing)[: len(missing) - 4 * self.max_gap]:
                del missing[s]
        return new

    def recover(self, ext: int) -> bool:
        """A retransmission arrived: True if we were missing (and had asked for) it."""
        return self._missing.pop(ext, None) is not None

    @property
    def pending(self) -> bool:
        return bool(self._missing)

    def due(self, now: float, interval: float) -> list[int]:
        """Missing ext seqs to ask for again (last asked at least ``interval`` ago); forgets
        packets that are too old or asked for too often."""
        out: list[int] = []
        missing = self._missing
        for s in list(missing):
            entry = missing[s]
            if now - entry[0] > self.max_age or entry[2] >= self.max_retries:
                del missing[s]
            elif now - entry[1] >= interval:
                entry[1] = now
                entry[2] += 1
                out.append(s)
        return out
