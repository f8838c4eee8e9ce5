"""A real Trackyard cluster on loopback: Redis, routers, signal edges and SFU nodes as processes.

Processes start in parallel (each waits for its own ``/readyz``), so a cluster of seven is up in
about the time its slowest member takes to import. Destructive tests get helpers to kill a
process outright (``kill -9``), freeze it, add SFU nodes, and read what the cluster wrote to
Redis (placements, node records) through the key names of :mod:`trackyard.core.keys`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import json
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from redis import Redis as SyncRedis

from tests.support.metrics import prometheus_config
from tests.support.ports import free_port
from tests.support.redisserver import RedisServer
from tests.support.trackyard import API_KEY, API_SECRET, TrackyardProcess
from trackyard.core import keys

REGIONS = [
    {"name": "us-east", "lat": 40.7, "lon": -74.0},
    {"name": "us-west", "lat": 37.8, "lon": -122.4},
    {"name": "eu-west", "lat": 51.5, "lon": -0.1},
]


def start_all(procs: list[TrackyardProcess], timeout: float = 30.0) -> None:
    """Start processes concurrently; on any failure stop them all and re-raise."""
    if not procs:
        return
    with ThreadPoolExecutor(max_workers=len(procs)) as pool:
        futures = [pool.submit(p.start, timeout) for p in procs]
        errors = [f.exception() for f in futures]
    failed = [e for e in errors if e is not None]
    if failed:
        for p in procs:
            p.stop()
        raise failed[0]


async def eventually(
    check: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
) -> Any:
    """Poll ``check`` (sync or async) until it returns a truthy value; bounded by ``timeout``.

    Only for state that has no event to wait on (records in Redis, a node's /node figures).
    Exceptions count as "not yet" and the last one is reported on timeout.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            last = result
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


@dataclass
class Cluster:
    redis: RedisServer
    workdir: Path
    sfu_regions: list[str] = field(default_factory=lambda: ["us-east", "us-east", "eu-west"])
    edge_regions: list[str] = field(default_factory=lambda: ["us-east", "eu-west"])
    routers_count: int = 2
    overrides: dict[str, Any] = field(default_factory=dict)
    sfu_metrics: bool = False  # each SFU node serves Prometheus metrics on its own port
    routers: list[TrackyardProcess] = field(default_factory=list)
    edges: list[TrackyardProcess] = field(default_factory=list)
    sfus: list[TrackyardProcess] = field(default_factory=list)
    router_urls: list[str] = field(default_factory=list)
    node_ids: list[str] = field(default_factory=list)  # per SFU index, once started

    def base_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "development": True,  # lets the short test secret through
            "keys": {API_KEY: API_SECRET},
            "redis": {"address": self.redis.address},
            "logging": {"json": True, "level": "info"},
            "room": {"departure_timeout": 2, "empty_timeout": 10},
            "node_selector": {
                "kind": "regionaware",
                "sort_by": "sysload",
                "sysload_limit": 0.7,
                "regions": REGIONS,
            },
            "node": {"stats_update_interval": 0.5},
        }
        for key, value in self.overrides.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key] = {**cfg[key], **value}
            else:
                cfg[key] = value
        return cfg

    def load_file(self, index: int) -> Path:
        """The test hook file that drives SFU ``index``'s reported load."""
        return self.workdir / f"load-{index}.json"

    def set_load(self, index: int, cpu_load: float = 0.0, sysload: float = 0.0) -> None:
        self.load_file(index).write_text(json.dumps({"cpu_load": cpu_load, "sysload": sysload}))

    def _sfu_process(self, index: int, region: str) -> TrackyardProcess:
        self.set_load(index)
        api_port = free_port()
        cfg = self.base_config()
        cfg["region"] = region
        cfg["node"] = {**cfg["node"], "api_port": api_port}
        start = 40000 + index * 1000
        cfg["rtc"] = {"port_range_start": start, "port_range_end": start + 999}
        if self.sfu_metrics:
            cfg.update(prometheus_config())
        return TrackyardProcess(
            cfg,
            command="sfu",
            ready_port=api_port,
            env={"TRACKYARD_TEST_LOAD_FILE": str(self.load_file(index))},
        )

    def start(self) -> Cluster:
        router_ports = [free_port() for _ in range(self.routers_count)]
        self.router_urls = [f"http://127.0.0.1:{p}" for p in router_ports]
        for port in router_ports:
            cfg = self.base_config()
            cfg["router"] = {"port": port, "urls": self.router_urls}
            cfg["region"] = self.edge_regions[0]  # edges send their own region with each request
            self.routers.append(TrackyardProcess(cfg, command="router", ready_port=port))
        for i, region in enumerate(self.sfu_regions):
            self.sfus.append(self._sfu_process(i, region))
        for region in self.edge_regions:
            cfg = self.base_config()
            cfg["region"] = region
            cfg["router"] = {"urls": self.router_urls}
            self.edges.append(TrackyardProcess(cfg, command="signal"))
        start_all(self.all_processes())
        self.node_ids = [self.sfu_record(i)["id"] for i in range(len(self.sfus))]
        return self

    def add_sfu(self, region: str) -> int:
        """Start one more SFU node; returns its index."""
        index = len(self.sfus)
        proc = self._sfu_process(index, region)
        self.sfus.append(proc)
        proc.start()
        self.node_ids.append(self.sfu_record(index)["id"])
        return index

    # -- what the processes report ------------------------------------------------------------

    def sfu_record(self, index: int) -> dict[str, Any]:
        """The record SFU ``index`` serves on its own ``/node`` endpoint."""
        port = self.sfus[index].ready_port
        return httpx.get(f"http://127.0.0.1:{port}/node", timeout=5).json()  # type: ignore[no-any-return]

    def sfu_index(self, node_id: str) -> int:
        return self.node_ids.index(node_id)

    def redis_client(self) -> SyncRedis:
        return SyncRedis(host="127.0.0.1", port=self.redis.port, socket_timeout=2)

    def placement(self, room: str) -> tuple[str, int] | None:
        """``(node_id, epoch)`` the store records for ``room``, or None."""
        with self.redis_client() as r:
            raw = r.hget(keys.PLACEMENTS, room)
        if raw is None:
            return None
        node_id, _, epoch = raw.decode().rpartition("|")
        return node_id, int(epoch)

    def seats(self, room: str) -> dict[str, str]:
        """Identity -> node id of every participant seated in ``room`` (a spanning room)."""
        with self.redis_client() as r:
            raw = r.hgetall(keys.seats(room))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def seated(self, room: str, identity: str) -> TrackyardProcess:
        """The SFU process ``identity`` is seated on in ``room``."""
        return self.sfus[self.sfu_index(self.seats(room)[identity])]

    def host_index(self, room: str) -> int | None:
        """Index of the SFU the store says hosts ``room``."""
        found = self.placement(room)
        return None if found is None else self.sfu_index(found[0])

    def stored_record(self, node_id: str) -> dict[str, Any] | None:
        """The node record as the cluster sees it (in Redis), or None once it expired."""
        with self.redis_client() as r:
            raw = r.get(keys.node(node_id))
        return None if raw is None else dict(json.loads(raw))

    def ready(self, proc: TrackyardProcess) -> int:
        """HTTP status of ``proc``'s ``/readyz``."""
        return httpx.get(f"http://127.0.0.1:{proc.ready_port}/readyz", timeout=5).status_code

    # -- violence -------------------------------------------------------------------------------

    @staticmethod
    def kill(proc: TrackyardProcess) -> int:
        """``kill -9``: no drain, no clean-up; returns the exit status (-9)."""
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGKILL)
        return proc.proc.wait(5)

    # -- lifecycle -----------------------------------------------------------------------------

    def all_processes(self) -> list[TrackyardProcess]:
        return [*self.routers, *self.sfus, *self.edges]

    def logs(self, *, full: bool = False) -> str:
        """Every process's log (the tail of each unless ``full``)."""

        def text(p: TrackyardProcess) -> str:
            if not full:
                return p.logs()
            try:
                return p.log_path.read_text(errors="replace")
            except OSError:
                return ""

        return "\n".join(f"--- {p.command}:{p.ready_port}\n{text(p)}" for p in self.all_processes())

    def stop(self) -> None:
        for proc in reversed(self.all_processes()):
            proc.stop()


def with_overrides(cfg: dict[str, Any], **kw: Any) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    out.update(kw)
    return out


# -- SDK helpers shared by the cluster tests ------------------------------------------------


async def send_data(sender: Any, receiver: Any, payload: bytes, timeout: float = 10.0) -> None:
    """``sender`` publishes ``payload``; wait until ``receiver`` gets it, from ``sender``."""
    from tests.support.sdk import EventWaiter

    got = EventWaiter(receiver, "data_received")
    await sender.local_participant.publish_data(payload)
    (pkt,) = await got.wait(lambda p: p.data == payload, timeout=timeout)
    assert pkt.participant.identity == sender.local_participant.identity


async def participant_identities(edge: TrackyardProcess, room: str) -> list[str]:
    """ListParticipants through ``edge``'s Twirp API, sorted identities."""
    from livekit import api

    async with api.LiveKitAPI(edge.http_url, API_KEY, API_SECRET) as lk:
        resp = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
    return sorted(p.identity for p in resp.participants)


async def list_rooms(edge: TrackyardProcess, names: list[str] | None = None) -> list[Any]:
    from livekit import api

    async with api.LiveKitAPI(edge.http_url, API_KEY, API_SECRET) as lk:
        resp = await lk.room.list_rooms(api.ListRoomsRequest(names=names or []))
    return list(resp.rooms)


def cluster_fixture(**layout: Any) -> Any:
    """A module-scoped pytest fixture running its own :class:`Cluster` (and Redis).

    When a test of the module failed, every process's log is saved next to the module's
    temp dir and its path printed, since the processes' own temp dirs go away with them.
    """
    import pytest

    @pytest.fixture(scope="module", name="cluster")
    def _cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
        failed_before = request.session.testsfailed
        workdir = Path(tmp_path_factory.mktemp("cluster"))
        with RedisServer() as redis_server:
            cl = Cluster(redis=redis_server, workdir=workdir, **layout)
            try:
                cl.start()
                yield cl
            finally:
                if request.session.testsfailed != failed_before:
                    dump = workdir / "cluster.log"
                    dump.write_text(cl.logs(full=True))
                    print(f"\ncluster logs: {dump}")
                cl.stop()

    return _cluster


@contextlib.contextmanager
def single_node_cluster(overrides: dict[str, Any]) -> Iterator[Cluster]:
    """Redis, one router, one edge, one SFU node (us-east), started; for benchmarks that
    measure what bridging through Redis adds."""
    with RedisServer() as redis, tempfile.TemporaryDirectory() as work:
        cluster = Cluster(
            redis=redis,
            workdir=Path(work),
            sfu_regions=["us-east"],
            edge_regions=["us-east"],
            routers_count=1,
            overrides=overrides,
        )
        try:
            yield cluster.start()
        finally:
            cluster.stop()
