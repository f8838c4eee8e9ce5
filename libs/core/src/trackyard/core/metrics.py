"""Prometheus exposition: the process's registry on ``prometheus.port`` (LiveKit's key), with
HTTP basic auth when ``prometheus.username`` is set, as LiveKit does. Never on the public port.

LiveKit's metrics (``livekit_*``, names and labels of ``pkg/telemetry/prometheus``) carry its
constant labels ``node_id`` and ``node_type``: :func:`node_labels` gives them. Trackyard's own
metrics are spelled ``trackyard_*``. Readiness and drain state are gauges filled at scrape time
by the probes services register with :func:`add_readiness_probe`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

LIVEKIT_NODE_TYPE = "SERVER"  # livekit.NodeType of every livekit-server process
NODE_LABELS = ("node_id", "node_type")
_identity = {"node_id": "", "node_type": LIVEKIT_NODE_TYPE}


def set_node_id(node_id: str, *, replace: bool = True) -> None:
    """The ``node_id`` label of this process's LiveKit metrics (the SFU node's id where one
    runs; an edge or router process uses its own). ``replace=False`` keeps one already set."""
    if replace or not _identity["node_id"]:
        _identity["node_id"] = node_id


def node_id() -> str:
    if not _identity["node_id"]:
        _identity["node_id"] = f"ND_{socket.gethostname()}"
    return _identity["node_id"]


def node_labels() -> dict[str, str]:
    """LiveKit's constant labels, as a label dict."""
    return {"node_id": node_id(), "node_type": _identity["node_type"]}


def node_label_values() -> tuple[str, str]:
    return node_id(), _identity["node_type"]


class ExactCounter(Collector):
    """A counter exported under exactly ``name``, with LiveKit's node labels first.

    LiveKit's Go counters are named without ``_total`` in places (``livekit_packet_bytes``,
    ``livekit_node_twirp_request_status``); prometheus_client would append ``_total`` to a
    counter, so those are exported untyped under their Go name (``rate()`` works the same).
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = (*NODE_LABELS, *labelnames)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, *labelvalues: str, amount: float = 1.0) -> None:
        key = (*node_label_values(), *labelvalues)
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *labelvalues: str) -> float:
        return self._values.get((*node_label_values(), *labelvalues), 0.0)

    def collect(self) -> Iterator[Metric]:
        kind = "counter" if self.name.endswith("_total") else "unknown"
        family = Metric(self.name.removesuffix("_total"), self.documentation, kind)
        for key, value in list(self._values.items()):
            family.add_sample(self.name, dict(zip(self.labelnames, key, strict=True)), value)
        yield family


def exact_counter(name: str, documentation: str, labelnames: Sequence[str]) -> ExactCounter:
    counter = ExactCounter(name, documentation, labelnames)
    REGISTRY.register(counter)
    return counter


READY = Gauge(
    "trackyard_ready",
    "1 when the service answers /readyz with 200 (can serve), else 0; read at scrape time",
    ["service"],
)
DRAINING = Gauge(
    "trackyard_draining",
    "1 once the service drains (takes no new work, finishes what it has), else 0",
    ["service"],
)

ReadinessProbe = Callable[[], Awaitable[tuple[bool, bool]]]
_probes: dict[str, ReadinessProbe] = {}
PROBE_TIMEOUT = 2.0


def add_readiness_probe(service: str, probe: ReadinessProbe) -> None:
    """``probe()`` answers ``(ready, draining)`` as the service's ``/readyz`` would; it runs on
    every scrape (bounded by :data:`PROBE_TIMEOUT`; a probe that fails or hangs reads as not
    ready)."""
    _probes[service] = probe


async def _run_probe(service: str, probe: ReadinessProbe) -> None:
    try:
        ready, draining = await asyncio.wait_for(probe(), PROBE_TIMEOUT)
    except Exception:
        ready, draining = False, False
    READY.labels(service).set(1 if ready else 0)
    DRAINING.labels(service).set(1 if draining else 0)


async def refresh_readiness() -> None:
    await asyncio.gather(*(_run_probe(name, p) for name, p in list(_probes.items())))


async def metrics_endpoint(_request: Request) -> Response:
    await refresh_readiness()
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _authorized(request: Request, username: str, password: str) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given_user, sep, given_pass = base64.b64decode(encoded).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return bool(sep) and (
        hmac.compare_digest(given_user, username) & hmac.compare_digest(given_pass, password)
    )


def metrics_app(username: str = "", password: str = "") -> Starlette:
    """``GET /`` and ``GET /metrics``: the registry; 401 without the credentials if set."""

    async def handler(request: Request) -> Response:
        if username and not _authorized(request, username, password):
            return PlainTextResponse(
                "Unauthorized",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="metrics"'},
            )
        return await metrics_endpoint(request)

    return Starlette(routes=[Route("/", handler), Route("/metrics", handler)])
