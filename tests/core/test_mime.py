from __future__ import annotations

import pytest

from trackyard.core import mime


@pytest.mark.parametrize(
    ("given", "kind", "expected"),
    [
        ("vp8", "video", "video/VP8"),
        ("VP8", "", "video/VP8"),
        ("video/vp8", "", "video/VP8"),
        ("h264", "video", "video/H264"),
        ("av1", "", "video/AV1"),
        ("opus", "audio", "audio/opus"),
        ("OPUS", "", "audio/opus"),
        ("audio/red", "", "audio/red"),
        ("pcmu", "", "audio/PCMU"),
        ("", "video", ""),
    ],
)
def test_canonical_is_livekits_spelling(given: str, kind: str, expected: str) -> None:
    assert mime.canonical(given, kind) == expected


def test_short_name_is_subscribed_codec_form() -> None:
    assert mime.short_name("video/VP8") == "vp8"
    assert mime.short_name("video/H264") == "h264"
