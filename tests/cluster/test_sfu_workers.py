"""``trackyard sfu`` with ``node.workers: 2``: two nodes on one host, one supervisor.

Each worker registers as its own node with the host's shared identity, serves rooms, is
restarted by the supervisor when it dies, and a SIGTERM to the supervisor drains both: they
leave the registry and the supervisor exits 0.
"""

from __future__ import annotations

import signal
from typing import Any

import httpx
import psutil
import pytest

from tests.support.cluster import Cluster, cluster_fixture, eventually, send_data
from tests.support.ports import free_port
from tests.support.sdk import connected
from tests.support.trackyard import TrackyardProcess

pytestmark = pytest.mark.sdk

cluster = cluster_fixture(sfu_regions=[], edge_regions=["us-east"], routers_count=1)


def node_record(port: int) -> dict[str, Any] | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/node", timeout=2)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def worker_pid(supervisor: TrackyardProcess, index: int) -> int | None:
    assert supervisor.proc is not None
    for child in psutil.Process(supervisor.proc.pid).children():
        if f"{index}/2" in child.cmdline():
            return int(child.pid)
    return None


async def test_two_workers_register_serve_restart_and_drain(cluster: Cluster) -> None:
    api_port = free_port()
    cfg = cluster.base_config()
    cfg["region"] = "us-east"
    cfg["node"] = {**cfg["node"], "api_port": api_port, "workers": 2, "host_id": "host-a"}
    cfg["rtc"] = {"port_range_start": 45000, "port_range_end": 45999}
    supervisor = TrackyardProcess(cfg, command="sfu", ready_port=api_port)
    supervisor.start(timeout=30)
    try:
        ports = (api_port, api_port + 1)

        def both() -> list[dict[str, Any]] | None:
            found = [node_record(p) for p in ports]
            return None if None in found else found  # type: ignore[return-value]

        records = await eventually(both, timeout=30, what="both workers serving")
        ids = [r["id"] for r in records]
        assert len(set(ids)) == 2
        assert {r["host"] for r in records} == {"host-a"}
        assert {r["state"] for r in records} == {"SERVING"}
        for node_id in ids:
            assert cluster.stored_record(node_id) is not None  # in the shared registry

        # they serve rooms: clients through the edge are placed on a worker and talk
        url = cluster.edges[0].ws_url
        async with connected(url, "a", "w-room") as a, connected(url, "b", "w-room") as b:
            placed = cluster.placement("w-room")
            assert placed is not None and placed[0] in ids
            await send_data(a, b, b"hello from a")
            await send_data(b, a, b"hello from b")

        # a worker that dies is replaced: a new node on the same port slice and host
        pid = worker_pid(supervisor, 1)
        assert pid is not None
        psutil.Process(pid).kill()
        replaced = await eventually(
            lambda: (r := node_record(ports[1])) is not None and r["id"] != ids[1] and r,
            timeout=30,
            what="worker 1 restarted as a new node",
        )
        assert replaced["host"] == "host-a"
        ids[1] = replaced["id"]

        # SIGTERM drains both workers; the supervisor exits 0 when they have
        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait(30) == 0
        for node_id in ids:
            assert cluster.stored_record(node_id) is None
    finally:
        supervisor.stop()


async def test_workers_drain_when_their_supervisor_is_killed(cluster: Cluster) -> None:
    api_port = free_port()
    cfg = cluster.base_config()
    cfg["region"] = "us-east"
    cfg["node"] = {**cfg["node"], "api_port": api_port, "workers": 2}
    cfg["rtc"] = {"port_range_start": 46000, "port_range_end": 46999}
    supervisor = TrackyardProcess(cfg, command="sfu", ready_port=api_port)
    supervisor.start(timeout=30)
    try:
        await eventually(
            lambda: worker_pid(supervisor, 0) and worker_pid(supervisor, 1),
            timeout=30,
            what="two workers",
        )
        workers = [psutil.Process(worker_pid(supervisor, i)) for i in (0, 1)]
        Cluster.kill(supervisor)  # kill -9: no signal forwarded by the supervisor itself
        _, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, [p.pid for p in alive]
    finally:
        supervisor.stop()
