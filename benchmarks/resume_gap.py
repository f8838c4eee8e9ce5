"""Media gap on the loss of a signal edge: session resume vs a full rejoin.

A real cluster (Redis, one router, two edges, two SFU nodes: ``tests/support/cluster.py``, the
default liveness timings) behind HAProxy (``tests/support/haproxy.py``: ``balance first``,
``/readyz`` checks every 200 ms, retries on a refused connection or a 503). Two SDK clients
publish a pattern video to each other and decode what they receive (``tests/support/chaos.py``);
both sockets are on the same edge. Each round takes that edge away and measures, from that
moment until media is back after the SDKs' ``reconnected``, the longest stretch without a
decoded frame in the worse direction (a -> b or b -> a), and when the SDKs said ``reconnected``:

- **kill**: kill -9 of the edge; the SDKs resume (``reconnect=1&sid=``) through the other edge.
- **drain**: SIGTERM of the edge; it detaches the sessions on the node and sends
  ``leave{RESUME}``; the SDKs resume through the other edge.
- **rejoin**: the baseline, today's behaviour whenever a resume is impossible (and before
  resume existed: ``leave{STATE_MISMATCH, RECONNECT}``): the clients rejoin from scratch (new
  participant, new peer connections, tracks republished and resubscribed). The edge is frozen
  (SIGSTOP) until HAProxy has taken it out of rotation, then both clients start a full
  reconnect (the SDK's ``SIMULATE_FULL_RECONNECT``: a locally injected
  ``leave{RECONNECT}``) and the edge is killed at the same moment.

A round counts as what it claims only if the participant SIDs stayed (kill, drain) or
changed (rejoin); the others are reported under ``unexpected``. The edge is restarted between
rounds (and HAProxy waited for), so every round starts with two edges.

Run inside the test network namespace (the SDK needs it):
``scripts/netns .venv/bin/python -m benchmarks.resume_gap [--rounds N] [--modes kill,rejoin]``
(default: 10 rounds of each mode, about 2.5 minutes). Figures go to stdout and
``benchmarks/results/resume_gap.json``. Noisy on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from livekit import rtc

from benchmarks.stats import percentiles
from tests.support.chaos import Peer, all_see_media, video_peer
from tests.support.cluster import Cluster, eventually
from tests.support.haproxy import HAProxy
from tests.support.redisserver import RedisServer
from tests.support.sdk import EventWaiter

RESULTS = Path(__file__).parent / "results"
FRAMES = 5
MODES = ("kill", "drain", "rejoin")
POINTS = (50, 90)


async def _edge_round(
    cl: Cluster, lb: HAProxy, peers: list[Peer], holder: int, mode: str
) -> dict[str, Any]:
    """Take away edge ``holder`` (it holds both sockets); returns the round's figures."""
    victim = cl.edges[holder]
    assert victim.proc is not None
    before = [p.room.local_participant.sid for p in peers]
    reconnected = [EventWaiter(p.room, "reconnected") for p in peers]
    if mode == "rejoin":
        victim.proc.send_signal(signal.SIGSTOP)
        await eventually(
            lambda: lb.states()[holder] == "DOWN", timeout=5, what="HAProxy to drop the edge"
        )
        lost_at = time.monotonic()
        await asyncio.gather(
            *(
                p.room.simulate_scenario(rtc.SimulateScenarioKind.SIMULATE_FULL_RECONNECT)
                for p in peers
            )
        )
        cl.kill(victim)
    elif mode == "kill":
        lost_at = time.monotonic()
        cl.kill(victim)
    else:
        lost_at = time.monotonic()
        victim.signal(signal.SIGTERM)
    for waiter in reconnected:
        await waiter.wait(timeout=30)
    reconnected_at = time.monotonic()
    back = await all_see_media(peers, reconnected_at, count=FRAMES, timeout=30)
    gap = max(p.log.max_gap(q.identity, lost_at, back) for p in peers for q in peers if p is not q)
    kept = [p.room.local_participant.sid for p in peers] == before
    exit_code = await asyncio.to_thread(victim.wait, 15)
    victim.start()
    await eventually(
        lambda: lb.states()[holder] == "UP", timeout=10, what="HAProxy to take the edge back"
    )
    return {
        "gap_s": gap,
        "reconnected_s": reconnected_at - lost_at,
        "as_claimed": kept if mode != "rejoin" else not kept,
        "edge_exit": exit_code,
    }


async def main(rounds: int, modes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rounds": rounds,
        "setup": "2 edges behind HAProxy 2.6 (balance first, /readyz checks every 200 ms), "
        "2 SFU nodes, 1 router, Redis; 2 Python SDK clients (livekit 1.2.1) publishing "
        "320x180@15 pattern video to each other; default liveness timings "
        "(reconnect_window 5 s), signal.drain_deadline 5 s",
        "measure": "gap_s: longest stretch without a decoded frame, worse direction, from the "
        "edge's loss until media is back after the SDKs' 'reconnected'; reconnected_s: "
        "from the loss to both SDKs' 'reconnected'",
    }
    started = time.monotonic()
    with RedisServer() as redis, tempfile.TemporaryDirectory() as tmp:
        cl = Cluster(
            redis=redis,
            workdir=Path(tmp),
            sfu_regions=["us-east", "us-east"],
            edge_regions=["us-east", "us-east"],
            routers_count=1,
        )
        cl.start()
        try:
            with HAProxy([e.port for e in cl.edges]) as lb:
                async with (
                    video_peer(lb.ws_url, "a", "resume-gap") as a,
                    video_peer(lb.ws_url, "b", "resume-gap") as b,
                ):
                    peers = [a, b]
                    await all_see_media(peers, 0.0, count=FRAMES, timeout=20)
                    holder = 0  # balance first: every socket on the first edge
                    for mode in modes:
                        results = []
                        for _ in range(rounds):
                            results.append(await _edge_round(cl, lb, peers, holder, mode))
                            holder = 1 - holder  # everyone moved to the other edge
                        print(mode, [round(r["gap_s"], 3) for r in results], flush=True)
                        good = [r for r in results if r["as_claimed"]]
                        out[mode] = {
                            "gap_s": percentiles([r["gap_s"] for r in good], POINTS, 3),
                            "reconnected_s": percentiles(
                                [r["reconnected_s"] for r in good], POINTS, 2
                            ),
                            "unexpected": len(results) - len(good),
                            "edge_exit_codes": sorted({r["edge_exit"] for r in results}),
                        }
        finally:
            cl.stop()
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10, help="edge losses per mode")
    parser.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated: " + ",".join(MODES)
    )
    args = parser.parse_args()
    chosen = [m for m in args.modes.split(",") if m]
    assert set(chosen) <= set(MODES), chosen
    result = asyncio.run(main(args.rounds, chosen))
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "resume_gap.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
