"""TURN with a real coturn: ``rtc.turn_servers`` reach the SDK in ``JoinResponse.ice_servers``
with TURN REST credentials coturn (``use-auth-secret``) accepts, and media flows through the
relay: for a client forced to relay-only ICE, for a client whose direct UDP to the SFU (and to
coturn) is dropped by an nftables rule (TURN over TCP), and for a node that relays its own side.

Proof that the relay carries the media, not just that media arrives: in the SDK's WebRTC stats,
every candidate pair of both peer connections that carried bytes has a local candidate of type
RELAY on coturn's relay ports (over TCP when UDP is blocked), relay pairs carried bytes both ways,
and coturn's log shows the allocation for that participant's sid. Every candidate pair that
carried bytes is checked, not only the selected one: with both a UDP and a TCP allocation the
selected pair is not settled when media flows (the SFU, aioice, nominates aggressively on the
subscriber connection and sends on the last nominated pair, which need not be the client's
selected one), and a relay-only client may end up on either allocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from livekit import rtc
from livekit.rtc._proto import stats_pb2

from tests.support.browser import MEDIA_CALL, Browser, browser_fixture
from tests.support.media import dominant_tone, pattern_video, read_numbers, tone_audio
from tests.support.nft import input_rules
from tests.support.sdk import EventWaiter, connected
from tests.support.trackyard import TrackyardProcess
from tests.support.turn import NETNS_ADDRESS, TurnServer, ephemeral_ports

pytestmark = pytest.mark.sdk

SFU_PORTS = (45000, 45499)
# Below the kernel's ephemeral range (32768-60999 in a fresh namespace): the clients' host
# candidates bind ephemeral ports on the same address as coturn's relay, and ``udp_blocked``
# lets UDP from the relay ports through; a host socket that landed in the relay range got
# through too (the selected "relayed" pair was HOST 10.213.0.1:460xx in a few CI runs).
RELAY_PORTS = (30000, 30199)
NO_SIMULCAST = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=False)
RELAY_ONLY = rtc.RoomOptions(
    rtc_config=rtc.RtcConfiguration(ice_transport_type=rtc.IceTransportType.TRANSPORT_RELAY)
)
Candidate = stats_pb2.IceCandidateStats
RELAY = stats_pb2.IceCandidateType.RELAY
UDP = stats_pb2.IceServerTransportProtocol.TRANSPORT_UDP
TCP = stats_pb2.IceServerTransportProtocol.TRANSPORT_TCP


browser = browser_fixture()


@pytest.fixture(scope="module")
def turn(netns: None) -> Iterator[TurnServer]:
    low, high = ephemeral_ports()
    assert RELAY_PORTS[1] < low or RELAY_PORTS[0] > high, (
        f"coturn's relay ports {RELAY_PORTS} overlap the ephemeral ports {low}-{high}: a client's"
        " host candidate could pass udp_blocked's rule for relayed packets"
    )
    with TurnServer(relay_ports=RELAY_PORTS) as server:
        yield server


def _config(turn: TurnServer, **node: object) -> dict[str, object]:
    return {
        "room": {"departure_timeout": 1, "empty_timeout": 3},
        "logging": {"level": "debug"},
        "rtc": {
            "port_range_start": SFU_PORTS[0],
            "port_range_end": SFU_PORTS[1],
            "node_ip": NETNS_ADDRESS,
            "turn_servers": turn.turn_servers("udp", "tcp"),
        },
        "node": dict(node),
    }


@pytest.fixture(scope="module")
def server(turn: TurnServer) -> Iterator[TrackyardProcess]:
    with TrackyardProcess(_config(turn)) as proc:
        yield proc
        assert proc.alive(), f"server died during the module:\n{proc.logs()}"


@dataclass(frozen=True)
class Pair:
    """One ICE candidate pair of one of the SDK's peer connections, from its WebRTC stats."""

    pc: str  # "publisher" | "subscriber"
    local: Candidate
    remote: Candidate
    state: stats_pb2.IceCandidatePairState.ValueType
    nominated: bool
    selected: bool
    sent: int
    received: int

    def __str__(self) -> str:
        def show(c: Candidate) -> str:
            kind = (
                stats_pb2.IceCandidateType.Name(c.candidate_type)
                if c.HasField("candidate_type")
                else "?"
            )
            relay = (
                "/" + stats_pb2.IceServerTransportProtocol.Name(c.relay_protocol)
                if c.HasField("relay_protocol")
                else ""
            )
            return f"{kind}{relay} {c.address}:{c.port}/{c.protocol}"

        state = stats_pb2.IceCandidatePairState.Name(self.state)
        flags = ("selected " if self.selected else "") + ("nominated " if self.nominated else "")
        return (
            f"{self.pc}: {show(self.local)} -> {show(self.remote)} {state} {flags}"
            f"bytes {self.sent} sent, {self.received} received"
        )


async def _pairs(room: rtc.Room) -> list[Pair]:
    """Every candidate pair of both peer connections (the SDK's WebRTC stats)."""
    stats = await asyncio.wait_for(room.get_rtc_stats(), 10)
    out = []
    for pc, report in (
        ("publisher", stats.publisher_stats),
        ("subscriber", stats.subscriber_stats),
    ):
        candidates = {
            **{
                s.local_candidate.rtc.id: s.local_candidate.candidate
                for s in report
                if s.HasField("local_candidate")
            },
            **{
                s.remote_candidate.rtc.id: s.remote_candidate.candidate
                for s in report
                if s.HasField("remote_candidate")
            },
        }
        selected = {
            s.transport.transport.selected_candidate_pair_id
            for s in report
            if s.HasField("transport")
        }
        for s in report:
            if s.HasField("candidate_pair"):
                p = s.candidate_pair.candidate_pair
                out.append(
                    Pair(
                        pc,
                        candidates.get(p.local_candidate_id, Candidate()),
                        candidates.get(p.remote_candidate_id, Candidate()),
                        p.state,
                        p.nominated,
                        s.candidate_pair.rtc.id in selected,
                        p.bytes_sent,
                        p.bytes_received,
                    )
                )
    return out


def _is_relay(candidate: Candidate, protocols: tuple[int, ...]) -> bool:
    """A relay candidate of our coturn over one of ``protocols`` (client to coturn)."""
    return (
        candidate.HasField("candidate_type")
        and candidate.candidate_type == RELAY
        and candidate.HasField("relay_protocol")
        and candidate.relay_protocol in protocols
        and candidate.address == NETNS_ADDRESS
        and RELAY_PORTS[0] <= candidate.port <= RELAY_PORTS[1]
    )


async def _assert_relayed(
    room: rtc.Room,
    protocols: tuple[int, ...],
    pcs: tuple[str, ...] = ("publisher", "subscriber"),
) -> None:
    """Everything the peer connections ``pcs`` carried went through coturn: each pair that
    carried bytes (selected or not) is relayed over ``protocols``, and relay pairs carried bytes
    both ways on each of them."""
    pairs = await _pairs(room)
    listing = "\n".join(map(str, pairs))
    for pc in pcs:
        carried = [p for p in pairs if p.pc == pc and (p.sent or p.received)]
        assert all(_is_relay(p.local, protocols) for p in carried), f"{pc} not relayed:\n{listing}"
        assert sum(p.sent for p in carried) > 0, f"{pc} sent nothing:\n{listing}"
        assert sum(p.received for p in carried) > 0, f"{pc} received nothing:\n{listing}"
        # a selected pair that is not relayed would carry the next packets
        selected = [p for p in pairs if p.pc == pc and p.selected]
        assert selected and all(_is_relay(p.local, protocols) for p in selected), (
            f"{pc}:\n{listing}"
        )


def _increasing(numbers: list[int]) -> bool:
    return all(b > a for a, b in itertools.pairwise(numbers))


async def _exchange_media(server: TrackyardProcess, a: rtc.Room, b: rtc.Room) -> None:
    """``a`` sends numbered video, ``b`` a tone; each decodes the other's. On failure the
    message carries both clients' candidate pairs and the server's log tail."""
    try:
        await _exchange(a, b)
    except (AssertionError, TimeoutError) as exc:
        listings = [
            f"{room.local_participant.identity} ({room.local_participant.sid}):\n"
            + "\n".join(map(str, await _pairs(room)))
            for room in (a, b)
        ]
        raise AssertionError(
            f"{exc!r}\n" + "\n".join(listings) + f"\nserver log:\n{server.logs()}"
        ) from exc


async def _exchange(a: rtc.Room, b: rtc.Room) -> None:
    wait_a, wait_b = EventWaiter(a, "track_subscribed"), EventWaiter(b, "track_subscribed")
    async with (
        pattern_video(a, options=NO_SIMULCAST) as vpub,
        tone_audio(b, 440.0) as apub,
    ):
        (vtrack, _, _) = await wait_b.wait(lambda t, p, who: p.sid == vpub.sid)
        numbers = await read_numbers(vtrack, 10)
        assert len(numbers) == 10 and _increasing(numbers), numbers
        (atrack, _, _) = await wait_a.wait(lambda t, p, who: p.sid == apub.sid)
        freq = await dominant_tone(atrack)
        assert abs(freq - 440.0) < 15, freq


async def test_join_response_carries_turn_servers(
    server: TrackyardProcess, turn: TurnServer, room_name: str
) -> None:
    # the relay-only client can only connect with a TURN server from the JoinResponse: its own
    # RtcConfiguration names none
    async with connected(server.ws_url, "relayed", room_name, options=RELAY_ONLY) as room:
        # connect() returns once the subscriber connection is up; the publisher's may not be
        await _assert_relayed(room, (UDP, TCP), pcs=("subscriber",))
        sid = room.local_participant.sid
    users = [user for _, user in turn.allocations()]
    assert any(user.endswith(f":{sid}") for user in users), (users, turn.logs())


async def test_relay_only_client_exchanges_media_through_coturn(
    server: TrackyardProcess, turn: TurnServer, room_name: str
) -> None:
    async with (
        connected(server.ws_url, "relayed", room_name, options=RELAY_ONLY) as relayed,
        connected(server.ws_url, "direct", room_name) as direct,
    ):
        await _exchange_media(server, relayed, direct)
        # relay-only: either allocation (UDP or TCP to coturn) may end up carrying the media
        await _assert_relayed(relayed, (UDP, TCP))
        sid = relayed.local_participant.sid
    assert any(user.endswith(f":{sid}") for _, user in turn.allocations()), turn.logs()


@contextlib.contextmanager
def udp_blocked(turn: TurnServer) -> Iterator[list[str]]:
    """A firewall letting no UDP reach the SFU's ports or coturn's listening port, except what
    coturn relays (from its relay ports): only TURN over TCP gets through. The clients share
    coturn's address, so the relay ports must be ports no client socket binds (outside the
    ephemeral range, checked by the ``turn`` fixture). Yields the drop counters' listing,
    filled on exit."""
    with input_rules(
        "trackyard_turn_fw",
        f"udp dport {SFU_PORTS[0]}-{SFU_PORTS[1]}"
        f" udp sport != {RELAY_PORTS[0]}-{RELAY_PORTS[1]} counter drop",
        f"udp dport {turn.port} counter drop",
    ) as counters:
        yield counters


async def test_udp_blocked_client_gets_media_over_turn_tcp(
    server: TrackyardProcess, turn: TurnServer, room_name: str
) -> None:
    with udp_blocked(turn) as counters:
        async with (
            connected(server.ws_url, "blocked1", room_name) as one,
            connected(server.ws_url, "blocked2", room_name) as two,
        ):
            await _exchange_media(server, one, two)
            for room in (one, two):
                await _assert_relayed(room, (TCP,))
    # the rule did drop direct attempts (ICE checks to the SFU's host candidate)
    dropped = [int(line.split("packets ")[1].split()[0]) for line in counters]
    assert dropped and dropped[0] > 0, counters


async def test_node_gathers_relay_candidates_when_configured(
    turn: TurnServer, room_name: str
) -> None:
    """``node.use_turn_servers``: the node's own peer connections allocate on coturn (username
    ``<expiry>:ND_...``) and a relay-only client still gets media."""
    with TrackyardProcess(_config(turn, use_turn_servers=True)) as proc:
        before = len(turn.allocations())
        async with (
            connected(proc.ws_url, "relayed", room_name, options=RELAY_ONLY) as relayed,
            connected(proc.ws_url, "direct", room_name) as direct,
        ):
            await _exchange_media(proc, relayed, direct)
        users = [user for _, user in turn.allocations()[before:]]
        assert any(":ND_" in user for user in users), (users, turn.logs())
        assert proc.alive(), proc.logs()


async def test_browser_relay_only_exchanges_media_through_coturn(
    server: TrackyardProcess, turn: TurnServer, browser: Browser, room_name: str
) -> None:
    """livekit-client with ``rtcConfig.iceTransportPolicy: 'relay'`` (ICE servers from the
    JoinResponse) publishes and decodes through coturn; the other page connects normally."""
    relay = {"connect": {"rtcConfig": {"iceTransportPolicy": "relay"}}}
    async with browser.pages("relayed", "direct") as (relayed, direct):
        joined = await relayed.join(server.ws_url, "relayed", room_name, relay)
        await direct.join(server.ws_url, "direct", room_name)
        await relayed.wait_event("participant_connected", {"identity": "direct"})
        await relayed.call("enableCameraAndMicrophone", timeout=MEDIA_CALL)
        await direct.call("enableCameraAndMicrophone", timeout=MEDIA_CALL)
        for page, other in ((direct, "relayed"), (relayed, "direct")):
            await page.wait_event("track_subscribed", {"identity": other, "source": "camera"})
            grown = await page.decodes(other)
            assert grown["last"]["frameWidth"] > 0, grown
            await page.hears(other)
        selected = await relayed.call("selectedCandidates")
        seen = (selected, await relayed.call("peerConnections"))
        assert [c["type"] for c in selected] == ["relay", "relay"], seen
        # relay-only: either allocation (UDP or TCP to coturn) may end up selected
        assert all(c["relayProtocol"] in ("udp", "tcp") and c["bytes"] > 0 for c in selected), seen
        direct_selected = await direct.call("selectedCandidates")
        seen = (direct_selected, await direct.call("peerConnections"))
        assert all(c["type"] == "host" for c in direct_selected), seen
    users = [user for _, user in turn.allocations()]
    assert any(user.endswith(f":{joined['sid']}") for user in users), (users, turn.logs())
