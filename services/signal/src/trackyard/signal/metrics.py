"""Prometheus metrics of the signal edge: LiveKit's (join latency, participant joins, Twirp
request status and latency, under LiveKit's names and labels) and Trackyard's own
(``trackyard_edge_*``)."""

from __future__ import annotations

import json
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trackyard.core.metrics import NODE_LABELS, exact_counter, node_label_values

SESSIONS = Gauge("trackyard_edge_sessions", "Client signal sessions open on this edge")
SIGNAL_MESSAGES = Counter("trackyard_edge_signal_messages_total", "Client signal messages bridged")
JOIN_SECONDS = Histogram(
    "trackyard_edge_join_seconds",
    "Time from WebSocket request to JoinResponse sent",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TWIRP_REQUESTS = Counter(
    "trackyard_edge_twirp_requests_total", "RoomService calls", ["method", "code"]
)


def _exponential_range(low: float, high: float, count: int) -> list[float]:
    """Go's prometheus.ExponentialBucketsRange."""
    factor = (high / low) ** (1 / (count - 1))
    return [low * factor**i for i in range(count)]


# LiveKit: pkg/telemetry/prometheus/rooms.go, recorded in pkg/service/rtcservice.go when the
# JoinResponse has been written.
SESSION_JOIN_LATENCY = Histogram(
    "livekit_session_join_latency_ms",
    "Time from the signal request to the JoinResponse sent, in milliseconds",
    [*NODE_LABELS, "protocol_version"],
    buckets=_exponential_range(10, 10000, 15),
)
PARTICIPANT_JOIN = exact_counter(
    "livekit_participant_join_total", "Participant join stages", ["state", "warp"]
)
# LiveKit: pkg/telemetry/prometheus/node.go, recorded by pkg/service/twirp.go's hooks.
TWIRP_REQUEST_STATUS = exact_counter(
    "livekit_node_twirp_request_status",
    "Twirp requests by service, method, HTTP status family and Twirp error code",
    ["service", "method", "status", "code"],
)
TWIRP_REQUEST_LATENCY = Histogram(
    "livekit_node_twirp_request_latency_ms",
    "Twirp request latency in milliseconds",
    [*NODE_LABELS, "service", "method", "status"],
    buckets=(5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000),
)


def record_join(seconds: float, protocol: int) -> None:
    """A client was sent its JoinResponse ``seconds`` after its request arrived."""
    JOIN_SECONDS.observe(seconds)
    SESSION_JOIN_LATENCY.labels(*node_label_values(), str(protocol)).observe(int(seconds * 1000))
    PARTICIPANT_JOIN.inc("signal_connected", "")


def status_family(status: int) -> str:
    """LiveKit's httpStatusFamily: ``4xx``, ``5xx``, otherwise the code itself."""
    if 400 <= status <= 499:
        return "4xx"
    if 500 <= status <= 599:
        return "5xx"
    return str(status)


class TwirpMetrics:
    """ASGI middleware: LiveKit's Twirp status and latency metrics for ``/twirp/<pkg>.<Service>/
    <Method>`` requests (service without the package, as Twirp names it; ``code`` is the Twirp
    error code of an error reply, empty on success)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/twirp/") or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        full_service, _, method = path[len("/twirp/") :].partition("/")
        service = full_service.rpartition(".")[2]
        started = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "body": b""}

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif (
                message["type"] == "http.response.body"
                and state["status"] >= 400
                and len(state["body"]) < 4096
            ):
                state["body"] += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            status: int = state["status"]
            code = ""
            if status >= 400:
                try:
                    code = str(json.loads(state["body"]).get("code", ""))
                except (ValueError, AttributeError):
                    code = "internal"
            family = status_family(status)
            TWIRP_REQUEST_STATUS.inc(service, method, family, code)
            TWIRP_REQUEST_LATENCY.labels(*node_label_values(), service, method, family).observe(
                int((time.perf_counter() - started) * 1000)
            )
