"""Placement throughput: rooms placed per second by routers sharing one Redis.

Starts Redis and two ``trackyard router`` processes; node records for three fake SFU nodes
(two in us-east, one in eu-west) are kept fresh in Redis by this script, so no media process
competes for the CPU. Then ``POST /place`` requests go to the routers with ``concurrency`` in
flight: distinct room names, plus a share of duplicates sent to the other router right behind
the original (a real claim race). Phases: one router, then both.

Checks, per phase: every request answered 200; all answers for one room agree on node and
epoch; every epoch is 1 (no room was claimed twice); Redis holds exactly one placement per
room, the one the routers answered. Prints figures and writes
``benchmarks/results/placement.json``: ``.venv/bin/python -m benchmarks.placement``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from benchmarks.join_latency import RESULTS
from benchmarks.stats import percentiles
from tests.support.cluster import Cluster, start_all
from tests.support.ports import free_port
from tests.support.redisserver import RedisServer
from tests.support.trackyard import TrackyardProcess
from trackyard.core import keys
from trackyard.core.config import RedisConfig
from trackyard.core.node import NodeRecord, NodeStats
from trackyard.core.redisconn import connect_redis
from trackyard.core.redisstore import RedisStore

NODES = [("ND_benchA", "us-east"), ("ND_benchB", "us-east"), ("ND_benchC", "eu-west")]


@contextlib.asynccontextmanager
async def fake_nodes(store: RedisStore) -> AsyncIterator[None]:
    """Keep three fresh node records in Redis (as SFU nodes would) while the phases run."""

    async def refresh() -> None:
        while True:
            for node_id, region in NODES:
                record = NodeRecord(id=node_id, region=region, stats=NodeStats(sysload=0.1))
                await store.put_node(record, ttl=5)
            await asyncio.sleep(1.0)

    for node_id, region in NODES:  # written before the first placement
        await store.put_node(NodeRecord(id=node_id, region=region), ttl=5)
    task = asyncio.create_task(refresh())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def plan(prefix: str, rooms: int, dup_share: float, routers: int) -> list[tuple[str, int, str]]:
    """(room, router index, caller region) in send order; duplicates right behind originals."""
    rng = random.Random(7)
    out: list[tuple[str, int, str]] = []
    for i in range(rooms):
        name = f"{prefix}-{i}"
        first = i % routers
        region = "us-east" if i % 3 else "eu-west"
        out.append((name, first, region))
        if rng.random() < dup_share:
            other = (first + 1) % routers
            out.append((name, other, "eu-west" if region == "us-east" else "us-east"))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


async def run_phase(
    urls: list[str],
    store: RedisStore,
    prefix: str,
    rooms: int,
    dup_share: float,
    conc: int,
    pids: dict[str, list[int]],
) -> dict[str, Any]:
    requests = plan(prefix, rooms, dup_share, len(urls))
    queue: asyncio.Queue[tuple[str, int, str]] = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)
    answers: dict[str, set[tuple[str, int]]] = defaultdict(set)
    latencies: list[float] = []
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=conc)
    timeout = aiohttp.ClientTimeout(total=10)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def worker() -> None:
            while True:
                try:
                    room, router, region = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                started = time.perf_counter()
                async with http.post(
                    f"{urls[router]}/place", json={"room": room, "region": region}
                ) as resp:
                    body = await resp.read()
                latencies.append((time.perf_counter() - started) * 1000)
                if resp.status != 200:
                    errors.append(f"{resp.status} {body[:100]!r}")
                    continue
                data = json.loads(body)
                answers[room].add((data["node_id"], int(data["epoch"])))

        cpu_before = {name: cpu_seconds(p) for name, p in pids.items()}
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        elapsed = time.perf_counter() - started
        cpu = {name: cpu_seconds(p) - cpu_before[name] for name, p in pids.items()}

    stored = {
        room: placement
        for room in answers
        if (placement := await store.get_placement(room)) is not None
    }
    disagreements = {r: a for r, a in answers.items() if len(a) != 1}
    reclaimed = {r: a for r, a in answers.items() if any(epoch != 1 for _, epoch in a)}
    mismatched = [
        r
        for r, a in answers.items()
        if r not in stored or {(stored[r].node_id, stored[r].epoch)} != a
    ]
    result = {
        "routers": len(urls),
        "concurrency": conc,
        "requests": len(requests),
        "rooms": rooms,
        "duplicate_requests": len(requests) - rooms,
        "elapsed_s": round(elapsed, 3),
        "requests_per_sec": round(len(requests) / elapsed, 1),
        "rooms_placed_per_sec": round(rooms / elapsed, 1),
        "latency_ms": percentiles(latencies),
        "cpu_ms_per_request": {
            name: round(seconds * 1000 / len(requests), 3) for name, seconds in cpu.items()
        },
        "errors": len(errors),
        "disagreements": len(disagreements),
        "claimed_twice": len(reclaimed),
        "store_mismatches": len(mismatched),
        "per_node": dict(Counter(next(iter(a))[0] for a in answers.values() if len(a) == 1)),
        "ok": not errors and not disagreements and not reclaimed and not mismatched,
    }
    print(json.dumps(result), flush=True)
    if errors:
        print("first errors:", errors[:3], flush=True)
    return result


async def main(rooms: int, dup_share: float, conc: int) -> dict[str, Any]:
    with RedisServer() as redis, tempfile.TemporaryDirectory() as work:
        layout = Cluster(redis=redis, workdir=Path(work))  # for its base config only
        ports = [free_port() for _ in range(2)]
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        routers = []
        for port in ports:
            cfg = layout.base_config()
            cfg["logging"] = {"json": True, "level": "warning"}  # no log line per placement
            cfg["router"] = {"port": port, "urls": urls}
            cfg["region"] = "us-east"
            routers.append(TrackyardProcess(cfg, command="router", ready_port=port))
        client = connect_redis(RedisConfig(address=redis.address))
        store = RedisStore(client)
        try:
            start_all(routers)
            assert redis.proc is not None
            pids = {
                "routers": [p.proc.pid for p in routers if p.proc is not None],
                "redis": [redis.proc.pid],
                "client": [psutil.Process().pid],
            }
            async with fake_nodes(store):
                await run_phase(urls, store, "warm", 200, dup_share, conc, pids)
                one = await run_phase(urls[:1], store, "one", rooms, dup_share, conc, pids)
                two = await run_phase(urls, store, "two", rooms, dup_share, conc, pids)
            placements = await client.hlen(keys.PLACEMENTS)
        finally:
            await client.aclose()
            for proc in routers:
                proc.stop()
    return {
        "benchmark": "placement",
        "note": "fake node records; client, routers and Redis share the machine's cores",
        "one_router": one,
        "two_routers": two,
        "placements_in_redis": placements,
        "ok": one["ok"] and two["ok"] and placements == 200 + 2 * rooms,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rooms", type=int, default=3000, help="distinct rooms per phase")
    parser.add_argument("--dup-share", type=float, default=0.2, help="rooms also sent twice")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    args = parser.parse_args()
    result = asyncio.run(main(args.rooms, args.dup_share, args.concurrency))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "placement.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"ok={result['ok']} wrote {out}")
