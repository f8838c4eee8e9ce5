"""Codec MIME types in LiveKit's spelling (``video/VP8``, ``audio/opus``).

Clients send short codec names (``vp8``) in ``add_track`` and SDPs carry any case; every MIME
type we put on the wire goes through :func:`canonical`, because the browser SDK splits it on
``/`` and compares the subtype case-sensitively.
"""

from __future__ import annotations

__all__ = ["canonical", "short_name"]

# subtype (lower case) -> LiveKit's spelling of the subtype
_SUBTYPES = {
    "vp8": "VP8",
    "vp9": "VP9",
    "h264": "H264",
    "h265": "H265",
    "av1": "AV1",
    "opus": "opus",
    "red": "red",
    "pcmu": "PCMU",
    "pcma": "PCMA",
    "g722": "G722",
    "rtx": "rtx",
}
_AUDIO = {"opus", "red", "pcmu", "pcma", "g722"}


def canonical(codec: str, kind: str = "") -> str:
    """``vp8``/``video/vp8``/``VP8`` -> ``video/VP8``; ``kind`` decides when the name is bare
    (otherwise audio codecs are known by name and the rest is video). ``""`` stays ``""``."""
    if not codec:
        return ""
    prefix, _, subtype = codec.rpartition("/")
    key = subtype.lower()
    if not prefix:
        prefix = kind or ("audio" if key in _AUDIO else "video")
    return f"{prefix.lower()}/{_SUBTYPES.get(key, subtype)}"


def short_name(mime: str) -> str:
    """``video/VP8`` -> ``vp8``: the form LiveKit uses in ``SubscribedCodec.codec``."""
    return mime.rpartition("/")[2].lower()
