from __future__ import annotations

from livekit.protocol import models

from trackyard.sfu.connectionquality import (
    LOSS_WEIGHT_AUDIO,
    QualityScorer,
    StreamWindow,
    packet_score,
    to_mos,
)

EXCELLENT = models.ConnectionQuality.EXCELLENT
GOOD = models.ConnectionQuality.GOOD
POOR = models.ConnectionQuality.POOR


def test_clean_stream_is_excellent() -> None:
    scorer = QualityScorer()
    scorer.update([StreamWindow(packets=250, rtt_ms=20, jitter_ms=2)])
    assert scorer.quality == EXCELLENT
    assert 4.0 < to_mos(scorer.score) <= 4.5


def test_loss_thresholds_match_livekits_weights() -> None:
    # opus: 2.5% loss -> GOOD, 7.5% -> POOR; video: 2% -> GOOD, 6% -> POOR
    assert packet_score(StreamWindow(100, loss_percent=2.6, loss_weight=LOSS_WEIGHT_AUDIO)) < 80
    assert packet_score(StreamWindow(100, loss_percent=7.6, loss_weight=LOSS_WEIGHT_AUDIO)) < 40
    assert packet_score(StreamWindow(100, loss_percent=1.9)) > 80
    assert packet_score(StreamWindow(100, loss_percent=6.1)) < 40


def test_delay_counts_and_long_delay_counts_more() -> None:
    assert packet_score(StreamWindow(100, rtt_ms=80)) == 100 - 40 / 40
    assert packet_score(StreamWindow(100, rtt_ms=400, jitter_ms=10)) == 100 - (220 - 120) / 10


def test_drops_fast_recovers_slowly_and_never_below_minimum() -> None:
    scorer = QualityScorer()
    bad = StreamWindow(100, loss_percent=30, loss_weight=LOSS_WEIGHT_AUDIO)
    scorer.update([bad])
    assert scorer.quality == POOR and scorer.score >= 30
    scorer.update([bad])
    assert scorer.score == 30
    good = StreamWindow(100)
    scorer.update([good])
    assert scorer.quality == GOOD  # 0.4 of the way up: not excellent yet
    for _ in range(5):
        scorer.update([good])
    assert scorer.quality == EXCELLENT


def test_worst_stream_decides_and_dry_stream_is_poor() -> None:
    scorer = QualityScorer()
    scorer.update([StreamWindow(100), StreamWindow(100, loss_percent=10)])
    assert scorer.quality == POOR
    fresh = QualityScorer()
    fresh.update([StreamWindow(0)])
    assert fresh.quality == POOR
    idle = QualityScorer()
    idle.update([])
    assert idle.quality == EXCELLENT
