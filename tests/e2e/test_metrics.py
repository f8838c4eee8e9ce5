"""LiveKit's Prometheus metrics on ``prometheus.port`` only, with basic auth, after real SDK
traffic; readiness and drain state as gauges."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
from livekit import api, rtc

from tests.support.media import pattern_video, read_numbers, tone_audio
from tests.support.metrics import (
    PASSWORD,
    USERNAME,
    metrics_url,
    prometheus_config,
    samples,
    scrape,
    value,
)
from tests.support.sdk import EventWaiter, admin_token, connected
from tests.support.trackyard import TrackyardProcess

pytestmark = pytest.mark.sdk

NO_SIMULCAST = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=False)
CONFIG = {
    "room": {"departure_timeout": 1, "empty_timeout": 3},
    "node": {"stats_update_interval": 0.5},  # the per-stream sampling interval
}


@pytest.fixture(scope="module")
def guarded() -> Iterator[TrackyardProcess]:
    with TrackyardProcess({**CONFIG, **prometheus_config(auth=True)}) as proc:
        yield proc
        assert proc.alive(), f"server died during the module:\n{proc.logs()}"


async def _until(proc: TrackyardProcess, check: object, timeout: float = 15.0) -> str:
    """Scrape until ``check(text)`` holds (bounded); returns that scrape."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while True:
        text = await scrape(proc)
        try:
            if check(text):
                return text
        except KeyError:
            pass
        if time.monotonic() > deadline:
            return text
        await asyncio.sleep(0.3)


async def test_credentials_are_required_and_public_port_has_no_metrics(
    guarded: TrackyardProcess,
) -> None:
    url = metrics_url(guarded)
    async with httpx.AsyncClient(timeout=5) as client:
        bare = await client.get(url)
        wrong = await client.get(url, auth=(USERNAME, "not-the-password"))
        right = await client.get(url, auth=(USERNAME, PASSWORD))
        public = await client.get(guarded.http_url + "/metrics")
    assert bare.status_code == 401 and bare.headers["www-authenticate"].startswith("Basic")
    assert wrong.status_code == 401
    assert right.status_code == 200
    assert "livekit_room_total" in right.text and "trackyard_ready" in right.text
    assert public.status_code == 404


async def test_unauthenticated_listener_without_username(room_name: str) -> None:
    with TrackyardProcess({**CONFIG, **prometheus_config()}) as open_proc:
        async with httpx.AsyncClient(timeout=5) as client:
            resp = await client.get(metrics_url(open_proc))
            root = await client.get(metrics_url(open_proc).removesuffix("metrics"))
    assert resp.status_code == 200 and "livekit_participant_total" in resp.text
    assert root.status_code == 200  # LiveKit serves the registry on / too


async def test_livekit_metrics_after_sdk_traffic(guarded: TrackyardProcess, room_name: str) -> None:
    async with connected(guarded.ws_url, "viewer", room_name) as viewer:
        subscribed = EventWaiter(viewer, "track_subscribed")
        async with (
            connected(guarded.ws_url, "cam", room_name) as cam,
            pattern_video(cam, options=NO_SIMULCAST) as vpub,
            tone_audio(cam, 440.0),
        ):
            (track, _, _) = await subscribed.wait(lambda t, p, who: p.sid == vpub.sid)
            await read_numbers(track, 20, timeout=20)

            def streams_sampled(text: str) -> bool:
                return (
                    value(text, "livekit_jitter_us_count", direction="incoming") > 0
                    and value(text, "livekit_rtt_ms_count", direction="outgoing") > 0
                    and value(text, "livekit_forward_latency") > 0
                )

            text = await _until(guarded, streams_sampled)
    s = samples(text)
    (labels, _) = s["livekit_room_total"][0]
    assert labels["node_id"].startswith("ND_") and labels["node_type"] == "SERVER"
    assert value(text, "livekit_room_total") >= 1
    assert value(text, "livekit_participant_total") == 2
    assert value(text, "livekit_track_published_total", kind="VIDEO") == 1
    assert value(text, "livekit_track_published_total", kind="AUDIO") == 1
    assert value(text, "livekit_track_subscribed_total", kind="VIDEO") == 1
    assert value(text, "livekit_track_subscribed_total", kind="AUDIO") == 1
    incoming = value(text, "livekit_packet_total", direction="incoming", transmission="initial")
    outgoing = value(text, "livekit_packet_total", direction="outgoing", transmission="initial")
    # 20 decoded frames of video plus audio went through; a subscriber gets no more than came in
    assert 50 < outgoing <= incoming
    assert value(text, "livekit_packet_bytes", direction="incoming") > incoming * 10
    assert value(text, "livekit_pli_total", direction="incoming") >= 1  # keyframe on subscribe
    assert value(text, "livekit_nack_total", direction="outgoing") >= 0
    # per-stream figures: source and type as LiveKit spells them
    loss = value(text, "livekit_packet_loss_percent_count", source="CAMERA", type="VIDEO")
    assert loss > 0
    assert value(text, "livekit_packet_loss_percent_count", source="MICROPHONE") > 0
    jitter = value(text, "livekit_jitter_us_sum") / value(text, "livekit_jitter_us_count")
    assert 0 < jitter < 1_000_000  # under a second on loopback
    rtt = value(text, "livekit_rtt_ms_sum") / value(text, "livekit_rtt_ms_count")
    assert 0 < rtt < 1000
    forward_ns = value(text, "livekit_forward_latency")
    assert 0 < forward_ns < 1e9
    assert value(text, "livekit_forward_latency_ns_count") > 0
    joins = value(text, "livekit_session_join_latency_ms_count")
    assert joins >= 2
    assert 0 < value(text, "livekit_session_join_latency_ms_sum") / joins < 10_000
    assert value(text, "livekit_participant_join_total", state="signal_connected") >= 2
    assert value(text, "trackyard_ready", service="signal") == 1
    assert value(text, "trackyard_ready", service="sfu") == 1
    assert value(text, "trackyard_draining", service="sfu") == 0
    # Trackyard's own metrics keep their prefix
    assert value(text, "trackyard_sfu_packets_in_total") == incoming


async def test_twirp_request_status_and_latency(guarded: TrackyardProcess, room_name: str) -> None:
    async with api.LiveKitAPI(guarded.http_url, "devkey", "secret") as lkapi:
        await lkapi.room.create_room(api.CreateRoomRequest(name=room_name))
        await lkapi.room.list_rooms(api.ListRoomsRequest())
    async with httpx.AsyncClient(timeout=5) as client:
        refused = await client.post(
            guarded.http_url + "/twirp/livekit.RoomService/ListRooms",
            json={},
            headers={"Authorization": "Bearer not-a-token"},
        )
    assert refused.status_code == 401
    assert admin_token()  # the helper signs with the same dev key
    text = await scrape(guarded)
    ok = value(
        text,
        "livekit_node_twirp_request_status",
        service="RoomService",
        method="ListRooms",
        status="200",
        code="",
    )
    assert ok >= 1
    assert (
        value(
            text,
            "livekit_node_twirp_request_status",
            service="RoomService",
            method="ListRooms",
            status="4xx",
            code="unauthenticated",
        )
        == 1
    )
    assert (
        value(
            text,
            "livekit_node_twirp_request_latency_ms_count",
            service="RoomService",
            method="CreateRoom",
            status="200",
        )
        >= 1
    )


async def test_drain_state_is_a_metric(room_name: str) -> None:
    with TrackyardProcess({**CONFIG, **prometheus_config()}) as proc:
        text = await scrape(proc)
        assert value(text, "trackyard_draining", service="sfu") == 0
        assert value(text, "trackyard_ready", service="signal") == 1
        async with connected(proc.ws_url, "stayer", room_name):
            proc.signal(signal.SIGTERM)  # drains: exits when the last participant leaves

            def draining(t: str) -> bool:
                return value(t, "trackyard_draining", service="sfu") == 1

            text = await _until(proc, draining, timeout=10)
            assert value(text, "trackyard_draining", service="sfu") == 1
            assert value(text, "trackyard_ready", service="sfu") == 0
            assert value(text, "trackyard_draining", service="signal") == 1
            assert value(text, "trackyard_ready", service="signal") == 0
            assert value(text, "livekit_participant_total") == 1
        assert proc.wait(15) == 0
