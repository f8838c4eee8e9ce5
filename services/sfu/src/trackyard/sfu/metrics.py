"""Prometheus view of an SFU node: LiveKit's metrics (names and labels of LiveKit's
``pkg/telemetry/prometheus``) and Trackyard's own (``trackyard_sfu_*``).

Counts and totals are read from the node at scrape time (no per-packet cost beyond the plain
counters the media plane keeps). Per-stream figures (packet loss, jitter, RTT) and forward
latency are sampled every ``node.stats_update_interval`` into LiveKit's histograms, as
LiveKit's telemetry does with its stats interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

import structlog
from livekit.protocol import models
from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trackyard.core import metrics
from trackyard.core.metrics import NODE_LABELS, node_label_values
from trackyard.core.node import NodeState
from trackyard.sfu import updates
from trackyard.sfu.rtpstats import TrafficCounters

if TYPE_CHECKING:
    from trackyard.sfu.downtrack import DownTrack
    from trackyard.sfu.node import SfuNode
    from trackyard.sfu.uptrack import Layer

log = structlog.get_logger(__name__)

STREAM_LABELS = [*NODE_LABELS, "direction", "source", "type", "country"]
INCOMING, OUTGOING = "incoming", "outgoing"

# Not registered globally: the node's collector yields them, so a scrape sees the figures of
# the sampling pass before it.
PACKET_LOSS = Histogram(
    "livekit_packet_loss_percent",
    "Packet loss per stream and stats interval, in percent",
    STREAM_LABELS,
    buckets=(0.0, 0.1, 0.3, 0.5, 0.7, 1, 5, 10, 40, 100),
    registry=None,
)
JITTER = Histogram(
    "livekit_jitter_us",
    "Interarrival jitter per stream, in microseconds",
    STREAM_LABELS,
    buckets=(1000, 10000, 30000, 50000, 70000, 100000, 300000, 600000, 1000000),
    registry=None,
)
RTT = Histogram(
    "livekit_rtt_ms",
    "Round-trip time per downstream stream (from the subscriber's receiver reports), in ms",
    STREAM_LABELS,
    buckets=(50, 100, 150, 200, 250, 500, 750, 1000, 5000, 10000),
    registry=None,
)
FORWARD_LATENCY_HIST = Histogram(
    "livekit_forward_latency_ns",
    "Mean time from a packet's arrival to its last forwarded copy, per stats interval, in ns",
    list(NODE_LABELS),
    buckets=(50e3, 100e3, 250e3, 500e3, 1e6, 2e6, 3e6, 5e6, 10e6, 20e6),
    registry=None,
)


class _Sample:
    __slots__ = ("expected", "lost", "received", "sent")

    def __init__(self) -> None:
        self.expected = 0
        self.received = 0
        self.sent = 0
        self.lost = 0


class NodeCollector(Collector):
    def __init__(self, counters: TrafficCounters, node: SfuNode) -> None:
        self._c = counters
        self._node = node
        self.packet_loss_total: dict[tuple[str, str, str], int] = {}
        self.forward_latency_ns = 0.0  # long-term average (LiveKit's livekit_forward_latency)
        self._forward_prev = (0, 0)
        self._prev: dict[tuple[str, str, int], _Sample] = {}  # (session, track, layer)
        metrics.set_node_id(node.node_id)
        metrics.add_readiness_probe("sfu", self._probe)
        node.spawn(self._sample_loop())  # cancelled with the node's tasks at stop

    async def _probe(self) -> tuple[bool, bool]:
        node = self._node
        draining = node.state is NodeState.SHUTTING_DOWN
        return (not draining and await node.store.ping() and await node.bus.ping()), draining

    # -- sampling -------------------------------------------------------------------------

    async def _sample_loop(self) -> None:
        while True:
            await asyncio.sleep(self._node.config.node.stats_update_interval)
            try:
                self.sample()
            except Exception:  # never let one odd stream end the sampling
                log.warning("metrics sampling failed", exc_info=True)

    def _sources(self) -> dict[str, tuple[str, str]]:
        """Track sid -> (source, type) names of every track published on this node."""
        out: dict[str, tuple[str, str]] = {}
        for p in self._node.sessions.values():
            for sid, info in p.tracks.items():
                out[sid] = (
                    models.TrackSource.Name(info.source),
                    models.TrackType.Name(info.type),
                )
        return out

    def sample(self) -> None:
        """One stats interval: per-stream loss, jitter and RTT into LiveKit's histograms."""
        sources = self._sources()
        node_id, node_type = node_label_values()
        seen: set[tuple[str, str, int]] = set()
        for session, p in list(self._node.sessions.items()):
            for sid, up in list(p.uptracks.items()):
                source, kind = sources.get(sid, ("UNKNOWN", up.kind.upper()))
                labels = (node_id, node_type, INCOMING, source, kind, "")
                for layer in up.layers:
                    key = (session, sid, layer.index)
                    seen.add(key)
                    self._sample_layer(key, layer, labels)
            for sid, dt in list(p.downtracks.items()):
                source, kind = sources.get(sid, ("UNKNOWN", dt.kind.upper()))
                key = (session, sid, -1)
                seen.add(key)
                self._sample_downtrack(key, dt, (node_id, node_type, OUTGOING, source, kind, ""))
        for gone in self._prev.keys() - seen:
            del self._prev[gone]
        c = self._c
        forwarded, spent = c.forwarded - self._forward_prev[0], c.forward_ns - self._forward_prev[1]
        self._forward_prev = (c.forwarded, c.forward_ns)
        if forwarded > 0:
            mean = spent / forwarded
            FORWARD_LATENCY_HIST.labels(node_id, node_type).observe(mean)
            avg = self.forward_latency_ns
            self.forward_latency_ns = mean if avg == 0 else 0.9 * avg + 0.1 * mean

    def _count_loss(self, labels: tuple[str, ...], lost: int) -> None:
        if lost > 0:
            key = (labels[2], labels[3], labels[4])
            self.packet_loss_total[key] = self.packet_loss_total.get(key, 0) + lost

    def _sample_layer(
        self, key: tuple[str, str, int], layer: Layer, labels: tuple[str, ...]
    ) -> None:
        stats = layer.stats
        if stats is None or not stats.started:
            return
        prev = self._prev.setdefault(key, _Sample())
        expected = stats.expected - prev.expected
        received = stats.received - prev.received
        prev.expected, prev.received = stats.expected, stats.received
        if expected <= 0:
            return
        lost = max(0, expected - received)
        PACKET_LOSS.labels(*labels).observe(100.0 * lost / expected)
        self._count_loss(labels, lost)
        if stats.jitter > 0 and stats.clock_rate:
            JITTER.labels(*labels).observe(1e6 * stats.jitter / stats.clock_rate)

    def _sample_downtrack(
        self, key: tuple[str, str, int], dt: DownTrack, labels: tuple[str, ...]
    ) -> None:
        prev = self._prev.setdefault(key, _Sample())
        sent = dt.packets_sent - prev.sent
        lost = max(0, dt.packets_lost - prev.lost)
        prev.sent, prev.lost = dt.packets_sent, dt.packets_lost
        if sent <= 0:
            return
        PACKET_LOSS.labels(*labels).observe(min(100.0, 100.0 * lost / sent))
        self._count_loss(labels, lost)
        clock = dt.uptrack.clock_rate or 90000
        if dt.jitter > 0:
            JITTER.labels(*labels).observe(1e6 * dt.jitter / clock)
        if dt.rtt is not None and dt.rtt > 0:
            RTT.labels(*labels).observe(1000.0 * dt.rtt)

    # -- scrape ---------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        yield from self._trackyard()
        yield from self._livekit()
        for hist in (PACKET_LOSS, JITTER, RTT, FORWARD_LATENCY_HIST):
            yield from hist.collect()

    def _trackyard(self) -> Iterator[Metric]:
        c, r = self._c, self._node.relay_counters
        for name, value, doc in (
            ("packets_in", c.packets_in, "RTP packets received from publishers"),
            ("bytes_in", c.bytes_in, "RTP payload bytes received from publishers"),
            ("packets_out", c.packets_out, "RTP packets forwarded to subscribers"),
            ("bytes_out", c.bytes_out, "RTP payload bytes forwarded to subscribers"),
            ("retransmits", c.retransmits, "packets resent to subscribers after a NACK"),
            ("nacks_received", c.nacks_received, "NACKs received from subscribers"),
            ("plis_sent", c.plis_sent, "keyframe requests sent to publishers"),
            # tracks crossing between the nodes of rooms that span nodes
            ("relay_packets_in", r.packets_in, "RTP packets received from other nodes' relays"),
            ("relay_bytes_in", r.bytes_in, "RTP payload bytes received from other nodes"),
            ("relay_packets_out", r.packets_out, "RTP packets relayed to other nodes"),
            ("relay_bytes_out", r.bytes_out, "RTP payload bytes relayed to other nodes"),
            ("relay_nacks_sent", r.nacks_sent, "NACKs sent to other nodes for relayed packets"),
            ("relay_retransmits", r.retransmits, "relayed packets resent after a node's NACK"),
            ("relay_plis_sent", r.plis_sent, "keyframe requests sent to other nodes"),
            (
                "participant_update_messages",
                updates.COUNTERS.messages,
                "participant update messages sent to clients (one to N clients counts N)",
            ),
            (
                "participant_updates_batched",
                updates.COUNTERS.batched,
                "participant changes that waited for a batch (room over its update budget)",
            ),
        ):
            yield CounterMetricFamily(f"trackyard_sfu_{name}", doc, value=value)
        sessions = self._node.sessions
        yield GaugeMetricFamily(
            "trackyard_sfu_rooms", "Rooms hosted here", value=len(self._node.rooms)
        )
        yield GaugeMetricFamily(
            "trackyard_sfu_clients", "Participants hosted here", value=len(sessions)
        )
        copies = [dt for p in sessions.values() for dt in p.downtracks.values()]
        copies += [
            dt
            for room in self._node.rooms.values()
            for relay in room.relays.values()
            for dt in relay.downtracks.values()
        ]
        yield GaugeMetricFamily(
            "trackyard_sfu_downtracks",
            "Subscriber copies of tracks sent from here (other nodes' relays included)",
            value=len(copies),
        )
        yield GaugeMetricFamily(
            "trackyard_sfu_lane_downtracks",
            "Of those, the ones the native lane decides and sends (no Python per packet)",
            value=sum(1 for dt in copies if dt.in_lane),
        )
        mlines = sum(len(p.subscriber_pc.getTransceivers()) for p in sessions.values())
        yield GaugeMetricFamily(
            "trackyard_sfu_subscriber_media_sections",
            "Media sections on subscriber connections (grows only when none can be reused)",
            value=mlines,
        )

    def _livekit(self) -> Iterator[Metric]:
        node = self._node
        c = self._c
        ids = list(node_label_values())
        labels = list(NODE_LABELS)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(ids, value)
            return family

        yield gauge("livekit_room_total", "Rooms hosted on this node", len(node.rooms))
        yield gauge(
            "livekit_participant_total", "Participants hosted on this node", len(node.sessions)
        )
        published = {"AUDIO": 0, "VIDEO": 0}
        subscribed = {"AUDIO": 0, "VIDEO": 0}
        for p in node.sessions.values():
            for info in p.tracks.values():
                kind = models.TrackType.Name(info.type)
                published[kind] = published.get(kind, 0) + 1
            for dt in p.downtracks.values():
                kind = dt.kind.upper()
                subscribed[kind] = subscribed.get(kind, 0) + 1
        for name, counts, doc in (
            ("livekit_track_published_total", published, "Tracks published on this node"),
            ("livekit_track_subscribed_total", subscribed, "Subscriptions served by this node"),
        ):
            family = GaugeMetricFamily(name, doc, labels=[*labels, "kind"])
            for kind, count in counts.items():
                family.add_metric([*ids, kind], count)
            yield family

        packets = Metric("livekit_packet", "RTP packets", "counter")
        octets = Metric("livekit_packet_bytes", "RTP payload bytes", "unknown")
        for direction, transmission, n, b in (
            (INCOMING, "initial", c.packets_in, c.bytes_in),
            (OUTGOING, "initial", c.packets_out, c.bytes_out),
            (OUTGOING, "retransmit", c.retransmits, c.retransmit_bytes),
        ):
            pl = dict(zip(labels, ids, strict=True))
            pl.update(direction=direction, transmission=transmission, country="")
            packets.add_sample("livekit_packet_total", pl, n)
            octets.add_sample("livekit_packet_bytes", pl, b)
        yield packets
        yield octets
        for name, incoming, outgoing, doc in (
            ("livekit_nack", c.nacks_sent, c.nacks_received, "NACK packets"),
            ("livekit_pli", c.plis_sent, c.plis_received, "PLI/FIR keyframe requests"),
        ):
            rtcp = CounterMetricFamily(name, doc, labels=[*labels, "direction", "country"])
            rtcp.add_metric([*ids, INCOMING, ""], incoming)
            rtcp.add_metric([*ids, OUTGOING, ""], outgoing)
            yield rtcp
        loss = CounterMetricFamily("livekit_packet_loss", "Packets lost", labels=STREAM_LABELS)
        for (direction, source, kind), lost in self.packet_loss_total.items():
            loss.add_metric([*ids, direction, source, kind, ""], lost)
        yield loss
        yield gauge(
            "livekit_forward_latency",
            "Long-term average time from arrival to forwarding, in ns",
            self.forward_latency_ns,
        )
