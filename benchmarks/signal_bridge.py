"""Signal round trip and join latency: direct (one process) versus bridged through Redis.

Direct: ``trackyard dev`` (edge and node in one process, in-memory bus). Bridged: Redis, a
router, a signal edge and an SFU node as separate processes, so every signal message crosses
Redis streams twice (edge -> node, node -> edge).

* ping: a raw WebSocket client speaking protobuf sends ``ping_req`` and times the matching
  ``pong_resp`` (answered by the hosting node, so the bridged figure covers the whole path),
  one ping in flight per client; with 1 client and with several concurrently.
* join: real SDK ``connect()`` times, sequential, to a room on the node.

Prints p50/p99 per setup and the bridged/direct ratio, writes
``benchmarks/results/signal_bridge.json``. Run inside the test network namespace (the SDK
needs it): ``scripts/netns .venv/bin/python -m benchmarks.signal_bridge``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import warnings
from pathlib import Path
from typing import Any

import websockets
from jwt.warnings import InsecureKeyLengthWarning
from livekit.protocol import rtc

from benchmarks.join_latency import RESULTS, _connect, server_join_ms
from benchmarks.stats import percentiles
from tests.support.cluster import single_node_cluster
from tests.support.sdk import token
from tests.support.trackyard import TrackyardProcess

warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)  # the dev secret

CONFIG = {
    "logging": {"json": True, "level": "info"},
    "room": {"departure_timeout": 1, "empty_timeout": 5},
    "signal": {"ping_timeout": 60},
}


async def ping_client(url: str, room: str, identity: str, samples: int, warmup: int) -> list[float]:
    """Round-trip times in ms of ``samples`` pings (after ``warmup`` untimed ones)."""
    uri = f"{url}/rtc?access_token={token(identity, room)}&protocol=16&auto_subscribe=0"
    async with websockets.connect(uri, max_size=None, open_timeout=20) as ws:
        first = rtc.SignalResponse.FromString(await asyncio.wait_for(ws.recv(decode=False), 20))
        assert first.WhichOneof("message") == "join", first
        times: list[float] = []
        for i in range(1, warmup + samples + 1):
            request = rtc.SignalRequest(ping_req=rtc.Ping(timestamp=i, rtt=0))
            started = time.perf_counter()
            await ws.send(request.SerializeToString())
            while True:  # skip offers, updates and such until our pong
                raw = await asyncio.wait_for(ws.recv(decode=False), 10)
                resp = rtc.SignalResponse.FromString(raw)
                if (
                    resp.WhichOneof("message") == "pong_resp"
                    and resp.pong_resp.last_ping_timestamp == i
                ):
                    break
            if i > warmup:
                times.append((time.perf_counter() - started) * 1000)
        return times


async def ping_phase(url: str, label: str, clients: int, samples: int) -> dict[str, Any]:
    room = f"ping-{label}-{clients}-{time.monotonic_ns()}"
    results = await asyncio.gather(
        *(ping_client(url, room, f"c{i}", samples, warmup=50) for i in range(clients))
    )
    times = [t for r in results for t in r]
    # Each client's pings run back to back, so its busy time is the sum of its round trips.
    busy = max(sum(r) for r in results) / 1000
    return {
        "clients": clients,
        "samples": len(times),
        "rtt_ms": percentiles(times, (50, 90, 99), 3),
        "pings_per_sec": round(len(times) / busy, 1),
    }


async def join_phase(url: str, label: str, n: int) -> dict[str, Any]:
    room = f"join-{label}-{time.monotonic_ns()}"
    clients = []
    times = []
    failures = 0
    for i in range(n):
        try:
            client, ms = await _connect(url, f"j{i}", room)
        except Exception:
            failures += 1
            continue
        clients.append(client)
        times.append(ms)
    await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)
    return {"n": n, "failed": failures, "connect_ms": percentiles(times), "room": room}


async def measure(
    url: str, log_path: Path, label: str, samples: int, concurrency: int, joins: int
) -> dict[str, Any]:
    await ping_phase(url, f"{label}-warm", 1, 50)
    client, _ = await _connect(url, "warmup", f"warm-{label}")  # first-join costs
    await client.disconnect()
    single = await ping_phase(url, label, 1, samples)
    many = await ping_phase(url, label, concurrency, max(100, samples // concurrency))
    join = await join_phase(url, label, joins)
    log_text = await asyncio.to_thread(log_path.read_text, errors="replace")
    join["server_join_ms"] = percentiles(server_join_ms(log_text, join.pop("room")))
    out = {"ping_1_client": single, f"ping_{concurrency}_clients": many, "join": join}
    print(f"{label:>8}: {json.dumps(out)}", flush=True)
    return out


def _ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float:
    return round(b[key] / a[key], 2) if a.get(key) else float("nan")


async def main(samples: int, concurrency: int, joins: int) -> dict[str, Any]:
    with TrackyardProcess(CONFIG) as dev:
        direct = await measure(dev.ws_url, dev.log_path, "direct", samples, concurrency, joins)
    with single_node_cluster({**CONFIG, "node": {"stats_update_interval": 2.0}}) as cluster:
        edge = cluster.edges[0]
        bridged = await measure(edge.ws_url, edge.log_path, "bridged", samples, concurrency, joins)
    summary: dict[str, Any] = {}
    for phase in ("ping_1_client", f"ping_{concurrency}_clients"):
        d, b = direct[phase]["rtt_ms"], bridged[phase]["rtt_ms"]
        summary[phase] = {
            "direct_p50": d["p50"],
            "bridged_p50": b["p50"],
            "added_p50": round(b["p50"] - d["p50"], 3),
            "direct_p99": d["p99"],
            "bridged_p99": b["p99"],
            "added_p99": round(b["p99"] - d["p99"], 3),
            "ratio_p50": _ratio(d, b, "p50"),
            "ratio_p99": _ratio(d, b, "p99"),
        }
    d, b = direct["join"]["connect_ms"], bridged["join"]["connect_ms"]
    summary["join"] = {
        "direct_p50": d["p50"],
        "bridged_p50": b["p50"],
        "direct_p95": d["p95"],
        "bridged_p95": b["p95"],
    }
    for name, row in summary.items():
        print(f"{name}: {row}", flush=True)
    return {
        "benchmark": "signal_bridge",
        "direct": direct,
        "bridged": bridged,
        "summary": summary,
        "target": "bridging adds < 2 ms p99 to the 1-client ping round trip",
        "target_met": summary["ping_1_client"]["added_p99"] < 2.0,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=2000, help="pings for the 1-client phase")
    parser.add_argument("--concurrency", type=int, default=10, help="clients in the load phase")
    parser.add_argument("--joins", type=int, default=20, help="sequential SDK joins")
    args = parser.parse_args()
    result = asyncio.run(main(args.samples, args.concurrency, args.joins))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "signal_bridge.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
