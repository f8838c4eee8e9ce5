"""``trackyard load-test`` against ``trackyard dev`` (issue 13): a small run delivers every
expected track with no loss at sensible bitrates; refusals end with a clear message."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from tests.support.trackyard import API_KEY, API_SECRET, TRACKYARD, TrackyardProcess

VIDEO_KBPS = (400, 2500)  # the medium (640x360) loop: ~1.1 Mbps, pre-encoded at 800 kbps CBR
AUDIO_KBPS = (15, 120)  # opus at 32 kbps (+ RTP/SRTP overhead)


def _load_test(server: TrackyardProcess, *args: str, timeout: float = 120) -> Any:
    return subprocess.run(
        [TRACKYARD, "load-test", "--url", server.ws_url, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )


def test_small_run_receives_every_track_without_loss(server: TrackyardProcess) -> None:
    out = _load_test(
        server,
        "--api-key",
        API_KEY,
        "--api-secret",
        API_SECRET,
        "--room",
        "load-small",
        "--video-publishers",
        "1",
        "--audio-publishers",
        "1",
        "--subscribers",
        "10",
        "--duration",
        "10",
        "--json",
    )
    assert out.returncode == 0, out.stderr + out.stdout
    report = json.loads(out.stdout)
    assert report["testers"] == {
        "video_publishers": 1,
        "audio_publishers": 1,
        "subscribers": 10,
        "joined": 12,
        "failed": 0,
    }
    assert report["errors"] == [] and report["fatal"] is None
    assert report["tracks"] == {"expected": 20, "received": 20, "missing": []}
    packets = report["packets"]
    assert packets["lost"] == 0 and packets["loss"] == 0.0
    assert packets["received"] > 10 * 10 * (100 + 50) * 0.8  # 10 s of ~100 + 50 packets/s each
    assert 9.5 <= report["duration_s"] <= 12
    per_sub = report["bitrate_bps"]["per_subscriber_mean"] / 1000
    low = VIDEO_KBPS[0] + AUDIO_KBPS[0]
    high = VIDEO_KBPS[1] + AUDIO_KBPS[1]
    assert low < per_sub < high, f"{per_sub:.0f} kbps per subscriber"
    total = report["bitrate_bps"]["total_received"] / 1000
    assert 10 * low < total < 10 * high
    latency = report["join_latency_ms"]
    assert latency["p50"] is not None and latency["p99"] < 10_000
    assert latency["p50"] <= latency["p95"] <= latency["p99"]
    first = report["time_to_first_packet_ms"]
    assert first["p50"] is not None and first["p99"] < 10_000


def test_bad_secret_is_a_clear_fatal_error(server: TrackyardProcess) -> None:
    started = time.monotonic()
    out = _load_test(
        server,
        "--api-key",
        API_KEY,
        "--api-secret",
        "not-the-secret",
        "--subscribers",
        "50",
        "--duration",
        "30",
    )
    assert out.returncode == 1
    assert (
        "trackyard load-test: the server refused the access token: 401: "
        "invalid access token: signature does not match" in out.stderr
    ), out.stderr
    assert time.monotonic() - started < 20  # it stopped at once, did not run 30 s


def test_unknown_key_json(server: TrackyardProcess) -> None:
    out = _load_test(server, "--api-key", "nokey", "--api-secret", "x" * 32, "--json")
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["fatal"] == (
        "the server refused the access token: 401: invalid access token: unknown API key 'nokey'"
    )
    assert report["testers"]["joined"] == 0


def test_nothing_listening_and_bad_options() -> None:
    dead = TrackyardProcess()  # never started: its port is free
    out = _load_test(
        dead, "--api-key", API_KEY, "--api-secret", API_SECRET, "--subscribers", "1", "--json"
    )
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["testers"]["joined"] == 0
    assert report["duration_s"] == 0  # nobody joined: no measuring window
    (error,) = report["errors"]
    assert error["reason"].startswith(f"cannot connect to ws://127.0.0.1:{dead.port}")
    assert error["count"] == 2  # the publisher, and the subscriber

    out = _load_test(
        dead, "--api-key", API_KEY, "--api-secret", API_SECRET, "--subscriber-quality", "best"
    )
    assert out.returncode == 2
    assert "--subscriber-quality must be one of low, medium, high" in out.stderr
    out = _load_test(dead, "--video-resolution", "huge")
    assert out.returncode == 2
    assert "--api-key and --api-secret" in out.stderr
    assert "--video-resolution must be one of low, medium, high" in out.stderr


async def test_ctrl_c_leaves_cleanly_and_reports(server: TrackyardProcess) -> None:
    import asyncio
    import signal

    from livekit import api

    from tests.support.cluster import eventually

    proc = await asyncio.create_subprocess_exec(
        TRACKYARD,
        "load-test",
        "--url",
        server.ws_url,
        "--api-key",
        API_KEY,
        "--api-secret",
        API_SECRET,
        "--room",
        "load-ctrl-c",
        "--subscribers",
        "3",
        "--duration",
        "300",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )
    try:
        async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lk:

            async def count() -> int:
                req = api.ListParticipantsRequest(room="load-ctrl-c")
                return len((await lk.room.list_participants(req)).participants)

            await eventually(lambda: _is(count(), 4), timeout=30, what="4 testers in the room")
            proc.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(proc.communicate(), 20)
            assert proc.returncode == 130, err.decode()
            report = json.loads(out)
            assert report["stopped_early"] == "interrupted (Ctrl-C)"
            assert report["testers"]["joined"] == 4 and report["errors"] == []
            assert report["packets"]["lost"] == 0
            # they left: gone well before departure timeouts; a tester whose socket closed
            # without a leave is kept for a resume for node.reconnect_window (5 s), no longer
            await eventually(lambda: _is(count(), 0), timeout=8, what="the testers to leave")
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 5)


async def _is(value: Any, expected: int) -> bool:
    return bool(await value == expected)


def _simulcast_args(room: str, *extra: str) -> list[str]:
    return [
        "--api-key",
        API_KEY,
        "--api-secret",
        API_SECRET,
        "--room",
        room,
        "--simulcast",
        "--video-publishers",
        "1",
        "--subscribers",
        "4",
        "--duration",
        "8",
        "--json",
        "--decode-sample",
        *extra,
    ]


def _check_clean(report: Any, size: tuple[int, int]) -> None:
    """A clean simulcast run whose decoded sample track has the layer size ``size``."""
    assert report["errors"] == [] and report["fatal"] is None
    assert report["testers"]["joined"] == 5 and report["testers"]["failed"] == 0
    assert report["tracks"] == {"expected": 4, "received": 4, "missing": []}
    assert report["packets"]["lost"] == 0
    assert 7.5 <= report["duration_s"] <= 10
    sample = report["decoded_sample"]
    assert sample["tester"] == "sub-0" and sample["track"].startswith("TR_")
    assert (sample["width"], sample["height"]) == size
    assert sample["frames"] > 0.8 * 30 * 8  # 30 fps decoded for the whole run


async def test_simulcast_run_sends_three_layers(server: TrackyardProcess) -> None:
    """Subscribers at the default (highest) quality get the full layer; the server saw the
    track announced as three layers (ListParticipants) and wants all of them."""
    import asyncio

    from livekit import api

    from tests.support.cluster import eventually

    proc = await asyncio.create_subprocess_exec(
        TRACKYARD,
        "load-test",
        "--url",
        server.ws_url,
        *_simulcast_args("load-simulcast"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )
    try:
        async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lk:

            async def video_track() -> Any:
                req = api.ListParticipantsRequest(room="load-simulcast")
                for p in (await lk.room.list_participants(req)).participants:
                    for t in p.tracks:
                        if t.type == api.TrackType.VIDEO:
                            return t
                return None

            track = await eventually(video_track, timeout=30, what="the simulcast track")
        assert track.simulcast
        announced = sorted((lay.quality, lay.width, lay.height) for lay in track.layers)
        assert announced == [(0, 160, 90), (1, 320, 180), (2, 640, 360)]
        out, err = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0, err.decode() + out.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 5)
    report = json.loads(out)
    _check_clean(report, (640, 360))
    layers = {lay["rid"]: lay for lay in report["video"]["layers"]}
    assert [(r, lay["width"], lay["height"]) for r, lay in layers.items()] == [
        ("q", 160, 90),
        ("h", 320, 180),
        ("f", 640, 360),
    ]
    for lay in layers.values():  # somebody wants HIGH: the server keeps all layers on
        assert lay["sending_at_end"] == 1 and lay["packets_sent"] > 8 * 25
    full = layers["f"]["bitrate_bps_per_publisher"]
    assert layers["q"]["bitrate_bps_per_publisher"] < layers["h"]["bitrate_bps_per_publisher"]
    assert layers["h"]["bitrate_bps_per_publisher"] < full
    per_sub = report["bitrate_bps"]["per_subscriber_mean"]
    assert 0.85 * full < per_sub < 1.15 * full, (per_sub, full)


@pytest.mark.parametrize(
    ("quality", "rid", "size"), [("low", "q", (160, 90)), ("medium", "h", (320, 180))]
)
def test_simulcast_subscribers_get_the_layer_they_ask_for(
    server: TrackyardProcess, quality: str, rid: str, size: tuple[int, int]
) -> None:
    """Subscribers asking for a lower quality receive that layer (its bitrate, and its size in
    the decoded sample): the server did get the three layers (with only the full one, it would
    forward that or nothing), and its subscribed_quality_update paused the layers above (the
    publisher stopped sending them)."""
    out = _load_test(
        server, *_simulcast_args(f"load-simulcast-{quality}", "--subscriber-quality", quality)
    )
    assert out.returncode == 0, out.stderr + out.stdout
    report = json.loads(out.stdout)
    _check_clean(report, size)
    assert report["video"]["subscriber_quality"] == quality
    layers = {lay["rid"]: lay for lay in report["video"]["layers"]}
    wanted = layers[rid]["bitrate_bps_per_publisher"]
    per_sub = report["bitrate_bps"]["per_subscriber_mean"]
    # (the full layer alone would give ~1.1 Mbps, or nothing once paused)
    assert 0.7 * wanted < per_sub < 1.3 * wanted, (per_sub, wanted)
    order = ["q", "h", "f"]
    for other, lay in layers.items():
        expect_on = order.index(other) <= order.index(rid)
        assert lay["sending_at_end"] == int(expect_on), (other, lay)
