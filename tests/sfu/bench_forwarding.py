"""Forwarding cost benchmark (not a test): ``.venv/bin/python tests/sfu/bench_forwarding.py``.

A publisher sends VP8 (640x480) to an UpTrack that forwards to N subscribers over loopback
(real SRTP, real ICE sockets). The time spent in the UpTrack's packet handler is measured per
received packet for several N; the slope is the server cost per *delivered* packet (rewriting,
history, SRTP protect, sendto), the intercept the cost of the packet's own bookkeeping (after
aiortc's SRTP unprotect and parse, which are not included). Subscribers do not decode.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trackyard.sfu.downtrack import DownTrack
from trackyard.sfu.uptrack import UpTrack

from tests.sfu.test_forwarding import PatternTrack, negotiate, new_pc, wait_for


async def _drop(packet: Any, arrival_time_ms: int) -> None:
    return None


async def measure(subscribers: int, seconds: float) -> tuple[float, int]:
    publisher = new_pc(client=True)
    publisher.addTrack(PatternTrack())
    sfu_pub = new_pc()
    ups: list[UpTrack] = []
    samples: list[float] = []

    def attach() -> None:
        for t in sfu_pub.getTransceivers():
            up = UpTrack("video")
            up.attach(t.receiver, mid=t.mid)
            inner = up.handle_rtp

            async def timed(packet: Any, arrival_time_ms: int, inner: Any = inner) -> None:
                start = time.perf_counter()
                await inner(packet, arrival_time_ms)
                samples.append(time.perf_counter() - start)

            t.receiver.__dict__["_handle_rtp_packet"] = timed
            ups.append(up)

    await negotiate(publisher, sfu_pub, after_offer=attach)
    pcs = [publisher, sfu_pub]
    dts = []
    for _ in range(subscribers):
        sfu_sub, sub = new_pc(), new_pc(client=True)
        pcs += [sfu_sub, sub]
        dts.append(DownTrack(ups[0], sfu_sub.addTransceiver("video", direction="sendonly")))

        def no_decode(sub: Any = sub) -> None:
            for t in sub.getTransceivers():
                t.receiver.__dict__["_handle_rtp_packet"] = _drop

        await negotiate(sfu_sub, sub, after_offer=no_decode)
    await wait_for(lambda: all(dt.packets_sent for dt in dts), what="all subscribers served")
    samples.clear()
    await asyncio.sleep(seconds)
    result = list(samples)
    for up in ups:
        await up.close()
    for pc in pcs:
        await pc.close()
    return statistics.median(result) * 1e6, len(result)


async def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0
    points = []
    for n in (0, 5, 10, 20):
        us, count = await measure(n, seconds)
        points.append((n, us))
        print(f"{n:3d} subscribers: {us:7.1f} us per received packet (median of {count})")
    n0, t0 = points[0]
    slopes = [(t - t0) / (n - n0) for n, t in points[1:]]
    print(f"per delivered packet: {', '.join(f'{s:.1f}' for s in slopes)} us (for 5/10/20)")


if __name__ == "__main__":
    asyncio.run(main())
