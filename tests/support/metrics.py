"""Scrape a Trackyard process's Prometheus listener (``prometheus.port``) in tests."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.ports import free_port
from tests.support.trackyard import TrackyardProcess

USERNAME = "scraper"
PASSWORD = "scrape-secret-for-tests"


def prometheus_config(*, auth: bool = False) -> dict[str, Any]:
    """A ``prometheus:`` config section on a free port (with basic auth if ``auth``)."""
    section: dict[str, Any] = {"port": free_port()}
    if auth:
        section.update(username=USERNAME, password=PASSWORD)
    return {"prometheus": section}


def metrics_url(proc: TrackyardProcess) -> str:
    return f"http://127.0.0.1:{proc.config['prometheus']['port']}/metrics"


async def scrape(proc: TrackyardProcess) -> str:
    section = proc.config["prometheus"]
    auth = (section["username"], section["password"]) if section.get("username") else None
    async with httpx.AsyncClient(timeout=5) as client:
        resp = await client.get(metrics_url(proc), auth=auth)
    resp.raise_for_status()
    return resp.text


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (KeyError if none)."""
    found = [v for lab, v in samples(text).get(name, []) if labels.items() <= lab.items()]
    if not found:
        raise KeyError(f"{name}{labels or ''} not in the scrape")
    return sum(found)


async def metric(proc: TrackyardProcess, name: str, **labels: str) -> float:
    return value(await scrape(proc), name, **labels)
