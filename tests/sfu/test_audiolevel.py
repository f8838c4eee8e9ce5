from __future__ import annotations

from trackyard.sfu.audiolevel import AudioLevel, AudioLevelSettings, to_linear

SETTINGS = AudioLevelSettings()  # LiveKit's defaults: 35 dBov, 40%, 400 ms, 2 windows


def feed(al: AudioLevel, level: int, packets: int, start_ts: int = 0, t0: float = 0.0) -> float:
    """20 ms Opus packets at 48 kHz; returns the time after the last one."""
    t = t0
    for i in range(packets):
        t = t0 + i * 0.02
        al.observe(level, start_ts + i * 960, t)
    return t


def test_loud_speech_is_active_and_silence_is_not() -> None:
    loud, quiet = AudioLevel(SETTINGS), AudioLevel(SETTINGS)
    t = feed(loud, 10, 60)
    feed(quiet, 127, 60)
    level, active = loud.level(t)
    assert active and level > to_linear(35)
    assert quiet.level(t) == (0.0, False)


def test_brief_noise_below_the_percentile_is_not_speech() -> None:
    al = AudioLevel(SETTINGS)
    ts, t = 0, 0.0
    for _ in range(3):  # per 400 ms window: 100 ms loud, 300 ms silent (25% < 40%)
        for i in range(20):
            al.observe(10 if i < 5 else 127, ts, t)
            ts += 960
            t += 0.02
    assert al.level(t) == (0.0, False)


def test_level_is_smoothed_and_decays_when_packets_stop() -> None:
    al = AudioLevel(SETTINGS)
    t = feed(al, 20, 21)  # one full window
    first, _ = al.level(t)
    t = feed(al, 20, 20, start_ts=21 * 960, t0=t + 0.02)
    second, _ = al.level(t)
    assert 0 < first < second  # the moving average approaches the steady level
    assert al.level(t + 0.81) == (0.0, False)  # two windows without packets


def test_reordered_timestamps_do_not_count_twice() -> None:
    al = AudioLevel(SETTINGS)
    al.observe(10, 96000, 0.0)
    al.observe(10, 95040, 0.02)  # older: ignored, reference kept
    al.observe(10, 96960, 0.04)
    al.observe_duration(10, 0, 0.04)
    assert al.level(0.04) == (0.0, False)  # 20 ms observed: no window complete yet
