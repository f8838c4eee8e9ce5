"""The SDP checks run before aiortc: whatever they let through, aiortc's parser accepts.

A seeded fuzzer mutates real offers (made by aiortc with audio, video and a data channel, as
the SDK's are) line by line and character by character; the property is one-sided: a
description :func:`sdpcheck.problem` passes never makes ``SessionDescription.parse`` raise.
"""

from __future__ import annotations

import random

import pytest
from aiortc import RTCPeerConnection
from aiortc.sdp import SessionDescription

from trackyard.sfu import sdpcheck

SEED = 8
CASES = 4000
JUNK = [
    "a=ice-ufrag:",
    "c=IN IP4",
    "c=IN IP9 1.2.3.4",
    "a=rtpmap:abc opus/48000",
    "a=rtpmap:111 opus/x",
    "a=fmtp:250 x=1",
    "a=extmap:x urn:foo",
    "a=ssrc:12 cname",
    "a=candidate:1 1 udp 1 1.2.3.4 x typ host",
    "a=setup:sideways",
    "a=fingerprint:sha-256",
    "m=video x UDP/TLS/RTP/SAVPF 96",
    "m=audio 9 UDP/TLS/RTP/SAVPF 73",
    "a=rtcp:9 IN IP4",
    "a=max-message-size:big",
    "a=sctp-port:-1",
    "\x00",
    "garbage",
    "a=ssrc-group:FID 1 x",
]


async def _offer() -> str:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendonly")
    pc.addTransceiver("video", direction="sendonly")
    pc.createDataChannel("_reliable")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def _mutate(rng: random.Random, sdp: str) -> str:
    lines = sdp.split("\r\n")
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(6)
        i = rng.randrange(len(lines))
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, rng.choice(JUNK))
        elif op == 2 and lines[i]:
            j = rng.randrange(len(lines[i]))
            lines[i] = lines[i][:j] + rng.choice(" :/x9-\t=") + lines[i][j + 1 :]
        elif op == 3:
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
        elif op == 4:
            lines[i], lines[-1 - i] = lines[-1 - i], lines[i]
        else:
            lines[i] = lines[i].replace(" ", "", 1)
    return "\r\n".join(lines)


async def test_a_real_offer_passes() -> None:
    assert sdpcheck.problem(await _offer(), "offer") == ""


@pytest.mark.parametrize(
    ("sdp", "words"),
    [
        ("", "empty"),
        ("v=1\r\n", "v=0"),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "no media"),
    ],
)
def test_refusals_say_why(sdp: str, words: str) -> None:
    assert words in sdpcheck.problem(sdp, "offer")


async def test_what_passes_the_checks_parses_in_aiortc() -> None:
    rng = random.Random(SEED)
    base = await _offer()
    refused = 0
    for _ in range(CASES):
        sdp = _mutate(rng, base)
        if sdpcheck.problem(sdp, "offer"):
            refused += 1
            continue
        SessionDescription.parse(sdp)  # must not raise
    assert CASES // 10 < refused < CASES  # the fuzzer both breaks and spares descriptions
