"""Connection quality from loss, jitter and round-trip time. Pure, no I/O.

LiveKit's scoring, in its published figures: every window (5 s) each stream of a participant
gets a packet score ``100 - delay_effect - loss% * loss_weight`` (the E-model simplification;
delay = RTT/2 + 2 x jitter), the participant's score moves towards the worst stream's score
(fast down, slow up, never below 30), and maps to EXCELLENT (> 80), GOOD (> 40), POOR.
A stream that received nothing in the window scores POOR at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from livekit.protocol import models

__all__ = [
    "LOSS_WEIGHT_AUDIO",
    "LOSS_WEIGHT_VIDEO",
    "QualityScorer",
    "StreamWindow",
    "packet_score",
    "to_mos",
    "to_quality",
]

MAX_SCORE = 100.0
MIN_SCORE = 30.0
INCREASE_FACTOR = 0.4  # recover slowly
DECREASE_FACTOR = 0.8  # drop fast
GOOD_ABOVE = 80.0
POOR_ABOVE = 40.0
DRY_SCORE = 40.0  # a stream that carried nothing in the window
LOSS_WEIGHT_AUDIO = 8.0  # opus: 2.5% loss -> GOOD, 7.5% -> POOR
LOSS_WEIGHT_VIDEO = 10.0  # 2% -> GOOD, 6% -> POOR


@dataclass(frozen=True, slots=True)
class StreamWindow:
    """One stream's figures over the last window."""

    packets: int  # received (upstream) or sent (downstream) in the window
    loss_percent: float = 0.0
    rtt_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_weight: float = LOSS_WEIGHT_VIDEO


def packet_score(w: StreamWindow) -> float:
    delay = w.rtt_ms / 2 + w.jitter_ms * 2
    delay_effect = (delay - 120) / 10 if delay > 160 else delay / 40
    return max(0.0, MAX_SCORE - delay_effect - w.loss_percent * w.loss_weight)


def to_quality(score: float) -> models.ConnectionQuality:
    if score > GOOD_ABOVE:
        return models.ConnectionQuality.EXCELLENT
    if score > POOR_ABOVE:
        return models.ConnectionQuality.GOOD
    return models.ConnectionQuality.POOR


def to_mos(score: float) -> float:
    """The score on the MOS scale (1.0-4.5) that ``ConnectionQualityInfo.score`` carries."""
    if score <= 0:
        return 1.0
    if score >= MAX_SCORE:
        return 4.5
    return 1.0 + 0.035 * score + 0.000007 * score * (score - 60) * (100 - score)


class QualityScorer:
    """One participant's smoothed score."""

    __slots__ = ("score",)

    def __init__(self) -> None:
        self.score = MAX_SCORE

    def update(self, windows: Sequence[StreamWindow]) -> float:
        """Fold one window of every stream in; nothing to judge keeps the score."""
        if not windows:
            return self.score
        if any(w.packets == 0 for w in windows):
            self.score = DRY_SCORE
            return self.score
        target = min(packet_score(w) for w in windows)
        factor = DECREASE_FACTOR if target < self.score else INCREASE_FACTOR
        self.score = max(MIN_SCORE, factor * target + (1 - factor) * self.score)
        return self.score

    @property
    def quality(self) -> models.ConnectionQuality:
        return to_quality(self.score)
