"""Media-back time after faults, at Trackyard's default liveness timings.

A real cluster (Redis, one router, two edges, two SFU nodes: ``tests/support/cluster.py``)
with ``node.stats_update_interval`` 2 s, ``heartbeat_interval`` 0.5 s, ``dead_after`` 2 s and
``reconnect_window`` 5 s (the defaults). Two SDK clients publish a pattern video to each other
and decode what they receive (``tests/support/chaos.py``). Repeated faults:

- **node**: kill -9 of the room's hosting SFU node; media-back = from the kill to the 5th
  readable frame in the slower direction (both clients rejoin on the surviving node). The
  killed node is restarted between rounds.
- **edge**: the clients reach the edges through a TCP failover proxy (a stand-in for HAProxy:
  it connects to the first edge that accepts); kill -9 of the edge holding both sockets;
  media-back as above (the SDK resumes, is told to rejoin, and lands on the other edge), plus
  the longest gap in decoded frames.
- **redis**: kill -9 of Redis and an empty restart 1 s later; the longest gap in decoded
  frames per round (ideally none: media does not go through Redis) and whether the room
  stayed on its node.

Run inside the test network namespace (the SDK needs it):
``scripts/netns .venv/bin/python -m benchmarks.failover [--rounds N]``. Figures go to stdout
and ``benchmarks/results/failover.json``. On a shared 2-core machine they are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.stats import percentiles
from tests.support.chaos import all_see_media, video_peer
from tests.support.cluster import Cluster, eventually
from tests.support.ports import free_port
from tests.support.redisserver import RedisServer

RESULTS = Path(__file__).parent / "results"
FRAMES = 5


class FailoverProxy:
    """Accept TCP on one port; connect each client to the first backend that answers."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = free_port()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for port in self.backends:
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
            return
        writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    with contextlib.suppress(Exception):
        dst.close()


async def node_round(cl: Cluster, room: str) -> float:
    e0, e1 = cl.edges
    async with video_peer(e0.ws_url, "a", room) as a, video_peer(e1.ws_url, "b", room) as b:
        await all_see_media([a, b], 0.0, count=FRAMES, timeout=20)
        host = cl.host_index(room)
        assert host is not None
        killed = time.monotonic()
        cl.kill(cl.sfus[host])
        back = await all_see_media([a, b], killed, count=FRAMES, timeout=30)
    cl.sfus[host].start()
    cl.node_ids[host] = cl.sfu_record(host)["id"]
    return back - killed


async def edge_round(cl: Cluster, room: str, index: int) -> tuple[float, float]:
    order = [cl.edges[index].port, cl.edges[1 - index].port]
    proxy = FailoverProxy(order)
    await proxy.start()
    url = f"ws://127.0.0.1:{proxy.port}"
    try:
        async with video_peer(url, "a", room) as a, video_peer(url, "b", room) as b:
            await all_see_media([a, b], 0.0, count=FRAMES, timeout=20)
            killed = time.monotonic()
            cl.kill(cl.edges[index])
            back = await all_see_media([a, b], killed, count=FRAMES, timeout=30)
            gap = max(a.log.max_gap("b", killed, back), b.log.max_gap("a", killed, back))
    finally:
        await proxy.close()
    cl.edges[index].start()
    return back - killed, gap


async def redis_round(cl: Cluster, room: str) -> tuple[float, bool]:
    e0, e1 = cl.edges
    async with video_peer(e0.ws_url, "a", room) as a, video_peer(e1.ws_url, "b", room) as b:
        await all_see_media([a, b], 0.0, count=FRAMES, timeout=20)
        host = cl.placement(room)
        start = time.monotonic()
        cl.redis.stop()
        await asyncio.sleep(1.0)  # the outage itself
        cl.redis.start()
        # media and placement after the restart: wait for the host's re-assertion
        await eventually(lambda: cl.placement(room), timeout=10, what="placement re-asserted")
        await all_see_media([a, b], time.monotonic(), count=FRAMES, timeout=20)
        end = time.monotonic()
        gap = max(a.log.max_gap("b", start, end), b.log.max_gap("a", start, end))
        same = host is not None and (cl.placement(room) or ("", 0))[0] == host[0]
    return gap, same


async def main(rounds: int) -> dict[str, Any]:
    with RedisServer() as redis, tempfile.TemporaryDirectory() as tmp:
        cl = Cluster(
            redis=redis,
            workdir=Path(tmp),
            sfu_regions=["us-east", "us-east"],
            edge_regions=["us-east", "us-east"],
            routers_count=1,
            overrides={"node": {"stats_update_interval": 2.0}},
        )
        cl.start()
        try:
            node = [await node_round(cl, f"node-{i}") for i in range(rounds)]
            print("node kill media-back s:", [round(x, 2) for x in node], flush=True)
            edge = [await edge_round(cl, f"edge-{i}", i % 2) for i in range(rounds)]
            print("edge kill (media-back s, gap s):", edge, flush=True)
            red = [await redis_round(cl, f"redis-{i}") for i in range(rounds)]
            print("redis restart (gap s, same host):", red, flush=True)
        finally:
            cl.stop()
    return {
        "timings": "defaults: heartbeat 0.5 s, dead_after 2 s, reconnect_window 5 s, stats 2 s",
        "node_kill_media_back_s": percentiles(node),
        "edge_kill_media_back_s": percentiles([b for b, _ in edge]),
        "edge_kill_media_gap_s": percentiles([g for _, g in edge]),
        "redis_restart_media_gap_s": percentiles([g for g, _ in red]),
        "redis_restart_room_kept_host": sum(1 for _, same in red if same),
        "rounds": rounds,
        "target": "media back within 5 s of kill -9 of the hosting node (p95)",
        "target_met": percentiles(node).get("p95", 99.0) < 5.0,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="kills of each kind")
    args = parser.parse_args()
    result = asyncio.run(main(args.rounds))
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "failover.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
