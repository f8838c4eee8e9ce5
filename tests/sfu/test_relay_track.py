"""A relayed track chooses among the origin's layers and asks the origin for the best one any
of its subscribers wants; it reports when its last subscriber left (the crossing stops)."""

from __future__ import annotations

import structlog
from livekit.protocol import models

from trackyard.sfu.audiolevel import AudioLevelSettings
from trackyard.sfu.relay import RelayedTrack
from trackyard.sfu.trackcontract import ForwardedPacket

LOW, MEDIUM, HIGH = (
    models.VideoQuality.LOW,
    models.VideoQuality.MEDIUM,
    models.VideoQuality.HIGH,
)


class Sink:
    def __init__(self, desired: int) -> None:
        self.desired_layer = desired
        self.closed = False

    def forward(self, packet: ForwardedPacket) -> None:
        return None

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


def make(info: models.TrackInfo, wanted: list[int | None], unused: list[str]) -> RelayedTrack:
    return RelayedTrack(
        info,
        on_unused=lambda t: unused.append(t.track_sid),
        counters=None,
        on_wanted_quality=wanted.append,
        audio=AudioLevelSettings(),
        logger=structlog.get_logger(),
    )


def test_layers_are_the_origins_and_the_best_wanted_is_asked_for() -> None:
    wanted: list[int | None] = []
    unused: list[str] = []
    track = make(simulcast_info(), wanted, unused)
    assert len(track.layers) == 0  # one stream crosses: a single layer once attached
    assert track.select_layer(LOW) == 0
    assert track.select_layer(MEDIUM) == 1
    assert track.select_layer(None) == 2
    assert track.select_layer(None, width=600, height=300) == 1
    assert track.usable_layer(2) == 2  # nothing received yet: as desired

    low, high = Sink(track.select_layer(LOW)), Sink(track.select_layer(HIGH))
    track.add_sink(low)
    track.wanted_changed()
    assert wanted == [LOW]
    track.add_sink(high)
    track.wanted_changed()
    assert wanted == [LOW, HIGH]
    high.desired_layer = -1  # paused
    track.wanted_changed()
    assert wanted == [LOW, HIGH, LOW]

    track.remove_sink(high)
    assert unused == []
    track.remove_sink(low)
    assert unused == ["TR_x"]  # the last subscriber left: stop the crossing


def test_a_single_stream_track_is_high_quality_or_nothing() -> None:
    wanted: list[int | None] = []
    info = models.TrackInfo(sid="TR_y", type=models.TrackType.VIDEO)
    track = make(info, wanted, [])
    sink = Sink(track.select_layer(LOW))
    assert sink.desired_layer == 0
    track.add_sink(sink)
    track.wanted_changed()
    sink.desired_layer = -1
    track.wanted_changed()
    assert wanted == [HIGH, None]
