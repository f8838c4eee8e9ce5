"""A relayed track offers the origin's layers; each layer a subscriber on this node wants
crosses as its own stream (pinned on the origin), the others are paused there, and its last
subscriber leaving stops the crossing. A fake link records what is asked of the origin."""

from __future__ import annotations

import pytest
from aiortc.rtp import RtpPacket
from livekit.protocol import models

from trackyard.sfu.fanout import make_fanout
from trackyard.sfu.relay import RelayedLayer, RelayedSource, layer_alias, parse_alias
from trackyard.sfu.trackcontract import ForwardedPacket

LOW, MEDIUM, HIGH = (
    models.VideoQuality.LOW,
    models.VideoQuality.MEDIUM,
    models.VideoQuality.HIGH,
)


class Link:
    """What the source asked of its origin, in order."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, ...]] = []

    def subscribe(self, alias: str) -> None:
        self.asked.append(("subscribe", alias))

    def unsubscribe(self, alias: str) -> None:
        self.asked.append(("unsubscribe", alias))

    def settings(self, alias: str, quality: int | None, *, enabled: bool) -> None:
        self.asked.append(("on" if enabled else "off", alias))


class Sink:
    def __init__(self, desired: int) -> None:
        self.desired_layer = desired
        self.layers: list[int] = []  # the layer of each packet forwarded to it
        self.closed = False

    def forward(self, packet: ForwardedPacket) -> None:
        self.layers.append(packet.layer)

    def layers_changed(self) -> None:
        return None

    def source_closed(self) -> None:
        self.closed = True


def simulcast_info() -> models.TrackInfo:
    return models.TrackInfo(
        sid="TR_x",
        type=models.TrackType.VIDEO,
        simulcast=True,
        layers=[
            models.VideoLayer(quality=HIGH, width=1280, height=720),
            models.VideoLayer(quality=LOW, width=320, height=180),
            models.VideoLayer(quality=MEDIUM, width=640, height=360),
        ],
    )


def flowing(source: RelayedSource, layer: int) -> RelayedLayer:
    """A crossing stream for ``layer`` that has started (as after its first packet)."""
    stream = RelayedLayer("video", track_sid="TR_x", fanout=source.fanout)
    stream._make_layers([])
    stream.layers[0].active = True
    source.stream_arrived(layer, stream)
    return stream


def test_aliases_name_one_layer_of_a_track() -> None:
    assert layer_alias("TR_x", None) == "TR_x"
    assert layer_alias("TR_x", MEDIUM) == "TR_x~1"
    assert parse_alias("TR_x~1") == ("TR_x", MEDIUM)
    assert parse_alias("TR_x") == ("TR_x", None)


async def test_each_wanted_layer_crosses_once_and_unwanted_ones_pause() -> None:
    link, unused = Link(), []
    source = RelayedSource(simulcast_info(), link, on_unused=unused.append)
    assert source.select_layer(LOW) == 0 and source.select_layer(None) == 2
    assert source.select_layer(None, width=600, height=300) == 1
    source.start()  # the default: the top layer
    assert link.asked == [("subscribe", "TR_x~2")]

    small, big = Sink(source.select_layer(LOW)), Sink(source.select_layer(HIGH))
    source.add_sink(small)
    source.add_sink(big)
    source.wanted_changed()
    assert link.asked[1:] == [("subscribe", "TR_x~0")]  # LOW crosses too, once

    top, bottom = flowing(source, 2), flowing(source, 0)
    assert source.usable_layer(0) == 0 and source.usable_layer(1) == 0
    packet = ForwardedPacket(RtpPacket(), make_fanout())
    for stream in (bottom, top):
        for tap in stream.downtracks:
            tap.forward(packet)
    assert small.layers == big.layers == [0, 2]  # each sink sees the origin's layer index

    big.desired_layer = -1  # paused (a hidden video element)
    source.wanted_changed()
    assert link.asked[2:] == [("off", "TR_x~2")]  # paused on the origin: nothing crosses
    big.desired_layer = 2
    source.wanted_changed()
    assert link.asked[3:] == [("on", "TR_x~2")]

    source.remove_sink(big)
    assert link.asked[4:] == [("off", "TR_x~2")]
    source.remove_sink(small)
    assert unused == [source]  # the link unsubscribes every layer
    await source.close()
    assert small.closed is False  # already removed: not told twice


async def test_a_new_layer_is_fed_from_the_flowing_one_until_it_starts() -> None:
    link = Link()
    source = RelayedSource(simulcast_info(), link, on_unused=lambda s: None)
    source.start()
    flowing(source, 2)
    sink = Sink(source.select_layer(LOW))
    source.add_sink(sink)
    source.wanted_changed()
    assert source.usable_layer(0) == 2  # LOW asked, not flowing yet: stay on HIGH
    assert ("off", "TR_x~2") not in link.asked
    flowing(source, 0)
    assert source.usable_layer(0) == 0
    assert link.asked[-1] == ("off", "TR_x~2")  # HIGH no longer needed here


@pytest.mark.parametrize("kind", [models.TrackType.AUDIO, models.TrackType.VIDEO])
async def test_a_single_stream_track_crosses_whole_or_pauses(kind: int) -> None:
    link = Link()
    info = models.TrackInfo(sid="TR_y", type=kind)  # type: ignore[arg-type]
    source = RelayedSource(info, link, on_unused=lambda s: None)
    source.start()
    sink = Sink(source.select_layer(LOW))
    assert sink.desired_layer == 0
    source.add_sink(sink)
    sink.desired_layer = -1
    source.wanted_changed()
    assert link.asked == [("subscribe", "TR_y"), ("off", "TR_y")]
