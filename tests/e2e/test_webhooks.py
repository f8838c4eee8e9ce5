"""LiveKit webhooks received and verified by ``livekit-api``'s ``WebhookReceiver`` in a real HTTP
server, from the embedded server and from a Redis cluster; the receiver fails at first (the
events arrive through retries), and every event arrives exactly once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import websockets
from livekit import api, rtc
from livekit.protocol import webhook

from tests.support.cluster import Cluster
from tests.support.redisserver import RedisServer
from tests.support.sdk import connected, token
from tests.support.trackyard import API_KEY, API_SECRET, TrackyardProcess

pytestmark = pytest.mark.sdk


@dataclass
class Receiver:
    """An HTTP endpoint that answers 503 to its first ``fail_first`` requests, then verifies
    each body with ``WebhookReceiver`` and keeps the events."""

    fail_first: int = 2
    events: list[webhook.WebhookEvent] = field(default_factory=list)
    content_types: set[str] = field(default_factory=set)
    refused: int = 0
    rejected: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    port: int = 0

    def handle(self, body: str, auth: str, content_type: str) -> int:
        with self.changed:
            if self.refused < self.fail_first:
                self.refused += 1
                return 503
            try:
                event = api.WebhookReceiver(api.TokenVerifier(API_KEY, API_SECRET)).receive(
                    body, auth
                )
            except Exception as exc:  # a bad signature is a test failure, reported below
                self.rejected.append(str(exc))
                return 401
            self.events.append(event)
            self.content_types.add(content_type)
            self.changed.notify_all()
            return 200

    def matching(self, name: str, **fields: str) -> list[webhook.WebhookEvent]:
        out = []
        for ev in self.events:
            if ev.event != name:
                continue
            if "room" in fields and ev.room.name != fields["room"]:
                continue
            if "identity" in fields and ev.participant.identity != fields["identity"]:
                continue
            out.append(ev)
        return out

    async def wait_for(self, name: str, timeout: float = 20, **fields: str) -> webhook.WebhookEvent:
        def wait() -> bool:
            with self.changed:
                return self.changed.wait_for(lambda: self.matching(name, **fields), timeout)

        assert await asyncio.to_thread(wait), f"no {name} {fields}; got {self.summary()}"
        return self.matching(name, **fields)[0]

    def summary(self) -> list[tuple[str, str, str]]:
        return [(e.event, e.room.name, e.participant.identity) for e in self.events]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length).decode()
            status = rec.handle(
                body, self.headers.get("Authorization", ""), self.headers.get("Content-Type", "")
            )
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


def webhook_config(rec: Receiver) -> dict[str, Any]:
    return {
        "urls": [f"http://127.0.0.1:{rec.port}/hook"],
        "api_key": API_KEY,
        "retry_wait_min": "50ms",
        "retry_wait_max": "200ms",
    }


async def _abort_join(ws_url: str, room: str, identity: str) -> None:
    """A client that joins over signalling and leaves before connecting any media."""
    url = f"{ws_url}/rtc?access_token={token(identity, room)}&auto_subscribe=1&protocol=15"
    async with websockets.connect(url) as ws:
        await asyncio.wait_for(ws.recv(), 10)  # the JoinResponse


async def _scenario(rec: Receiver, url: str, room: str) -> None:
    """Two participants, a published and unpublished track, an aborted join, the room ends."""
    async with connected(url, "alice", room) as alice:
        async with connected(url, "bob", room):
            await rec.wait_for("participant_joined", room=room, identity="bob")
            source = rtc.AudioSource(48000, 1)
            track = rtc.LocalAudioTrack.create_audio_track("mic", source)
            pub = await alice.local_participant.publish_track(
                track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            )
            published = await rec.wait_for("track_published", room=room, identity="alice")
            assert published.track.sid == pub.sid
            await alice.local_participant.unpublish_track(pub.sid)
            await rec.wait_for("track_unpublished", room=room, identity="alice")
        await rec.wait_for("participant_left", room=room, identity="bob")
        await _abort_join(url, room, "carol")
        await rec.wait_for("participant_connection_aborted", room=room, identity="carol")
    await rec.wait_for("room_finished", room=room)


def _check_exactly_once(rec: Receiver, room: str) -> None:
    events = [e for e in rec.events if e.room.name == room]
    names = [e.event for e in events]
    assert sorted(names) == sorted(
        [
            "room_started",
            "participant_joined",  # alice
            "participant_joined",  # bob
            "track_published",
            "track_unpublished",
            "participant_left",  # bob
            "participant_connection_aborted",  # carol
            "participant_left",  # alice
            "room_finished",
        ]
    ), rec.summary()
    assert len({e.id for e in events}) == len(events)
    assert all(e.id.startswith("EV_") and e.created_at > 0 for e in events)
    assert {e.participant.identity for e in rec.matching("participant_left", room=room)} == {
        "alice",
        "bob",
    }
    started = rec.matching("room_started", room=room)[0]
    assert started.room.sid.startswith("RM_")
    assert rec.content_types == {"application/webhook+json"}
    assert not rec.rejected


async def test_embedded_server_sends_every_event_once_through_retries(
    receiver: Receiver, tmp_path: Path
) -> None:
    cfg = {
        "room": {"departure_timeout": 1, "empty_timeout": 3},
        "webhook": webhook_config(receiver),
    }
    with TrackyardProcess(cfg) as server:
        await _scenario(receiver, server.ws_url, "hooks-embedded")
    assert receiver.refused == receiver.fail_first  # the first deliveries failed, then retried
    _check_exactly_once(receiver, "hooks-embedded")


async def test_cluster_sends_every_event_once(receiver: Receiver, tmp_path: Path) -> None:
    with receiver.changed:
        receiver.refused = 0  # fail again at first
    with RedisServer() as redis_server:
        cluster = Cluster(
            redis=redis_server,
            workdir=tmp_path,
            sfu_regions=["us-east", "us-east"],
            edge_regions=["us-east", "us-east"],
            routers_count=1,
            overrides={"webhook": webhook_config(receiver), "room": {"departure_timeout": 1}},
        )
        try:
            cluster.start()
            edge_a, edge_b = cluster.edges
            room = "hooks-cluster"
            async with connected(edge_a.ws_url, "alice", room) as alice:
                async with connected(edge_b.ws_url, "bob", room):
                    await receiver.wait_for("participant_joined", room=room, identity="bob")
                    source = rtc.AudioSource(48000, 1)
                    track = rtc.LocalAudioTrack.create_audio_track("mic", source)
                    pub = await alice.local_participant.publish_track(
                        track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
                    )
                    await receiver.wait_for("track_published", room=room, identity="alice")
                    await alice.local_participant.unpublish_track(pub.sid)
                    await receiver.wait_for("track_unpublished", room=room, identity="alice")
                await receiver.wait_for("participant_left", room=room, identity="bob")
                await _abort_join(edge_b.ws_url, room, "carol")
                await receiver.wait_for(
                    "participant_connection_aborted", room=room, identity="carol"
                )
            await receiver.wait_for("room_finished", room=room)
            _check_exactly_once(receiver, room)
            assert receiver.refused == receiver.fail_first
        finally:
            cluster.stop()
