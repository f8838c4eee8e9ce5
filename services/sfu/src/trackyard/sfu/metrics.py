"""Prometheus view of the node's media counters, read at scrape time (no per-packet cost)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from trackyard.sfu.rtpstats import TrafficCounters


class NodeCollector(Collector):
    def __init__(self, counters: TrafficCounters, node: object) -> None:
        self._c = counters
        self._node = node

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = self._c
        for name, value, doc in (
            ("packets_in", c.packets_in, "RTP packets received from publishers"),
            ("bytes_in", c.bytes_in, "RTP payload bytes received from publishers"),
            ("packets_out", c.packets_out, "RTP packets forwarded to subscribers"),
            ("bytes_out", c.bytes_out, "RTP payload bytes forwarded to subscribers"),
            ("retransmits", c.retransmits, "packets resent to subscribers after a NACK"),
            ("nacks_received", c.nacks_received, "NACKs received from subscribers"),
            ("plis_sent", c.plis_sent, "keyframe requests sent to publishers"),
        ):
            yield CounterMetricFamily(f"trackyard_sfu_{name}", doc, value=value)
        rooms = len(getattr(self._node, "rooms", {}))
        clients = len(getattr(self._node, "sessions", {}))
        yield GaugeMetricFamily("trackyard_sfu_rooms", "Rooms hosted here", value=rooms)
        yield GaugeMetricFamily("trackyard_sfu_clients", "Participants hosted here", value=clients)
