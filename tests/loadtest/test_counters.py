"""The load tester's per-SSRC counting (loss by sequence gaps, wrap-around) and SDP mapping."""

from __future__ import annotations

from trackyard.loadtest.client import SdpStreams, StreamCounter


def test_loss_from_sequence_gaps_across_wrap() -> None:
    c = StreamCounter("TR_a")
    for seq in [65530, 65531, 65533, 65534, 65535, 0, 1, 3]:  # 65532 and 2 missing
        c.add(seq, 100, 1.0)
    assert c.packets == 8 and c.bytes == 800
    assert c.lost == 2
    c.add(2, 100, 1.1)  # late arrival: no longer lost
    assert c.lost == 1
    c.add(1, 100, 1.2)  # duplicate of an old one: counted, never negative loss
    assert c.lost == 0


def test_rtx_streams_count_no_loss() -> None:
    c = StreamCounter("TR_a", rtx=True)
    c.add(10, 50, 1.0)
    c.add(20, 50, 1.0)
    assert c.lost == 0


def test_sdp_maps_ssrcs_to_tracks() -> None:
    sdp = "\r\n".join(
        [
            "v=0",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "a=msid:PA_x|TR_audio TR_audio",
            "a=ssrc:111 cname:x",
            "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
            "a=ssrc-group:FID 222 333",
            "a=ssrc:222 cname:x",
            "a=ssrc:222 msid:PA_y|TR_video TR_video",
            "a=ssrc:333 cname:x",
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
            "",
        ]
    )
    s = SdpStreams()
    s.parse(sdp)
    assert s.track_of == {111: "TR_audio", 222: "TR_video", 333: "TR_video"}
    assert s.kind_of == {"TR_audio": "audio", "TR_video": "video"}
    assert s.rtx == {333}
