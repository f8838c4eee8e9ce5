"""Reception statistics and NACK bookkeeping."""

from __future__ import annotations

from trackyard.sfu.rtpstats import NackTracker, ReceiveStats


def test_extended_sequence_and_loss_across_wraparound() -> None:
    s = ReceiveStats(90000)
    seqs = [65530, 65531, 65533, 65534, 65535, 0, 2, 3]  # 65532 and 1 lost
    for i, seq in enumerate(seqs):
        s.update(seq, i * 3000, i / 30)
    assert s.hi_ext == 65536 + 3
    assert s.expected == 10 and s.received == 8 and s.lost == 2
    assert s.fraction_lost() == (2 << 8) // 10
    assert s.fraction_lost() == 0  # interval reset
    assert s.update(1, 0, 1.0) == 65537  # late packet extends backwards correctly
    assert s.lost == 1


def test_jitter_is_zero_for_perfect_pacing_and_grows_with_jitter() -> None:
    s = ReceiveStats(90000)
    for i in range(50):
        s.update(i, i * 3000, i / 30)
    assert s.jitter == 0
    for i in range(50, 100):
        s.update(i, i * 3000, i / 30 + (0.01 if i % 2 else 0))
    assert 300 < s.jitter < 1000


def test_nack_tracker() -> None:
    t = NackTracker(max_gap=100, max_age=1.0, max_retries=2)
    assert t.on_packet(10, 9, 0.0) == []
    assert t.on_packet(14, 10, 0.0) == [11, 12, 13]
    assert t.on_packet(12, 14, 0.01) == []  # recovered
    assert t.due(0.02, 0.05) == []  # asked too recently
    assert t.due(0.06, 0.05) == [11, 13]
    assert t.due(0.2, 0.05) == []  # max retries reached (2 asks)
    assert len(t) == 0
    assert t.on_packet(1000, 14, 0.3) == []  # a jump, not loss
    assert t.on_packet(1003, 1000, 0.3) == [1001, 1002]
    assert t.due(2.0, 0.05) == [] and len(t) == 0  # too old


def test_nack_tracker_recovers_only_missing_packets() -> None:
    t = NackTracker()
    assert t.on_packet(5, 2, 0.0) == [3, 4]
    assert t.pending
    assert t.recover(3)
    assert not t.recover(3)  # a second copy
    assert not t.recover(5)  # never missing (e.g. an RTX bandwidth probe)
    assert t.recover(4) and not t.pending
