"""H.264 keyframe detection on real libx264 output packetized by aiortc."""

from __future__ import annotations

import fractions

import av
import numpy as np
from aiortc.codecs.h264 import H264Encoder

from trackyard.sfu.h264 import NAL_IDR, NAL_SPS, begins_keyframe, nal_types


def _frame(n: int) -> av.VideoFrame:
    yuv = np.full((360, 320), 128, np.uint8)
    yuv[:240] = (np.arange(320, dtype=np.uint16)[None, :] * 3 + 11 * n) % 256
    frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
    frame.pts = n * 3000
    frame.time_base = fractions.Fraction(1, 90000)
    return frame


def test_idr_frames_begin_with_a_keyframe_packet() -> None:
    encoder = H264Encoder()
    seen_key = 0
    for n in range(10):
        payloads, _ = encoder.encode(_frame(n), force_keyframe=n == 6)
        starts = [begins_keyframe(p) for p in payloads]
        if n in (0, 6):
            assert starts[0], n
            assert NAL_SPS in nal_types(payloads[0]) or NAL_IDR in nal_types(payloads[0])
            seen_key += 1
        else:
            assert not any(starts), n
    assert seen_key == 2


def test_packetization_modes() -> None:
    assert begins_keyframe(bytes((0x67, 0x42)))  # single SPS
    assert begins_keyframe(bytes((0x65, 0x88)))  # single IDR slice
    assert not begins_keyframe(bytes((0x41, 0x9A)))  # non-IDR slice
    stap = bytes((0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xCE))  # STAP-A: SPS + PPS
    assert nal_types(stap) == [7, 8] and begins_keyframe(stap)
    fu_start = bytes((0x7C, 0x85, 0x00))  # FU-A, start bit, IDR
    fu_middle = bytes((0x7C, 0x05, 0x00))
    assert begins_keyframe(fu_start) and not begins_keyframe(fu_middle)
    assert not begins_keyframe(b"")
    assert nal_types(bytes((0x78, 0, 9, 0x67))) == []  # truncated aggregation
