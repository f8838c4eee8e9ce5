"""Prometheus view of the node's media counters, read at scrape time (no per-packet cost)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from trackyard.sfu.rtpstats import TrafficCounters

if TYPE_CHECKING:
    from trackyard.sfu.node import SfuNode


class NodeCollector(Collector):
    def __init__(self, counters: TrafficCounters, node: SfuNode) -> None:
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
        sessions = self._node.sessions
        yield GaugeMetricFamily(
            "trackyard_sfu_rooms", "Rooms hosted here", value=len(self._node.rooms)
        )
        yield GaugeMetricFamily(
            "trackyard_sfu_clients", "Participants hosted here", value=len(sessions)
        )
        mlines = sum(len(p.subscriber_pc.getTransceivers()) for p in sessions.values())
        yield GaugeMetricFamily(
            "trackyard_sfu_subscriber_media_sections",
            "Media sections on subscriber connections (grows only when none can be reused)",
            value=mlines,
        )
