"""The contract between a track source (an ``UpTrack`` today; a relay of another node's
track later) and the DownTracks that forward it to subscribers.

Two directions, each a ``typing.Protocol``:

- ``TrackSource``: what a DownTrack may ask of its source (codec, layer choice, keyframes,
  sender reports, joining and leaving its fan-out). A DownTrack reads nothing else.
- ``PacketSink``: what a source calls on each of its DownTracks: ``forward`` for every
  received packet, ``layers_changed`` when the received layers change, ``source_closed``.

Per received packet the source fills one ``ForwardedPacket`` (one mutable instance per
source, reused: nothing is allocated per packet or per copy) and hands it to every sink in
turn, synchronously; a sink must not keep it past the call.

No aiortc here: a relay or a unit test can implement either side without a peer connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from trackyard.sfu.fanout import Fanout
    from trackyard.sfu.rtphooks import CodecInfo
    from trackyard.sfu.vp8 import Vp8Descriptor

__all__ = [
    "QUALITY_HIGH",
    "QUALITY_LOW",
    "QUALITY_MEDIUM",
    "QUALITY_OFF",
    "ForwardedPacket",
    "PacketSink",
    "RtpView",
    "TrackSource",
]

# livekit.protocol.models.VideoQuality values
QUALITY_LOW = 0
QUALITY_MEDIUM = 1
QUALITY_HIGH = 2
QUALITY_OFF = 3


class RtpView(Protocol):
    """The fields of a received RTP packet a sink reads (aiortc's ``RtpPacket`` has them).
    Retransmissions arrive already unwrapped: original SSRC, sequence number and payload."""

    ssrc: int
    sequence_number: int
    timestamp: int
    marker: int
    payload_type: int
    payload: bytes


class ForwardedPacket:
    """One received packet as handed to the sinks.

    ``layer``: index of the layer it belongs to (in the source's layer list, lowest quality
    first; 0 for a single stream). ``keyframe``: it starts a picture decodable on its own
    (always True for audio). ``padding``: it carries no payload (probing; a sink forwarding
    its stream closes the sequence gap). ``arrival``: ``time.monotonic()`` at reception.
    ``n``: its number among the packets the source handed out (32-bit, wrapping). ``vp8``:
    its parsed payload descriptor (VP8 only). ``abs_send_time``: the 6.18
    fixed-point send time to stamp on copies (video). ``audio_level``: RFC 6464 (voice,
    -dBov) when the publisher sent it (audio). ``fanout``: the source's batch; a sink
    forwarding on a plain UDP route adds its copy, and the source sends them all at once
    after the last sink."""

    __slots__ = (
        "abs_send_time",
        "arrival",
        "audio_level",
        "fanout",
        "keyframe",
        "layer",
        "n",
        "padding",
        "rtp",
        "vp8",
    )

    def __init__(self, rtp: RtpView, fanout: Fanout) -> None:
        self.rtp = rtp
        self.fanout = fanout
        self.layer = 0
        self.n = 0  # the source's packet number (32-bit, wrapping)
        self.keyframe = False
        self.padding = False
        self.arrival = 0.0
        self.vp8: Vp8Descriptor | None = None
        self.abs_send_time = 0
        self.audio_level: tuple[bool, int] | None = None


class PacketSink(Protocol):
    """What a source calls on each subscriber copy (``DownTrack``)."""

    @property
    def desired_layer(self) -> int:
        """The layer this sink would like (-1: none, paused): the source asks the publisher
        for the best layer any sink desires."""
        ...

    def forward(self, packet: ForwardedPacket) -> None:
        """Forward (or drop) one packet; must not raise and must not keep ``packet``."""
        ...

    def layers_changed(self) -> None:
        """The set of layers being received changed (a layer started, stopped or resized)."""
        ...

    def source_closed(self) -> None:
        """The source is gone: nothing more will be forwarded."""
        ...


class TrackSource(Protocol):
    """What a ``DownTrack`` may ask of the track it forwards."""

    @property
    def kind(self) -> str:
        """``"audio"`` or ``"video"``."""
        ...

    @property
    def track_sid(self) -> str: ...

    @property
    def closed(self) -> bool:
        """Gone: nothing will be forwarded (a new subscription to it is refused)."""
        ...

    @property
    def clock_rate(self) -> int: ...

    def current_codec(self) -> CodecInfo | None:
        """The codec being received, else the one expected (None: not known yet)."""
        ...

    def codec_for(self, payload_type: int) -> CodecInfo | None:
        """The codec of a received payload type."""
        ...

    def select_layer(self, quality: int | None, width: int = 0, height: int = 0) -> int:
        """The layer a subscriber asking for ``quality`` (or a view size) should get."""
        ...

    def usable_layer(self, desired: int) -> int:
        """``desired`` if it is being received, else the nearest layer that is."""
        ...

    def request_keyframe(self, layer: int) -> None:
        """Ask the publisher for a keyframe on ``layer`` (throttled by the source)."""
        ...

    def sender_report(self, ssrc: int) -> tuple[int, int, float] | None:
        """The publisher's latest sender report for a stream: (ntp, rtp, monotonic arrival)."""
        ...

    @property
    def fanout(self) -> Fanout:
        """The batch its packets' copies are sent through (sinks take their ``Copy`` here)."""
        ...

    def add_sink(self, sink: PacketSink, *, ahead: bool = False) -> None:
        """Start handing ``sink`` packets (a closed source calls ``sink.source_closed()``);
        ``ahead``: before the sinks not ahead (see ``with_sink``)."""
        ...

    def remove_sink(self, sink: PacketSink) -> None: ...

    def wanted_changed(self) -> None:
        """A sink's ``desired_layer`` changed."""
        ...


def with_sink(
    sinks: tuple[PacketSink, ...], sink: PacketSink, ahead: bool
) -> tuple[PacketSink, ...]:
    """``sinks`` with ``sink`` added: the sinks feeding another fan-out (relays to other
    nodes) first, so their copies of a packet go out before the subscribers' copies."""
    return (sink, *sinks) if ahead else (*sinks, sink)
