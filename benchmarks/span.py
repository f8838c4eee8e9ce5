"""One room spread over K SFU worker processes: how far it grows, and what the relay hop costs.

Every phase runs against a real cluster started for it, all as processes on this host:
redis-server (started once), one router, one signal edge (``tests/support/cluster.py``) and
``trackyard sfu --workers K`` (a supervisor and K worker processes, each its own node of
region us-east). The config's ``span`` section spreads the room: ``span.node_participants``
(a node takes at most that many of one room's participants, then the room extends to another
node) is ``ceil((N+1)/K)`` for one publisher and N subscribers, so with the publisher joining
first the publisher's worker (the room's home) gets ``ceil((N+1)/K)`` participants and the
others the rest; the other workers receive the track once each over the relay and fan it out.
The node records' CPU figures are pinned to 0 (the cluster helper's ``TRACKYARD_TEST_LOAD_FILE``
hook, as the cluster tests do), so the placement follows ``node_participants`` alone and not the
load of whatever else runs on the machine. A new cluster per phase, since the spread changes
with N.

The clients live in one separate process (``benchmarks/forwarding.py``'s client process, with
LiveKit participants added): a publisher and N subscribers are ``trackyard.loadtest.client``
participants joining through the edge with the LiveKit signal protocol (v0, two peer
connections, aiortc). The publisher replays ``forwarding.encode_stream``'s pre-encoded VP8
loop (640x360, ~1 Mbps, 30 fps, a keyframe every 2 s) and logs each packet's send time; each
subscriber counts RTP as it comes off its socket without SRTP or decoding
(``forwarding.SubscriberCounter``). Latency and loss are ``forwarding``'s: packets matched by
RTP timestamp and sequence number (the SFU keeps the publisher's timestamps and shifts
sequence numbers by a constant, across the relay too), publisher and subscribers on one
monotonic clock. Server CPU is user + system of the K worker processes (psutil, from their
pids, all threads) over the measuring window, per delivered packet; the edge's, router's and
Redis's are reported on their own (``cpu_by_process``) and not in that figure. The client
process's CPU is printed too: clients and servers share this machine's 2 cores, so at large N
the client process can be what saturates (read ``client_process_cpu_utilization`` first).
A packet's arrival is its subscriber socket's kernel receive timestamp (``--arrival kernel``,
the default: ``SO_TIMESTAMPNS``, taken as the SFU's send reaches the socket), not when the
client process reads it, and the sockets are read by a C thread
(``trackyard.loadtest.rtpcount``), not by Python. That process reads every copy of a keyframe
burst (about 22 x N packets) on the same 2 cores as the workers: read in Python (``--arrival
read``), it lags behind while it does, that lag counts as the SFU's latency, and its CPU
(several us a packet) is taken from the workers. Sends are still timed in the process, so its
own pauses show: it collects and freezes its objects once the subscribers joined (a full GC pass
over ~200 peer connections took 140-300 ms), and each phase reports its GC pauses and event-loop
stalls over 20 ms (``client_gc_pauses_ms``, ``client_loop_stalls_ms``) and the workers' logged
warnings (``worker_warnings``: a room part judged dead, a long GC pass).

(a) Saturation, per K in ``--ks``: N grows through ``--saturate-sizes`` until a phase fails
``forwarding.holds`` (loss >= 1% of the packets owed to the subscribers, or p99 latency over
50 ms); reported per K: the largest N held and its delivered packets/s, and K=2's over K=1's
(the same run). ``--rounds R`` repeats that R times, the Ks interleaved (round 1: K=1 then K=2,
round 2: ...), and reports each round's ratio and their median: on this shared machine the same
phase moves by a size step from one run to the next. ``--paired`` interleaves them closer: within
a round the Ks' searches alternate phase by phase (K=1's first N, K=2's first N, ...).
``--saturate-sizes`` takes one list for every K or one per K (``1:224,256;2:384,448``), so each K
starts near its limit.

(b) The relay hop (K=2, ``--hop-rounds`` rounds of two phases, each ``--hop-seconds``): the
publisher and two subscribers join one by one.
- "relay" phase: ``node_participants`` 2, so the publisher and subscriber 0 are on the home
  worker and subscriber 1 on the other one, behind the relay. Latency p50/p99 of each
  subscriber in the same window; the difference is the hop.
- "local" phase: ``node_participants`` 3, everyone on the home worker; the other worker idles.
CPU per relayed packet (one copy of each published packet crosses). The home worker sends two
copies in both phases (to two subscribers, or to a subscriber and the relay), so what the hop
adds is the remote worker receiving the track and sending it once more, to its subscriber.
Measured two ways, over the relayed packets/s: (1) the remote worker's CPU rate in "relay"
minus its idle rate in "local"; (2) all workers' CPU rate in "relay" minus in "local" (the
same, plus any difference on the home worker between feeding the relay and feeding a
subscriber). Both include the remote part's fixed costs (RTCP, timers, its second peer
connection) spread over the one stream's ~110 packets/s: compare with the saturation phases'
CPU per delivered packet, which spreads the fixed costs over many copies.
Both noisy on a shared machine: more rounds average them.

Run: ``scripts/netns .venv/bin/python -m benchmarks.span [--ks 1,2] [--saturate-sizes
16,32,64,...] [--seconds 8] [--hop-seconds 15] [--hop-rounds 2] [--out PATH]`` (the netns: the
SDK-style clients and the nodes talk over its veth address, see DESIGN §2); writes
``benchmarks/results/span.json`` (or ``--out``). To look at one phase: ``--ks 2
--saturate-sizes 192 --hop-rounds 0 --dump DIR`` writes each phase's raw send and arrival
times (relative to the window's start), where each subscriber landed, and the workers' log
(``--log-level info`` for more of it) to DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.forwarding import (
    ARRIVAL_HELP,
    ARRIVALS,
    BITRATE,
    FPS,
    HEIGHT,
    KEYFRAME_INTERVAL,
    WIDTH,
    Clients,
    ClientSide,
    Setup,
    SubscriberCounter,
    Sweep,
    client_main,
    grow_until_broken,
    measure,
    print_phase,
    print_table,
)
from tests.support.cluster import Cluster, eventually
from tests.support.ports import free_port
from tests.support.redisserver import RedisServer
from tests.support.trackyard import API_KEY, API_SECRET, TrackyardProcess
from trackyard.core.auth import VideoGrants, create_token
from trackyard.loadtest.client import JoinError, PublishSpec, Tester
from trackyard.loadtest.rtpcount import Counter

RESULTS = Path(__file__).parent / "results"
SATURATE_SIZES = "16,32,64,128,192,256,320,384,448,512,640,768"
JOIN_CONCURRENCY = 8  # joins in flight through the edge
JOIN_TIMEOUT = 30.0
# The join storm's aftermath: at N=384 over K=2 the home worker was still ~1.2 s behind when
# the last subscriber received (every join is a participant update for hundreds of others)
WARMUP = 5.0
RTC_PORTS = (50000, 59999)  # the supervisor cuts it in K slices
START_TIMEOUT = 60.0
DRAIN_WAIT = 10.0  # a drained worker with no participants exits at once; then a second signal
HOST_ID = "bench-host"
SHARED_CORES = "clients and servers share this machine's cores"


# --- the client process: LiveKit participants over the edge ----------------------------------


def _token(identity: str, room: str, *, publish: bool) -> str:
    grants = VideoGrants(room_join=True, room=room, can_publish=publish, can_subscribe=not publish)
    return create_token(API_KEY, API_SECRET, identity=identity, name=identity, grants=grants)


class CountingSubscriber(Tester):
    """A LiveKit subscriber whose connection counts RTP as ``forwarding``'s subscribers do
    (arrival time, RTP timestamp, sequence number), for latency matching."""

    def __init__(self, name: str, url: str, room: str, counter: Counter | None) -> None:
        super().__init__(name, url, _token(name, room, publish=False), room, subscribe=True)
        self.counter = SubscriberCounter(counter)

    def _hook_sockets(self, pc: Any) -> None:
        # called after every offer: the counter adds the new payload types, wraps new sockets
        self.counter.hook(pc)


def _node_of(tester: Tester) -> str:
    """The node the participant joined: its JoinResponse's ``server_info.node_id``."""
    return tester.join.server_info.node_id if tester.join is not None else ""


STALL_MS = 20.0  # a client-process GC pass or event-loop lag this long is reported
LAG_TICK = 0.005  # seconds between the client process's event-loop lag probes


class ClientStalls:
    """When the client process itself stops: its GC passes and its event loop's lag.

    Every send and arrival is timed in this one process, so a pause here (a full GC pass
    over a few hundred peer connections' objects) shows as latency of every packet in
    flight, whatever the SFU did. Reported with each phase so such a pause is told apart
    from the servers'."""

    def __init__(self) -> None:
        self.gc: list[tuple[float, float, int]] = []  # (start, ms, generation)
        self.lag: list[tuple[float, float]] = []  # (start, ms)
        self._gc_start = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            gc.callbacks.append(self._on_gc)
            self._task = asyncio.ensure_future(self._probe())

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.monotonic()
        if phase == "start":
            self._gc_start = now
        elif (now - self._gc_start) * 1000 >= STALL_MS:
            self.gc.append((self._gc_start, (now - self._gc_start) * 1000, info["generation"]))

    async def _probe(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_TICK)
            late = (time.monotonic() - before - LAG_TICK) * 1000
            if late >= STALL_MS:
                self.lag.append((before, late))

    def within(self, t0: float, t1: float) -> dict[str, Any]:
        gcs = [(ms, gen) for t, ms, gen in self.gc if t0 <= t <= t1]
        lags = [ms for t, ms in self.lag if t0 <= t <= t1]
        return {
            "client_gc_pauses_ms": [[round(ms, 1), gen] for ms, gen in gcs],
            "client_loop_stalls_ms": [round(ms, 1) for ms in lags],
        }


class SpanClientSide(ClientSide):
    """``forwarding``'s client side (send log, counters, stats) with LiveKit participants."""

    def __init__(self) -> None:
        super().__init__()
        self.testers: list[Tester] = []
        self.per_subscriber = False
        self.window = (0.0, 0.0)  # the last measuring window (``op_stats``)
        self.stalls = ClientStalls()

    async def op_publisher(self, url: str, room: str) -> str:
        """Join and publish the stream; returns the node joined."""
        self.stalls.start()
        spec = PublishSpec("video", self.frames, FPS, "vp8", WIDTH, HEIGHT, BITRATE)
        tester = Tester(
            "publisher", url, _token("publisher", room, publish=True), room, publish=spec
        )
        self.testers.append(tester)
        await tester.run_join(JOIN_TIMEOUT)
        if tester.publisher_pc is None or tester.track is None:
            raise RuntimeError("the publisher joined without a publisher connection")
        self.track = tester.track
        self._stamp_sends(tester.publisher_pc)
        return _node_of(tester)

    async def op_subscribers(
        self, url: str, room: str, count: int, concurrency: int, per_subscriber: bool = False
    ) -> list[str]:
        """Join ``count`` subscribers, ``concurrency`` at a time (1: in order); returns the
        node each joined, or ``error: ...``."""
        self.per_subscriber = per_subscriber
        counter = self.subscriber_counter()
        subs = [CountingSubscriber(f"sub-{i}", url, room, counter) for i in range(count)]
        self.testers += subs
        for i, sub in enumerate(subs):
            self.subs[i] = sub.counter
        limit = asyncio.Semaphore(concurrency)

        async def one(sub: CountingSubscriber) -> str:
            async with limit:
                try:
                    await sub.run_join(JOIN_TIMEOUT)
                except JoinError as exc:
                    return f"error: {exc.reason}"
                return _node_of(sub)

        joined = list(await asyncio.gather(*(one(s) for s in subs)))
        # Every packet is timed in this process: a full GC pass over the few hundred peer
        # connections built so far stops it for 150-300 ms (at N=192), which every packet in
        # flight then shows as latency. Collect now and keep what exists out of later passes.
        gc.collect()
        gc.freeze()
        return joined

    async def op_stats(self, t0: float, t1: float) -> dict[str, Any]:
        """``forwarding``'s stats, plus each subscriber's own when asked (the hop phases)."""
        stats = await super().op_stats(t0, t1)
        self.window = (t0, t1)
        stats.update(self.stalls.within(t0, t1))
        if self.per_subscriber:
            subs = self.subs
            each = []
            try:
                for index in sorted(subs):
                    self.subs = {index: subs[index]}
                    one = await super().op_stats(t0, t1)
                    each.append(
                        {
                            key: one[key]
                            for key in ("delivered", "matched", "lost_total", "latency_ms")
                        }
                    )
            finally:
                self.subs = subs
            stats["per_subscriber"] = each
        return stats

    async def op_dump(self, path: str) -> None:
        """Write the raw send log and each subscriber's arrivals around the last measuring
        window [t0, t1] to ``path`` (JSON; times relative to t0), for looking at single
        stalls (``--dump``)."""
        self.collect()
        t0, t1 = self.window
        lo, hi = t0 - 1.0, t1 + 2.0
        data = {
            "t0": t0,
            "t1": t1,
            "sent": [[t - t0, ts, seq, key] for t, ts, seq, key, _ in self.sent if lo <= t <= hi],
            "subscribers": {
                str(i): [[t - t0, ts, seq] for t, ts, seq, _ in c.arrivals if lo <= t <= hi]
                for i, c in self.subs.items()
            },
        }
        await asyncio.to_thread(Path(path).write_text, json.dumps(data))

    async def op_reset(self) -> None:
        self.stop_counting()
        testers, self.testers = self.testers, []
        await asyncio.gather(*(t.close() for t in testers), return_exceptions=True)
        self.per_subscriber = False
        gc.unfreeze()  # the phase's connections are garbage now
        await super().op_reset()


# --- the driver: cluster, workers, phases ----------------------------------------------------


def _node_record(port: int) -> dict[str, Any] | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/node", timeout=2)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


@dataclass
class Workers:
    """``trackyard sfu --workers K`` and what it runs."""

    proc: TrackyardProcess
    k: int
    node_ids: list[str] = field(default_factory=list)  # by worker index
    pids: list[int] = field(default_factory=list)


def _worker_pid(supervisor: TrackyardProcess, index: int, k: int) -> int | None:
    assert supervisor.proc is not None
    if k == 1:  # ``--workers 1`` is the node itself, no supervisor
        return supervisor.proc.pid
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(supervisor.proc.pid).children():
            if f"{index}/{k}" in child.cmdline():
                return int(child.pid)
    return None


def _free_port_run(k: int) -> int:
    """A first port of ``k`` consecutive free ones (worker i serves on first + i), below the
    ephemeral range: one from ``free_port`` alone may have its neighbour taken by one of the
    client process's hundreds of connections, and the worker then never serves."""
    for _ in range(100):
        first = free_port() if k == 1 else random.randrange(20000, 30000)
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + k):
                    sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return first
    raise RuntimeError(f"no {k} consecutive free ports")


async def start_workers(cluster: Cluster, k: int) -> Workers:
    api_port = _free_port_run(k)
    cfg = cluster.base_config()
    cfg["region"] = "us-east"
    cfg["node"] = {**cfg["node"], "api_port": api_port, "workers": k, "host_id": HOST_ID}
    cfg["rtc"] = {"port_range_start": RTC_PORTS[0], "port_range_end": RTC_PORTS[1]}
    load_file = cluster.load_file(0)
    load_file.write_text(json.dumps({"cpu_load": 0.0, "sysload": 0.0}))
    proc = TrackyardProcess(
        cfg, command="sfu", ready_port=api_port, env={"TRACKYARD_TEST_LOAD_FILE": str(load_file)}
    )
    await asyncio.to_thread(proc.start, START_TIMEOUT)
    workers = Workers(proc, k)
    ports = [api_port + i for i in range(k)]

    def serving() -> list[dict[str, Any]] | None:
        records = [_node_record(p) for p in ports]
        if any(r is None or r.get("state") != "SERVING" for r in records):
            return None
        ids = [r["id"] for r in records if r is not None]
        # in the registry the router reads, not only on their own endpoints
        if any(cluster.stored_record(i) is None for i in ids):
            return None
        return [r for r in records if r is not None]

    try:
        try:
            records = await eventually(serving, timeout=START_TIMEOUT, what=f"{k} workers serving")
        except AssertionError as exc:
            states = [(p, (_node_record(p) or {}).get("state")) for p in ports]
            log_tail = proc.logs()[-1500:]
            raise RuntimeError(f"{exc}; api ports, states {states}; log: {log_tail}") from exc
        workers.node_ids = [r["id"] for r in records]
        pids = [_worker_pid(proc, i, k) for i in range(k)]
        if None in pids:
            raise RuntimeError(f"worker pids not found: {pids}")
        workers.pids = [p for p in pids if p is not None]
    except BaseException:
        proc.stop()
        raise
    return workers


async def stop_workers(cluster: Cluster, workers: Workers) -> None:
    """Drain (SIGTERM: with no participants left a worker exits at once), force after
    ``DRAIN_WAIT``, and wait until the nodes left the registry, so the next phase's router
    cannot pick a node of this one."""
    proc = workers.proc
    if proc.alive():
        proc.signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, DRAIN_WAIT)
        except subprocess.TimeoutExpired:
            proc.signal(signal.SIGTERM)  # the second signal: exit at once
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, 5)
    proc.stop()
    await eventually(
        lambda: all(cluster.stored_record(i) is None for i in workers.node_ids),
        timeout=30,
        what="the workers' records gone",
    )


class CpuMeter:
    """CPU seconds (user + system) of the workers and of the rest of the server, snapshotted
    at each call; called at the start and end of a window by ``forwarding.measure``."""

    def __init__(self, workers: dict[str, int], others: dict[str, int]) -> None:
        self.workers = {name: psutil.Process(pid) for name, pid in workers.items()}
        self.others = {name: psutil.Process(pid) for name, pid in others.items()}
        self.snapshots: list[tuple[float, dict[str, tuple[float, float]]]] = []

    def __call__(self) -> tuple[float, float]:
        snap: dict[str, tuple[float, float]] = {}
        for name, proc in {**self.workers, **self.others}.items():
            try:
                times = proc.cpu_times()
                snap[name] = (times.user, times.system)
            except psutil.Error:
                snap[name] = (0.0, 0.0)
        self.snapshots.append((time.monotonic(), snap))
        return (
            sum(snap[name][0] for name in self.workers),
            sum(snap[name][1] for name in self.workers),
        )

    def window(self) -> dict[str, Any]:
        """Each process's share of a core between the last two snapshots."""
        (t0, first), (t1, last) = self.snapshots[-2], self.snapshots[-1]
        wall = t1 - t0
        return {
            "cpu_by_process": {
                name: round((sum(last[name]) - sum(first[name])) / wall, 3) for name in last
            }
        }


def _warnings(log_path: Path) -> dict[str, int]:
    """The workers' warnings and errors so far, by event (JSON log lines): a phase that
    fails on latency or loss may show why here (a room part judged dead, a relay closed)."""
    counts: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                entry = json.loads(line)
                if entry.get("level") in ("warning", "error", "critical"):
                    key = f"{entry['level']}: {entry.get('event', '')}"
                    counts[key] = counts.get(key, 0) + 1
    return counts


@dataclass
class Bench:
    redis: RedisServer
    workdir: Path
    clients: Clients
    dump: Path | None = None  # where ``--dump`` writes each phase's raw arrivals and logs
    log_level: str = "warn"  # the servers'
    warmup: float = WARMUP  # seconds of media between the last subscriber receiving and a window


def _placement(k: int, node_ids: list[str], joined: list[str]) -> dict[str, Any]:
    """Where the participants landed: per worker, the publisher and the subscribers."""
    index = {node: i for i, node in enumerate(node_ids)}
    publisher = index.get(joined[0], -1)
    subscribers = [0] * k
    for node in joined[1:]:
        if node in index:
            subscribers[index[node]] += 1
    return {
        "publisher_worker": publisher,
        "subscribers_by_worker": subscribers,
        "subscriber_workers": [index.get(node, -1) for node in joined[1:]],
    }


def _check_spread(placement: dict[str, Any], spread: int, in_order: bool) -> str:
    """Why the participants' placement is not a spread over the workers, or "" (the hop
    phases, ``in_order``, check their own layout). A worker holding more than
    ``node_participants`` (concurrent joins seated past the cap) is noted in the placement
    and printed, not failed: the room is still spread."""
    per_worker = list(placement["subscribers_by_worker"])
    home = placement["publisher_worker"]
    if home < 0 or -1 in placement["subscriber_workers"]:
        return f"a participant joined a node that is not a worker: {placement}"
    per_worker[home] += 1
    placement["over_node_participants"] = max(0, max(per_worker) - spread)
    if not in_order and 0 in per_worker:
        return f"a worker holds no participant: {placement}"
    return ""


async def run_phase(
    bench: Bench,
    k: int,
    n: int,
    seconds: float,
    *,
    node_participants: int | None = None,
    in_order: bool = False,
) -> dict[str, Any]:
    """One phase on a fresh cluster; a failure is recorded (and printed) rather than ending
    the run. ``in_order``: subscribers join one by one and are measured each on their own."""
    started = time.monotonic()
    spread = node_participants or math.ceil((n + 1) / k)
    result: dict[str, Any] = {"n": n}
    overrides = {
        "logging": {"json": True, "level": bench.log_level},
        "room": {"departure_timeout": 1, "empty_timeout": 5},
        "span": {"enabled": True, "node_participants": spread},
    }
    cluster = Cluster(
        redis=bench.redis,
        workdir=bench.workdir,
        sfu_regions=[],
        edge_regions=["us-east"],
        routers_count=1,
        overrides=overrides,
    )
    workers: Workers | None = None
    try:
        await asyncio.to_thread(cluster.start)
        workers = await start_workers(cluster, k)
        url = cluster.edges[0].ws_url
        room = f"span-k{k}-n{n}-{time.monotonic_ns()}"
        joined = [await bench.clients.call("publisher", url=url, room=room)]
        joined += await bench.clients.call(
            "subscribers",
            timeout=60 + n * JOIN_TIMEOUT / JOIN_CONCURRENCY,
            url=url,
            room=room,
            count=n,
            concurrency=1 if in_order else JOIN_CONCURRENCY,
            per_subscriber=in_order,
        )
        failed = [j for j in joined if j.startswith("error")]
        if failed:
            raise RuntimeError(f"{len(failed)}/{n + 1} joins failed, first: {failed[0]}")
        placement = _placement(k, workers.node_ids, joined)
        spread_error = _check_spread(placement, spread, in_order)
        if spread_error:
            raise RuntimeError(spread_error)
        others = {
            "edge": cluster.edges[0].proc,
            "router": cluster.routers[0].proc,
            "redis": bench.redis.proc,
        }
        meter = CpuMeter(
            {f"worker{i}": pid for i, pid in enumerate(workers.pids)},
            {name: p.pid for name, p in others.items() if p is not None},
        )
        setup = Setup([], cpu=meter, extra=meter.window)
        result.update(await measure(bench.clients, setup, n, seconds, warmup=bench.warmup))
        result["placement"] = placement
        result["worker_warnings"] = _warnings(workers.proc.log_path)
        if bench.dump is not None:
            bench.dump.mkdir(parents=True, exist_ok=True)
            path = bench.dump / f"k{k}-n{n}-{int(time.time())}.json"
            await bench.clients.call("dump", path=str(path))
            placed = {"placement": placement, "node_ids": workers.node_ids}
            path.with_suffix(".placement.json").write_text(json.dumps(placed))
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if bench.dump is not None and workers is not None:
            bench.dump.mkdir(parents=True, exist_ok=True)
            log_copy = bench.dump / f"k{k}-n{n}-{int(time.time())}.workers.log"
            with contextlib.suppress(OSError):
                log_copy.write_bytes(workers.proc.log_path.read_bytes())
        try:
            await bench.clients.call("reset")
            if workers is not None:
                await stop_workers(cluster, workers)
        except Exception as exc:
            result["error"] = result.get("error") or f"teardown: {type(exc).__name__}: {exc}"
        finally:
            if workers is not None:
                workers.proc.stop()
            await asyncio.to_thread(cluster.stop)
    result.update({"mode": f"K={k}", "k": k, "node_participants": spread})
    result["phase_s"] = round(time.monotonic() - started, 1)
    return result


def print_span_phase(r: dict[str, Any]) -> None:
    print_phase(r)
    if "placement" in r:
        cpu = r.get("cpu_by_process", {})
        print(
            f"        publisher on worker {r['placement']['publisher_worker']},"
            f" subscribers by worker {r['placement']['subscribers_by_worker']}"
            f"{' (OVER node_participants)' if r['placement']['over_node_participants'] else ''};"
            " cpu " + " ".join(f"{name} {share * 100:.0f}%" for name, share in cpu.items()),
            flush=True,
        )
    if r.get("worker_warnings"):
        print(f"        worker warnings: {r['worker_warnings']}", flush=True)
    if r.get("client_gc_pauses_ms") or r.get("client_loop_stalls_ms"):
        print(
            f"        client process: GC pauses (ms, generation) {r['client_gc_pauses_ms']},"
            f" event-loop stalls (ms) {r['client_loop_stalls_ms']}",
            flush=True,
        )


async def saturate(bench: Bench, k: int, sizes: list[int], seconds: float) -> dict[str, Any]:
    """Grow N until a phase fails ``forwarding.holds``."""

    async def phase(n: int) -> dict[str, Any]:
        return await run_phase(bench, k, n, seconds)

    return await grow_until_broken(
        sizes, phase, print_span_phase, at_max=("client_process_cpu_utilization",)
    )


async def saturate_paired(
    bench: Bench, ks: list[int], sizes: dict[int, list[int]], seconds: float
) -> dict[str, dict[str, Any]]:
    """The Ks' searches phase by phase in turn (K=1's first N, K=2's first N, K=1's second N,
    ...), each stopping at its own first failure: both Ks meet the same minutes of the
    machine, where ``saturate`` one after the other lets a drift land on one K only."""
    sweeps = {k: Sweep(sizes_for(sizes, k)) for k in ks}
    while any(not sweep.done for sweep in sweeps.values()):
        for k, sweep in sweeps.items():
            n = sweep.next_n()
            if n is not None:
                r = await run_phase(bench, k, n, seconds)
                sweep.record(r)
                print_span_phase(r)
    at_max = ("client_process_cpu_utilization",)
    return {str(k): sweep.result(at_max) for k, sweep in sweeps.items()}


def _worker_cpu(r: dict[str, Any], worker: int) -> float:
    return float(r["cpu_by_process"][f"worker{worker}"])


def hop_figures(local: dict[str, Any], relay: dict[str, Any]) -> dict[str, Any]:
    """One round's hop figures from its "local" and "relay" phases (see the docstring)."""
    where = relay["placement"]
    home = where["publisher_worker"]
    if (
        sorted(where["subscriber_workers"]) != sorted([home, 1 - home])
        or where["subscriber_workers"][0] != home
    ):
        raise RuntimeError(f"relay phase placed {where}, wanted subscriber 1 behind the relay")
    local_home = local["placement"]["publisher_worker"]
    if local["placement"]["subscribers_by_worker"][local_home] != 2:
        raise RuntimeError(f"local phase placed {local['placement']}, wanted all on one worker")
    near, far = relay["per_subscriber"]
    relayed_pps = relay["received_pps"]  # one copy of each published packet crosses
    remote_delta = _worker_cpu(relay, 1 - home) - _worker_cpu(local, 1 - local_home)
    total_delta = relay["cpu_utilization"] - local["cpu_utilization"]
    return {
        "latency_ms_same_worker": near["latency_ms"],
        "latency_ms_behind_relay": far["latency_ms"],
        "hop_p50_ms": round(far["latency_ms"]["p50"] - near["latency_ms"]["p50"], 3),
        "hop_p99_ms": round(far["latency_ms"]["p99"] - near["latency_ms"]["p99"], 3),
        "lost": [near["lost_total"], far["lost_total"]],
        "relayed_pps": relayed_pps,
        "remote_worker_us_per_relayed_packet": round(remote_delta * 1e6 / relayed_pps, 1),
        "workers_total_us_per_relayed_packet": round(total_delta * 1e6 / relayed_pps, 1),
        "local_us_per_delivered_packet": local["us_per_delivered_packet"],
    }


async def measure_hop(bench: Bench, seconds: float, rounds: int) -> dict[str, Any]:
    phases: list[dict[str, Any]] = []
    figures: list[dict[str, Any]] = []
    errors: list[str] = []
    for _ in range(rounds):
        local = await run_phase(bench, 2, 2, seconds, node_participants=3, in_order=True)
        local["mode"] = "local"
        print_span_phase(local)
        relay = await run_phase(bench, 2, 2, seconds, node_participants=2, in_order=True)
        relay["mode"] = "relay"
        print_span_phase(relay)
        phases += [local, relay]
        if "error" in local or "error" in relay:
            errors.append(local.get("error") or relay["error"])
            continue
        try:
            one = hop_figures(local, relay)
        except (RuntimeError, KeyError, TypeError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        figures.append(one)
        print(
            f"  hop: p50 {one['hop_p50_ms']:+.2f} ms, p99 {one['hop_p99_ms']:+.2f} ms"
            f" (same worker p50/p99 {one['latency_ms_same_worker']['p50']:.2f}/"
            f"{one['latency_ms_same_worker']['p99']:.2f}, behind the relay"
            f" {one['latency_ms_behind_relay']['p50']:.2f}/"
            f"{one['latency_ms_behind_relay']['p99']:.2f});"
            f" remote worker {one['remote_worker_us_per_relayed_packet']} us and all workers"
            f" {one['workers_total_us_per_relayed_packet']} us per relayed packet",
            flush=True,
        )
    summary: dict[str, Any] = {"rounds": figures, "errors": errors, "phases": phases}
    if figures:

        def mean(key: str) -> float:
            return round(sum(float(f[key]) for f in figures) / len(figures), 2)

        summary["mean"] = {
            key: mean(key)
            for key in (
                "hop_p50_ms",
                "hop_p99_ms",
                "remote_worker_us_per_relayed_packet",
                "workers_total_us_per_relayed_packet",
            )
        }
    return summary


async def main(
    ks: list[int],
    sizes: dict[int, list[int]],
    seconds: float,
    hop_seconds: float,
    hop_rounds: int,
    dump: Path | None = None,
    log_level: str = "warn",
    arrival: str = "kernel",
    warmup: float = WARMUP,
    rounds: int = 1,
    paired: bool = False,
) -> dict[str, Any]:
    by_round: list[dict[str, dict[str, Any]]] = []
    hop: dict[str, Any] | None = None
    with RedisServer() as redis, tempfile.TemporaryDirectory(prefix="span-bench-") as work:
        clients = await Clients.start("benchmarks.span")
        bench = Bench(redis, Path(work), clients, dump, log_level, warmup)
        try:
            stream = await clients.call("init", timeout=120, arrival=arrival)
            print(
                f"stream: VP8 {WIDTH}x{HEIGHT}@{FPS} {stream['kbps']} kbps,"
                f" {stream['packets_per_second']} packets/s, keyframe every {KEYFRAME_INTERVAL} s;"
                f" {os.cpu_count()} cores, {SHARED_CORES}",
                flush=True,
            )
            # Rounds interleave the Ks, so a slow drift of the shared machine reaches all alike.
            for r in range(rounds):
                per_k: dict[str, dict[str, Any]] = {}
                if paired:
                    print(
                        f"round {r + 1}/{rounds}, K in {ks} phase by phase: trackyard sfu"
                        " --workers K, node_participants ceil((N+1)/K)"
                    )
                    per_k = await saturate_paired(bench, ks, sizes, seconds)
                else:
                    for k in ks:
                        print(
                            f"round {r + 1}/{rounds}, K={k}: trackyard sfu --workers {k},"
                            f" node_participants ceil((N+1)/{k})"
                        )
                        per_k[str(k)] = await saturate(bench, k, sizes_for(sizes, k), seconds)
                by_round.append(per_k)
            if hop_rounds:
                print("relay hop: K=2, publisher + 2 subscribers, joined in order")
                hop = await measure_hop(bench, hop_seconds, hop_rounds)
        finally:
            await clients.close()
    ratios: list[float | None] = []
    for r, per_k in enumerate(by_round):
        for label, sat in per_k.items():
            print_table(f"round {r + 1}, K={label}", sat["phases"])
            print(
                f"round {r + 1}, K={label}: largest N held {sat['max_n_held']}"
                f" ({sat['delivered_pps_at_max_n']} delivered packets/s,"
                f" {sat['us_per_delivered_packet_at_max_n']} us/packet, client process"
                f" {sat['client_process_cpu_utilization_at_max_n']} of a core);"
                f" stopped by {sat['stopped_by']}"
            )
        ratios.append(_ratio(per_k))
        if ratios[-1] is not None:
            print(
                f"round {r + 1}: K=2 / K=1 delivered packets/s at the largest N held: {ratios[-1]}x"
            )
    known = [x for x in ratios if x is not None]
    ratio = statistics.median(known) if len(known) == len(ratios) and known else None
    if ratio is not None:
        print(
            f"K=2 / K=1, median of {len(known)} round(s): {ratio}x"
            f" (rounds {', '.join(str(x) for x in ratios)}; {SHARED_CORES})"
        )
    if hop and hop["errors"]:
        print("relay hop rounds that failed: " + "; ".join(hop["errors"]))
    if hop and "mean" in hop:
        m = hop["mean"]
        print(
            f"relay hop ({len(hop['rounds'])} rounds): +{m['hop_p50_ms']} ms p50,"
            f" +{m['hop_p99_ms']} ms p99; {m['remote_worker_us_per_relayed_packet']} us on the"
            f" remote worker and {m['workers_total_us_per_relayed_packet']} us over all workers"
            " per relayed packet"
        )
    return {
        "benchmark": "span",
        "cpu_count": os.cpu_count(),
        "note": f"{SHARED_CORES}; server CPU = the K worker processes",
        "seconds": seconds,
        "paired": paired,
        "stream": stream,
        "saturation": by_round[0] if by_round else {},
        "rounds": by_round,
        "k2_over_k1_by_round": ratios,
        "k2_over_k1_delivered_pps": ratio,
        "hop": hop,
    }


def _ratio(per_k: dict[str, dict[str, Any]]) -> float | None:
    """K=2's delivered packets/s at its largest N held over K=1's, in one round."""
    one, two = per_k.get("1"), per_k.get("2")
    if one and two and one["delivered_pps_at_max_n"] and two["delivered_pps_at_max_n"]:
        ratio = float(two["delivered_pps_at_max_n"]) / float(one["delivered_pps_at_max_n"])
        return round(ratio, 2)
    return None


def sizes_for(sizes: dict[int, list[int]], k: int) -> list[int]:
    """The N tried at ``k`` workers: its own list, else the shared one (key 0)."""
    return sizes.get(k, sizes.get(0, []))


def _per_k_sizes(text: str) -> dict[int, list[int]]:
    """``64,128`` (every K) or ``1:224,256;2:384,448`` (per K)."""
    if ":" not in text:
        return {0: _sizes(text)}
    out: dict[int, list[int]] = {}
    for part in text.split(";"):
        k, _, listed = part.partition(":")
        out[int(k)] = _sizes(listed)
    return out


def _sizes(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ks", default="1,2", help="worker counts, comma-separated")
    parser.add_argument(
        "--saturate-sizes",
        default=SATURATE_SIZES,
        help="the N tried per K, in order: '64,128' for every K, or '1:224,256;2:384,448'",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="saturation rounds (each K once per round)"
    )
    parser.add_argument(
        "--paired",
        action="store_true",
        help="within a round, the Ks' searches alternate phase by phase (saturate_paired)",
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring window per phase")
    parser.add_argument("--hop-seconds", type=float, default=15.0, help="window of hop phases")
    parser.add_argument("--hop-rounds", type=int, default=2, help="0: no hop measurement")
    parser.add_argument(
        "--dump", help="a directory: each saturation phase's raw send and arrival times"
    )
    parser.add_argument("--log-level", default="warn", help="the servers' log level")
    parser.add_argument(
        "--out", default=str(RESULTS / "span.json"), help="where the results JSON goes"
    )
    parser.add_argument("--arrival", choices=ARRIVALS, default="kernel", help=ARRIVAL_HELP)
    parser.add_argument(
        "--warmup",
        type=float,
        default=WARMUP,
        help="seconds of media after the last subscriber receives, before a window opens",
    )
    parser.add_argument("--clients-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients_fd is not None:
        asyncio.run(client_main(args.clients_fd, SpanClientSide()))
        sys.exit(0)
    started = time.monotonic()
    result = asyncio.run(
        main(
            _sizes(args.ks),
            _per_k_sizes(args.saturate_sizes),
            args.seconds,
            args.hop_seconds,
            args.hop_rounds,
            Path(args.dump) if args.dump else None,
            args.log_level,
            args.arrival,
            args.warmup,
            args.rounds,
            args.paired,
        )
    )
    result["command"] = " ".join(["python -m benchmarks.span", *sys.argv[1:]])
    result["run_s"] = round(time.monotonic() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['run_s']} s)")
