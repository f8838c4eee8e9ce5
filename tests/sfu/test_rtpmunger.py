"""Sequence number / timestamp rewriting across wrap-around, late packets, skips and switches."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trackyard.sfu.rtpmunger import (
    RtpMunger,
    seq_newer,
    ts_after_pause,
    ts_diff,
    ts_on_reference,
)


def test_helpers() -> None:
    assert seq_newer(1, 65535) and not seq_newer(65535, 1) and not seq_newer(5, 5)
    assert ts_diff(5, 0xFFFFFFFE) == 7 and ts_diff(0xFFFFFFFE, 5) == -7
    assert ts_after_pause(0xFFFFFF00, 1.0, 90000) == (0xFFFFFF00 + 90000) & 0xFFFFFFFF
    assert ts_after_pause(10, 0.0, 90000) == 11  # always moves forward


def test_first_segment_keeps_timestamps_and_starts_at_the_chosen_sequence() -> None:
    m = RtpMunger(first_out_seq=1000)
    m.start_segment(50000, 123456, 123456)
    assert m.map(50000, 123456) == (1000, 123456)
    assert m.map(50001, 126456) == (1001, 126456)
    assert m.last_out_seq == 1001 and m.last_out_ts == 126456


def test_input_sequence_wraparound() -> None:
    m = RtpMunger(first_out_seq=7)
    m.start_segment(65534, 0, 0)
    out = [m.map(s, 0) for s in (65534, 65535, 0, 1, 2)]
    assert [o[0] for o in out if o] == [7, 8, 9, 10, 11]


def test_output_sequence_wraparound() -> None:
    m = RtpMunger(first_out_seq=65534)
    m.start_segment(100, 0, 0)
    assert [m.map(s, 0) for s in (100, 101, 102)] == [(65534, 0), (65535, 0), (0, 0)]


def test_late_and_duplicate_packets_map_consistently() -> None:
    m = RtpMunger(first_out_seq=0)
    m.start_segment(10, 0, 0)
    assert m.map(10, 0) == (0, 0)
    assert m.map(13, 900) == (3, 900)  # 11, 12 lost
    assert m.map(11, 300) == (1, 300)  # late
    assert m.map(12, 600) == (2, 600)
    assert m.map(13, 900) == (3, 900)  # duplicate: same number
    assert m.last_out_seq == 3 and m.last_out_ts == 900
    assert m.map(9, 0) is None  # before the segment


def test_skip_closes_the_gap_and_late_packets_still_map() -> None:
    m = RtpMunger(first_out_seq=0)
    m.start_segment(100, 0, 0)
    assert m.map(100, 0) == (0, 0)
    # 101 lost for now, 102 is padding (skipped), 103 media
    assert m.skip(102)
    assert m.map(103, 10) == (2, 10)
    assert m.map(101, 5) == (1, 5)  # the late packet gets the number it would have had
    assert m.map(102, 7) is None  # a copy of the skipped packet
    assert not m.skip(101)  # cannot skip backwards
    assert m.map(104, 20) == (3, 20)


def test_switch_continues_sequence_and_uses_caller_timestamp() -> None:
    m = RtpMunger(first_out_seq=500)
    m.start_segment(1000, 90000, 90000)
    for i in range(5):
        m.map(1000 + i, 90000 + 3000 * i)
    assert m.last_out_seq == 504 and m.last_out_ts == 90000 + 12000
    # new layer: unrelated seq/ts bases
    m.start_segment(40000, 7_000_000, m.last_out_ts + 3000)
    assert m.map(40000, 7_000_000) == (505, 90000 + 15000)
    assert m.map(40001, 7_003_000) == (506, 90000 + 18000)
    assert m.map(39999, 6_997_000) is None  # older packet of the new layer: before the switch


def test_timestamp_wraparound_across_switch() -> None:
    m = RtpMunger()
    m.start_segment(0, 0xFFFFF000, 0xFFFFF000)
    m.map(0, 0xFFFFF000)
    m.start_segment(9, 5, (m.last_out_ts + 0x2000) & 0xFFFFFFFF)
    seq, ts = m.map(9, 5) or (0, 0)
    assert ts == 0x1000 and ts_diff(ts, 0xFFFFF000) == 0x2000
    assert m.map(10, 3005) == ((seq + 1) & 0xFFFF, 0x1000 + 3000)


def test_timestamps_aligned_by_sender_reports() -> None:
    """Two layers with unrelated RTP bases, SRs taken at the same NTP instant: a frame of the
    new layer captured 1/30 s later maps to reference ts + 3000."""
    ntp = 0xE000000000000000
    ref_sr = (ntp, 1_000_000)
    src_sr = (ntp, 4_000_000_000)
    assert ts_on_reference(4_000_003_000, src_sr, ref_sr, 90000) == 1_003_000
    # source SR 0.5 s later, its rtp base wraps
    src_sr2 = (ntp + (1 << 31), 0xFFFFFFF0)
    assert ts_on_reference(0xFFFFFFF0 + 90000 & 0xFFFFFFFF, src_sr2, ref_sr, 90000) == (
        1_000_000 + 45000 + 90000
    )


@given(
    first=st.integers(0, 65535),
    start=st.integers(0, 65535),
    ts0=st.integers(0, 2**32 - 1),
    events=st.lists(st.sampled_from(["send", "lose", "skip", "late"]), max_size=300),
)
def test_output_is_gapless_and_monotonic(
    first: int, start: int, ts0: int, events: list[str]
) -> None:
    """Whatever the mix of delivered, lost (delivered late), and skipped packets, output
    numbers are unique, gapless over delivered+late packets, and late ones fill their holes."""
    m = RtpMunger(first_out_seq=first)
    m.start_segment(start, ts0, ts0)
    seq = start
    mapped: dict[int, int] = {}
    skipped = 0
    held: list[int] = []
    for ev in events:
        if ev == "send":
            r = m.map(seq & 0xFFFF, ts0)
            assert r is not None
            mapped[seq] = r[0]
        elif ev == "lose":
            held.append(seq)
        elif ev == "skip":
            if m.skip(seq & 0xFFFF):
                skipped += 1
            else:  # only possible for nothing here: sequence always moves forward
                raise AssertionError
        elif ev == "late" and held:
            s = held.pop(0)
            r = m.map(s & 0xFFFF, ts0)
            assert r is not None
            mapped[s] = r[0]
            continue
        else:
            continue
        seq += 1
    for s in held:
        r = m.map(s & 0xFFFF, ts0)
        assert r is not None
        mapped[s] = r[0]
    outs = [mapped[s] for s in sorted(mapped)]
    assert len(set(outs)) == len(outs)
    assert all(((outs[i + 1] - outs[i]) & 0xFFFF) == 1 for i in range(len(outs) - 1))
    if outs:
        assert outs[0] == first
