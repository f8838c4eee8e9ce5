"""What the SFU reads out of session descriptions itself (aiortc's remote track ids are random)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_ICE_UFRAG = re.compile(r"^a=ice-ufrag:(\S+)", re.MULTILINE)  # bundled: the first is all's
_ICE_PWD = re.compile(r"^a=ice-pwd:(\S+)", re.MULTILINE)


def ice_credentials(sdp: str) -> tuple[str, str] | None:
    """The (ufrag, password) a description offers or answers with; None if it has none."""
    ufrag = _ICE_UFRAG.search(sdp)
    password = _ICE_PWD.search(sdp)
    if ufrag is None or password is None:
        return None
    return ufrag.group(1), password.group(1)


@dataclass(slots=True)
class MediaSection:
    kind: str  # audio | video | application
    mid: str = ""
    msid_stream: str = ""
    msid_track: str = ""  # = the client's track cid for LiveKit SDKs
    direction: str = "sendrecv"
    port: int = 9
    rids: list[str] = field(default_factory=list)
    codecs: list[str] = field(default_factory=list)  # mime subtypes, lower case, in order


_DIRECTIONS = {"sendrecv", "sendonly", "recvonly", "inactive"}


def parse_media_sections(sdp: str) -> list[MediaSection]:
    sections: list[MediaSection] = []
    current: MediaSection | None = None
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            parts = line[2:].split()
            current = MediaSection(kind=parts[0] if parts else "")
            if len(parts) > 1 and parts[1].isdigit():
                current.port = int(parts[1])
            sections.append(current)
        elif current is None:
            continue
        elif line.startswith("a=mid:"):
            current.mid = line[6:]
        elif line.startswith("a=msid:"):
            parts = line[7:].split()
            current.msid_stream = parts[0] if parts else ""
            current.msid_track = parts[1] if len(parts) > 1 else ""
        elif line[2:] in _DIRECTIONS and line.startswith("a="):
            current.direction = line[2:]
        elif line.startswith("a=rid:"):
            parts = line[6:].split()
            if len(parts) >= 2 and parts[1] == "send":
                current.rids.append(parts[0])
        elif line.startswith("a=rtpmap:"):
            _, _, rest = line.partition(" ")
            current.codecs.append(rest.split("/")[0].lower())
    return sections
