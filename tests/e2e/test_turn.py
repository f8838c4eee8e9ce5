"""TURN with a real coturn: ``rtc.turn_servers`` reach the SDK in ``JoinResponse.ice_servers``
with TURN REST credentials coturn (``use-auth-secret``) accepts, and media flows through the
relay: for a client forced to relay-only ICE, for a client whose direct UDP to the SFU (and to
coturn) is dropped by an nftables rule (TURN over TCP), and for a node that relays its own side.

Proof that the relay carries the media, not just that media arrives: the client's selected ICE
candidate pair (the SDK's WebRTC stats) has a local candidate of type RELAY over the expected
protocol and carries bytes, and coturn's log shows the allocation for that participant's sid.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator

import pytest
from livekit import rtc
from livekit.rtc._proto import stats_pb2

from tests.support.browser import MEDIA_CALL, Browser, browser_fixture
from tests.support.media import dominant_tone, pattern_video, read_numbers, tone_audio
from tests.support.nft import input_rules
from tests.support.sdk import EventWaiter, connected
from tests.support.trackyard import TrackyardProcess
from tests.support.turn import NETNS_ADDRESS, TurnServer

pytestmark = pytest.mark.sdk

SFU_PORTS = (45000, 45499)
RELAY_PORTS = (46000, 46199)
NO_SIMULCAST = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=False)
RELAY_ONLY = rtc.RoomOptions(
    rtc_config=rtc.RtcConfiguration(ice_transport_type=rtc.IceTransportType.TRANSPORT_RELAY)
)
Candidate = stats_pb2.IceCandidateStats
RELAY = stats_pb2.IceCandidateType.RELAY


browser = browser_fixture()


@pytest.fixture(scope="module")
def turn(netns: None) -> Iterator[TurnServer]:
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


async def _selected_local_candidates(room: rtc.Room) -> list[tuple[Candidate, int]]:
    """Per peer connection: the local candidate of the selected pair and the bytes the pair
    carried both ways (WebRTC stats of the SDK)."""
    stats = await asyncio.wait_for(room.get_rtc_stats(), 10)
    out = []
    for report in (stats.publisher_stats, stats.subscriber_stats):
        pairs = {
            s.candidate_pair.rtc.id: s.candidate_pair.candidate_pair
            for s in report
            if s.HasField("candidate_pair")
        }
        locals_ = {
            s.local_candidate.rtc.id: s.local_candidate.candidate
            for s in report
            if s.HasField("local_candidate")
        }
        for s in report:
            if s.HasField("transport") and s.transport.transport.selected_candidate_pair_id:
                pair = pairs[s.transport.transport.selected_candidate_pair_id]
                out.append(
                    (locals_[pair.local_candidate_id], pair.bytes_sent + pair.bytes_received)
                )
    return out


async def _assert_relayed(room: rtc.Room, relay_protocol: int) -> None:
    selected = await _selected_local_candidates(room)
    assert len(selected) == 2, selected  # publisher and subscriber peer connections
    for candidate, carried in selected:
        assert candidate.candidate_type == RELAY, candidate
        assert candidate.relay_protocol == relay_protocol, candidate
        assert (
            candidate.address == NETNS_ADDRESS
            and RELAY_PORTS[0] <= candidate.port <= RELAY_PORTS[1]
        )
        assert carried > 0, candidate


def _increasing(numbers: list[int]) -> bool:
    return all(b > a for a, b in itertools.pairwise(numbers))


async def _exchange_media(a: rtc.Room, b: rtc.Room) -> None:
    """``a`` sends numbered video, ``b`` a tone; each decodes the other's."""
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
        (candidate, _), *_ = await _selected_local_candidates(room)
        assert candidate.candidate_type == RELAY
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
        await _exchange_media(relayed, direct)
        await _assert_relayed(relayed, stats_pb2.IceServerTransportProtocol.TRANSPORT_UDP)
        sid = relayed.local_participant.sid
    assert any(user.endswith(f":{sid}") for _, user in turn.allocations()), turn.logs()


@contextlib.contextmanager
def udp_blocked(turn: TurnServer) -> Iterator[list[str]]:
    """A firewall letting no UDP reach the SFU's ports or coturn's listening port, except what
    coturn relays (from its relay ports): only TURN over TCP gets through. Yields the drop
    counters' listing, filled on exit."""
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
            await _exchange_media(one, two)
            for room in (one, two):
                await _assert_relayed(room, stats_pb2.IceServerTransportProtocol.TRANSPORT_TCP)
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
            await _exchange_media(relayed, direct)
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
        assert [c["type"] for c in selected] == ["relay", "relay"], selected
        assert all(c["relayProtocol"] == "udp" and c["bytes"] > 0 for c in selected), selected
        direct_selected = await direct.call("selectedCandidates")
        assert all(c["type"] == "host" for c in direct_selected), direct_selected
    users = [user for _, user in turn.allocations()]
    assert any(user.endswith(f":{joined['sid']}") for user in users), (users, turn.logs())
