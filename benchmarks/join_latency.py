"""Join latency: N real SDK clients joining one room, sequentially and concurrently.

Prints connect() p50/p95/p99 as the client sees it and the server's time from WebSocket
request to JoinResponse sent (from its logs), and writes JSON. Run inside the test network
namespace: ``make bench`` or ``scripts/netns .venv/bin/python -m benchmarks.join_latency``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from livekit import rtc

from benchmarks.stats import percentiles
from tests.support.sdk import token
from tests.support.trackyard import TrackyardProcess

RESULTS = Path(__file__).parent / "results"


async def _connect(url: str, identity: str, room: str) -> tuple[rtc.Room, float]:
    client = rtc.Room()
    started = time.perf_counter()
    await asyncio.wait_for(client.connect(url, token(identity, room)), 60)
    return client, (time.perf_counter() - started) * 1000


async def run_phase(url: str, n: int, mode: str) -> dict[str, Any]:
    room = f"bench-{mode}-{n}-{time.monotonic_ns()}"
    clients: list[rtc.Room] = []
    times: list[float] = []
    failures = 0
    if mode == "sequential":
        for i in range(n):
            try:
                client, ms = await _connect(url, f"p{i}", room)
                clients.append(client)
                times.append(ms)
            except Exception:
                failures += 1
    else:
        results = await asyncio.gather(
            *(_connect(url, f"p{i}", room) for i in range(n)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                failures += 1
            else:
                clients.append(result[0])
                times.append(result[1])
    await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)
    return {
        "mode": mode,
        "n": n,
        "connected": len(times),
        "failed": failures,
        "connect_ms": percentiles(times),
        "room": room,
    }


def server_join_ms(log_text: str, room: str) -> list[float]:
    out = []
    for line in log_text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "session started" and rec.get("room") == room:
            out.append(float(rec["join_ms"]))
    return out


async def main(sizes: list[int]) -> dict[str, Any]:
    cfg = {"logging": {"json": True, "level": "info"}, "room": {"departure_timeout": 1}}
    with TrackyardProcess(cfg) as server:
        await _connect(server.ws_url, "warmup", "warmup")  # first import/JIT costs
        phases = []
        for mode in ("sequential", "concurrent"):
            for n in sizes:
                phase = await run_phase(server.ws_url, n, mode)
                log_text = server.log_path.read_text(errors="replace")
                phase["server_join_ms"] = percentiles(server_join_ms(log_text, phase.pop("room")))
                phases.append(phase)
                print(
                    f"{mode:>10} N={n:<3} connected {phase['connected']}/{n}  "
                    f"connect() ms {phase['connect_ms']}  server join ms {phase['server_join_ms']}",
                    flush=True,
                )
    return {"benchmark": "join_latency", "phases": phases}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1,10,50")
    args = parser.parse_args()
    result = asyncio.run(main([int(s) for s in args.sizes.split(",")]))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "join_latency.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
