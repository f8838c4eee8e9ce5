"""VP8 payload descriptor parsing and picture-id rewriting, on real libvpx output (PyAV)."""

from __future__ import annotations

import fractions
from collections.abc import Iterator

import av
import numpy as np
import pytest
from aiortc.codecs.vpx import Vp8Encoder, VpxPayloadDescriptor, vp8_depayload

from trackyard.sfu.vp8 import Vp8Munger, parse_vp8

W, H = 320, 240


def _frame(n: int, width: int = W, height: int = H) -> av.VideoFrame:
    yuv = np.full((height * 3 // 2, width), 128, np.uint8)
    yuv[:height] = (np.arange(width, dtype=np.uint16)[None, :] + 7 * n) % 256
    frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
    frame.pts = n * 3000
    frame.time_base = fractions.Fraction(1, 90000)
    return frame


def _encode(
    count: int, keyframes: set[int], width: int = W, height: int = H
) -> Iterator[list[bytes]]:
    encoder = Vp8Encoder()
    for n in range(count):
        payloads, _ = encoder.encode(_frame(n, width, height), force_keyframe=n in keyframes)
        yield payloads


def _decode(frames: list[list[bytes]]) -> list[av.VideoFrame]:
    codec = av.CodecContext.create("libvpx", "r")
    out: list[av.VideoFrame] = []
    for payloads in frames:
        data = b"".join(vp8_depayload(p) for p in payloads)
        out.extend(codec.decode(av.Packet(data)))
    return out


def test_keyframe_detection_and_resolution_on_libvpx_output() -> None:
    frames = list(_encode(12, keyframes={0, 7}))
    for n, payloads in enumerate(frames):
        descs = [parse_vp8(p) for p in payloads]
        assert all(d is not None for d in descs)
        first = descs[0]
        assert first is not None and first.begins_frame
        assert first.keyframe == (n in {0, 7}), n
        if first.keyframe:
            assert (first.width, first.height) == (W, H)
        else:
            assert (first.width, first.height) == (0, 0)
        for d in descs[1:]:
            assert d is not None and not d.begins_frame and not d.keyframe
        # picture id agrees with aiortc's own parser
        for p, d in zip(payloads, descs, strict=True):
            ref, rest = VpxPayloadDescriptor.parse(p)
            assert d is not None
            assert d.picture_id == ref.picture_id
            assert d.picture_id_wide
            assert p[d.size :] == rest


def test_other_resolution_is_read_from_keyframe() -> None:
    first = next(_encode(1, {0}, 640, 360))[0]
    d = parse_vp8(first)
    assert d is not None and d.keyframe and (d.width, d.height) == (640, 360)


def _descriptor(
    pid: int | None, wide: bool, tl0: int | None, tid: int | None, keyidx: int | None
) -> bytes:
    x = 0
    body = b""
    if pid is not None:
        x |= 0x80
        body += bytes((0x80 | (pid >> 8), pid & 0xFF)) if wide else bytes((pid & 0x7F,))
    if tl0 is not None:
        x |= 0x40
        body += bytes((tl0,))
    if tid is not None or keyidx is not None:
        x |= (0x20 if tid is not None else 0) | (0x10 if keyidx is not None else 0)
        body += bytes((((tid or 0) << 6) | (keyidx or 0),))
    return bytes((0x90, x)) + body + b"\x01\x02\x03"  # S=1 PID=0, inter frame (P bit set)


@pytest.mark.parametrize("wide", [True, False])
def test_all_descriptor_fields(wide: bool) -> None:
    raw = _descriptor(pid=100, wide=wide, tl0=200, tid=2, keyidx=17)
    d = parse_vp8(raw)
    assert d is not None
    assert (d.picture_id, d.picture_id_wide, d.tl0picidx, d.tid, d.keyidx) == (
        100,
        wide,
        200,
        2,
        17,
    )
    assert d.begins_frame and not d.keyframe
    assert raw[d.size :] == b"\x01\x02\x03"


def test_malformed_descriptors() -> None:
    assert parse_vp8(b"") is None
    assert parse_vp8(b"\x80") is None  # X set, no extension byte
    assert parse_vp8(b"\x90\x80") is None  # I set, no picture id
    assert parse_vp8(b"\x90\x80\x85") is None  # 15-bit picture id cut short
    d = parse_vp8(b"\x00\x00")  # continuation packet, no extension
    assert d is not None and not d.begins_frame and d.picture_id == -1


def test_munger_passes_an_unswitched_stream_through_unchanged() -> None:
    munger = Vp8Munger()
    for payloads in _encode(5, {0}):
        for p in payloads:
            d = parse_vp8(p)
            assert d is not None
            assert munger.rewrite(p, d) is p


def test_munger_keeps_picture_ids_continuous_across_a_switch_and_stays_decodable() -> None:
    """Forward 6 frames of one encoder ("layer A"), then switch at a keyframe to another
    encoder ("layer B", unrelated picture ids): ids continue +1 and the result decodes."""
    a = list(_encode(6, {0}))
    b = list(_encode(10, {0, 4}))
    munger = Vp8Munger()
    out: list[list[bytes]] = []
    for payloads in a:
        out.append([munger.rewrite(p, d) for p in payloads if (d := parse_vp8(p)) is not None])
    first_b = parse_vp8(b[4][0])
    assert first_b is not None and first_b.keyframe
    munger.switch(first_b)
    for payloads in b[4:]:
        out.append([munger.rewrite(p, d) for p in payloads if (d := parse_vp8(p)) is not None])
    ids = []
    for payloads in out:
        d = parse_vp8(payloads[0])
        assert d is not None
        ids.append(d.picture_id)
    assert all((ids[i + 1] - ids[i]) % 0x8000 == 1 for i in range(len(ids) - 1)), ids
    # payload after the descriptor untouched
    for src, dst in zip(b[4][0:1], out[6][0:1], strict=True):
        ds, dd = parse_vp8(src), parse_vp8(dst)
        assert ds is not None and dd is not None
        assert src[ds.size :] == dst[dd.size :]
    decoded = _decode(out)
    assert len(decoded) == len(out)


def test_munger_rewrites_tl0picidx_keyidx_and_7bit_ids_with_wraparound() -> None:
    munger = Vp8Munger()
    # source 1: ids 125..127 (7-bit), tl0 254..255, keyidx 30..31
    for i, (pid, tl0, kidx) in enumerate([(125, 254, 30), (126, 255, 31), (127, 255, 31)]):
        raw = _descriptor(pid, False, tl0, 0, kidx)
        d = parse_vp8(raw)
        assert d is not None
        assert munger.rewrite(raw, d) == raw, i
    # switch to a source whose next picture is (5, 9, 3)
    key = bytes((0x90, 0xF0, 5, 9, 3)) + b"\x00\x00\x00"  # keyframe (P bit 0)
    d = parse_vp8(key)
    assert d is not None and d.keyframe
    munger.switch(d)
    out = parse_vp8(munger.rewrite(key, d))
    assert out is not None
    assert (out.picture_id, out.tl0picidx, out.keyidx) == (0, 0, 0)  # wrapped: 127+1, 255+1, 31+1
    nxt = _descriptor(6, False, 10, 1, 3)
    d2 = parse_vp8(nxt)
    assert d2 is not None
    o2 = parse_vp8(munger.rewrite(nxt, d2))
    assert o2 is not None
    assert (o2.picture_id, o2.tl0picidx, o2.keyidx, o2.tid) == (1, 1, 0, 1)
