"""Our RTP/RTCP builders, checked by parsing them back with aiortc's parsers."""

from __future__ import annotations

from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    HeaderExtensionsMap,
    RtcpByePacket,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSrPacket,
    RtpPacket,
    unpack_remb_fci,
    unwrap_rtx,
)

from trackyard.sfu.rtppacket import (
    EXT_ABS_SEND_TIME,
    EXT_AUDIO_LEVEL,
    EXT_MID,
    ExtensionWriter,
    ReportBlock,
    abs_send_time,
    ntp_now,
    ntp_to_compact,
    rtcp_bye,
    rtcp_fir,
    rtcp_nack,
    rtcp_pli,
    rtcp_remb,
    rtcp_rr,
    rtcp_sdes,
    rtcp_sr,
    rtp_header,
    rtx_packet,
)

IDS = {EXT_MID: 1, EXT_AUDIO_LEVEL: 2, EXT_ABS_SEND_TIME: 3}


def _ext_map() -> HeaderExtensionsMap:
    m = HeaderExtensionsMap()
    m.configure(
        RTCRtpParameters(
            headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=u) for u, i in IDS.items()]
        )
    )
    return m


def test_rtp_with_video_extensions_parses_back() -> None:
    w = ExtensionWriter(IDS, "3")
    data = rtp_header(96, 1, 65535, 0xFFFFFFFF, 0x12345678, w.video(0xABCDEF)) + b"payload"
    p = RtpPacket.parse(data, _ext_map())
    assert (p.payload_type, p.marker, p.sequence_number, p.timestamp, p.ssrc) == (
        96,
        1,
        65535,
        0xFFFFFFFF,
        0x12345678,
    )
    assert p.extensions.mid == "3" and p.extensions.abs_send_time == 0xABCDEF
    assert p.payload == b"payload"


def test_rtp_with_audio_level_and_without_extensions() -> None:
    w = ExtensionWriter(IDS, "audio0")
    p = RtpPacket.parse(rtp_header(111, 0, 1, 2, 3, w.audio((True, 42))) + b"x", _ext_map())
    assert p.extensions.mid == "audio0" and p.extensions.audio_level == (True, 42)
    p = RtpPacket.parse(rtp_header(111, 0, 1, 2, 3, w.audio(None)) + b"x", _ext_map())
    assert p.extensions.mid == "audio0" and p.extensions.audio_level is None
    bare = ExtensionWriter({}, None)
    assert bare.video(5) == b"" and bare.audio((False, 3)) == b""
    p = RtpPacket.parse(rtp_header(0, 0, 1, 2, 3) + b"x")
    assert p.payload == b"x"


def test_rtx_wrapping_round_trips() -> None:
    w = ExtensionWriter(IDS, "1")
    header = rtp_header(96, 1, 4242, 777, 0xAAAA, w.video(1))
    original = header + b"media"
    rtx = RtpPacket.parse(rtx_packet(original, len(header), 97, 9, 0xBBBB), _ext_map())
    assert (rtx.payload_type, rtx.sequence_number, rtx.ssrc, rtx.timestamp, rtx.marker) == (
        97,
        9,
        0xBBBB,
        777,
        1,
    )
    assert rtx.extensions.mid == "1"
    media = unwrap_rtx(rtx, payload_type=96, ssrc=0xAAAA)
    assert media.sequence_number == 4242 and media.payload == b"media"


def test_rtcp_builders_parse_back() -> None:
    ntp = ntp_now()
    block = ReportBlock(ssrc=5, fraction_lost=12, packets_lost=-3, highest_seq=70000, jitter=9)
    block.lsr, block.dlsr = ntp_to_compact(ntp), 65536
    data = (
        rtcp_sr(1, ntp, 90000, 10, 2000, [block])
        + rtcp_sdes(1, "cname-x")
        + rtcp_rr(2, [block])
        + rtcp_pli(3, 4)
        + rtcp_fir(3, 4, 7)
        + rtcp_nack(3, 4, [65535, 0, 1, 17, 40])
        + rtcp_remb(3, 2_500_000, [4, 5])
        + rtcp_bye([1, 2])
    )
    packets = RtcpPacket.parse(data)
    sr, sdes, rr, pli, fir, nack, remb, bye = packets
    assert isinstance(sr, RtcpSrPacket) and sr.ssrc == 1
    assert sr.sender_info.ntp_timestamp == ntp and sr.sender_info.rtp_timestamp == 90000
    assert (sr.sender_info.packet_count, sr.sender_info.octet_count) == (10, 2000)
    r = sr.reports[0]
    assert (r.ssrc, r.fraction_lost, r.packets_lost, r.highest_sequence, r.jitter) == (
        5,
        12,
        -3,
        70000,
        9,
    )
    assert r.lsr == ntp_to_compact(ntp) and r.dlsr == 65536
    assert isinstance(sdes, RtcpSdesPacket) and sdes.chunks[0].items == [(1, b"cname-x")]
    assert isinstance(rr, RtcpRrPacket) and rr.ssrc == 2 and rr.reports[0].ssrc == 5
    assert isinstance(pli, RtcpPsfbPacket) and (pli.fmt, pli.ssrc, pli.media_ssrc) == (1, 3, 4)
    assert isinstance(fir, RtcpPsfbPacket) and fir.fmt == 4 and fir.fci[:4] == b"\x00\x00\x00\x04"
    assert isinstance(nack, RtcpRtpfbPacket) and nack.media_ssrc == 4
    assert sorted(nack.lost) == [0, 1, 17, 40, 65535]
    assert isinstance(remb, RtcpPsfbPacket) and remb.fmt == 15
    bitrate, ssrcs = unpack_remb_fci(remb.fci)
    assert ssrcs == [4, 5] and abs(bitrate - 2_500_000) < 2_500_000 / 10000
    assert isinstance(bye, RtcpByePacket) and bye.sources == [1, 2]


def test_abs_send_time_is_24_bits() -> None:
    assert 0 <= abs_send_time() < 1 << 24
    assert abs_send_time(1.5) == int(1.5 * 262144) & 0xFFFFFF
