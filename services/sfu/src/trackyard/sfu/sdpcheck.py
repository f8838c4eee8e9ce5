"""Check a client's session description before aiortc parses it.

aiortc's parser asserts and ``int()``s its way through an SDP: a malformed one raises deep in
``setRemoteDescription`` (``AssertionError`` in ``ipaddress_from_sdp``, ``invalid literal for
int()``, "ICE username fragment or password is missing") and can leave the connection half
changed. :func:`problem` reads every line aiortc would interpret and says, in words, what is
wrong; the participant then refuses the description the LiveKit way (a failed negotiation:
``leave{STATE_MISMATCH, RECONNECT}``, the client rejoins) and nobody else is touched.
"""

from __future__ import annotations

import re

MAX_SDP_BYTES = 256 * 1024
_MEDIA = re.compile(r"^m=([^ ]+) ([0-9]+) ([A-Z/]+) (.+)$")
_ADDRESS = re.compile(r"^IN (IP4|IP6) ([^ ]+)$")
_FORBIDDEN_PT = set(range(72, 77))  # RTCP packet types (aiortc's FORBIDDEN_PAYLOAD_TYPES)
_SETUP = {"active", "passive", "actpass"}
_TYPES = {"offer", "answer"}
_DIRECTIONS = {"sendrecv", "sendonly", "recvonly", "inactive"}
_VALUED = {  # attributes aiortc reads a value from (the rest may stand alone)
    "fingerprint",
    "setup",
    "extmap",
    "rtpmap",
    "fmtp",
    "sctpmap",
    "rtcp-fb",
    "rtcp",
    "ssrc",
    "ssrc-group",
    "candidate",
    "max-message-size",
    "sctp-port",
    "group",
    "msid-semantic",
    "ice-ufrag",
    "ice-pwd",
    "mid",
    "msid",
    "ice-options",
}
_FMTP_INTS = {"apt", "max-fr", "max-fs", "maxplaybackrate", "minptime", "stereo", "useinbandfec"}
_CANDIDATE = re.compile(
    r"^\S+ \d+ \S+ \d+ \S+ \d+ typ \S+( .*)?$"  # foundation component proto prio addr port typ
)


def _int(text: str, what: str, lo: int = 0, hi: int = 2**32 - 1) -> str:
    if not re.fullmatch(r"[0-9]+", text or "") or not lo <= int(text) <= hi:
        return f"{what} is not an integer in {lo}..{hi}: {text[:40]!r}"
    return ""


def _attr(line: str) -> tuple[str, str | None]:
    name, sep, value = line[2:].partition(":")
    return name, value if sep else None


def _check_attr(name: str, value: str | None, kind: str, pts: set[int]) -> str:
    if value is None:  # "a=name" without a colon: aiortc reads None and fails on some
        return f"a={name} needs a value" if name in _VALUED else ""
    if name == "fingerprint":
        if len(value.split()) != 2:
            return "a=fingerprint needs an algorithm and a value"
    elif name == "setup":
        if value not in _SETUP:
            return f"a=setup must be one of {sorted(_SETUP)}"
    elif name == "extmap":
        bits = value.split()
        if len(bits) != 2:
            return "a=extmap needs an id and a URI"
        return _int(bits[0].split("/")[0], "a=extmap id", 1, 255)
    elif name == "rtpmap":
        fmt, sep, desc = value.partition(" ")
        parts = desc.split("/")
        problem = _int(fmt, "a=rtpmap payload type", 0, 255)
        if problem or not sep or len(parts) < 2 or not parts[0]:
            return problem or "a=rtpmap needs '<pt> <codec>/<clock rate>'"
        problem = _int(parts[1], "a=rtpmap clock rate", 1, 10**7)
        if not problem and kind == "audio" and len(parts) > 2:
            problem = _int(parts[2], "a=rtpmap channels", 1, 255)
        if not problem:
            pts.add(int(fmt))
        return problem
    elif name in ("fmtp", "sctpmap"):
        fmt, sep, _ = value.partition(" ")
        if not sep:
            return f"a={name} needs '<format> <parameters>'"
        problem = _int(fmt, f"a={name} format", 0, 65535)
        if not problem and name == "fmtp" and int(fmt) not in pts:
            return f"a=fmtp for payload type {fmt} without a=rtpmap"
        if not problem and name == "fmtp":
            for param in value.partition(" ")[2].split(";"):
                key, eq, val = param.partition("=")
                if eq and key in _FMTP_INTS and not re.fullmatch(r"-?[0-9]+", val.strip()):
                    return f"a=fmtp parameter {key} is not an integer: {val[:20]!r}"
        return problem
    elif name == "rtcp-fb":
        if len(value.split(" ", 2)) < 2:
            return "a=rtcp-fb needs '<pt> <type>'"
    elif name == "max-message-size":
        return _int(value, "a=max-message-size")
    elif name == "sctp-port":
        return _int(value, "a=sctp-port", 0, 65535)
    elif name == "rtcp":
        port, sep, host = value.partition(" ")
        if sep and not host:
            return "a=rtcp has a space but no address"
        problem = _int(port, "a=rtcp port", 0, 65535)
        if not problem and host and not _ADDRESS.match(host):
            return f"a=rtcp address is not 'IN IP4|IP6 <address>': {host[:40]!r}"
        return problem
    elif name == "ssrc":
        ssrc, sep, desc = value.partition(" ")
        if not sep or ":" not in desc:
            return "a=ssrc needs '<ssrc> <attribute>:<value>'"
        return _int(ssrc, "a=ssrc")
    elif name == "ssrc-group":
        bits = value.split()
        if not bits:
            return "a=ssrc-group is empty"
        for b in bits[1:]:
            if problem := _int(b, "a=ssrc-group ssrc"):
                return problem
    elif name == "candidate":
        return candidate_problem(value)
    return ""


def candidate_problem(value: str) -> str:
    """What is wrong with an ICE candidate (without its ``candidate:`` prefix), or ""."""
    if not _CANDIDATE.match(value):
        return f"a=candidate is malformed: {value[:60]!r}"
    bits = value.split()
    for i in range(8, len(bits) - 1, 2):
        if bits[i] == "rport" and (problem := _int(bits[i + 1], "candidate rport", 0, 65535)):
            return problem
    return (
        _int(bits[1], "candidate component", 1, 256)
        or _int(bits[3], "candidate priority")
        or _int(bits[5], "candidate port", 0, 65535)
    )


def problem(sdp: str, kind: str) -> str:
    """What is wrong with ``sdp`` (a client's ``kind``: offer|answer), or "" when fine."""
    if kind not in _TYPES:
        return f"session description type {kind!r} is not offer or answer"
    if not sdp.strip():
        return f"empty {kind}"
    if len(sdp.encode("utf-8", "replace")) > MAX_SDP_BYTES:
        return f"{kind} is larger than {MAX_SDP_BYTES} bytes"
    if "\x00" in sdp:
        return f"{kind} contains a NUL character"
    lines = [line.rstrip("\r") for line in sdp.split("\n") if line.strip()]
    if not lines or lines[0] != "v=0":
        return f"{kind} does not start with v=0"
    session_ice = {"ice-ufrag": False, "ice-pwd": False}
    session_fp = False
    media: list[dict[str, bool]] = []
    kind_of = ""
    pts: set[int] = set()
    for number, line in enumerate(lines, 1):
        if len(line) < 2 or line[1] != "=":
            return f"line {number} is not '<type>=<value>': {line[:40]!r}"
        if line.startswith("m="):
            m = _MEDIA.match(line)
            if not m:
                return f"line {number}: m= line is not '<media> <port> <proto> <formats>'"
            kind_of = m.group(1)
            if problem := _int(m.group(2), f"line {number}: m= port", 0, 65535):
                return problem
            if kind_of in ("audio", "video"):
                for fmt in m.group(4).split():
                    if problem := _int(fmt, f"line {number}: payload type", 0, 255):
                        return problem
                    if int(fmt) in _FORBIDDEN_PT:
                        return f"line {number}: payload type {fmt} is reserved for RTCP"
            media.append(
                {
                    "ice-ufrag": False,
                    "ice-pwd": False,
                    "fingerprint": False,
                    "direction": kind_of not in ("audio", "video"),
                }
            )
            pts = set()
        elif line.startswith("c="):
            if not _ADDRESS.match(line[2:]):
                return f"line {number}: c= is not 'IN IP4|IP6 <address>'"
        elif line.startswith("a="):
            name, value = _attr(line)
            if name in ("ice-ufrag", "ice-pwd"):
                if not value:
                    return f"line {number}: a={name} is empty"
                (media[-1] if media else session_ice)[name] = True
            elif name in _DIRECTIONS and media:
                media[-1]["direction"] = True
            elif name == "fingerprint":
                if media:
                    media[-1]["fingerprint"] = True
                else:
                    session_fp = True
            if problem := _check_attr(name, value, kind_of, pts):
                return f"line {number}: {problem}"
    if not media:
        return f"{kind} has no media section"
    for index, section in enumerate(media):
        for attr in ("ice-ufrag", "ice-pwd"):
            if not (section[attr] or session_ice[attr]):
                return f"media section {index} has no a={attr}"
        if not (section["fingerprint"] or session_fp):
            return f"media section {index} has no DTLS a=fingerprint"
        if not section["direction"]:
            return f"media section {index} has no direction (a=sendrecv|sendonly|recvonly|inactive)"
    return ""
