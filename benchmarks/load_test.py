"""The whole server path under load: ``trackyard load-test`` against ``trackyard dev``.

Steps the number of subscribers of one room (one video publisher, 640x360 VP8 ~1.1 Mbps
pre-encoded, plus one Opus publisher) and, per step, runs the load tester for a fixed window.
Reported per step: tracks received/expected, loss, delivered packets/s, the server's CPU per
delivered packet (``trackyard dev``: edge, router and SFU node in one process; its CPU
sampled with psutil and cut to the load tester's measuring window) and the load tester's own
CPU. The result: the largest step held with < 1% loss and every track received, next to
``benchmarks/forwarding.py``'s component figure (the SFU's forwarding alone).

``--cluster`` runs the same steps against a local cluster of real processes instead
(``tests/support/cluster.py``): redis-server, one router, one signal edge and one SFU node;
the load tester connects to the edge, so every signal message is bridged through Redis. The
server CPU is then the sum over all four processes, each also reported on its own
(``cpu_by_process``). The SFU's reported load is pinned to 0 by the cluster helper's test
hook (one node: placement has no choice to make anyway).

The server and the load tester share the machine (2 cores, shared with whatever else runs):
the tester is one process, one core; when it saturates it, loss measured is the tester's.

Run: ``scripts/netns .venv/bin/python -m benchmarks.load_test [--steps 10,25,50,100]
[--seconds 15] [--cluster]`` (writes ``benchmarks/results/load_test.json``, with
``--cluster`` ``benchmarks/results/load_test_cluster.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from tests.support.cluster import single_node_cluster
from tests.support.trackyard import API_KEY, API_SECRET, TRACKYARD, TrackyardProcess

RESULTS = Path(__file__).parent / "results"
MAX_LOSS = 0.01


class CpuSampler:
    """CPU seconds of one process, sampled every 0.25 s with wall-clock times."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = self.proc.cpu_times()
            self.samples.append((time.time(), t.user + t.system))
            self._stop.wait(0.25)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def between(self, start: float, end: float) -> float:
        """CPU seconds used in [start, end] (samples nearest inside the window)."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return 0.0
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        return (c1 - c0) * (end - start) / (t1 - t0) if t1 > t0 else 0.0


def run_step(
    url: str, subscribers: int, seconds: float, samplers: dict[str, CpuSampler]
) -> dict[str, Any]:
    args = [
        TRACKYARD,
        "load-test",
        "--url",
        url,
        "--api-key",
        API_KEY,
        "--api-secret",
        API_SECRET,
        "--room",
        f"bench-{subscribers}-{time.monotonic_ns()}",
        "--video-publishers",
        "1",
        "--audio-publishers",
        "1",
        "--subscribers",
        str(subscribers),
        "--duration",
        str(seconds),
        "--join-rate",
        "20",
        "--json",
    ]
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 180)
    if not out.stdout.strip():
        raise RuntimeError(f"load-test failed ({out.returncode}): {out.stderr[-2000:]}")
    report = json.loads(out.stdout)
    window = report["window_unix"]
    span = window["end"] - window["start"]
    cpu_by_process = {
        name: sampler.between(window["start"], window["end"]) if span > 0 else 0.0
        for name, sampler in samplers.items()
    }
    server_cpu = sum(cpu_by_process.values())
    delivered = report["packets"]["received_in_window"]
    pps = delivered / span if span > 0 else 0.0
    return {
        "subscribers": subscribers,
        "exit": out.returncode,
        "tracks": f"{report['tracks']['received']}/{report['tracks']['expected']}",
        "all_tracks": report["tracks"]["received"] == report["tracks"]["expected"],
        "loss": report["packets"]["loss"],
        "errors": report["errors"],
        "window_s": round(span, 2),
        "delivered_pps": round(pps),
        "bitrate_mbps": round(report["bitrate_bps"]["total_received"] / 1e6, 2),
        "server_cpu_share": round(server_cpu / span, 3) if span > 0 else None,
        "server_us_per_delivered_packet": round(server_cpu / delivered * 1e6, 1)
        if delivered
        else None,
        "cpu_by_process": {
            name: {
                "cpu_share": round(cpu / span, 3) if span > 0 else None,
                "us_per_delivered_packet": round(cpu / delivered * 1e6, 1) if delivered else None,
            }
            for name, cpu in cpu_by_process.items()
        }
        if len(cpu_by_process) > 1
        else None,
        "tester_cpu_share": round(report["tester_cpu_s"] / max(report["duration_s"], 1e-6), 3),
        "join_latency_ms": report["join_latency_ms"],
        "time_to_first_packet_ms": report["time_to_first_packet_ms"],
    }


@contextlib.contextmanager
def dev_server(config: dict[str, Any]) -> Iterator[tuple[str, dict[str, int]]]:
    """``trackyard dev``: (its WebSocket URL, {"dev": pid})."""
    with TrackyardProcess(config) as server:
        assert server.proc is not None
        yield server.ws_url, {"dev": server.proc.pid}


@contextlib.contextmanager
def cluster_server(config: dict[str, Any]) -> Iterator[tuple[str, dict[str, int]]]:
    """Redis, 1 router, 1 edge, 1 SFU node: (the edge's WebSocket URL, pids by role)."""
    with single_node_cluster({**config, "node": {"stats_update_interval": 2.0}}) as cluster:
        pids = {
            "sfu": cluster.sfus[0].proc,
            "edge": cluster.edges[0].proc,
            "router": cluster.routers[0].proc,
            "redis": cluster.redis.proc,
        }
        yield cluster.edges[0].ws_url, {k: p.pid for k, p in pids.items() if p is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="10,25,50,100")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="redis-server + router + edge + SFU node as processes, tester on the edge",
    )
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",") if s]
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    config = {"room": {"departure_timeout": 1, "empty_timeout": 3}, "logging": {"level": "warn"}}
    server = cluster_server(config) if args.cluster else dev_server(config)
    with server as (url, pids), contextlib.ExitStack() as stack:
        samplers = {name: stack.enter_context(CpuSampler(pid)) for name, pid in pids.items()}
        for n in steps:
            step = run_step(url, n, args.seconds, samplers)
            results.append(step)
            by_process = step["cpu_by_process"] or {}
            parts = " ".join(f"{k} {v['cpu_share']:.0%}" for k, v in by_process.items())
            print(
                f"subs={n:<4} tracks {step['tracks']:<8} loss {step['loss']:.3%}  "
                f"{step['delivered_pps']:>6} pkt/s  {step['bitrate_mbps']:>6} Mbps  "
                f"server cpu {step['server_cpu_share']:.0%} "
                f"{step['server_us_per_delivered_packet']} us/pkt {f'({parts}) ' if parts else ''} "
                f"tester cpu {step['tester_cpu_share']:.0%}  "
                f"join p50/p99 {step['join_latency_ms']['p50']}/"
                f"{step['join_latency_ms']['p99']} ms  errors {step['errors']}",
                flush=True,
            )
            if step["loss"] >= MAX_LOSS * 5 or not step["all_tracks"]:
                break  # well past the limit: larger steps tell nothing new
    held = [s for s in results if s["loss"] < MAX_LOSS and s["all_tracks"] and not s["errors"]]
    best = max(held, key=lambda s: s["subscribers"]) if held else None
    summary = {
        "benchmark": "load_test_cluster" if args.cluster else "load_test",
        "server": "redis-server + router + signal edge + SFU node, tester on the edge"
        if args.cluster
        else "trackyard dev (one process)",
        "machine": {"cpus": psutil.cpu_count(), "note": "server and tester share the cores"},
        "publishers": {"video": "1 (VP8 640x360 pre-encoded)", "audio": "1 (Opus)"},
        "seconds_per_step": args.seconds,
        "steps": results,
        "largest_held_under_1pct_loss": best,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("load_test_cluster.json" if args.cluster else "load_test.json")
    path.write_text(json.dumps(summary, indent=2))
    if best:
        print(
            f"largest held (<1% loss, all tracks): {best['subscribers']} subscribers, "
            f"{best['delivered_pps']} pkt/s delivered, "
            f"{best['server_us_per_delivered_packet']} us server CPU per delivered packet"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
