"""Prometheus metrics of the signal edge."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
