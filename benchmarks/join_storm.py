"""Join and departure storms: N participants join one room at once, then all leave at once.

What it measures is the cost of telling everyone about everyone: each join, state change and
leave is a participant update to every other client, bridged from the SFU node through Redis
and the signal edge. Past a budget of client messages a second (``room.participant_update_rate``)
a room batches those of participants that publish nothing (``sfu/updates.py``); this benchmark
runs the same storm with batching off (``--intervals 0``: ``participant_update_interval: 0``,
every update at once, as Trackyard did before) and on (``3``: the defaults, 1000 messages/s and
3 s batches), alternating phase by phase so both meet the same minutes of the machine.

Per phase: a fresh cluster of real processes (redis-server, router, signal edge, SFU node;
``tests/support/cluster.py``) and N load-test participants (``trackyard.loadtest.client``:
LiveKit signalling and aiortc peer connections, subscribers that publish nothing) in this
process, joining with at most ``--concurrency`` joins in flight. Reported:

- ``full_view_s``: from the first join until every participant's updates show every other one
  ACTIVE (what a user waits for to see the whole room);
- ``update_messages``: ``participant_update`` messages the clients received in all;
- server CPU seconds per process (psutil, user + system) over the join storm (first join to full
  view) and over the departure window (``--leave-seconds`` from the moment all leave);
- failures: joins that failed, sessions the server ended.

Run: ``flock /tmp/bench.lock scripts/netns .venv/bin/python -m benchmarks.join_storm
[--sizes 100,200] [--rounds 2] [--intervals 0,3]`` (writes
``benchmarks/results/join-storm.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.stats import percentiles
from tests.support.cluster import single_node_cluster
from tests.support.sdk import token
from trackyard.loadtest.client import JoinError, Tester

RESULTS = Path(__file__).parent / "results"


async def _sees_everyone(tester: Tester, others: int) -> None:
    while tester.sees_active() < others:
        tester.others_changed.clear()
        await tester.others_changed.wait()


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, proc in procs.items():
        t = proc.cpu_times()
        out[name] = t.user + t.system
    return out


def used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    out = {name: round(after[name] - before[name], 2) for name in before}
    out["server"] = round(sum(out.values()), 2)
    return out


async def storm(
    url: str,
    n: int,
    procs: dict[str, psutil.Process],
    *,
    concurrency: int,
    timeout: float,
    leave_seconds: float,
) -> dict[str, Any]:
    room = f"storm-{n}-{time.monotonic_ns()}"
    testers = [Tester(f"p{i}", url, token(f"p{i}", room), room, subscribe=True) for i in range(n)]
    gate = asyncio.Semaphore(concurrency)

    async def join(tester: Tester) -> None:
        async with gate:
            await tester.run_join(timeout=60)

    started = time.time()
    cpu_start = cpu_seconds(procs)
    outcomes = await asyncio.gather(*(join(t) for t in testers), return_exceptions=True)
    failed = [f"{t.name}: {o}" for t, o in zip(testers, outcomes, strict=True) if o is not None]
    joined = [t for t, o in zip(testers, outcomes, strict=True) if o is None]
    joined_at = time.time()
    full_at: float | None = None
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(_sees_everyone(t, len(joined) - 1) for t in joined)), timeout
        )
        full_at = time.time()
    cpu_full = cpu_seconds(procs)
    ended = [t.name for t in joined if t.left.is_set()]
    updates = sum(t.update_messages for t in testers)
    latencies = [t.join_latency * 1000 for t in joined if t.join_latency is not None]
    leave_at = time.time()
    cpu_leave = cpu_seconds(procs)
    await asyncio.gather(*(t.close() for t in testers))
    await asyncio.sleep(max(0.0, leave_at + leave_seconds - time.time()))
    cpu_end = cpu_seconds(procs)
    return {
        "n": n,
        "joined": len(joined),
        "join_failures": failed[:10],
        "join_failure_count": len(failed),
        "sessions_ended_by_server": len(ended),
        "all_joined_s": round(joined_at - started, 2),
        "full_view_s": round(full_at - started, 2) if full_at is not None else None,
        "update_messages": updates,
        "update_messages_per_participant": round(updates / max(n, 1), 1),
        "join_latency_ms": percentiles(latencies),
        "server_cpu_s": {"join": used(cpu_start, cpu_full), "leave": used(cpu_leave, cpu_end)},
    }


def run_phase(interval: float, n: int, args: argparse.Namespace) -> dict[str, Any]:
    config = {
        "room": {
            "participant_update_interval": interval,
            "departure_timeout": 1,
            "empty_timeout": 3,
        },
        "logging": {"level": "warn"},
        "node": {"stats_update_interval": 2.0},
    }
    with single_node_cluster(config) as cluster:
        roles = {
            "sfu": cluster.sfus[0].proc,
            "edge": cluster.edges[0].proc,
            "router": cluster.routers[0].proc,
            "redis": cluster.redis.proc,
        }
        procs = {name: psutil.Process(p.pid) for name, p in roles.items() if p is not None}
        me = psutil.Process()
        before = me.cpu_times()
        result = asyncio.run(
            storm(
                cluster.edges[0].ws_url,
                n,
                procs,
                concurrency=args.concurrency,
                timeout=args.timeout,
                leave_seconds=args.leave_seconds,
            )
        )
        after = me.cpu_times()
    result["client_cpu_s"] = round((after.user + after.system) - (before.user + before.system), 1)
    result["participant_update_interval"] = interval
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,200")
    parser.add_argument("--intervals", default="0,3", help="participant_update_interval values")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=50, help="joins in flight at most")
    parser.add_argument("--timeout", type=float, default=120.0, help="wait for the full view")
    parser.add_argument("--leave-seconds", type=float, default=8.0)
    parser.add_argument("--out", default=str(RESULTS / "join-storm.json"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    intervals = [float(s) for s in args.intervals.split(",") if s]
    phases: list[dict[str, Any]] = []
    for round_ in range(1, args.rounds + 1):
        for n in sizes:
            for interval in intervals:
                try:
                    phase = run_phase(interval, n, args)
                except (JoinError, RuntimeError) as exc:
                    phase = {"n": n, "participant_update_interval": interval, "error": str(exc)}
                phase["round"] = round_
                phases.append(phase)
                cpu = phase.get("server_cpu_s", {})
                print(
                    f"round {round_} n={n:<4} interval={interval:g}s "
                    f"joined {phase.get('joined')} full view {phase.get('full_view_s')} s "
                    f"updates {phase.get('update_messages')} "
                    f"server cpu join {cpu.get('join')} leave {cpu.get('leave')} "
                    f"ended {phase.get('sessions_ended_by_server')} "
                    f"failures {phase.get('join_failure_count')}",
                    flush=True,
                )
    RESULTS.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "phases": phases}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
