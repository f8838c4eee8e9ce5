"""A participant with fakes of what it is given (services, liveness) and of its room (the
listener): its requests produce the right events and outbound messages. Its peer connections
are real aiortc objects (they never connect here); no node, no bus, no room."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack
from livekit.protocol import models, rtc

from trackyard.core import messages
from trackyard.core.auth import VideoGrants
from trackyard.core.bus import Envelope
from trackyard.core.config import Config
from trackyard.sfu.negotiation import NegotiationState, SubscriberNegotiation
from trackyard.sfu.participant import Participant, ParticipantServices, State
from trackyard.sfu.portrange import make_peer_connection
from trackyard.sfu.rtpstats import TrafficCounters
from trackyard.sfu.uptrack import UpTrack

SESSION = "SE_p"
WAIT = 5.0


def state(negotiation: SubscriberNegotiation) -> NegotiationState:
    """Read afresh (each call may have changed it)."""
    return negotiation.state


class Outbox:
    """The participant's signal sink: what it sends its edge, in order."""

    def __init__(self) -> None:
        self.envelopes: asyncio.Queue[Envelope] = asyncio.Queue()
        self.seen: list[rtc.SignalResponse] = []

    async def sink(self, env: Envelope) -> bool:
        await self.envelopes.put(env)
        return True

    async def expect(self, which: str) -> rtc.SignalResponse:
        """The next response of kind ``which`` (others are kept in ``seen``)."""

        async def find() -> rtc.SignalResponse:
            while True:
                env = await self.envelopes.get()
                if env.kind != messages.SIGNAL:
                    continue
                response = rtc.SignalResponse.FromString(env.data)
                self.seen.append(response)
                if response.WhichOneof("message") == which:
                    return response

        return await asyncio.wait_for(find(), WAIT)

    def drain(self) -> list[Envelope]:
        out = []
        while not self.envelopes.empty():
            out.append(self.envelopes.get_nowait())
        return out


class FakeRoom:
    """The ParticipantListener: records what the participant reports."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.changed = asyncio.Event()
        self.gone = asyncio.Event()
        self.unpublished = asyncio.Event()

    def participant_active(self, participant: Participant) -> None:
        self.events.append(("active",))

    def participant_changed(self, participant: Participant) -> None:
        self.events.append(("changed", participant.version))
        self.changed.set()

    def track_published(self, participant: Participant, info: models.TrackInfo) -> None:
        self.events.append(("published", info.sid))

    async def track_unpublished(self, participant: Participant, info: models.TrackInfo) -> None:
        self.events.append(("unpublished", info.sid))
        self.unpublished.set()

    def data_received(self, participant: Participant, raw: bytes, label: str) -> None:
        self.events.append(("data", raw, label))

    async def subscriptions_wanted(
        self, participant: Participant, track_sids: Sequence[str] | None, subscribe: bool
    ) -> None:
        self.events.append(("wanted", None if track_sids is None else list(track_sids), subscribe))

    async def participant_gone(
        self, participant: Participant, reason: models.DisconnectReason, *, notify: bool
    ) -> None:
        self.events.append(("gone", reason, notify))
        self.gone.set()

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == name]


class FakeLiveness:
    def __init__(self) -> None:
        self.detached_: list[Participant] = []

    def detached(self, participant: Participant) -> None:
        self.detached_.append(participant)

    def transport_changed(self, participant: Participant) -> None:
        pass


class Harness:
    def __init__(self, grants: VideoGrants) -> None:
        self.outbox = Outbox()
        self.room = FakeRoom()
        self.liveness = FakeLiveness()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.services = ParticipantServices(
            config=Config.load(dev=True, env={}),
            counters=TrafficCounters(),
            spawn=self._spawn,
            signal_sink=self.outbox.sink,
            make_peer_connection=lambda: make_peer_connection(None, "127.0.0.1", []),
            liveness=self.liveness,
        )
        start = messages.SessionStart(session_id=SESSION, room="r", identity="p", grants=grants)
        self.participant = Participant(
            start, room_name="r", services=self.services, listener=self.room
        )

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def request(self, **kwargs: Any) -> None:
        data = rtc.SignalRequest(**kwargs).SerializeToString()
        self.participant.deliver(Envelope(kind=messages.SIGNAL, session=SESSION, data=data))


async def until(cond: Callable[[], bool]) -> None:
    """Wait (bounded) for a state no event announces."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def joined(grants: VideoGrants | None = None) -> AsyncIterator[Harness]:
    """A started participant that was sent its join response; closed at the end."""
    h = Harness(grants or VideoGrants(room_join=True, room="r"))
    h.participant.start()
    h.participant.joined(rtc.SignalResponse(join=rtc.JoinResponse()))
    await h.outbox.expect("join")
    try:
        yield h
    finally:
        await h.participant.close()
        for task in list(h.tasks):
            task.cancel()


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with joined() as h:
        yield h


@contextlib.asynccontextmanager
async def client() -> AsyncIterator[tuple[RTCPeerConnection, str]]:
    """A publishing client connection with one audio track; yields it and the track's id,
    which its offer carries as the msid track id (the cid of ``add_track``)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = AudioStreamTrack()
    pc.addTrack(track)
    try:
        yield pc, track.id
    finally:
        await pc.close()


async def _publish(h: Harness, pc: RTCPeerConnection, cid: str) -> models.TrackInfo:
    h.request(add_track=rtc.AddTrackRequest(cid=cid, type=models.AUDIO, name="mic"))
    published = await h.outbox.expect("track_published")
    assert published.track_published.cid == cid
    await pc.setLocalDescription(await pc.createOffer())
    h.request(offer=rtc.SessionDescription(type="offer", sdp=pc.localDescription.sdp, id=7))
    answer = await h.outbox.expect("answer")
    assert answer.answer.id == 7 and "m=audio" in answer.answer.sdp
    return published.track_published.track


async def test_add_track_then_offer_publishes(harness: Harness) -> None:
    h, p = harness, harness.participant
    async with client() as (pc, cid):
        h.request(add_track=rtc.AddTrackRequest(cid=cid, type=models.AUDIO, name="mic"))
        announced = (await h.outbox.expect("track_published")).track_published.track
        assert announced.sid.startswith("TR_")
        assert p.pending_tracks[cid].sid == announced.sid and not p.tracks
        assert h.room.named("published") == []  # announced only: no media yet
        await pc.setLocalDescription(await pc.createOffer())
        h.request(offer=rtc.SessionDescription(type="offer", sdp=pc.localDescription.sdp, id=3))
        await h.outbox.expect("answer")
        assert h.room.events == [("published", announced.sid), ("changed", 1)]
        info = p.tracks[announced.sid]
        assert info.mime_type == "audio/opus" and info.mid
        assert p.info().is_publisher and announced.sid in p.uptracks
        assert not p.pending_tracks


async def test_add_track_without_permission_is_refused() -> None:
    async with joined(VideoGrants(room_join=True, room="r", can_publish=False)) as h:
        h.request(add_track=rtc.AddTrackRequest(cid="c1", type=models.AUDIO))
        refused = (await h.outbox.expect("request_response")).request_response
        assert refused.reason == rtc.RequestResponse.NOT_ALLOWED
        assert refused.add_track.cid == "c1" and "canPublish" in refused.message
        assert not h.participant.pending_tracks and h.room.events == []


async def test_mute_changes_the_track_once(harness: Harness) -> None:
    h, p = harness, harness.participant
    async with client() as (pc, cid):
        info = await _publish(h, pc, cid)
        h.room.events.clear()
        h.room.changed.clear()
        h.request(mute=rtc.MuteTrackRequest(sid=info.sid, muted=True))
        await asyncio.wait_for(h.room.changed.wait(), WAIT)
        assert p.tracks[info.sid].muted
        h.request(mute=rtc.MuteTrackRequest(sid=info.sid, muted=True))  # no change
        h.request(ping=1)  # handled in order: once its pong is out, the mute was handled
        await h.outbox.expect("pong")
        assert h.room.events == [("changed", 2)]


async def test_mute_before_media_publishes_muted(harness: Harness) -> None:
    h, p = harness, harness.participant
    async with client() as (pc, cid):
        h.request(add_track=rtc.AddTrackRequest(cid=cid, type=models.AUDIO))
        sid = (await h.outbox.expect("track_published")).track_published.track.sid
        h.request(mute=rtc.MuteTrackRequest(sid=sid, muted=True))
        await pc.setLocalDescription(await pc.createOffer())
        h.request(offer=rtc.SessionDescription(type="offer", sdp=pc.localDescription.sdp))
        await h.outbox.expect("answer")
        assert p.tracks[sid].muted
        assert h.room.events == [("published", sid), ("changed", 1)]


async def test_metadata_update_allowed_by_grant() -> None:
    async with joined(VideoGrants(room_join=True, room="r", can_update_own_metadata=True)) as h:
        h.request(update_metadata=rtc.UpdateParticipantMetadata(metadata="m1", request_id=5))
        ok = (await h.outbox.expect("request_response")).request_response
        assert (ok.request_id, ok.reason) == (5, rtc.RequestResponse.OK)
        assert h.participant.metadata == "m1"
        assert h.room.events == [("changed", 1)]
        assert h.participant.info().metadata == "m1" and h.participant.info().version == 1


async def test_metadata_update_refused_without_grant(harness: Harness) -> None:
    h = harness
    h.request(update_metadata=rtc.UpdateParticipantMetadata(metadata="m1", request_id=6))
    refused = (await h.outbox.expect("request_response")).request_response
    assert (refused.request_id, refused.reason) == (6, rtc.RequestResponse.NOT_ALLOWED)
    assert h.participant.metadata == "" and h.room.events == []


async def test_metadata_over_the_limit_is_refused() -> None:
    async with joined(VideoGrants(room_join=True, room="r", can_update_own_metadata=True)) as h:
        h.services.config.limit.max_metadata_size = 4
        h.request(update_metadata=rtc.UpdateParticipantMetadata(metadata="12345", request_id=8))
        refused = (await h.outbox.expect("request_response")).request_response
        assert refused.reason == rtc.RequestResponse.LIMIT_EXCEEDED
        assert refused.update_metadata.metadata == "12345"
        assert h.participant.metadata == "" and h.room.events == []


async def test_revoked_publish_permission_unpublishes(harness: Harness) -> None:
    h, p = harness, harness.participant
    async with client() as (pc, cid):
        info = await _publish(h, pc, cid)
        h.room.events.clear()
        p.update_info(permission=models.ParticipantPermission(can_subscribe=True))
        told = await h.outbox.expect("track_unpublished")
        assert told.track_unpublished.track_sid == info.sid
        await asyncio.wait_for(h.room.unpublished.wait(), WAIT)
        while len(h.room.named("changed")) < 2:  # the unpublish (spawned) reports last
            h.room.changed.clear()
            await asyncio.wait_for(h.room.changed.wait(), WAIT)
        reported = [e for e in h.room.events if e[0] != "wanted"]  # auto-subscribe asks again
        assert reported == [("changed", 2), ("unpublished", info.sid), ("changed", 3)]
        assert not p.tracks and not p.uptracks


async def test_subscription_waits_for_the_answer_and_revoked_permission_ends_it(
    harness: Harness,
) -> None:
    h, p = harness, harness.participant
    await p.negotiate_subscriber()  # the first offer (data channels), as a room's join does
    first = (await h.outbox.expect("offer")).offer
    up = UpTrack("audio", track_sid="TR_other")
    answerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        assert await p.subscribe(up, publisher_sid="PA_other", track_sid="TR_other")
        assert "TR_other" in p.downtracks
        # one offer is out: the new m-line waits for its answer
        assert state(p.subscriber.negotiation) is NegotiationState.RENEGOTIATE_PENDING
        await answerer.setRemoteDescription(RTCSessionDescription(first.sdp, "offer"))
        await answerer.setLocalDescription(await answerer.createAnswer())
        h.request(
            answer=rtc.SessionDescription(
                type="answer", sdp=answerer.localDescription.sdp, id=first.id
            )
        )
        # answered, but the first DTLS is not up: the next offer waits for it (aiortc)
        await until(
            lambda: state(p.subscriber.negotiation) is not NegotiationState.RENEGOTIATE_PENDING
        )
        assert state(p.subscriber.negotiation) is NegotiationState.WAITING_FOR_TRANSPORT
        p.update_info(permission=models.ParticipantPermission(can_publish=True))
        await until(lambda: not p.downtracks)  # the unsubscription is spawned
        assert not await p.subscribe(up, publisher_sid="PA_other", track_sid="TR_other")
        assert ("wanted", None, True) not in h.room.events
        p.update_info(permission=models.ParticipantPermission(can_subscribe=True))
        await until(lambda: ("wanted", None, True) in h.room.events)  # auto-subscribe: all
    finally:
        await up.close()
        await answerer.close()


async def test_bad_subscriber_answer_asks_for_a_rejoin(harness: Harness) -> None:
    h, p = harness, harness.participant
    await p.negotiate_subscriber()
    offer = (await h.outbox.expect("offer")).offer
    h.request(answer=rtc.SessionDescription(type="answer", sdp="v=0\r\n", id=offer.id))
    leave = (await h.outbox.expect("leave")).leave
    assert leave.action == rtc.LeaveRequest.RECONNECT and leave.can_reconnect
    await asyncio.wait_for(h.room.gone.wait(), WAIT)
    assert h.room.named("gone") == [("gone", models.DisconnectReason.STATE_MISMATCH, False)]


async def test_subscription_request_is_reported(harness: Harness) -> None:
    h = harness
    h.request(
        subscription=rtc.UpdateSubscription(
            track_sids=["TR_a"],
            subscribe=False,
            participant_tracks=[models.ParticipantTracks(track_sids=["TR_b"])],
        )
    )
    h.request(ping=1)
    await h.outbox.expect("pong")
    assert h.room.events == [("wanted", ["TR_a", "TR_b"], False)]


async def test_leave_request_reports_gone(harness: Harness) -> None:
    h = harness
    h.request(leave=rtc.LeaveRequest())
    await asyncio.wait_for(h.room.gone.wait(), WAIT)
    assert h.room.events == [("gone", models.DisconnectReason.CLIENT_INITIATED, False)]


async def test_bad_publisher_offer_asks_for_a_rejoin(harness: Harness) -> None:
    h = harness
    h.request(offer=rtc.SessionDescription(type="offer", sdp="v=0\r\nm=audio x\r\n"))
    leave = (await h.outbox.expect("leave")).leave
    assert leave.reason == models.DisconnectReason.STATE_MISMATCH
    assert leave.action == rtc.LeaveRequest.RECONNECT
    await asyncio.wait_for(h.room.gone.wait(), WAIT)
    assert h.room.named("gone") == [("gone", models.DisconnectReason.STATE_MISMATCH, False)]


async def test_ping_req_is_answered(harness: Harness) -> None:
    harness.request(ping_req=rtc.Ping(timestamp=1234))
    pong = (await harness.outbox.expect("pong_resp")).pong_resp
    assert pong.last_ping_timestamp == 1234 and pong.timestamp > 0


async def test_detached_session_buffers_then_resume_replays_in_order(harness: Harness) -> None:
    h, p = harness, harness.participant
    p.deliver(Envelope(kind=messages.CLIENT_GONE, session=SESSION, data=b""))
    h.request(ping=1)
    h.request(ping=2)
    await until(lambda: bool(h.liveness.detached_) and len(p.signal._replay) == 2)
    assert h.liveness.detached_ == [p] and p.detached and p.resumable()
    assert h.outbox.drain() == []  # nothing went to the gone socket
    start = messages.SessionStart(session_id="SE_new", room="r", identity="p", edge_id="ED_2")
    old = p.resume(start, rtc.SignalResponse(reconnect=rtc.ReconnectResponse()))
    assert old == SESSION and p.session_id == "SE_new" and p.edge_id == "ED_2"
    await h.outbox.expect("pong")
    kinds = [r.WhichOneof("message") for r in h.outbox.seen]
    assert kinds == ["join", "reconnect", "pong"]
    assert (await h.outbox.expect("pong")).pong == 2
    assert not p.detached


async def test_close_tells_the_edge_and_stops(harness: Harness) -> None:
    h, p = harness, harness.participant
    await p.close(reason="bye")
    closes = [e for e in h.outbox.drain() if e.kind == messages.CLOSE]
    assert [e.session for e in closes] == [SESSION]
    assert messages.SessionClosed.model_validate_json(closes[0].data).reason == "bye"
    assert p.state is State.DISCONNECTED and p.info().state == models.ParticipantInfo.DISCONNECTED
    p.send(rtc.SignalResponse(pong=1))
    assert h.outbox.drain() == []
    assert p.publisher_pc.signalingState == "closed" and p.subscriber_pc.signalingState == "closed"
