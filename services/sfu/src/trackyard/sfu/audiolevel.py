"""Active-speaker detection from the RFC 6464 audio-level header extension. Pure, no I/O.

The figures follow LiveKit (``audio:`` config, same defaults and meaning): a track is active
when its level reached ``active_level`` dBov for at least ``min_percentile``% of an
``update_interval`` window; its reported level is the loudest level seen in the window,
weighted by how much of the window was active, in linear scale (0..1), smoothed with an
exponential moving average over ``smooth_intervals`` windows. A track that stops sending
(muted, DTX silence) decays to 0 after two windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["AudioLevel", "AudioLevelSettings", "to_linear"]

SILENT = 127  # dBov, the quietest level the extension carries


def to_linear(dbov: float) -> float:
    """-dBov (0 loudest .. 127 silent) -> linear amplitude 1.0 .. ~0."""
    return float(10 ** (-dbov / 20))


@dataclass(frozen=True, slots=True)
class AudioLevelSettings:
    active_level: int = 35
    min_percentile: int = 40
    update_interval_ms: int = 400
    smooth_intervals: int = 2


class AudioLevel:
    """One audio track's level; ``observe`` per packet, ``level`` when speakers are computed."""

    __slots__ = (
        "_active_ms",
        "_last_observed",
        "_last_ts",
        "_loudest",
        "_min_active_ms",
        "_observed_ms",
        "_settings",
        "_smooth",
        "_threshold",
        "clock_rate",
        "smoothed",
    )

    def __init__(self, settings: AudioLevelSettings, clock_rate: int = 48000) -> None:
        self._settings = settings
        self.clock_rate = clock_rate
        self._min_active_ms = settings.min_percentile * settings.update_interval_ms / 100
        n = settings.smooth_intervals
        self._smooth = 2.0 / (n + 1) if n > 0 else 1.0
        self._threshold = to_linear(settings.active_level)
        self.smoothed = 0.0
        self._loudest = SILENT
        self._active_ms = 0.0
        self._observed_ms = 0.0
        self._last_observed = -math.inf
        self._last_ts: int | None = None

    def observe(self, level: int, rtp_timestamp: int, now: float) -> None:
        """One packet's level (dBov, 0 loudest); its duration comes from the RTP timestamps."""
        last = self._last_ts
        self._last_ts = rtp_timestamp
        if last is None:
            return
        delta = (rtp_timestamp - last) & 0xFFFFFFFF
        if delta >= 0x80000000:  # reordered: the newer timestamp stays the reference
            self._last_ts = last
            return
        self.observe_duration(level, delta * 1000 / self.clock_rate, now)

    def observe_duration(self, level: int, duration_ms: float, now: float) -> None:
        s = self._settings
        self._last_observed = now
        self._observed_ms += duration_ms
        if level <= s.active_level:
            self._active_ms += duration_ms
            if level < self._loudest:
                self._loudest = level
        if self._observed_ms < s.update_interval_ms:
            return
        smoothed = 0.0
        if self._active_ms >= self._min_active_ms:
            # loudness weighted by the active share of the window (0 dB when active throughout)
            weight = 20 * math.log10(self._active_ms / s.update_interval_ms)
            linear = to_linear(self._loudest - weight)
            smoothed = self.smoothed + (linear - self.smoothed) * self._smooth
        self._reset(smoothed)

    def level(self, now: float) -> tuple[float, bool]:
        """(smoothed linear level, active); stale levels (no packets for 2 windows) reset."""
        if now - self._last_observed >= 2 * self._settings.update_interval_ms / 1000:
            self._reset(0.0)
        return self.smoothed, self.smoothed >= self._threshold

    def _reset(self, smoothed: float) -> None:
        self.smoothed = smoothed
        self._loudest = SILENT
        self._active_ms = 0.0
        self._observed_ms = 0.0
