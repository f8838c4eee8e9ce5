"""A real Trackyard cluster on loopback: Redis, routers, signal edges and SFU nodes as processes."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.ports import free_port
from tests.support.redisserver import RedisServer
from tests.support.trackyard import API_KEY, API_SECRET, TrackyardProcess

REGIONS = [
    {"name": "us-east", "lat": 40.7, "lon": -74.0},
    {"name": "us-west", "lat": 37.8, "lon": -122.4},
    {"name": "eu-west", "lat": 51.5, "lon": -0.1},
]


@dataclass
class Cluster:
    redis: RedisServer
    workdir: Path
    sfu_regions: list[str] = field(default_factory=lambda: ["us-east", "us-east", "eu-west"])
    edge_regions: list[str] = field(default_factory=lambda: ["us-east", "eu-west"])
    routers_count: int = 2
    overrides: dict[str, Any] = field(default_factory=dict)
    routers: list[TrackyardProcess] = field(default_factory=list)
    edges: list[TrackyardProcess] = field(default_factory=list)
    sfus: list[TrackyardProcess] = field(default_factory=list)

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

    def start(self) -> Cluster:
        router_ports = [free_port() for _ in range(self.routers_count)]
        urls = [f"http://127.0.0.1:{p}" for p in router_ports]
        for port in router_ports:
            cfg = self.base_config()
            cfg["router"] = {"port": port, "urls": urls}
            cfg["region"] = self.edge_regions[0]  # edges send their own region with each request
            self.routers.append(TrackyardProcess(cfg, command="router", ready_port=port).start())
        for i, region in enumerate(self.sfu_regions):
            self.set_load(i)
            api_port = free_port()
            cfg = self.base_config()
            cfg["region"] = region
            cfg["node"] = {**cfg["node"], "api_port": api_port}
            cfg["rtc"] = {"port_range_start": 40000 + i * 1000, "port_range_end": 40999 + i * 1000}
            proc = TrackyardProcess(
                cfg,
                command="sfu",
                ready_port=api_port,
                env={"TRACKYARD_TEST_LOAD_FILE": str(self.load_file(i))},
            )
            self.sfus.append(proc.start())
        for region in self.edge_regions:
            cfg = self.base_config()
            cfg["region"] = region
            cfg["router"] = {"urls": urls}
            self.edges.append(TrackyardProcess(cfg, command="signal").start())
        return self

    def sfu_record(self, index: int) -> dict[str, Any]:
        port = self.sfus[index].ready_port
        return httpx.get(f"http://127.0.0.1:{port}/node", timeout=5).json()  # type: ignore[no-any-return]

    def sfu_index(self, node_id: str) -> int:
        for i in range(len(self.sfus)):
            if self.sfus[i].alive() and self.sfu_record(i)["id"] == node_id:
                return i
        raise KeyError(node_id)

    def all_processes(self) -> list[TrackyardProcess]:
        return [*self.routers, *self.sfus, *self.edges]

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.command}:{p.ready_port}\n{p.logs()}" for p in self.all_processes()
        )

    def stop(self) -> None:
        for proc in reversed(self.all_processes()):
            proc.stop()


def with_overrides(cfg: dict[str, Any], **kw: Any) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    out.update(kw)
    return out
