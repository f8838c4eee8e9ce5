"""Matching a subscriber's packets to the publisher's by payload, for SFUs that rewrite them.

Trackyard keeps the publisher's RTP timestamps and shifts sequence numbers by a constant, so
``benchmarks.forwarding`` matches packets by those header fields, read in the clear without
touching SRTP. Janus rewrites SSRC, sequence numbers and timestamps per subscriber, so packets
are matched by what it leaves alone, the payload: the publisher keys each media packet by its
first ``KEY_BYTES`` payload bytes before SRTP (the VP8 payload descriptor with its 15-bit
picture id, then the frame's bytes at that packet's offset: unique over a run), and the
subscriber decrypts each media packet as it comes off the socket (with its connection's own
SRTP session, which aiortc would otherwise use for it) and keys it the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection

from benchmarks.stats import percentiles
from trackyard.loadtest.media import ice_protocols, is_rtp

KEY_BYTES = 32

# (send time, payload key, keyframe, size) per media packet the publisher sent
Sent = tuple[float, bytes, bool, int]


def payload_offset(packet: bytes) -> int:
    """Where an RTP packet's payload starts (after CSRCs and the header extension)."""
    offset = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        offset += 4 + 4 * int.from_bytes(packet[offset + 2 : offset + 4], "big")
    return offset


def payload_key(packet: bytes) -> bytes:
    offset = payload_offset(packet)
    return packet[offset : offset + KEY_BYTES]


@dataclass
class ContentCounter:
    """Decrypts and keys a subscriber's media packets as they come off its socket; STUN, DTLS,
    RTCP and RTX go on to aiortc (or are counted) as usual."""

    # (arrival time, payload key, size)
    arrivals: list[tuple[float, bytes, int]] = field(default_factory=list)
    other: int = 0  # RTX and anything not the media payload type
    undecryptable: int = 0  # before the DTLS handshake ends, or SRTP replays

    def hook(self, pc: RTCPeerConnection, media: set[int]) -> None:
        dtls = pc.getTransceivers()[0].receiver.transport
        arrivals = self.arrivals
        monotonic = time.monotonic
        for protocol in ice_protocols(pc):
            inner = protocol.datagram_received

            def received(data: bytes, addr: Any, inner: Callable[..., None] = inner) -> None:
                if not is_rtp(data):
                    inner(data, addr)
                elif data[1] & 0x7F in media:
                    arrived = monotonic()
                    srtp = dtls._rx_srtp
                    try:
                        plain = srtp.unprotect(data)
                    except Exception:
                        self.undecryptable += 1
                        return
                    arrivals.append((arrived, payload_key(plain), len(data)))
                else:
                    self.other += 1

            protocol.__dict__["datagram_received"] = received


def content_stats(
    sent: list[Sent], subs: dict[int, ContentCounter], t0: float, t1: float
) -> dict[str, Any]:
    """What happened to the packets the publisher sent in [t0, t1], matched by payload key;
    the same fields as ``ClientSide.op_stats`` of ``benchmarks.forwarding``."""
    window = [s for s in sent if t0 <= s[0] <= t1]
    sent_at: dict[bytes, tuple[float, bool]] = {}
    for t, key, keyframe, _ in window:
        sent_at.setdefault(key, (t, keyframe))
    lat_all: list[float] = []
    lat_delta: list[float] = []
    lat_key: list[float] = []
    delivered = 0
    delivered_bytes = 0
    lost: list[int] = []
    for index in sorted(subs):
        seen: set[bytes] = set()
        for t, key, size in subs[index].arrivals:
            if t0 <= t <= t1:
                delivered += 1
                delivered_bytes += size
            s = sent_at.get(key)
            if s is None or key in seen:
                continue
            seen.add(key)
            ms = (t - s[0]) * 1000
            lat_all.append(ms)
            (lat_key if s[1] else lat_delta).append(ms)
        lost.append(len(sent_at) - len(seen))
    return {
        "matched_by": "payload",
        "sent": len(window),
        "sent_unique": len(sent_at),
        "sent_kbps": round(sum(s[3] for s in window) * 8 / (t1 - t0) / 1000, 1),
        "sent_keyframe_packets": sum(1 for s in window if s[2]),
        "delivered": delivered,
        "delivered_kbps_per_subscriber": round(
            delivered_bytes * 8 / (t1 - t0) / 1000 / max(1, len(subs)), 1
        ),
        "matched": len(lat_all),
        "lost_total": sum(lost),
        "lost_max": max(lost, default=0),
        "subscribers_with_loss": sum(1 for n in lost if n),
        "other_packets": sum(s.other for s in subs.values()),
        "undecryptable_packets": sum(s.undecryptable for s in subs.values()),
        "latency_ms": percentiles(lat_all, (50, 90, 99), 3),
        "latency_delta_ms": percentiles(lat_delta, (50, 90, 99), 3),
        "latency_key_ms": percentiles(lat_key, (50, 90, 99), 3),
    }
